//! The per-pool crash-loop policy: capped exponential backoff with full jitter, a sliding
//! failure window, and a `degraded` state that keeps retrying slowly instead of giving up.
//! Pure: time comes in as arguments, randomness from the caller's generator.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::RestartPolicy;

/// What the tracker decided after one failure.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// How long to wait before the next start.
    pub delay: Duration,
    /// The upper bound the jittered delay was drawn from (for the log).
    pub ceiling: Duration,
    /// Failures inside the window, this one included.
    pub in_window: u32,
    /// The pool is degraded now.
    pub degraded: bool,
    /// This failure is the one that made it degraded.
    pub became_degraded: bool,
}

/// Failure history of one pool.
#[derive(Debug, Clone, Default)]
pub struct RestartTracker {
    /// Times of recent failures, oldest first; entries older than the window are dropped.
    failures: VecDeque<Instant>,
    /// Failures since the pool last ran healthily; drives the exponent.
    consecutive: u32,
    /// Set once `failure_threshold` failures fall inside `failure_window`.
    degraded: bool,
}

/// The ceiling of the `attempt`-th consecutive delay (1-based): `initial * 2^(attempt-1)`,
/// never above `backoff_max`.
pub fn ceiling(policy: &RestartPolicy, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    policy
        .backoff_initial
        .0
        .saturating_mul(1u32 << exp)
        .min(policy.backoff_max.0)
}

impl RestartTracker {
    pub fn is_degraded(&self) -> bool {
        self.degraded
    }

    pub fn consecutive(&self) -> u32 {
        self.consecutive
    }

    /// The latest failure (pruning never drops the newest), so recovery can require a worker
    /// started after it.
    pub fn last_failure(&self) -> Option<Instant> {
        self.failures.back().copied()
    }

    /// Records a failure at `now` and says how long to wait before the next start.
    pub fn record_failure(
        &mut self,
        now: Instant,
        policy: &RestartPolicy,
        rng: &mut fastrand::Rng,
    ) -> Verdict {
        self.consecutive = self.consecutive.saturating_add(1);
        self.failures.push_back(now);
        while let Some(first) = self.failures.front() {
            if now.duration_since(*first) > policy.failure_window.0 {
                self.failures.pop_front();
            } else {
                break;
            }
        }
        let in_window = self.failures.len() as u32;
        let was = self.degraded;
        if in_window >= policy.failure_threshold {
            self.degraded = true;
        }
        let (delay, ceiling) = if self.degraded {
            let d = policy.degraded_interval.0;
            (d, d)
        } else {
            let c = ceiling(policy, self.consecutive);
            // Full jitter: anywhere in [0, ceiling].
            (c.mul_f64(rng.f64()), c)
        };
        Verdict {
            delay,
            ceiling,
            in_window,
            degraded: self.degraded,
            became_degraded: self.degraded && !was,
        }
    }

    /// A worker left because jobs cannot start in this environment (it exited with
    /// `launch::EXIT_ENVIRONMENT`, or could not be spawned for a process or file limit): no
    /// backoff ladder, the pool is degraded at once and tries again every
    /// `degraded_interval`, so a host out of processes or files is never a restart loop.
    pub fn record_environment_failure(&mut self, now: Instant, policy: &RestartPolicy) -> Verdict {
        self.consecutive = self.consecutive.saturating_add(1);
        self.failures.push_back(now);
        let was = self.degraded;
        self.degraded = true;
        let d = policy.degraded_interval.0;
        Verdict {
            delay: d,
            ceiling: d,
            in_window: self.failures.len() as u32,
            degraded: true,
            became_degraded: !was,
        }
    }

