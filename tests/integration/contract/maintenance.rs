//! Registry maintenance (§6, §7.14, §7.15) on state seeded with raw Redis commands: expired
//! finished/failed entries, abandoned `wip` executions failed with RQ's `AbandonedJobError` text
//! (or retried), stale worker set members, ids stuck in `rq:queue:Q:intermediate` (requeued at
//! the front after 60 s, from a pre-seeded `first_seen`), RQ's per-queue lock
//! `rq:clean_registries:<queue>`, and the `--maintenance-interval` cadence.

use std::time::Duration;

use crate::contract::*;
use nix::sys::signal::Signal;

fn zadd(con: &mut redis::Connection, key: &str, score: f64, member: &str) {
    let _: i64 = redis::cmd("ZADD")
        .arg(key)
        .arg(score)
        .arg(member)
        .query(con)
        .unwrap();
}

fn seed_expiring_entries(con: &mut redis::Connection, q: &str, now: f64) {
    for reg in ["finished", "failed"] {
        zadd(con, &format!("rq:{reg}:{q}"), now - 10.0, "old");
        zadd(con, &format!("rq:{reg}:{q}"), now + 1000.0, "new");
    }
}

fn entries(con: &mut redis::Connection, q: &str) -> (Vec<String>, Vec<String>) {
    (
        zrange(con, &format!("rq:finished:{q}")),
        zrange(con, &format!("rq:failed:{q}")),
    )
}

fn cleaned(con: &mut redis::Connection, q: &str) -> bool {
    entries(con, q) == (vec!["new".to_string()], vec!["new".to_string()])
}

/// Takes a queued job out of its queue and records it as started by a worker that then
/// vanished: a `J:E` member in `rq:wip:<q>` whose score (expiry) is `expiry`.
fn seed_started(con: &mut redis::Connection, q: &str, id: &str, expiry: f64) -> String {
    let eid = "0123456789abcdef0123456789abcdef";
    let _: i64 = redis::cmd("LREM")
        .arg(format!("rq:queue:{q}"))
        .arg(0)
        .arg(id)
        .query(con)
        .unwrap();
    let _: i64 = redis::cmd("HSET")
        .arg(format!("rq:job:{id}"))
        .arg("status")
        .arg("started")
        .arg("worker_name")
        .arg("gone-worker")
        .query(con)
        .unwrap();
    let member = format!("{id}:{eid}");
    zadd(con, &format!("rq:wip:{q}"), expiry, &member);
    member
}

#[test]
fn expired_entries_are_cleaned_at_start_and_then_every_interval() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let now = redis_now(&mut con);
    seed_expiring_entries(&mut con, "q", now);
    let mut w = Rqworker::new(&redis)
        .opt("--maintenance-interval", "1")
        .name("w")
        .queues(["q"])
        .spawn();
    wait_until("first maintenance", WAIT, || cleaned(&mut con, "q"));
    // Again after the worker is up: the next pass comes within the interval.
    let now = redis_now(&mut con);
    seed_expiring_entries(&mut con, "q", now);
    wait_until("second maintenance", WAIT, || cleaned(&mut con, "q"));
    // After a pass the lock is kept for the interval (one pass per interval for the whole
    // fleet), not RQ's 899 s. "Cleaned" can be seen while the pass still holds its in-pass
    // TTL (the interval + 10 s), so wait for the hold rather than assert at once.
    wait_until("the lock is held for the interval", WAIT, || {
        let pttl: i64 = redis::cmd("PTTL")
            .arg("rq:clean_registries:q")
            .query(&mut con)
            .unwrap();
        (1..=1000).contains(&pttl)
    });
    w.signal(Signal::SIGTERM);
    assert_exit_ok(&mut w, WAIT);
}

#[test]
fn a_fleet_runs_one_pass_per_interval_whatever_its_size() {
    let redis = RedisServer::start();
    let mut fleet: Vec<Proc> = (0..4)
        .map(|i| {
            Rqworker::new(&redis)
                .arg("-v")
                .opt("--maintenance-interval", "1")
                .name(format!("w{i}"))
                .queues(["q"])
                .spawn()
        })
        .collect();
    for w in &fleet {
        w.wait_for_log("started with PID");
    }
    let passes = |fleet: &[Proc]| -> usize {
        fleet
            .iter()
            .map(|w| w.log().matches("cleaned registries of 1 queue(s)").count())
            .sum()
    };
    let (before, t0) = (passes(&fleet), std::time::Instant::now());
    // Time must pass: the count over a few intervals is the point.
    std::thread::sleep(Duration::from_secs(5));
    let (ran, secs) = (passes(&fleet) - before, t0.elapsed().as_secs_f64());
    // One pass per interval for the fleet (a pass, then the interval's hold), not one per
    // worker per interval as with RQ's released lock (about 4 x 5 here).
    assert!(
        ran >= 2 && ran as f64 <= secs + 2.0,
        "{ran} passes in {secs:.1} s by 4 workers with a 1 s interval"
    );
    for w in &mut fleet {
        w.signal(Signal::SIGTERM);
        assert_exit_ok(w, WAIT);
    }
}

