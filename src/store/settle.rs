//! Recording how an execution ended: [`settle.lua`](settle.lua) writes the result entry,
//! registries, TTLs, retries, dependents and the worker's counters in one step (§7.5-§7.7,
//! §7.11, §8.3), and is safe to repeat.

use std::fmt;
use std::sync::LazyLock;

use redis::{Script, Value};

use super::claim::{self, ClaimNotes, ClaimRequest, ClaimResult};
use super::{Store, StoreError, script};
use crate::fault::lose_reply;
use crate::protocol::time::Instant;

pub(super) static SETTLE: LazyLock<Script> =
    LazyLock::new(|| script::guarded("settle", include_str!("settle.lua")));

/// The ending a settle records; what RQ calls the outcome of an execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Finished,
    Failed,
    /// Failed under RQ's `--disable-default-exception-handler`: status failed and retries
    /// honoured, but no failed-registry entry and no result.
    FailedUnrecorded,
    Stopped,
    /// The job returned RQ's `Retry(max, interval)`.
    Retried {
        max: u32,
        intervals: Vec<u64>,
    },
}

impl Ending {
    fn as_arg(&self) -> &'static str {
        match self {
            Ending::Finished => "finished",
            Ending::Failed => "failed",
            Ending::FailedUnrecorded => "failed-unrecorded",
            Ending::Stopped => "stopped",
            Ending::Retried { .. } => "retried",
        }
    }

    /// settle.lua's ARGV[15].
    fn retry_spec(&self) -> String {
        match self {
            Ending::Retried { max, intervals } => std::iter::once(max.to_string())
                .chain(intervals.iter().map(u64::to_string))
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        }
    }
}

/// What settle.lua did with an ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Finished,
    /// Finished, and run again (RQ 2.x `Repeat`): queued or scheduled anew.
    Repeated,
    Failed,
    Stopped,
    /// Failed with retries left: back on its queue.
    Requeued,
    /// Failed with retries left and a retry interval: in the scheduled registry.
    Scheduled,
    /// The job hash no longer exists (deleted or expired while it ran).
    Gone,
    /// The execution was not (or no longer) in `rq:wip:Q`: already settled, by an earlier
    /// attempt whose reply was lost or by someone else.
    Unknown,
}

impl Verdict {
    fn parse(text: &str) -> Option<Verdict> {
        Some(match text {
            "finished" => Verdict::Finished,
            "repeated" => Verdict::Repeated,
            "failed" => Verdict::Failed,
            "stopped" => Verdict::Stopped,
            "requeued" => Verdict::Requeued,
            "scheduled" => Verdict::Scheduled,
            "gone" => Verdict::Gone,
            "unknown" => Verdict::Unknown,
            _ => return None,
        })
    }

    pub(super) fn from_reply(v: Value) -> redis::RedisResult<Verdict> {
        let text: String = redis::from_redis_value(v)?;
        Verdict::parse(&text).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::Parse,
                "the settle script returned an unknown verdict",
                text,
            ))
        })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Finished => "finished",
            Verdict::Repeated => "repeated",
            Verdict::Failed => "failed",
            Verdict::Stopped => "stopped",
            Verdict::Requeued => "requeued",
            Verdict::Scheduled => "scheduled",
            Verdict::Gone => "gone",
            Verdict::Unknown => "unknown",
        })
    }
}

/// Everything the settle script needs to record one ending.
pub struct Settlement<'a> {
    pub job_id: &'a str,
    pub queue: &'a str,
    /// Empty when unknown (crash cleanup); the script looks it up.
    pub execution_id: &'a str,
    pub worker: &'a str,
    pub ending: Ending,
    pub started: Option<Instant>,
    pub working_secs: f64,
    pub default_result_ttl: i64,
    /// Encoded return value (finished) or exc_string (failed, stopped).
    pub payload: String,
    /// False when the worker is dead and its record must not be touched.
    pub alive: bool,
    pub allow_retry: bool,
}

