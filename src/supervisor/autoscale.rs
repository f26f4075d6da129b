//! What a reading of the queues and workers means, pure: the workers' states, current jobs
//! and job counters, and for autoscaled pools the decision to grow or shrink.
//!
//! A pool grows at once toward `ceil(backlog / jobs_per_worker)` plus its busy workers (and
//! by one more per reading while its oldest job has waited past `max_wait`), within
//! `[min, max]`. It shrinks only by retiring, warm, workers that have done no job for
//! `idle_before_scale_down`: never a busy one, and never on a single quiet reading, which
//! is what keeps it from flapping.

use std::time::Instant;

use log::Level;

use super::state::{Out, Phase, Reading, Retire, State, Worker, secs};
use crate::store::WorkerLoad;

impl State {
    pub(super) fn on_reading(&mut self, now: Instant, r: Reading, out: &mut Out) {
        for (name, counts) in r.finals {
            let Some(i) = self.finals.iter().position(|(_, n, _)| *n == name) else {
                continue;
            };
            let (pool, _, counted) = self.finals.remove(i);
            if let (Some(c), Some(p)) = (counts, self.pools.get_mut(&pool)) {
                p.jobs_retired.add(c.since(counted));
            }
        }
        for (id, load) in r.workers {
            let Some(w) = self.workers.get_mut(&id) else {
                continue;
            };
            if let Some(p) = self.pools.get_mut(&w.pool) {
                note_load(w, &load, now, p);
            }
        }
        for pool in self.pools.values_mut() {
            let loads = pool.spec.queues.iter().filter_map(|q| r.queues.get(q));
            pool.backlog = loads.clone().map(|l| l.length).sum();
            pool.oldest_wait = loads.filter_map(|l| l.oldest).max();
        }
        self.queues = r.queues;
        if self.phase == Phase::Running {
            let names: Vec<String> = self.pools.keys().cloned().collect();
            for name in names {
                self.autoscale(now, &name, out);
            }
        }
    }

    /// Live workers of `pool` not on their way out.
    fn active<'a>(&'a self, pool: &'a str) -> impl Iterator<Item = &'a Worker> + 'a {
        self.workers
            .values()
            .filter(move |w| w.pool == pool && w.retire.is_none() && w.terms_sent == 0)
    }

    fn autoscale(&mut self, now: Instant, name: &str, out: &mut Out) {
        let Some(pool) = self.pools.get(name) else {
            return;
        };
        let Some(a) = pool.spec.autoscale.clone() else {
            return;
        };
        if pool.paused || pool.removed {
            return;
        }
        let busy = self.active(name).filter(|w| is_busy(w)).count() as u32;
        let current = pool.desired();
        let needed = u32::try_from(pool.backlog.div_ceil(u64::from(a.jobs_per_worker)))
            .unwrap_or(u32::MAX)
            .saturating_add(busy);
        let mut why = format!(
            "{} queued on {} (ceil({} / jobs_per_worker {}) = {}) + {busy} busy",
            pool.backlog,
            pool.spec.queues.join(","),
            pool.backlog,
            a.jobs_per_worker,
            needed - busy
        );
        let mut want = needed;
        // One worker at a time: while the last one added is still starting, the job may be
        // waiting for it, and each reading (every 500 ms) adding another would run the pool
        // up to `max` for a single slow start.
        let starting = self.active(name).any(|w| !w.registered);
        if let (Some(limit), Some(waited)) = (a.max_wait, pool.oldest_wait)
            && pool.backlog > 0
            && waited > limit.0
            && want <= current
            && !starting
        {
            want = current + 1;
            why.push_str(&format!(
                "; the oldest job has waited {} (max_wait {limit})",
                secs(waited)
            ));
        }
        let want = want.clamp(a.min, a.max);
        if want > current {
            self.pools.get_mut(name).expect("pool").scale_override = Some(want);
            out.pool(
                Level::Info,
                name,
                format!(
                    "autoscale: workers {current} -> {want}: {why} (max {})",
                    a.max
                ),
            );
        } else if want < current {
            // Judged against the workers that run, not the target: while some are missing
            // (crash backoff, a degraded pool, the start-up stagger), retiring `current -
            // want` idle ones could retire every live worker.
            let active = self.active(name).count() as u32;
            let mut idle: Vec<(Instant, u64)> = self
                .active(name)
                .filter(|w| w.registered)
                .filter_map(|w| Some((w.idle_since?, w.id)))
                .filter(|(since, _)| {
                    now.saturating_duration_since(*since) >= a.idle_before_scale_down.0
                })
                .collect();
            idle.sort();
            idle.truncate(active.saturating_sub(want) as usize);
            let fewer = want.max(active - idle.len() as u32);
            if fewer >= current {
                return;
            }
            self.pools.get_mut(name).expect("pool").scale_override = Some(fewer);
            let retiring = if idle.is_empty() {
                format!("{active} running, none retired")
            } else {
                format!(
                    "retiring {} worker(s) idle for {}+",
                    idle.len(),
                    a.idle_before_scale_down
                )
            };
            out.pool(
                Level::Info,
                name,
                format!(
                    "autoscale: workers {current} -> {fewer}: {retiring} ({why}; min {})",
                    a.min
                ),
            );
            for (_, id) in idle {
                self.retire(id, Retire::ScaleDown, out);
            }
        }
    }
}

fn is_busy(w: &Worker) -> bool {
    w.redis_state.as_deref() == Some("busy") || w.job.is_some()
}

/// Takes in one worker's record: registered, its state and job, its counters (a record
/// whose counters went back, re-registered after Redis lost it, keeps what it had counted),
/// and since when it has done nothing.
fn note_load(w: &mut Worker, load: &WorkerLoad, now: Instant, pool: &mut super::pool::Pool) {
    if !load.present {
        return;
    }
    w.registered = true;
    w.redis_state = load.state.clone();
    w.job = load.job.clone();
    if load.jobs.finished < w.jobs.finished || load.jobs.failed < w.jobs.failed {
        pool.jobs_retired.add(w.jobs);
    }
    let worked = load.jobs != w.jobs;
    w.jobs = load.jobs;
    let idle = load.state.as_deref() == Some("idle") && load.job.is_none();
    w.idle_since = match (idle, w.idle_since) {
        (false, _) => None,
        (true, Some(since)) if !worked => Some(since),
        (true, _) => Some(now),
    };
}
