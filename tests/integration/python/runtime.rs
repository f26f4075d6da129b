//! The embedded interpreter: started only for a Python job (or `--preload`), the one the
//! user's environment would run (`python3` on PATH, `$VIRTUAL_ENV`'s, `--python`), another
//! Python version refused by name; the worker's signals over Python's; the fork rules (output
//! flushed before each fork and before a horse exits, `random` reseeded per horse, atexit
//! hooks once in the worker, an app's own threads allowed).

use std::time::Duration;

use super::*;
use nix::sys::signal::Signal;
use serde_json::json;

#[test]
fn a_worker_that_runs_no_python_job_never_starts_the_interpreter() {
    let redis = RedisServer::start();
    let app = App::new(&[("tasks.py", "def add(a, b):\n    return a + b\n")]);
    let version = python_version();
    let native = app
        .named(&redis, "native")
        .builtin_handlers()
        .queues(["nq"])
        .spawn();
    let py = app
        .named(&redis, "py")
        .builtin_handlers()
        .queues(["pq"])
        .spawn();
    let mut con = redis.con();
    let echo = rs_enqueue(&mut con, "nq", "rq.builtin.echo", json!([1]));
    // JSON, and no handler declares it: Python runs it.
    let add = rs_enqueue(&mut con, "pq", "tasks.add", json!([1, 2]));
    wait_status_within(&mut con, &echo, &["finished"], RUN);
    wait_status_within(&mut con, &add, &["finished"], RUN);
    assert_eq!(latest_return(&mut con, &add), Some(json!(3)));
    wait_worker_state(&mut con, "native", "idle");
    wait_worker_state(&mut con, "py", "idle");

    let started = started_line(&version);
    assert!(!native.log().contains(&started), "{}", native.log());
    assert!(!native.log().contains("Python"), "{}", native.log());
    assert_eq!(count(&py.log(), &started), 1, "{}", py.log());
    // libpython is loaded when the first Python job comes, not linked: it is not even mapped
    // into a worker that ran none.
    let libpython = |p: &Proc| {
        std::fs::read_to_string(format!("/proc/{}/maps", p.pid()))
            .expect("alive")
            .contains("libpython")
    };
    assert!(!libpython(&native), "libpython mapped without a Python job");
    assert!(libpython(&py), "libpython not mapped after a Python job");
}

/// The app's jobs for the venv tests: none imports RQ at import time (the venv has no RQ).
pub const VENV_JOBS: &str = r#"
def use(n):
    import foo_only_in_venv
    return foo_only_in_venv.hello(n)

def plain(n):
    return n * 2

def current(n):
    from rq import get_current_job
    return get_current_job().id
"#;

#[test]
fn the_virtualenvs_python_runs_the_jobs_with_its_packages() {
    let redis = RedisServer::start();
    let app = App::new(&[("vjobs.py", VENV_JOBS)]);
    let venv = venv_with_module(&app);
    let venv_python = venv.join("bin").join("python");
    let version = python_version();
    // One queue per way of running the worker, all enqueued up front, the workers run side
    // by side, then read back at once.
    let jobs = app.py(
        &redis,
        r#"
out = {}
for queue in ['no_venv', 'venv', 'python']:
    qq = Queue(queue, connection=conn)
    for f in ['use', 'plain', 'current']:
        out[queue + '.' + f] = qq.enqueue('vjobs.' + f, 1).id
"#,
    );
    let worker = |queue: &str| app.named(&redis, queue).burst().queues([queue]);
    let mut workers = [
        worker("no_venv").env_remove("VIRTUAL_ENV").spawn(),
        worker("venv").env("VIRTUAL_ENV", &venv).spawn(),
        worker("python")
            .env_remove("VIRTUAL_ENV")
            .opt("--python", &venv_python)
            .spawn(),
    ];
    for w in &mut workers {
        assert!(w.wait_exit(RUN).success(), "{}", w.log());
    }
    let logs: Vec<String> = workers.iter().map(Proc::log).collect();
    let r = app.py_args(
        &redis,
        "out = {k: result(v) for k, v in args.items()}",
        jobs.clone(),
    );
    let get = |key: &str| &r[key];

    // $VIRTUAL_ENV: its interpreter and its site-packages.
    assert!(
        logs[1].contains(&format!(
            "{}{} ($VIRTUAL_ENV ({}))",
            started_line(&version),
            venv_python.display(),
            venv.display()
        )),
        "{}",
        logs[1]
    );
    for queue in ["venv", "python"] {
        let use_it = get(&format!("{queue}.use"));
        assert_eq!(use_it["status"], "finished", "{use_it}");
        assert_eq!(use_it["return_value"], "hello 1 from the venv");
        assert_eq!(get(&format!("{queue}.plain"))["return_value"], 2);
        // The venv has no RQ: a plain function runs, get_current_job() is not there, and only
        // the job that asks for it fails, saying so.
        let current = get(&format!("{queue}.current"));
        assert_eq!(current["status"], "failed", "{current}");
        let exc = current["exc_string"].as_str().unwrap();
        assert!(
            exc.contains("ModuleNotFoundError: No module named 'rq'"),
            "{exc}"
        );
    }
    // --python names the venv's interpreter without VIRTUAL_ENV.
    assert!(
        logs[2].contains(&format!(
            "{}{} ([python] executable (or --python))",
            started_line(&version),
            venv_python.display()
        )),
        "{}",
        logs[2]
    );

    // Neither: python3 on PATH, which lacks the module; the job's traceback names it.
    assert!(
        logs[0].contains(&started_line(&version)) && logs[0].contains("(python3 on PATH)"),
        "{}",
        logs[0]
    );
    let use_it = get("no_venv.use");
    assert_eq!(use_it["status"], "failed", "{use_it}");
    let exc = use_it["exc_string"].as_str().unwrap();
    assert!(
        exc.contains("ModuleNotFoundError: No module named 'foo_only_in_venv'"),
        "{exc}"
    );
    assert_eq!(get("no_venv.plain")["return_value"], 2);
    // With RQ (the base interpreter has it), get_current_job() works.
    let current = get("no_venv.current");
    assert_eq!(current["status"], "finished", "{current}");
    assert_eq!(current["return_value"], jobs["no_venv.current"]);
}

