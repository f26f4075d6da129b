//! Builders for the two binaries under test, so that a test reads like the command line a
//! user types: `Rqworker::new(&redis).name("w").burst().queues(["q"]).spawn()` is
//! `RQ_REDIS_URL=... rqworker --name w --burst q`. The Redis URL goes in the environment,
//! never in argv, unless a test says otherwise. Arguments keep the order they are given in;
//! queues, being positional, come last.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::{Command, Output};

use super::{Proc, RedisServer};

/// `rqworker` with its arguments and environment.
pub struct Rqworker {
    cmd: Command,
    queues: Vec<OsString>,
}

impl Rqworker {
    /// `rqworker` against the test redis (`RQ_REDIS_URL`).
    pub fn new(redis: &RedisServer) -> Rqworker {
        Rqworker::at(redis.url())
    }

    /// `rqworker` with `RQ_REDIS_URL=url`.
    pub fn at(url: impl AsRef<OsStr>) -> Rqworker {
        Rqworker::bare().env("RQ_REDIS_URL", url)
    }

    /// `rqworker` without `RQ_REDIS_URL`: the URL comes from `--url` or the config file.
    pub fn without_url() -> Rqworker {
        Rqworker::bare().env_remove("RQ_REDIS_URL")
    }

    fn bare() -> Rqworker {
        Rqworker {
            cmd: Command::new(env!("CARGO_BIN_EXE_rqworker")),
            queues: Vec::new(),
        }
    }

    /// `--name NAME`.
    pub fn name(self, name: impl AsRef<OsStr>) -> Rqworker {
        self.opt("--name", name)
    }

    /// `-c FILE`.
    pub fn config(self, file: impl AsRef<OsStr>) -> Rqworker {
        self.opt("-c", file)
    }

    /// `--burst`.
    pub fn burst(self) -> Rqworker {
        self.arg("--burst")
    }

    /// `--builtin-handlers`.
    pub fn builtin_handlers(self) -> Rqworker {
        self.arg("--builtin-handlers")
    }

    /// The queues to listen on, in priority order (after every other argument).
    pub fn queues<S: AsRef<OsStr>>(mut self, queues: impl IntoIterator<Item = S>) -> Rqworker {
        self.queues
            .extend(queues.into_iter().map(|q| q.as_ref().to_owned()));
        self
    }

    /// An option with its value, e.g. `.opt("--worker-ttl", "16")`.
    pub fn opt(self, option: &str, value: impl AsRef<OsStr>) -> Rqworker {
        self.arg(option).arg(value)
    }

    /// Any other argument, as given.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Rqworker {
        self.cmd.arg(arg);
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Rqworker {
        self.cmd.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Rqworker {
        self.cmd.env_remove(key);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Rqworker {
        self.cmd.current_dir(dir);
        self
    }

    /// The raw `Command`, for the rare test that must start it some other way.
    pub fn command(mut self) -> Command {
        self.cmd.args(&self.queues);
        self.cmd
    }

    /// Starts it with its log captured; killed with its process group on drop.
    pub fn spawn(self) -> Proc {
        Proc::spawn(self.command())
    }

    /// Runs it to the end and returns what it printed.
    pub fn output(self) -> Output {
        self.command().output().expect("run rqworker")
    }
}

/// `rq-supervisor` with its arguments and environment.
pub struct Supervisor {
    cmd: Command,
}

impl Supervisor {
    /// `rq-supervisor -c CONFIG` against the test redis (`RQ_REDIS_URL`).
    pub fn new(redis: &RedisServer, config: impl AsRef<OsStr>) -> Supervisor {
        Supervisor::at(redis.url(), config)
    }

    /// `rq-supervisor -c CONFIG` with `RQ_REDIS_URL=url`.
    pub fn at(url: impl AsRef<OsStr>, config: impl AsRef<OsStr>) -> Supervisor {
        Supervisor::bare().env("RQ_REDIS_URL", url).config(config)
    }

    /// `rq-supervisor -c CONFIG` without `RQ_REDIS_URL`: the URL comes from the file.
    pub fn without_url(config: impl AsRef<OsStr>) -> Supervisor {
        Supervisor::without_url_args().config(config)
    }

    /// `rq-supervisor check -c CONFIG` without `RQ_REDIS_URL`, as an operator checks a file.
    pub fn check(config: impl AsRef<OsStr>) -> Supervisor {
        Supervisor::without_url_args().arg("check").config(config)
    }

    /// `rq-supervisor` without `RQ_REDIS_URL` and no arguments yet.
    pub fn without_url_args() -> Supervisor {
        Supervisor::bare().env_remove("RQ_REDIS_URL")
    }

    /// `rq-supervisor` with the test process's environment and no arguments yet.
    pub fn bare() -> Supervisor {
        Supervisor {
            cmd: Command::new(env!("CARGO_BIN_EXE_rq-supervisor")),
        }
    }

    /// `-c FILE`. The control socket's default directory is then the file's own (as if
    /// systemd's `RuntimeDirectory=` were there), so a test's socket lives and dies with its
    /// temp dir and a control command built the same way finds it; a test that sets
    /// `RUNTIME_DIRECTORY` itself, or removes it, wins.
    pub fn config(mut self, file: impl AsRef<OsStr>) -> Supervisor {
        if let Some(dir) = Path::new(file.as_ref())
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            self.cmd.env("RUNTIME_DIRECTORY", dir);
        }
        self.arg("-c").arg(file)
    }

    /// `rq-supervisor -c FILE ARGS...`: a control command to the supervisor of FILE.
    pub fn control(file: impl AsRef<OsStr>, args: &[&str]) -> Supervisor {
        let mut s = Supervisor::without_url_args().config(file);
        for a in args {
            s = s.arg(a);
        }
        s
    }

    /// Any other argument, as given (`.arg("check")` after `-c FILE` is accepted too).
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Supervisor {
        self.cmd.arg(arg);
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Supervisor {
        self.cmd.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Supervisor {
        self.cmd.env_remove(key);
        self
    }

    /// The supervisor's working directory (its workers start in it unless a pool sets `cwd`).
    /// Only the Python tests care where the workers start.
    #[cfg_attr(not(feature = "python"), allow(dead_code))]
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Supervisor {
        self.cmd.current_dir(dir);
        self
    }

    /// The raw `Command`, for the rare test that must start it some other way.
    pub fn command(self) -> Command {
        self.cmd
    }

    /// Starts it with its log captured; killed with its process group on drop.
    pub fn spawn(self) -> Proc {
        Proc::spawn(self.cmd)
    }

    /// Runs it to the end and returns what it printed.
    pub fn output(mut self) -> Output {
        self.cmd.output().expect("run rq-supervisor")
    }
}
