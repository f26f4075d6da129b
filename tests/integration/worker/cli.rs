//! `rqworker`'s command line and start-up: queue order and strict priority, names, Redis URL
//! precedence and failures, durations, the pid file, log lines and `-q`, name conflicts.

use std::time::{Duration, Instant};

use crate::support::*;
use nix::sys::signal::Signal;
use serde_json::json;

/// The queue of each `Got ... from QUEUE` line, in log order.
fn got_queues(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split_once("] Got ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.rsplit_once(" from ").map(|(_, q)| q.to_string()))
        .collect()
}

#[test]
fn without_queue_arguments_the_worker_listens_on_default() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let id = rs_enqueue(&mut con, "default", "rq.builtin.noop", json!([]));
    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .name("w")
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    let log = w.log();
    assert!(log.contains("*** Listening for work on default\n"), "{log}");
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("finished"));
    assert_eq!(
        hget(&mut con, "rq:worker:w", "queues").as_deref(),
        Some("default")
    );
}

#[test]
fn burst_drains_queues_in_strict_priority_order_when_all_are_non_empty() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    // Interleaved so that neither enqueue order nor FIFO across queues can explain the result.
    for i in 0..3 {
        for q in ["low", "normal", "high"] {
            rs_enqueue(&mut con, q, "rq.builtin.echo", json!([format!("{q}-{i}")]));
        }
    }
    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .name("w")
        .queues(["high", "normal", "low"])
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    let log = w.log();
    assert_eq!(
        got_queues(&log),
        [
            "high", "high", "high", "normal", "normal", "normal", "low", "low", "low"
        ],
        "{log}"
    );
    // FIFO within a queue.
    let first_low = log
        .find("Got rq.builtin.echo('low-0') from low")
        .expect(&log);
    let last_low = log
        .find("Got rq.builtin.echo('low-2') from low")
        .expect(&log);
    assert!(first_low < last_low, "{log}");
}

#[test]
fn a_job_in_a_higher_queue_runs_before_an_older_job_in_a_lower_queue() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let cfg = write_config(dir.path(), &gate_handler(dir.path()));
    let open = dir.path().join("open");
    let mut con = redis.con();
    let w = Rqworker::new(&redis)
        .config(&cfg)
        .builtin_handlers()
        .name("w")
        .queues(["high", "low"])
        .spawn();
    w.wait_for_log("Listening for work");
    // Keep the worker busy so that both later jobs wait in their queues at claim time.
    let blocker = rs_enqueue(
        &mut con,
        "low",
        "tasks.gate",
        json!([open.display().to_string()]),
    );
    wait_status(&mut con, &blocker, &["started"]);
    let older_low = rs_enqueue(&mut con, "low", "rq.builtin.noop", json!([]));
    let newer_high = rs_enqueue(&mut con, "high", "rq.builtin.noop", json!([]));
    std::fs::write(&open, "").unwrap();
    wait_status(&mut con, &older_low, &["finished"]);
    wait_status(&mut con, &newer_high, &["finished"]);
    let started = |con: &mut redis::Connection, id: &str| {
        rq_time(&hget(con, &format!("rq:job:{id}"), "started_at").unwrap())
    };
    assert!(
        started(&mut con, &newer_high) < started(&mut con, &older_low),
        "high must be claimed first:\n{}",
        w.log()
    );
    assert_eq!(got_queues(&w.log()), ["low", "high", "low"], "{}", w.log());
}

#[test]
fn name_flag_sets_the_worker_name() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let mut w = Rqworker::new(&redis)
        .builtin_handlers()
        .name("custom-name_1")
        .queues(["q1", "q2"])
        .spawn();
    w.wait_for_log("Listening for work");
    assert!(exists(&mut con, "rq:worker:custom-name_1"));
    assert!(smembers(&mut con, "rq:workers").contains(&"rq:worker:custom-name_1".to_string()));
    for q in ["q1", "q2"] {
        assert_eq!(
            smembers(&mut con, &format!("rq:workers:{q}")),
            ["rq:worker:custom-name_1"]
        );
    }
    assert!(w.log().contains("[custom-name_1]"), "{}", w.log());
    w.signal(Signal::SIGTERM);
    assert!(w.wait_exit(WAIT).success());
}

