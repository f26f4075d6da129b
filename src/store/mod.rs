//! The one Redis gateway. Every Redis command the crate sends goes through here, whoever sends
//! it: the worker (claim, settle, registration, heartbeats, maintenance, the scheduler), the
//! supervisor (crash cleanup, reading registrations) and the producer (enqueueing, reading
//! results). The worker's wake-up connection ([`crate::listener`]) only subscribes.
//!
//! Each Lua script is a `.lua` file beside the module that builds its ARGV and turns its reply
//! into a Rust type; key names come from [`crate::protocol::keys`] on both sides.
//!
//! A [`Store`] opens its connection lazily and drops it on any error, so the caller's only
//! recovery step is "try again later"; claims and settles are safe to repeat.

mod backlog;
mod claim;
mod cleanup;
pub mod jobs;
mod maintenance;
mod registration;
mod registrations;
mod scheduler;
pub mod script;
mod settle;
mod unclaim;

use redis::{Connection, RedisError};

use crate::conn::{ConnError, RedisTarget};

pub use backlog::{Backlog, JobCounts, QueueLoad, WorkerLoad};
pub use claim::{ClaimNotes, ClaimRequest, ClaimResult, Claimed};
pub use cleanup::Cleanup;
pub use maintenance::{HOLD_UP_TO as MAINTENANCE_HOLD_UP_TO, Report as MaintenanceReport};
pub use registrations::Registration;
pub use scheduler::Tick as SchedulerTick;
pub use settle::{Ending, Settlement, Verdict};
pub use unclaim::Unclaimed;

/// A Redis operation failed; the connection has been dropped.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Connect(#[from] ConnError),
    #[error("Redis at {url}: {source}{}", crate::conn::hint(source))]
    Redis {
        url: String,
        #[source]
        source: RedisError,
    },
    /// A Sentinel target's master answered `READONLY`: a failover made it a replica. The
    /// connection is dropped, and the next one goes to the master the Sentinels name now.
    #[error(
        "Redis at {url} is no longer the master ({source}): a failover; reconnecting to the master the Sentinels name"
    )]
    Demoted {
        url: String,
        #[source]
        source: RedisError,
    },
}

impl StoreError {
    /// True when Redis answered that it is still loading its data (after a restart).
    pub fn is_loading(&self) -> bool {
        let loading = |e: &RedisError| {
            e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
        };
        match self {
            StoreError::Redis { source, .. } => loading(source),
            StoreError::Connect(ConnError::Connect { source, .. }) => loading(source),
            _ => false,
        }
    }

    /// True when Redis could not be reached at all (refused, not there, timed out, or no
    /// socket could be opened): waiting cures it, unlike a refusal.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Redis { source, .. } => crate::conn::is_unreachable(source),
            StoreError::Connect(ConnError::Connect { source, .. }) => {
                crate::conn::is_unreachable(source)
            }
            // A failover under way, or Sentinels down: waiting cures both.
            StoreError::Connect(ConnError::NoMaster { .. }) | StoreError::Demoted { .. } => true,
            _ => false,
        }
    }

    /// True when no Sentinel answered a discovery. The target has already said so, once
    /// per streak, naming every Sentinel; callers need not repeat it.
    pub fn is_sentinel_outage(&self) -> bool {
        matches!(
            self,
            StoreError::Connect(ConnError::NoMaster {
                sentinels_down: true,
                ..
            })
        )
    }

    /// True when the server itself refused (ACL, wrong type, read-only replica, OOM), as
    /// opposed to the connection failing or Redis still loading its data after a restart.
    /// Refusals are logged at every attempt; both are retried.
    pub fn is_refusal(&self) -> bool {
        matches!(self, StoreError::Redis { source, .. } if source.kind() != redis::ErrorKind::Io
            && !self.is_loading() && !source.is_connection_dropped() && !source.is_timeout())
    }
}

pub struct Store {
    target: RedisTarget,
    con: Option<Connection>,
    /// Connections opened so far; a change tells the worker Redis may have lost its state.
    connects: u64,
    /// Sentinel targets: the master the last connection reached, and the settles recorded
    /// lately, replayed when a connection reaches another master (see [`Replay`]).
    master: Option<String>,
    recent: Replay,
    /// How many times a new connection reached another master than the one before.
    failovers: u64,
}

/// The settles of the last [`Replay::WINDOW`], kept for a Sentinel target. A failover
/// promotes a replica while the old master still accepts writes (until the Sentinels demote
/// it, seconds later), and whatever it took meanwhile is thrown away when it rejoins as a
/// replica: a settle recorded there would leave its job started forever on the new master.
/// Settles are safe to repeat (an execution no longer in `rq:wip:Q` answers `unknown`), so
/// after a switch to another master the recent ones are simply sent again.
#[derive(Default)]
struct Replay {
    settles: std::collections::VecDeque<(std::time::Instant, redis::Cmd, usize)>,
    bytes: usize,
}

impl Replay {
    /// Longer than a failover leaves an old master writable (the Sentinels reconfigure it
    /// about ten seconds after the promotion with Redis 7).
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
    /// Large results are not worth unbounded memory: the oldest go first.
    const MAX_BYTES: usize = 16 << 20;

    fn push(&mut self, cmd: &redis::Cmd) {
        let size = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => b.len(),
                _ => 0,
            })
            .sum::<usize>();
        self.settles
            .push_back((std::time::Instant::now(), cmd.clone(), size));
        self.bytes += size;
        self.expire();
    }

    fn expire(&mut self) {
        while let Some((at, _, size)) = self.settles.front() {
            if at.elapsed() < Self::WINDOW && self.bytes <= Self::MAX_BYTES {
                break;
            }
            self.bytes -= size;
            self.settles.pop_front();
        }
    }
}

