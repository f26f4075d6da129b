//! Processes: a spawned binary with its log captured ([`Proc`]), and what `/proc` says about
//! processes, read through `rq_supervisor::procfs` where it has the answer.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use rq_supervisor::procfs;

use super::{WAIT, wait_until};

/// A spawned binary with its stderr (the log) captured. Killed with its process group
/// (and the groups of its horses, which lead their own sessions) on drop.
pub struct Proc {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Spawns `cmd`, retrying while its program is "busy" (ETXTBSY): a file a test has just
/// written (a copied binary, a script) stays open for writing in any child that another test
/// thread forked meanwhile, until that child execs.
pub fn spawn_retrying(cmd: &mut Command) -> std::process::Child {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match cmd.spawn() {
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            spawned => return spawned.expect("spawn binary"),
        }
    }
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.process_group(0);
        let mut child = spawn_retrying(&mut cmd);
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

/// A pid as the tests hold one: a `nix` [`Pid`] (from [`Proc::pid`]) or a `u32` (from Redis,
/// logs and `procfs`).
pub trait AsPid: Copy {
    fn as_u32(self) -> u32;
}

impl AsPid for Pid {
    fn as_u32(self) -> u32 {
        self.as_raw() as u32
    }
}

impl AsPid for u32 {
    fn as_u32(self) -> u32 {
        self
    }
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: impl AsPid) -> bool {
    procfs::stat(pid.as_u32()).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

/// Waits for the worker's horse to exist and returns its pid (the first child, whatever else
/// the worker has).
pub fn wait_horse(worker: &Proc) -> Pid {
    let mut found = None;
    wait_until("a work horse", WAIT, || {
        found = procfs::children(worker.pid().as_u32()).into_iter().next();
        found.is_some()
    });
    Pid::from_raw(found.unwrap() as i32)
}

/// Waits until the worker `worker` has exactly one child, its work horse; returns its pid.
pub fn wait_horse_pid(worker: u32) -> u32 {
    let mut horse = Vec::new();
    wait_until("a work horse", WAIT, || {
        horse = procfs::children(worker);
        horse.len() == 1
    });
    horse[0]
}

/// Live (non-zombie) processes in process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            nix::unistd::getpgid(Some(Pid::from_raw(*pid as i32)))
                .is_ok_and(|g| g.as_raw() as u32 == pgid)
                && alive(*pid)
        })
        .collect()
}

/// A process's command line, its arguments joined by spaces (empty once it is gone).
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}
