//! Redis going away and coming back: workers and rq-supervisor reconnect (capped, jittered
//! backoff) and nothing is lost or run twice. Outages are real: the redis-server is stopped and
//! started again on the same socket with its AOF, stalled (`CLIENT PAUSE`, `DEBUG SLEEP`), or
//! its connections are killed (`CLIENT KILL TYPE normal`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::cpu::cpu_seconds;
use crate::support::supervisor::*;
use crate::support::*;
use serde_json::json;

/// Redis with every write on disk before it is acknowledged, so a stop + start keeps it all.
const DURABLE: &[&str] = &["--appendonly", "yes", "--appendfsync", "always"];

/// A `tasks.gated` handler: appends one line per run to `runs`, waits until the file named by
/// its first argument exists, prints `released`.
fn gated_handler(dir: &Path) -> (String, PathBuf) {
    let runs = dir.join("runs");
    let script = write_script(
        dir,
        "gated.sh",
        &format!(
            "#!/bin/sh\necho \"$RQ_JOB_ID $RQ_EXECUTION_ID\" >> {}\nwhile [ ! -e \"$1\" ]; do sleep 0.02; done\necho released\n",
            runs.display()
        ),
    );
    let cfg = write_config(
        dir,
        &format!(
            "[worker]\nbuiltin_handlers = true\n[handlers.\"tasks.gated\"]\ncommand = [{}]\n",
            toml_str(script.display().to_string())
        ),
    );
    (cfg, runs)
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// While the worker waits for Redis, a signal that is not a stop request (here SIGCHLD, as a
/// horse's late exit notice) must not turn its backoff into a busy loop.
fn assert_backs_off_calmly(w: &Proc) {
    w.signal(nix::sys::signal::Signal::SIGCHLD);
    let cpu = || cpu_seconds(w.pid().as_raw() as u32).expect("the worker is running");
    let before = cpu();
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu() - before;
    assert!(
        used < 0.5,
        "the worker used {used:.2}s of CPU in 2s while waiting for Redis:\n{}",
        w.log()
    );
}

/// The worker is registered once, idle, with no job, and its queues have nothing in flight.
fn assert_settled_worker(con: &mut redis::Connection, name: &str, queues: &[&str]) {
    let key = format!("rq:worker:{name}");
    wait_worker_state(con, name, "idle");
    assert!(hget(con, &key, "current_job").is_none());
    assert!(smembers(con, "rq:workers").contains(&key));
    for q in queues {
        assert!(zrange(con, &format!("rq:wip:{q}")).is_empty(), "rq:wip:{q}");
        assert!(!exists(con, &format!("rq:queue:{q}")), "rq:queue:{q}");
    }
}

#[test]
fn a_job_whose_horse_finishes_during_an_outage_is_recorded_after_reconnect() {
    let mut redis = RedisServer::start_with(DURABLE);
    let dir = temp_dir();
    let (cfg, runs) = gated_handler(dir.path());
    let open = dir.path().join("open");
    let w = Rqworker::new(&redis)
        .config(&cfg)
        .name("w")
        .opt("--job-monitoring-interval", "1")
        .queues(["q"])
        .spawn();
    let mut con = redis.con();
    let id = py_enqueue_args(
        &redis,
        "q",
        "tasks.gated",
        &json!([open.display().to_string()]).to_string(),
    );
    wait_status(&mut con, &id, &["started"]);
    wait_until("the handler to run", WAIT, || lines(&runs) == 1);
    drop(con);

    redis.stop();
    std::fs::write(&open, "").unwrap();
    // The horse is done and the worker holds its outcome, retrying.
    w.wait_for_log(&format!("cannot record the outcome of job {id}"));
    assert_backs_off_calmly(&w);
    redis.restart();

    let mut con = redis.con();
    wait_status(&mut con, &id, &["finished"]);
    assert_eq!(latest_return(&mut con, &id), Some(json!("released")));
    assert_eq!(results(&mut con, &id).len(), 1, "one result entry");
    assert_eq!(lines(&runs), 1, "the handler ran once");
    assert_eq!(
        hget(&mut con, "rq:worker:w", "successful_job_count").as_deref(),
        Some("1")
    );
    assert_settled_worker(&mut con, "w", &["q"]);
    // And it goes on working.
    let next = rs_enqueue(&mut con, "q", "rq.builtin.noop", json!([]));
    wait_status(&mut con, &next, &["finished"]);
    assert!(alive(w.pid()));
}

#[test]
fn an_idle_worker_survives_an_outage_and_takes_jobs_afterwards() {
    let mut redis = RedisServer::start_with(DURABLE);
    let w = Rqworker::new(&redis)
        .builtin_handlers()
        .name("w")
        .queues(["high", "q"])
        .spawn();
    w.wait_for_log("Listening for work");
    redis.stop();
    w.wait_for_log("cannot take a job");
    assert_backs_off_calmly(&w);
    // Long enough for several backoff steps; nothing to poll while Redis is away.
    std::thread::sleep(Duration::from_secs(2));
    let restarted = Instant::now();
    redis.restart();
    let mut con = redis.con();
    let id = rs_enqueue(&mut con, "q", "rq.builtin.echo", json!(["after"]));
    wait_status(&mut con, &id, &["finished"]);
    // The backoff is capped (5 s plus a connect attempt), not Python RQ's 60 s.
    assert!(
        restarted.elapsed() < Duration::from_secs(15),
        "took {:?} to take a job after Redis came back",
        restarted.elapsed()
    );
    assert_eq!(latest_return(&mut con, &id), Some(json!(["after"])));
    assert_settled_worker(&mut con, "w", &["high", "q"]);
    assert_eq!(
        smembers(&mut con, "rq:workers"),
        vec!["rq:worker:w".to_string()]
    );
    assert!(alive(w.pid()));
}

#[test]
fn the_supervisor_does_not_take_an_unreachable_redis_for_stuck_workers() {
    let mut redis = RedisServer::start_with(DURABLE);
    let pool = PoolFile::new(
        r#"
[supervisor]
health_interval = "500ms"
[worker]
builtin_handlers = true
worker_ttl = "16s"
[pools.main]
queues = ["q"]
workers = 2
"#,
    );
    let sup = Supervisor::new(&redis, &pool).spawn();
    let mut con = redis.con();
    let before: Vec<u32> = wait_workers(&mut con, 2).iter().map(|w| w.1).collect();
    drop(con);
    redis.stop();
    sup.wait_for_log("stuck-worker checks paused");
    // An outage longer than worker_ttl: no heartbeat can be written or read meanwhile.
    let outage = Instant::now() + Duration::from_secs(20);
    while Instant::now() < outage {
        assert!(
            before.iter().all(|p| alive(*p)),
            "a worker died during the outage:\n{}",
            sup.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let back = redis::Client::open(redis.url()).unwrap();
    redis.restart();
    let since = unix_now();
    let mut con = back.get_connection().unwrap();
    // Both workers reconnect and heartbeat well within worker_ttl of Redis coming back.
    wait_until("fresh heartbeats from both workers", WAIT, || {
        workers(&mut con).iter().all(|(name, _)| {
            hget(&mut con, &format!("rq:worker:{name}"), "last_heartbeat")
                .is_some_and(|t| rq_time(&t) >= since - 1.0)
        }) && workers(&mut con).len() == 2
    });
    // A few more health checks after that, with Redis readable again.
    std::thread::sleep(Duration::from_secs(2));
    let log = sup.log();
    assert!(!log.contains("stuck:"), "{log}");
    assert!(before.iter().all(|p| alive(*p)), "{log}");
    let now: Vec<u32> = workers(&mut con).iter().map(|w| w.1).collect();
    assert_eq!(now, before, "{log}");
    let id = rs_enqueue(&mut con, "q", "rq.builtin.noop", json!([]));
    wait_status(&mut con, &id, &["finished"]);
    assert!(alive(sup.pid()));
}

/// Enqueues `n` jobs with the Rust producer, one every `gap`, through connection losses.
fn produce_through_outages(url: String, n: usize, gap: Duration) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut con = None;
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("job-{i}");
        let (func, args) = if i % 10 == 0 {
            ("rq.builtin.sleep", vec![json!(0.3)])
        } else {
            ("rq.builtin.echo", vec![json!(i)])
        };
        let queue = if i % 2 == 0 { "q" } else { "high" };
        let opts = rq_supervisor::producer::EnqueueOptions {
            job_id: Some(id.clone()),
            ..Default::default()
        };
        enqueue_through_outages(
            &client,
            &mut con,
            queue,
            func,
            args,
            &opts,
            Duration::from_secs(60),
        );
        ids.push(id);
        std::thread::sleep(gap);
    }
    ids
}

#[test]
fn a_stall_and_killed_connections_lose_nothing_and_run_nothing_twice() {
    let redis = RedisServer::start();
    let workers: Vec<Proc> = [&["q"][..], &["high", "q"][..]]
        .iter()
        .enumerate()
        .map(|(i, queues)| {
            let name = format!("w{i}");
            let w = Rqworker::new(&redis)
                .builtin_handlers()
                .name(&name)
                .opt("--job-monitoring-interval", "1")
                .queues(*queues)
                .spawn();
            w.wait_for_log("Listening for work");
            w
        })
        .collect();
    let url = redis.url();
    let producer =
        std::thread::spawn(move || produce_through_outages(url, 300, Duration::from_millis(15)));
    let mut con = redis.con();
    wait_until("jobs flowing", WAIT, || {
        smembers(&mut con, "rq:workers").len() == 2
            && redis::cmd("KEYS")
                .arg("rq:results:*")
                .query::<Vec<String>>(&mut con)
                .unwrap()
                .len()
                >= 20
    });
    // A stall longer than the clients' 5 s read timeout: replies time out, connections are
    // dropped and reopened, and commands a dead connection left behind are discarded.
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(6000)
        .arg("ALL")
        .exec(&mut con)
        .unwrap();
    std::thread::sleep(Duration::from_millis(6500));
    // Then every client connection is cut, three times, each time once the workers are back.
    for _ in 0..3 {
        wait_until("clients reconnected", WAIT, || {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .arg("TYPE")
                .arg("normal")
                .query(&mut con)
                .unwrap();
            // Ours plus at least one per worker.
            list.lines().count() >= 3
        });
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .query(&mut con)
            .unwrap();
        assert!(killed >= 2, "killed {killed} connections");
    }
    let ids = producer.join().expect("producer");
    assert_eq!(ids.len(), 300);
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in &ids {
        loop {
            let s = job_status(&mut con, id);
            if s.as_deref() == Some("finished") {
                break;
            }
            assert!(Instant::now() < deadline, "job {id}: {s:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        // A second execution would have written a second result entry.
        assert_eq!(
            results(&mut con, id).len(),
            1,
            "job {id} ran more than once"
        );
    }
    for (i, w) in workers.iter().enumerate() {
        assert!(alive(w.pid()), "w{i}: {}", w.log());
        assert_settled_worker(&mut con, &format!("w{i}"), &["high", "q"]);
    }
    let total: i64 = (0..2)
        .map(|i| {
            hget(&mut con, &format!("rq:worker:w{i}"), "successful_job_count")
                .map_or(0, |c| c.parse::<i64>().unwrap())
        })
        .sum();
    assert_eq!(total, 300, "each job counted once by the workers");
}

/// A real stall: every claim sent while Redis sleeps times out, and Redis runs them (and the
/// retries) when it wakes, in no fixed order, so one of them may take the job with nobody
/// reading the reply. Whichever did, the job runs once. (`tests/fault_injection.rs` loses a
/// claim's reply deterministically.)
#[test]
fn a_stall_longer_than_the_read_timeout_leaves_no_job_started() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "local"]);
    let mut con = redis.con();
    // worker_ttl 16 s: the idle worker wakes every second on its own, without notices.
    let w = Rqworker::new(&redis)
        .builtin_handlers()
        .name("w")
        .opt("--worker-ttl", "16")
        .queues(["q"])
        .spawn();
    w.wait_for_log("Listening for work");
    redis::cmd("SET")
        .arg("rq:suspended")
        .arg(1)
        .exec(&mut con)
        .unwrap();
    w.wait_for_log("suspended");
    let id = rs_enqueue(&mut con, "q", "rq.builtin.echo", json!(["once"]));
    // Resume and freeze Redis for 17 s in one step. Within a second the worker sends its
    // commands, each of which times out after 5 s (at most three before its claim), so a
    // claim is sent and abandoned while Redis sleeps, and Redis runs it afterwards.
    let url = redis.url();
    let sleeper = std::thread::spawn(move || {
        let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
        redis::pipe()
            .atomic()
            .del("rq:suspended")
            .cmd("DEBUG")
            .arg("SLEEP")
            .arg(17)
            .exec(&mut c)
            .unwrap();
    });
    sleeper.join().unwrap();
    w.wait_for_log("cannot take a job");
    wait_status(&mut con, &id, &["finished"]);
    assert_eq!(latest_return(&mut con, &id), Some(json!(["once"])));
    assert_eq!(results(&mut con, &id).len(), 1);
    assert_eq!(w.log().matches("Got ").count(), 1, "{}", w.log());
    assert_settled_worker(&mut con, "w", &["q"]);
}

