//! Worker options as RQ 2.12 defines them: `--max-jobs`, `--max-idle-time`,
//! `--dequeue-strategy default|round_robin|random`, `--worker-ttl` (worker hash TTL =
//! worker_ttl + 60 when idle) and `--job-monitoring-interval` (TTL while busy).

use std::time::{Duration, Instant};

use crate::contract::*;
use nix::sys::signal::Signal;

fn fill(redis: &RedisServer, queue: &str, n: usize) -> Vec<String> {
    ids_of(rc(
        redis,
        &["enqueue_many", queue, "rq.builtin.noop", &n.to_string()],
    ))
}

fn burst_order(redis: &RedisServer, strategy: &str) -> Vec<String> {
    let mut w = Rqworker::new(redis)
        .burst()
        .builtin_handlers()
        .opt("--dequeue-strategy", strategy)
        .queues(["a", "b"])
        .spawn();
    assert_exit_ok(&mut w, WAIT);
    got_from(&w.log())
}

#[test]
fn max_jobs_exits_cleanly_after_n_jobs() {
    let redis = RedisServer::start();
    let ids = fill(&redis, "q", 5);
    let mut w = Rqworker::new(&redis)
        .builtin_handlers()
        .opt("--max-jobs", "2")
        .name("w")
        .queues(["q"])
        .spawn();
    assert_exit_ok(&mut w, WAIT);
    assert!(
        w.log().contains("finished executing 2 jobs, quitting"),
        "{}",
        w.log()
    );
    let mut con = redis.con();
    let finished = ids
        .iter()
        .filter(|id| job_status(&mut con, id).as_deref() == Some("finished"))
        .count();
    assert_eq!(finished, 2);
    assert_eq!(llen(&mut con, "rq:queue:q"), 3);
    assert!(hget(&mut con, "rq:worker:w", "death").is_some());
}

#[test]
fn max_idle_time_counts_from_the_last_job() {
    let redis = RedisServer::start();
    let started = Instant::now();
    let mut w = Rqworker::new(&redis)
        .builtin_handlers()
        .opt("--max-idle-time", "3")
        .name("w")
        .queues(["q"])
        .spawn();
    w.wait_for_log("Listening for work");
    // Time must pass: the job arrives when the worker has been idle for a while.
    std::thread::sleep(Duration::from_millis(1500));
    let id = enqueue(&redis, "q", "rq.builtin.sleep", "[1]", "{}");
    let mut con = redis.con();
    wait_status(&mut con, &id, &["finished"]);
    let ended_at = job(&redis, &id)["ended_at"].as_f64().unwrap();
    assert_exit_ok(&mut w, WAIT);
    let idle_after_job = Duration::from_secs_f64(unix_now() - ended_at);
    assert!(
        idle_after_job >= Duration::from_millis(2500),
        "quit {idle_after_job:?} after its last job, before 3 s of idleness"
    );
    assert!(
        idle_after_job <= Duration::from_secs(15),
        "quit {idle_after_job:?} after its last job"
    );
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert!(
        w.log().contains("idle for 3 seconds, quitting"),
        "{}",
        w.log()
    );
}

#[test]
fn max_idle_time_with_no_job_at_all() {
    let redis = RedisServer::start();
    let started = Instant::now();
    let mut w = Rqworker::new(&redis)
        .opt("--max-idle-time", "2")
        .queues(["q"])
        .spawn();
    assert_exit_ok(&mut w, WAIT);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took <= Duration::from_secs(8),
        "{took:?}"
    );
}

#[test]
fn default_strategy_keeps_strict_priority() {
    let redis = RedisServer::start();
    fill(&redis, "a", 3);
    fill(&redis, "b", 3);
    assert_eq!(
        burst_order(&redis, "default"),
        ["a", "a", "a", "b", "b", "b"]
    );
}

#[test]
fn round_robin_alternates_between_queues_that_have_jobs() {
    let redis = RedisServer::start();
    fill(&redis, "a", 3);
    fill(&redis, "b", 5);
    assert_eq!(
        burst_order(&redis, "round_robin"),
        ["a", "b", "a", "b", "a", "b", "b", "b"]
    );
}

#[test]
fn random_eventually_takes_from_both_queues() {
    let redis = RedisServer::start();
    fill(&redis, "a", 20);
    fill(&redis, "b", 20);
    let order = burst_order(&redis, "random");
    assert_eq!(order.len(), 40);
    // Strict priority would take all of `a` first; the chance that a random order does is
    // (1/2)^19 or so.
    let b_in_first_half = order[..20].iter().filter(|q| *q == "b").count();
    assert!(b_in_first_half > 0, "{order:?}");
    assert_ne!(
        order,
        burst_order_round_robin_shape(),
        "random must not be round robin"
    );
}

fn burst_order_round_robin_shape() -> Vec<String> {
    (0..40)
        .map(|i| if i % 2 == 0 { "a" } else { "b" }.to_string())
        .collect()
}

#[test]
fn worker_ttl_sets_the_idle_hash_ttl_and_monitoring_interval_the_busy_one() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let mut w = Rqworker::new(&redis)
        .builtin_handlers()
        .opt("--worker-ttl", "30")
        .opt("--job-monitoring-interval", "5")
        .name("w")
        .queues(["q"])
        .spawn();
    wait_worker_state(&mut con, "w", "idle");
    // TTLs only shrink between the write and the read; the margins are for a loaded machine.
    let t = ttl(&mut con, "rq:worker:w");
    assert!((80..=90).contains(&t), "idle ttl {t}, want 30 + 60");
    // Busy: min(timeout, job_monitoring_interval) + 60.
    let before = redis_now(&mut con);
    let id = enqueue(&redis, "q", "rq.builtin.sleep", "[3]", "{}");
    wait_status(&mut con, &id, &["started"]);
    let t = ttl(&mut con, "rq:worker:w");
    assert!((55..=65).contains(&t), "busy ttl {t}, want 5 + 60");
    let member = zrange(&mut con, "rq:wip:q").pop().expect("wip entry");
    let score = zscore_f64(&mut con, "rq:wip:q", &member).unwrap();
    let now = redis_now(&mut con);
    assert_due_in(score, before, now, 65.0);
    wait_status(&mut con, &id, &["finished"]);
    // The idle TTL comes with the claim that finds the queue empty, a script after the
    // settle that finished the job.
    wait_worker_state(&mut con, "w", "idle");
    let t = ttl(&mut con, "rq:worker:w");
    assert!((80..=90).contains(&t), "idle again: ttl {t}");
    w.signal(Signal::SIGTERM);
    assert_exit_ok(&mut w, WAIT);

    // RQ's defaults: 420 + 60 idle.
    let mut w = Rqworker::new(&redis).name("d").queues(["q"]).spawn();
    wait_worker_state(&mut con, "d", "idle");
    let t = ttl(&mut con, "rq:worker:d");
    assert!((470..=480).contains(&t), "default idle ttl {t}");
    w.signal(Signal::SIGTERM);
    assert_exit_ok(&mut w, WAIT);
}
