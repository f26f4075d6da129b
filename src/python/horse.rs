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
        report::fork(&hooks, run, decode)
            .map(|e| Box::new(e) as Box<dyn Execution>)
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
        _ => Outcome::Failed(JobFailure::HorseCrashed {
            exit,
            detail: "the Python job ended its work horse without reporting an outcome (it called os._exit(), or the interpreter crashed)".into(),
        }),
    }
}
