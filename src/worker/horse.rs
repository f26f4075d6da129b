//! The work horse: one child process per job. Native handlers run in a plain `fork()` child
//! that reports its outcome over a socket pair; command handlers are `fork()` + `exec` of the
//! configured argv with the job on stdin. Either way the horse leads its own session, dies
//! with the worker (parent-death signal), and is killed as a whole process group, so nothing
//! it started outlives it.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::rc::Rc;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid, getppid, setsid};
use serde_json::{Value, json};

use crate::config::HandlerSpec;
use crate::handler::{JobCall, NativeFn};

/// Most stdout a command handler's result may take; the rest is discarded with a note.
pub const STDOUT_CAP: usize = 1024 * 1024;
/// How much of a command handler's stderr is kept for the failure message.
pub const STDERR_TAIL: usize = 4096;

/// Environment variables a command handler inherits from the worker. Everything else,
/// the Redis URL included, is withheld unless the handler's `env` passes it.
const INHERITED_ENV: &[&str] = &[
    "PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "TMPDIR",
];

/// How a horse ended, as the worker records it.
#[derive(Debug, Clone, PartialEq)]
pub enum HorseOutcome {
    /// The handler returned this value (`null` = no result).
    Returned(Value),
    /// The handler failed; the text becomes `exc_string`.
    Failed(String),
    /// The horse died without reporting (signal, panic, unexpected exit).
    Crashed(String),
}

pub struct Horse {
    pub pid: Pid,
    io: HorseIo,
    reaped: Option<WaitStatus>,
}

enum HorseIo {
    Native {
        /// `None` once the horse closed it: an end-of-file socket stays readable, and
        /// polling it would spin until the horse has finished exiting.
        report: Option<UnixStream>,
        buf: Vec<u8>,
    },
    Command {
        program: String,
        stdin: Option<ChildStdin>,
        input: Vec<u8>,
        written: usize,
        stdout: Option<ChildStdout>,
        out: Vec<u8>,
        out_total: usize,
        stderr: Option<ChildStderr>,
        err: VecDeque<u8>,
    },
}

impl Horse {
    /// Forks a horse that runs a native function.
    pub fn spawn_native(f: &Rc<NativeFn>, call: &JobCall) -> io::Result<Horse> {
        let (report, mut child_end) = UnixStream::pair()?;
        let parent = getpid();
        log::logger().flush();
        // SAFETY: the worker is single-threaded (it never starts a thread), so the child may
        // run arbitrary code after fork.
        match unsafe { fork() }.map_err(io::Error::from)? {
            ForkResult::Parent { child } => {
                drop(child_end);
                report.set_nonblocking(true)?;
                Ok(Horse {
                    pid: child,
                    io: HorseIo::Native {
                        report: Some(report),
                        buf: Vec::new(),
                    },
                    reaped: None,
                })
            }
            ForkResult::Child => {
                drop(report);
                become_horse(parent);
                set_job_env(call);
                // One log line instead of the default multi-line report on stderr; the
                // message also reaches the job's exc_string.
                std::panic::set_hook(Box::new(|info| {
                    log::error!("work horse {}", info.to_string().replace('\n', " "))
                }));
                let result = catch_unwind(AssertUnwindSafe(|| f(call)));
                let (doc, code) = match result {
                    Ok(Ok(value)) => (json!({ "ok": value }), 0),
                    Ok(Err(e)) => (json!({ "err": e.to_string() }), 0),
                    Err(panic) => (json!({ "panic": panic_message(&*panic) }), 1),
                };
                let _ = child_end.write_all(doc.to_string().as_bytes());
                drop(child_end);
                // SAFETY: ends the child without running the worker's exit path.
                unsafe { nix::libc::_exit(code) }
            }
        }
    }

