//! Redis Sentinel: `redis+sentinel://` URLs, and finding the master through the Sentinels.
//!
//! `redis+sentinel://[user:password@]host:port[,host:port...]/MASTER_NAME[/DB]` names the
//! Sentinels and the master they watch; `rediss+sentinel://` speaks TLS to both, with the
//! same CA and client certificate as `rediss://`. The user and password are the master's
//! (the data node's, as in a `redis://` URL); Sentinels with credentials of their own get
//! them from `[redis] sentinel_username` / `sentinel_password` (or `$RQ_REDIS_SENTINEL_*`).
//!
//! Every connection to a Sentinel target starts with a discovery ([`Sentinels::discover`]):
//! each Sentinel in turn, with the standard connect and read timeouts, is asked `SENTINEL
//! get-master-addr-by-name`; the address it names is connected to and must answer `ROLE`
//! with `master`, or the next Sentinel is asked (its view may be newer). There is no
//! fall-back to the last master seen: an old master cut off from the Sentinels still says
//! `master`, and what it accepts is thrown away when it rejoins as a replica.
//!
//! Why not redis-rs's `sentinel` feature: its blocking client opens Sentinel connections
//! without a connect or read timeout (a Sentinel that stops answering would hang the
//! single-threaded worker, and with it its signals and heartbeats), checks `ROLE` on a
//! connection of its own and then opens another one for the caller, and cannot open the
//! worker's hand-made wake-up socket ([`crate::listener`]). The discovery is one command per
//! Sentinel on top of `redis::Client`, so it is done here.

use std::sync::{Arc, Mutex};

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use super::{CONNECT_TIMEOUT, ConnError, IO_TIMEOUT, TlsMaterial};

/// The port of a Sentinel written without one, Redis's own default for Sentinels.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// Whether `url` is a Sentinel URL (`redis+sentinel://` or `rediss+sentinel://`).
pub fn is_sentinel_url(url: &str) -> bool {
    let lower = url.get(..18).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("redis+sentinel://") || lower.starts_with("rediss+sentinel://")
}

/// The Sentinels' own credentials (`[redis] sentinel_username` / `sentinel_password`), for
/// Sentinels started with `requirepass` or an ACL user; empty when they need none.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SentinelAuth {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for SentinelAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("SentinelAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl SentinelAuth {
    pub fn is_empty(&self) -> bool {
        self.username.is_none() && self.password.is_none()
    }
}

/// A parsed Sentinel URL.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    /// `rediss+sentinel://`: TLS to the Sentinels and to the master.
    pub tls: bool,
    /// The Sentinels, in the order they are asked.
    pub nodes: Vec<(String, u16)>,
    /// The name the Sentinels monitor the master under (`sentinel monitor NAME ...`).
    pub master: String,
    pub db: i64,
    /// The master's credentials.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for SentinelUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelUrl")
            .field("tls", &self.tls)
            .field("nodes", &self.nodes)
            .field("master", &self.master)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The userinfo, the hosts and the path of a Sentinel URL, split but not yet checked.
struct Parts<'a> {
    scheme: &'a str,
    userinfo: Option<&'a str>,
    hosts: &'a str,
    path: &'a str,
}

fn split(url: &str) -> Result<Parts<'_>, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "it has no scheme".to_string())?;
    // A password with '/' in it must be percent-encoded, as in any URL: the authority ends
    // at the first '/'.
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    Ok(Parts {
        scheme,
        userinfo,
        hosts,
        path,
    })
}

