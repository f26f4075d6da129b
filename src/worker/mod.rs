//! The RQ worker life-cycle: boot, birth registration, listen, start an execution per job,
//! settle its outcome, loop or quit, death registration.
//!
//! The worker process is single-threaded because it forks. It sleeps in `poll(2)` on its
//! signal pipe, the notification connection and the running job's descriptors, so a signal, a
//! new job, a finished horse or a command is handled the moment it happens.
//!
//! - this file: start, the loop (claim -> execute -> settle), stop, death;
//! - [`monitor`]: waiting for a running job (heartbeats, timeout, signals, commands);
//! - [`settle`]: writing an outcome to Redis, retried through outages;
//! - [`wakeup`]: the notification connection, commands, and the idle wait.

pub mod cli;
mod environment;
mod monitor;
pub mod scheduler;
mod settle;
pub mod signals;
mod wakeup;

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::config::{DequeueStrategy, WorkerSpec};
use crate::conn::{Backoff, RedisTarget};
use crate::execution::{Handler, JobFailure, JobStart, Outcome};
use crate::fault::fault_point;
use crate::handler::{JobCall, Registry};
use crate::logging::{self, LogContext, shorten};
use crate::protocol::{self, payload};
use crate::store::{ClaimNotes, ClaimRequest, ClaimResult, Claimed, Store, StoreError};
pub use cli::{WorkerArgs, WorkerOptions};
use scheduler::Scheduler;
use signals::Signals;
use wakeup::Wakeup;

/// Exit status for a clean stop.
pub const EXIT_OK: i32 = 0;
/// Exit status for a runtime failure (Redis unreachable at start, name taken).
pub const EXIT_FAILURE: i32 = 1;
/// Exit status for bad usage or configuration.
pub const EXIT_USAGE: i32 = 2;
/// Exit status when jobs could not start in this environment (process or file limits, a
/// missing program, an interpreter that cannot start): the jobs are back on their queues.
pub use environment::EXIT_ENVIRONMENT;

/// The longest wait between two attempts to reach Redis (at start, taking a job, recording
/// an outcome). Python RQ waits up to 60 s; one second brings a fleet back within about a
/// second of Redis answering, and the jitter spreads a fleet's reconnects over that second so
/// a recovering Redis is not stampeded (docs/supervisor.md has the figures for 256 workers).
const RECONNECT_CAP: Duration = Duration::from_secs(1);

/// The `python_version` field of the worker record; RQ's tools show it as free text.
const RUNTIME_DESCRIPTION: &str = concat!("rq-supervisor ", env!("CARGO_PKG_VERSION"), " (Rust)");

/// Parses the command line and runs a worker with `registry`'s native handlers. This is
/// the whole `main` of `rqworker` and of any worker binary built with the library.
///
/// Call it from a single-threaded process: the worker forks a work horse per job, and a fork
/// of a process with other threads can deadlock. The worker checks before every fork and
/// fails the job with a message that says so rather than forking.
pub fn main_with(registry: Registry) -> Result<(), i32> {
    main_from(std::env::args_os(), registry)
}

/// [`main_with`] for an argument list (the program name first).
pub fn main_from(
    args: impl IntoIterator<Item = std::ffi::OsString>,
    registry: Registry,
) -> Result<(), i32> {
    let args = WorkerArgs::parse_from(cli::rq_spellings(args));
    if let Some(n) = args.fork_loop {
        return fork_loop(n);
    }
    let opts = match args.resolve() {
        Ok(opts) => opts,
        Err(msg) => {
            eprintln!("rqworker: {msg}");
            return Err(EXIT_USAGE);
        }
    };
    run(opts, registry)
}

