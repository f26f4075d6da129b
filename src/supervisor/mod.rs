//! `rq-supervisor`: runs pools of `rqworker` processes from a `pool.toml`, restarts crashed
//! ones with backoff, cleans up after them in Redis, recycles unhealthy ones, reloads on
//! SIGHUP, scales on TTIN/TTOU and shuts down in two stages. See `docs/supervisor.md`.
//!
//! - [`cli`]: the command line.
//! - [`state`]: the pure state machine (`handle(&mut State, now, Event) -> Vec<Action>`).
//! - [`pool`]: a pool's running state, and the fingerprint that tells a reload what changed.
//! - [`restart`]: the per-pool crash-loop policy (backoff, window, degraded).
//! - [`health`]: what memory and heartbeat readings mean (recycle, stuck).
//! - [`reload`]: the diff between a reloaded file and the running pools.
//! - [`runtime`]: the event loop that performs actions on real processes.
//! - [`input`]: what feeds the event loop from outside (signals, by meaning).
//! - [`bookkeeping`]: crash cleanups and registration reads in Redis.
//! - [`check`]: `rq-supervisor check`, the effective configuration.

mod accept;
mod autoscale;
pub mod bookkeeping;
pub mod check;
pub mod cli;
mod client;
mod commands;
pub mod control;
pub mod health;
pub mod input;
pub mod metrics;
mod notify;
pub mod pool;
pub mod reload;
pub mod restart;
pub mod runtime;
mod sampler;
pub mod state;
pub mod status;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use crate::config::{Config, REDIS_URL_ENV};
use crate::conn::{RedisTarget, TlsPaths};
use crate::logging::{self, LogContext};

/// Exit status for a config or usage error.
pub const EXIT_USAGE: i32 = 2;
/// Exit status when shutdown had to escalate or kill, or startup failed.
pub const EXIT_FAILURE: i32 = 1;

/// The whole `main` of `rq-supervisor`; `Err` carries the exit status.
// About 85 lines, kept whole: the config, TLS files, Redis URL and run-as checks, then the
// check report or the run; each step ends in its own exit status, and in one place they read
// in the order a user meets them.
pub fn main() -> Result<(), i32> {
    let (source, command) = match cli::Cli::from_env() {
        Ok(parsed) => parsed,
        Err(done) => return done,
    };
    let command = match control_command(command, &source) {
        Ok(c) => c,
        Err(done) => return done,
    };
    let (path, read, worker_args) = match source {
        cli::Source::File(path) => {
            let read = Config::read(&path);
            (path, read, Vec::new())
        }
        cli::Source::CommandLine { text, worker_args } => {
            // A label for messages; relative paths start at the working directory.
            let path = std::env::current_dir()
                .unwrap_or_default()
                .join("(command line)");
            let read = Config::parse(&path, &text).map(|cfg| (cfg, text));
            (path, read, worker_args)
        }
    };
    let from_file = worker_args.is_empty() && path.is_file();
    let (cfg, text) = match read {
        Ok(read) => read,
        Err(e) => {
            eprintln!("rq-supervisor: {e}");
            return Err(EXIT_USAGE);
        }
    };
    let redis_url = Config::resolve_redis_url(None, cfg.redis_url.as_deref());
    let tls_paths = Config::resolve_tls(&cfg.redis_tls);
    let tls = match tls_paths.read() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("rq-supervisor: {e}");
            return Err(EXIT_USAGE);
        }
    };
    let sentinel = Config::resolve_sentinel_auth(&cfg.redis_sentinel);
    let target = match RedisTarget::new(&redis_url, &tls, &sentinel) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("rq-supervisor: {e}; check ${REDIS_URL_ENV} or [redis] url");
            return Err(EXIT_USAGE);
        }
    };
    let default_program = default_program();
    let run_as = run_as_problem(&cfg, nix::unistd::geteuid().is_root());
    match command {
        Some(_) => {
            let report = check::render(&cfg, &target, &tls_paths, default_program.as_deref());
            print!("{report}");
            for w in exposure_warnings(&cfg, &tls_paths) {
                eprintln!("rq-supervisor: warning: {w}");
            }
            match run_as.or_else(|| check::program_problem(&cfg, default_program.as_deref())) {
                Some(problem) => {
                    eprintln!("rq-supervisor: {problem}");
                    Err(EXIT_USAGE)
                }
                None => Ok(()),
            }
        }
        None => {
            if let Some(problem) = run_as {
                eprintln!("rq-supervisor: {problem}");
                return Err(EXIT_USAGE);
            }
            let start = runtime::Start {
                config_path: path,
                from_file,
                worker_args,
                config_text: text,
                redis_url,
                tls_paths,
                tls,
                sentinel,
                target,
                control_socket: cfg.supervisor.control_socket.clone(),
                metrics: cfg.supervisor.metrics,
            };
            run(cfg, start, default_program)
        }
    }
}

