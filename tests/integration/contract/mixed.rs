//! Mixed fleets: Python RQ 2.12 workers (JSON serializer, a `tasks` module on their path) and
//! `rqworker`s (command handlers with the same function names) on the same queues never run a
//! job twice, never lose one, share retries, never fail each other's live jobs as abandoned
//! (with `rq info` and both kinds' maintenance running throughout), and move scheduled jobs
//! exactly once whichever kind's scheduler holds the lock.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::contract::*;
use nix::sys::signal::Signal;
use serde_json::json;

/// A temp dir with `tasks.py` for Python workers and `rq.toml` for ours, both appending
/// `<job id> python|rust` to `runs.log` at each execution.
struct Fleet {
    scratch: Scratch,
    config: String,
}

impl Fleet {
    fn new() -> Fleet {
        let scratch = Scratch::new();
        let log = scratch.path("runs.log");
        let log = log.to_str().unwrap();
        scratch.write(
            "tasks.py",
            &format!(
                r#"import time
from rq import get_current_job

def _record():
    with open({log:?}, "a") as f:
        f.write(get_current_job().id + " python\n")

def square(x):
    _record()
    return x * x

def slow(secs):
    _record()
    time.sleep(secs)
    return secs

def fail():
    _record()
    raise ValueError("boom from python")
"#
            ),
        );
        let record = format!(r#"echo \"$RQ_JOB_ID rust\" >> '{log}'"#);
        let config = scratch.write(
            "rq.toml",
            &format!(
                r#"
[handlers."tasks.square"]
command = ["/bin/sh", "-c", "{record}; sleep 0.01; echo $(($1 * $1))", "sh"]

[handlers."tasks.slow"]
command = ["/bin/sh", "-c", "{record}; sleep $1; echo $1", "sh"]

[handlers."tasks.fail"]
command = ["/bin/sh", "-c", "{record}; echo boom from rust >&2; exit 1", "sh"]
"#
            ),
        );
        Fleet {
            config: config.to_str().unwrap().to_string(),
            scratch,
        }
    }

    fn ours(&self, redis: &RedisServer, name: &str, extra: &[&str], queues: &[&str]) -> Proc {
        let worker = Rqworker::new(redis).config(&self.config).name(name);
        extra
            .iter()
            .fold(worker, |w, arg| w.arg(arg))
            .queues(queues)
            .spawn()
    }

    fn python(&self, redis: &RedisServer, name: &str, extra: &[&str], queues: &[&str]) -> Proc {
        let mut args = vec!["--name", name];
        args.extend_from_slice(extra);
        args.extend_from_slice(queues);
        python_worker(redis, self.scratch.dir.path(), &args)
    }

    /// job id -> who ran it, once per execution.
    fn runs(&self) -> BTreeMap<String, Vec<String>> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, who) in runs(&self.scratch.read("runs.log")) {
            m.entry(id).or_default().push(who);
        }
        m
    }
}

fn wait_workers_idle(con: &mut redis::Connection, names: &[&str]) {
    for n in names {
        wait_worker_state_within(con, n, "idle", SLOW);
    }
}

fn stop_all(ws: &mut [Proc]) {
    for w in ws.iter() {
        w.signal(Signal::SIGTERM);
    }
    for w in ws.iter_mut() {
        let st = w.wait_exit(SLOW);
        assert!(st.success(), "{st:?}\n{}", w.log());
    }
}

fn square_batch(redis: &RedisServer, queue: &str, from: i64, n: i64) -> Vec<String> {
    let specs: Vec<_> = (from..from + n)
        .map(|i| json!({"func": "tasks.square", "args": [i]}))
        .collect();
    ids_of(rc(
        redis,
        &["enqueue_batch", queue, &json!(specs).to_string()],
    ))
}

