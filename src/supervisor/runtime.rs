//! The thin shell around [`super::state`]: one event loop on the main thread over a
//! crossbeam channel of [`Input`]s (fed by the signal thread, see [`super::input`]),
//! performing the state machine's actions with real processes. Workers are spawned only
//! from this thread (the parent-death signal fires when the *thread* that forked exits),
//! reaped with `Child::try_wait` per known worker, and orphans re-parented to the supervisor
//! (it is a child subreaper) are reaped by pid after a scan of its children, never with
//! `waitpid(-1)`.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::Level;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::{Pid, getpid};

use super::bookkeeping::{Bookkeeping, Outcome};
use super::control::{Reply, Request};
use super::input::{Input, SignalInput};
use super::notify::Notifier;
use super::sampler::{Plan, Sampled, Sampler};
use super::state::{
    self, Action, Command, Event, ExitKind, Reading, Sample, Sig, SpawnSpec, State, WorkerId,
};
use super::status::{RedisStatus, Status};
use crate::config::{Config, LogFormat};
use crate::conn::{RedisTarget, SentinelAuth, TlsMaterial, TlsPaths};
use crate::launch::handoff::Handoff;
use crate::launch::{self, Launch};
use crate::logging::{self, LogContext};
use crate::procfs;

/// The name on the supervisor's own log lines.
pub const SUPERVISOR_NAME: &str = "rq-supervisor";
/// Health readings while a rolling restart waits for a new worker to register.
const ROLL_HEALTH_INTERVAL: Duration = Duration::from_millis(250);
/// How long the exit path keeps retrying queued crash cleanups.
const EXIT_CLEANUP_BUDGET: Duration = Duration::from_secs(5);
/// How often the queues and workers are read (autoscale, `status`, metrics): twice a
/// second, so a backlog is answered within about a second.
const READING_INTERVAL: Duration = Duration::from_millis(500);
/// A reading older than this means Redis does not answer (a stalled one keeps the readings
/// thread waiting rather than failing).
const READING_STALE: Duration = Duration::from_secs(10);

/// What `main` resolved before the loop starts.
pub struct Start {
    pub config_path: PathBuf,
    /// False for a pool given on the command line (`-n N QUEUE...`): nothing to reload.
    pub from_file: bool,
    /// Options every worker is started with (the command-line pool's worker options).
    pub worker_args: Vec<std::ffi::OsString>,
    /// The pool file's text as validated; handed to every worker (see `launch::handoff`).
    pub config_text: String,
    pub redis_url: String,
    /// The TLS files after `$RQ_REDIS_TLS_*` overrides, to tell a reload that changes them.
    pub tls_paths: TlsPaths,
    /// Their contents, handed to every worker.
    pub tls: TlsMaterial,
    /// The Sentinels' credentials after `$RQ_REDIS_SENTINEL_*` overrides, handed to every
    /// worker.
    pub sentinel: SentinelAuth,
    pub target: RedisTarget,
    /// `[supervisor] control_socket` and `metrics` as configured at start (a reload may not
    /// move them).
    pub control_socket: Option<PathBuf>,
    pub metrics: Option<std::net::SocketAddr>,
}

pub struct Runtime {
    state: State,
    config_path: PathBuf,
    /// False for a command-line pool: SIGHUP has no file to read.
    from_file: bool,
    /// Options every worker is started with.
    worker_args: Vec<std::ffi::OsString>,
    /// The text of the last pool file accepted (at start or by a reload).
    config_text: String,
    /// This executable, whose built-in worker (`rq-supervisor worker`) pools without
    /// `program` run.
    default_program: PathBuf,
    redis_url: String,
    tls_paths: TlsPaths,
    tls: TlsMaterial,
    sentinel: SentinelAuth,
    hostname: String,
    me: Pid,
    children: BTreeMap<WorkerId, Child>,
    books: Bookkeeping,
    health_interval: Duration,
    /// `[supervisor] log_format = "json"`: workers are told to log JSON too, so the shared
    /// stream stays one format.
    json_logs: bool,
    next_health: Instant,
    next_reading: Instant,
    sampler: Sampler,
    /// Why the latest reading of the queues failed; `None` once one succeeded.
    reading_error: Option<String>,
    /// When a reading last succeeded.
    last_read: Option<Instant>,
    control_socket: Option<PathBuf>,
    metrics: Option<std::net::SocketAddr>,
    notifier: Notifier,
    inputs: Receiver<Input>,
    exit: Option<i32>,
}

