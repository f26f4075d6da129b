//! Connections to Redis: the URL (with its password masked wherever it is shown), TLS
//! (`rediss://`, with a configurable CA and client certificate), connecting with bounded
//! timeouts, explanations for the errors an operator must act on, and capped, jittered backoff
//! for reconnecting.

use std::path::PathBuf;
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo};

pub mod sentinel;

pub use sentinel::SentinelAuth;
use sentinel::Sentinels;

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
    #[error(
        "invalid Sentinel URL {url}: {reason}; write it as redis+sentinel://[user:password@]host:port[,host:port...]/MASTER_NAME[/DB], or rediss+sentinel://... for TLS"
    )]
    BadSentinelUrl { url: String, reason: String },
    #[error("cannot connect to Redis at {url}: {source}{}", hint(source))]
    Connect {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    /// No Sentinel named a master that could be connected to and said `ROLE master`.
    #[error(
        "cannot reach the Redis master {master:?} of {url} through its Sentinels: {tried}{}",
        if *sentinels_down { "; check that the Sentinels are running and that the URL lists them" } else { "; a failover may be under way (retrying)" }
    )]
    NoMaster {
        url: String,
        master: String,
        /// No Sentinel answered at all (as opposed to naming a master that was not there
        /// or not a master yet, which a failover in progress explains).
        sentinels_down: bool,
        tried: String,
    },
    #[error("{0}")]
    Tls(String),
}

/// Where the TLS files come from: a path and the setting that named it, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFile {
    pub path: PathBuf,
    /// `[redis] tls_ca_file` or `$RQ_REDIS_TLS_CA_FILE`, as the user wrote it.
    pub setting: String,
}

/// The TLS files to use for `rediss://`: the CA that signed the server's certificate (the
/// system's roots when absent) and an optional client certificate and key for servers that
/// require them (`tls-auth-clients yes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: Option<TlsFile>,
    pub cert: Option<TlsFile>,
    pub key: Option<TlsFile>,
}

impl TlsPaths {
    /// Reads the files. Errors name the setting, the path and the fix.
    pub fn read(&self) -> Result<TlsMaterial, ConnError> {
        let read = |f: &Option<TlsFile>| -> Result<Option<Vec<u8>>, ConnError> {
            let Some(f) = f else { return Ok(None) };
            std::fs::read(&f.path).map(Some).map_err(|e| {
                ConnError::Tls(format!(
                    "cannot read {} {}: {e}; fix the path or the file's permissions",
                    f.setting,
                    f.path.display()
                ))
            })
        };
        if self.cert.is_some() != self.key.is_some() {
            let (set, missing) = if self.cert.is_some() {
                (
                    "a client certificate",
                    "its key (tls_key_file / $RQ_REDIS_TLS_KEY_FILE)",
                )
            } else {
                (
                    "a client key",
                    "its certificate (tls_cert_file / $RQ_REDIS_TLS_CERT_FILE)",
                )
            };
            return Err(ConnError::Tls(format!(
                "{set} is configured without {missing}; set both, or neither"
            )));
        }
        Ok(TlsMaterial {
            ca: read(&self.ca)?,
            cert: read(&self.cert)?,
            key: read(&self.key)?,
        })
    }
}

/// The contents of the TLS files (PEM). Read once, by the process that may read them: a
/// supervisor hands them to workers that run as another user (see `launch::handoff`).
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsMaterial {
    pub ca: Option<Vec<u8>>,
    pub cert: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key's bytes.
        f.debug_struct("TlsMaterial")
            .field("ca", &self.ca.as_ref().map(Vec::len))
            .field("cert", &self.cert.as_ref().map(Vec::len))
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl TlsMaterial {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }
}

/// Where Redis is. Cloning is cheap; every process opens its own connections from it.
#[derive(Clone)]
pub struct RedisTarget {
    kind: Kind,
    masked: String,
    /// For `rediss://`: the rustls configuration of the worker's own wake-up connection
    /// ([`crate::listener`]), built from the same CA and client certificate as redis-rs's.
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// One server at a fixed address, or a master found through Sentinels at every connect.
#[derive(Clone)]
enum Kind {
    Direct(redis::Client),
    Sentinel(Sentinels),
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RedisTarget").field(&self.masked).finish()
    }
}

