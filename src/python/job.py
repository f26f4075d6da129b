"""rq-supervisor's Python side, loaded once into the interpreter that rqworker embeds.

The worker calls `configure()` once, after the interpreter has started and before any work
horse is forked; each horse, forked from the worker, calls `run()` for its one job and then
exits without running atexit handlers. A job runs as `rq worker` 2.12 runs it in its horse
(rq.worker.base.Worker.perform_job): the job's own serializer, its function resolved by name
(rq.utils.import_attribute's rules) or on its pickled instance, `get_current_job()`, the
timeout raised inside the job as rq.timeouts.JobTimeoutException, the success and failure
callbacks, a returned Retry, the exception handlers. The bookkeeping in Redis stays with the
Rust worker: `run()` only says how the job ended.

This module imports RQ only where a job needs it. Every horse is a copy of the worker, and a
fork costs in proportion to the worker's memory: with `rq` (and so `redis-py`) imported, a
bare fork loop of this interpreter runs at 213 forks/s here, without it at 565. So RQ's
objects are used when the app has imported `rq` itself (at preload, or in the job's module,
as apps that call `get_current_job()` do), or when the job asks for them (callbacks, an
exception handler, a `get_current_job()` that imports `rq` on the spot): then the job runs
with a real `rq.job.Job`, exactly as under RQ. A job that never touches RQ runs without.
"""

import base64
import importlib
import importlib.abc
import importlib.util
import json
import math
import pickle
import signal
import sys
import traceback
import zlib

try:
    # The C functions under `signal`, without its enum conversions: a few microseconds per
    # job, which count when jobs run in the worker process.
    from _signal import SIG_DFL as _SIG_DFL, SIGALRM as _SIGALRM, alarm as _alarm, signal as _set_handler
except ImportError:
    from signal import SIG_DFL as _SIG_DFL, SIGALRM as _SIGALRM, alarm as _alarm, signal as _set_handler


class DefaultSerializer:
    """RQ's DefaultSerializer: the same bytes (`pickle.dumps` at the highest protocol)."""

    @staticmethod
    def dumps(obj):
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    loads = staticmethod(pickle.loads)


class JSONSerializer:
    """RQ's JSONSerializer: the same bytes (`json.dumps(...).encode('utf-8')`)."""

    @staticmethod
    def dumps(obj):
        return json.dumps(obj).encode('utf-8')

    @staticmethod
    def loads(data):
        return json.loads(data.decode('utf-8'))


# RQ's own serializer names, read as ours without importing RQ (they write the same bytes).
_BUILT_IN_SERIALIZERS = {
    'pickle': DefaultSerializer,
    'json': JSONSerializer,
    'rq.serializers.DefaultSerializer': DefaultSerializer,
    'rq.serializers.PickleSerializer': DefaultSerializer,
    'rq.serializers.JSONSerializer': JSONSerializer,
}

_config = {
    'serializer': None,
    'redis_url': None,
    'sentinel_auth': {},
    'connection': None,
    'exception_handlers': [],
    'result_cap': 128 * 1024 * 1024,
}


def bootstrap(config_json):
    """The worker's one call after starting the interpreter: the import path (the working
    directory first, then -P), this module's configuration, the preloaded modules. Returns ''
    or what went wrong (a traceback)."""
    try:
        cfg = json.loads(config_json)
        for i, d in enumerate(cfg['front']):
            sys.path.insert(i, d)
        _config['sentinel_auth'] = {
            k: v
            for k, v in (('username', cfg.get('sentinel_username')), ('password', cfg.get('sentinel_password')))
            if v is not None
        }
        configure(cfg['redis_url'], cfg['serializer'], cfg['exception_handlers'], cfg['result_cap'])
        for name in cfg['preload']:
            try:
                importlib.import_module(name)
            except BaseException:
                return f'cannot preload Python module {name!r}:\n{_exc_string()}'
        return ''
    except BaseException:
        return _exc_string()
    finally:
        _flush()


def run_job(job_id, fields, timeout, worker_name):
    """`run()` for the job (in its horse, or in the worker in no-fork mode), as the JSON
    report the worker reads. `fields` is the job hash, bytes to bytes, as redis-py reads it."""
    try:
        kind, payload, text = run(job_id, fields, timeout, worker_name)
    except BaseException:
        kind, payload, text = 'failed', _exc_string(), ''
    return json.dumps({'kind': kind, 'payload': payload, 'text': text})


def run_stopped(job_id, fields):
    run_stopped_callback(job_id, fields)


