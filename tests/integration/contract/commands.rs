//! Commands over pub/sub (§8.3) sent by Python's `rq.command.send_shutdown_command`,
//! `send_kill_horse_command` and `send_stop_job_command` on `rq:pubsub:<worker>`: warm shutdown
//! idle and busy, a killed horse failing (or retrying) its job with RQ's text, and a stopped job
//! ending `stopped` with RQ's result entry, no retry and no dependents.

use crate::contract::*;

fn worker(redis: &RedisServer, name: &str) -> Proc {
    let w = Rqworker::new(redis)
        .builtin_handlers()
        .name(name)
        .queues(["q"])
        .spawn();
    w.wait_for_log("Listening for work");
    w
}

fn first_result(doc: &serde_json::Value) -> &serde_json::Value {
    &doc["results"][0]
}

#[test]
fn shutdown_command_stops_an_idle_worker() {
    let redis = RedisServer::start();
    let mut w = worker(&redis, "w");
    let mut con = redis.con();
    wait_worker_state(&mut con, "w", "idle");
    rc(&redis, &["shutdown", "w"]);
    assert_exit_ok(&mut w, WAIT);
    assert!(w.log().contains("shutdown command received"), "{}", w.log());
    assert!(hget(&mut con, "rq:worker:w", "death").is_some());
    assert!(smembers(&mut con, "rq:workers").is_empty());
}

#[test]
fn shutdown_command_while_busy_finishes_the_job_first() {
    let redis = RedisServer::start();
    let scratch = Scratch::new();
    let config = gate_config(&scratch);
    let mut w = Rqworker::new(&redis)
        .config(&config)
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    let (id, gate) = enqueue_gate(&redis, &scratch, "q", "gate");
    let next = enqueue(&redis, "q", "rq.builtin.noop", "[]", "{}");
    let mut con = redis.con();
    wait_status(&mut con, &id, &["started"]);
    rc(&redis, &["shutdown", "w"]);
    // The worker logs the request before it writes the date.
    w.wait_for_log("warm shut down requested");
    wait_until("shutdown_requested_date written", WAIT, || {
        hget(&mut con, "rq:worker:w", "shutdown_requested_date").is_some()
    });
    open_gate(&gate);
    assert_exit_ok(&mut w, WAIT);
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("finished"));
    // Warm shutdown: the next job is left for another worker.
    assert_eq!(job_status(&mut con, &next).as_deref(), Some("queued"));
    assert_eq!(lrange(&mut con, "rq:queue:q"), vec![next.clone()]);
}

#[test]
fn kill_horse_fails_the_running_job_and_the_worker_goes_on() {
    let redis = RedisServer::start();
    let mut w = worker(&redis, "w");
    let mut con = redis.con();
    // Idle: nothing to kill, the worker stays.
    rc(&redis, &["kill_horse", "w"]);
    w.wait_for_log("kill-horse command received while idle");

    let id = enqueue(&redis, "q", "rq.builtin.sleep", "[60]", "{}");
    wait_status(&mut con, &id, &["started"]);
    rc(&redis, &["kill_horse", "w"]);
    wait_status(&mut con, &id, &["failed"]);
    let doc = job(&redis, &id);
    let exc = first_result(&doc)["exc_string"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        exc.starts_with("Work-horse terminated unexpectedly; waitpid returned 9 (signal 9); "),
        "{doc}"
    );
    assert_eq!(first_result(&doc)["type"], "FAILED");
    let after = enqueue(&redis, "q", "rq.builtin.echo", "[1]", "{}");
    wait_status(&mut con, &after, &["finished"]);
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_exit_ok(&mut w, WAIT);
}

#[test]
fn kill_horse_retries_a_job_with_retries_left() {
    let redis = RedisServer::start();
    let _w = worker(&redis, "w");
    let mut con = redis.con();
    let id = enqueue(
        &redis,
        "q",
        "rq.builtin.sleep",
        "[60]",
        r#"{"retry": {"max": 1, "interval": 600}}"#,
    );
    wait_status(&mut con, &id, &["started"]);
    rc(&redis, &["kill_horse", "w"]);
    wait_status(&mut con, &id, &["scheduled"]);
    let doc = job(&redis, &id);
    assert_eq!(doc["retries_left"], 0, "{doc}");
    assert_eq!(doc["results"], serde_json::json!([]), "{doc}");
    assert!(zscore_f64(&mut con, "rq:scheduled:q", &id).is_some());
}

