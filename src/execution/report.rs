//! A forked horse that reports its outcome to the worker as one document written to a socket
//! pair before it exits: how native and Python handlers run. The worker reads the socket as
//! the horse writes (it never blocks on it) and decodes the document once the horse is reaped;
//! a horse that died without writing one crashed.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use nix::poll::PollFlags;
use nix::unistd::Pid;

use super::fork::{ForkHooks, Horse};
use super::{Execution, Exit, Outcome};

/// Turns the horse's exit and its report into the job's outcome.
pub type Decode = fn(Exit, &[u8]) -> Outcome;

pub struct Reported {
    horse: Horse,
    /// `None` once the horse closed it: an end-of-file socket stays readable, and polling it
    /// would spin until the horse has finished exiting.
    report: Option<UnixStream>,
    buf: Vec<u8>,
    decode: Decode,
}

/// Forks a horse that runs `job`, which writes its report to the stream it is given and
/// returns the horse's exit code.
pub fn fork(
    hooks: &dyn ForkHooks,
    job: impl FnOnce(&mut dyn Write) -> i32,
    decode: Decode,
) -> io::Result<Reported> {
    let (report, mut child_end) = UnixStream::pair()?;
    // Before the fork: nothing may fail once the horse runs the job.
    report.set_nonblocking(true)?;
    let horse = Horse::fork_with(hooks, move || job(&mut child_end))?;
    // The parent's copy of the horse's end went with the closure; only the horse holds it, so
    // the report reaches end of file when the horse is done.
    Ok(Reported {
        horse,
        report: Some(report),
        buf: Vec::new(),
        decode,
    })
}

impl Execution for Reported {
    fn pid(&self) -> Option<Pid> {
        Some(self.horse.pid)
    }

    fn poll_fds(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        self.report
            .iter()
            .map(|r| (r.as_fd(), PollFlags::POLLIN))
            .collect()
    }

    fn pump(&mut self) {
        if let Some(r) = &self.report
            && super::command::read_ready(r, |chunk| self.buf.extend_from_slice(chunk))
        {
            self.report = None;
        }
    }

    fn try_finish(&mut self) -> Option<Outcome> {
        let exit = self.horse.exited()?;
        self.pump();
        Some((self.decode)(exit, &self.buf))
    }

    fn kill(&mut self) -> Exit {
        let exit = self.horse.kill_and_reap();
        self.pump();
        exit
    }
}
