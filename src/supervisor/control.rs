//! The control socket: a unix stream socket, owner-only (0600), on which `rq-supervisor -c
//! FILE status|scale|pause|resume|restart|reload|stop` talk to the running supervisor. One
//! JSON line in ([`Request`]), one JSON line out ([`Reply`]).
//!
//! The event loop never touches a client: an accept thread hands each connection to a
//! short-lived thread, which reads the request, passes it to the loop as an
//! [`Input::Control`] with a channel for the answer, and writes the answer back. A client
//! that is slow to send or to read stalls only its own thread.
//!
//! Where the socket is ([`default_socket`]) is derived from the pool file's path, so `-c
//! FILE` is all a command needs. A lock file beside the socket, held for the supervisor's
//! life, tells a live supervisor (refused, named by its pid) from a stale socket left by a
//! killed one (replaced).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};

use super::input::Input;
use super::status::Status;
use crate::config::MAX_SOCKET_PATH;

/// How long a client may take to send its request, and to read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection's thread waits for the event loop's answer.
const LOOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are answered with an error at once.
const MAX_CLIENTS: usize = 16;
/// The longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;
/// Control clients between their request and the answer written back.
static ANSWERING: AtomicUsize = AtomicUsize::new(0);
/// How long an exiting supervisor waits for them: `stop`'s own answer is written by a client
/// thread after the loop has decided to exit, and the process ending first would cut it off.
const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// What a control client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    Status,
    Scale { pool: String, workers: u32 },
    Pause { pool: String },
    Resume { pool: String },
    Restart { pool: Option<String> },
    Reload,
    Stop { cold: bool },
}

/// The answer: an exit status for the client (0 done, 1 the supervisor could not, 2 the
/// request names something that does not exist or a bad value), what to print, and for
/// `status` the snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub code: i32,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<Status>>,
}

impl Reply {
    pub fn ok(text: impl Into<String>) -> Reply {
        Reply::with(0, text)
    }

    pub fn with(code: i32, text: impl Into<String>) -> Reply {
        Reply {
            code,
            text: text.into(),
            status: None,
        }
    }
}

/// A 64-bit FNV-1a hash: the socket's name must be the same for every build that reads the
/// same pool file (std's hasher promises no such stability).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The socket's file name for a pool file: its stem and a hash of its absolute path, so two
/// pool files never share a socket.
pub fn socket_name(config: &Path) -> String {
    let path = std::fs::canonicalize(config)
        .or_else(|_| std::path::absolute(config))
        .unwrap_or_else(|_| config.to_path_buf());
    let stem: String = path
        .file_stem()
        .map(|s| s.to_string_lossy().chars().take(32).collect())
        .unwrap_or_else(|| "pool".to_string());
    format!(
        "{stem}-{:08x}.sock",
        fnv1a(path.as_os_str().as_encoded_bytes()) as u32
    )
}

/// systemd's `$RUNTIME_DIRECTORY` (from `RuntimeDirectory=`; the first of several).
fn runtime_directory() -> Option<PathBuf> {
    let d = std::env::var_os("RUNTIME_DIRECTORY").filter(|d| !d.is_empty())?;
    let d = d.to_string_lossy();
    Some(PathBuf::from(d.split(':').next().unwrap_or_default()))
}

fn xdg_directory() -> Option<PathBuf> {
    let d = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty())?;
    Some(PathBuf::from(d).join("rq-supervisor"))
}

const SYSTEM_DIR: &str = "/run/rq-supervisor";

fn user_tmp_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/rq-supervisor-{}", nix::unistd::geteuid()))
}

/// Where a supervisor started with this pool file puts its socket when `control_socket` is
/// not set: in `$RUNTIME_DIRECTORY` under systemd, else `/run/rq-supervisor` as root, else
/// `$XDG_RUNTIME_DIR/rq-supervisor`, else `/tmp/rq-supervisor-UID`.
pub fn default_socket(config: &Path) -> PathBuf {
    let dir = runtime_directory()
        .or_else(|| {
            nix::unistd::geteuid()
                .is_root()
                .then(|| PathBuf::from(SYSTEM_DIR))
        })
        .or_else(xdg_directory)
        .unwrap_or_else(user_tmp_dir);
    dir.join(socket_name(config))
}

