//! Every Redis write the worker makes, as RQ 2.12 makes it: birth, heartbeats, taking a job,
//! settling it, death. The connection is opened lazily and dropped on any error, so the
//! caller's only recovery step is "try again later".

use std::collections::HashMap;

use redis::{Connection, RedisError, Value};

use crate::conn::{ConnError, RedisTarget};
use crate::fault::lose_reply;
use crate::protocol::job::JobRecord;
use crate::protocol::keys;
use crate::protocol::scripts::{BIRTH, CLAIM, DEATH, HEARTBEAT_BUSY, HEARTBEAT_IDLE, SETTLE};
use crate::protocol::time::Instant;
use redis::Script;

/// A Redis operation failed; the connection has been dropped.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Connect(#[from] ConnError),
    #[error("Redis at {url}: {source}{}", crate::conn::hint(source))]
    Redis {
        url: String,
        #[source]
        source: RedisError,
    },
}

impl StoreError {
    /// True when Redis answered that it is still loading its data (after a restart).
    pub fn is_loading(&self) -> bool {
        let loading = |e: &RedisError| {
            e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
        };
        match self {
            StoreError::Redis { source, .. } => loading(source),
            StoreError::Connect(ConnError::Connect { source, .. }) => loading(source),
            _ => false,
        }
    }

    /// True when the server itself refused (ACL, wrong type, read-only replica, OOM), as
    /// opposed to the connection failing or Redis still loading its data after a restart.
    /// Refusals are logged at every attempt; both are retried.
    pub fn is_refusal(&self) -> bool {
        matches!(self, StoreError::Redis { source, .. } if source.kind() != redis::ErrorKind::Io
            && !self.is_loading() && !source.is_connection_dropped() && !source.is_timeout())
    }
}

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

/// Everything the settle script needs to record one ending.
pub struct Settlement<'a> {
    pub job_id: &'a str,
    pub queue: &'a str,
    /// Empty when unknown (crash cleanup); the script looks it up.
    pub execution_id: &'a str,
    pub worker: &'a str,
    pub outcome: &'a str,
    pub started: Option<Instant>,
    pub working_secs: f64,
    pub default_result_ttl: i64,
    /// Encoded return value (finished) or exc_string (failed, stopped).
    pub payload: String,
    /// False when the worker is dead and its record must not be touched.
    pub alive: bool,
    pub allow_retry: bool,
}

/// What a claim needs: who takes the job, from where, with which heartbeat settings.
pub struct ClaimRequest<'a> {
    pub worker: &'a str,
    /// Queue names in the order to try them.
    pub queues: &'a [String],
    pub monitoring_interval: u64,
    pub idle_ttl: u64,
    /// Kept by the worker until a reply arrives, so a retry can find what a lost call took.
    pub execution_id: &'a str,
    /// This execution id was sent before and its reply lost: hand back the job it took.
    pub retry: bool,
}

impl ClaimRequest<'_> {
    /// The CLAIM invocation, and the time it carries.
    fn command(&self) -> (redis::Cmd, Instant) {
        let now = Instant::now();
        let mut cmd = evalsha(&CLAIM);
        cmd.arg(self.worker)
            .arg(self.execution_id)
            .arg(now.iso())
            .arg(now.unix_float())
            .arg(now.unix_secs())
            .arg(self.monitoring_interval)
            .arg(self.idle_ttl)
            .arg(if self.retry { "1" } else { "0" })
            .arg(self.queues);
        (cmd, now)
    }
}

impl<'a> Settlement<'a> {
    fn command(&self) -> redis::Cmd {
        let now = Instant::now();
        let mut cmd = evalsha(&SETTLE);
        cmd.arg(self.job_id)
            .arg(self.queue)
            .arg(self.execution_id)
            .arg(self.worker)
            .arg(self.outcome)
            .arg(now.iso())
            .arg(now.unix_float())
            .arg(now.unix_secs())
            .arg(self.started.map(|t| t.unix_float()).unwrap_or_default())
            .arg(format!("{:.6}", self.working_secs))
            .arg(self.default_result_ttl)
            .arg(&self.payload)
            .arg(if self.alive { "1" } else { "" })
            .arg(if self.allow_retry { "1" } else { "0" });
        cmd
    }

