//! Crash cleanup: what only a supervisor can do, because only it knows for certain that a
//! worker process is dead. Registers the worker's death at once and settles the job it was
//! running (retried if it has retries left, else failed with a message saying why), instead
//! of leaving RQ's stale record and a `started` job until TTLs lapse.

use crate::protocol::keys;
use crate::worker::store::{Settlement, Store, StoreError};

/// What the cleanup found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleanup {
    /// The job the dead worker was running, if any, and the settle verdict for it
    /// (`failed`, `requeued`, `scheduled`, `gone`, or `unknown` when it was already settled).
    pub job: Option<(String, String)>,
}

/// Registers `worker`'s death and settles its in-flight job. `how` says how it died, e.g.
/// "killed by signal 9 (SIGKILL)"; it ends up in the job's `exc_string`.
pub fn settle_dead_worker(
    store: &mut Store,
    worker: &str,
    how: &str,
) -> Result<Cleanup, StoreError> {
    let key = keys::worker(worker);
    let (job, queues): (Option<String>, Option<String>) = store.run(|con| {
        redis::cmd("HMGET")
            .arg(&key)
            .arg("current_job")
            .arg("queues")
            .query(con)
    })?;
    let mut cleanup = Cleanup { job: None };
    if let Some(job_id) = job.filter(|j| !j.is_empty()) {
        let origin: Option<String> = store.run(|con| {
            redis::cmd("HGET")
                .arg(keys::job(&job_id))
                .arg("origin")
                .query(con)
        })?;
        if let Some(queue) = origin {
            let exc = format!(
                "WorkerDied: worker {worker} {how} while running this job; rq-supervisor settled it\n"
            );
            let verdict = store.settle(&Settlement::orphaned(&job_id, &queue, "", worker, &exc))?;
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
    store.record_death(worker, &queues, true)?;
    Ok(cleanup)
}
