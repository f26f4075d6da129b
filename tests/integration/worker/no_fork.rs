//! No-fork mode (`-w rq.SimpleWorker`, `[worker] fork = false`): native and built-in jobs run
//! in the worker's own process, as under RQ's SimpleWorker; command handlers still run as a
//! child. The registration covers the job's timeout at once (no heartbeat can be sent while
//! it runs); a native job that overruns ends the worker with status 4 and rq-supervisor
//! settles it as timed out; a warm shutdown lets the job finish, a cold one ends the worker
//! with status 5. (Python jobs in no-fork mode: `python::jobs`.)

use std::time::Duration;

use crate::support::supervisor::{PoolFile, wait_workers, workers};
use crate::support::*;
use nix::sys::signal::Signal;
use serde_json::json;

fn no_fork(redis: &RedisServer) -> Rqworker {
    Rqworker::new(redis)
        .builtin_handlers()
        .name("w")
        .opt("-w", "rq.SimpleWorker")
}

/// Whether `sig` is pending for process `pid` (its `ShdPnd` mask in /proc).
fn pending(pid: u32, sig: Signal) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("ShdPnd:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1 << (sig as u32 - 1)) != 0)
}

/// The worker has no child process while its job runs: the job is in the worker itself.
fn assert_runs_in_the_worker(con: &mut redis::Connection, w: &Proc, id: &str) {
    wait_status(con, id, &["started"]);
    let pid = w.pid().as_raw() as u32;
    assert!(
        rq_supervisor::procfs::children(pid).is_empty(),
        "a child process runs the job:\n{}",
        w.log()
    );
}

#[test]
fn built_in_jobs_run_in_the_worker_process_and_both_class_names_work() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    for class in ["rq.SimpleWorker", "rq.worker.SimpleWorker"] {
        let w = Rqworker::new(&redis)
            .builtin_handlers()
            .name("w")
            .opt("-w", class)
            .queues(["q"])
            .spawn();
        let sleep = rs_enqueue(&mut con, "q", "rq.builtin.sleep", json!([1]));
        assert_runs_in_the_worker(&mut con, &w, &sleep);
        let echo = rs_enqueue(&mut con, "q", "rq.builtin.echo", json!([1, "two"]));
        let fail = rs_enqueue(&mut con, "q", "rq.builtin.fail", json!(["no luck"]));
        wait_status(&mut con, &fail, &["failed"]);
        assert_eq!(job_status(&mut con, &sleep).as_deref(), Some("finished"));
        assert_eq!(latest_return(&mut con, &echo), Some(json!([1, "two"])));
        assert!(latest_exc(&mut con, &fail).contains("no luck"));
        assert!(alive(w.pid()), "{}", w.log());
        drop(w);
        redis::cmd("FLUSHALL").exec(&mut con).unwrap();
    }
}

#[test]
fn the_registration_covers_the_whole_timeout_as_simple_worker_does() {
    let redis = RedisServer::start();
    let w = no_fork(&redis).queues(["q"]).spawn();
    let mut con = redis.con();
    let opts = rq_supervisor::producer::EnqueueOptions {
        timeout: Some(300),
        ..Default::default()
    };
    let id = rs_enqueue_with(&mut con, "q", "rq.builtin.sleep", json!([30]), &opts);
    wait_status(&mut con, &id, &["started"]);
    // RQ's SimpleWorker: job timeout + 60 s, for the worker and for the job's rq:wip entry
    // (a forking worker would renew every job_monitoring_interval instead).
    let worker_ttl = ttl(&mut con, "rq:worker:w");
    assert!((350..=360).contains(&worker_ttl), "worker TTL {worker_ttl}");
    let member = zrange(&mut con, "rq:wip:q").pop().expect("in rq:wip");
    let score: f64 = zscore(&mut con, "rq:wip:q", &member)
        .unwrap()
        .parse()
        .unwrap();
    let left = score - unix_now();
    assert!(
        (350.0..=361.0).contains(&left),
        "rq:wip score {left:.0} s ahead"
    );
    drop(w);
}

