//! A job's life in the worker: heartbeats while it runs (and `rq info` meanwhile), the job
//! timeout, horse crashes, and warm and cold shutdown.

use std::time::{Duration, Instant};

use crate::support::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

fn heartbeat_state(con: &mut redis::Connection, id: &str, member: &str) -> (f64, f64, f64, f64) {
    let wip: f64 = zscore(con, "rq:wip:q", member).unwrap().parse().unwrap();
    let worker = rq_time(&hget(con, "rq:worker:w", "last_heartbeat").unwrap());
    let job = rq_time(&hget(con, &format!("rq:job:{id}"), "last_heartbeat").unwrap());
    let (_, eid) = member.split_once(':').unwrap();
    let exec: f64 = hget(con, &format!("rq:execution:{id}:{eid}"), "last_heartbeat")
        .unwrap()
        .parse()
        .unwrap();
    (wip, worker, job, exec)
}

#[test]
fn heartbeats_advance_while_a_job_runs_and_rq_info_does_not_fail_it() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let cfg = write_config(dir.path(), &gate_handler(dir.path()));
    let open = dir.path().join("open");
    let mut con = redis.con();
    // Runs until the test opens the gate: several seconds, however slow the machine is.
    let id = py_enqueue_args(
        &redis,
        "q",
        "tasks.gate",
        &json!([open.display().to_string()]).to_string(),
    );
    let w = Rqworker::new(&redis)
        .config(&cfg)
        .name("w")
        .opt("--job-monitoring-interval", "1")
        .queues(["q"])
        .spawn();
    wait_status(&mut con, &id, &["started"]);
    let member = zrange(&mut con, "rq:wip:q").pop().expect("wip member");
    let first = heartbeat_state(&mut con, &id, &member);
    // Busy TTL: job_monitoring_interval + 60.
    let wttl = ttl(&mut con, "rq:worker:w");
    assert!((50..=61).contains(&wttl), "busy worker TTL {wttl}");

    let mut later = first;
    wait_until("every heartbeat field to advance", WAIT, || {
        later = heartbeat_state(&mut con, &id, &member);
        later.0 > first.0 && later.1 > first.1 && later.2 > first.2 && later.3 > first.3
    });
    assert!(
        later.0 >= unix_now() + 55.0,
        "wip score stays ahead of now: {}",
        later.0
    );

    // `rq info` runs the abandoned-job cleanup on every queue; a heart-beaten job survives it.
    let info = rq_info(&redis, &[]);
    assert!(info.contains("w ("), "{info}");
    assert!(info.contains("busy"), "{info}");
    assert_eq!(
        job_status(&mut con, &id).as_deref(),
        Some("started"),
        "{info}"
    );
    assert_eq!(zrange(&mut con, "rq:wip:q"), vec![member.clone()]);

    // More heartbeats after rq info's cleanup, then the job ends normally.
    let mut again = later;
    wait_until("another heartbeat", WAIT, || {
        again = heartbeat_state(&mut con, &id, &member);
        again.0 > later.0
    });
    std::fs::write(&open, "").unwrap();
    wait_status(&mut con, &id, &["finished", "failed"]);
    assert_eq!(
        job_status(&mut con, &id).as_deref(),
        Some("finished"),
        "{}",
        w.log()
    );
    assert!(zrange(&mut con, "rq:failed:q").is_empty());
}

#[test]
fn a_job_over_its_timeout_is_killed_and_failed_with_rq_text() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let id = py_enqueue(
        &redis,
        "q",
        "rq.builtin.sleep",
        "[30]",
        "{}",
        r#"{"job_timeout": 1}"#,
    );
    let next = py_enqueue_args(&redis, "q", "rq.builtin.noop", "[]");
    let w = Rqworker::new(&redis)
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    wait_status(&mut con, &id, &["started"]);
    let started = Instant::now();
    let horse = wait_horse(&w);
    wait_status(&mut con, &id, &["failed", "finished"]);
    let took = started.elapsed();
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("failed"));
    assert!(
        took < Duration::from_secs(10),
        "took {took:?} for a 1 s timeout"
    );
    let exc = latest_exc(&mut con, &id);
    assert!(
        exc.contains("JobTimeoutException: Task exceeded maximum timeout value (1 seconds)"),
        "{exc}"
    );
    assert!(!alive(horse), "the horse {horse} must be gone");
    // The worker goes on.
    wait_status(&mut con, &next, &["finished"]);
    assert!(alive(w.pid()));
}

