//! The seam between the work loop and whatever runs a job. A [`Handler`] (one per kind:
//! native function, command, later Python) says how it starts a job, its default timeout and
//! why it could not start; what it starts is an [`Execution`], which the worker polls, pumps,
//! finishes or kills without knowing which kind it is. Every ending is an [`Outcome`], whose
//! [`JobFailure`] renders RQ's exception texts in one place.
//!
//! Every execution is a forked work horse ([`fork::Horse`]), or in no-fork mode a run in the
//! worker's own process ([`Handler::run_in_process`], [`inline`]).

mod call;
mod command;
pub mod fork;
pub mod inline;
mod native;
pub mod outcome;
pub mod report;

use std::os::fd::BorrowedFd;

use nix::poll::PollFlags;
use nix::unistd::Pid;

pub use call::{JobCall, JobError};
pub use command::{CommandHandler, STDERR_TAIL, STDOUT_CAP};
pub use native::{NativeFn, NativeHandler};
pub use outcome::{Exit, JobFailure, Outcome, ReturnValue};

use crate::protocol::job::JobRecord;

/// A job that is running.
pub trait Execution {
    /// The process running it, for the log.
    fn pid(&self) -> Option<Pid>;

    /// The descriptors to poll while it runs, with the readiness each waits for.
    fn poll_fds(&self) -> Vec<(BorrowedFd<'_>, PollFlags)>;

    /// Moves whatever data is ready between the worker and the job, without blocking.
    fn pump(&mut self);

    /// The outcome once the job has ended on its own; `None` while it runs.
    fn try_finish(&mut self) -> Option<Outcome>;

    /// Ends the job now (SIGKILL to its whole process group) and says how its process died.
    fn kill(&mut self) -> Exit;

    /// After [`Execution::kill`] for a stop-job command: what the kind does then (a Python
    /// job's `on_stopped` callback runs, as under RQ).
    fn after_stop(&mut self) {}
}

/// Why a job could not be started.
#[derive(Debug, Clone, PartialEq)]
pub struct StartError {
    /// The job's failure text.
    pub failure: JobFailure,
    /// The cause lies in the worker's environment (a process or file limit, a program that
    /// vanished), not in the job.
    pub environment: bool,
    /// The system call's error code, when one failed (for the diagnosis of the limit).
    pub errno: Option<i32>,
}

impl StartError {
    /// A start whose system call failed with `e`, described as `failure`: in the environment
    /// when the error code says so (and for the fork guard's refusal, `ErrorKind::Other`).
    pub fn io(e: &std::io::Error, failure: JobFailure) -> StartError {
        StartError {
            failure,
            environment: environmental(e) || e.kind() == std::io::ErrorKind::Other,
            errno: e.raw_os_error(),
        }
    }

    /// The work horse could not be forked.
    pub fn fork(e: &std::io::Error) -> StartError {
        StartError::io(
            e,
            JobFailure::StartFailed {
                what: "cannot fork a work horse".into(),
                error: e.to_string(),
                fix: None,
            },
        )
    }
}

/// A job about to start, as every handler kind sees it.
pub struct JobStart<'a> {
    /// The job hash as claimed.
    pub record: &'a JobRecord,
    /// The decoded call, for payloads the worker reads itself (JSON); `None` for payloads only
    /// Python reads (pickle, a custom serializer).
    pub call: Option<&'a JobCall>,
    /// The timeout the worker enforces, in seconds; `None` for none.
    pub timeout: Option<u64>,
    pub worker: &'a str,
}

impl JobStart<'_> {
    /// The decoded call; only Python handlers are chosen for payloads without one.
    pub fn call(&self) -> Result<&JobCall, StartError> {
        self.call.ok_or_else(|| StartError {
            environment: false,
            errno: None,
            failure: JobFailure::StartFailed {
                what: "cannot run this job".into(),
                error: "its payload is not JSON, and only Python handlers read other payloads"
                    .into(),
                fix: None,
            },
        })
    }
}

/// One kind of job function: how a job of it starts, and its defaults.
pub trait Handler {
    /// Starts the job.
    fn start(&self, job: &JobStart<'_>) -> Result<Box<dyn Execution>, StartError>;

    /// Runs the job to its end in the worker's own process (no-fork mode, RQ's
    /// SimpleWorker); `None` for kinds that always run in a process of their own (a command).
    fn run_in_process(&self, _job: &JobStart<'_>) -> Option<Result<Outcome, StartError>> {
        None
    }

    /// The timeout (seconds) of a job that carries none of its own; `None`: RQ's default.
    fn default_timeout(&self) -> Option<i64> {
        None
    }

    /// How long after its timeout the worker kills the job from outside. Zero for kinds that
    /// cannot be interrupted from inside; a Python job is interrupted by a JobTimeoutException
    /// raised inside it at the timeout, so `finally` blocks run, and killed only if it is
    /// still alive this much later.
    fn kill_grace(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Whether it reads a payload the worker could not decode for this reason (Python reads
    /// pickle, and whatever a custom serializer wrote).
    fn reads_payload(&self, _why: &crate::protocol::payload::PayloadError) -> bool {
        false
    }

    /// Whether it runs the job's Python callbacks itself.
    fn runs_python_callbacks(&self) -> bool {
        false
    }

    /// The worker has no job to run next (it found none, pauses, or cannot reach Redis):
    /// whatever a kind keeps ready for the next job is let go.
    fn idle(&self) {}

    /// What it is, for messages and tests: "native function", "command /usr/bin/x".
    fn describe(&self) -> String;
}

/// Whether an error of a start-up system call lies in the environment: a process or file
/// limit, memory, a program that is no longer there or no longer executable (the config
/// checked both when it was read).
pub(crate) fn environmental(e: &std::io::Error) -> bool {
    use nix::libc;
    matches!(
        e.raw_os_error(),
        Some(
            libc::EAGAIN | libc::ENOMEM | libc::EMFILE | libc::ENFILE | libc::ENOENT | libc::EACCES
        )
    )
}
