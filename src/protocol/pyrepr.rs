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
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (_, Some(u), _) => out.push_str(&u.to_string()),
            (_, _, Some(f)) => out.push_str(&float_repr(f)),
            _ => out.push_str(&n.to_string()),
        },
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
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
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
    }

    #[test]
    fn long_arguments_are_cut_like_rq() {
        let long = "x".repeat(100);
        let s = call_string("f", &[json!(long)], &Map::new());
        assert_eq!(s, format!("f('{}...)", "x".repeat(74)));
    }
}
