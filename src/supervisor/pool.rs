//! A pool as the state machine runs it: its spec from the file, its generation (bumped when
//! a reload changes what its workers are started with), its scale override, its crash-loop
//! tracker, and its rolling restart in progress. The [`fingerprint`] is what a reload
//! compares to decide that the pool's workers must be rolled.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::restart::RestartTracker;
use crate::config::{Config, PoolSpec};
use crate::store::JobCounts;

/// The supervisor's own handle for a worker, stable across its life (pids come later and
/// may be reused).
pub type WorkerId = u64;

/// A rolling restart's step in progress: the new worker, and when it was started.
#[derive(Debug, Clone, Copy)]
pub(super) struct RollStep {
    pub(super) new: WorkerId,
    pub(super) since: Instant,
}

#[derive(Debug, Clone)]
pub struct Pool {
    pub spec: PoolSpec,
    /// `worker_ttl` of the pool's workers, for the stuck check.
    pub worker_ttl: Duration,
    /// What the workers' command line and config depend on; a change means a roll.
    pub(super) fingerprint: String,
    pub generation: u64,
    /// Set by TTIN/TTOU; survives reloads that leave the pool's count alone.
    pub scale_override: Option<u32>,
    /// Removed from the file: draining, then forgotten.
    pub removed: bool,
    /// Burst workers that finished cleanly (their slots are done).
    pub burst_finished: u32,
    pub restart: RestartTracker,
    /// No start before this instant (crash backoff).
    pub next_start: Option<Instant>,
    pub(super) roll: Option<RollStep>,
    /// Why the pool is degraded, when its workers cannot work in this environment (shown
    /// until it recovers).
    pub degraded_reason: Option<String>,
    /// `pause POOL`: its workers finish their job and take no new one until `resume`.
    pub paused: bool,
    /// Worker replacements by reason (`crashed`, `failed_start`, ...), for the metrics.
    pub restarts: BTreeMap<&'static str, u64>,
    /// Jobs counted by workers that have exited (the live ones' counts are on them).
    pub jobs_retired: JobCounts,
    /// The pool's queues at the latest reading: queued jobs, and the oldest one's wait.
    pub backlog: u64,
    pub oldest_wait: Option<Duration>,
}

impl Pool {
    /// Target number of workers: the file's count unless TTIN/TTOU, `scale` or autoscale
    /// changed it.
    pub fn desired(&self) -> u32 {
        self.scale_override.unwrap_or(self.spec.workers)
    }

    /// Why the pool is degraded, if it is: its environment's reason, or its crash loop.
    pub fn degraded(&self) -> Option<String> {
        if !self.restart.is_degraded() {
            return None;
        }
        Some(self.degraded_reason.clone().unwrap_or_else(|| {
            format!(
                "its workers keep failing to start ({} failures within {}); retrying every {}",
                self.spec.restart.failure_threshold,
                self.spec.restart.failure_window,
                self.spec.restart.degraded_interval
            )
        }))
    }

    /// The bounds a runtime count must stay within: autoscale's, else 1 to 10000.
    pub fn bounds(&self) -> (u32, u32) {
        self.spec
            .autoscale
            .as_ref()
            .map_or((1, 10_000), |a| (a.min, a.max))
    }
}

pub(super) fn new_pool(cfg: &Config, spec: &PoolSpec) -> Pool {
    Pool {
        worker_ttl: cfg.worker_for_pool(spec).worker_ttl.0,
        fingerprint: fingerprint(cfg, spec),
        generation: 0,
        scale_override: None,
        removed: false,
        burst_finished: 0,
        restart: RestartTracker::default(),
        next_start: None,
        roll: None,
        degraded_reason: None,
        paused: false,
        restarts: BTreeMap::new(),
        jobs_retired: JobCounts::default(),
        backlog: 0,
        oldest_wait: None,
        spec: spec.clone(),
    }
}

/// A pool's identity for reloads: everything a running worker was started with.
pub(super) fn fingerprint(cfg: &Config, pool: &PoolSpec) -> String {
    let spec = serde_json::to_string(&cfg.worker_for_pool(pool)).unwrap_or_default();
    let handlers = serde_json::to_string(&cfg.handlers).unwrap_or_default();
    let python = serde_json::to_string(&cfg.python).unwrap_or_default();
    format!(
        "queues={:?} burst={} program={:?} max_jobs={:?} user={:?} group={:?} cwd={:?} env={:?} python={:?} worker={spec} handlers={handlers} [python]={python}",
        pool.queues,
        pool.burst,
        pool.program,
        pool.max_jobs,
        pool.user,
        pool.group,
        pool.cwd,
        pool.env,
        pool.python
    )
}