/// `--fork-loop N`: N horses forked, each exiting at once, and waited for, in turn; prints
/// forks per second (the benchmark's ceiling of fork per job for this binary).
fn fork_loop(n: u64) -> Result<(), i32> {
    let started = Instant::now();
    for _ in 0..n {
        let horse = crate::execution::fork::Horse::fork(|| 0).map_err(|e| {
            eprintln!("rqworker: cannot fork: {e}");
            EXIT_FAILURE
        })?;
        // Its natural end, as a job's horse's (no kill).
        while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitpid(horse.pid, None) {}
    }
    println!("{:.0}", n as f64 / started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs one worker until it stops; `Err` carries the exit status. The same rule as
/// [`main_with`]: the process must have no other thread.
// About 90 lines, most of them the `Worker` literal field by field: the start-up steps
// (logging, signals before Python, handlers, registration, pid file) must run in this order,
// and read best in one place.
pub fn run(opts: WorkerOptions, mut registry: Registry) -> Result<(), i32> {
    logging::init(opts.spec.log_level.filter(), opts.spec.log_format);
    if let Some(t) = &opts.log_template {
        logging::set_template(t.clone());
    }
    let hostname = crate::launch::hostname();
    let pid = std::process::id();
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| crate::launch::default_worker_name(&hostname, pid));
    logging::set_context(LogContext {
        pool: opts.pool.clone(),
        name: name.clone(),
    });
    let target = RedisTarget::new(&opts.url, &opts.tls, &opts.sentinel).map_err(|e| {
        log::error!("{e}");
        EXIT_USAGE
    })?;
    // Before any interpreter starts: Python must find SIGINT taken, or it installs its own
    // handler and a Ctrl-C becomes a KeyboardInterrupt inside the worker.
    let signals = Signals::install(opts.paused).map_err(|e| {
        log::error!("cannot install signal handlers: {e}");
        EXIT_FAILURE
    })?;
    add_config_handlers(&mut registry, &opts);
    #[cfg(feature = "python")]
    let python = python_fallback(&mut registry, &opts)?;
    if registry.is_empty() {
        log::warn!(
            "no handlers are configured, so every job will fail; declare [handlers] in a config file (-c) or pass --builtin-handlers"
        );
    }
    let now = Instant::now();
    let mut worker = Worker {
        claims: Claims {
            order: opts.queues.clone(),
            prefetched: None,
            pending: None,
            broken_reported: std::collections::HashMap::new(),
        },
        scheduler: opts
            .spec
            .with_scheduler
            .then(|| Scheduler::new(&opts.queues, &hostname)),
        queues: opts.queues,
        burst: opts.burst,
        spec: opts.spec,
        registry,
        store: Store::new(target),
        wakeup: Wakeup::new(),
        signals,
        name,
        hostname,
        pid,
        jobs_done: 0,
        timers: Timers {
            next_heartbeat: now,
            next_tick: now,
            next_maintenance: now,
            maintenance_ok: true,
        },
        idle_since: now,
        warm_noted: false,
        record_failures: !opts.python.disable_default_exception_handler,
        log_descriptions: opts.log_descriptions,
        suspended: false,
        paused_noted: false,
        streak: environment::Streak::new(),
    };
    worker.start()?;
    // Written only once the worker is registered: a second copy refused at start (name
    // taken, Redis down) must not overwrite, then delete, the running worker's pid file.
    let _pid_file = match &opts.pid_file {
        Some(path) => match PidFile::create(path.clone()) {
            Ok(f) => Some(f),
            Err(e) => {
                log::error!("cannot write pid file {}: {e}", path.display());
                worker.finish(Stop::StartFailed);
                return Err(EXIT_FAILURE);
            }
        },
        None => None,
    };
    let reason = worker.work();
    worker.finish(reason);
    // After the death registration: the app's atexit hooks may take their time.
    #[cfg(feature = "python")]
    python.finalize();
    if reason == Stop::Environment {
        return Err(EXIT_ENVIRONMENT);
    }
    Ok(())
}

/// Adds the config's command handlers and the built-ins to the native ones.
fn add_config_handlers(registry: &mut Registry, opts: &WorkerOptions) {
    for h in opts.handlers.iter().cloned() {
        // A native handler registered under the same exact name wins over the config. Only
        // exact names count here: a config glob declared earlier (e.g. "tasks.*") must not
        // hide a config entry with an exact name it happens to match.
        if !registry.names().contains(&h.name) || h.name.contains('*') {
            registry.add_command(h);
        }
    }
    if opts.spec.builtin_handlers {
        registry.add_builtins();
    }
}

/// Python runs every job no declared handler runs. With `preload`, the interpreter starts
/// now and imports the modules; an import error stops the worker with its traceback.
#[cfg(feature = "python")]
fn python_fallback(
    registry: &mut Registry,
    opts: &WorkerOptions,
) -> Result<Rc<crate::python::PythonHandler>, i32> {
    let python = Rc::new(crate::python::PythonHandler::new(opts.python.clone()));
    registry.set_fallback(python.clone());
    if !opts.python.preload.is_empty()
        && let Err(e) = python.start_now()
    {
        // A limit reached (no process for the probe, no file for libpython) is this host's
        // state, not a mistake in the app or its options.
        if e.errno.is_some() {
            log::error!(
                "{}; {}; exiting with status {}",
                e.text,
                environment::diagnose_errno(e.errno),
                environment::EXIT_ENVIRONMENT
            );
            return Err(environment::EXIT_ENVIRONMENT);
        }
        log::error!("{}", e.text);
        return Err(EXIT_USAGE);
    }
    Ok(python)
}

/// Why the main loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Registered, but a later start-up step failed (the pid file).
    StartFailed,
    Signal,
    BurstDone,
    BurstSuspended,
    MaxJobs,
    MaxIdle,
    /// Jobs could not start here, again and again: exit with `EXIT_ENVIRONMENT`.
    Environment,
}

