//! Jobs run in the worker's own process (no-fork mode, as RQ's SimpleWorker): nothing to
//! poll or kill, so a job's timeout is the one thing to enforce from outside. A native
//! function cannot be interrupted; at its timeout SIGALRM ends the worker with
//! [`EXIT_INLINE_TIMEOUT`], and rq-supervisor's crash cleanup settles the job as timed out.
//! (A Python job is interrupted inside, by its JobTimeoutException, as in a horse.)

use nix::sys::signal::{SigHandler, Signal, signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::{Pid, alarm};

use super::outcome::Exit;

pub use crate::launch::EXIT_INLINE_TIMEOUT;

extern "C" fn overran(_: nix::libc::c_int) {
    // SAFETY: _exit is async-signal-safe; the worker cannot settle from here (it is in the
    // middle of the job), so it leaves, and whoever cleans up after it settles the job.
    unsafe { nix::libc::_exit(EXIT_INLINE_TIMEOUT) }
}

/// Runs `f` with SIGALRM armed for `timeout` seconds (none for `None`).
pub fn with_deadline<T>(timeout: Option<u64>, f: impl FnOnce() -> T) -> T {
    let Some(secs) = timeout.filter(|t| *t > 0) else {
        return f();
    };
    // SAFETY: the handler only calls _exit; the worker is single-threaded.
    let previous = unsafe { signal(Signal::SIGALRM, SigHandler::Handler(overran)) };
    alarm::set(secs.min(u32::MAX as u64) as u32);
    let out = f();
    alarm::cancel();
    if let Ok(previous) = previous {
        // SAFETY: restores what was installed before (the default).
        unsafe {
            let _ = signal(Signal::SIGALRM, previous);
        }
    }
    out
}

/// How a horse that ended with `code` would have exited, for the decoders of its report.
pub fn exit_code(code: i32) -> Exit {
    Exit(WaitStatus::Exited(Pid::this(), code))
}