impl Runtime {
    pub fn new(
        cfg: &Config,
        start: Start,
        default_program: PathBuf,
        inputs: Receiver<Input>,
        sender: Sender<Input>,
    ) -> Result<Runtime, String> {
        let Start {
            config_path,
            from_file,
            worker_args,
            config_text,
            redis_url,
            tls_paths,
            tls,
            sentinel,
            target,
            control_socket,
            metrics,
        } = start;
        let now = Instant::now();
        let sampler = Sampler::start(target.clone(), sender)?;
        Ok(Runtime {
            state: State::new(cfg, fastrand::u64(..)),
            config_path,
            from_file,
            worker_args,
            config_text,
            default_program,
            redis_url,
            tls_paths,
            tls,
            sentinel,
            hostname: launch::hostname(),
            me: getpid(),
            children: BTreeMap::new(),
            books: Bookkeeping::new(target),
            health_interval: cfg.supervisor.health_interval.0,
            json_logs: cfg.supervisor.log_format == LogFormat::Json,
            next_health: now + cfg.supervisor.health_interval.0,
            next_reading: now,
            sampler,
            reading_error: None,
            last_read: None,
            control_socket,
            metrics,
            notifier: Notifier::from_env(),
            inputs,
            exit: None,
        })
    }

    /// Runs until the state machine says to exit; returns the exit status.
    pub fn run(mut self) -> i32 {
        let mut pending: VecDeque<Action> = self.handle(Event::Tick).into();
        loop {
            while let Some(action) = pending.pop_front() {
                self.perform(action, &mut pending);
            }
            self.notify();
            if let Some(code) = self.exit {
                self.notifier.stopping();
                self.finish_cleanups();
                super::control::wait_for_answers();
                return code;
            }
            let events = self.next_events(&mut pending);
            for ev in events {
                pending.extend(self.handle(ev));
            }
        }
    }

    /// When the loop must wake at the latest.
    fn wake_at(&self) -> Instant {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(1);
        for t in [
            self.state.next_deadline(now),
            Some(self.next_health),
            Some(self.next_reading),
            self.books.next_retry(),
            self.notifier.next_deadline(),
        ]
        .into_iter()
        .flatten()
        {
            wake = wake.min(t);
        }
        // Never spin: something due "now" is handled by the tick below anyway.
        wake.max(now + Duration::from_millis(2))
    }