/// Parses a Sentinel URL; the error says what is wrong (the caller adds the URL and the fix).
pub fn parse(url: &str) -> Result<SentinelUrl, String> {
    let p = split(url)?;
    let tls = match p.scheme.to_ascii_lowercase().as_str() {
        "redis+sentinel" => false,
        "rediss+sentinel" => true,
        other => return Err(format!("{other}:// is not a Sentinel scheme")),
    };
    if p.path.contains(['?', '#']) {
        return Err("query parameters and fragments are not supported".into());
    }
    let (username, password) = match p.userinfo {
        None => (None, None),
        Some(info) => {
            let (user, pass) = match info.split_once(':') {
                Some((u, pw)) => (u, Some(pw)),
                None => (info, None),
            };
            let user = percent_decode(user)?;
            (
                (!user.is_empty()).then_some(user),
                pass.map(percent_decode).transpose()?,
            )
        }
    };
    let nodes = p
        .hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(node)
        .collect::<Result<Vec<_>, _>>()?;
    if nodes.is_empty() {
        return Err("it names no Sentinel host".into());
    }
    let mut segments = p.path.trim_start_matches('/').split('/');
    let master = percent_decode(segments.next().unwrap_or_default())?;
    if master.is_empty() {
        return Err("it names no master: add the name the Sentinels monitor it under (sentinel monitor NAME ...) as the path".into());
    }
    let db =
        match segments.next() {
            None | Some("") => 0,
            Some(d) => d.parse::<i64>().ok().filter(|d| *d >= 0).ok_or_else(|| {
                format!("the database {d:?} after the master name is not a number")
            })?,
        };
    if let Some(extra) = segments.find(|s| !s.is_empty()) {
        return Err(format!(
            "{extra:?} follows the database; the path is /MASTER_NAME[/DB]"
        ));
    }
    Ok(SentinelUrl {
        tls,
        nodes,
        master,
        db,
        username,
        password,
    })
}

/// One `host[:port]` (IPv6 in brackets).
fn node(text: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("the Sentinel address {text:?} has an unclosed '['"))?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("the Sentinel address {text:?} is not host:port")),
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(format!("the Sentinel address {text:?} has no host"));
    }
    let port = match port {
        None => DEFAULT_SENTINEL_PORT,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
            format!("the Sentinel address {text:?} has a bad port {p:?} (1-65535)")
        })?,
    };
    Ok((host.to_string(), port))
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "a '%' is not followed by two hex digits".to_string())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a percent-encoded part is not UTF-8".to_string())
}

/// The URL with the password replaced by `***`; `None` if it is not a Sentinel URL at all.
pub fn mask(url: &str) -> Option<String> {
    if !is_sentinel_url(url) {
        return None;
    }
    let p = split(url).ok()?;
    let userinfo = match p.userinfo {
        None => String::new(),
        Some(info) => match info.split_once(':') {
            Some((user, _)) => format!("{user}:***@"),
            None => format!("{info}@"),
        },
    };
    Some(format!("{}://{userinfo}{}{}", p.scheme, p.hosts, p.path))
}

/// The Sentinels of one target, and what the discoveries of this process have reported.
#[derive(Clone)]
pub struct Sentinels {
    url: SentinelUrl,
    auth: SentinelAuth,
    tls: TlsMaterial,
    /// Shared by every clone of the target in the process (the worker's store and its
    /// wake-up connection; the supervisor's threads), so an outage is reported once.
    outage: Arc<Mutex<Outage>>,
}

/// What the discoveries of this process share: whether the current streak of discoveries
/// in which no Sentinel answered has been reported, and the master a `+switch-master` said
/// was replaced.
#[derive(Default)]
struct Outage {
    reported: bool,
    demoted: Option<((String, u16), std::time::Instant)>,
}

/// How long an address announced as replaced is skipped, should a Sentinel not have the
/// new configuration yet: the old master still answers `ROLE master` until it is demoted,
/// about ten seconds after the promotion.
const DEMOTED_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// One address tried in a discovery, and why it did not give a master.
struct Tried {
    what: String,
    why: String,
}

impl Sentinels {
    pub fn new(url: SentinelUrl, auth: SentinelAuth, tls: TlsMaterial) -> Sentinels {
        Sentinels {
            url,
            auth,
            tls,
            outage: Arc::default(),
        }
    }

    pub fn url(&self) -> &SentinelUrl {
        &self.url
    }

    pub fn auth(&self) -> &SentinelAuth {
        &self.auth
    }

    /// Reads a `+switch-master` announcement (`NAME OLD_IP OLD_PORT NEW_IP NEW_PORT`): true
    /// if it is about this target's master, whose old address the discoveries then skip for
    /// a while.
    pub fn switched(&self, payload: &[u8]) -> bool {
        let text = String::from_utf8_lossy(payload);
        let words: Vec<&str> = text.split_whitespace().collect();
        let [name, old_ip, old_port, _, _] = words[..] else {
            return false;
        };
        if name != self.url.master {
            return false;
        }
        let Ok(old_port) = old_port.parse::<u16>() else {
            return false;
        };
        let mut o = self.outage.lock().unwrap_or_else(|e| e.into_inner());
        o.demoted = Some(((old_ip.to_string(), old_port), std::time::Instant::now()));
        true
    }

