//! The worker's wake-up line: a second Redis connection on which the server pushes
//! (a) a notice whenever one of the worker's queue lists changes and (b) commands published to
//! `rq:pubsub:<worker>`.
//!
//! Why not a blocking `BLMOVE`/`BLPOP` like Python RQ: a single-threaded worker blocked in a
//! Redis reply cannot react to a signal (reads restart under `SA_RESTART`), and a blocking pop
//! that is abandoned or times out client-side can lose the popped id. Instead the worker
//! sleeps in `poll(2)` on this socket together with its signal pipe and horse pipes, and takes
//! jobs with one atomic script ([`crate::protocol::scripts::CLAIM`]). The notices come from
//! `CLIENT TRACKING ... BCAST PREFIX rq:queue:<name>` redirected to this same connection,
//! which needs Redis 6 and no server configuration.
//!
//! This is a deliberately small RESP2 client: `redis-rs` buffers replies internally, so its
//! socket cannot be polled reliably, and this connection only ever reads pushes.
//!
//! Over TLS (`rediss://`) it is a rustls client on the same TCP socket, and the worker still
//! polls that socket. TLS decrypts whole records, so bytes read from the socket may leave
//! plaintext waiting inside rustls that no `poll(2)` would report; [`Listener::drain`]
//! therefore keeps reading (socket -> rustls -> plaintext) until the socket says
//! `WouldBlock` *and* rustls holds no plaintext, so nothing is left behind when the worker
//! goes back to sleep in `poll(2)`.

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use redis::ConnectionAddr;

use crate::conn::RedisTarget;

/// Channel Redis publishes key invalidations on when tracking is redirected (RESP2).
const INVALIDATE_CHANNEL: &str = "__redis__:invalidate";
/// The channel Sentinels announce a new master on: `NAME OLD_IP OLD_PORT NEW_IP NEW_PORT`.
pub const SWITCH_MASTER_CHANNEL: &str = "+switch-master";

/// Something the server pushed.
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    /// One of the watched key prefixes changed (a queue got or lost a job, or suspension
    /// changed). Carries the key names; empty after a FLUSHALL.
    Changed(Vec<String>),
    /// A message on one of the subscribed command channels.
    Message { channel: String, payload: Vec<u8> },
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    #[cfg(feature = "tls")]
    Tls(Box<TlsStream>),
}

impl Stream {
    fn as_io(&mut self) -> &mut dyn ReadWrite {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.as_mut(),
        }
    }
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.sock.set_nonblocking(on),
        }
    }
    fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(d),
            Stream::Unix(s) => s.set_read_timeout(d),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.sock.set_read_timeout(d),
        }
    }
}

/// A rustls client over a TCP socket, readable and writable like the socket itself. `read`
/// returns plaintext rustls already holds before touching the socket, and reports
/// `WouldBlock` only when both are empty.
#[cfg(feature = "tls")]
struct TlsStream {
    sock: TcpStream,
    conn: rustls::ClientConnection,
}

#[cfg(feature = "tls")]
impl TlsStream {
    fn connect(
        sock: TcpStream,
        host: &str,
        config: std::sync::Arc<rustls::ClientConfig>,
    ) -> io::Result<TlsStream> {
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
            io::Error::new(
                ErrorKind::InvalidInput,
                format!("{host:?} is not a host name TLS can verify: {e}"),
            )
        })?;
        let conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut s = TlsStream { sock, conn };
        while s.conn.is_handshaking() {
            s.conn
                .complete_io(&mut s.sock)
                .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake failed: {e}")))?;
        }
        Ok(s)
    }

    fn flush_tls(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.sock)?;
        }
        Ok(())
    }
}

#[cfg(feature = "tls")]
impl Read for TlsStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(out) {
                // Ok(0) is a clean close_notify; the caller treats it as end of stream.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // No plaintext left: take more records from the socket (WouldBlock when it is
            // empty too, in non-blocking mode).
            let n = self.conn.read_tls(&mut self.sock)?;
            let processed = self.conn.process_new_packets();
            // Alerts, or anything else TLS wants to say back.
            let _ = self.flush_tls();
            processed.map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
            if n == 0 {
                // The peer closed the socket; rustls now reports it from reader().
                return match self.conn.reader().read(out) {
                    Ok(n) => Ok(n),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
                    Err(e) => Err(e),
                };
            }
        }
    }
}

#[cfg(feature = "tls")]
impl Write for TlsStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.conn.writer().write(data)?;
        self.flush_tls()?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flush_tls()
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The listening connection. Not `Clone`; one per worker process.
pub struct Listener {
    stream: Stream,
    buf: Vec<u8>,
}

