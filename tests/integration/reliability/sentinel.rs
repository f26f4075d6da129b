//! Redis Sentinel failover with real processes on loopback: a master, a replica and three
//! Sentinels (`support::sentinel`), workers under rq-supervisor with a `redis+sentinel://`
//! URL, and a Python app enqueueing through `redis.sentinel.Sentinel(...).master_for(...)`.
//! Each test fails without Sentinel support: the workers would stay on the old master (or,
//! without a URL they understand, not start).

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::sentinel::*;
use crate::support::supervisor::*;
use crate::support::*;

/// How long a failover may take here: Sentinel's down-after (1 s), its election, and the
/// old master's demotion (Redis 7 demotes a master that survived ~10 s after the promotion).
const FAILOVER_LIMIT: Duration = Duration::from_secs(60);

/// A pool file for `workers` workers on `default`, with the built-in handlers, against the
/// Sentinels of `set`.
fn pool_for(set: &SentinelSet, workers: usize) -> PoolFile {
    PoolFile::new(&format!(
        "[redis]\nurl = {}\n[worker]\nbuiltin_handlers = true\n[pools.main]\nqueues = [\"default\"]\nworkers = {workers}\n",
        toml_str(set.url())
    ))
}

fn ids(jobs: &[(String, Option<bool>)]) -> Vec<String> {
    jobs.iter().map(|(id, _)| id.clone()).collect()
}

fn statuses(con: &mut redis::Connection, ids: &[String]) -> Vec<Option<String>> {
    ids.iter().map(|id| job_status(con, id)).collect()
}

fn count(statuses: &[Option<String>], status: &str) -> usize {
    statuses
        .iter()
        .filter(|s| s.as_deref() == Some(status))
        .count()
}