/// Whether a claimed job ran.
enum Ran {
    Yes,
    /// It could not start for a reason of the worker's environment, and went back to its
    /// queue.
    NotHere(crate::execution::StartError),
}

/// What the loop does with the queues: the order of the next claim, and what a claim left
/// to finish.
struct Claims {
    /// The order used for the next dequeue; differs from the configured one under
    /// round_robin/random.
    order: Vec<String>,
    /// The next job, taken in the same round trip that settled the previous one.
    prefetched: Option<Box<Claimed>>,
    /// The execution id of a claim whose reply never arrived: the next claim sends it again,
    /// so a job the lost call took is handed back instead of left started and unattended.
    pending: Option<String>,
    /// When each broken queue was last reported.
    broken_reported: std::collections::HashMap<String, Instant>,
}

/// When the periodic work is due next.
struct Timers {
    next_heartbeat: Instant,
    /// Next scheduler tick (once a second, as RQ's scheduler).
    next_tick: Instant,
    /// Next registry maintenance; the first runs at start, as in RQ.
    next_maintenance: Instant,
    /// The latest maintenance pass reached Redis: an idle worker whose pass failed goes
    /// back to its loop, which handles an unreachable Redis.
    maintenance_ok: bool,
}

struct Worker {
    name: String,
    /// Queues in configured priority order.
    queues: Vec<String>,
    burst: bool,
    spec: WorkerSpec,
    registry: Registry,
    store: Store,
    /// The notification connection and its reconnect state.
    wakeup: Wakeup,
    signals: Signals,
    hostname: String,
    pid: u32,
    jobs_done: u64,
    claims: Claims,
    timers: Timers,
    idle_since: Instant,
    /// Whether the warm-shutdown request was already logged and recorded.
    warm_noted: bool,
    /// False with `--disable-job-desc-logging`: jobs are logged by id, not by their call.
    log_descriptions: bool,
    /// False under `--disable-default-exception-handler`: failures are settled without their
    /// failed-registry entry and result, as RQ does.
    record_failures: bool,
    suspended: bool,
    /// The pause (SIGUSR1) was logged and recorded as `suspended` in Redis.
    paused_noted: bool,
    /// Present with `--with-scheduler`.
    scheduler: Option<Scheduler>,
    /// Environment failures since the last job that started.
    streak: environment::Streak,
}

impl Worker {
    fn queue_list(&self) -> String {
        self.queues.join(", ")
    }

    fn idle_ttl(&self) -> u64 {
        idle_ttl(&self.spec)
    }

    /// Whether the settle of the job just run may also take the next one: not when the
    /// worker is about to stop, where a job taken early would have to run anyway.
    fn may_take_next(&self) -> bool {
        self.signals.stop_count() == 0
            && !self.suspended
            && !self.signals.paused()
            && self
                .spec
                .max_jobs
                .is_none_or(|max| self.jobs_done + 1 < max)
    }

    /// Connects and registers the birth. Fails (exit 1) when Redis is unreachable or the
    /// name is taken: a worker that cannot register must not run jobs.
    fn start(&mut self) -> Result<(), i32> {
        self.wait_for_redis()?;
        match self.register(false) {
            Ok(true) => {}
            Ok(false) => {
                log::error!(
                    "There exists an active worker named {:?} already; choose another --name, or stop that worker first",
                    self.name
                );
                return Err(EXIT_FAILURE);
            }
            Err(e) => {
                log::error!("cannot register worker {}: {e}", self.name);
                return Err(EXIT_FAILURE);
            }
        }
        log::debug!(
            "Worker {} started with PID {}, version {}",
            self.name,
            self.pid,
            env!("CARGO_PKG_VERSION")
        );
        log::info!("*** Listening for work on {}", self.queue_list());
        Ok(())
    }