#[test]
fn default_name_is_hostname_dot_pid() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let mut w = Rqworker::new(&redis).builtin_handlers().spawn();
    w.wait_for_log("Listening for work");
    let name = format!("{}.{}", hostname(), w.pid());
    let key = format!("rq:worker:{name}");
    assert_eq!(smembers(&mut con, "rq:workers"), vec![key.clone()]);
    assert_eq!(hget(&mut con, &key, "pid"), Some(w.pid().to_string()));
    w.signal(Signal::SIGTERM);
    assert!(w.wait_exit(WAIT).success());
    assert!(hget(&mut con, &key, "death").is_some());
}

/// A URL that parses but where nothing listens.
fn dead_url(dir: &std::path::Path) -> String {
    format!("unix://{}/nothing-here.sock", dir.display())
}

#[test]
fn url_flag_wins_over_the_environment_and_the_config_file() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let mut con = redis.con();
    let id = rs_enqueue(&mut con, "default", "rq.builtin.noop", json!([]));
    let cfg = write_config(
        dir.path(),
        &format!("[redis]\nurl = {}\n", toml_str(dead_url(dir.path()))),
    );
    let mut w = Rqworker::at(dead_url(dir.path()))
        .opt("--url", redis.url())
        .config(&cfg)
        .burst()
        .builtin_handlers()
        .name("w")
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("finished"));
}

#[test]
fn environment_url_wins_over_the_config_file() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let mut con = redis.con();
    let id = rs_enqueue(&mut con, "default", "rq.builtin.noop", json!([]));
    let cfg = write_config(
        dir.path(),
        &format!("[redis]\nurl = {}\n", toml_str(dead_url(dir.path()))),
    );
    let mut w = Rqworker::new(&redis)
        .config(&cfg)
        .burst()
        .builtin_handlers()
        .name("w")
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("finished"));

    // And the environment is really read: a dead URL there is used over a good config file.
    let good_cfg_dir = temp_dir();
    let good_cfg = write_config(
        good_cfg_dir.path(),
        &format!("[redis]\nurl = {}\n", toml_str(redis.url())),
    );
    let mut w = Rqworker::at(dead_url(dir.path()))
        .config(&good_cfg)
        .burst()
        .name("w2")
        .spawn();
    // The dead URL is the one it waits for (a Redis not there yet is waited for).
    w.wait_for_log("waiting for Redis");
    assert!(w.log().contains("nothing-here.sock"), "{}", w.log());
    w.signal(Signal::SIGTERM);
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
}

#[test]
fn config_file_url_is_used_without_flag_or_environment() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let mut con = redis.con();
    let id = rs_enqueue(&mut con, "default", "rq.builtin.noop", json!([]));
    let cfg = write_config(
        dir.path(),
        &format!("[redis]\nurl = {}\n", toml_str(redis.url())),
    );
    let mut w = Rqworker::without_url()
        .config(&cfg)
        .burst()
        .builtin_handlers()
        .name("w")
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("finished"));
}

#[test]
fn unreachable_redis_at_start_is_waited_for_naming_the_url_with_the_password_masked() {
    let url = "redis://user:s3cret@127.0.0.1:1/0";
    // Once through the flag, once through the environment.
    for via_env in [false, true] {
        let worker = if via_env {
            Rqworker::at(url)
        } else {
            Rqworker::without_url().opt("--url", url)
        };
        let mut w = worker.builtin_handlers().name("w").spawn();
        // Not an exit (under rq-supervisor that would count as a crash): a wait, said once.
        w.wait_for_log("waiting for Redis");
        let log = w.log();
        assert!(
            log.contains("redis://user:***@127.0.0.1:1/0"),
            "names the masked URL:\n{log}"
        );
        assert!(
            log.contains("check that Redis is running"),
            "a refused connection says so:\n{log}"
        );
        assert!(!log.contains("s3cret"), "leaks the password:\n{log}");
        assert!(!log.contains("Listening for work"), "{log}");
        // A stop request ends the wait at once.
        w.signal(Signal::SIGTERM);
        let status = w.wait_exit(WAIT);
        assert!(status.success(), "{}", w.log());
        assert_eq!(
            w.log().matches("waiting for Redis").count(),
            1,
            "said once, not per attempt:\n{}",
            w.log()
        );
    }
}

