"""The Python half of the chaos and soak load: enqueues a plan of jobs with RQ 2.12 and its
JSONSerializer, spread over a number of seconds, through Redis stalls, killed connections and
restarts.

  chaos_producer.py PLAN_FILE SECONDS

PLAN_FILE holds one JSON object per line: {"id", "queue", "func", "args", "retries",
"depends_on", "pickle"} (the last three may be 0 / null / false; "pickle" enqueues with RQ's
default serializer instead of JSON). Reads the Redis URL from $RQ_REDIS_URL, which may be a
`redis+sentinel://` URL: the app then connects through `redis.sentinel.Sentinel`, and a job
counts as enqueued once `WAIT 1` says the replica has it. Prints {"enqueued": N,
"retries": R, "unreplicated": [ids the master took while it had no replica]} when done.

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
from redis.sentinel import MasterNotFoundError, Sentinel
from rq import Queue, Retry
from rq.serializers import JSONSerializer


def sentinel_url():
    """The Sentinels and the master's name of a `redis+sentinel://h:p[,h:p]/NAME` URL (the
    form the tests write: no credentials, no database), or None for any other URL."""
    url = os.environ["RQ_REDIS_URL"]
    if not url.startswith("redis+sentinel://"):
        return None
    hosts, _, name = url[len("redis+sentinel://"):].partition("/")
    nodes = [(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) for h in hosts.split(",")]
    return nodes, name.split("/")[0]


def connect():
    options = dict(retry=RedisRetry(NoBackoff(), 0), socket_timeout=15, socket_connect_timeout=3)
    sentinel = sentinel_url()
    if sentinel:
        nodes, name = sentinel
        return Sentinel(nodes, socket_timeout=2, socket_connect_timeout=2).master_for(name, **options)
    return Redis.from_url(os.environ["RQ_REDIS_URL"], **options)


def replication(conn, started):
    """With Sentinels: 'yes' when the replica has what this connection wrote (WAIT 1),
    'no-replica' when the master has none to wait for (after its replica was killed) or 5 s
    of trying did not get there (so that the load goes on; those jobs are listed as
    unreplicated), else 'not-yet'."""
    # A master without a replica would make every WAIT wait out its whole timeout.
    if conn.info("replication").get("connected_slaves", 0) == 0:
        return "no-replica"
    if conn.execute_command("WAIT", 1, 1000) >= 1:
        return "yes"
    return "no-replica" if time.monotonic() - started > 5 else "not-yet"


def main(plan_file, seconds):
    with open(plan_file) as f:
        plan = [json.loads(line) for line in f if line.strip()]
    gap = float(seconds) / max(len(plan), 1)
    start = time.monotonic()
    conn = connect()
    sentinel = sentinel_url() is not None
    unreplicated = []
    retries = 0
    for i, job in enumerate(plan):
        # Keep to the schedule without bursting after a slow stretch.
        due = start + i * gap
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        deadline = time.monotonic() + 120
        first_try = time.monotonic()
        while True:
            try:
                if conn.exists("rq:job:" + job["id"]):
                    # Through Sentinels, a job counts as enqueued once the replica has it:
                    # one the master took alone is lost if a failover replaces it.
                    if sentinel:
                        state = replication(conn, first_try)
                        if state == "not-yet":
                            raise ConnectionError("not replicated yet")
                        if state == "no-replica":
                            unreplicated.append(job["id"])
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
                if sentinel:
                    continue  # back to the check above: exists, and replicated
                break
            except (ConnectionError, TimeoutError, ResponseError, MasterNotFoundError) as e:
                # ResponseError: LOADING while a restarted Redis reads its AOF.
                if time.monotonic() > deadline:
                    raise SystemExit("cannot enqueue %s: %s" % (job["id"], e))
                retries += 1
                time.sleep(0.05)
                conn = connect()
    print(json.dumps({"enqueued": len(plan), "retries": retries, "unreplicated": unreplicated}))


if __name__ == "__main__":
    main(*sys.argv[1:])
