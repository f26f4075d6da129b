//! The three time encodings RQ mixes (§2.3): ISO timestamps with exactly six fractional digits
//! and a literal `Z` in hashes, Unix float seconds in execution hashes and result streams, and
//! integer Unix seconds as registry scores.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One instant, rendered in whichever encoding a field needs, so that every field written by
/// one step carries the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant(SystemTime);

impl Instant {
    pub fn now() -> Self {
        Instant(SystemTime::now())
    }

    pub fn from_system(t: SystemTime) -> Self {
        Instant(t)
    }

    pub fn system(self) -> SystemTime {
        self.0
    }

    /// `2026-11-28T12:04:10.329822Z`: what Python's `utcformat` writes. Nine digits or a
    /// `+00:00` suffix would make `Job.fetch` raise, so the format is fixed here.
    pub fn iso(self) -> String {
        humantime::format_rfc3339_micros(self.0).to_string()
    }

    /// Unix seconds as a float with microseconds, as Python's `str(time.time())` roughly gives.
    pub fn unix_float(self) -> String {
        format!("{:.6}", self.secs_f64())
    }

    /// Whole Unix seconds (`calendar.timegm`), used for registry scores.
    pub fn unix_secs(self) -> i64 {
        self.since_epoch().as_secs() as i64
    }

    pub fn secs_f64(self) -> f64 {
        self.since_epoch().as_secs_f64()
    }

    /// Seconds from `earlier` to `self`, zero if the clock went backwards.
    pub fn secs_since(self, earlier: Instant) -> f64 {
        self.0
            .duration_since(earlier.0)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64()
    }

    fn since_epoch(self) -> Duration {
        self.0.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO)
    }
}

/// Parses an RQ hash timestamp. Accepts what Python's `utcparse` accepts: with or without a
/// fraction, always with `Z`.
pub fn parse_iso(text: &str) -> Option<Instant> {
    if !text.ends_with('Z') {
        return None;
    }
    humantime::parse_rfc3339(text).ok().map(Instant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_has_six_digits_and_z() {
        let t = Instant::from_system(UNIX_EPOCH + Duration::new(1_795_867_450, 329_822_123));
        assert_eq!(t.iso(), "2026-11-28T12:04:10.329822Z");
        assert_eq!(t.unix_secs(), 1_795_867_450);
        assert_eq!(t.unix_float(), "1795867450.329822");
    }

    #[test]
    fn parses_python_forms() {
        let a = parse_iso("2026-11-28T12:04:10.329822Z").unwrap();
        assert_eq!(a.unix_secs(), 1_795_867_450);
        assert!(parse_iso("2026-11-28T12:04:10Z").is_some());
        assert!(parse_iso("2026-11-28T12:04:10.329822+00:00").is_none());
    }
}
