//! The worker's own record (§5): birth ([`birth.lua`](birth.lua)), heartbeats while idle and
//! busy ([`heartbeat_idle.lua`](heartbeat_idle.lua), [`heartbeat_busy.lua`](heartbeat_busy.lua)),
//! the shutdown request, and death ([`death.lua`](death.lua)). Heartbeats are scripts rather
//! than pipelines: redis-rs waits its read timeout once per reply, so a pipeline of N commands
//! blocks N times 5 s while Redis is stalled; one script is one reply.

use std::sync::LazyLock;

use redis::Script;

use super::claim::Claimed;
use super::{Store, StoreError, script};
use crate::protocol::keys;
use crate::protocol::time::Instant;

/// Birth registration, refusing a name a live worker holds, atomically so two workers
/// started with the same name cannot both pass the check.
static BIRTH: LazyLock<Script> =
    LazyLock::new(|| script::guarded("birth", include_str!("birth.lua")));
static HEARTBEAT_IDLE: LazyLock<Script> =
    LazyLock::new(|| script::plain(include_str!("heartbeat_idle.lua")));
static HEARTBEAT_BUSY: LazyLock<Script> =
    LazyLock::new(|| script::plain(include_str!("heartbeat_busy.lua")));
static DEATH: LazyLock<Script> = LazyLock::new(|| script::plain(include_str!("death.lua")));

impl Store {
    /// Registers the worker (§5). Returns false when a live worker holds the name. `renew`
    /// re-registers over this worker's own record after Redis lost (part of) it.
    pub fn birth(
        &mut self,
        name: &str,
        fields: &[(&str, String)],
        queues: &[String],
        ttl: u64,
        renew: bool,
    ) -> Result<bool, StoreError> {
        let key = keys::worker(name);
        self.run(|con| {
            let mut inv = BIRTH.key(&key);
            inv.arg(ttl)
                .arg(if renew { "1" } else { "0" })
                .arg(fields.len());
            for (k, v) in fields {
                inv.arg(*k).arg(v);
            }
            for q in queues {
                inv.arg(q);
            }
            let registered: i64 = inv.invoke(con)?;
            Ok(registered == 1)
        })
    }

    /// Records the worker's `state` (e.g. `suspended` while paused); the next claim records
    /// the state it finds.
    pub fn set_state(&mut self, name: &str, state: &str) -> Result<(), StoreError> {
        let key = keys::worker(name);
        self.run(|con| {
            redis::cmd("HSET")
                .arg(&key)
                .arg("state")
                .arg(state)
                .exec(con)
        })
    }

    /// The connection's address as Redis sees it, for the worker's `ip_address` field.
    pub fn client_address(&mut self, name: &str) -> String {
        let info = self.run(|con| {
            redis::cmd("CLIENT").arg("SETNAME").arg(name).exec(con)?;
            redis::cmd("CLIENT").arg("INFO").query::<String>(con)
        });
        info.ok()
            .and_then(|text| {
                text.split_whitespace()
                    .find_map(|f| f.strip_prefix("addr=").map(str::to_string))
            })
            .unwrap_or_else(|| "unknown".to_string())
    }

    /// The idle heartbeat. Returns true when the worker's record was lost (a long outage, a
    /// Redis restart without persistence; a claim or settle may since have recreated a bare
    /// hash), so the caller registers again.
    pub fn heartbeat_idle(&mut self, name: &str, ttl: u64) -> Result<bool, StoreError> {
        let key = keys::worker(name);
        let now = Instant::now();
        self.run(|con| {
            let registered: i64 = HEARTBEAT_IDLE
                .key(&key)
                .arg(now.iso())
                .arg(ttl)
                .invoke(con)?;
            Ok(registered == 0)
        })
    }

    /// Heartbeat while a horse runs (§7.4): worker hash, execution hash, `rq:wip:Q` score
    /// and the job's `last_heartbeat`, in one script.
    pub fn heartbeat_busy(
        &mut self,
        name: &str,
        c: &Claimed,
        working: f64,
        ttl: u64,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let ttl = ttl as i64;
        self.run(|con| {
            HEARTBEAT_BUSY
                .key(keys::worker(name))
                .key(keys::execution(&c.record.id, &c.execution_id))
                .key(keys::wip(&c.queue))
                .key(keys::executions(&c.record.id))
                .key(keys::job(&c.record.id))
                .arg(format!("{working:.6}"))
                .arg(now.iso())
                .arg(now.unix_float())
                .arg(ttl)
                .arg(keys::wip_member(&c.record.id, &c.execution_id))
                .arg(&c.execution_id)
                .arg(now.unix_secs() + ttl)
                .arg(now.unix_secs() + ttl + 60)
                .invoke::<i64>(con)
                .map(drop)
        })
    }

    pub fn mark_shutdown_requested(&mut self, name: &str) -> Result<(), StoreError> {
        let now = Instant::now();
        self.run(|con| {
            redis::cmd("HSET")
                .arg(keys::worker(name))
                .arg("shutdown_requested_date")
                .arg(now.iso())
                .exec(con)
        })
    }

    /// Death registration (§5): out of the worker sets, `death` written, hash kept 60 s.
    pub fn death(&mut self, name: &str, queues: &[String]) -> Result<(), StoreError> {
        self.record_death(name, queues, false).map(drop)
    }

    /// Death registration for a worker that died without doing it (rq-supervisor's crash
    /// cleanup): also drops `current_job`, and does not recreate a record that is gone.
    /// Returns true when the record existed.
    pub fn record_death(
        &mut self,
        name: &str,
        queues: &[String],
        dead: bool,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        self.run(|con| {
            let mut inv = DEATH.key(keys::worker(name));
            inv.key(keys::WORKERS);
            for q in queues {
                inv.key(keys::workers_of(q));
            }
            let marked: i64 = inv
                .arg(now.iso())
                .arg(crate::protocol::defaults::DEATH_TTL)
                .arg(if dead { "dead" } else { "own" })
                .invoke(con)?;
            Ok(marked == 1)
        })
    }
}
