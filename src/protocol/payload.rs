//! The job `data` field (§3.2): `zlib(json.dumps([func_name, instance, args, kwargs]))`, and the
//! JSON text Python's `JSONSerializer` produces.

use std::cell::RefCell;
use std::io::{self, Write};

use flate2::Compression;
use flate2::write::ZlibEncoder;
use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::{DecompressorOxide, decompress};
use serde::Serialize;
use serde_json::{Map, Value};

/// The call a job asks for, decoded from its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub func_name: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
}

/// Why a payload could not be decoded. Each message names the problem and what the producer
/// should do instead, because it ends up in the job's `exc_string` where a user reads it.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum PayloadError {
    #[error(
        "the job payload is pickled, and rqworker reads only JSON; enqueue with \
         Queue(..., serializer=JSONSerializer) (from rq.serializers import JSONSerializer)"
    )]
    Pickle,
    #[error("the job has no `data` field; it was not written by RQ's producer, enqueue it again")]
    Missing,
    #[error(
        "the job payload is not UTF-8 text ({0}); it must be zlib-compressed JSON as \
         written by RQ's JSONSerializer"
    )]
    NotUtf8(String),
    #[error(
        "the job payload contains NaN or Infinity, which JSON cannot carry and rqworker \
         refuses to guess; pass the value as a string or None"
    )]
    NonFiniteNumber,
    #[error(
        "the job payload is not zlib-compressed JSON ({0}); enqueue with \
         serializer=JSONSerializer"
    )]
    NotJson(String),
    #[error(
        "the job payload has the wrong shape: {0}; RQ writes [func_name, null, [args...], \
         {{kwargs...}}]"
    )]
    Shape(String),
    #[error(
        "the job payload inflates to more than {} MiB, more than rqworker decodes (a \
         compression bomb, or data that belongs elsewhere); pass large data by reference, \
         e.g. a path or URL, instead of in the job's arguments", MAX_INFLATED / (1024 * 1024)
    )]
    TooLarge,
}

/// The function name at the start of a JSON payload that did not decode as a whole (it has
/// NaN or Infinity, which Python's json module reads and writes): `["name", ...`.
pub fn peek_func_name(data: &[u8]) -> Option<String> {
    let inflated = inflate(data).unwrap_or_else(|_| data.to_vec());
    let text = std::str::from_utf8(&inflated).ok()?;
    let rest = text.trim_start().strip_prefix('[')?;
    serde_json::Deserializer::from_str(rest)
        .into_iter::<String>()
        .next()?
        .ok()
}

/// Most a job payload may inflate to. Redis stores at most 512 MB per value, but a small
/// zlib stream can inflate to many gigabytes; without a cap one bad job could exhaust the
/// worker's memory.
pub const MAX_INFLATED: u64 = 256 * 1024 * 1024;

/// Decodes a job's `data` field. Like Python, data that is not zlib is read as it is.
pub fn decode(data: &[u8]) -> Result<Call, PayloadError> {
    if data.is_empty() {
        return Err(PayloadError::Missing);
    }
    let inflated = match inflate(data) {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::FileTooLarge => return Err(PayloadError::TooLarge),
        // Not zlib: Python reads such data as it is, and so do we.
        Err(_) => data.to_vec(),
    };
    if looks_pickled(&inflated) {
        return Err(PayloadError::Pickle);
    }
    let text = std::str::from_utf8(&inflated).map_err(|e| PayloadError::NotUtf8(e.to_string()))?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        if non_finite_at(text, &e) {
            PayloadError::NonFiniteNumber
        } else {
            PayloadError::NotJson(e.to_string())
        }
    })?;
    let Value::Array(mut items) = value else {
        return Err(PayloadError::Shape(format!(
            "expected a list of 4 items, got {}",
            kind(&value)
        )));
    };
    if items.len() != 4 {
        return Err(PayloadError::Shape(format!(
            "expected a list of 4 items, got {} items",
            items.len()
        )));
    }
    let kwargs = items.pop().unwrap_or(Value::Null);
    let args = items.pop().unwrap_or(Value::Null);
    let instance = items.pop().unwrap_or(Value::Null);
    let func = items.pop().unwrap_or(Value::Null);
    let Value::String(func_name) = func else {
        return Err(PayloadError::Shape(format!(
            "the function name is {}, not a string",
            kind(&func)
        )));
    };
    if !instance.is_null() {
        return Err(PayloadError::Shape(
            "it names a method on an instance, which only Python can call".into(),
        ));
    }
    let args = match args {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        other => {
            return Err(PayloadError::Shape(format!(
                "args is {}, not a list",
                kind(&other)
            )));
        }
    };
    let kwargs = match kwargs {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => {
            return Err(PayloadError::Shape(format!(
                "kwargs is {}, not an object",
                kind(&other)
            )));
        }
    };
    Ok(Call {
        func_name,
        args,
        kwargs,
    })
}