    /// Waits for Redis at start: one that is not there yet (a fleet restarted before its
    /// Redis) or still loading its data is waited for, with the reconnect's capped, jittered
    /// backoff, instead of exiting, which under rq-supervisor would count as a crash and turn
    /// the pool degraded. A refusal (a wrong password, a certificate, an ACL) stops the worker.
    fn wait_for_redis(&mut self) -> Result<(), i32> {
        let mut backoff = Backoff::new(Duration::from_millis(100), RECONNECT_CAP);
        loop {
            match self.store.ping() {
                Ok(()) => {
                    if backoff.attempts() > 0 {
                        log::info!("Redis answers; starting");
                    }
                    return Ok(());
                }
                Err(e) if e.is_loading() || e.is_unreachable() => {
                    if self.signals.stop_count() > 0 {
                        log::info!("stopping on request before Redis answered");
                        return Err(EXIT_OK);
                    }
                    if backoff.attempts() == 0 && !e.is_sentinel_outage() {
                        let what = if e.is_loading() {
                            "waiting until Redis has loaded its data"
                        } else {
                            "waiting for Redis: trying again at most every second"
                        };
                        log::warn!("{e}; {what}");
                    }
                    let delay = backoff.next_delay();
                    self.sleep(delay);
                }
                Err(e) => {
                    log::error!("{e}");
                    return Err(EXIT_FAILURE);
                }
            }
        }
    }

    /// Birth registration; `renew` re-registers over this worker's own record.
    fn register(&mut self, renew: bool) -> Result<bool, StoreError> {
        let now = protocol::time::Instant::now();
        let ip = self.store.client_address(&self.name);
        let fields = [
            ("birth", now.iso()),
            ("last_heartbeat", now.iso()),
            ("queues", self.queues.join(",")),
            ("pid", self.pid.to_string()),
            ("hostname", self.hostname.clone()),
            ("ip_address", ip),
            ("version", protocol::RQ_VERSION.to_string()),
            ("python_version", RUNTIME_DESCRIPTION.to_string()),
            ("state", "started".to_string()),
        ];
        let ok = self
            .store
            .birth(&self.name, &fields, &self.queues, self.idle_ttl(), renew)?;
        if ok {
            self.timers.next_heartbeat = Instant::now() + self.heartbeat_every();
        }
        Ok(ok)
    }

    /// RQ renews an idle worker's registration every `worker_ttl - 15` seconds; a short
    /// `worker_ttl` shortens it (`WorkerSpec::idle_heartbeat_every`).
    fn heartbeat_every(&self) -> Duration {
        self.spec.idle_heartbeat_every()
    }

    /// Why the loop should end now, if it should: a stop request, `--max-jobs` reached or
    /// `--max-idle-time` passed.
    fn stop_due(&self) -> Option<Stop> {
        if self.signals.stop_count() > 0 {
            return Some(Stop::Signal);
        }
        if let Some(max) = self.spec.max_jobs
            && self.jobs_done >= max
        {
            log::info!(
                "Worker {}: finished executing {} jobs, quitting",
                self.name,
                self.jobs_done
            );
            return Some(Stop::MaxJobs);
        }
        if let Some(max) = self.spec.max_idle_time
            && self.idle_since.elapsed() >= max.0
        {
            log::info!(
                "Worker {}: idle for {} seconds, quitting",
                self.name,
                max.0.as_secs()
            );
            return Some(Stop::MaxIdle);
        }
        None
    }

