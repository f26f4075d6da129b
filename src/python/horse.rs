//! A Python job's work horse: forked from the worker while it holds the GIL, bracketed by
//! `PyOS_BeforeFork` / `PyOS_AfterFork_*`; the child calls `job.py`'s `run_job`, which
//! returns the report `{"kind", "payload", "text"}` the child writes to the worker.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::capi::{self, Gil, Owned};
use super::interpreter::{self, Interpreter, Runner};
use crate::execution::fork::{ForkHooks, Horse};
use crate::execution::report;
use crate::execution::{Execution, Exit, JobFailure, JobStart, Outcome, ReturnValue, StartError};

/// RQ's default callback timeout (seconds).
const CALLBACK_TIMEOUT: u64 = 60;

/// CPython's own fork protocol, which `os.fork()` follows too: the import lock and the
/// interpreter's internal locks are taken before the fork and released (parent) or reset
/// (child) after it; the child's at-fork hooks reseed `random` and reset `threading`.
struct PythonFork {
    /// The app's own Python threads, besides the worker's.
    app_threads: u32,
}

impl ForkHooks for PythonFork {
    fn accepted_threads(&self) -> u32 {
        self.app_threads
    }

    fn before(&self) {
        // SAFETY: called with the GIL held (a `Gil` guard is alive around the fork), as the
        // C API requires.
        unsafe { (capi::api().PyOS_BeforeFork)() }
    }

    fn after_in_parent(&self) {
        // SAFETY: right after fork (or its failure) in the parent, with the GIL held.
        unsafe { (capi::api().PyOS_AfterFork_Parent)() }
    }

    fn after_in_child(&self) {
        // SAFETY: first thing in the child, before any other Python call.
        unsafe { (capi::api().PyOS_AfterFork_Child)() }
    }
}

/// Runs `fork` (which forks with the hooks it is given) with the GIL held around the fork,
/// so the child starts holding it too.
fn forking<T>(runner: Runner, fork: impl FnOnce(&PythonFork) -> T) -> T {
    let _gil = Gil::acquire();
    // Text the worker buffered (the app printed at import) must not be written again by
    // every horse.
    interpreter::flush_std_streams(runner);
    let hooks = PythonFork {
        app_threads: app_threads(runner),
    };
    fork(&hooks)
}

/// Forks the horse for `job`.
pub fn start(interp: &Interpreter, job: &JobStart<'_>) -> Result<Box<dyn Execution>, StartError> {
    let runner = interp.runner;
    let timeout = job.timeout.map_or(-1, |t| t as i64);
    let stopped_callback = job
        .record
        .fields
        .get("stopped_callback_name")
        .is_some_and(|v| !v.is_empty())
        .then(|| StoppedCallback {
            runner,
            job_id: job.record.id.clone(),
            fields: job.record.fields.clone(),
            timeout: job
                .record
                .fields
                .get("stopped_callback_timeout")
                .and_then(|t| std::str::from_utf8(t).ok()?.trim().parse().ok())
                .unwrap_or(CALLBACK_TIMEOUT),
        });
    let run = |out: &mut dyn Write| {
        let report = run_job(
            runner,
            &job.record.id,
            &job.record.fields,
            timeout,
            job.worker,
        );
        let _ = out.write_all(report.as_bytes());
        0
    };
    forking(runner, |hooks| report::fork(hooks, run, decode))
        .map(|inner| {
            Box::new(PythonExecution {
                inner,
                stopped_callback,
            }) as Box<dyn Execution>
        })
        .map_err(|e| StartError::fork(&e))
}

/// Calls `job.py`'s `run_job` (the GIL held) and returns its report; flushes the job's
/// output.
fn run_job(
    runner: Runner,
    id: &str,
    fields: &HashMap<String, Vec<u8>>,
    timeout: i64,
    worker: &str,
) -> String {
    let args = [
        capi::str_obj(id),
        fields_obj(fields),
        capi::int_obj(timeout),
        capi::str_obj(worker),
    ];
    let report = args
        .into_iter()
        .collect::<Option<Vec<Owned>>>()
        .and_then(|args| runner.call_text(c"run_job", args))
        .unwrap_or_else(|| {
            r#"{"kind": "failed", "payload": "rqworker's Python job runner failed (the error is in the worker's log)\n", "text": ""}"#.into()
        });
    interpreter::flush_std_streams(runner);
    report
}

