//! rq-supervisor keeping pools at strength: crash restarts with cleanup in Redis, backoff
//! and the degraded state, job-limit recycling, memory recycling, stuck workers.

use std::time::{Duration, Instant};

use crate::support::supervisor::*;
use crate::support::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

#[test]
fn kill_9_of_a_worker_is_cleaned_up_at_once_and_replaced_within_a_second() {
    let redis = RedisServer::start();
    let file = PoolFile::new(
        r#"
[worker]
builtin_handlers = true
[pools.main]
queues = ["default"]
workers = 2
"#,
    );
    let sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    wait_workers(&mut con, 2);
    let id = rs_enqueue(&mut con, "default", "rq.builtin.sleep", json!([60]));
    let mut name = None;
    wait_until("job started", WAIT, || {
        name = hget(&mut con, &format!("rq:job:{id}"), "worker_name").filter(|n| !n.is_empty());
        name.is_some() && job_status(&mut con, &id).as_deref() == Some("started")
    });
    let name = name.unwrap();
    let victim: u32 = hget(&mut con, &format!("rq:worker:{name}"), "pid")
        .unwrap()
        .parse()
        .unwrap();
    let horse = wait_horse_pid(victim);
    let t0 = Instant::now();
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    // The registration goes and the job is settled at once, not after RQ's TTLs.
    wait_until("old registration gone", Duration::from_secs(1), || {
        !workers(&mut con).iter().any(|(n, _)| *n == name)
    });
    wait_until("job settled", Duration::from_secs(1), || {
        job_status(&mut con, &id).as_deref() == Some("failed")
    });
    let mut now = Vec::new();
    wait_until("a replacement registered", Duration::from_secs(1), || {
        now = workers(&mut con);
        now.len() == 2 && !now.iter().any(|(_, p)| *p == victim)
    });
    assert!(t0.elapsed() < Duration::from_secs(1));
    let exc = rq_supervisor::producer::latest_result(&mut con, &id)
        .unwrap()
        .and_then(|r| r.exc_string)
        .unwrap_or_default();
    assert!(
        exc.contains("WorkerDied") && exc.contains(&name) && exc.contains("signal 9"),
        "{exc}"
    );
    assert!(hget(&mut con, &format!("rq:worker:{name}"), "death").is_some());
    wait_until("horse gone", Duration::from_secs(1), || !alive(horse));
    // What Python RQ (and so `rq info`) sees: no ghost, and the job failed.
    let seen: serde_json::Value =
        serde_json::from_str(&python(&redis, "rqtool.py", &["workers"])).unwrap();
    let names: Vec<&str> = seen
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(!names.contains(&name.as_str()), "{names:?}");
    let st: Vec<String> =
        serde_json::from_str(&python(&redis, "rqtool.py", &["status", &id])).unwrap();
    assert_eq!(st, ["failed"]);
    let log = sup.log();
    assert!(log.contains("was killed by signal 9 (SIGKILL)"), "{log}");
    assert!(log.contains("crash cleanup done"), "{log}");
}

#[test]
fn a_pool_failing_at_start_backs_off_and_degrades_while_a_healthy_pool_works() {
    let redis = RedisServer::start();
    let file = PoolFile::new("");
    let bad = file.script(
        "broken.sh",
        "#!/bin/sh\necho 'cannot import tasks' >&2\nexit 1\n",
    );
    file.rewrite(&format!(
        r#"
[worker]
builtin_handlers = true
[pools.bad]
queues = ["bad"]
program = "{}"
[pools.bad.restart]
backoff_initial = "100ms"
backoff_max = "5s"
failure_window = "60s"
failure_threshold = 5
degraded_interval = "1s"
[pools.good]
queues = ["good"]
"#,
        bad.display()
    ));
    let sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    let good = wait_workers(&mut con, 1);
    let t0 = Instant::now();
    sup.wait_for_log("pool DEGRADED");
    sup.wait_for_log("pool degraded: trying to start a worker again");
    let elapsed = t0.elapsed();
    // The healthy pool keeps working, with the same worker.
    let id = rs_enqueue(&mut con, "good", "rq.builtin.echo", json!(["still here"]));
    wait_status(&mut con, &id, &["finished"]);
    assert_eq!(workers(&mut con), good);
    let log = sup.log();
    let ceilings: Vec<f64> = lines_with(&log, "[bad/rq-supervisor] restart in")
        .iter()
        .map(|l| {
            let c = l.split("ceiling ").nth(1).unwrap();
            c[..c.find('s').unwrap()].parse().unwrap()
        })
        .collect();
    assert_eq!(ceilings, [0.1, 0.2, 0.4, 0.8], "{log}");
    // Five tries before DEGRADED, then one per degraded_interval (1s): no tight loop.
    let tries = spawned_pids(&log, "bad").len();
    let bound = 5 + t0.elapsed().as_secs() as usize + 1;
    assert!(
        (5..=bound).contains(&tries),
        "{tries} tries in {elapsed:?}\n{log}"
    );
    assert!(lines_with(&log, "exited with status 1").len() >= 5, "{log}");
    assert!(log.contains("cannot import tasks"), "{log}");
    assert!(
        lines_with(&log, "[good/")
            .iter()
            .all(|l| !l.contains("exited"))
    );
}

