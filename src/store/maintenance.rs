//! Registry maintenance on RQ's cadence and lock key (§6, §7.14, §7.15): expired finished and
//! failed entries, abandoned `wip` executions, stale worker set members, ids stuck in RQ's
//! intermediate list. Python workers and `rq info` run the same cleanup; the per-queue lock
//! keeps two cleaners from doing it at once.
//!
//! RQ deletes its lock when a pass ends, so every worker of a fleet runs a whole pass of its
//! own each interval. With a short interval (up to [`HOLD_UP_TO`]) we keep the lock for the
//! interval after the pass instead: one pass per queue per interval for the whole fleet,
//! whatever its size, and every other worker's attempt costs one `SET NX` (and a `PTTL`, so
//! it tries again when the lock lapses rather than a whole interval later). That is what
//! lets the interval be a few seconds. Longer intervals release the lock as RQ does: their
//! passes are rare anyway, and a hold of many minutes would shut out a worker of the same
//! queue configured with a short interval. Python workers and `rq info` are unaffected:
//! they skip a held lock, or do not take it.

use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::settle::{Settlement, Verdict};
use super::{Store, StoreError, script};
use crate::protocol::keys;
use crate::protocol::time::Instant;

/// Drops members of a queue's worker set (and of `rq:workers`) whose hash has expired.
static PRUNE_WORKERS: LazyLock<Script> =
    LazyLock::new(|| script::plain(include_str!("prune_workers.lua")));
/// Puts ids stuck in RQ's intermediate list back at the front of their queue, atomically.
static REQUEUE_STUCK: LazyLock<Script> =
    LazyLock::new(|| script::guarded("requeue_stuck", include_str!("requeue_stuck.lua")));

/// How long RQ holds the per-queue cleaning lock while it cleans (seconds).
const LOCK_TTL: u64 = 899;
/// With a hold, how long a pass may take before the lock lapses anyway.
const PASS_BUDGET: Duration = Duration::from_secs(10);
/// The longest interval for which the lock is held after a pass (see the module's doc).
pub const HOLD_UP_TO: Duration = Duration::from_secs(60);
/// The soonest a worker tries again for a lock held by another one (a lock about to lapse).
const RETRY_FLOOR: Duration = Duration::from_millis(50);
/// An id in the intermediate list that is not started after this long is stuck.
const STUCK_AFTER: f64 = 60.0;

/// What one maintenance pass did, for the log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub queues_cleaned: usize,
    pub abandoned: Vec<(String, Verdict)>,
    pub stale_workers: usize,
    pub requeued_stuck: Vec<String>,
    /// When a queue's lock was held by another cleaner: how long until it lapses, the
    /// soonest of them, so the caller can try again then.
    pub held_for: Option<Duration>,
}

impl Store {
    /// Cleans every queue whose lock this call acquires, and keeps each lock for `hold`
    /// after its pass, so no other worker cleans that queue again sooner (`Duration::ZERO`:
    /// release it at once, as RQ does). Abandoned executions are failed (or retried) with
    /// `abandoned_exc` as their `exc_string`.
    pub fn clean_registries(
        &mut self,
        queues: &[String],
        abandoned_exc: &str,
        hold: Duration,
    ) -> Result<Report, StoreError> {
        run(self, queues, abandoned_exc, hold)
    }
}

fn run(
    store: &mut Store,
    queues: &[String],
    exc: &str,
    hold: Duration,
) -> Result<Report, StoreError> {
    let mut report = Report::default();
    for q in queues {
        let lock = keys::clean_registries_lock(q);
        // RQ's lock while the pass runs, so a Python worker never cleans beside it. RQ's
        // 899 s would outlast a short interval many times over when a worker is lost in the
        // middle of a pass (a lost host), so a held lock first lives the hold plus
        // PASS_BUDGET; a pass that overran it could only meet another one, which is harmless
        // (every step is safe to repeat).
        let in_pass = if hold.is_zero() {
            Duration::from_secs(LOCK_TTL)
        } else {
            hold + PASS_BUDGET
        };
        let acquired: bool = store.run(|con| {
            redis::cmd("SET")
                .arg(&lock)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(in_pass.as_millis() as u64)
                .query::<Option<String>>(con)
                .map(|r| r.is_some())
        })?;
        if !acquired {
            if !hold.is_zero()
                && let Some(lapse) = lapses_in(store, &lock)?
            {
                report.held_for = Some(report.held_for.map_or(lapse, |h| h.min(lapse)));
            }
            continue;
        }
        let outcome = clean_queue(store, q, exc, &mut report);
        // Held for `hold` from the end of the pass (SET XX PX: the ACL rules every worker
        // already has); a failed pass releases it, so another worker tries again soon.
        let _ = store.run(|con| match (&outcome, hold.as_millis()) {
            (Ok(()), ms) if ms > 0 => redis::cmd("SET")
                .arg(&lock)
                .arg(1)
                .arg("XX")
                .arg("PX")
                .arg(ms as u64)
                .exec(con),
            _ => redis::cmd("DEL").arg(&lock).exec(con),
        });
        outcome?;
        report.queues_cleaned += 1;
    }
    Ok(report)
}

