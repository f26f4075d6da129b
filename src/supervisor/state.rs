//! The supervisor's brain, without processes: [`handle`] takes the state, the current time
//! and one [`Event`] (a signal, a child exit, a tick, a health reading, a reload) and returns
//! the [`Action`]s to perform (spawn, signal, kill, crash cleanup, log, exit). The runtime
//! shell performs them; unit tests drive this module directly with made-up events and
//! instants.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::Level;

pub use super::pool::WorkerId;
use super::pool::{Pool, RollStep, new_pool};
use crate::config::Config;
use crate::store::{JobCounts, QueueLoad, Registration, WorkerLoad};

/// Signals the supervisor acts on, already decoded by the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    /// SIGTERM or SIGINT: next shutdown stage.
    Stop,
    /// SIGTTIN: one more worker.
    More,
    /// SIGTTOU: one fewer worker.
    Fewer,
}

/// How a child process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitKind {
    Code(i32),
    /// Signal number and name.
    Signal(i32, String),
}

impl ExitKind {
    pub fn clean(&self) -> bool {
        matches!(self, ExitKind::Code(0))
    }

    /// Words for logs and for the failed job's message.
    pub fn describe(&self) -> String {
        use crate::launch::{EXIT_COLD_IN_PROCESS, EXIT_INLINE_TIMEOUT};
        match self {
            ExitKind::Code(c) if *c == EXIT_INLINE_TIMEOUT => format!(
                "exited with status {c} (JobTimeoutException: the job it ran in its own process, no-fork mode, overran its timeout and could not be interrupted)"
            ),
            ExitKind::Code(c) if *c == EXIT_COLD_IN_PROCESS => format!(
                "exited with status {c} (a cold shutdown came while it ran the job in its own process, no-fork mode, where nothing can be killed)"
            ),
            ExitKind::Code(c) => format!("exited with status {c}"),
            ExitKind::Signal(n, name) => format!("was killed by signal {n} ({name})"),
        }
    }
}

/// What the runtime read about one worker at a health check.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub id: WorkerId,
    /// Worker plus descendants' resident memory, bytes; `None` if unreadable.
    pub rss: Option<u64>,
    /// The worker's Redis registration; `None` when Redis could not be asked.
    pub registration: Option<Registration>,
}

/// What the runtime read of every pool's queues and workers in one round trip.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    /// Every pool's queues.
    pub queues: BTreeMap<String, QueueLoad>,
    /// The live workers that have a name.
    pub workers: Vec<(WorkerId, WorkerLoad)>,
    /// Exited workers' records, for their final job counts (`None`: the record is gone).
    pub finals: Vec<(String, Option<JobCounts>)>,
}

/// A control-socket command the state machine decides (`status` and `reload` are the
/// runtime's). Answered with one [`Action::Reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Scale {
        pool: String,
        workers: u32,
    },
    Pause(String),
    Resume(String),
    /// Roll the pool's workers (every pool's with `None`) one at a time.
    Restart(Option<String>),
    Stop {
        cold: bool,
    },
}

#[derive(Debug)]
pub enum Event {
    Signal(Sig),
    /// Time passed; deadlines and pending spawns are checked on every event anyway.
    Tick,
    /// The runtime started the worker asked for by [`Action::Spawn`].
    Spawned {
        id: WorkerId,
        pid: u32,
        name: String,
    },
    /// The runtime could not start it (program missing, fork failed).
    SpawnFailed {
        id: WorkerId,
        error: String,
        /// The cause is a process or file limit (EAGAIN, ENOMEM, EMFILE, ENFILE).
        environment: bool,
    },
    Exited {
        id: WorkerId,
        how: ExitKind,
    },
    /// A health reading; `redis_ok` is false when Redis could not be reached for it.
    Health {
        redis_ok: bool,
        samples: Vec<Sample>,
    },
    /// SIGHUP: the file was read again and is valid.
    Reload(Box<Config>),
    /// SIGHUP: the file was read again and refused.
    ReloadFailed(String),
    /// The queues and workers as read from Redis (see [`Reading`]).
    Reading(Reading),
    Command(Command),
}

