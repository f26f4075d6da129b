//! Crash cleanup: what only a supervisor can do, because only it knows for certain that a
//! worker process is dead. Registers the worker's death at once and settles the job it was
//! running (retried if it has retries left, else failed with the text the caller gives),
//! instead of leaving RQ's stale record and a `started` job until TTLs lapse.

use super::settle::{Settlement, Verdict};
use super::{Store, StoreError};
use crate::protocol::keys;

/// What the cleanup found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleanup {
    /// The job the dead worker was running, if any, and what the settle did with it
    /// (`Unknown` when it was already settled).
    pub job: Option<(String, Verdict)>,
}

impl Store {
    /// Registers `worker`'s death and settles its in-flight job as failed with `exc` (its
    /// `exc_string`), or retried when it has retries left.
    pub fn settle_dead_worker(&mut self, worker: &str, exc: &str) -> Result<Cleanup, StoreError> {
        let key = keys::worker(worker);
        let (job, queues): (Option<String>, Option<String>) = self.run(|con| {
            redis::cmd("HMGET")
                .arg(&key)
                .arg("current_job")
                .arg("queues")
                .query(con)
        })?;
        let mut cleanup = Cleanup { job: None };
        if let Some(job_id) = job.filter(|j| !j.is_empty()) {
            let origin: Option<String> = self.run(|con| {
                redis::cmd("HGET")
                    .arg(keys::job(&job_id))
                    .arg("origin")
                    .query(con)
            })?;
            if let Some(queue) = origin {
                let verdict =
                    self.settle(&Settlement::orphaned(&job_id, &queue, "", worker, exc))?;
                cleanup.job = Some((job_id, verdict));
            }
        }
        let queues: Vec<String> = queues
            .unwrap_or_default()
            .split(',')
            .filter(|q| !q.is_empty())
            .map(str::to_string)
            .collect();
        // Only an existing record is marked: a worker that never registered leaves no ghost.
        self.record_death(worker, &queues, true)?;
        Ok(cleanup)
    }
}
