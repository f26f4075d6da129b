"""Python RQ 2.12 as producer, reader and peer for the interop tests.

Every command reads the Redis URL from $RQ_REDIS_URL and prints JSON on stdout.

  enqueue QUEUE FUNC [ARGS_JSON [KWARGS_JSON [OPTS_JSON]]]  -> job id
  status ID...                                              -> [status, ...]
  result ID                                                 -> {status, type, return_value, exc_string}
  workers                                                   -> Worker.all() as a list of dicts
  fetch ID                                                  -> job fields as Job.fetch parses them
  enqueue-pickle QUEUE FUNC [ARGS_JSON]                     -> job id (default pickle serializer)
  enqueue-many QUEUE FUNC COUNT                             -> [job id, ...], job i gets args [i]
  results ID                                                -> every result, newest first
  enqueue-in QUEUE SECONDS FUNC [ARGS_JSON]                 -> job id (scheduled, JSON)
  send shutdown|kill-horse WORKER / send stop-job JOB_ID    -> rq.command.send_*; prints null
"""
import json
import os
import sys

from redis import Redis
from rq import Queue, Retry, Worker
from rq.job import Job
from rq.serializers import JSONSerializer


def conn():
    return Redis.from_url(os.environ["RQ_REDIS_URL"])


def enqueue(queue, func, args="[]", kwargs="{}", opts="{}"):
    args, kwargs, opts = json.loads(args), json.loads(kwargs), json.loads(opts)
    q = Queue(queue, connection=conn(), serializer=JSONSerializer)
    if "retry" in opts:
        r = opts.pop("retry")
        opts["retry"] = Retry(max=r["max"], interval=r.get("interval", 0))
    if "job_timeout" in opts:  # enqueue()'s name for enqueue_call()'s timeout
        opts["timeout"] = opts.pop("job_timeout")
    job = q.enqueue(func, *args, **kwargs, **opts) if not opts else q.enqueue_call(
        func, args=args, kwargs=kwargs, **opts)
    print(json.dumps(job.id))


def enqueue_pickle(queue, func, args="[]"):
    q = Queue(queue, connection=conn())
    job = q.enqueue(func, *json.loads(args))
    print(json.dumps(job.id))


def enqueue_in(queue, seconds, func, args="[]"):
    from datetime import timedelta
    q = Queue(queue, connection=conn(), serializer=JSONSerializer)
    job = q.enqueue_in(timedelta(seconds=float(seconds)), func, *json.loads(args))
    print(json.dumps(job.id))


def enqueue_many(queue, func, count):
    q = Queue(queue, connection=conn(), serializer=JSONSerializer)
    ids = []
    with q.connection.pipeline() as pipe:
        datas = [Queue.prepare_data(func, args=(i,)) for i in range(int(count))]
        jobs = q.enqueue_many(datas, pipeline=pipe)
        pipe.execute()
        ids = [j.id for j in jobs]
    print(json.dumps(ids))


def results(job_id):
    job = Job.fetch(job_id, connection=conn(), serializer=JSONSerializer)
    print(json.dumps([{
        "type": r.type.name,
        "return_value": r.return_value,
        "exc_string": r.exc_string,
        "worker_name": r.worker_name,
    } for r in job.results()]))


def send(command, target):
    from rq.command import send_kill_horse_command, send_shutdown_command, send_stop_job_command
    c = conn()
    if command == "stop-job":
        send_stop_job_command(c, target, serializer=JSONSerializer)
    elif command == "kill-horse":
        send_kill_horse_command(c, target)
    elif command == "shutdown":
        send_shutdown_command(c, target)
    else:
        raise SystemExit("unknown command %r" % command)
    print("null")


def status(*ids):
    c = conn()
    out = []
    for i in ids:
        try:
            out.append(Job.fetch(i, connection=c, serializer=JSONSerializer).get_status())
        except Exception as e:  # NoSuchJobError etc.
            out.append("missing: %s" % type(e).__name__)
    print(json.dumps([str(s.value if hasattr(s, "value") else s) for s in out]))


def result(job_id):
    job = Job.fetch(job_id, connection=conn(), serializer=JSONSerializer)
    latest = job.latest_result()
    print(json.dumps({
        "status": job.get_status().value,
        "type": latest.type.name if latest else None,
        "return_value": job.return_value(),
        "exc_string": latest.exc_string if latest else None,
        "worker_name": latest.worker_name if latest else None,
    }))


def workers():
    out = []
    for w in Worker.all(connection=conn()):
        out.append({
            "name": w.name,
            "queues": w.queue_names(),
            "state": str(w.get_state()),
            "successful_job_count": w.successful_job_count,
            "failed_job_count": w.failed_job_count,
            "total_working_time": w.total_working_time,
            "birth_date": w.birth_date.isoformat() if w.birth_date else None,
            "last_heartbeat": w.last_heartbeat.isoformat() if w.last_heartbeat else None,
            "hostname": w.hostname,
            "pid": w.pid,
        })
    print(json.dumps(out))


def fetch(job_id):
    job = Job.fetch(job_id, connection=conn(), serializer=JSONSerializer)
    print(json.dumps({
        "func_name": job.func_name,
        "args": list(job.args),
        "kwargs": job.kwargs,
        "description": job.description,
        "origin": job.origin,
        "timeout": job.timeout,
        "result_ttl": job.result_ttl,
        "failure_ttl": job.failure_ttl,
        "meta": job.meta,
        "status": job.get_status().value,
        "enqueued_at": job.enqueued_at.isoformat() if job.enqueued_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "ended_at": job.ended_at.isoformat() if job.ended_at else None,
        "worker_name": job.worker_name,
    }))


if __name__ == "__main__":
    cmd, rest = sys.argv[1], sys.argv[2:]
    {
        "enqueue": enqueue,
        "enqueue-pickle": enqueue_pickle,
        "enqueue-many": enqueue_many,
        "enqueue-in": enqueue_in,
        "results": results,
        "send": send,
        "status": status,
        "result": result,
        "workers": workers,
        "fetch": fetch,
    }[cmd](*rest)