#[test]
fn a_job_finishing_during_a_stall_is_recorded_once() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "local"]);
    let dir = temp_dir();
    let (cfg, runs) = gated_handler(dir.path());
    let open = dir.path().join("open");
    let w = Rqworker::new(&redis)
        .config(&cfg)
        .name("w")
        .opt("--job-monitoring-interval", "1")
        .queues(["q"])
        .spawn();
    let mut con = redis.con();
    let id = rs_enqueue(
        &mut con,
        "q",
        "tasks.gated",
        json!([open.display().to_string()]),
    );
    wait_status(&mut con, &id, &["started"]);
    wait_until("the handler to run", WAIT, || lines(&runs) == 1);
    // Freeze Redis for 14 s and let the job finish meanwhile: the worker's settle (after at
    // most one pending heartbeat, 5 s) times out; Redis runs it and the retry when it wakes,
    // and whichever comes second finds the execution settled.
    let url = redis.url();
    let sleeper = std::thread::spawn(move || {
        let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(14)
            .exec(&mut c)
            .unwrap();
    });
    wait_redis_stalled(&redis.url());
    std::fs::write(&open, "").unwrap();
    sleeper.join().unwrap();
    let deadline = Instant::now() + WAIT;
    while job_status(&mut con, &id).as_deref() != Some("finished") {
        assert!(
            Instant::now() < deadline,
            "status {:?}, worker log:\n{}",
            job_status(&mut con, &id),
            w.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = w.log();
    assert!(log.contains("cannot record the outcome"), "{log}");
    assert_eq!(latest_return(&mut con, &id), Some(json!("released")));
    assert_eq!(results(&mut con, &id).len(), 1, "one result entry");
    assert_eq!(lines(&runs), 1);
    assert_eq!(
        hget(&mut con, "rq:worker:w", "successful_job_count").as_deref(),
        Some("1"),
        "counted once"
    );
    assert_settled_worker(&mut con, "w", &["q"]);
}

#[test]
fn signals_arriving_during_a_slow_redis_call_do_not_break_it() {
    // A read on a socket with a timeout is not restarted after a signal handler; a SIGCHLD
    // (a horse or worker exiting) in the middle of a Redis call must not fail it with EINTR.
    let redis = RedisServer::start_with(&["--enable-debug-command", "local"]);
    let pool = PoolFile::new(
        r#"
[supervisor]
health_interval = "100ms"
[worker]
builtin_handlers = true
[pools.main]
queues = ["other"]
"#,
    );
    let sup = Supervisor::new(&redis, &pool).spawn();
    let w = Rqworker::new(&redis)
        .builtin_handlers()
        .name("w")
        .opt("--worker-ttl", "16")
        .queues(["q"])
        .spawn();
    w.wait_for_log("Listening for work");
    let mut con = redis.con();
    wait_workers(&mut con, 2);
    // Redis answers nothing for 3 s, so both are inside a Redis call most of that time.
    let url = redis.url();
    let sleeper = std::thread::spawn(move || {
        let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(3)
            .exec(&mut c)
            .unwrap();
    });
    wait_redis_stalled(&redis.url());
    for _ in 0..20 {
        sup.signal(nix::sys::signal::Signal::SIGCHLD);
        w.signal(nix::sys::signal::Signal::SIGCHLD);
        std::thread::sleep(Duration::from_millis(100));
    }
    sleeper.join().unwrap();
    let id = rs_enqueue(&mut con, "q", "rq.builtin.noop", json!([]));
    wait_status(&mut con, &id, &["finished"]);
    for (who, log) in [("rq-supervisor", sup.log()), ("rqworker", w.log())] {
        assert!(!log.contains("os error 4"), "{who} was interrupted:\n{log}");
    }
}

#[test]
fn a_worker_started_while_redis_loads_its_data_waits_instead_of_failing() {
    // Under rq-supervisor a worker that exits at start counts as a crash; restarts during a
    // Redis restart must not fail just because Redis is still reading its snapshot.
    let mut redis = RedisServer::start_with(&["--enable-debug-command", "local"]);
    let mut con = redis.con();
    // About a second of loading on an idle machine.
    redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(1_000_000)
        .exec(&mut con)
        .unwrap();
    redis::cmd("SAVE").exec(&mut con).unwrap();
    drop(con);
    redis.restart_graceful_nowait();
    let client = redis::Client::open(redis.url()).unwrap();
    wait_until("Redis to answer LOADING", WAIT, || {
        client
            .get_connection()
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_err_and(|e| {
                e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
            })
    });
    let mut w = Rqworker::new(&redis)
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    w.wait_for_log("Listening for work");
    let log = w.log();
    assert!(
        log.contains("waiting until Redis has loaded its data"),
        "the worker never saw Redis loading (too fast a machine?):\n{log}"
    );
    let mut con = redis.con();
    let id = rs_enqueue(&mut con, "q", "rq.builtin.noop", json!([]));
    wait_status(&mut con, &id, &["finished"]);
    assert!(w.child.try_wait().unwrap().is_none(), "{log}");
}

/// How soon after Redis answers a waiting fleet must be back: the workers' reconnect backoff
/// is capped at 1 s (jittered), so 2 s leaves a loaded machine a second of slack.
const BACK_WITHIN: Duration = Duration::from_secs(2);

/// Lines of the pool's workers (relayed as `[main/NAME]`) that contain `text`.
fn worker_lines(log: &str, text: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("[main/") && l.contains(text))
        .count()
}