/// How long until another cleaner's hold on `lock` lapses, so a worker can try again then.
/// `None` without a hint: a lock without expiry (-1), gone meanwhile (-2), or a Redis user
/// not granted `PTTL` (docs/compatibility.md lists it; without it the worker tries again
/// after its own interval, and the refusal must not cost the connection).
fn lapses_in(store: &mut Store, lock: &str) -> Result<Option<Duration>, StoreError> {
    store.run(|con| match redis::cmd("PTTL").arg(lock).query::<i64>(con) {
        Ok(ms) if ms >= 0 => Ok(Some(Duration::from_millis(ms as u64).max(RETRY_FLOOR))),
        Ok(_) => Ok(None),
        Err(e) if e.code() == Some("NOPERM") => Ok(None),
        Err(e) => Err(e),
    })
}

fn clean_queue(
    store: &mut Store,
    q: &str,
    exc: &str,
    report: &mut Report,
) -> Result<(), StoreError> {
    let now = Instant::now();
    let expired: Vec<String> = store.run(|con| {
        redis::cmd("ZREMRANGEBYSCORE")
            .arg(keys::finished(q))
            .arg(0)
            .arg(now.unix_secs())
            .exec(con)?;
        redis::cmd("ZREMRANGEBYSCORE")
            .arg(keys::failed(q))
            .arg(0)
            .arg(now.unix_secs())
            .exec(con)?;
        redis::cmd("ZRANGEBYSCORE")
            .arg(keys::wip(q))
            .arg(0)
            .arg(now.unix_secs())
            .query(con)
    })?;
    for member in expired {
        let Some((job, execution)) = member.split_once(':') else {
            continue;
        };
        let verdict = store.settle(&Settlement::orphaned(job, q, execution, "", exc))?;
        report.abandoned.push((job.to_string(), verdict));
    }
    store.run(|con| {
        redis::cmd("ZREMRANGEBYSCORE")
            .arg(keys::wip(q))
            .arg(0)
            .arg(now.unix_secs())
            .exec(con)
    })?;
    report.stale_workers += prune_stale_workers(store, q)?;
    requeue_stuck(store, q, now, report)
}

/// Drops members of `rq:workers:Q` (and `rq:workers`) whose hash has expired.
fn prune_stale_workers(store: &mut Store, q: &str) -> Result<usize, StoreError> {
    store.run(|con| {
        PRUNE_WORKERS
            .key(keys::workers_of(q))
            .key(keys::WORKERS)
            .invoke(con)
    })
}

/// Ids a Python worker moved into the intermediate list and never started (it died in
/// between). RQ fails them after a minute; they never ran, so we put them back at the
/// front of their queue instead, and drop ids whose job is gone.
fn requeue_stuck(
    store: &mut Store,
    q: &str,
    now: Instant,
    report: &mut Report,
) -> Result<(), StoreError> {
    let list = keys::intermediate(q);
    // Separate commands, not a pipeline: a stalled Redis then costs one read timeout.
    let (ids, wip): (Vec<String>, Vec<String>) = store.run(|con| {
        let ids: Vec<String> = redis::cmd("LRANGE").arg(&list).arg(0).arg(-1).query(con)?;
        if ids.is_empty() {
            return Ok((ids, Vec::new()));
        }
        let wip: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys::wip(q))
            .arg(0)
            .arg(-1)
            .query(con)?;
        Ok((ids, wip))
    })?;
    let started: HashSet<&str> = wip.iter().filter_map(|m| m.split(':').next()).collect();
    for id in ids.iter().filter(|id| !started.contains(id.as_str())) {
        let first_seen_key = keys::intermediate_first_seen(q, id);
        let (job_exists, first_seen): (bool, Option<f64>) = store.run(|con| {
            let exists: bool = redis::cmd("EXISTS").arg(keys::job(id)).query(con)?;
            let first_seen: Option<f64> = redis::cmd("GET").arg(&first_seen_key).query(con)?;
            Ok((exists, first_seen))
        })?;
        if !job_exists {
            store.run(|con| redis::cmd("LREM").arg(&list).arg(1).arg(id).exec(con))?;
            continue;
        }
        match first_seen {
            None => store.run(|con| {
                redis::cmd("SET")
                    .arg(&first_seen_key)
                    .arg(now.unix_float())
                    .arg("NX")
                    .arg("EX")
                    .arg(86_400)
                    .exec(con)
            })?,
            Some(t) if now.secs_f64() - t > STUCK_AFTER => {
                let moved: i64 = store.run(|con| {
                    REQUEUE_STUCK
                        .key(&list)
                        .key(keys::queue(q))
                        .arg(id)
                        .invoke(con)
                })?;
                store.run(|con| redis::cmd("DEL").arg(&first_seen_key).exec(con))?;
                if moved == 1 {
                    report.requeued_stuck.push(id.clone());
                }
            }
            Some(_) => {}
        }
    }
    Ok(())
}