#[test]
fn a_timeout_kills_the_handlers_whole_process_group() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let pid_file = dir.path().join("grandchild.pid");
    let script = write_script(
        dir.path(),
        "spawner.sh",
        &format!(
            "#!/bin/sh\nsleep 300 &\necho $! > {}\nsleep 300\n",
            pid_file.display()
        ),
    );
    let cfg = write_config(
        dir.path(),
        &format!(
            "[handlers.\"tasks.spawner\"]\ncommand = [{}]\n",
            toml_str(script.display().to_string())
        ),
    );
    let mut con = redis.con();
    let id = py_enqueue(
        &redis,
        "q",
        "tasks.spawner",
        "[]",
        "{}",
        r#"{"job_timeout": 1}"#,
    );
    let w = Rqworker::new(&redis)
        .config(&cfg)
        .name("w")
        .queues(["q"])
        .spawn();
    let horse = wait_horse(&w);
    wait_until("grandchild pid", WAIT, || {
        std::fs::read_to_string(&pid_file).is_ok_and(|t| t.ends_with('\n'))
    });
    let grandchild = Pid::from_raw(
        std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap(),
    );
    assert!(alive(grandchild));
    wait_status(&mut con, &id, &["failed"]);
    assert!(latest_exc(&mut con, &id).contains("JobTimeoutException"));
    assert!(!alive(horse), "horse {horse} survived");
    wait_until("the grandchild to die", Duration::from_secs(5), || {
        !alive(grandchild)
    });
}

#[test]
fn timeout_minus_one_means_no_limit_even_over_a_handler_default() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let script = write_script(dir.path(), "slow.sh", "#!/bin/sh\nsleep 2\necho done\n");
    // The handler's own timeout (1 s) applies only to jobs that carry none; this job says -1.
    let cfg = write_config(
        dir.path(),
        &format!(
            "[handlers.\"tasks.slow\"]\ncommand = [{}]\ntimeout = \"1s\"\n",
            toml_str(script.display().to_string())
        ),
    );
    let mut con = redis.con();
    let unlimited = py_enqueue(
        &redis,
        "q",
        "tasks.slow",
        "[]",
        "{}",
        r#"{"job_timeout": -1}"#,
    );
    let sleeper = py_enqueue(
        &redis,
        "q",
        "rq.builtin.sleep",
        "[1.5]",
        "{}",
        r#"{"job_timeout": -1}"#,
    );
    let mut w = Rqworker::new(&redis)
        .config(&cfg)
        .builtin_handlers()
        .burst()
        .name("w")
        .queues(["q"])
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert_eq!(
        job_status(&mut con, &unlimited).as_deref(),
        Some("finished"),
        "{}",
        w.log()
    );
    assert_eq!(latest_return(&mut con, &unlimited), Some(json!("done")));
    assert_eq!(job_status(&mut con, &sleeper).as_deref(), Some("finished"));
}

#[test]
fn a_horse_that_kills_itself_fails_its_job_and_the_worker_goes_on() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let script = write_script(dir.path(), "crash.sh", "#!/bin/sh\nkill -9 $$\n");
    let cfg = write_config(
        dir.path(),
        &format!(
            "[handlers.\"tasks.crash\"]\ncommand = [{}]\n",
            toml_str(script.display().to_string())
        ),
    );
    let mut con = redis.con();
    let crash = rs_enqueue(&mut con, "q", "tasks.crash", json!([]));
    let next = rs_enqueue(&mut con, "q", "rq.builtin.echo", json!(["after"]));
    let w = Rqworker::new(&redis)
        .config(&cfg)
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    wait_status(&mut con, &crash, &["failed", "finished"]);
    let exc = latest_exc(&mut con, &crash);
    assert!(
        exc.starts_with("Work-horse terminated unexpectedly; waitpid returned 9 (signal 9)"),
        "{exc}"
    );
    wait_status(&mut con, &next, &["finished"]);
    assert_eq!(latest_return(&mut con, &next), Some(json!(["after"])));
    assert!(alive(w.pid()), "{}", w.log());
    wait_worker_state(&mut con, "w", "idle");
    let wh = hgetall(&mut con, "rq:worker:w");
    assert_eq!(wh["failed_job_count"], "1");
    assert_eq!(wh["successful_job_count"], "1");
    assert!(zrange(&mut con, "rq:wip:q").is_empty());
}