#[test]
fn the_default_interval_does_not_clean_again_within_seconds() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let mut w = Rqworker::new(&redis)
        .arg("-v")
        .name("w")
        .queues(["q"])
        .spawn();
    w.wait_for_log("cleaned registries of 1 queue(s)");
    // A long interval releases the lock after the pass, as RQ does: a hold of ten minutes
    // would shut out a worker of the same queue configured with a short interval.
    wait_until("the lock is released", WAIT, || {
        !exists(&mut con, "rq:clean_registries:q")
    });
    let now = redis_now(&mut con);
    seed_expiring_entries(&mut con, "q", now);
    // Time must pass: with RQ's 600 s default nothing is cleaned a few seconds later.
    std::thread::sleep(Duration::from_secs(3));
    let (finished, failed) = entries(&mut con, "q");
    assert_eq!(finished.len(), 2, "{finished:?}");
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(
        w.log().matches("cleaned registries").count(),
        1,
        "{}",
        w.log()
    );
    w.signal(Signal::SIGTERM);
    assert_exit_ok(&mut w, WAIT);
}

#[test]
fn a_queue_locked_by_another_cleaner_is_skipped_until_the_lock_is_gone() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let _: () = redis::cmd("SET")
        .arg("rq:clean_registries:q")
        .arg(1)
        .arg("EX")
        .arg(899)
        .query(&mut con)
        .unwrap();
    let now = redis_now(&mut con);
    seed_expiring_entries(&mut con, "q", now);
    seed_expiring_entries(&mut con, "other", now);
    let mut w = Rqworker::new(&redis)
        .opt("--maintenance-interval", "1")
        .name("w")
        .queues(["q", "other"])
        .spawn();
    wait_until("the unlocked queue is cleaned", WAIT, || {
        cleaned(&mut con, "other")
    });
    // Time must pass: a few more passes, and the locked queue is still untouched.
    std::thread::sleep(Duration::from_secs(3));
    let (finished, _) = entries(&mut con, "q");
    assert_eq!(finished.len(), 2, "locked queue was cleaned: {finished:?}");
    assert_eq!(get(&mut con, "rq:clean_registries:q").as_deref(), Some("1"));
    let _: i64 = redis::cmd("DEL")
        .arg("rq:clean_registries:q")
        .query(&mut con)
        .unwrap();
    wait_until("the queue is cleaned once unlocked", WAIT, || {
        cleaned(&mut con, "q")
    });
    w.signal(Signal::SIGTERM);
    assert_exit_ok(&mut w, WAIT);
}