#[test]
fn workers_recycle_at_their_own_jittered_job_limit() {
    let redis = RedisServer::start();
    let file = PoolFile::new(
        r#"
[worker]
builtin_handlers = true
[pools.main]
queues = ["default"]
workers = 2
max_jobs = 2
max_jobs_jitter = 3
"#,
    );
    let sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    wait_workers(&mut con, 2);
    let ids: Vec<String> = (0..30)
        .map(|i| rs_enqueue(&mut con, "default", "rq.builtin.echo", json!([i])))
        .collect();
    for id in &ids {
        wait_status(&mut con, id, &["finished"]);
    }
    wait_workers(&mut con, 2);
    let log = sup.log();
    let limits: Vec<u64> = lines_with(&log, "supervisor: spawned pid")
        .iter()
        .map(|l| {
            let s = l.split("--max-jobs ").nth(1).expect(l);
            s[..s.find(')').unwrap()].parse().unwrap()
        })
        .collect();
    assert!(limits.len() >= 8, "30 jobs at most 5 each: {limits:?}");
    assert!(limits.iter().all(|n| (2..=5).contains(n)), "{limits:?}");
    let distinct: std::collections::BTreeSet<_> = limits.iter().collect();
    assert!(distinct.len() >= 2, "not in lockstep: {limits:?}");
    assert!(lines_with(&log, "job limit reached").len() >= 6, "{log}");
    assert!(
        !log.contains("restart in"),
        "no backoff for clean exits:\n{log}"
    );
}

#[test]
fn a_worker_over_its_memory_limit_is_recycled_warm() {
    let redis = RedisServer::start();
    // Any worker uses more than 1 MiB, so each one is recycled after three readings.
    let file = PoolFile::new(
        r#"
[supervisor]
health_interval = "100ms"
[worker]
builtin_handlers = true
[pools.main]
queues = ["default"]
memory_limit = "1MiB"
"#,
    );
    let sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    let first = wait_workers(&mut con, 1)[0].clone();
    sup.wait_for_log("over memory_limit 1 MiB for 3 readings; recycling warm");
    wait_until("a new worker", WAIT, || {
        let w = workers(&mut con);
        w.len() == 1 && w[0] != first
    });
    let log = sup.log();
    assert!(
        log.contains(&format!(
            "pid {} exited with status 0 (retired: memory limit); replacing it",
            first.1
        )),
        "{log}"
    );
    // It stopped warm: it registered its own death.
    assert!(hget(&mut con, &format!("rq:worker:{}", first.0), "death").is_some());
}

#[test]
fn a_stuck_worker_is_killed_and_replaced() {
    let redis = RedisServer::start();
    let file = PoolFile::new(
        r#"
[supervisor]
health_interval = "200ms"
[worker]
builtin_handlers = true
worker_ttl = "16s"
[pools.main]
queues = ["default"]
"#,
    );
    let sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    let (name, pid) = wait_workers(&mut con, 1)[0].clone();
    // A stopped process is alive but never heartbeats again.
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
    let t0 = Instant::now();
    wait_until("stuck worker killed", Duration::from_secs(25), || {
        sup.log().contains("stuck: its last_heartbeat")
    });
    assert!(
        t0.elapsed() >= Duration::from_secs(14),
        "{:?}",
        t0.elapsed()
    );
    wait_until("replacement", WAIT, || {
        let w = workers(&mut con);
        w.len() == 1 && w[0].1 != pid
    });
    assert!(!alive(pid));
    assert!(hget(&mut con, &format!("rq:worker:{name}"), "death").is_some());
    let log = sup.log();
    assert!(log.contains("after the stuck-worker kill"), "{log}");
}

