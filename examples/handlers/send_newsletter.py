#!/usr/bin/env python3
"""A command handler: rqworker runs this program for every `tasks.send_newsletter` job.

The job arrives as JSON on stdin ({"id", "func_name", "args", "kwargs", "origin",
"description", "meta"}), its positional arguments are also appended to argv, and whatever
this program prints on stdout becomes the job's result (JSON if it parses). A non-zero exit
fails the job with the tail of stderr.
"""
import json
import os
import sys

job = json.load(sys.stdin)
recipients = sys.argv[1:] or job["args"]
if not recipients:
    print("send_newsletter needs at least one address", file=sys.stderr)
    sys.exit(2)
print(json.dumps({"sent_to": recipients, "job_id": os.environ["RQ_JOB_ID"]}))