/// Where a client looks for the socket: the configured path, else the first default
/// location that holds a socket for this file (else where this user's supervisor would
/// put it, for the message).
pub fn client_socket(config: &Path, configured: Option<PathBuf>) -> PathBuf {
    if let Some(p) = configured {
        return p;
    }
    let name = socket_name(config);
    // `/run/rq-supervisor` is looked at whoever asks: a service running as `User=rq` with
    // `RuntimeDirectory=rq-supervisor` has its socket there, and an operator's shell has no
    // `$RUNTIME_DIRECTORY`.
    let dirs = [
        runtime_directory(),
        Some(PathBuf::from(SYSTEM_DIR)),
        xdg_directory(),
        Some(user_tmp_dir()),
    ];
    let present: Vec<PathBuf> = dirs
        .into_iter()
        .flatten()
        .map(|d| d.join(&name))
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .collect();
    // One that answers first: a stale socket left by a killed supervisor in an earlier
    // directory must not hide the live one in a later directory.
    present
        .iter()
        .find(|p| UnixStream::connect(p).is_ok())
        .or(present.first())
        .cloned()
        .unwrap_or_else(|| default_socket(config))
}

/// The bound socket, with what removes it when the supervisor exits.
pub struct ControlSocket {
    listener: UnixListener,
    guard: SocketGuard,
}

/// Holds the lock for the supervisor's life; removes the socket on drop. The lock file
/// stays: removing it would let a supervisor that opened it just before lock a file no
/// longer in the directory while another locks a new one.
pub struct SocketGuard {
    path: PathBuf,
    _lock: nix::fcntl::Flock<File>,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Makes the default socket's directory (owner-only) if it is missing, and refuses one that
/// another user owns or may write to (someone else could swap the socket).
fn prepare_dir(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me || meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{} is not a directory of uid {me} that only it may write to (uid {}, mode {:o})",
            dir.display(),
            meta.uid(),
            meta.permissions().mode() & 0o7777
        ));
    }
    Ok(())
}

impl ControlSocket {
    /// Takes the lock beside `path` and binds the socket there, owner-only. `default` says
    /// whether the path is the default one (whose directory this creates). Errors name the
    /// path, a live supervisor's pid, and what to do.
    pub fn bind(path: &Path, default: bool, config: &Path) -> Result<ControlSocket, String> {
        let fix = "set [supervisor] control_socket to a path this user can create";
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "control socket {}: longer than the {MAX_SOCKET_PATH} bytes a unix socket path may have; {fix}",
                path.display()
            ));
        }
        if default && let Some(dir) = path.parent() {
            prepare_dir(dir)
                .map_err(|e| format!("control socket {}: {e}; {fix}", path.display()))?;
        }
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| {
                format!(
                    "control socket: cannot open {}: {e}; {fix}",
                    lock_path.display()
                )
            })?;
        let mut lock = match nix::fcntl::Flock::lock(
            lock,
            nix::fcntl::FlockArg::LockExclusiveNonblock,
        ) {
            Ok(l) => l,
            Err((mut file, e)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(format!(
                    "another rq-supervisor (pid {}) already runs with the control socket {} ({e}); stop it first (rq-supervisor -c {} stop), or give this one its own [supervisor] control_socket",
                    if pid.is_empty() { "unknown" } else { pid },
                    path.display(),
                    config.display()
                ));
            }
        };
        let _ = lock.set_len(0);
        let _ = writeln!(lock, "{}", std::process::id());
        // We hold the lock, so whatever socket is there was left by a supervisor that died.
        match std::fs::remove_file(path) {
            Ok(()) => log::info!(
                "control socket: replaced a stale socket at {}",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!(
                    "control socket: cannot remove the stale {}: {e}; {fix}",
                    path.display()
                ));
            }
        }
        // The socket file takes its mode from the umask at bind: 0600 from the start, with
        // no window in which another user could connect. Only the signal thread runs now,
        // and it creates no file.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let listener = bound.map_err(|e| {
            format!(
                "control socket: cannot listen on {}: {e}; {fix}",
                path.display()
            )
        })?;
        Ok(ControlSocket {
            listener,
            guard: SocketGuard {
                path: path.to_path_buf(),
                _lock: lock,
            },
        })
    }

    /// Starts the accept thread; the returned guard removes the socket when dropped.
    pub fn serve(self, inputs: Sender<Input>) -> Result<SocketGuard, String> {
        let ControlSocket { listener, guard } = self;
        super::accept::serve(
            "control",
            MAX_CLIENTS,
            move || listener.accept().map(|(stream, _)| stream),
            |stream: UnixStream| {
                let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
                let _ = answer(
                    &stream,
                    &Reply::with(1, "too many control connections at once; try again"),
                );
            },
            move |stream| serve_one(stream, &inputs),
        )
        .map_err(|e| format!("cannot start the control socket's thread: {e}"))?;
        Ok(guard)
    }
}

