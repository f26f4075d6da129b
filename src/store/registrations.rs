//! What rq-supervisor's health check reads about its workers, read-only
//! ([`registrations.lua`](registrations.lua)): one script, one reply, so a stalled Redis costs
//! one read timeout however many workers there are.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use redis::Script;

use super::{Store, StoreError, script};
use crate::protocol::{defaults, keys, time};

static REGISTRATIONS: LazyLock<Script> =
    LazyLock::new(|| script::plain(include_str!("registrations.lua")));

/// One worker's registration as the supervisor judges it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Registration {
    /// `rq:worker:<name>` exists.
    pub present: bool,
    /// Time since its `last_heartbeat`, by the supervisor's clock.
    pub heartbeat_age: Option<Duration>,
    /// The `state` field: `started`, `idle`, `busy`, `suspended`.
    pub state: Option<String>,
    /// It runs a job that is still within its timeout (so silence may be a long job).
    pub busy_within_timeout: bool,
}

/// Per worker: last_heartbeat, state, current_job, and that job's status, started_at, timeout.
type Row = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

impl Store {
    /// Reads each named worker's registration, in order. With no names, only checks that
    /// Redis answers.
    pub fn registrations(&mut self, names: &[String]) -> Result<Vec<Registration>, StoreError> {
        if names.is_empty() {
            return self.ping().map(|_| Vec::new());
        }
        let rows: Vec<Row> = self.run(|con| {
            let mut inv = REGISTRATIONS.prepare_invoke();
            for n in names {
                inv.key(keys::worker(n));
            }
            inv.invoke(con)
        })?;
        let wall = SystemTime::now();
        Ok(rows.into_iter().map(|row| judge(wall, row)).collect())
    }
}

fn judge(wall: SystemTime, row: Row) -> Registration {
    let (heartbeat, state, job, status, started, timeout) = row;
    let present = heartbeat.is_some() || state.is_some();
    let heartbeat_age = heartbeat
        .as_deref()
        .and_then(time::parse_iso)
        .map(|t| wall.duration_since(t.system()).unwrap_or(Duration::ZERO));
    let busy_within_timeout = job.as_deref().is_some_and(|j| !j.is_empty())
        && state.as_deref() == Some("busy")
        && status.as_deref() == Some("started")
        && within_timeout(wall, started.as_deref(), timeout.as_deref());
    Registration {
        present,
        heartbeat_age,
        state,
        busy_within_timeout,
    }
}

/// A job started at `started` with `timeout` seconds (`-1` = none; missing = RQ's default)
/// is still allowed to run at `now`.
fn within_timeout(now: SystemTime, started: Option<&str>, timeout: Option<&str>) -> bool {
    let timeout: i64 = timeout
        .and_then(|t| t.trim().parse::<f64>().ok())
        .map(|t| t as i64)
        .unwrap_or(defaults::JOB_TIMEOUT);
    if timeout < 0 {
        return true;
    }
    let Some(started) = started.and_then(time::parse_iso) else {
        return true;
    };
    let ran = now
        .duration_since(started.system())
        .unwrap_or(Duration::ZERO);
    ran <= Duration::from_secs(timeout as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        let now = SystemTime::now();
        let ago = |s: u64| time::Instant::from_system(now - Duration::from_secs(s)).iso();
        assert!(within_timeout(now, Some(&ago(10)), Some("180")));
        assert!(!within_timeout(now, Some(&ago(200)), Some("180")));
        assert!(within_timeout(now, Some(&ago(9999)), Some("-1")));
        assert!(!within_timeout(now, Some(&ago(200)), None));
        assert!(within_timeout(now, None, Some("5")));
    }
}
