//! `--with-scheduler` (§9): move due jobs from `rq:scheduled:Q` to their queues once a second,
//! under RQ 2.12's per-queue lock, so `enqueue_in`/`enqueue_at` and retry intervals work with
//! no Python process running. Several workers may run it: the lock lets exactly one move each
//! queue's jobs, and Python's scheduler takes part in the same protocol.

use crate::protocol::new_execution_id;
use crate::store::{Store, StoreError};

pub struct Scheduler {
    /// RQ 2.10+ identifies a scheduler by a uuid hex name, stored as the lock value.
    pub name: String,
    queues: Vec<String>,
    hostname: String,
    owned: Vec<String>,
}

impl Scheduler {
    pub fn new(queues: &[String], hostname: &str) -> Scheduler {
        Scheduler {
            name: new_execution_id(),
            queues: queues.to_vec(),
            hostname: hostname.to_string(),
            owned: Vec::new(),
        }
    }

    /// One tick; returns how many jobs were moved.
    pub fn tick(&mut self, store: &mut Store) -> Result<u64, StoreError> {
        let tick = store.scheduler_tick(&self.name, &self.hostname, &self.queues)?;
        if tick.owned != self.owned {
            if tick.owned.is_empty() {
                log::info!("Scheduler {}: owns no queue now", self.name);
            } else {
                log::info!(
                    "Scheduler {}: scheduling jobs of {}",
                    self.name,
                    tick.owned.join(", ")
                );
            }
            self.owned = tick.owned;
        }
        Ok(tick.moved)
    }

    /// Gives the locks up so another scheduler takes over at once.
    pub fn release(&mut self, store: &mut Store) {
        if let Err(e) = store.scheduler_release(&self.name, &self.queues) {
            log::debug!("releasing scheduler locks failed: {e}");
        }
    }
}