/// Nothing in the supervisor's log says a worker exited or the pool backed off.
fn assert_no_crash_loop(log: &str) {
    for sign in [
        "DEGRADED",
        "exited with",
        "restart in",
        "cannot start a worker",
    ] {
        assert!(!log.contains(sign), "{sign:?} in the log:\n{log}");
    }
}

#[test]
fn a_supervisor_started_before_its_redis_has_its_workers_back_within_2_s_of_it_answering() {
    let mut redis = RedisServer::start_with(DURABLE);
    redis.stop();
    let pool = PoolFile::new(
        "[worker]\nbuiltin_handlers = true\n[pools.main]\nqueues = [\"q\"]\nworkers = 3\n",
    );
    let sup = Supervisor::new(&redis, &pool).spawn();
    wait_until("every worker waiting for Redis", WAIT, || {
        worker_lines(&sup.log(), "waiting for Redis") >= 3
    });
    // Long enough for a crash loop to show: the restart backoff starts at 0.1 s.
    std::thread::sleep(Duration::from_secs(3));
    assert_no_crash_loop(&sup.log());
    redis.restart();
    let answered = Instant::now();
    let mut con = redis.con();
    wait_until("3 registered workers", BACK_WITHIN, || {
        workers(&mut con).len() == 3
    });
    eprintln!(
        "3 workers registered {:?} after Redis answered",
        answered.elapsed()
    );
    let id = rs_enqueue(&mut con, "q", "rq.builtin.noop", json!([]));
    wait_status(&mut con, &id, &["finished"]);
    let log = sup.log();
    assert_no_crash_loop(&log);
    assert_eq!(
        worker_lines(&log, "waiting for Redis"),
        3,
        "said once each:\n{log}"
    );
}

