//! Helpers for the `rq-supervisor` tests: a pool file in a temp dir and what Redis says about
//! the supervisor's workers.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Output;

use super::{Supervisor, WAIT, hget, stdout_of_success, wait_until, write_script};

/// A pool file plus the directory it lives in (kept alive with it).
pub struct PoolFile {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl PoolFile {
    pub fn new(body: &str) -> PoolFile {
        let dir = tempfile::Builder::new()
            .prefix("rqs-pool-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join("pool.toml");
        std::fs::write(&path, body).expect("write pool file");
        PoolFile { dir, path }
    }

    pub fn rewrite(&self, body: &str) {
        std::fs::write(&self.path, body).expect("rewrite pool file");
    }

    /// Writes an executable script next to the pool file; returns its path.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        write_script(self.dir.path(), name, body)
    }
}

/// The file's path, so that a `PoolFile` is what `Supervisor::new(&redis, &pool)` takes.
impl AsRef<std::ffi::OsStr> for PoolFile {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path.as_os_str()
    }
}

/// Registered workers (from `rq:workers`) with their pids, sorted by pid.
pub fn workers(con: &mut redis::Connection) -> Vec<(String, u32)> {
    let keys: Vec<String> = redis::cmd("SMEMBERS")
        .arg("rq:workers")
        .query(con)
        .expect("SMEMBERS");
    let mut out: Vec<(String, u32)> = keys
        .iter()
        .filter_map(|k| {
            let name = k.strip_prefix("rq:worker:")?.to_string();
            let pid = hget(con, k, "pid")?.parse().ok()?;
            Some((name, pid))
        })
        .collect();
    out.sort_by_key(|(_, p)| *p);
    out
}

/// Registered worker pids listening on `queue`.
pub fn workers_on(con: &mut redis::Connection, queue: &str) -> Vec<u32> {
    let keys: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("rq:workers:{queue}"))
        .query(con)
        .expect("SMEMBERS");
    let mut pids: Vec<u32> = keys
        .iter()
        .filter_map(|k| hget(con, k, "pid")?.parse().ok())
        .collect();
    pids.sort();
    pids
}

/// Waits until exactly `n` workers are registered; returns them.
pub fn wait_workers(con: &mut redis::Connection, n: usize) -> Vec<(String, u32)> {
    let mut last = Vec::new();
    wait_until(&format!("{n} registered workers"), WAIT, || {
        last = workers(con);
        last.len() == n
    });
    last
}

/// The pids of the `supervisor: spawned pid N ...` lines of pool `pool`, in log order.
pub fn spawned_pids(log: &str, pool: &str) -> Vec<u32> {
    lines_with(log, "supervisor: spawned pid")
        .iter()
        .filter(|l| l.contains(&format!("[{pool}/")))
        .map(|l| {
            l.split("spawned pid ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

/// Lines of a log that contain `text`.
pub fn lines_with<'a>(log: &'a str, text: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(text)).collect()
}

/// Runs `rq-supervisor -c FILE ARGS...` (a control command) to its end.
pub fn control(file: &PoolFile, args: &[&str]) -> Output {
    Supervisor::control(file, args).output()
}

/// A control command that must succeed; returns its stdout.
pub fn control_ok(file: &PoolFile, args: &[&str]) -> String {
    stdout_of_success(&format!("rq-supervisor {args:?}"), &control(file, args))
}

/// `status --json`, parsed.
pub fn status_json(file: &PoolFile) -> serde_json::Value {
    serde_json::from_str(&control_ok(file, &["status", "--json"])).expect("status --json is JSON")
}

/// The pool named `name` in a `status --json` document.
pub fn pool_status<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no pool {name} in {status}"))
}

/// A TCP port on loopback that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `GET path` over a plain TCP connection: the status code and the body.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let code = reply.split_whitespace().nth(1)?.parse().ok()?;
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// Waits until `GET path` answers `code`; returns the body.
pub fn wait_http(addr: &str, path: &str, code: u16) -> String {
    let mut last = None;
    wait_until(&format!("GET {path} to answer {code}"), WAIT, || {
        last = http_get(addr, path);
        last.as_ref().is_some_and(|(c, _)| *c == code)
    });
    last.unwrap().1
}
