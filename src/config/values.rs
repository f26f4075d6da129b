//! Value types a config file and a command line share: durations (`"30s"`, `"1m30s"` or a
//! bare number of seconds), TTLs (seconds, where `-1` means forever), and memory sizes.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A non-negative duration written as `"30s"`, `"1m 30s"`, `"500ms"` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Secs(pub Duration);

impl Secs {
    pub fn from_secs(s: u64) -> Secs {
        Secs(Duration::from_secs(s))
    }
}

/// The longest duration any setting accepts. Longer values are surely typos, and refusing
/// them keeps every deadline computed from them (`now + duration`, sums of timeouts) far from
/// overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

fn at_most_a_year(text: &str, d: Duration) -> Result<Duration, String> {
    if d > MAX_DURATION {
        Err(format!(
            "{text:?} is longer than 365 days; write a shorter duration such as \"30s\" or \"1h\""
        ))
    } else {
        Ok(d)
    }
}

/// Parses the textual form shared by the CLI and the config file.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(n) = t.parse::<f64>() {
        if n.is_finite() && n >= 0.0 {
            if n > MAX_DURATION.as_secs_f64() {
                return at_most_a_year(text, Duration::MAX);
            }
            return Ok(Duration::from_secs_f64(n));
        }
        return Err(format!(
            "{text:?} is not a duration; write a non-negative number of seconds or \"30s\", \"1m30s\", \"500ms\""
        ));
    }
    let d = humantime::parse_duration(t).map_err(|e| {
        format!("{text:?} is not a duration ({e}); write a number of seconds or \"30s\", \"1m30s\", \"500ms\"")
    })?;
    at_most_a_year(text, d)
}

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secs, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Secs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a duration such as \"30s\", \"1m30s\", \"500ms\" or a number of seconds",
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Secs, E> {
                let v = u64::try_from(v).map_err(|_| {
                    E::custom(format!("{v} is negative; a duration must be 0 or more"))
                })?;
                self.visit_u64(v)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Secs, E> {
                at_most_a_year(&v.to_string(), Duration::from_secs(v))
                    .map(Secs)
                    .map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Secs, E> {
                parse_duration(&v.to_string()).map(Secs).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secs, E> {
                parse_duration(v).map(Secs).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Secs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A TTL in whole seconds where `-1` means "keep forever" and `0` "do not keep", as RQ's
/// `result_ttl` and `failure_ttl`. Accepts the duration forms too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ttl(pub i64);

pub fn parse_ttl(text: &str) -> Result<i64, String> {
    if let Ok(n) = text.trim().parse::<i64>() {
        if n >= -1 {
            return Ok(n);
        }
        return Err(format!(
            "{n} is not a TTL; write -1 (forever), 0 (discard) or a number of seconds"
        ));
    }
    parse_duration(text).map(|d| d.as_secs() as i64)
}

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ttl, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Ttl;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a TTL: -1 (forever), 0 (discard), seconds, or a duration such as \"10m\"",
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ttl, E> {
                parse_ttl(&v.to_string()).map(Ttl).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ttl, E> {
                i64::try_from(v)
                    .map(Ttl)
                    .map_err(|_| E::custom("TTL too large"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ttl, E> {
                parse_ttl(v).map(Ttl).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A memory size in bytes: `"512MiB"`, `"1.5GB"`, `"800M"` or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bytes(pub u64);

pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad_size(text))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad_size(text)),
    };
    Ok((n * mult) as u64)
}

fn bad_size(text: &str) -> String {
    format!("{text:?} is not a memory size; write e.g. \"512MiB\", \"1GB\" or a number of bytes")
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a memory size such as \"512MiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Bytes, E> {
                u64::try_from(v)
                    .map(Bytes)
                    .map_err(|_| E::custom(bad_size(&v.to_string())))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
                parse_bytes(v).map(Bytes).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("-3").is_err());
        assert!(parse_duration("soon").unwrap_err().contains("30s"));
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("-1").unwrap(), -1);
        assert_eq!(parse_ttl("0").unwrap(), 0);
        assert_eq!(parse_ttl("10m").unwrap(), 600);
        assert!(parse_ttl("-5").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 * 1024 * 1024);
        assert_eq!(parse_bytes("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert!(parse_bytes("lots").is_err());
    }
}