#[test]
fn python_and_rust_workers_share_queues_without_running_a_job_twice_or_losing_one() {
    let redis = RedisServer::start();
    let fleet = Fleet::new();
    let mut con = redis.con();
    // Python: one single-queue worker (BLMOVE through the intermediate list) and one
    // multi-queue worker (BLPOP); ours: two multi-queue workers in both priority orders.
    let mut ws = vec![
        fleet.python(&redis, "py1", &[], &["q1"]),
        fleet.python(&redis, "py2", &[], &["q1", "q2"]),
        fleet.ours(
            &redis,
            "rs1",
            &["--maintenance-interval", "1"],
            &["q1", "q2"],
        ),
        fleet.ours(
            &redis,
            "rs2",
            &["--maintenance-interval", "1"],
            &["q2", "q1"],
        ),
    ];
    wait_workers_idle(&mut con, &["py1", "py2", "rs1", "rs2"]);

    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for (q, from) in [("q1", 0), ("q2", 1000)] {
        for (i, id) in square_batch(&redis, q, from, 150).into_iter().enumerate() {
            expected.insert(id, from + i as i64);
        }
    }
    // Failing jobs with retries bounce between both kinds of worker.
    let specs: Vec<_> = (0..6)
        .map(|_| json!({"func": "tasks.fail", "opts": {"retry": {"max": 3}}}))
        .collect();
    let failing = ids_of(rc(
        &redis,
        &["enqueue_batch", "q1", &json!(specs).to_string()],
    ));

    let all: Vec<String> = expected.keys().cloned().chain(failing.clone()).collect();
    wait_until("every job settled", SLOW, || {
        all.iter().all(|id| {
            matches!(
                job_status(&mut con, id).as_deref(),
                Some("finished") | Some("failed")
            )
        })
    });
    stop_all(&mut ws);

    let runs = fleet.runs();
    for (id, want) in &expected {
        let who = runs.get(id).cloned().unwrap_or_default();
        assert_eq!(who.len(), 1, "job {id} ran {who:?}");
        assert_eq!(
            job_status(&mut con, id).as_deref(),
            Some("finished"),
            "{id}"
        );
        assert_eq!(
            xlen(&mut con, &format!("rq:results:{id}")),
            1,
            "{id} (= {want}²)"
        );
    }
    eprintln!(
        "runs by kind: python {}, rust {}",
        runs.values().flatten().filter(|k| *k == "python").count(),
        runs.values().flatten().filter(|k| *k == "rust").count()
    );
    let kinds: HashSet<&str> = runs
        .values()
        .flat_map(|v| v.iter().map(String::as_str))
        .collect();
    assert!(
        kinds.contains("python") && kinds.contains("rust"),
        "both kinds must have run jobs: {kinds:?}"
    );
    // Spot-check return values through Python's reader.
    let sample: Vec<String> = expected.keys().step_by(25).cloned().collect();
    for doc in jobs(&redis, &sample) {
        let id = doc["id"].as_str().unwrap();
        let x = expected[id];
        assert_eq!(doc["return_value"], json!(x * x), "{doc}");
    }
    for id in &failing {
        let who = runs.get(id).cloned().unwrap_or_default();
        assert_eq!(who.len(), 4, "a run plus 3 retries for {id}: {who:?}");
        let doc = job(&redis, id);
        assert_eq!(doc["status"], "failed", "{doc}");
        assert_eq!(doc["retries_left"], 0, "{doc}");
        assert_eq!(doc["results"].as_array().unwrap().len(), 1, "{doc}");
    }
    for q in ["q1", "q2"] {
        assert_eq!(llen(&mut con, &format!("rq:queue:{q}")), 0);
        assert!(zrange(&mut con, &format!("rq:wip:{q}")).is_empty());
    }
    assert_eq!(llen(&mut con, "rq:queue:q1:intermediate"), 0);
    let failed = zrange(&mut con, "rq:failed:q1");
    assert_eq!(failed.len(), failing.len(), "{failed:?}");
    // Counters across both kinds add up to the executions.
    let (mut ok, mut ko) = (0i64, 0i64);
    for w in ["py1", "py2", "rs1", "rs2"] {
        let get = |con: &mut redis::Connection, f| {
            hget(con, &format!("rq:worker:{w}"), f)
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0)
        };
        ok += get(&mut con, "successful_job_count");
        ko += get(&mut con, "failed_job_count");
    }
    assert_eq!(ok, expected.len() as i64);
    assert_eq!(ko, 4 * failing.len() as i64);
}

