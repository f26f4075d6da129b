//! The work horse as a process: forked from the worker, leading its own session, dying with
//! the worker (parent-death signal), killed as a whole process group, reaped by the worker.
//!
//! `fork()` is sound only while the process has one thread: the child gets a copy of every
//! lock another thread held, and nobody left to release it. The worker never starts a thread,
//! but a program built on the library could, so [`fork`] counts the threads first and refuses
//! with an error that says why.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{ForkResult, Pid, getpid, getppid, setsid};

use super::outcome::Exit;

/// A child process running one job.
#[derive(Debug)]
pub struct Horse {
    pub pid: Pid,
    reaped: Option<WaitStatus>,
}

/// What a runtime embedded in the worker must do around a fork (the Python interpreter:
/// `PyOS_BeforeFork` and its after-fork hooks, which reseed `random`, reset locks and make the
/// child's thread the interpreter's main thread).
pub trait ForkHooks {
    /// Threads the runtime knows of and accepts across a fork (the app's own Python threads,
    /// which `rq worker` forks with too), besides the worker's one. Asked only when the
    /// process has more than one thread.
    fn accepted_threads(&self) -> u32 {
        0
    }
    fn before(&self) {}
    fn after_in_parent(&self) {}
    fn after_in_child(&self) {}
}

struct NoHooks;
impl ForkHooks for NoHooks {}

impl Horse {
    /// Forks a horse that runs `job` and `_exit`s with the code it returns. The child resets
    /// the worker's signal handlers, leads its own session and dies with the worker.
    pub fn fork(job: impl FnOnce() -> i32) -> io::Result<Horse> {
        Horse::fork_with(&NoHooks, job)
    }

    /// [`Horse::fork`] with a runtime's hooks around the fork.
    pub fn fork_with(hooks: &dyn ForkHooks, job: impl FnOnce() -> i32) -> io::Result<Horse> {
        refuse_if_threaded(hooks)?;
        let parent = getpid();
        log::logger().flush();
        hooks.before();
        // SAFETY: `refuse_if_threaded` just checked that this process has no thread besides
        // this one but those the runtime accepts (whose locks its after-fork hooks reset), so
        // the child, a copy of this one thread, may run arbitrary code.
        let forked = unsafe { nix::unistd::fork() };
        match forked {
            Err(e) => {
                hooks.after_in_parent();
                Err(io::Error::from(e))
            }
            Ok(ForkResult::Parent { child }) => {
                hooks.after_in_parent();
                Ok(Horse::adopt(child))
            }
            Ok(ForkResult::Child) => {
                hooks.after_in_child();
                become_horse(parent);
                let code = job();
                // SAFETY: ends the child without running the worker's exit path (atexit
                // handlers, destructors of the worker's state, buffered output of the parent).
                unsafe { nix::libc::_exit(code) }
            }
        }
    }

    /// A horse started some other way (fork + exec by `std::process::Command`).
    pub fn adopt(pid: Pid) -> Horse {
        Horse { pid, reaped: None }
    }

    /// Checks, without reaping, whether the horse has exited. When it has, kills what is
    /// left of its process group (grandchildren) and reaps it.
    pub fn exited(&mut self) -> Option<Exit> {
        if let Some(s) = self.reaped {
            return Some(Exit(s));
        }
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(self.pid), flags) {
            Ok(WaitStatus::StillAlive) => None,
            Ok(_) => Some(self.kill_and_reap()),
            Err(nix::errno::Errno::EINTR) => None,
            Err(e) => {
                log::warn!("cannot wait for work horse pid {}: {e}", self.pid);
                Some(self.kill_and_reap())
            }
        }
    }

    /// Kills the horse's whole process group, then reaps the horse. The group is signalled
    /// before the leader is reaped, while its id cannot have been reused.
    pub fn kill_and_reap(&mut self) -> Exit {
        if let Some(s) = self.reaped {
            return Exit(s);
        }
        let _ = killpg(self.pid, Signal::SIGKILL);
        // A horse killed right after the fork may not have run setsid() yet: its group does
        // not exist, and without this the wait below lasts as long as the job.
        let _ = kill(self.pid, Signal::SIGKILL);
        let status = loop {
            match waitpid(self.pid, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                Ok(s) => break s,
                Err(e) => {
                    log::warn!("cannot reap work horse pid {}: {e}", self.pid);
                    break WaitStatus::Signaled(self.pid, Signal::SIGKILL, false);
                }
            }
        };
        self.reaped = Some(status);
        Exit(status)
    }
}

/// Makes a freshly forked child a proper horse: default signals, its own session, and
/// death with the worker. Exits at once if the worker already died.
fn become_horse(parent: Pid) {
    reset_signals();
    let _ = setsid();
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if getppid() != parent {
        // SAFETY: the worker is gone; leave without running anything else.
        unsafe { nix::libc::_exit(1) }
    }
}

/// The signals the worker catches (`worker::signals`): the horse restores their defaults, so
/// SIGTERM and SIGINT end it instead of bumping the parent's counters in a copy nobody reads
/// (and a SIGUSR1 meant for the worker cannot pause it through the horse's shared pipe).
const WORKER_SIGNALS: [Signal; 5] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGCHLD,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

fn reset_signals() {
    for sig in WORKER_SIGNALS {
        // SAFETY: installing SIG_DFL is async-signal-safe and sound after fork.
        unsafe {
            let _ = nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl);
        }
    }
}

/// The threads this process has; 1 where `/proc` cannot tell. One `pread` of
/// `/proc/self/stat`, opened once, so it costs one system call per job.
pub fn threads() -> io::Result<u32> {
    static STAT: OnceLock<Option<File>> = OnceLock::new();
    let Some(file) = STAT.get_or_init(|| File::open("/proc/self/stat").ok()) else {
        // No /proc: nothing to check with; the worker itself never starts a thread.
        return Ok(1);
    };
    let mut buf = [0u8; 1024];
    let n = file.read_at(&mut buf, 0)?;
    Ok(std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(crate::procfs::parse_stat)
        .map_or(1, |s| s.threads))
}

/// Fails when this process has more threads than its own and those the runtime accepts (asked
/// only when there are more: asking Python costs a call into the interpreter per job).
fn refuse_if_threaded(hooks: &dyn ForkHooks) -> io::Result<()> {
    let threads = threads()?;
    if threads > 1 && threads > 1 + hooks.accepted_threads() {
        return Err(io::Error::other(format!(
            "this process has {threads} threads, and a forked child of a multi-threaded process can deadlock on a lock another thread held; the worker must stay single-threaded (start no thread before or while running rq_supervisor::worker::run)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test harness runs every test on a thread of its own, so this process has more
    /// than one: the fork must be refused, and say why.
    #[test]
    fn a_threaded_process_is_refused() {
        let extra = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(2)));
        let err = Horse::fork(|| 0).unwrap_err();
        assert!(err.to_string().contains("threads"), "{err}");
        assert!(err.to_string().contains("single-threaded"), "{err}");
        extra.join().unwrap();
    }
}
