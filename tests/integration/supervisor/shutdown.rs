//! rq-supervisor's two-stage shutdown, its death, and burst pools, against a real
//! redis-server and the real binaries.

use std::time::{Duration, Instant};

use crate::support::supervisor::*;
use crate::support::*;
use nix::sys::signal::Signal;
use rq_supervisor::procfs;
use serde_json::json;

fn pool(warm: &str, cold: &str, workers: u32) -> String {
    format!(
        r#"
[supervisor]
warm_timeout = "{warm}"
cold_timeout = "{cold}"
[worker]
builtin_handlers = true
[pools.main]
queues = ["default"]
workers = {workers}
"#
    )
}

/// The pid of the worker running job `id`.
fn runner(con: &mut redis::Connection, id: &str) -> u32 {
    let mut name = None;
    wait_until("job to be started", WAIT, || {
        name = hget(con, &format!("rq:job:{id}"), "worker_name").filter(|n| !n.is_empty());
        name.is_some() && job_status(con, id).as_deref() == Some("started")
    });
    hget(con, &format!("rq:worker:{}", name.unwrap()), "pid")
        .unwrap()
        .parse()
        .unwrap()
}

fn exc_string(con: &mut redis::Connection, id: &str) -> String {
    rq_supervisor::producer::latest_result(con, id)
        .unwrap()
        .and_then(|r| r.exc_string)
        .unwrap_or_default()
}

#[test]
fn warm_shutdown_waits_for_the_running_job_and_exits_zero() {
    let redis = RedisServer::start();
    let file = PoolFile::new(&pool("30s", "5s", 2));
    let mut sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    wait_workers(&mut con, 2);
    let id = rs_enqueue(&mut con, "default", "rq.builtin.sleep", json!([1.5]));
    runner(&mut con, &id);
    let t0 = Instant::now();
    sup.signal(Signal::SIGTERM);
    let status_code = sup.wait_exit(WAIT);
    let took = t0.elapsed();
    let log = sup.log();
    assert!(status_code.success(), "{log}");
    assert!(
        took >= Duration::from_millis(700),
        "did not wait: {took:?}\n{log}"
    );
    assert_eq!(
        job_status(&mut con, &id).as_deref(),
        Some("finished"),
        "{log}"
    );
    assert_eq!(lines_with(&log, "shutdown: warm stage").len(), 1, "{log}");
    assert!(log.contains("every worker stopped warm"), "{log}");
    assert!(!log.contains("shutdown: cold stage"), "{log}");
    assert!(workers(&mut con).is_empty());
}

#[test]
fn second_signal_kills_the_horse_and_the_job_ends_failed() {
    let redis = RedisServer::start();
    let file = PoolFile::new(&pool("60s", "10s", 1));
    let mut sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    wait_workers(&mut con, 1);
    let id = rs_enqueue(&mut con, "default", "rq.builtin.sleep", json!([60]));
    let worker = runner(&mut con, &id);
    let horses = [wait_horse_pid(worker)];
    sup.signal(Signal::SIGTERM);
    sup.wait_for_log("shutdown: warm stage");
    sup.signal(Signal::SIGTERM);
    let code = sup.wait_exit(Duration::from_secs(10));
    let log = sup.log();
    assert_eq!(code.code(), Some(1), "escalated shutdown exits 1:\n{log}");
    assert!(log.contains("cold stage after a second signal"), "{log}");
    assert_eq!(
        job_status(&mut con, &id).as_deref(),
        Some("failed"),
        "{log}"
    );
    assert!(
        exc_string(&mut con, &id).contains("cold shutdown"),
        "{}",
        exc_string(&mut con, &id)
    );
    assert!(!alive(worker) && !alive(horses[0]));
    assert!(workers(&mut con).is_empty());
}

