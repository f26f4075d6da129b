//! The client side: enqueue jobs exactly as Python RQ 2.12 writes a JSON job (so a Python
//! worker could run them too), and read their status and results back. The Redis commands
//! are in [`crate::store::jobs`].

use std::collections::HashMap;

use redis::Connection;
use serde_json::{Map, Value};

use crate::protocol::result::ResultEntry;
use crate::protocol::time::Instant;
use crate::protocol::{defaults, payload, pyrepr, status};
use crate::store::jobs;

/// RQ's `enqueue` options that matter on the wire.
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    /// Custom id (`[A-Za-z0-9_-]+`); a UUID4 otherwise.
    pub job_id: Option<String>,
    /// Seconds; `-1` for no limit. RQ's default is 180.
    pub timeout: Option<i64>,
    pub result_ttl: Option<i64>,
    pub failure_ttl: Option<i64>,
    /// How long the job may wait in the queue before it expires.
    pub ttl: Option<i64>,
    pub at_front: bool,
    pub meta: Option<Map<String, Value>>,
    /// Defaults to the Python call string, e.g. `tasks.add(1, 2)`.
    pub description: Option<String>,
    /// `Retry(max, interval)`: number of retries and the intervals between them.
    pub retry: Option<(u32, Vec<i64>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("invalid job id {0:?}: use only letters, digits, '-' and '_'")]
    BadId(String),
    #[error("invalid queue name: {0}")]
    BadQueue(String),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// Enqueues `func_name(*args, **kwargs)` on `queue`; returns the job id.
pub fn enqueue(
    con: &mut Connection,
    queue: &str,
    func_name: &str,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    opts: &EnqueueOptions,
) -> Result<String, ProducerError> {
    crate::config::check_queue_name(queue).map_err(ProducerError::BadQueue)?;
    let id = match &opts.job_id {
        Some(id)
            if !id.is_empty()
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
        {
            id.clone()
        }
        Some(id) => return Err(ProducerError::BadId(id.clone())),
        None => new_job_id(),
    };
    let fields = new_job_hash(queue, func_name, args, kwargs, opts);
    jobs::enqueue(con, queue, &id, &fields, opts.ttl, opts.at_front)?;
    Ok(id)
}

/// The job hash, field by field in the order RQ's `Job.to_dict` writes them.
fn new_job_hash(
    queue: &str,
    func_name: &str,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    opts: &EnqueueOptions,
) -> Vec<(&'static str, Vec<u8>)> {
    let description = opts
        .description
        .clone()
        .unwrap_or_else(|| pyrepr::call_string(func_name, &args, &kwargs));
    let data = payload::encode(&payload::Call {
        func_name: func_name.to_string(),
        args,
        kwargs,
    });
    let now = Instant::now().iso();
    let mut fields: Vec<(&str, Vec<u8>)> = vec![
        ("status", status::QUEUED.into()),
        ("created_at", now.clone().into_bytes()),
        ("data", data),
        ("success_callback_name", Vec::new()),
        ("failure_callback_name", Vec::new()),
        ("stopped_callback_name", Vec::new()),
        ("started_at", Vec::new()),
        ("ended_at", Vec::new()),
        ("last_heartbeat", Vec::new()),
        ("worker_name", Vec::new()),
        ("group_id", Vec::new()),
    ];
    if let Some((max, intervals)) = &opts.retry {
        fields.push(("retries_left", max.to_string().into_bytes()));
        let intervals = if intervals.is_empty() {
            vec![0]
        } else {
            intervals.clone()
        };
        fields.push((
            "retry_intervals",
            serde_json::to_vec(&intervals).unwrap_or_default(),
        ));
    }
    fields.push(("origin", queue.as_bytes().to_vec()));
    fields.push(("description", description.into_bytes()));
    fields.push(("enqueued_at", now.into_bytes()));
    fields.push((
        "timeout",
        opts.timeout
            .unwrap_or(defaults::JOB_TIMEOUT)
            .to_string()
            .into_bytes(),
    ));
    if let Some(t) = opts.result_ttl {
        fields.push(("result_ttl", t.to_string().into_bytes()));
    }
    if let Some(t) = opts.failure_ttl {
        fields.push(("failure_ttl", t.to_string().into_bytes()));
    }
    fields.push(("status", status::QUEUED.into()));
    if let Some(meta) = &opts.meta
        && !meta.is_empty()
    {
        fields.push(("meta", payload::python_json(&Value::Object(meta.clone()))));
    }
    if let Some(t) = opts.ttl {
        fields.push(("ttl", t.to_string().into_bytes()));
    }
    fields
}

/// The job's status, or `None` when the job does not exist (expired or deleted).
pub fn status(con: &mut Connection, id: &str) -> Result<Option<String>, ProducerError> {
    Ok(jobs::status(con, id)?)
}

/// The newest result entry, as `job.latest_result()` reads it.
pub fn latest_result(con: &mut Connection, id: &str) -> Result<Option<ResultEntry>, ProducerError> {
    Ok(jobs::latest_result(con, id)?)
}

/// The job hash as text fields (binary `data` excluded), for inspection.
pub fn job_fields(
    con: &mut Connection,
    id: &str,
) -> Result<HashMap<String, String>, ProducerError> {
    Ok(jobs::fields(con, id)?)
}

/// `str(uuid4())`: what RQ uses for job ids.
pub fn new_job_id() -> String {
    let hex = crate::protocol::new_execution_id();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
