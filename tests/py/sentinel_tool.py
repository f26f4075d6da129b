"""A Python app whose Redis is made highly available by Sentinel: it connects with
`redis.sentinel.Sentinel(...).master_for(NAME)` and enqueues with the real `rq` package
(JSONSerializer), as the Sentinel failover tests need.

  sentinel_tool.py SENTINELS MASTER enqueue QUEUE N FUNC ARGS [--wait] [--retry N]

SENTINELS is a JSON list of [host, port]; ARGS a JSON list. Prints a JSON list of
[job id, acknowledged] pairs: with --wait, acknowledged is whether `WAIT 1 1000` after the
enqueue returned 1 (the job reached the replica); without it, null. With --keep-going,
an enqueue that fails (a failover under way) is retried until it succeeds, up to 30 s.
"""
import json
import sys
import time

from redis.exceptions import ConnectionError, ReadOnlyError, TimeoutError
from redis.sentinel import Sentinel, MasterNotFoundError
from rq import Queue, Retry
from rq.serializers import JSONSerializer


def main():
    sentinels = [tuple(x) for x in json.loads(sys.argv[1])]
    master = sys.argv[2]
    cmd = sys.argv[3]
    if cmd != 'enqueue':
        sys.exit(f'unknown command {cmd!r}')
    queue, n, func, args = sys.argv[4], int(sys.argv[5]), sys.argv[6], json.loads(sys.argv[7])
    rest = sys.argv[8:]
    wait = '--wait' in rest
    keep_going = '--keep-going' in rest
    retry = int(rest[rest.index('--retry') + 1]) if '--retry' in rest else 0
    conn = Sentinel(sentinels, socket_timeout=2).master_for(master, socket_timeout=5)
    q = Queue(queue, connection=conn, serializer=JSONSerializer)
    out = []
    for _ in range(n):
        deadline = time.time() + 30
        while True:
            try:
                job = q.enqueue(func, *args, retry=Retry(max=retry) if retry else None)
                acked = conn.execute_command('WAIT', 1, 1000) == 1 if wait else None
                break
            except (ConnectionError, TimeoutError, ReadOnlyError, MasterNotFoundError):
                if not keep_going or time.time() > deadline:
                    raise
                time.sleep(0.05)
        out.append([job.id, acked])
    print(json.dumps(out))


if __name__ == '__main__':
    main()
