//! What rq-supervisor reads on every tick for autoscale, `status` and the metrics
//! ([`backlog.lua`](backlog.lua)): the queues' lengths and how long their head jobs have
//! waited, and the workers' states and job counters. One script for every pool, so a tick
//! costs one round trip and a stalled Redis one read timeout.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use redis::{Script, Value};
use serde::Serialize;

use super::{Store, StoreError, script};
use crate::protocol::{keys, time};

static BACKLOG: LazyLock<Script> = LazyLock::new(|| script::plain(include_str!("backlog.lua")));

/// A worker's own counters in its record (`successful_job_count`, `failed_job_count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct JobCounts {
    pub finished: u64,
    pub failed: u64,
}

impl JobCounts {
    pub fn add(&mut self, other: JobCounts) {
        self.finished += other.finished;
        self.failed += other.failed;
    }

    /// What `self` counted beyond `earlier` (0 where it counted less).
    pub fn since(self, earlier: JobCounts) -> JobCounts {
        JobCounts {
            finished: self.finished.saturating_sub(earlier.finished),
            failed: self.failed.saturating_sub(earlier.failed),
        }
    }
}

/// One queue at one reading.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueueLoad {
    pub length: u64,
    /// How long the job at the head has waited since it was enqueued.
    pub oldest: Option<Duration>,
}

/// One worker's record at one reading.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkerLoad {
    /// `rq:worker:<name>` exists.
    pub present: bool,
    /// `idle`, `busy`, `suspended`, `started`.
    pub state: Option<String>,
    pub job: Option<String>,
    pub jobs: JobCounts,
}

/// The queues and the workers, in the order asked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Backlog {
    pub queues: Vec<QueueLoad>,
    pub workers: Vec<WorkerLoad>,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn count(v: &Value) -> u64 {
    match v {
        Value::Int(n) => (*n).max(0) as u64,
        other => text(other).and_then(|t| t.parse().ok()).unwrap_or(0),
    }
}

fn row(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) => items,
        _ => &[],
    }
}

impl Store {
    /// Reads `queues` and the records of `workers` (names), in one script.
    pub fn backlog(
        &mut self,
        queues: &[String],
        workers: &[String],
    ) -> Result<Backlog, StoreError> {
        if queues.is_empty() && workers.is_empty() {
            return self.ping().map(|_| Backlog::default());
        }
        let rows: Vec<Value> = self.run(|con| {
            let mut inv = BACKLOG.prepare_invoke();
            for q in queues {
                inv.key(keys::queue(q));
            }
            for w in workers {
                inv.key(keys::worker(w));
            }
            inv.arg(queues.len()).invoke(con)
        })?;
        let wall = SystemTime::now();
        let (q, w) = rows.split_at(queues.len().min(rows.len()));
        Ok(Backlog {
            queues: q.iter().map(|r| queue_load(wall, row(r))).collect(),
            workers: w.iter().map(|r| worker_load(row(r))).collect(),
        })
    }
}

fn queue_load(wall: SystemTime, r: &[Value]) -> QueueLoad {
    let length = r.first().map(count).unwrap_or(0);
    let oldest = r
        .get(1)
        .and_then(text)
        .and_then(|t| time::parse_iso(&t))
        .map(|t| wall.duration_since(t.system()).unwrap_or(Duration::ZERO));
    QueueLoad { length, oldest }
}

fn worker_load(r: &[Value]) -> WorkerLoad {
    let field = |i: usize| r.get(i).and_then(text).filter(|t| !t.is_empty());
    let state = field(0);
    WorkerLoad {
        present: state.is_some(),
        state,
        job: field(1),
        jobs: JobCounts {
            finished: field(2).and_then(|t| t.parse().ok()).unwrap_or(0),
            failed: field(3).and_then(|t| t.parse().ok()).unwrap_or(0),
        },
    }
}