    /// Whether `addr` was announced as replaced lately.
    fn is_demoted(&self, addr: &(String, u16)) -> bool {
        let o = self.outage.lock().unwrap_or_else(|e| e.into_inner());
        o.demoted
            .as_ref()
            .is_some_and(|(a, at)| a == addr && at.elapsed() < DEMOTED_FOR)
    }

    /// Finds the master: asks each Sentinel in turn for its address and hands a client for
    /// it to `open`, which connects and checks `ROLE` (the caller's own connection, so the
    /// role checked is the role of the connection it keeps). The first `open` that succeeds
    /// wins; an address that failed is not tried again in the same discovery.
    pub fn discover<T>(
        &self,
        masked: &str,
        mut open: impl FnMut(&redis::Client) -> Result<T, String>,
    ) -> Result<T, ConnError> {
        let mut tried: Vec<Tried> = Vec::new();
        let mut failed_masters: Vec<(String, u16)> = Vec::new();
        let mut answered = false;
        for (host, port) in &self.url.nodes {
            let sentinel = format!("Sentinel {}", show(host, *port));
            let addr = match self.ask(host, *port) {
                Ok(Some(addr)) => addr,
                Ok(None) => {
                    answered = true;
                    tried.push(Tried {
                        what: sentinel,
                        why: format!("does not know a master named {:?}", self.url.master),
                    });
                    continue;
                }
                Err(why) => {
                    tried.push(Tried {
                        what: sentinel,
                        why,
                    });
                    continue;
                }
            };
            answered = true;
            if failed_masters.contains(&addr) {
                continue;
            }
            if self.is_demoted(&addr) {
                tried.push(Tried {
                    what: format!("master {} (named by {sentinel})", show(&addr.0, addr.1)),
                    why: "was announced replaced by +switch-master; this Sentinel has not caught up yet".into(),
                });
                failed_masters.push(addr);
                continue;
            }
            let what = format!("master {} (named by {sentinel})", show(&addr.0, addr.1));
            let opened = self
                .master_client(&addr.0, addr.1)
                .map_err(|e| e.to_string())
                .and_then(|client| open(&client));
            match opened {
                Ok(v) => {
                    self.recovered(&addr);
                    return Ok(v);
                }
                Err(why) => {
                    failed_masters.push(addr);
                    tried.push(Tried { what, why });
                }
            }
        }
        if !answered {
            self.report_outage(&tried);
        }
        Err(ConnError::NoMaster {
            url: masked.to_string(),
            master: self.url.master.clone(),
            sentinels_down: !answered,
            tried: tried
                .iter()
                .map(|t| format!("{}: {}", t.what, t.why))
                .collect::<Vec<_>>()
                .join("; "),
        })
    }

    /// One line per streak, loud: the workers keep the connections they have, but cannot
    /// open a new one (after a failover, or a lost connection) until a Sentinel answers.
    fn report_outage(&self, tried: &[Tried]) {
        let mut o = self.outage.lock().unwrap_or_else(|e| e.into_inner());
        if o.reported {
            return;
        }
        o.reported = true;
        let list = tried
            .iter()
            .map(|t| format!("{} ({})", t.what, t.why))
            .collect::<Vec<_>>()
            .join(", ");
        log::error!(
            "cannot discover the Redis master {:?}: no Sentinel answers: {list}; open connections are kept, new ones are retried with backoff until a Sentinel answers",
            self.url.master
        );
    }

    fn recovered(&self, addr: &(String, u16)) {
        let mut o = self.outage.lock().unwrap_or_else(|e| e.into_inner());
        if std::mem::take(&mut o.reported) {
            log::info!(
                "the Sentinels answer again: the Redis master {:?} is at {}",
                self.url.master,
                show(&addr.0, addr.1)
            );
        }
    }