#[test]
fn warm_timeout_escalates_by_itself() {
    let redis = RedisServer::start();
    let file = PoolFile::new(&pool("1s", "10s", 1));
    let mut sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    wait_workers(&mut con, 1);
    let id = rs_enqueue(&mut con, "default", "rq.builtin.sleep", json!([60]));
    let worker = runner(&mut con, &id);
    let t0 = Instant::now();
    sup.signal(Signal::SIGTERM);
    let code = sup.wait_exit(Duration::from_secs(10));
    let took = t0.elapsed();
    let log = sup.log();
    assert_eq!(code.code(), Some(1), "{log}");
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(log.contains("cold stage after warm_timeout"), "{log}");
    assert_eq!(
        job_status(&mut con, &id).as_deref(),
        Some("failed"),
        "{log}"
    );
    assert!(!alive(worker));
}

#[test]
fn a_worker_that_ignores_term_is_sigkilled_after_cold_timeout() {
    let redis = RedisServer::start();
    let file = PoolFile::new("");
    let script = file.script(
        "stubborn.sh",
        // Registers itself like a worker (so the cleanup after SIGKILL is visible), then
        // ignores TERM.
        r#"#!/bin/sh
trap '' TERM
name="$(cat /proc/sys/kernel/hostname).$$"
redis-cli -s "${RQ_REDIS_URL#unix://}" SADD rq:workers "rq:worker:$name" >/dev/null
redis-cli -s "${RQ_REDIS_URL#unix://}" HSET "rq:worker:$name" pid $$ queues default >/dev/null
while :; do sleep 0.05; done
"#,
    );
    file.rewrite(&format!(
        r#"
[supervisor]
warm_timeout = "300ms"
cold_timeout = "500ms"
[pools.stubborn]
queues = ["default"]
workers = 2
program = "{}"
"#,
        script.display()
    ));
    let mut sup = Supervisor::new(&redis, &file).spawn();
    wait_until("two stubborn workers", WAIT, || {
        lines_with(&sup.log(), "supervisor: spawned pid").len() == 2
    });
    let mut con = redis.con();
    wait_workers(&mut con, 2);
    let pids = spawned_pids(&sup.log(), "stubborn");
    assert_eq!(pids.len(), 2, "{}", sup.log());
    let t0 = Instant::now();
    sup.signal(Signal::SIGINT);
    let code = sup.wait_exit(Duration::from_secs(10));
    let took = t0.elapsed();
    let log = sup.log();
    assert_eq!(code.code(), Some(1), "{log}");
    assert!(took >= Duration::from_millis(750), "{took:?}");
    assert!(log.contains("cold stage after warm_timeout"), "{log}");
    assert!(log.contains("shutdown: cold_timeout"), "{log}");
    assert!(
        log.contains("SIGKILL to the process groups of 2 worker(s)"),
        "{log}"
    );
    assert_eq!(
        lines_with(&log, "was killed by signal 9 (SIGKILL)").len(),
        2,
        "{log}"
    );
    for pid in pids {
        assert!(!alive(pid), "worker {pid} survived");
        // Nothing of its process group survives either.
        let left = group_members(pid);
        assert!(left.is_empty(), "group {pid} survived: {left:?}");
    }
    // Killed workers cannot register their deaths: the supervisor did it for them.
    assert!(workers(&mut con).is_empty(), "{log}");
    assert_eq!(lines_with(&log, "crash cleanup done").len(), 2, "{log}");
}

#[test]
fn ctrl_c_in_a_terminal_reaches_only_the_supervisor() {
    let redis = RedisServer::start();
    let file = PoolFile::new(&pool("30s", "5s", 1));
    let mut sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    wait_workers(&mut con, 1);
    let id = rs_enqueue(&mut con, "default", "rq.builtin.sleep", json!([1]));
    runner(&mut con, &id);
    // A terminal's Ctrl-C signals the whole foreground process group: the supervisor's.
    nix::sys::signal::killpg(sup.pid(), Signal::SIGINT).unwrap();
    let code = sup.wait_exit(WAIT);
    let log = sup.log();
    // Had the worker received it too, the supervisor's TERM would have been its second
    // signal (cold) and the job would have failed.
    assert!(code.success(), "{log}");
    assert_eq!(
        job_status(&mut con, &id).as_deref(),
        Some("finished"),
        "{log}"
    );
    assert!(!log.contains("shutdown: cold stage"), "{log}");
}

