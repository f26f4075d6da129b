//! Writing a job's outcome to Redis, retried through outages until it is recorded: a result
//! is never dropped because Redis was briefly away. When the worker goes on, the same round
//! trip takes the next job.

use std::time::Duration;

use super::{RECONNECT_CAP, Worker, claim_id, claim_request, report_claim_notes};
use crate::conn::Backoff;
use crate::execution::Outcome;
use crate::logging::shorten;
use crate::store::{ClaimResult, Claimed, Ending, Settlement, StoreError, Verdict};

impl Worker {
    pub(super) fn settle(&mut self, c: &Claimed, outcome: Outcome, working: Duration) {
        // Owned, so the settlement does not hold `self` borrowed across the retries.
        let name = self.name.clone();
        let settlement = Settlement {
            job_id: &c.record.id,
            queue: &c.queue,
            execution_id: &c.execution_id,
            worker: &name,
            ending: match outcome.ending() {
                Ending::Failed if !self.record_failures => Ending::FailedUnrecorded,
                other => other,
            },
            started: Some(c.at),
            working_secs: working.as_secs_f64(),
            default_result_ttl: self.spec.results_ttl,
            payload: outcome.payload(),
            alive: true,
            allow_retry: outcome.allows_retry(),
        };
        let first = self
            .may_take_next()
            .then(|| self.settle_and_claim(&settlement));
        let Some((verdict, retried)) = self.settle_until_recorded(&settlement, first, c) else {
            return;
        };
        log_verdict(c, &outcome, verdict, retried);
    }

    /// Settles and takes the next job in one round trip; keeps the job it took.
    fn settle_and_claim(&mut self, settlement: &Settlement) -> Result<Verdict, StoreError> {
        let (execution_id, retry) = claim_id(&mut self.claims.pending);
        let (settled, next) = self.store.settle_then_claim(
            settlement,
            &claim_request(
                &self.name,
                &self.claims.order,
                &self.spec,
                &execution_id,
                retry,
            ),
        );
        match next {
            // Only a job is kept: an empty or suspended answer may be stale by the time the
            // loop drains its notifications, so the loop asks again. What the claim stepped
            // over is reported whatever it found: the ids it dropped are gone from the queue.
            Ok((result, notes)) => {
                report_claim_notes(&mut self.claims.broken_reported, notes);
                if let ClaimResult::Job(job) = result {
                    self.claims.prefetched = Some(job);
                }
            }
            Err(_) => self.claims.pending = Some(execution_id),
        }
        settled
    }

    /// Retries the settle until Redis takes it; returns the verdict and whether it took more
    /// than one attempt, or `None` when a cold shutdown gave up.
    fn settle_until_recorded(
        &mut self,
        settlement: &Settlement,
        mut first: Option<Result<Verdict, StoreError>>,
        c: &Claimed,
    ) -> Option<(Verdict, bool)> {
        let mut backoff = Backoff::new(Duration::from_millis(100), RECONNECT_CAP);
        loop {
            let attempt = first
                .take()
                .unwrap_or_else(|| self.store.settle(settlement));
            match attempt {
                Ok(v) => return Some((v, backoff.attempts() > 0)),
                Err(e) => {
                    if (backoff.attempts() == 0 || e.is_refusal()) && !e.is_sentinel_outage() {
                        log::error!(
                            "cannot record the outcome of job {}: {e}; retrying until Redis accepts it",
                            c.record.id
                        );
                    }
                    if self.signals.stop_count() >= 2 && backoff.attempts() >= 3 {
                        log::error!(
                            "cold shutdown: giving up on recording job {}; it stays started until rq-supervisor or RQ's abandoned-job cleanup settles it",
                            c.record.id
                        );
                        return None;
                    }
                    let delay = backoff.next_delay();
                    self.sleep(delay);
                }
            }
        }
    }
}

/// One log line for what the settle did, in RQ's words where RQ has them.
fn log_verdict(c: &Claimed, outcome: &Outcome, verdict: Verdict, retried: bool) {
    let id = &c.record.id;
    match (verdict, outcome) {
        (Verdict::Finished, Outcome::Returned(v)) if v.is_none() => {
            log::info!("Job ended normally without result")
        }
        (Verdict::Finished, Outcome::Returned(v)) => log::info!(
            "Job ended normally with result: {}",
            shorten(&v.shown(), 100)
        ),
        (Verdict::Failed, Outcome::Failed(f)) => log::warn!("Job failed: {}", f.summary()),
        (Verdict::Requeued, Outcome::Failed(f)) => {
            log::warn!("Job failed and was requeued for a retry: {}", f.summary())
        }
        (Verdict::Scheduled, Outcome::Failed(f)) => {
            log::warn!("Job failed; a retry is scheduled: {}", f.summary())
        }
        (Verdict::Requeued, Outcome::Retry { .. }) => {
            log::info!("Job returned a Retry; queued again")
        }
        (Verdict::Scheduled, Outcome::Retry { .. }) => {
            log::info!("Job returned a Retry; scheduled after its interval")
        }
        (Verdict::Failed, Outcome::Retry { max, .. }) => log::warn!(
            "Job returned a Retry, but has been retried {max} time(s) already (the Retry's max); failed"
        ),
        (Verdict::Stopped, _) => log::info!("Job {id} stopped by request"),
        (Verdict::Gone, _) => log::warn!("job {id} was deleted while it ran; nothing to record"),
        (Verdict::Unknown, _) if retried => log::info!(
            "job {id} was already settled: by an earlier attempt whose reply was lost, or by RQ's abandoned-job cleanup"
        ),
        (Verdict::Unknown, _) => log::warn!(
            "job {id} was settled by someone else meanwhile (abandoned-job cleanup after missed heartbeats?); this outcome is dropped"
        ),
        (other, _) => log::debug!("job {id} settled: {other}"),
    }
}
