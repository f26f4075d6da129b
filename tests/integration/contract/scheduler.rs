//! `--with-scheduler` (§9) against RQ 2.12: the per-queue lock `rq:scheduler-lock:<queue>` holding
//! the scheduler name, the `rq:scheduler:<name>` heartbeat hash Python can fetch, Python's
//! `enqueue_in`/`enqueue_at` running with no Python process, several of our schedulers moving
//! each job exactly once, hand-over when the owner stops, and Python's `RQScheduler` and ours
//! sharing a queue without moving a job twice.

use std::time::Duration;

use crate::contract::*;
use nix::sys::signal::Signal;

fn lock(con: &mut redis::Connection, q: &str) -> Option<String> {
    get(con, &format!("rq:scheduler-lock:{q}"))
}

fn sched_worker(redis: &RedisServer, name: &str, queues: &[&str]) -> Proc {
    Rqworker::new(redis)
        .arg("--with-scheduler")
        .builtin_handlers()
        .name(name)
        .queues(queues)
        .spawn()
}

/// How many jobs a worker's scheduler says it moved.
fn moved_by(log: &str) -> usize {
    log.lines()
        .filter_map(|l| {
            let rest = l.split(": enqueued ").nth(1)?;
            rest.split(' ').next()?.parse::<usize>().ok()
        })
        .sum()
}