/// Checks a Redis URL without building a client (no TLS set-up, no certificates loaded):
/// what validating a config file needs.
pub fn check_url(url: &str) -> Result<(), ConnError> {
    if sentinel::is_sentinel_url(url) {
        return sentinel_url(url, &mask_url(url)).map(drop);
    }
    connection_info(url, &mask_url(url)).map(drop)
}

/// Parses a Sentinel URL, refusing TLS in a build without it.
fn sentinel_url(url: &str, masked: &str) -> Result<sentinel::SentinelUrl, ConnError> {
    let bad = |reason: String| ConnError::BadSentinelUrl {
        url: masked.to_string(),
        reason,
    };
    let parsed = sentinel::parse(url).map_err(bad)?;
    if parsed.tls && cfg!(not(feature = "tls")) {
        return Err(bad(
            "TLS (rediss+sentinel://) needs rq-supervisor built with its `tls` feature (on by default)".into(),
        ));
    }
    Ok(parsed)
}

/// Parses a URL into what the client needs, refusing what this project does not support.
fn connection_info(url: &str, masked: &str) -> Result<ConnectionInfo, ConnError> {
    let bad = |reason: String| ConnError::BadUrl {
        url: masked.to_string(),
        reason,
    };
    let info: ConnectionInfo =
        redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| bad(e.to_string()))?;
    // No CLIENT SETINFO after connecting: Redis < 7.2 answers it with an error anyway, and
    // each of its two replies waits out the whole timeout while Redis is stalled, which made
    // a reconnect take 6 s before the first real command was even sent.
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    let info = info.set_redis_settings(settings);
    if let ConnectionAddr::TcpTls { insecure, .. } = info.addr() {
        if *insecure {
            return Err(bad(
                "#insecure (no certificate verification) is not supported; give the CA that signed the server's certificate with [redis] tls_ca_file or $RQ_REDIS_TLS_CA_FILE".into(),
            ));
        }
        if cfg!(not(feature = "tls")) {
            return Err(bad(
                "TLS (rediss://) needs rq-supervisor built with its `tls` feature (on by default)"
                    .into(),
            ));
        }
    }
    Ok(info)
}

impl RedisTarget {
    /// A target without TLS files: `rediss://` URLs verify the server against the system's
    /// root certificates.
    pub fn parse(url: &str) -> Result<RedisTarget, ConnError> {
        RedisTarget::with_tls(url, &TlsMaterial::default())
    }

    /// A target whose `rediss://` connections use `tls`'s CA (instead of the system roots)
    /// and client certificate. TLS files with a `redis://` or unix URL are refused rather
    /// than silently unused: the operator meant the connection to be encrypted.
    pub fn with_tls(url: &str, tls: &TlsMaterial) -> Result<RedisTarget, ConnError> {
        RedisTarget::new(url, tls, &SentinelAuth::default())
    }

    /// [`RedisTarget::with_tls`], plus the Sentinels' own credentials for a Sentinel URL
    /// (refused with any other URL: they would be silently unused).
    pub fn new(
        url: &str,
        tls: &TlsMaterial,
        auth: &SentinelAuth,
    ) -> Result<RedisTarget, ConnError> {
        let masked = mask_url(url);
        if sentinel::is_sentinel_url(url) {
            return RedisTarget::sentinel(url, masked, tls, auth);
        }
        if !auth.is_empty() {
            return Err(ConnError::BadUrl {
                url: masked,
                reason: "sentinel_username / sentinel_password are set but this is not a Sentinel URL (redis+sentinel://...); remove them, or use a Sentinel URL".into(),
            });
        }
        let info = connection_info(url, &masked)?;
        let is_tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        if !is_tls && !tls.is_empty() {
            return Err(ConnError::Tls(format!(
                "TLS files are configured but the Redis URL {masked} is not a TLS URL; write rediss://... to connect with TLS, or remove the tls_* settings"
            )));
        }
        // The wake-up connection's configuration first: it validates the PEM files with
        // the clearer messages.
        #[cfg(feature = "tls")]
        let config = if is_tls {
            Some(tls::client_config(tls)?)
        } else {
            None
        };
        let client = client_for(info, tls, &masked)?;
        Ok(RedisTarget {
            kind: Kind::Direct(client),
            masked,
            #[cfg(feature = "tls")]
            tls: config,
        })
    }

