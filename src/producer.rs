//! The client side: enqueue jobs exactly as Python RQ 2.12 writes a JSON job (so a Python
//! worker could run them too), and read their status and results back.

use std::collections::HashMap;

use redis::{Connection, Value as RValue};
use serde_json::{Map, Value};

use crate::protocol::result::ResultEntry;
use crate::protocol::time::Instant;
use crate::protocol::{defaults, keys, payload, pyrepr, status};

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
    let key = keys::job(&id);
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
    let mut p = redis::pipe();
    p.atomic().sadd(keys::QUEUES, keys::queue(queue));
    p.hset_multiple(&key, &fields);
    if let Some(ttl) = opts.ttl {
        p.expire(&key, ttl)
            .expire(keys::dependents(&id), ttl)
            .expire(keys::dependencies(&id), ttl);
    }
    if opts.at_front {
        p.lpush(keys::queue(queue), &id);
    } else {
        p.rpush(keys::queue(queue), &id);
    }
    p.exec(con)?;
    Ok(id)
}

/// The job's status, or `None` when the job does not exist (expired or deleted).
pub fn status(con: &mut Connection, id: &str) -> Result<Option<String>, ProducerError> {
    Ok(redis::cmd("HGET")
        .arg(keys::job(id))
        .arg("status")
        .query(con)?)
}

/// The newest result entry, as `job.latest_result()` reads it.
pub fn latest_result(con: &mut Connection, id: &str) -> Result<Option<ResultEntry>, ProducerError> {
    let reply: RValue = redis::cmd("XREVRANGE")
        .arg(keys::results(id))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(con)?;
    let RValue::Array(entries) = reply else {
        return Ok(None);
    };
    Ok(entries.into_iter().next().and_then(parse_entry))
}

/// The job hash as text fields (binary `data` excluded), for inspection.
pub fn job_fields(
    con: &mut Connection,
    id: &str,
) -> Result<HashMap<String, String>, ProducerError> {
    let raw: HashMap<String, Vec<u8>> = redis::cmd("HGETALL").arg(keys::job(id)).query(con)?;
    Ok(raw
        .into_iter()
        .filter(|(k, _)| k != "data")
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect())
}

fn parse_entry(entry: RValue) -> Option<ResultEntry> {
    let RValue::Array(mut parts) = entry else {
        return None;
    };
    let fields = parts.pop()?;
    let id = match parts.pop()? {
        RValue::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        RValue::SimpleString(s) => s,
        _ => return None,
    };
    let RValue::Array(flat) = fields else {
        return None;
    };
    let mut pairs = Vec::new();
    let mut it = flat.into_iter();
    while let (Some(RValue::BulkString(k)), Some(RValue::BulkString(v))) = (it.next(), it.next()) {
        pairs.push((String::from_utf8_lossy(&k).into_owned(), v));
    }
    ResultEntry::from_fields(id, &pairs)
}

/// `str(uuid4())`: what RQ uses for job ids.
pub fn new_job_id() -> String {
    let hex = crate::worker::store::new_execution_id();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
