"""rq-supervisor's Python side, loaded once into the interpreter that rqworker embeds.

The worker calls `configure()` once, after the interpreter has started and before any work
horse is forked; each horse, forked from the worker, calls `run()` for its one job and then
exits without running atexit handlers. A job runs as `rq worker` 2.12 runs it in its horse
(rq.worker.base.Worker.perform_job): the job's own serializer, its function resolved by name
or on its pickled instance, `get_current_job()`, the timeout raised inside the job as
JobTimeoutException, the success and failure callbacks, a returned Retry, the exception
handlers. The bookkeeping in Redis stays with the Rust worker: `run()` only says how the job
ended.

RQ itself is used when it is importable (as it is wherever RQ producers run); without it
jobs still run, with the same serializers, resolution and timeout, but without `Job`
objects (so no callbacks and no `get_current_job()`).
"""

import asyncio
import base64
import importlib
import json
import math
import pickle
import signal
import sys
import traceback
import zlib

try:
    from rq.job import Job as _Job
    from rq.job import Retry as _Retry
    from rq.job import _job_stack
    from rq.serializers import resolve_serializer as _resolve_serializer
    from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty
    from rq.utils import import_attribute as _import_attribute

    HAVE_RQ = True
except ImportError:
    HAVE_RQ = False
    _Job = _Retry = _job_stack = _resolve_serializer = _import_attribute = None

    class JobTimeoutException(Exception):
        """Raised inside a job that runs past its timeout (rq.timeouts' class when RQ is there)."""

    class UnixSignalDeathPenalty:
        """SIGALRM after the timeout raises the exception inside the job, as RQ's class does."""

        def __init__(self, timeout, exception, **kwargs):
            self._timeout = timeout
            self._exception = exception

        def _fire(self, signum, frame):
            raise self._exception(f'Task exceeded maximum timeout value ({self._timeout} seconds)')

        def __enter__(self):
            signal.signal(signal.SIGALRM, self._fire)
            signal.alarm(int(math.ceil(self._timeout)))

        def __exit__(self, *exc):
            signal.alarm(0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            return False


class _Pickle:
    """RQ's default serializer, for when RQ is not importable."""

    @staticmethod
    def dumps(obj):
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    loads = staticmethod(pickle.loads)


class _Json:
    """RQ's JSONSerializer, for when RQ is not importable."""

    @staticmethod
    def dumps(obj):
        return json.dumps(obj).encode('utf-8')

    @staticmethod
    def loads(data):
        return json.loads(data.decode('utf-8'))


_config = {
    'serializer': None,
    'connection': None,
    'exception_handlers': [],
    'result_cap': 128 * 1024 * 1024,
}


def configure(redis_url, serializer, exception_handlers, result_cap):
    """Once per worker, before the first fork. Every error is raised with a message that
    says what to fix; the worker reports it and stops."""
    if serializer:
        _config['serializer'] = _load_serializer(serializer)
    handlers = []
    for path in exception_handlers:
        try:
            handlers.append(_import(path))
        except Exception as e:
            raise RuntimeError(f'--exception-handler {path}: cannot import it ({type(e).__name__}: {e})') from e
    _config['exception_handlers'] = handlers
    _config['result_cap'] = result_cap
    if HAVE_RQ and redis_url:
        try:
            import redis

            # No connection is opened here: redis-py connects at the first command, and its
            # pool opens a fresh connection in a forked horse. Only a job that talks to Redis
            # itself (job.save_meta(), enqueueing) pays for one.
            _config['connection'] = redis.Redis.from_url(redis_url)
        except Exception as e:  # a URL redis-py cannot use (e.g. unix:// with a query it refuses)
            print(f'rqworker: get_current_job().connection is unavailable: {e}', file=sys.stderr)
    return HAVE_RQ


def _load_serializer(path):
    if HAVE_RQ:
        return _resolve_serializer(path)
    aliases = {'pickle': _Pickle, 'json': _Json}
    found = aliases.get(path) or _import(path)
    if not (hasattr(found, 'dumps') and hasattr(found, 'loads')):
        raise RuntimeError(f'--serializer {path}: it has no dumps() and loads()')
    return found


def _import(name):
    if HAVE_RQ:
        return _import_attribute(name)
    bits = name.split('.')
    module, rest = None, []
    while bits:
        try:
            module = importlib.import_module('.'.join(bits))
            break
        except ImportError:
            rest.insert(0, bits.pop())
    if module is None:
        import builtins

        if hasattr(builtins, name):
            return getattr(builtins, name)
        raise ValueError(f'Invalid attribute name: {name}')
    found = module
    for attr in rest:
        found = getattr(found, attr)
    return found


def _serializer_for(data):
    """The job's own serializer: the configured one, else pickle for pickled payloads (RQ's
    default, protocol 2+ starts with PROTO) and JSON for the rest."""
    if _config['serializer'] is not None:
        return _config['serializer']
    pickled = data[:1] == b'\x80'
    if HAVE_RQ:
        return _resolve_serializer('pickle' if pickled else 'json')
    return _Pickle if pickled else _Json


def _inflate(data):
    try:
        return zlib.decompress(data)
    except zlib.error:
        return data


def _exc_string():
    return ''.join(traceback.format_exception(*sys.exc_info()))


def _encode_result(serializer, value):
    """('ok', base64 text or '', repr) for a result the serializer can write, within the cap."""
    if value is None:
        return ('ok', '', 'None')
    try:
        data = serializer.dumps(value)
    except Exception as e:
        return (
            'failed',
            f'UnserializableResult: the job returned {type(value).__name__} {_short_repr(value)}, '
            f'which {getattr(serializer, "__name__", serializer)} cannot serialize ({type(e).__name__}: {e}); '
            'return a value the serializer can write (pickle: no open files, sockets or lambdas; '
            'JSON: dicts, lists, strings, numbers, booleans, None)\n',
            '',
        )
    cap = _config['result_cap']
    if len(data) > cap:
        return (
            'failed',
            f'ResultTooLarge: the job returned {len(data)} bytes once serialized, more than the '
            f'{cap // (1024 * 1024)} MiB a result may take; store large results elsewhere '
            '(a file, an object store) and return a reference to them\n',
            '',
        )
    return ('ok', base64.b64encode(data).decode('ascii'), _short_repr(value))


def _encode_retry(serializer, retry):
    """The returned Retry as its results store it (base64). A serializer that cannot write a
    Retry (JSON) stores RQ's placeholder instead, as rq.results.Result.serialize does: the job
    is retried all the same."""
    try:
        data = serializer.dumps(retry)
    except Exception:
        from rq.defaults import UNSERIALIZABLE_RETURN_VALUE_PAYLOAD

        data = serializer.dumps(UNSERIALIZABLE_RETURN_VALUE_PAYLOAD)
    return base64.b64encode(data).decode('ascii')


def _short_repr(value, limit=200):
    try:
        text = repr(value)
    except Exception:
        text = f'<{type(value).__name__}>'
    return text if len(text) <= limit else text[:limit] + '...'


def _call(func, args, kwargs):
    result = func(*args, **kwargs)
    if asyncio.iscoroutine(result):
        # As RQ 2.12: an event loop of its own per job.
        result = asyncio.new_event_loop().run_until_complete(result)
    return result


def _handle_exception(job, exc_info):
    for handler in _config['exception_handlers']:
        try:
            fall_through = handler(job, *exc_info)
        except Exception:
            print(f'rqworker: exception handler {handler!r} raised:\n{_exc_string()}', file=sys.stderr)
            break
        if fall_through is not None and not fall_through:
            break


def run(job_id, fields, timeout, worker_name):
    """Runs the job whose hash is `fields` (bytes to bytes, as Redis stores it) in this horse.

    Returns (kind, payload, text):
      ('ok', base64 of the serialized return value or '' for None, its repr),
      ('failed', exc_string, ''),
      ('retry', base64 of the serialized Retry, 'max interval interval ...'),
    and flushes stdout and stderr so the job's output reaches the worker's log.
    """
    try:
        return _run(job_id, fields, timeout, worker_name)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass


def _run(job_id, fields, timeout, worker_name):
    data = _inflate(fields.get(b'data', b''))
    serializer = _serializer_for(data)
    job = None
    if HAVE_RQ:
        job = _Job(job_id, connection=_config['connection'], serializer=serializer)
        job.restore(fields)
        job.worker_name = worker_name
    death_penalty = UnixSignalDeathPenalty
    try:
        with _Timeout(death_penalty, timeout, job_id):
            if job is not None:
                _job_stack.push(job)
                try:
                    value = job._execute()
                finally:
                    _job_stack.pop()
            else:
                func_name, instance, args, kwargs = serializer.loads(data)
                func = getattr(instance, func_name) if instance is not None else _import(func_name)
                value = _call(func, args, kwargs)
        if HAVE_RQ and isinstance(value, _Retry):
            intervals = value.intervals if isinstance(value.intervals, list) else [value.intervals]
            return (
                'retry',
                _encode_retry(serializer, value),
                f'{value.max} ' + ' '.join(str(int(i)) for i in intervals),
            )
        if job is not None:
            job.execute_success_callback(death_penalty, value)
        return _encode_result(serializer, value)
    except BaseException:
        exc_info = sys.exc_info()
        exc_string = _exc_string()
        if job is not None:
            try:
                job.execute_failure_callback(death_penalty, *exc_info)
            except BaseException:
                exc_info = sys.exc_info()
                exc_string = _exc_string()
        _handle_exception(job, exc_info)
        return ('failed', exc_string, '')


def run_stopped_callback(job_id, fields):
    """In a horse of its own, after the job's horse was killed by a stop-job command: the job's
    on_stopped callback, with its timeout, as RQ runs it in the worker."""
    if not HAVE_RQ:
        return
    data = _inflate(fields.get(b'data', b''))
    job = _Job(job_id, connection=_config['connection'], serializer=_serializer_for(data))
    job.restore(fields)
    try:
        job.execute_stopped_callback(UnixSignalDeathPenalty)
    except BaseException:
        print(f'rqworker: the stopped callback of job {job_id} raised:\n{_exc_string()}', file=sys.stderr)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass


class _Timeout:
    """RQ's death penalty around the job, skipped for jobs without a time limit (-1)."""

    def __init__(self, penalty, timeout, job_id):
        self._inner = penalty(timeout, JobTimeoutException, job_id=job_id) if timeout > 0 else None

    def __enter__(self):
        if self._inner is not None:
            self._inner.__enter__()

    def __exit__(self, *exc):
        if self._inner is not None:
            return self._inner.__exit__(*exc)
        return False
