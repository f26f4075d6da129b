//! How a job ended, and every exception text RQ users read in `exc_string`, rendered in one
//! place. A Python user knows the last line of a traceback, `Kind: message`; each text here
//! starts that way, with RQ's own wording where RQ has one (timeout, work-horse crash,
//! abandoned job) so dashboards and `rq info` read the same as under Python workers.

use std::fmt;

use nix::sys::wait::WaitStatus;
use serde_json::Value;

use crate::protocol::payload::PayloadError;
use crate::protocol::result;
use crate::protocol::time::Instant;
use crate::store::Ending;

/// How an execution ended, before it is written to Redis.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The handler returned this value.
    Returned(ReturnValue),
    Failed(JobFailure),
    /// Stopped on request (`rq.command.send_stop_job_command`).
    Stopped,
    /// The job returned RQ's `Retry(max, interval)` (Python jobs): run it again.
    Retry {
        /// The `Retry` serialized with the job's serializer, base64, as RQ stores it.
        base64: String,
        max: u32,
        intervals: Vec<u64>,
    },
}

/// A job's return value.
#[derive(Debug, Clone, PartialEq)]
pub enum ReturnValue {
    /// A JSON value (native and command handlers); `null` means no result.
    Json(Value),
    /// Already serialized with the job's own serializer (Python jobs): the base64 text RQ
    /// stores in `return_value` (empty for None), and the value's repr for the log.
    Serialized { base64: String, repr: String },
}

impl From<Value> for ReturnValue {
    fn from(v: Value) -> ReturnValue {
        ReturnValue::Json(v)
    }
}

impl ReturnValue {
    pub fn is_none(&self) -> bool {
        match self {
            ReturnValue::Json(v) => v.is_null(),
            ReturnValue::Serialized { base64, .. } => base64.is_empty(),
        }
    }

    /// What the log shows of it.
    pub fn shown(&self) -> String {
        match self {
            ReturnValue::Json(v) => v.to_string(),
            ReturnValue::Serialized { repr, .. } => repr.clone(),
        }
    }
}

/// RQ's text for a stopped job.
const STOPPED: &str = "Job stopped by user, work-horse terminated.";

impl Outcome {
    /// The ending the settle records.
    pub fn ending(&self) -> Ending {
        match self {
            Outcome::Returned(_) => Ending::Finished,
            Outcome::Failed(_) => Ending::Failed,
            Outcome::Stopped => Ending::Stopped,
            Outcome::Retry { max, intervals, .. } => Ending::Retried {
                max: *max,
                intervals: intervals.clone(),
            },
        }
    }

    /// The result entry's payload: the encoded return value (empty for None), or the encoded
    /// `exc_string`.
    pub fn payload(&self) -> String {
        match self {
            Outcome::Returned(v) if v.is_none() => String::new(),
            Outcome::Returned(ReturnValue::Json(v)) => result::encode_return_value(v),
            Outcome::Returned(ReturnValue::Serialized { base64, .. }) => base64.clone(),
            Outcome::Failed(f) => result::encode_exc_string(&f.exc_string()),
            Outcome::Stopped => result::encode_exc_string(STOPPED),
            Outcome::Retry { base64, .. } => base64.clone(),
        }
    }

    /// Whether a failure may use the job's retries. Every failure may, as in RQ: in a mixed
    /// fleet a Python worker that knows the function may take the retry.
    pub fn allows_retry(&self) -> bool {
        matches!(self, Outcome::Failed(_))
    }
}

/// How a work horse process ended, as `waitpid` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit(pub WaitStatus);

impl Exit {
    /// The raw `waitpid` status integer, as Python's `os.waitpid` reports it in RQ's message.
    pub fn raw_status(self) -> i32 {
        match self.0 {
            WaitStatus::Exited(_, code) => (code & 0xff) << 8,
            WaitStatus::Signaled(_, sig, core) => sig as i32 | if core { 0x80 } else { 0 },
            _ => 0,
        }
    }

    /// Exit code 0, the one way a horse says it ended on its own.
    pub fn success(self) -> bool {
        matches!(self.0, WaitStatus::Exited(_, 0))
    }
}

impl fmt::Display for Exit {
    /// RQ's text for a horse that died without reporting (§7.9).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Work-horse terminated unexpectedly; waitpid returned {}",
            self.raw_status()
        )?;
        if let WaitStatus::Signaled(_, sig, _) = self.0 {
            write!(f, " (signal {})", sig as i32)?;
        }
        f.write_str("; ")
    }
}

/// Why a job failed, for its `exc_string`.
#[derive(Debug, Clone, PartialEq)]
pub enum JobFailure {
    /// The job's own error, already in exception form (`ValueError: ...`, or a traceback).
    Raised(String),
    /// The payload could not be decoded.
    Deserialization(PayloadError),
    /// No handler runs this function on this worker; `known` lists the names that do run.
    UnknownFunction {
        func_name: String,
        known: Vec<String>,
    },
    /// The handler could not be started: `what` failed with `error`; `fix` says what to do.
    StartFailed {
        what: String,
        error: String,
        fix: Option<String>,
    },
    /// A command handler exited non-zero.
    CommandFailed {
        program: String,
        code: i32,
        stderr: String,
    },
    /// A command handler wrote output that is not UTF-8 text.
    CommandOutput { program: String, offset: usize },
    /// The horse died without reporting; `detail` says what is known (a panic, stderr).
    HorseCrashed { exit: Exit, detail: String },
    /// The job ran past its timeout and its horse was killed.
    Timeout { secs: u64 },
    /// A cold shutdown killed the horse: a second SIGINT/SIGTERM, or the supervisor died.
    ColdShutdown {
        worker: String,
        supervisor_died: bool,
        exit: Exit,
    },
    /// `rq.command.send_kill_horse_command` killed the horse.
    KilledByCommand { exit: Exit },
    /// RQ's abandoned-job cleanup: the execution's heartbeat expired.
    Abandoned { at: Instant },
    /// rq-supervisor's crash cleanup: the worker died while running the job.
    WorkerDied { worker: String, how: String },
}

