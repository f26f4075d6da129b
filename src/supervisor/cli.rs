//! `rq-supervisor`'s command line.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::EXIT_USAGE;

#[derive(Debug, Parser)]
#[command(
    name = "rq-supervisor",
    version,
    about = "Run pools of RQ workers (rqworker) from a pool.toml: restart crashed workers with \
             backoff, clean up after them in Redis, recycle unhealthy ones, reload on SIGHUP, \
             and shut down in two stages.",
    after_help = "Signals: INT/TERM once = warm shutdown (every worker finishes its job); twice \
                  or after warm_timeout = cold (workers kill their horses, jobs fail); \
                  cold_timeout later every process group is SIGKILLed. HUP reloads pool.toml, \
                  TTIN/TTOU add/remove a worker in the first pool (by name).\n\
                  Control: `rq-supervisor -c FILE status|scale|pause|resume|restart|reload|stop` \
                  talk to the supervisor running FILE through its control socket.\n\
                  Exit codes: 0 every worker stopped warm (or every burst pool finished), \
                  1 something was escalated or killed, or a runtime error, 2 bad usage or config."
)]
pub struct Cli {
    /// The pool file (see supervisor.toml.example).
    #[arg(short = 'c', long = "config", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub pool: PoolArgs,
}

/// One pool from the command line instead of a file, as `rq worker-pool -n N QUEUE...`.
#[derive(Debug, Default, clap::Args)]
#[command(next_help_heading = "One pool without a file (as rq worker-pool)")]
pub struct PoolArgs {
    /// Run one pool of N workers on the QUEUEs, without a pool file.
    #[arg(short = 'n', long = "num-workers", value_name = "N")]
    pub num_workers: Option<u32>,
    /// Queues, highest priority first (default: default).
    #[arg(value_name = "QUEUE")]
    pub queues: Vec<String>,
    /// The workers run every queued job, then exit, and so does rq-supervisor.
    #[arg(short = 'b', long = "burst")]
    pub burst: bool,
    /// Redis URL (default: $RQ_REDIS_URL, then redis://127.0.0.1:6379/0).
    #[arg(short = 'u', long = "url", value_name = "URL")]
    pub url: Option<String>,
    /// The workers' log level: DEBUG, INFO, WARNING, ERROR.
    #[arg(
        short = 'l',
        long = "logging-level",
        alias = "logging_level",
        value_name = "LEVEL"
    )]
    pub logging_level: Option<String>,
    #[arg(short = 'v', long = "verbose", conflicts_with = "quiet")]
    pub verbose: bool,
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Passed to every worker, as rqworker's own options of the same names.
    #[arg(short = 'P', long = "path", value_name = "DIR")]
    pub path: Vec<PathBuf>,
    #[arg(short = 'S', long = "serializer", value_name = "SERIALIZER")]
    pub serializer: Option<String>,
    #[arg(long = "exception-handler", value_name = "DOTTED.PATH")]
    pub exception_handler: Vec<String>,
    #[arg(long = "log-format", value_name = "FORMAT")]
    pub log_format: Option<String>,
    #[arg(long = "date-format", value_name = "FORMAT")]
    pub date_format: Option<String>,
    #[arg(short = 'w', long = "worker-class", value_name = "CLASS")]
    pub worker_class: Option<String>,
    #[arg(short = 'j', long = "job-class", value_name = "CLASS")]
    pub job_class: Option<String>,
}

/// Where the pools come from.
#[derive(Debug)]
pub enum Source {
    /// `-c FILE`: its absolute path.
    File(PathBuf),
    /// `-n N QUEUE...`: a pool file's text made from the options, and the options every
    /// worker is started with.
    CommandLine {
        text: String,
        worker_args: Vec<OsString>,
    },
}

/// The pool name of a pool given on the command line.
pub const COMMAND_LINE_POOL: &str = "pool";

impl PoolArgs {
    fn given(&self) -> bool {
        self.num_workers.is_some() || !self.queues.is_empty()
    }

