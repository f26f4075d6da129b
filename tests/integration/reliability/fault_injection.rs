//! No loss window in a job's life: a worker built with `--features fault-injection` kills
//! itself (SIGKILL) at each named point (`src/fault.rs`), listening on one queue and on
//! several, and the job is still settled:
//!
//! - under rq-supervisor, at once by its crash cleanup: failed with a message naming the worker
//!   and how it died, or retried when it has retries left (and then run by the replacement);
//! - for a standalone worker, by RQ's abandoned-job cleanup (a second worker's maintenance)
//!   once the job's `rq:wip` score expires.
//!
//! There is no point between "popped" and "started": the CLAIM script does both in one atomic
//! step, so `after-claim` is the earliest place a worker can die holding a job.
//!
//! Two more points make the worker lose the reply of a script Redis did run (as a connection
//! breaking at that moment would): repeating a claim returns the same job, repeating a settle
//! changes nothing.
//!
//! Each dying-point test covers one point and runs its four variants at once (each with its own
//! redis-server), because the standalone ones wait out RQ's heartbeat TTL (interval + 60 s).

use std::path::Path;
use std::time::Duration;

use crate::support::supervisor::*;
use crate::support::*;
use rq_supervisor::procfs;

const ONE_QUEUE: &[&str] = &["q"];
const SEVERAL_QUEUES: &[&str] = &["high", "default", "low"];
/// RQ's abandoned-job cleanup needs the wip score (claim + interval + 60 s) to pass.
const ABANDONED_WAIT: Duration = Duration::from_secs(180);

/// What the point means for a job the worker held when it died.
fn settled_before_death(point: &str) -> bool {
    point == "after-settle"
}

/// Arms the fault (the next worker to reach the point dies) and waits until it fired.
fn arm(file: &Path) {
    std::fs::write(file, "").expect("arm the fault");
}

fn wait_fired(file: &Path, what: &str) {
    wait_until(&format!("the fault to fire ({what})"), WAIT, || {
        !file.exists()
    });
}

fn retry_once(redis: &RedisServer, queue: &str, arg: &str) -> String {
    py_enqueue(
        redis,
        queue,
        "rq.builtin.echo",
        &format!("[\"{arg}\"]"),
        "{}",
        r#"{"retry": {"max": 1}}"#,
    )
}

fn no_retry(redis: &RedisServer, queue: &str, arg: &str) -> String {
    py_enqueue_args(redis, queue, "rq.builtin.echo", &format!("[\"{arg}\"]"))
}

/// Nothing is left queued, started or in RQ's intermediate lists on any of `queues`.
fn assert_nothing_in_flight(con: &mut redis::Connection, queues: &[&str]) {
    for q in queues {
        assert!(zrange(con, &format!("rq:wip:{q}")).is_empty(), "rq:wip:{q}");
        assert!(!exists(con, &format!("rq:queue:{q}")), "rq:queue:{q}");
        assert!(
            !exists(con, &format!("rq:queue:{q}:intermediate")),
            "rq:queue:{q}:intermediate"
        );
    }
}

/// The job's result entries (RQ writes none for a retried failure).
fn result_count(con: &mut redis::Connection, id: &str) -> usize {
    results(con, id).len()
}