/// Runs the job in the worker's own process (no-fork mode): the app's state persists from
/// job to job, as under RQ's SimpleWorker; the timeout raises JobTimeoutException inside the
/// job, as in a horse. A stopped callback has nothing to run after (no horse to kill).
pub fn run_in_process(interp: &Interpreter, job: &JobStart<'_>) -> Outcome {
    let timeout = job.timeout.map_or(-1, |t| t as i64);
    let _gil = Gil::acquire();
    let report = run_job(
        interp.runner,
        &job.record.id,
        &job.record.fields,
        timeout,
        job.worker,
    );
    decode(crate::execution::inline::exit_code(0), report.as_bytes())
}

/// The job hash as `job.py` reads it: a dict of bytes, as redis-py's `HGETALL` gives it
/// (built here, in C, in a fraction of what parsing it in Python took).
fn fields_obj(fields: &HashMap<String, Vec<u8>>) -> Option<Owned> {
    capi::bytes_dict(fields.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())))
}

/// A running Python job: the horse, and what a stop-job command runs after killing it.
struct PythonExecution {
    inner: report::Reported,
    stopped_callback: Option<StoppedCallback>,
}

/// The job's `on_stopped` callback, run in a horse of its own after the job's was killed (RQ
/// runs it in the worker; a horse keeps the app's code out of the worker process).
struct StoppedCallback {
    runner: Runner,
    job_id: String,
    fields: HashMap<String, Vec<u8>>,
    timeout: u64,
}

impl Execution for PythonExecution {
    fn pid(&self) -> Option<nix::unistd::Pid> {
        self.inner.pid()
    }
    fn poll_fds(&self) -> Vec<(std::os::fd::BorrowedFd<'_>, nix::poll::PollFlags)> {
        self.inner.poll_fds()
    }
    fn pump(&mut self) {
        self.inner.pump()
    }
    fn try_finish(&mut self) -> Option<Outcome> {
        self.inner.try_finish()
    }
    fn kill(&mut self) -> Exit {
        self.inner.kill()
    }

    fn after_stop(&mut self) {
        let Some(cb) = self.stopped_callback.take() else {
            return;
        };
        let forked = forking(cb.runner, |hooks| {
            Horse::fork_with(hooks, || {
                if let (Some(id), Some(fields)) =
                    (capi::str_obj(&cb.job_id), fields_obj(&cb.fields))
                {
                    cb.runner.call(c"run_stopped", vec![id, fields]);
                }
                interpreter::flush_std_streams(cb.runner);
                0
            })
        });
        let mut horse = match forked {
            Ok(h) => h,
            Err(e) => {
                log::warn!("job {}: cannot run its stopped callback: {e}", cb.job_id);
                return;
            }
        };
        // The callback has its own timeout inside; this is the backstop.
        let deadline = Instant::now() + Duration::from_secs(cb.timeout + 5);
        while horse.exited().is_none() {
            if Instant::now() >= deadline {
                horse.kill_and_reap();
                log::warn!(
                    "job {}: its stopped callback ran past its timeout ({} s); killed",
                    cb.job_id,
                    cb.timeout
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// How many threads the app started (`threading.active_count()` less the worker's own).
fn app_threads(runner: Runner) -> u32 {
    runner
        .call_text(c"app_threads", Vec::new())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The job's outcome from the horse's exit and report.
fn decode(exit: Exit, report: &[u8]) -> Outcome {
    let doc: Option<Value> = serde_json::from_slice(report).ok();
    let field = |name: &str| {
        doc.as_ref()
            .and_then(|d| d.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match (exit.success(), field("kind").as_deref()) {
        (true, Some("ok")) => Outcome::Returned(ReturnValue::Serialized {
            base64: field("payload").unwrap_or_default(),
            repr: field("text").unwrap_or_default(),
        }),
        (true, Some("failed")) => {
            Outcome::Failed(JobFailure::Raised(field("payload").unwrap_or_default()))
        }
        (true, Some("retry")) => {
            // `text` is "max interval interval ...".
            let spec: Vec<u64> = field("text")
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            Outcome::Retry {
                base64: field("payload").unwrap_or_default(),
                max: spec.first().map_or(1, |m| *m as u32),
                intervals: spec.get(1..).unwrap_or_default().to_vec(),
            }
        }
        _ => Outcome::Failed(JobFailure::HorseCrashed {
            exit,
            detail: "the Python job ended its work horse without reporting an outcome (it called os._exit(), or the interpreter crashed)".into(),
        }),
    }
}