#[test]
fn a_unix_socket_url_masks_its_pass_parameter_too() {
    // redis-rs reads a unix socket's password from the `pass` query parameter.
    let dir = temp_dir();
    let url = format!(
        "unix://{}/nothing.sock?db=0&pass=s3cret",
        dir.path().display()
    );
    let w = Rqworker::at(&url).name("w").spawn();
    w.wait_for_log("waiting for Redis");
    let log = w.log();
    assert!(log.contains("nothing.sock"), "names the URL:\n{log}");
    assert!(!log.contains("s3cret"), "leaks the password:\n{log}");
}

#[test]
fn durations_accept_a_unit_suffix_or_bare_seconds() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    // The worker hash lives worker_ttl + 60 seconds after birth.
    for (name, ttl_arg, expect) in [
        ("bare", "100", 160),
        ("suffix", "2m", 180),
        ("s", "100s", 160),
    ] {
        let mut w = Rqworker::new(&redis)
            .name(name)
            .opt("--worker-ttl", ttl_arg)
            .spawn();
        w.wait_for_log("Listening for work");
        let t = ttl(&mut con, &format!("rq:worker:{name}"));
        assert!(
            (expect - 10..=expect).contains(&t),
            "--worker-ttl {ttl_arg}: TTL {t}, want about {expect}"
        );
        w.signal(Signal::SIGTERM);
        assert!(w.wait_exit(WAIT).success());
    }
    // --max-idle-time in both forms ends an idle worker after about that long.
    for arg in ["1", "1s"] {
        let start = Instant::now();
        let mut w = Rqworker::new(&redis)
            .name("idle")
            .opt("--max-idle-time", arg)
            .spawn();
        assert!(w.wait_exit(WAIT).success(), "{}", w.log());
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(10),
            "--max-idle-time {arg}: exited after {took:?}"
        );
    }
    let mut w = Rqworker::new(&redis).opt("--max-idle-time", "soon").spawn();
    let status = w.wait_exit(WAIT);
    assert_eq!(status.code(), Some(2), "{}", w.log());
    assert!(w.log().contains("soon"), "{}", w.log());
}

#[test]
fn pid_file_is_written_at_start_and_removed_at_exit() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let pid_file = dir.path().join("worker.pid");
    let mut w = Rqworker::new(&redis)
        .name("w")
        .opt("--pid", pid_file.to_str().unwrap())
        .spawn();
    w.wait_for_log("Listening for work");
    let text = std::fs::read_to_string(&pid_file).expect("pid file exists while running");
    assert_eq!(text.trim(), w.pid().to_string());
    w.signal(Signal::SIGTERM);
    assert!(w.wait_exit(WAIT).success());
    assert!(!pid_file.exists(), "pid file must be removed at exit");
}

#[test]
fn rq_log_lines_for_a_burst_run() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    rs_enqueue(&mut con, "normal", "rq.builtin.noop", json!([]));
    rs_enqueue(&mut con, "low", "rq.builtin.echo", json!(["me@nvie.com"]));
    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .name("w")
        .queues(["high", "normal", "low"])
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    let log = w.log();
    let expected = [
        "*** Listening for work on high, normal, low",
        "Got rq.builtin.noop() from normal",
        "Job ended normally without result",
        "Got rq.builtin.echo('me@nvie.com') from low",
        "Job ended normally with result",
        "No more work, burst finished.",
        "Registering death.",
    ];
    let mut at = 0;
    for line in expected {
        match log[at..].find(line) {
            Some(i) => at += i + line.len(),
            None => panic!("missing or out of order: {line:?}\n{log}"),
        }
    }
}

