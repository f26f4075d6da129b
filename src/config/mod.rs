//! `pool.toml`, shared by `rqworker -c` and `rq-supervisor -c`: parsed raw ([`raw`]), then
//! validated into a [`Config`] whose errors name the file, the key and the fix.

pub mod raw;
pub mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::conn::{SentinelAuth, TlsFile, TlsPaths};
use crate::settings::{self, Problem};
pub use crate::settings::{
    DequeueStrategy, LogFormat, LogLevel, PythonSettings, WorkerSettings, WorkerSpec,
};
use raw::{RawConfig, RawHandler, RawPool, RawPython, RawRedis, RawRestart, RawWorker};
use values::Secs;

/// The Redis URL used when neither the command line, `RQ_REDIS_URL` nor the file names one.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// The longest path a unix socket address holds (`sun_path`, less its NUL).
pub const MAX_SOCKET_PATH: usize = 107;
/// Environment variable that overrides the file's `[redis] url`.
pub const REDIS_URL_ENV: &str = "RQ_REDIS_URL";
/// Environment variables that override `[redis] tls_ca_file`, `tls_cert_file`, `tls_key_file`.
pub const TLS_CA_ENV: &str = "RQ_REDIS_TLS_CA_FILE";
pub const TLS_CERT_ENV: &str = "RQ_REDIS_TLS_CERT_FILE";
pub const TLS_KEY_ENV: &str = "RQ_REDIS_TLS_KEY_FILE";
/// Environment variables that override `[redis] sentinel_username` and `sentinel_password`.
pub const SENTINEL_USERNAME_ENV: &str = "RQ_REDIS_SENTINEL_USERNAME";
pub const SENTINEL_PASSWORD_ENV: &str = "RQ_REDIS_SENTINEL_PASSWORD";

/// A config problem. `Invalid` always carries what to write instead.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}; check the path given to -c/--config")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: {message}\nfix the file at the line shown (supervisor.toml.example shows every key and its type)"
    )]
    Syntax { path: String, message: String },
    #[error("{path}: {key}: {problem}; {fix}")]
    Invalid {
        path: String,
        key: String,
        problem: String,
        fix: String,
    },
}

/// The validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Where it came from, for messages and for resolving relative program paths.
    pub path: PathBuf,
    /// `[redis] url` as written; callers apply the CLI and environment overrides.
    #[serde(skip)]
    pub redis_url: Option<String>,
    /// `[redis] tls_*_file`, resolved against the file's directory; callers apply the
    /// environment overrides with [`Config::resolve_tls`].
    #[serde(skip)]
    pub redis_tls: TlsPaths,
    /// `[redis] sentinel_username` / `sentinel_password`; callers apply the environment's
    /// overrides with [`Config::resolve_sentinel_auth`].
    #[serde(skip)]
    pub redis_sentinel: SentinelAuth,
    pub supervisor: SupervisorSpec,
    /// `[worker]`: the settings every worker starts from (see [`Config::worker_for_pool`]).
    pub worker: WorkerSettings,
    pub pools: Vec<PoolSpec>,
    pub handlers: Vec<HandlerSpec>,
    /// `[python]`: how workers run Python job functions (a pool's `python` key overrides the
    /// interpreter).
    pub python: PythonSettings,
}

#[derive(Debug, Clone, Serialize)]
pub struct SupervisorSpec {
    /// First shutdown stage: how long workers get to finish their jobs.
    pub warm_timeout: Secs,
    /// Second stage: how long after the cold signal before every group is SIGKILLed.
    pub cold_timeout: Secs,
    /// Pause between spawning two workers, so a pool does not open all connections at once.
    pub spawn_stagger: Secs,
    /// How often memory and heartbeats are checked.
    pub health_interval: Secs,
    pub log_format: LogFormat,
    pub log_level: LogLevel,
    /// `control_socket` as written, made absolute (relative paths start at the file's
    /// directory); `None`: the default derived from the pool file's path
    /// (`supervisor::control::default_socket`).
    pub control_socket: Option<PathBuf>,
    /// Where `/metrics` and `/healthz` are served; `None`: not served.
    pub metrics: Option<std::net::SocketAddr>,
}

