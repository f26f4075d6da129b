//! A Redis made highly available by Sentinel, on loopback: a master, a replica and three
//! Sentinels (`redis-server sentinel.conf --sentinel`, each with its own writable config in
//! its own temp dir, as Sentinel rewrites it), all stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{RedisServer, WAIT, wait_until};

/// The name the Sentinels monitor the master under.
pub const MASTER: &str = "mymaster";

/// One Sentinel process and its config file (kept, so it restarts with what it learned).
pub struct SentinelNode {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    access: Access,
}

/// How the test's own connections reach a Sentinel.
#[derive(Clone, Default)]
struct Access {
    /// The CA's PEM when the Sentinels speak TLS only.
    tls: Option<Vec<u8>>,
    /// `requirepass` of the Sentinels.
    password: Option<String>,
}

impl SentinelNode {
    fn conf(&self) -> PathBuf {
        self.dir.path().join("sentinel.conf")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .arg(self.conf())
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.child = Some(child);
    }

    /// SIGKILL: the Sentinel is gone at once, as a crashed host's.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the config it rewrote, and waits until it
    /// answers.
    pub fn start(&mut self) {
        self.spawn();
        let port = self.port;
        wait_until(&format!("Sentinel {port} to answer"), WAIT, || {
            sentinel_con(port, &self.access).is_some()
        });
    }

    pub fn con(&self) -> redis::Connection {
        sentinel_con(self.port, &self.access).unwrap_or_else(|| {
            panic!(
                "Sentinel {} does not answer:\n{}",
                self.port,
                self.log_text()
            )
        })
    }
}

impl Drop for SentinelNode {
    fn drop(&mut self) {
        self.stop();
    }
}

fn sentinel_con(port: u16, access: &Access) -> Option<redis::Connection> {
    let auth = access
        .password
        .as_ref()
        .map(|p| format!(":{p}@"))
        .unwrap_or_default();
    let client = match access.tls.as_deref() {
        None => redis::Client::open(format!("redis://{auth}127.0.0.1:{port}")).ok()?,
        #[cfg(not(feature = "tls"))]
        Some(_) => return None,
        #[cfg(feature = "tls")]
        Some(ca) => redis::Client::build_with_tls(
            format!("rediss://{auth}127.0.0.1:{port}"),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.to_vec()),
            },
        )
        .ok()?,
    };
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()?;
    con.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    redis::cmd("PING").query::<String>(&mut con).ok()?;
    Some(con)
}

/// The master (`nodes[0]` at first), its replica (`nodes[1]`) and three Sentinels.
pub struct SentinelSet {
    pub nodes: Vec<RedisServer>,
    pub sentinels: Vec<SentinelNode>,
    /// `rediss+sentinel://` instead of `redis+sentinel://`.
    tls: bool,
}

impl SentinelSet {
    /// Starts everything and waits until every Sentinel knows the master, its replica and
    /// the two other Sentinels, i.e. until a failover can happen.
    pub fn start() -> SentinelSet {
        SentinelSet::start_with(None, None)
    }

