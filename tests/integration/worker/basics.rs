//! The worker life-cycle against a real redis-server: burst mode, priority, logs, birth and
//! death registration, warm shutdown.

use std::time::Duration;

use crate::support::*;
use nix::sys::signal::Signal;

#[test]
fn burst_runs_queued_jobs_in_priority_order_and_registers_death() {
    let redis = RedisServer::start();
    let low = py_enqueue_args(&redis, "low", "rq.builtin.echo", r#"["low"]"#);
    let high = py_enqueue_args(&redis, "high", "rq.builtin.echo", r#"["high"]"#);
    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .name("w1")
        .queues(["high", "low"])
        .spawn();
    let status = w.wait_exit(WAIT);
    assert!(status.success(), "{}", w.log());
    let log = w.log();
    assert!(log.contains("*** Listening for work on high, low"), "{log}");
    let high_at = log
        .find("Got rq.builtin.echo('high') from high")
        .expect(&log);
    let low_at = log.find("Got rq.builtin.echo('low') from low").expect(&log);
    assert!(high_at < low_at, "high must run first:\n{log}");
    assert!(log.contains("No more work, burst finished."), "{log}");
    assert!(log.trim_end().ends_with("Registering death."), "{log}");
    let mut con = redis.con();
    assert_eq!(
        hget(&mut con, &format!("rq:job:{high}"), "status").as_deref(),
        Some("finished")
    );
    assert_eq!(
        hget(&mut con, &format!("rq:job:{low}"), "status").as_deref(),
        Some("finished")
    );
    assert!(hget(&mut con, "rq:worker:w1", "death").is_some());
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg("rq:workers")
        .query(&mut con)
        .unwrap();
    assert!(members.is_empty(), "{members:?}");
}

#[test]
fn idle_worker_stops_at_once_on_sigterm() {
    let redis = RedisServer::start();
    let mut w = Rqworker::new(&redis)
        .builtin_handlers()
        .name("idle")
        .spawn();
    w.wait_for_log("Listening for work");
    let mut con = redis.con();
    wait_worker_state(&mut con, "idle", "idle");
    let start = std::time::Instant::now();
    w.signal(Signal::SIGTERM);
    let status = w.wait_exit(WAIT);
    let took = start.elapsed();
    assert!(status.success(), "{}", w.log());
    // The benchmark measures the real figure (a few ms); this bound only proves the worker does
    // not sit out a blocking dequeue timeout, with room for a loaded CI machine.
    assert!(took < Duration::from_millis(500), "took {took:?}");
    assert!(hget(&mut con, "rq:worker:idle", "death").is_some());
}
