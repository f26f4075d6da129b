"""Enqueues a few jobs with Python RQ (JSON serializer) and prints how they ended."""
import os
import sys

from redis import Redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer

redis = Redis.from_url(os.environ["RQ_REDIS_URL"])
jobs = [
    Queue("high", connection=redis, serializer=JSONSerializer).enqueue("rq.builtin.echo", "hello", {"from": "python"}),
    Queue("default", connection=redis, serializer=JSONSerializer).enqueue("tasks.send_newsletter", "me@nvie.com"),
    Queue("default", connection=redis, serializer=JSONSerializer).enqueue("rq.builtin.sleep", 0.2),
    Queue("low", connection=redis, serializer=JSONSerializer).enqueue("rq.builtin.fail", "this job fails on purpose"),
]
import time
deadline = time.time() + 30
while len(Worker.all(connection=redis)) < 3 and time.time() < deadline:
    time.sleep(0.05)
print("workers seen by Python RQ:", sorted(w.name for w in Worker.all(connection=redis)), flush=True)
failed = False
for job in jobs:
    result = job.latest_result(timeout=30)
    status = job.get_status()
    detail = job.return_value() if result and result.type == result.Type.SUCCESSFUL else (result.exc_string.strip() if result else "no result")
    print(f"{job.description:45} {status.value:9} {detail}", flush=True)
    expected = "failed" if job.func_name == "rq.builtin.fail" else "finished"
    failed |= status.value != expected
sys.exit(1 if failed else 0)