    fn sentinel(
        url: &str,
        masked: String,
        tls: &TlsMaterial,
        auth: &SentinelAuth,
    ) -> Result<RedisTarget, ConnError> {
        let parsed = sentinel_url(url, &masked)?;
        if !parsed.tls && !tls.is_empty() {
            return Err(ConnError::Tls(format!(
                "TLS files are configured but the Redis URL {masked} is not a TLS URL; write rediss+sentinel://... to connect to the Sentinels and the master with TLS, or remove the tls_* settings"
            )));
        }
        #[cfg(feature = "tls")]
        let config = if parsed.tls {
            Some(tls::client_config(tls)?)
        } else {
            None
        };
        Ok(RedisTarget {
            kind: Kind::Sentinel(Sentinels::new(parsed, auth.clone(), tls.clone())),
            masked,
            #[cfg(feature = "tls")]
            tls: config,
        })
    }

    /// The rustls configuration for `rediss://`, `None` for plain TCP and unix sockets.
    #[cfg(feature = "tls")]
    pub fn tls_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.clone()
    }

    /// The URL with any password replaced by `***`, safe for logs and error messages.
    pub fn masked(&self) -> &str {
        &self.masked
    }

    /// The Sentinels, for a Sentinel URL: every connection then starts with a discovery.
    pub fn sentinels(&self) -> Option<&Sentinels> {
        match &self.kind {
            Kind::Sentinel(s) => Some(s),
            Kind::Direct(_) => None,
        }
    }

    /// Whether the master is found through Sentinels (so a `READONLY` means a failover).
    pub fn is_sentinel(&self) -> bool {
        self.sentinels().is_some()
    }

    /// Where a direct target connects; `None` for a Sentinel target, whose address is known
    /// only after a discovery.
    pub fn info(&self) -> Option<&ConnectionInfo> {
        match &self.kind {
            Kind::Direct(c) => Some(c.get_connection_info()),
            Kind::Sentinel(_) => None,
        }
    }

    /// Opens a connection with the standard timeouts; for a Sentinel target, to the master
    /// the Sentinels name, checked with `ROLE`.
    pub fn connect(&self) -> Result<redis::Connection, ConnError> {
        self.connect_master().map(|(con, _)| con)
    }

    /// [`RedisTarget::connect`], and for a Sentinel target the master's address (`host:port`)
    /// it reached: a change of address between two connections is a failover.
    pub fn connect_master(&self) -> Result<(redis::Connection, Option<String>), ConnError> {
        let fail = |source| ConnError::Connect {
            url: self.masked.clone(),
            source,
        };
        match &self.kind {
            Kind::Direct(client) => open(client).map(|c| (c, None)).map_err(fail),
            Kind::Sentinel(s) => s.discover(&self.masked, |client| {
                let mut con = open(client).map_err(|e| format!("{e}{}", hint(&e)))?;
                match sentinel::role(&mut con) {
                    Ok(role) if role == "master" => {
                        let addr = match client.get_connection_info().addr() {
                            ConnectionAddr::Tcp(h, p)
                            | ConnectionAddr::TcpTls {
                                host: h, port: p, ..
                            } => {
                                format!("{h}:{p}")
                            }
                            other => format!("{other:?}"),
                        };
                        Ok((con, Some(addr)))
                    }
                    Ok(role) => Err(format!("answers ROLE {role}, not master")),
                    Err(e) => Err(format!("ROLE failed: {e}{}", hint(&e))),
                }
            }),
        }
    }
}

/// A connection from `client` with the standard timeouts, checked with a PING.
fn open(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let mut con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    // Nothing is sent while connecting (no AUTH without a password, no CLIENT SETINFO),
    // and TLS shakes hands on the first write: one PING makes a refused certificate or a
    // server that does not speak Redis a connect error, reported as such.
    redis::cmd("PING").exec(&mut con)?;
    Ok(con)
}

