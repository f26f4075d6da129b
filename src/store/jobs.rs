//! The producer's Redis side: writing a new job as RQ's `enqueue` does, and reading a job's
//! status, fields and results back. These take a plain connection: a producer is an
//! application's code with its own connection handling, not a worker.

use std::collections::HashMap;

use redis::{Connection, RedisResult, Value};

use crate::protocol::keys;
use crate::protocol::result::ResultEntry;

/// Writes a job hash and pushes its id, in one transaction, as RQ's `Queue.enqueue_job`:
/// the queue joins `rq:queues`, the hash gets `fields`, and with a `ttl` the job (and its
/// dependency keys) expire.
pub fn enqueue(
    con: &mut Connection,
    queue: &str,
    id: &str,
    fields: &[(&str, Vec<u8>)],
    ttl: Option<i64>,
    at_front: bool,
) -> RedisResult<()> {
    let key = keys::job(id);
    let mut p = redis::pipe();
    p.atomic().sadd(keys::QUEUES, keys::queue(queue));
    p.hset_multiple(&key, fields);
    if let Some(ttl) = ttl {
        p.expire(&key, ttl)
            .expire(keys::dependents(id), ttl)
            .expire(keys::dependencies(id), ttl);
    }
    if at_front {
        p.lpush(keys::queue(queue), id);
    } else {
        p.rpush(keys::queue(queue), id);
    }
    p.exec(con)
}

/// The job's status, or `None` when the job does not exist (expired or deleted).
pub fn status(con: &mut Connection, id: &str) -> RedisResult<Option<String>> {
    redis::cmd("HGET")
        .arg(keys::job(id))
        .arg("status")
        .query(con)
}

/// The newest result entry, as `job.latest_result()` reads it.
pub fn latest_result(con: &mut Connection, id: &str) -> RedisResult<Option<ResultEntry>> {
    let reply: Value = redis::cmd("XREVRANGE")
        .arg(keys::results(id))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(con)?;
    let Value::Array(entries) = reply else {
        return Ok(None);
    };
    Ok(entries.into_iter().next().and_then(parse_entry))
}

/// The job hash as text fields (binary `data` excluded), for inspection.
pub fn fields(con: &mut Connection, id: &str) -> RedisResult<HashMap<String, String>> {
    let raw: HashMap<String, Vec<u8>> = redis::cmd("HGETALL").arg(keys::job(id)).query(con)?;
    Ok(raw
        .into_iter()
        .filter(|(k, _)| k != "data")
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect())
}

fn parse_entry(entry: Value) -> Option<ResultEntry> {
    let Value::Array(mut parts) = entry else {
        return None;
    };
    let fields = parts.pop()?;
    let id = match parts.pop()? {
        Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        Value::SimpleString(s) => s,
        _ => return None,
    };
    let Value::Array(flat) = fields else {
        return None;
    };
    let mut pairs = Vec::new();
    let mut it = flat.into_iter();
    while let (Some(Value::BulkString(k)), Some(Value::BulkString(v))) = (it.next(), it.next()) {
        pairs.push((String::from_utf8_lossy(&k).into_owned(), v));
    }
    ResultEntry::from_fields(id, &pairs)
}
