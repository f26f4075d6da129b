//! Python RQ 2.12 on the wire: key names, timestamps, the job record and its payload codec,
//! and result stream entries. The Lua scripts that move a job between states are in
//! [`crate::store`].
//!
//! Nothing here knows about processes. The contract these modules follow is
//! `shared/research/rq-protocol.md`; section numbers in comments refer to it.

pub mod job;
pub mod keys;
pub mod payload;
pub mod pyrepr;
pub mod result;
pub mod time;

/// `uuid4().hex`: 32 lowercase hex digits with the version and variant bits of a v4 UUID; RQ's
/// execution ids and scheduler names.
pub fn new_execution_id() -> String {
    let mut n = fastrand::u128(..);
    n = (n & !(0xf << 76)) | (0x4 << 76);
    n = (n & !(0x3 << 62)) | (0x2 << 62);
    format!("{n:032x}")
}

/// The RQ version our workers report in `rq:worker:W` `version`; `rq info` and dashboards show it.
pub const RQ_VERSION: &str = "2.12.0";

/// Job statuses, exactly as RQ 2.12 writes them (§0).
pub mod status {
    pub const QUEUED: &str = "queued";
    pub const STARTED: &str = "started";
    pub const FINISHED: &str = "finished";
    pub const FAILED: &str = "failed";
    pub const DEFERRED: &str = "deferred";
    pub const SCHEDULED: &str = "scheduled";
    pub const STOPPED: &str = "stopped";
    pub const CANCELED: &str = "canceled";
}

/// Defaults RQ 2.12 uses when a job or the worker command line does not say otherwise.
pub mod defaults {
    /// Job timeout when the `timeout` field is absent (seconds).
    pub const JOB_TIMEOUT: i64 = 180;
    /// `--results-ttl`.
    pub const RESULT_TTL: i64 = 500;
    /// Failure TTL for the job hash and the failed registry: one year.
    pub const FAILURE_TTL: i64 = 31_536_000;
    /// `--worker-ttl`.
    pub const WORKER_TTL: u64 = 420;
    /// `--job-monitoring-interval`.
    pub const JOB_MONITORING_INTERVAL: u64 = 30;
    /// `--maintenance-interval`.
    pub const MAINTENANCE_INTERVAL: u64 = 600;
    /// How long a dead worker's hash is kept after death registration.
    pub const DEATH_TTL: i64 = 60;
    /// Approximate cap of each `rq:results:J` stream.
    pub const RESULTS_MAXLEN: usize = 10;
}

#[cfg(test)]
mod tests {
    #[test]
    fn execution_ids_look_like_uuid4_hex() {
        let id = super::new_execution_id();
        assert_eq!(id.len(), 32);
        assert_eq!(&id[12..13], "4");
        assert!(matches!(&id[16..17], "8" | "9" | "a" | "b"));
    }
}