#[test]
fn sigkill_of_the_supervisor_leaves_no_process_and_no_started_job() {
    let redis = RedisServer::start();
    let file = PoolFile::new(&pool("60s", "10s", 2));
    let sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    let registered = wait_workers(&mut con, 2);
    let id = rs_enqueue(&mut con, "default", "rq.builtin.sleep", json!([60]));
    let busy = runner(&mut con, &id);
    let horses = [wait_horse_pid(busy)];
    let mut pids: Vec<u32> = registered.iter().map(|(_, p)| *p).collect();
    pids.extend(&horses);
    sup.signal(Signal::SIGKILL);
    wait_until(
        "every worker and horse gone",
        Duration::from_secs(1),
        || pids.iter().all(|p| !alive(*p)),
    );
    wait_until("the job settled", Duration::from_secs(1), || {
        job_status(&mut con, &id).as_deref() != Some("started")
    });
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("failed"));
    assert!(exc_string(&mut con, &id).contains("rq-supervisor died"));
    wait_until("no registered worker", Duration::from_secs(1), || {
        workers(&mut con).is_empty()
    });
    drop(sup);
}

#[test]
fn burst_pools_drain_their_queues_and_the_supervisor_exits_zero() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(rs_enqueue(&mut con, "one", "rq.builtin.echo", json!([i])));
        ids.push(rs_enqueue(&mut con, "two", "rq.builtin.echo", json!([i])));
    }
    let file = PoolFile::new(
        r#"
[worker]
builtin_handlers = true
[pools.one]
queues = ["one"]
workers = 2
burst = true
[pools.two]
queues = ["two"]
burst = true
"#,
    );
    let mut sup = Supervisor::new(&redis, &file).spawn();
    let code = sup.wait_exit(WAIT);
    let log = sup.log();
    assert!(code.success(), "{log}");
    for id in &ids {
        assert_eq!(
            job_status(&mut con, id).as_deref(),
            Some("finished"),
            "{log}"
        );
    }
    assert_eq!(
        lines_with(&log, "burst finished, not restarted").len(),
        3,
        "{log}"
    );
    assert!(log.contains("every burst pool has finished"), "{log}");
    assert!(
        lines_with(&log, "supervisor: spawned pid")
            .iter()
            .all(|l| l.contains("--burst"))
    );
    assert!(workers(&mut con).is_empty());
}

#[test]
fn a_supervised_worker_whose_supervisor_died_stops_cold_on_one_term() {
    let redis = RedisServer::start();
    // A stand-in supervisor: a shell that names itself in RQ_SUPERVISOR_PID.
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "RQ_SUPERVISOR_PID=$$ {} --builtin-handlers --name orphan default & wait",
            env!("CARGO_BIN_EXE_rqworker")
        ))
        .env("RQ_REDIS_URL", redis.url());
    let shell = Proc::spawn(cmd);
    let mut con = redis.con();
    let (_, worker) = wait_workers(&mut con, 1)[0].clone();
    let id = rs_enqueue(&mut con, "default", "rq.builtin.sleep", json!([60]));
    let horse = {
        runner(&mut con, &id);
        wait_horse_pid(worker)
    };
    shell.signal(Signal::SIGKILL);
    // The kernel re-parents before it delivers a parent-death signal; wait for the same.
    wait_until("worker re-parented", WAIT, || {
        procfs::stat(worker).is_some_and(|s| s.ppid != shell.pid().as_raw() as u32)
    });
    // One SIGTERM (what the parent-death signal delivers) is enough: no job left running.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker as i32), Signal::SIGTERM).unwrap();
    wait_status_within(&mut con, &id, &["failed"], Duration::from_secs(5));
    assert!(exc_string(&mut con, &id).contains("its rq-supervisor died"));
    wait_until("worker and horse gone", Duration::from_secs(5), || {
        !alive(worker) && !alive(horse)
    });
    assert!(workers(&mut con).is_empty());
}