fn supervised(point: &str, queues: &[&str]) {
    let redis = RedisServer::start();
    let list = queues
        .iter()
        .map(|q| format!("\"{q}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let pool = PoolFile::new(&format!(
        r#"
[supervisor]
health_interval = "1s"
[worker]
builtin_handlers = true
[pools.main]
queues = [{list}]
[pools.main.restart]
backoff_initial = "10ms"
backoff_max = "100ms"
failure_threshold = 1000
"#
    ));
    let armed = pool.dir.path().join("armed");
    let sup = Supervisor::new(&redis, &pool)
        .env("RQ_FAULT", point)
        .env("RQ_FAULT_FILE", &armed)
        .spawn();
    let mut con = redis.con();
    // The lowest-priority queue: the claim walks every queue before it.
    let queue = *queues.last().unwrap();
    let ctx = format!("{point}, supervised, queues {queues:?}");

    // 1. No retries: settled as failed at once, naming the worker and how it died.
    let (first, first_pid) = wait_workers(&mut con, 1)[0].clone();
    arm(&armed);
    let a = no_retry(&redis, queue, "a");
    wait_fired(&armed, &ctx);
    let want = if settled_before_death(point) {
        "finished"
    } else {
        "failed"
    };
    wait_status(&mut con, &a, &[want]);
    if settled_before_death(point) {
        assert_eq!(latest_return(&mut con, &a), Some(serde_json::json!(["a"])));
    } else {
        let exc = latest_exc(&mut con, &a);
        assert_eq!(
            exc,
            format!(
                "WorkerDied: worker {first} was killed by signal 9 (SIGKILL) while running this job; rq-supervisor settled it\n"
            ),
            "{ctx}"
        );
        assert!(zscore(&mut con, &format!("rq:failed:{queue}"), &a).is_some());
    }
    assert_eq!(result_count(&mut con, &a), 1, "{ctx}");
    sup.wait_for_log(&format!("[main/{first}] supervisor: crash cleanup done"));
    let cleanup_line = lines_with(&sup.log(), "crash cleanup done")
        .into_iter()
        .find(|l| l.contains(&first))
        .unwrap()
        .to_string();
    if settled_before_death(point) {
        assert!(
            cleanup_line.contains("it had no job in flight"),
            "{ctx}: {cleanup_line}"
        );
    } else {
        assert!(
            cleanup_line.contains(&format!("its job {a} was settled: failed")),
            "{ctx}: {cleanup_line}"
        );
    }

    // 2. One retry left: requeued by the cleanup and run by the replacement.
    let mut second = (String::new(), 0);
    wait_until("a replacement worker", WAIT, || {
        let w = workers(&mut con);
        if w.len() == 1 && w[0].0 != first {
            second = w[0].clone();
            true
        } else {
            false
        }
    });
    arm(&armed);
    let b = retry_once(&redis, queue, "b");
    wait_fired(&armed, &ctx);
    wait_status(&mut con, &b, &["finished"]);
    assert_eq!(latest_return(&mut con, &b), Some(serde_json::json!(["b"])));
    assert_eq!(result_count(&mut con, &b), 1, "{ctx}");
    let retries_left = hget(&mut con, &format!("rq:job:{b}"), "retries_left");
    sup.wait_for_log(&format!(
        "[main/{}] supervisor: crash cleanup done",
        second.0
    ));
    if settled_before_death(point) {
        assert_eq!(retries_left.as_deref(), Some("1"), "{ctx}");
    } else {
        assert_eq!(retries_left.as_deref(), Some("0"), "{ctx}");
        let log = sup.log();
        assert!(
            log.contains(&format!("its job {b} was settled: requeued")),
            "{ctx}: {log}"
        );
        // The replacement of the replacement ran it.
        let ran_by = hget(&mut con, &format!("rq:job:{b}"), "worker_name").unwrap();
        assert!(
            ran_by != first && ran_by != second.0,
            "{ctx}: ran by {ran_by}"
        );
    }

    // Afterwards: nothing in flight, one live worker registered, the dead ones' deaths
    // recorded, and no process left over besides the live worker.
    assert_nothing_in_flight(&mut con, queues);
    let live = wait_workers(&mut con, 1)[0].clone();
    for dead in [&first, &second.0] {
        assert!(
            hget(&mut con, &format!("rq:worker:{dead}"), "death").is_some(),
            "{ctx}: {dead}"
        );
    }
    assert!(!alive(first_pid) && !alive(second.1), "{ctx}");
    wait_until("only the live worker under the supervisor", WAIT, || {
        procfs::children(sup.child.id()) == vec![live.1]
    });
    assert!(alive(sup.pid()), "{ctx}: the supervisor exited");
}