/// A redis-rs client for `info`, with `tls`'s CA and client certificate for a TLS address.
/// `label` (a masked URL or an address) names it in errors.
fn client_for(
    info: ConnectionInfo,
    tls: &TlsMaterial,
    label: &str,
) -> Result<redis::Client, ConnError> {
    if !matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
        return redis::Client::open(info).map_err(|e| ConnError::BadUrl {
            url: label.to_string(),
            reason: e.to_string(),
        });
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = tls;
        unreachable!("TLS addresses are refused when parsing without the tls feature")
    }
    #[cfg(feature = "tls")]
    redis::Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls: match (&tls.cert, &tls.key) {
                (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
                _ => None,
            },
            root_cert: tls.ca.clone(),
        },
    )
    .map_err(|e| ConnError::Tls(format!("TLS settings for {label}: {e}")))
}

/// What to do about a Redis error the operator must fix: a missing ACL permission, a
/// read-only replica, a full server, a key of the wrong type, a certificate problem. Empty
/// for errors that reconnecting or retrying cures.
pub fn hint(e: &redis::RedisError) -> String {
    if let Some(h) = unreachable_hint(e) {
        return h.to_string();
    }
    hint_text(e.code().unwrap_or_default(), &e.to_string())
}

/// The system error code under a Redis error, when it is an I/O failure.
pub fn io_errno(e: &redis::RedisError) -> Option<i32> {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(std::io::Error::raw_os_error)
        // redis-rs does not always expose the I/O error as the source; its text has the code.
        .or_else(|| e.is_io_error().then(|| errno_in(&e.to_string())).flatten())
}

/// Whether the error means Redis could not be reached (or this process could not even open
/// a socket): what waiting cures, unlike a refusal (a wrong password, a certificate, an ACL).
pub fn is_unreachable(e: &redis::RedisError) -> bool {
    io_errno(e).is_some() || e.is_timeout() || e.is_connection_refusal()
}

/// The truth about an unreachable Redis: a file limit is not a Redis that is down.
fn unreachable_hint(e: &redis::RedisError) -> Option<&'static str> {
    match io_errno(e) {
        Some(errno) => errno_hint(errno),
        None if e.is_connection_refusal() || e.is_timeout() => Some(
            "; check that Redis is running and that the URL (--url, $RQ_REDIS_URL or [redis] url) is right",
        ),
        None => None,
    }
}

/// What a failed socket call's errno says about the connection.
fn errno_hint(errno: i32) -> Option<&'static str> {
    use nix::libc;
    match Some(errno) {
        Some(libc::EMFILE) => Some(
            "; this process's open-file limit is reached, so it cannot open a socket: raise RLIMIT_NOFILE (ulimit -n, LimitNOFILE= in the systemd unit); Redis itself may be fine",
        ),
        Some(libc::ENFILE) => Some(
            "; the system's file table is full, so no socket can be opened: raise fs.file-max, or find what holds so many files; Redis itself may be fine",
        ),
        Some(libc::ENOMEM | libc::ENOBUFS) => {
            Some("; the kernel has no memory for a socket; Redis itself may be fine")
        }
        Some(libc::ECONNREFUSED | libc::ENOENT | libc::EHOSTUNREACH | libc::ENETUNREACH) => Some(
            "; check that Redis is running and that the URL (--url, $RQ_REDIS_URL or [redis] url) is right",
        ),
        _ => None,
    }
}

/// The errno in an I/O error's text (`... (os error 24)`), for errors known only as text.
fn errno_in(text: &str) -> Option<i32> {
    let (_, rest) = text.rsplit_once("(os error ")?;
    rest.split_once(')')?.0.parse().ok()
}

