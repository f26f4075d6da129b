//! systemd's notification protocol, read from a real unix datagram socket given as
//! `NOTIFY_SOCKET`: READY=1 once the workers are registered, STATUS=, WATCHDOG=1 at half of
//! `WATCHDOG_USEC`, RELOADING=1 with MONOTONIC_USEC then READY=1 on a reload, STOPPING=1 at
//! shutdown; and the workers never see these variables.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::support::supervisor::*;
use crate::support::*;
use nix::sys::signal::Signal;

/// Datagrams read so far, in order.
struct Notifications {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl Notifications {
    fn bind(path: &std::path::Path) -> Notifications {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Notifications {
            socket,
            seen: Vec::new(),
        }
    }

    /// Reads until a datagram contains `text` (after those already seen); returns it.
    fn until(&mut self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 4096];
        loop {
            assert!(
                Instant::now() < deadline,
                "no {text:?} within {WAIT:?}; got {:?}",
                self.seen
            );
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if msg.lines().any(|l| l == text || l.starts_with(text)) {
                    return msg;
                }
            }
        }
    }
}

fn monotonic_usec() -> i128 {
    let mut ts = nix::libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given and nothing else.
    unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_MONOTONIC, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000 + i128::from(ts.tv_nsec) / 1000
}

#[test]
fn ready_status_watchdog_reloading_and_stopping_in_order() {
    let redis = RedisServer::start();
    let file = PoolFile::new(
        "[worker]\nbuiltin_handlers = true\n[pools.main]\nqueues = [\"a\"]\nworkers = 2\n",
    );
    let path = file.dir.path().join("notify.sock");
    let mut notes = Notifications::bind(&path);
    let mut sup = Supervisor::new(&redis, &file)
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "400000")
        .spawn();
    let mut con = redis.con();
    let ready = notes.until("READY=1");
    // Sent only once both workers were registered.
    assert_eq!(workers(&mut con).len(), 2, "{ready}");
    assert!(
        ready.contains("STATUS=1 pool(s), 2/2 workers registered"),
        "{ready}"
    );
    let before: usize = notes.seen.len();
    let t0 = Instant::now();
    for _ in 0..5 {
        notes.until("WATCHDOG=1");
    }
    // Five pings at half of 400ms take about 0.8 s; pinging only as often as the loop's
    // one-second tick (which would miss a 400 ms watchdog) would take 4 s or more.
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "{:?}",
        notes.seen[before..].to_vec()
    );
    for (_, pid) in workers(&mut con) {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let env = String::from_utf8_lossy(&env);
        assert!(
            !env.contains("NOTIFY_SOCKET=") && !env.contains("WATCHDOG_USEC="),
            "worker {pid} inherited systemd's variables"
        );
    }
    sup.signal(Signal::SIGHUP);
    let reloading = notes.until("RELOADING=1");
    let usec: i128 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("MONOTONIC_USEC with RELOADING=1: {reloading:?}"))
        .parse()
        .unwrap();
    assert!((monotonic_usec() - usec).abs() < 10_000_000, "{usec}");
    notes.until("READY=1");
    // The control socket's reload says the same.
    control_ok(&file, &["reload"]);
    notes.until("RELOADING=1");
    notes.until("READY=1");
    sup.signal(Signal::SIGTERM);
    notes.until("STOPPING=1");
    assert!(sup.wait_exit(WAIT).success(), "{}", sup.log());
}