/// Encodes a call as Python RQ's JSON producer does: same JSON text, then zlib.
pub fn encode(call: &Call) -> Vec<u8> {
    let value = Value::Array(vec![
        Value::String(call.func_name.clone()),
        Value::Null,
        Value::Array(call.args.clone()),
        Value::Object(call.kwargs.clone()),
    ]);
    deflate(&python_json(&value))
}

/// Inflates zlib data; more than `MAX_INFLATED` bytes of output is an error of kind
/// `FileTooLarge`, whoever wrote the data.
pub fn inflate(data: &[u8]) -> io::Result<Vec<u8>> {
    // One decompressor for the process, reset per payload (a new one is 11 KB of tables; a
    // streaming one adds a 32 KB window), writing straight into the output, which serves as
    // its window: in a worker that forks per job, every heap page written costs a
    // copy-on-write fault.
    thread_local! {
        static INFLATER: RefCell<Box<DecompressorOxide>> = RefCell::new(Box::default());
    }
    INFLATER.with(|cell| {
        let mut d = cell.borrow_mut();
        d.init();
        inflate_with(&mut d, data)
    })
}

fn inflate_with(d: &mut DecompressorOxide, mut input: &[u8]) -> io::Result<Vec<u8>> {
    use miniz_oxide::inflate::core::inflate_flags::{
        TINFL_FLAG_PARSE_ZLIB_HEADER, TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
    };
    let flags = TINFL_FLAG_PARSE_ZLIB_HEADER | TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
    let cap = MAX_INFLATED as usize + 1;
    let mut out = vec![0u8; input.len().saturating_mul(4).clamp(64, cap)];
    let mut pos = 0;
    loop {
        let (status, used, made) = decompress(d, input, &mut out, pos, flags);
        pos += made;
        match status {
            TINFLStatus::Done => {
                out.truncate(pos);
                return Ok(out);
            }
            TINFLStatus::HasMoreOutput if out.len() < cap => {
                input = input.get(used..).unwrap_or_default();
                out.resize(out.len().saturating_mul(2).min(cap), 0);
            }
            TINFLStatus::HasMoreOutput => {
                return Err(io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    format!("inflates to more than {MAX_INFLATED} bytes"),
                ));
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not a zlib stream ({other:?})"),
                ));
            }
        }
    }
}

