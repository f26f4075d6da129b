//! `rqworker`'s command line, mirroring `rq worker`'s options where they exist.

use std::path::PathBuf;

use clap::Parser;

use crate::config::values::{Secs, parse_duration, parse_ttl};
use crate::config::{self, Config, HandlerSpec};
use crate::launch::flag;
use crate::launch::handoff::Handoff;
use crate::settings::{
    self, DequeueStrategy, LogFormat, LogLevel, PythonSettings, WorkerSettings, WorkerSpec,
};

#[derive(Debug, Parser)]
#[command(
    name = "rqworker",
    version,
    about = "Run an RQ worker: take jobs from Redis queues in priority order, one at a time, \
             each in a forked work horse. Wire-compatible with Python RQ 2.12 (JSON serializer).",
    after_help = "Signals: the first SIGINT/SIGTERM finishes the current job, registers death and \
                  exits 0; the second kills the work horse, fails its job and still registers death.\n\
                  Exit codes: 0 stopped cleanly, 1 runtime error (name taken), \
                  2 bad usage or config, 3 jobs could not start here (a process or file limit, a \
                  missing program, an interpreter that cannot start; the jobs are back on their queues)."
)]
pub struct WorkerArgs {
    /// Queues to listen on, highest priority first.
    #[arg(value_name = "QUEUE")]
    pub queues: Vec<String>,
    /// Pool config file (the same file rq-supervisor reads); its [redis], [worker] and
    /// [handlers] tables apply.
    #[arg(short = flag::CONFIG, long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Redis URL. Default: $RQ_REDIS_URL, then the config's [redis] url, then
    /// redis://127.0.0.1:6379/0. Prefer the environment for URLs with a password: argv is
    /// visible to every user in `ps`.
    #[arg(short = 'u', long = "url", value_name = "URL")]
    pub url: Option<String>,
    /// Worker name (default: <hostname>.<pid>).
    #[arg(short = 'n', long = "name")]
    pub name: Option<String>,
    /// Run every job currently queued, then exit.
    #[arg(short = 'b', long = flag::BURST)]
    pub burst: bool,
    /// Start paused: take no job until SIGUSR2 (SIGUSR1 pauses again; rq-supervisor's
    /// `pause POOL` / `resume POOL`).
    #[arg(long = flag::PAUSED)]
    pub paused: bool,
    /// Enable rq.builtin.noop, rq.builtin.echo, rq.builtin.sleep and rq.builtin.fail.
    #[arg(long = "builtin-handlers")]
    pub builtin_handlers: bool,
    /// Default result TTL for jobs that set none: seconds, -1 (forever) or 0 (discard).
    #[arg(long = "results-ttl", value_name = "TTL", value_parser = parse_ttl, allow_hyphen_values = true)]
    pub results_ttl: Option<i64>,
    /// How long the worker's registration lives without a heartbeat.
    #[arg(long = "worker-ttl", value_name = "DURATION", value_parser = parse_duration)]
    pub worker_ttl: Option<std::time::Duration>,
    /// Heartbeat interval while a job runs.
    #[arg(long = "job-monitoring-interval", value_name = "DURATION", value_parser = parse_duration)]
    pub job_monitoring_interval: Option<std::time::Duration>,
    /// How often registries are cleaned.
    #[arg(long = "maintenance-interval", value_name = "DURATION", value_parser = parse_duration)]
    pub maintenance_interval: Option<std::time::Duration>,
    /// Exit after this many jobs.
    #[arg(long = flag::MAX_JOBS, value_name = "N")]
    pub max_jobs: Option<u64>,
    /// Exit after being idle this long.
    #[arg(long = "max-idle-time", value_name = "DURATION", value_parser = parse_duration)]
    pub max_idle_time: Option<std::time::Duration>,
    /// Queue order per dequeue: default, round_robin or random.
    #[arg(long = "dequeue-strategy", value_name = "STRATEGY")]
    pub dequeue_strategy: Option<DequeueStrategy>,
    /// Also move due scheduled jobs to their queues (enqueue_in / enqueue_at / retry intervals).
    #[arg(short = 's', long = "with-scheduler")]
    pub with_scheduler: bool,
    /// Serializer of the jobs' payloads and results: json, pickle, or a dotted path to a class
    /// with dumps() and loads(), as `rq worker -S`. Default: pickle or JSON, read per job (and
    /// the result written with the job's own).
    #[arg(short = 'S', long = "serializer", value_name = "SERIALIZER")]
    pub serializer: Option<String>,
    /// A directory to import the app's Python modules from, after the working directory (as
    /// `rq worker -P`); repeatable.
    #[arg(short = 'P', long = "path", value_name = "DIR")]
    pub path: Vec<PathBuf>,
    /// A Python module to import at start, before the first job, so every work horse starts
    /// with it loaded; repeatable. An import error stops the worker (exit 2).
    #[arg(long = "preload", value_name = "MODULE")]
    pub preload: Vec<String>,
    /// The Python interpreter whose packages the jobs import (default: $VIRTUAL_ENV's, else
    /// python3 on PATH); it must be the Python version rqworker was built for.
    #[arg(long = "python", value_name = "EXECUTABLE")]
    pub python: Option<PathBuf>,
    /// A Python exception handler, `module.function(job, exc_type, exc_value, traceback)`, run
    /// in the work horse when a job fails, as `rq worker --exception-handler`; repeatable.
    #[arg(long = "exception-handler", value_name = "DOTTED.PATH")]
    pub exception_handler: Vec<String>,
    /// As `rq worker -d`: a failed Python job is not recorded in the failed registry or its
    /// results (its status still becomes failed).
    #[arg(short = 'd', long = "disable-default-exception-handler")]
    pub disable_default_exception_handler: bool,
    /// Log debug messages.
    #[arg(short = 'v', long = "verbose", conflicts_with = "quiet")]
    pub verbose: bool,
    /// Log only warnings and errors.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Log format: text, json, or a Python logging format string as `rq worker` takes
    /// (e.g. '%(asctime)s %(levelname)s %(message)s').
    #[arg(long = flag::LOG_FORMAT, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,
    /// The date format of %(asctime)s in a Python log format (strftime; RQ's default %H:%M:%S).
    #[arg(long = "date-format", value_name = "FORMAT")]
    pub date_format: Option<String>,
    /// The log level by name, as `rq worker --logging_level`: DEBUG, INFO, WARNING, ERROR.
    #[arg(long = "logging_level", alias = "logging-level", value_name = "LEVEL")]
    pub logging_level: Option<LogLevel>,
    /// Log the job's id instead of its description (its call with the arguments).
    #[arg(long = "disable-job-desc-logging")]
    pub disable_job_desc_logging: bool,
    /// The worker class, as `rq worker -w`: rq.Worker (the default; a work horse per job) or
    /// rq.SimpleWorker (no fork: jobs run in the worker process).
    #[arg(short = 'w', long = "worker-class", value_name = "CLASS")]
    pub worker_class: Option<String>,
    /// The job class, as `rq worker -j`: rq.job.Job.
    #[arg(short = 'j', long = "job-class", value_name = "CLASS")]
    pub job_class: Option<String>,
    /// The queue class, as `rq worker --queue-class`: rq.Queue.
    #[arg(long = "queue-class", value_name = "CLASS")]
    pub queue_class: Option<String>,
    /// The Redis client class, as `rq worker --connection-class`: redis.Redis.
    #[arg(long = "connection-class", value_name = "CLASS")]
    pub connection_class: Option<String>,
    /// Write the worker's pid to this file (removed on exit).
    #[arg(long = "pid", value_name = "FILE")]
    pub pid: Option<PathBuf>,
    /// Pool name, shown in every log line (set by rq-supervisor).
    #[arg(long = flag::POOL, hide = true)]
    pub pool: Option<String>,
    /// For the benchmark: fork N work horses that exit at once, one after the other, print
    /// the rate (forks/s) and exit: the fork-per-job ceiling of this binary.
    #[arg(long = "fork-loop", value_name = "N", hide = true)]
    pub fork_loop: Option<u64>,
    /// Read the pool file's text and the TLS files from this inherited descriptor instead of
    /// from disk (set by rq-supervisor; see `launch::handoff`).
    #[arg(
        long = flag::CONFIG_FD,
        hide = true,
        value_name = "FD",
        requires = "config"
    )]
    pub config_fd: Option<i32>,
}

