//! Worker settings: one partial type, [`WorkerSettings`], that each layer fills (the file's
//! `[worker]` table, a pool's `[pools.NAME.worker]` table, `rqworker`'s command line), one
//! set of rules every layer obeys ([`WorkerSettings::check`]), and one merge
//! ([`resolve`]) into the complete [`WorkerSpec`] a worker runs with.
//!
//! Values are typed when a layer is read (the file's serde types and clap's value parsers
//! share the parsers in [`crate::config::values`] and the `FromStr` impls here), so no value
//! travels as text between the layers. A refusal is a [`Refusal`]: the setting ([`Key`]) and
//! the [`Problem`] with its fix; each caller only adds where the value was written, so the
//! file and the command line word a problem identically:
//!
//! ```text
//! /p/pool.toml: [worker] maintenance_interval: is 0; write a duration such as "30s"
//! rqworker: --maintenance-interval: is 0; write a duration such as "30s"
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::config::values::Secs;
use crate::protocol::defaults;

/// What is wrong with a value and what to write instead; shown as `problem; fix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub problem: String,
    pub fix: String,
}

impl Problem {
    fn new(problem: impl Into<String>, fix: impl Into<String>) -> Problem {
        Problem {
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.problem, self.fix)
    }
}

/// So clap can use the `FromStr` impls below as value parsers, and print the problem.
impl std::error::Error for Problem {}

/// A setting that a layer got wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub key: Key,
    pub problem: Problem,
}

/// The worker settings, by name: a file key is the name, a command-line flag the name with
/// dashes (`maintenance_interval`, `--maintenance-interval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    BuiltinHandlers,
    ResultsTtl,
    WorkerTtl,
    JobMonitoringInterval,
    MaintenanceInterval,
    MaxJobs,
    MaxIdleTime,
    DequeueStrategy,
    WithScheduler,
    LogLevel,
    LogFormat,
    Fork,
}

impl Key {
    pub const ALL: [Key; 12] = [
        Key::BuiltinHandlers,
        Key::ResultsTtl,
        Key::WorkerTtl,
        Key::JobMonitoringInterval,
        Key::MaintenanceInterval,
        Key::MaxJobs,
        Key::MaxIdleTime,
        Key::DequeueStrategy,
        Key::WithScheduler,
        Key::LogLevel,
        Key::LogFormat,
        Key::Fork,
    ];

    /// The key in `[worker]` and `[pools.NAME.worker]`.
    pub fn file_key(self) -> &'static str {
        match self {
            Key::BuiltinHandlers => "builtin_handlers",
            Key::ResultsTtl => "results_ttl",
            Key::WorkerTtl => "worker_ttl",
            Key::JobMonitoringInterval => "job_monitoring_interval",
            Key::MaintenanceInterval => "maintenance_interval",
            Key::MaxJobs => "max_jobs",
            Key::MaxIdleTime => "max_idle_time",
            Key::DequeueStrategy => "dequeue_strategy",
            Key::WithScheduler => "with_scheduler",
            Key::LogLevel => "log_level",
            Key::LogFormat => "log_format",
            Key::Fork => "fork",
        }
    }

    /// The `rqworker` flag. `log_level` has none (`-v` and `-q` set it, and cannot be
    /// wrong); a unit test checks that every other one exists.
    pub fn flag(self) -> String {
        match self {
            // As `rq worker`: `-w rq.SimpleWorker` is the no-fork mode.
            Key::Fork => "--worker-class".into(),
            _ => format!("--{}", self.file_key().replace('_', "-")),
        }
    }
}

/// Worker settings as one layer wrote them: `None` is "not set here".
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WorkerSettings {
    pub builtin_handlers: Option<bool>,
    pub results_ttl: Option<i64>,
    pub worker_ttl: Option<Secs>,
    pub job_monitoring_interval: Option<Secs>,
    pub maintenance_interval: Option<Secs>,
    pub max_jobs: Option<u64>,
    pub max_idle_time: Option<Secs>,
    pub dequeue_strategy: Option<DequeueStrategy>,
    pub with_scheduler: Option<bool>,
    pub log_level: Option<LogLevel>,
    pub log_format: Option<LogFormat>,
    /// `false`: jobs run in the worker process, as under RQ's SimpleWorker.
    pub fork: Option<bool>,
}

