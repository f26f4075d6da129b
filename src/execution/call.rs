//! The job as a native or command handler sees it, and a native handler's error.

use std::fmt;

use serde_json::{Map, Value};

/// The job as a handler sees it.
#[derive(Debug, Clone)]
pub struct JobCall {
    pub id: String,
    pub func_name: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    /// The queue the job came from.
    pub origin: String,
    pub description: String,
    pub meta: Value,
    pub worker_name: String,
    pub execution_id: String,
}

/// The `RQ_*` variables a job's process sees: native horses set them, command handlers get
/// them in their environment.
pub fn job_env(call: &JobCall) -> [(&'static str, String); 5] {
    [
        ("RQ_JOB_ID", call.id.clone()),
        ("RQ_WORKER_ID", call.worker_name.clone()),
        ("RQ_EXECUTION_ID", call.execution_id.clone()),
        ("RQ_FUNC_NAME", call.func_name.clone()),
        ("RQ_QUEUE", call.origin.clone()),
    ]
}

impl JobCall {
    /// The JSON document command handlers read on stdin.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "func_name": self.func_name,
            "args": self.args,
            "kwargs": self.kwargs,
            "origin": self.origin,
            "description": self.description,
            "meta": self.meta,
        })
    }
}

/// A native handler's failure. Shown in `exc_string` as `<kind>: <message>`, the last line
/// Python users know from a traceback.
#[derive(Debug, Clone, PartialEq)]
pub struct JobError {
    pub kind: String,
    pub message: String,
}

impl JobError {
    pub fn new(message: impl Into<String>) -> JobError {
        JobError {
            kind: "JobError".into(),
            message: message.into(),
        }
    }

    /// An error with a Python-style exception name, e.g. `ValueError`.
    pub fn with_kind(kind: impl Into<String>, message: impl Into<String>) -> JobError {
        JobError {
            kind: kind.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl<E: std::error::Error> From<E> for JobError {
    fn from(e: E) -> JobError {
        JobError::new(e.to_string())
    }
}