#[test]
fn a_native_horse_killed_from_outside_fails_its_job() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let id = rs_enqueue(&mut con, "q", "rq.builtin.sleep", json!([30]));
    let next = rs_enqueue(&mut con, "q", "rq.builtin.noop", json!([]));
    let w = Rqworker::new(&redis)
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    wait_status(&mut con, &id, &["started"]);
    let horse = wait_horse(&w);
    kill(horse, Signal::SIGKILL).unwrap();
    wait_status(&mut con, &id, &["failed"]);
    let exc = latest_exc(&mut con, &id);
    assert!(
        exc.starts_with("Work-horse terminated unexpectedly; waitpid returned 9 (signal 9); "),
        "{exc}"
    );
    wait_status(&mut con, &next, &["finished"]);
    assert!(alive(w.pid()));
}

#[test]
fn warm_shutdown_finishes_the_running_job_then_registers_death() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let cfg = write_config(dir.path(), &gate_handler(dir.path()));
    let open = dir.path().join("open");
    let mut con = redis.con();
    let running = rs_enqueue(
        &mut con,
        "q",
        "tasks.gate",
        json!([open.display().to_string()]),
    );
    let waiting = rs_enqueue(&mut con, "q", "rq.builtin.noop", json!([]));
    let mut w = Rqworker::new(&redis)
        .config(&cfg)
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    wait_status(&mut con, &running, &["started"]);
    let horse = wait_horse(&w);
    w.signal(Signal::SIGTERM);
    wait_until("shutdown_requested_date", WAIT, || {
        hget(&mut con, "rq:worker:w", "shutdown_requested_date").is_some()
    });
    assert_eq!(
        job_status(&mut con, &running).as_deref(),
        Some("started"),
        "the job must still run after the first signal"
    );
    assert!(alive(horse), "a warm shutdown must not touch the horse");
    assert!(alive(w.pid()));
    // Time has to pass to show that the worker waits for its job instead of leaving.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        alive(w.pid()),
        "the worker must wait for its job:\n{}",
        w.log()
    );
    std::fs::write(&open, "").unwrap();
    let status = w.wait_exit(WAIT);
    assert!(status.success(), "{}", w.log());
    assert_eq!(job_status(&mut con, &running).as_deref(), Some("finished"));
    assert_eq!(latest_return(&mut con, &running), Some(json!("released")));
    assert_eq!(
        job_status(&mut con, &waiting).as_deref(),
        Some("queued"),
        "no new job after a warm shutdown request:\n{}",
        w.log()
    );
    let wh = hgetall(&mut con, "rq:worker:w");
    assert_rq_timestamp("shutdown_requested_date", &wh["shutdown_requested_date"]);
    assert_rq_timestamp("death", &wh["death"]);
    assert!(smembers(&mut con, "rq:workers").is_empty());
    assert!(
        w.log().trim_end().ends_with("Registering death."),
        "{}",
        w.log()
    );
}

#[test]
fn cold_shutdown_kills_the_horse_fails_the_job_and_registers_death() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let id = rs_enqueue(&mut con, "q", "rq.builtin.sleep", json!([30]));
    let mut w = Rqworker::new(&redis)
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    wait_status(&mut con, &id, &["started"]);
    let horse = wait_horse(&w);
    w.signal(Signal::SIGTERM);
    wait_until("shutdown_requested_date", WAIT, || {
        hget(&mut con, "rq:worker:w", "shutdown_requested_date").is_some()
    });
    let second = Instant::now();
    w.signal(Signal::SIGTERM);
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert!(
        second.elapsed() < Duration::from_secs(10),
        "cold shutdown took {:?}",
        second.elapsed()
    );
    assert!(!alive(horse), "horse {horse} survived a cold shutdown");
    assert_eq!(
        job_status(&mut con, &id).as_deref(),
        Some("failed"),
        "{}",
        w.log()
    );
    let exc = latest_exc(&mut con, &id);
    assert!(exc.contains("cold shutdown"), "{exc}");
    assert!(zrange(&mut con, "rq:wip:q").is_empty());
    assert!(zscore(&mut con, "rq:failed:q", &id).is_some());
    assert!(hget(&mut con, "rq:worker:w", "death").is_some());
    assert!(smembers(&mut con, "rq:workers").is_empty());
    assert!(smembers(&mut con, "rq:workers:q").is_empty());
}