impl<'a> Settlement<'a> {
    /// The SETTLE invocation, with its ARGV in settle.lua's order.
    fn command(&self) -> redis::Cmd {
        let now = Instant::now();
        let mut cmd = script::evalsha(&SETTLE);
        cmd.arg(self.job_id)
            .arg(self.queue)
            .arg(self.execution_id)
            .arg(self.worker)
            .arg(self.ending.as_arg())
            .arg(now.iso())
            .arg(now.unix_float())
            .arg(now.unix_secs())
            .arg(self.started.map(|t| t.unix_float()).unwrap_or_default())
            .arg(format!("{:.6}", self.working_secs))
            .arg(self.default_result_ttl)
            .arg(&self.payload)
            .arg(if self.alive { "1" } else { "" })
            .arg(if self.allow_retry { "1" } else { "0" })
            .arg(self.ending.retry_spec());
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
            ending: Ending::Failed,
            started: None,
            working_secs: 0.0,
            default_result_ttl: crate::protocol::defaults::RESULT_TTL,
            payload: crate::protocol::result::encode_exc_string(exc),
            alive: false,
            allow_retry: true,
        }
    }
}

/// What a settle that also took the next job returns: the settle's verdict and the claim's
/// result, each on its own (either may fail while the other did not).
pub type SettledThenClaimed = (
    Result<Verdict, StoreError>,
    Result<(ClaimResult, ClaimNotes), StoreError>,
);

impl Store {
    /// Records an ending; returns what the script did with it.
    pub fn settle(&mut self, s: &Settlement) -> Result<Verdict, StoreError> {
        let cmd = s.command();
        let verdict =
            self.run(|con| script::run::<Value>(con, &SETTLE, &cmd).and_then(Verdict::from_reply))?;
        self.recorded(&cmd);
        if lose_reply!("lose-settle-reply") {
            return Err(self.lost_reply());
        }
        Ok(verdict)
    }

    /// Records an ending and takes the next job in one round trip (two scripts in one
    /// pipeline): the busy worker's steady state. The claim runs only after the settle, in
    /// order, and its outcome is returned even when the settle failed, so a job it took is
    /// never dropped.
    pub fn settle_then_claim(&mut self, s: &Settlement, c: &ClaimRequest) -> SettledThenClaimed {
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
        let no_reply =
            || redis::RedisError::from((redis::ErrorKind::Client, "pipeline returned no reply"));
        let claimed = match claimed {
            Some(Ok(v)) => Ok(claim::parse(v, c.execution_id.to_string(), now)),
            // Not run (NOSCRIPT after a Redis restart, a refusal): the next loop claims.
            Some(Err(e)) => Err(self.refused(e)),
            None => Err(self.refused(no_reply())),
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
            Some(Ok(v)) => {
                let verdict = Verdict::from_reply(v).map_err(|e| self.refused(e));
                if verdict.is_ok() {
                    self.recorded(&settle);
                }
                verdict
            }
            // The scripts were flushed (Redis restarted): load and settle on their own.
            Some(Err(e)) if script::is_noscript(&e) => self.settle(s),
            Some(Err(e)) => Err(self.refused(e)),
            None => Err(self.refused(no_reply())),
        };
        (settled, claimed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_verdict_the_script_returns_is_known() {
        let lua = include_str!("settle.lua");
        let mut found = 0;
        for piece in lua.split("return '").skip(1) {
            let word = piece.split('\'').next().unwrap();
            assert!(Verdict::parse(word).is_some(), "unknown verdict {word:?}");
            assert_eq!(Verdict::parse(word).unwrap().to_string(), word);
            found += 1;
        }
        // `return outcome` returns one of the outcomes the Rust side sends.
        for e in [Ending::Failed, Ending::Stopped] {
            assert!(Verdict::parse(e.as_arg()).is_some());
        }
        assert!(found >= 6, "{found}");
    }
}
