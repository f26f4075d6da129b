//! The seam between the work loop and whatever runs a job. A [`Handler`] (one per kind:
//! native function, command, later Python) says how it starts a job, its default timeout and
//! why it could not start; what it starts is an [`Execution`], which the worker polls, pumps,
//! finishes or kills without knowing which kind it is. Every ending is an [`Outcome`], whose
//! [`JobFailure`] renders RQ's exception texts in one place.
//!
//! Today every execution is a forked work horse ([`fork::Horse`]); an in-process execution
//! (no fork) implements the same trait.

mod call;
mod command;
pub mod fork;
mod native;
pub mod outcome;

use std::os::fd::BorrowedFd;

use nix::poll::PollFlags;
use nix::unistd::Pid;

pub use call::{JobCall, JobError};
pub use command::{CommandHandler, STDERR_TAIL, STDOUT_CAP};
pub use native::{NativeFn, NativeHandler};
pub use outcome::{Exit, JobFailure, Outcome};

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
}

/// Why a job could not be started.
#[derive(Debug, Clone, PartialEq)]
pub struct StartError {
    /// The job's failure text.
    pub failure: JobFailure,
    /// The cause lies in the worker's environment (a process or file limit, a program that
    /// vanished), not in the job.
    pub environment: bool,
}

/// One kind of job function: how a job of it starts, and its defaults.
pub trait Handler {
    /// Starts the job.
    fn start(&self, call: &JobCall) -> Result<Box<dyn Execution>, StartError>;

    /// The timeout (seconds) of a job that carries none of its own; `None`: RQ's default.
    fn default_timeout(&self) -> Option<i64> {
        None
    }

    /// What it is, for messages and tests: "native function", "command /usr/bin/x".
    fn describe(&self) -> String;
}

/// Whether an error of a start-up system call lies in the environment: a process or file
/// limit, memory, a program that is no longer there.
pub(crate) fn environmental(e: &std::io::Error) -> bool {
    use nix::libc;
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN | libc::ENOMEM | libc::EMFILE | libc::ENFILE | libc::ENOENT)
    )
}