/// Everything a spawn needs, so the runtime does not look anything up.
#[derive(Debug, Clone, PartialEq)]
pub struct SpawnSpec {
    pub id: WorkerId,
    pub pool: String,
    /// `None`: the `rqworker` next to `rq-supervisor`.
    pub program: Option<PathBuf>,
    pub queues: Vec<String>,
    pub burst: bool,
    pub max_jobs: Option<u64>,
    /// The pool's `user` and `group` ids, applied when the supervisor runs as root.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The pool's `cwd` and `env`.
    pub cwd: Option<PathBuf>,
    pub env: std::collections::BTreeMap<String, String>,
    /// The pool is paused: the worker starts taking no job until it is resumed.
    pub paused: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Spawn(SpawnSpec),
    /// One SIGTERM to the worker (its first = warm, its second = cold).
    Term {
        id: WorkerId,
        pid: u32,
    },
    /// SIGKILL the worker's process group and its horses' groups.
    Kill {
        id: WorkerId,
        pid: u32,
    },
    /// Pause (`true`: SIGUSR1) or resume (`false`: SIGUSR2) the worker: a paused worker
    /// finishes its job and takes no new one.
    Pause {
        id: WorkerId,
        pid: u32,
        on: bool,
    },
    /// The answer to a [`Command`]: the client's exit status and what it prints.
    Reply {
        code: i32,
        text: String,
    },
    /// Register the death in Redis and settle the in-flight job.
    Cleanup {
        pool: String,
        name: String,
        how: String,
    },
    Log {
        level: Level,
        pool: Option<String>,
        worker: Option<String>,
        msg: String,
    },
    Exit(i32),
}

/// Timing knobs, from `[supervisor]`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub warm_timeout: Duration,
    pub cold_timeout: Duration,
    pub spawn_stagger: Duration,
    /// How long a rolling restart waits for the new worker to register before it retires
    /// an old one anyway.
    pub roll_delay: Duration,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Settings {
        Settings {
            warm_timeout: cfg.supervisor.warm_timeout.0,
            cold_timeout: cfg.supervisor.cold_timeout.0,
            spawn_stagger: cfg.supervisor.spawn_stagger.0,
            roll_delay: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// First stage: every worker had its warm SIGTERM.
    Warm {
        deadline: Instant,
    },
    /// Second stage: every worker had its cold SIGTERM.
    Cold {
        deadline: Instant,
    },
    /// Every remaining group was SIGKILLed; waiting for the exits.
    Killing,
    /// `Exit` was emitted.
    Done,
}

/// Why a worker is on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retire {
    /// Over its memory limit: warm stop, replaced when it exits.
    Memory,
    /// Stale registration: SIGKILLed, replaced when it exits.
    Stuck,
    /// Scale-down (reload or TTOU).
    ScaleDown,
    /// Replaced by a worker of the pool's new definition.
    Roll,
    /// Its pool was removed from the file.
    PoolRemoved,
}

impl Retire {
    /// Whether the worker still holds its pool slot until it exits (no surge).
    pub(super) fn holds_slot(self) -> bool {
        matches!(self, Retire::Memory | Retire::Stuck)
    }
}

#[derive(Debug, Clone)]
pub struct Worker {
    pub id: WorkerId,
    pub pool: String,
    /// The pool definition it was started with; older ones are rolled.
    pub generation: u64,
    pub pid: Option<u32>,
    pub name: Option<String>,
    pub spawned_at: Instant,
    pub max_jobs: Option<u64>,
    /// SIGTERMs sent so far (1 = warm, 2 = cold); never more than one per stage.
    pub terms_sent: u8,
    pub killed: bool,
    pub retire: Option<Retire>,
    /// Consecutive health readings over the memory limit.
    pub mem_strikes: u32,
    /// Latest sign of life in Redis (or the spawn, or Redis coming back).
    pub last_alive: Instant,
    pub registered: bool,
    pub redis_state: Option<String>,
    /// Worker plus horse RSS at the latest health check.
    pub rss: Option<u64>,
    /// The job it runs, at the latest reading.
    pub job: Option<String>,
    /// Its own counters at the latest reading.
    pub jobs: JobCounts,
    /// Since when it has been idle with no job done (latest readings), for autoscale.
    pub idle_since: Option<Instant>,
    /// It was told to pause (started paused, or sent SIGUSR1) and not resumed since.
    pub paused: bool,
}

impl Worker {
    /// The one warm SIGTERM that asks a worker to finish its job and leave; never a second,
    /// which the worker would take as the cold one.
    pub(super) fn term_warm(&mut self, out: &mut Out) {
        if self.terms_sent == 0
            && let Some(pid) = self.pid
        {
            self.terms_sent = 1;
            out.0.push(Action::Term { id: self.id, pid });
        }
    }
}

#[derive(Debug)]
pub struct State {
    pub settings: Settings,
    pub pools: BTreeMap<String, Pool>,
    pub workers: BTreeMap<WorkerId, Worker>,
    pub phase: Phase,
    next_id: WorkerId,
    last_spawn: Option<Instant>,
    rng: fastrand::Rng,
    /// Something had to be escalated or killed, or crashed, during shutdown: exit 1.
    unclean: bool,
    /// The last health reading could not reach Redis.
    pub(super) redis_down: bool,
    /// Exited workers whose final job counts are still to be read: (pool, name, what was
    /// already counted).
    pub(super) finals: Vec<(String, String, JobCounts)>,
    /// Every pool's queues at the latest reading.
    pub queues: BTreeMap<String, QueueLoad>,
}

