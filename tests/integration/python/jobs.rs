//! What a Python job can do, as under `rq worker`: be any function RQ can name (a module's, a
//! class's staticmethod, a pickled instance's method, async), take and return what its
//! serializer carries, see itself through `get_current_job()`, run callbacks, return a
//! Retry, be handled by exception handlers, and be interrupted at its timeout.

use super::*;
use serde_json::json;

const RESOLUTION_APP: &[(&str, &str)] = &[
    (
        "tasks.py",
        r#"
import asyncio

class Calc:
    def __init__(self, base):
        self.base = base

    def plus(self, n):
        return self.base + n

    @staticmethod
    def double(n):
        return n * 2

def add(a, b):
    return a + b

async def slow_add(a, b):
    await asyncio.sleep(0.05)
    return a + b

def is_nan(x):
    return x != x
"#,
    ),
    (
        "shadow.py",
        "def which():\n    return 'the working directory'\n",
    ),
    ("extra/shadow.py", "def which():\n    return '-P'\n"),
    ("pkg/__init__.py", ""),
    ("pkg/sub.py", "def where():\n    return __name__\n"),
    ("extra/elsewhere.py", "def hello():\n    return 'from -P'\n"),
];

#[test]
fn functions_resolve_as_rq_resolves_them_from_the_working_directory_and_dash_p() {
    let redis = RedisServer::start();
    let app = App::new(RESOLUTION_APP);
    let jobs = app.py(
        &redis,
        r#"
from tasks import add, slow_add, Calc
import pkg.sub
jq = Queue('q', connection=conn, serializer=JSONSerializer)
out = {
    'function': q.enqueue(add, 1, 2).id,
    'kwargs': q.enqueue(add, a=[1], b=[2]).id,
    'staticmethod': q.enqueue(Calc.double, 21).id,
    'instance method': q.enqueue(Calc(40).plus, 2).id,
    'package': q.enqueue(pkg.sub.where).id,
    'by name from -P': q.enqueue('elsewhere.hello').id,
    'async': q.enqueue(slow_add, 20, 22).id,
    'json': jq.enqueue(add, 'a', 'b').id,
    # Python's json writes a bare NaN, which only Python reads back.
    'json with NaN': jq.enqueue('tasks.is_nan', float('nan')).id,
    'working directory first': q.enqueue('shadow.which').id,
}
assert fetch(out['staticmethod']).func_name == 'tasks.Calc.double'
assert fetch(out['instance method']).func_name == 'plus'
"#,
    );
    let extra = app.file("extra");
    app.burst(&redis, &["-P", extra.to_str().unwrap()]);
    let r = app.py_args(
        &redis,
        "out = {k: result(v, JSONSerializer if k.startswith('json') else None) for k, v in args.items()}",
        jobs,
    );
    for (what, want) in [
        ("function", json!(3)),
        ("kwargs", json!([1, 2])),
        ("staticmethod", json!(42)),
        ("instance method", json!(42)),
        ("package", json!("pkg.sub")),
        ("by name from -P", json!("from -P")),
        ("async", json!(42)),
        ("json", json!("ab")),
        ("json with NaN", json!(true)),
        ("working directory first", json!("the working directory")),
    ] {
        assert_eq!(r[what]["status"], "finished", "{what}: {}", r[what]);
        assert_eq!(r[what]["return_value"], want, "{what}");
        assert_eq!(r[what]["type"], "SUCCESSFUL", "{what}");
        assert_eq!(r[what]["worker_name"], "w", "{what}");
    }
}

const RESULTS_APP: &str = r#"
import datetime, decimal

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

def rich():
    return {
        'when': datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc),
        'price': decimal.Decimal('19.99'),
        'pair': (1, 'two'),
        'point': Point(3, 4),
        'tags': {'a', 'b'},
        'raw': b'\x00\xff',
    }

def plain():
    return {'n': 1, 'list': [1, 2], 'text': 'ünï'}
"#;

