//! Helpers shared by the `rq_contract_*` tests (issue #3): the Python RQ driver
//! `tests/py/rq_contract.py`, the `rq` CLI, Python workers and schedulers as processes, a
//! temp dir with a config and a Python task module, and short Redis readers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
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

/// The `rq` command line (`rq suspend`, `rq info`...) against `redis`.
pub fn rq_cli_output(redis: &RedisServer, args: &[&str]) -> Output {
    rq_cli(args)
        .args(["-u", &redis.url()])
        .output()
        .expect("python3 with rq")
}

pub fn rq_cli_ok(redis: &RedisServer, args: &[&str]) -> String {
    stdout_of_success(&format!("rq {args:?}"), &rq_cli_output(redis, args))
}

/// A long-running `rq_contract.py` command (e.g. `scheduler`) as a killable process.
pub fn spawn_rc(redis: &RedisServer, args: &[&str]) -> Proc {
    let mut cmd = Command::new(python_bin());
    cmd.arg("-u")
        .arg(py_dir().join("rq_contract.py"))
        .args(args)
        .env("RQ_REDIS_URL", redis.url());
    Proc::spawn(cmd)
}

/// A Python RQ worker (`rq worker`, JSON serializer) with `dir` on its import path.
pub fn python_worker(redis: &RedisServer, dir: &Path, args: &[&str]) -> Proc {
    let mut cmd = Command::new(python_bin());
    cmd.args(["-c", "from rq.cli import main; main()", "worker"])
        .args(["-u", &redis.url()])
        .args(["--serializer", "rq.serializers.JSONSerializer"])
        .arg("-P")
        .arg(dir)
        .args(args)
        .env("PYTHONUNBUFFERED", "1");
    Proc::spawn(cmd)
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
