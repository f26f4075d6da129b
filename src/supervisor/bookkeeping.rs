//! The supervisor's Redis work, done on the loop thread: crash cleanups (queued, retried
//! with backoff while Redis is away, never dropped) and reading the workers' registrations
//! for health checks. One connection, reopened lazily; after a failure nothing touches Redis
//! until the backoff delay has passed, so an outage never stalls the loop more than one
//! connect timeout per attempt.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::conn::{Backoff, RedisTarget};
use crate::execution::JobFailure;
use crate::store::{Cleanup, Registration, Store, StoreError};

/// Crash cleanup of `worker`, which died `how` (e.g. "was killed by signal 9 (SIGKILL)"):
/// its death registered and its job settled, failed with a text that says so.
pub fn crash_cleanup(store: &mut Store, worker: &str, how: &str) -> Result<Cleanup, StoreError> {
    let exc = JobFailure::WorkerDied {
        worker: worker.to_string(),
        how: how.to_string(),
    }
    .exc_string();
    store.settle_dead_worker(worker, &exc)
}

/// A dead worker whose death is not yet recorded in Redis.
#[derive(Debug, Clone)]
pub struct PendingCleanup {
    pub pool: String,
    pub name: String,
    pub how: String,
}

pub struct Bookkeeping {
    store: Store,
    backoff: Backoff,
    /// No Redis traffic before this instant (set after a failure).
    retry_at: Option<Instant>,
    pending: VecDeque<PendingCleanup>,
    /// Sentinel targets: the cleanups of the last minute, done again after a failover. A
    /// cleanup done on the old master after the promotion is lost with it, and it read that
    /// master's view of the worker (which job it held); on the new master the dead worker
    /// may still hold another job, which nobody else would settle before RQ's abandoned-job
    /// cleanup. A cleanup done twice finds nothing left the second time.
    recent: VecDeque<(Instant, PendingCleanup)>,
    seen_failovers: u64,
}

/// How long a cleanup is kept to be done again after a failover: longer than an old master
/// stays writable after the promotion (about ten seconds with Redis 7).
const REDO_WINDOW: Duration = Duration::from_secs(60);

/// What one cleanup did, for the log.
pub enum Outcome {
    Done(PendingCleanup, Cleanup),
    /// Redis is unreachable; the cleanup waits in the queue.
    Deferred(PendingCleanup, String),
}

impl Bookkeeping {
    pub fn new(target: RedisTarget) -> Bookkeeping {
        Bookkeeping {
            store: Store::new(target),
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
            retry_at: None,
            pending: VecDeque::new(),
            recent: VecDeque::new(),
            seen_failovers: 0,
        }
    }

    pub fn target(&self) -> &RedisTarget {
        self.store.target()
    }

    /// True while the last Redis attempt failed and the backoff has not yet expired.
    pub fn backing_off(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|t| now < t)
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// When queued cleanups should be tried again, if any are queued.
    pub fn next_retry(&self) -> Option<Instant> {
        if self.pending.is_empty() {
            None
        } else {
            Some(self.retry_at.unwrap_or_else(Instant::now))
        }
    }

    fn failed(&mut self, now: Instant) -> Duration {
        let delay = self.backoff.next_delay();
        self.retry_at = Some(now + delay);
        delay
    }

    fn succeeded(&mut self) {
        self.backoff.reset();
        self.retry_at = None;
    }

    /// Queues a cleanup and tries every queued one now (unless backing off).
    pub fn cleanup(&mut self, pool: String, name: String, how: String) -> Vec<Outcome> {
        self.pending.push_back(PendingCleanup { pool, name, how });
        self.flush(false)
    }

    /// Tries the queued cleanups in order; stops at the first Redis failure. `force`
    /// ignores the backoff (used once at exit).
    pub fn flush(&mut self, force: bool) -> Vec<Outcome> {
        let now = Instant::now();
        let mut out = Vec::new();
        if !force && self.backing_off(now) {
            // Only the newest is reported: the others were when they were queued.
            if let Some(last) = self.pending.back() {
                out.push(Outcome::Deferred(
                    last.clone(),
                    "Redis refused or could not be reached at the last try; waiting out the backoff".to_string(),
                ));
            }
            return out;
        }
        while let Some(job) = self.pending.front().cloned() {
            match crash_cleanup(&mut self.store, &job.name, &job.how) {
                Ok(c) => {
                    self.succeeded();
                    self.pending.pop_front();
                    if self.store.target().is_sentinel() {
                        self.recent.push_back((now, job.clone()));
                    }
                    out.push(Outcome::Done(job, c));
                    if self.redo_after_failover(now) {
                        continue;
                    }
                }
                Err(e) => {
                    let delay = self.failed(now);
                    out.push(Outcome::Deferred(
                        job,
                        format!("{e}; retrying in {delay:.1?}"),
                    ));
                    break;
                }
            }
        }
        out
    }

    /// After the store reached another master: queues the recent cleanups again (see
    /// `recent`); true if it queued any.
    fn redo_after_failover(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > REDO_WINDOW)
        {
            self.recent.pop_front();
        }
        if self.store.failovers() == self.seen_failovers {
            return false;
        }
        self.seen_failovers = self.store.failovers();
        let again: Vec<PendingCleanup> = self.recent.drain(..).map(|(_, c)| c).collect();
        if !again.is_empty() {
            log::info!(
                "the Redis master moved: doing the crash cleanups of the last minute again ({} workers), as the old master may have lost them",
                again.len()
            );
        }
        let queued = !again.is_empty();
        self.pending.extend(again);
        queued
    }

    /// Reads each worker's registration; `None` when Redis cannot be asked now.
    pub fn registrations(&mut self, names: &[String]) -> Option<Vec<Registration>> {
        let now = Instant::now();
        if self.backing_off(now) {
            return None;
        }
        match self.store.registrations(names) {
            Ok(r) => {
                self.succeeded();
                if self.redo_after_failover(now) {
                    let _ = self.flush(false);
                }
                Some(r)
            }
            Err(e) => {
                let delay = self.failed(now);
                log::warn!(
                    "cannot read worker registrations ({e}); stuck-worker checks paused, retrying in {delay:.1?}"
                );
                None
            }
        }
    }
}