#[test]
fn another_python_version_or_a_missing_interpreter_leaves_python_jobs_queued_and_names_the_fix() {
    // This machine may have one Python only: a fake `python` that says it is 3.99, as the
    // worker asks it (`-c "...version_info...; sys.executable; libpython"`).
    let redis = RedisServer::start();
    let app = App::new(&[("tasks.py", "def add(a, b):\n    return a + b\n")]);
    let fake = write_script(
        app.path(),
        "python3.99",
        "#!/bin/sh\necho 3.99\necho /opt/fake/bin/python3.99\necho /opt/fake/lib/libpython3.99.so\n",
    );
    let version = python_version();
    let mut con = redis.con();
    let add = rs_enqueue(&mut con, "q", "tasks.add", json!([1, 2]));
    let add2 = rs_enqueue(&mut con, "q", "tasks.add", json!([3, 4]));
    let echo = rs_enqueue(&mut con, "q", "rq.builtin.echo", json!(["native"]));
    let refusal = format!(
        "the Python interpreter /opt/fake/bin/python3.99 ([python] executable (or --python)) is Python 3.99, but this rqworker is built for Python {version}"
    );
    // Not the jobs' fault: they stay queued, and the worker gives up with status 3, the
    // environment's (a supervisor marks the pool degraded) after naming the fix.
    let mut w = app
        .worker(&redis)
        .burst()
        .builtin_handlers()
        .opt("--python", &fake)
        .queues(["q"])
        .spawn();
    assert_eq!(w.wait_exit(RUN).code(), Some(3), "{}", w.log());
    let log = w.log();
    assert!(log.contains(&refusal), "said in the log: {log}");
    assert!(
        log.contains("PYO3_PYTHON=/opt/fake/bin/python3.99"),
        "names the fix: {log}"
    );
    assert!(!log.contains(&started_line(&version)), "{log}");
    for id in [&add, &add2, &echo] {
        assert_eq!(job_status(&mut con, id).as_deref(), Some("queued"), "{log}");
        assert!(results(&mut con, id).is_empty(), "{log}");
    }

    // With --preload the refusal stops the worker before it registers.
    let mut w = app
        .worker(&redis)
        .opt("--python", &fake)
        .opt("--preload", "tasks")
        .queues(["q"])
        .spawn();
    let status = w.wait_exit(RUN);
    assert_eq!(status.code(), Some(2), "{}", w.log());
    assert!(w.log().contains(&refusal), "{}", w.log());
    assert!(smembers(&mut con, "rq:workers").is_empty());

    // An interpreter that does not exist.
    let mut w = app
        .worker(&redis)
        .burst()
        .opt("--python", "/nonexistent/bin/python3")
        .queues(["q"])
        .spawn();
    assert_eq!(w.wait_exit(RUN).code(), Some(3), "{}", w.log());
    assert!(
        w.log()
            .contains("cannot run the Python interpreter /nonexistent/bin/python3"),
        "{}",
        w.log()
    );
    // The right interpreter runs them all.
    app.burst(&redis, &["--builtin-handlers"]);
    assert_eq!(latest_return(&mut con, &add), Some(json!(3)));
    assert_eq!(latest_return(&mut con, &add2), Some(json!(7)));
    assert_eq!(latest_return(&mut con, &echo), Some(json!(["native"])));
}