/// `[pools.NAME.autoscale]`: the pool's count follows its queues' backlog.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoscaleSpec {
    /// Never fewer workers than this; 0 lets an idle pool run none.
    pub min: u32,
    pub max: u32,
    /// Queued jobs per worker before another one starts.
    pub jobs_per_worker: u32,
    /// A worker that has done no job for this long may be retired (warm) when the backlog
    /// no longer needs it; the delay is what keeps the count from flapping.
    pub idle_before_scale_down: Secs,
    /// Also grow while the oldest queued job has waited longer than this.
    pub max_wait: Option<Secs>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolSpec {
    pub name: String,
    pub queues: Vec<String>,
    pub workers: u32,
    pub burst: bool,
    /// The worker binary; `None` means the `rqworker` next to `rq-supervisor`.
    pub program: Option<PathBuf>,
    /// Recycle a worker after a number of jobs drawn from `[max_jobs, max_jobs + jitter]`.
    pub max_jobs: Option<(u64, u64)>,
    /// Worker plus horse RSS above which the worker is recycled between jobs.
    pub memory_limit: Option<u64>,
    /// The account the pool's workers (and so their horses and handlers) run as, when the
    /// supervisor runs as root. Resolved when the file is read, so a typo is refused early.
    pub user: Option<Account>,
    /// The group they run as: `group`, else the `user`'s primary group.
    pub group: Option<Account>,
    /// The pool's `[pools.NAME.worker]` table, applied over `[worker]`; kept apart so a
    /// reload can tell whether it changed.
    pub worker: WorkerSettings,
    pub restart: RestartPolicy,
    /// The workers' working directory: the app's project directory, which Python jobs import
    /// from. `None`: the supervisor's.
    pub cwd: Option<PathBuf>,
    /// Variables added to the workers' environment (their horses and Python jobs see them;
    /// command handlers only through their own `env`).
    pub env: BTreeMap<String, String>,
    /// The pool's Python interpreter, over `[python] executable`.
    pub python: Option<PathBuf>,
    /// `workers` is then the count at start (default: `min`).
    pub autoscale: Option<AutoscaleSpec>,
}

/// A user or group: the name as written and the id it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub name: String,
    pub id: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestartPolicy {
    /// A worker that dies after running at least this long is replaced at once; one that
    /// dies sooner counts as a failure to start, which backs off and can degrade the pool.
    pub min_uptime: Secs,
    /// First delay after a crash; doubles per consecutive crash.
    pub backoff_initial: Secs,
    pub backoff_max: Secs,
    /// Crashes are counted within this sliding window...
    pub failure_window: Secs,
    /// ...and this many within it put the pool in the degraded state.
    pub failure_threshold: u32,
    /// Delay between restarts while degraded.
    pub degraded_interval: Secs,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            min_uptime: Secs::from_secs(1),
            backoff_initial: Secs(Duration::from_millis(100)),
            backoff_max: Secs::from_secs(30),
            failure_window: Secs::from_secs(60),
            failure_threshold: 5,
            degraded_interval: Secs::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HandlerSpec {
    /// The function name, exact or a glob with `*`.
    pub name: String,
    /// Program and fixed arguments; the program path is absolute after validation.
    pub command: Vec<String>,
    /// Used when a job carries no timeout of its own.
    pub timeout: Option<Secs>,
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::read(path).map(|(cfg, _)| cfg)
    }

    /// Reads and validates a config file; also returns its text (which rq-supervisor hands to
    /// its workers, see `launch::handoff`).
    pub fn read(path: &Path) -> Result<(Config, String), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Ok((Config::parse(path, &text)?, text))
    }

    /// Validates config text; `path` is used for messages and relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: shown.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        Validator {
            path: shown,
            dir: path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
        }
        .config(raw, path)
    }

    /// What a worker of `pool` runs with when its command line sets nothing more.
    pub fn worker_for_pool(&self, pool: &PoolSpec) -> WorkerSpec {
        settings::resolve(&self.worker, Some(&pool.worker), &WorkerSettings::default())
    }

    /// The Redis URL after the precedence rule: explicit (CLI), then `RQ_REDIS_URL`, then the
    /// file, then the default.
    pub fn resolve_redis_url(explicit: Option<&str>, file: Option<&str>) -> String {
        explicit
            .map(str::to_string)
            .or_else(|| std::env::var(REDIS_URL_ENV).ok().filter(|s| !s.is_empty()))
            .or_else(|| file.map(str::to_string))
            .unwrap_or_else(|| DEFAULT_REDIS_URL.to_string())
    }

    /// The TLS files after the precedence rule: each `$RQ_REDIS_TLS_*_FILE` variable wins over
    /// the file's key (relative paths in variables start at the current directory).
    pub fn resolve_tls(file: &TlsPaths) -> TlsPaths {
        let pick = |env: &str, from_file: &Option<TlsFile>| match std::env::var_os(env)
            .filter(|v| !v.is_empty())
        {
            Some(v) => Some(TlsFile {
                path: std::path::absolute(&v).unwrap_or_else(|_| PathBuf::from(&v)),
                setting: format!("${env}"),
            }),
            None => from_file.clone(),
        };
        TlsPaths {
            ca: pick(TLS_CA_ENV, &file.ca),
            cert: pick(TLS_CERT_ENV, &file.cert),
            key: pick(TLS_KEY_ENV, &file.key),
        }
    }

    /// The Sentinels' credentials after the precedence rule: each `$RQ_REDIS_SENTINEL_*`
    /// variable wins over the file's key.
    pub fn resolve_sentinel_auth(file: &SentinelAuth) -> SentinelAuth {
        let pick = |env: &str, from_file: &Option<String>| {
            std::env::var(env)
                .ok()
                .filter(|v| !v.is_empty())
                .or_else(|| from_file.clone())
        };
        SentinelAuth {
            username: pick(SENTINEL_USERNAME_ENV, &file.username),
            password: pick(SENTINEL_PASSWORD_ENV, &file.password),
        }
    }

    /// The time an operator must allow between the stop signal and a forced kill.
    pub fn shutdown_budget(&self) -> Duration {
        self.supervisor.warm_timeout.0 + self.supervisor.cold_timeout.0 + Duration::from_secs(5)
    }
}