/// A parsed RESP2 value.
#[derive(Debug, Clone, PartialEq)]
enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Listener {
    /// Connects, authenticates, turns on broadcast tracking for `prefixes` and subscribes to
    /// `channels`. Fails with the server's own words when a step is refused (for example an
    /// ACL user without `client` permission).
    ///
    /// For a Sentinel target the master is discovered first, as for the main connection,
    /// and `ROLE` is checked on this connection itself; a discovery that fails is an
    /// `io::Error` wrapping the [`crate::conn::ConnError`].
    pub fn open(
        target: &RedisTarget,
        prefixes: &[String],
        channels: &[String],
        timeout: Duration,
    ) -> io::Result<Listener> {
        let Some(sentinels) = target.sentinels() else {
            let info = target.info().expect("a direct target has an address");
            return Listener::open_at(target, info, false, prefixes, channels, timeout);
        };
        sentinels
            .discover(target.masked(), |client| {
                let info = client.get_connection_info();
                Listener::open_at(target, info, true, prefixes, channels, timeout)
                    .map_err(|e| e.to_string())
            })
            .map_err(io::Error::other)
    }

    /// [`Listener::open`] at a known address; `check_role` refuses a server that is not a
    /// master (what a Sentinel named may have just been demoted).
    fn open_at(
        target: &RedisTarget,
        info: &redis::ConnectionInfo,
        check_role: bool,
        prefixes: &[String],
        channels: &[String],
        timeout: Duration,
    ) -> io::Result<Listener> {
        let stream = connect_stream(target, info.addr(), timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        let mut l = Listener {
            stream,
            buf: Vec::with_capacity(1024),
        };
        let redis = info.redis_settings();
        l.auth(redis.username(), redis.password())?;
        if check_role {
            match l.call(&["ROLE"])? {
                Resp::Array(Some(items))
                    if items.first() == Some(&Resp::Bulk(Some(b"master".to_vec()))) => {}
                Resp::Array(Some(items)) => {
                    let role = match items.first() {
                        Some(Resp::Bulk(Some(r))) => String::from_utf8_lossy(r).into_owned(),
                        other => format!("{other:?}"),
                    };
                    return Err(io::Error::other(format!("answers ROLE {role}, not master")));
                }
                other => return Err(protocol_error(format!("ROLE replied {other:?}"))),
            }
        }
        let id = match l.call(&["CLIENT", "ID"])? {
            Resp::Int(id) => id.to_string(),
            other => return Err(protocol_error(format!("CLIENT ID replied {other:?}"))),
        };
        let mut tracking = vec!["CLIENT", "TRACKING", "ON", "REDIRECT", &id, "BCAST"];
        let prefixes = disjoint_prefixes(prefixes);
        for p in &prefixes {
            tracking.push("PREFIX");
            tracking.push(p);
        }
        l.call(&tracking)?;
        let mut subscribe = vec!["SUBSCRIBE", INVALIDATE_CHANNEL];
        subscribe.extend(channels.iter().map(String::as_str));
        l.send(&subscribe)?;
        for _ in 0..subscribe.len() - 1 {
            l.read_blocking()?;
        }
        l.stream.set_read_timeout(None)?;
        l.stream.set_nonblocking(true)?;
        Ok(l)
    }

    /// A subscription to `+switch-master` on the first of `target`'s Sentinels that
    /// answers: the Sentinels announce a failover there as soon as it is decided, seconds
    /// before the old master is demoted (and cuts its clients off).
    pub fn switch_master(target: &RedisTarget, timeout: Duration) -> io::Result<Listener> {
        let Some(sentinels) = target.sentinels() else {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "not a Sentinel target",
            ));
        };
        let url = sentinels.url();
        let auth = sentinels.auth();
        let mut last = io::Error::new(ErrorKind::NotFound, "no Sentinel");
        for (host, port) in &url.nodes {
            let addr = if url.tls {
                ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(host.clone(), *port)
            };
            let opened = connect_stream(target, &addr, timeout).and_then(|stream| {
                stream.set_read_timeout(Some(timeout))?;
                let mut l = Listener {
                    stream,
                    buf: Vec::with_capacity(256),
                };
                l.auth(auth.username.as_deref(), auth.password.as_deref())?;
                l.send(&["SUBSCRIBE", SWITCH_MASTER_CHANNEL])?;
                l.read_blocking()?;
                l.stream.set_read_timeout(None)?;
                l.stream.set_nonblocking(true)?;
                Ok(l)
            });
            match opened {
                Ok(l) => return Ok(l),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn auth(&mut self, user: Option<&str>, password: Option<&str>) -> io::Result<()> {
        if let Some(password) = password {
            match user {
                Some(user) => self.call(&["AUTH", user, password])?,
                None => self.call(&["AUTH", password])?,
            };
        }
        Ok(())
    }

    /// The socket to poll for readability. After [`Listener::drain`] nothing is buffered
    /// above it (not even TLS plaintext), so readability is the only wake-up needed.
    pub fn fd(&self) -> BorrowedFd<'_> {
        match &self.stream {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.sock.as_fd(),
        }
    }

    /// Reads whatever has arrived without blocking and returns the complete pushes in it.
    /// An error means the connection is gone and must be opened again.
    pub fn drain(&mut self) -> io::Result<Vec<Push>> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.as_io().read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "Redis closed the connection",
                    ));
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let mut pushes = Vec::new();
        while let Some((value, used)) = parse(&self.buf)? {
            self.buf.drain(..used);
            if let Some(p) = to_push(value) {
                pushes.push(p);
            }
        }
        Ok(pushes)
    }

    fn send(&mut self, args: &[&str]) -> io::Result<()> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.stream.as_io().write_all(&out)
    }

    fn call(&mut self, args: &[&str]) -> io::Result<Resp> {
        self.send(args)?;
        match self.read_blocking()? {
            Resp::Error(e) => {
                // Name the command for the message, never AUTH's arguments (the password).
                let command = if args[0].eq_ignore_ascii_case("AUTH") {
                    "AUTH".to_string()
                } else {
                    args[..args.len().min(2)].join(" ")
                };
                Err(io::Error::other(format!("{command} refused: {e}")))
            }
            v => Ok(v),
        }
    }

    fn read_blocking(&mut self) -> io::Result<Resp> {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some((v, used)) = parse(&self.buf)? {
                self.buf.drain(..used);
                return Ok(v);
            }
            let n = self.stream.as_io().read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "Redis closed the connection",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Opens the socket (TCP, unix or TLS over TCP) to `addr`, with `timeout` for connecting
/// and writing.
fn connect_stream(
    target: &RedisTarget,
    addr: &ConnectionAddr,
    timeout: Duration,
) -> io::Result<Stream> {
    // Only TLS needs the target (its rustls configuration).
    #[cfg(not(feature = "tls"))]
    let _ = target;
    // Every address the host resolves to, in order, as the main connection does: a
    // `localhost` that resolves to ::1 first must not fail where 127.0.0.1 works.
    let tcp = |host: &str, port: u16| -> io::Result<TcpStream> {
        let mut last = io::Error::new(ErrorKind::NotFound, "no address for host");
        for addr in std::net::ToSocketAddrs::to_socket_addrs(&(host, port))? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    s.set_write_timeout(Some(timeout))?;
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    Ok(match addr {
        ConnectionAddr::Tcp(host, port) => Stream::Tcp(tcp(host, *port)?),
        ConnectionAddr::Unix(path) => Stream::Unix(UnixStream::connect(path)?),
        #[cfg(feature = "tls")]
        ConnectionAddr::TcpTls { host, port, .. } => {
            let config = target
                .tls_config()
                .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "no TLS configuration"))?;
            Stream::Tls(Box::new(TlsStream::connect(
                tcp(host, *port)?,
                host,
                config,
            )?))
        }
        _ => {
            return Err(io::Error::new(
                ErrorKind::Unsupported,
                "this kind of Redis address is not supported by the listener",
            ));
        }
    })
}