/// `--log-format`: a format name, or a Python logging format string.
#[derive(Debug, Clone, PartialEq)]
pub enum LogFormatArg {
    Named(LogFormat),
    Python(String),
}

impl std::str::FromStr for LogFormatArg {
    type Err = settings::Problem;
    fn from_str(v: &str) -> Result<LogFormatArg, settings::Problem> {
        if v.contains("%(") {
            return Ok(LogFormatArg::Python(v.to_string()));
        }
        v.parse().map(LogFormatArg::Named)
    }
}

/// RQ's spelling that clap cannot take as is: `-ds` (a two-letter short option) for
/// `--dequeue-strategy`. Every other argument is passed through.
pub fn rq_spellings(args: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    args.into_iter()
        .map(|a| match a.to_str() {
            Some("-ds") => "--dequeue-strategy".into(),
            Some(s) if s.starts_with("-ds=") => format!("--dequeue-strategy={}", &s[4..]).into(),
            _ => a,
        })
        .collect()
}

/// The classes `rq worker -w/-j/--queue-class/--connection-class` may name here: RQ's own
/// (the worker's behaviour is RQ's, in Rust); a custom class would be Python code subclassing
/// RQ's worker, which this worker does not run.
const CLASSES: [(&str, &str, &[&str]); 4] = [
    (
        "-w/--worker-class",
        "rq.Worker",
        &[
            "rq.Worker",
            "rq.worker.Worker",
            "rq.SimpleWorker",
            "rq.worker.SimpleWorker",
        ],
    ),
    ("-j/--job-class", "rq.job.Job", &["rq.job.Job", "rq.Job"]),
    ("--queue-class", "rq.Queue", &["rq.Queue", "rq.queue.Queue"]),
    (
        "--connection-class",
        "redis.Redis",
        &["redis.Redis", "redis.StrictRedis", "redis.client.Redis"],
    ),
];