    /// [`SentinelSet::start`] with Sentinels that require `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> SentinelSet {
        SentinelSet::start_with(None, Some(password))
    }

    /// [`SentinelSet::start`] with TLS only, everywhere (clients, replication, Sentinels),
    /// with `certs`' server certificate; the data nodes' unix sockets stay plain for the
    /// test's own reads.
    #[cfg(feature = "tls")]
    pub fn start_tls(certs: &super::TlsCerts) -> SentinelSet {
        SentinelSet::start_with(Some(certs), None)
    }

    fn start_with(certs: Option<&super::TlsCerts>, password: Option<&str>) -> SentinelSet {
        let tls_args = |certs: &super::TlsCerts| -> Vec<String> {
            [
                "--tls-cert-file",
                &certs.server_cert.display().to_string(),
                "--tls-key-file",
                &certs.server_key.display().to_string(),
                "--tls-ca-cert-file",
                &certs.ca.display().to_string(),
                "--tls-auth-clients",
                "no",
                "--tls-replication",
                "yes",
            ]
            .map(String::from)
            .to_vec()
        };
        let tcp = |port: u16| match certs {
            None => ["--port", &port.to_string(), "--bind", "127.0.0.1"]
                .map(String::from)
                .to_vec(),
            Some(c) => {
                let mut a: Vec<String> = ["--tls-port", &port.to_string(), "--bind", "127.0.0.1"]
                    .map(String::from)
                    .to_vec();
                a.extend(tls_args(c));
                a
            }
        };
        let master = RedisServer::start_on_port("rqs-master-", tcp);
        let master_port = master.port.expect("TCP port");
        let replica = RedisServer::start_on_port("rqs-replica-", |port| {
            let mut a = tcp(port);
            a.extend([
                "--replicaof".into(),
                "127.0.0.1".into(),
                master_port.to_string(),
            ]);
            a
        });
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(start_sentinel(master_port, certs, password));
        }
        let set = SentinelSet {
            nodes: vec![master, replica],
            sentinels,
            tls: certs.is_some(),
        };
        set.wait_in_sync(0);
        for s in &set.sentinels {
            wait_until("a Sentinel to see the replica and the others", WAIT, || {
                let m: redis::RedisResult<std::collections::HashMap<String, String>> =
                    redis::cmd("SENTINEL")
                        .arg("MASTER")
                        .arg(MASTER)
                        .query(&mut s.con());
                m.is_ok_and(|m| {
                    m.get("num-slaves").map(String::as_str) == Some("1")
                        && m.get("num-other-sentinels").map(String::as_str) == Some("2")
                })
            });
        }
        set
    }

    /// `redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/mymaster`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}+sentinel://{}/{MASTER}", hosts.join(","))
    }

    /// `[(host, port)...]` of the Sentinels, as Python's `Sentinel(...)` takes them (JSON).
    pub fn sentinels_json(&self) -> String {
        let list: Vec<serde_json::Value> = self
            .sentinels
            .iter()
            .map(|s| serde_json::json!(["127.0.0.1", s.port]))
            .collect();
        serde_json::Value::Array(list).to_string()
    }

    /// `ROLE`'s first word from node `i`, `None` if it does not answer.
    pub fn role(&self, i: usize) -> Option<String> {
        let client = redis::Client::open(self.nodes[i].url()).ok()?;
        let mut con = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        con.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        let reply: Vec<redis::Value> = redis::cmd("ROLE").query(&mut con).ok()?;
        redis::from_redis_value(reply.into_iter().next()?).ok()
    }

    /// Waits until every Sentinel names node `i` and node `i` says it is the master; returns
    /// when that was first seen.
    pub fn wait_master(&self, i: usize, limit: Duration) -> Instant {
        let port = self.nodes[i].port.expect("TCP port");
        wait_until(
            &format!("node {i} (port {port}) to become the master"),
            limit,
            || {
                self.role(i).as_deref() == Some("master")
                    && self
                        .sentinels
                        .iter()
                        .filter(|s| s.child.is_some())
                        .all(|s| {
                            sentinel_con(s.port, &s.access).is_some_and(|mut c| {
                                redis::cmd("SENTINEL")
                                    .arg("get-master-addr-by-name")
                                    .arg(MASTER)
                                    .query::<(String, u16)>(&mut c)
                                    .is_ok_and(|(_, p)| p == port)
                            })
                        })
            },
        );
        Instant::now()
    }

    /// Waits until node `1 - master` is a replica in sync with node `master` (so a failover
    /// has a replica to promote).
    pub fn wait_in_sync(&self, master: usize) {
        let replica = 1 - master;
        wait_until("the replica to be in sync", WAIT, || {
            let mut con = self.nodes[replica].con();
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut con)
                .unwrap_or_default();
            info.contains("master_link_status:up")
        });
    }

    /// `SENTINEL FAILOVER mymaster` on the first Sentinel.
    pub fn failover(&self) {
        redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER)
            .exec(&mut self.sentinels[0].con())
            .expect("SENTINEL FAILOVER");
    }

    /// Every log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            out.push_str(&format!("--- node {i} ---\n{}\n", tail(&n.log_text())));
        }
        for s in &self.sentinels {
            out.push_str(&format!(
                "--- sentinel {} ---\n{}\n",
                s.port,
                tail(&s.log_text())
            ));
        }
        out
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn start_sentinel(
    master_port: u16,
    certs: Option<&super::TlsCerts>,
    password: Option<&str>,
) -> SentinelNode {
    let mut last = String::new();
    for _ in 0..10 {
        let dir = tempfile::Builder::new()
            .prefix("rqs-sentinel-")
            .tempdir()
            .expect("temp dir");
        let port = super::supervisor::free_port();
        let listen = match certs {
            None => format!("port {port}\n"),
            Some(c) => format!(
                "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
                c.server_cert.display(),
                c.server_key.display(),
                c.ca.display()
            ),
        };
        // Sentinels authenticate to each other with their own requirepass.
        let listen = match password {
            Some(p) => format!("{listen}requirepass {p}\n"),
            None => listen,
        };
        let conf = format!(
            "{listen}bind 127.0.0.1\ndir {dir}\nlogfile {dir}/sentinel.log\n\
             sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {MASTER} 1000\n\
             sentinel failover-timeout {MASTER} 4000\n\
             sentinel parallel-syncs {MASTER} 1\n",
            dir = dir.path().display()
        );
        std::fs::write(dir.path().join("sentinel.conf"), conf).expect("write sentinel.conf");
        let mut node = SentinelNode {
            port,
            dir,
            child: None,
            access: Access {
                tls: certs.map(|c| std::fs::read(&c.ca).expect("the CA's PEM")),
                password: password.map(str::to_string),
            },
        };
        node.spawn();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if sentinel_con(port, &node.access).is_some() {
                return node;
            }
            if node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        last = node.log_text();
        node.stop();
    }
    panic!("a Sentinel did not start:\n{last}");
}

/// Enqueues `n` jobs `func(*args)` with Python RQ through `redis.sentinel.Sentinel`
/// (`tests/py/sentinel_tool.py`); `flags` are its options (`--wait`, `--retry N`,
/// `--keep-going`). Returns each job's id and, with `--wait`, whether `WAIT 1 1000` said
/// the replica has it.
pub fn sentinel_enqueue(
    set: &SentinelSet,
    queue: &str,
    n: usize,
    func: &str,
    args: &str,
    flags: &[&str],
) -> Vec<(String, Option<bool>)> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/sentinel_tool.py");
    let out = Command::new(super::python_bin())
        .arg(script)
        .arg(set.sentinels_json())
        .arg(MASTER)
        .arg("enqueue")
        .arg(queue)
        .arg(n.to_string())
        .arg(func)
        .arg(args)
        .args(flags)
        .output()
        .expect("python3 must be installed");
    let text = super::stdout_of_success("sentinel_tool.py enqueue", &out);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("sentinel_tool.py: {e}: {text}"))
}