/// [`hint`] for an error known only as text (the wake-up connection's own client), with the
/// server's error code if known (empty otherwise).
pub fn hint_text(code: &str, text: &str) -> String {
    if let Some(h) = errno_in(text).and_then(errno_hint) {
        return h.to_string();
    }
    if code == "NOPERM"
        || text.contains("NOPERM")
        || text.contains("can't run this command")
        || text.contains("can't access at least one of the")
    {
        let what = noperm_subject(text);
        return format!(
            "; the Redis user lacks a permission{what}: grant it (e.g. ACL SETUSER <user> {}), see the minimum ACL rules in docs/compatibility.md",
            acl_rule(text)
        );
    }
    if code == "READONLY" || text.contains("READONLY") {
        return "; this Redis is a read-only replica: point the URL at the primary (writes resume by themselves once it accepts them)".into();
    }
    if code == "OOM" || text.contains("OOM command not allowed") {
        return "; Redis is out of memory (maxmemory reached with a noeviction policy): raise maxmemory or free memory; the worker retries until Redis accepts writes again".into();
    }
    if code == "WRONGTYPE" || text.contains("WRONGTYPE") {
        return "; a key holds the wrong kind of value: delete or rename the key named above"
            .into();
    }
    if code == "WRONGPASS"
        || text.contains("WRONGPASS")
        || text.contains("NOAUTH")
        || text.contains("AuthenticationFailed")
    {
        return "; check the user and password in the Redis URL".into();
    }
    let lower = text.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("unknownissuer") {
        return "; the server's certificate was not accepted: set [redis] tls_ca_file (or $RQ_REDIS_TLS_CA_FILE) to the CA that signed it, and use the host name or IP address the certificate names".into();
    }
    String::new()
}

/// `" ('evalsha' command)"` or `" (key 'x')"` from a NOPERM message, for the hint.
fn noperm_subject(text: &str) -> String {
    for (marker, kind) in [
        ("to run the '", "command"),
        ("to access the '", "key"),
        ("to access one of the channels", "channel"),
    ] {
        if let Some(i) = text.find(marker) {
            if kind == "channel" {
                return " (a channel it subscribes to)".into();
            }
            let rest = &text[i + marker.len()..];
            let name = rest.split('\'').next().unwrap_or_default();
            return format!(" (the '{name}' {kind})");
        }
    }
    String::new()
}

/// The ACL rule that would allow what a NOPERM message says was refused.
fn acl_rule(text: &str) -> String {
    if let Some(i) = text.find("to run the '") {
        let rest = &text[i + "to run the '".len()..];
        let name = rest.split('\'').next().unwrap_or_default();
        return format!("+{}", name.to_ascii_lowercase());
    }
    if text.contains("to access the '") {
        return "~rq:*".into();
    }
    if text.contains("channels") {
        return "&rq:pubsub:* &__redis__:invalidate".into();
    }
    "+<command>".into()
}