    /// An execution nobody is left to finish: its worker died, or its heartbeat expired.
    /// Failed with `exc`, or retried if the job has retries left; no worker counters change.
    pub fn orphaned(
        job_id: &'a str,
        queue: &'a str,
        execution_id: &'a str,
        worker: &'a str,
        exc: &str,
    ) -> Settlement<'a> {
        Settlement {
            job_id,
            queue,
            execution_id,
            worker,
            outcome: "failed",
            started: None,
            working_secs: 0.0,
            default_result_ttl: crate::protocol::defaults::RESULT_TTL,
            payload: crate::protocol::result::encode_exc_string(exc),
            alive: false,
            allow_retry: true,
        }
    }
}

pub struct Store {
    target: RedisTarget,
    con: Option<Connection>,
    /// Connections opened so far; a change tells the worker Redis may have lost its state.
    connects: u64,
}

impl Store {
    pub fn new(target: RedisTarget) -> Store {
        Store {
            target,
            con: None,
            connects: 0,
        }
    }

    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    pub fn is_connected(&self) -> bool {
        self.con.is_some()
    }

    /// How many connections have been opened; increases after every reconnect.
    pub fn connects(&self) -> u64 {
        self.connects
    }

    /// Runs `f` on the connection, connecting first if needed. Any error drops the
    /// connection: after a timeout or a broken socket its state is unknown.
    pub fn run<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        crate::conn::uninterrupted(|| self.run_now(f))
    }

    fn run_now<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        if self.con.is_none() {
            let mut con = self.target.connect()?;
            // Load the scripts sent in one pipeline up front: EVALSHA of an unknown script
            // fails on its own while the next command in the pipeline still runs, which
            // would let a claim overtake the settle that should come first.
            for script in [&*SETTLE, &*CLAIM] {
                script
                    .load(&mut con)
                    .map_err(|source| self.refused(source))?;
            }
            self.con = Some(con);
            self.connects += 1;
        }
        let con = self.con.as_mut().expect("connected above");
        match f(con) {
            Ok(v) => Ok(v),
            Err(source) => {
                self.con = None;
                Err(self.refused(source))
            }
        }
    }

    /// Registers the worker (§5). Returns false when a live worker holds the name. `renew`
    /// re-registers over this worker's own record after Redis lost (part of) it.
    pub fn birth(
        &mut self,
        name: &str,
        fields: &[(&str, String)],
        queues: &[String],
        ttl: u64,
        renew: bool,
    ) -> Result<bool, StoreError> {
        let key = keys::worker(name);
        self.run(|con| {
            let mut inv = BIRTH.key(&key);
            inv.arg(ttl)
                .arg(if renew { "1" } else { "0" })
                .arg(fields.len());
            for (k, v) in fields {
                inv.arg(*k).arg(v);
            }
            for q in queues {
                inv.arg(q);
            }
            let registered: i64 = inv.invoke(con)?;
            Ok(registered == 1)
        })
    }

    /// The connection's address as Redis sees it, for the worker's `ip_address` field.
    pub fn client_address(&mut self, name: &str) -> String {
        let info = self.run(|con| {
            redis::cmd("CLIENT").arg("SETNAME").arg(name).exec(con)?;
            redis::cmd("CLIENT").arg("INFO").query::<String>(con)
        });
        info.ok()
            .and_then(|text| {
                text.split_whitespace()
                    .find_map(|f| f.strip_prefix("addr=").map(str::to_string))
            })
            .unwrap_or_else(|| "unknown".to_string())
    }

    /// The idle heartbeat. Returns true when the worker's record was lost (a long outage, a
    /// Redis restart without persistence; a claim or settle may since have recreated a bare
    /// hash), so the caller registers again.
    pub fn heartbeat_idle(&mut self, name: &str, ttl: u64) -> Result<bool, StoreError> {
        let key = keys::worker(name);
        let now = Instant::now();
        self.run(|con| {
            let registered: i64 = HEARTBEAT_IDLE
                .key(&key)
                .arg(now.iso())
                .arg(ttl)
                .invoke(con)?;
            Ok(registered == 0)
        })
    }

    /// Heartbeat while a horse runs (§7.4): worker hash, execution hash, `rq:wip:Q` score
    /// and the job's `last_heartbeat`, in one script.
    pub fn heartbeat_busy(
        &mut self,
        name: &str,
        c: &Claimed,
        working: f64,
        ttl: u64,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let ttl = ttl as i64;
        self.run(|con| {
            HEARTBEAT_BUSY
                .key(keys::worker(name))
                .key(keys::execution(&c.record.id, &c.execution_id))
                .key(keys::wip(&c.queue))
                .key(keys::executions(&c.record.id))
                .key(keys::job(&c.record.id))
                .arg(format!("{working:.6}"))
                .arg(now.iso())
                .arg(now.unix_float())
                .arg(ttl)
                .arg(keys::wip_member(&c.record.id, &c.execution_id))
                .arg(&c.execution_id)
                .arg(now.unix_secs() + ttl)
                .arg(now.unix_secs() + ttl + 60)
                .invoke::<i64>(con)
                .map(drop)
        })
    }

    pub fn mark_shutdown_requested(&mut self, name: &str) -> Result<(), StoreError> {
        let now = Instant::now();
        self.run(|con| {
            redis::cmd("HSET")
                .arg(keys::worker(name))
                .arg("shutdown_requested_date")
                .arg(now.iso())
                .exec(con)
        })
    }

    /// Takes the next job in priority order, recording it as started (§7.2, §7.3), under
    /// the request's execution id. After an error, call again with the same id and `retry`
    /// set: if Redis ran the lost call, the job it took is returned instead of another one.
    pub fn claim(&mut self, c: &ClaimRequest) -> Result<(ClaimResult, ClaimNotes), StoreError> {
        let (cmd, now) = c.command();
        let reply: Value = self.run(|con| run_script(con, &CLAIM, &cmd))?;
        let claimed = parse_claim(reply, c.execution_id.to_string(), now);
        if matches!(claimed.0, ClaimResult::Job(_)) && lose_reply!("lose-claim-reply") {
            return Err(self.lost_reply());
        }
        Ok(claimed)
    }

    /// Records an ending; returns the script's verdict (`finished`, `failed`, `requeued`...).
    pub fn settle(&mut self, s: &Settlement) -> Result<String, StoreError> {
        let cmd = s.command();
        let verdict = self.run(|con| run_script(con, &SETTLE, &cmd))?;
        if lose_reply!("lose-settle-reply") {
            return Err(self.lost_reply());
        }
        Ok(verdict)
    }

    /// Records an ending and takes the next job in one round trip (two scripts in one
    /// pipeline): the busy worker's steady state. The claim runs only after the settle, in
    /// order, and its outcome is returned even when the settle failed, so a job it took is
    /// never dropped.
    pub fn settle_then_claim(
        &mut self,
        s: &Settlement,
        c: &ClaimRequest,
    ) -> (
        Result<String, StoreError>,
        Result<(ClaimResult, ClaimNotes), StoreError>,
    ) {
        let settle = s.command();
        let (claim, now) = c.command();
        let replies = self.run(|con| {
            redis::pipe()
                .ignore_errors()
                .add_command(settle.clone())
                .add_command(claim.clone())
                .query::<Vec<redis::RedisResult<Value>>>(con)
        });
        let mut replies = match replies {
            Ok(r) => r.into_iter(),
            Err(e) => {
                // Whether either script ran is unknown: both are safe to send again.
                let again = self.refused(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "the connection broke before the reply",
                )));
                return (Err(e), Err(again));
            }
        };
        let (settled, claimed) = (replies.next(), replies.next());
        let claimed = match claimed {
            Some(Ok(v)) => Ok(parse_claim(v, c.execution_id.to_string(), now)),
            // Not run (NOSCRIPT after a Redis restart, a refusal): the next loop claims.
            Some(Err(e)) => Err(self.refused(e)),
            None => Err(self.refused(redis::RedisError::from((
                redis::ErrorKind::Client,
                "pipeline returned no reply",
            )))),
        };
        if lose_reply!("lose-settle-reply") {
            return (Err(self.lost_reply()), Err(self.lost_reply()));
        }
        let claimed = match claimed {
            Ok(c) if matches!(c.0, ClaimResult::Job(_)) && lose_reply!("lose-claim-reply") => {
                Err(self.lost_reply())
            }
            other => other,
        };
        let settled = match settled {
            Some(Ok(v)) => redis::from_redis_value(v).map_err(|e| self.refused(e.into())),
            // The scripts were flushed (Redis restarted): load and settle on their own.
            Some(Err(e)) if is_noscript(&e) => self.settle(s),
            Some(Err(e)) => Err(self.refused(e)),
            None => Err(self.refused(redis::RedisError::from((
                redis::ErrorKind::Client,
                "pipeline returned no reply",
            )))),
        };
        (settled, claimed)
    }

    /// A Redis error as this store reports it, with the masked URL.
    fn refused(&self, source: redis::RedisError) -> StoreError {
        StoreError::Redis {
            url: self.target.masked().to_string(),
            source,
        }
    }

    /// What a connection that broke before the reply arrived leaves behind (fault injection).
    #[cfg(feature = "fault-injection")]
    fn lost_reply(&mut self) -> StoreError {
        self.con = None;
        self.refused(
            std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "fault injection: the reply was lost",
            )
            .into(),
        )
    }

    #[cfg(not(feature = "fault-injection"))]
    fn lost_reply(&mut self) -> StoreError {
        unreachable!("replies are lost only with the fault-injection feature")
    }

    /// Death registration (§5): out of the worker sets, `death` written, hash kept 60 s.
    pub fn death(&mut self, name: &str, queues: &[String]) -> Result<(), StoreError> {
        self.record_death(name, queues, false).map(drop)
    }

    /// Death registration for a worker that died without doing it (rq-supervisor's crash
    /// cleanup): also drops `current_job`, and does not recreate a record that is gone.
    /// Returns true when the record existed.
    pub fn record_death(
        &mut self,
        name: &str,
        queues: &[String],
        dead: bool,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        self.run(|con| {
            let mut inv = DEATH.key(keys::worker(name));
            inv.key(keys::WORKERS);
            for q in queues {
                inv.key(keys::workers_of(q));
            }
            let marked: i64 = inv
                .arg(now.iso())
                .arg(crate::protocol::defaults::DEATH_TTL)
                .arg(if dead { "dead" } else { "own" })
                .invoke(con)?;
            Ok(marked == 1)
        })
    }
}

