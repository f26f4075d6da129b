//! Waiting for a running job: the worker heartbeats while it runs, enforces its timeout from
//! outside (killing the horse's whole process group), and reacts to signals (warm: note it and
//! let the job finish; cold: kill) and to commands (`kill-horse`, `stop-job`).

use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};

use super::Worker;
use super::wakeup::timeout_ms;
use crate::execution::{Execution, Exit, JobFailure, Outcome};
use crate::store::Claimed;

/// Why the monitor is killing the horse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kill {
    Timeout,
    Cold,
    Command,
    Stop,
}

/// What commands may do to the running job.
pub(super) struct RunningJob {
    pub(super) job_id: String,
    pub(super) kill: Option<Kill>,
}

impl Worker {
    /// Waits for the job while heartbeating, enforcing the timeout, and reacting to signals
    /// and commands; returns how it ended.
    /// A job that may be interrupted from inside at its timeout is killed `grace` later.
    pub(super) fn monitor(
        &mut self,
        mut exec: Box<dyn Execution>,
        c: &Claimed,
        timeout: Option<u64>,
        grace: Duration,
    ) -> Outcome {
        let start = Instant::now();
        let deadline = timeout.map(|t| start + Duration::from_secs(t) + grace);
        let interval = self.spec.busy_heartbeat_every();
        let mut next_hb = start + interval;
        let mut job = RunningJob {
            job_id: c.record.id.clone(),
            kill: None,
        };
        loop {
            if let Some(outcome) = exec.try_finish() {
                return outcome;
            }
            self.check_stop(&mut job);
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) && job.kill.is_none() {
                job.kill = Some(Kill::Timeout);
            }
            if let Some(kill) = job.kill {
                let exit = exec.kill();
                if kill == Kill::Stop {
                    exec.after_stop();
                }
                return self.killed(kill, exit, timeout);
            }
            if now >= next_hb {
                self.heartbeat_busy(c, now.duration_since(start), timeout, interval);
                next_hb = now + interval;
            }
            if !self.wakeup.is_connected() {
                self.ensure_listener();
            }
            let mut wait = next_hb.saturating_duration_since(now);
            let maintenance = self.maintenance_due();
            wait = wait.min(maintenance.saturating_duration_since(Instant::now()));
            if let Some(tick) = self.scheduler_due() {
                wait = wait.min(tick.saturating_duration_since(Instant::now()));
            }
            if let Some(d) = deadline {
                wait = wait.min(d.saturating_duration_since(now));
            }
            self.wait_on(&mut *exec, &mut job, wait);
        }
    }

    /// A first stop signal is noted (the job goes on); a second, or the supervisor's death,
    /// means a cold shutdown.
    fn check_stop(&mut self, job: &mut RunningJob) {
        let stops = self.signals.stop_count();
        if stops >= 2 {
            if self.signals.orphaned() && job.kill.is_none() {
                log::warn!(
                    "Worker {}: rq-supervisor died; cold shutdown: killing the work horse and failing its job",
                    self.name
                );
            }
            job.kill = Some(Kill::Cold);
        } else if stops == 1 && !self.warm_noted {
            self.warm_noted = true;
            log::info!(
                "Worker {}: warm shut down requested; finishing the current job first",
                self.name
            );
            let _ = self.store.mark_shutdown_requested(&self.name);
        }
    }

    /// The outcome of a job the monitor killed.
    fn killed(&self, kill: Kill, exit: Exit, timeout: Option<u64>) -> Outcome {
        Outcome::Failed(match kill {
            Kill::Timeout => JobFailure::Timeout {
                secs: timeout.unwrap_or_default(),
            },
            Kill::Cold => JobFailure::ColdShutdown {
                worker: self.name.clone(),
                supervisor_died: self.signals.orphaned(),
                exit,
            },
            Kill::Command => JobFailure::KilledByCommand { exit },
            Kill::Stop => return Outcome::Stopped,
        })
    }

    /// The heartbeat while a job runs: its TTL covers the rest of the job's timeout (at most
    /// one interval) plus the grace (a minute, as RQ's, unless `worker_ttl` is shorter).
    fn heartbeat_busy(
        &mut self,
        c: &Claimed,
        elapsed: Duration,
        timeout: Option<u64>,
        interval: Duration,
    ) {
        let ttl = match timeout {
            Some(t) => Duration::from_secs(t).saturating_sub(elapsed).min(interval),
            None => interval,
        }
        .as_secs()
            + self.spec.heartbeat_grace().as_secs();
        if let Err(e) = self
            .store
            .heartbeat_busy(&self.name, c, elapsed.as_secs_f64(), ttl)
        {
            log::warn!(
                "heartbeat for job {} failed: {e}; the job keeps running",
                c.record.id
            );
        }
    }

    /// Sleeps up to `wait` on the signal pipe, the notification connection (and the
    /// `+switch-master` subscription) and the job's descriptors; then moves the job's data
    /// and handles what arrived.
    fn wait_on(&mut self, exec: &mut dyn Execution, job: &mut RunningJob, wait: Duration) {
        let (sig_ready, listener_ready) = {
            let mut fds = vec![PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
            let listener_index = self.wakeup.poll_fd().map(|fd| {
                fds.push(fd);
                fds.len() - 1
            });
            // A `+switch-master` during a job: its heartbeats and its settle go to the new
            // master at once.
            let switch_index = self.wakeup.switch_fd().map(|fd| {
                fds.push(fd);
                fds.len() - 1
            });
            for (fd, flags) in exec.poll_fds() {
                fds.push(PollFd::new(fd, flags));
            }
            let _ = poll(&mut fds, timeout_ms(wait));
            let ready = |i: usize| {
                fds.get(i)
                    .and_then(|f| f.revents())
                    .is_some_and(|r| !r.is_empty())
            };
            (
                ready(0),
                listener_index.is_some_and(ready) || switch_index.is_some_and(ready),
            )
        };
        exec.pump();
        if sig_ready {
            self.signals.drain();
            self.signals.take_child();
        }
        if listener_ready {
            self.drain_listener(Some(job));
        }
    }
}
