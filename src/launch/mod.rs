//! The supervisor -> worker contract, in one place: how `rq-supervisor` starts an
//! `rqworker` and what the worker makes of it.
//!
//! - [`Launch`]: what the supervisor decides about one worker; [`Launch::spawn`] turns it
//!   into the process: the argv, written with the [`flag`] names that `worker::cli` declares
//!   (a round-trip test parses one with the real `WorkerArgs`), the environment
//!   ([`REDIS_URL_ENV`], [`SUPERVISOR_PID_ENV`]), the [`handoff`] on descriptor
//!   [`handoff::WORKER_FD`], and the process setup (own process group, stdin from
//!   `/dev/null`, the pool's uid/gid, the parent-death signal).
//! - [`default_worker_name`]: the name a worker registers under when it is given none, which
//!   the supervisor needs to find its workers' records in Redis.
//!
//! Secrets stay out of argv: the Redis URL (which may hold a password) goes through the
//! environment, the pool file and the TLS files through the handoff descriptor.

pub mod handoff;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::Signal;
use nix::unistd::{Pid, getppid};

use crate::config::LogFormat;
pub use crate::config::REDIS_URL_ENV;
use crate::config::{SENTINEL_PASSWORD_ENV, SENTINEL_USERNAME_ENV};
use handoff::{Handoff, WORKER_FD};

/// A worker's exit status when jobs could not start in its environment (process or file
/// limits, a missing program, an interpreter that cannot start; the jobs went back to their
/// queues): the supervisor reads it as a worker that cannot work here, not as a crash.
pub const EXIT_ENVIRONMENT: i32 = 3;

/// A worker's exit status when a job it ran in its own process (no-fork mode) overran its
/// timeout: a native function cannot be interrupted, so SIGALRM ends the worker; the
/// supervisor's crash cleanup settles the job as timed out.
pub const EXIT_INLINE_TIMEOUT: i32 = 4;

/// A worker's exit status when a cold shutdown (a second stop signal, or its supervisor's
/// death) came while it ran a job in its own process (no-fork mode): there is no horse to
/// kill, so the worker ends at once; the supervisor's crash cleanup settles the job.
pub const EXIT_COLD_IN_PROCESS: i32 = 5;

/// Set by rq-supervisor to its own pid in every worker's environment, so a worker can tell
/// that its supervisor died (its parent pid changed) and stop cold (see `worker::signals`).
pub const SUPERVISOR_PID_ENV: &str = "RQ_SUPERVISOR_PID";

/// The names of the `rqworker` flags the supervisor writes; `worker::cli` declares its
/// options with these. They are in `docs/supervisor.md` too, and custom worker programs
/// (`program = ...`) built with the library parse them with the same `WorkerArgs`.
pub mod flag {
    /// `rq-supervisor worker ...`: the worker built into the supervisor's own executable,
    /// which pools without `program` run. (A separate `rqworker` next to it could be another
    /// program: Python RQ installs a script of that name in every virtualenv.)
    pub const WORKER: &str = "worker";
    /// `-c`, short for `--config`: the form the supervisor has always written.
    pub const CONFIG: char = 'c';
    pub const CONFIG_FD: &str = "config-fd";
    pub const POOL: &str = "pool";
    pub const BURST: &str = "burst";
    pub const MAX_JOBS: &str = "max-jobs";
    pub const LOG_FORMAT: &str = "log-format";
    pub const PAUSED: &str = "paused";
}

/// systemd's variables for the supervisor alone: a worker that inherited them could send
/// notifications in its name, or be taken for the service's watchdog.
const SUPERVISOR_ONLY_ENV: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Overrides the host's name for the supervisor and every worker it starts (they inherit
/// it): when several hosts share a machine name (containers built from one image, a test
/// that plays several hosts on one machine), their workers must still be told apart in
/// Redis, since RQ names a worker `<hostname>.<pid>` and pids repeat across hosts.
pub const HOSTNAME_ENV: &str = "RQ_HOSTNAME";