#[test]
fn quiet_flag_suppresses_info_lines_but_not_warnings() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let ok = rs_enqueue(&mut con, "default", "rq.builtin.noop", json!([]));
    let bad = rs_enqueue(&mut con, "default", "no.such.function", json!([]));
    let mut w = Rqworker::new(&redis)
        .arg("-q")
        .burst()
        .builtin_handlers()
        .name("w")
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    let log = w.log();
    for info in [
        "Listening for work",
        "Got ",
        "Job ended normally",
        "No more work",
        "Registering death",
    ] {
        assert!(!log.contains(info), "-q must hide {info:?}:\n{log}");
    }
    assert!(log.contains("WARNING"), "warnings still show:\n{log}");
    assert!(log.contains("no.such.function"), "{log}");
    assert_eq!(job_status(&mut con, &ok).as_deref(), Some("finished"));
    assert_eq!(job_status(&mut con, &bad).as_deref(), Some("failed"));
}

#[test]
fn refuses_to_start_under_the_name_of_a_live_worker() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let mut first = Rqworker::new(&redis).name("dup").spawn();
    first.wait_for_log("Listening for work");
    let birth = hget(&mut con, "rq:worker:dup", "birth");
    let mut second = Rqworker::new(&redis).name("dup").burst().spawn();
    let status = second.wait_exit(WAIT);
    let log = second.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("There exists an active worker named \"dup\" already"),
        "{log}"
    );
    assert!(!log.contains("Listening for work"), "{log}");
    // The live worker's record is untouched.
    assert_eq!(
        hget(&mut con, "rq:worker:dup", "pid"),
        Some(first.pid().to_string())
    );
    assert_eq!(hget(&mut con, "rq:worker:dup", "birth"), birth);
    assert!(hget(&mut con, "rq:worker:dup", "death").is_none());
    assert!(smembers(&mut con, "rq:workers").contains(&"rq:worker:dup".to_string()));
    first.signal(Signal::SIGTERM);
    assert!(first.wait_exit(WAIT).success());
}

#[test]
fn starts_under_a_name_whose_old_record_has_death() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let mut old = Rqworker::new(&redis).name("reuse").burst().spawn();
    assert!(old.wait_exit(WAIT).success(), "{}", old.log());
    assert!(hget(&mut con, "rq:worker:reuse", "death").is_some());
    let id = rs_enqueue(&mut con, "default", "rq.builtin.noop", json!([]));
    let mut new = Rqworker::new(&redis)
        .name("reuse")
        .builtin_handlers()
        .spawn();
    new.wait_for_log("Listening for work");
    wait_status(&mut con, &id, &["finished"]);
    let w = hgetall(&mut con, "rq:worker:reuse");
    assert_eq!(w.get("pid"), Some(&new.pid().to_string()));
    assert!(
        !w.contains_key("death"),
        "the new record starts fresh: {w:?}"
    );
    new.signal(Signal::SIGTERM);
    assert!(new.wait_exit(WAIT).success());
}

#[test]
fn a_rotated_password_is_not_logged_when_the_notification_connection_reconnects() {
    let redis = RedisServer::start();
    let mut admin = redis.con();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("pw-one")
        .exec(&mut admin)
        .unwrap();
    let url = format!("{}?pass=pw-one", redis.url());
    let w = Rqworker::at(&url).builtin_handlers().name("w").spawn();
    w.wait_for_log("Listening for work");
    wait_worker_state(&mut admin, "w", "idle");
    // The password is rotated; connections already open stay authenticated. Then the
    // worker's notification connection drops and must be opened again, with the old password.
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("pw-two")
        .exec(&mut admin)
        .unwrap();
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .exec(&mut admin)
        .unwrap();
    w.wait_for_log("notification connection");
    // The worker still takes jobs through its authenticated main connection.
    let id = rs_enqueue(&mut admin, "default", "rq.builtin.noop", json!([]));
    wait_status(&mut admin, &id, &["finished"]);
    let log = w.log();
    assert!(!log.contains("pw-one"), "the password leaked:\n{log}");
}

