//! `rq-supervisor check -c pool.toml`: the effective configuration as the supervisor will
//! run it, every default filled in, the Redis password masked, and the shutdown budget the
//! platform must allow before it kills the supervisor.

use std::fmt::Write;
use std::path::Path;

use crate::config::{Config, LogFormat, LogLevel, PoolSpec};
use crate::conn::{RedisTarget, TlsPaths};

/// Says what is wrong when a pool's program cannot be run (the supervisor's own executable,
/// whose built-in worker pools without `program` run, cannot be found; a pool's own program
/// is checked when the file is loaded).
pub fn program_problem(cfg: &Config, default_program: Option<&Path>) -> Option<String> {
    if cfg.pools.iter().all(|p| p.program.is_some()) {
        return None;
    }
    match default_program {
        Some(p) if p.is_file() => None,
        Some(p) => Some(format!(
            "{} is missing: the pools without `program` run the worker built into rq-supervisor's own executable, which was moved or deleted while running; reinstall rq-supervisor, or set program = \"/path/to/rqworker\" in each [pools.NAME]",
            p.display()
        )),
        None => Some("cannot find rq-supervisor's own executable, whose built-in worker the pools without `program` run; set program in each [pools.NAME]".into()),
    }
}

fn level(l: LogLevel) -> &'static str {
    match l {
        LogLevel::Error => "error",
        LogLevel::Warning => "warning",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
    }
}

fn format(f: LogFormat) -> &'static str {
    match f {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    }
}

fn d(x: std::time::Duration) -> String {
    humantime::format_duration(x).to_string()
}

fn mib(b: u64) -> String {
    if b.is_multiple_of(1024 * 1024) {
        format!("{} MiB", b / (1024 * 1024))
    } else {
        format!("{b} bytes")
    }
}

/// The report `check` prints.
pub fn render(
    cfg: &Config,
    target: &RedisTarget,
    tls: &TlsPaths,
    default_program: Option<&Path>,
) -> String {
    let mut o = String::new();
    let s = &cfg.supervisor;
    let budget = cfg.shutdown_budget();
    let _ = writeln!(o, "config: {} is valid", cfg.path.display());
    let source = if std::env::var(crate::config::REDIS_URL_ENV).is_ok_and(|v| !v.is_empty()) {
        "from $RQ_REDIS_URL"
    } else if cfg.redis_url.is_some() {
        "from [redis] url"
    } else {
        "default"
    };
    let _ = writeln!(o, "redis: {} ({source})", target.masked());
    if let Some(s) = target.sentinels() {
        let u = s.url();
        let nodes: Vec<String> = u.nodes.iter().map(|(h, p)| format!("{h}:{p}")).collect();
        let _ = writeln!(
            o,
            "  sentinel: master {:?} through {}{}",
            u.master,
            nodes.join(", "),
            if u.tls { " (TLS)" } else { "" }
        );
    }
    for (what, file) in [
        ("CA", &tls.ca),
        ("client certificate", &tls.cert),
        ("client key", &tls.key),
    ] {
        if let Some(f) = file {
            let _ = writeln!(o, "  tls {what}: {} (from {})", f.path.display(), f.setting);
        }
    }
    let _ = writeln!(o, "[supervisor]");
    let _ = writeln!(o, "  warm_timeout = {}", s.warm_timeout);
    let _ = writeln!(o, "  cold_timeout = {}", s.cold_timeout);
    let _ = writeln!(o, "  spawn_stagger = {}", s.spawn_stagger);
    let _ = writeln!(o, "  health_interval = {}", s.health_interval);
    let _ = writeln!(o, "  log_format = {}", format(s.log_format));
    let _ = writeln!(o, "  log_level = {}", level(s.log_level));
    listeners(&mut o, cfg);
    let _ = writeln!(
        o,
        "shutdown budget: {} (warm_timeout {} + cold_timeout {} + 5s margin)",
        d(budget),
        s.warm_timeout,
        s.cold_timeout
    );
    let secs = budget.as_secs() + u64::from(budget.subsec_nanos() > 0);
    let _ = writeln!(
        o,
        "  systemd: TimeoutStopSec={secs} (with KillMode=mixed)\n  kubernetes: terminationGracePeriodSeconds: {secs}"
    );
    let total: u32 = cfg.pools.iter().map(|p| p.workers).sum();
    let _ = writeln!(o, "pools: {} ({} workers in all)", cfg.pools.len(), total);
    for p in &cfg.pools {
        pool(&mut o, cfg, p, default_program);
    }
    python(&mut o, &cfg.python);
    if cfg.handlers.is_empty() {
        let _ = writeln!(o, "handlers: none declared");
    } else {
        let _ = writeln!(o, "handlers:");
        for h in &cfg.handlers {
            let _ = write!(o, "  {:?}: {}", h.name, h.command.join(" "));
            if let Some(t) = h.timeout {
                let _ = write!(o, " (timeout {t})");
            }
            if let Some(c) = &h.cwd {
                let _ = write!(o, " (cwd {})", c.display());
            }
            if !h.env.is_empty() {
                let keys: Vec<&str> = h.env.keys().map(String::as_str).collect();
                let _ = write!(o, " (env {})", keys.join(", "));
            }
            let _ = writeln!(o);
        }
    }
    o
}

