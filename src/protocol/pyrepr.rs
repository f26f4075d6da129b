//! Python `repr()` of JSON values, for job descriptions. RQ describes a job as the call a
//! Python programmer would write, e.g. `tasks.send_newsletter('me@nvie.com')`, and rq-dashboard
//! and `rq info` show that text, so our producer writes the same.

use serde_json::{Map, Value};

/// RQ truncates each argument's repr to this many characters in a description.
const MAX_ARG_LEN: usize = 75;

/// `func(arg, ..., key=value)` as Python's `get_call_string(..., max_length=75)` renders it.
pub fn call_string(func_name: &str, args: &[Value], kwargs: &Map<String, Value>) -> String {
    let mut parts: Vec<String> = args.iter().map(|a| truncate(repr(a))).collect();
    parts.extend(
        kwargs
            .iter()
            .map(|(k, v)| format!("{k}={}", truncate(repr(v)))),
    );
    format!("{func_name}({})", parts.join(", "))
}

fn truncate(s: String) -> String {
    match s.char_indices().nth(MAX_ARG_LEN) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s,
    }
}

/// Python's `repr` of the value JSON decoding would give it.
pub fn repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(value, &mut out);
    out
}

fn write_repr(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => {
            // Numbers keep their JSON text, so integers of any size print exactly, as
            // Python's arbitrary-precision ints do.
            let text = n.to_string();
            if text.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
                out.push_str(&text);
            } else {
                out.push_str(&float_repr(n.as_f64().unwrap_or(f64::NAN)));
            }
        }
        Value::String(s) => out.push_str(&str_repr(s)),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&str_repr(k));
                out.push_str(": ");
                write_repr(v, out);
            }
            out.push('}');
        }
    }
}

/// Python float repr: shortest round-trip digits, `.0` on whole numbers, and scientific
/// notation with a signed two-digit exponent outside `1e-4 <= |f| < 1e16`.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        let sci = format!("{f:e}");
        let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        return format!("{mantissa}e{sign}{digits:0>2}");
    }
    format!("{f:?}")
}

/// Python str repr: single quotes unless the text has a single quote and no double quote.
pub fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !is_printable(c) => {
                let n = c as u32;
                if n < 0x100 {
                    out.push_str(&format!("\\x{n:02x}"));
                } else if n < 0x10000 {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `str.isprintable` for one character: false for controls (Cc), format
/// characters (Cf), line and paragraph separators (Zl, Zp), spaces other than ' ' (Zs),
/// surrogates and private use (Co). Unassigned code points (Cn) are treated as printable,
/// which is where this can differ from the Python a producer runs.
fn is_printable(c: char) -> bool {
    const NOT_PRINTABLE: &[(u32, u32)] = &[
        (0x00, 0x1f),
        (0x7f, 0xa0),
        (0xad, 0xad),
        (0x600, 0x605),
        (0x61c, 0x61c),
        (0x6dd, 0x6dd),
        (0x70f, 0x70f),
        (0x890, 0x891),
        (0x8e2, 0x8e2),
        (0x1680, 0x1680),
        (0x180e, 0x180e),
        (0x2000, 0x200f),
        (0x2028, 0x202f),
        (0x205f, 0x2064),
        (0x2066, 0x206f),
        (0x3000, 0x3000),
        (0xd800, 0xf8ff),
        (0xfeff, 0xfeff),
        (0xfff9, 0xfffb),
        (0x110bd, 0x110bd),
        (0x110cd, 0x110cd),
        (0x13430, 0x1343f),
        (0x1bca0, 0x1bca3),
        (0x1d173, 0x1d17a),
        (0xe0001, 0xe0001),
        (0xe0020, 0xe007f),
        (0xf0000, 0x10ffff),
    ];
    let n = c as u32;
    !NOT_PRINTABLE
        .iter()
        .any(|(lo, hi)| (*lo..=*hi).contains(&n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_python_repr() {
        let kwargs = json!({"k": [1.5, true, null]});
        assert_eq!(
            call_string(
                "tasks.f",
                &[json!("me@nvie.com"), json!(3)],
                kwargs.as_object().unwrap()
            ),
            "tasks.f('me@nvie.com', 3, k=[1.5, True, None])"
        );
        assert_eq!(str_repr("it's"), "\"it's\"");
        assert_eq!(str_repr("a'b\"c\n"), "'a\\'b\"c\\n'");
        assert_eq!(float_repr(1.0), "1.0");
        assert_eq!(float_repr(1e16), "1e+16");
        assert_eq!(float_repr(1.5e-5), "1.5e-05");
        assert_eq!(float_repr(0.1), "0.1");
        assert_eq!(
            repr(&serde_json::from_str("1180591620717411303424").unwrap()),
            "1180591620717411303424"
        );
        assert_eq!(repr(&serde_json::from_str("-3").unwrap()), "-3");
        assert_eq!(repr(&serde_json::from_str("2.5").unwrap()), "2.5");
        assert_eq!(
            str_repr("a\u{85}b\u{a0}c\u{200b}d\u{2028}é"),
            "'a\\x85b\\xa0c\\u200bd\\u2028é'"
        );
    }

    #[test]
    fn long_arguments_are_cut_like_rq() {
        let long = "x".repeat(100);
        let s = call_string("f", &[json!(long)], &Map::new());
        assert_eq!(s, format!("f('{}...)", "x".repeat(74)));
    }
}
