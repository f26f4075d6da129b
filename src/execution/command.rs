//! Command handlers: `fork()` + `exec` of the configured argv (never a shell) plus the job's
//! positional arguments, the job as JSON on stdin, `RQ_*` variables in the environment;
//! stdout is the return value (JSON if it parses, else text, empty = None), exit 0 means
//! finished, anything else failed with the tail of stderr.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::PollFlags;
use nix::sys::signal::Signal;
use nix::unistd::{Pid, getpid, getppid, setsid};
use serde_json::Value;

use super::call::{JobCall, job_env};
use super::fork::Horse;
use super::{Execution, Exit, Handler, JobFailure, JobStart, Outcome, StartError, environmental};
use crate::config::HandlerSpec;

/// Most stdout a command handler's result may take; the rest is discarded with a note.
pub const STDOUT_CAP: usize = 1024 * 1024;
/// How much of a command handler's stderr is kept for the failure message.
pub const STDERR_TAIL: usize = 4096;

/// Environment variables a command handler inherits from the worker. Everything else,
/// the Redis URL included, is withheld unless the handler's `env` passes it.
const INHERITED_ENV: &[&str] = &[
    "PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "TMPDIR",
];

pub struct CommandHandler(pub HandlerSpec);

impl Handler for CommandHandler {
    fn start(&self, job: &JobStart<'_>) -> Result<Box<dyn Execution>, StartError> {
        let call = job.call()?;
        let spec = &self.0;
        spawn(spec, call)
            .map(|e| Box::new(e) as Box<dyn Execution>)
            .map_err(|e| {
                let what = format!(
                    "cannot run {} for [handlers.\"{}\"]",
                    spec.command[0], spec.name
                );
                // E2BIG: the program is fine, the job's arguments are not.
                let too_long = e.raw_os_error() == Some(nix::libc::E2BIG);
                let fix = if too_long {
                    "the job's positional arguments are too long for a command line (Linux allows 128 KiB per argument); pass large values as keyword arguments, which the handler reads from the job JSON on stdin"
                } else {
                    "install the program, fix its path in the config, or make it executable (chmod +x)"
                };
                StartError {
                    environment: !too_long && environmental(&e),
                    errno: e.raw_os_error(),
                    failure: JobFailure::StartFailed {
                        what,
                        error: e.to_string(),
                        fix: Some(fix.into()),
                    },
                }
            })
    }

    fn default_timeout(&self) -> Option<i64> {
        self.0.timeout.map(|t| t.0.as_secs().max(1) as i64)
    }

    fn describe(&self) -> String {
        format!("command {}", self.0.command.join(" "))
    }
}

struct CommandExecution {
    horse: Horse,
    program: String,
    stdin: Option<ChildStdin>,
    input: Vec<u8>,
    written: usize,
    stdout: Option<ChildStdout>,
    out: Vec<u8>,
    out_total: usize,
    stderr: Option<ChildStderr>,
    err: VecDeque<u8>,
}

