//! A private `redis-server` on a unix socket in its own temp dir, stopped on drop. Shared by
//! the integration tests and `benches/rq_bench.rs` (which includes this file with `#[path]`),
//! so it uses nothing else of the harness.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a server may take to answer PING after it was started.
const START_LIMIT: Duration = Duration::from_secs(20);

/// A private redis-server, stopped on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub log: PathBuf,
    extra: Vec<String>,
    /// The TCP (or TLS) port, for servers from [`RedisServer::start_on_port`].
    pub port: Option<u16>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments, e.g. `["--appendonly", "yes"]`.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer::new("rqs-redis-", extra.iter().map(|s| s.to_string()));
        if let Err(e) = server.try_launch() {
            panic!("{e}");
        }
        server
    }

    /// Starts a server that also listens on a TCP port that was free a moment ago:
    /// `args(port)` gives the extra arguments for it (`--port` or `--tls-port`, `--bind`...).
    /// Another process may take the port between the probe and the server's bind, so this
    /// tries again with another port.
    pub fn start_on_port(prefix: &str, args: impl Fn(u16) -> Vec<String>) -> RedisServer {
        let mut last = String::new();
        for _ in 0..10 {
            let port = free_port();
            let mut server = RedisServer::new(prefix, args(port));
            server.port = Some(port);
            match server.try_launch() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("redis-server on a TCP port did not start:\n{last}");
    }

    fn new(prefix: &str, extra: impl IntoIterator<Item = String>) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("redis.sock");
        let log = dir.path().join("redis.log");
        RedisServer {
            child: None,
            dir,
            socket,
            log,
            extra: extra.into_iter().collect(),
            port: None,
        }
    }

    /// Creates an ACL user with `password` and `rules` (e.g. `["~rq:*", "+@all"]`) and
    /// returns a unix socket URL that logs in as that user.
    pub fn acl_user(&self, user: &str, password: &str, rules: &[&str]) -> String {
        let mut con = self.con();
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg(user).arg("reset").arg("on");
        cmd.arg(format!(">{password}"));
        for r in rules {
            cmd.arg(*r);
        }
        cmd.exec(&mut con)
            .unwrap_or_else(|e| panic!("ACL SETUSER {user} {rules:?}: {e}"));
        format!(
            "unix://{}?user={user}&pass={password}",
            self.socket.display()
        )
    }

    fn launch(&mut self) {
        if let Err(e) = self.try_launch() {
            panic!("{e}");
        }
    }

    fn try_launch(&mut self) -> Result<(), String> {
        self.spawn_server();
        self.ready_or_stop()
    }

    fn spawn_server(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--unixsocket"])
            .arg(&self.socket)
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&self.log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.child = Some(child);
    }

    fn wait_ready(&mut self) {
        if let Err(e) = self.ready_or_stop() {
            panic!("{e}");
        }
    }

    /// Waits until the server answers PING; stops it and says why if it exits or times out.
    fn ready_or_stop(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut con) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut con).is_ok()
            {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some();
            if exited || Instant::now() >= deadline {
                self.stop();
                return Err(format!("redis-server did not start:\n{}", self.log_text()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The unix socket URL (the tests' own connections use it, whatever else the server has).
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn con(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .unwrap_or_else(|e| panic!("connect to test redis: {e}\n{}", self.log_text()))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Stops and starts the server on the same socket (data survives only with AOF/RDB on).
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Restarts as an operator would: SIGTERM (Redis writes and syncs its AOF), wait for the
    /// exit, start again on the same socket with the same data.
    pub fn restart_graceful(&mut self) {
        self.restart_graceful_nowait();
        self.wait_ready();
    }

    /// `restart_graceful` without waiting until the server answers: it may still be loading
    /// its data (or not even listening yet) when this returns.
    pub fn restart_graceful_nowait(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
        self.spawn_server();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP port that was free a moment ago (the caller retries if it is taken meanwhile).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