def app_threads():
    """Threads the app started (Python knows of them), besides the worker's; as text."""
    threading = sys.modules.get('threading')
    return str(max(threading.active_count() - 1, 0) if threading else 0)


def flush():
    _flush()


def configure(redis_url, serializer, exception_handlers, result_cap):
    """Once per worker, before the first fork. Every error is raised with a message that
    says what to fix; the worker reports it and stops."""
    if serializer:
        _config['serializer'] = _load_serializer(serializer)
    handlers = []
    for path in exception_handlers:
        try:
            handlers.append(import_attribute(path))
        except Exception as e:
            raise RuntimeError(f'--exception-handler {path}: cannot import it ({type(e).__name__}: {e})') from e
    _config['exception_handlers'] = handlers
    _config['result_cap'] = result_cap
    _config['redis_url'] = redis_url
    _warm_up()
    return _rq() is not None


def _rq():
    """`rq.job` when RQ is imported in this process (by the app, or by a job), else None."""
    return sys.modules.get('rq.job')


def _import_rq():
    """`rq.job`, importing RQ if it is installed; None without it."""
    try:
        import rq.job

        return rq.job
    except ImportError:
        return None


def _connection():
    """The Redis connection a job object carries (`job.connection`, `save_meta()`): created
    the first time a job object is, opened by redis-py only when the job uses it."""
    if _config['connection'] is None and _config['redis_url']:
        import redis

        url = _config['redis_url']
        if url.lower().startswith(('redis+sentinel://', 'rediss+sentinel://')):
            _config['connection'] = _sentinel_master(url)
        else:
            _config['connection'] = redis.Redis.from_url(url)
    return _config['connection']


def _sentinel_master(url):
    """redis-py has no URL for Sentinels: `redis+sentinel://[user:pass@]h:p[,h:p]/NAME[/DB]`
    (already validated by the worker) becomes `Sentinel(...).master_for(NAME)`, which finds
    the master again after a failover."""
    from urllib.parse import unquote

    import redis.sentinel

    scheme, rest = url.split('://', 1)
    authority, _, path = rest.partition('/')
    userinfo, _, hosts = authority.rpartition('@')
    user, _, password = userinfo.partition(':')
    nodes = []
    for h in filter(None, (x.strip() for x in hosts.split(','))):
        if h.startswith('['):
            host, _, port = h[1:].partition(']')
            port = port.lstrip(':')
        else:
            host, _, port = h.rpartition(':') if ':' in h else (h, '', '')
        nodes.append((host, int(port or 26379)))
    name, _, db = path.partition('/')
    tls = scheme.lower().startswith('rediss')
    sentinel_kwargs = dict(_config['sentinel_auth'])
    if tls:
        sentinel_kwargs['ssl'] = True
    sentinels = redis.sentinel.Sentinel(nodes, sentinel_kwargs=sentinel_kwargs, socket_timeout=5)
    return sentinels.master_for(
        unquote(name),
        db=int(db.strip('/') or 0),
        username=unquote(user) or None,
        password=unquote(password) if userinfo and ':' in userinfo else None,
        ssl=tls,
    )


def _warm_up():
    """Runs once, in the worker, what every horse would otherwise do for the first time
    itself (lazy imports, the time zone, the death penalty, both serializers): each horse
    is a fresh copy of the worker, so anything left lazy here is paid again by every job."""
    for ser in (DefaultSerializer, JSONSerializer):
        ser.loads(ser.dumps(None))
    import time

    time.localtime()
    with _Timeout(1, 'warm-up'):
        pass
    if _rq() is not None:
        now = b'2026-01-01T00:00:00.000000Z'
        fake = {b'data': zlib.compress(DefaultSerializer.dumps(('x', None, (), {}))), b'created_at': now,
                b'enqueued_at': now, b'started_at': now, b'last_heartbeat': now, b'origin': b'q',
                b'status': b'started', b'timeout': b'180'}
        _rq().Job('warm-up', connection=_NoConnection(), serializer=DefaultSerializer).restore(fake)


class _NoConnection:
    """Stands for a Redis connection where none is needed (the warm-up's job object)."""


def _load_serializer(path):
    found = _BUILT_IN_SERIALIZERS.get(path) or import_attribute(path)
    if not (hasattr(found, 'dumps') and hasattr(found, 'loads')):
        raise RuntimeError(f'--serializer {path}: it has no dumps() and loads()')
    return found


