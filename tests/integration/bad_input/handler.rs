//! Handler rows of docs/reliability.md's bad-input table that the worker tests do not
//! already cover: a handler that never reads its stdin (even with a job larger than a pipe
//! holds), one that leaves processes running after it exits, and one that ignores SIGTERM.
//! The job always ends, nothing the handler started outlives it, and the worker goes on.

use std::time::Duration;

use crate::support::supervisor::{PoolFile, wait_workers};
use crate::support::*;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::json;

fn handler_cfg(dir: &std::path::Path, name: &str, script: &str, extra: &str) -> String {
    let program = write_script(dir, &format!("{name}.sh"), script);
    write_config(
        dir,
        &format!(
            "[handlers.\"tasks.{name}\"]\ncommand = [{}]\n{extra}",
            toml_str(program.display().to_string())
        ),
    )
}

fn read_pid(path: &std::path::Path) -> Pid {
    let mut pid = None;
    wait_until("the pid file", WAIT, || {
        pid = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok());
        pid.is_some()
    });
    Pid::from_raw(pid.unwrap())
}

#[test]
fn a_handler_that_never_reads_stdin_does_not_block_the_worker() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let gate = dir.path().join("gate");
    // Waits for the gate without ever reading stdin, then exits 0.
    let cfg = handler_cfg(
        dir.path(),
        "deaf",
        "#!/bin/sh\nwhile [ ! -e \"$1\" ]; do sleep 0.02; done\necho done\n",
        "",
    );
    let w = Rqworker::new(&redis)
        .config(&cfg)
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    w.wait_for_log("Listening for work");
    let mut con = redis.con();
    // 1 MB of kwargs: far more than a pipe holds, so writing stdin would block.
    let big = "z".repeat(1 << 20);
    let stopped = rs_enqueue_kw(
        &mut con,
        "tasks.deaf",
        json!([gate.display().to_string()]),
        &big,
    );
    wait_status(&mut con, &stopped, &["started"]);
    wait_horse(&w);
    // The worker is not stuck in a write: it obeys a stop-job command at once.
    python(&redis, "rqtool.py", &["send", "stop-job", &stopped]);
    assert_eq!(
        wait_status(&mut con, &stopped, &["stopped", "finished", "failed"]),
        "stopped"
    );
    // And a handler that exits without reading finishes normally.
    std::fs::write(&gate, "").unwrap();
    let id = rs_enqueue_kw(
        &mut con,
        "tasks.deaf",
        json!([gate.display().to_string()]),
        &big,
    );
    assert_eq!(
        wait_status(&mut con, &id, &["finished", "failed"]),
        "finished",
        "{}",
        w.log()
    );
    assert_eq!(latest_return(&mut con, &id), Some(json!("done")));
    let next = rs_enqueue(&mut con, "q", "rq.builtin.echo", json!(["next"]));
    wait_status(&mut con, &next, &["finished"]);
}

/// Enqueues `func(*args, big=big)` with the Rust producer.
fn rs_enqueue_kw(
    con: &mut redis::Connection,
    func: &str,
    args: serde_json::Value,
    big: &str,
) -> String {
    let serde_json::Value::Array(args) = args else {
        panic!()
    };
    let mut kwargs = serde_json::Map::new();
    kwargs.insert("big".into(), json!(big));
    rq_supervisor::producer::enqueue(con, "q", func, args, kwargs, &Default::default()).unwrap()
}

#[test]
fn processes_a_handler_leaves_behind_are_killed_when_it_exits() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let pid_file = dir.path().join("left.pid");
    let cfg = handler_cfg(
        dir.path(),
        "litter",
        "#!/bin/sh\nsleep 300 &\necho $! > \"$1\"\necho bye\n",
        "",
    );
    let w = Rqworker::new(&redis)
        .config(&cfg)
        .name("w")
        .queues(["q"])
        .spawn();
    w.wait_for_log("Listening for work");
    let mut con = redis.con();
    let id = rs_enqueue(
        &mut con,
        "q",
        "tasks.litter",
        json!([pid_file.display().to_string()]),
    );
    assert_eq!(
        wait_status(&mut con, &id, &["finished", "failed"]),
        "finished"
    );
    let left = read_pid(&pid_file);
    wait_until("the left-behind process to be killed", WAIT, || {
        !alive(left)
    });
    assert!(alive(w.pid()));
}

