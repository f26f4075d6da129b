//! The RQ contract (issue #3): what Python RQ 2.12 does, checked against our worker through
//! the Python driver `tests/py/rq_contract.py` and RQ's own CLI and workers. The helpers here
//! are this area's: the driver's commands, a temp dir for configs and task modules, and short
//! Redis readers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

mod commands;
mod dependents;
mod maintenance;
mod mixed;
mod options;
mod retries;
mod scheduler;
mod suspension;

/// Runs `rq_contract.py CMD ARGS...` and parses its JSON output (the last line: RQ may log
/// to stdout before it).
pub fn rc(redis: &RedisServer, args: &[&str]) -> Value {
    let out = python(redis, "rq_contract.py", args);
    let last = out.trim().lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// `Queue(queue).enqueue_call(func, args, **opts)` with the JSON serializer; returns the id.
pub fn enqueue(redis: &RedisServer, queue: &str, func: &str, args: &str, opts: &str) -> String {
    rc(redis, &["enqueue", queue, func, args, opts])
        .as_str()
        .expect("job id")
        .to_string()
}

/// What Python reads back about a job: status, retries_left, results (newest first)...
pub fn job(redis: &RedisServer, id: &str) -> Value {
    rc(redis, &["job", id])
}

pub fn jobs(redis: &RedisServer, ids: &[String]) -> Vec<Value> {
    let mut args = vec!["jobs"];
    args.extend(ids.iter().map(String::as_str));
    match rc(redis, &args) {
        Value::Array(v) => v,
        other => panic!("jobs: {other}"),
    }
}

pub fn ids_of(v: Value) -> Vec<String> {
    v.as_array()
        .expect("list of ids")
        .iter()
        .map(|i| i.as_str().expect("id").to_string())
        .collect()
}

/// A temp dir holding test files (configs, Python modules, execution logs).
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::Builder::new()
                .prefix("rqs-contract-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write scratch file");
        p
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

/// Lines of an execution log written by the test handlers (`<job id> <who>` per run).
pub fn runs(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

pub fn zscore_f64(con: &mut redis::Connection, key: &str, member: &str) -> Option<f64> {
    redis::cmd("ZSCORE")
        .arg(key)
        .arg(member)
        .query(con)
        .expect("ZSCORE")
}

pub fn xlen(con: &mut redis::Connection, key: &str) -> usize {
    redis::cmd("XLEN").arg(key).query(con).expect("XLEN")
}

/// Redis' clock, which every score and TTL here is relative to.
pub fn redis_now(con: &mut redis::Connection) -> f64 {
    let (s, us): (String, String) = redis::cmd("TIME").query(con).expect("TIME");
    s.parse::<f64>().unwrap() + us.parse::<f64>().unwrap() / 1e6
}

/// Positions of the `Got ...` lines of a worker log, in order, as the queue names they name.
pub fn got_from(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split(" from ").last().filter(|_| l.contains("Got ")))
        .map(|q| q.trim().to_string())
        .collect()
}

/// Exit status with the log on failure.
pub fn assert_exit_ok(p: &mut Proc, limit: Duration) {
    let status = p.wait_exit(limit);
    assert!(status.success(), "exit {status:?}; log:\n{}", p.log());
}

/// A long enough bound for a few Python process start-ups on a loaded machine.
pub const SLOW: Duration = Duration::from_secs(60);

/// A config whose `tasks.gate` handler runs until the file named by its argument exists:
/// a job that is certainly still running when a slow (Python) command reaches the worker.
pub fn gate_config(scratch: &Scratch) -> String {
    scratch
        .write(
            "gate.toml",
            r#"
[handlers."tasks.gate"]
command = ["/bin/sh", "-c", "while [ ! -e \"$1\" ]; do sleep 0.02; done", "sh"]
"#,
        )
        .to_str()
        .unwrap()
        .to_string()
}

/// Enqueues a `tasks.gate` job held by `scratch/<name>`; returns (job id, gate path).
pub fn enqueue_gate(
    redis: &RedisServer,
    scratch: &Scratch,
    queue: &str,
    name: &str,
) -> (String, PathBuf) {
    let gate = scratch.path(name);
    let args = serde_json::json!([gate.to_str().unwrap()]).to_string();
    (enqueue(redis, queue, "tasks.gate", &args, "{}"), gate)
}

pub fn open_gate(gate: &Path) {
    std::fs::write(gate, b"").expect("open gate");
}

/// Asserts that a registry score is RQ's `int(now) + secs` for a `now` between `before` and
/// `after` (Redis times read around the action), whatever the machine's load.
pub fn assert_due_in(score: f64, before: f64, after: f64, secs: f64) {
    assert_eq!(score.fract(), 0.0, "RQ scores are integer seconds: {score}");
    assert!(
        score >= before.floor() + secs && score <= after + secs,
        "score {score} is not int(now) + {secs} for now in [{before}, {after}]"
    );
}