def import_attribute(name):
    """rq.utils.import_attribute's rules (and name, so that tracebacks read as under RQ): the
    longest importable module prefix, then attributes (a class's staticmethod too), else a
    builtin."""
    bits = name.split('.')
    module_bits, attribute_bits = bits[:-1], [bits[-1]]
    module = None
    while module_bits:
        try:
            module = _imported('.'.join(module_bits)) or importlib.import_module('.'.join(module_bits))
            break
        except ImportError:
            attribute_bits.insert(0, module_bits.pop())
    if module is None:
        import builtins

        if hasattr(builtins, name):
            return getattr(builtins, name)
        raise ValueError(f'Invalid attribute name: {name}')
    attribute_name = '.'.join(attribute_bits)
    if hasattr(module, attribute_name):
        return getattr(module, attribute_name)
    attribute_name = attribute_bits.pop()
    owner_name = '.'.join(attribute_bits)
    try:
        owner = getattr(module, owner_name)
    except Exception:
        raise ValueError(f'Invalid attribute name: {attribute_name}')
    if not hasattr(owner, attribute_name):
        raise ValueError(f'Invalid attribute name: {name}')
    return getattr(owner, attribute_name)


def _imported(name):
    """The module if it is already imported, without the import system's locks: what
    `import_module` returns then, for a fraction of the pages a horse writes (copy on write)."""
    module = sys.modules.get(name)
    if module is not None and not getattr(getattr(module, '__spec__', None), '_initializing', False):
        return module
    return None


def _serializer_for(data):
    """The job's own serializer: the configured one, else pickle for pickled payloads (RQ's
    default; protocol 2+ starts with PROTO) and JSON for the rest."""
    if _config['serializer'] is not None:
        return _config['serializer']
    return DefaultSerializer if data[:1] == b'\x80' else JSONSerializer


def _inflate(data):
    try:
        return zlib.decompress(data)
    except zlib.error:
        return data


def _exc_string(exc_info=None):
    return ''.join(traceback.format_exception(*(exc_info or sys.exc_info())))


def _short_repr(value, limit=200):
    try:
        text = repr(value)
    except Exception:
        text = f'<{type(value).__name__}>'
    return text if len(text) <= limit else text[:limit] + '...'