/// `control_socket` (the default spelled out) and `metrics`.
fn listeners(o: &mut String, cfg: &Config) {
    let s = &cfg.supervisor;
    let socket = match &s.control_socket {
        Some(p) => p.display().to_string(),
        None => format!(
            "{} (the default for this file and user)",
            super::control::default_socket(&cfg.path).display()
        ),
    };
    let _ = writeln!(o, "  control_socket = {socket}");
    let _ = writeln!(
        o,
        "  metrics = {}",
        s.metrics.map_or("off".to_string(), |a| format!(
            "http://{a}/metrics and /healthz{}",
            if a.ip().is_loopback() {
                ""
            } else {
                " (not loopback: reachable from other hosts)"
            }
        ))
    );
}

/// `workers`, and autoscale's rule when the pool has one.
fn count(o: &mut String, p: &PoolSpec) {
    let Some(a) = &p.autoscale else {
        let _ = writeln!(o, "  workers = {}", p.workers);
        return;
    };
    let _ = writeln!(
        o,
        "  workers = {} at start; autoscale {}..{}: one per {} queued job(s) plus the busy ones, retiring a worker idle for {}{}",
        p.workers,
        a.min,
        a.max,
        a.jobs_per_worker,
        a.idle_before_scale_down,
        a.max_wait
            .map(|w| format!("; one more while the oldest job waits over {w}"))
            .unwrap_or_default()
    );
}

/// `[python]`, with what each unset key means.
fn python(o: &mut String, p: &crate::config::PythonSettings) {
    let _ = writeln!(
        o,
        "[python] (the app's own job functions; see docs/python.md)"
    );
    let _ = writeln!(
        o,
        "  executable = {}",
        p.executable.as_ref().map_or_else(
            || "$VIRTUAL_ENV's python, else python3 on PATH".to_string(),
            |e| e.display().to_string()
        )
    );
    let paths: Vec<String> = p.paths.iter().map(|d| d.display().to_string()).collect();
    let _ = writeln!(
        o,
        "  path = the working directory{}",
        if paths.is_empty() {
            String::new()
        } else {
            format!(", then {}", paths.join(", "))
        }
    );
    let _ = writeln!(
        o,
        "  preload = {}",
        if p.preload.is_empty() {
            "none (the interpreter starts with the first Python job)".to_string()
        } else {
            p.preload.join(", ")
        }
    );
    let _ = writeln!(
        o,
        "  serializer = {}",
        p.serializer.as_deref().unwrap_or("pickle or JSON, per job")
    );
}

// About 85 lines: one line written per setting, in the order `check` prints them; kept
// whole so the output's layout reads from top to bottom.
fn pool(o: &mut String, cfg: &Config, p: &PoolSpec, default_program: Option<&Path>) {
    let _ = writeln!(o, "[pools.{}]", p.name);
    let _ = writeln!(o, "  queues = {}", p.queues.join(", "));
    count(o, p);
    let _ = writeln!(o, "  burst = {}", p.burst);
    let program = match (&p.program, default_program) {
        (Some(prog), _) => prog.display().to_string(),
        (None, Some(def)) => format!("{} worker (built in, the default)", def.display()),
        (None, None) => "rq-supervisor worker (built in, the default)".to_string(),
    };
    let _ = writeln!(o, "  program = {program}");
    if let Some(dir) = &p.cwd {
        let _ = writeln!(o, "  cwd = {}", dir.display());
    }
    if !p.env.is_empty() {
        let keys: Vec<&str> = p.env.keys().map(String::as_str).collect();
        let _ = writeln!(o, "  env = {}", keys.join(", "));
    }
    if let Some(py) = &p.python {
        let _ = writeln!(o, "  python = {}", py.display());
    }
    if p.user.is_some() || p.group.is_some() {
        let show = |a: &Option<crate::config::Account>| {
            a.as_ref()
                .map(|a| format!("{} ({})", a.name, a.id))
                .unwrap_or_else(|| "unchanged".into())
        };
        let _ = writeln!(
            o,
            "  runs as: user {}, group {}",
            show(&p.user),
            show(&p.group)
        );
    }
    match p.max_jobs {
        Some((lo, hi)) if lo == hi => {
            let _ = writeln!(o, "  max_jobs = {lo}");
        }
        Some((lo, hi)) => {
            let _ = writeln!(
                o,
                "  max_jobs = {lo}..={hi} (each worker draws its own --max-jobs)"
            );
        }
        None => {
            let _ = writeln!(o, "  max_jobs = unlimited");
        }
    }
    let _ = writeln!(
        o,
        "  memory_limit = {}",
        p.memory_limit
            .map(mib)
            .unwrap_or_else(|| "none".to_string())
    );
    let r = &p.restart;
    let _ = writeln!(
        o,
        "  restart: backoff {} doubling up to {} (full jitter); degraded after {} failures within {}, then a try every {}",
        r.backoff_initial,
        r.backoff_max,
        r.failure_threshold,
        r.failure_window,
        r.degraded_interval
    );
    let w = cfg.worker_for_pool(p);
    let _ = writeln!(
        o,
        "  worker: builtin_handlers={} results_ttl={} worker_ttl={} job_monitoring_interval={} maintenance_interval={} max_jobs={} max_idle_time={} dequeue_strategy={} with_scheduler={} log_level={} log_format={} fork={}",
        w.builtin_handlers,
        w.results_ttl,
        w.worker_ttl,
        w.job_monitoring_interval,
        w.maintenance_interval,
        w.max_jobs
            .map(|n| n.to_string())
            .unwrap_or_else(|| "none".into()),
        w.max_idle_time
            .map(|t| t.to_string())
            .unwrap_or_else(|| "none".into()),
        w.dequeue_strategy,
        w.with_scheduler,
        level(w.log_level),
        format(w.log_format),
        w.fork
    );
}