fn answer(mut stream: &UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_string(reply).unwrap_or_else(|_| "{}".into());
    line.push('\n');
    stream.write_all(line.as_bytes())
}

/// Waits (at most [`ANSWER_GRACE`]) until every control client that has its answer has
/// written it: called by the loop just before the process exits.
pub fn wait_for_answers() {
    let deadline = std::time::Instant::now() + ANSWER_GRACE;
    while ANSWERING.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Asks the event loop, waiting at most `limit` for its answer.
pub fn ask_within(inputs: &Sender<Input>, request: Request, limit: Duration) -> Reply {
    let (tx, rx) = crossbeam_channel::bounded(1);
    if inputs.send(Input::Control(request, tx)).is_err() {
        return Reply::with(1, "the supervisor is exiting");
    }
    rx.recv_timeout(limit).unwrap_or_else(|_| {
        Reply::with(
            1,
            format!(
                "the supervisor's event loop did not answer within {}s",
                limit.as_secs()
            ),
        )
    })
}

/// One connection: a request line, the loop's answer (with `status` rendered as a table
/// here, off the loop), and for `stop` the connection held open until the supervisor exits,
/// so the client can wait for the end.
fn serve_one(stream: UnixStream, inputs: &Sender<Input>) {
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let mut line = String::new();
    let read = BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line);
    let request = match read
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str::<Request>(line.trim()).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            let _ = answer(
                &stream,
                &Reply::with(
                    2,
                    format!("bad control request ({e}); use rq-supervisor's own commands"),
                ),
            );
            return;
        }
    };
    let stop = matches!(request, Request::Stop { .. });
    ANSWERING.fetch_add(1, Ordering::SeqCst);
    let mut reply = ask_within(inputs, request, LOOP_TIMEOUT);
    if let Some(status) = &reply.status {
        reply.text = super::status::render(status);
    }
    let answered = answer(&stream, &reply).is_ok();
    ANSWERING.fetch_sub(1, Ordering::SeqCst);
    if answered && stop && reply.code == 0 {
        let _ = stream.set_read_timeout(None);
        let _ = (&stream).read(&mut [0u8; 1]);
    }
}

/// Why a client could not talk to the supervisor.
#[derive(Debug)]
pub enum ClientError {
    /// Nothing listens there (no supervisor runs for this file).
    NotRunning(String),
    /// Anything else (permissions, a broken answer).
    Failed(String),
}

/// Sends `request` to the socket at `path`; for `stop`, waits until the supervisor exited
/// (its end of the connection closes).
pub fn call(path: &Path, request: &Request, wait_for_exit: bool) -> Result<Reply, ClientError> {
    use std::io::ErrorKind;
    let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => ClientError::NotRunning(format!(
            "no rq-supervisor is running for this pool file: nothing listens on {} ({e})",
            path.display()
        )),
        ErrorKind::PermissionDenied => ClientError::Failed(format!(
            "cannot connect to {}: {e}; the control socket is owner-only: run this command as the user rq-supervisor runs as, or as root",
            path.display()
        )),
        _ => ClientError::Failed(format!("cannot connect to {}: {e}", path.display())),
    })?;
    let _ = stream.set_read_timeout(Some(LOOP_TIMEOUT + CLIENT_TIMEOUT));
    let mut line = serde_json::to_string(request).expect("a request serializes");
    line.push('\n');
    let broken = |e: std::io::Error| {
        ClientError::Failed(format!(
            "the supervisor on {} did not answer: {e}",
            path.display()
        ))
    };
    (&stream).write_all(line.as_bytes()).map_err(broken)?;
    let mut reader = BufReader::new(&stream);
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(broken)?;
    let reply: Reply = serde_json::from_str(answer.trim()).map_err(|e| {
        ClientError::Failed(format!(
            "the supervisor on {} sent an answer this rq-supervisor cannot read ({e}); is it another version?",
            path.display()
        ))
    })?;
    if wait_for_exit && reply.code == 0 {
        let _ = stream.set_read_timeout(None);
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest);
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_name_is_stable_and_short() {
        let a = socket_name(Path::new("/etc/rq/pool.toml"));
        assert_eq!(a, socket_name(Path::new("/etc/rq/pool.toml")));
        assert!(a.starts_with("pool-") && a.ends_with(".sock"), "{a}");
        assert_ne!(a, socket_name(Path::new("/etc/rq2/pool.toml")));
        // FNV-1a of a fixed string: a change here would strand running supervisors.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn requests_are_one_json_line() {
        let r = Request::Scale {
            pool: "default".into(),
            workers: 4,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"command":"scale","pool":"default","workers":4}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"command":"explode"}"#).is_err());
    }
}