#[test]
fn round_robin_rotates_the_queues_after_each_job() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    for q in ["a", "a", "a", "b", "b", "c"] {
        rs_enqueue(&mut con, q, "rq.builtin.noop", json!([]));
    }
    let mut w = Rqworker::new(&redis)
        .builtin_handlers()
        .burst()
        .name("w")
        .opt("--dequeue-strategy", "round_robin")
        .queues(["a", "b", "c"])
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert_eq!(
        got_queues(&w.log()),
        ["a", "b", "c", "a", "b", "a"],
        "{}",
        w.log()
    );
}

#[test]
fn max_jobs_stops_the_worker_after_that_many_jobs() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let ids: Vec<String> = (0..5)
        .map(|_| rs_enqueue(&mut con, "default", "rq.builtin.noop", json!([])))
        .collect();
    let mut w = Rqworker::new(&redis)
        .builtin_handlers()
        .name("w")
        .opt("--max-jobs", "2")
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    let statuses: Vec<Option<String>> = ids.iter().map(|i| job_status(&mut con, i)).collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| s.as_deref() == Some("finished"))
            .count(),
        2
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| s.as_deref() == Some("queued"))
            .count(),
        3
    );
    assert!(hget(&mut con, "rq:worker:w", "death").is_some());
}

#[test]
fn rq_suspend_stops_new_jobs_and_rq_resume_restarts_them() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let url = redis.url();
    let id = rs_enqueue(&mut con, "default", "rq.builtin.noop", json!([]));
    assert!(
        rq_cli(&["suspend", "--url", &url])
            .output()
            .unwrap()
            .status
            .success()
    );
    // A burst worker leaves at once without taking anything.
    let mut b = Rqworker::new(&redis)
        .builtin_handlers()
        .burst()
        .name("b")
        .spawn();
    assert!(b.wait_exit(WAIT).success(), "{}", b.log());
    assert!(b.log().contains("suspended"), "{}", b.log());
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("queued"));
    // A normal worker waits in state `suspended`...
    let w = Rqworker::new(&redis).builtin_handlers().name("w").spawn();
    wait_worker_state(&mut con, "w", "suspended");
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("queued"));
    // ...and works again after `rq resume`.
    assert!(
        rq_cli(&["resume", "--url", &url])
            .output()
            .unwrap()
            .status
            .success()
    );
    wait_status(&mut con, &id, &["finished"]);
    assert!(alive(w.pid()));
}

#[test]
fn a_worker_refused_at_start_leaves_the_running_workers_pid_file_alone() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let pid_file = dir.path().join("w.pid");
    let pid_arg = pid_file.to_str().unwrap();
    let mut first = Rqworker::new(&redis)
        .name("w")
        .opt("--pid", pid_arg)
        .spawn();
    first.wait_for_log("Listening for work");
    // The same service started twice by mistake: same name, same pid file.
    let mut second = Rqworker::new(&redis)
        .name("w")
        .opt("--pid", pid_arg)
        .spawn();
    assert_eq!(second.wait_exit(WAIT).code(), Some(1), "{}", second.log());
    let text = std::fs::read_to_string(&pid_file).unwrap_or_default();
    assert_eq!(
        text.trim(),
        first.pid().to_string(),
        "the running worker's pid file must survive"
    );
    first.signal(Signal::SIGTERM);
    assert!(first.wait_exit(WAIT).success());
    assert!(!pid_file.exists());
}

#[test]
fn an_unwritable_pid_file_stops_the_worker_and_its_registration() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let bad = dir.path().join("no-such-dir").join("w.pid");
    let mut w = Rqworker::new(&redis)
        .name("w")
        .opt("--pid", bad.to_str().unwrap())
        .spawn();
    assert_eq!(w.wait_exit(WAIT).code(), Some(1), "{}", w.log());
    assert!(w.log().contains("cannot write pid file"), "{}", w.log());
    let mut con = redis.con();
    assert!(smembers(&mut con, "rq:workers").is_empty());
    if exists(&mut con, "rq:worker:w") {
        assert!(hget(&mut con, "rq:worker:w", "death").is_some());
    }
}