    /// The loop: periodic work, then claim a job and run it, or wait for one.
    fn work(&mut self) -> Stop {
        let mut redis_backoff = Backoff::new(Duration::from_millis(100), RECONNECT_CAP);
        let mut seen_connects = self.store.connects();
        loop {
            // A job taken by the previous settle is already started: nothing may end the
            // loop before it has run.
            if self.claims.prefetched.is_none()
                && let Some(stop) = self.stop_due()
            {
                return stop;
            }
            self.periodic(&mut seen_connects);
            if self.claims.prefetched.is_none() && self.paused() {
                continue;
            }
            let claimed = self.next_claim();
            match claimed {
                Ok((claim, notes)) => {
                    redis_backoff.reset();
                    report_claim_notes(&mut self.claims.broken_reported, notes);
                    if let Some(stop) = self.on_claim(claim, seen_connects) {
                        return stop;
                    }
                }
                Err(e) => {
                    let delay = redis_backoff.next_delay();
                    // A Sentinel outage is reported once by the target itself.
                    if (redis_backoff.attempts() == 1 || e.is_refusal()) && !e.is_sentinel_outage()
                    {
                        log::error!("cannot take a job: {e}; retrying in {delay:.1?}");
                    }
                    self.wakeup.disconnect();
                    self.sleep(delay);
                }
            }
        }
    }

    /// What the loop does between jobs: keep the notification connection, heartbeat,
    /// maintenance, the scheduler, and drain notices before the next claim.
    fn periodic(&mut self, seen_connects: &mut u64) {
        // Burst workers listen too: like RQ's, they obey stop-job, kill-horse and shutdown
        // commands sent to rq:pubsub:<worker>.
        self.ensure_listener();
        if self.store.connects() != *seen_connects {
            // A new connection: Redis may have restarted without our record.
            *seen_connects = self.store.connects();
            self.timers.next_heartbeat = Instant::now();
        }
        if Instant::now() >= self.timers.next_heartbeat {
            match self.store.heartbeat_idle(&self.name, self.idle_ttl()) {
                Ok(false) => self.timers.next_heartbeat = Instant::now() + self.heartbeat_every(),
                Ok(true) => {
                    log::warn!("the worker's registration had expired in Redis; registering again");
                    let _ = self.register(true);
                }
                Err(_) => {}
            }
        }
        self.maintenance_due();
        self.scheduler_due();
        // Drain notices before claiming: any change after this point wakes the wait.
        self.drain_listener(None);
    }

    /// The job the previous settle took, or a fresh claim.
    fn next_claim(&mut self) -> Result<(ClaimResult, ClaimNotes), StoreError> {
        if let Some(job) = self.claims.prefetched.take() {
            return Ok((ClaimResult::Job(job), ClaimNotes::default()));
        }
        let (execution_id, retry) = claim_id(&mut self.claims.pending);
        let claimed = self.store.claim(&claim_request(
            &self.name,
            &self.claims.order,
            &self.spec,
            &execution_id,
            retry,
        ));
        if claimed.is_err() {
            self.claims.pending = Some(execution_id);
        }
        claimed
    }

    /// Acts on a claim's answer; returns why the loop ends, if it does.
    fn on_claim(&mut self, claim: ClaimResult, seen_connects: u64) -> Option<Stop> {
        match claim {
            ClaimResult::Job(c) => {
                fault_point!("after-claim");
                self.resumed();
                self.rotate_order(&c.queue);
                let id = c.record.id.clone();
                match self.execute(*c) {
                    Ran::Yes => {
                        self.streak.reset();
                        self.jobs_done += 1;
                        self.idle_since = Instant::now();
                    }
                    Ran::NotHere(e) => match self.streak.failed(&e, &id) {
                        environment::Next::Wait(delay) => self.sleep(delay),
                        environment::Next::GiveUp => return Some(Stop::Environment),
                    },
                }
            }
            ClaimResult::Empty => {
                // `rq resume` (or the suspension expired): RQ restores the state the worker
                // had before.
                self.resumed();
                if self.burst {
                    log::info!("No more work, burst finished.");
                    return Some(Stop::BurstDone);
                }
                if self.store.connects() != seen_connects {
                    // This pass reconnected after the registration check at the top: check
                    // it now, not after a heartbeat interval of sleep (Redis may have lost
                    // the record).
                    return None;
                }
                self.wait_for_work(None);
            }
            ClaimResult::Suspended => {
                if self.burst {
                    log::info!(
                        "Worker {}: suspended in burst mode, exiting; there could still be unfinished jobs on the queue",
                        self.name
                    );
                    return Some(Stop::BurstSuspended);
                }
                if !self.suspended {
                    log::info!("Worker {}: suspended, run `rq resume` to resume", self.name);
                    self.suspended = true;
                }
                // Suspension changes are notified too; poll once a second as RQ does in case
                // the notification connection is down.
                self.wait_for_work(Some(Duration::from_secs(1)));
            }
        }
        None
    }

