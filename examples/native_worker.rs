//! A worker binary with native Rust job functions.
//!
//! Build and run it like `rqworker` (it takes the same options):
//!
//! ```text
//! cargo build --release --example native_worker
//! RQ_REDIS_URL=redis://127.0.0.1:6379/0 target/release/examples/native_worker high default
//! ```
//!
//! and enqueue from Python with the JSON serializer:
//!
//! ```python
//! q = Queue("default", connection=Redis(), serializer=JSONSerializer)
//! job = q.enqueue("tasks.add", 2, 3)
//! ```
//!
//! Each job runs in a forked work horse, so a panic or a crash in a function fails only that
//! job. Functions take the job's positional and keyword arguments as JSON values and return a
//! JSON value (the job's result) or a `JobError` (its failure text).

use rq_supervisor::{JobCall, JobError, Registry};
use serde_json::{Value, json};

fn add(call: &JobCall) -> Result<Value, JobError> {
    let mut sum = 0i64;
    for arg in &call.args {
        sum += arg.as_i64().ok_or_else(|| {
            JobError::with_kind("TypeError", format!("tasks.add takes integers, got {arg}"))
        })?;
    }
    Ok(json!(sum))
}

fn word_count(call: &JobCall) -> Result<Value, JobError> {
    let text = call
        .args
        .first()
        .or_else(|| call.kwargs.get("text"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            JobError::with_kind("TypeError", "tasks.word_count needs a text argument")
        })?;
    Ok(json!({ "words": text.split_whitespace().count(), "job": call.id }))
}

fn main() {
    let mut registry = Registry::new();
    registry
        .register("tasks.add", add)
        .register("tasks.word_count", word_count)
        .register("tasks.crash", |_| panic!("tasks.crash always panics"));
    if let Err(code) = rq_supervisor::worker::main_with(registry) {
        std::process::exit(code);
    }
}