/// How the worker runs Python job functions (`[python]`, a pool's `python` key, `rqworker`'s
/// Python options). Plain data: without the `python` feature only "no Python" is valid.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PythonSettings {
    /// The interpreter to embed; else `$VIRTUAL_ENV`'s, else `python3` on `PATH`.
    pub executable: Option<std::path::PathBuf>,
    /// Import directories after the working directory (`-P/--path`, `[python] path`).
    pub paths: Vec<std::path::PathBuf>,
    /// Modules imported at boot, before the first fork (`--preload`, `[python] preload`).
    pub preload: Vec<String>,
    /// `-S`: `json`, `pickle` or a dotted path; `None` reads pickle or JSON, per job.
    pub serializer: Option<String>,
    /// `--exception-handler` dotted paths, in order.
    pub exception_handlers: Vec<String>,
    /// `-d/--disable-default-exception-handler`.
    pub disable_default_exception_handler: bool,
    /// For `get_current_job().connection` (opened only if the job uses it).
    #[serde(skip)]
    pub redis_url: String,
    /// The Sentinels' credentials, for a `redis+sentinel://` `redis_url`.
    #[serde(skip)]
    pub redis_sentinel: crate::conn::SentinelAuth,
}

/// The shortest `worker_ttl`. Every heartbeat TTL carries [`WorkerSpec::heartbeat_grace`]
/// (`worker_ttl` itself below 16 s) beyond the interval at which it is renewed: that
/// is how long a live worker may go unheard (a stalled Redis, a network blip, a long
/// maintenance pass) before other hosts take its job for abandoned. Below 5 s that margin is
/// within reach of one Redis command's read timeout.
pub const MIN_WORKER_TTL: Duration = Duration::from_secs(5);

/// RQ's slack on every heartbeat TTL (`... + 60` in RQ's worker).
const RQ_HEARTBEAT_GRACE: Duration = Duration::from_secs(60);
/// From this `worker_ttl` up every heartbeat number is RQ's. Below it RQ's `worker_ttl - 15s`
/// leaves no interval to heartbeat at, and our rules scale with `worker_ttl` instead.
pub const RQ_HEARTBEAT_RULES_FROM: Duration = Duration::from_secs(16);

impl WorkerSettings {
    /// The rules every layer obeys, checked in the order of the keys. Names (strategy,
    /// level, format) are checked when a layer is read, as they become typed there.
    pub fn check(&self) -> Result<(), Refusal> {
        let refuse = |key, problem: Problem| Err(Refusal { key, problem });
        if let Some(v) = self.worker_ttl
            && v.0 < MIN_WORKER_TTL
        {
            return refuse(
                Key::WorkerTtl,
                Problem::new(
                    format!("{v} is too short"),
                    "write 5s or more (shorter, one slow Redis reply could get a live worker taken for dead)",
                ),
            );
        }
        // A zero interval would turn the worker's waits into a spin against Redis.
        for (key, v) in [
            (Key::JobMonitoringInterval, self.job_monitoring_interval),
            (Key::MaintenanceInterval, self.maintenance_interval),
        ] {
            if v.is_some_and(|v| v.0.is_zero()) {
                return refuse(key, zero_duration());
            }
        }
        if self.max_jobs == Some(0) {
            return refuse(
                Key::MaxJobs,
                Problem::new("is 0", "write 1 or more, or remove the key for no limit"),
            );
        }
        if self.max_idle_time.is_some_and(|v| v.0.is_zero()) {
            return refuse(Key::MaxIdleTime, zero_duration());
        }
        Ok(())
    }

    /// This layer over `lower`, setting by setting.
    pub fn over(&self, lower: &WorkerSettings) -> WorkerSettings {
        WorkerSettings {
            builtin_handlers: self.builtin_handlers.or(lower.builtin_handlers),
            results_ttl: self.results_ttl.or(lower.results_ttl),
            worker_ttl: self.worker_ttl.or(lower.worker_ttl),
            job_monitoring_interval: self
                .job_monitoring_interval
                .or(lower.job_monitoring_interval),
            maintenance_interval: self.maintenance_interval.or(lower.maintenance_interval),
            max_jobs: self.max_jobs.or(lower.max_jobs),
            max_idle_time: self.max_idle_time.or(lower.max_idle_time),
            dequeue_strategy: self.dequeue_strategy.or(lower.dequeue_strategy),
            with_scheduler: self.with_scheduler.or(lower.with_scheduler),
            log_level: self.log_level.or(lower.log_level),
            log_format: self.log_format.or(lower.log_format),
            fork: self.fork.or(lower.fork),
        }
    }

