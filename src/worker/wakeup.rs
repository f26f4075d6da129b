//! The worker's wake-up connection ([`Listener`]): Redis pushes queue changes and
//! `rq:pubsub:<worker>` commands on it, so an idle worker sleeps in `poll(2)` and still reacts
//! to a new job, a command or a signal at once. Here too: the commands themselves (§8.3), the
//! idle wait, and the backoff sleep.

use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde_json::Value;

use super::Worker;
use super::monitor::{Kill, RunningJob};
use crate::conn::{Backoff, CONNECT_TIMEOUT};
use crate::listener::{Listener, Push};
use crate::protocol::keys;

/// The notification connection, and when to try opening it again while it is down.
pub(super) struct Wakeup {
    /// `None` while Redis is unreachable.
    listener: Option<Listener>,
    retry_at: Instant,
    backoff: Backoff,
    /// For a Sentinel target: a Sentinel's `+switch-master` announcements, so the worker
    /// leaves a replaced master at once instead of when it is demoted, seconds later.
    switch: Option<Listener>,
    switch_retry_at: Instant,
    switch_backoff: Backoff,
}

impl Wakeup {
    pub(super) fn new() -> Wakeup {
        Wakeup {
            listener: None,
            retry_at: Instant::now(),
            // As the main connection's, so notices resume about when claims do.
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(1)),
            switch: None,
            switch_retry_at: Instant::now(),
            // Only a shortcut (losing it costs seconds, not jobs): no hurry while the
            // Sentinels are away.
            switch_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(10)),
        }
    }

    /// The `+switch-master` subscription's descriptor, to poll beside the others.
    pub(super) fn switch_fd(&self) -> Option<PollFd<'_>> {
        self.switch
            .as_ref()
            .map(|l| PollFd::new(l.fd(), PollFlags::POLLIN))
    }

    pub(super) fn disconnect(&mut self) {
        self.listener = None;
    }

    pub(super) fn is_connected(&self) -> bool {
        self.listener.is_some()
    }

    /// The connection's descriptor, to poll beside the others.
    pub(super) fn poll_fd(&self) -> Option<PollFd<'_>> {
        self.listener
            .as_ref()
            .map(|l| PollFd::new(l.fd(), PollFlags::POLLIN))
    }
}

impl Worker {
    /// Subscribes to a Sentinel's `+switch-master` unless subscribed or its retry is not due.
    fn ensure_switch(&mut self) {
        let w = &mut self.wakeup;
        if !self.store.target().is_sentinel()
            || w.switch.is_some()
            || Instant::now() < w.switch_retry_at
        {
            return;
        }
        let opened = crate::conn::uninterrupted(|| {
            Listener::switch_master(self.store.target(), CONNECT_TIMEOUT)
        });
        match opened {
            Ok(l) => {
                w.switch = Some(l);
                w.switch_backoff.reset();
            }
            Err(e) => {
                log::debug!("cannot subscribe to +switch-master on a Sentinel: {e}");
                w.switch_retry_at = Instant::now() + w.switch_backoff.next_delay();
            }
        }
    }

    /// Reads `+switch-master` announcements; true if this worker's master was replaced, in
    /// which case both connections are dropped and the next command rediscovers.
    fn drain_switch(&mut self) -> bool {
        let Some(l) = self.wakeup.switch.as_mut() else {
            return false;
        };
        let pushes = match l.drain() {
            Ok(p) => p,
            Err(e) => {
                log::debug!("the +switch-master subscription was lost: {e}");
                self.wakeup.switch = None;
                return false;
            }
        };
        let Some(sentinels) = self.store.target().sentinels() else {
            return false;
        };
        let mut switched = false;
        for p in pushes {
            if let Push::Message { channel, payload } = p
                && channel == crate::listener::SWITCH_MASTER_CHANNEL
                && sentinels.switched(&payload)
            {
                log::info!(
                    "the Sentinels switched the master: {}; reconnecting to the new one",
                    String::from_utf8_lossy(&payload)
                );
                switched = true;
            }
        }
        if switched {
            self.store.disconnect();
            self.wakeup.listener = None;
            self.wakeup.retry_at = Instant::now();
        }
        switched
    }

    /// Opens the notification connection unless it is open or its retry is not due.
    pub(super) fn ensure_listener(&mut self) {
        self.ensure_switch();
        let w = &mut self.wakeup;
        if w.listener.is_some() || Instant::now() < w.retry_at {
            return;
        }
        let mut prefixes: Vec<String> = self.queues.iter().map(|q| keys::queue(q)).collect();
        prefixes.push(keys::SUSPENDED.to_string());
        let channels = [keys::pubsub(&self.name)];
        let opened = crate::conn::uninterrupted(|| {
            Listener::open(self.store.target(), &prefixes, &channels, CONNECT_TIMEOUT)
        });
        match opened {
            Ok(l) => {
                w.listener = Some(l);
                w.backoff.reset();
            }
            Err(e) => {
                let delay = w.backoff.next_delay();
                // A Sentinel outage is reported once by the target itself.
                let outage = e
                    .get_ref()
                    .and_then(|r| r.downcast_ref::<crate::conn::ConnError>())
                    .is_some_and(|c| {
                        matches!(
                            c,
                            crate::conn::ConnError::NoMaster {
                                sentinels_down: true,
                                ..
                            }
                        )
                    });
                if w.backoff.attempts() == 1 && !outage {
                    let text = e.to_string();
                    log::warn!(
                        "cannot open the notification connection to {} ({text}{}); checking queues every second until it works",
                        self.store.target().masked(),
                        crate::conn::hint_text("", &text)
                    );
                }
                w.retry_at = Instant::now() + delay;
            }
        }
    }

