//! `rqworker`'s command line, mirroring `rq worker`'s options where they exist.

use std::path::PathBuf;

use clap::Parser;

use crate::config::values::{parse_duration, parse_ttl};
use crate::config::{self, Config, HandlerSpec, WorkerSpec};

#[derive(Debug, Parser)]
#[command(
    name = "rqworker",
    version,
    about = "Run an RQ worker: take jobs from Redis queues in priority order, one at a time, \
             each in a forked work horse. Wire-compatible with Python RQ 2.12 (JSON serializer).",
    after_help = "Signals: the first SIGINT/SIGTERM finishes the current job, registers death and \
                  exits 0; the second kills the work horse, fails its job and still registers death.\n\
                  Exit codes: 0 stopped cleanly, 1 runtime error (Redis unreachable, name taken), \
                  2 bad usage or config."
)]
pub struct WorkerArgs {
    /// Queues to listen on, highest priority first.
    #[arg(value_name = "QUEUE")]
    pub queues: Vec<String>,
    /// Pool config file (the same file rq-supervisor reads); its [redis], [worker] and
    /// [handlers] tables apply.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
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
    #[arg(short = 'b', long = "burst")]
    pub burst: bool,
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
    #[arg(long = "max-jobs", value_name = "N")]
    pub max_jobs: Option<u64>,
    /// Exit after being idle this long.
    #[arg(long = "max-idle-time", value_name = "DURATION", value_parser = parse_duration)]
    pub max_idle_time: Option<std::time::Duration>,
    /// Queue order per dequeue: default, round_robin or random.
    #[arg(long = "dequeue-strategy", value_name = "STRATEGY")]
    pub dequeue_strategy: Option<String>,
    /// Also move due scheduled jobs to their queues (enqueue_in / enqueue_at / retry intervals).
    #[arg(long = "with-scheduler")]
    pub with_scheduler: bool,
    /// Serializer; only JSON is supported (the option exists for `rq worker` compatibility).
    #[arg(short = 'S', long = "serializer", value_name = "SERIALIZER")]
    pub serializer: Option<String>,
    /// Log debug messages.
    #[arg(short = 'v', long = "verbose", conflicts_with = "quiet")]
    pub verbose: bool,
    /// Log only warnings and errors.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Log format: text or json.
    #[arg(long = "log-format", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Write the worker's pid to this file (removed on exit).
    #[arg(long = "pid", value_name = "FILE")]
    pub pid: Option<PathBuf>,
    /// Pool name, shown in every log line (set by rq-supervisor).
    #[arg(long = "pool", hide = true)]
    pub pool: Option<String>,
    /// Read the pool file's text and the TLS files from this inherited descriptor instead of
    /// from disk (set by rq-supervisor; see `worker::handoff`).
    #[arg(
        long = "config-fd",
        hide = true,
        value_name = "FD",
        requires = "config"
    )]
    pub config_fd: Option<i32>,
}

/// Everything `worker::run` needs, resolved from the CLI, the config and the environment.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub name: Option<String>,
    pub queues: Vec<String>,
    pub burst: bool,
    pub spec: WorkerSpec,
    pub url: String,
    pub handlers: Vec<HandlerSpec>,
    pub pid_file: Option<PathBuf>,
    pub pool: Option<String>,
    /// TLS CA and client certificate contents for `rediss://` (empty: system roots).
    pub tls: crate::conn::TlsMaterial,
}

impl WorkerArgs {
    /// Applies precedence: command line over `[pools.<pool>.worker]` over `[worker]` over
    /// RQ's defaults. Errors are complete messages for the user.
    pub fn resolve(self) -> Result<WorkerOptions, String> {
        let mut handed_tls = None;
        let cfg = match (&self.config, self.config_fd) {
            (Some(_), Some(fd)) => {
                let h = super::handoff::Handoff::read_fd(fd)?;
                handed_tls = Some(h.tls);
                Some(Config::parse(&h.config_path, &h.config).map_err(|e| e.to_string())?)
            }
            (Some(path), None) => Some(Config::load(path).map_err(|e| e.to_string())?),
            (None, _) => None,
        };
        let mut spec = match &cfg {
            Some(c) => match self
                .pool
                .as_deref()
                .and_then(|p| c.pools.iter().find(|x| x.name == p))
            {
                Some(pool) => c.worker_for_pool(pool),
                None => c.worker.clone(),
            },
            None => WorkerSpec::default(),
        };
        if let Some(s) = &self.serializer
            && !matches!(s.as_str(), "json" | "rq.serializers.JSONSerializer")
        {
            return Err(format!(
                "--serializer {s}: rqworker reads only JSON jobs; enqueue with serializer=JSONSerializer and pass --serializer json (or nothing)"
            ));
        }
        spec.builtin_handlers |= self.builtin_handlers;
        spec.with_scheduler |= self.with_scheduler;
        if let Some(v) = self.results_ttl {
            spec.results_ttl = v;
        }
        if let Some(v) = self.worker_ttl {
            if v.as_secs() < 16 {
                return Err(
                    "--worker-ttl must be at least 16s (heartbeats come every worker_ttl - 15s)"
                        .into(),
                );
            }
            spec.worker_ttl = config::values::Secs(v);
        }
        if let Some(v) = self.job_monitoring_interval {
            if v.is_zero() {
                return Err("--job-monitoring-interval must be more than 0".into());
            }
            spec.job_monitoring_interval = config::values::Secs(v);
        }
        if let Some(v) = self.maintenance_interval {
            spec.maintenance_interval = config::values::Secs(v);
        }
        if let Some(v) = self.max_jobs {
            if v == 0 {
                return Err("--max-jobs must be 1 or more".into());
            }
            spec.max_jobs = Some(v);
        }
        if let Some(v) = self.max_idle_time {
            spec.max_idle_time = Some(config::values::Secs(v));
        }
        if let Some(v) = &self.dequeue_strategy {
            spec.dequeue_strategy = config::parse_strategy(v).ok_or_else(|| {
                format!("--dequeue-strategy {v}: write default, round_robin or random")
            })?;
        }
        if self.verbose {
            spec.log_level = config::LogLevel::Debug;
        }
        if self.quiet {
            spec.log_level = config::LogLevel::Warning;
        }
        if let Some(v) = &self.log_format {
            spec.log_format = config::parse_format(v)
                .ok_or_else(|| format!("--log-format {v}: write text or json"))?;
        }
        let mut queues = self.queues;
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
        let tls = match handed_tls {
            Some(tls) => tls,
            None => Config::resolve_tls(
                &cfg.as_ref()
                    .map(|c| c.redis_tls.clone())
                    .unwrap_or_default(),
            )
            .read()
            .map_err(|e| e.to_string())?,
        };
        Ok(WorkerOptions {
            tls,
            name: self.name,
            queues,
            burst: self.burst,
            spec,
            url,
            handlers: cfg.map(|c| c.handlers).unwrap_or_default(),
            pid_file: self.pid,
            pool: self.pool,
        })
    }
}