/// Checks a queue name: RQ joins names with `,` in the worker record and uses them inside
/// key names, so separators, whitespace and control characters are refused.
pub fn check_queue_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a queue name is empty".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == ',' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "queue name {name:?} contains {c:?}, which RQ cannot store in a worker's queue list"
        ));
    }
    Ok(())
}

struct Validator {
    path: String,
    dir: PathBuf,
}

impl Validator {
    fn invalid(
        &self,
        key: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    fn refused(&self, key: impl Into<String>, p: Problem) -> ConfigError {
        self.invalid(key, p.problem, p.fix)
    }

    /// `[redis] sentinel_username` / `sentinel_password`: only beside a Sentinel URL (when
    /// the file names the URL), and never empty.
    fn sentinel_auth(&self, r: &RawRedis) -> Result<SentinelAuth, ConfigError> {
        for (key, v) in [
            ("sentinel_username", &r.sentinel_username),
            ("sentinel_password", &r.sentinel_password),
        ] {
            if v.as_deref() == Some("") {
                return Err(self.invalid(
                    format!("[redis] {key}"),
                    "is empty",
                    "write the Sentinels' credential, or remove the key",
                ));
            }
            if v.is_some()
                && let Some(url) = &r.url
                && !crate::conn::sentinel::is_sentinel_url(url)
            {
                return Err(self.invalid(
                    format!("[redis] {key}"),
                    "is set but [redis] url is not a Sentinel URL",
                    "remove the key, or write the url as redis+sentinel://host:port[,host:port...]/MASTER_NAME",
                ));
            }
        }
        Ok(SentinelAuth {
            username: r.sentinel_username.clone(),
            password: r.sentinel_password.clone(),
        })
    }

    fn config(&self, raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
        if let Some(url) = &raw.redis.url {
            crate::conn::check_url(url)
                .map_err(|e| self.invalid("[redis] url", e.to_string(), "fix the URL"))?;
        }
        let redis_sentinel = self.sentinel_auth(&raw.redis)?;
        let s = &raw.supervisor;
        let d = SupervisorSpec {
            warm_timeout: s.warm_timeout.unwrap_or(Secs::from_secs(60)),
            cold_timeout: s.cold_timeout.unwrap_or(Secs::from_secs(10)),
            spawn_stagger: s.spawn_stagger.unwrap_or(Secs(Duration::from_millis(20))),
            health_interval: s.health_interval.unwrap_or(Secs::from_secs(5)),
            log_format: self
                .name("[supervisor] log_format", &s.log_format)?
                .unwrap_or(LogFormat::Text),
            log_level: self
                .name("[supervisor] log_level", &s.log_level)?
                .unwrap_or(LogLevel::Info),
            control_socket: self.control_socket(&s.control_socket)?,
            metrics: self.metrics(&s.metrics)?,
        };
        if d.health_interval.0.is_zero() {
            return Err(self.invalid(
                "[supervisor] health_interval",
                "is 0",
                "write a duration such as \"5s\"",
            ));
        }
        let worker = self.worker_settings("[worker]", &raw.worker)?;
        let mut pools = Vec::new();
        for (name, p) in raw.pools {
            pools.push(self.pool(name, p)?);
        }
        let mut handlers = Vec::new();
        for (name, h) in raw.handlers {
            handlers.push(self.handler(name, h)?);
        }
        let tls_file = |key: &str, v: Option<String>| -> Result<Option<TlsFile>, ConfigError> {
            match v {
                None => Ok(None),
                Some(p) if p.is_empty() => Err(self.invalid(
                    format!("[redis] {key}"),
                    "is empty",
                    "write the path of a PEM file, or remove the key",
                )),
                Some(p) => Ok(Some(TlsFile {
                    path: self.dir.join(p),
                    setting: format!("[redis] {key}"),
                })),
            }
        };
        let redis_tls = TlsPaths {
            ca: tls_file("tls_ca_file", raw.redis.tls_ca_file)?,
            cert: tls_file("tls_cert_file", raw.redis.tls_cert_file)?,
            key: tls_file("tls_key_file", raw.redis.tls_key_file)?,
        };
        // After the environment's overrides: a certificate in the file and its key in
        // $RQ_REDIS_TLS_KEY_FILE is a pair.
        let effective = Config::resolve_tls(&redis_tls);
        if effective.cert.is_some() != effective.key.is_some() {
            return Err(self.invalid(
                "[redis] tls_cert_file / tls_key_file",
                "only one of them is set",
                "set both (a client certificate and its key), or neither",
            ));
        }
        let python = self.python(raw.python)?;
        Ok(Config {
            path: path.to_path_buf(),
            redis_url: raw.redis.url,
            redis_tls,
            redis_sentinel,
            supervisor: d,
            worker,
            pools,
            handlers,
            python,
        })
    }

    /// A `[worker]` or `[pools.NAME.worker]` table as typed settings, checked by the rules
    /// the command line obeys too (`settings::WorkerSettings::check`).
    fn worker_settings(&self, table: &str, w: &RawWorker) -> Result<WorkerSettings, ConfigError> {
        let mut out = WorkerSettings {
            builtin_handlers: w.builtin_handlers,
            results_ttl: w.results_ttl.map(|t| t.0),
            worker_ttl: w.worker_ttl,
            job_monitoring_interval: w.job_monitoring_interval,
            maintenance_interval: w.maintenance_interval,
            max_jobs: w.max_jobs,
            max_idle_time: w.max_idle_time,
            with_scheduler: w.with_scheduler,
            fork: w.fork,
            ..WorkerSettings::default()
        };
        // The rules before the names, the order in which the keys are reported.
        out.check()
            .map_err(|r| self.refused(format!("{table} {}", r.key.file_key()), r.problem))?;
        out.dequeue_strategy =
            self.name(&format!("{table} dequeue_strategy"), &w.dequeue_strategy)?;
        out.log_level = self.name(&format!("{table} log_level"), &w.log_level)?;
        out.log_format = self.name(&format!("{table} log_format"), &w.log_format)?;
        Ok(out)
    }

    /// A strategy, level or format written by name (the file keeps them as text, so that a
    /// wrong one is reported by key like every other refusal, not as a TOML type error).
    fn name<T: FromStr<Err = Problem>>(
        &self,
        key: &str,
        v: &Option<String>,
    ) -> Result<Option<T>, ConfigError> {
        v.as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|p| self.refused(key, p))
    }

