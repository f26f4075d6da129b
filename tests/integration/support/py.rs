//! Python RQ 2.12, the one place the tests run it: the drivers in `tests/py/` (`rqtool.py`,
//! `rq_contract.py`, `chaos_producer.py`), RQ's own `rq` command line, and Python workers.
//! The interpreter is `$RQ_TEST_PYTHON` or `python3`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{Proc, RedisServer, stdout_of_success};

/// The Python interpreter the tests use (`$RQ_TEST_PYTHON` or `python3`).
pub fn python_bin() -> String {
    std::env::var("RQ_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// The absolute path of the Python interpreter, for `#!` lines of handler scripts (a handler
/// gets a minimal environment, so `/usr/bin/env python3` may not find a pyenv install).
pub fn python_exe() -> String {
    let out = Command::new(python_bin())
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The Python drivers' directory, `tests/py`.
fn py_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py")
}

/// Python with `RQ_REDIS_URL` pointing at `redis`; add `-c CODE` or a script.
pub fn python_cmd(redis: &RedisServer) -> Command {
    let mut cmd = Command::new(python_bin());
    cmd.env("RQ_REDIS_URL", redis.url());
    cmd
}

/// `python tests/py/<script>` against `redis`; add its arguments.
pub fn py_script(redis: &RedisServer, script: &str) -> Command {
    let mut cmd = python_cmd(redis);
    cmd.arg(py_dir().join(script));
    cmd
}

/// Runs `tests/py/<script> ARGS...` against `redis`; panics with its output if it fails.
/// Returns its stdout.
pub fn python(redis: &RedisServer, script: &str, args: &[&str]) -> String {
    let out = python_output(redis, script, args);
    stdout_of_success(&format!("python {script} {args:?}"), &out)
}

pub fn python_output(redis: &RedisServer, script: &str, args: &[&str]) -> Output {
    py_script(redis, script)
        .args(args)
        .output()
        .expect("python3 must be installed")
}

/// Runs `rqtool.py CMD ARGS...` and parses its JSON output.
pub fn py_json(redis: &RedisServer, args: &[&str]) -> serde_json::Value {
    let out = python(redis, "rqtool.py", args);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("rqtool {args:?}: {e}: {out}"))
}

/// Enqueues `func(*args, **kwargs)` with Python RQ and its JSONSerializer; returns the job id.
/// `opts` is a JSON object of `enqueue_call` options (`job_timeout`, `result_ttl`, `meta`...).
pub fn py_enqueue(
    redis: &RedisServer,
    queue: &str,
    func: &str,
    args: &str,
    kwargs: &str,
    opts: &str,
) -> String {
    let out = python(
        redis,
        "rqtool.py",
        &["enqueue", queue, func, args, kwargs, opts],
    );
    serde_json::from_str(out.trim()).expect("job id")
}

/// `py_enqueue` without kwargs or options.
pub fn py_enqueue_args(redis: &RedisServer, queue: &str, func: &str, args: &str) -> String {
    py_enqueue(redis, queue, func, args, "{}", "{}")
}

/// A long-running `rq_contract.py` command (e.g. `scheduler`) as a killable process.
pub fn spawn_rc(redis: &RedisServer, args: &[&str]) -> Proc {
    let mut cmd = py_script(redis, "rq_contract.py");
    cmd.args(args).env("PYTHONUNBUFFERED", "1");
    Proc::spawn(cmd)
}

/// A `Command` running Python RQ's own CLI (`rq info`, `rq worker`...).
pub fn rq_cli(args: &[&str]) -> Command {
    let mut cmd = Command::new(python_bin());
    cmd.args(["-c", "from rq.cli import main; main()"])
        .args(args);
    cmd
}

/// Runs `rq info --url URL ARGS...`; panics if it fails. Returns stdout.
pub fn rq_info(redis: &RedisServer, args: &[&str]) -> String {
    let url = redis.url();
    let mut all = vec!["info", "--url", url.as_str()];
    all.extend_from_slice(args);
    let out = rq_cli(&all).output().expect("python3");
    stdout_of_success("rq info", &out)
}

/// `rq ARGS... -u URL` (`rq suspend`, `rq info`...) against `redis`.
pub fn rq_cli_output(redis: &RedisServer, args: &[&str]) -> Output {
    rq_cli(args)
        .args(["-u", &redis.url()])
        .output()
        .expect("python3 with rq")
}

/// [`rq_cli_output`] that must succeed; returns stdout.
pub fn rq_cli_ok(redis: &RedisServer, args: &[&str]) -> String {
    stdout_of_success(&format!("rq {args:?}"), &rq_cli_output(redis, args))
}

/// A Python RQ worker (`rq worker`, JSON serializer) with `dir` on its import path; `args` are
/// its options and queues.
pub fn python_worker(redis: &RedisServer, dir: &Path, args: &[&str]) -> Proc {
    let mut cmd = rq_cli(&["worker"]);
    cmd.args(["-u", &redis.url()])
        .args(["--serializer", "rq.serializers.JSONSerializer"])
        .arg("-P")
        .arg(dir)
        .args(args)
        .env("PYTHONUNBUFFERED", "1");
    Proc::spawn(cmd)
}