#[test]
fn under_the_supervisor_even_a_process_that_left_the_handlers_group_is_killed() {
    let redis = RedisServer::start();
    let pool = PoolFile::new("");
    let pid_file = pool.dir.path().join("escaped.pid");
    let script = pool.script(
        "escape.sh",
        // The escapee writes its pid only once it has its own session, and the handler
        // exits only after that, so it has really left the handler's process group.
        "#!/bin/sh\nsetsid sh -c 'echo $$ > \"$1.tmp\"; mv \"$1.tmp\" \"$1\"; exec sleep 300' _ \"$1\" &\n\
         while [ ! -e \"$1\" ]; do sleep 0.01; done\necho bye\n",
    );
    pool.rewrite(&format!(
        "[supervisor]\nhealth_interval = \"200ms\"\n[pools.p]\nqueues = [\"q\"]\n\
         [handlers.\"tasks.escape\"]\ncommand = [{}]\n",
        toml_str(script.display().to_string())
    ));
    let sup = Supervisor::new(&redis, &pool).spawn();
    let mut con = redis.con();
    wait_workers(&mut con, 1);
    let id = rs_enqueue(
        &mut con,
        "q",
        "tasks.escape",
        json!([pid_file.display().to_string()]),
    );
    assert_eq!(
        wait_status(&mut con, &id, &["finished", "failed"]),
        "finished"
    );
    let escaped = read_pid(&pid_file);
    // It re-parents to the supervisor (a child subreaper), which kills it.
    wait_until("the escaped process to be killed", WAIT, || !alive(escaped));
    sup.wait_for_log(&format!("killed orphan pid {escaped}"));
}

#[test]
fn a_handler_that_ignores_sigterm_is_killed_at_its_timeout_and_on_cold_shutdown() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let pid_file = dir.path().join("stubborn.pid");
    let cfg = handler_cfg(
        dir.path(),
        "stubborn",
        "#!/bin/sh\ntrap '' TERM INT\necho $$ > \"$1\"\nwhile :; do sleep 0.05; done\n",
        "",
    );
    let mut w = Rqworker::new(&redis)
        .config(&cfg)
        .name("w")
        .queues(["q"])
        .spawn();
    w.wait_for_log("Listening for work");
    let mut con = redis.con();
    // Its timeout.
    let timed = rs_enqueue_with(
        &mut con,
        "q",
        "tasks.stubborn",
        json!([pid_file.display().to_string()]),
        &rq_supervisor::producer::EnqueueOptions {
            timeout: Some(1),
            ..Default::default()
        },
    );
    let first = read_pid(&pid_file);
    assert_eq!(
        wait_status(&mut con, &timed, &["finished", "failed"]),
        "failed"
    );
    assert!(
        latest_exc(&mut con, &timed)
            .starts_with("JobTimeoutException: Task exceeded maximum timeout value (1 seconds)")
    );
    wait_until("the stubborn handler gone", WAIT, || !alive(first));
    // A cold shutdown (second SIGTERM to the worker).
    std::fs::remove_file(&pid_file).unwrap();
    let cold = rs_enqueue(
        &mut con,
        "q",
        "tasks.stubborn",
        json!([pid_file.display().to_string()]),
    );
    let second = read_pid(&pid_file);
    w.signal(Signal::SIGTERM);
    w.wait_for_log("warm shut down requested");
    w.signal(Signal::SIGTERM);
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert_eq!(job_status(&mut con, &cold).as_deref(), Some("failed"));
    assert!(latest_exc(&mut con, &cold).starts_with("ShutDownImminentException"));
    wait_until("the stubborn handler gone", Duration::from_secs(5), || {
        !alive(second)
    });
}
