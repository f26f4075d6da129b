//! Health decisions, pure: what a reading of a worker's memory (worker plus horse RSS) and
//! Redis registration means. Memory over the pool's limit for [`MEMORY_STRIKES`] readings in a
//! row recycles the worker warm; a registration silent for longer than `worker_ttl`, while
//! the worker is not busy on a job within its timeout, means stuck: SIGKILL and replace. A
//! reading taken while Redis was unreachable decides nothing about heartbeats.

use std::time::Instant;

use log::Level;

use super::pool::Pool;
use super::state::{Action, Out, Phase, Retire, Sample, State, Worker, secs};

use crate::store::Registration;

/// Consecutive memory readings over the limit before a worker is recycled.
pub const MEMORY_STRIKES: u32 = 3;

impl State {
    pub(super) fn on_health(
        &mut self,
        now: Instant,
        redis_ok: bool,
        samples: Vec<Sample>,
        out: &mut Out,
    ) {
        if redis_ok && self.redis_down {
            // Nobody could see heartbeats while Redis was away: restart the clocks.
            for w in self.workers.values_mut() {
                w.last_alive = now;
            }
        }
        self.redis_down = !redis_ok;
        let running = self.phase == Phase::Running;
        for s in samples {
            let Some(w) = self.workers.get_mut(&s.id) else {
                continue;
            };
            let Some(pool) = self.pools.get(&w.pool) else {
                continue;
            };
            w.rss = s.rss;
            let registration = s.registration.filter(|_| redis_ok);
            if let Some(reg) = &registration {
                note_registration(w, reg, now);
            }
            if !running || w.killed || over_memory(w, pool, s.rss, out) {
                continue;
            }
            if let Some(reg) = registration {
                kill_if_stuck(w, pool, &reg, now, out);
            }
        }
    }
}

/// What Redis says of the worker: registered, its state, and its latest sign of life.
fn note_registration(w: &mut Worker, reg: &Registration, now: Instant) {
    if reg.present {
        w.registered = true;
        w.redis_state = reg.state.clone();
    }
    if let Some(age) = reg.heartbeat_age
        && let Some(at) = now.checked_sub(age)
    {
        w.last_alive = w.last_alive.max(at);
    }
}

/// Counts a reading over the pool's memory limit; the third in a row recycles the worker
/// warm. Returns true when it did.
fn over_memory(w: &mut Worker, pool: &Pool, rss: Option<u64>, out: &mut Out) -> bool {
    let (Some(rss), Some(limit)) = (rss, pool.spec.memory_limit) else {
        return false;
    };
    if w.retire.is_some() {
        return false;
    }
    if rss <= limit {
        w.mem_strikes = 0;
        return false;
    }
    w.mem_strikes += 1;
    if w.mem_strikes < MEMORY_STRIKES {
        return false;
    }
    w.retire = Some(Retire::Memory);
    w.term_warm(out);
    let w = w.clone();
    out.worker(
        Level::Warn,
        &w,
        format!(
            "memory: worker and horse use {} MiB, over memory_limit {} MiB for {MEMORY_STRIKES} readings; recycling warm (finishes its job first), replaced when it exits",
            rss / (1024 * 1024),
            limit / (1024 * 1024)
        ),
    );
    true
}

/// A worker silent for longer than `worker_ttl` that is not busy on a job within its
/// timeout is stuck: SIGKILL, and its replacement follows its exit.
fn kill_if_stuck(w: &mut Worker, pool: &Pool, reg: &Registration, now: Instant, out: &mut Out) {
    let silent = now.saturating_duration_since(w.last_alive);
    if silent <= pool.worker_ttl || reg.busy_within_timeout {
        return;
    }
    w.killed = true;
    w.retire = Some(Retire::Stuck);
    let w = w.clone();
    if let Some(pid) = w.pid {
        out.0.push(Action::Kill { id: w.id, pid });
    }
    let what = if reg.present {
        "its last_heartbeat in Redis is"
    } else {
        "its Redis registration is missing, last seen"
    };
    out.worker(
        Level::Warn,
        &w,
        format!(
            "stuck: {what} {} old (worker_ttl {}) and it is not busy on a job within its timeout; SIGKILL to its process group, then restart",
            secs(silent),
            secs(pool.worker_ttl)
        ),
    );
}