def _encode_result(serializer, value):
    """('ok', base64 text or '' for None, repr) for a result the serializer can write, within
    the cap; ('failed', why, '') otherwise."""
    if value is None:
        return ('ok', '', 'None')
    try:
        data = serializer.dumps(value)
    except Exception as e:
        name = getattr(serializer, '__name__', type(serializer).__name__)
        return (
            'failed',
            f'UnserializableResult: the job returned {type(value).__name__} {_short_repr(value)}, '
            f'which {name} cannot serialize ({type(e).__name__}: {e}); '
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


def _call(func, args, kwargs):
    result = func(*args, **kwargs)
    if type(result).__name__ == 'coroutine' or hasattr(result, '__await__'):
        # As RQ 2.12: an event loop of its own per job.
        import asyncio

        if asyncio.iscoroutine(result):
            result = asyncio.new_event_loop().run_until_complete(result)
    return result


class _Job:
    """The job's RQ object, made when it is needed: at once when RQ is imported, or the
    moment the job imports RQ (`from rq import get_current_job` inside the function)."""

    def __init__(self, job_id, fields, serializer, worker_name):
        self.id, self.fields, self.serializer, self.worker_name = job_id, fields, serializer, worker_name
        self.rq_job = None
        self.pushed = False

    def make(self, rq_job_module):
        if self.rq_job is None:
            job = rq_job_module.Job(self.id, connection=_connection() or _NoConnection(), serializer=self.serializer)
            job.restore(self.fields)
            job.worker_name = self.worker_name
            self.rq_job = job
        return self.rq_job

    def push(self, rq_job_module):
        """Puts the job on RQ's job stack, for `get_current_job()`."""
        rq_job_module._job_stack.push(self.make(rq_job_module))
        self.pushed = True

    def pop(self):
        if self.pushed:
            _rq()._job_stack.pop()
            self.pushed = False

    def needed(self):
        """The RQ object, importing RQ if it must (callbacks, exception handlers)."""
        module = _rq() or _import_rq()
        return self.make(module) if module is not None else None


class _WhenRqImported(importlib.abc.MetaPathFinder):
    """While a job runs without RQ loaded: if the job imports `rq`, its job object is put on
    RQ's job stack as `rq.job` finishes loading, so `get_current_job()` finds it."""

    def __init__(self, job):
        self.job = job

    def find_spec(self, fullname, path, target=None):
        if fullname != 'rq.job':
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        real, job = spec.loader, self.job

        class Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return real.create_module(spec)

            def exec_module(self, module):
                real.exec_module(module)
                job.push(module)

        spec.loader = Loader()
        return spec


def _timeout_exception():
    """RQ's JobTimeoutException (so apps that catch it do); ours where RQ is not installed."""
    try:
        from rq.timeouts import JobTimeoutException

        return JobTimeoutException
    except ImportError:
        return JobTimeoutException


class JobTimeoutException(Exception):
    """Raised inside a job that runs past its timeout, where RQ is not installed."""


class _Timeout:
    """RQ's death penalty (rq.timeouts.UnixSignalDeathPenalty): SIGALRM after the timeout
    raises JobTimeoutException inside the job. Skipped for jobs without a limit (-1)."""

    def __init__(self, timeout, job_id):
        self.timeout = timeout

    def _fire(self, signum, frame):
        raise _timeout_exception()(f'Task exceeded maximum timeout value ({self.timeout} seconds)')

    def __enter__(self):
        if self.timeout > 0:
            _set_handler(_SIGALRM, self._fire)
            _alarm(int(math.ceil(self.timeout)))

    def __exit__(self, *exc):
        if self.timeout > 0:
            _alarm(0)
            _set_handler(_SIGALRM, _SIG_DFL)
        return False


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
        _flush()


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _has_callbacks(fields):
    return bool(fields.get(b'success_callback_name') or fields.get(b'failure_callback_name'))


def _run(job_id, fields, timeout, worker_name):
    data = _inflate(fields.get(b'data', b''))
    serializer = _serializer_for(data)
    job = _Job(job_id, fields, serializer, worker_name)
    hook = None
    try:
        with _Timeout(timeout, job_id):
            func_name, instance, args, kwargs = serializer.loads(data)
            func = getattr(instance, func_name) if instance is not None else import_attribute(func_name)
            # Importing the function's module may have imported RQ; callbacks need it.
            module = _rq() or (_import_rq() if _has_callbacks(fields) else None)
            if module is not None:
                job.push(module)
            else:
                hook = _WhenRqImported(job)
                sys.meta_path.insert(0, hook)
            try:
                value = _call(func, args, kwargs)
            finally:
                job.pop()
                if hook in sys.meta_path:
                    sys.meta_path.remove(hook)
        rq_job = _rq()
        if rq_job is not None and isinstance(value, rq_job.Retry):
            intervals = value.intervals if isinstance(value.intervals, list) else [value.intervals]
            return (
                'retry',
                _encode_retry(serializer, value),
                f'{value.max} ' + ' '.join(str(int(i)) for i in intervals),
            )
        if fields.get(b'success_callback_name'):
            job.needed().execute_success_callback(_DeathPenalty, value)
        return _encode_result(serializer, value)
    except BaseException:
        exc_info = sys.exc_info()
        exc_string = _exc_string(exc_info)
        if fields.get(b'failure_callback_name'):
            try:
                job.needed().execute_failure_callback(_DeathPenalty, *exc_info)
            except BaseException:
                exc_info = sys.exc_info()
                exc_string = _exc_string(exc_info)
        _handle_exception(job, exc_info)
        return ('failed', exc_string, '')


class _DeathPenalty(_Timeout):
    """The death penalty in RQ's own signature, for RQ's callback methods."""

    def __init__(self, timeout, exception=None, **kwargs):
        super().__init__(timeout, kwargs.get('job_id'))


def _handle_exception(job, exc_info):
    handlers = _config['exception_handlers']
    if not handlers:
        return
    rq_job = job.needed()
    for handler in handlers:
        try:
            fall_through = handler(rq_job, *exc_info)
        except Exception:
            print(f'rqworker: exception handler {handler!r} raised:\n{_exc_string()}', file=sys.stderr)
            break
        if fall_through is not None and not fall_through:
            break


def run_stopped_callback(job_id, fields):
    """In a horse of its own, after the job's horse was killed by a stop-job command: the job's
    on_stopped callback, with its timeout, as RQ runs it in the worker."""
    try:
        data = _inflate(fields.get(b'data', b''))
        rq_job = _Job(job_id, fields, _serializer_for(data), '').needed()
        if rq_job is not None:
            rq_job.execute_stopped_callback(_DeathPenalty)
    except BaseException:
        print(f'rqworker: the stopped callback of job {job_id} raised:\n{_exc_string()}', file=sys.stderr)
    finally:
        _flush()
