//! Helpers for the `rq-supervisor` tests: a pool file in a temp dir, the supervisor pointed
//! at a test redis through the environment, and what Redis and /proc say about its workers.

use std::path::{Path, PathBuf};
use std::process::Command;

use nix::unistd::Pid;

use super::{Proc, RedisServer, WAIT, alive, bin, children, hget, wait_until, write_script};

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

/// `rq-supervisor -c FILE` with the test redis in `RQ_REDIS_URL`.
pub fn supervisor_cmd(redis: &RedisServer, config: &Path) -> Command {
    let mut cmd = bin("rq-supervisor");
    cmd.env("RQ_REDIS_URL", redis.url()).arg("-c").arg(config);
    cmd
}

pub fn start(redis: &RedisServer, pool: &PoolFile) -> Proc {
    Proc::spawn(supervisor_cmd(redis, &pool.path))
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

/// [`alive`] for a `u32` pid.
pub fn pid_alive(pid: u32) -> bool {
    alive(Pid::from_raw(pid as i32))
}

/// [`children`] as `u32` pids.
pub fn child_pids(pid: u32) -> Vec<u32> {
    children(Pid::from_raw(pid as i32))
        .into_iter()
        .map(|p| p.as_raw() as u32)
        .collect()
}

/// Lines of a log that contain `text`.
pub fn lines_with<'a>(log: &'a str, text: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(text)).collect()
}

/// Live (non-zombie) processes in process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some(i) = s.rfind(')') else { return false };
            let f: Vec<&str> = s[i + 1..].split_whitespace().collect();
            // state, ppid, pgrp
            f.len() > 2 && f[0] != "Z" && f[0] != "X" && f[2] == pgid.to_string()
        })
        .collect()
}

/// Waits for the worker's work horse to exist; returns its pid.
pub fn wait_horse_pid(worker: u32) -> u32 {
    let mut horse = Vec::new();
    wait_until("a work horse", WAIT, || {
        horse = child_pids(worker);
        horse.len() == 1
    });
    horse[0]
}
