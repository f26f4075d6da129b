//! The job hash `rq:job:J` (§2) as a worker reads it. Only fields the worker acts on are
//! parsed; every other field stays in Redis untouched, because bookkeeping writes only the
//! fields it owns (`status`, timestamps, `worker_name`) and never rewrites the hash.

use std::collections::HashMap;

use super::defaults;

/// A job as fetched with `HGETALL`.
#[derive(Debug, Clone, Default)]
pub struct JobRecord {
    pub id: String,
    pub status: String,
    /// The queue name the job was enqueued to; registries are found from it.
    pub origin: String,
    pub description: String,
    /// `timeout` as stored: `None` when absent or empty, `Some(-1)` for no limit.
    pub timeout: Option<i64>,
    pub result_ttl: Option<i64>,
    pub failure_ttl: Option<i64>,
    pub retries_left: Option<i64>,
    pub retry_intervals: Vec<i64>,
    pub enqueue_at_front_on_retry: bool,
    pub enqueue_at_front: bool,
    pub created_at: String,
    pub enqueued_at: String,
    pub started_at: String,
    pub worker_name: String,
    /// Python callback dotted paths; a Rust worker cannot run them, so they are reported.
    pub callbacks: Vec<(String, String)>,
    /// RQ 2.10+ webhooks, which this worker does not send (it says so in the log).
    pub has_webhooks: bool,
    /// Every field of the hash as stored (`data`, `meta`, and those not parsed above), for the
    /// Python runner, which reads the job as RQ's `Job.restore` does.
    pub fields: HashMap<String, Vec<u8>>,
}

impl JobRecord {
    /// Builds the record from the hash fields. An empty map means the hash is gone.
    pub fn from_hash(id: &str, fields: HashMap<String, Vec<u8>>) -> Option<JobRecord> {
        if fields.is_empty() {
            return None;
        }
        let text = |name: &str| {
            fields
                .get(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let int = |s: String| s.trim().parse::<i64>().ok();
        let status = text("status");
        let origin = text("origin");
        let description = text("description");
        let timeout = int(text("timeout"));
        let result_ttl = int(text("result_ttl"));
        let failure_ttl = int(text("failure_ttl"));
        let retries_left = int(text("retries_left"));
        let retry_intervals = serde_json::from_str(&text("retry_intervals")).unwrap_or_default();
        let enqueue_at_front_on_retry = text("enqueue_at_front_on_retry") == "1";
        let enqueue_at_front = text("enqueue_at_front") == "1";
        let created_at = text("created_at");
        let enqueued_at = text("enqueued_at");
        let started_at = text("started_at");
        let worker_name = text("worker_name");
        let has_webhooks = !matches!(text("webhooks").trim(), "" | "[]");
        let callbacks = [
            "success_callback_name",
            "failure_callback_name",
            "stopped_callback_name",
        ]
        .into_iter()
        .map(|f| (f.to_string(), text(f)))
        .filter(|(_, v)| !v.is_empty())
        .collect();
        Some(JobRecord {
            id: id.to_string(),
            status,
            origin,
            description,
            timeout,
            result_ttl,
            failure_ttl,
            retries_left,
            retry_intervals,
            enqueue_at_front_on_retry,
            enqueue_at_front,
            created_at,
            enqueued_at,
            started_at,
            worker_name,
            callbacks,
            has_webhooks,
            fields,
        })
    }

    /// The limit the worker enforces: RQ uses `timeout or 180`, and `-1` means none.
    pub fn effective_timeout(&self, fallback: Option<i64>) -> Option<u64> {
        match self.timeout.filter(|t| *t != 0).or(fallback) {
            Some(t) if t < 0 => None,
            Some(t) => Some(t as u64),
            None => Some(defaults::JOB_TIMEOUT as u64),
        }
    }

    /// The result TTL for a successful run: the job's own, else the worker's default.
    pub fn result_ttl_or(&self, worker_default: i64) -> i64 {
        self.result_ttl.unwrap_or(worker_default)
    }

    /// The TTL of the job hash and failed-registry entry after a failure.
    pub fn failure_ttl_or_default(&self) -> i64 {
        self.failure_ttl.unwrap_or(defaults::FAILURE_TTL)
    }

    /// The delay before the next retry, computed as RQ does before decrementing
    /// `retries_left` (§7.7).
    pub fn next_retry_interval(&self) -> i64 {
        let left = self.retries_left.unwrap_or(0);
        let n = self.retry_intervals.len() as i64;
        if n == 0 {
            return 0;
        }
        let index = (n - left).max(0).min(n - 1);
        self.retry_intervals[index as usize]
    }

    /// The meta dict as JSON, or `null` when absent or not JSON (e.g. pickled by Python).
    pub fn meta_json(&self) -> serde_json::Value {
        self.fields
            .get("meta")
            .and_then(|m| serde_json::from_slice(m).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// The raw `data` field; decode it with [`super::payload::decode`].
    pub fn data(&self) -> &[u8] {
        self.fields
            .get("data")
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pairs: &[(&str, &str)]) -> JobRecord {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        JobRecord::from_hash("j", map).unwrap()
    }

    #[test]
    fn timeouts_follow_rq() {
        assert_eq!(record(&[("timeout", "5")]).effective_timeout(None), Some(5));
        assert_eq!(record(&[("timeout", "-1")]).effective_timeout(None), None);
        assert_eq!(
            record(&[("status", "queued")]).effective_timeout(None),
            Some(180)
        );
        assert_eq!(
            record(&[("status", "queued")]).effective_timeout(Some(7)),
            Some(7)
        );
        assert_eq!(
            record(&[("timeout", "")]).effective_timeout(None),
            Some(180)
        );
    }

    #[test]
    fn retry_interval_index_matches_rq() {
        let r = record(&[("retries_left", "2"), ("retry_intervals", "[10, 20, 30]")]);
        assert_eq!(r.next_retry_interval(), 20);
        let r = record(&[("retries_left", "1"), ("retry_intervals", "[5]")]);
        assert_eq!(r.next_retry_interval(), 5);
        let r = record(&[("retries_left", "3"), ("retry_intervals", "[0]")]);
        assert_eq!(r.next_retry_interval(), 0);
    }

    #[test]
    fn missing_hash_is_none() {
        assert!(JobRecord::from_hash("j", HashMap::new()).is_none());
    }
}
