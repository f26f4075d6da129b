//! Signal intake for the single-threaded worker: handlers only bump counters and write a
//! byte to a self-pipe, which the worker polls together with its sockets. No thread is
//! started (the worker forks), and nothing is ignored with `SIG_IGN` (ignores survive exec).
//!
//! A worker started by rq-supervisor (which names itself in `RQ_SUPERVISOR_PID`) treats the
//! death of its supervisor as a cold shutdown: the supervisor's parent-death signal is only
//! a SIGTERM, and a warm stop could leave a long job running unsupervised for its whole
//! duration, so the job is failed and settled at once instead.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

use nix::unistd::{Pid, getppid};
use signal_hook::consts::{SIGCHLD, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};

use crate::launch::SUPERVISOR_PID_ENV;

/// Set while a job runs in the worker's own process (no-fork mode): nothing can be killed
/// then, so a cold shutdown (a second stop signal, or the supervisor's death) ends the worker
/// at once, from the handler, with [`EXIT_COLD_IN_PROCESS`]; whoever cleans up after it
/// settles the job (rq-supervisor at once, else RQ's abandoned-job cleanup).
static IN_PROCESS_JOB: AtomicBool = AtomicBool::new(false);
/// The supervisor's pid (0 for none), for the handler's orphan check.
static SUPERVISOR: AtomicI32 = AtomicI32::new(0);

pub use crate::launch::EXIT_COLD_IN_PROCESS;

/// Marks the start (`true`) and end of a job run in the worker's process.
pub fn in_process_job(running: bool) {
    IN_PROCESS_JOB.store(running, Ordering::SeqCst);
}

pub struct Signals {
    read: UnixStream,
    stops: Arc<AtomicUsize>,
    child: Arc<AtomicBool>,
    /// SIGUSR1 pauses (no new job until SIGUSR2), SIGUSR2 resumes: rq-supervisor's `pause
    /// POOL` and `resume POOL`.
    paused: Arc<AtomicBool>,
    /// The supervisor that started this worker, if it is still the parent at start.
    supervisor: Option<Pid>,
}

impl Signals {
    /// Installs the handlers. INT and TERM count shutdown requests; CHLD marks that a child
    /// changed state; USR1 and USR2 pause and resume (`paused` is the state at start). All
    /// of them wake the poll loop through one socket pair: two descriptors in all, which
    /// matters to a worker started at its open-file limit. A horse restores them to their
    /// defaults (`execution::fork`).
    pub fn install(paused: bool) -> io::Result<Signals> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        // Never closed: the handlers write to it for the rest of the process's life, and a
        // closed number could be reused by another file.
        let wake = write.into_raw_fd();
        let stops = Arc::new(AtomicUsize::new(0));
        let child = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(paused));
        for sig in [SIGINT, SIGTERM, SIGCHLD, SIGUSR1, SIGUSR2] {
            let (stops, child, pause) =
                (Arc::clone(&stops), Arc::clone(&child), Arc::clone(&pause));
            let action = move || {
                match sig {
                    SIGINT | SIGTERM => {
                        let n = stops.fetch_add(1, Ordering::SeqCst) + 1;
                        let supervisor = SUPERVISOR.load(Ordering::SeqCst);
                        // SAFETY: getppid and _exit are async-signal-safe.
                        let orphaned =
                            supervisor != 0 && unsafe { nix::libc::getppid() } != supervisor;
                        if IN_PROCESS_JOB.load(Ordering::SeqCst) && (n >= 2 || orphaned) {
                            unsafe { nix::libc::_exit(EXIT_COLD_IN_PROCESS) };
                        }
                    }
                    SIGCHLD => child.store(true, Ordering::SeqCst),
                    _ => pause.store(sig == SIGUSR1, Ordering::SeqCst),
                }
                // SAFETY: send(2) on a descriptor this process never closes is
                // async-signal-safe; a full buffer (MSG_DONTWAIT) means a wake-up is pending.
                unsafe {
                    nix::libc::send(wake, b"x".as_ptr().cast(), 1, nix::libc::MSG_DONTWAIT);
                }
            };
            // SAFETY: the action performs atomic operations, getppid, _exit and one send(2),
            // all async-signal-safe, and allocates nothing.
            unsafe {
                signal_hook::low_level::register(sig, action)?;
            }
        }
        let supervisor = std::env::var(SUPERVISOR_PID_ENV)
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            .map(Pid::from_raw)
            .filter(|p| *p == getppid());
        SUPERVISOR.store(supervisor.map_or(0, Pid::as_raw), Ordering::SeqCst);
        Ok(Signals {
            read,
            stops,
            child,
            paused: pause,
            supervisor,
        })
    }

    /// True when the worker was started by rq-supervisor and that supervisor has died
    /// (the worker was re-parented).
    pub fn orphaned(&self) -> bool {
        self.supervisor.is_some_and(|p| getppid() != p)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// Empties the wake-up pipe.
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        while let Ok(n) = (&self.read).read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }

    /// How many INT/TERM signals arrived so far: 1 = warm shutdown, 2+ = cold. An orphaned
    /// supervised worker counts as cold.
    pub fn stop_count(&self) -> usize {
        let n = self.stops.load(Ordering::SeqCst);
        if self.orphaned() { n.max(2) } else { n }
    }

    /// Asks for a warm shutdown from inside the worker (e.g. a `shutdown` command).
    pub fn request_stop(&self) {
        self.stops.fetch_max(1, Ordering::SeqCst);
    }

    /// True from a SIGUSR1 (or `--paused`) until a SIGUSR2.
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// True once per batch of SIGCHLDs.
    pub fn take_child(&self) -> bool {
        self.child.swap(false, Ordering::SeqCst)
    }
}
