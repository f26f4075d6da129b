//! Taking a job: [`claim.lua`](claim.lua) pops the next id in priority order and records it
//! as started in the same atomic step (§7.2, §7.3), so a job is never only in the worker's
//! memory.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::{Script, Value};

use super::{Store, StoreError, script};
use crate::fault::lose_reply;
use crate::protocol::job::JobRecord;
use crate::protocol::time::Instant;

pub(super) static CLAIM: LazyLock<Script> =
    LazyLock::new(|| script::guarded("claim", include_str!("claim.lua")));

/// A job taken from a queue and already recorded as started.
pub struct Claimed {
    pub queue: String,
    pub record: JobRecord,
    pub execution_id: String,
    pub at: Instant,
}

pub enum ClaimResult {
    Job(Box<Claimed>),
    Empty,
    Suspended,
}

/// Problems a claim met and stepped over, for the log.
#[derive(Debug, Default)]
pub struct ClaimNotes {
    /// `queue:id` of ids dropped because their job hash is gone.
    pub dropped: Vec<String>,
    /// `queue: error` for queues whose key could not be popped (e.g. WRONGTYPE).
    pub broken: Vec<String>,
}

/// What a claim needs: who takes the job, from where, with which heartbeat settings.
pub struct ClaimRequest<'a> {
    pub worker: &'a str,
    /// Queue names in the order to try them.
    pub queues: &'a [String],
    pub monitoring_interval: u64,
    /// Seconds every heartbeat TTL adds to its interval (RQ's 60, less for a short
    /// `worker_ttl`).
    pub grace: u64,
    pub idle_ttl: u64,
    /// Kept by the worker until a reply arrives, so a retry can find what a lost call took.
    pub execution_id: &'a str,
    /// This execution id was sent before and its reply lost: hand back the job it took.
    pub retry: bool,
    /// The job will run in the worker process (no fork), which cannot heartbeat meanwhile.
    pub in_process: bool,
}

impl ClaimRequest<'_> {
    /// The CLAIM invocation, with its ARGV in claim.lua's order, and the time it carries.
    pub(super) fn command(&self) -> (redis::Cmd, Instant) {
        let now = Instant::now();
        let mut cmd = script::evalsha(&CLAIM);
        cmd.arg(self.worker)
            .arg(self.execution_id)
            .arg(now.iso())
            .arg(now.unix_float())
            .arg(now.unix_secs())
            .arg(self.monitoring_interval)
            .arg(self.idle_ttl)
            .arg(if self.retry { "1" } else { "0" })
            .arg(if self.in_process { "1" } else { "0" })
            .arg(self.grace)
            .arg(self.queues);
        (cmd, now)
    }
}

impl Store {
    /// Takes the next job in priority order, recording it as started (§7.2, §7.3), under
    /// the request's execution id. After an error, call again with the same id and `retry`
    /// set: if Redis ran the lost call, the job it took is returned instead of another one.
    pub fn claim(&mut self, c: &ClaimRequest) -> Result<(ClaimResult, ClaimNotes), StoreError> {
        let (cmd, now) = c.command();
        let reply: Value = self.run(|con| script::run(con, &CLAIM, &cmd))?;
        let claimed = parse(reply, c.execution_id.to_string(), now);
        if matches!(claimed.0, ClaimResult::Job(_)) && lose_reply!("lose-claim-reply") {
            return Err(self.lost_reply());
        }
        Ok(claimed)
    }
}

/// Reads claim.lua's reply.
pub(super) fn parse(reply: Value, execution_id: String, at: Instant) -> (ClaimResult, ClaimNotes) {
    let Value::Array(mut items) = reply else {
        return (ClaimResult::Empty, ClaimNotes::default());
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let list = |v: Option<&Value>| match v {
        Some(Value::Array(d)) => d.iter().filter_map(text).collect(),
        _ => Vec::new(),
    };
    let notes = ClaimNotes {
        dropped: list(items.get(3)),
        broken: list(items.get(4)),
    };
    let (queue, id) = match (items.first().and_then(text), items.get(1).and_then(text)) {
        (None, Some(marker)) if marker == "suspended" => return (ClaimResult::Suspended, notes),
        (Some(queue), Some(id)) => (queue, id),
        _ => return (ClaimResult::Empty, notes),
    };
    let mut fields = HashMap::new();
    if let Value::Array(flat) = items.swap_remove(2) {
        let mut it = flat.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if let (Some(k), Value::BulkString(v)) = (text(&k), v) {
                fields.insert(k, v);
            }
        }
    }
    match JobRecord::from_hash(&id, fields) {
        Some(record) => (
            ClaimResult::Job(Box::new(Claimed {
                queue,
                record,
                execution_id,
                at,
            })),
            notes,
        ),
        None => (ClaimResult::Empty, notes),
    }
}