#[test]
fn a_preload_that_cannot_import_stops_the_worker_with_its_traceback_and_exit_2() {
    let redis = RedisServer::start();
    let app = App::new(&[(
        "broken.py",
        "def helper():\n    raise RuntimeError('broken at import')\n\nhelper()\n",
    )]);
    let mut w = app
        .worker(&redis)
        .opt("--preload", "broken")
        .queues(["q"])
        .spawn();
    let status = w.wait_exit(RUN);
    let log = w.log();
    assert_eq!(status.code(), Some(2), "{log}");
    for needle in [
        "cannot preload Python module 'broken'",
        "Traceback (most recent call last)",
        "broken.py\", line 4, in <module>",
        "RuntimeError: broken at import",
    ] {
        assert!(log.contains(needle), "{needle:?} missing:\n{log}");
    }
    assert!(!log.contains("Listening for work"), "{log}");
    let mut con = redis.con();
    assert!(smembers(&mut con, "rq:workers").is_empty());
    // A module that is not there at all.
    let mut w = app
        .worker(&redis)
        .opt("--preload", "no_such_app")
        .queues(["q"])
        .spawn();
    assert_eq!(w.wait_exit(RUN).code(), Some(2), "{}", w.log());
    assert!(
        w.log()
            .contains("ModuleNotFoundError: No module named 'no_such_app'"),
        "{}",
        w.log()
    );
}

/// A preloaded app that prints at import, registers an atexit hook and draws a random
/// number in each job.
const FORK_RULES_APP: &str = r#"
import atexit, os, random, sys

HERE = os.path.dirname(os.path.abspath(__file__))
print("tasks imported in pid %d" % os.getpid())

def _bye():
    with open(os.path.join(HERE, "atexit.log"), "a") as f:
        f.write("atexit ran in pid %d\n" % os.getpid())

atexit.register(_bye)

def draw(n):
    print("job %d printed this" % n)
    print("job %d wrote to stderr" % n, file=sys.stderr)
    return [os.getpid(), random.random()]
"#;

#[test]
fn a_preloaded_apps_output_atexit_and_random_follow_the_fork_rules() {
    let redis = RedisServer::start();
    let app = App::new(&[("tasks.py", FORK_RULES_APP)]);
    let version = python_version();
    let mut con = redis.con();
    let jobs: Vec<String> = (0..4)
        .map(|n| rs_enqueue(&mut con, "q", "tasks.draw", json!([n])))
        .collect();
    // Block-buffered stdout, as under a process manager: what is not flushed before a fork
    // is written again by the horse.
    let mut w = app
        .worker(&redis)
        .env_remove("PYTHONUNBUFFERED")
        .opt("--preload", "tasks")
        .burst()
        .queues(["q"])
        .spawn();
    assert!(w.wait_exit(RUN).success(), "{}", w.log());
    let log = w.log();
    let pid = w.pid().as_raw();
    // Every rule is checked, and every broken one reported.
    let mut broken: Vec<String> = Vec::new();
    let mut check = |ok: bool, rule: String| {
        if !ok {
            broken.push(rule);
        }
    };

    // Imported once, in the worker, before it listened; printed once.
    check(
        count(&log, "tasks imported in pid") == 1,
        "the text printed at import appears once, not once per horse".into(),
    );
    check(
        log.contains(&format!("tasks imported in pid {pid}")),
        "the app was imported in the worker".into(),
    );
    let at = |text: &str| log.find(text).unwrap_or(usize::MAX);
    check(
        at(&started_line(&version)) < at("Listening for work"),
        "the interpreter started before the worker listened".into(),
    );
    // Each job's output reaches the worker's log, once.
    for n in 0..4 {
        for text in [
            format!("job {n} printed this"),
            format!("job {n} wrote to stderr"),
        ] {
            check(count(&log, &text) == 1, format!("{text:?} appears once"));
        }
    }
    // Every horse its own process, with `random` reseeded after the fork.
    let drawn: Vec<serde_json::Value> = jobs
        .iter()
        .map(|id| match job_status(&mut con, id).as_deref() {
            Some("finished") => latest_return(&mut con, id).unwrap_or_default(),
            other => serde_json::Value::from(format!("{other:?}")),
        })
        .collect();
    let pids: std::collections::BTreeSet<String> = drawn.iter().map(|d| d[0].to_string()).collect();
    let numbers: std::collections::BTreeSet<String> =
        drawn.iter().map(|d| d[1].to_string()).collect();
    check(
        pids.len() == 4 && !pids.contains(&pid.to_string()),
        format!("four horses, none the worker: {drawn:?}"),
    );
    check(
        numbers.len() == 4,
        format!("the horses drew different numbers: {drawn:?}"),
    );
    // The horses skip atexit; the worker runs it once, as it exits.
    let atexit = app.read("atexit.log");
    check(
        atexit == format!("atexit ran in pid {pid}\n"),
        format!("atexit ran once, in the worker: {atexit:?}"),
    );
    assert!(broken.is_empty(), "broken: {broken:#?}\n{log}");
}

