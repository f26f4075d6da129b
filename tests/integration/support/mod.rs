//! Test harness: a real `redis-server` per test on a unix socket in its own temp dir, the
//! real binaries (`CARGO_BIN_EXE_*`) with their logs captured, Python RQ drivers, bounded
//! polling, and Drop guards that kill whatever a failed test leaves behind.

pub mod supervisor;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// Default bound for waits; generous because CI machines are slow and loaded.
pub const WAIT: Duration = Duration::from_secs(20);

/// A private redis-server, stopped on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub log: PathBuf,
    extra: Vec<String>,
    /// The TLS port, for servers from [`RedisServer::start_tls`].
    pub tls_port: Option<u16>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments, e.g. `["--appendonly", "yes"]`.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("rqs-redis-")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("redis.sock");
        let log = dir.path().join("redis.log");
        let mut server = RedisServer {
            child: None,
            dir,
            socket,
            log,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls_port: None,
        };
        server.launch();
        server
    }

    /// Starts a server that also listens for TLS on 127.0.0.1 with `certs`' server
    /// certificate (and, with `client_auth`, requires client certificates signed by its CA).
    /// The unix socket stays plain, for the test's own inspection.
    pub fn start_tls(certs: &TlsCerts, client_auth: bool) -> RedisServer {
        let mut last = String::new();
        for _ in 0..10 {
            let port = free_port();
            let mut extra: Vec<String> = [
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--tls-cert-file",
                &certs.server_cert.display().to_string(),
                "--tls-key-file",
                &certs.server_key.display().to_string(),
                "--tls-ca-cert-file",
                &certs.ca.display().to_string(),
                "--tls-auth-clients",
                if client_auth { "yes" } else { "no" },
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            extra.extend(["--loglevel".to_string(), "verbose".to_string()]);
            let dir = tempfile::Builder::new()
                .prefix("rqs-redis-tls-")
                .tempdir()
                .expect("temp dir");
            let socket = dir.path().join("redis.sock");
            let log = dir.path().join("redis.log");
            let mut server = RedisServer {
                child: None,
                dir,
                socket,
                log,
                extra,
                tls_port: Some(port),
            };
            match server.try_launch() {
                Ok(()) => return server,
                // Another test took the port between our probe and the server's bind.
                Err(e) => last = e,
            }
        }
        panic!("redis-server with TLS did not start:\n{last}");
    }

    /// `rediss://127.0.0.1:PORT/0` for a server from [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        format!(
            "rediss://127.0.0.1:{}/0",
            self.tls_port.expect("a TLS server")
        )
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
        let deadline = Instant::now() + WAIT;
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
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Certificates for TLS tests, generated in-process: a CA, a server certificate it signed
/// for `127.0.0.1` and `localhost`, a client certificate it signed, and an unrelated CA
/// (for "wrong CA" tests). PEM files in `dir`; the keys are mode 600.
pub struct TlsCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
}

impl TlsCerts {
    pub fn generate(dir: &Path) -> TlsCerts {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        use std::os::unix::fs::PermissionsExt;
        let ca_params = |cn: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p.distinguished_name.push(DnType::CommonName, cn);
            p
        };
        let ca =
            CertifiedIssuer::self_signed(ca_params("rqs test CA"), KeyPair::generate().unwrap())
                .unwrap();
        let other =
            CertifiedIssuer::self_signed(ca_params("rqs other CA"), KeyPair::generate().unwrap())
                .unwrap();
        let leaf = |names: Vec<String>, cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(names).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            let cert = p.signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key) =
            leaf(vec!["127.0.0.1".into(), "localhost".into()], "redis server");
        let (client_pem, client_key) = leaf(vec!["rq-worker".into()], "rq-worker");
        let write = |name: &str, text: &str, mode: u32| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write pem");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
            p
        };
        TlsCerts {
            ca: write("ca.pem", &ca.pem(), 0o644),
            server_cert: write("server.pem", &server_pem, 0o644),
            server_key: write("server.key", &server_key, 0o600),
            client_cert: write("client.pem", &client_pem, 0o644),
            client_key: write("client.key", &client_key, 0o600),
            other_ca: write("other-ca.pem", &other.pem(), 0o644),
        }
    }
}