/// Runs a control command (`status`, `scale`...) at once; `Ok` hands any other command back.
fn control_command(
    command: Option<cli::Command>,
    source: &cli::Source,
) -> Result<Option<cli::Command>, Result<(), i32>> {
    match (command, source) {
        (Some(c), cli::Source::File(path)) if c.is_control() => Err(client::run(path, c)),
        (Some(c), cli::Source::CommandLine { .. }) if c.is_control() => {
            eprintln!(
                "rq-supervisor: control commands talk to a supervisor started with -c FILE; pass the same -c FILE (a pool given with -n N QUEUE... has no control socket)"
            );
            Err(Err(EXIT_USAGE))
        }
        (other, _) => Ok(other),
    }
}

/// Why the pools' `user`/`group` cannot be honoured: only root can start processes as
/// another user.
pub fn run_as_problem(cfg: &Config, root: bool) -> Option<String> {
    if root {
        return None;
    }
    let pool = cfg
        .pools
        .iter()
        .find(|p| p.user.is_some() || p.group.is_some())?;
    let what = match (&pool.user, &pool.group) {
        (Some(u), _) => format!("user = {:?}", u.name),
        (None, Some(g)) => format!("group = {:?}", g.name),
        (None, None) => unreachable!("filtered above"),
    };
    Some(format!(
        "{}: [pools.{}] {what}: rq-supervisor runs as uid {}, and only root can start workers as another user or group; run rq-supervisor as root (it starts the workers with that user's and group's ids), or remove user/group from the pool",
        cfg.path.display(),
        pool.name,
        nix::unistd::geteuid()
    ))
}

fn run(cfg: Config, start: runtime::Start, default_program: Option<PathBuf>) -> Result<(), i32> {
    logging::init(cfg.supervisor.log_level.filter(), cfg.supervisor.log_format);
    logging::set_context(LogContext {
        pool: None,
        name: runtime::SUPERVISOR_NAME.to_string(),
    });
    if let Some(problem) = check::program_problem(&cfg, default_program.as_deref()) {
        log::error!("{problem}");
        return Err(EXIT_USAGE);
    }
    warn_if_exposed(&cfg, &start.tls_paths);
    // Before any worker starts: a second supervisor on the same file must not start a
    // second set of workers.
    let control = match bind_control(&cfg, &start) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}");
            return Err(EXIT_USAGE);
        }
    };
    let (tx, rx) = input::channel();
    // Before any other thread exists (signal-hook documents a race in first-time
    // registration otherwise).
    let handle = match input::signal_thread(tx.clone()) {
        Ok(started) => started,
        Err(e) => {
            log::error!("{e}");
            return Err(EXIT_FAILURE);
        }
    };
    let _socket = match control.map(|c| c.serve(tx.clone())).transpose() {
        Ok(guard) => guard,
        Err(e) => {
            log::error!("{e}");
            handle.close();
            return Err(EXIT_FAILURE);
        }
    };
    if let Some(addr) = cfg.supervisor.metrics
        && let Err(e) = metrics::serve(addr, tx.clone())
    {
        log::error!("{}: [supervisor] metrics: {e}", cfg.path.display());
        handle.close();
        return Err(EXIT_USAGE);
    }
    // Orphaned work horses re-parent to us (not to init), so we can reap and account them.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        log::warn!("cannot become a child subreaper ({e}); orphaned horses go to init");
    }
    log::info!(
        "rq-supervisor {} starting: {} pool(s) from {}, Redis {}; shutdown budget {} (warm_timeout + cold_timeout + margin)",
        env!("CARGO_PKG_VERSION"),
        cfg.pools.len(),
        start.config_path.display(),
        start.target.masked(),
        humantime::format_duration(cfg.shutdown_budget())
    );
    let program = default_program.unwrap_or_else(|| PathBuf::from("rq-supervisor"));
    let rt = match runtime::Runtime::new(&cfg, start, program, rx, tx) {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("{e}");
            handle.close();
            return Err(EXIT_FAILURE);
        }
    };
    let code = rt.run();
    handle.close();
    if code == 0 { Ok(()) } else { Err(code) }
}

