//! Fault injection for the reliability tests: with the cargo feature `fault-injection`, a
//! worker kills itself at a named point of a job's life, so a test can prove that a crash in
//! any window leaves the job recoverable. Without the feature, [`fault_point!`] expands to
//! nothing: no code, no environment lookup, no cost.
//!
//! The points, in the order a job passes them:
//!
//! | name | where the worker dies |
//! |---|---|
//! | `after-claim` | the CLAIM script returned: the job is popped *and* recorded started (status, `rq:wip:Q` member, execution hash, worker `current_job`) in one atomic step, so no "popped but not started" point exists |
//! | `after-fork` | the work horse was forked (or the command handler spawned) |
//! | `after-horse-exit` | the horse exited and was reaped; its outcome is only in the worker's memory, not yet written |
//! | `after-settle` | the SETTLE script wrote the outcome; the worker has not looped yet |
//!
//! Two more points do not kill the worker: they make it lose the reply of a script Redis did
//! run, as a connection that breaks or times out at that moment would (the worker drops the
//! connection and sees an error), so a test can check that repeating the call is safe:
//! `lose-claim-reply` and `lose-settle-reply`.
//!
//! Configuration, read from the environment at each point:
//!
//! - `RQ_FAULT`: comma-separated point names; `NAME` or `NAME:kill` sends SIGKILL to the
//!   worker itself, `NAME:abort` calls `std::process::abort` (SIGABRT).
//! - `RQ_FAULT_FILE` (optional): the fault fires only if this file exists, and removes it when
//!   it fires (one `unlink`, so of several workers sharing it exactly one fires). A test arms
//!   the fault by creating the file; a restarted worker with the same environment runs
//!   normally until the file is created again.

/// Marks a point where a test may make the worker die. Expands to nothing unless the crate is
/// built with the `fault-injection` feature.
#[cfg(feature = "fault-injection")]
macro_rules! fault_point {
    ($name:literal) => {
        $crate::fault::hit($name)
    };
}

#[cfg(not(feature = "fault-injection"))]
macro_rules! fault_point {
    ($name:literal) => {};
}

pub(crate) use fault_point;

/// True when the reply of the call just made must be treated as lost (see the module docs).
/// Always false, with no code, unless the crate is built with `fault-injection`.
#[cfg(feature = "fault-injection")]
macro_rules! lose_reply {
    ($name:literal) => {
        $crate::fault::armed($name).is_some()
    };
}

#[cfg(not(feature = "fault-injection"))]
macro_rules! lose_reply {
    ($name:literal) => {
        false
    };
}

pub(crate) use lose_reply;

/// The variable naming the armed points.
pub const FAULT_ENV: &str = "RQ_FAULT";
/// The variable naming the arming file.
pub const FAULT_FILE_ENV: &str = "RQ_FAULT_FILE";

/// The action configured for `point` if it is armed now; consumes the arming file.
#[cfg(feature = "fault-injection")]
pub fn armed(point: &str) -> Option<String> {
    let spec = std::env::var(FAULT_ENV).ok()?;
    let action = spec.split(',').map(str::trim).find_map(|entry| {
        let (name, action) = entry.split_once(':').unwrap_or((entry, "kill"));
        (name == point).then(|| action.to_string())
    })?;
    if let Some(file) = std::env::var_os(FAULT_FILE_ENV)
        && std::fs::remove_file(&file).is_err()
    {
        return None;
    }
    log::warn!("fault injection: {point} ({action})");
    Some(action)
}

/// Dies here if `point` is armed. Only compiled with the `fault-injection` feature.
#[cfg(feature = "fault-injection")]
pub fn hit(point: &str) {
    let Some(action) = armed(point) else {
        return;
    };
    log::logger().flush();
    if action == "abort" {
        std::process::abort();
    }
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    // SIGKILL cannot be caught; this is never reached.
    std::process::abort();
}