/// A spawned binary with its stderr (the log) captured. Killed with its process group
/// (and the groups of its horses, which lead their own sessions) on drop.
pub struct Proc {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.process_group(0);
        let mut child = cmd.spawn().expect("spawn binary");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let stdout = child.stdout.take().expect("stdout");
        let sink = Arc::clone(&log);
        let sink2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut l = sink2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Proc {
            child,
            log,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("send signal");
    }

    /// Waits for a log line containing `text`.
    pub fn wait_for_log(&self, text: &str) {
        wait_until(&format!("log line {text:?}"), WAIT, || {
            self.log().contains(text)
        });
    }

    /// Waits for the process to exit; panics with the log after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {limit:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = killpg(self.pid(), Signal::SIGKILL);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `check` every few milliseconds until it holds; panics naming `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until Redis stops answering (a `DEBUG SLEEP` or `CLIENT PAUSE` under way): a fresh
/// connection's PING gets no reply within 100 ms.
pub fn wait_redis_stalled(url: &str) {
    let client = redis::Client::open(url).expect("redis URL");
    let probe = Duration::from_millis(100);
    wait_until("Redis to stall", WAIT, || {
        client
            .get_connection_with_timeout(probe)
            .and_then(|mut c| {
                c.set_read_timeout(Some(probe))?;
                redis::cmd("PING").exec(&mut c)
            })
            .is_err()
    });
}

/// A `Command` for one of this package's binaries.
pub fn bin(name: &str) -> Command {
    let path = match name {
        "rqworker" => env!("CARGO_BIN_EXE_rqworker"),
        "rq-supervisor" => env!("CARGO_BIN_EXE_rq-supervisor"),
        other => panic!("unknown binary {other}"),
    };
    Command::new(path)
}

/// `rqworker` pointed at `redis` through the environment (never argv), with extra args.
pub fn rqworker(redis: &RedisServer, args: &[&str]) -> Command {
    let mut cmd = bin("rqworker");
    cmd.env("RQ_REDIS_URL", redis.url()).args(args);
    cmd
}

pub fn py_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py")
}

/// Runs `tests/py/<script>` with Python (`$RQ_TEST_PYTHON` or `python3`) and `RQ_REDIS_URL`
/// set; panics with its output if it fails.
pub fn python(redis: &RedisServer, script: &str, args: &[&str]) -> String {
    let out = python_output(redis, script, args);
    stdout_of_success(&format!("python {script} {args:?}"), &out)
}

pub fn python_output(redis: &RedisServer, script: &str, args: &[&str]) -> Output {
    Command::new(python_bin())
        .arg(py_dir().join(script))
        .args(args)
        .env("RQ_REDIS_URL", redis.url())
        .output()
        .expect("python3 must be installed")
}

