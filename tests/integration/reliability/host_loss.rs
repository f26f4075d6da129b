//! Whole-host loss: three rq-supervisors on one redis-server, each its own host
//! (`RQ_HOSTNAME`), and one of them dies whole: supervisor, workers and horses frozen, then
//! SIGKILLed, so none of them writes anything. The survivors' maintenance must settle its
//! in-flight jobs (retried, or failed with RQ's `AbandonedJobError` text) and drop its worker
//! records within `worker_ttl`-derived bounds, while a job that runs through several
//! `worker_ttl` periods on a survivor keeps heartbeating and finishes normally.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::supervisor::*;
use crate::support::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rq_supervisor::procfs;
use rq_supervisor::producer::EnqueueOptions;
use serde_json::json;

/// The fleet's settings: heartbeats every 3 s, a job's heartbeat TTL 3 + 6 s, an idle
/// record's 12 s, one maintenance pass per second for the whole fleet.
const WORKER_TTL: u64 = 6;
const MAINTENANCE: u64 = 1;
/// The slow job: more than three `worker_ttl` periods.
const SLOW_SECS: u64 = 20;

fn pool_file(gate: &str, slow_pool: bool) -> PoolFile {
    pool_file_with(gate, slow_pool, WORKER_TTL, MAINTENANCE, 2)
}

fn pool_file_with(gate: &str, slow_pool: bool, ttl: u64, maintenance: u64, n: u32) -> PoolFile {
    let slow = if slow_pool {
        "[pools.slow]\nqueues = [\"slow\"]\nworkers = 1\n"
    } else {
        ""
    };
    PoolFile::new(&format!(
        r#"
[supervisor]
warm_timeout = "5s"
cold_timeout = "2s"
[worker]
builtin_handlers = true
worker_ttl = "{ttl}s"
maintenance_interval = "{maintenance}s"
[pools.main]
queues = ["default"]
workers = {n}
{slow}
{gate}
"#
    ))
}

fn host(redis: &RedisServer, file: &PoolFile, name: &str) -> Proc {
    Supervisor::new(redis, file)
        .env("RQ_HOSTNAME", name)
        .spawn()
}

/// Registered workers whose name says they run on `host`.
fn workers_of(con: &mut redis::Connection, host: &str) -> Vec<String> {
    workers(con)
        .into_iter()
        .map(|(name, _)| name)
        .filter(|n| n.starts_with(&format!("{host}.")))
        .collect()
}

fn worker_of(con: &mut redis::Connection, id: &str) -> String {
    hget(con, &format!("rq:job:{id}"), "worker_name").unwrap_or_default()
}

/// Waits until job `id` is started by a worker of `host`.
fn wait_started_on(con: &mut redis::Connection, id: &str, host: &str) {
    wait_until(&format!("job {id} started on {host}"), WAIT, || {
        job_status(con, id).as_deref() == Some("started")
            && worker_of(con, id).starts_with(&format!("{host}."))
    });
}

/// Kills a host whole, as a power loss would: every process of the supervisor's tree is
/// stopped first (the supervisor before its workers, a worker before its horse, until no
/// new process appears), so none of them sees another die and cleans up, then all are
/// SIGKILLed.
fn kill_host(sup: &mut Proc) -> Vec<u32> {
    let mut frozen: Vec<u32> = Vec::new();
    loop {
        let fresh: Vec<u32> = procfs::tree(sup.pid().as_raw() as u32)
            .into_iter()
            .filter(|p| !frozen.contains(p))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for pid in fresh {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGSTOP);
            frozen.push(pid);
        }
    }
    for pid in &frozen {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
    }
    sup.wait_exit(WAIT);
    for pid in &frozen {
        wait_until(&format!("pid {pid} to die"), WAIT, || !alive(*pid));
    }
    frozen
}

fn results_count(con: &mut redis::Connection, id: &str) -> usize {
    results(con, id).len()
}

