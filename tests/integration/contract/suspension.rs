//! Suspension (§8.2) with the real `rq suspend` / `rq resume`: burst workers exit without taking
//! work, other workers finish their current job and then idle in state `suspended` (worker hash)
//! until resumed, also when the suspension expires (`--duration`).

use std::time::Duration;

use crate::contract::*;
use nix::sys::signal::Signal;

fn worker_state(con: &mut redis::Connection, name: &str) -> Option<String> {
    hget(con, &format!("rq:worker:{name}"), "state")
}

#[test]
fn a_burst_worker_exits_without_taking_jobs_while_suspended() {
    let redis = RedisServer::start();
    let id = enqueue(&redis, "q", "rq.builtin.noop", "[]", "{}");
    rq_cli_ok(&redis, &["suspend"]);
    let mut con = redis.con();
    assert!(exists(&mut con, "rq:suspended"));
    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .queues(["q"])
        .spawn();
    assert_exit_ok(&mut w, WAIT);
    assert!(w.log().contains("suspended in burst mode"), "{}", w.log());
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("queued"));
    assert_eq!(lrange(&mut con, "rq:queue:q"), vec![id.clone()]);

    rq_cli_ok(&redis, &["resume"]);
    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .queues(["q"])
        .spawn();
    assert_exit_ok(&mut w, WAIT);
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("finished"));
}

#[test]
fn a_worker_idles_suspended_until_resumed_then_takes_jobs_again() {
    let redis = RedisServer::start();
    let mut w = Rqworker::new(&redis)
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    let mut con = redis.con();
    wait_worker_state(&mut con, "w", "idle");
    rq_cli_ok(&redis, &["suspend"]);
    wait_worker_state(&mut con, "w", "suspended");
    let id = enqueue(&redis, "q", "rq.builtin.noop", "[]", "{}");
    // Time must pass here: the job has to stay put while the suspension holds.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("queued"));
    assert_eq!(worker_state(&mut con, "w").as_deref(), Some("suspended"));
    // `rq info` reads the state RQ's way.
    let info = rq_cli_ok(&redis, &["info", "q"]);
    assert!(info.contains("w (") && info.contains("suspended"), "{info}");

    rq_cli_ok(&redis, &["resume"]);
    wait_status(&mut con, &id, &["finished"]);
    wait_worker_state(&mut con, "w", "idle");
    w.signal(Signal::SIGTERM);
    assert_exit_ok(&mut w, WAIT);
}

#[test]
fn a_busy_worker_finishes_its_job_then_suspends() {
    let redis = RedisServer::start();
    let scratch = Scratch::new();
    let config = gate_config(&scratch);
    let mut w = Rqworker::new(&redis)
        .config(&config)
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    let mut con = redis.con();
    let (running, gate) = enqueue_gate(&redis, &scratch, "q", "gate");
    let waiting = enqueue(&redis, "q", "rq.builtin.noop", "[]", "{}");
    wait_status(&mut con, &running, &["started"]);
    rq_cli_ok(&redis, &["suspend"]);
    open_gate(&gate);
    wait_status(&mut con, &running, &["finished"]);
    wait_worker_state(&mut con, "w", "suspended");
    assert_eq!(job_status(&mut con, &waiting).as_deref(), Some("queued"));
    rq_cli_ok(&redis, &["resume"]);
    wait_status(&mut con, &waiting, &["finished"]);
    w.signal(Signal::SIGTERM);
    assert_exit_ok(&mut w, WAIT);
}

#[test]
fn a_suspension_with_a_duration_ends_by_itself() {
    let redis = RedisServer::start();
    let mut w = Rqworker::new(&redis)
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    let mut con = redis.con();
    wait_worker_state(&mut con, "w", "idle");
    rq_cli_ok(&redis, &["suspend", "--duration", "2"]);
    // When the key expires, in Unix time (Redis' clock; PTTL -2 would mean already gone).
    let pttl: i64 = redis::cmd("PTTL")
        .arg("rq:suspended")
        .query(&mut con)
        .unwrap();
    assert!(
        pttl > 0,
        "the suspension expired before it could be observed"
    );
    let expires = redis_now(&mut con) + pttl as f64 / 1000.0;
    wait_worker_state(&mut con, "w", "suspended");
    let id = enqueue(&redis, "q", "rq.builtin.noop", "[]", "{}");
    wait_status(&mut con, &id, &["finished"]);
    let started = job(&redis, &id)["started_at"].as_f64().unwrap();
    assert!(
        started >= expires - 0.05,
        "ran at {started}, before the suspension expired at {expires}"
    );
    wait_worker_state(&mut con, "w", "idle");
    w.signal(Signal::SIGTERM);
    assert_exit_ok(&mut w, WAIT);
}

#[test]
fn every_suspension_shows_even_with_no_job_in_between() {
    let redis = RedisServer::start();
    let mut w = Rqworker::new(&redis)
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    let mut con = redis.con();
    wait_worker_state(&mut con, "w", "idle");
    for _ in 0..2 {
        rq_cli_ok(&redis, &["suspend"]);
        wait_worker_state(&mut con, "w", "suspended");
        // Time must pass: the state has to stay `suspended`, not flip back on the next poll.
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(worker_state(&mut con, "w").as_deref(), Some("suspended"));
        rq_cli_ok(&redis, &["resume"]);
        wait_worker_state(&mut con, "w", "idle");
    }
    w.signal(Signal::SIGTERM);
    assert_exit_ok(&mut w, WAIT);
}

#[test]
fn a_suspended_worker_still_obeys_shutdown() {
    let redis = RedisServer::start();
    let mut w = Rqworker::new(&redis)
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    let mut con = redis.con();
    wait_worker_state(&mut con, "w", "idle");
    rq_cli_ok(&redis, &["suspend"]);
    wait_worker_state(&mut con, "w", "suspended");
    rc(&redis, &["shutdown", "w"]);
    assert_exit_ok(&mut w, WAIT);
    assert!(hget(&mut con, "rq:worker:w", "death").is_some());
}