/// Waits until every job in `ids` has a status in `done` on `con`'s Redis.
fn wait_all(
    con: &mut redis::Connection,
    ids: &[String],
    done: &[&str],
    limit: Duration,
    ctx: &dyn Fn() -> String,
) {
    let deadline = Instant::now() + limit;
    loop {
        let s = statuses(con, ids);
        if s.iter()
            .all(|s| s.as_deref().is_some_and(|s| done.contains(&s)))
        {
            return;
        }
        if Instant::now() >= deadline {
            let pending: Vec<_> = ids
                .iter()
                .zip(&s)
                .filter(|(_, s)| !s.as_deref().is_some_and(|s| done.contains(&s)))
                .collect();
            panic!(
                "timed out after {limit:?}: {} of {} jobs not {done:?}: {pending:?}\n{}",
                pending.len(),
                ids.len(),
                ctx()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Nothing stays started or queued, and both workers are registered (on this Redis).
fn assert_nothing_in_flight(
    con: &mut redis::Connection,
    names: &[String],
    ctx: &dyn Fn() -> String,
) {
    wait_until("rq:wip:default to empty", WAIT, || {
        zrange(con, "rq:wip:default").is_empty()
    });
    assert_eq!(llen(con, "rq:queue:default"), 0, "{}", ctx());
    let mut registered: Vec<String> = workers(con).into_iter().map(|(n, _)| n).collect();
    registered.sort();
    assert_eq!(
        registered,
        names,
        "the worker records are on this master\n{}",
        ctx()
    );
    for n in names {
        wait_worker_state(con, n, "idle");
    }
}

fn worker_names(con: &mut redis::Connection, n: usize) -> Vec<String> {
    let mut names: Vec<String> = wait_workers(con, n).into_iter().map(|(n, _)| n).collect();
    names.sort();
    names
}

/// Enqueues one no-op through the Sentinels (retrying while the failover settles) and
/// returns how long after `t0` it was first seen finished on node `master`.
fn first_job_after(
    set: &SentinelSet,
    master: usize,
    t0: Instant,
    ctx: &dyn Fn() -> String,
) -> (String, Duration) {
    let probe = sentinel_enqueue(
        set,
        "default",
        1,
        "rq.builtin.noop",
        "[]",
        &["--keep-going"],
    );
    let id = probe[0].0.clone();
    let mut con = set.nodes[master].con();
    wait_all(
        &mut con,
        std::slice::from_ref(&id),
        &["finished"],
        FAILOVER_LIMIT,
        ctx,
    );
    (id, t0.elapsed())
}

#[test]
fn a_sentinel_failover_mid_run_moves_the_workers_and_finishes_every_job() {
    let set = SentinelSet::start();
    let pool = pool_for(&set, 2);
    let sup = Supervisor::without_url(&pool).spawn();
    let ctx = || format!("{}\n{}", sup.log(), set.logs());
    let mut old = set.nodes[0].con();
    let names = worker_names(&mut old, 2);
    let before = ids(&sentinel_enqueue(
        &set,
        "default",
        40,
        "rq.builtin.sleep",
        "[0.05]",
        &[],
    ));
    wait_until("a few jobs to finish on the first master", WAIT, || {
        count(&statuses(&mut old, &before), "finished") >= 5
    });
    set.wait_in_sync(0);

    let t0 = Instant::now();
    set.failover();
    set.wait_master(1, FAILOVER_LIMIT);
    let (probe, took) = first_job_after(&set, 1, t0, &ctx);
    eprintln!(
        "sentinel failover: first job finished on the new master {took:.2?} after SENTINEL FAILOVER"
    );
    let after = ids(&sentinel_enqueue(
        &set,
        "default",
        20,
        "rq.builtin.sleep",
        "[0.01]",
        &[],
    ));

    let mut new = set.nodes[1].con();
    let mut every = [before, after, vec![probe]].concat();
    every.sort();
    wait_all(&mut new, &every, &["finished"], FAILOVER_LIMIT, &ctx);
    assert_nothing_in_flight(&mut new, &names, &ctx);
    let moved = lines_with(&sup.log(), "the Redis master moved to")
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>();
    eprintln!("{}", moved.join("\n"));
    let log = sup.log();
    let announced = lines_with(&log, "the Sentinels switched the master");
    for n in &names {
        assert!(
            moved.iter().any(|l| l.contains(n.as_str())),
            "worker {n} reconnected to the new master:\n{}",
            ctx()
        );
        // It left on the Sentinels' announcement, not when the old master cut it off.
        assert!(
            announced.iter().any(|l| l.contains(n.as_str())),
            "worker {n} acted on +switch-master:\n{}",
            ctx()
        );
    }
}

#[test]
fn a_killed_master_fails_over_and_no_acknowledged_job_is_lost() {
    let mut set = SentinelSet::start();
    let pool = pool_for(&set, 2);
    let sup = Supervisor::without_url(&pool).spawn();
    let mut old = set.nodes[0].con();
    let names = worker_names(&mut old, 2);
    let jobs = sentinel_enqueue(
        &set,
        "default",
        40,
        "rq.builtin.sleep",
        "[0.05]",
        &["--wait", "--retry", "2"],
    );
    // WAIT 1 returning 1: the replica had the job before the master died.
    assert!(
        jobs.iter().all(|(_, acked)| *acked == Some(true)),
        "{jobs:?}"
    );
    let acked = ids(&jobs);
    wait_until("a few jobs to finish before the kill", WAIT, || {
        count(&statuses(&mut old, &acked), "finished") >= 5
    });
    drop(old);

    let t0 = Instant::now();
    set.nodes[0].stop(); // SIGKILL
    let ctx = || format!("{}\n{}", sup.log(), set.logs());
    set.wait_master(1, FAILOVER_LIMIT);
    let (_, took) = first_job_after(&set, 1, t0, &ctx);
    eprintln!(
        "sentinel master killed: first job finished on the new master {took:.2?} after SIGKILL"
    );

    let mut new = set.nodes[1].con();
    // Finished, or failed with its retries used up; never started, queued or gone.
    wait_all(
        &mut new,
        &acked,
        &["finished", "failed"],
        Duration::from_secs(120),
        &ctx,
    );
    let s = statuses(&mut new, &acked);
    eprintln!(
        "sentinel master killed: {} acknowledged jobs, {} finished, {} failed, 0 lost",
        acked.len(),
        count(&s, "finished"),
        count(&s, "failed")
    );
    assert_nothing_in_flight(&mut new, &names, &ctx);
}

/// Stands in for a Sentinel that is down but whose port still accepts (and at once closes)
/// connections, so the test can count the workers' attempts to rediscover.
struct CountingPort {
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    port: u16,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CountingPort {
    fn bind(port: u16) -> CountingPort {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the Sentinel's port");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (Arc::clone(&accepted), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                drop(conn);
                a.fetch_add(1, Ordering::SeqCst);
            }
        });
        CountingPort {
            accepted,
            stop,
            port,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for CountingPort {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn with_every_sentinel_down_workers_keep_working_and_say_so_once() {
    let mut set = SentinelSet::start();
    let pool = pool_for(&set, 1);
    let sup = Supervisor::without_url(&pool).spawn();
    let mut master = set.nodes[0].con();
    let names = worker_names(&mut master, 1);
    // Registered is not yet settled in: the wake-up connection (subscribed on the master)
    // and the `+switch-master` subscription (on a Sentinel) are opened after registration,
    // and a Sentinel stopped before then would need a rediscovery this test says is not due.
    // Only workers subscribe on a Sentinel.
    let subscribed = |con: &mut redis::Connection| {
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(con)
            .unwrap_or_default();
        clients.lines().any(|l| l.contains(" cmd=subscribe "))
    };
    // (The Sentinels subscribe on the master too, to their hello channel: ask for ours.)
    wait_until("the worker's wake-up connection", WAIT, || {
        let n: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("__redis__:invalidate")
            .query(&mut master)
            .unwrap_or_default();
        n.first().is_some_and(|(_, n)| *n > 0)
    });
    wait_until("the worker's +switch-master subscription", WAIT, || {
        set.sentinels.iter().any(|s| subscribed(&mut s.con()))
    });
    let said = |log: &str| {
        lines_with(
            log,
            "cannot discover the Redis master \"mymaster\": no Sentinel answers",
        )
        .into_iter()
        .filter(|l| l.contains("[main/"))
        .count()
    };

    for s in &mut set.sentinels {
        s.stop();
    }
    // The worker keeps its connection: a job enqueued now still runs.
    let id = py_enqueue_args(&set.nodes[0], "default", "rq.builtin.noop", "[]");
    wait_status(&mut master, &id, &["finished"]);
    assert_eq!(
        said(&sup.log()),
        0,
        "no rediscovery was needed yet:\n{}",
        sup.log()
    );

    // Its connections are cut: it must rediscover, and cannot.
    let counting = CountingPort::bind(set.sentinels[0].port);
    for kind in ["normal", "pubsub"] {
        let _: redis::Value = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg(kind)
            .query(&mut set.nodes[0].con())
            .expect("CLIENT KILL");
    }
    // The test's own connection was cut too.
    let mut master = set.nodes[0].con();
    wait_until("the worker to say it cannot rediscover", WAIT, || {
        said(&sup.log()) >= 1
    });
    let line = lines_with(&sup.log(), "no Sentinel answers")
        .into_iter()
        .find(|l| l.contains("[main/"))
        .unwrap()
        .to_string();
    for s in &set.sentinels {
        assert!(
            line.contains(&format!("127.0.0.1:{}", s.port)),
            "every Sentinel is named: {line}"
        );
    }
    let queued = py_enqueue_args(&set.nodes[0], "default", "rq.builtin.noop", "[]");
    // Several more rounds of rediscovery, each through every Sentinel (the first one's
    // port counts them): said once, not once per round.
    let seen = counting.accepted();
    wait_until("the worker to retry its discovery", WAIT, || {
        counting.accepted() >= seen + 4
    });
    assert_eq!(said(&sup.log()), 1, "said once per streak:\n{}", sup.log());
    assert_eq!(job_status(&mut master, &queued).as_deref(), Some("queued"));

    drop(counting);
    for s in &mut set.sentinels {
        s.start();
    }
    wait_status_within(&mut master, &queued, &["finished"], FAILOVER_LIMIT);
    assert!(
        sup.log().contains("the Sentinels answer again"),
        "{}",
        sup.log()
    );
    assert_eq!(said(&sup.log()), 1, "{}", sup.log());
    assert_nothing_in_flight(&mut master, &names, &|| sup.log());
}

#[test]
fn check_and_rqworker_accept_sentinel_urls_and_name_what_is_wrong() {
    let pool = PoolFile::new(
        "[redis]\nurl = \"redis+sentinel://:s3cret@127.0.0.1:26379,127.0.0.1:26380/mymaster/0\"\n[pools.main]\nqueues = [\"default\"]\nworkers = 1\n",
    );
    let out = Supervisor::check(&pool).output();
    let text = stdout_of_success("rq-supervisor check", &out);
    assert!(
        text.contains("redis+sentinel://:***@127.0.0.1:26379,127.0.0.1:26380/mymaster/0"),
        "{text}"
    );
    assert!(
        text.contains("sentinel: master \"mymaster\" through 127.0.0.1:26379, 127.0.0.1:26380"),
        "{text}"
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("s3cret"));

    let bad = PoolFile::new(
        "[redis]\nurl = \"redis+sentinel://127.0.0.1:26379\"\n[pools.main]\nqueues = [\"q\"]\n",
    );
    let out = Supervisor::check(&bad).output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("[redis] url") && err.contains("names no master"),
        "{err}"
    );

    // `rqworker --url redis+sentinel://...` against real Sentinels: runs the job and exits.
    let set = SentinelSet::start();
    let id = py_enqueue_args(&set.nodes[0], "q", "rq.builtin.noop", "[]");
    let out = Rqworker::without_url()
        .opt("--url", set.url())
        .builtin_handlers()
        .burst()
        .queues(["q"])
        .output();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(
        job_status(&mut set.nodes[0].con(), &id).as_deref(),
        Some("finished"),
        "{log}"
    );

    let out = Rqworker::without_url()
        .opt("--url", "redis+sentinel://127.0.0.1:2637x/mymaster")
        .burst()
        .output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("invalid Sentinel URL") && err.contains("bad port"),
        "{err}"
    );
}

/// `rediss+sentinel://`: TLS to the Sentinels and to the master (and between them), with the
/// CA from `$RQ_REDIS_TLS_CA_FILE`: the worker finds the master, runs a job, follows a
/// failover (its wake-up and `+switch-master` connections over TLS too) and runs the next.
#[cfg(feature = "tls")]
#[test]
fn over_tls_the_worker_finds_the_master_and_follows_a_failover() {
    let dir = temp_dir();
    let certs = TlsCerts::generate(dir.path());
    let set = SentinelSet::start_tls(&certs);
    assert!(set.url().starts_with("rediss+sentinel://"), "{}", set.url());
    let w = Rqworker::at(set.url())
        .env("RQ_REDIS_TLS_CA_FILE", &certs.ca)
        .builtin_handlers()
        .name("tls-w")
        .queues(["default"])
        .spawn();
    let ctx = || format!("{}\n{}", w.log(), set.logs());
    let mut old = set.nodes[0].con();
    wait_worker_state(&mut old, "tls-w", "idle");
    let first = py_enqueue_args(&set.nodes[0], "default", "rq.builtin.noop", "[]");
    wait_all(&mut old, &[first], &["finished"], WAIT, &ctx);

    set.failover();
    set.wait_master(1, FAILOVER_LIMIT);
    let mut new = set.nodes[1].con();
    let second = py_enqueue_args(&set.nodes[1], "default", "rq.builtin.noop", "[]");
    wait_all(&mut new, &[second], &["finished"], FAILOVER_LIMIT, &ctx);
    assert!(
        w.log().contains("the Sentinels switched the master"),
        "the +switch-master subscription works over TLS:\n{}",
        ctx()
    );
    wait_worker_state(&mut new, "tls-w", "idle");
}

/// A Python job's own connection (`job.connection`, `save_meta()`) goes through the Sentinels
/// too: redis-py has no URL for them, so the worker hands it `Sentinel(...).master_for(...)`.
#[cfg(feature = "python")]
#[test]
fn a_python_job_uses_its_connection_through_the_sentinels() {
    let set = SentinelSet::start();
    let app = crate::python::App::new(&[(
        "tasks.py",
        "from rq import get_current_job\n\ndef mark():\n    job = get_current_job()\n    job.meta['seen'] = True\n    job.save_meta()\n    job.connection.set('seen-by-job', job.id)\n    return job.id\n",
    )]);
    let id = app.py(&set.nodes[0], "out = q.enqueue('tasks.mark').id");
    let id = id.as_str().expect("a job id").to_string();
    let mut w = Rqworker::at(set.url())
        .current_dir(app.path())
        .name("w")
        .burst()
        .queues(["q"])
        .spawn();
    let status = w.wait_exit(WAIT);
    assert!(status.success(), "rqworker exited {status:?}:\n{}", w.log());
    let mut con = set.nodes[0].con();
    assert_eq!(
        job_status(&mut con, &id).as_deref(),
        Some("finished"),
        "{}",
        w.log()
    );
    assert_eq!(get(&mut con, "seen-by-job").as_deref(), Some(id.as_str()));
}

/// Sentinels with a password of their own: `$RQ_REDIS_SENTINEL_PASSWORD` given to
/// rq-supervisor reaches its workers in the handoff descriptor, never in their environment
/// (which every horse would inherit), their command line or the log.
#[test]
fn the_sentinels_password_reaches_the_workers_in_the_handoff_only() {
    const SECRET: &str = "s3ntinel-secret";
    let set = SentinelSet::start_with_password(SECRET);
    let pool = pool_for(&set, 1);
    let sup = Supervisor::without_url(&pool)
        .env("RQ_REDIS_SENTINEL_PASSWORD", SECRET)
        .spawn();
    let mut con = set.nodes[0].con();
    // Registered: it found the master through Sentinels that require the password.
    let (_, pid) = wait_workers(&mut con, 1)[0].clone();
    let id = py_enqueue_args(&set.nodes[0], "default", "rq.builtin.noop", "[]");
    wait_status(&mut con, &id, &["finished"]);
    for what in ["environ", "cmdline"] {
        let bytes = std::fs::read(format!("/proc/{pid}/{what}")).expect("the worker's /proc");
        assert!(
            !String::from_utf8_lossy(&bytes).contains(SECRET),
            "the password is in the worker's {what}"
        );
    }
    assert!(!sup.log().contains(SECRET), "{}", sup.log());
}

/// A failover while a job runs: the worker hears `+switch-master` during the job, not after
/// it, so its heartbeats and the job's settle go to the new master at once.
#[test]
fn a_worker_busy_with_a_job_follows_the_switch_during_the_job() {
    let set = SentinelSet::start();
    let w = Rqworker::at(set.url())
        .builtin_handlers()
        .name("busy")
        .queues(["default"])
        .spawn();
    let ctx = || format!("{}\n{}", w.log(), set.logs());
    let mut old = set.nodes[0].con();
    wait_worker_state(&mut old, "busy", "idle");
    let id = py_enqueue_args(&set.nodes[0], "default", "rq.builtin.sleep", "[8]");
    wait_status(&mut old, &id, &["started"]);
    set.wait_in_sync(0);
    set.failover();
    set.wait_master(1, FAILOVER_LIMIT);
    wait_until("the worker to hear +switch-master", FAILOVER_LIMIT, || {
        w.log().contains("the Sentinels switched the master")
    });
    let mut new = set.nodes[1].con();
    assert_eq!(
        job_status(&mut new, &id).as_deref(),
        Some("started"),
        "heard while the job still ran:\n{}",
        ctx()
    );
    wait_all(&mut new, &[id], &["finished"], FAILOVER_LIMIT, &ctx);
    wait_worker_state(&mut new, "busy", "idle");
}