/// Everything `worker::run` needs, resolved from the CLI, the config and the environment.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub name: Option<String>,
    pub queues: Vec<String>,
    pub burst: bool,
    /// `--paused`: take no job until SIGUSR2.
    pub paused: bool,
    pub spec: WorkerSpec,
    pub url: String,
    pub handlers: Vec<HandlerSpec>,
    pub pid_file: Option<PathBuf>,
    pub pool: Option<String>,
    /// TLS CA and client certificate contents for `rediss://` (empty: system roots).
    pub tls: crate::conn::TlsMaterial,
    /// The Sentinels' own credentials, for a `redis+sentinel://` URL.
    pub sentinel: crate::conn::SentinelAuth,
    pub python: PythonSettings,
    /// `--log-format` as a Python logging format, with `--date-format`.
    pub log_template: Option<crate::logging::Template>,
    /// False with `--disable-job-desc-logging`.
    pub log_descriptions: bool,
}

impl WorkerArgs {
    /// The command line's layer of worker settings. The two switches can only turn a
    /// setting on, so unset they leave the file's value alone.
    pub fn settings(&self) -> WorkerSettings {
        WorkerSettings {
            builtin_handlers: self.builtin_handlers.then_some(true),
            results_ttl: self.results_ttl,
            worker_ttl: self.worker_ttl.map(Secs),
            job_monitoring_interval: self.job_monitoring_interval.map(Secs),
            maintenance_interval: self.maintenance_interval.map(Secs),
            max_jobs: self.max_jobs,
            max_idle_time: self.max_idle_time.map(Secs),
            dequeue_strategy: self.dequeue_strategy,
            with_scheduler: self.with_scheduler.then_some(true),
            fork: self
                .worker_class
                .as_deref()
                .map(|c| !c.ends_with("SimpleWorker")),
            log_level: if self.verbose {
                Some(LogLevel::Debug)
            } else if self.quiet {
                Some(LogLevel::Warning)
            } else {
                self.logging_level
            },
            log_format: match &self.log_format {
                Some(LogFormatArg::Named(f)) => Some(*f),
                // A Python format string is a text format with a template.
                Some(LogFormatArg::Python(_)) => Some(LogFormat::Text),
                None => None,
            },
        }
    }

