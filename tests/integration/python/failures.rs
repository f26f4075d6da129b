//! Python jobs that cannot run, or whose result cannot be stored, end clearly, each alone:
//! a module that is not there or raises at import, a return value the serializer cannot
//! write or that is over the cap, a job that ends its own horse; a job with retries left is
//! retried. The worker goes on with the next job every time.

use super::*;
use serde_json::json;

const FAILING_APP: &[(&str, &str)] = &[
    (
        "broken.py",
        "raise RuntimeError('broken at import')\n\ndef f():\n    pass\n",
    ),
    (
        "tasks.py",
        r#"
import os, threading
from rq import get_current_job

def unpicklable():
    return threading.Lock()

def huge():
    # Over python::RESULT_CAP (128 MiB) once pickled.
    return b'x' * (129 * 1024 * 1024)

def exits():
    os._exit(3)

def exits_via_sys_exit():
    raise SystemExit(3)

def crashes():
    import ctypes, resource
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
    ctypes.string_at(0)

def a_set():
    return {1, 2}

def flaky():
    job = get_current_job()
    job.connection.rpush('flaky runs', job.id)
    raise ValueError('flaky failed')

def ok(n):
    return n
"#,
    ),
];

#[test]
fn jobs_that_cannot_run_or_return_fail_alone_and_say_why() {
    let redis = RedisServer::start();
    let app = App::new(FAILING_APP);
    let jobs = ids(&app.py(
        &redis,
        r#"
out = {}
jq = Queue('q', connection=conn, serializer=JSONSerializer)
for name in ['no_such_module.f', 'broken.f', 'tasks.unpicklable', 'tasks.huge', 'tasks.exits',
             'tasks.exits_via_sys_exit', 'tasks.crashes', 'json tasks.a_set']:
    if name.startswith('json '):
        out[name] = jq.enqueue(name[5:]).id
    else:
        out[name] = q.enqueue(name).id
    out['ok after ' + name] = q.enqueue('tasks.ok', name).id
out['tasks.flaky'] = q.enqueue('tasks.flaky', retry=Retry(max=1)).id
out['ok'] = q.enqueue('tasks.ok', 'last').id
"#,
    ));
    let log = app.burst(&redis, &[]);
    let r = app.py_args(
        &redis,
        "out = {k: result(v, JSONSerializer if k.startswith('json') else None) for k, v in args.items()}",
        json!(jobs),
    );
    let failed = |name: &str, needles: &[&str]| {
        let job = &r[name];
        assert_eq!(job["status"], "failed", "{name}: {job}\n{log}");
        assert_eq!(job["type"], "FAILED", "{name}: {job}");
        let exc = job["exc_string"].as_str().unwrap();
        for needle in needles {
            assert!(
                exc.contains(needle),
                "{name}: {needle:?} missing from:\n{exc}"
            );
        }
        let ok = &r[&format!("ok after {name}")];
        assert_eq!(ok["status"], "finished", "after {name}: {ok}\n{log}");
        assert_eq!(ok["return_value"], name);
    };
    // RQ's import_attribute takes a module it cannot import for an attribute: its words.
    failed(
        "no_such_module.f",
        &["ValueError: Invalid attribute name: no_such_module.f"],
    );
    failed(
        "broken.f",
        &[
            "Traceback (most recent call last)",
            "broken.py\", line 1, in <module>",
            "RuntimeError: broken at import",
        ],
    );
    failed(
        "tasks.unpicklable",
        &[
            "UnserializableResult: the job returned lock",
            "cannot serialize",
        ],
    );
    failed(
        "tasks.huge",
        &[
            "ResultTooLarge: the job returned 13526",
            "more than the 128 MiB a result may take",
        ],
    );
    failed(
        "tasks.exits",
        &[
            "Work-horse terminated unexpectedly; waitpid returned 768",
            "the Python job ended its work horse without reporting an outcome",
        ],
    );
    // SystemExit is an exception like another inside a job, as in RQ's horse.
    failed(
        "tasks.exits_via_sys_exit",
        &["Traceback (most recent call last)", "SystemExit: 3"],
    );
    failed(
        "tasks.crashes",
        &["Work-horse terminated unexpectedly; waitpid returned 11 (signal 11)"],
    );
    failed(
        "json tasks.a_set",
        &[
            "UnserializableResult: the job returned set {1, 2}, which JSONSerializer cannot serialize",
        ],
    );
    // Retried once (retries_left 1), then failed for good.
    let flaky = &r["tasks.flaky"];
    assert_eq!(flaky["status"], "failed", "{flaky}");
    assert_eq!(flaky["types"], json!(["FAILED"]), "{flaky}");
    assert!(
        flaky["exc_string"]
            .as_str()
            .unwrap()
            .contains("ValueError: flaky failed")
    );
    let mut con = redis.con();
    assert_eq!(llen(&mut con, "flaky runs"), 2, "{log}");
    assert_eq!(r["ok"]["return_value"], "last");
    assert!(zrange(&mut con, "rq:wip:q").is_empty());
    assert_eq!(zrange(&mut con, "rq:failed:q").len(), 9);
}