#[test]
fn a_program_that_vanished_fails_to_spawn_and_backs_off() {
    let redis = RedisServer::start();
    let file = PoolFile::new("");
    let prog = file.script("vanishing.sh", "#!/bin/sh\nwhile :; do sleep 0.05; done\n");
    file.rewrite(&format!(
        "[pools.v]\nqueues = [\"q\"]\nprogram = \"{}\"\n[pools.v.restart]\nbackoff_initial = \"50ms\"\n",
        prog.display()
    ));
    let mut sup = Supervisor::new(&redis, &file).spawn();
    wait_until("the worker", WAIT, || {
        spawned_pids(&sup.log(), "v").len() == 1
    });
    let pid = spawned_pids(&sup.log(), "v")[0];
    std::fs::remove_file(&prog).unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    sup.wait_for_log("cannot start a worker");
    wait_until("two spawn failures", WAIT, || {
        lines_with(&sup.log(), "cannot start a worker").len() >= 2
    });
    let log = sup.log();
    assert!(lines_with(&log, "restart in").len() >= 2, "{log}");
    sup.signal(Signal::SIGTERM);
    assert!(sup.wait_exit(WAIT).success(), "{}", sup.log());
}

#[test]
fn a_crash_cleanup_waits_out_a_redis_outage_and_is_never_lost() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let file = PoolFile::new(
        r#"
[worker]
builtin_handlers = true
[pools.main]
queues = ["default"]
[pools.main.restart]
backoff_initial = "50ms"
backoff_max = "300ms"
failure_threshold = 1000
"#,
    );
    let sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    let (name, pid) = wait_workers(&mut con, 1)[0].clone();
    let id = rs_enqueue(&mut con, "default", "rq.builtin.sleep", json!([60]));
    wait_status(&mut con, &id, &["started"]);
    drop(con);
    redis.stop();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    sup.wait_for_log("crash cleanup deferred");
    // The replacement waits for Redis instead of exiting (no crash loop).
    sup.wait_for_log("waiting for Redis");
    assert!(
        lines_with(&sup.log(), "exited with status 1").is_empty(),
        "{}",
        sup.log()
    );
    redis.restart();
    let mut con = redis.con();
    wait_status(&mut con, &id, &["failed"]);
    wait_until("old registration gone", WAIT, || {
        !workers(&mut con).iter().any(|(n, _)| *n == name)
    });
    wait_until("a replacement", WAIT, || workers(&mut con).len() == 1);
    sup.wait_for_log(&format!("[main/{name}] supervisor: crash cleanup done"));
}

#[test]
fn what_a_dead_workers_horse_started_is_killed_too() {
    let redis = RedisServer::start();
    let file = PoolFile::new("");
    let handler = file.script(
        "spawner.sh",
        "#!/bin/sh\nsleep 60 &\necho $! > \"$(dirname \"$0\")/bg.pid\"\nsleep 60\n",
    );
    file.rewrite(&format!(
        r#"
[pools.main]
queues = ["default"]
[handlers."tasks.spawner"]
command = ["{}"]
"#,
        handler.display()
    ));
    let sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    let (_, worker) = wait_workers(&mut con, 1)[0].clone();
    let id = rs_enqueue(&mut con, "default", "tasks.spawner", json!([]));
    wait_status(&mut con, &id, &["started"]);
    let horse = wait_horse_pid(worker);
    let bg_file = file.dir.path().join("bg.pid");
    wait_until("the background process", WAIT, || {
        std::fs::read_to_string(&bg_file).is_ok_and(|s| s.trim().parse::<u32>().is_ok())
    });
    let bg: u32 = std::fs::read_to_string(&bg_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kill(Pid::from_raw(worker as i32), Signal::SIGKILL).unwrap();
    wait_status_within(&mut con, &id, &["failed"], Duration::from_secs(2));
    wait_until(
        "horse and its children gone",
        Duration::from_secs(2),
        || !alive(horse) && !alive(bg),
    );
    assert!(sup.log().contains("killed orphan pid"), "{}", sup.log());
}