/// This host's name, as a worker puts it in its default name and its record's `hostname`:
/// `$RQ_HOSTNAME` when set and not blank, else the kernel's.
pub fn hostname() -> String {
    hostname_from(std::env::var(HOSTNAME_ENV).ok())
}

fn hostname_from(overridden: Option<String>) -> String {
    if let Some(h) = overridden.map(|h| h.trim().to_string())
        && !h.is_empty()
    {
        return h;
    }
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The name a worker registers under without `--name`: `<hostname>.<pid>`, as RQ's.
pub fn default_worker_name(hostname: &str, pid: u32) -> String {
    format!("{hostname}.{pid}")
}

/// Everything one supervised worker is started with.
pub struct Launch {
    /// The worker binary.
    pub program: PathBuf,
    /// `program` is rq-supervisor itself, run as its built-in worker (`worker` first).
    pub builtin: bool,
    /// The pool file's absolute path, for the worker's messages and relative paths; the
    /// worker reads the file's text from the handoff, not from this path.
    pub config_path: PathBuf,
    /// The pool, whose `[pools.NAME.worker]` table applies and which names every log line.
    pub pool: String,
    pub queues: Vec<String>,
    pub burst: bool,
    /// This worker's own draw from the pool's `max_jobs` range.
    pub max_jobs: Option<u64>,
    /// Set when the supervisor logs JSON, so the shared stream stays one format; `None`
    /// leaves the worker's own setting.
    pub log_format: Option<LogFormat>,
    /// Given through the environment: it may hold a password, and argv is public in `ps`.
    pub redis_url: String,
    /// The supervisor itself: the worker's parent for as long as the supervisor lives.
    pub supervisor: Pid,
    /// The pool's `user` and `group` ids, applied when the supervisor runs as root.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The pool's `cwd`: the app's project directory, where Python jobs import from.
    pub cwd: Option<PathBuf>,
    /// The pool's `env`, on top of the supervisor's environment.
    pub env: std::collections::BTreeMap<String, String>,
    /// More `rqworker` options, written before the queues (a command-line pool's worker
    /// options: `--path`, `--serializer`, `--log-format`...).
    pub extra_args: Vec<OsString>,
    /// Its pool is paused: the worker starts taking no job until SIGUSR2.
    pub paused: bool,
}

impl Launch {
    /// The worker's arguments (after the program name).
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if self.builtin {
            args.push(flag::WORKER.into());
        }
        args.extend::<[OsString; 6]>([
            format!("-{}", flag::CONFIG).into(),
            self.config_path.clone().into(),
            long(flag::CONFIG_FD),
            WORKER_FD.to_string().into(),
            long(flag::POOL),
            self.pool.clone().into(),
        ]);
        if self.burst {
            args.push(long(flag::BURST));
        }
        if let Some(n) = self.max_jobs {
            args.extend([long(flag::MAX_JOBS), n.to_string().into()]);
        }
        if let Some(f) = self.log_format {
            args.extend([long(flag::LOG_FORMAT), f.name().into()]);
        }
        if self.paused {
            args.push(long(flag::PAUSED));
        }
        args.extend(self.extra_args.iter().cloned());
        // Queue names may start with a dash.
        args.push("--".into());
        args.extend(self.queues.iter().map(OsString::from));
        args
    }

    /// The variables the worker gets on top of the supervisor's environment.
    pub fn envs(&self) -> [(&'static str, String); 2] {
        [
            (REDIS_URL_ENV, self.redis_url.clone()),
            (SUPERVISOR_PID_ENV, self.supervisor.as_raw().to_string()),
        ]
    }

    /// Starts the worker with `handoff` on [`WORKER_FD`].
    pub fn spawn(&self, handoff: &Handoff) -> io::Result<Child> {
        let fd = handoff.to_memfd()?;
        let child = self.command(fd.as_raw_fd()).spawn();
        // The child has its copy (or failed); the parent's is no longer needed.
        drop(fd);
        child
    }

    /// The command, with `handoff_fd` moved to [`WORKER_FD`] in the child; `handoff_fd` must
    /// stay open until the command is spawned.
    pub(crate) fn command(&self, handoff_fd: RawFd) -> Command {
        let mut cmd = Command::new(&self.program);
        // The pool's variables first: the contract's own must not be overridden by them.
        cmd.args(self.args())
            .envs(&self.env)
            .envs(self.envs())
            .stdin(Stdio::null())
            .process_group(0);
        for var in SUPERVISOR_ONLY_ENV {
            cmd.env_remove(var);
        }
        // The handoff carries the Sentinels' credentials; kept out of the worker's
        // environment, every horse would inherit them.
        for var in [SENTINEL_USERNAME_ENV, SENTINEL_PASSWORD_ENV] {
            cmd.env_remove(var);
        }
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        // `user`/`group`: std sets the group, drops supplementary groups and sets the user
        // before the pre_exec closure below runs, so the parent-death signal is set after
        // the credentials change (a change of credentials would clear it).
        if let Some(gid) = self.gid {
            cmd.gid(gid);
        }
        if let Some(uid) = self.uid {
            cmd.uid(uid);
        }
        let supervisor = self.supervisor;
        // SAFETY: between fork and exec only async-signal-safe calls are allowed, and no
        // allocation (another thread may have held the allocator's lock at the fork). prctl,
        // getppid, dup2 and fcntl are async-signal-safe; the closure captures two integers;
        // and every error is built with `from_raw_os_error` / `last_os_error`, which wrap the
        // code without allocating (unlike `io::Error::new` or `io::Error::other`).
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)
                    .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
                if getppid() != supervisor {
                    // The supervisor died between fork and prctl: do not start orphaned.
                    return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
                }
                // The handoff at its fixed number, without close-on-exec. dup2 onto itself
                // would keep the flag, so clear it by hand in that case.
                if handoff_fd == WORKER_FD {
                    if nix::libc::fcntl(WORKER_FD, nix::libc::F_SETFD, 0) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                } else if nix::libc::dup2(handoff_fd, WORKER_FD) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

fn long(name: &str) -> OsString {
    format!("--{name}").into()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::worker::WorkerArgs;

    #[test]
    fn the_worker_options_of_a_command_line_pool_are_read_by_the_workers_cli() {
        use crate::supervisor::cli::{Cli, Source};
        let cli =
            Cli::try_parse_from(["rq-supervisor", "-n", "2", "-P", "/app", "-S", "json", "q"])
                .unwrap();
        let Ok(Source::CommandLine { worker_args, .. }) = cli.pool.source() else {
            panic!("a command-line pool")
        };
        let mut argv = vec![std::ffi::OsString::from("rqworker")];
        argv.extend(worker_args);
        argv.push("q".into());
        let w = WorkerArgs::try_parse_from(argv).unwrap();
        assert_eq!(w.path, [std::path::PathBuf::from("/app")]);
    }

    #[test]
    fn rq_hostname_overrides_the_kernels_name_unless_blank() {
        let kernel = hostname_from(None);
        assert!(!kernel.is_empty());
        assert_eq!(hostname_from(Some(" host-b ".into())), "host-b");
        assert_eq!(hostname_from(Some("  ".into())), kernel);
        assert_eq!(hostname_from(Some(String::new())), kernel);
    }

    fn launch() -> Launch {
        Launch {
            program: "/opt/rq/rqworker".into(),
            builtin: false,
            config_path: "/etc/rq/pool.toml".into(),
            pool: "fast".into(),
            // A queue that looks like a flag must stay a queue.
            queues: vec!["high".into(), "--burst".into(), "-low".into()],
            burst: true,
            max_jobs: Some(523),
            log_format: Some(LogFormat::Json),
            redis_url: "redis://:s3cret@db:6379/2".into(),
            supervisor: Pid::from_raw(4242),
            uid: None,
            gid: None,
            cwd: None,
            env: Default::default(),
            extra_args: Vec::new(),
            paused: true,
        }
    }

    /// The command the supervisor builds, parsed by the worker's real command line.
    fn round_trip(l: &Launch) -> WorkerArgs {
        let cmd = l.command(7);
        assert_eq!(cmd.get_program(), l.program.as_os_str());
        let argv = std::iter::once(cmd.get_program()).chain(cmd.get_args());
        WorkerArgs::try_parse_from(argv).expect("rqworker parses what the supervisor writes")
    }

    #[test]
    fn the_worker_parses_every_field_the_supervisor_writes() {
        let l = launch();
        let a = round_trip(&l);
        assert_eq!(a.config.as_deref(), Some(l.config_path.as_path()));
        assert_eq!(a.config_fd, Some(WORKER_FD));
        assert_eq!(a.pool.as_deref(), Some("fast"));
        assert_eq!(a.queues, l.queues);
        assert!(a.burst);
        assert!(a.paused);
        assert_eq!(a.max_jobs, Some(523));
        assert_eq!(
            a.log_format,
            Some(crate::worker::cli::LogFormatArg::Named(LogFormat::Json))
        );
        // Nothing else is set: the rest comes from the pool file.
        assert_eq!(a.url, None);
        assert_eq!(a.name, None);
        assert_eq!(a.settings().max_jobs, Some(523));
        assert_eq!(
            a.settings(),
            crate::settings::WorkerSettings {
                max_jobs: Some(523),
                log_format: Some(LogFormat::Json),
                ..Default::default()
            }
        );

        let plain = Launch {
            burst: false,
            paused: false,
            max_jobs: None,
            log_format: None,
            queues: vec!["default".into()],
            ..launch()
        };
        let a = round_trip(&plain);
        assert!(!a.burst);
        assert!(!a.paused);
        assert_eq!(a.max_jobs, None);
        assert_eq!(a.log_format, None);
        assert_eq!(a.queues, ["default"]);
    }

    #[test]
    fn the_built_in_worker_gets_the_same_arguments_after_worker() {
        let l = Launch {
            program: "/usr/bin/rq-supervisor".into(),
            builtin: true,
            ..launch()
        };
        let args = l.args();
        assert_eq!(args[0], flag::WORKER);
        assert_eq!(args[1..], launch().args()[..]);
        // What rq-supervisor's main does with it: drop `worker`, parse the rest as rqworker.
        let argv = std::iter::once(OsString::from("rq-supervisor")).chain(args.into_iter().skip(1));
        let a = WorkerArgs::try_parse_from(argv).unwrap();
        assert_eq!(a.pool.as_deref(), Some("fast"));
    }

    #[test]
    fn the_argv_is_the_documented_one() {
        // docs/supervisor.md: PROGRAM -c /absolute/path/pool.toml --config-fd 3 --pool NAME
        // [--burst] [--max-jobs N] [--log-format json] [--paused] -- QUEUE...
        let args: Vec<String> = launch()
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "-c",
                "/etc/rq/pool.toml",
                "--config-fd",
                "3",
                "--pool",
                "fast",
                "--burst",
                "--max-jobs",
                "523",
                "--log-format",
                "json",
                "--paused",
                "--",
                "high",
                "--burst",
                "-low"
            ]
        );
    }

    #[test]
    fn the_url_and_the_supervisor_pid_go_through_the_environment_not_argv() {
        let l = launch();
        let cmd = l.command(WORKER_FD);
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(envs.contains(&(
            REDIS_URL_ENV.as_ref(),
            Some("redis://:s3cret@db:6379/2".as_ref())
        )));
        assert!(envs.contains(&(SUPERVISOR_PID_ENV.as_ref(), Some("4242".as_ref()))));
        for arg in cmd.get_args() {
            assert!(!arg.to_string_lossy().contains("s3cret"), "{arg:?}");
        }
    }

    #[test]
    fn the_default_name_is_host_dot_pid() {
        assert_eq!(default_worker_name("web1", 4242), "web1.4242");
    }
}
