//! Test harness: a real `redis-server` per test on a unix socket in its own temp dir, the
//! real binaries (`CARGO_BIN_EXE_*`) with their logs captured, Python RQ drivers, bounded
//! polling, and Drop guards that kill whatever a failed test leaves behind.
#![allow(dead_code)]

pub mod supervisor;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// Default bound for waits; generous because CI machines are slow and loaded.
pub const WAIT: Duration = Duration::from_secs(20);

/// A private redis-server, stopped on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub log: PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments, e.g. `["--appendonly", "yes"]`.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("rqs-redis-")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("redis.sock");
        let log = dir.path().join("redis.log");
        let mut server = RedisServer {
            child: None,
            dir,
            socket,
            log,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--unixsocket"])
            .arg(&self.socket)
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&self.log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut con) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut con).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn con(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .unwrap_or_else(|e| panic!("connect to test redis: {e}\n{}", self.log_text()))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Stops and starts the server on the same socket (data survives only with AOF/RDB on).
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A spawned binary with its stderr (the log) captured. Killed with its process group
/// (and the groups of its horses, which lead their own sessions) on drop.
pub struct Proc {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.process_group(0);
        let mut child = cmd.spawn().expect("spawn binary");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let stdout = child.stdout.take().expect("stdout");
        let sink = Arc::clone(&log);
        let sink2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut l = sink2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Proc {
            child,
            log,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("send signal");
    }

    /// Waits for a log line containing `text`.
    pub fn wait_for_log(&self, text: &str) {
        wait_until(&format!("log line {text:?}"), WAIT, || {
            self.log().contains(text)
        });
    }

    /// Waits for the process to exit; panics with the log after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {limit:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = killpg(self.pid(), Signal::SIGKILL);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `check` every few milliseconds until it holds; panics naming `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A `Command` for one of this package's binaries.
pub fn bin(name: &str) -> Command {
    let path = match name {
        "rqworker" => env!("CARGO_BIN_EXE_rqworker"),
        "rq-supervisor" => env!("CARGO_BIN_EXE_rq-supervisor"),
        other => panic!("unknown binary {other}"),
    };
    Command::new(path)
}

/// `rqworker` pointed at `redis` through the environment (never argv), with extra args.
pub fn rqworker(redis: &RedisServer, args: &[&str]) -> Command {
    let mut cmd = bin("rqworker");
    cmd.env("RQ_REDIS_URL", redis.url()).args(args);
    cmd
}

pub fn py_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py")
}

/// Runs `tests/py/<script>` with Python (`$RQ_TEST_PYTHON` or `python3`) and `RQ_REDIS_URL`
/// set; panics with its output if it fails.
pub fn python(redis: &RedisServer, script: &str, args: &[&str]) -> String {
    let out = python_output(redis, script, args);
    assert!(
        out.status.success(),
        "python {script} {args:?} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn python_output(redis: &RedisServer, script: &str, args: &[&str]) -> Output {
    let py = std::env::var("RQ_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
    Command::new(py)
        .arg(py_dir().join(script))
        .args(args)
        .env("RQ_REDIS_URL", redis.url())
        .output()
        .expect("python3 must be installed")
}

/// Reads one field of a hash as text.
pub fn hget(con: &mut redis::Connection, key: &str, field: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query(con)
        .expect("HGET")
}

pub fn exists(con: &mut redis::Connection, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query(con).expect("EXISTS")
}