/// The stdout of a process that must have succeeded; panics with both streams if not.
pub fn stdout_of_success(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads one field of a hash as text.
pub fn hget(con: &mut redis::Connection, key: &str, field: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query(con)
        .expect("HGET")
}

pub fn exists(con: &mut redis::Connection, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query(con).expect("EXISTS")
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the worker test files.

/// Enqueues `func(*args, **kwargs)` with Python RQ and its JSONSerializer; returns the job id.
/// `opts` is a JSON object of `enqueue_call` options (`job_timeout`, `result_ttl`, `meta`...).
pub fn py_enqueue(
    redis: &RedisServer,
    queue: &str,
    func: &str,
    args: &str,
    kwargs: &str,
    opts: &str,
) -> String {
    let out = python(
        redis,
        "rqtool.py",
        &["enqueue", queue, func, args, kwargs, opts],
    );
    serde_json::from_str(out.trim()).expect("job id")
}

/// `py_enqueue` without kwargs or options.
pub fn py_enqueue_args(redis: &RedisServer, queue: &str, func: &str, args: &str) -> String {
    py_enqueue(redis, queue, func, args, "{}", "{}")
}

/// Runs `rqtool.py CMD ARGS...` and parses its JSON output.
pub fn py_json(redis: &RedisServer, args: &[&str]) -> serde_json::Value {
    let out = python(redis, "rqtool.py", args);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("rqtool {args:?}: {e}: {out}"))
}

/// The Python interpreter the tests use (`$RQ_TEST_PYTHON` or `python3`).
pub fn python_bin() -> String {
    std::env::var("RQ_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// A `Command` running Python RQ's own CLI (`rq info`, `rq worker`...).
pub fn rq_cli(args: &[&str]) -> Command {
    let mut cmd = Command::new(python_bin());
    cmd.args(["-c", "from rq.cli import main; main()"])
        .args(args);
    cmd
}

/// Runs `rq info --url URL ARGS...`; panics if it fails. Returns stdout.
pub fn rq_info(redis: &RedisServer, args: &[&str]) -> String {
    let url = redis.url();
    let mut all = vec!["info", "--url", url.as_str()];
    all.extend_from_slice(args);
    let out = rq_cli(&all).output().expect("python3");
    stdout_of_success("rq info", &out)
}

/// Writes an executable script (mode 0755) and returns its path.
pub fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Writes a config file and returns its path as text, for `-c`.
pub fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("pool.toml");
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

/// A TOML string literal.
/// A TOML basic string holding `s` (JSON string syntax is valid TOML).
pub fn toml_str(s: impl AsRef<str>) -> String {
    serde_json::Value::String(s.as_ref().to_string()).to_string()
}

pub fn hgetall(
    con: &mut redis::Connection,
    key: &str,
) -> std::collections::HashMap<String, String> {
    let raw: std::collections::HashMap<String, Vec<u8>> =
        redis::cmd("HGETALL").arg(key).query(con).expect("HGETALL");
    raw.into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

pub fn ttl(con: &mut redis::Connection, key: &str) -> i64 {
    redis::cmd("TTL").arg(key).query(con).expect("TTL")
}

/// A sorted-set score as text (`inf` for `+inf`), `None` when the member is absent.
pub fn zscore(con: &mut redis::Connection, key: &str, member: &str) -> Option<String> {
    redis::cmd("ZSCORE")
        .arg(key)
        .arg(member)
        .query(con)
        .expect("ZSCORE")
}

pub fn zrange(con: &mut redis::Connection, key: &str) -> Vec<String> {
    redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query(con)
        .expect("ZRANGE")
}

pub fn lrange(con: &mut redis::Connection, key: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query(con)
        .expect("LRANGE")
}

pub fn llen(con: &mut redis::Connection, key: &str) -> usize {
    redis::cmd("LLEN").arg(key).query(con).expect("LLEN")
}

pub fn get(con: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(con).expect("GET")
}

/// A set's members, sorted.
pub fn smembers(con: &mut redis::Connection, key: &str) -> Vec<String> {
    let mut v: Vec<String> = redis::cmd("SMEMBERS")
        .arg(key)
        .query(con)
        .expect("SMEMBERS");
    v.sort();
    v
}

/// One stream entry's fields.
pub type Fields = std::collections::HashMap<String, Vec<u8>>;

/// Every entry of `rq:results:<id>`, oldest first, as (entry id, field map).
pub fn results(con: &mut redis::Connection, id: &str) -> Vec<(String, Fields)> {
    type Raw = Vec<(String, Vec<(String, Vec<u8>)>)>;
    let reply: Raw = redis::cmd("XRANGE")
        .arg(format!("rq:results:{id}"))
        .arg("-")
        .arg("+")
        .query(con)
        .expect("XRANGE");
    reply
        .into_iter()
        .map(|(eid, fields)| (eid, fields.into_iter().collect()))
        .collect()
}

/// Decodes a result's `return_value` (base64 of JSON), independently of the crate's codec.
pub fn decode_return_value(field: &[u8]) -> serde_json::Value {
    use base64::Engine;
    let json = base64::engine::general_purpose::STANDARD
        .decode(field)
        .expect("return_value is base64");
    serde_json::from_slice(&json).expect("return_value is JSON")
}

/// Decodes a result's `exc_string` (base64 of zlib of UTF-8 text).
pub fn decode_exc_string(field: &[u8]) -> String {
    use base64::Engine;
    use std::io::Read;
    let z = base64::engine::general_purpose::STANDARD
        .decode(field)
        .expect("exc_string is base64");
    let mut text = String::new();
    flate2::read::ZlibDecoder::new(&z[..])
        .read_to_string(&mut text)
        .expect("exc_string is zlib of UTF-8");
    text
}

/// The job's status field, `None` when the hash is gone.
pub fn job_status(con: &mut redis::Connection, id: &str) -> Option<String> {
    hget(con, &format!("rq:job:{id}"), "status")
}

/// Waits until the job's status is one of `wanted`; returns it.
pub fn wait_status(con: &mut redis::Connection, id: &str, wanted: &[&str]) -> String {
    wait_status_within(con, id, wanted, WAIT)
}

/// `wait_status` with a limit of its own, for jobs that take longer than `WAIT` to settle.
pub fn wait_status_within(
    con: &mut redis::Connection,
    id: &str,
    wanted: &[&str],
    limit: Duration,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let last = job_status(con, id);
        if let Some(s) = &last
            && wanted.contains(&s.as_str())
        {
            return s.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: job {id}: wanted status {wanted:?}, last seen {last:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the `state` field of worker `name`'s hash (`rq:worker:<name>`) is `state`.
pub fn wait_worker_state(con: &mut redis::Connection, name: &str, state: &str) {
    wait_worker_state_within(con, name, state, WAIT);
}

/// `wait_worker_state` with a limit of its own.
pub fn wait_worker_state_within(
    con: &mut redis::Connection,
    name: &str,
    state: &str,
    limit: Duration,
) {
    let key = format!("rq:worker:{name}");
    wait_until(&format!("worker {name} in state {state}"), limit, || {
        hget(con, &key, "state").as_deref() == Some(state)
    });
}

/// The failure text of the job's latest result (type 2), panicking if there is none.
pub fn latest_exc(con: &mut redis::Connection, id: &str) -> String {
    let entries = results(con, id);
    let (_, last) = entries
        .last()
        .unwrap_or_else(|| panic!("job {id} has no result"));
    assert_eq!(
        last.get("type").map(|v| &v[..]),
        Some(&b"2"[..]),
        "job {id}"
    );
    decode_exc_string(last.get("exc_string").expect("exc_string"))
}

/// The return value of the job's latest result (type 1); `None` when it returned None.
pub fn latest_return(con: &mut redis::Connection, id: &str) -> Option<serde_json::Value> {
    let entries = results(con, id);
    let (_, last) = entries
        .last()
        .unwrap_or_else(|| panic!("job {id} has no result"));
    assert_eq!(
        last.get("type").map(|v| &v[..]),
        Some(&b"1"[..]),
        "job {id}"
    );
    last.get("return_value").map(|v| decode_return_value(v))
}

/// Asserts RQ's hash timestamp format, exactly `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn assert_rq_timestamp(what: &str, ts: &str) {
    let b = ts.as_bytes();
    let ok = b.len() == 27
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            26 => *c == b'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(ok, "{what}: {ts:?} is not YYYY-MM-DDTHH:MM:SS.ffffffZ");
}

/// Parses an RQ hash timestamp into Unix seconds.
pub fn rq_time(ts: &str) -> f64 {
    humantime::parse_rfc3339(ts)
        .unwrap_or_else(|e| panic!("{ts:?}: {e}"))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The children of `pid` (the worker's horses), from `/proc`.
pub fn children(pid: Pid) -> Vec<Pid> {
    let mut out = Vec::new();
    let tasks = format!("/proc/{pid}/task");
    for t in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .map(Pid::from_raw),
        );
    }
    out
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state is the field after the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            state != Some("Z") && state != Some("X")
        }
        Err(_) => false,
    }
}

/// Waits for the worker's horse to exist and returns its pid.
pub fn wait_horse(worker: &Proc) -> Pid {
    let mut found = None;
    wait_until("a work horse", WAIT, || {
        found = children(worker.pid()).into_iter().next();
        found.is_some()
    });
    found.unwrap()
}

/// A temp dir for handler scripts and config files.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rqs-test-")
        .tempdir()
        .expect("temp dir")
}

/// Enqueues with the crate's Rust producer (fast; for tests where the producer is not the
/// subject). `args` must be a JSON list.
pub fn rs_enqueue(
    con: &mut redis::Connection,
    queue: &str,
    func: &str,
    args: serde_json::Value,
) -> String {
    rs_enqueue_with(con, queue, func, args, &Default::default())
}

pub fn rs_enqueue_with(
    con: &mut redis::Connection,
    queue: &str,
    func: &str,
    args: serde_json::Value,
    opts: &rq_supervisor::producer::EnqueueOptions,
) -> String {
    let serde_json::Value::Array(args) = args else {
        panic!("args must be a list")
    };
    rq_supervisor::producer::enqueue(con, queue, func, args, Default::default(), opts)
        .expect("enqueue")
}

/// This machine's hostname, as the worker reads it.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .expect("hostname")
        .into_string()
        .expect("UTF-8 hostname")
}

/// The absolute path of the Python interpreter, for `#!` lines of handler scripts (a handler
/// gets a minimal environment, so `/usr/bin/env python3` may not find a pyenv install).
pub fn python_exe() -> String {
    let out = Command::new(python_bin())
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A `[handlers."tasks.gate"]` table (to put in a config) whose program blocks until the file
/// named by the job's first argument exists, then prints `released`. Lets a test inspect a
/// running job, or signal the worker mid-job, without racing a timer.
pub fn gate_handler(dir: &Path) -> String {
    let gate = write_script(
        dir,
        "gate.sh",
        "#!/bin/sh\nwhile [ ! -e \"$1\" ]; do sleep 0.02; done\necho released\n",
    );
    format!(
        "[handlers.\"tasks.gate\"]\ncommand = [{}]\n",
        toml_str(gate.display().to_string())
    )
}

/// Enqueues with the Rust producer through connection losses and Redis restarts. The job
/// must have its own id (`opts.job_id`): a failed enqueue is repeated only if the job does not
/// exist, since the producer writes it in one MULTI/EXEC (it either fully happened or not at
/// all), so nothing is doubled or dropped. `con` is reopened from `client` as needed. Returns
/// how many attempts failed.
pub fn enqueue_through_outages(
    client: &redis::Client,
    con: &mut Option<redis::Connection>,
    queue: &str,
    func: &str,
    args: Vec<serde_json::Value>,
    opts: &rq_supervisor::producer::EnqueueOptions,
    limit: Duration,
) -> u32 {
    let id = opts
        .job_id
        .clone()
        .expect("enqueue_through_outages needs a job id");
    let deadline = Instant::now() + limit;
    let mut failures = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "cannot enqueue {id} within {limit:?}"
        );
        let c = match con {
            Some(c) => c,
            None => match client.get_connection_with_timeout(Duration::from_secs(3)) {
                Ok(c) => {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(15)));
                    con.insert(c)
                }
                Err(_) => {
                    failures += 1;
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        let exists: redis::RedisResult<bool> =
            redis::cmd("EXISTS").arg(format!("rq:job:{id}")).query(c);
        let done = match exists {
            Ok(true) => true,
            Ok(false) => rq_supervisor::producer::enqueue(
                c,
                queue,
                func,
                args.clone(),
                Default::default(),
                opts,
            )
            .is_ok(),
            Err(_) => false,
        };
        if done {
            return failures;
        }
        failures += 1;
        *con = None;
        std::thread::sleep(Duration::from_millis(50));
    }
}
