"""The Python half of the chaos and soak load: enqueues a plan of jobs with RQ 2.12 and its
JSONSerializer, spread over a number of seconds, through Redis stalls, killed connections and
restarts.

  chaos_producer.py PLAN_FILE SECONDS

PLAN_FILE holds one JSON object per line: {"id", "queue", "func", "args", "retries",
"depends_on", "pickle"} (the last three may be 0 / null / false; "pickle" enqueues with RQ's
default serializer instead of JSON). Reads the Redis URL from $RQ_REDIS_URL. Prints
{"enqueued": N, "retries": R} when done.

Every job has its own id, so a failed enqueue is repeated only when the job does not exist:
RQ writes a job in one MULTI/EXEC (or one WATCH/MULTI/EXEC when it is deferred), so after an
error it either fully exists or not at all, and nothing is doubled or dropped. redis-py's own
retries are off for the same reason: it would replay a transaction whose reply was lost.
"""
import json
import os
import sys
import time

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, ResponseError, TimeoutError
from redis.retry import Retry as RedisRetry
from rq import Queue, Retry
from rq.serializers import JSONSerializer


def connect():
    return Redis.from_url(
        os.environ["RQ_REDIS_URL"],
        retry=RedisRetry(NoBackoff(), 0),
        socket_timeout=15,
        socket_connect_timeout=3,
    )


def main(plan_file, seconds):
    with open(plan_file) as f:
        plan = [json.loads(line) for line in f if line.strip()]
    gap = float(seconds) / max(len(plan), 1)
    start = time.monotonic()
    conn = connect()
    retries = 0
    for i, job in enumerate(plan):
        # Keep to the schedule without bursting after a slow stretch.
        due = start + i * gap
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        deadline = time.monotonic() + 120
        while True:
            try:
                if conn.exists("rq:job:" + job["id"]):
                    break
                serializer = None if job.get("pickle") else JSONSerializer
                q = Queue(job["queue"], connection=conn, serializer=serializer)
                q.enqueue_call(
                    job["func"],
                    args=job["args"],
                    job_id=job["id"],
                    retry=Retry(max=job["retries"]) if job.get("retries") else None,
                    depends_on=job.get("depends_on") or None,
                )
                break
            except (ConnectionError, TimeoutError, ResponseError) as e:
                # ResponseError: LOADING while a restarted Redis reads its AOF.
                if time.monotonic() > deadline:
                    raise SystemExit("cannot enqueue %s: %s" % (job["id"], e))
                retries += 1
                time.sleep(0.05)
                conn = connect()
    print(json.dumps({"enqueued": len(plan), "retries": retries}))


if __name__ == "__main__":
    main(*sys.argv[1:])
