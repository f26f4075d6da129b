//! The scheduler's Redis side (§9): one tick ([`scheduler_tick.lua`](scheduler_tick.lua))
//! takes or refreshes the per-queue locks with RQ 2.12's value and TTL and moves the due jobs
//! of the queues it owns; the release ([`scheduler_release.lua`](scheduler_release.lua))
//! gives the locks up so another scheduler takes over at once.

use std::sync::LazyLock;

use redis::Script;

use super::{Store, StoreError, script};
use crate::protocol::time::Instant;

static SCHEDULER_TICK: LazyLock<Script> =
    LazyLock::new(|| script::guarded("scheduler_tick", include_str!("scheduler_tick.lua")));
static SCHEDULER_RELEASE: LazyLock<Script> =
    LazyLock::new(|| script::guarded("scheduler_release", include_str!("scheduler_release.lua")));

/// What one tick did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    /// Jobs moved from `rq:scheduled:Q` to their queue.
    pub moved: u64,
    /// The queues whose lock this scheduler holds now.
    pub owned: Vec<String>,
}

impl Store {
    /// One scheduler tick for the scheduler `name` on `queues`.
    pub fn scheduler_tick(
        &mut self,
        name: &str,
        hostname: &str,
        queues: &[String],
    ) -> Result<Tick, StoreError> {
        let now = Instant::now();
        let reply: Vec<redis::Value> = self.run(|con| {
            let mut inv = SCHEDULER_TICK.prepare_invoke();
            inv.arg(name)
                .arg(now.unix_secs())
                .arg(now.iso())
                .arg(hostname)
                .arg(std::process::id());
            for q in queues {
                inv.arg(q);
            }
            inv.invoke(con)
        })?;
        let mut it = reply.into_iter();
        let moved = match it.next() {
            Some(redis::Value::Int(n)) => n.max(0) as u64,
            _ => 0,
        };
        let owned = it
            .filter_map(|v| match v {
                redis::Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                _ => None,
            })
            .collect();
        Ok(Tick { moved, owned })
    }

    /// Releases the scheduler's locks (compare-and-delete) and its hash.
    pub fn scheduler_release(&mut self, name: &str, queues: &[String]) -> Result<(), StoreError> {
        self.run(|con| {
            let mut inv = SCHEDULER_RELEASE.prepare_invoke();
            inv.arg(name);
            for q in queues {
                inv.arg(q);
            }
            inv.invoke::<i64>(con).map(drop)
        })
    }
}