#[test]
fn neither_kind_fails_the_others_live_jobs_as_abandoned() {
    let redis = RedisServer::start();
    let fleet = Fleet::new();
    let mut con = redis.con();
    let mut ws = vec![
        fleet.python(&redis, "py1", &["--maintenance-interval", "1"], &["q"]),
        fleet.python(&redis, "py2", &["--maintenance-interval", "1"], &["q"]),
        fleet.ours(
            &redis,
            "rs1",
            &[
                "--job-monitoring-interval",
                "1",
                "--maintenance-interval",
                "1",
            ],
            &["q"],
        ),
        fleet.ours(
            &redis,
            "rs2",
            &[
                "--job-monitoring-interval",
                "1",
                "--maintenance-interval",
                "1",
            ],
            &["q"],
        ),
    ];
    wait_workers_idle(&mut con, &["py1", "py2", "rs1", "rs2"]);
    // One long job per worker: each idle worker takes exactly one.
    let specs: Vec<_> = (0..4)
        .map(|_| json!({"func": "tasks.slow", "args": [10]}))
        .collect();
    let slow = ids_of(rc(
        &redis,
        &["enqueue_batch", "q", &json!(specs).to_string()],
    ));
    wait_until("all four long jobs started", SLOW, || {
        slow.iter()
            .all(|id| job_status(&mut con, id).as_deref() == Some("started"))
    });
    // Two more workers, one of each kind, stay idle-ish and clean registries between the
    // short jobs fed to them below.
    ws.push(fleet.python(&redis, "py3", &["--maintenance-interval", "1"], &["q"]));
    ws.push(fleet.ours(
        &redis,
        "rs3",
        &[
            "--job-monitoring-interval",
            "1",
            "--maintenance-interval",
            "1",
        ],
        &["q"],
    ));
    wait_workers_idle(&mut con, &["py3", "rs3"]);

    let mut infos = 0;
    let mut quick = Vec::new();
    let mut i = 0;
    let deadline = std::time::Instant::now() + SLOW;
    while slow
        .iter()
        .any(|id| job_status(&mut con, id).as_deref() == Some("started"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the long jobs still run after {SLOW:?}"
        );
        // `rq info` runs RQ's abandoned-job cleanup on every queue.
        rq_cli_ok(&redis, &["info"]);
        infos += 1;
        quick.extend(square_batch(&redis, "q", i, 2));
        i += 2;
        for id in &slow {
            let s = job_status(&mut con, id);
            assert!(
                matches!(s.as_deref(), Some("started") | Some("finished")),
                "long job {id} is {s:?}"
            );
        }
    }
    assert!(
        infos >= 2,
        "rq info ran only {infos} times during the long jobs"
    );
    wait_until("short jobs finished", SLOW, || {
        quick
            .iter()
            .all(|id| job_status(&mut con, id).as_deref() == Some("finished"))
    });
    stop_all(&mut ws);

    let runs = fleet.runs();
    let slow_kinds: Vec<&str> = slow
        .iter()
        .flat_map(|id| runs[id].iter().map(String::as_str))
        .collect();
    assert_eq!(
        slow_kinds.len(),
        4,
        "each long job ran once: {slow_kinds:?}"
    );
    assert_eq!(
        slow_kinds.iter().filter(|k| **k == "python").count(),
        2,
        "{slow_kinds:?}"
    );
    for id in &slow {
        let doc = job(&redis, id);
        assert_eq!(doc["status"], "finished", "{doc}");
        assert_eq!(doc["results"].as_array().unwrap().len(), 1, "{doc}");
        assert_eq!(doc["results"][0]["type"], "SUCCESSFUL", "{doc}");
    }
    assert!(zrange(&mut con, "rq:failed:q").is_empty());
}

#[test]
fn scheduled_jobs_run_once_whichever_kind_holds_the_scheduler_lock() {
    for python_first in [true, false] {
        let redis = RedisServer::start();
        let fleet = Fleet::new();
        let mut con = redis.con();
        let mut ws = Vec::new();
        let py = |ws: &mut Vec<Proc>, name: &str| {
            ws.push(fleet.python(&redis, name, &["--with-scheduler"], &["q"]));
        };
        let ours = |ws: &mut Vec<Proc>, name: &str| {
            ws.push(fleet.ours(&redis, name, &["--with-scheduler"], &["q"]));
        };
        if python_first {
            py(&mut ws, "py1");
            wait_until("Python's scheduler lock", SLOW, || {
                exists(&mut con, "rq:scheduler-lock:q")
            });
            ours(&mut ws, "rs1");
            ours(&mut ws, "rs2");
        } else {
            ours(&mut ws, "rs1");
            wait_until("our scheduler lock", SLOW, || {
                exists(&mut con, "rq:scheduler-lock:q")
            });
            py(&mut ws, "py1");
            ours(&mut ws, "rs2");
        }
        wait_workers_idle(&mut con, &["py1", "rs1", "rs2"]);
        let holder = get(&mut con, "rq:scheduler-lock:q").unwrap();
        let mut ids = ids_of(rc(
            &redis,
            &["enqueue_in_many", "q", "50", "1", "tasks.square"],
        ));
        ids.extend(ids_of(rc(
            &redis,
            &["enqueue_in_many", "q", "50", "2", "tasks.square"],
        )));
        wait_until("scheduled jobs finished", SLOW, || {
            ids.iter()
                .all(|id| job_status(&mut con, id).as_deref() == Some("finished"))
        });
        // A job moved twice would run again shortly after.
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(
            get(&mut con, "rq:scheduler-lock:q").as_deref(),
            Some(holder.as_str()),
            "the first scheduler kept the lock"
        );
        let ours_moved: usize = ws
            .iter()
            .map(|w| {
                w.log()
                    .lines()
                    .filter_map(|l| {
                        l.split(": enqueued ")
                            .nth(1)?
                            .split(' ')
                            .next()?
                            .parse::<usize>()
                            .ok()
                    })
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(
            ours_moved,
            if python_first { 0 } else { 100 },
            "python_first={python_first}"
        );
        stop_all(&mut ws);
        let runs = fleet.runs();
        for id in &ids {
            let who = runs.get(id).cloned().unwrap_or_default();
            assert_eq!(
                who.len(),
                1,
                "python_first={python_first}: job {id} ran {who:?}"
            );
        }
        assert_eq!(runs.len(), 100);
    }
}