fn standalone(point: &str, queues: &[&str]) {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let mut con = redis.con();
    let queue = *queues.last().unwrap();
    let ctx = format!("{point}, standalone, queues {queues:?}");
    let faulty = |name: &str, armed: &Path| {
        Rqworker::new(&redis)
            .builtin_handlers()
            .name(name)
            .opt("--job-monitoring-interval", "1")
            .queues(queues)
            .env("RQ_FAULT", point)
            .env("RQ_FAULT_FILE", armed)
            .spawn()
    };
    // Two faulty workers in turn: one dies holding a job without retries, one holding a job
    // with a retry left.
    let mut jobs = Vec::new();
    for (name, retry) in [("dies-1", false), ("dies-2", true)] {
        let armed = dir.path().join(name);
        arm(&armed);
        let mut w = faulty(name, &armed);
        w.wait_for_log("Listening for work");
        let id = if retry {
            retry_once(&redis, queue, name)
        } else {
            no_retry(&redis, queue, name)
        };
        let status = w.wait_exit(WAIT);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{ctx}: {}",
            w.log()
        );
        let expected = if settled_before_death(point) {
            "finished"
        } else {
            "started"
        };
        assert_eq!(
            job_status(&mut con, &id).as_deref(),
            Some(expected),
            "{ctx}"
        );
        jobs.push(id);
    }
    let (a, b) = (jobs[0].clone(), jobs[1].clone());
    if !settled_before_death(point) {
        for id in [&a, &b] {
            let members = zrange(&mut con, &format!("rq:wip:{queue}"));
            assert!(
                members.iter().any(|m| m.starts_with(&format!("{id}:"))),
                "{ctx}: {id} is not in rq:wip:{queue}: {members:?}"
            );
        }
    }
    // A healthy worker's maintenance settles what the dead ones held, once the wip scores
    // expire.
    let cleaner = Rqworker::new(&redis)
        .builtin_handlers()
        .name("cleaner")
        .opt("--maintenance-interval", "1")
        .queues(queues)
        .spawn();
    cleaner.wait_for_log("Listening for work");
    let done = |con: &mut redis::Connection| {
        job_status(con, &a).as_deref()
            == Some(if settled_before_death(point) {
                "finished"
            } else {
                "failed"
            })
            && job_status(con, &b).as_deref() == Some("finished")
    };
    wait_until(
        &format!("{ctx}: the abandoned jobs to be settled"),
        ABANDONED_WAIT,
        || done(&mut con),
    );
    if settled_before_death(point) {
        // Nothing was abandoned; give maintenance a few passes to prove it changes nothing.
        std::thread::sleep(Duration::from_secs(2));
        assert!(done(&mut con), "{ctx}");
        assert_eq!(
            latest_return(&mut con, &a),
            Some(serde_json::json!(["dies-1"]))
        );
        assert_eq!(
            hget(&mut con, &format!("rq:job:{b}"), "retries_left").as_deref(),
            Some("1")
        );
    } else {
        let exc = latest_exc(&mut con, &a);
        assert!(
            exc.starts_with("Moved to FailedJobRegistry, due to AbandonedJobError, at "),
            "{ctx}: {exc}"
        );
        assert!(zscore(&mut con, &format!("rq:failed:{queue}"), &a).is_some());
        // The retry ran on the healthy worker.
        assert_eq!(
            hget(&mut con, &format!("rq:job:{b}"), "worker_name").as_deref(),
            Some("cleaner")
        );
        assert_eq!(
            hget(&mut con, &format!("rq:job:{b}"), "retries_left").as_deref(),
            Some("0")
        );
    }
    assert_eq!(
        latest_return(&mut con, &b),
        Some(serde_json::json!(["dies-2"]))
    );
    assert_eq!(result_count(&mut con, &a), 1, "{ctx}");
    assert_eq!(result_count(&mut con, &b), 1, "{ctx}");
    assert_nothing_in_flight(&mut con, queues);
    assert!(alive(cleaner.pid()), "{ctx}");
}

/// Runs the four variants of one point concurrently; any failure fails the test.
fn all_variants(point: &str) {
    std::thread::scope(|s| {
        let handles = [
            s.spawn(|| supervised(point, ONE_QUEUE)),
            s.spawn(|| supervised(point, SEVERAL_QUEUES)),
            s.spawn(|| standalone(point, ONE_QUEUE)),
            s.spawn(|| standalone(point, SEVERAL_QUEUES)),
        ];
        let failed = handles
            .into_iter()
            .map(|h| h.join())
            .filter(Result::is_err)
            .count();
        assert_eq!(
            failed, 0,
            "{failed} variant(s) of {point} failed (see above)"
        );
    });
}

#[test]
fn a_worker_dying_right_after_its_claim_loses_no_job() {
    all_variants("after-claim");
}

#[test]
fn a_worker_dying_right_after_forking_the_horse_loses_no_job() {
    all_variants("after-fork");
}

#[test]
fn a_worker_dying_after_the_horse_exited_but_before_writing_the_result_loses_no_job() {
    all_variants("after-horse-exit");
}