    /// Waits for an input or a deadline, then gathers what happened: inputs, exits, orphans,
    /// cleanup retries, health and load readings, and a tick.
    fn next_events(&mut self, pending: &mut VecDeque<Action>) -> Vec<Event> {
        let mut events = Vec::new();
        let mut child_signal = false;
        match self.inputs.recv_deadline(self.wake_at()) {
            Ok(input) => {
                let mut inputs = vec![input];
                inputs.extend(self.inputs.try_iter());
                for i in inputs {
                    child_signal |= matches!(i, Input::Signal(SignalInput::ChildExited));
                    events.extend(self.on_input(i, pending));
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                log::error!("the signal thread ended; signals are no longer handled");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let exits = self.reap();
        // Orphans (horses of dead workers, a handler's leftovers) are reparented here:
        // killed before the crash cleanup settles their job, and reaped.
        if child_signal || !exits.is_empty() {
            self.reap_orphans();
        }
        events.extend(exits);
        if self.books.next_retry().is_some_and(|t| Instant::now() >= t) {
            let outcomes = self.books.flush(false);
            self.log_cleanups(outcomes);
        }
        if Instant::now() >= self.next_health {
            self.reap_orphans();
            events.push(self.health(true));
        }
        if Instant::now() >= self.next_reading {
            self.ask_reading();
        }
        events.push(Event::Tick);
        events
    }

    /// systemd: the watchdog, READY once the pools are up, STATUS when it changes.
    fn notify(&mut self) {
        if !self.notifier.enabled() {
            return;
        }
        if self.state.phase != state::Phase::Running {
            self.notifier.stopping();
        }
        let ready = self.state.ready();
        let state = &self.state;
        self.notifier
            .turn(Instant::now(), ready, || state.summary());
    }

    fn handle(&mut self, event: Event) -> Vec<Action> {
        state::handle(&mut self.state, Instant::now(), event)
    }

    fn on_input(&mut self, input: Input, pending: &mut VecDeque<Action>) -> Vec<Event> {
        match input {
            Input::Reading(sampled) => {
                self.sampler.done();
                self.on_reading(*sampled).into_iter().collect()
            }
            Input::Control(request, answer) => {
                let reply = self.on_control(request, pending);
                // The asker may have given up; its thread, not the loop, writes the answer.
                let _ = answer.try_send(reply);
                Vec::new()
            }
            Input::Signal(SignalInput::Stop) => vec![Event::Signal(Sig::Stop)],
            Input::Signal(SignalInput::More) => vec![Event::Signal(Sig::More)],
            // Scaling down picks idle workers: read their states first.
            Input::Signal(SignalInput::Fewer) => {
                vec![self.health(false), Event::Signal(Sig::Fewer)]
            }
            Input::Signal(SignalInput::Reload) => {
                self.reload_now(pending);
                Vec::new()
            }
            // Exits are collected after every input (see `run`).
            Input::Signal(SignalInput::ChildExited) => Vec::new(),
        }
    }

    /// A control request, answered now; its actions join `pending`.
    fn on_control(&mut self, request: Request, pending: &mut VecDeque<Action>) -> Reply {
        let command = match request {
            Request::Status => {
                let mut reply = Reply::ok("");
                reply.status = Some(Box::new(self.status()));
                return reply;
            }
            Request::Reload => return self.reload_now(pending),
            Request::Scale { pool, workers } => Command::Scale { pool, workers },
            Request::Pause { pool } => Command::Pause(pool),
            Request::Resume { pool } => Command::Resume(pool),
            Request::Restart { pool } => Command::Restart(pool),
            Request::Stop { cold } => Command::Stop { cold },
        };
        let mut reply = Reply::with(1, "the state machine gave no answer");
        for action in self.handle(Event::Command(command)) {
            match action {
                Action::Reply { code, text } => reply = Reply::with(code, text),
                other => pending.push_back(other),
            }
        }
        reply
    }

    /// A reload (SIGHUP or `reload`), applied now, with systemd told before and after; the
    /// reply is the diff's lines or the refusal.
    fn reload_now(&mut self, pending: &mut VecDeque<Action>) -> Reply {
        self.notifier.reloading();
        let mut lines = Vec::new();
        let mut code = 0;
        for event in self.reload() {
            if matches!(event, Event::ReloadFailed(_)) {
                code = 2;
            }
            for action in self.handle(event) {
                if let Action::Log { pool, msg, .. } = &action {
                    lines.push(match pool {
                        Some(p) => format!("[{p}] {msg}"),
                        None => msg.clone(),
                    });
                }
                pending.push_back(action);
            }
        }
        self.notifier.reloaded();
        Reply::with(code, lines.join("\n"))
    }

    /// The snapshot `status` and the metrics show.
    fn status(&self) -> Status {
        let snap = self.state.snapshot(Instant::now());
        Status {
            pid: self.me.as_raw() as u32,
            version: env!("CARGO_PKG_VERSION").to_string(),
            config: self.config_path.display().to_string(),
            phase: snap.phase,
            redis: self.redis_status(),
            pools: snap.pools,
            workers: snap.workers,
            queues: snap.queues,
        }
    }

    /// Asks the readings thread for every pool's queues and every worker's record (and the
    /// records of workers that exited since, for their last job counts).
    fn ask_reading(&mut self) {
        self.next_reading = Instant::now() + READING_INTERVAL;
        let queues: Vec<String> = self
            .state
            .pools
            .values()
            .flat_map(|p| p.spec.queues.iter().cloned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let workers = self
            .state
            .live_workers()
            .filter_map(|w| Some((w.id, w.name.clone()?)))
            .collect();
        let finals = self
            .state
            .finals
            .iter()
            .map(|(_, n, _)| n.clone())
            .collect();
        self.sampler.request(Plan {
            queues,
            workers,
            finals,
        });
    }

    /// The readings thread's answer, as an event for the state machine.
    fn on_reading(&mut self, sampled: Sampled) -> Option<Event> {
        let Sampled { plan, result } = sampled;
        let backlog = match result {
            Ok(b) => b,
            Err(e) => {
                if self.reading_error.is_none() {
                    log::warn!("cannot read the queues ({e}); autoscale waits, /healthz says so");
                }
                self.reading_error = Some(e);
                return None;
            }
        };
        if self.reading_error.take().is_some() {
            log::info!("Redis answers again: queue readings resume");
        }
        self.last_read = Some(Instant::now());
        let mut records = backlog.workers.into_iter();
        let workers = plan
            .workers
            .into_iter()
            .map(|(id, _)| (id, records.next().unwrap_or_default()))
            .collect();
        let finals = plan
            .finals
            .into_iter()
            .map(|n| (n, records.next().filter(|w| w.present).map(|w| w.jobs)))
            .collect();
        Some(Event::Reading(Reading {
            queues: plan.queues.into_iter().zip(backlog.queues).collect(),
            workers,
            finals,
        }))
    }

    /// Whether Redis answers, and why not: the latest reading failed, or none came lately.
    fn redis_status(&self) -> RedisStatus {
        let fresh = self.last_read.is_some_and(|t| t.elapsed() < READING_STALE);
        let error = self.reading_error.clone().or_else(|| {
            (!fresh).then(|| match self.last_read {
                Some(t) => format!("no answer for {}s", t.elapsed().as_secs()),
                None => "no reading has succeeded yet".to_string(),
            })
        });
        RedisStatus {
            url: self.books.target().masked().to_string(),
            ok: error.is_none(),
            error,
        }
    }

    /// SIGHUP: fresh health readings, then the file read again (or why it was refused).
    fn reload(&mut self) -> Vec<Event> {
        if !self.from_file {
            return vec![Event::ReloadFailed(
                "the pool was given on the command line (-n N QUEUE...), so there is no pool file to read again; restart rq-supervisor with the new options, or run it with -c pool.toml to reload on SIGHUP".into(),
            )];
        }
        log::info!("SIGHUP: reloading {}", self.config_path.display());
        let fresh = self.health(false);
        let reload = match Config::read(&self.config_path) {
            Ok((cfg, _))
                if cfg.supervisor.metrics != self.metrics
                    || cfg.supervisor.control_socket != self.control_socket =>
            {
                Event::ReloadFailed(format!(
                    "{}: [supervisor] control_socket or metrics changed; the running supervisor keeps listening where it started, so restart rq-supervisor to move them",
                    self.config_path.display()
                ))
            }
            Ok((cfg, _)) if Config::resolve_tls(&cfg.redis_tls) != self.tls_paths => {
                Event::ReloadFailed(format!(
                    "{}: the [redis] tls_* files changed; the running workers and their crash cleanups use the TLS files read at start, so restart rq-supervisor to switch",
                    self.config_path.display()
                ))
            }
            Ok((cfg, _)) if Config::resolve_sentinel_auth(&cfg.redis_sentinel) != self.sentinel => {
                Event::ReloadFailed(format!(
                    "{}: [redis] sentinel_username / sentinel_password changed; the running workers and their crash cleanups use the credentials read at start, so restart rq-supervisor to switch",
                    self.config_path.display()
                ))
            }
            Ok((cfg, _))
                if Config::resolve_redis_url(None, cfg.redis_url.as_deref()) != self.redis_url =>
            {
                Event::ReloadFailed(format!(
                    "{}: [redis] url now names another Redis ({}) than the one the workers use ({}); a running supervisor cannot move its workers and their crash cleanups, so restart rq-supervisor to switch",
                    self.config_path.display(),
                    crate::conn::mask_url(&Config::resolve_redis_url(
                        None,
                        cfg.redis_url.as_deref()
                    )),
                    crate::conn::mask_url(&self.redis_url)
                ))
            }
            Ok((cfg, text)) => {
                self.config_text = text;
                self.health_interval = cfg.supervisor.health_interval.0;
                self.json_logs = cfg.supervisor.log_format == LogFormat::Json;
                logging::init(cfg.supervisor.log_level.filter(), cfg.supervisor.log_format);
                super::warn_if_exposed(&cfg, &self.tls_paths);
                Event::Reload(Box::new(cfg))
            }
            Err(e) => Event::ReloadFailed(e.to_string()),
        };
        vec![fresh, reload]
    }

    fn perform(&mut self, action: Action, pending: &mut VecDeque<Action>) {
        match action {
            Action::Spawn(spec) => {
                let event = match self.spawn(&spec) {
                    Ok(child) => {
                        let pid = child.id();
                        self.children.insert(spec.id, child);
                        Event::Spawned {
                            id: spec.id,
                            pid,
                            // The supervisor passes no --name.
                            name: launch::default_worker_name(&self.hostname, pid),
                        }
                    }
                    Err(e) => Event::SpawnFailed {
                        id: spec.id,
                        error: e.to_string(),
                        environment: matches!(
                            e.raw_os_error(),
                            Some(
                                nix::libc::EAGAIN
                                    | nix::libc::ENOMEM
                                    | nix::libc::EMFILE
                                    | nix::libc::ENFILE
                            )
                        ),
                    },
                };
                pending.extend(self.handle(event));
            }
            Action::Term { pid, .. } => {
                // The worker is our child and not yet reaped, so the pid is still its own.
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            Action::Kill { pid, .. } => kill_tree(pid),
            Action::Pause { pid, on, .. } => {
                let sig = if on { Signal::SIGUSR1 } else { Signal::SIGUSR2 };
                let _ = kill(Pid::from_raw(pid as i32), sig);
            }
            // Replies are taken out where a command is handled (`on_control`).
            Action::Reply { .. } => {}
            Action::Cleanup { pool, name, how } => {
                let outcomes = self.books.cleanup(pool, name, how);
                self.log_cleanups(outcomes);
            }
            Action::Log {
                level,
                pool,
                worker,
                msg,
            } => log_as(level, pool, worker, &msg),
            Action::Exit(code) => self.exit = Some(code),
        }
    }

    fn spawn(&self, spec: &SpawnSpec) -> io::Result<Child> {
        let launch = Launch {
            builtin: spec.program.is_none(),
            program: spec
                .program
                .clone()
                .unwrap_or_else(|| self.default_program.clone()),
            config_path: self.config_path.clone(),
            pool: spec.pool.clone(),
            queues: spec.queues.clone(),
            burst: spec.burst,
            max_jobs: spec.max_jobs,
            log_format: self.json_logs.then_some(LogFormat::Json),
            redis_url: self.redis_url.clone(),
            supervisor: self.me,
            uid: spec.uid,
            gid: spec.gid,
            cwd: spec.cwd.clone(),
            env: spec.env.clone(),
            extra_args: self.worker_args.clone(),
            paused: spec.paused,
        };
        // The worker gets the pool file's text and the TLS files from us on a descriptor,
        // not from disk: it may run as a user who cannot read them (see launch::handoff).
        launch.spawn(&Handoff {
            config_path: self.config_path.clone(),
            config: self.config_text.clone(),
            tls: self.tls.clone(),
            sentinel: self.sentinel.clone(),
        })
    }

    /// Collects every worker that exited since the last look.
    fn reap(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        let mut gone = Vec::new();
        for (id, child) in self.children.iter_mut() {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let how = match (status.code(), status.signal()) {
                        (Some(c), _) => ExitKind::Code(c),
                        (None, Some(n)) => ExitKind::Signal(
                            n,
                            Signal::try_from(n)
                                .map(|s| s.as_str().to_string())
                                .unwrap_or_else(|_| format!("signal {n}")),
                        ),
                        (None, None) => ExitKind::Code(-1),
                    };
                    gone.push(*id);
                    events.push(Event::Exited { id: *id, how });
                }
                Ok(None) => {}
                Err(e) => {
                    log::error!("cannot wait for worker pid {}: {e}", child.id());
                    gone.push(*id);
                    events.push(Event::Exited {
                        id: *id,
                        how: ExitKind::Code(-1),
                    });
                }
            }
        }
        for id in gone {
            self.children.remove(&id);
        }
        events
    }

    /// Kills and reaps children that are not workers. The supervisor starts nothing but
    /// workers, so any other child is an orphan re-parented to it (it is a subreaper): a work
    /// horse, or something a horse started, whose worker died. Its job was settled as failed
    /// by the crash cleanup, so it must not keep running.
    fn reap_orphans(&mut self) {
        let known: HashSet<u32> = self.children.values().map(Child::id).collect();
        let own_group = nix::unistd::getpgrp();
        for pid in procfs::children(self.me.as_raw() as u32) {
            if known.contains(&pid) {
                continue;
            }
            let p = Pid::from_raw(pid as i32);
            if procfs::stat(pid).is_some_and(|s| s.state != 'Z') {
                if let Ok(group) = nix::unistd::getpgid(Some(p))
                    && group != own_group
                {
                    let _ = killpg(group, Signal::SIGKILL);
                }
                let _ = kill(p, Signal::SIGKILL);
                log::warn!(
                    "killed orphan pid {pid}: left behind by a job's handler or by a worker that died; nothing a job starts may outlive it"
                );
            }
            if let Ok(status) = waitpid(p, Some(WaitPidFlag::WNOHANG)) {
                log::debug!("reaped orphan pid {pid}: {status:?}");
            }
        }
    }

    /// Reads memory from /proc and (if `full` or needed) registrations from Redis.
    fn health(&mut self, scheduled: bool) -> Event {
        let now = Instant::now();
        if scheduled {
            let every = if self.state.rolling() {
                self.health_interval.min(ROLL_HEALTH_INTERVAL)
            } else {
                self.health_interval
            };
            self.next_health = now + every;
        }
        let workers: Vec<(WorkerId, u32, String)> = self
            .state
            .live_workers()
            .filter_map(|w| Some((w.id, w.pid?, w.name.clone()?)))
            .collect();
        let names: Vec<String> = workers.iter().map(|(_, _, n)| n.clone()).collect();
        let regs = self.books.registrations(&names);
        let redis_ok = regs.is_some();
        let mut regs = regs.map(Vec::into_iter);
        let samples = workers
            .iter()
            .map(|(id, pid, _)| Sample {
                id: *id,
                rss: procfs::tree_rss(*pid),
                registration: regs.as_mut().and_then(Iterator::next),
            })
            .collect();
        Event::Health { redis_ok, samples }
    }

    fn log_cleanups(&self, outcomes: Vec<Outcome>) {
        for o in outcomes {
            match o {
                Outcome::Done(job, c) => {
                    let what = match &c.job {
                        Some((id, verdict)) => format!("its job {id} was settled: {verdict}"),
                        None => "it had no job in flight".to_string(),
                    };
                    log_as(
                        Level::Info,
                        Some(job.pool),
                        Some(job.name),
                        &format!("crash cleanup done: death registered in Redis; {what}"),
                    );
                }
                Outcome::Deferred(job, why) => log_as(
                    Level::Warn,
                    Some(job.pool),
                    Some(job.name),
                    &format!(
                        "crash cleanup deferred ({why}); {} cleanup(s) queued, none is dropped",
                        self.books.pending()
                    ),
                ),
            }
        }
    }

    /// At exit: one last bounded effort for cleanups still queued.
    fn finish_cleanups(&mut self) {
        let deadline = Instant::now() + EXIT_CLEANUP_BUDGET;
        while self.books.pending() > 0 && Instant::now() < deadline {
            let outcomes = self.books.flush(true);
            let failed = outcomes.iter().any(|o| matches!(o, Outcome::Deferred(..)));
            self.log_cleanups(outcomes);
            if failed {
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        if self.books.pending() > 0 {
            log::error!(
                "exiting with {} crash cleanup(s) not written: Redis at {} stayed unreachable; RQ's own abandoned-job cleanup will settle those jobs",
                self.books.pending(),
                self.books.target().masked()
            );
        }
    }
}

/// SIGKILLs a worker's process group and the groups of its children (work horses lead
/// their own sessions, so the worker's group does not contain them). Children are found
/// before anything is killed, while they are still the worker's.
pub fn kill_tree(pid: u32) {
    for child in procfs::children(pid) {
        let p = Pid::from_raw(child as i32);
        let _ = killpg(p, Signal::SIGKILL);
        let _ = kill(p, Signal::SIGKILL);
    }
    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// Logs one line as `pool/worker` (or the supervisor), then restores the supervisor's own
/// context. Lines about a worker start with `supervisor:` so they are not mistaken for the
/// worker's own.
pub fn log_as(level: Level, pool: Option<String>, worker: Option<String>, msg: &str) {
    if pool.is_none() && worker.is_none() {
        log::log!(level, "{msg}");
        return;
    }
    let about_worker = worker.is_some();
    logging::set_context(LogContext {
        pool,
        name: worker.unwrap_or_else(|| SUPERVISOR_NAME.to_string()),
    });
    if about_worker {
        log::log!(level, "supervisor: {msg}");
    } else {
        log::log!(level, "{msg}");
    }
    logging::set_context(LogContext {
        pool: None,
        name: SUPERVISOR_NAME.to_string(),
    });
}