/// Exited workers whose final counts may wait for Redis at once; older ones are dropped.
const MAX_FINALS: usize = 10_000;

/// Why an exit is a restart, for `rq_supervisor_restarts_total`: `None` when the worker is
/// not replaced (a scale-down, a removed pool, a finished burst worker).
fn restart_reason(
    w: &Worker,
    how: &ExitKind,
    pools: &BTreeMap<String, Pool>,
    now: Instant,
) -> Option<&'static str> {
    let pool = pools.get(&w.pool)?;
    let clean = how.clean();
    Some(match w.retire {
        Some(Retire::Stuck) => "stuck",
        Some(Retire::ScaleDown | Retire::PoolRemoved) => return None,
        Some(Retire::Roll) if clean => "rolling",
        Some(Retire::Memory) if clean => "memory",
        None if clean && pool.spec.burst => return None,
        _ if clean => "exited",
        _ if *how == ExitKind::Code(crate::launch::EXIT_ENVIRONMENT) => "environment",
        _ if now.saturating_duration_since(w.spawned_at) < pool.spec.restart.min_uptime.0 => {
            "failed_start"
        }
        _ => "crashed",
    })
}

pub(super) fn secs(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{:.2}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

/// Handles one event at `now`; returns what to do, in order.
pub fn handle(state: &mut State, now: Instant, event: Event) -> Vec<Action> {
    let mut out = Out(Vec::new());
    state.on_event(now, event, &mut out);
    if state.phase != Phase::Done {
        state.tick(now, &mut out);
    }
    out.0
}

/// Collects actions, with logging helpers.
pub(super) struct Out(pub(super) Vec<Action>);

impl Out {
    pub(super) fn log(
        &mut self,
        level: Level,
        pool: Option<&str>,
        worker: Option<&str>,
        msg: String,
    ) {
        self.0.push(Action::Log {
            level,
            pool: pool.map(str::to_string),
            worker: worker.map(str::to_string),
            msg,
        });
    }
    pub(super) fn info(&mut self, msg: String) {
        self.log(Level::Info, None, None, msg);
    }
    pub(super) fn pool(&mut self, level: Level, pool: &str, msg: String) {
        self.log(level, Some(pool), None, msg);
    }
    pub(super) fn worker(&mut self, level: Level, w: &Worker, msg: String) {
        let name = w.name.clone().unwrap_or_else(|| format!("worker-{}", w.id));
        self.log(level, Some(&w.pool), Some(&name), msg);
    }
}

impl State {
    /// A fresh state for `cfg`; `seed` drives the jitter (fixed in tests).
    pub fn new(cfg: &Config, seed: u64) -> State {
        State {
            settings: Settings::from_config(cfg),
            pools: cfg
                .pools
                .iter()
                .map(|p| (p.name.clone(), new_pool(cfg, p)))
                .collect(),
            workers: BTreeMap::new(),
            phase: Phase::Running,
            next_id: 1,
            last_spawn: None,
            rng: fastrand::Rng::with_seed(seed),
            unclean: false,
            redis_down: false,
            finals: Vec::new(),
            queues: BTreeMap::new(),
        }
    }

    /// The earliest instant at which a tick has something to do, if any.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut consider = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        match self.phase {
            Phase::Warm { deadline } | Phase::Cold { deadline } => consider(deadline),
            Phase::Running => {
                for pool in self.pools.values() {
                    if self.wants_spawn(pool) {
                        let mut t = pool.next_start.unwrap_or(now);
                        if let Some(last) = self.last_spawn {
                            t = t.max(last + self.settings.spawn_stagger);
                        }
                        consider(t);
                    }
                    if let Some(step) = pool.roll {
                        consider(step.since + self.settings.roll_delay);
                    }
                    if let Some(last) = pool.restart.last_failure()
                        && let Some(started) = self
                            .newest_live_start(&pool.spec.name)
                            .filter(|t| *t >= last)
                    {
                        consider(started + pool.spec.restart.failure_window.0);
                    }
                }
            }
            _ => {}
        }
        at
    }

    /// True while a rolling restart waits for a new worker to register; the runtime then
    /// reads registrations more often.
    pub fn rolling(&self) -> bool {
        self.pools.values().any(|p| p.roll.is_some())
    }

    pub fn live_workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    /// Workers that count toward the pool's size.
    fn occupying(&self, pool: &str) -> u32 {
        self.workers
            .values()
            .filter(|w| w.pool == pool && w.retire.is_none_or(Retire::holds_slot))
            .count() as u32
    }

    fn target(&self, pool: &Pool) -> u32 {
        if pool.removed {
            0
        } else {
            pool.desired().saturating_sub(pool.burst_finished)
        }
    }

    fn wants_spawn(&self, pool: &Pool) -> bool {
        let occupying = self.occupying(&pool.spec.name);
        occupying < self.target(pool)
            || (pool.roll.is_none()
                && !pool.removed
                && occupying <= self.target(pool)
                && self.outdated_active(pool).next().is_some())
    }

    /// Workers of an older definition that have not been asked to leave.
    fn outdated_active<'a>(&'a self, pool: &'a Pool) -> impl Iterator<Item = &'a Worker> + 'a {
        self.workers.values().filter(move |w| {
            w.pool == pool.spec.name && w.generation < pool.generation && w.retire.is_none()
        })
    }

    fn on_event(&mut self, now: Instant, event: Event, out: &mut Out) {
        match event {
            Event::Tick => {}
            Event::Signal(Sig::Stop) => self.on_stop_signal(now, out),
            Event::Signal(sig @ (Sig::More | Sig::Fewer)) => self.on_scale(sig, out),
            Event::Spawned { id, pid, name } => {
                if let Some(w) = self.workers.get_mut(&id) {
                    w.pid = Some(pid);
                    w.name = Some(name);
                    let w = w.clone();
                    let pool = self.pools.get(&w.pool);
                    let queues = pool.map(|p| p.spec.queues.join(", ")).unwrap_or_default();
                    let mut msg = format!("spawned pid {pid} for queues {queues}");
                    if let Some(n) = w.max_jobs {
                        msg.push_str(&format!(" (--max-jobs {n})"));
                    }
                    if pool.is_some_and(|p| p.spec.burst) {
                        msg.push_str(" (--burst)");
                    }
                    out.worker(Level::Info, &w, msg);
                    // A spawn decided before a stop signal and performed after it: this
                    // worker missed the signals the others got, so it gets them now.
                    match self.phase {
                        Phase::Warm { .. } => {
                            self.term_all_to(1, out);
                        }
                        Phase::Cold { .. } => {
                            self.term_all_to(2, out);
                        }
                        _ => {}
                    }
                }
            }
            Event::SpawnFailed {
                id,
                error,
                environment,
            } => {
                if let Some(w) = self.workers.remove(&id) {
                    out.log(
                        Level::Error,
                        Some(&w.pool),
                        None,
                        format!("cannot start a worker: {error}"),
                    );
                    if let Some(pool) = self.pools.get_mut(&w.pool) {
                        *pool.restarts.entry("spawn_failed").or_default() += 1;
                    }
                    if environment {
                        self.environment_failure(
                            now,
                            &w.pool,
                            format!("cannot start workers: {error}"),
                            out,
                        );
                    } else {
                        self.failure(now, &w.pool, out);
                    }
                }
            }
            Event::Exited { id, how } => self.on_exit(now, id, how, out),
            Event::Health { redis_ok, samples } => self.on_health(now, redis_ok, samples, out),
            Event::Reload(cfg) => self.on_reload(&cfg, out),
            Event::ReloadFailed(reason) => out.log(
                Level::Error,
                None,
                None,
                format!("reload refused, running pools untouched: {reason}"),
            ),
            Event::Reading(r) => self.on_reading(now, r, out),
            Event::Command(c) => self.on_command(now, c, out),
        }
    }

    pub(super) fn on_stop_signal(&mut self, now: Instant, out: &mut Out) {
        match self.phase {
            Phase::Running => {
                let deadline = now + self.settings.warm_timeout;
                self.phase = Phase::Warm { deadline };
                for pool in self.pools.values_mut() {
                    pool.roll = None;
                }
                let n = self.workers.len();
                out.info(format!(
                    "shutdown: warm stage: SIGTERM to {n} worker(s), each finishes its current job; no more restarts; cold stage in {} (warm_timeout) or on a second signal",
                    secs(self.settings.warm_timeout)
                ));
                self.term_all_to(1, out);
            }
            Phase::Warm { .. } => self.go_cold(now, "a second signal", out),
            Phase::Cold { .. } => self.kill_all("a third signal", out),
            Phase::Killing | Phase::Done => {
                out.info("shutdown: already killing every worker; waiting for them to exit".into())
            }
        }
    }

    /// Sends SIGTERMs so that every live worker has had `stage` of them, one per stage.
    fn term_all_to(&mut self, stage: u8, out: &mut Out) -> usize {
        let mut sent = 0;
        for w in self.workers.values_mut() {
            let Some(pid) = w.pid else { continue };
            if w.killed {
                continue;
            }
            while w.terms_sent < stage {
                w.terms_sent += 1;
                out.0.push(Action::Term { id: w.id, pid });
                sent += 1;
            }
        }
        sent
    }

    fn go_cold(&mut self, now: Instant, why: &str, out: &mut Out) {
        let deadline = now + self.settings.cold_timeout;
        self.phase = Phase::Cold { deadline };
        let remaining = self.workers.len();
        out.log(
            Level::Warn,
            None,
            None,
            format!(
                "shutdown: cold stage after {why}: second SIGTERM to {remaining} worker(s), each kills its work horse and fails its job; SIGKILL in {} (cold_timeout)",
                secs(self.settings.cold_timeout)
            ),
        );
        if self.term_all_to(2, out) > 0 {
            self.unclean = true;
        }
    }

    fn kill_all(&mut self, why: &str, out: &mut Out) {
        self.phase = Phase::Killing;
        let mut killed = 0;
        for w in self.workers.values_mut() {
            if let Some(pid) = w.pid
                && !w.killed
            {
                w.killed = true;
                killed += 1;
                out.0.push(Action::Kill { id: w.id, pid });
            }
        }
        if killed > 0 {
            self.unclean = true;
        }
        out.log(
            Level::Warn,
            None,
            None,
            format!(
                "shutdown: {why}: SIGKILL to the process groups of {killed} worker(s) and their work horses"
            ),
        );
    }

    fn on_scale(&mut self, sig: Sig, out: &mut Out) {
        if self.phase != Phase::Running {
            out.info("shutting down: TTIN/TTOU ignored".into());
            return;
        }
        let Some(pool) = self.pools.values_mut().find(|p| !p.removed) else {
            return;
        };
        let before = pool.desired();
        let (lo, hi) = pool.bounds();
        pool.scale_override = Some(match sig {
            Sig::More => before.saturating_add(1).min(hi),
            _ => before.saturating_sub(1).max(lo),
        });
        let name = pool.spec.name.clone();
        let what = if sig == Sig::More { "TTIN" } else { "TTOU" };
        if before == pool.desired() {
            out.pool(
                Level::Info,
                &name,
                format!(
                    "{what}: already at {before} worker(s), the {}",
                    if sig == Sig::More {
                        "maximum"
                    } else {
                        "minimum"
                    }
                ),
            );
        } else {
            out.pool(
                Level::Info,
                &name,
                format!(
                    "{what}: workers {before} -> {} (kept across reloads that leave this pool's count alone)",
                    pool.desired()
                ),
            );
        }
    }

    /// A worker that cannot work here: the pool turns degraded at once, with `reason`, and
    /// tries again every `degraded_interval`.
    fn environment_failure(
        &mut self,
        now: Instant,
        pool_name: &str,
        reason: String,
        out: &mut Out,
    ) {
        if self.phase != Phase::Running {
            return;
        }
        let Some(pool) = self.pools.get_mut(pool_name) else {
            return;
        };
        let v = pool
            .restart
            .record_environment_failure(now, &pool.spec.restart);
        pool.next_start = Some(now + v.delay);
        pool.degraded_reason = Some(reason.clone());
        out.pool(
            if v.became_degraded {
                Level::Error
            } else {
                Level::Warn
            },
            pool_name,
            format!(
                "pool {}: {reason}; next attempt in {}",
                if v.became_degraded {
                    "DEGRADED"
                } else {
                    "still degraded"
                },
                secs(v.delay)
            ),
        );
    }

    fn failure(&mut self, now: Instant, pool_name: &str, out: &mut Out) {
        if self.phase != Phase::Running {
            return;
        }
        let Some(pool) = self.pools.get_mut(pool_name) else {
            return;
        };
        let v = pool
            .restart
            .record_failure(now, &pool.spec.restart, &mut self.rng);
        pool.next_start = Some(now + v.delay);
        let window = secs(pool.spec.restart.failure_window.0);
        if v.became_degraded {
            out.pool(
                Level::Error,
                pool_name,
                format!(
                    "pool DEGRADED: {} failures within {window} (failure_threshold {}); retrying every {} until a worker survives {window}; other pools are unaffected",
                    v.in_window,
                    pool.spec.restart.failure_threshold,
                    secs(pool.spec.restart.degraded_interval.0)
                ),
            );
        } else if v.degraded {
            out.pool(
                Level::Warn,
                pool_name,
                format!(
                    "pool degraded: still failing ({} failures within {window}); next attempt in {}",
                    v.in_window,
                    secs(v.delay)
                ),
            );
        } else {
            out.pool(
                Level::Info,
                pool_name,
                format!(
                    "restart in {} (backoff attempt {}, ceiling {}; {} of {} failures within {window})",
                    secs(v.delay),
                    pool.restart.consecutive(),
                    secs(v.ceiling),
                    v.in_window,
                    pool.spec.restart.failure_threshold
                ),
            );
        }
    }

    fn on_exit(&mut self, now: Instant, id: WorkerId, how: ExitKind, out: &mut Out) {
        let Some(w) = self.workers.remove(&id) else {
            return;
        };
        let cleanup = match &w.name {
            Some(name) if !how.clean() => Some(Action::Cleanup {
                pool: w.pool.clone(),
                name: name.clone(),
                how: how.describe(),
            }),
            _ => None,
        };
        // Its counts so far stay counted; the last jobs it did are read from its record
        // (kept for a minute after its death) at the next reading.
        if let Some(pool) = self.pools.get_mut(&w.pool) {
            pool.jobs_retired.add(w.jobs);
        }
        if let Some(name) = &w.name {
            if self.finals.len() >= MAX_FINALS {
                self.finals.remove(0);
            }
            self.finals.push((w.pool.clone(), name.clone(), w.jobs));
        }
        if self.phase == Phase::Running
            && let Some(reason) = restart_reason(&w, &how, &self.pools, now)
            && let Some(pool) = self.pools.get_mut(&w.pool)
        {
            *pool.restarts.entry(reason).or_default() += 1;
        }
        self.after_exit(now, w, how, out);
        // After the lines that explain it, so the log reads in order.
        out.0.extend(cleanup);
    }

    // One match over how the worker ended and why it was leaving, each arm with the line it
    // logs; kept whole (about 100 lines) so the cases read as one table.
    fn after_exit(&mut self, now: Instant, w: Worker, how: ExitKind, out: &mut Out) {
        let id = w.id;
        let clean = how.clean();
        let pid = w.pid.unwrap_or_default();
        if let Some(pool) = self.pools.get_mut(&w.pool)
            && pool.roll.is_some_and(|s| s.new == id)
        {
            pool.roll = None;
        }
        if self.phase != Phase::Running {
            if !clean || w.killed {
                self.unclean = true;
            }
            let level = if clean { Level::Info } else { Level::Warn };
            out.worker(
                level,
                &w,
                format!(
                    "pid {pid} {}{}; {} worker(s) left",
                    how.describe(),
                    if clean {
                        ""
                    } else {
                        "; crash cleanup in Redis"
                    },
                    self.workers.len()
                ),
            );
            return;
        }
        let burst = self.pools.get(&w.pool).is_some_and(|p| p.spec.burst);
        match (clean, w.retire) {
            (_, Some(Retire::Stuck)) => out.worker(
                Level::Warn,
                &w,
                format!(
                    "pid {pid} {} after the stuck-worker kill; crash cleanup in Redis; replacing it",
                    how.describe()
                ),
            ),
            (true, Some(r)) => out.worker(
                Level::Info,
                &w,
                format!(
                    "pid {pid} {} (retired: {}){}",
                    how.describe(),
                    match r {
                        Retire::Memory => "memory limit",
                        Retire::ScaleDown => "scale down",
                        Retire::Roll => "rolling restart",
                        Retire::PoolRemoved => "pool removed",
                        Retire::Stuck => "stuck",
                    },
                    if r.holds_slot() { "; replacing it" } else { "" }
                ),
            ),
            (true, None) if burst => {
                if let Some(pool) = self.pools.get_mut(&w.pool) {
                    pool.burst_finished += 1;
                }
                out.worker(
                    Level::Info,
                    &w,
                    format!("pid {pid} {}: burst finished, not restarted", how.describe()),
                );
            }
            (true, None) => out.worker(
                Level::Info,
                &w,
                format!(
                    "pid {pid} {}: job limit reached (or asked to stop); replacing it now",
                    how.describe()
                ),
            ),
            (false, _) if how == ExitKind::Code(crate::launch::EXIT_ENVIRONMENT) => {
                out.worker(
                    Level::Warn,
                    &w,
                    format!(
                        "pid {pid} {}: jobs could not start in its environment (its last lines say why); they are back on their queues",
                        how.describe()
                    ),
                );
                self.environment_failure(
                    now,
                    &w.pool,
                    "its workers cannot start jobs in this environment (exit status 3: a process or file limit, a missing program, or an interpreter that cannot start; the workers' logs name it)".into(),
                    out,
                );
            }
            (false, _) => {
                let uptime = now.saturating_duration_since(w.spawned_at);
                let min_uptime = self
                    .pools
                    .get(&w.pool)
                    .map(|p| p.spec.restart.min_uptime.0)
                    .unwrap_or_default();
                // A worker that had been up for a while was killed or crashed on a job, not
                // failing to start: replace it at once. Only early deaths are a crash loop.
                let healthy = uptime >= min_uptime;
                out.worker(
                    Level::Warn,
                    &w,
                    format!(
                        "pid {pid} {} after {}; crash cleanup in Redis (death registered, job settled){}",
                        how.describe(),
                        secs(uptime),
                        if healthy { "; replacing it now" } else { "" }
                    ),
                );
                if !healthy {
                    self.failure(now, &w.pool, out);
                }
            }
        }
    }

    /// Time-driven work: shutdown deadlines, spawns, rolls, scale-downs, recovery, exit.
    fn tick(&mut self, now: Instant, out: &mut Out) {
        match self.phase {
            Phase::Warm { deadline } if now >= deadline => {
                let why = format!("warm_timeout ({})", secs(self.settings.warm_timeout));
                self.go_cold(now, &why, out);
            }
            Phase::Cold { deadline } if now >= deadline => {
                let why = format!("cold_timeout ({})", secs(self.settings.cold_timeout));
                self.kill_all(&why, out);
            }
            _ => {}
        }
        if self.phase == Phase::Running {
            let names: Vec<String> = self.pools.keys().cloned().collect();
            for name in &names {
                self.sync_pause(name, out);
                self.recover(now, name, out);
                self.roll_step(now, name, out);
                self.scale_down(name, out);
                self.spawn_due(now, name, out);
            }
            self.pools
                .retain(|n, p| !p.removed || self.workers.values().any(|w| &w.pool == n));
            let all_burst = !self.pools.is_empty() && self.pools.values().all(|p| p.spec.burst);
            if all_burst
                && self.workers.is_empty()
                && self.pools.values().all(|p| self.target(p) == 0)
            {
                out.info("every burst pool has finished its queues; exiting".into());
                self.phase = Phase::Done;
                out.0.push(Action::Exit(0));
            }
        } else if self.phase != Phase::Done && self.workers.is_empty() {
            let code = i32::from(self.unclean);
            out.info(if code == 0 {
                "shutdown complete: every worker stopped warm".into()
            } else {
                "shutdown complete, but some workers had to be escalated or killed (exit 1)".into()
            });
            self.phase = Phase::Done;
            out.0.push(Action::Exit(code));
        }
    }

    /// When the pool's newest running, non-retiring worker was started: recovery from
    /// failures needs one started after the latest failure.
    fn newest_live_start(&self, pool: &str) -> Option<Instant> {
        self.workers
            .values()
            .filter(|w| w.pool == pool && w.pid.is_some() && w.retire.is_none())
            .map(|w| w.spawned_at)
            .max()
    }

    fn recover(&mut self, now: Instant, name: &str, out: &mut Out) {
        let survivor = self.newest_live_start(name);
        let Some(pool) = self.pools.get_mut(name) else {
            return;
        };
        let was_degraded = pool.restart.is_degraded();
        if pool
            .restart
            .check_recovery(now, &pool.spec.restart, survivor)
        {
            pool.next_start = None;
            pool.degraded_reason = None;
            out.pool(
                if was_degraded {
                    Level::Warn
                } else {
                    Level::Info
                },
                name,
                format!(
                    "recovered: a worker has run for {} since the last failure{}",
                    secs(pool.spec.restart.failure_window.0),
                    if was_degraded {
                        "; pool back to normal"
                    } else {
                        ""
                    }
                ),
            );
        }
    }

    fn gate_open(&self, now: Instant, pool: &Pool) -> bool {
        pool.next_start.is_none_or(|t| now >= t)
            && self
                .last_spawn
                .is_none_or(|t| now >= t + self.settings.spawn_stagger)
    }

    fn spawn(&mut self, now: Instant, name: &str) -> Option<WorkerId> {
        let pool = self.pools.get(name)?;
        let max_jobs = pool
            .spec
            .max_jobs
            .map(|(lo, hi)| self.rng.u64(lo..=hi.max(lo)));
        let id = self.next_id;
        self.next_id += 1;
        self.workers.insert(
            id,
            Worker {
                id,
                pool: name.to_string(),
                generation: pool.generation,
                pid: None,
                name: None,
                spawned_at: now,
                max_jobs,
                terms_sent: 0,
                killed: false,
                retire: None,
                mem_strikes: 0,
                last_alive: now,
                registered: false,
                redis_state: None,
                rss: None,
                job: None,
                jobs: JobCounts::default(),
                idle_since: None,
                paused: pool.paused,
            },
        );
        self.last_spawn = Some(now);
        if let Some(p) = self.pools.get_mut(name) {
            p.next_start = None;
        }
        Some(id)
    }

    fn spawn_due(&mut self, now: Instant, name: &str, out: &mut Out) {
        loop {
            let Some(pool) = self.pools.get(name) else {
                return;
            };
            if self.occupying(name) >= self.target(pool) || !self.gate_open(now, pool) {
                return;
            }
            let degraded = pool.restart.is_degraded();
            let Some(id) = self.spawn(now, name) else {
                return;
            };
            if degraded {
                out.pool(
                    Level::Warn,
                    name,
                    "pool degraded: trying to start a worker again".into(),
                );
            }
            let spec = self.spawn_spec(id);
            out.0.push(Action::Spawn(spec));
            if !self.settings.spawn_stagger.is_zero() {
                return;
            }
        }
    }

    fn spawn_spec(&self, id: WorkerId) -> SpawnSpec {
        let w = &self.workers[&id];
        let pool = &self.pools[&w.pool];
        SpawnSpec {
            id,
            pool: w.pool.clone(),
            program: pool.spec.program.clone(),
            queues: pool.spec.queues.clone(),
            burst: pool.spec.burst,
            max_jobs: w.max_jobs,
            uid: pool.spec.user.as_ref().map(|u| u.id),
            gid: pool.spec.group.as_ref().map(|g| g.id),
            cwd: pool.spec.cwd.clone(),
            env: pool.spec.env.clone(),
            paused: w.paused,
        }
    }

    /// Picks the worker to retire: older definition first, then idle, then not yet
    /// registered, then busy; the newest among equals.
    fn pick_victim(&self, pool: &Pool) -> Option<WorkerId> {
        self.workers
            .values()
            .filter(|w| w.pool == pool.spec.name && w.retire.is_none() && w.pid.is_some())
            .min_by_key(|w| {
                let rank = if w.generation < pool.generation {
                    0
                } else {
                    match w.redis_state.as_deref() {
                        Some("idle") | Some("suspended") => 1,
                        None | Some("started") => 2,
                        _ => 3,
                    }
                };
                (
                    rank,
                    std::cmp::Reverse(w.spawned_at),
                    std::cmp::Reverse(w.id),
                )
            })
            .map(|w| w.id)
    }

    pub(super) fn retire(&mut self, id: WorkerId, why: Retire, out: &mut Out) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        w.retire = Some(why);
        w.term_warm(out);
        let w = w.clone();
        let state = w.redis_state.clone().unwrap_or_else(|| "unknown".into());
        out.worker(
            Level::Info,
            &w,
            format!(
                "retiring pid {} warm ({}; its state in Redis: {state})",
                w.pid.unwrap_or_default(),
                match why {
                    Retire::ScaleDown => "scale down",
                    Retire::Roll => "rolling restart: its replacement is up",
                    _ => "retired",
                }
            ),
        );
    }

    fn scale_down(&mut self, name: &str, out: &mut Out) {
        loop {
            let Some(pool) = self.pools.get(name) else {
                return;
            };
            if pool.removed || pool.roll.is_some() {
                return;
            }
            let active = self
                .workers
                .values()
                .filter(|w| w.pool == name && w.retire.is_none())
                .count() as u32;
            if active <= self.target(pool) {
                return;
            }
            let Some(victim) = self.pick_victim(pool) else {
                return;
            };
            self.retire(victim, Retire::ScaleDown, out);
        }
    }

    fn roll_step(&mut self, now: Instant, name: &str, out: &mut Out) {
        let Some(pool) = self.pools.get(name) else {
            return;
        };
        if pool.removed {
            return;
        }
        if let Some(step) = pool.roll {
            let Some(new) = self.workers.get(&step.new) else {
                self.pools.get_mut(name).expect("pool").roll = None;
                return;
            };
            if !(new.registered || now >= step.since + self.settings.roll_delay) {
                return;
            }
            let victim = self
                .outdated_active(pool)
                .min_by_key(|w| {
                    let idle = matches!(w.redis_state.as_deref(), Some("idle"));
                    (!idle, w.spawned_at)
                })
                .map(|w| w.id);
            self.pools.get_mut(name).expect("pool").roll = None;
            if let Some(v) = victim {
                self.retire(v, Retire::Roll, out);
            }
            return;
        }
        // Only at the target: below it the missing workers are started first, above it the
        // extra ones are retired first, so a roll never adds a worker over the count. And
        // only once the worker the last step retired has exited: a busy one finishes its job
        // first, and starting the next step meanwhile would run two extra workers.
        if self.outdated_active(pool).next().is_none()
            || self
                .workers
                .values()
                .any(|w| w.pool == name && w.retire == Some(Retire::Roll))
            || self.occupying(name) != self.target(pool)
            || !self.gate_open(now, pool)
        {
            return;
        }
        let Some(id) = self.spawn(now, name) else {
            return;
        };
        self.pools.get_mut(name).expect("pool").roll = Some(RollStep {
            new: id,
            since: now,
        });
        out.pool(
            Level::Info,
            name,
            "rolling restart: starting a worker with the new definition".into(),
        );
        let spec = self.spawn_spec(id);
        out.0.push(Action::Spawn(spec));
    }
}