/// Redis refuses overlapping BCAST prefixes (`high` and `highest`), so keep only the
/// shortest of each family; the extra notices a wider prefix brings only cost a wake-up.
fn disjoint_prefixes(prefixes: &[String]) -> Vec<String> {
    let mut sorted: Vec<&String> = prefixes.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut kept: Vec<String> = Vec::new();
    for p in sorted {
        if !kept.iter().any(|k| p.starts_with(k.as_str())) {
            kept.push(p.clone());
        }
    }
    kept
}

fn to_push(value: Resp) -> Option<Push> {
    let Resp::Array(Some(mut items)) = value else {
        return None;
    };
    if items.len() != 3 {
        return None;
    }
    let payload = items.pop()?;
    let channel = match items.pop()? {
        Resp::Bulk(Some(c)) => String::from_utf8_lossy(&c).into_owned(),
        _ => return None,
    };
    match items.pop()? {
        Resp::Bulk(Some(kind)) if kind == b"message" => {}
        _ => return None,
    }
    if channel == INVALIDATE_CHANNEL {
        let keys = match payload {
            Resp::Array(Some(keys)) => keys
                .into_iter()
                .filter_map(|k| match k {
                    Resp::Bulk(Some(k)) => Some(String::from_utf8_lossy(&k).into_owned()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        return Some(Push::Changed(keys));
    }
    match payload {
        Resp::Bulk(Some(payload)) => Some(Push::Message { channel, payload }),
        _ => None,
    }
}

fn protocol_error(msg: String) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg)
}

/// How deeply arrays may nest; pushes nest two levels. Bounds the recursion below, so a
/// bogus stream cannot overflow the worker's stack.
const MAX_DEPTH: usize = 16;

/// Parses one RESP2 value from the front of `buf`; `None` if it is not complete yet.
fn parse(buf: &[u8]) -> io::Result<Option<(Resp, usize)>> {
    parse_nested(buf, 0)
}

fn parse_nested(buf: &[u8], depth: usize) -> io::Result<Option<(Resp, usize)>> {
    if depth > MAX_DEPTH {
        return Err(protocol_error(format!(
            "RESP arrays nested more than {MAX_DEPTH} deep"
        )));
    }
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&tag, rest)) = buf[..line_end].split_first() else {
        return Err(protocol_error("empty RESP line".into()));
    };
    let line = String::from_utf8_lossy(rest).into_owned();
    let after = line_end + 2;
    let int = || {
        line.parse::<i64>()
            .map_err(|_| protocol_error(format!("bad RESP length {line:?}")))
    };
    Ok(match tag {
        b'+' => Some((Resp::Simple(line), after)),
        b'-' => Some((Resp::Error(line), after)),
        b':' => Some((Resp::Int(int()?), after)),
        b'$' => {
            let len = int()?;
            if len < 0 {
                return Ok(Some((Resp::Bulk(None), after)));
            }
            // Checked: the length comes from the network.
            let Some(end) = after
                .checked_add(len as usize)
                .filter(|e| *e <= usize::MAX - 2)
            else {
                return Err(protocol_error(format!("bad RESP length {len}")));
            };
            if buf.len() < end + 2 {
                return Ok(None);
            }
            Some((Resp::Bulk(Some(buf[after..end].to_vec())), end + 2))
        }
        b'*' => {
            let len = int()?;
            if len < 0 {
                return Ok(Some((Resp::Array(None), after)));
            }
            // Never trust a declared count for an allocation: a bogus one would abort the
            // worker. The items themselves must arrive before they take memory.
            let mut items = Vec::with_capacity((len as usize).min(64));
            let mut used = after;
            for _ in 0..len {
                match parse_nested(&buf[used..], depth + 1)? {
                    Some((v, n)) => {
                        items.push(v);
                        used += n;
                    }
                    None => return Ok(None),
                }
            }
            Some((Resp::Array(Some(items)), used))
        }
        other => {
            return Err(protocol_error(format!(
                "unexpected RESP type byte {other:#x}"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_invalidation_push() {
        let raw =
            b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$10\r\nrq:queue:a\r\n";
        let (v, used) = parse(raw).unwrap().unwrap();
        assert_eq!(used, raw.len());
        assert_eq!(to_push(v), Some(Push::Changed(vec!["rq:queue:a".into()])));
        assert!(parse(&raw[..raw.len() - 3]).unwrap().is_none());
    }

    #[test]
    fn parses_command_message() {
        let raw =
            b"*3\r\n$7\r\nmessage\r\n$11\r\nrq:pubsub:w\r\n$23\r\n{\"command\": \"shutdown\"}\r\n";
        let (v, _) = parse(raw).unwrap().unwrap();
        assert_eq!(
            to_push(v),
            Some(Push::Message {
                channel: "rq:pubsub:w".into(),
                payload: br#"{"command": "shutdown"}"#.to_vec()
            })
        );
    }

    proptest::proptest! {
        /// What a server (or anyone on the path) sends can never crash the worker: any
        /// bytes parse to a value, "not complete yet", or an error.
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut rest: &[u8] = &data;
            while let Ok(Some((v, used))) = parse(rest) {
                proptest::prop_assert!(used > 0 && used <= rest.len());
                let _ = to_push(v);
                rest = &rest[used..];
            }
        }

        #[test]
        fn parse_never_panics_on_resp_like_input(text in "([*$:+-](-?[0-9]{1,20})?\r\n){1,6}[a-z]{0,5}") {
            let _ = parse(text.as_bytes());
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = b"*1\r\n".repeat(100_000);
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn huge_declared_lengths_are_not_allocated() {
        assert!(parse(b"*999999999999999999\r\n").unwrap().is_none());
        assert!(parse(b"$999999999999999999\r\nab").unwrap().is_none());
    }

    #[test]
    fn prefixes_never_overlap() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            disjoint_prefixes(&p(&["rq:queue:highest", "rq:queue:high", "rq:queue:low"])),
            p(&["rq:queue:high", "rq:queue:low"])
        );
    }
}
