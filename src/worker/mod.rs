//! The RQ worker life-cycle: boot, birth registration, listen, fork a work horse per job,
//! record the outcome, loop or quit, death registration.
//!
//! The worker process is single-threaded because it forks. It sleeps in `poll(2)` on its
//! signal pipe, the notification connection and the horse's pipes, so a signal, a new job,
//! a finished horse or a command is handled the moment it happens.

pub mod cli;
pub mod horse;
pub mod maintenance;
pub mod scheduler;
pub mod signals;
pub mod store;

use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde_json::Value;

use crate::config::DequeueStrategy;
use crate::conn::{Backoff, CONNECT_TIMEOUT, RedisTarget};
use crate::fault::fault_point;
use crate::handler::{Handler, JobCall, Registry};
use crate::listener::{Listener, Push};
use crate::logging::{self, LogContext, shorten};
use crate::protocol::{self, keys, payload, result};
pub use cli::{WorkerArgs, WorkerOptions};
use horse::{Horse, HorseOutcome};
use scheduler::Scheduler;
use signals::Signals;
use store::{ClaimNotes, ClaimRequest, ClaimResult, Claimed, Settlement, Store, StoreError};

/// Exit status for a clean stop.
pub const EXIT_OK: i32 = 0;
/// Exit status for a runtime failure (Redis unreachable at start, name taken).
pub const EXIT_FAILURE: i32 = 1;
/// Exit status for bad usage or configuration.
pub const EXIT_USAGE: i32 = 2;

/// The longest wait between two attempts to reach Redis (taking a job, recording an
/// outcome). Python RQ waits up to 60 s; this stays well below the smallest `worker_ttl`
/// (16 s), because rq-supervisor restarts its stuck-worker clocks when Redis comes back and a
/// healthy worker must have heartbeaten again before they run out.
const RECONNECT_CAP: Duration = Duration::from_secs(5);

/// The `python_version` field of the worker record; RQ's tools show it as free text.
const RUNTIME_DESCRIPTION: &str = concat!("rq-supervisor ", env!("CARGO_PKG_VERSION"), " (Rust)");

/// Parses the command line and runs a worker with `registry`'s native handlers. This is
/// the whole `main` of `rqworker` and of any worker binary built with the library.
pub fn main_with(registry: Registry) -> Result<(), i32> {
    let opts = match WorkerArgs::parse().resolve() {
        Ok(opts) => opts,
        Err(msg) => {
            eprintln!("rqworker: {msg}");
            return Err(EXIT_USAGE);
        }
    };
    run(opts, registry)
}

/// Runs one worker until it stops; `Err` carries the exit status.
pub fn run(opts: WorkerOptions, mut registry: Registry) -> Result<(), i32> {
    logging::init(opts.spec.log_level.filter(), opts.spec.log_format);
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
    if registry.is_empty() {
        log::warn!(
            "no handlers are configured, so every job will fail; declare [handlers] in a config file (-c) or pass --builtin-handlers"
        );
    }
    let target = RedisTarget::with_tls(&opts.url, &opts.tls).map_err(|e| {
        log::error!("{e}");
        EXIT_USAGE
    })?;
    let signals = Signals::install().map_err(|e| {
        log::error!("cannot install signal handlers: {e}");
        EXIT_FAILURE
    })?;
    let mut worker = Worker {
        order: opts.queues.clone(),
        queues: opts.queues,
        burst: opts.burst,
        spec: opts.spec,
        registry,
        store: Store::new(target),
        listener: None,
        listener_retry: std::time::Instant::now(),
        listener_backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
        signals,
        name,
        hostname,
        pid,
        jobs_done: 0,
        next_heartbeat: std::time::Instant::now(),
        idle_since: std::time::Instant::now(),
        warm_noted: false,
        suspended: false,
        scheduler: None,
        next_tick: std::time::Instant::now(),
        next_maintenance: std::time::Instant::now(),
        broken_reported: std::collections::HashMap::new(),
        prefetched: None,
        pending_claim: None,
    };
    if worker.spec.with_scheduler {
        worker.scheduler = Some(Scheduler::new(&worker.queues, &worker.hostname));
    }
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
    Ok(())
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
}

