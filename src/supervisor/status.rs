//! What the supervisor is doing, as one snapshot: built by the state machine
//! ([`super::state::State::status`]) on the event loop, which is all the loop does for a
//! `status` command or a `/metrics` scrape; rendered as a table ([`render`]), as JSON
//! (`status --json`) or as metrics ([`super::metrics`]) off the loop.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::pool::Pool;
use super::state::{Phase, State, Worker};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub version: String,
    /// The pool file.
    pub config: String,
    /// `running`, `stopping (warm)`, `stopping (cold)`, `stopping (killing)`.
    pub phase: String,
    pub redis: RedisStatus,
    pub pools: Vec<PoolStatus>,
    pub workers: Vec<WorkerStatus>,
    /// Every queue of every pool, from the latest reading.
    pub queues: Vec<QueueStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedisStatus {
    /// The URL with its password masked.
    pub url: String,
    /// The latest reading got an answer.
    pub ok: bool,
    /// Why not, when it did not.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    pub queues: Vec<String>,
    /// The count the supervisor keeps now (a `scale`, TTIN/TTOU or autoscale decision, else
    /// the file's).
    pub desired: u32,
    /// `workers` in the file.
    pub file_workers: u32,
    /// Live workers, by state (`starting`, `idle`, `busy`, `paused`, `retiring`).
    pub running: u32,
    pub starting: u32,
    pub idle: u32,
    pub busy: u32,
    pub paused_workers: u32,
    pub retiring: u32,
    pub paused: bool,
    /// Why the pool is degraded, when it is.
    pub degraded: Option<String>,
    pub autoscale: Option<AutoscaleStatus>,
    /// Queued jobs on the pool's queues, and how long the oldest has waited (latest reading).
    pub backlog: u64,
    pub oldest_job_age_seconds: Option<f64>,
    /// Worker replacements by reason, since the supervisor started.
    pub restarts: BTreeMap<String, u64>,
    /// Jobs the pool's workers finished and failed, since the supervisor started (from the
    /// workers' own counters in Redis).
    pub jobs_finished: u64,
    pub jobs_failed: u64,
    /// Resident memory of the workers and their horses (latest health check).
    pub rss_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutoscaleStatus {
    pub min: u32,
    pub max: u32,
    pub jobs_per_worker: u32,
    pub idle_before_scale_down_seconds: f64,
    pub max_wait_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// `None` until spawned.
    pub name: Option<String>,
    pub pool: String,
    pub pid: Option<u32>,
    pub state: String,
    pub current_job: Option<String>,
    pub uptime_seconds: f64,
    pub jobs_finished: u64,
    pub jobs_failed: u64,
    pub rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueStatus {
    pub name: String,
    pub length: u64,
    pub oldest_job_age_seconds: Option<f64>,
}

/// The state a worker is shown in: `starting` (not registered yet), `idle`, `busy`,
/// `paused`, or `retiring` (asked to leave).
pub fn worker_state(w: &Worker) -> &'static str {
    if w.retire.is_some() || w.terms_sent > 0 || w.killed {
        "retiring"
    } else if !w.registered {
        "starting"
    } else {
        match w.redis_state.as_deref() {
            Some("busy") => "busy",
            Some("suspended") => "paused",
            _ if w.job.is_some() => "busy",
            _ => "idle",
        }
    }
}

/// The states [`worker_state`] gives, in the order they are shown.
pub const WORKER_STATES: [&str; 5] = ["starting", "idle", "busy", "paused", "retiring"];

/// The parts of a [`Status`] the state machine knows.
pub struct Snapshot {
    pub phase: String,
    pub pools: Vec<PoolStatus>,
    pub workers: Vec<WorkerStatus>,
    pub queues: Vec<QueueStatus>,
}

impl State {
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let phase = match self.phase {
            Phase::Running => "running",
            Phase::Warm { .. } => "stopping (warm)",
            Phase::Cold { .. } => "stopping (cold)",
            Phase::Killing | Phase::Done => "stopping (killing)",
        };
        let workers: Vec<WorkerStatus> = self
            .workers
            .values()
            .map(|w| WorkerStatus {
                name: w.name.clone(),
                pool: w.pool.clone(),
                pid: w.pid,
                state: worker_state(w).to_string(),
                current_job: w.job.clone(),
                uptime_seconds: now.saturating_duration_since(w.spawned_at).as_secs_f64(),
                jobs_finished: w.jobs.finished,
                jobs_failed: w.jobs.failed,
                rss_bytes: w.rss,
            })
            .collect();
        let pools = self
            .pools
            .values()
            .filter(|p| !p.removed)
            .map(|p| self.pool_status(p))
            .collect();
        let queues = self
            .queues
            .iter()
            .map(|(name, q)| QueueStatus {
                name: name.clone(),
                length: q.length,
                oldest_job_age_seconds: q.oldest.map(|d| d.as_secs_f64()),
            })
            .collect();
        Snapshot {
            phase: phase.to_string(),
            pools,
            workers,
            queues,
        }
    }

    fn pool_status(&self, p: &Pool) -> PoolStatus {
        let mine: Vec<&Worker> = self
            .workers
            .values()
            .filter(|w| w.pool == p.spec.name)
            .collect();
        let count = |state: &str| mine.iter().filter(|w| worker_state(w) == state).count() as u32;
        let mut jobs = p.jobs_retired;
        for w in &mine {
            jobs.add(w.jobs);
        }
        PoolStatus {
            name: p.spec.name.clone(),
            queues: p.spec.queues.clone(),
            desired: p.desired(),
            file_workers: p.spec.workers,
            running: mine.iter().filter(|w| w.pid.is_some()).count() as u32,
            starting: count("starting"),
            idle: count("idle"),
            busy: count("busy"),
            paused_workers: count("paused"),
            retiring: count("retiring"),
            paused: p.paused,
            degraded: p.degraded(),
            autoscale: p.spec.autoscale.as_ref().map(|a| AutoscaleStatus {
                min: a.min,
                max: a.max,
                jobs_per_worker: a.jobs_per_worker,
                idle_before_scale_down_seconds: a.idle_before_scale_down.0.as_secs_f64(),
                max_wait_seconds: a.max_wait.map(|w| w.0.as_secs_f64()),
            }),
            backlog: p.backlog,
            oldest_job_age_seconds: p.oldest_wait.map(|d| d.as_secs_f64()),
            restarts: p
                .restarts
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            jobs_finished: jobs.finished,
            jobs_failed: jobs.failed,
            rss_bytes: mine.iter().filter_map(|w| w.rss).sum(),
        }
    }

    /// For systemd's READY=1: every pool that is not a burst pool has its workers
    /// registered, or is degraded (waiting for it would hold the start forever; its state
    /// is in STATUS=).
    pub fn ready(&self) -> bool {
        self.phase == Phase::Running
            && self.pools.values().all(|p| {
                p.spec.burst
                    || p.removed
                    || p.degraded().is_some()
                    || self
                        .workers
                        .values()
                        .filter(|w| w.pool == p.spec.name && w.retire.is_none() && w.registered)
                        .count() as u32
                        >= p.desired()
            })
    }

    /// One line for systemd's STATUS=: the pools, the workers, what is wrong.
    pub fn summary(&self) -> String {
        let pools: Vec<&Pool> = self.pools.values().filter(|p| !p.removed).collect();
        let running = self.workers.values().filter(|w| w.registered).count();
        let desired: u32 = pools.iter().map(|p| p.desired()).sum();
        let busy = self
            .workers
            .values()
            .filter(|w| worker_state(w) == "busy")
            .count();
        let mut line = format!(
            "{} pool(s), {running}/{desired} workers registered, {busy} busy",
            pools.len()
        );
        let degraded: Vec<&str> = pools
            .iter()
            .filter(|p| p.degraded().is_some())
            .map(|p| p.spec.name.as_str())
            .collect();
        if !degraded.is_empty() {
            let _ = write!(line, "; degraded: {}", degraded.join(", "));
        }
        let paused: Vec<&str> = pools
            .iter()
            .filter(|p| p.paused)
            .map(|p| p.spec.name.as_str())
            .collect();
        if !paused.is_empty() {
            let _ = write!(line, "; paused: {}", paused.join(", "));
        }
        if self.phase != Phase::Running {
            line.push_str("; shutting down");
        }
        line
    }
}

fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Lays out rows in columns, each as wide as its widest cell.
fn table(out: &mut String, rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

fn pool_state(p: &PoolStatus) -> String {
    match (&p.degraded, p.paused) {
        (Some(why), _) => format!("DEGRADED: {why}"),
        (None, true) => "paused".into(),
        (None, false) => "ok".into(),
    }
}

/// The `status` table: a header, one row per pool, one row per worker.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "rq-supervisor {} (pid {}), {}; {}; Redis {} {}",
        s.version,
        s.pid,
        s.config,
        s.phase,
        s.redis.url,
        match (&s.redis.ok, &s.redis.error) {
            (true, _) => "answers".to_string(),
            (false, Some(e)) => format!("does not answer: {e}"),
            (false, None) => "not read yet".to_string(),
        }
    );
    let mut rows = vec![
        [
            "POOL",
            "DESIRED",
            "FILE",
            "RUNNING",
            "BUSY",
            "IDLE",
            "AUTOSCALE",
            "BACKLOG",
            "OLDEST",
            "STATE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for p in &s.pools {
        rows.push(vec![
            p.name.clone(),
            p.desired.to_string(),
            p.file_workers.to_string(),
            p.running.to_string(),
            p.busy.to_string(),
            p.idle.to_string(),
            p.autoscale
                .as_ref()
                .map_or("-".into(), |a| format!("{}..{}", a.min, a.max)),
            p.backlog.to_string(),
            p.oldest_job_age_seconds.map_or("-".into(), age),
            pool_state(p),
        ]);
    }
    o.push('\n');
    table(&mut o, &rows);
    let mut rows = vec![
        [
            "WORKER", "POOL", "PID", "STATE", "JOB", "UPTIME", "DONE", "FAILED", "RSS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for w in &s.workers {
        rows.push(vec![
            w.name.clone().unwrap_or_else(|| "(spawning)".into()),
            w.pool.clone(),
            w.pid.map_or("-".into(), |p| p.to_string()),
            w.state.clone(),
            w.current_job.clone().unwrap_or_else(|| "-".into()),
            age(w.uptime_seconds),
            w.jobs_finished.to_string(),
            w.jobs_failed.to_string(),
            w.rss_bytes.map_or("-".into(), mib),
        ]);
    }
    o.push('\n');
    if s.workers.is_empty() {
        o.push_str("no workers\n");
    } else {
        table(&mut o, &rows);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(3.7), "3s");
        assert_eq!(age(125.0), "2m05s");
        assert_eq!(age(7300.0), "2h01m");
        assert_eq!(age(90000.0), "1d01h");
    }

    #[test]
    fn columns_line_up() {
        let mut o = String::new();
        table(
            &mut o,
            &[
                vec!["A".into(), "LONGER".into(), "x".into()],
                vec!["wide cell".into(), "b".into(), "y".into()],
            ],
        );
        assert_eq!(o, "A          LONGER  x\nwide cell  b       y\n");
    }
}