    /// While paused (SIGUSR1, rq-supervisor's `pause POOL`): take no job, show `suspended`
    /// in Redis as RQ's suspension does, and wait for a signal or a timer. Returns whether the
    /// worker is paused; the first pass after a SIGUSR2 logs the resume (the next claim
    /// records the state).
    fn paused(&mut self) -> bool {
        if !self.signals.paused() {
            if self.paused_noted {
                self.paused_noted = false;
                log::info!("Worker {}: resumed (SIGUSR2)", self.name);
            }
            return false;
        }
        if !self.paused_noted {
            self.paused_noted = true;
            log::info!(
                "Worker {}: paused (SIGUSR1): taking no job until SIGUSR2 (rq-supervisor resume)",
                self.name
            );
            if let Err(e) = self.store.set_state(&self.name, "suspended") {
                log::warn!("cannot record the pause in Redis: {e}");
            }
        }
        self.wait_for_work(Some(Duration::from_secs(1)));
        true
    }

    fn resumed(&mut self) {
        if self.suspended {
            log::info!("Worker {}: resumed", self.name);
            self.suspended = false;
        }
    }

    /// Runs the scheduler tick when due; returns the instant of the next one.
    fn scheduler_due(&mut self) -> Option<Instant> {
        let sched = self.scheduler.as_mut()?;
        let now = Instant::now();
        if now >= self.timers.next_tick {
            self.timers.next_tick = now + Duration::from_secs(1);
            match sched.tick(&mut self.store) {
                Ok(0) => {}
                Ok(n) => log::info!("Scheduler {}: enqueued {n} due job(s)", sched.name),
                Err(e) => log::debug!("scheduler tick failed: {e}"),
            }
        }
        Some(self.timers.next_tick)
    }

    /// Cleans registries when due: between jobs, as RQ does, and also while a job runs
    /// (`monitor`), so a fleet whose workers are all busy on long jobs still settles a lost
    /// host's jobs. Whichever worker of the fleet gets a queue's lock cleans it and, with an
    /// interval of a minute or less, holds the lock for the interval; the others try again
    /// when it lapses. Returns the instant of the next attempt.
    pub(super) fn maintenance_due(&mut self) -> Instant {
        if Instant::now() < self.timers.next_maintenance {
            return self.timers.next_maintenance;
        }
        let interval = self.spec.maintenance_interval.0;
        self.timers.next_maintenance = Instant::now() + interval;
        let abandoned = JobFailure::Abandoned {
            at: protocol::time::Instant::now(),
        }
        .exc_string();
        // Only a short interval holds the lock for the fleet (`store::maintenance`).
        let hold = if interval <= crate::store::MAINTENANCE_HOLD_UP_TO {
            interval
        } else {
            Duration::ZERO
        };
        let cleaned = self.store.clean_registries(&self.queues, &abandoned, hold);
        self.timers.maintenance_ok = cleaned.is_ok();
        match cleaned {
            Ok(r) => {
                if let Some(lapse) = r.held_for {
                    let sooner = Instant::now() + lapse;
                    if sooner < self.timers.next_maintenance {
                        self.timers.next_maintenance = sooner;
                    }
                }
                log::debug!(
                    "Worker {}: cleaned registries of {} queue(s)",
                    self.name,
                    r.queues_cleaned
                );
                for (job, verdict) in &r.abandoned {
                    log::warn!("abandoned job {job} (its worker stopped heartbeating): {verdict}");
                }
                for job in &r.requeued_stuck {
                    log::warn!(
                        "job {job} was stuck in an intermediate list for over a minute without starting; requeued at the front"
                    );
                }
            }
            Err(e) => log::warn!("registry maintenance failed: {e}; will retry next time"),
        }
        self.timers.next_maintenance
    }

    /// Applies `--dequeue-strategy` after a job came from `queue`.
    fn rotate_order(&mut self, queue: &str) {
        let order = &mut self.claims.order;
        match self.spec.dequeue_strategy {
            DequeueStrategy::Default => {}
            DequeueStrategy::RoundRobin => {
                if let Some(pos) = order.iter().position(|q| q == queue) {
                    order.rotate_left(pos + 1);
                }
            }
            DequeueStrategy::Random => fastrand::shuffle(order),
        }
    }

    fn describe(c: &Claimed) -> String {
        if c.record.description.is_empty() {
            c.record.id.clone()
        } else {
            c.record.description.clone()
        }
    }