#[test]
fn abandoned_executions_fail_with_rqs_text_or_are_retried() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    // Enqueued on a queue no worker here takes jobs from... except through a retry, which
    // the worker then runs: it serves `q`.
    let plain = enqueue(&redis, "q", "rq.builtin.echo", r#"["plain"]"#, "{}");
    let retried = enqueue(
        &redis,
        "q",
        "rq.builtin.echo",
        r#"["retried"]"#,
        r#"{"retry": {"max": 1}}"#,
    );
    let live = enqueue(&redis, "q", "rq.builtin.echo", r#"["live"]"#, "{}");
    let child = enqueue(
        &redis,
        "q",
        "rq.builtin.echo",
        r#"["child"]"#,
        &serde_json::json!({"depends_on": [plain], "allow_failure": true}).to_string(),
    );
    let now = redis_now(&mut con);
    seed_started(&mut con, "q", &plain, now - 5.0);
    seed_started(&mut con, "q", &retried, now - 5.0);
    let live_member = seed_started(&mut con, "q", &live, now + 1000.0);
    assert_eq!(llen(&mut con, "rq:queue:q"), 0);

    let mut w = Rqworker::new(&redis)
        .opt("--maintenance-interval", "1")
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    wait_status(&mut con, &plain, &["failed"]);
    let doc = job(&redis, &plain);
    let res = &doc["results"][0];
    assert_eq!(res["type"], "FAILED", "{doc}");
    assert_eq!(
        res["worker_name"], "",
        "RQ attributes cleanup to no worker: {doc}"
    );
    let exc = res["exc_string"].as_str().unwrap();
    let when = exc
        .strip_prefix("Moved to FailedJobRegistry, due to AbandonedJobError, at ")
        .unwrap_or_else(|| panic!("{exc}"));
    // Python's str() of an aware UTC datetime: `2026-11-28 12:04:10.329822+00:00`.
    assert_eq!(when.len(), 32, "{when}");
    assert_eq!(&when[10..11], " ");
    assert!(when.ends_with("+00:00"), "{when}");
    assert!(zscore_f64(&mut con, "rq:failed:q", &plain).is_some());

    // The retried one went back to the queue, and this worker ran it.
    wait_status(&mut con, &retried, &["finished"]);
    let doc = job(&redis, &retried);
    assert_eq!(doc["retries_left"], 0, "{doc}");
    assert_eq!(doc["results"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(doc["results"][0]["type"], "SUCCESSFUL", "{doc}");

    // allow_failure children of the abandoned job are released, as RQ's cleanup does.
    wait_status(&mut con, &child, &["finished"]);

    // The live execution is left alone.
    assert_eq!(zrange(&mut con, "rq:wip:q"), vec![live_member.clone()]);
    assert_eq!(job_status(&mut con, &live).as_deref(), Some("started"));
    w.signal(Signal::SIGTERM);
    assert_exit_ok(&mut w, WAIT);
}

#[test]
fn stale_worker_set_members_are_pruned() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    for key in ["rq:workers", "rq:workers:q"] {
        let _: i64 = redis::cmd("SADD")
            .arg(key)
            .arg("rq:worker:ghost")
            .query(&mut con)
            .unwrap();
    }
    let mut w = Rqworker::new(&redis)
        .opt("--maintenance-interval", "1")
        .name("w")
        .queues(["q"])
        .spawn();
    wait_until("ghost pruned", WAIT, || {
        smembers(&mut con, "rq:workers:q") == ["rq:worker:w"]
            && smembers(&mut con, "rq:workers") == ["rq:worker:w"]
    });
    w.signal(Signal::SIGTERM);
    assert_exit_ok(&mut w, WAIT);
}

#[test]
fn ids_stuck_in_the_intermediate_list_are_requeued_at_the_front_after_a_minute() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let stuck = enqueue(&redis, "q", "rq.builtin.echo", r#"["stuck"]"#, "{}");
    let fresh = enqueue(&redis, "q", "rq.builtin.echo", r#"["fresh"]"#, "{}");
    let unseen = enqueue(&redis, "q", "rq.builtin.echo", r#"["unseen"]"#, "{}");
    let running = enqueue(&redis, "q", "rq.builtin.echo", r#"["running"]"#, "{}");
    let other = enqueue(&redis, "q", "rq.builtin.echo", r#"["other"]"#, "{}");
    let now = redis_now(&mut con);
    let list = "rq:queue:q:intermediate";
    for id in [&stuck, &fresh, &unseen, &running] {
        let _: i64 = redis::cmd("LREM")
            .arg("rq:queue:q")
            .arg(0)
            .arg(id)
            .query(&mut con)
            .unwrap();
        let _: i64 = redis::cmd("RPUSH")
            .arg(list)
            .arg(id)
            .query(&mut con)
            .unwrap();
    }
    let _: i64 = redis::cmd("RPUSH")
        .arg(list)
        .arg("no-such-job")
        .query(&mut con)
        .unwrap();
    let first_seen = |id: &str| format!("{list}:first_seen:{id}");
    for (id, age) in [(&stuck, 120.0), (&fresh, 10.0)] {
        let _: () = redis::cmd("SET")
            .arg(first_seen(id))
            .arg(now - age)
            .arg("EX")
            .arg(86400)
            .query(&mut con)
            .unwrap();
    }
    let fresh_seen = get(&mut con, &first_seen(&fresh));
    let running_member = seed_started(&mut con, "q", &running, now + 1000.0);
    assert_eq!(lrange(&mut con, "rq:queue:q"), vec![other.clone()]);

    let mut w = Rqworker::new(&redis)
        .opt("--maintenance-interval", "1")
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    wait_status(&mut con, &stuck, &["finished"]);
    wait_status(&mut con, &other, &["finished"]);
    let log = w.log();
    let stuck_at = log.find("Got rq.builtin.echo('stuck')").expect(&log);
    let other_at = log.find("Got rq.builtin.echo('other')").expect(&log);
    assert!(
        stuck_at < other_at,
        "requeued at the front, before the job that was waiting:\n{log}"
    );
    assert!(log.contains(&format!("job {stuck} was stuck")), "{log}");
    wait_until("unseen id marked first_seen", WAIT, || {
        exists(&mut con, &first_seen(&unseen))
    });
    let seen: f64 = get(&mut con, &first_seen(&unseen))
        .unwrap()
        .parse()
        .unwrap();
    assert!((seen - now).abs() < 30.0, "first_seen {seen}, now {now}");
    let t = ttl(&mut con, &first_seen(&unseen));
    assert!((86000..=86400).contains(&t), "first_seen ttl {t}");
    wait_until("missing job's id dropped", WAIT, || {
        !lrange(&mut con, list).contains(&"no-such-job".to_string())
    });
    // Younger than a minute, or started: left where they are.
    let left = lrange(&mut con, list);
    assert_eq!(left, vec![fresh.clone(), unseen.clone(), running.clone()]);
    assert_eq!(get(&mut con, &first_seen(&fresh)), fresh_seen);
    assert!(!exists(&mut con, &first_seen(&running)));
    assert_eq!(zrange(&mut con, "rq:wip:q"), vec![running_member]);
    assert_eq!(job_status(&mut con, &fresh).as_deref(), Some("queued"));
    w.signal(Signal::SIGTERM);
    assert_exit_ok(&mut w, WAIT);
}