#[test]
fn results_are_written_with_the_jobs_own_serializer_pickle_or_json() {
    let redis = RedisServer::start();
    let app = App::new(&[("tasks.py", RESULTS_APP)]);
    let jobs = app.py(
        &redis,
        r#"
from tasks import rich, plain
out = {
    'pickle': q.enqueue(rich).id,
    'json': Queue('q', connection=conn, serializer=JSONSerializer).enqueue(plain).id,
}
"#,
    );
    let jobs = ids(&jobs);
    // One worker serves both.
    app.burst(&redis, &[]);
    let r = app.py_args(
        &redis,
        r#"
import datetime, decimal, tasks
v = fetch(args['pickle']).return_value()
out = {
    'when': v['when'] == datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc),
    'price': [type(v['price']).__name__, str(v['price'])],
    'pair': [type(v['pair']).__name__, list(v['pair'])],
    'point': [type(v['point']) is tasks.Point, v['point'].x, v['point'].y],
    'tags': [type(v['tags']).__name__, sorted(v['tags'])],
    'raw': [type(v['raw']).__name__, list(v['raw'])],
    'json': fetch(args['json'], JSONSerializer).return_value(),
}
"#,
        json!(jobs),
    );
    assert_eq!(r["when"], true, "{r}");
    assert_eq!(r["price"], json!(["Decimal", "19.99"]));
    assert_eq!(r["pair"], json!(["tuple", [1, "two"]]));
    assert_eq!(r["point"], json!([true, 3, 4]));
    assert_eq!(r["tags"], json!(["set", ["a", "b"]]));
    assert_eq!(r["raw"], json!(["bytes", [0, 255]]));
    assert_eq!(r["json"], json!({"n": 1, "list": [1, 2], "text": "ünï"}));
    // As stored: pickle for the pickled job, JSON (readable without Python) for the other.
    let mut con = redis.con();
    assert_eq!(
        latest_return(&mut con, &jobs["json"]),
        Some(json!({"n": 1, "list": [1, 2], "text": "ünï"}))
    );
    let (_, last) = results(&mut con, &jobs["pickle"]).pop().expect("a result");
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&last["return_value"])
        .unwrap();
    assert_eq!(raw[0], 0x80, "a pickle starts with PROTO");
}

const SERIALIZER_APP: &[(&str, &str)] = &[
    ("tasks.py", "def add(a, b):\n    return {'sum': a + b}\n"),
    ("codec.py", CODEC_PY),
];

#[test]
fn dash_s_names_pickle_json_or_a_dotted_serializer_as_rq_worker_s() {
    let redis = RedisServer::start();
    let app = App::new(SERIALIZER_APP);
    let jobs = app.py(
        &redis,
        r#"
import codec
out = {
    'codec': Queue('qc', connection=conn, serializer=codec.B64Json).enqueue('tasks.add', 1, 2).id,
    'pickle': Queue('qp', connection=conn, serializer='pickle').enqueue('tasks.add', 3, 4).id,
    'json': Queue('qj', connection=conn, serializer=JSONSerializer).enqueue('tasks.add', 5, 6).id,
}
"#,
    );
    let mut workers: Vec<Proc> = [("qc", "codec.B64Json"), ("qp", "pickle"), ("qj", "json")]
        .into_iter()
        .map(|(queue, serializer)| {
            app.named(&redis, queue)
                .opt("-S", serializer)
                .burst()
                .queues([queue])
                .spawn()
        })
        .collect();
    for w in &mut workers {
        assert!(w.wait_exit(RUN).success(), "{}", w.log());
    }
    let r = app.py_args(
        &redis,
        r#"
import codec
s = {'codec': codec.B64Json, 'pickle': None, 'json': JSONSerializer}
out = {k: result(v, s[k]) for k, v in args.items()}
"#,
        jobs,
    );
    for (what, sum) in [("codec", 3), ("pickle", 7), ("json", 11)] {
        assert_eq!(r[what]["status"], "finished", "{what}: {}", r[what]);
        assert_eq!(r[what]["return_value"], json!({"sum": sum}), "{what}");
    }
}

#[test]
fn get_current_job_meta_and_the_jobs_connection_work_inside_the_job() {
    let redis = RedisServer::start();
    let app = App::new(&[(
        "tasks.py",
        r#"
from rq import get_current_job

def progress():
    job = get_current_job()
    job.meta['progress'] = 50
    job.save_meta()
    job.connection.set('seen-by-job', job.id)
    return {'id': job.id, 'origin': job.origin, 'worker': job.worker_name,
            'given': job.meta.get('given'), 'func': job.func_name}
"#,
    )]);
    let id = app.py(
        &redis,
        "out = q.enqueue('tasks.progress', meta={'given': 'by the producer'}).id",
    );
    let id = id.as_str().unwrap();
    app.burst(&redis, &[]);
    let r = app.py_args(&redis, "out = result(args)", json!(id));
    assert_eq!(r["status"], "finished", "{r}");
    assert_eq!(
        r["return_value"],
        json!({"id": id, "origin": "q", "worker": "w", "given": "by the producer", "func": "tasks.progress"})
    );
    assert_eq!(
        r["meta"],
        json!({"given": "by the producer", "progress": 50})
    );
    let mut con = redis.con();
    assert_eq!(get(&mut con, "seen-by-job").as_deref(), Some(id));
}

