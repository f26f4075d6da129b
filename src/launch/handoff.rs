//! How `rq-supervisor` hands a worker its configuration: the text of the pool file it
//! validated and the contents of the TLS files, in a sealed in-memory file (`memfd`) that the
//! worker inherits as a descriptor and reads once at start (`--config-fd N`).
//!
//! Why not let the worker read the files itself: a pool with `user = "rq"` runs its workers
//! as that user, while the pool file (which may hold the Redis password) and the TLS key are
//! typically readable by root only (mode 600). The supervisor, which can read them, passes
//! what the worker needs instead of widening the files' permissions.
//!
//! Why a descriptor and not the environment: a worker's environment is copied into every
//! native work horse and stays readable in `/proc/<pid>/environ` for the life of each
//! process; the descriptor is read and closed before the first horse exists, and is never
//! on a command line. Why a `memfd` and not a pipe: writing it never blocks the supervisor's
//! event loop, whatever the size, and it is sealed so nothing can change it afterwards.

use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::conn::{SentinelAuth, TlsMaterial};

/// The descriptor number the supervisor gives the handoff in every worker.
pub const WORKER_FD: RawFd = 3;

/// What a supervised worker gets from its supervisor.
#[derive(Serialize, Deserialize)]
pub struct Handoff {
    /// The pool file's absolute path: for messages and relative paths only; not read.
    pub config_path: PathBuf,
    /// The pool file's text, exactly as the supervisor read and validated it.
    pub config: String,
    /// The TLS files' contents (after `$RQ_REDIS_TLS_*` overrides), empty without TLS.
    pub tls: TlsMaterial,
    /// The Sentinels' credentials (after `$RQ_REDIS_SENTINEL_*` overrides), empty without
    /// them: here rather than in the worker's environment, which every horse inherits.
    #[serde(default)]
    pub sentinel: SentinelAuth,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config text may hold a password.
        f.debug_struct("Handoff")
            .field("config_path", &self.config_path)
            .field("tls", &self.tls)
            .field("sentinel", &self.sentinel)
            .finish_non_exhaustive()
    }
}

impl Handoff {
    /// Writes the handoff into a new sealed memfd (close-on-exec; the spawn moves it to
    /// [`WORKER_FD`] in the child).
    pub fn to_memfd(&self) -> io::Result<OwnedFd> {
        use nix::fcntl::{FcntlArg, SealFlag, fcntl};
        use nix::sys::memfd::{MFdFlags, memfd_create};
        let fd = memfd_create(
            c"rq-supervisor-handoff",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )?;
        let mut file = std::fs::File::from(fd);
        file.write_all(&serde_json::to_vec(self).map_err(io::Error::other)?)?;
        file.rewind()?;
        let fd = OwnedFd::from(file);
        fcntl(
            &fd,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_WRITE
                    | SealFlag::F_SEAL_GROW
                    | SealFlag::F_SEAL_SHRINK
                    | SealFlag::F_SEAL_SEAL,
            ),
        )?;
        Ok(fd)
    }

    /// Reads and closes the handoff on descriptor `fd`. Errors are complete messages.
    pub fn read_fd(fd: RawFd) -> Result<Handoff, String> {
        let problem = |e: &dyn std::fmt::Display| {
            format!(
                "--config-fd {fd}: {e}; this option is for rq-supervisor, which passes the pool file on that descriptor; run rqworker with -c FILE instead"
            )
        };
        // Take ownership only of a descriptor that is open, so a wrong number cannot close
        // (or later double-close) something else.
        nix::fcntl::fcntl(
            // SAFETY: only borrowed for the duration of the F_GETFD probe.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::fcntl::FcntlArg::F_GETFD,
        )
        .map_err(|e| problem(&e))?;
        // SAFETY: the descriptor is open and nothing else in this process owns it: it was
        // inherited for exactly this purpose and is read once, here.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        debug_assert_eq!(owned.as_raw_fd(), fd);
        let mut file = std::fs::File::from(owned);
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(|e| problem(&e))?;
        serde_json::from_slice(&text).map_err(|e| problem(&e))
    }
}