/// Waits until every job finished, then checks each ran exactly once: one result entry, and
/// the workers' success counts add up.
fn assert_each_ran_once(redis: &RedisServer, ids: &[String], workers: &[&str], limit: Duration) {
    let mut con = redis.con();
    wait_until("all scheduled jobs finished", limit, || {
        ids.iter()
            .all(|id| job_status(&mut con, id).as_deref() == Some("finished"))
    });
    // A job moved twice would sit in the queue again, be running a second time or have
    // run again by now.
    std::thread::sleep(Duration::from_millis(500));
    for id in ids {
        assert_eq!(
            xlen(&mut con, &format!("rq:results:{id}")),
            1,
            "job {id} ran more than once"
        );
    }
    assert_eq!(llen(&mut con, "rq:queue:q"), 0);
    assert!(zrange(&mut con, "rq:wip:q").is_empty());
    let total: i64 = workers
        .iter()
        .map(|w| {
            hget(&mut con, &format!("rq:worker:{w}"), "successful_job_count")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(total as usize, ids.len(), "executions across workers");
}

#[test]
fn the_lock_holds_the_scheduler_name_and_python_can_read_our_scheduler() {
    let redis = RedisServer::start();
    let mut w = sched_worker(&redis, "w", &["q1", "q2"]);
    let mut con = redis.con();
    wait_until("scheduler locks", WAIT, || {
        lock(&mut con, "q1").is_some() && lock(&mut con, "q2").is_some()
    });
    let name = lock(&mut con, "q1").unwrap();
    assert_eq!(lock(&mut con, "q2").as_deref(), Some(name.as_str()));
    assert_eq!(name.len(), 32, "uuid4 hex: {name}");
    assert!(name.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
    let t = ttl(&mut con, "rq:scheduler-lock:q1");
    assert!((55..=61).contains(&t), "lock ttl {t}");
    let hash_ttl = ttl(&mut con, &format!("rq:scheduler:{name}"));
    assert!((55..=61).contains(&hash_ttl), "hash ttl {hash_ttl}");

    // RQ's own reader parses our hash.
    let info = rc(&redis, &["scheduler_info", &name]);
    assert_eq!(info["name"], name.as_str(), "{info}");
    assert_eq!(info["pid"], w.child.id(), "{info}");
    assert_eq!(info["queues"], serde_json::json!(["q1", "q2"]), "{info}");
    assert!(
        info["last_heartbeat"].as_f64().unwrap() > unix_now() - 10.0,
        "{info}"
    );

    // The lock is refreshed every second: six seconds on, the TTL is still near 61 (it would be
    // 55 or less without refreshes).
    std::thread::sleep(Duration::from_secs(6));
    let t = ttl(&mut con, "rq:scheduler-lock:q1");
    assert!(t >= 57, "lock not refreshed: ttl {t}");
    assert_eq!(lock(&mut con, "q1").as_deref(), Some(name.as_str()));

    // Python's scheduler sees the queues as taken.
    assert_eq!(
        rc(&redis, &["try_locks", "q1", "q2"]),
        serde_json::json!([])
    );

    // Stopping releases the locks and the hash, so another scheduler takes over at once.
    w.signal(Signal::SIGTERM);
    assert_exit_ok(&mut w, WAIT);
    assert_eq!(lock(&mut con, "q1"), None);
    assert!(!exists(&mut con, &format!("rq:scheduler:{name}")));
    assert_eq!(
        rc(&redis, &["try_locks", "q1", "q2"]),
        serde_json::json!(["q1", "q2"])
    );
}

#[test]
fn enqueue_in_and_enqueue_at_run_on_time_with_only_our_scheduler() {
    let redis = RedisServer::start();
    let mut w = sched_worker(&redis, "w", &["q"]);
    let mut con = redis.con();
    let a = rc(
        &redis,
        &["enqueue_in", "q", "4", "rq.builtin.echo", r#"["in"]"#],
    )
    .as_str()
    .unwrap()
    .to_string();
    let score_a = zscore_f64(&mut con, "rq:scheduled:q", &a).expect("a scheduled");
    let at = (unix_now() + 5.0).floor();
    let b = rc(
        &redis,
        &[
            "enqueue_at",
            "q",
            &at.to_string(),
            "rq.builtin.echo",
            r#"["at"]"#,
        ],
    )
    .as_str()
    .unwrap()
    .to_string();
    let enqueued_by = unix_now();
    assert_eq!(zscore_f64(&mut con, "rq:scheduled:q", &b), Some(at));
    for id in [&a, &b] {
        wait_status(&mut con, id, &["finished"]);
    }
    let docs = jobs(&redis, &[a.clone(), b.clone()]);
    for (doc, score) in docs.iter().zip([score_a, at]) {
        let enqueued = doc["enqueued_at"].as_f64().unwrap();
        assert!(
            enqueued >= score - 0.01,
            "moved early: enqueued {enqueued}, due {score}"
        );
        // Every second, as RQ's scheduler: at most a tick (plus a loaded machine) late.
        assert!(
            enqueued <= score.max(enqueued_by) + 3.0,
            "moved late: enqueued {enqueued}, due {score}"
        );
    }
    assert_eq!(docs[0]["return_value"], serde_json::json!(["in"]));
    assert_eq!(docs[1]["return_value"], serde_json::json!(["at"]));
    assert!(zrange(&mut con, "rq:scheduled:q").is_empty());
    w.signal(Signal::SIGTERM);
    assert_exit_ok(&mut w, WAIT);
}

#[test]
fn three_schedulers_move_each_of_100_due_jobs_exactly_once() {
    let redis = RedisServer::start();
    let names = ["w1", "w2", "w3"];
    let mut ws: Vec<Proc> = names
        .iter()
        .map(|n| sched_worker(&redis, n, &["q"]))
        .collect();
    let mut con = redis.con();
    wait_until("a scheduler lock", WAIT, || lock(&mut con, "q").is_some());
    // Due over four seconds, so the lock is contended at several ticks.
    let ids = ids_of(rc(
        &redis,
        &["enqueue_in_many", "q", "100", "1", "rq.builtin.echo", "4"],
    ));
    assert_eq!(ids.len(), 100);
    assert_each_ran_once(&redis, &ids, &names, SLOW);
    // Only the lock holder is a scheduler: one `rq:scheduler:*` hash, named by the lock.
    let hashes: Vec<String> = redis::cmd("KEYS")
        .arg("rq:scheduler:*")
        .query(&mut con)
        .unwrap();
    let holder = lock(&mut con, "q").expect("lock");
    assert_eq!(hashes, vec![format!("rq:scheduler:{holder}")]);
    let moved: Vec<usize> = ws.iter().map(|w| moved_by(&w.log())).collect();
    assert_eq!(moved.iter().sum::<usize>(), 100, "{moved:?}");
    assert_eq!(
        moved.iter().filter(|m| **m > 0).count(),
        1,
        "one lock holder moves them all: {moved:?}"
    );
    for w in &mut ws {
        w.signal(Signal::SIGTERM);
        assert_exit_ok(w, WAIT);
    }
}

#[test]
fn another_worker_takes_the_lock_when_the_holder_stops() {
    let redis = RedisServer::start();
    let mut a = sched_worker(&redis, "a", &["q"]);
    let mut con = redis.con();
    wait_until("a holds the lock", WAIT, || lock(&mut con, "q").is_some());
    let first = lock(&mut con, "q").unwrap();
    let mut b = sched_worker(&redis, "b", &["q"]);
    b.wait_for_log("Listening for work");
    a.signal(Signal::SIGTERM);
    assert_exit_ok(&mut a, WAIT);
    wait_until("b takes the lock", WAIT, || {
        lock(&mut con, "q").is_some_and(|l| l != first)
    });
    let id = rc(&redis, &["enqueue_in", "q", "1", "rq.builtin.echo", "[1]"])
        .as_str()
        .unwrap()
        .to_string();
    wait_status(&mut con, &id, &["finished"]);
    assert_eq!(moved_by(&b.log()), 1, "{}", b.log());
    b.signal(Signal::SIGTERM);
    assert_exit_ok(&mut b, WAIT);
}

#[test]
fn python_and_our_schedulers_on_one_queue_never_move_a_job_twice() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    // Python's scheduler first: it holds the lock; ours must leave the queue to it.
    let mut py = spawn_rc(&redis, &["scheduler", "q"]);
    wait_until("Python's scheduler lock", SLOW, || {
        lock(&mut con, "q").is_some()
    });
    let py_name = lock(&mut con, "q").unwrap();
    assert_eq!(
        hget(&mut con, &format!("rq:scheduler:{py_name}"), "pid"),
        Some(py.child.id().to_string())
    );
    let names = ["w1", "w2"];
    let mut ws: Vec<Proc> = names
        .iter()
        .map(|n| sched_worker(&redis, n, &["q"]))
        .collect();
    for w in &ws {
        w.wait_for_log("Listening for work");
    }
    let ids = ids_of(rc(
        &redis,
        &["enqueue_in_many", "q", "100", "1", "rq.builtin.echo"],
    ));
    assert_each_ran_once(&redis, &ids, &names, SLOW);
    for w in &ws {
        assert_eq!(moved_by(&w.log()), 0, "Python holds the lock:\n{}", w.log());
    }
    assert_eq!(lock(&mut con, "q").as_deref(), Some(py_name.as_str()));

    // Python's scheduler stops and releases its lock; one of ours takes over.
    py.signal(Signal::SIGTERM);
    let st = py.wait_exit(SLOW);
    assert!(st.success(), "{st:?}\n{}", py.log());
    wait_until("our scheduler takes the lock", WAIT, || {
        lock(&mut con, "q").is_some_and(|l| l != py_name)
    });
    let ours = lock(&mut con, "q").unwrap();
    let pid = hget(&mut con, &format!("rq:scheduler:{ours}"), "pid").expect("our hash");
    assert!(
        ws.iter().any(|w| w.child.id().to_string() == pid),
        "lock holder pid {pid}"
    );
    let more = ids_of(rc(
        &redis,
        &["enqueue_in_many", "q", "100", "1", "rq.builtin.echo"],
    ));
    let mut all = ids.clone();
    all.extend(more.iter().cloned());
    assert_each_ran_once(&redis, &all, &names, SLOW);
    let moved: usize = ws.iter().map(|w| moved_by(&w.log())).sum();
    assert_eq!(moved, 100);

    // And a Python scheduler started now finds the queue taken.
    let mut py2 = spawn_rc(&redis, &["scheduler", "q"]);
    // It prints its name once Python and rq are loaded, just before it tries the lock; the
    // window in which it could (wrongly) take the lock starts there.
    wait_until("the second Python scheduler running", SLOW, || {
        !py2.log().trim().is_empty()
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lock(&mut con, "q").as_deref(), Some(ours.as_str()));
    let late = ids_of(rc(
        &redis,
        &["enqueue_in_many", "q", "20", "1", "rq.builtin.echo"],
    ));
    all.extend(late.iter().cloned());
    assert_each_ran_once(&redis, &all, &names, SLOW);
    let moved: usize = ws.iter().map(|w| moved_by(&w.log())).sum();
    assert_eq!(moved, 120, "ours still holds the lock");
    py2.signal(Signal::SIGTERM);
    let _ = py2.wait_exit(SLOW);
    for w in &mut ws {
        w.signal(Signal::SIGTERM);
        assert_exit_ok(w, WAIT);
    }
}

#[test]
fn scheduled_jobs_honour_at_front_and_keep_moving_while_workers_are_suspended() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    // Suspended, the worker takes no job, so the queue order stays visible; its scheduler
    // keeps moving due jobs, as Python's scheduler process does.
    rq_cli_ok(&redis, &["suspend"]);
    let mut w = sched_worker(&redis, "w", &["q"]);
    let x = enqueue(&redis, "q", "rq.builtin.noop", "[]", "{}");
    let back = rc(&redis, &["enqueue_in", "q", "1", "rq.builtin.noop"])
        .as_str()
        .unwrap()
        .to_string();
    let front = rc(
        &redis,
        &[
            "enqueue_in",
            "q",
            "1",
            "rq.builtin.noop",
            "[]",
            r#"{"at_front": true}"#,
        ],
    )
    .as_str()
    .unwrap()
    .to_string();
    wait_until("both scheduled jobs moved", WAIT, || {
        llen(&mut con, "rq:queue:q") == 3
    });
    assert_eq!(
        lrange(&mut con, "rq:queue:q"),
        vec![front.clone(), x.clone(), back.clone()]
    );
    for id in [&front, &back] {
        assert_eq!(job_status(&mut con, id).as_deref(), Some("queued"));
    }
    assert_eq!(
        hget(&mut con, "rq:worker:w", "state").as_deref(),
        Some("suspended")
    );
    rq_cli_ok(&redis, &["resume"]);
    for id in [&front, &x, &back] {
        wait_status(&mut con, id, &["finished"]);
    }
    w.signal(Signal::SIGTERM);
    assert_exit_ok(&mut w, WAIT);
}

#[test]
fn a_scheduled_retry_with_enqueue_at_front_goes_to_the_front() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let id = enqueue(
        &redis,
        "q",
        "rq.builtin.fail",
        "[]",
        r#"{"retry": {"max": 1, "interval": 1, "enqueue_at_front": true}}"#,
    );
    // A burst worker without a scheduler makes the first try and schedules the retry.
    let mut b = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .queues(["q"])
        .spawn();
    assert_exit_ok(&mut b, WAIT);
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("scheduled"));
    let x = enqueue(&redis, "q", "rq.builtin.noop", "[]", "{}");
    // Suspended, the scheduling worker moves the retry but runs nothing, so the order shows.
    rq_cli_ok(&redis, &["suspend"]);
    let mut w = sched_worker(&redis, "w", &["q"]);
    wait_status(&mut con, &id, &["queued"]);
    assert_eq!(lrange(&mut con, "rq:queue:q"), vec![id.clone(), x.clone()]);
    rq_cli_ok(&redis, &["resume"]);
    wait_status(&mut con, &id, &["failed"]);
    wait_status(&mut con, &x, &["finished"]);
    w.signal(Signal::SIGTERM);
    assert_exit_ok(&mut w, WAIT);
}