/// `EVALSHA <sha> 0`: every script here takes its keys from ARGV (names built inside).
fn evalsha(script: &Script) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(0);
    cmd
}

fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// Runs a script's EVALSHA, loading the script once if Redis does not know it yet.
fn run_script<T: redis::FromRedisValue>(
    con: &mut Connection,
    script: &Script,
    cmd: &redis::Cmd,
) -> redis::RedisResult<T> {
    match cmd.query(con) {
        Err(e) if is_noscript(&e) => {
            script.load(con)?;
            cmd.query(con)
        }
        other => other,
    }
}

/// `uuid4().hex`: 32 lowercase hex digits with the version and variant bits of a v4 UUID.
pub fn new_execution_id() -> String {
    let mut n = fastrand::u128(..);
    n = (n & !(0xf << 76)) | (0x4 << 76);
    n = (n & !(0x3 << 62)) | (0x2 << 62);
    format!("{n:032x}")
}

fn parse_claim(reply: Value, execution_id: String, at: Instant) -> (ClaimResult, ClaimNotes) {
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
    let dropped = ClaimNotes {
        dropped: list(items.get(3)),
        broken: list(items.get(4)),
    };
    let (queue, id) = match (items.first().and_then(text), items.get(1).and_then(text)) {
        (None, Some(marker)) if marker == "suspended" => return (ClaimResult::Suspended, dropped),
        (Some(queue), Some(id)) => (queue, id),
        _ => return (ClaimResult::Empty, dropped),
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
            dropped,
        ),
        None => (ClaimResult::Empty, dropped),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_ids_look_like_uuid4_hex() {
        let id = new_execution_id();
        assert_eq!(id.len(), 32);
        assert_eq!(&id[12..13], "4");
        assert!(matches!(&id[16..17], "8" | "9" | "a" | "b"));
    }
}