const CALLBACKS_APP: &str = r#"
import os, time

def ok(n):
    return n + 1

def boom():
    raise ValueError('boom from the job')

def wait_long():
    time.sleep(60)

def on_ok(job, connection, result, *args, **kwargs):
    connection.rpush('callbacks', 'success %s %r %d' % (job.id, result, os.getpid()))

def on_fail(job, connection, exc_type, exc_value, tb):
    connection.rpush('callbacks', 'failure %s %s %s' % (job.id, exc_type.__name__, exc_value))

def on_stop(job, connection):
    connection.rpush('callbacks', 'stopped %s %d' % (job.id, os.getpid()))
"#;

#[test]
fn success_and_failure_callbacks_run_in_the_horse() {
    let redis = RedisServer::start();
    let app = App::new(&[("tasks.py", CALLBACKS_APP)]);
    let jobs = ids(&app.py(
        &redis,
        r#"
from tasks import ok, boom, on_ok, on_fail
cb = dict(on_success=Callback(on_ok), on_failure=Callback(on_fail))
out = {'ok': q.enqueue(ok, 1, **cb).id, 'boom': q.enqueue(boom, **cb).id}
"#,
    ));
    let mut w = app.worker(&redis).burst().queues(["q"]).spawn();
    assert!(w.wait_exit(RUN).success(), "{}", w.log());
    let mut con = redis.con();
    assert_eq!(
        job_status(&mut con, &jobs["ok"]).as_deref(),
        Some("finished")
    );
    assert_eq!(
        job_status(&mut con, &jobs["boom"]).as_deref(),
        Some("failed")
    );
    let calls = lrange(&mut con, "callbacks");
    assert_eq!(calls.len(), 2, "{calls:?}");
    let success: Vec<&str> = calls[0].split(' ').collect();
    assert_eq!(
        success[..3],
        ["success", jobs["ok"].as_str(), "2"],
        "{calls:?}"
    );
    let pid: i32 = success[3].parse().unwrap();
    assert_ne!(pid, w.pid().as_raw(), "the callback ran in the worker");
    assert_eq!(
        calls[1],
        format!("failure {} ValueError boom from the job", jobs["boom"])
    );
}

#[test]
fn on_stopped_runs_after_a_stop_job_command_and_the_worker_goes_on() {
    let redis = RedisServer::start();
    let app = App::new(&[("tasks.py", CALLBACKS_APP)]);
    let id = app.py(
        &redis,
        "from tasks import wait_long, on_stop\nout = q.enqueue(wait_long, on_stopped=Callback(on_stop)).id",
    );
    let id = id.as_str().unwrap().to_string();
    let w = app.worker(&redis).queues(["q"]).spawn();
    let mut con = redis.con();
    wait_status_within(&mut con, &id, &["started"], RUN);
    let horse = wait_horse(&w);
    app.py_args(
        &redis,
        "from rq.command import send_stop_job_command\nsend_stop_job_command(conn, args)",
        json!(id),
    );
    wait_status(&mut con, &id, &["stopped"]);
    wait_until("the stopped callback", WAIT, || {
        llen(&mut con, "callbacks") == 1
    });
    let calls = lrange(&mut con, "callbacks");
    let call: Vec<&str> = calls[0].split(' ').collect();
    assert_eq!(call[..2], ["stopped", id.as_str()], "{calls:?}");
    let pid: i32 = call[2].parse().unwrap();
    assert_ne!(pid, w.pid().as_raw(), "the callback ran in the worker");
    assert_ne!(pid, horse.as_raw(), "the callback ran in the killed horse");
    assert!(!alive(horse));
    wait_worker_state(&mut con, "w", "idle");
    // And the next job runs.
    let next = rs_enqueue(&mut con, "q", "tasks.ok", json!([41]));
    wait_status(&mut con, &next, &["finished"]);
    assert_eq!(latest_return(&mut con, &next), Some(json!(42)));
}

