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
            _ => false,
        }
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
}

impl Store {
    pub fn new(target: RedisTarget) -> Store {
        Store {
            target,
            con: None,
            connects: 0,
        }
    }

    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    pub fn is_connected(&self) -> bool {
        self.con.is_some()
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
            let mut con = self.target.connect()?;
            // Load the scripts sent in one pipeline up front: EVALSHA of an unknown script
            // fails on its own while the next command in the pipeline still runs, which
            // would let a claim overtake the settle that should come first.
            for script in [&*settle::SETTLE, &*claim::CLAIM] {
                script
                    .load(&mut con)
                    .map_err(|source| self.refused(source))?;
            }
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

    /// A Redis error as this store reports it, with the masked URL.
    fn refused(&self, source: redis::RedisError) -> StoreError {
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