#[test]
fn after_an_outage_mid_run_every_worker_takes_jobs_within_2_s_of_redis_answering() {
    let mut redis = RedisServer::start_with(DURABLE);
    let pool = PoolFile::new(
        "[worker]\nbuiltin_handlers = true\n[pools.main]\nqueues = [\"q\"]\nworkers = 3\n",
    );
    let sup = Supervisor::new(&redis, &pool).spawn();
    let mut con = redis.con();
    let before = wait_workers(&mut con, 3);
    for (name, _) in &before {
        wait_worker_state(&mut con, name, "idle");
    }
    drop(con);
    redis.stop();
    // An outage of some seconds, as in an operator's Redis restart.
    std::thread::sleep(Duration::from_secs(3));
    redis.restart();
    let answered = Instant::now();
    let mut con = redis.con();
    // Three jobs that each hold a worker: all three started means all three are back.
    let ids: Vec<String> = (0..3)
        .map(|_| rs_enqueue(&mut con, "q", "rq.builtin.sleep", json!([30])))
        .collect();
    wait_until("every worker to take a job", BACK_WITHIN, || {
        ids.iter()
            .all(|id| job_status(&mut con, id).as_deref() == Some("started"))
    });
    eprintln!(
        "3 workers busy {:?} after Redis answered",
        answered.elapsed()
    );
    let log = sup.log();
    assert_no_crash_loop(&log);
    let now = workers(&mut con);
    assert_eq!(now, before, "the same workers, none replaced:\n{log}");
}