    fn pool(&self, name: String, p: RawPool) -> Result<PoolSpec, ConfigError> {
        let table = format!("[pools.{name}]");
        if check_queue_name(&name).is_err() || name.contains('.') {
            return Err(self.invalid(
                &table,
                format!("pool name {name:?} has spaces, dots or commas"),
                "name pools with letters, digits, - and _",
            ));
        }
        let queues = p.queues.ok_or_else(|| {
            self.invalid(
                format!("{table} queues"),
                "is missing",
                "write queues = [\"default\"] with the queues in priority order",
            )
        })?;
        if queues.is_empty() {
            return Err(self.invalid(
                format!("{table} queues"),
                "is empty",
                "list at least one queue, e.g. queues = [\"default\"]",
            ));
        }
        for q in &queues {
            check_queue_name(q).map_err(|e| {
                self.invalid(
                    format!("{table} queues"),
                    e,
                    "use names without commas, spaces or control characters",
                )
            })?;
        }
        let autoscale = self.autoscale(&table, p.autoscale)?;
        let workers = match &autoscale {
            None => self.pool_workers(&table, p.workers.unwrap_or(1))?,
            Some(a) => self.autoscaled_workers(&table, a, p.workers, p.burst)?,
        };
        let program = match p.program {
            Some(prog) => Some(self.executable(&format!("{table} program"), &prog)?),
            None => None,
        };
        let max_jobs = self.pool_max_jobs(&table, p.max_jobs, p.max_jobs_jitter)?;
        if let Some(m) = p.memory_limit
            && m.0 < 1024 * 1024
        {
            return Err(self.invalid(
                format!("{table} memory_limit"),
                format!("{} bytes is below 1 MiB", m.0),
                "write a size such as \"512MiB\"",
            ));
        }
        let worker = self.worker_settings(&format!("[pools.{name}.worker]"), &p.worker)?;
        let (user, group) = self.run_as(&table, p.user, p.group)?;
        Ok(PoolSpec {
            name,
            queues,
            workers,
            burst: p.burst.unwrap_or(false),
            program,
            max_jobs,
            memory_limit: p.memory_limit.map(|b| b.0),
            user,
            group,
            worker,
            restart: self.restart(&table, p.restart)?,
            cwd: self.directory(&format!("{table} cwd"), p.cwd)?,
            env: self.env(&format!("{table} env"), p.env)?,
            python: match p.python {
                Some(prog) => Some(self.executable(&format!("{table} python"), &prog)?),
                None => None,
            },
            autoscale,
        })
    }

