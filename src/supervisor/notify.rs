//! systemd's notification protocol (`sd_notify`), through the `sd-notify` crate, from the
//! event loop's thread only: `READY=1` once every pool's workers are registered, `STATUS=`
//! when the summary changes, `RELOADING=1` with `MONOTONIC_USEC` then `READY=1` around a
//! reload (`Type=notify-reload`), `STOPPING=1` at shutdown, and `WATCHDOG=1` every half
//! `WATCHDOG_USEC` for as long as the loop turns, so a wedged loop is restarted. Nothing is
//! sent without `$NOTIFY_SOCKET`; workers never see these variables (see `launch`).

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

pub struct Notifier {
    enabled: bool,
    /// Half of `WATCHDOG_USEC`.
    watchdog: Option<Duration>,
    next_watchdog: Option<Instant>,
    /// `READY=1` was sent since the start or the last reload.
    ready: bool,
    stopping: bool,
    status: String,
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("cannot notify systemd ({e}); check NOTIFY_SOCKET");
    }
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        let watchdog = sd_notify::watchdog_enabled()
            .filter(|_| enabled)
            .map(|d| (d / 2).max(Duration::from_millis(1)));
        Notifier {
            enabled,
            watchdog,
            next_watchdog: watchdog.map(|_| Instant::now()),
            ready: false,
            stopping: false,
            status: String::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// When the loop must wake for the next watchdog ping.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_watchdog
    }

    /// Once per loop turn: the watchdog when due, `READY=1` the first time `ready`, `STATUS=`
    /// when `status` changed.
    pub fn turn(&mut self, now: Instant, ready: bool, status: impl FnOnce() -> String) {
        if !self.enabled {
            return;
        }
        if let (Some(every), Some(at)) = (self.watchdog, self.next_watchdog)
            && now >= at
        {
            send(&[NotifyState::Watchdog]);
            self.next_watchdog = Some(now + every);
        }
        let status = status();
        if ready && !self.ready && !self.stopping {
            self.ready = true;
            self.status = status.clone();
            send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        } else if status != self.status {
            self.status = status;
            send(&[NotifyState::Status(&self.status)]);
        }
    }

    /// Before a reload is applied: systemd waits for the `READY=1` of [`Notifier::reloaded`].
    pub fn reloading(&mut self) {
        if !self.enabled {
            return;
        }
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(e) => log::warn!("cannot read the monotonic clock for systemd ({e})"),
        }
    }

    /// After a reload was applied or refused: ready again.
    pub fn reloaded(&mut self) {
        if self.enabled && !self.stopping {
            self.ready = true;
            send(&[NotifyState::Ready]);
        }
    }

    pub fn stopping(&mut self) {
        if self.enabled && !self.stopping {
            self.stopping = true;
            send(&[NotifyState::Stopping]);
        }
    }
}
