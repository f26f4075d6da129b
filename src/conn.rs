//! Connections to Redis: the URL (with its password masked wherever it is shown), connecting
//! with bounded timeouts, and capped, jittered backoff for reconnecting.

use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo};

/// How long a connect attempt may take before it counts as a failure.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Read and write limit for ordinary commands. No command this crate sends blocks on the
/// server, so a reply that takes longer means Redis is stalled or gone; every caller treats
/// the connection as lost and recovers (claims and settles are safe to repeat).
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Why Redis could not be reached or used. The URL in messages is always masked.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(
        "invalid Redis URL {url}: {reason}; write it as redis://[user:password@]host:port/db, rediss://... for TLS, or unix:///path/to/redis.sock"
    )]
    BadUrl { url: String, reason: String },
    #[error("cannot connect to Redis at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: redis::RedisError,
    },
}

/// Where Redis is. Cloning is cheap; every process opens its own connections from it.
#[derive(Clone)]
pub struct RedisTarget {
    client: redis::Client,
    masked: String,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RedisTarget").field(&self.masked).finish()
    }
}

impl RedisTarget {
    pub fn parse(url: &str) -> Result<RedisTarget, ConnError> {
        let masked = mask_url(url);
        let client = redis::Client::open(url).map_err(|e| ConnError::BadUrl {
            url: masked.clone(),
            reason: e.to_string(),
        })?;
        // No CLIENT SETINFO after connecting: Redis < 7.2 answers it with an error anyway,
        // and each of its two replies waits out the whole timeout while Redis is stalled, which
        // made a reconnect take 6 s before the first real command was even sent.
        let info = client.get_connection_info().clone();
        let settings = info.redis_settings().clone().set_skip_set_lib_name();
        let client = redis::Client::open(info.set_redis_settings(settings)).map_err(|e| {
            ConnError::BadUrl {
                url: masked.clone(),
                reason: e.to_string(),
            }
        })?;
        if let ConnectionAddr::TcpTls { .. } = client.get_connection_info().addr() {
            return Err(ConnError::BadUrl {
                url: masked,
                reason: "TLS (rediss://) is not supported by this build".into(),
            });
        }
        Ok(RedisTarget { client, masked })
    }

    /// The URL with any password replaced by `***`, safe for logs and error messages.
    pub fn masked(&self) -> &str {
        &self.masked
    }

    pub fn info(&self) -> &ConnectionInfo {
        self.client.get_connection_info()
    }

    /// Opens a connection with the standard timeouts.
    pub fn connect(&self) -> Result<redis::Connection, ConnError> {
        let fail = |source| ConnError::Connect {
            url: self.masked.clone(),
            source,
        };
        let con = self
            .client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(fail)?;
        con.set_read_timeout(Some(IO_TIMEOUT)).map_err(fail)?;
        con.set_write_timeout(Some(IO_TIMEOUT)).map_err(fail)?;
        Ok(con)
    }
}

/// Replaces the password of a Redis URL with `***`: the userinfo password, and the `pass`
/// query parameter that unix socket URLs (`unix:///path?pass=...`) carry it in. Text that
/// does not parse as a URL is masked from the last `:` before an `@`, so a typo never leaks a
/// password either.
pub fn mask_url(url: &str) -> String {
    if let Some(mut parsed) = redis::parse_redis_url(url) {
        if parsed.password().is_some() {
            let _ = parsed.set_password(Some("***"));
        }
        if parsed.query_pairs().any(|(k, _)| k == "pass") {
            let pairs: Vec<(String, String)> = parsed
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k == "pass" {
                        "***".into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            parsed.query_pairs_mut().clear().extend_pairs(pairs);
        }
        return parsed.to_string();
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            match creds.find(':') {
                Some(colon) => format!("{}:***{}", &url[..scheme_end + 3 + colon], &url[at..]),
                None => format!("{}***{}", &url[..scheme_end + 3], &url[at..]),
            }
        }
        _ => url.to_string(),
    }
}

/// Runs `f` (a Redis call) with the signals this crate's processes handle blocked in the
/// calling thread, and delivers whatever arrived meanwhile afterwards. A read on a socket with
/// a timeout is never restarted after a signal handler: without this, a SIGCHLD (a horse or a
/// worker exiting) arriving mid-call failed the call with EINTR and lost its reply, and
/// rq-supervisor deferred crash cleanups for it.
pub fn uninterrupted<T>(f: impl FnOnce() -> T) -> T {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let mut set = SigSet::empty();
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGCHLD,
        Signal::SIGHUP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
    ] {
        set.add(sig);
    }
    let mut old = SigSet::empty();
    let blocked = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old)).is_ok();
    let out = f();
    if blocked {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    }
    out
}

/// Capped exponential backoff with full jitter: each wait is random in
/// `[base * 2^n / 2, base * 2^n]`, never above `cap`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = exp / 2;
        half + half.mul_f64(fastrand::f64())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url("redis://user:s3cret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(mask_url("redis://:s3cret@host/1"), "redis://:***@host/1");
        assert_eq!(mask_url("redis://host:6379"), "redis://host:6379");
        assert!(!mask_url("redis://u:p@ss:word@@host").contains("word"));
        assert_eq!(
            mask_url("unix:///run/redis.sock?db=1&pass=s3cret"),
            "unix:///run/redis.sock?db=1&pass=***"
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut last_max = Duration::ZERO;
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(1));
            last_max = last_max.max(d);
        }
        assert!(last_max >= Duration::from_millis(500));
    }

    #[test]
    fn bad_url_is_named_and_masked() {
        let err = RedisTarget::parse("http://u:secret@host")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid Redis URL"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }
}