#[test]
fn stop_job_ends_stopped_with_rqs_result_and_no_retry_or_dependents() {
    let redis = RedisServer::start();
    let mut w = worker(&redis, "w");
    let mut con = redis.con();
    let id = enqueue(
        &redis,
        "q",
        "rq.builtin.sleep",
        "[60]",
        r#"{"retry": {"max": 2}}"#,
    );
    let child = enqueue(
        &redis,
        "q",
        "rq.builtin.noop",
        "[]",
        &serde_json::json!({"depends_on": [id], "allow_failure": true}).to_string(),
    );
    wait_status(&mut con, &id, &["started"]);
    rc(&redis, &["stop_job", &id]);
    wait_status(&mut con, &id, &["stopped"]);
    let doc = job(&redis, &id);
    assert_eq!(doc["status"], "stopped", "{doc}");
    assert_eq!(doc["retries_left"], 2, "no retry for a stopped job: {doc}");
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{doc}");
    assert_eq!(results[0]["type"], "FAILED", "RQ 2.12 writes type 2: {doc}");
    assert_eq!(
        results[0]["exc_string"], "Job stopped by user, work-horse terminated.",
        "{doc}"
    );
    assert_eq!(results[0]["worker_name"], "w");
    assert!(zscore_f64(&mut con, "rq:failed:q", &id).is_some());
    assert!(zrange(&mut con, "rq:wip:q").is_empty());
    assert_eq!(llen(&mut con, "rq:queue:q"), 0);
    assert_eq!(job_status(&mut con, &child).as_deref(), Some("deferred"));
    wait_worker_state(&mut con, "w", "idle");
    assert_eq!(
        hget(&mut con, "rq:worker:w", "failed_job_count").as_deref(),
        Some("1")
    );
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_exit_ok(&mut w, WAIT);
}

#[test]
fn stop_job_for_a_job_not_running_here_is_ignored() {
    let redis = RedisServer::start();
    let mut w = worker(&redis, "w");
    let mut con = redis.con();
    let done = enqueue(&redis, "q", "rq.builtin.noop", "[]", "{}");
    wait_status(&mut con, &done, &["finished"]);
    let running = enqueue(&redis, "q", "rq.builtin.sleep", "[60]", "{}");
    wait_status(&mut con, &running, &["started"]);
    // The finished job names w as its worker, so Python sends the command there.
    rc(&redis, &["stop_job", &done]);
    w.wait_for_log("which is not running here; ignored");
    assert_eq!(job_status(&mut con, &running).as_deref(), Some("started"));
    assert_eq!(job_status(&mut con, &done).as_deref(), Some("finished"));
    rc(&redis, &["stop_job", &running]);
    wait_status(&mut con, &running, &["stopped"]);
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_exit_ok(&mut w, WAIT);
}

#[test]
fn commands_reach_a_burst_worker_too() {
    // Python's worker subscribes to rq:pubsub:<name> in burst mode as well.
    let redis = RedisServer::start();
    let scratch = Scratch::new();
    let config = gate_config(&scratch);
    let mut con = redis.con();
    let long = enqueue(&redis, "q", "rq.builtin.sleep", "[60]", "{}");
    let (short, gate) = enqueue_gate(&redis, &scratch, "q", "gate");
    let last = enqueue(&redis, "q", "rq.builtin.noop", "[]", "{}");
    let mut w = Rqworker::new(&redis)
        .burst()
        .config(&config)
        .builtin_handlers()
        .name("b")
        .queues(["q"])
        .spawn();
    wait_status(&mut con, &long, &["started"]);
    rc(&redis, &["stop_job", &long]);
    wait_status(&mut con, &long, &["stopped"]);
    wait_status(&mut con, &short, &["started"]);
    rc(&redis, &["shutdown", "b"]);
    w.wait_for_log("warm shut down requested");
    open_gate(&gate);
    assert_exit_ok(&mut w, WAIT);
    assert_eq!(job_status(&mut con, &short).as_deref(), Some("finished"));
    assert_eq!(job_status(&mut con, &last).as_deref(), Some("queued"));
}