#[test]
fn a_worker_dying_right_after_writing_the_result_neither_loses_nor_repeats_the_job() {
    all_variants("after-settle");
}

/// A worker with `RQ_FAULT=<point>` armed by a file, on `queues`, with built-in handlers.
fn worker_losing(redis: &RedisServer, point: &str, armed: &Path, queues: &[&str]) -> Proc {
    let w = Rqworker::new(redis)
        .builtin_handlers()
        .name("w")
        .queues(queues)
        .env("RQ_FAULT", point)
        .env("RQ_FAULT_FILE", armed)
        .spawn();
    w.wait_for_log("Listening for work");
    w
}

fn got_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("] Got ")).collect()
}

#[test]
fn a_claim_whose_reply_is_lost_gets_the_same_job_back() {
    // Redis ran the claim (the job is started under the worker's execution id) but the reply
    // never arrived; the retry must return that job, not take the next one and leave it
    // started with nobody running it.
    for queues in [ONE_QUEUE, &["high", "default", "low"][..]] {
        let redis = RedisServer::start();
        let dir = temp_dir();
        let armed = dir.path().join("armed");
        arm(&armed);
        let w = worker_losing(&redis, "lose-claim-reply", &armed, queues);
        let (q1, q2) = if queues.len() == 1 {
            ("q", "q")
        } else {
            ("default", "low")
        };
        let mut con = redis.con();
        let first = rs_enqueue(
            &mut con,
            q1,
            "rq.builtin.echo",
            serde_json::json!(["first"]),
        );
        let second = rs_enqueue(
            &mut con,
            q2,
            "rq.builtin.echo",
            serde_json::json!(["second"]),
        );
        wait_fired(&armed, "lose-claim-reply");
        for id in [&first, &second] {
            wait_status(&mut con, id, &["finished"]);
            assert_eq!(result_count(&mut con, id), 1, "{queues:?}");
        }
        let log = w.log();
        assert!(log.contains("cannot take a job"), "{log}");
        let got = got_lines(&log);
        assert_eq!(got.len(), 2, "{log}");
        assert!(
            got[0].contains("first"),
            "the lost claim's job runs first: {log}"
        );
        assert_nothing_in_flight(&mut con, queues);
    }
}

#[test]
fn a_settle_whose_reply_is_lost_is_repeated_without_effect() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let armed = dir.path().join("armed");
    let w = worker_losing(&redis, "lose-settle-reply", &armed, ONE_QUEUE);
    let mut con = redis.con();

    // A job that finishes: one result, counted once.
    arm(&armed);
    let done = rs_enqueue(
        &mut con,
        "q",
        "rq.builtin.echo",
        serde_json::json!(["done"]),
    );
    wait_fired(&armed, "lose-settle-reply");
    wait_status(&mut con, &done, &["finished"]);
    w.wait_for_log(&format!("job {done} was already settled"));
    assert_eq!(result_count(&mut con, &done), 1);
    assert_eq!(
        hget(&mut con, "rq:worker:w", "successful_job_count").as_deref(),
        Some("1")
    );

    // A failure with a retry left: requeued once, not twice, so it runs exactly twice.
    arm(&armed);
    let opts = rq_supervisor::producer::EnqueueOptions {
        retry: Some((1, vec![])),
        ..Default::default()
    };
    let flaky = rs_enqueue_with(
        &mut con,
        "q",
        "rq.builtin.fail",
        serde_json::json!([]),
        &opts,
    );
    wait_fired(&armed, "lose-settle-reply");
    wait_status(&mut con, &flaky, &["failed"]);
    // Give a doubled queue entry the time to show up as a third run.
    let probe = rs_enqueue(&mut con, "q", "rq.builtin.noop", serde_json::json!([]));
    wait_status(&mut con, &probe, &["finished"]);
    let log = w.log();
    let runs = got_lines(&log)
        .iter()
        .filter(|l| l.contains("rq.builtin.fail"))
        .count();
    assert_eq!(runs, 2, "{log}");
    assert_eq!(result_count(&mut con, &flaky), 1);
    assert_eq!(
        hget(&mut con, &format!("rq:job:{flaky}"), "retries_left").as_deref(),
        Some("0")
    );
    assert_nothing_in_flight(&mut con, ONE_QUEUE);
}
