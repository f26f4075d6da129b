"""Job functions for Python RQ's side of the benchmark (rq worker imports them by name)."""


def noop():
    return None