    /// Recovery: a worker started after the latest failure has now run for the whole
    /// failure window. Returns true when this call reset the tracker.
    pub fn check_recovery(
        &mut self,
        now: Instant,
        policy: &RestartPolicy,
        survivor_started: Option<Instant>,
    ) -> bool {
        let (Some(last), Some(started)) = (self.last_failure(), survivor_started) else {
            return false;
        };
        if started >= last && now.duration_since(started) >= policy.failure_window.0 {
            let had = self.consecutive > 0 || self.degraded;
            *self = RestartTracker::default();
            return had;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::values::Secs;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            min_uptime: Secs::from_secs(1),
            backoff_initial: Secs(Duration::from_millis(100)),
            backoff_max: Secs(Duration::from_secs(2)),
            failure_window: Secs::from_secs(60),
            failure_threshold: 8,
            degraded_interval: Secs::from_secs(30),
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let p = policy();
        let ceilings: Vec<u64> = (1..=8).map(|n| ceiling(&p, n).as_millis() as u64).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        let mut t = RestartTracker::default();
        let mut rng = fastrand::Rng::with_seed(7);
        let start = Instant::now();
        let mut last_ceiling = Duration::ZERO;
        for i in 0..7u64 {
            let v = t.record_failure(start + Duration::from_millis(i), &p, &mut rng);
            assert!(v.delay <= v.ceiling, "{v:?}");
            assert!(v.ceiling >= last_ceiling);
            assert!(v.ceiling <= Duration::from_secs(2));
            assert!(!v.degraded);
            last_ceiling = v.ceiling;
        }
        assert_eq!(last_ceiling, Duration::from_secs(2));
    }

    #[test]
    fn degraded_after_threshold_within_window_only() {
        let mut p = policy();
        p.failure_threshold = 3;
        p.failure_window = Secs::from_secs(10);
        let mut rng = fastrand::Rng::with_seed(1);
        let t0 = Instant::now();
        // Spread out: never three inside ten seconds.
        let mut t = RestartTracker::default();
        for i in 0..5u64 {
            let v = t.record_failure(t0 + Duration::from_secs(i * 6), &p, &mut rng);
            assert!(!v.degraded, "failure {i}: {v:?}");
        }
        // Bunched: the third inside the window degrades, and says so once.
        let mut t = RestartTracker::default();
        let a = t.record_failure(t0, &p, &mut rng);
        let b = t.record_failure(t0 + Duration::from_secs(1), &p, &mut rng);
        let c = t.record_failure(t0 + Duration::from_secs(2), &p, &mut rng);
        assert!(!a.degraded && !b.degraded);
        assert!(c.degraded && c.became_degraded && c.in_window == 3);
        assert_eq!(c.delay, Duration::from_secs(30));
        let d = t.record_failure(t0 + Duration::from_secs(40), &p, &mut rng);
        assert!(d.degraded && !d.became_degraded);
        assert_eq!(d.delay, Duration::from_secs(30));
    }

    #[test]
    fn recovery_needs_a_survivor_started_after_the_last_failure() {
        let mut p = policy();
        p.failure_threshold = 1;
        let mut rng = fastrand::Rng::with_seed(1);
        let t0 = Instant::now();
        let mut t = RestartTracker::default();
        assert!(t.record_failure(t0, &p, &mut rng).degraded);
        let window = p.failure_window.0;
        // An old worker that predates the failure proves nothing.
        assert!(!t.check_recovery(t0 + window * 2, &p, Some(t0 - Duration::from_secs(1))));
        // A new one that has not lived a whole window yet: not yet.
        let started = t0 + Duration::from_secs(30);
        assert!(!t.check_recovery(started + window / 2, &p, Some(started)));
        assert!(t.check_recovery(started + window, &p, Some(started)));
        assert!(!t.is_degraded());
        assert_eq!(t.consecutive(), 0);
        // After recovery the count starts again from the bottom.
        p.failure_threshold = 2;
        let v = t.record_failure(started + window * 2, &p, &mut rng);
        assert_eq!(v.ceiling, Duration::from_millis(100));
        assert!(!v.degraded && t.consecutive() == 1);
    }
}