    /// Runs one claimed job to its end and settles it.
    /// Runs one claimed job to its end and settles it; or, when it could not start for a
    /// reason of the worker's environment, gives it back unchanged and says so.
    fn execute(&mut self, c: Claimed) -> Ran {
        // A description carries the arguments' repr, which can be megabytes long.
        if self.log_descriptions {
            log::info!("Got {} from {}", shorten(&Self::describe(&c), 300), c.queue);
        } else {
            log::info!("Got job {} from {}", c.record.id, c.queue);
        }
        log::debug!("job {} execution {}", c.record.id, c.execution_id);
        let started = Instant::now();
        let outcome = match self.prepare(&c) {
            // Retried like any failure, as RQ does: in a mixed fleet a Python worker that
            // knows the function (or reads pickle) may take the retry.
            Err(failure) => Outcome::Failed(failure),
            Ok(job) => match self.run_or_start(&c, &job) {
                Started::Ended(outcome) => outcome,
                Started::Running(execution) => {
                    if let Some(pid) = execution.pid() {
                        log::debug!("job {} work horse pid {pid}", c.record.id);
                    }
                    fault_point!("after-fork");
                    let grace = job.handler.kill_grace();
                    self.monitor(execution, &c, job.timeout, grace)
                }
                Started::Refused(e) if e.environment => {
                    self.unclaim(&c);
                    return Ran::NotHere(e);
                }
                Started::Refused(e) => Outcome::Failed(e.failure),
            },
        };
        fault_point!("after-horse-exit");
        self.settle(&c, outcome, started.elapsed());
        fault_point!("after-settle");
        Ran::Yes
    }

    /// Starts the job in a process of its own, or in no-fork mode runs it here to its end
    /// (kinds that always need a process of their own, commands, start as usual).
    fn run_or_start(&self, c: &Claimed, job: &Prepared) -> Started {
        let start = JobStart {
            record: &c.record,
            call: job.call.as_ref(),
            timeout: job.timeout,
            worker: &self.name,
        };
        if !self.spec.fork {
            signals::in_process_job(true);
            let ran = job.handler.run_in_process(&start);
            signals::in_process_job(false);
            if let Some(ran) = ran {
                return match ran {
                    Ok(outcome) => Started::Ended(outcome),
                    Err(e) => Started::Refused(e),
                };
            }
        }
        match job.handler.start(&start) {
            Ok(execution) => Started::Running(execution),
            Err(e) => Started::Refused(e),
        }
    }

    /// Gives a job the worker could not start back to its queue, retrying through outages
    /// (until it is back, the job is `started` with nobody running it).
    fn unclaim(&mut self, c: &Claimed) {
        let mut backoff = Backoff::new(Duration::from_millis(100), RECONNECT_CAP);
        loop {
            match self.store.unclaim(c, &self.name) {
                Ok(_) => return,
                Err(e) => {
                    if backoff.attempts() == 0 {
                        log::error!(
                            "cannot give job {} back to its queue: {e}; retrying until Redis accepts it",
                            c.record.id
                        );
                    }
                    if self.signals.stop_count() >= 2 && backoff.attempts() >= 3 {
                        log::error!(
                            "cold shutdown: giving up on giving job {} back; it stays started until rq-supervisor or RQ's abandoned-job cleanup settles it",
                            c.record.id
                        );
                        return;
                    }
                    let delay = backoff.next_delay();
                    self.sleep(delay);
                }
            }
        }
    }

    /// Decodes the payload and finds the handler. An error is the job's failure.
    fn prepare(&self, c: &Claimed) -> Result<Prepared, JobFailure> {
        let decoded = payload::decode(c.record.data());
        let handler = self.registry.resolve(c.record.data(), &decoded)?;
        warn_unsupported(c, &*handler);
        let timeout = c.record.effective_timeout(handler.default_timeout());
        let call = decoded.ok().map(|call| JobCall {
            id: c.record.id.clone(),
            func_name: call.func_name,
            args: call.args,
            kwargs: call.kwargs,
            origin: c.queue.clone(),
            description: c.record.description.clone(),
            meta: c.record.meta_json(),
            worker_name: self.name.clone(),
            execution_id: c.execution_id.clone(),
        });
        Ok(Prepared {
            handler,
            call,
            timeout,
        })
    }

