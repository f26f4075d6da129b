//! Faults of the worker's environment, which are not the job's: a process or file limit
//! reached, memory, a handler program gone since the config was checked, a Python interpreter
//! that cannot start. A job that could not start for such a reason goes back to the front of
//! its queue unchanged (`Store::unclaim`) for a worker that can run it; this worker backs off
//! (capped, jittered), says once per streak what is wrong and how to fix it, and after
//! [`STREAK_LIMIT`] such failures in a row exits with [`EXIT_ENVIRONMENT`], so that it never
//! turns a queue into failures ("black hole" workers) and its supervisor can tell why it left.

use std::time::Duration;

use nix::libc;
use nix::sys::resource::{Resource, getrlimit};

use crate::conn::Backoff;
use crate::execution::StartError;

/// Exit status of a worker that cannot start jobs here (the launch contract's).
pub use crate::launch::EXIT_ENVIRONMENT;
/// Consecutive environment failures after which the worker gives up (about 8 s of backoff).
pub const STREAK_LIMIT: u32 = 5;

/// Environment failures since the last job that started.
pub(super) struct Streak {
    failures: u32,
    backoff: Backoff,
}

/// What to do after an environment failure.
pub(super) enum Next {
    /// Wait this long before taking another job.
    Wait(Duration),
    /// Give up: exit with [`EXIT_ENVIRONMENT`].
    GiveUp,
}

impl Streak {
    pub(super) fn new() -> Streak {
        Streak {
            failures: 0,
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(5)),
        }
    }

    /// A job started: the environment works again.
    pub(super) fn reset(&mut self) {
        if self.failures > 0 {
            log::info!(
                "a job started again after {} environment failure(s)",
                self.failures
            );
        }
        self.failures = 0;
        self.backoff.reset();
    }

    /// Counts a failure; logs it (in full the first time in a streak) and says what next.
    pub(super) fn failed(&mut self, e: &StartError, job_id: &str) -> Next {
        self.failures += 1;
        if self.failures >= STREAK_LIMIT {
            log::error!(
                "job {job_id} could not start either, back on its queue; giving up: {} jobs in a row could not start in this worker's environment ({}); exiting with status {EXIT_ENVIRONMENT} so that a supervisor can tell (rq-supervisor marks the pool degraded and tries again later); the jobs are back on their queues",
                self.failures,
                e.failure.summary()
            );
            return Next::GiveUp;
        }
        let delay = self.backoff.next_delay();
        if self.failures == 1 {
            log::error!(
                "job {job_id} could not start, and not for a reason of its own: {}; {}. The job went back to the front of its queue, unchanged (not failed, no retry counted); waiting {delay:.1?} before the next job, and giving up after {STREAK_LIMIT} such failures in a row",
                e.failure.summary(),
                diagnose(e)
            );
        } else {
            log::debug!(
                "job {job_id} could not start either ({}); back on its queue; waiting {delay:.1?}",
                e.failure.summary()
            );
        }
        Next::Wait(delay)
    }
}

/// What the error means here, with the limit's current value and the fix.
pub fn diagnose(e: &StartError) -> String {
    diagnose_errno(e.errno)
}

/// [`diagnose`] for a failed system call's errno.
pub fn diagnose_errno(errno: Option<i32>) -> String {
    match errno {
        Some(libc::EAGAIN) => {
            let (soft, hard) = limit(Resource::RLIMIT_NPROC);
            format!(
                "the process limit is reached: RLIMIT_NPROC is {soft} (hard {hard}) for uid {}, which runs {} processes; raise it (ulimit -u, LimitNPROC= in the systemd unit, nproc in /etc/security/limits.conf) or run fewer processes as this user",
                nix::unistd::getuid(),
                processes_of(nix::unistd::getuid().as_raw())
            )
        }
        Some(libc::EMFILE) => {
            let (soft, hard) = limit(Resource::RLIMIT_NOFILE);
            format!(
                "this worker's open-file limit is reached: RLIMIT_NOFILE is {soft} (hard {hard}) and it has {} files open; raise it (ulimit -n, LimitNOFILE= in the systemd unit)",
                open_files()
            )
        }
        Some(libc::ENFILE) => format!(
            "the system's file table is full ({}); raise fs.file-max, or find what holds so many files",
            std::fs::read_to_string("/proc/sys/fs/file-nr")
                .map(|t| {
                    let f: Vec<&str> = t.split_whitespace().collect();
                    format!(
                        "{} files open of fs.file-max {}",
                        f.first().unwrap_or(&"?"),
                        f.get(2).unwrap_or(&"?")
                    )
                })
                .unwrap_or_else(|_| "/proc/sys/fs/file-nr unreadable".into())
        ),
        Some(libc::ENOMEM) => format!(
            "the kernel is out of memory for a new process ({}); free memory, or lower the workers' memory_limit",
            std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|t| t.lines().find(|l| l.starts_with("MemAvailable:")).map(str::to_string))
                .unwrap_or_else(|| "MemAvailable unknown".into())
        ),
        Some(libc::ENOENT | libc::EACCES) => {
            "the handler's program is gone or no longer executable since the config was checked; reinstall it or fix [handlers] command".into()
        }
        _ => "fix the environment the message names; the job itself is not at fault".into(),
    }
}

fn limit(r: Resource) -> (String, String) {
    let show = |v: u64| {
        if v == libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            v.to_string()
        }
    };
    match getrlimit(r) {
        Ok((soft, hard)) => (show(soft), show(hard)),
        Err(_) => ("unknown".into(), "unknown".into()),
    }
}

/// How many descriptors are open, probed one by one (listing /proc/self/fd would need one
/// more, which is exactly what is missing when the limit is reached).
fn open_files() -> String {
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    let n = (0..soft.min(65_536) as i32)
        // SAFETY: F_GETFD only reads the descriptor's flags; a closed one gives EBADF.
        .filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } != -1)
        .count();
    n.to_string()
}

/// How many processes `uid` runs (what RLIMIT_NPROC counts), from /proc.
fn processes_of(uid: u32) -> String {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return "an unknown number of".into();
    };
    let n = dir
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("status"))
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find(|l| l.starts_with("Uid:"))
                        .and_then(|l| l.split_whitespace().nth(1).map(|u| u == uid.to_string()))
                })
                .unwrap_or(false)
        })
        .count();
    n.to_string()
}