pub fn deflate(data: &[u8]) -> Vec<u8> {
    let mut enc = ZlibEncoder::new(
        Vec::with_capacity(data.len() / 2 + 16),
        Compression::default(),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// Serializes like Python's `json.dumps` with its defaults (`", "` and `": "` separators,
/// `ensure_ascii=True`), so a payload we write is byte-for-byte what Python would write.
pub fn python_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    // Serializing a Value into a Vec cannot fail.
    let _ = value.serialize(&mut ser);
    out
}

/// A `serde_json` formatter that reproduces Python's default separators and ASCII escaping.
#[derive(Default)]
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if fragment.is_ascii() {
            return w.write_all(fragment.as_bytes());
        }
        let mut units = [0u16; 2];
        for ch in fragment.chars() {
            if ch.is_ascii() {
                w.write_all(&[ch as u8])?;
            } else {
                for unit in ch.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// Pickle protocol 2+ starts with the PROTO opcode; older protocols start with one of a few
/// opcodes that are never the first byte of JSON text.
fn looks_pickled(data: &[u8]) -> bool {
    matches!(data.first(), Some(0x80)) || matches!(data, [b'(', b'c' | b'S' | b'V' | b'I', ..])
}

/// Whether the parse error `e` sits on a bare `NaN`, `Infinity` or `-Infinity` token, which
/// Python's `json.dumps` writes for non-finite floats. The words inside a string do not count:
/// broken JSON that merely mentions them must be reported as broken JSON.
fn non_finite_at(text: &str, e: &serde_json::Error) -> bool {
    // serde_json reports a 1-based line and a 1-based byte column near the offending token.
    let Some(line) = text.split('\n').nth(e.line().saturating_sub(1)) else {
        return false;
    };
    let col = e.column().saturating_sub(1);
    (col.saturating_sub(2)..=col).any(|i| {
        line.get(i..).is_some_and(|rest| {
            ["NaN", "Infinity", "-Infinity"]
                .iter()
                .any(|t| rest.starts_with(t))
        })
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflate_grows_its_output_stops_at_the_end_and_refuses_a_truncated_stream() {
        let big = vec![b'x'; 3 * 1024 * 1024];
        let z = deflate(&big);
        assert!(z.len() < 64 * 1024);
        assert_eq!(inflate(&z).unwrap(), big);
        // Bytes after the stream are ignored, as zlib.decompressobj leaves them.
        let mut trailing = deflate(b"[1]");
        trailing.extend_from_slice(b"junk");
        assert_eq!(inflate(&trailing).unwrap(), b"[1]");
        // The decompressor is reused: a truncated stream must not poison the next one.
        assert!(inflate(&z[..z.len() / 2]).is_err());
        assert!(inflate(b"not zlib at all").is_err());
        assert_eq!(inflate(&deflate(b"again")).unwrap(), b"again");
    }
    use serde_json::json;

    fn call() -> Call {
        Call {
            func_name: "tasks.echo".into(),
            args: vec![json!(1), json!("x"), json!("é😀")],
            kwargs: json!({"k": 2}).as_object().unwrap().clone(),
        }
    }

    #[test]
    fn python_json_matches_python_text() {
        let v = json!(["tasks.echo", null, [1, "x", "é😀"], {"k": 2}]);
        assert_eq!(
            String::from_utf8(python_json(&v)).unwrap(),
            r#"["tasks.echo", null, [1, "x", "\u00e9\ud83d\ude00"], {"k": 2}]"#
        );
    }

    #[test]
    fn round_trip() {
        assert_eq!(decode(&encode(&call())).unwrap(), call());
    }

    #[test]
    fn raw_json_without_zlib_is_accepted_like_python() {
        let raw = br#"["f", null, [], {}]"#;
        assert_eq!(decode(raw).unwrap().func_name, "f");
    }

    #[test]
    fn bad_payloads_name_the_problem() {
        assert_eq!(
            decode(&deflate(b"\x80\x05K\x03.")),
            Err(PayloadError::Pickle)
        );
        for text in [
            &br#"["f", null, [NaN], {}]"#[..],
            br#"["f", null, [1.5, -Infinity], {}]"#,
            br#"["f", null, [], {"x": Infinity}]"#,
            b"[\"f\", null,\n [1,\n  NaN], {}]",
        ] {
            assert_eq!(
                decode(&deflate(text)),
                Err(PayloadError::NonFiniteNumber),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        assert!(matches!(
            decode(&deflate(br#"["f", null, ["NaN Infinity"], {}"#)),
            Err(PayloadError::NotJson(_))
        ));
        assert!(matches!(
            decode(&deflate(b"\xff\xfe")),
            Err(PayloadError::NotUtf8(_))
        ));
        assert!(matches!(decode(b"not json"), Err(PayloadError::NotJson(_))));
        assert!(matches!(
            decode(&deflate(b"{}")),
            Err(PayloadError::Shape(_))
        ));
        assert!(matches!(
            decode(&deflate(br#"[1, null, [], {}]"#)),
            Err(PayloadError::Shape(_))
        ));
        assert!(matches!(
            decode(&deflate(br#"["f", {"x": 1}, [], {}]"#)),
            Err(PayloadError::Shape(_))
        ));
        assert_eq!(decode(b""), Err(PayloadError::Missing));
        assert!(PayloadError::Pickle.to_string().contains("JSONSerializer"));
    }
}
