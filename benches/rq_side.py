"""Python RQ 2.12's side of the benchmark: enqueueing, and reading job timestamps.

  enqueue QUEUE FUNC N [SPACING_MS]   enqueue N jobs (JSON serializer); pipelined when no spacing
  enqueue-pickle QUEUE FUNC N         enqueue N jobs with RQ's default (pickle) serializer, pipelined
  forkloop N                          the ceiling of fork-per-job Python: N x (os.fork, call
                                      benchjobs.noop in the child, os._exit, os.waitpid); prints jobs/s
  times QUEUE                         JSON list of [enqueued_at, started_at, ended_at] (Unix floats)
                                      for the jobs in the finished registry
"""
import json
import os
import sys
import time

from redis import Redis
from rq import Queue
from rq.registry import FinishedJobRegistry
from rq.job import Job
from rq.serializers import JSONSerializer


def conn():
    return Redis.from_url(os.environ["RQ_REDIS_URL"])


def enqueue(queue, func, n, spacing_ms="0"):
    q = Queue(queue, connection=conn(), serializer=JSONSerializer)
    n, spacing = int(n), float(spacing_ms) / 1000.0
    if spacing == 0:
        with q.connection.pipeline() as p:
            for _ in range(n):
                q.enqueue(func, pipeline=p, result_ttl=3600)
            p.execute()
        return
    for _ in range(n):
        q.enqueue(func, result_ttl=3600)
        time.sleep(spacing)


def enqueue_pickle(queue, func, n):
    import benchjobs

    q = Queue(queue, connection=conn())
    with q.connection.pipeline() as p:
        for _ in range(int(n)):
            q.enqueue(getattr(benchjobs, func.split(".")[-1]), pipeline=p, result_ttl=3600)
        p.execute()


def forkloop(n):
    import benchjobs

    n = int(n)
    start = time.perf_counter()
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            benchjobs.noop()
            os._exit(0)
        os.waitpid(pid, 0)
    print(n / (time.perf_counter() - start))


def times(queue):
    c = conn()
    out = []
    ids = FinishedJobRegistry(queue, connection=c).get_job_ids()
    for job in Job.fetch_many(ids, connection=c, serializer=JSONSerializer):
        if job and job.enqueued_at and job.started_at and job.ended_at:
            out.append([job.enqueued_at.timestamp(), job.started_at.timestamp(), job.ended_at.timestamp()])
    print(json.dumps(out))


if __name__ == "__main__":
    {"enqueue": enqueue, "enqueue-pickle": enqueue_pickle, "forkloop": forkloop, "times": times}[sys.argv[1]](
        *sys.argv[2:]
    )