/// How an execution ended, before it is written to Redis.
enum Ending {
    Returned(Value),
    Failed { exc: String, retry: bool },
    Stopped,
}

struct Worker {
    name: String,
    /// Queues in configured priority order.
    queues: Vec<String>,
    /// The order used for the next dequeue; differs from `queues` under round_robin/random.
    order: Vec<String>,
    burst: bool,
    spec: crate::config::WorkerSpec,
    registry: Registry,
    store: Store,
    /// The notification connection; `None` while Redis is unreachable.
    listener: Option<Listener>,
    listener_retry: std::time::Instant,
    listener_backoff: Backoff,
    signals: Signals,
    hostname: String,
    pid: u32,
    jobs_done: u64,
    next_heartbeat: std::time::Instant,
    idle_since: std::time::Instant,
    /// Whether the warm-shutdown request was already logged and recorded.
    warm_noted: bool,
    suspended: bool,
    /// Present with `--with-scheduler`.
    scheduler: Option<Scheduler>,
    /// Next scheduler tick (once a second, as RQ's scheduler).
    next_tick: std::time::Instant,
    /// Next registry maintenance; the first runs at start, as in RQ.
    next_maintenance: std::time::Instant,
    /// When each broken queue was last reported.
    broken_reported: std::collections::HashMap<String, std::time::Instant>,
    /// The next job, taken in the same round trip that settled the previous one.
    prefetched: Option<Box<Claimed>>,
    /// The execution id of a claim whose reply never arrived: the next claim sends it again,
    /// so a job the lost call took is handed back instead of left started and unattended.
    pending_claim: Option<String>,
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
            && self
                .spec
                .max_jobs
                .is_none_or(|max| self.jobs_done + 1 < max)
    }

    /// Connects and registers the birth. Fails (exit 1) when Redis is unreachable or the
    /// name is taken: a worker that cannot register must not run jobs.
    fn start(&mut self) -> Result<(), i32> {
        // A Redis that answers LOADING (restarted, reading its AOF or RDB) is there and will
        // serve shortly: wait for it instead of failing, which under rq-supervisor would count
        // as a crash and could turn the pool degraded after every Redis restart.
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            match self.store.run(|con| redis::cmd("PING").exec(con)) {
                Ok(()) => break,
                Err(e) if e.is_loading() => {
                    if self.signals.stop_count() > 0 {
                        log::info!("stopping on request while Redis was still loading its data");
                        return Err(EXIT_OK);
                    }
                    if backoff.attempts() == 0 {
                        log::warn!("{e}; waiting until Redis has loaded its data");
                    }
                    let delay = backoff.next_delay();
                    self.sleep(delay);
                }
                Err(e) => {
                    log::error!(
                        "{e}; check that Redis is running and that the URL (--url, $RQ_REDIS_URL or [redis] url) is right"
                    );
                    return Err(EXIT_FAILURE);
                }
            }
        }
        match self.register_birth() {
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

    fn register_birth(&mut self) -> Result<bool, StoreError> {
        self.register(false)
    }

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
            self.next_heartbeat = std::time::Instant::now() + self.heartbeat_every();
        }
        Ok(ok)
    }

    /// RQ renews an idle worker's registration at least every `worker_ttl - 15` seconds.
    fn heartbeat_every(&self) -> Duration {
        self.spec
            .worker_ttl
            .0
            .saturating_sub(Duration::from_secs(15))
            .max(Duration::from_secs(1))
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

    fn work(&mut self) -> Stop {
        let mut redis_backoff = Backoff::new(Duration::from_millis(100), RECONNECT_CAP);
        let mut seen_connects = self.store.connects();
        loop {
            // A job taken by the previous settle is already started: nothing may end the
            // loop before it has run.
            if self.prefetched.is_none()
                && let Some(stop) = self.stop_due()
            {
                return stop;
            }
            // Burst workers listen too: like RQ's, they obey stop-job, kill-horse and
            // shutdown commands sent to rq:pubsub:<worker>.
            self.ensure_listener();
            if self.store.connects() != seen_connects {
                // A new connection: Redis may have restarted without our record.
                seen_connects = self.store.connects();
                self.next_heartbeat = std::time::Instant::now();
            }
            if std::time::Instant::now() >= self.next_heartbeat {
                match self.store.heartbeat_idle(&self.name, self.idle_ttl()) {
                    Ok(false) => {
                        self.next_heartbeat = std::time::Instant::now() + self.heartbeat_every()
                    }
                    Ok(true) => {
                        log::warn!(
                            "the worker's registration had expired in Redis; registering again"
                        );
                        let _ = self.register(true);
                    }
                    Err(_) => {}
                }
            }
            self.maintenance_due();
            self.scheduler_due();
            // Drain notices before claiming: any change after this point wakes the wait.
            self.drain_listener(None);
            // A job taken by the settle of the previous one is already started: run it.
            let claimed = match self.prefetched.take() {
                Some(job) => Ok((ClaimResult::Job(job), ClaimNotes::default())),
                None => {
                    let (execution_id, retry) = claim_id(&mut self.pending_claim);
                    let claimed = self.store.claim(&claim_request(
                        &self.name,
                        &self.order,
                        &self.spec,
                        &execution_id,
                        retry,
                    ));
                    if claimed.is_err() {
                        self.pending_claim = Some(execution_id);
                    }
                    claimed
                }
            };
            match claimed {
                Ok((claim, notes)) => {
                    redis_backoff.reset();
                    report_claim_notes(&mut self.broken_reported, notes);
                    match claim {
                        ClaimResult::Job(c) => {
                            fault_point!("after-claim");
                            if self.suspended {
                                log::info!("Worker {}: resumed", self.name);
                                self.suspended = false;
                            }
                            self.rotate_order(&c.queue);
                            self.execute(*c);
                            self.jobs_done += 1;
                            self.idle_since = std::time::Instant::now();
                        }
                        ClaimResult::Empty => {
                            if self.suspended {
                                // `rq resume` (or the suspension expired): RQ restores the
                                // state the worker had before.
                                log::info!("Worker {}: resumed", self.name);
                                self.suspended = false;
                            }
                            if self.burst {
                                log::info!("No more work, burst finished.");
                                return Stop::BurstDone;
                            }
                            if self.store.connects() != seen_connects {
                                // This pass reconnected after the registration check at
                                // the top: check it now, not after a heartbeat interval
                                // of sleep (Redis may have lost the record).
                                continue;
                            }
                            self.wait_for_work(None);
                        }
                        ClaimResult::Suspended => {
                            if self.burst {
                                log::info!(
                                    "Worker {}: suspended in burst mode, exiting; there could still be unfinished jobs on the queue",
                                    self.name
                                );
                                return Stop::BurstSuspended;
                            }
                            if !self.suspended {
                                log::info!(
                                    "Worker {}: suspended, run `rq resume` to resume",
                                    self.name
                                );
                                self.suspended = true;
                            }
                            // Suspension changes are notified too; poll once a second as RQ
                            // does in case the notification connection is down.
                            self.wait_for_work(Some(Duration::from_secs(1)));
                        }
                    }
                }
                Err(e) => {
                    let delay = redis_backoff.next_delay();
                    if redis_backoff.attempts() == 1 || e.is_refusal() {
                        log::error!("cannot take a job: {e}; retrying in {delay:.1?}");
                    }
                    self.listener = None;
                    self.sleep(delay);
                }
            }
        }
    }

    /// Runs the scheduler tick when due; returns the instant of the next one.
    fn scheduler_due(&mut self) -> Option<std::time::Instant> {
        let sched = self.scheduler.as_mut()?;
        let now = std::time::Instant::now();
        if now >= self.next_tick {
            self.next_tick = now + Duration::from_secs(1);
            match sched.tick(&mut self.store) {
                Ok(0) => {}
                Ok(n) => log::info!("Scheduler {}: enqueued {n} due job(s)", sched.name),
                Err(e) => log::debug!("scheduler tick failed: {e}"),
            }
        }
        Some(self.next_tick)
    }

    /// Cleans registries when due (between jobs only, as RQ does).
    fn maintenance_due(&mut self) {
        if std::time::Instant::now() < self.next_maintenance {
            return;
        }
        self.next_maintenance = std::time::Instant::now() + self.spec.maintenance_interval.0;
        match maintenance::run(&mut self.store, &self.queues) {
            Ok(r) => {
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
    }

    /// Applies `--dequeue-strategy` after a job came from `queue`.
    fn rotate_order(&mut self, queue: &str) {
        match self.spec.dequeue_strategy {
            DequeueStrategy::Default => {}
            DequeueStrategy::RoundRobin => {
                if let Some(pos) = self.order.iter().position(|q| q == queue) {
                    self.order.rotate_left(pos + 1);
                }
            }
            DequeueStrategy::Random => fastrand::shuffle(&mut self.order),
        }
    }

    fn ensure_listener(&mut self) {
        if self.listener.is_some() || std::time::Instant::now() < self.listener_retry {
            return;
        }
        let mut prefixes: Vec<String> = self.queues.iter().map(|q| keys::queue(q)).collect();
        prefixes.push(keys::SUSPENDED.to_string());
        let channels = [keys::pubsub(&self.name)];
        let opened = crate::conn::uninterrupted(|| {
            Listener::open(self.store.target(), &prefixes, &channels, CONNECT_TIMEOUT)
        });
        match opened {
            Ok(l) => {
                self.listener = Some(l);
                self.listener_backoff.reset();
            }
            Err(e) => {
                let delay = self.listener_backoff.next_delay();
                if self.listener_backoff.attempts() == 1 {
                    let text = e.to_string();
                    log::warn!(
                        "cannot open the notification connection to {} ({text}{}); checking queues every second until it works",
                        self.store.target().masked(),
                        crate::conn::hint_text("", &text)
                    );
                }
                self.listener_retry = std::time::Instant::now() + delay;
            }
        }
    }

    /// Reads pending notifications; handles commands. Returns true if a queue changed.
    fn drain_listener(&mut self, mut horse: Option<&mut HorseControl>) -> bool {
        let Some(l) = self.listener.as_mut() else {
            return false;
        };
        let pushes = match l.drain() {
            Ok(p) => p,
            Err(e) => {
                log::debug!("notification connection lost: {e}");
                self.listener = None;
                return true;
            }
        };
        let mut changed = false;
        for p in pushes {
            match p {
                Push::Changed(_) => changed = true,
                Push::Message { payload, .. } => self.on_command(&payload, horse.as_deref_mut()),
            }
        }
        changed
    }

    /// Commands sent with `rq.command.send_*` (§8.3).
    fn on_command(&mut self, payload: &[u8], horse: Option<&mut HorseControl>) {
        let Ok(cmd) = serde_json::from_slice::<Value>(payload) else {
            log::warn!(
                "ignoring a command that is not JSON: {}",
                String::from_utf8_lossy(payload)
            );
            return;
        };
        match cmd.get("command").and_then(Value::as_str) {
            Some("shutdown") => {
                log::info!("Worker {}: shutdown command received", self.name);
                self.signals.request_stop();
            }
            Some("kill-horse") => match horse {
                Some(h) => {
                    log::info!(
                        "Worker {}: kill-horse command received, killing the work horse",
                        self.name
                    );
                    h.kill = Some(Kill::Command);
                }
                None => log::info!(
                    "Worker {}: kill-horse command received while idle; nothing to kill",
                    self.name
                ),
            },
            Some("stop-job") => {
                let id = cmd
                    .get("job_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match horse {
                    Some(h) if h.job_id == id => {
                        log::info!(
                            "Worker {}: stop-job command received for job {id}",
                            self.name
                        );
                        h.kill = Some(Kill::Stop);
                    }
                    _ => log::info!(
                        "Worker {}: stop-job for job {id}, which is not running here; ignored",
                        self.name
                    ),
                }
            }
            other => log::debug!("ignoring unknown command {other:?}"),
        }
    }

    /// Sleeps until a queue changes, a signal or command arrives, or a timer is due.
    fn wait_for_work(&mut self, cap: Option<Duration>) {
        let now = std::time::Instant::now();
        let mut wait = self.next_heartbeat.saturating_duration_since(now);
        if let Some(max) = self.spec.max_idle_time {
            wait = wait.min((self.idle_since + max.0).saturating_duration_since(now));
        }
        if self.listener.is_none() {
            wait = wait.min(Duration::from_secs(1));
        }
        wait = wait.min(self.next_maintenance.saturating_duration_since(now));
        if self.scheduler.is_some() {
            wait = wait.min(self.next_tick.saturating_duration_since(now));
        }
        if let Some(c) = cap {
            wait = wait.min(c);
        }
        let (sig_ready, listener_ready) = {
            let mut fds = vec![PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
            if let Some(l) = &self.listener {
                fds.push(PollFd::new(l.fd(), PollFlags::POLLIN));
            }
            let _ = poll(&mut fds, timeout(wait));
            let ready = |i: usize| {
                fds.get(i)
                    .and_then(|f| f.revents())
                    .is_some_and(|r| !r.is_empty())
            };
            (ready(0), ready(1))
        };
        if sig_ready {
            self.signals.drain();
        }
        if listener_ready {
            self.drain_listener(None);
        }
    }

    /// Sleeps for `d` (a backoff delay), waking early only for a stop request. Other
    /// signals (a late SIGCHLD) are drained and the sleep goes on: a wake-up byte left in the
    /// signal pipe would otherwise end every later sleep at once.
    fn sleep(&self, d: Duration) {
        let deadline = std::time::Instant::now() + d;
        let stops = self.signals.stop_count();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            let mut fds = [PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, timeout(left));
            self.signals.drain();
            if self.signals.stop_count() != stops {
                return;
            }
        }
    }

    fn describe(c: &Claimed) -> String {
        if c.record.description.is_empty() {
            c.record.id.clone()
        } else {
            c.record.description.clone()
        }
    }

    fn execute(&mut self, c: Claimed) {
        // A description carries the arguments' repr, which can be megabytes long.
        log::info!("Got {} from {}", shorten(&Self::describe(&c), 300), c.queue);
        log::debug!("job {} execution {}", c.record.id, c.execution_id);
        let started = std::time::Instant::now();
        let ending = match self.prepare(&c) {
            // Retried like any failure, as RQ does: in a mixed fleet a Python worker that
            // knows the function (or reads pickle) may take the retry.
            Err(exc) => Ending::Failed { exc, retry: true },
            Ok((handler, call, timeout)) => {
                let spawned = match &handler {
                    Handler::Native(f) => Horse::spawn_native(f, &call),
                    Handler::Command(spec) => Horse::spawn_command(spec, &call),
                };
                match spawned {
                    Ok(horse) => {
                        log::debug!("job {} work horse pid {}", c.record.id, horse.pid);
                        fault_point!("after-fork");
                        self.monitor(horse, &c, timeout)
                    }
                    Err(e) => Ending::Failed {
                        exc: match &handler {
                            // E2BIG: the program is fine, the job's arguments are not.
                            Handler::Command(spec)
                                if e.raw_os_error() == Some(nix::libc::E2BIG) =>
                            {
                                format!(
                                    "HandlerStartError: cannot run {} for [handlers.\"{}\"]: {e}; the job's positional arguments are too long for a command line (Linux allows 128 KiB per argument); pass large values as keyword arguments, which the handler reads from the job JSON on stdin\n",
                                    spec.command[0], spec.name
                                )
                            }
                            Handler::Command(spec) => format!(
                                "HandlerStartError: cannot run {} for [handlers.\"{}\"]: {e}; install the program, fix its path in the config, or make it executable (chmod +x)\n",
                                spec.command[0], spec.name
                            ),
                            Handler::Native(_) => {
                                format!("HandlerStartError: cannot fork a work horse: {e}\n")
                            }
                        },
                        retry: true,
                    },
                }
            }
        };
        fault_point!("after-horse-exit");
        self.record(&c, ending, started.elapsed());
        fault_point!("after-settle");
    }

    /// Decodes the payload and finds the handler. An error is the job's failure text.
    fn prepare(&self, c: &Claimed) -> Result<(Handler, JobCall, Option<u64>), String> {
        let call =
            payload::decode(&c.record.data).map_err(|e| format!("DeserializationError: {e}\n"))?;
        let Some(handler) = self.registry.lookup(&call.func_name).cloned() else {
            return Err(format!(
                "{}\n",
                self.registry.unknown_function_message(&call.func_name)
            ));
        };
        if c.record.has_webhooks {
            log::warn!(
                "job {} asks for webhooks, which rqworker does not send; the job runs without them",
                c.record.id
            );
        }
        if !c.record.callbacks.is_empty() {
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
        let fallback = match &handler {
            Handler::Command(spec) => spec.timeout.map(|t| t.0.as_secs().max(1) as i64),
            Handler::Native(_) => None,
        };
        let timeout = c.record.effective_timeout(fallback);
        let call = JobCall {
            id: c.record.id.clone(),
            func_name: call.func_name,
            args: call.args,
            kwargs: call.kwargs,
            origin: c.queue.clone(),
            description: c.record.description.clone(),
            meta: c.record.meta_json(),
            worker_name: self.name.clone(),
            execution_id: c.execution_id.clone(),
        };
        Ok((handler, call, timeout))
    }

    /// Waits for the horse while heartbeating, enforcing the timeout, and reacting to
    /// signals and commands.
    fn monitor(&mut self, mut horse: Horse, c: &Claimed, timeout: Option<u64>) -> Ending {
        let start = std::time::Instant::now();
        let deadline = timeout.map(|t| start + Duration::from_secs(t));
        let interval = self.spec.job_monitoring_interval.0;
        let mut next_hb = start + interval;
        let mut ctl = HorseControl {
            job_id: c.record.id.clone(),
            kill: None,
        };
        loop {
            if let Some(status) = horse.try_finish() {
                return match horse.outcome(status) {
                    HorseOutcome::Returned(v) => Ending::Returned(v),
                    HorseOutcome::Failed(exc) => Ending::Failed { exc, retry: true },
                    HorseOutcome::Crashed(exc) => Ending::Failed { exc, retry: true },
                };
            }
            let stops = self.signals.stop_count();
            if stops >= 2 {
                if self.signals.orphaned() && ctl.kill.is_none() {
                    log::warn!(
                        "Worker {}: rq-supervisor died; cold shutdown: killing the work horse and failing its job",
                        self.name
                    );
                }
                ctl.kill = Some(Kill::Cold);
            } else if stops == 1 && !self.warm_noted {
                self.warm_noted = true;
                log::info!(
                    "Worker {}: warm shut down requested; finishing the current job first",
                    self.name
                );
                let _ = self.store.mark_shutdown_requested(&self.name);
            }
            let now = std::time::Instant::now();
            if let Some(d) = deadline
                && now >= d
                && ctl.kill.is_none()
            {
                ctl.kill = Some(Kill::Timeout);
            }
            if let Some(kill) = ctl.kill {
                let status = horse.kill_and_reap();
                return match kill {
                    Kill::Timeout => Ending::Failed {
                        exc: format!(
                            "JobTimeoutException: Task exceeded maximum timeout value ({} seconds)\n",
                            timeout.unwrap_or_default()
                        ),
                        retry: true,
                    },
                    Kill::Cold => Ending::Failed {
                        exc: format!(
                            "ShutDownImminentException: worker {} was stopped by a cold shutdown ({}) and killed the work horse; {}\n",
                            self.name,
                            if self.signals.orphaned() {
                                "its rq-supervisor died"
                            } else {
                                "second SIGINT/SIGTERM"
                            },
                            horse::crash_message(status)
                        ),
                        retry: true,
                    },
                    Kill::Command => Ending::Failed {
                        exc: horse::crash_message(status),
                        retry: true,
                    },
                    Kill::Stop => Ending::Stopped,
                };
            }
            if now >= next_hb {
                let elapsed = now.duration_since(start);
                let ttl = match timeout {
                    Some(t) => Duration::from_secs(t).saturating_sub(elapsed).min(interval),
                    None => interval,
                }
                .as_secs()
                    + 60;
                if let Err(e) = self
                    .store
                    .heartbeat_busy(&self.name, c, elapsed.as_secs_f64(), ttl)
                {
                    log::warn!(
                        "heartbeat for job {} failed: {e}; the job keeps running",
                        c.record.id
                    );
                }
                next_hb = now + interval;
            }
            if self.listener.is_none() {
                self.ensure_listener();
            }
            let mut wait = next_hb.saturating_duration_since(now);
            if let Some(tick) = self.scheduler_due() {
                wait = wait.min(tick.saturating_duration_since(std::time::Instant::now()));
            }
            if let Some(d) = deadline {
                wait = wait.min(d.saturating_duration_since(now));
            }
            let (sig_ready, listener_ready) = {
                let horse_fds = horse.poll_fds();
                let mut fds = vec![PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
                let listener_index = self.listener.as_ref().map(|l| {
                    fds.push(PollFd::new(l.fd(), PollFlags::POLLIN));
                    fds.len() - 1
                });
                for (fd, write) in &horse_fds {
                    let flags = if *write {
                        PollFlags::POLLOUT
                    } else {
                        PollFlags::POLLIN
                    };
                    fds.push(PollFd::new(reborrow(fd), flags));
                }
                let _ = poll(&mut fds, timeout_ms(wait));
                let ready = |i: usize| {
                    fds.get(i)
                        .and_then(|f| f.revents())
                        .is_some_and(|r| !r.is_empty())
                };
                (ready(0), listener_index.is_some_and(ready))
            };
            horse.pump();
            if sig_ready {
                self.signals.drain();
                self.signals.take_child();
            }
            if listener_ready {
                self.drain_listener(Some(&mut ctl));
            }
        }
    }

    /// Writes the ending to Redis, retrying through outages until it is recorded: a result
    /// is never dropped because Redis was briefly away.
    fn record(&mut self, c: &Claimed, ending: Ending, working: Duration) {
        let (outcome, payload, allow_retry) = match &ending {
            Ending::Returned(v) if v.is_null() => ("finished", String::new(), false),
            Ending::Returned(v) => ("finished", result::encode_return_value(v), false),
            Ending::Failed { exc, retry } => ("failed", result::encode_exc_string(exc), *retry),
            Ending::Stopped => (
                "stopped",
                result::encode_exc_string("Job stopped by user, work-horse terminated."),
                false,
            ),
        };
        let settlement = Settlement {
            job_id: &c.record.id,
            queue: &c.queue,
            execution_id: &c.execution_id,
            worker: &self.name,
            outcome,
            started: Some(c.at),
            working_secs: working.as_secs_f64(),
            default_result_ttl: self.spec.results_ttl,
            payload,
            alive: true,
            allow_retry,
        };
        let mut backoff = Backoff::new(Duration::from_millis(100), RECONNECT_CAP);
        let mut first = if self.may_take_next() {
            let (execution_id, retry) = claim_id(&mut self.pending_claim);
            let (settled, next) = self.store.settle_then_claim(
                &settlement,
                &claim_request(&self.name, &self.order, &self.spec, &execution_id, retry),
            );
            match next {
                // Only a job is kept: an empty or suspended answer may be stale by the time
                // the loop drains its notifications, so the loop asks again.
                Ok((ClaimResult::Job(job), notes)) => {
                    report_claim_notes(&mut self.broken_reported, notes);
                    self.prefetched = Some(job);
                }
                Ok(_) => {}
                Err(_) => self.pending_claim = Some(execution_id),
            }
            Some(settled)
        } else {
            None
        };
        let verdict = loop {
            match first
                .take()
                .unwrap_or_else(|| self.store.settle(&settlement))
            {
                Ok(v) => break v,
                Err(e) => {
                    if backoff.attempts() == 0 || e.is_refusal() {
                        log::error!(
                            "cannot record the outcome of job {}: {e}; retrying until Redis accepts it",
                            c.record.id
                        );
                    }
                    if self.signals.stop_count() >= 2 && backoff.attempts() >= 3 {
                        log::error!(
                            "cold shutdown: giving up on recording job {}; it stays started until rq-supervisor or RQ's abandoned-job cleanup settles it",
                            c.record.id
                        );
                        return;
                    }
                    let delay = backoff.next_delay();
                    self.sleep(delay);
                }
            }
        };
        let first_line = |e: &str| e.lines().next().unwrap_or_default().to_string();
        match (verdict.as_str(), &ending) {
            ("finished", Ending::Returned(v)) if v.is_null() => {
                log::info!("Job ended normally without result")
            }
            ("finished", Ending::Returned(v)) => {
                log::info!(
                    "Job ended normally with result: {}",
                    shorten(&v.to_string(), 100)
                )
            }
            ("failed", Ending::Failed { exc, .. }) => log::warn!("Job failed: {}", first_line(exc)),
            ("requeued", Ending::Failed { exc, .. }) => {
                log::warn!(
                    "Job failed and was requeued for a retry: {}",
                    first_line(exc)
                )
            }
            ("scheduled", Ending::Failed { exc, .. }) => {
                log::warn!("Job failed; a retry is scheduled: {}", first_line(exc))
            }
            ("stopped", _) => log::info!("Job {} stopped by request", c.record.id),
            ("gone", _) => log::warn!(
                "job {} was deleted while it ran; nothing to record",
                c.record.id
            ),
            ("unknown", _) if backoff.attempts() > 0 => log::info!(
                "job {} was already settled: by an earlier attempt whose reply was lost, or by RQ's abandoned-job cleanup",
                c.record.id
            ),
            ("unknown", _) => log::warn!(
                "job {} was settled by someone else meanwhile (abandoned-job cleanup after missed heartbeats?); this outcome is dropped",
                c.record.id
            ),
            (other, _) => log::debug!("job {} settled: {other}", c.record.id),
        }
    }

    /// Death registration, retried briefly: a worker that cannot reach Redis on the way
    /// out leaves its record to expire (and to rq-supervisor's crash cleanup).
    fn finish(&mut self, reason: Stop) {
        log::debug!("stopping: {reason:?}");
        if reason == Stop::Signal {
            log::info!("Worker {}: stopping on request", self.name);
        }
        self.listener = None;
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

fn idle_ttl(spec: &crate::config::WorkerSpec) -> u64 {
    spec.worker_ttl.0.as_secs() + 60
}

fn monitoring_secs(spec: &crate::config::WorkerSpec) -> u64 {
    spec.job_monitoring_interval.0.as_secs().max(1)
}

/// Logs what a claim stepped over: ids whose job hash is gone, and queues whose key
/// cannot be used (at most once a minute per queue, so a broken key is loud without
/// flooding the log; the other queues keep being served).
fn report_claim_notes(
    reported: &mut std::collections::HashMap<String, std::time::Instant>,
    notes: ClaimNotes,
) {
    for d in notes.dropped {
        log::warn!(
            "dropped job id {d} (queue:id): its job hash is gone (expired or deleted), as RQ drops such ids"
        );
    }
    let now = std::time::Instant::now();
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
        None => (store::new_execution_id(), false),
    }
}

/// A claim for this worker; free-standing so it borrows only the fields it reads, not the
/// store it is sent through.
fn claim_request<'a>(
    name: &'a str,
    order: &'a [String],
    spec: &crate::config::WorkerSpec,
    execution_id: &'a str,
    retry: bool,
) -> ClaimRequest<'a> {
    ClaimRequest {
        worker: name,
        queues: order,
        monitoring_interval: monitoring_secs(spec),
        idle_ttl: idle_ttl(spec),
        execution_id,
        retry,
    }
}

/// Why the monitor is killing the horse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    Timeout,
    Cold,
    Command,
    Stop,
}

/// What commands may do to the running horse.
struct HorseControl {
    job_id: String,
    kill: Option<Kill>,
}

fn timeout(d: Duration) -> PollTimeout {
    timeout_ms(d)
}

fn timeout_ms(d: Duration) -> PollTimeout {
    // Round up so a deadline is never polled just short of its instant.
    let ms = d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}

fn reborrow<'a>(fd: &BorrowedFd<'a>) -> BorrowedFd<'a> {
    *fd
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
