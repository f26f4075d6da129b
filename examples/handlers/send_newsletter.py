#!/usr/bin/env python3
"""A command handler for `tasks.send_newsletter` (see supervisor.toml.example).

rqworker runs it once per job: the job arrives as JSON on stdin
({"id", "func_name", "args", "kwargs", "origin", "description", "meta"}), positional
arguments are also appended to argv, whatever is printed on stdout becomes the job's
return value (JSON if it parses), and a non-zero exit fails the job with stderr's tail.

Enqueue from Python:  q.enqueue('tasks.send_newsletter', 'me@nvie.com', subject='Hello')
"""
import json
import os
import sys
import time


def main():
    job = json.load(sys.stdin)
    args = job.get("args") or []
    kwargs = job.get("kwargs") or {}
    if not args:
        print("send_newsletter needs the recipient's address as its first argument", file=sys.stderr)
        return 1
    address = args[0]
    if "@" not in str(address):
        print("not an e-mail address: %r" % (address,), file=sys.stderr)
        return 1
    subject = kwargs.get("subject", "Our newsletter")
    # Pretend to talk to a mail server.
    time.sleep(float(kwargs.get("delay", 0.1)))
    print(json.dumps({
        "sent_to": address,
        "subject": subject,
        "job_id": job.get("id"),
        "worker": os.environ.get("RQ_WORKER_ID"),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