    /// Starts a command handler: argv from the config plus the job's positional arguments,
    /// the job as JSON on stdin, `RQ_*` variables in the environment. Never a shell.
    pub fn spawn_command(spec: &HandlerSpec, call: &JobCall) -> io::Result<Horse> {
        let mut cmd = Command::new(&spec.command[0]);
        cmd.args(&spec.command[1..]);
        for a in &call.args {
            cmd.arg(match a {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        }
        cmd.env_clear();
        for key in INHERITED_ENV {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        cmd.envs(&spec.env);
        for (k, v) in job_env(call) {
            cmd.env(k, v);
        }
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let parent = getpid();
        // SAFETY: setsid, prctl and getppid are async-signal-safe and allocate nothing.
        unsafe {
            cmd.pre_exec(move || {
                setsid()?;
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                if getppid() != parent {
                    return Err(io::Error::other("worker died before the handler started"));
                }
                Ok(())
            });
        }
        let mut child: Child = cmd.spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        for fd in [
            stdin.as_ref().map(|s| s.as_fd()),
            stdout.as_ref().map(|s| s.as_fd()),
            stderr.as_ref().map(|s| s.as_fd()),
        ]
        .into_iter()
        .flatten()
        {
            set_nonblocking(fd)?;
        }
        let mut input = call.to_json().to_string().into_bytes();
        input.push(b'\n');
        Ok(Horse {
            pid: Pid::from_raw(child.id() as i32),
            io: HorseIo::Command {
                program: spec.command[0].clone(),
                stdin,
                input,
                written: 0,
                stdout,
                out: Vec::new(),
                out_total: 0,
                stderr,
                err: VecDeque::new(),
            },
            reaped: None,
        })
    }

    /// The descriptors to poll: readable outputs and, until the job is written, stdin.
    pub fn poll_fds(&self) -> Vec<(BorrowedFd<'_>, bool)> {
        let mut fds = Vec::new();
        match &self.io {
            HorseIo::Native { report, .. } => {
                if let Some(r) = report {
                    fds.push((r.as_fd(), false));
                }
            }
            HorseIo::Command {
                stdin,
                stdout,
                stderr,
                ..
            } => {
                if let Some(s) = stdin {
                    fds.push((s.as_fd(), true));
                }
                if let Some(s) = stdout {
                    fds.push((s.as_fd(), false));
                }
                if let Some(s) = stderr {
                    fds.push((s.as_fd(), false));
                }
            }
        }
        fds
    }

    /// Moves whatever data is ready between the worker and the horse, without blocking.
    pub fn pump(&mut self) {
        match &mut self.io {
            HorseIo::Native { report, buf } => {
                if let Some(r) = report
                    && read_ready(r, |chunk| buf.extend_from_slice(chunk))
                {
                    *report = None;
                }
            }
            HorseIo::Command {
                stdin,
                input,
                written,
                stdout,
                out,
                out_total,
                stderr,
                err,
                ..
            } => {
                if let Some(s) = stdin {
                    loop {
                        if *written >= input.len() {
                            *stdin = None;
                            break;
                        }
                        match s.write(&input[*written..]) {
                            Ok(n) => *written += n,
                            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            // The handler closed stdin without reading all of it; that is
                            // its choice, not an error.
                            Err(_) => {
                                *stdin = None;
                                break;
                            }
                        }
                    }
                }
                if let Some(s) = stdout {
                    let eof = read_ready(s, |chunk| {
                        *out_total += chunk.len();
                        let room = STDOUT_CAP.saturating_sub(out.len());
                        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    });
                    if eof {
                        *stdout = None;
                    }
                }
                if let Some(s) = stderr {
                    let eof = read_ready(s, |chunk| {
                        err.extend(chunk);
                        let excess = err.len().saturating_sub(STDERR_TAIL);
                        err.drain(..excess);
                    });
                    if eof {
                        *stderr = None;
                    }
                }
            }
        }
    }

    /// Checks, without reaping, whether the horse has exited. When it has, kills what is
    /// left of its process group (grandchildren), reaps it and collects the last output.
    pub fn try_finish(&mut self) -> Option<WaitStatus> {
        if let Some(s) = self.reaped {
            return Some(s);
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
    pub fn kill_and_reap(&mut self) -> WaitStatus {
        if let Some(s) = self.reaped {
            return s;
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
        self.pump();
        status
    }

    /// Interprets the reaped horse's status and output.
    pub fn outcome(mut self, status: WaitStatus) -> HorseOutcome {
        self.pump();
        match self.io {
            HorseIo::Native { buf, .. } => native_outcome(status, &buf),
            HorseIo::Command {
                program,
                out,
                out_total,
                err,
                ..
            } => command_outcome(status, &program, out, out_total, err),
        }
    }
}

/// Makes a freshly forked child a proper horse: default signals, its own session, and
/// death with the worker. Exits at once if the worker already died.
fn become_horse(parent: Pid) {
    super::signals::reset_in_child();
    let _ = setsid();
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if getppid() != parent {
        // SAFETY: the worker is gone; leave without running anything else.
        unsafe { nix::libc::_exit(1) }
    }
}

fn job_env(call: &JobCall) -> [(&'static str, String); 5] {
    [
        ("RQ_JOB_ID", call.id.clone()),
        ("RQ_WORKER_ID", call.worker_name.clone()),
        ("RQ_EXECUTION_ID", call.execution_id.clone()),
        ("RQ_FUNC_NAME", call.func_name.clone()),
        ("RQ_QUEUE", call.origin.clone()),
    ]
}

fn set_job_env(call: &JobCall) {
    for (k, v) in job_env(call) {
        // SAFETY: the horse is single-threaded, the one case where set_var is sound.
        unsafe { std::env::set_var(k, v) };
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Reads everything available now; returns true at end of file or on a broken descriptor.
fn read_ready(mut r: impl Read, mut sink: impl FnMut(&[u8])) -> bool {
    let mut chunk = [0u8; 8 * 1024];
    loop {
        match r.read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => sink(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}

/// The raw `waitpid` status integer, as Python's `os.waitpid` reports it in RQ's message.
pub fn raw_status(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => (code & 0xff) << 8,
        WaitStatus::Signaled(_, sig, core) => sig as i32 | if core { 0x80 } else { 0 },
        _ => 0,
    }
}

/// RQ's text for a horse that died without reporting (§7.9).
pub fn crash_message(status: WaitStatus) -> String {
    let signal = match status {
        WaitStatus::Signaled(_, sig, _) => format!(" (signal {})", sig as i32),
        _ => String::new(),
    };
    format!(
        "Work-horse terminated unexpectedly; waitpid returned {}{signal}; ",
        raw_status(status)
    )
}

fn native_outcome(status: WaitStatus, report: &[u8]) -> HorseOutcome {
    let doc: Option<Value> = serde_json::from_slice(report).ok();
    if let (WaitStatus::Exited(_, 0), Some(doc)) = (status, &doc) {
        if let Some(v) = doc.get("ok") {
            return HorseOutcome::Returned(v.clone());
        }
        if let Some(Value::String(e)) = doc.get("err") {
            return HorseOutcome::Failed(format!("{e}\n"));
        }
    }
    let mut text = crash_message(status);
    match doc.as_ref().and_then(|d| d.get("panic")) {
        Some(Value::String(p)) => text.push_str(&format!("the handler panicked: {p}")),
        _ if matches!(status, WaitStatus::Exited(_, 0)) => {
            text.push_str("the horse exited without reporting an outcome")
        }
        _ => {}
    }
    HorseOutcome::Crashed(text)
}

fn command_outcome(
    status: WaitStatus,
    program: &str,
    out: Vec<u8>,
    out_total: usize,
    err: VecDeque<u8>,
) -> HorseOutcome {
    let stderr_tail = || {
        let (a, b) = err.as_slices();
        let text = String::from_utf8_lossy(&[a, b].concat())
            .trim_end()
            .to_string();
        if text.is_empty() {
            String::from("(stderr was empty)")
        } else {
            format!("--- stderr (last {} bytes) ---\n{text}", err.len())
        }
    };
    match status {
        WaitStatus::Exited(_, 0) => {}
        WaitStatus::Exited(_, code) => {
            return HorseOutcome::Failed(format!(
                "CommandFailed: {program} exited with status {code}\n{}\n",
                stderr_tail()
            ));
        }
        other => {
            return HorseOutcome::Crashed(format!(
                "{}{program}\n{}\n",
                crash_message(other),
                stderr_tail()
            ));
        }
    }
    let text = match String::from_utf8(out) {
        Ok(t) => t,
        Err(e) if out_total > STDOUT_CAP && e.utf8_error().error_len().is_none() => {
            // The cut fell inside a character; keep the whole characters before it.
            let valid = e.utf8_error().valid_up_to();
            let mut bytes = e.into_bytes();
            bytes.truncate(valid);
            String::from_utf8(bytes).unwrap_or_default()
        }
        Err(e) => {
            return HorseOutcome::Failed(format!(
                "CommandOutputError: {program} wrote output that is not UTF-8 text (invalid byte at offset {}); \
                 print UTF-8 text or JSON, or base64-encode binary data\n",
                e.utf8_error().valid_up_to()
            ));
        }
    };
    if out_total > STDOUT_CAP {
        return HorseOutcome::Returned(Value::String(format!(
            "{text}\n[rqworker: output cut at {STDOUT_CAP} of {out_total} bytes]"
        )));
    }
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return HorseOutcome::Returned(Value::Null);
    }
    HorseOutcome::Returned(
        serde_json::from_str(trimmed).unwrap_or_else(|_| Value::String(trimmed.to_string())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_matches_rq() {
        let pid = Pid::from_raw(1);
        assert_eq!(
            crash_message(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            "Work-horse terminated unexpectedly; waitpid returned 9 (signal 9); "
        );
        assert_eq!(raw_status(WaitStatus::Exited(pid, 1)), 256);
    }

    #[test]
    fn command_stdout_becomes_the_result() {
        let ok = WaitStatus::Exited(Pid::from_raw(1), 0);
        let run = |out: &[u8]| command_outcome(ok, "p", out.to_vec(), out.len(), VecDeque::new());
        assert_eq!(
            run(b" {\"a\": 1}\n"),
            HorseOutcome::Returned(json!({"a": 1}))
        );
        assert_eq!(run(b"hello\n"), HorseOutcome::Returned(json!("hello")));
        assert_eq!(run(b"\n"), HorseOutcome::Returned(Value::Null));
        assert!(matches!(run(b"\xff\xfe"), HorseOutcome::Failed(m) if m.contains("not UTF-8")));
        let failed = command_outcome(
            WaitStatus::Exited(Pid::from_raw(1), 3),
            "p",
            vec![],
            0,
            VecDeque::from(b"boom".to_vec()),
        );
        assert!(
            matches!(failed, HorseOutcome::Failed(m) if m.contains("status 3") && m.contains("boom"))
        );
    }
}