impl Store {
    pub fn new(target: RedisTarget) -> Store {
        Store {
            target,
            con: None,
            connects: 0,
            master: None,
            recent: Replay::default(),
            failovers: 0,
        }
    }

    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    /// Drops the connection, so the next command opens a new one (after a `+switch-master`,
    /// to the new master).
    pub fn disconnect(&mut self) {
        self.con = None;
    }

    pub fn is_connected(&self) -> bool {
        self.con.is_some()
    }

    /// How many times a connection reached another master (Sentinel targets): what the
    /// old master took after the promotion is gone.
    pub fn failovers(&self) -> u64 {
        self.failovers
    }

    /// How many connections have been opened; increases after every reconnect.
    pub fn connects(&self) -> u64 {
        self.connects
    }

    /// Connects if needed and checks that Redis answers.
    pub fn ping(&mut self) -> Result<(), StoreError> {
        self.run(|con| redis::cmd("PING").exec(con))
    }

    /// Runs `f` on the connection, connecting first if needed. Any error drops the
    /// connection: after a timeout or a broken socket its state is unknown.
    pub fn run<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        crate::conn::uninterrupted(|| self.run_now(f))
    }

    fn run_now<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        if self.con.is_none() {
            let (mut con, master) = self.target.connect_master()?;
            // Load the scripts sent in one pipeline up front: EVALSHA of an unknown script
            // fails on its own while the next command in the pipeline still runs, which
            // would let a claim overtake the settle that should come first.
            for script in [&*settle::SETTLE, &*claim::CLAIM] {
                script
                    .load(&mut con)
                    .map_err(|source| self.refused(source))?;
            }
            if master.is_some() && self.master.is_some() && master != self.master {
                self.replay(&mut con, master.as_deref().unwrap_or_default())?;
                self.failovers += 1;
            }
            self.master = master;
            self.con = Some(con);
            self.connects += 1;
        }
        let con = self.con.as_mut().expect("connected above");
        match f(con) {
            Ok(v) => Ok(v),
            Err(source) => {
                self.con = None;
                Err(self.refused(source))
            }
        }
    }

    /// After a failover: the recent settles again, on the new master (see [`Replay`]).
    fn replay(&mut self, con: &mut Connection, master: &str) -> Result<(), StoreError> {
        self.recent.expire();
        let mut applied = 0;
        for (_, cmd, _) in &self.recent.settles {
            let reply: redis::Value = cmd.query(con).map_err(|e| self.refused(e))?;
            if settle::Verdict::from_reply(reply).ok() != Some(settle::Verdict::Unknown) {
                applied += 1;
            }
        }
        match self.recent.settles.len() {
            0 => log::info!("the Redis master moved to {master}"),
            n => log::info!(
                "the Redis master moved to {master}: sent the last {n} settles again ({applied} had not reached it)"
            ),
        }
        Ok(())
    }

    /// Keeps a settle that Redis took, for [`Store::replay`] after a failover.
    fn recorded(&mut self, cmd: &redis::Cmd) {
        if self.target.is_sentinel() {
            self.recent.push(cmd);
        }
    }

    /// A Redis error as this store reports it, with the masked URL. `READONLY` from a master
    /// found through Sentinels is a failover, not a misconfiguration.
    fn refused(&self, source: redis::RedisError) -> StoreError {
        if self.target.is_sentinel() && matches!(source.code(), Some("READONLY" | "NOREPLICAS")) {
            return StoreError::Demoted {
                url: self.target.masked().to_string(),
                source,
            };
        }
        StoreError::Redis {
            url: self.target.masked().to_string(),
            source,
        }
    }

    /// What a connection that broke before the reply arrived leaves behind (fault injection).
    #[cfg(feature = "fault-injection")]
    fn lost_reply(&mut self) -> StoreError {
        self.con = None;
        self.refused(
            std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "fault injection: the reply was lost",
            )
            .into(),
        )
    }

    #[cfg(not(feature = "fault-injection"))]
    fn lost_reply(&mut self) -> StoreError {
        unreachable!("replies are lost only with the fault-injection feature")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_keeps_recent_settles_within_its_memory_bound() {
        let mut r = Replay::default();
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg("x".repeat(1 << 20));
        for _ in 0..40 {
            r.push(&cmd);
        }
        // 40 settles of a little over 1 MiB each, at most 16 MiB kept: the oldest went first.
        assert_eq!(r.settles.len(), 15);
        assert!(r.bytes <= Replay::MAX_BYTES);
        r.push(&redis::cmd("PING"));
        assert_eq!(
            r.settles.back().map(|(_, c, _)| c.args_iter().count()),
            Some(1)
        );
    }

    #[test]
    fn readonly_means_a_failover_only_for_a_sentinel_target() {
        let readonly = || {
            redis::RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
                "You can't write against a read only replica.",
            ))
        };
        let direct = Store::new(RedisTarget::parse("redis://127.0.0.1:1/0").unwrap());
        let e = direct.refused(readonly());
        assert!(
            matches!(e, StoreError::Redis { .. }) && e.is_refusal(),
            "{e}"
        );
        let sentinel =
            Store::new(RedisTarget::parse("redis+sentinel://127.0.0.1:1/mymaster").unwrap());
        let e = sentinel.refused(readonly());
        assert!(matches!(e, StoreError::Demoted { .. }), "{e}");
        assert!(!e.is_refusal() && e.is_unreachable(), "{e}");
        assert!(e.to_string().contains("a failover"), "{e}");
    }
}