/// Replaces the password of a Redis URL with `***`: the userinfo password, and the `pass`
/// query parameter that unix socket URLs (`unix:///path?pass=...`) carry it in. Text that
/// does not parse as a URL is masked from the last `:` before an `@`, so a typo never leaks a
/// password either.
pub fn mask_url(url: &str) -> String {
    if let Some(masked) = sentinel::mask(url) {
        return masked;
    }
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

#[cfg(feature = "tls")]
mod tls {
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    use super::{ConnError, TlsMaterial};

    /// The ring provider, installed as the process default for redis-rs (which builds its
    /// rustls configuration with the default provider) unless the program installed one.
    pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
    }

    /// Builds the configuration the wake-up connection uses; also validates the PEM files
    /// at start, so a wrong file is reported before any connection is tried.
    pub fn client_config(m: &TlsMaterial) -> Result<Arc<rustls::ClientConfig>, ConnError> {
        let mut roots = rustls::RootCertStore::empty();
        match &m.ca {
            Some(pem) => {
                let certs = CertificateDer::pem_slice_iter(pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ConnError::Tls(format!("the TLS CA file is not PEM certificates: {e}; give the CA certificate(s) in PEM form")))?;
                if certs.is_empty() {
                    return Err(ConnError::Tls("the TLS CA file holds no certificate; give the CA certificate(s) in PEM form (-----BEGIN CERTIFICATE-----)".into()));
                }
                for c in certs {
                    roots.add(c).map_err(|e| {
                        ConnError::Tls(format!(
                            "the TLS CA file holds an unusable certificate: {e}"
                        ))
                    })?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    let _ = roots.add(c);
                }
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConnError::Tls(format!("TLS setup: {e}")))?
            .with_root_certificates(roots);
        let config = match (&m.cert, &m.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        ConnError::Tls(format!("the TLS client certificate file is not PEM: {e}"))
                    })?;
                if chain.is_empty() {
                    return Err(ConnError::Tls(
                        "the TLS client certificate file holds no certificate".into(),
                    ));
                }
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
                    ConnError::Tls(format!("the TLS client key file holds no usable private key: {e}; give an unencrypted PEM key"))
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    ConnError::Tls(format!(
                        "the TLS client certificate and key do not fit together: {e}"
                    ))
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
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
    fn a_file_limit_is_not_called_a_redis_that_is_down() {
        use nix::libc;
        let io = |errno| redis::RedisError::from(std::io::Error::from_raw_os_error(errno));
        for errno in [libc::EMFILE, libc::ENFILE] {
            let h = hint(&io(errno));
            assert!(h.contains("Redis itself may be fine"), "{errno}: {h}");
            assert!(!h.contains("check that Redis is running"), "{errno}: {h}");
            assert!(is_unreachable(&io(errno)), "waiting cures it");
        }
        assert!(hint(&io(libc::EMFILE)).contains("RLIMIT_NOFILE"));
        for errno in [libc::ECONNREFUSED, libc::ENOENT] {
            assert!(hint(&io(errno)).contains("check that Redis is running"));
        }
        // The wake-up connection's errors are known as text only.
        let text = io(libc::EMFILE).to_string();
        assert!(hint_text("", &text).contains("RLIMIT_NOFILE"), "{text}");
        assert_eq!(hint_text("", "Too many (os error x)"), "");
    }

    #[test]
    fn sentinel_urls_are_checked_with_their_own_fix() {
        let err = |u: &str| RedisTarget::parse(u).unwrap_err().to_string();
        for (url, problem) in [
            ("redis+sentinel://:s3cret@s1:26379", "names no master"),
            (
                "redis+sentinel://:s3cret@/mymaster",
                "names no Sentinel host",
            ),
            ("redis+sentinel://:s3cret@s1:2637x/mymaster", "bad port"),
        ] {
            let e = err(url);
            assert!(e.contains("invalid Sentinel URL"), "{e}");
            assert!(e.contains(problem), "{url}: {e}");
            assert!(
                e.contains("redis+sentinel://[user:password@]host:port"),
                "{e}"
            );
            assert!(!e.contains("s3cret"), "{e}");
            assert!(check_url(url).is_err());
        }
        let t = RedisTarget::parse("redis+sentinel://:s3cret@a:1,b:2/m").unwrap();
        assert!(t.is_sentinel() && t.info().is_none());
        assert_eq!(t.masked(), "redis+sentinel://:***@a:1,b:2/m");
        assert!(check_url("redis+sentinel://a:1,b:2/m/3").is_ok());
        let auth = SentinelAuth {
            username: None,
            password: Some("x".into()),
        };
        let e = RedisTarget::new("redis://h/0", &TlsMaterial::default(), &auth)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a Sentinel URL"), "{e}");
        assert!(RedisTarget::new("redis+sentinel://h/m", &TlsMaterial::default(), &auth).is_ok());
    }

    #[test]
    fn no_sentinel_answering_is_an_outage_that_waiting_cures() {
        // Nothing listens on port 1 of loopback: refused at once.
        let t = RedisTarget::parse("redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster").unwrap();
        let Err(e) = t.connect() else {
            panic!("connected with no Sentinel running")
        };
        let text = e.to_string();
        assert!(text.contains("\"mymaster\""), "{text}");
        assert!(
            text.contains("Sentinel 127.0.0.1:1") && text.contains("Sentinel 127.0.0.1:2"),
            "{text}"
        );
        let e = crate::store::StoreError::from(e);
        assert!(e.is_sentinel_outage() && e.is_unreachable() && !e.is_refusal());
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