    /// Applies precedence: command line over `[pools.<pool>.worker]` over `[worker]` over
    /// RQ's defaults (`settings::resolve`). Errors are complete messages for the user.
    pub fn resolve(self) -> Result<WorkerOptions, String> {
        let (cfg, handed) = self.load_config()?;
        let python = self.python_settings(cfg.as_ref())?;
        self.check_classes()?;
        let log_template = match &self.log_format {
            Some(LogFormatArg::Python(f)) => Some(crate::logging::Template::parse(
                f,
                self.date_format
                    .as_deref()
                    .unwrap_or(crate::logging::Template::DEFAULT_DATE_FORMAT),
            )?),
            _ => None,
        };
        let cli = self.settings();
        // The file's tables were checked by the same rules when the file was read.
        cli.check()
            .map_err(|r| format!("{}: {}", r.key.flag(), r.problem))?;
        let spec = match &cfg {
            Some(c) => {
                let pool = self
                    .pool
                    .as_deref()
                    .and_then(|p| c.pools.iter().find(|x| x.name == p));
                settings::resolve(&c.worker, pool.map(|p| &p.worker), &cli)
            }
            None => settings::resolve(&WorkerSettings::default(), None, &cli),
        };
        let queues = checked_queues(self.queues)?;
        if let Some(name) = &self.name
            && (name.is_empty() || name.contains(char::is_whitespace) || name.contains(':'))
        {
            return Err(format!(
                "--name {name:?}: a worker name must be non-empty, without spaces or ':'"
            ));
        }
        let url = Config::resolve_redis_url(
            self.url.as_deref(),
            cfg.as_ref().and_then(|c| c.redis_url.as_deref()),
        );
        let (tls, sentinel) = match handed {
            Some(h) => (h.tls, h.sentinel),
            None => (
                Config::resolve_tls(
                    &cfg.as_ref()
                        .map(|c| c.redis_tls.clone())
                        .unwrap_or_default(),
                )
                .read()
                .map_err(|e| e.to_string())?,
                Config::resolve_sentinel_auth(
                    &cfg.as_ref()
                        .map(|c| c.redis_sentinel.clone())
                        .unwrap_or_default(),
                ),
            ),
        };
        Ok(WorkerOptions {
            log_template,
            log_descriptions: !self.disable_job_desc_logging,
            python: PythonSettings {
                redis_url: url.clone(),
                redis_sentinel: sentinel.clone(),
                ..python
            },
            tls,
            sentinel,
            name: self.name,
            queues,
            burst: self.burst,
            paused: self.paused,
            spec,
            url,
            handlers: cfg.map(|c| c.handlers).unwrap_or_default(),
            pid_file: self.pid,
            pool: self.pool,
        })
    }

    /// `-w`, `-j`, `--queue-class`, `--connection-class`: RQ's own classes only.
    fn check_classes(&self) -> Result<(), String> {
        let given = [
            &self.worker_class,
            &self.job_class,
            &self.queue_class,
            &self.connection_class,
        ];
        for ((option, default, accepted), value) in CLASSES.iter().zip(given) {
            let Some(v) = value else { continue };
            if accepted.contains(&v.as_str()) {
                continue;
            }
            return Err(format!(
                "{option} {v}: rqworker runs RQ's own {default}, in Rust, and cannot load a Python subclass of it; drop the option (custom job code goes in the job functions, exception handlers in --exception-handler)"
            ));
        }
        Ok(())
    }

    /// The Python options: the command line's over the pool's `python` over `[python]`;
    /// without the `python` feature, only what needs no Python.
    fn python_settings(&self, cfg: Option<&Config>) -> Result<PythonSettings, String> {
        let file = cfg.map(|c| c.python.clone()).unwrap_or_default();
        let pool_python = cfg.and_then(|c| {
            let pool = self.pool.as_deref()?;
            c.pools.iter().find(|p| p.name == pool)?.python.clone()
        });
        let serializer = match self.serializer.as_deref().or(file.serializer.as_deref()) {
            // JSON is read per job anyway; naming it changes nothing.
            None | Some("json" | "rq.serializers.JSONSerializer") => None,
            Some(other) => Some(other.to_string()),
        };
        let mut paths = file.paths;
        paths.extend(
            self.path
                .iter()
                .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
        );
        let mut preload = file.preload;
        preload.extend(self.preload.iter().cloned());
        if let Some(m) = preload.iter().find(|m| !config::is_module_name(m)) {
            return Err(format!(
                "--preload {m:?}: not a module name; write a dotted module name such as myapp.tasks"
            ));
        }
        let settings = PythonSettings {
            executable: self.python.clone().or(pool_python).or(file.executable),
            paths,
            preload,
            serializer,
            exception_handlers: self.exception_handler.clone(),
            disable_default_exception_handler: self.disable_default_exception_handler,
            redis_url: String::new(),
            redis_sentinel: Default::default(),
        };
        if cfg!(not(feature = "python")) {
            let needs = if settings.serializer.is_some() {
                Some("--serializer other than json")
            } else if !settings.preload.is_empty() {
                Some("--preload")
            } else if !settings.exception_handlers.is_empty() {
                Some("--exception-handler")
            } else if settings.executable.is_some() {
                Some("--python")
            } else {
                None
            };
            if let Some(option) = needs {
                return Err(format!(
                    "{option}: this rqworker is built without Python (the `python` feature), so it runs only JSON jobs with native, command and built-in handlers; build it with the default features to run Python job functions"
                ));
            }
        }
        Ok(settings)
    }

