//! Giving a claimed job back unchanged ([`unclaim.lua`](unclaim.lua)): the worker could not
//! start it for a reason in its own environment, so the job is not failed, not retried, and
//! goes back to the front of its queue for a worker that can run it.

use std::sync::LazyLock;

use redis::Script;

use super::claim::Claimed;
use super::{Store, StoreError, script};

static UNCLAIM: LazyLock<Script> =
    LazyLock::new(|| script::guarded("unclaim", include_str!("unclaim.lua")));

/// What the unclaim did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unclaimed {
    /// Back at the front of its queue.
    Requeued,
    /// The execution was already settled (by an earlier attempt, or someone else).
    Unknown,
}

impl Store {
    /// Puts `c` back at the front of its queue as it was before the claim.
    pub fn unclaim(&mut self, c: &Claimed, worker: &str) -> Result<Unclaimed, StoreError> {
        let before = |field: &str| {
            c.record
                .fields
                .get(field)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let verdict: String = self.run(|con| {
            UNCLAIM
                .prepare_invoke()
                .arg(&c.record.id)
                .arg(&c.queue)
                .arg(&c.execution_id)
                .arg(worker)
                .arg(before("started_at"))
                .arg(before("last_heartbeat"))
                .arg(before("worker_name"))
                .arg(before("ttl"))
                .invoke(con)
        })?;
        Ok(if verdict == "requeued" {
            Unclaimed::Requeued
        } else {
            Unclaimed::Unknown
        })
    }
}