fn spawn(spec: &HandlerSpec, call: &JobCall) -> io::Result<CommandExecution> {
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
    // SAFETY: setsid, prctl and getppid are async-signal-safe, and the errors are built from
    // raw codes (`io::Error::from(Errno)`, `from_raw_os_error`), which allocate nothing: the
    // hook runs between fork and exec, where allocating could deadlock.
    unsafe {
        cmd.pre_exec(move || {
            setsid()?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if getppid() != parent {
                // The worker died before the handler started.
                return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
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
    Ok(CommandExecution {
        horse: Horse::adopt(Pid::from_raw(child.id() as i32)),
        program: spec.command[0].clone(),
        stdin,
        input,
        written: 0,
        stdout,
        out: Vec::new(),
        out_total: 0,
        stderr,
        err: VecDeque::new(),
    })
}

impl Execution for CommandExecution {
    fn pid(&self) -> Option<Pid> {
        Some(self.horse.pid)
    }

    /// Readable outputs and, until the job is written, stdin.
    fn poll_fds(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let mut fds = Vec::new();
        if let Some(s) = &self.stdin {
            fds.push((s.as_fd(), PollFlags::POLLOUT));
        }
        if let Some(s) = &self.stdout {
            fds.push((s.as_fd(), PollFlags::POLLIN));
        }
        if let Some(s) = &self.stderr {
            fds.push((s.as_fd(), PollFlags::POLLIN));
        }
        fds
    }

    fn pump(&mut self) {
        self.write_input();
        if let Some(s) = self.stdout.as_mut() {
            let (out, total) = (&mut self.out, &mut self.out_total);
            let eof = read_ready(s, |chunk| {
                *total += chunk.len();
                let room = STDOUT_CAP.saturating_sub(out.len());
                out.extend_from_slice(&chunk[..chunk.len().min(room)]);
            });
            if eof {
                self.stdout = None;
            }
        }
        if let Some(s) = self.stderr.as_mut() {
            let err = &mut self.err;
            let eof = read_ready(s, |chunk| {
                err.extend(chunk);
                let excess = err.len().saturating_sub(STDERR_TAIL);
                err.drain(..excess);
            });
            if eof {
                self.stderr = None;
            }
        }
    }

    fn try_finish(&mut self) -> Option<Outcome> {
        let exit = self.horse.exited()?;
        self.pump();
        Some(outcome(
            exit,
            &self.program,
            std::mem::take(&mut self.out),
            self.out_total,
            &self.err,
        ))
    }

    fn kill(&mut self) -> Exit {
        let exit = self.horse.kill_and_reap();
        self.pump();
        exit
    }
}

impl CommandExecution {
    fn write_input(&mut self) {
        let Some(s) = &mut self.stdin else { return };
        loop {
            if self.written >= self.input.len() {
                self.stdin = None;
                return;
            }
            match s.write(&self.input[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                // The handler closed stdin without reading all of it; that is its choice,
                // not an error.
                Err(_) => {
                    self.stdin = None;
                    return;
                }
            }
        }
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Reads everything available now; returns true at end of file or on a broken descriptor.
pub(super) fn read_ready(mut r: impl Read, mut sink: impl FnMut(&[u8])) -> bool {
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

fn outcome(
    exit: Exit,
    program: &str,
    out: Vec<u8>,
    out_total: usize,
    err: &VecDeque<u8>,
) -> Outcome {
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
    match exit.0 {
        nix::sys::wait::WaitStatus::Exited(_, 0) => {}
        nix::sys::wait::WaitStatus::Exited(_, code) => {
            return Outcome::Failed(JobFailure::CommandFailed {
                program: program.to_string(),
                code,
                stderr: stderr_tail(),
            });
        }
        _ => {
            return Outcome::Failed(JobFailure::HorseCrashed {
                exit,
                detail: format!("{program}\n{}\n", stderr_tail()),
            });
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
            return Outcome::Failed(JobFailure::CommandOutput {
                program: program.to_string(),
                offset: e.utf8_error().valid_up_to(),
            });
        }
    };
    if out_total > STDOUT_CAP {
        return Outcome::Returned(
            Value::String(format!(
                "{text}\n[rqworker: output cut at {STDOUT_CAP} of {out_total} bytes]"
            ))
            .into(),
        );
    }
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Outcome::Returned(Value::Null.into());
    }
    Outcome::Returned(
        serde_json::from_str(trimmed)
            .unwrap_or_else(|_| Value::String(trimmed.to_string()))
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::WaitStatus;
    use serde_json::json;

    #[test]
    fn command_stdout_becomes_the_result() {
        let ok = Exit(WaitStatus::Exited(Pid::from_raw(1), 0));
        let none = VecDeque::new();
        let run = |out: &[u8]| outcome(ok, "p", out.to_vec(), out.len(), &none);
        assert_eq!(
            run(b" {\"a\": 1}\n"),
            Outcome::Returned(json!({"a": 1}).into())
        );
        assert_eq!(run(b"hello\n"), Outcome::Returned(json!("hello").into()));
        assert_eq!(run(b"\n"), Outcome::Returned(Value::Null.into()));
        assert!(
            matches!(run(b"\xff\xfe"), Outcome::Failed(f) if f.exc_string().contains("not UTF-8"))
        );
        let failed = outcome(
            Exit(WaitStatus::Exited(Pid::from_raw(1), 3)),
            "p",
            vec![],
            0,
            &VecDeque::from(b"boom".to_vec()),
        );
        assert!(
            matches!(failed, Outcome::Failed(f) if f.exc_string().contains("status 3") && f.exc_string().contains("boom"))
        );
    }
}
