//! `rq.builtin.*`: small functions for smoke tests, demos and benchmarks. Off unless
//! `--builtin-handlers` or `[worker] builtin_handlers = true`.

use std::time::Duration;

use serde_json::Value;

use super::{JobCall, JobError, Registry};

pub const NOOP: &str = "rq.builtin.noop";
pub const ECHO: &str = "rq.builtin.echo";
pub const SLEEP: &str = "rq.builtin.sleep";
pub const FAIL: &str = "rq.builtin.fail";

pub fn register(r: &mut Registry) {
    r.register(NOOP, |_| Ok(Value::Null));
    r.register(ECHO, echo);
    r.register(SLEEP, sleep);
    r.register(FAIL, fail);
}

/// Returns the positional arguments as a list.
fn echo(call: &JobCall) -> Result<Value, JobError> {
    Ok(Value::Array(call.args.clone()))
}

/// Sleeps for its first argument (or `seconds=`), in seconds; fractions allowed.
fn sleep(call: &JobCall) -> Result<Value, JobError> {
    let arg = call.args.first().or_else(|| call.kwargs.get("seconds"));
    let secs = match arg {
        Some(v) => v
            .as_f64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok())),
        None => Some(0.0),
    };
    match secs {
        Some(s) if s.is_finite() && s >= 0.0 => {
            std::thread::sleep(Duration::from_secs_f64(s));
            Ok(Value::Null)
        }
        _ => Err(JobError::with_kind(
            "ValueError",
            format!("rq.builtin.sleep needs a number of seconds, got {arg:?}"),
        )),
    }
}

/// Always fails, with its first argument as the message.
fn fail(call: &JobCall) -> Result<Value, JobError> {
    let message = match call.args.first() {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "rq.builtin.fail was called".to_string(),
    };
    Err(JobError::with_kind("Exception", message))
}