#[test]
fn sigint_to_a_worker_with_a_preloaded_app_is_a_warm_shutdown_not_a_keyboard_interrupt() {
    let redis = RedisServer::start();
    let app = App::new(&[(
        "tasks.py",
        "import os, time\n\
         def wait_for(path):\n    while not os.path.exists(path):\n        time.sleep(0.02)\n    return 'released'\n",
    )]);
    let gate = app.file("gate");
    let mut con = redis.con();
    let id = rs_enqueue(
        &mut con,
        "q",
        "tasks.wait_for",
        json!([gate.display().to_string()]),
    );
    let mut busy = app
        .worker(&redis)
        .opt("--preload", "tasks")
        .queues(["q"])
        .spawn();
    let mut idle = app
        .named(&redis, "idle")
        .opt("--preload", "tasks")
        .queues(["other"])
        .spawn();
    wait_status_within(&mut con, &id, &["started"], RUN);
    wait_horse(&busy);
    wait_worker_state_within(&mut con, "idle", "idle", RUN);

    busy.signal(Signal::SIGINT);
    idle.signal(Signal::SIGINT);
    assert!(idle.wait_exit(WAIT).success(), "{}", idle.log());
    busy.wait_for_log("warm shut down requested");
    // The job goes on to its end.
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("started"));
    std::fs::write(&gate, "").unwrap();
    assert!(busy.wait_exit(WAIT).success(), "{}", busy.log());
    assert_eq!(latest_return(&mut con, &id), Some(json!("released")));
    for log in [busy.log(), idle.log()] {
        assert!(!log.contains("KeyboardInterrupt"), "{log}");
        assert!(!log.contains("Traceback"), "{log}");
        assert!(log.contains("Registering death."), "{log}");
    }
}

/// A preloaded app with a daemon thread that holds a lock most of the time, and a job that
/// takes the same lock: a horse forked while the thread held it waits for a lock nobody will
/// release.
const LOCK_HOLDER_APP: &str = r#"
import threading, time

lock = threading.Lock()

def _hold():
    while True:
        with lock:
            time.sleep(0.05)
        time.sleep(0.001)

threading.Thread(target=_hold, name="holder", daemon=True).start()

def locked(n):
    with lock:
        return n
"#;

#[test]
fn an_app_thread_started_at_import_is_allowed_and_a_horse_deadlocked_on_its_lock_times_out() {
    let redis = RedisServer::start();
    let app = App::new(&[("tasks.py", LOCK_HOLDER_APP)]);
    let mut con = redis.con();
    let opts = rq_supervisor::producer::EnqueueOptions {
        timeout: Some(1),
        ..Default::default()
    };
    let jobs: Vec<String> = (0..3)
        .map(|n| rs_enqueue_with(&mut con, "q", "tasks.locked", json!([n]), &opts))
        .collect();
    let mut w = app
        .worker(&redis)
        .opt("--preload", "tasks")
        .burst()
        .queues(["q"])
        .spawn();
    // At most 3 x (1 s + the 5 s kill grace).
    assert!(
        w.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        w.log()
    );
    let log = w.log();
    for (n, id) in jobs.iter().enumerate() {
        match job_status(&mut con, id).as_deref() {
            Some("finished") => assert_eq!(latest_return(&mut con, id), Some(json!(n))),
            Some("failed") => {
                let exc = latest_exc(&mut con, id);
                assert!(
                    exc.contains("JobTimeoutException")
                        && exc.contains("Task exceeded maximum timeout value (1 seconds)"),
                    "job {n}: {exc}\n{log}"
                );
            }
            other => panic!("job {n} ended {other:?}:\n{log}"),
        }
    }
    assert!(zrange(&mut con, "rq:wip:q").is_empty(), "{log}");
    assert_eq!(llen(&mut con, "rq:queue:q"), 0);
}