    /// `control_socket`: a path, relative to the file's directory, whose directory exists
    /// and which fits in a unix socket address.
    fn control_socket(&self, v: &Option<String>) -> Result<Option<PathBuf>, ConfigError> {
        let key = "[supervisor] control_socket";
        let Some(text) = v else { return Ok(None) };
        if text.is_empty() {
            return Err(self.invalid(
                key,
                "is empty",
                "write a path such as \"/run/rq-supervisor/pool.sock\", or remove the key for the default",
            ));
        }
        let path = std::path::absolute(self.dir.join(text)).unwrap_or_else(|_| self.dir.join(text));
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(self.invalid(
                key,
                format!(
                    "{} is longer than the {MAX_SOCKET_PATH} bytes a unix socket path may have",
                    path.display()
                ),
                "choose a shorter path",
            ));
        }
        if !path.parent().is_some_and(Path::is_dir) {
            return Err(self.invalid(
                key,
                format!("the directory of {} does not exist", path.display()),
                "create it, or choose a path in an existing directory",
            ));
        }
        Ok(Some(path))
    }

    /// `metrics`: `IP:PORT`, or a bare port (`"9187"`, `":9187"`) on loopback.
    fn metrics(&self, v: &Option<String>) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let Some(text) = v else { return Ok(None) };
        let port = text.strip_prefix(':').unwrap_or(text);
        if let Ok(port) = port.parse::<u16>() {
            return Ok(Some((std::net::Ipv4Addr::LOCALHOST, port).into()));
        }
        text.parse().map(Some).map_err(|_| {
            self.invalid(
                "[supervisor] metrics",
                format!("{text:?} is not an address"),
                "write an IP and a port such as \"127.0.0.1:9187\" (or a bare port for loopback; \"0.0.0.0:9187\" listens on every interface)",
            )
        })
    }

    /// `[pools.NAME.autoscale]`: `max` required, `min <= max`, every count in range.
    fn autoscale(
        &self,
        table: &str,
        a: Option<raw::RawAutoscale>,
    ) -> Result<Option<AutoscaleSpec>, ConfigError> {
        let Some(a) = a else { return Ok(None) };
        let key = |k: &str| format!("{table} autoscale.{k}");
        let count = |k: &str, v: i64, least: i64| -> Result<u32, ConfigError> {
            u32::try_from(v)
                .ok()
                .filter(|n| i64::from(*n) >= least && *n <= 10_000)
                .ok_or_else(|| {
                    self.invalid(
                        key(k),
                        format!("is {v}"),
                        format!("write a number from {least} to 10000"),
                    )
                })
        };
        let max = a.max.ok_or_else(|| {
            self.invalid(
                key("max"),
                "is missing",
                "write max = N, the most workers the pool may run",
            )
        })?;
        let max = count("max", max, 1)?;
        let min = count("min", a.min.unwrap_or(1), 0)?;
        if min > max {
            return Err(self.invalid(
                key("min"),
                format!("{min} is above max ({max})"),
                "make min at most max",
            ));
        }
        let jobs_per_worker = count("jobs_per_worker", a.jobs_per_worker.unwrap_or(10), 1)?;
        let idle = a.idle_before_scale_down.unwrap_or(Secs::from_secs(30));
        if idle.0 < Duration::from_secs(1) {
            return Err(self.invalid(
                key("idle_before_scale_down"),
                format!("{idle} is under 1s, which would retire a worker between two jobs"),
                "write a duration such as \"30s\"",
            ));
        }
        if a.max_wait.is_some_and(|w| w.0.is_zero()) {
            return Err(self.invalid(
                key("max_wait"),
                "is 0",
                "write a duration such as \"5s\", or remove the key",
            ));
        }
        Ok(Some(AutoscaleSpec {
            min,
            max,
            jobs_per_worker,
            idle_before_scale_down: idle,
            max_wait: a.max_wait,
        }))
    }

    /// An autoscaled pool's `workers`: the count at start, within `[min, max]`; `min` when
    /// left out. Such a pool is not a burst pool.
    fn autoscaled_workers(
        &self,
        table: &str,
        a: &AutoscaleSpec,
        workers: Option<i64>,
        burst: Option<bool>,
    ) -> Result<u32, ConfigError> {
        if burst == Some(true) {
            return Err(self.invalid(
                format!("{table} burst"),
                "is true in an autoscaled pool; burst workers exit when the queues are empty, which leaves autoscale nothing to steer",
                "remove burst, or remove the pool's autoscale table",
            ));
        }
        let Some(w) = workers else { return Ok(a.min) };
        u32::try_from(w)
            .ok()
            .filter(|w| (a.min..=a.max).contains(w))
            .ok_or_else(|| {
                self.invalid(
                    format!("{table} workers"),
                    format!("{w} is outside autoscale's [min, max] = [{}, {}]", a.min, a.max),
                    "write a count within them (it is the count at start), or leave workers out to start at min",
                )
            })
    }

    /// A directory a key names, relative to the file's; it must exist.
    fn directory(&self, key: &str, dir: Option<String>) -> Result<Option<PathBuf>, ConfigError> {
        let Some(dir) = dir else { return Ok(None) };
        let path = self.dir.join(&dir);
        if !path.is_dir() {
            return Err(self.invalid(
                key,
                format!("{} is not a directory", path.display()),
                "create it or fix the path (relative paths start at the config file's directory)",
            ));
        }
        Ok(Some(std::path::absolute(&path).unwrap_or(path)))
    }

    /// Environment variables a key sets: names without `=` or NUL, values without NUL.
    fn env(
        &self,
        key: &str,
        env: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        if let Some((name, _)) = env
            .iter()
            .find(|(k, v)| k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0'))
        {
            return Err(self.invalid(
                key,
                format!("{name:?} cannot be set in an environment"),
                "use names without '=' and values without NUL bytes",
            ));
        }
        Ok(env)
    }

    /// `[python]`: its paths resolved against the file's directory, its interpreter checked.
    fn python(&self, p: RawPython) -> Result<PythonSettings, ConfigError> {
        let executable = match p.executable {
            Some(prog) => Some(self.executable("[python] executable", &prog)?),
            None => None,
        };
        let mut paths = Vec::new();
        for dir in p.path {
            paths.extend(self.directory("[python] path", Some(dir))?);
        }
        if let Some(m) = p.preload.iter().find(|m| !is_module_name(m)) {
            return Err(self.invalid(
                "[python] preload",
                format!("{m:?} is not a module name"),
                "write dotted module names, e.g. preload = [\"myapp.tasks\"]",
            ));
        }
        Ok(PythonSettings {
            executable,
            paths,
            preload: p.preload,
            serializer: p.serializer,
            ..PythonSettings::default()
        })
    }

    /// A pool's `workers`: at least one, at most 10000.
    fn pool_workers(&self, table: &str, workers: i64) -> Result<u32, ConfigError> {
        if workers < 1 {
            return Err(self.invalid(
                format!("{table} workers"),
                format!("is {workers}; a pool needs at least one worker"),
                "write workers = 1 or more, or remove the pool (a pool may run no worker only with [pools.NAME.autoscale] and min = 0)",
            ));
        }
        u32::try_from(workers)
            .ok()
            .filter(|w| *w <= 10_000)
            .ok_or_else(|| {
                self.invalid(
                    format!("{table} workers"),
                    format!("{workers} is too many"),
                    "write at most 10000",
                )
            })
    }

    /// A pool's `max_jobs` and `max_jobs_jitter`, as the range each worker draws from.
    fn pool_max_jobs(
        &self,
        table: &str,
        max_jobs: Option<u64>,
        jitter: Option<u64>,
    ) -> Result<Option<(u64, u64)>, ConfigError> {
        match (max_jobs, jitter) {
            (Some(0), _) => Err(self.invalid(
                format!("{table} max_jobs"),
                "is 0",
                "write 1 or more, or remove the key",
            )),
            (Some(n), j) => Ok(Some((n, n.saturating_add(j.unwrap_or(0))))),
            (None, Some(_)) => Err(self.invalid(
                format!("{table} max_jobs_jitter"),
                "is set without max_jobs",
                "add max_jobs = N, or remove max_jobs_jitter",
            )),
            (None, None) => Ok(None),
        }
    }

    /// Resolves `user` and `group` to ids (the group defaults to the user's primary group).
    fn run_as(
        &self,
        table: &str,
        user: Option<String>,
        group: Option<String>,
    ) -> Result<(Option<Account>, Option<Account>), ConfigError> {
        use nix::unistd::{Group, User};
        let user = match user {
            None => None,
            Some(name) => {
                let u = self.account(table, "user", &name, User::from_name(&name))?;
                Some((
                    Account {
                        name,
                        id: u.uid.as_raw(),
                    },
                    u.gid.as_raw(),
                ))
            }
        };
        let group = match group {
            None => user.as_ref().map(|(_, gid)| Account {
                name: Group::from_gid((*gid).into())
                    .ok()
                    .flatten()
                    .map(|g| g.name)
                    .unwrap_or_else(|| gid.to_string()),
                id: *gid,
            }),
            Some(name) => {
                let g = self.account(table, "group", &name, Group::from_name(&name))?;
                Some(Account {
                    name,
                    id: g.gid.as_raw(),
                })
            }
        };
        Ok((user.map(|(u, _)| u), group))
    }

    /// The result of looking up a `user` or `group` by name, or an error naming the key and
    /// the fix.
    fn account<T>(
        &self,
        table: &str,
        kind: &str,
        name: &str,
        found: nix::Result<Option<T>>,
    ) -> Result<T, ConfigError> {
        let (create, file) = if kind == "user" {
            ("the account (e.g. useradd --system NAME)", "/etc/passwd")
        } else {
            ("the group (e.g. groupadd --system NAME)", "/etc/group")
        };
        match found {
            Ok(Some(account)) => Ok(account),
            Ok(None) => Err(self.invalid(
                format!("{table} {kind}"),
                format!("there is no {kind} {name:?} on this system"),
                format!("create {create} or fix the name"),
            )),
            Err(e) => Err(self.invalid(
                format!("{table} {kind}"),
                format!("cannot look up {kind} {name:?}: {e}"),
                format!("check {file} or the system's {kind} database"),
            )),
        }
    }

    fn restart(&self, table: &str, r: RawRestart) -> Result<RestartPolicy, ConfigError> {
        let d = RestartPolicy::default();
        let policy = RestartPolicy {
            min_uptime: r.min_uptime.unwrap_or(d.min_uptime),
            backoff_initial: r.backoff_initial.unwrap_or(d.backoff_initial),
            backoff_max: r.backoff_max.unwrap_or(d.backoff_max),
            failure_window: r.failure_window.unwrap_or(d.failure_window),
            failure_threshold: r.failure_threshold.unwrap_or(d.failure_threshold),
            degraded_interval: r.degraded_interval.unwrap_or(d.degraded_interval),
        };
        if policy.backoff_max < policy.backoff_initial {
            return Err(self.invalid(
                format!("{table} restart.backoff_max"),
                "is below backoff_initial",
                "make backoff_max at least backoff_initial",
            ));
        }
        if policy.failure_threshold == 0 {
            return Err(self.invalid(
                format!("{table} restart.failure_threshold"),
                "is 0",
                "write 1 or more",
            ));
        }
        Ok(policy)
    }

    fn handler(&self, name: String, h: RawHandler) -> Result<HandlerSpec, ConfigError> {
        let table = format!("[handlers.\"{name}\"]");
        if name.is_empty() {
            return Err(self.invalid(
                &table,
                "the function name is empty",
                "name the handler after the function jobs call, e.g. [handlers.\"tasks.send\"]",
            ));
        }
        let mut command = h.command.ok_or_else(|| {
            self.invalid(
                format!("{table} command"),
                "is missing",
                "write command = [\"/path/to/program\", \"fixed-arg\"]",
            )
        })?;
        if command.is_empty() || command[0].is_empty() {
            return Err(self.invalid(
                format!("{table} command"),
                "is empty",
                "write command = [\"/path/to/program\"]",
            ));
        }
        let cwd = h.cwd.map(|c| self.dir.join(c));
        if let Some(c) = &cwd
            && !c.is_dir()
        {
            return Err(self.invalid(
                format!("{table} cwd"),
                format!("{} is not a directory", c.display()),
                "create it or fix the path",
            ));
        }
        command[0] = self
            .executable(&format!("{table} command"), &command[0])?
            .display()
            .to_string();
        Ok(HandlerSpec {
            name,
            command,
            timeout: h.timeout,
            cwd,
            env: h.env,
        })
    }

    /// Resolves a program like a shell would find it (relative paths against the config
    /// file's directory) and checks that it can be executed.
    fn executable(&self, key: &str, program: &str) -> Result<PathBuf, ConfigError> {
        match find_executable(&self.dir, program) {
            Ok(p) => Ok(p),
            Err(problem) => Err(self.invalid(key, problem, "install the program, fix the path (relative paths start at the config file's directory), or make it executable with chmod +x")),
        }
    }
}