#[test]
fn a_lost_hosts_jobs_and_workers_are_settled_by_the_survivors_and_a_slow_live_job_is_not() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let dir = temp_dir();
    let gate_path = dir.path().join("open");
    let gate_arg = gate_path.display().to_string();
    let gate = gate_handler(dir.path());

    // Host c starts alone and takes both gated jobs: they run there until it dies.
    let file_c = pool_file(&gate, false);
    let mut host_c = host(&redis, &file_c, "host-c");
    wait_until("host-c's 2 workers", WAIT, || {
        workers_of(&mut con, "host-c").len() == 2
    });
    let retried = rs_enqueue_with(
        &mut con,
        "default",
        "tasks.gate",
        json!([gate_arg]),
        &EnqueueOptions {
            retry: Some((1, vec![0])),
            ..Default::default()
        },
    );
    let failed = rs_enqueue(&mut con, "default", "tasks.gate", json!([gate_arg]));
    wait_started_on(&mut con, &retried, "host-c");
    wait_started_on(&mut con, &failed, "host-c");
    let dead_workers = workers_of(&mut con, "host-c");

    let file_a = pool_file(&gate, true);
    let file_b = pool_file(&gate, false);
    let host_a = host(&redis, &file_a, "host-a");
    let _host_b = host(&redis, &file_b, "host-b");
    wait_until("7 registered workers", WAIT, || {
        workers(&mut con).len() == 7
    });
    let slow = rs_enqueue_with(
        &mut con,
        "slow",
        "rq.builtin.sleep",
        json!([SLOW_SECS]),
        &EnqueueOptions {
            timeout: Some(120),
            ..Default::default()
        },
    );
    wait_started_on(&mut con, &slow, "host-a");
    let slow_started = Instant::now();
    let quick: Vec<String> = (0..6)
        .map(|_| rs_enqueue(&mut con, "default", "rq.builtin.sleep", json!([0.5])))
        .collect();

    let killed = kill_host(&mut host_c);
    let lost_at = Instant::now();
    assert!(
        killed.len() >= 5,
        "supervisor, 2 workers, 2 horses: {killed:?}"
    );

    // A job's heartbeat TTL is its heartbeat interval (worker_ttl / 2) plus the grace
    // (worker_ttl), an idle record's worker_ttl twice; then one maintenance pass. 10 s of
    // slack for a loaded machine.
    let bound = Duration::from_secs(WORKER_TTL / 2 + WORKER_TTL + 2 * MAINTENANCE + 10);
    wait_until("the lost host's jobs settled", bound, || {
        let retried_on_c = job_status(&mut con, &retried).as_deref() == Some("started")
            && worker_of(&mut con, &retried).starts_with("host-c.");
        job_status(&mut con, &failed).as_deref() == Some("failed") && !retried_on_c
    });
    let jobs_settled = lost_at.elapsed();
    assert!(
        latest_exc(&mut con, &failed)
            .starts_with("Moved to FailedJobRegistry, due to AbandonedJobError, at "),
        "{}",
        latest_exc(&mut con, &failed)
    );
    assert!(zrange(&mut con, "rq:failed:default").contains(&failed));
    assert_eq!(
        hget(&mut con, &format!("rq:job:{retried}"), "retries_left").as_deref(),
        Some("0")
    );
    let records_bound = Duration::from_secs(2 * WORKER_TTL + 2 * MAINTENANCE + 10);
    wait_until("the lost host's worker records gone", records_bound, || {
        let sets = [
            smembers(&mut con, "rq:workers"),
            smembers(&mut con, "rq:workers:default"),
        ];
        dead_workers.iter().all(|w| {
            let key = format!("rq:worker:{w}");
            !exists(&mut con, &key) && sets.iter().all(|s| !s.contains(&key))
        })
    });
    let records_gone = lost_at.elapsed();
    eprintln!(
        "host loss: jobs settled after {jobs_settled:?}, records gone after {records_gone:?}"
    );

    // The survivors: every worker still registered, every job finished once.
    for q in &quick {
        assert_eq!(
            wait_status(&mut con, q, &["finished", "failed"]),
            "finished"
        );
    }
    std::fs::write(&gate_path, "").unwrap();
    let limit = Duration::from_secs(SLOW_SECS) + WAIT;
    assert_eq!(
        wait_status_within(&mut con, &slow, &["finished", "failed"], limit),
        "finished",
        "{}",
        latest_exc_or_empty(&mut con, &slow)
    );
    assert!(
        slow_started.elapsed() >= Duration::from_secs(3 * WORKER_TTL),
        "the slow job must outlive several worker_ttl periods"
    );
    assert!(worker_of(&mut con, &slow).starts_with("host-a."));
    assert!(
        !host_a.log().contains("settled by someone else"),
        "{}",
        host_a.log()
    );
    assert_eq!(results_count(&mut con, &slow), 1);
    assert_eq!(
        wait_status(&mut con, &retried, &["finished", "failed"]),
        "finished"
    );
    assert!(!worker_of(&mut con, &retried).starts_with("host-c."));
    assert_eq!(results_count(&mut con, &retried), 1);
    assert_eq!(results_count(&mut con, &failed), 1);
    assert!(zrange(&mut con, "rq:wip:default").is_empty());
    assert!(zrange(&mut con, "rq:wip:slow").is_empty());
    let alive: Vec<String> = workers(&mut con).into_iter().map(|(n, _)| n).collect();
    assert_eq!(alive.len(), 5, "{alive:?}");
    assert!(alive.iter().all(|n| !n.starts_with("host-c.")), "{alive:?}");
    for host in ["host-a", "host-b"] {
        for w in workers_of(&mut con, host) {
            assert_eq!(
                hget(&mut con, &format!("rq:worker:{w}"), "hostname").as_deref(),
                Some(host)
            );
        }
    }
}

fn latest_exc_or_empty(con: &mut redis::Connection, id: &str) -> String {
    rq_supervisor::producer::latest_result(con, id)
        .ok()
        .flatten()
        .and_then(|r| r.exc_string)
        .unwrap_or_default()
}

