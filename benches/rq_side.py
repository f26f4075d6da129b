"""Python RQ 2.12's side of the benchmark: enqueueing, and reading job timestamps.

  enqueue QUEUE FUNC N [SPACING_MS]   enqueue N jobs (JSON serializer); pipelined when no spacing
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


def times(queue):
    c = conn()
    out = []
    ids = FinishedJobRegistry(queue, connection=c).get_job_ids()
    for job in Job.fetch_many(ids, connection=c, serializer=JSONSerializer):
        if job and job.enqueued_at and job.started_at and job.ended_at:
            out.append([job.enqueued_at.timestamp(), job.started_at.timestamp(), job.ended_at.timestamp()])
    print(json.dumps(out))


if __name__ == "__main__":
    {"enqueue": enqueue, "times": times}[sys.argv[1]](*sys.argv[2:])