#[test]
fn a_returned_retry_requeues_the_job_until_max_then_it_fails_as_max_retries_exceeded() {
    let redis = RedisServer::start();
    let app = App::new(&[(
        "tasks.py",
        r#"
from rq import Retry, get_current_job

def again():
    job = get_current_job()
    job.connection.rpush('runs', job.id)
    return Retry(max=2)

def later():
    return Retry(max=1, interval=300)

def once():
    return Retry(max=1)
"#,
    )]);
    let jobs = ids(&app.py(
        &redis,
        r#"
jq = Queue('q', connection=conn, serializer=JSONSerializer)
out = {'again': q.enqueue('tasks.again').id, 'later': q.enqueue('tasks.later').id,
       'json': jq.enqueue('tasks.once').id}
"#,
    ));
    app.burst(&redis, &[]);
    let r = app.py_args(
        &redis,
        "out = {k: result(v, JSONSerializer if k == 'json' else None) for k, v in args.items()}",
        json!(jobs),
    );
    let again = &r["again"];
    assert_eq!(again["status"], "failed", "{again}");
    assert_eq!(
        again["types"],
        json!(["RETRIED", "RETRIED", "MAX_RETRIES_EXCEEDED"]),
        "{again}"
    );
    let mut con = redis.con();
    assert_eq!(lrange(&mut con, "runs"), vec![jobs["again"].clone(); 3]);
    assert!(zscore(&mut con, "rq:failed:q", &jobs["again"]).is_some());
    // With an interval the retry is scheduled, for a scheduler to move.
    let later = &r["later"];
    assert_eq!(later["status"], "scheduled", "{later}");
    assert_eq!(later["types"], json!(["RETRIED"]), "{later}");
    let due: f64 = zscore(&mut con, "rq:scheduled:q", &jobs["later"])
        .expect("in the scheduled registry")
        .parse()
        .unwrap();
    let now = unix_now();
    assert!(
        due > now + 200.0 && due < now + 400.0,
        "due {due}, now {now}"
    );
    // A JSON job's Retry is retried the same; JSON cannot write a Retry, so its results hold
    // RQ's placeholder, as a Python RQ worker's do.
    let json_job = &r["json"];
    assert_eq!(json_job["status"], "failed", "{json_job}");
    assert_eq!(
        json_job["types"],
        json!(["RETRIED", "MAX_RETRIES_EXCEEDED"]),
        "{json_job}"
    );
    assert_eq!(
        json_job["latest_return_value"],
        "Unserializable return value"
    );
}

const HANDLERS_APP: &[(&str, &str)] = &[
    (
        "tasks.py",
        "def boom():\n    raise KeyError('no such key')\n\ndef ok():\n    return 'fine'\n",
    ),
    (
        "handlers.py",
        r#"
import os

def record(job, exc_type, exc_value, tb):
    job.connection.rpush('handled', 'first %s %s %s %s %d' % (
        job.id, exc_type.__name__, exc_value, tb is not None, os.getpid()))
    # None: fall through to the next handler.

def stop(job, exc_type, exc_value, tb):
    job.connection.rpush('handled', 'second %s' % job.id)
    return False

def never(job, *exc_info):
    job.connection.rpush('handled', 'third %s' % job.id)
"#,
    ),
];

/// Enqueues `boom` and `ok` and runs a burst worker with `extra`; returns (boom id, ok id,
/// worker pid).
fn boom_and_ok(redis: &RedisServer, app: &App, extra: &[&str]) -> (String, String, i32) {
    let mut con = redis.con();
    let boom = rs_enqueue(&mut con, "q", "tasks.boom", json!([]));
    let ok = rs_enqueue(&mut con, "q", "tasks.ok", json!([]));
    let worker = extra
        .iter()
        .fold(app.worker(redis).burst(), |w, a| w.arg(a));
    let mut w = worker.queues(["q"]).spawn();
    assert!(w.wait_exit(RUN).success(), "{}", w.log());
    assert_eq!(job_status(&mut con, &boom).as_deref(), Some("failed"));
    assert_eq!(latest_return(&mut con, &ok), Some(json!("fine")));
    (boom, ok, w.pid().as_raw())
}

