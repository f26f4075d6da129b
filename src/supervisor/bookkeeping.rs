//! The supervisor's Redis work, done on the loop thread: crash cleanups (queued, retried
//! with backoff while Redis is away, never dropped) and reading the workers' registrations
//! for health checks. One connection, reopened lazily; after a failure nothing touches Redis
//! until the backoff delay has passed, so an outage never stalls the loop more than one
//! connect timeout per attempt.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use crate::cleanup::{Cleanup, settle_dead_worker};
use crate::conn::{Backoff, RedisTarget};
use crate::protocol::scripts::REGISTRATIONS;
use crate::protocol::{defaults, keys, time};
use crate::worker::store::{Store, StoreError};

use super::state::Registration;

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
}

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
            match settle_dead_worker(&mut self.store, &job.name, &job.how) {
                Ok(c) => {
                    self.succeeded();
                    self.pending.pop_front();
                    out.push(Outcome::Done(job, c));
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

    /// Reads each worker's registration; `None` when Redis cannot be asked now.
    pub fn registrations(&mut self, names: &[String]) -> Option<Vec<Registration>> {
        let now = Instant::now();
        if self.backing_off(now) {
            return None;
        }
        match read_registrations(&mut self.store, names) {
            Ok(r) => {
                self.succeeded();
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

/// Per worker: last_heartbeat, state, current_job, and that job's status, started_at, timeout.
type Row = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn read_registrations(
    store: &mut Store,
    names: &[String],
) -> Result<Vec<Registration>, StoreError> {
    if names.is_empty() {
        return store
            .run(|con| redis::cmd("PING").exec(con))
            .map(|_| Vec::new());
    }
    // One script, one reply: a stalled Redis costs one read timeout, not one per worker.
    let rows: Vec<Row> = store.run(|con| {
        let mut inv = REGISTRATIONS.prepare_invoke();
        for n in names {
            inv.key(keys::worker(n));
        }
        inv.invoke(con)
    })?;
    let wall = SystemTime::now();
    let mut out = Vec::with_capacity(rows.len());
    for (heartbeat, state, job, status, started, timeout) in rows {
        let present = heartbeat.is_some() || state.is_some();
        let heartbeat_age = heartbeat
            .as_deref()
            .and_then(time::parse_iso)
            .map(|t| wall.duration_since(t.system()).unwrap_or(Duration::ZERO));
        let mut busy_within_timeout = false;
        if job.as_deref().is_some_and(|j| !j.is_empty()) {
            busy_within_timeout = state.as_deref() == Some("busy")
                && status.as_deref() == Some("started")
                && within_timeout(wall, started.as_deref(), timeout.as_deref());
        }
        out.push(Registration {
            present,
            heartbeat_age,
            state,
            busy_within_timeout,
        });
    }
    Ok(out)
}

/// A job started at `started` with `timeout` seconds (`-1` = none; missing = RQ's default)
/// is still allowed to run at `now`.
fn within_timeout(now: SystemTime, started: Option<&str>, timeout: Option<&str>) -> bool {
    let timeout: i64 = timeout
        .and_then(|t| t.trim().parse::<f64>().ok())
        .map(|t| t as i64)
        .unwrap_or(defaults::JOB_TIMEOUT);
    if timeout < 0 {
        return true;
    }
    let Some(started) = started.and_then(time::parse_iso) else {
        return true;
    };
    let ran = now
        .duration_since(started.system())
        .unwrap_or(Duration::ZERO);
    ran <= Duration::from_secs(timeout as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        let now = SystemTime::now();
        let ago = |s: u64| time::Instant::from_system(now - Duration::from_secs(s)).iso();
        assert!(within_timeout(now, Some(&ago(10)), Some("180")));
        assert!(!within_timeout(now, Some(&ago(200)), Some("180")));
        assert!(within_timeout(now, Some(&ago(9999)), Some("-1")));
        assert!(!within_timeout(now, Some(&ago(200)), None));
        assert!(within_timeout(now, None, Some("5")));
    }
}
