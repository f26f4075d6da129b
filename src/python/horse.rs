//! A Python job's work horse: forked from the worker while attached to the interpreter,
//! bracketed by `PyOS_BeforeFork` / `PyOS_AfterFork_*`; the child calls `job.py`'s `run` and
//! reports `{"kind", "payload", "text"}` to the worker as one JSON document.

use std::io::Write;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use serde_json::{Value, json};

use super::interpreter::{self, Interpreter};
use crate::execution::fork::ForkHooks;
use crate::execution::report;
use crate::execution::{
    Execution, Exit, JobFailure, JobStart, Outcome, ReturnValue, StartError, environmental,
};

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
        // SAFETY: called with the GIL held (inside `Python::attach`), as the C API requires.
        unsafe { pyo3::ffi::PyOS_BeforeFork() }
    }

    fn after_in_parent(&self) {
        // SAFETY: right after fork (or its failure) in the parent, with the GIL held.
        unsafe { pyo3::ffi::PyOS_AfterFork_Parent() }
    }

    fn after_in_child(&self) {
        // SAFETY: first thing in the child, before any other Python call.
        unsafe { pyo3::ffi::PyOS_AfterFork_Child() }
    }
}

/// Forks the horse for `job`.
pub fn start(interp: &Interpreter, job: &JobStart<'_>) -> Result<Box<dyn Execution>, StartError> {
    Python::attach(|py| {
        // Text the worker buffered (the app printed at import) must not be written again by
        // every horse.
        interpreter::flush_std_streams(py);
        let hooks = PythonFork {
            app_threads: app_threads(py),
        };
        let run = |out: &mut dyn Write| {
            let doc = run_job(py, interp, job);
            interpreter::flush_std_streams(py);
            let _ = out.write_all(doc.to_string().as_bytes());
            0
        };
        let stopped_callback = job
            .record
            .fields
            .get("stopped_callback_name")
            .is_some_and(|v| !v.is_empty())
            .then(|| StoppedCallback {
                runner: interp.runner.clone_ref(py),
                job_id: job.record.id.clone(),
                fields: job.record.fields.clone(),
                timeout: job
                    .record
                    .fields
                    .get("stopped_callback_timeout")
                    .and_then(|t| std::str::from_utf8(t).ok()?.trim().parse().ok())
                    .unwrap_or(CALLBACK_TIMEOUT),
            });
        report::fork(&hooks, run, decode)
            .map(|inner| {
                Box::new(PythonExecution {
                    inner,
                    stopped_callback,
                }) as Box<dyn Execution>
            })
            .map_err(|e| StartError {
                environment: environmental(&e) || e.kind() == std::io::ErrorKind::Other,
                failure: JobFailure::StartFailed {
                    what: "cannot fork a work horse".into(),
                    error: e.to_string(),
                    fix: None,
                },
            })
    })
}

/// RQ's default callback timeout (seconds).
const CALLBACK_TIMEOUT: u64 = 60;

/// A running Python job: the horse, and what a stop-job command runs after killing it.
struct PythonExecution {
    inner: report::Reported,
    stopped_callback: Option<StoppedCallback>,
}

/// The job's `on_stopped` callback, run in a horse of its own after the job's was killed (RQ
/// runs it in the worker; a horse keeps the app's code out of the worker process).
struct StoppedCallback {
    runner: Py<pyo3::types::PyModule>,
    job_id: String,
    fields: std::collections::HashMap<String, Vec<u8>>,
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
        let forked = Python::attach(|py| {
            interpreter::flush_std_streams(py);
            let hooks = PythonFork {
                app_threads: app_threads(py),
            };
            crate::execution::fork::Horse::fork_with(&hooks, || {
                let fields = PyDict::new(py);
                for (k, v) in &cb.fields {
                    let _ = fields.set_item(PyBytes::new(py, k.as_bytes()), PyBytes::new(py, v));
                }
                let _ = cb
                    .runner
                    .bind(py)
                    .call_method1("run_stopped_callback", (&cb.job_id, fields));
                interpreter::flush_std_streams(py);
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
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(cb.timeout + 5);
        while horse.exited().is_none() {
            if std::time::Instant::now() >= deadline {
                horse.kill_and_reap();
                log::warn!(
                    "job {}: its stopped callback ran past its timeout ({} s); killed",
                    cb.job_id,
                    cb.timeout
                );
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// How many threads the app started (`threading.active_count()` less the worker's own).
fn app_threads(py: Python<'_>) -> u32 {
    py.import("threading")
        .and_then(|t| t.call_method0("active_count"))
        .and_then(|n| n.extract::<u32>())
        .map_or(0, |n| n.saturating_sub(1))
}

/// In the horse: runs the job and returns the report.
fn run_job(py: Python<'_>, interp: &Interpreter, job: &JobStart<'_>) -> Value {
    let fields = PyDict::new(py);
    for (k, v) in &job.record.fields {
        let _ = fields.set_item(PyBytes::new(py, k.as_bytes()), PyBytes::new(py, v));
    }
    let timeout = job.timeout.map_or(-1, |t| t as i64);
    let called = interp
        .runner
        .bind(py)
        .call_method1("run", (&job.record.id, fields, timeout, job.worker))
        .and_then(|r| r.extract::<(String, String, String)>());
    match called {
        Ok((kind, payload, text)) => json!({ "kind": kind, "payload": payload, "text": text }),
        Err(e) => json!({
            "kind": "failed",
            "payload": interpreter::format_exception(py, &e),
            "text": "",
        }),
    }
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
