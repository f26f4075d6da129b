//! Test harness: a real `redis-server` per test on a unix socket in its own temp dir, the
//! real binaries (`CARGO_BIN_EXE_*`) through builders with their logs captured, Python RQ
//! drivers, Redis readers, bounded polling, and Drop guards that kill whatever a failed test
//! leaves behind.

mod bins;
pub mod cpu;
mod enqueue;
pub mod jail;
mod keys;
mod proc;
mod py;
mod redis_server;
pub mod sentinel;
pub mod supervisor;
mod tls;

pub use bins::{Rqworker, Supervisor};
pub use enqueue::*;
pub use keys::*;
pub use proc::*;
pub use py::*;
pub use redis_server::RedisServer;
pub use tls::TlsCerts;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// Default bound for waits; generous because CI machines are slow and loaded.
pub const WAIT: Duration = Duration::from_secs(20);

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

/// Waits until Redis stops answering (a `DEBUG SLEEP` or `CLIENT PAUSE` under way): a fresh
/// connection's PING gets no reply within 100 ms.
pub fn wait_redis_stalled(url: &str) {
    let client = redis::Client::open(url).expect("redis URL");
    let probe = Duration::from_millis(100);
    wait_until("Redis to stall", WAIT, || {
        client
            .get_connection_with_timeout(probe)
            .and_then(|mut c| {
                c.set_read_timeout(Some(probe))?;
                redis::cmd("PING").exec(&mut c)
            })
            .is_err()
    });
}

/// The stdout of a process that must have succeeded; panics with both streams if not.
pub fn stdout_of_success(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes an executable script (mode 0755) and returns its path.
pub fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Writes a config file and returns its path as text, for `-c`.
pub fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("pool.toml");
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

/// A TOML string literal.
/// A TOML basic string holding `s` (JSON string syntax is valid TOML).
pub fn toml_str(s: impl AsRef<str>) -> String {
    serde_json::Value::String(s.as_ref().to_string()).to_string()
}

/// Asserts RQ's hash timestamp format, exactly `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn assert_rq_timestamp(what: &str, ts: &str) {
    let b = ts.as_bytes();
    let ok = b.len() == 27
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            26 => *c == b'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(ok, "{what}: {ts:?} is not YYYY-MM-DDTHH:MM:SS.ffffffZ");
}

/// Parses an RQ hash timestamp into Unix seconds.
pub fn rq_time(ts: &str) -> f64 {
    humantime::parse_rfc3339(ts)
        .unwrap_or_else(|e| panic!("{ts:?}: {e}"))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A temp dir for handler scripts and config files.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rqs-test-")
        .tempdir()
        .expect("temp dir")
}

/// This machine's hostname, as the worker reads it.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .expect("hostname")
        .into_string()
        .expect("UTF-8 hostname")
}

/// A `[handlers."tasks.gate"]` table (to put in a config) whose program blocks until the file
/// named by the job's first argument exists, then prints `released`. Lets a test inspect a
/// running job, or signal the worker mid-job, without racing a timer.
pub fn gate_handler(dir: &Path) -> String {
    let gate = write_script(
        dir,
        "gate.sh",
        "#!/bin/sh\nwhile [ ! -e \"$1\" ]; do sleep 0.02; done\necho released\n",
    );
    format!(
        "[handlers.\"tasks.gate\"]\ncommand = [{}]\n",
        toml_str(gate.display().to_string())
    )
}