    /// Reads pending notifications; handles commands. Returns true if a queue changed.
    pub(super) fn drain_listener(&mut self, mut job: Option<&mut RunningJob>) -> bool {
        if self.drain_switch() {
            return true;
        }
        let Some(l) = self.wakeup.listener.as_mut() else {
            return false;
        };
        let pushes = match l.drain() {
            Ok(p) => p,
            Err(e) => {
                log::debug!("notification connection lost: {e}");
                self.wakeup.listener = None;
                return true;
            }
        };
        let mut changed = false;
        for p in pushes {
            match p {
                Push::Changed(_) => changed = true,
                Push::Message { payload, .. } => self.on_command(&payload, job.as_deref_mut()),
            }
        }
        changed
    }

    /// Commands sent with `rq.command.send_*` (§8.3).
    fn on_command(&mut self, payload: &[u8], job: Option<&mut RunningJob>) {
        let Ok(cmd) = serde_json::from_slice::<Value>(payload) else {
            log::warn!(
                "ignoring a command that is not JSON: {}",
                String::from_utf8_lossy(payload)
            );
            return;
        };
        match cmd.get("command").and_then(Value::as_str) {
            Some("shutdown") => {
                log::info!("Worker {}: shutdown command received", self.name);
                self.signals.request_stop();
            }
            Some("kill-horse") => match job {
                Some(j) => {
                    log::info!(
                        "Worker {}: kill-horse command received, killing the work horse",
                        self.name
                    );
                    j.kill = Some(Kill::Command);
                }
                None => log::info!(
                    "Worker {}: kill-horse command received while idle; nothing to kill",
                    self.name
                ),
            },
            Some("stop-job") => {
                let id = cmd
                    .get("job_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match job {
                    Some(j) if j.job_id == id => {
                        log::info!(
                            "Worker {}: stop-job command received for job {id}",
                            self.name
                        );
                        j.kill = Some(Kill::Stop);
                    }
                    _ => log::info!(
                        "Worker {}: stop-job for job {id}, which is not running here; ignored",
                        self.name
                    ),
                }
            }
            other => log::debug!("ignoring unknown command {other:?}"),
        }
    }

    /// Sleeps until a queue changes, a signal or command arrives, or a timer is due. A wake
    /// for maintenance alone runs it and sleeps on: it must not cost a claim, since with a
    /// short `maintenance_interval` every idle worker of a fleet wakes for it (to try for the
    /// lock) every interval, and a queue that changed meanwhile wakes the wait anyway (the
    /// heartbeat's wake still claims, as the fallback for a lost notice).
    pub(super) fn wait_for_work(&mut self, cap: Option<Duration>) {
        self.registry.idle();
        while self.wait_once(cap) {
            let connects = self.store.connects();
            self.maintenance_due();
            // A reconnect (Redis may have lost our record) or a failure: the loop decides.
            if !self.timers.maintenance_ok || self.store.connects() != connects {
                return;
            }
        }
    }

    /// One sleep of [`wait_for_work`](Self::wait_for_work); true when only the maintenance
    /// timer ended it.
    fn wait_once(&mut self, cap: Option<Duration>) -> bool {
        let now = Instant::now();
        let mut wait = self.timers.next_heartbeat.saturating_duration_since(now);
        if let Some(max) = self.spec.max_idle_time {
            wait = wait.min((self.idle_since + max.0).saturating_duration_since(now));
        }
        if !self.wakeup.is_connected() {
            wait = wait.min(Duration::from_secs(1));
        }
        wait = wait.min(self.timers.next_maintenance.saturating_duration_since(now));
        if self.scheduler.is_some() {
            wait = wait.min(self.timers.next_tick.saturating_duration_since(now));
        }
        if let Some(c) = cap {
            wait = wait.min(c);
        }
        let (sig_ready, listener_ready) = {
            let mut fds = vec![PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
            fds.extend(self.wakeup.poll_fd());
            fds.extend(self.wakeup.switch_fd());
            let _ = poll(&mut fds, timeout_ms(wait));
            let ready = |i: usize| {
                fds.get(i)
                    .and_then(|f| f.revents())
                    .is_some_and(|r| !r.is_empty())
            };
            // Either connection: draining reads both.
            (ready(0), (1..fds.len()).any(ready))
        };
        if sig_ready {
            self.signals.drain();
        }
        if listener_ready {
            self.drain_listener(None);
        }
        let now = Instant::now();
        let idle_limit = self
            .spec
            .max_idle_time
            .is_some_and(|max| now >= self.idle_since + max.0);
        let tick_due = self.scheduler.is_some() && now >= self.timers.next_tick;
        !sig_ready
            && !listener_ready
            && cap.is_none()
            && self.wakeup.is_connected()
            && self.signals.stop_count() == 0
            && now >= self.timers.next_maintenance
            && now < self.timers.next_heartbeat
            && !idle_limit
            && !tick_due
    }

    /// Sleeps for `d` (a backoff delay), waking early only for a stop request. Other
    /// signals (a late SIGCHLD) are drained and the sleep goes on: a wake-up byte left in the
    /// signal pipe would otherwise end every later sleep at once.
    pub(super) fn sleep(&self, d: Duration) {
        // No job runs during the sleep (an outage, a backoff).
        self.registry.idle();
        let deadline = Instant::now() + d;
        let stops = self.signals.stop_count();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let mut fds = [PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, timeout_ms(left));
            self.signals.drain();
            if self.signals.stop_count() != stops {
                return;
            }
        }
    }
}

/// A poll timeout for `d`, rounded up so a deadline is never polled just short of its instant.
pub(super) fn timeout_ms(d: Duration) -> PollTimeout {
    let ms = d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}