    /// The pool as the text of a pool file (so it is validated as one, and handed to the
    /// workers as one), and the worker options that have no key in a pool file.
    pub(crate) fn source(&self) -> Result<Source, String> {
        let n = self.num_workers.unwrap_or(1);
        let queues = if self.queues.is_empty() {
            vec!["default".to_string()]
        } else {
            self.queues.clone()
        };
        let quoted = |v: &str| toml::Value::String(v.to_string()).to_string();
        let mut text = String::new();
        if let Some(url) = &self.url {
            text.push_str(&format!("[redis]\nurl = {}\n", quoted(url)));
        }
        let level = if self.verbose {
            Some("debug".to_string())
        } else if self.quiet {
            Some("warning".to_string())
        } else {
            self.logging_level.as_ref().map(|l| l.to_ascii_lowercase())
        };
        if let Some(level) = &level {
            let level = if level == "critical" { "error" } else { level };
            text.push_str(&format!("[worker]\nlog_level = {}\n", quoted(level)));
        }
        let list: Vec<String> = queues.iter().map(|q| quoted(q)).collect();
        text.push_str(&format!(
            "[pools.{COMMAND_LINE_POOL}]\nqueues = [{}]\nworkers = {n}\nburst = {}\n",
            list.join(", "),
            self.burst
        ));
        let mut worker_args: Vec<OsString> = Vec::new();
        let mut pass = |flag: &str, value: &OsStr| {
            worker_args.push(flag.into());
            worker_args.push(value.to_owned());
        };
        for p in &self.path {
            pass(
                "--path",
                std::path::absolute(p)
                    .unwrap_or_else(|_| p.clone())
                    .as_os_str(),
            );
        }
        for (flag, value) in [
            ("--serializer", &self.serializer),
            ("--log-format", &self.log_format),
            ("--date-format", &self.date_format),
            ("--worker-class", &self.worker_class),
            ("--job-class", &self.job_class),
        ] {
            if let Some(v) = value {
                pass(flag, OsStr::new(v));
            }
        }
        for h in &self.exception_handler {
            pass("--exception-handler", OsStr::new(h));
        }
        Ok(Source::CommandLine { text, worker_args })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the file and print the effective configuration, including the shutdown
    /// budget to give systemd (TimeoutStopSec) or Kubernetes (terminationGracePeriodSeconds).
    Check,
    /// Show every pool and worker of the running supervisor (through its control socket).
    Status {
        /// Print the snapshot as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Run N workers in POOL until a reload changes that pool's `workers`.
    Scale {
        #[arg(value_name = "POOL")]
        pool: String,
        /// The worker count (checked here, so that a typo is refused with a clear message).
        #[arg(value_name = "N", allow_hyphen_values = true)]
        workers: String,
    },
    /// POOL's workers finish their current job and take no new one until `resume POOL`.
    Pause {
        #[arg(value_name = "POOL")]
        pool: String,
    },
    /// POOL's workers take jobs again.
    Resume {
        #[arg(value_name = "POOL")]
        pool: String,
    },
    /// Replace POOL's workers (every pool's without POOL) one at a time, each finishing its
    /// job first: for a new binary or new application code.
    Restart {
        #[arg(value_name = "POOL")]
        pool: Option<String>,
    },
    /// Read the pool file again, as SIGHUP does, and print what changed or why not.
    Reload,
    /// Shut down: warm (every worker finishes its job), or --cold; waits until it exited.
    Stop {
        /// Go straight to the cold stage: workers kill their horses and fail their jobs.
        #[arg(long)]
        cold: bool,
    },
}

impl Command {
    /// Whether the command talks to a running supervisor rather than reading the file.
    pub fn is_control(&self) -> bool {
        !matches!(self, Command::Check)
    }
}

impl Cli {
    /// Parses the process's arguments into where the pools come from and the command.
    /// `Err` is what `main` returns at once: `Ok(())` after `--help` or `--version`, else
    /// the usage status, with the message already printed.
    pub fn from_env() -> Result<(Source, Option<Command>), Result<(), i32>> {
        let cli = match Cli::try_parse() {
            Ok(cli) => cli,
            Err(e) => {
                let _ = e.print();
                return Err(if e.use_stderr() {
                    Err(EXIT_USAGE)
                } else {
                    Ok(())
                });
            }
        };
        match (cli.config, cli.pool.given()) {
            (Some(_), true) => {
                eprintln!(
                    "rq-supervisor: -c FILE and -n N / QUEUE... both describe the pools; use the file, or the command line alone"
                );
                Err(Err(EXIT_USAGE))
            }
            (Some(path), false) => Ok((
                Source::File(std::path::absolute(&path).unwrap_or(path)),
                cli.command,
            )),
            (None, true) => match cli.pool.source() {
                Ok(source) => Ok((source, cli.command)),
                Err(e) => {
                    eprintln!("rq-supervisor: {e}");
                    Err(Err(EXIT_USAGE))
                }
            },
            (None, false) => {
                eprintln!(
                    "rq-supervisor: no pools; pass -c pool.toml (supervisor.toml.example shows every key), or -n N QUEUE... for one pool of N workers"
                );
                Err(Err(EXIT_USAGE))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_goes_before_or_after_the_command() {
        for argv in [
            ["rq-supervisor", "-c", "pool.toml", "check"],
            ["rq-supervisor", "check", "--config", "pool.toml"],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            assert_eq!(
                cli.config.as_deref(),
                Some(std::path::Path::new("pool.toml"))
            );
            assert!(matches!(cli.command, Some(Command::Check)));
        }
        let cli = Cli::try_parse_from(["rq-supervisor", "-c", "pool.toml"]).unwrap();
        assert!(cli.command.is_none());
    }

    #[test]
    fn a_pool_on_the_command_line_is_a_pool_file() {
        let cli = Cli::try_parse_from([
            "rq-supervisor",
            "-n",
            "3",
            "--burst",
            "-u",
            "redis://h:1/2",
            "-P",
            "/app",
            "-S",
            "json",
            "-l",
            "DEBUG",
            "high",
            "low",
        ])
        .unwrap();
        let Ok(Source::CommandLine { text, worker_args }) = cli.pool.source() else {
            panic!("a command-line pool")
        };
        let cfg = crate::config::Config::parse(std::path::Path::new("/x/cli.toml"), &text).unwrap();
        let pool = &cfg.pools[0];
        assert_eq!(pool.name, COMMAND_LINE_POOL);
        assert_eq!((pool.workers, pool.burst), (3, true));
        assert_eq!(pool.queues, ["high", "low"]);
        assert_eq!(cfg.redis_url.as_deref(), Some("redis://h:1/2"));
        assert_eq!(
            cfg.worker_for_pool(pool).log_level,
            crate::config::LogLevel::Debug
        );
        // That the worker's own command line reads them is launch's round-trip test
        // (`supervisor/` imports nothing of `worker/`, tests included).
        assert_eq!(
            worker_args,
            ["--path", "/app", "--serializer", "json"].map(OsString::from)
        );
    }
}