/// The figures in docs/reliability.md, "Whole-host loss": for each setting, a lost host's
/// busy worker (its job failed as abandoned) and idle worker (its record gone), seen from
/// one surviving host, three times.
/// `cargo test --test integration -- --ignored --nocapture reliability::host_loss::settle_times`
#[test]
#[ignore = "a measurement: about 3 minutes"]
fn settle_times() {
    for (ttl, maintenance) in [(5, 1), (10, 2), (15, 5)] {
        let mut jobs = Vec::new();
        let mut records = Vec::new();
        for _ in 0..3 {
            let (j, r) = one_loss(ttl, maintenance);
            jobs.push(j.as_secs_f64());
            records.push(r.as_secs_f64());
        }
        let show = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        eprintln!(
            "worker_ttl {ttl}s, maintenance_interval {maintenance}s: job settled after {} s, records gone after {} s",
            show(&jobs),
            show(&records)
        );
    }
}

/// One host with a busy and an idle worker is lost; returns how long until its job is
/// settled and until its worker records are gone.
fn one_loss(ttl: u64, maintenance: u64) -> (Duration, Duration) {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let dir = temp_dir();
    let gate = gate_handler(dir.path());
    let gate_arg = dir.path().join("never").display().to_string();
    let file_lost = pool_file_with(&gate, false, ttl, maintenance, 2);
    let mut lost = host(&redis, &file_lost, "lost");
    wait_until("the lost host's workers", WAIT, || {
        workers_of(&mut con, "lost").len() == 2
    });
    let id = rs_enqueue(&mut con, "default", "tasks.gate", json!([gate_arg]));
    wait_started_on(&mut con, &id, "lost");
    let names = workers_of(&mut con, "lost");
    let file_alive = pool_file_with(&gate, false, ttl, maintenance, 1);
    let _alive = host(&redis, &file_alive, "alive");
    wait_until("the surviving worker", WAIT, || {
        workers_of(&mut con, "alive").len() == 1
    });
    kill_host(&mut lost);
    let t0 = Instant::now();
    let limit = Duration::from_secs(3 * ttl + 2 * maintenance + 60);
    let mut settled = None;
    wait_until("the lost host settled", limit, || {
        if settled.is_none() && job_status(&mut con, &id).as_deref() == Some("failed") {
            settled = Some(t0.elapsed());
        }
        let gone = names.iter().all(|w| {
            let key = format!("rq:worker:{w}");
            !exists(&mut con, &key) && !smembers(&mut con, "rq:workers").contains(&key)
        });
        settled.is_some() && gone
    });
    (settled.unwrap(), t0.elapsed())
}

/// `calls` per command from INFO commandstats (commands run inside scripts included).
fn command_calls(con: &mut redis::Connection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(con).unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// The idle Redis traffic of a fleet of 64 idle workers under one supervisor, in commands
/// per second, at RQ's defaults and at short settings.
/// `cargo test --test integration -- --ignored --nocapture reliability::host_loss::idle_traffic`
#[test]
#[ignore = "a measurement: about 2 minutes"]
fn idle_traffic() {
    const WORKERS: usize = 64;
    for settings in [
        "",
        "worker_ttl = \"15s\"\nmaintenance_interval = \"5s\"",
        "worker_ttl = \"10s\"\nmaintenance_interval = \"2s\"",
        "worker_ttl = \"5s\"\nmaintenance_interval = \"1s\"",
    ] {
        let redis = RedisServer::start();
        let mut con = redis.con();
        let file = PoolFile::new(&format!(
            "[worker]\n{settings}\n[pools.main]\nqueues = [\"default\"]\nworkers = {WORKERS}\n"
        ));
        let _sup = Supervisor::new(&redis, &file).spawn();
        wait_until("64 workers", Duration::from_secs(60), || {
            workers(&mut con).len() == WORKERS
        });
        // Past the first pass of every worker and the start-up claims.
        std::thread::sleep(Duration::from_secs(5));
        let before = command_calls(&mut con);
        let t0 = Instant::now();
        // Time must pass: the rate over a window is the measurement.
        std::thread::sleep(Duration::from_secs(20));
        let after = command_calls(&mut con);
        let secs = t0.elapsed().as_secs_f64();
        let mut rates: Vec<(String, f64)> = after
            .iter()
            .map(|(name, n)| {
                let mut delta = n - before.get(name).copied().unwrap_or(0);
                if name == "info" {
                    delta -= 1; // this probe's own
                }
                (name.clone(), delta as f64 / secs)
            })
            .filter(|(_, r)| *r > 0.0)
            .collect();
        rates.sort_by(|a, b| b.1.total_cmp(&a.1));
        let all: f64 = rates.iter().map(|(_, r)| r).sum();
        let top = rates
            .iter()
            .take(8)
            .map(|(n, r)| format!("{n} {r:.1}"))
            .collect::<Vec<_>>()
            .join(", ");
        let shown = if settings.is_empty() {
            "defaults".to_string()
        } else {
            settings.replace('\n', ", ")
        };
        eprintln!("{WORKERS} idle workers, {shown}: {all:.1} commands/s ({top})");
    }
}