/// `pkg.module`: dot-separated Python identifiers.
pub fn is_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_alphanumeric() || c == '_')
        })
}

/// Finds `program`: a path with a `/` is taken relative to `base`, a bare name is looked up
/// in `PATH`. The result must be an executable regular file.
pub fn find_executable(base: &Path, program: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let check = |p: &Path| -> Result<PathBuf, String> {
        let meta =
            std::fs::metadata(p).map_err(|e| format!("{} cannot be used: {e}", p.display()))?;
        if !meta.is_file() {
            return Err(format!("{} is not a file", p.display()));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(format!("{} is not executable", p.display()));
        }
        Ok(std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
    };
    if program.contains('/') {
        return check(&base.join(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return check(&candidate);
        }
    }
    Err(format!("{program:?} was not found in PATH"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/tmp/pool.toml"), text)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn example_shape_parses() {
        let c = parse(
            r#"
[redis]
url = "redis://127.0.0.1:6379/0"
[supervisor]
warm_timeout = "60s"
cold_timeout = 10
[worker]
builtin_handlers = true
[pools.default]
queues = ["high", "normal", "low"]
workers = 4
burst = false
max_jobs = 100
max_jobs_jitter = 20
memory_limit = "256MiB"
[pools.default.worker]
job_monitoring_interval = "5s"
[handlers."tasks.echo"]
command = ["echo", "x"]
timeout = "30s"
"#,
        )
        .unwrap();
        assert_eq!(c.supervisor.cold_timeout, Secs::from_secs(10));
        assert_eq!(c.pools[0].workers, 4);
        assert_eq!(c.pools[0].max_jobs, Some((100, 120)));
        assert_eq!(c.worker.builtin_handlers, Some(true));
        let w = c.worker_for_pool(&c.pools[0]);
        assert_eq!(w.job_monitoring_interval, Secs::from_secs(5));
        assert!(c.handlers[0].command[0].starts_with('/'));
    }

    #[test]
    fn errors_name_file_key_and_fix() {
        let e = err("[pools.a]\nqueues = [\"q\"]\nworkers = 0\n");
        assert!(
            e.contains("/tmp/pool.toml")
                && e.contains("[pools.a] workers")
                && e.contains("workers = 1"),
            "{e}"
        );
        let e = err("[pools.a]\nqueues = []\n");
        assert!(e.contains("queues") && e.contains("is empty"), "{e}");
        let e = err("[pools.a]\nqueues = [\"a b\"]\n");
        assert!(e.contains("contains"), "{e}");
        let e = err("[pools.a]\nqueues = [\"q\"]\nwrokers = 2\n");
        assert!(
            e.contains("unknown field `wrokers`") && e.contains("workers"),
            "{e}"
        );
        let e = err("[supervisor]\nwarm_timeout = \"soon\"\n");
        assert!(e.contains("warm_timeout") && e.contains("30s"), "{e}");
        let e = err("[pools.a]\nqueues = \"q\"\n");
        assert!(e.contains("invalid type"), "{e}");
        let e = err("[handlers.\"t.x\"]\ncommand = [\"/no/such/program\"]\n");
        assert!(
            e.contains("/no/such/program") && e.contains("chmod +x"),
            "{e}"
        );
        let e = err("[redis]\nurl = \"redis://h/0\"\nsentinel_password = \"x\"\n");
        assert!(
            e.contains("[redis] sentinel_password") && e.contains("not a Sentinel URL"),
            "{e}"
        );
        let e = err("[redis]\nurl = \"redis+sentinel://h:1\"\n");
        assert!(
            e.contains("[redis] url") && e.contains("names no master"),
            "{e}"
        );
        let e = err("[redis]\nurl = \"redis+sentinel://h/m\"\nsentinel_username = \"\"\n");
        assert!(e.contains("[redis] sentinel_username: is empty"), "{e}");
        let e = err("[redis]\nurl = \"http://x\"\n");
        assert!(e.contains("[redis] url"), "{e}");
        let e = err("[worker\n");
        assert!(e.contains("/tmp/pool.toml"), "{e}");
    }

    #[test]
    fn autoscale_bounds_and_workers() {
        let pool = |auto: &str, workers: &str| {
            parse(&format!(
                "[pools.a]\nqueues = [\"q\"]\n{workers}\n[pools.a.autoscale]\n{auto}\n"
            ))
        };
        let c = pool("min = 0\nmax = 8", "").unwrap();
        let a = c.pools[0].autoscale.clone().unwrap();
        assert_eq!((a.min, a.max, a.jobs_per_worker), (0, 8, 10));
        assert_eq!(a.idle_before_scale_down, Secs::from_secs(30));
        assert_eq!(c.pools[0].workers, 0, "starts at min");
        assert_eq!(
            pool("min = 2\nmax = 8", "workers = 5").unwrap().pools[0].workers,
            5
        );
        let e = pool("min = 2\nmax = 8", "workers = 9")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[pools.a] workers") && e.contains("[2, 8]"),
            "{e}"
        );
        let e = pool("min = 1", "").unwrap_err().to_string();
        assert!(
            e.contains("autoscale.max") && e.contains("is missing"),
            "{e}"
        );
        let e = pool("min = 9\nmax = 8", "").unwrap_err().to_string();
        assert!(
            e.contains("autoscale.min") && e.contains("above max"),
            "{e}"
        );
        let e = pool("max = 8\njobs_per_worker = 0", "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("jobs_per_worker") && e.contains("from 1"), "{e}");
        let e = pool("max = 8\nidle_before_scale_down = \"100ms\"", "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("idle_before_scale_down"), "{e}");
        let e = pool("max = 8\nmax_wait = 0", "").unwrap_err().to_string();
        assert!(e.contains("max_wait"), "{e}");
        let e = pool("max = 8\nmaxx = 9", "").unwrap_err().to_string();
        assert!(e.contains("unknown field `maxx`"), "{e}");
        let e = pool("max = 8", "burst = true").unwrap_err().to_string();
        assert!(e.contains("[pools.a] burst"), "{e}");
        let e = err("[pools.a]\nqueues = [\"q\"]\nworkers = 0\n");
        assert!(
            e.contains("min = 0"),
            "workers = 0 stays refused without autoscale: {e}"
        );
    }

    #[test]
    fn metrics_and_control_socket() {
        let sup = |body: &str| parse(&format!("[supervisor]\n{body}\n"));
        let m = sup("metrics = \"9187\"")
            .unwrap()
            .supervisor
            .metrics
            .unwrap();
        assert_eq!(m.to_string(), "127.0.0.1:9187", "a bare port is loopback");
        let m = sup("metrics = \"0.0.0.0:9100\"")
            .unwrap()
            .supervisor
            .metrics
            .unwrap();
        assert_eq!(m.to_string(), "0.0.0.0:9100");
        let e = sup("metrics = \"localhost:x\"").unwrap_err().to_string();
        assert!(
            e.contains("[supervisor] metrics") && e.contains("127.0.0.1:9187"),
            "{e}"
        );
        assert!(
            sup("").unwrap().supervisor.metrics.is_none(),
            "off unless set"
        );
        let c = sup("control_socket = \"ctl.sock\"").unwrap();
        assert_eq!(
            c.supervisor.control_socket.as_deref(),
            Some(Path::new("/tmp/ctl.sock"))
        );
        let e = sup("control_socket = \"/no/such/dir/x.sock\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("control_socket") && e.contains("does not exist"),
            "{e}"
        );
        let long = format!("control_socket = \"/tmp/{}\"", "x".repeat(120));
        assert!(sup(&long).unwrap_err().to_string().contains("107 bytes"));
    }
}
