"""Python RQ 2.12 as producer, reader, commander and scheduler for the rq_contract_* tests
(issue #3: retries, dependents, scheduler, commands, suspension, maintenance, mixed fleets).

Every command reads the Redis URL from $RQ_REDIS_URL and prints JSON on stdout.

  enqueue QUEUE FUNC [ARGS_JSON [OPTS_JSON]]             -> job id
  enqueue_many QUEUE FUNC N [ARGS_JSON [OPTS_JSON]]      -> [job id, ...] (one pipeline)
  enqueue_batch QUEUE SPECS_JSON                         -> [job id, ...] for [{func, args, opts}]
  enqueue_in QUEUE SECONDS FUNC [ARGS_JSON [OPTS_JSON]]  -> job id (Queue.enqueue_in)
  enqueue_in_many QUEUE N SECONDS FUNC [SPREAD]          -> [job id, ...], job i due in
                                                            SECONDS + i % SPREAD seconds
  enqueue_at QUEUE UNIX_SECONDS FUNC [ARGS_JSON]         -> job id (Queue.enqueue_at)
  job ID                                                 -> what Python reads back (see job_doc)
  jobs ID...                                             -> [job_doc, ...]
  stop_job ID | shutdown WORKER | kill_horse WORKER      -> null (rq.command.send_*)
  scheduler QUEUE...                                     -> runs RQScheduler in the foreground
                                                            (prints its name first) until SIGTERM
  try_locks QUEUE...                                     -> queues a fresh RQScheduler could lock
                                                            (released again at once)
  scheduler_info NAME                                    -> RQScheduler.fetch(NAME) as a dict

OPTS_JSON keys: retry {max, interval, enqueue_at_front}, repeat {times, interval},
depends_on [ids], allow_failure, dep_at_front (Dependency(enqueue_at_front=True)), at_front,
job_id, timeout, result_ttl, failure_ttl, ttl, meta, description.
"""
import json
import os
import sys
from datetime import datetime, timedelta, timezone

from redis import Redis
from rq import Queue, Repeat, Retry
from rq.command import send_kill_horse_command, send_shutdown_command, send_stop_job_command
from rq.job import Dependency, Job
from rq.registry import ScheduledJobRegistry
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer


def conn():
    return Redis.from_url(os.environ["RQ_REDIS_URL"])


def queue(name, c=None):
    return Queue(name, connection=c or conn(), serializer=JSONSerializer)


def call_opts(opts):
    opts = dict(opts)
    if "retry" in opts:
        r = opts.pop("retry")
        opts["retry"] = Retry(max=r["max"], interval=r.get("interval", 0),
                              enqueue_at_front=r.get("enqueue_at_front", False))
    if "repeat" in opts:
        r = opts.pop("repeat")
        opts["repeat"] = Repeat(times=r["times"], interval=r.get("interval", 0))
    allow_failure = opts.pop("allow_failure", False)
    dep_at_front = opts.pop("dep_at_front", False)
    if "depends_on" in opts:
        ids = opts.pop("depends_on")
        if allow_failure or dep_at_front:
            opts["depends_on"] = Dependency(jobs=ids, allow_failure=allow_failure,
                                            enqueue_at_front=dep_at_front)
        else:
            opts["depends_on"] = ids
    return opts


def enqueue(qname, func, args="[]", opts="{}"):
    job = queue(qname).enqueue_call(func, args=json.loads(args), **call_opts(json.loads(opts)))
    print(json.dumps(job.id))


def enqueue_many(qname, func, n, args="[]", opts="{}"):
    c = conn()
    q = queue(qname, c)
    args, opts = json.loads(args), json.loads(opts)
    datas = [Queue.prepare_data(func, args=args, **call_opts(opts)) for _ in range(int(n))]
    jobs = q.enqueue_many(datas)
    print(json.dumps([j.id for j in jobs]))


def enqueue_batch(qname, specs):
    c = conn()
    q = queue(qname, c)
    datas = [Queue.prepare_data(s["func"], args=s.get("args", []), **call_opts(s.get("opts", {})))
             for s in json.loads(specs)]
    jobs = q.enqueue_many(datas)
    print(json.dumps([j.id for j in jobs]))


