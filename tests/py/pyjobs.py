"""Python RQ 2.12 as the producer and reader of Python jobs, for tests/integration/python/.

  pyjobs.py APP_DIR CODE [ARGS_JSON]

Runs CODE with APP_DIR first on sys.path (so `from tasks import add` imports the test's app,
and `q.enqueue(add, 1)` pickles as RQ's users do), against $RQ_REDIS_URL, and prints the JSON
of the name `out` CODE sets (non-JSON values as their repr). CODE sees:

  conn, q              the Redis connection and Queue('q') (RQ's default serializer, pickle)
  args                 ARGS_JSON, parsed
  Queue, Retry, Callback, Job, JSONSerializer, Worker, rq
  fetch(id, serializer=None)  -> Job.fetch
  result(id, serializer=None) -> {status, type, return_value, latest_return_value,
                                  exc_string, worker_name, types, meta}: the job as RQ reads it
                                  (return_value: of its latest successful result), its latest
                                  result and the types of all its results, oldest first
"""
import json
import os
import sys


def main():
    app, code = sys.argv[1], sys.argv[2]
    sys.path.insert(0, app)
    from redis import Redis

    import rq
    from rq import Callback, Queue, Retry, Worker
    from rq.job import Job
    from rq.serializers import JSONSerializer

    conn = Redis.from_url(os.environ["RQ_REDIS_URL"])

    def fetch(job_id, serializer=None):
        return Job.fetch(job_id, connection=conn, serializer=serializer)

    def result(job_id, serializer=None):
        job = fetch(job_id, serializer)
        latest = job.latest_result()
        return {
            "status": job.get_status().value,
            "type": latest.type.name if latest else None,
            "return_value": job.return_value(),
            "latest_return_value": latest.return_value if latest else None,
            "exc_string": latest.exc_string if latest else None,
            "worker_name": latest.worker_name if latest else None,
            "types": [r.type.name for r in reversed(job.results())],
            "meta": job.meta,
        }

    ns = {
        "conn": conn,
        "q": Queue("q", connection=conn),
        "args": json.loads(sys.argv[3]) if len(sys.argv) > 3 else None,
        "Queue": Queue,
        "Retry": Retry,
        "Callback": Callback,
        "Job": Job,
        "JSONSerializer": JSONSerializer,
        "Worker": Worker,
        "rq": rq,
        "fetch": fetch,
        "result": result,
        "out": None,
    }
    exec(compile(code, "<test code>", "exec"), ns)
    print(json.dumps(ns["out"], default=repr))


if __name__ == "__main__":
    main()