    /// Death registration, retried briefly: a worker that cannot reach Redis on the way
    /// out leaves its record to expire (and to rq-supervisor's crash cleanup).
    fn finish(&mut self, reason: Stop) {
        log::debug!("stopping: {reason:?}");
        if reason == Stop::Signal {
            log::info!("Worker {}: stopping on request", self.name);
        }
        self.wakeup.disconnect();
        if let Some(mut sched) = self.scheduler.take() {
            sched.release(&mut self.store);
        }
        log::info!("Registering death.");
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for attempt in 0..5 {
            match self.store.death(&self.name, &self.queues) {
                Ok(()) => return,
                Err(e) if attempt == 4 => log::error!("cannot register death: {e}"),
                Err(_) => std::thread::sleep(backoff.next_delay()),
            }
        }
    }
}

/// What starting a job gave.
enum Started {
    /// Run to its end in the worker's process (no-fork mode).
    Ended(Outcome),
    /// Running in a process of its own.
    Running(Box<dyn crate::execution::Execution>),
    Refused(crate::execution::StartError),
}

/// A job ready to start: its handler, the decoded call (JSON payloads), and the timeout the
/// worker enforces.
struct Prepared {
    handler: Rc<dyn Handler>,
    call: Option<JobCall>,
    timeout: Option<u64>,
}

/// Says what a job asks for that a Rust worker does not do: webhooks, and Python callbacks
/// for handlers that are not Python.
fn warn_unsupported(c: &Claimed, handler: &dyn Handler) {
    if c.record.has_webhooks {
        log::warn!(
            "job {} asks for webhooks, which rqworker does not send; the job runs without them",
            c.record.id
        );
    }
    if !c.record.callbacks.is_empty() && !handler.runs_python_callbacks() {
        let names: Vec<String> = c
            .record
            .callbacks
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        log::warn!(
            "job {} names Python callbacks ({}), which a Rust worker cannot run; they are skipped",
            c.record.id,
            names.join(", ")
        );
    }
}

fn idle_ttl(spec: &WorkerSpec) -> u64 {
    spec.idle_ttl()
}

/// The busy heartbeat interval in whole seconds, as the claim's first TTL is computed.
fn monitoring_secs(spec: &WorkerSpec) -> u64 {
    spec.busy_heartbeat_every().as_secs().max(1)
}

/// Logs what a claim stepped over: ids whose job hash is gone, and queues whose key
/// cannot be used (at most once a minute per queue, so a broken key is loud without
/// flooding the log; the other queues keep being served).
fn report_claim_notes(
    reported: &mut std::collections::HashMap<String, Instant>,
    notes: ClaimNotes,
) {
    for d in notes.dropped {
        log::warn!(
            "dropped job id {d} (queue:id): its job hash is gone (expired or deleted), as RQ drops such ids"
        );
    }
    let now = Instant::now();
    for b in notes.broken {
        let queue = b.split(':').next().unwrap_or_default().to_string();
        let due = reported
            .get(&queue)
            .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(60));
        if due {
            log::error!(
                "queue {b}; rq:queue:{queue} must be a list of job ids: delete or rename that key. Skipping this queue, serving the others"
            );
            reported.insert(queue, now);
        }
    }
}

/// The execution id for the next claim: the one whose reply was lost, sent again with
/// `retry` so Redis hands back what it took, or a fresh one.
fn claim_id(pending: &mut Option<String>) -> (String, bool) {
    match pending.take() {
        Some(id) => (id, true),
        None => (protocol::new_execution_id(), false),
    }
}

/// A claim for this worker; free-standing so it borrows only the fields it reads, not the
/// store it is sent through.
fn claim_request<'a>(
    name: &'a str,
    order: &'a [String],
    spec: &WorkerSpec,
    execution_id: &'a str,
    retry: bool,
) -> ClaimRequest<'a> {
    ClaimRequest {
        worker: name,
        queues: order,
        monitoring_interval: monitoring_secs(spec),
        grace: spec.heartbeat_grace().as_secs(),
        idle_ttl: idle_ttl(spec),
        execution_id,
        retry,
        in_process: !spec.fork,
    }
}

/// The `--pid` file, removed when the worker exits.
struct PidFile(PathBuf);

impl PidFile {
    fn create(path: PathBuf) -> std::io::Result<PidFile> {
        std::fs::write(&path, format!("{}\n", std::process::id()))?;
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