/// The control socket, bound (pools from the command line have none: no file names it).
fn bind_control(
    cfg: &Config,
    start: &runtime::Start,
) -> Result<Option<control::ControlSocket>, String> {
    if !start.from_file {
        return Ok(None);
    }
    let (path, default) = match &cfg.supervisor.control_socket {
        Some(p) => (p.clone(), false),
        None => (control::default_socket(&start.config_path), true),
    };
    let socket = control::ControlSocket::bind(&path, default, &start.config_path)?;
    log::info!(
        "control socket {} (rq-supervisor -c {} status)",
        path.display(),
        start.config_path.display()
    );
    Ok(Some(socket))
}

/// This executable: pools without `program` run its built-in worker (`rq-supervisor
/// worker`), so a supervisor never starts someone else's `rqworker` (Python RQ installs a
/// script of that name in every virtualenv that has it).
pub fn default_program() -> Option<PathBuf> {
    std::env::current_exe().ok()
}

/// Every exposure warning: the config file (see [`exposure_warning`]) and a TLS client key
/// that other users can read.
pub fn exposure_warnings(cfg: &Config, tls: &TlsPaths) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out: Vec<String> = exposure_warning(cfg).into_iter().collect();
    if let Some(key) = &tls.key
        && let Ok(meta) = std::fs::metadata(&key.path)
        && meta.permissions().mode() & 0o077 != 0
    {
        out.push(format!(
            "the TLS client key {} ({}) is readable by other users (mode {:o}); run chmod 600 {} (rq-supervisor reads it as root and hands it to its workers, so they need no access to it)",
            key.path.display(),
            key.setting,
            meta.permissions().mode() & 0o777,
            key.path.display()
        ));
    }
    out
}

/// A warning when the file holds a secret (a password in `[redis] url`, or a handler `env`
/// variable named like a password, secret or token) and other users can read it.
pub fn exposure_warning(cfg: &Config) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let in_url = cfg
        .redis_url
        .as_deref()
        .and_then(redis::parse_redis_url)
        .is_some_and(|u| u.password().is_some() || u.query_pairs().any(|(k, _)| k == "pass"))
        || cfg
            .redis_url
            .as_deref()
            .and_then(|u| crate::conn::sentinel::parse(u).ok())
            .is_some_and(|u| u.password.is_some());
    let in_env = cfg.handlers.iter().find_map(|h| {
        h.env.keys().find(|k| {
            let k = k.to_ascii_uppercase();
            ["PASSWORD", "PASSWD", "SECRET", "TOKEN"]
                .iter()
                .any(|w| k.contains(w))
        })
    });
    let in_sentinel = cfg.redis_sentinel.password.is_some();
    let what = match (in_url, in_env) {
        (true, _) => "a Redis password in [redis] url".to_string(),
        (false, _) if in_sentinel => "a Sentinel password in [redis] sentinel_password".to_string(),
        (false, Some(key)) => format!("a secret in a handler's env ({key})"),
        (false, None) => return None,
    };
    let mode = std::fs::metadata(&cfg.path).ok()?.permissions().mode();
    if mode & 0o077 == 0 {
        return None;
    }
    Some(format!(
        "{} contains {what} and is readable by other users (mode {:o}); run chmod 600 {}, or pass secrets through the environment (${REDIS_URL_ENV} for the Redis URL)",
        cfg.path.display(),
        mode & 0o777,
        cfg.path.display()
    ))
}

pub(crate) fn warn_if_exposed(cfg: &Config, tls: &TlsPaths) {
    for w in exposure_warnings(cfg, tls) {
        log::warn!("{w}");
    }
}