    /// What this layer leaves unset, from [`WorkerSpec::default`].
    pub fn complete(&self) -> WorkerSpec {
        let d = WorkerSpec::default();
        WorkerSpec {
            builtin_handlers: self.builtin_handlers.unwrap_or(d.builtin_handlers),
            results_ttl: self.results_ttl.unwrap_or(d.results_ttl),
            worker_ttl: self.worker_ttl.unwrap_or(d.worker_ttl),
            job_monitoring_interval: self
                .job_monitoring_interval
                .unwrap_or(d.job_monitoring_interval),
            maintenance_interval: self.maintenance_interval.unwrap_or(d.maintenance_interval),
            max_jobs: self.max_jobs.or(d.max_jobs),
            max_idle_time: self.max_idle_time.or(d.max_idle_time),
            dequeue_strategy: self.dequeue_strategy.unwrap_or(d.dequeue_strategy),
            with_scheduler: self.with_scheduler.unwrap_or(d.with_scheduler),
            log_level: self.log_level.unwrap_or(d.log_level),
            log_format: self.log_format.unwrap_or(d.log_format),
            fork: self.fork.unwrap_or(d.fork),
        }
    }
}

fn zero_duration() -> Problem {
    Problem::new("is 0", "write a duration such as \"30s\"")
}

/// The one precedence rule: RQ's defaults < `[worker]` < `[pools.NAME.worker]` < the
/// command line. Each layer was checked when it was read.
pub fn resolve(
    worker: &WorkerSettings,
    pool: Option<&WorkerSettings>,
    cli: &WorkerSettings,
) -> WorkerSpec {
    let file = match pool {
        Some(pool) => pool.over(worker),
        None => worker.clone(),
    };
    cli.over(&file).complete()
}

/// Effective worker settings, after defaults, `[worker]`, a pool's overrides and the CLI.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerSpec {
    pub builtin_handlers: bool,
    /// Default result TTL for jobs that set none (`--results-ttl`).
    pub results_ttl: i64,
    pub worker_ttl: Secs,
    pub job_monitoring_interval: Secs,
    pub maintenance_interval: Secs,
    pub max_jobs: Option<u64>,
    pub max_idle_time: Option<Secs>,
    pub dequeue_strategy: DequeueStrategy,
    pub with_scheduler: bool,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    /// A work horse forked per job (`true`, RQ's Worker), or the job run in the worker
    /// process (`false`, RQ's SimpleWorker; command handlers still run as a child).
    pub fork: bool,
}

/// The heartbeat timings, derived from `worker_ttl` and `job_monitoring_interval`
/// (docs/worker.md, "Heartbeats"). From `worker_ttl` 16 s up (the default is 420 s) they are
/// RQ's exactly; below, every one scales with `worker_ttl`, so a fleet notices a lost host
/// within seconds.
impl WorkerSpec {
    fn rq_rules(&self) -> bool {
        self.worker_ttl.0 >= RQ_HEARTBEAT_RULES_FROM
    }

    /// What every heartbeat TTL adds to the interval at which it is renewed: RQ's 60 s, or
    /// `worker_ttl` below 16 s.
    pub fn heartbeat_grace(&self) -> Duration {
        if self.rq_rules() {
            RQ_HEARTBEAT_GRACE
        } else {
            self.worker_ttl.0
        }
    }

    /// How often an idle worker renews its record: RQ's `worker_ttl - 15s`, or half of
    /// `worker_ttl` below 16 s.
    pub fn idle_heartbeat_every(&self) -> Duration {
        if self.rq_rules() {
            self.worker_ttl.0 - Duration::from_secs(15)
        } else {
            self.worker_ttl.0 / 2
        }
    }

    /// How often a busy worker heartbeats its job: `job_monitoring_interval` (RQ's), and
    /// below `worker_ttl` 16 s no less often than an idle worker, so a short `worker_ttl`
    /// alone is enough.
    pub fn busy_heartbeat_every(&self) -> Duration {
        let interval = self.job_monitoring_interval.0;
        if self.rq_rules() {
            interval
        } else {
            interval.min(self.idle_heartbeat_every())
        }
    }

    /// An idle worker's record TTL in seconds: `worker_ttl` plus the grace (RQ: + 60).
    pub fn idle_ttl(&self) -> u64 {
        (self.worker_ttl.0 + self.heartbeat_grace()).as_secs()
    }
}