    /// `SENTINEL get-master-addr-by-name` on one Sentinel: the address, `None` if it does
    /// not know the name, or why it could not be asked.
    fn ask(&self, host: &str, port: u16) -> Result<Option<(String, u16)>, String> {
        let mut settings = RedisConnectionInfo::default().set_skip_set_lib_name();
        if let Some(u) = &self.auth.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &self.auth.password {
            settings = settings.set_password(p);
        }
        let client = self
            .client(host, port, settings)
            .map_err(|e| e.to_string())?;
        let mut con = client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(|e| e.to_string())?;
        con.set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| con.set_write_timeout(Some(IO_TIMEOUT)))
            .map_err(|e| e.to_string())?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.url.master)
            .query::<Option<(String, u16)>>(&mut con)
            .map_err(|e| e.to_string())
    }

    /// A client for the master at `host:port`, with the URL's credentials and database.
    fn master_client(&self, host: &str, port: u16) -> Result<redis::Client, ConnError> {
        let mut settings = RedisConnectionInfo::default()
            .set_skip_set_lib_name()
            .set_db(self.url.db);
        if let Some(u) = &self.url.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &self.url.password {
            settings = settings.set_password(p);
        }
        self.client(host, port, settings)
    }

    fn client(
        &self,
        host: &str,
        port: u16,
        settings: RedisConnectionInfo,
    ) -> Result<redis::Client, ConnError> {
        let addr = if self.url.tls {
            ConnectionAddr::TcpTls {
                host: host.to_string(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_string(), port)
        };
        let info: ConnectionInfo = addr
            .into_connection_info()
            .map_err(|e| ConnError::Tls(e.to_string()))?
            .set_redis_settings(settings);
        super::client_for(info, &self.tls, &show(host, port))
    }
}

/// `host:port`, with brackets around an IPv6 address.
fn show(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The role a server reports in the first element of its `ROLE` reply (`master`, `slave`,
/// `sentinel`).
pub fn role(con: &mut redis::Connection) -> redis::RedisResult<String> {
    let reply: Vec<redis::Value> = redis::cmd("ROLE").query(con)?;
    match reply.into_iter().next() {
        Some(v) => Ok(redis::from_redis_value(v)?),
        None => Err(redis::RedisError::from((
            redis::ErrorKind::Parse,
            "empty ROLE reply",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_master_db_and_credentials() {
        let u =
            parse("redis+sentinel://app:p%40ss@s1:26379,s2:26380,[::1]:26381/mymaster/2").unwrap();
        assert!(!u.tls);
        assert_eq!(
            u.nodes,
            vec![
                ("s1".to_string(), 26379),
                ("s2".to_string(), 26380),
                ("::1".to_string(), 26381)
            ]
        );
        assert_eq!(u.master, "mymaster");
        assert_eq!(u.db, 2);
        assert_eq!(u.username.as_deref(), Some("app"));
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        let u = parse("rediss+sentinel://:pw@s1/m").unwrap();
        assert!(u.tls);
        assert_eq!(u.nodes, vec![("s1".to_string(), DEFAULT_SENTINEL_PORT)]);
        assert_eq!(
            (u.username, u.password.as_deref(), u.db),
            (None, Some("pw"), 0)
        );
        assert!(!format!("{:?}", parse("redis+sentinel://:pw@s1/m").unwrap()).contains("pw"));
    }

    #[test]
    fn bad_sentinel_urls_say_what_is_wrong() {
        let err = |u: &str| parse(u).unwrap_err();
        assert!(err("redis+sentinel://s1:26379").contains("names no master"));
        assert!(err("redis+sentinel://s1:26379/").contains("names no master"));
        assert!(err("redis+sentinel:///m").contains("no Sentinel host"));
        assert!(err("redis+sentinel://:pw@/m").contains("no Sentinel host"));
        assert!(err("redis+sentinel://s1:abc/m").contains("bad port \"abc\""));
        assert!(err("redis+sentinel://s1:0/m").contains("bad port"));
        assert!(err("redis+sentinel://s1:99999/m").contains("bad port"));
        assert!(err("redis+sentinel://s1,:1/m").contains("has no host"));
        assert!(err("redis+sentinel://s1/m/x").contains("not a number"));
        assert!(err("redis+sentinel://s1/m/1/2").contains("/MASTER_NAME[/DB]"));
        assert!(err("redis+sentinel://s1/m?db=1").contains("query"));
    }

    #[test]
    fn masks_the_password_only() {
        assert_eq!(
            mask("redis+sentinel://u:s3cret@a:1,b:2/m/0").as_deref(),
            Some("redis+sentinel://u:***@a:1,b:2/m/0")
        );
        assert_eq!(
            mask("rediss+sentinel://a:1/m").as_deref(),
            Some("rediss+sentinel://a:1/m")
        );
        assert_eq!(mask("redis://u:p@h/0"), None);
        assert!(is_sentinel_url("REDIS+SENTINEL://a/m"));
        assert!(!is_sentinel_url("redis://a/m"));
    }
}
