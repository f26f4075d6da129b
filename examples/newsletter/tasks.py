"""The app's own job functions: the RQ documentation's example, as a project module.

rqworker (started from this directory) imports this module and runs these functions exactly
as `rq worker` would; nothing here knows about rq-supervisor.
"""

import datetime
import time


def send_newsletter(address, subject="Our newsletter"):
    """Pretends to send a newsletter; returns what a real one might (Python objects round-trip
    through RQ's pickle serializer: the datetime comes back as a datetime)."""
    time.sleep(0.05)
    print(f"sending {subject!r} to {address}")
    return {"to": address, "subject": subject, "sent_at": datetime.datetime.now(datetime.timezone.utc)}


def count_words(text):
    return len(text.split())


def broken(address):
    raise ValueError(f"no mail server for {address}")