impl Default for WorkerSpec {
    fn default() -> Self {
        WorkerSpec {
            builtin_handlers: false,
            results_ttl: defaults::RESULT_TTL,
            worker_ttl: Secs::from_secs(defaults::WORKER_TTL),
            job_monitoring_interval: Secs::from_secs(defaults::JOB_MONITORING_INTERVAL),
            maintenance_interval: Secs::from_secs(defaults::MAINTENANCE_INTERVAL),
            max_jobs: None,
            max_idle_time: None,
            dequeue_strategy: DequeueStrategy::Default,
            with_scheduler: false,
            log_level: LogLevel::Info,
            log_format: LogFormat::Text,
            fork: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// The name the file and the command line use.
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl FromStr for LogFormat {
    type Err = Problem;
    fn from_str(v: &str) -> Result<LogFormat, Problem> {
        match v {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(Problem::new(
                format!("{v:?} is not a log format"),
                "write \"text\" or \"json\"",
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Error,
    Warning,
    Info,
    Debug,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warning => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
        }
    }
}

impl FromStr for LogLevel {
    type Err = Problem;
    /// Any case, and `warn` for `warning`, as Python's logging names them.
    fn from_str(v: &str) -> Result<LogLevel, Problem> {
        match v.to_ascii_lowercase().as_str() {
            // Python's CRITICAL: our most severe level.
            "error" | "critical" => Ok(LogLevel::Error),
            "warning" | "warn" => Ok(LogLevel::Warning),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            _ => Err(Problem::new(
                format!("{v:?} is not a log level"),
                "write \"error\", \"warning\", \"info\" or \"debug\"",
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DequeueStrategy {
    Default,
    RoundRobin,
    Random,
}

impl fmt::Display for DequeueStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DequeueStrategy::Default => "default",
            DequeueStrategy::RoundRobin => "round_robin",
            DequeueStrategy::Random => "random",
        })
    }
}

impl FromStr for DequeueStrategy {
    type Err = Problem;
    fn from_str(v: &str) -> Result<DequeueStrategy, Problem> {
        match v {
            "default" => Ok(DequeueStrategy::Default),
            "round_robin" => Ok(DequeueStrategy::RoundRobin),
            "random" => Ok(DequeueStrategy::Random),
            _ => Err(Problem::new(
                format!("{v:?} is not a strategy"),
                "write \"default\", \"round_robin\" or \"random\"",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Option<Secs> {
        Some(Secs::from_secs(s))
    }

    #[test]
    fn later_layers_win_setting_by_setting_over_the_defaults() {
        let worker = WorkerSettings {
            worker_ttl: secs(100),
            maintenance_interval: secs(200),
            max_jobs: Some(3),
            builtin_handlers: Some(true),
            ..WorkerSettings::default()
        };
        let pool = WorkerSettings {
            maintenance_interval: secs(300),
            max_jobs: Some(4),
            log_format: Some(LogFormat::Json),
            ..WorkerSettings::default()
        };
        let cli = WorkerSettings {
            max_jobs: Some(5),
            dequeue_strategy: Some(DequeueStrategy::Random),
            ..WorkerSettings::default()
        };
        let spec = resolve(&worker, Some(&pool), &cli);
        // The command line over everything.
        assert_eq!(spec.max_jobs, Some(5));
        assert_eq!(spec.dequeue_strategy, DequeueStrategy::Random);
        // The pool over [worker].
        assert_eq!(spec.maintenance_interval, Secs::from_secs(300));
        assert_eq!(spec.log_format, LogFormat::Json);
        // [worker] over the defaults.
        assert_eq!(spec.worker_ttl, Secs::from_secs(100));
        assert!(spec.builtin_handlers);
        // The defaults where nothing is set.
        let d = WorkerSpec::default();
        assert_eq!(spec.job_monitoring_interval, d.job_monitoring_interval);
        assert_eq!(spec.results_ttl, d.results_ttl);
        assert_eq!(spec.max_idle_time, None);
        assert!(!spec.with_scheduler);
        assert_eq!(spec.log_level, LogLevel::Info);
        // Without a pool, [worker] alone.
        let spec = resolve(&worker, None, &WorkerSettings::default());
        assert_eq!(spec.maintenance_interval, Secs::from_secs(200));
        assert_eq!(spec.max_jobs, Some(3));
        assert_eq!(spec.log_format, LogFormat::Text);
    }

    #[test]
    fn every_rule_names_its_key() {
        let cases = [
            (
                WorkerSettings {
                    worker_ttl: secs(4),
                    ..Default::default()
                },
                Key::WorkerTtl,
                "4s is too short; write 5s or more",
            ),
            (
                WorkerSettings {
                    job_monitoring_interval: secs(0),
                    ..Default::default()
                },
                Key::JobMonitoringInterval,
                "is 0; write a duration such as \"30s\"",
            ),
            (
                WorkerSettings {
                    maintenance_interval: secs(0),
                    ..Default::default()
                },
                Key::MaintenanceInterval,
                "is 0; write a duration such as \"30s\"",
            ),
            (
                WorkerSettings {
                    max_jobs: Some(0),
                    ..Default::default()
                },
                Key::MaxJobs,
                "is 0; write 1 or more",
            ),
            (
                WorkerSettings {
                    max_idle_time: secs(0),
                    ..Default::default()
                },
                Key::MaxIdleTime,
                "is 0; write a duration such as \"30s\"",
            ),
        ];
        for (settings, key, text) in cases {
            let r = settings.check().unwrap_err();
            assert_eq!(r.key, key);
            assert!(r.problem.to_string().starts_with(text), "{}", r.problem);
        }
        let fine = WorkerSettings {
            worker_ttl: secs(5),
            job_monitoring_interval: Some(Secs(Duration::from_millis(1))),
            maintenance_interval: secs(1),
            max_jobs: Some(1),
            max_idle_time: secs(1),
            results_ttl: Some(-1),
            ..Default::default()
        };
        assert_eq!(fine.check(), Ok(()));
    }

    #[test]
    fn heartbeats_are_rqs_from_16s_up_and_follow_a_shorter_worker_ttl() {
        let spec = |ttl: u64, monitoring: u64| WorkerSpec {
            worker_ttl: Secs::from_secs(ttl),
            job_monitoring_interval: Secs::from_secs(monitoring),
            ..WorkerSpec::default()
        };
        let d = WorkerSpec::default();
        // RQ's: beat every 405 s idle, 30 s busy, TTLs + 60.
        assert_eq!(d.idle_heartbeat_every(), Duration::from_secs(405));
        assert_eq!(d.busy_heartbeat_every(), Duration::from_secs(30));
        assert_eq!(d.heartbeat_grace(), Duration::from_secs(60));
        assert_eq!(d.idle_ttl(), 480);
        let rq_smallest = spec(16, 30);
        assert_eq!(rq_smallest.idle_heartbeat_every(), Duration::from_secs(1));
        assert_eq!(rq_smallest.busy_heartbeat_every(), Duration::from_secs(30));
        assert_eq!(rq_smallest.idle_ttl(), 76);
        // Below 16 s: half of worker_ttl idle, busy no less often, grace = worker_ttl.
        let short = spec(10, 30);
        assert_eq!(short.idle_heartbeat_every(), Duration::from_secs(5));
        assert_eq!(short.busy_heartbeat_every(), Duration::from_secs(5));
        assert_eq!(short.heartbeat_grace(), Duration::from_secs(10));
        assert_eq!(short.idle_ttl(), 20);
        assert_eq!(spec(10, 2).busy_heartbeat_every(), Duration::from_secs(2));
        // Every TTL outlives its renewal interval by the grace, at every allowed worker_ttl.
        for ttl in MIN_WORKER_TTL.as_secs()..=500 {
            let s = spec(ttl, 30);
            let idle_ttl = Duration::from_secs(s.idle_ttl());
            assert!(
                s.idle_heartbeat_every() + s.heartbeat_grace() <= idle_ttl,
                "{ttl}"
            );
            assert!(s.heartbeat_grace() >= MIN_WORKER_TTL, "{ttl}");
        }
    }

    #[test]
    fn names_parse_as_the_file_and_the_command_line_write_them() {
        assert_eq!("round_robin".parse(), Ok(DequeueStrategy::RoundRobin));
        assert_eq!("WARN".parse(), Ok(LogLevel::Warning));
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!(
            "fifo".parse::<DequeueStrategy>().unwrap_err().to_string(),
            "\"fifo\" is not a strategy; write \"default\", \"round_robin\" or \"random\""
        );
        assert!("loud".parse::<LogLevel>().is_err());
        assert!("xml".parse::<LogFormat>().is_err());
        for f in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(f.name().parse(), Ok(f));
        }
    }
}