impl JobFailure {
    /// The full `exc_string`.
    pub fn exc_string(&self) -> String {
        match self {
            JobFailure::Raised(text) => text.clone(),
            JobFailure::Deserialization(e) => format!("DeserializationError: {e}\n"),
            JobFailure::UnknownFunction { func_name, known } => {
                let known = if known.is_empty() {
                    "none are configured".to_string()
                } else {
                    known.join(", ")
                };
                format!(
                    "UnknownFunction: no handler for function {func_name:?} on this worker; known handlers: {known}. \
                     Declare it as [handlers.\"{func_name}\"] in the config, register it in a native worker, \
                     or enable the built-ins with --builtin-handlers\n"
                )
            }
            JobFailure::StartFailed { what, error, fix } => match fix {
                Some(fix) => format!("HandlerStartError: {what}: {error}; {fix}\n"),
                None => format!("HandlerStartError: {what}: {error}\n"),
            },
            JobFailure::CommandFailed {
                program,
                code,
                stderr,
            } => format!("CommandFailed: {program} exited with status {code}\n{stderr}\n"),
            JobFailure::CommandOutput { program, offset } => format!(
                "CommandOutputError: {program} wrote output that is not UTF-8 text (invalid byte at offset {offset}); \
                 print UTF-8 text or JSON, or base64-encode binary data\n"
            ),
            JobFailure::HorseCrashed { exit, detail } => format!("{exit}{detail}"),
            JobFailure::Timeout { secs } => {
                format!(
                    "JobTimeoutException: Task exceeded maximum timeout value ({secs} seconds)\n"
                )
            }
            JobFailure::ColdShutdown {
                worker,
                supervisor_died,
                exit,
            } => format!(
                "ShutDownImminentException: worker {worker} was stopped by a cold shutdown ({}) and killed the work horse; {exit}\n",
                if *supervisor_died {
                    "its rq-supervisor died"
                } else {
                    "second SIGINT/SIGTERM"
                }
            ),
            JobFailure::KilledByCommand { exit } => exit.to_string(),
            JobFailure::Abandoned { at } => {
                // RQ's text, with Python's str(datetime) of an aware UTC time.
                let when = at.iso().replace('T', " ").replace('Z', "+00:00");
                format!("Moved to FailedJobRegistry, due to AbandonedJobError, at {when}")
            }
            JobFailure::WorkerDied { worker, how } => format!(
                "WorkerDied: worker {worker} {how} while running this job; rq-supervisor settled it\n"
            ),
        }
    }

    /// One line for the worker's log: the first, or for a Python traceback its last (the
    /// exception and its message).
    pub fn summary(&self) -> String {
        let text = self.exc_string();
        let line = if text.starts_with("Traceback (most recent call last):") {
            text.lines().rev().find(|l| !l.trim().is_empty())
        } else {
            text.lines().next()
        };
        line.unwrap_or_default().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;
    use nix::unistd::Pid;

    #[test]
    fn texts_match_rq() {
        let pid = Pid::from_raw(1);
        let killed = Exit(WaitStatus::Signaled(pid, Signal::SIGKILL, false));
        assert_eq!(
            killed.to_string(),
            "Work-horse terminated unexpectedly; waitpid returned 9 (signal 9); "
        );
        assert_eq!(Exit(WaitStatus::Exited(pid, 1)).raw_status(), 256);
        assert_eq!(
            JobFailure::Timeout { secs: 5 }.exc_string(),
            "JobTimeoutException: Task exceeded maximum timeout value (5 seconds)\n"
        );
        let at = crate::protocol::time::parse_iso("2026-01-02T03:04:05.123456Z").unwrap();
        assert_eq!(
            JobFailure::Abandoned { at }.exc_string(),
            "Moved to FailedJobRegistry, due to AbandonedJobError, at 2026-01-02 03:04:05.123456+00:00"
        );
        assert_eq!(
            JobFailure::ColdShutdown {
                worker: "w".into(),
                supervisor_died: false,
                exit: killed
            }
            .summary(),
            "ShutDownImminentException: worker w was stopped by a cold shutdown (second SIGINT/SIGTERM) and killed the work horse; Work-horse terminated unexpectedly; waitpid returned 9 (signal 9); "
        );
        let unknown = JobFailure::UnknownFunction {
            func_name: "other".into(),
            known: vec!["tasks.mail.send".into()],
        };
        assert!(
            unknown
                .summary()
                .starts_with("UnknownFunction: no handler for function \"other\"")
        );
        assert!(unknown.summary().contains("tasks.mail.send"));
        assert_eq!(Outcome::Returned(Value::Null.into()).payload(), "");
        assert!(Outcome::Failed(JobFailure::Raised("E: x\n".into())).allows_retry());
        assert!(!Outcome::Stopped.allows_retry());
    }
}
