//! Health decisions, pure: what a reading of a worker's memory (worker plus horse RSS) and
//! Redis registration means. Memory over the pool's limit for [`MEMORY_STRIKES`] readings in a
//! row recycles the worker warm; a registration silent for longer than `worker_ttl`, while
//! the worker is not busy on a job within its timeout, means stuck: SIGKILL and replace. A
//! reading taken while Redis was unreachable decides nothing about heartbeats.

use std::time::Instant;

use log::Level;

use super::state::{Action, Out, Phase, Retire, State, WorkerId, secs};

/// What the runtime read about one worker at a health check.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub id: WorkerId,
    /// Worker plus descendants' resident memory, bytes; `None` if unreadable.
    pub rss: Option<u64>,
    /// The worker's Redis registration; `None` when Redis could not be asked.
    pub registration: Option<Registration>,
}

pub use crate::store::Registration;

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
        for s in samples {
            let Some(w) = self.workers.get_mut(&s.id) else {
                continue;
            };
            let Some(pool) = self.pools.get(&w.pool) else {
                continue;
            };
            if let Some(reg) = &s.registration
                && redis_ok
            {
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
            if self.phase != Phase::Running || w.killed {
                continue;
            }
            if let (Some(rss), Some(limit)) = (s.rss, pool.spec.memory_limit)
                && w.retire.is_none()
            {
                if rss > limit {
                    w.mem_strikes += 1;
                    if w.mem_strikes >= MEMORY_STRIKES {
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
                        continue;
                    }
                } else {
                    w.mem_strikes = 0;
                }
            }
            let Some(reg) = s.registration.filter(|_| redis_ok) else {
                continue;
            };
            let silent = now.saturating_duration_since(w.last_alive);
            if silent > pool.worker_ttl && !reg.busy_within_timeout {
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
        }
    }
}
