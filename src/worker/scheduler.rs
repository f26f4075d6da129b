//! `--with-scheduler` (§9): move due jobs from `rq:scheduled:Q` to their queues once a second,
//! under RQ 2.12's per-queue lock, so `enqueue_in`/`enqueue_at` and retry intervals work with
//! no Python process running. Several workers may run it: the lock lets exactly one move each
//! queue's jobs, and Python's scheduler takes part in the same protocol.

use crate::protocol::scripts::{SCHEDULER_RELEASE, SCHEDULER_TICK};
use crate::protocol::time::Instant;

use super::store::{Store, StoreError, new_execution_id};

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
        let now = Instant::now();
        let reply: Vec<redis::Value> = store.run(|con| {
            let mut inv = SCHEDULER_TICK.prepare_invoke();
            inv.arg(&self.name)
                .arg(now.unix_secs())
                .arg(now.iso())
                .arg(&self.hostname)
                .arg(std::process::id());
            for q in &self.queues {
                inv.arg(q);
            }
            inv.invoke(con)
        })?;
        let mut it = reply.into_iter();
        let moved = match it.next() {
            Some(redis::Value::Int(n)) => n.max(0) as u64,
            _ => 0,
        };
        let owned: Vec<String> = it
            .filter_map(|v| match v {
                redis::Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                _ => None,
            })
            .collect();
        if owned != self.owned {
            if owned.is_empty() {
                log::info!("Scheduler {}: owns no queue now", self.name);
            } else {
                log::info!(
                    "Scheduler {}: scheduling jobs of {}",
                    self.name,
                    owned.join(", ")
                );
            }
            self.owned = owned;
        }
        Ok(moved)
    }

    /// Gives the locks up so another scheduler takes over at once.
    pub fn release(&mut self, store: &mut Store) {
        let result = store.run(|con| {
            let mut inv = SCHEDULER_RELEASE.prepare_invoke();
            inv.arg(&self.name);
            for q in &self.queues {
                inv.arg(q);
            }
            inv.invoke::<i64>(con)
        });
        if let Err(e) = result {
            log::debug!("releasing scheduler locks failed: {e}");
        }
    }
}
