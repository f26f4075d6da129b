//! Result stream entries `rq:results:J` (§3.3): what the worker appends after each execution
//! and what `job.latest_result()` reads back.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

use super::payload;

/// Result types RQ 2.12 defines; 2.12 workers write stopped jobs as `Failed` too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultType {
    Successful = 1,
    Failed = 2,
    Stopped = 3,
    Retried = 4,
    MaxRetriesExceeded = 5,
}

impl ResultType {
    pub fn from_code(code: i64) -> Option<ResultType> {
        Some(match code {
            1 => ResultType::Successful,
            2 => ResultType::Failed,
            3 => ResultType::Stopped,
            4 => ResultType::Retried,
            5 => ResultType::MaxRetriesExceeded,
            _ => return None,
        })
    }
}

/// `return_value`: base64 of the JSON text, no zlib.
pub fn encode_return_value(value: &Value) -> String {
    B64.encode(payload::python_json(value))
}

/// `exc_string`: base64 of zlib of the UTF-8 text.
pub fn encode_exc_string(text: &str) -> String {
    B64.encode(payload::deflate(text.as_bytes()))
}

pub fn decode_return_value(field: &[u8]) -> Option<Value> {
    let json = B64.decode(field).ok()?;
    serde_json::from_slice(&json).ok()
}

pub fn decode_exc_string(field: &[u8]) -> Option<String> {
    let z = B64.decode(field).ok()?;
    let text = payload::inflate(&z).ok()?;
    Some(String::from_utf8_lossy(&text).into_owned())
}

/// One entry of a results stream, decoded for readers.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultEntry {
    /// The stream entry id; RQ uses it as `Result.id`.
    pub id: String,
    pub kind: ResultType,
    pub return_value: Option<Value>,
    pub exc_string: Option<String>,
    pub worker_name: String,
}

impl ResultEntry {
    pub fn from_fields(id: String, fields: &[(String, Vec<u8>)]) -> Option<ResultEntry> {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_slice())
        };
        let code = std::str::from_utf8(get("type")?).ok()?.parse().ok()?;
        Some(ResultEntry {
            id,
            kind: ResultType::from_code(code)?,
            return_value: get("return_value").and_then(decode_return_value),
            exc_string: get("exc_string").and_then(decode_exc_string),
            worker_name: get("worker_name")
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_observed_rq_encoding() {
        // From the protocol notes: the value {"args": [1, "x"], "kwargs": {"k": 2}}.
        let v = json!({"args": [1, "x"], "kwargs": {"k": 2}});
        assert_eq!(
            encode_return_value(&v),
            "eyJhcmdzIjogWzEsICJ4Il0sICJrd2FyZ3MiOiB7ImsiOiAyfX0="
        );
        let e = encode_exc_string("boom\n");
        assert_eq!(decode_exc_string(e.as_bytes()).unwrap(), "boom\n");
    }

    #[test]
    fn an_exc_string_that_inflates_beyond_the_cap_is_not_decoded() {
        use std::io::Write;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..=(payload::MAX_INFLATED >> 20) {
            z.write_all(&chunk).unwrap();
        }
        let bomb = B64.encode(z.finish().unwrap());
        assert!(bomb.len() < 4 << 20, "a small field: {} bytes", bomb.len());
        assert_eq!(decode_exc_string(bomb.as_bytes()), None);
    }
}