/// Jobs that count how often this copy of the app ran one, and say in which process; `hold`
/// writes its pid to `NAME.pid` and waits until `NAME.release` exists.
const AHEAD_APP: &str = r#"
import os, time

HERE = os.path.dirname(os.path.abspath(__file__))
ran = [0]

def quick():
    ran[0] += 1
    return [os.getpid(), ran[0]]

def hold(name):
    ran[0] += 1
    with open(os.path.join(HERE, name + ".pid"), "w") as f:
        f.write(str(os.getpid()))
    while not os.path.exists(os.path.join(HERE, name + ".release")):
        time.sleep(0.02)
    return [os.getpid(), ran[0]]
"#;

/// While jobs come back to back the worker forks the next job's horse ahead (it waits beside
/// the running one), and the next job runs in it; a spare that died is replaced by a fresh
/// fork, the job unharmed; an idle worker keeps no child at all. Every job still runs in a
/// fresh copy of the worker.
#[test]
fn back_to_back_jobs_run_in_a_horse_forked_ahead_and_an_idle_worker_keeps_no_spare() {
    let redis = RedisServer::start();
    let app = App::new(&[("tasks.py", AHEAD_APP)]);
    let mut con = redis.con();
    let mut jobs: Vec<String> = (0..2)
        .map(|_| rs_enqueue(&mut con, "q", "tasks.quick", json!([])))
        .collect();
    jobs.push(rs_enqueue(&mut con, "q", "tasks.hold", json!(["one"])));
    jobs.push(rs_enqueue(&mut con, "q", "tasks.hold", json!(["two"])));
    let w = app
        .worker(&redis)
        .opt("--preload", "tasks")
        .queues(["q"])
        .spawn();
    let worker = w.pid().as_raw() as u32;
    // The spare beside a running job: the worker's other child.
    let spare_beside = |name: &str| -> u32 {
        wait_until(&format!("job {name}'s horse"), RUN, || {
            !app.read(&format!("{name}.pid")).is_empty()
        });
        let held: u32 = app.read(&format!("{name}.pid")).trim().parse().unwrap();
        let mut kids = Vec::new();
        wait_until(&format!("a spare beside job {name}'s horse"), WAIT, || {
            kids = rq_supervisor::procfs::children(worker);
            kids.len() == 2
        });
        assert!(
            kids.contains(&held),
            "children {kids:?}, job {name}'s horse {held}"
        );
        *kids.iter().find(|&&k| k != held).unwrap()
    };
    let spare = spare_beside("one");
    assert!(alive(spare), "the spare is a live process");
    app.write("one.release", "");
    // The next job runs in that spare.
    let second = spare_beside("two");
    assert_eq!(
        app.read("two.pid").trim(),
        spare.to_string(),
        "job two ran in the spare"
    );
    // A spare killed from outside: the next job forks a horse of its own.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(second as i32), Signal::SIGKILL).unwrap();
    jobs.push(rs_enqueue(&mut con, "q", "tasks.quick", json!([])));
    app.write("two.release", "");
    for id in &jobs {
        wait_status_within(&mut con, id, &["finished"], RUN);
    }
    // Idle: the spare forked after the last job is killed and reaped.
    wait_worker_state(&mut con, "w", "idle");
    wait_until("no child of the idle worker", WAIT, || {
        rq_supervisor::procfs::children(worker).is_empty()
    });
    let pids: std::collections::BTreeSet<String> = jobs
        .iter()
        .map(|id| {
            let ret = latest_return(&mut con, id).unwrap();
            assert_eq!(
                ret[1],
                json!(1),
                "each job ran in a fresh copy of the worker: {ret}"
            );
            ret[0].to_string()
        })
        .collect();
    assert_eq!(pids.len(), jobs.len(), "one horse per job: {pids:?}");
    assert!(!pids.contains(&worker.to_string()));
    assert!(
        !pids.contains(&second.to_string()),
        "the killed spare ran no job"
    );
    assert!(!w.log().contains("Traceback"), "{}", w.log());
}