    /// The config file, from the supervisor's handoff descriptor or from disk, and the
    /// handoff itself (the TLS files' contents, the Sentinels' credentials) when there is one.
    fn load_config(&self) -> Result<(Option<Config>, Option<Handoff>), String> {
        match (&self.config, self.config_fd) {
            (Some(_), Some(fd)) => {
                let h = Handoff::read_fd(fd)?;
                let cfg = Config::parse(&h.config_path, &h.config).map_err(|e| e.to_string())?;
                Ok((Some(cfg), Some(h)))
            }
            (Some(path), None) => Ok((Some(Config::load(path).map_err(|e| e.to_string())?), None)),
            (None, _) => Ok((None, None)),
        }
    }
}

/// The queues to listen on (`default` when none is named), each valid and named once.
fn checked_queues(mut queues: Vec<String>) -> Result<Vec<String>, String> {
    if queues.is_empty() {
        queues.push("default".to_string());
    }
    for q in &queues {
        config::check_queue_name(q)
            .map_err(|e| format!("{e}; pass queue names without commas or spaces"))?;
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = queues.iter().find(|q| !seen.insert(q.as_str())) {
        return Err(format!(
            "queue {dup:?} is listed twice; list each queue once, highest priority first"
        ));
    }
    Ok(queues)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::settings::Key;

    fn args(argv: &[&str]) -> WorkerArgs {
        let argv = std::iter::once("rqworker").chain(argv.iter().copied());
        WorkerArgs::try_parse_from(argv).expect("clap accepts the value")
    }

    /// The command line's refusal, after clap parsed the value.
    fn cli_refusal(argv: &[&str]) -> String {
        args(argv).resolve().expect_err("refused")
    }

    /// The file's refusal of the same value in `[worker]` and `[pools.a.worker]`.
    fn file_refusals(line: &str) -> [String; 2] {
        let parse = |text: String| {
            Config::parse(Path::new("/p/pool.toml"), &text)
                .expect_err("refused")
                .to_string()
        };
        [
            parse(format!("[worker]\n{line}\n")),
            parse(format!(
                "[pools.a]\nqueues = [\"q\"]\n[pools.a.worker]\n{line}\n"
            )),
        ]
    }

    #[test]
    fn the_file_and_the_command_line_refuse_the_same_values_in_the_same_words() {
        for (key, value, core) in [
            (
                Key::WorkerTtl,
                "4",
                "4s is too short; write 5s or more (shorter, one slow Redis reply could get a live worker taken for dead)",
            ),
            (
                Key::JobMonitoringInterval,
                "0",
                "is 0; write a duration such as \"30s\"",
            ),
            (
                Key::MaintenanceInterval,
                "0",
                "is 0; write a duration such as \"30s\"",
            ),
            (
                Key::MaxJobs,
                "0",
                "is 0; write 1 or more, or remove the key for no limit",
            ),
            (
                Key::MaxIdleTime,
                "0",
                "is 0; write a duration such as \"30s\"",
            ),
        ] {
            let flag = key.flag();
            assert_eq!(cli_refusal(&[&flag, value, "q"]), format!("{flag}: {core}"));
            let [worker, pool] = file_refusals(&format!("{} = {value}", key.file_key()));
            assert_eq!(
                worker,
                format!("/p/pool.toml: [worker] {}: {core}", key.file_key())
            );
            assert_eq!(
                pool,
                format!("/p/pool.toml: [pools.a.worker] {}: {core}", key.file_key())
            );
        }
    }

    #[test]
    fn a_zero_maintenance_interval_is_refused_on_the_command_line_as_in_the_file() {
        // It made the idle wait zero: a spin against Redis.
        assert_eq!(
            cli_refusal(&["--maintenance-interval", "0", "q"]),
            "--maintenance-interval: is 0; write a duration such as \"30s\""
        );
        assert_eq!(
            file_refusals("maintenance_interval = 0")[0],
            "/p/pool.toml: [worker] maintenance_interval: is 0; write a duration such as \"30s\""
        );
    }

    #[test]
    fn a_wrong_name_is_refused_with_the_files_words_by_clap() {
        for (flag, key, value, core) in [
            (
                "--dequeue-strategy",
                "dequeue_strategy",
                "fifo",
                "\"fifo\" is not a strategy; write \"default\", \"round_robin\" or \"random\"",
            ),
            (
                "--log-format",
                "log_format",
                "xml",
                "\"xml\" is not a log format; write \"text\" or \"json\"",
            ),
        ] {
            let argv = ["rqworker", flag, value, "q"];
            let e = WorkerArgs::try_parse_from(argv).expect_err("refused");
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
            assert!(e.to_string().contains(core), "{e}");
            let [worker, _] = file_refusals(&format!("{key} = \"{value}\""));
            assert_eq!(worker, format!("/p/pool.toml: [worker] {key}: {core}"));
        }
        let [level, _] = file_refusals("log_level = \"loud\"");
        assert!(level.ends_with(
            "[worker] log_level: \"loud\" is not a log level; write \"error\", \"warning\", \"info\" or \"debug\""
        ));
    }

    #[test]
    fn values_accepted_before_are_still_accepted() {
        let o = args(&[
            "--worker-ttl",
            "16",
            "--job-monitoring-interval",
            "0.5",
            "--maintenance-interval",
            "1ms",
            "--max-idle-time",
            "1s",
            "--max-jobs",
            "1",
            "--results-ttl",
            "-1",
            "--dequeue-strategy",
            "round_robin",
            "--log-format",
            "json",
            "--builtin-handlers",
            "--with-scheduler",
            "-v",
            "q",
        ])
        .resolve()
        .expect("accepted");
        let s = o.spec;
        assert_eq!(s.worker_ttl, Secs::from_secs(16));
        assert_eq!(
            s.job_monitoring_interval,
            Secs(std::time::Duration::from_millis(500))
        );
        assert_eq!(
            s.maintenance_interval,
            Secs(std::time::Duration::from_millis(1))
        );
        assert_eq!(s.max_idle_time, Some(Secs::from_secs(1)));
        assert_eq!(s.max_jobs, Some(1));
        assert_eq!(s.results_ttl, -1);
        assert_eq!(s.dequeue_strategy, DequeueStrategy::RoundRobin);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.log_level, LogLevel::Debug);
        assert!(s.builtin_handlers && s.with_scheduler);
        assert_eq!(
            args(&["-q"]).resolve().unwrap().spec.log_level,
            LogLevel::Warning
        );
        assert_eq!(args(&[]).resolve().unwrap().queues, ["default"]);
    }

    #[test]
    fn the_command_line_wins_over_the_pool_which_wins_over_worker() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.toml");
        std::fs::write(
            &path,
            "[worker]\nmax_jobs = 3\nworker_ttl = \"100s\"\nbuiltin_handlers = true\n\
             [pools.a]\nqueues = [\"q\"]\n[pools.a.worker]\nmax_jobs = 4\nmaintenance_interval = \"7s\"\n",
        )
        .unwrap();
        let c = path.to_str().unwrap();
        let spec = |argv: &[&str]| args(argv).resolve().expect("accepted").spec;
        let s = spec(&["-c", c, "--pool", "a", "--max-jobs", "5", "q"]);
        assert_eq!(s.max_jobs, Some(5));
        assert_eq!(s.maintenance_interval, Secs::from_secs(7));
        assert_eq!(s.worker_ttl, Secs::from_secs(100));
        // A switch the command line does not give leaves the file's value.
        assert!(s.builtin_handlers);
        let s = spec(&["-c", c, "--pool", "a", "q"]);
        assert_eq!(s.max_jobs, Some(4));
        // Without --pool (or with a pool the file does not name), [worker] alone.
        for argv in [&["-c", c, "q"][..], &["-c", c, "--pool", "b", "q"]] {
            let s = spec(argv);
            assert_eq!(s.max_jobs, Some(3));
            assert_eq!(
                s.maintenance_interval,
                WorkerSpec::default().maintenance_interval
            );
        }
    }

    #[test]
    fn every_settings_flag_exists_on_the_command_line() {
        use clap::CommandFactory;
        let cmd = WorkerArgs::command();
        for key in Key::ALL {
            if key == Key::LogLevel {
                continue; // -v and -q
            }
            let flag = key.flag();
            assert!(
                cmd.get_arguments()
                    .any(|a| a.get_long() == flag.strip_prefix("--")),
                "{flag}"
            );
        }
    }
}
