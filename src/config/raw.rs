//! The config file exactly as written: every table and key optional where it may be, unknown
//! keys refused. [`super::spec`] turns this into the validated, typed value the rest of the
//! crate uses ("low args / high args").

use std::collections::BTreeMap;

use serde::Deserialize;

use super::values::{Bytes, Secs, Ttl};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub redis: RawRedis,
    #[serde(default)]
    pub supervisor: RawSupervisor,
    #[serde(default)]
    pub worker: RawWorker,
    #[serde(default)]
    pub pools: BTreeMap<String, RawPool>,
    #[serde(default)]
    pub handlers: BTreeMap<String, RawHandler>,
    #[serde(default)]
    pub python: RawPython,
}

/// `[python]`: how workers run the app's Python job functions.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPython {
    pub executable: Option<String>,
    #[serde(default)]
    pub path: Vec<String>,
    #[serde(default)]
    pub preload: Vec<String>,
    pub serializer: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: Option<String>,
    pub tls_ca_file: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    /// The Sentinels' own credentials, for a `redis+sentinel://` URL.
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSupervisor {
    pub warm_timeout: Option<Secs>,
    pub cold_timeout: Option<Secs>,
    pub spawn_stagger: Option<Secs>,
    pub health_interval: Option<Secs>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    /// The control socket's path (default: derived from the pool file's path).
    pub control_socket: Option<String>,
    /// `IP:PORT` (or a bare port, on loopback) for `/metrics` and `/healthz`; off when unset.
    pub metrics: Option<String>,
}

/// Worker settings: `[worker]` for every worker, `[pools.NAME.worker]` to override per pool.
/// The validator turns them into a `settings::WorkerSettings`; strategy, level and format
/// stay text here so that a wrong name is refused by key, in the words the rest use.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorker {
    pub builtin_handlers: Option<bool>,
    pub results_ttl: Option<Ttl>,
    pub worker_ttl: Option<Secs>,
    pub job_monitoring_interval: Option<Secs>,
    pub maintenance_interval: Option<Secs>,
    pub max_jobs: Option<u64>,
    pub max_idle_time: Option<Secs>,
    pub dequeue_strategy: Option<String>,
    pub with_scheduler: Option<bool>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub fork: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub queues: Option<Vec<String>>,
    pub workers: Option<i64>,
    pub burst: Option<bool>,
    pub program: Option<String>,
    pub max_jobs: Option<u64>,
    pub max_jobs_jitter: Option<u64>,
    pub memory_limit: Option<Bytes>,
    pub user: Option<String>,
    pub group: Option<String>,
    /// The workers' working directory (the app's project directory).
    pub cwd: Option<String>,
    /// Variables added to the workers' environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The pool's Python interpreter, over `[python] executable`.
    pub python: Option<String>,
    #[serde(default)]
    pub worker: RawWorker,
    #[serde(default)]
    pub restart: RawRestart,
    /// `[pools.NAME.autoscale]`: the count follows the queues' backlog within bounds.
    pub autoscale: Option<RawAutoscale>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAutoscale {
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub jobs_per_worker: Option<i64>,
    pub idle_before_scale_down: Option<Secs>,
    pub max_wait: Option<Secs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRestart {
    pub min_uptime: Option<Secs>,
    pub backoff_initial: Option<Secs>,
    pub backoff_max: Option<Secs>,
    pub failure_window: Option<Secs>,
    pub failure_threshold: Option<u32>,
    pub degraded_interval: Option<Secs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHandler {
    pub command: Option<Vec<String>>,
    pub timeout: Option<Secs>,
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}