def enqueue_in(qname, seconds, func, args="[]", opts="{}"):
    opts = call_opts(json.loads(opts))
    if "timeout" in opts:
        opts["job_timeout"] = opts.pop("timeout")
    job = queue(qname).enqueue_in(timedelta(seconds=float(seconds)), func, *json.loads(args), **opts)
    print(json.dumps(job.id))


def enqueue_in_many(qname, n, seconds, func, spread="1"):
    c = conn()
    q = queue(qname, c)
    ids = []
    with c.pipeline() as pipe:
        for i in range(int(n)):
            delay = timedelta(seconds=float(seconds) + i % int(spread))
            ids.append(q.enqueue_in(delay, func, i, pipeline=pipe).id)
        pipe.execute()
    print(json.dumps(ids))


def enqueue_at(qname, unix_seconds, func, args="[]"):
    when = datetime.fromtimestamp(float(unix_seconds), tz=timezone.utc)
    job = queue(qname).enqueue_at(when, func, *json.loads(args))
    print(json.dumps(job.id))


def job_doc(c, job_id):
    try:
        job = Job.fetch(job_id, connection=c, serializer=JSONSerializer)
    except Exception as e:  # NoSuchJobError
        return {"id": job_id, "missing": type(e).__name__}
    results = []
    for r in job.results():
        results.append({
            "type": r.type.name,
            "return_value": r.return_value,
            "exc_string": r.exc_string,
            "worker_name": r.worker_name,
        })
    scheduled_at = None
    if job.origin:
        reg = ScheduledJobRegistry(job.origin, connection=c, serializer=JSONSerializer)
        try:
            t = reg.get_scheduled_time(job)
            scheduled_at = t.timestamp()
        except Exception:
            scheduled_at = None
    return {
        "id": job.id,
        "status": job.get_status().value,
        "origin": job.origin,
        "retries_left": job.retries_left,
        "repeats_left": job.repeats_left,
        "worker_name": job.worker_name,
        "enqueued_at": job.enqueued_at.timestamp() if job.enqueued_at else None,
        "started_at": job.started_at.timestamp() if job.started_at else None,
        "ended_at": job.ended_at.timestamp() if job.ended_at else None,
        "dependency_ids": list(job._dependency_ids),
        "scheduled_at": scheduled_at,
        "return_value": job.return_value(),
        "results": results,
    }


def job(job_id):
    print(json.dumps(job_doc(conn(), job_id)))


def jobs(*ids):
    c = conn()
    print(json.dumps([job_doc(c, i) for i in ids]))


def stop_job(job_id):
    send_stop_job_command(conn(), job_id, serializer=JSONSerializer)
    print("null")


def shutdown(worker):
    send_shutdown_command(conn(), worker)
    print("null")


def kill_horse(worker):
    send_kill_horse_command(conn(), worker)
    print("null")


def scheduler(*queues):
    s = RQScheduler(list(queues), connection=conn(), serializer=JSONSerializer)
    print(json.dumps(s.name), flush=True)
    s.work()


def try_locks(*queues):
    s = RQScheduler(list(queues), connection=conn(), serializer=JSONSerializer)
    got = s.acquire_locks()
    s.release_locks()
    print(json.dumps(sorted(got)))


def scheduler_info(name):
    s = RQScheduler.fetch(name, conn())
    print(json.dumps({
        "name": s.name,
        "hostname": s.hostname,
        "pid": s.pid,
        "queues": sorted(s._queue_names),
        "created_at": s.created_at.timestamp(),
        "last_heartbeat": s.last_heartbeat.timestamp() if s.last_heartbeat else None,
    }))


if __name__ == "__main__":
    cmd, rest = sys.argv[1], sys.argv[2:]
    {
        "enqueue": enqueue,
        "enqueue_many": enqueue_many,
        "enqueue_batch": enqueue_batch,
        "enqueue_in": enqueue_in,
        "enqueue_in_many": enqueue_in_many,
        "enqueue_at": enqueue_at,
        "job": job,
        "jobs": jobs,
        "stop_job": stop_job,
        "shutdown": shutdown,
        "kill_horse": kill_horse,
        "scheduler": scheduler,
        "try_locks": try_locks,
        "scheduler_info": scheduler_info,
    }[cmd](*rest)
