//! Helpers for the `rq-supervisor` tests: a pool file in a temp dir and what Redis says about
//! the supervisor's workers.

use std::path::PathBuf;

use super::{WAIT, hget, wait_until, write_script};

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