#[test]
fn exception_handlers_run_in_the_horse_in_order_until_one_returns_false() {
    let redis = RedisServer::start();
    let app = App::new(HANDLERS_APP);
    let (boom, _, pid) = boom_and_ok(
        &redis,
        &app,
        &[
            "--exception-handler",
            "handlers.record",
            "--exception-handler",
            "handlers.stop",
            "--exception-handler",
            "handlers.never",
        ],
    );
    let mut con = redis.con();
    let handled = lrange(&mut con, "handled");
    assert_eq!(handled.len(), 2, "{handled:?}");
    let first = handled[0].rsplit_once(' ').unwrap();
    assert_eq!(first.0, format!("first {boom} KeyError 'no such key' True"));
    assert_ne!(first.1.parse::<i32>().unwrap(), pid, "ran in the worker");
    assert_eq!(handled[1], format!("second {boom}"));
    // The default handler still ran: the failure is recorded.
    assert!(zscore(&mut con, "rq:failed:q", &boom).is_some());
    let exc = latest_exc(&mut con, &boom);
    assert!(exc.contains("KeyError: 'no such key'"), "{exc}");
    assert!(exc.contains("Traceback (most recent call last)"), "{exc}");
}

#[test]
fn disable_default_exception_handler_leaves_no_failed_entry_and_no_result() {
    let redis = RedisServer::start();
    let app = App::new(HANDLERS_APP);
    let (boom, ok, _) = boom_and_ok(
        &redis,
        &app,
        &["-d", "--exception-handler", "handlers.record"],
    );
    let mut con = redis.con();
    assert!(zscore(&mut con, "rq:failed:q", &boom).is_none());
    assert!(results(&mut con, &boom).is_empty());
    assert!(zrange(&mut con, "rq:wip:q").is_empty());
    // The app's own handlers still run, and successes are recorded as ever.
    let handled = lrange(&mut con, "handled");
    assert_eq!(handled.len(), 1, "{handled:?}");
    assert!(handled[0].starts_with(&format!("first {boom} KeyError")));
    assert!(zscore(&mut con, "rq:finished:q", &ok).is_some());
}

const TIMEOUT_APP: &str = r#"
import os, signal, time

HERE = os.path.dirname(os.path.abspath(__file__))

def overrun():
    try:
        time.sleep(30)
    finally:
        with open(os.path.join(HERE, 'finally.log'), 'a') as f:
            f.write('finally ran\n')

def stubborn():
    # Deaf to the timeout's SIGALRM, as a job stuck in C code or on a lock is.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(30)
"#;

#[test]
fn the_timeout_raises_inside_the_job_and_a_job_deaf_to_it_is_killed_5_s_later() {
    let redis = RedisServer::start();
    let app = App::new(&[("tasks.py", TIMEOUT_APP)]);
    let mut con = redis.con();
    let opts = rq_supervisor::producer::EnqueueOptions {
        timeout: Some(1),
        ..Default::default()
    };
    let overrun = rs_enqueue_with(&mut con, "q", "tasks.overrun", json!([]), &opts);
    let stubborn = rs_enqueue_with(&mut con, "q", "tasks.stubborn", json!([]), &opts);
    let log = app.burst(&redis, &[]);
    let text = "JobTimeoutException: Task exceeded maximum timeout value (1 seconds)";
    let took = |id: &str| {
        let field = |f| rq_time(&hget(&mut redis.con(), &format!("rq:job:{id}"), f).unwrap());
        field("ended_at") - field("started_at")
    };

    assert_eq!(job_status(&mut con, &overrun).as_deref(), Some("failed"));
    let exc = latest_exc(&mut con, &overrun);
    assert!(exc.contains(text), "{exc}");
    // Raised inside the job: Python's traceback, through the job's own line.
    assert!(exc.contains("Traceback (most recent call last)"), "{exc}");
    assert!(exc.contains("time.sleep(30)"), "{exc}");
    assert_eq!(app.read("finally.log"), "finally ran\n", "{log}");
    assert!(took(&overrun) < 4.0, "{}", took(&overrun));

    assert_eq!(job_status(&mut con, &stubborn).as_deref(), Some("failed"));
    let exc = latest_exc(&mut con, &stubborn);
    assert!(exc.starts_with(text), "{exc}");
    let t = took(&stubborn);
    assert!(
        (5.5..15.0).contains(&t),
        "killed {t} s after it started; want 1 s + 5 s"
    );
}
