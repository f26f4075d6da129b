//! Reading Redis as the tests check it: raw keys, RQ's result streams decoded independently
//! of the crate's codec, and waits for a job's status or a worker's state.

use std::time::{Duration, Instant};

use super::{WAIT, wait_until};

/// Reads one field of a hash as text.
pub fn hget(con: &mut redis::Connection, key: &str, field: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query(con)
        .expect("HGET")
}

pub fn exists(con: &mut redis::Connection, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query(con).expect("EXISTS")
}

pub fn hgetall(
    con: &mut redis::Connection,
    key: &str,
) -> std::collections::HashMap<String, String> {
    let raw: std::collections::HashMap<String, Vec<u8>> =
        redis::cmd("HGETALL").arg(key).query(con).expect("HGETALL");
    raw.into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

pub fn ttl(con: &mut redis::Connection, key: &str) -> i64 {
    redis::cmd("TTL").arg(key).query(con).expect("TTL")
}

/// A sorted-set score as text (`inf` for `+inf`), `None` when the member is absent.
pub fn zscore(con: &mut redis::Connection, key: &str, member: &str) -> Option<String> {
    redis::cmd("ZSCORE")
        .arg(key)
        .arg(member)
        .query(con)
        .expect("ZSCORE")
}

pub fn zrange(con: &mut redis::Connection, key: &str) -> Vec<String> {
    redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query(con)
        .expect("ZRANGE")
}

pub fn lrange(con: &mut redis::Connection, key: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query(con)
        .expect("LRANGE")
}

pub fn llen(con: &mut redis::Connection, key: &str) -> usize {
    redis::cmd("LLEN").arg(key).query(con).expect("LLEN")
}

pub fn get(con: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(con).expect("GET")
}

/// A set's members, sorted.
pub fn smembers(con: &mut redis::Connection, key: &str) -> Vec<String> {
    let mut v: Vec<String> = redis::cmd("SMEMBERS")
        .arg(key)
        .query(con)
        .expect("SMEMBERS");
    v.sort();
    v
}

/// One stream entry's fields.
pub type Fields = std::collections::HashMap<String, Vec<u8>>;

/// Every entry of `rq:results:<id>`, oldest first, as (entry id, field map).
pub fn results(con: &mut redis::Connection, id: &str) -> Vec<(String, Fields)> {
    type Raw = Vec<(String, Vec<(String, Vec<u8>)>)>;
    let reply: Raw = redis::cmd("XRANGE")
        .arg(format!("rq:results:{id}"))
        .arg("-")
        .arg("+")
        .query(con)
        .expect("XRANGE");
    reply
        .into_iter()
        .map(|(eid, fields)| (eid, fields.into_iter().collect()))
        .collect()
}

/// Decodes a result's `return_value` (base64 of JSON), independently of the crate's codec.
pub fn decode_return_value(field: &[u8]) -> serde_json::Value {
    use base64::Engine;
    let json = base64::engine::general_purpose::STANDARD
        .decode(field)
        .expect("return_value is base64");
    serde_json::from_slice(&json).expect("return_value is JSON")
}

/// Decodes a result's `exc_string` (base64 of zlib of UTF-8 text).
pub fn decode_exc_string(field: &[u8]) -> String {
    use base64::Engine;
    use std::io::Read;
    let z = base64::engine::general_purpose::STANDARD
        .decode(field)
        .expect("exc_string is base64");
    let mut text = String::new();
    flate2::read::ZlibDecoder::new(&z[..])
        .read_to_string(&mut text)
        .expect("exc_string is zlib of UTF-8");
    text
}

/// The job's status field, `None` when the hash is gone.
pub fn job_status(con: &mut redis::Connection, id: &str) -> Option<String> {
    hget(con, &format!("rq:job:{id}"), "status")
}

/// Waits until the job's status is one of `wanted`; returns it.
pub fn wait_status(con: &mut redis::Connection, id: &str, wanted: &[&str]) -> String {
    wait_status_within(con, id, wanted, WAIT)
}

/// `wait_status` with a limit of its own, for jobs that take longer than `WAIT` to settle.
pub fn wait_status_within(
    con: &mut redis::Connection,
    id: &str,
    wanted: &[&str],
    limit: Duration,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let last = job_status(con, id);
        if let Some(s) = &last
            && wanted.contains(&s.as_str())
        {
            return s.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: job {id}: wanted status {wanted:?}, last seen {last:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the `state` field of worker `name`'s hash (`rq:worker:<name>`) is `state`.
pub fn wait_worker_state(con: &mut redis::Connection, name: &str, state: &str) {
    wait_worker_state_within(con, name, state, WAIT);
}

/// `wait_worker_state` with a limit of its own.
pub fn wait_worker_state_within(
    con: &mut redis::Connection,
    name: &str,
    state: &str,
    limit: Duration,
) {
    let key = format!("rq:worker:{name}");
    wait_until(&format!("worker {name} in state {state}"), limit, || {
        hget(con, &key, "state").as_deref() == Some(state)
    });
}

/// The fields of the job's latest result, which must be of `kind` (1 successful, 2 failed).
fn latest_result_of(con: &mut redis::Connection, id: &str, kind: &[u8]) -> Fields {
    let mut entries = results(con, id);
    let (_, last) = entries
        .pop()
        .unwrap_or_else(|| panic!("job {id} has no result"));
    assert_eq!(last.get("type").map(|v| &v[..]), Some(kind), "job {id}");
    last
}

/// The failure text of the job's latest result (type 2), panicking if there is none.
pub fn latest_exc(con: &mut redis::Connection, id: &str) -> String {
    let last = latest_result_of(con, id, b"2");
    decode_exc_string(last.get("exc_string").expect("exc_string"))
}

/// The return value of the job's latest result (type 1); `None` when it returned None.
pub fn latest_return(con: &mut redis::Connection, id: &str) -> Option<serde_json::Value> {
    latest_result_of(con, id, b"1")
        .get("return_value")
        .map(|v| decode_return_value(v))
}