#[test]
fn sigint_stops_an_idle_worker_like_sigterm() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let mut w = Rqworker::new(&redis).name("w").queues(["q"]).spawn();
    w.wait_for_log("Listening for work");
    w.signal(Signal::SIGINT);
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert!(hget(&mut con, "rq:worker:w", "death").is_some());
    assert!(smembers(&mut con, "rq:workers").is_empty());
}

#[test]
fn after_redis_loses_its_data_the_worker_reconnects_and_registers_again() {
    let mut redis = RedisServer::start();
    // worker_ttl 16 s: an idle heartbeat every second (worker_ttl - 15).
    let w = Rqworker::new(&redis)
        .builtin_handlers()
        .name("w")
        .opt("--worker-ttl", "16")
        .queues(["q"])
        .spawn();
    w.wait_for_log("Listening for work");
    redis.restart(); // no persistence: every key is gone
    let mut con = redis.con();
    let id = rs_enqueue(&mut con, "q", "rq.builtin.noop", json!([]));
    wait_status(&mut con, &id, &["finished"]);
    wait_until(
        "the worker's registration to come back",
        Duration::from_secs(10),
        || {
            let wh = hgetall(&mut con, "rq:worker:w");
            wh.contains_key("birth")
                && wh.get("queues").map(String::as_str) == Some("q")
                && smembers(&mut con, "rq:workers").contains(&"rq:worker:w".to_string())
                && smembers(&mut con, "rq:workers:q").contains(&"rq:worker:w".to_string())
        },
    );
    let info = rq_info(&redis, &[]);
    assert!(info.contains("w ("), "{info}");
    assert!(alive(w.pid()));
}

#[test]
fn with_scheduler_moves_due_scheduled_jobs_to_their_queue() {
    // `--with-scheduler` is accepted and documented ("move due scheduled jobs to their
    // queues"); a job from enqueue_in must then run once it is due.
    let redis = RedisServer::start();
    let mut con = redis.con();
    let out = python(
        &redis,
        "rqtool.py",
        &["enqueue-in", "q", "1", "rq.builtin.noop"],
    );
    let id: String = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("scheduled"));
    let w = Rqworker::new(&redis)
        .builtin_handlers()
        .arg("--with-scheduler")
        .name("w")
        .queues(["q"])
        .spawn();
    w.wait_for_log("Listening for work");
    wait_until("the scheduled job to run", Duration::from_secs(15), || {
        job_status(&mut con, &id).as_deref() == Some("finished")
    });
}

#[test]
fn registry_maintenance_fails_abandoned_jobs_in_the_started_registry() {
    // RQ workers clean their queues' registries every --maintenance-interval: a job left in
    // rq:wip:Q past its score (its worker died) is failed as abandoned.
    let redis = RedisServer::start();
    let mut con = redis.con();
    let id = rs_enqueue(&mut con, "q", "rq.builtin.noop", json!([]));
    let member = format!("{id}:0123456789abcdef0123456789abcdef");
    redis::pipe()
        .cmd("LREM")
        .arg("rq:queue:q")
        .arg(0)
        .arg(&id)
        .hset(format!("rq:job:{id}"), "status", "started")
        .zadd("rq:wip:q", &member, (unix_now() as i64) - 10)
        .exec(&mut con)
        .unwrap();
    let w = Rqworker::new(&redis)
        .builtin_handlers()
        .opt("--maintenance-interval", "1")
        .name("w")
        .queues(["q"])
        .spawn();
    w.wait_for_log("Listening for work");
    wait_until(
        "the abandoned job to be failed",
        Duration::from_secs(15),
        || job_status(&mut con, &id).as_deref() == Some("failed"),
    );
    assert!(zscore(&mut con, "rq:wip:q", &member).is_none());
    assert!(zscore(&mut con, "rq:failed:q", &id).is_some());
}
