//! RQ 2.12 retries (§7.7) and repeats with jobs enqueued by Python's `Retry` / `Repeat`:
//! requeue (interval 0, also at the front), scheduling (interval > 0) with RQ's interval index,
//! no result entry and no failed registry entry until the last try, `failed_job_count`, the
//! same for jobs that fail by timeout, by a horse crash and by a cold shutdown; and `Repeat`
//! with RQ's (reversed) interval order.

use crate::contract::*;
use nix::sys::signal::Signal;
use serde_json::Value;

fn worker_hash_int(con: &mut redis::Connection, worker: &str, field: &str) -> i64 {
    hget(con, &format!("rq:worker:{worker}"), field)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn results(doc: &Value) -> &Vec<Value> {
    doc["results"].as_array().expect("results list")
}

#[test]
fn requeued_retries_count_as_failures_and_only_the_last_try_leaves_a_result() {
    let redis = RedisServer::start();
    let id = enqueue(
        &redis,
        "q",
        "rq.builtin.fail",
        r#"["boom"]"#,
        r#"{"retry": {"max": 2}}"#,
    );
    let mut con = redis.con();
    assert_eq!(
        hget(&mut con, &format!("rq:job:{id}"), "retries_left").as_deref(),
        Some("2")
    );

    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    assert_exit_ok(&mut w, WAIT);
    let log = w.log();
    assert_eq!(got_from(&log).len(), 3, "one run plus two retries:\n{log}");
    assert_eq!(
        log.matches("Job failed and was requeued for a retry")
            .count(),
        2,
        "{log}"
    );
    assert_eq!(log.matches("Job failed: ").count(), 1, "{log}");

    // Every try counts as a failure for the worker; only the last one leaves a result and a
    // failed-registry entry (three entries would survive the stream's MAXLEN ~ 10).
    assert_eq!(worker_hash_int(&mut con, "w", "failed_job_count"), 3);
    assert_eq!(worker_hash_int(&mut con, "w", "successful_job_count"), 0);
    assert_eq!(xlen(&mut con, &format!("rq:results:{id}")), 1);
    assert!(zscore_f64(&mut con, "rq:failed:q", &id).is_some());
    assert_eq!(llen(&mut con, "rq:queue:q"), 0);

    let doc = job(&redis, &id);
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(doc["retries_left"], 0, "{doc}");
    let res = results(&doc);
    assert_eq!(res.len(), 1, "{doc}");
    assert_eq!(res[0]["type"], "FAILED", "{doc}");
    assert!(
        res[0]["exc_string"].as_str().unwrap().contains("boom"),
        "{doc}"
    );
    assert_eq!(res[0]["worker_name"], "w", "{doc}");
}

#[test]
fn retry_enqueue_at_front_puts_the_job_before_waiting_jobs() {
    // RQ: LPUSH on retry only with Retry(enqueue_at_front=True); otherwise RPUSH behind the
    // jobs already waiting.
    for (at_front, want) in [(true, ["a", "a", "b", "c"]), (false, ["a", "b", "c", "a"])] {
        let redis = RedisServer::start();
        let opts = format!(r#"{{"retry": {{"max": 1, "enqueue_at_front": {at_front}}}}}"#);
        enqueue(&redis, "q", "rq.builtin.fail", r#"["a"]"#, &opts);
        enqueue(&redis, "q", "rq.builtin.echo", r#"["b"]"#, "{}");
        enqueue(&redis, "q", "rq.builtin.echo", r#"["c"]"#, "{}");
        let mut w = Rqworker::new(&redis)
            .burst()
            .builtin_handlers()
            .queues(["q"])
            .spawn();
        assert_exit_ok(&mut w, WAIT);
        let log = w.log();
        let order: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("Got rq.builtin."))
            .map(|l| {
                let arg = l.split("('").nth(1).expect("description with an arg");
                &arg[..1]
            })
            .collect();
        assert_eq!(order, want, "enqueue_at_front={at_front}:\n{log}");
    }
}

#[test]
fn retry_with_interval_is_scheduled_with_rqs_interval_index() {
    let redis = RedisServer::start();
    let id = enqueue(
        &redis,
        "q",
        "rq.builtin.fail",
        "[]",
        r#"{"retry": {"max": 2, "interval": [30, 600]}}"#,
    );
    let mut con = redis.con();
    // No scheduler: the failed try must land in rq:scheduled:q, not in the queue.
    let before = redis_now(&mut con);
    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .name("w1")
        .queues(["q"])
        .spawn();
    assert_exit_ok(&mut w, WAIT);
    assert!(w.log().contains("a retry is scheduled"), "{}", w.log());
    let now = redis_now(&mut con);
    let score = zscore_f64(&mut con, "rq:scheduled:q", &id).expect("in rq:scheduled:q");
    // retries_left 2 of intervals [30, 600]: index max(2 - 2, 0) = 0, so 30 s.
    assert_due_in(score, before, now, 30.0);
    assert_eq!(llen(&mut con, "rq:queue:q"), 0);
    assert!(zscore_f64(&mut con, "rq:failed:q", &id).is_none());
    assert_eq!(xlen(&mut con, &format!("rq:results:{id}")), 0);
    assert!(smembers(&mut con, "rq:queues").contains(&"rq:queue:q".to_string()));
    assert_eq!(worker_hash_int(&mut con, "w1", "failed_job_count"), 1);
    let doc = job(&redis, &id);
    assert_eq!(doc["status"], "scheduled", "{doc}");
    assert_eq!(doc["retries_left"], 1, "{doc}");
    assert_eq!(doc["results"], serde_json::json!([]), "{doc}");
    assert_eq!(doc["scheduled_at"].as_f64(), Some(score), "{doc}");

    // Make the retry due instead of waiting 30 s, and let our scheduler move it: the second
    // failure uses index max(2 - 1, 0) = 1, so 600 s.
    let _: () = redis::cmd("ZADD")
        .arg("rq:scheduled:q")
        .arg(now as i64 - 1)
        .arg(&id)
        .query(&mut con)
        .unwrap();
    let before = redis_now(&mut con);
    let mut w = Rqworker::new(&redis)
        .burst()
        .arg("--with-scheduler")
        .builtin_handlers()
        .name("w2")
        .queues(["q"])
        .spawn();
    assert_exit_ok(&mut w, WAIT);
    assert_eq!(got_from(&w.log()), ["q"], "{}", w.log());
    let now = redis_now(&mut con);
    let score = zscore_f64(&mut con, "rq:scheduled:q", &id).expect("scheduled again");
    assert_due_in(score, before, now, 600.0);
    let doc = job(&redis, &id);
    assert_eq!(doc["status"], "scheduled", "{doc}");
    assert_eq!(doc["retries_left"], 0, "{doc}");
    assert_eq!(doc["results"], serde_json::json!([]), "{doc}");
}

#[test]
fn retry_interval_runs_again_through_our_scheduler_with_no_python_process() {
    let redis = RedisServer::start();
    let id = enqueue(
        &redis,
        "q",
        "rq.builtin.fail",
        "[]",
        r#"{"retry": {"max": 1, "interval": 2}}"#,
    );
    let mut w = Rqworker::new(&redis)
        .arg("--with-scheduler")
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    let mut con = redis.con();
    wait_status(&mut con, &id, &["scheduled"]);
    let due = zscore_f64(&mut con, "rq:scheduled:q", &id).expect("scheduled retry");
    wait_status(&mut con, &id, &["failed"]);
    let doc = job(&redis, &id);
    let second_start = doc["started_at"].as_f64().unwrap();
    assert!(
        second_start >= due,
        "retried at {second_start}, before it was due at {due}"
    );
    assert!(
        second_start <= due + 3.0,
        "retried at {second_start}, due {due}"
    );
    let log = w.log();
    assert_eq!(got_from(&log).len(), 2, "{log}");
    assert!(log.contains("enqueued 1 due job(s)"), "{log}");
    assert_eq!(doc["retries_left"], 0, "{doc}");
    assert_eq!(results(&doc).len(), 1, "{doc}");
    w.signal(Signal::SIGTERM);
    assert_exit_ok(&mut w, WAIT);
}

#[test]
fn a_timed_out_job_is_retried_then_fails_with_rqs_timeout_text() {
    let redis = RedisServer::start();
    let id = enqueue(
        &redis,
        "q",
        "rq.builtin.sleep",
        "[60]",
        r#"{"timeout": 1, "retry": {"max": 1}}"#,
    );
    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    assert_exit_ok(&mut w, WAIT);
    let mut con = redis.con();
    assert_eq!(worker_hash_int(&mut con, "w", "failed_job_count"), 2);
    let doc = job(&redis, &id);
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(doc["retries_left"], 0, "{doc}");
    let res = results(&doc);
    assert_eq!(res.len(), 1, "{doc}");
    assert!(
        res[0]["exc_string"]
            .as_str()
            .unwrap()
            .contains("JobTimeoutException: Task exceeded maximum timeout value (1 seconds)"),
        "{doc}"
    );
}

#[test]
fn a_crashed_horse_is_retried_then_fails_with_rqs_crash_text() {
    let redis = RedisServer::start();
    let scratch = Scratch::new();
    let config = scratch.write(
        "rq.toml",
        r#"
[handlers."tasks.crash"]
command = ["/bin/sh", "-c", "kill -9 $$"]
"#,
    );
    let id = enqueue(&redis, "q", "tasks.crash", "[]", r#"{"retry": {"max": 1}}"#);
    let mut w = Rqworker::new(&redis)
        .burst()
        .config(config.to_str().unwrap())
        .name("w")
        .queues(["q"])
        .spawn();
    assert_exit_ok(&mut w, WAIT);
    let mut con = redis.con();
    assert_eq!(worker_hash_int(&mut con, "w", "failed_job_count"), 2);
    let doc = job(&redis, &id);
    assert_eq!(doc["status"], "failed", "{doc}");
    let res = results(&doc);
    assert_eq!(res.len(), 1, "{doc}");
    assert!(
        res[0]["exc_string"]
            .as_str()
            .unwrap()
            .starts_with("Work-horse terminated unexpectedly; waitpid returned 9 (signal 9); "),
        "{doc}"
    );
}

#[test]
fn a_cold_shutdown_requeues_a_job_with_retries_and_fails_one_without() {
    for retries in [1, 0] {
        let redis = RedisServer::start();
        let opts = if retries > 0 {
            r#"{"retry": {"max": 1}}"#
        } else {
            "{}"
        };
        let id = enqueue(&redis, "q", "rq.builtin.sleep", "[60]", opts);
        let mut w = Rqworker::new(&redis)
            .builtin_handlers()
            .name("w")
            .queues(["q"])
            .spawn();
        let mut con = redis.con();
        wait_status(&mut con, &id, &["started"]);
        w.signal(Signal::SIGTERM);
        w.wait_for_log("warm shut down requested");
        w.signal(Signal::SIGTERM);
        assert_exit_ok(&mut w, WAIT);
        assert_eq!(worker_hash_int(&mut con, "w", "failed_job_count"), 1);
        assert!(zrange(&mut con, "rq:wip:q").is_empty());
        let doc = job(&redis, &id);
        if retries > 0 {
            assert_eq!(doc["status"], "queued", "{doc}");
            assert_eq!(doc["retries_left"], 0, "{doc}");
            assert_eq!(doc["results"], serde_json::json!([]), "{doc}");
            assert_eq!(lrange(&mut con, "rq:queue:q"), vec![id.clone()]);
            assert!(zscore_f64(&mut con, "rq:failed:q", &id).is_none());
        } else {
            assert_eq!(doc["status"], "failed", "{doc}");
            assert!(zscore_f64(&mut con, "rq:failed:q", &id).is_some());
            let res = results(&doc);
            assert_eq!(res.len(), 1, "{doc}");
            assert!(
                res[0]["exc_string"]
                    .as_str()
                    .unwrap()
                    .contains("waitpid returned 9 (signal 9)"),
                "{doc}"
            );
        }
    }
}

#[test]
fn retries_left_zero_or_absent_fails_at_once() {
    let redis = RedisServer::start();
    let id = enqueue(&redis, "q", "rq.builtin.fail", "[]", "{}");
    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .queues(["q"])
        .spawn();
    assert_exit_ok(&mut w, WAIT);
    assert_eq!(got_from(&w.log()).len(), 1);
    let doc = job(&redis, &id);
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(results(&doc).len(), 1, "{doc}");
}

#[test]
fn repeat_runs_the_job_again_with_rqs_interval_order() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    // Interval 0: requeued at once after each success, every run leaving a result.
    let id = enqueue(
        &redis,
        "q",
        "rq.builtin.echo",
        "[7]",
        r#"{"repeat": {"times": 2}}"#,
    );
    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .queues(["q"])
        .spawn();
    assert_exit_ok(&mut w, WAIT);
    assert_eq!(got_from(&w.log()).len(), 3, "{}", w.log());
    let doc = job(&redis, &id);
    assert_eq!(doc["status"], "finished", "{doc}");
    assert_eq!(doc["repeats_left"], 0, "{doc}");
    let res = results(&doc);
    assert_eq!(res.len(), 3, "{doc}");
    assert!(res.iter().all(|r| r["type"] == "SUCCESSFUL"), "{doc}");

    // Intervals: RQ indexes them by repeats_left - 1 (from the end), so [30, 600] waits
    // 600 s first, then 30 s.
    let id = enqueue(
        &redis,
        "q",
        "rq.builtin.echo",
        "[8]",
        r#"{"repeat": {"times": 2, "interval": [30, 600]}}"#,
    );
    let before = redis_now(&mut con);
    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .queues(["q"])
        .spawn();
    assert_exit_ok(&mut w, WAIT);
    let now = redis_now(&mut con);
    let score = zscore_f64(&mut con, "rq:scheduled:q", &id).expect("scheduled repeat");
    assert_due_in(score, before, now, 600.0);
    let doc = job(&redis, &id);
    assert_eq!(doc["status"], "scheduled", "{doc}");
    assert_eq!(doc["repeats_left"], 1, "{doc}");
    assert_eq!(results(&doc).len(), 1, "{doc}");
    assert!(zscore_f64(&mut con, "rq:finished:q", &id).is_some());
    let _: () = redis::cmd("ZADD")
        .arg("rq:scheduled:q")
        .arg(now as i64 - 1)
        .arg(&id)
        .query(&mut con)
        .unwrap();
    let before = redis_now(&mut con);
    let mut w = Rqworker::new(&redis)
        .burst()
        .arg("--with-scheduler")
        .builtin_handlers()
        .queues(["q"])
        .spawn();
    assert_exit_ok(&mut w, WAIT);
    let now = redis_now(&mut con);
    let score = zscore_f64(&mut con, "rq:scheduled:q", &id).expect("scheduled again");
    assert_due_in(score, before, now, 30.0);
    let doc = job(&redis, &id);
    assert_eq!(doc["repeats_left"], 0, "{doc}");
    assert_eq!(results(&doc).len(), 2, "{doc}");
}

/// RQ retries every failure; in a mixed fleet a Python worker that knows the function may
/// pick the retry up, so a job naming an unknown function is retried too.
#[test]
fn a_job_naming_an_unknown_function_is_retried_as_rq_does() {
    let redis = RedisServer::start();
    let id = enqueue(
        &redis,
        "q",
        "tasks.nobody_serves_this",
        "[]",
        r#"{"retry": {"max": 1}}"#,
    );
    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    assert_exit_ok(&mut w, WAIT);
    let mut con = redis.con();
    assert_eq!(got_from(&w.log()).len(), 2, "{}", w.log());
    assert_eq!(worker_hash_int(&mut con, "w", "failed_job_count"), 2);
    let doc = job(&redis, &id);
    assert_eq!(doc["retries_left"], 0, "{doc}");
}