#[test]
fn a_command_handler_still_runs_as_a_child_in_no_fork_mode() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let cfg = write_config(dir.path(), &gate_handler(dir.path()));
    let w = no_fork(&redis).config(&cfg).queues(["q"]).spawn();
    let mut con = redis.con();
    let gate = dir.path().join("open");
    let id = rs_enqueue(
        &mut con,
        "q",
        "tasks.gate",
        json!([gate.display().to_string()]),
    );
    let child = wait_horse(&w);
    assert!(alive(child));
    std::fs::write(&gate, "").unwrap();
    wait_status(&mut con, &id, &["finished"]);
    assert_eq!(latest_return(&mut con, &id), Some(json!("released")));
}

#[test]
fn a_native_job_past_its_timeout_ends_the_standalone_worker_with_status_4() {
    let redis = RedisServer::start();
    let mut w = no_fork(&redis).queues(["q"]).spawn();
    let mut con = redis.con();
    let opts = rq_supervisor::producer::EnqueueOptions {
        timeout: Some(1),
        ..Default::default()
    };
    let id = rs_enqueue_with(&mut con, "q", "rq.builtin.sleep", json!([60]), &opts);
    let status = w.wait_exit(WAIT);
    assert_eq!(status.code(), Some(4), "{}", w.log());
    // Nobody settled it yet: it stays in rq:wip for RQ's abandoned-job cleanup, whose
    // deadline is its timeout + 60 s.
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("started"));
    assert_eq!(zrange(&mut con, "rq:wip:q").len(), 1);
}

#[test]
fn under_the_supervisor_an_overrun_is_settled_as_timed_out_and_the_worker_replaced() {
    let redis = RedisServer::start();
    let pool = PoolFile::new(
        "[worker]\nbuiltin_handlers = true\n[pools.nf]\nqueues = [\"q\"]\n[pools.nf.worker]\nfork = false\n",
    );
    let sup = Supervisor::new(&redis, &pool).spawn();
    let mut con = redis.con();
    let (name, first) = wait_workers(&mut con, 1)[0].clone();
    let opts = rq_supervisor::producer::EnqueueOptions {
        timeout: Some(1),
        ..Default::default()
    };
    let id = rs_enqueue_with(&mut con, "q", "rq.builtin.sleep", json!([60]), &opts);
    wait_status(&mut con, &id, &["failed"]);
    let exc = latest_exc(&mut con, &id);
    assert!(exc.contains("JobTimeoutException"), "{exc}");
    assert!(exc.contains("no-fork"), "{exc}");
    assert!(exc.contains(&name), "{exc}");
    wait_until("a replacement", WAIT, || {
        workers(&mut con).iter().any(|(_, pid)| *pid != first)
    });
    // The replacement runs jobs in its own process too.
    let echo = rs_enqueue(&mut con, "q", "rq.builtin.echo", json!(["again"]));
    wait_status(&mut con, &echo, &["finished"]);
    let log = sup.log();
    assert!(log.contains("exited with status 4"), "{log}");
    assert!(!log.contains("DEGRADED"), "{log}");
}

#[test]
fn a_warm_stop_lets_the_in_process_job_finish_and_a_cold_one_ends_the_worker_with_status_5() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    // Warm: the job finishes, death is registered, exit 0.
    let mut w = no_fork(&redis).queues(["q"]).spawn();
    let id = rs_enqueue(&mut con, "q", "rq.builtin.sleep", json!([1]));
    wait_status(&mut con, &id, &["started"]);
    w.signal(Signal::SIGTERM);
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("finished"));
    assert!(smembers(&mut con, "rq:workers").is_empty());
    // Cold: nothing can be killed, so the worker ends at once.
    let mut w = no_fork(&redis).queues(["q"]).spawn();
    let id = rs_enqueue(&mut con, "q", "rq.builtin.sleep", json!([60]));
    wait_status(&mut con, &id, &["started"]);
    w.signal(Signal::SIGTERM);
    // Two signals sent at once may merge into one: the second goes once the first was taken.
    wait_until("the first SIGTERM handled", WAIT, || {
        !pending(w.pid().as_raw() as u32, Signal::SIGTERM)
    });
    w.signal(Signal::SIGTERM);
    let status = w.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(5), "{}", w.log());
}
