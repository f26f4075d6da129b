"""The producer side, as the app writes it: plain Python RQ, its default (pickle) serializer."""
import os
import sys
import time

from redis import Redis
from rq import Queue, Worker

from tasks import broken, count_words, send_newsletter

redis = Redis.from_url(os.environ.get("RQ_REDIS_URL", "redis://127.0.0.1:6379/0"))
jobs = [
    Queue("high", connection=redis).enqueue(send_newsletter, "me@nvie.com"),
    Queue("normal", connection=redis).enqueue(send_newsletter, "you@example.com", subject="Hello"),
    Queue("low", connection=redis).enqueue(count_words, "the quick brown fox"),
    Queue("low", connection=redis).enqueue(broken, "nobody@example.com"),
]
deadline = time.time() + 30
while len(Worker.all(connection=redis)) < 2 and time.time() < deadline:
    time.sleep(0.05)
print("workers Python RQ sees:", sorted(w.name for w in Worker.all(connection=redis)), flush=True)
ok = True
for job in jobs:
    result = job.latest_result(timeout=30)
    status = job.get_status()
    if result and result.type == result.Type.SUCCESSFUL:
        detail = repr(job.return_value())
    else:
        detail = result.exc_string.strip().splitlines()[-1] if result else "no result"
    print(f"{job.description:50} {status.value:9} {detail}", flush=True)
    expected = "failed" if job.func_name == "tasks.broken" else "finished"
    ok &= status.value == expected
sys.exit(0 if ok else 1)
