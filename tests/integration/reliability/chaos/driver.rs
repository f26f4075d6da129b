//! The chaos run and the soak, one driver for both variants: the ~20-second run in the test
//! suite (`tests/chaos.rs`) and the long ones `scripts/chaos` starts.
//!
//! It runs `rq-supervisor` with two pools of three workers on a redis-server with AOF, while
//! Python RQ (a producer process) and the crate's producer (a thread) enqueue a mix of jobs:
//! fast built-ins, 1-3 s sleeps, failures, retried failures, command handlers, handlers that
//! crash their horse, handlers that fail once then succeed, and (Python) dependent jobs. During
//! the chaos window it SIGKILLs a random worker or work horse every 50-200 ms, stalls Redis
//! once (`DEBUG SLEEP`, longer than the clients' 5 s read timeout), kills every client
//! connection once (`CLIENT KILL TYPE normal`), squeezes one worker's open-file limit for a
//! few seconds (the resource-exhaustion fault) and restarts redis-server once.
//!
//! Then, with the queues drained, it checks invariants, never timings: every job is in exactly
//! one terminal state and in the matching registry (a dependent of a failed job stays deferred);
//! nothing is queued, started or in `rq:wip`; every job that ran more than once, or failed
//! although its handler succeeds, is explained by a kill during one of its executions
//! (executions come from the workers' logs, kills from the driver's record) or by its own
//! retries; no job is lost or unknown; no zombie or orphan process exists; exactly six workers
//! are registered and running; the supervisor never exited.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::support::*;
use rq_supervisor::procfs;

/// What one run does.
#[derive(Debug, Clone)]
pub struct Params {
    pub name: &'static str,
    /// Jobs to enqueue, half by each producer.
    pub jobs: usize,
    /// How long the producers spread their jobs over.
    pub produce_for: Duration,
    /// The chaos window (kills and Redis events); zero for none.
    pub chaos: Duration,
    /// `DEBUG SLEEP` seconds of the stall.
    pub stall_secs: u64,
    /// How long the queues may take to drain once the producers are done.
    pub drain_limit: Duration,
    /// Resource samples (RSS, open files) every so often; `None` for none.
    pub sample_every: Option<Duration>,
    pub seed: u64,
    /// `scripts/chaos --sentinel`: a master, a replica and three Sentinels instead of one
    /// redis-server, and failovers instead of the stall and the restart.
    pub sentinel: bool,
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    env_or("CHAOS_SEED", fastrand::u64(..))
}

impl Params {
    /// The variant in the test suite: about 20 s on an idle machine.
    pub fn short() -> Params {
        Params {
            name: "chaos (short)",
            jobs: 600,
            produce_for: Duration::from_secs(12),
            chaos: Duration::from_secs(15),
            stall_secs: 6,
            drain_limit: Duration::from_secs(300),
            sample_every: None,
            seed: seed(),
            sentinel: false,
        }
    }

    /// `scripts/chaos`: 5,000 jobs, 60 s of chaos (`CHAOS_JOBS`, `CHAOS_SECONDS`).
    pub fn long() -> Params {
        let secs = env_or("CHAOS_SECONDS", 60u64);
        Params {
            name: "chaos (long)",
            jobs: env_or("CHAOS_JOBS", 5000usize),
            produce_for: Duration::from_secs(secs * 4 / 5),
            chaos: Duration::from_secs(secs),
            stall_secs: 6,
            drain_limit: Duration::from_secs(900),
            sample_every: None,
            seed: seed(),
            sentinel: false,
        }
    }

    /// `scripts/chaos --soak`: steady load, no kills (`SOAK_SECONDS`, default 600, and
    /// `SOAK_RATE` jobs per second, default 20).
    pub fn soak() -> Params {
        let secs = env_or("SOAK_SECONDS", 600u64);
        let rate = env_or("SOAK_RATE", 20usize);
        Params {
            name: "soak",
            jobs: rate * secs as usize,
            produce_for: Duration::from_secs(secs),
            chaos: Duration::ZERO,
            stall_secs: 0,
            drain_limit: Duration::from_secs(900),
            sample_every: Some(Duration::from_secs(env_or("SOAK_SAMPLE_SECONDS", 60u64))),
            seed: seed(),
            sentinel: false,
        }
    }

    /// `scripts/chaos --sentinel`: 2,000 jobs, 40 s of chaos (`CHAOS_JOBS`, `CHAOS_SECONDS`)
    /// against a Sentinel set: SIGKILLs as always, a `SENTINEL FAILOVER` at a quarter, a
    /// `CLIENT KILL` at half, and the master SIGKILLed at three quarters (long enough after
    /// the first failover for the demoted master to be a replica in sync again).
    pub fn sentinel() -> Params {
        let secs = env_or("CHAOS_SECONDS", 40u64);
        Params {
            name: "chaos (sentinel)",
            jobs: env_or("CHAOS_JOBS", 2000usize),
            produce_for: Duration::from_secs(secs * 4 / 5),
            chaos: Duration::from_secs(secs),
            stall_secs: 0,
            drain_limit: Duration::from_secs(900),
            sample_every: None,
            seed: seed(),
            sentinel: true,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The plan: which jobs, and what each one is expected to end as.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `rq.builtin.noop`.
    Noop,
    /// `rq.builtin.echo`.
    Echo,
    /// `rq.builtin.sleep`, 1-3 s.
    Slow,
    /// `rq.builtin.fail`, no retries.
    Fail,
    /// `rq.builtin.fail` with `Retry(max=2)`: three runs, then failed.
    Retried,
    /// `chaos.cmd`, a command handler (logs its run, sleeps 0-50 ms).
    Cmd,
    /// `chaos.crash`: the handler kills its own horse (SIGUSR1).
    Crash,
    /// `chaos.flaky` with `Retry(max=2)`: fails its first run, then succeeds.
    Flaky,
    /// `chaos.cmd` depending on the previous job (Python only).
    Child,
    /// `chaostasks.work`, the app's own Python function (pickled by Python RQ's default
    /// serializer; sleeps 0-50 ms, returns its argument doubled), run by the embedded
    /// interpreter.
    #[cfg(feature = "python")]
    Python,
}

impl Kind {
    const ALL: &[Kind] = &[
        Kind::Noop,
        Kind::Echo,
        Kind::Slow,
        Kind::Fail,
        Kind::Retried,
        Kind::Cmd,
        Kind::Crash,
        Kind::Flaky,
        Kind::Child,
        #[cfg(feature = "python")]
        Kind::Python,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Noop => "noop",
            Kind::Echo => "echo",
            Kind::Slow => "slow",
            Kind::Fail => "fail",
            Kind::Retried => "retried",
            Kind::Cmd => "command",
            Kind::Crash => "crash",
            Kind::Flaky => "flaky",
            Kind::Child => "dependent",
            #[cfg(feature = "python")]
            Kind::Python => "python",
        }
    }

    /// Whether the job finishes when nothing kills it.
    fn succeeds(self) -> bool {
        !matches!(self, Kind::Fail | Kind::Retried | Kind::Crash)
    }
}

#[derive(Debug, Clone)]
pub struct JobSpec {
    pub id: String,
    pub kind: Kind,
    pub queue: &'static str,
    pub func: &'static str,
    pub args: Vec<Value>,
    pub retries: u32,
    pub parent: Option<String>,
}

impl JobSpec {
    /// Enqueued with Python RQ's default serializer (pickle) rather than JSON.
    fn pickled(&self) -> bool {
        #[cfg(feature = "python")]
        if self.kind == Kind::Python {
            return true;
        }
        false
    }

    /// Re-runs the job causes by itself (a failure with retries left), kills aside.
    fn own_requeues(&self) -> u32 {
        match self.kind {
            Kind::Fail | Kind::Retried | Kind::Crash => self.retries,
            Kind::Flaky => 1,
            _ => 0,
        }
    }
}

const QUEUES: [&str; 3] = ["high", "default", "low"];

fn plan(p: &Params) -> (Vec<JobSpec>, Vec<JobSpec>) {
    let mut rng = fastrand::Rng::with_seed(p.seed);
    let mut py: Vec<JobSpec> = Vec::new();
    let mut rs: Vec<JobSpec> = Vec::new();
    let mut i = 0;
    while i < p.jobs {
        let python = i % 2 == 0;
        let kind = match rng.u32(0..100) {
            0..22 => Kind::Noop,
            22..36 => Kind::Echo,
            36..38 => Kind::Slow,
            38..44 => Kind::Fail,
            44..50 => Kind::Retried,
            50..72 => Kind::Cmd,
            72..78 => Kind::Crash,
            78..84 => Kind::Flaky,
            // A dependent job right after its parent (a command job), Python only.
            84..90 if python && p.jobs - i >= 2 => Kind::Child,
            // The app's own function, pickled: Python producers only.
            #[cfg(feature = "python")]
            90..100 if python => Kind::Python,
            _ => Kind::Noop,
        };
        let list = if python { &mut py } else { &mut rs };
        let prefix = if python { "py" } else { "rs" };
        let mut job = |kind: Kind, n: usize, parent: Option<String>| {
            let (func, args) = match kind {
                Kind::Noop => ("rq.builtin.noop", vec![]),
                Kind::Echo => ("rq.builtin.echo", vec![json!(n)]),
                Kind::Slow => (
                    "rq.builtin.sleep",
                    vec![json!(1.0 + rng.u32(0..=20) as f64 / 10.0)],
                ),
                Kind::Fail | Kind::Retried => {
                    ("rq.builtin.fail", vec![json!(format!("job {n} fails"))])
                }
                Kind::Cmd | Kind::Child => ("chaos.cmd", vec![json!(rng.u32(0..=50))]),
                Kind::Crash => ("chaos.crash", vec![]),
                Kind::Flaky => ("chaos.flaky", vec![]),
                #[cfg(feature = "python")]
                Kind::Python => ("chaostasks.work", vec![json!(n), json!(rng.u32(0..=50))]),
            };
            let retries = match kind {
                Kind::Retried | Kind::Flaky => 2,
                Kind::Fail => 0,
                // A third of the others have retries, so kills requeue as well as fail them.
                _ if rng.u32(0..3) == 0 => 2,
                _ => 0,
            };
            JobSpec {
                id: format!("{prefix}-{n:06}"),
                kind,
                queue: QUEUES[rng.usize(0..QUEUES.len())],
                func,
                args,
                retries,
                parent,
            }
        };
        if kind == Kind::Child {
            let parent = job(Kind::Cmd, i, None);
            let child = job(Kind::Child, i + 1, Some(parent.id.clone()));
            list.push(parent);
            list.push(child);
            i += 2;
        } else {
            list.push(job(kind, i, None));
            i += 1;
        }
    }
    (py, rs)
}

// ---------------------------------------------------------------------------------------------
// The setup: redis-server, handlers, pool file, supervisor.

/// The supervisor, its process group killed on drop (whatever a failed run leaves behind).
struct SupervisorChild {
    child: Child,
}

impl SupervisorChild {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for SupervisorChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = self.pid();
            for w in procfs::children(pid) {
                for h in procfs::children(w) {
                    let _ = killpg(Pid::from_raw(h as i32), Signal::SIGKILL);
                    let _ = kill(Pid::from_raw(h as i32), Signal::SIGKILL);
                }
                let _ = killpg(Pid::from_raw(w as i32), Signal::SIGKILL);
                let _ = kill(Pid::from_raw(w as i32), Signal::SIGKILL);
            }
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Setup {
    dir: tempfile::TempDir,
    redis: Backend,
    /// What the supervisor, the producers and the driver's reader connect with.
    url: String,
    log: PathBuf,
    runs: PathBuf,
    token: String,
}

/// One redis-server, or a Sentinel set (`--sentinel`).
enum Backend {
    Single(RedisServer),
    Sentinel(crate::support::sentinel::SentinelSet),
}

fn setup(p: &Params) -> (Setup, SupervisorChild) {
    let (redis, url) = if p.sentinel {
        let set = crate::support::sentinel::SentinelSet::start();
        let url = set.url();
        (Backend::Sentinel(set), url)
    } else {
        let redis = RedisServer::start_with(&[
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--enable-debug-command",
            "local",
        ]);
        let url = redis.url();
        (Backend::Single(redis), url)
    };
    let dir = tempfile::Builder::new()
        .prefix("rqs-chaos-")
        .tempdir()
        .expect("temp dir");
    let runs = dir.path().join("runs.log");
    let marks = dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    // Marks this run's handler processes (the orphan check looks for it). The seed alone is
    // not unique: runs sharing the test process (chaos_short, and the ignored chaos_long and
    // soak with --include-ignored) may share a CHAOS_SEED.
    let token = format!(
        "{:016x}-{}",
        p.seed,
        dir.path().file_name().unwrap().to_string_lossy()
    );
    let cmd = write_script(
        dir.path(),
        "cmd.sh",
        &format!(
            "#!/bin/sh\necho \"$RQ_JOB_ID $RQ_EXECUTION_ID $RQ_WORKER_ID $$ cmd\" >> {runs}\n\
             ms=${{1:-0}}\nif [ \"$ms\" -gt 0 ]; then sleep \"$(printf '0.%03d' \"$ms\")\"; fi\n\
             echo \"{{\\\"ran\\\": \\\"$RQ_JOB_ID\\\"}}\"\n",
            runs = runs.display()
        ),
    );
    let crash = write_script(
        dir.path(),
        "crash.sh",
        &format!(
            "#!/bin/sh\necho \"$RQ_JOB_ID $RQ_EXECUTION_ID $RQ_WORKER_ID $$ crash\" >> {runs}\nkill -USR1 $$\nsleep 5\n",
            runs = runs.display()
        ),
    );
    let flaky = write_script(
        dir.path(),
        "flaky.sh",
        &format!(
            "#!/bin/sh\necho \"$RQ_JOB_ID $RQ_EXECUTION_ID $RQ_WORKER_ID $$ flaky\" >> {runs}\n\
             if [ -e {marks}/$RQ_JOB_ID ]; then echo recovered; exit 0; fi\n\
             touch {marks}/$RQ_JOB_ID\necho 'first run fails' >&2\nexit 3\n",
            runs = runs.display(),
            marks = marks.display()
        ),
    );
    // The app's own Python module, for Kind::Python (preloaded by every worker).
    std::fs::write(
        dir.path().join("chaostasks.py"),
        "import time\n\ndef work(n, ms):\n    time.sleep(ms / 1000.0)\n    return n * 2\n",
    )
    .unwrap();
    let python = if cfg!(feature = "python") {
        format!(
            "[python]\npath = [{}]\npreload = [\"chaostasks\"]\n",
            toml_str(dir.path().display().to_string())
        )
    } else {
        String::new()
    };
    let handler = |name: &str, path: &Path| {
        format!(
            "[handlers.\"{name}\"]\ncommand = [{}]\nenv = {{ CHAOS_RUN = \"{token}\" }}\n",
            toml_str(path.display().to_string())
        )
    };
    let restart = r#"backoff_initial = "20ms"
backoff_max = "500ms"
failure_window = "10s"
failure_threshold = 1000000
degraded_interval = "1s""#;
    let config = format!(
        r#"[supervisor]
health_interval = "1s"
log_format = "json"
warm_timeout = "10s"
cold_timeout = "5s"

[worker]
builtin_handlers = true
log_level = "debug"
# Finished jobs must outlive the run (the default 500 s would expire them in the soak).
results_ttl = 86400
job_monitoring_interval = "1s"
maintenance_interval = "10s"
worker_ttl = "20s"

[pools.alpha]
queues = ["high", "default"]
workers = 3
[pools.alpha.restart]
{restart}

[pools.beta]
queues = ["default", "low"]
workers = 3
[pools.beta.restart]
{restart}

{python}
{}{}{}"#,
        handler("chaos.cmd", &cmd),
        handler("chaos.crash", &crash),
        handler("chaos.flaky", &flaky),
    );
    let config_path = dir.path().join("pool.toml");
    std::fs::write(&config_path, config).unwrap();
    let log = dir.path().join("supervisor.log");
    let mut cmd = Supervisor::at(&url, &config_path).command();
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("supervisor.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().expect("start rq-supervisor");
    (
        Setup {
            dir,
            redis,
            url,
            log,
            runs,
            token,
        },
        SupervisorChild { child },
    )
}

// ---------------------------------------------------------------------------------------------
// Producers.

fn write_plan(path: &Path, jobs: &[JobSpec]) {
    let mut text = String::new();
    for j in jobs {
        let line = json!({
            "id": j.id,
            "queue": j.queue,
            "func": j.func,
            "args": j.args,
            "retries": j.retries,
            "depends_on": j.parent,
            "pickle": j.pickled(),
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn python_producer(setup: &Setup, jobs: &[JobSpec], over: Duration) -> Child {
    let plan = setup.dir.path().join("python-plan.jsonl");
    write_plan(&plan, jobs);
    std::process::Command::new(python_bin())
        .env("RQ_REDIS_URL", &setup.url)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/chaos_producer.py"))
        .arg(&plan)
        .arg(over.as_secs_f64().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed")
}

/// The Rust half: `rq_supervisor::producer::enqueue` from a thread. Returns failed attempts.
fn rust_producer(url: String, jobs: Vec<JobSpec>, over: Duration) -> u32 {
    if jobs.is_empty() {
        // Sentinel mode: the Python producer has them all.
        return 0;
    }
    let client = redis::Client::open(url).unwrap();
    let mut con = None;
    let gap = over.div_f64(jobs.len().max(1) as f64);
    let start = Instant::now();
    let mut failures = 0;
    for (i, j) in jobs.iter().enumerate() {
        let due = start + gap.mul_f64(i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let opts = rq_supervisor::producer::EnqueueOptions {
            job_id: Some(j.id.clone()),
            retry: (j.retries > 0).then(|| (j.retries, vec![])),
            ..Default::default()
        };
        failures += enqueue_through_outages(
            &client,
            &mut con,
            j.queue,
            j.func,
            j.args.clone(),
            &opts,
            Duration::from_secs(120),
        );
    }
    failures
}

// ---------------------------------------------------------------------------------------------
// The chaos driver.

#[derive(Debug, Clone)]
struct KillRecord {
    /// Just before kill(2).
    at: f64,
    /// Just after it returned: the signal landed in between, however long the driver was
    /// descheduled.
    done: f64,
    pid: u32,
    /// The worker the victim belonged to (itself for a worker).
    worker: u32,
    horse: bool,
}

/// Workers (children of the supervisor) and their horses (children of a worker).
fn victims(sup: u32) -> Vec<(u32, u32, bool)> {
    let mut out = Vec::new();
    for w in procfs::children(sup) {
        if !alive(w) {
            continue;
        }
        out.push((w, w, false));
        for h in procfs::children(w) {
            if alive(h) {
                out.push((h, w, true));
            }
        }
    }
    out
}

/// The resource-exhaustion fault: one worker's open-file limit (the soft one, which it may
/// raise again, so the driver can restore it without CAP_SYS_RESOURCE) lowered to 3 for a few
/// seconds, as a worker restarted under a tight `--nofile` would have: no pipe for a horse,
/// no handler's stdin. Its jobs must go back to their queues, none failed by it; a streak of
/// five makes the worker exit 3 and its pool degraded for `degraded_interval`.
#[derive(Default)]
struct Squeeze {
    started: bool,
    /// The worker, its old soft limit and when to restore it.
    on: Option<(u32, u64, Instant)>,
}

/// How long the worker is squeezed: more than the first four backoffs of a streak
/// (0.25 + 0.5 + 1 + 2 s at most), so it may give up, or be rescued by the end of the squeeze.
const SQUEEZE_FOR: Duration = Duration::from_millis(3500);

impl Squeeze {
    fn start(
        &mut self,
        victims: &[(u32, u32, bool)],
        rng: &mut fastrand::Rng,
        elapsed: Duration,
    ) -> Option<String> {
        let workers: Vec<u32> = victims.iter().filter(|v| !v.2).map(|v| v.0).collect();
        if workers.is_empty() {
            return None;
        }
        self.started = true;
        let pid = workers[rng.usize(0..workers.len())];
        let (soft, hard) = nofile(pid, None)?;
        nofile(pid, Some((3, hard)))?;
        self.on = Some((pid, soft, Instant::now() + SQUEEZE_FOR));
        Some(format!(
            "at {:.1}s: worker pid {pid} squeezed to RLIMIT_NOFILE 3 (from {soft}) for {:.1}s",
            elapsed.as_secs_f64(),
            SQUEEZE_FOR.as_secs_f64()
        ))
    }

    fn pid(&self) -> Option<u32> {
        self.on.map(|(pid, _, _)| pid)
    }

    fn end_when_due(&mut self) {
        if self.on.is_some_and(|(_, _, until)| Instant::now() >= until) {
            self.end();
        }
    }

    fn end(&mut self) {
        if let Some((pid, soft, _)) = self.on.take()
            && let Some((_, hard)) = nofile(pid, None)
        {
            // Gone already (exit 3, or killed) is fine: its replacement has normal limits.
            let _ = nofile(pid, Some((soft, hard)));
        }
    }
}

/// The pids of the workers registered in `rq:workers`.
fn registered_pids(reader: &mut Reader) -> HashSet<u32> {
    reader.with(|c| {
        let keys: Vec<String> = redis::cmd("SMEMBERS").arg("rq:workers").query(c)?;
        let mut pids = HashSet::new();
        for k in keys {
            let pid: Option<u32> = redis::cmd("HGET").arg(&k).arg("pid").query(c)?;
            pids.extend(pid);
        }
        Ok(pids)
    })
}

/// Reads (and with `set`, first sets) the open-file limit of `pid`, with prlimit(2).
fn nofile(pid: u32, set: Option<(u64, u64)>) -> Option<(u64, u64)> {
    use nix::libc;
    let new = set.map(|(soft, hard)| libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    });
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads `new` (or nothing) and writes `old`; both live on this stack.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            new.as_ref().map_or(std::ptr::null(), |r| r as *const _),
            &mut old,
        )
    };
    (rc == 0).then_some((old.rlim_cur, old.rlim_max))
}

/// One connection for the driver's own reads, reopened after the restart and CLIENT KILL.
struct Reader {
    /// The crate's own target: with a Sentinel URL it follows the master.
    client: rq_supervisor::conn::RedisTarget,
    con: Option<redis::Connection>,
}

impl Reader {
    fn new(url: &str) -> Reader {
        Reader {
            client: rq_supervisor::conn::RedisTarget::parse(url).unwrap(),
            con: None,
        }
    }

    /// Runs `f`, reconnecting and retrying for up to a minute.
    fn with<T>(&mut self, mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.con.is_none() {
                self.con = self.client.connect().ok();
            }
            if let Some(c) = self.con.as_mut() {
                match f(c) {
                    Ok(v) => return v,
                    Err(e) => {
                        assert!(Instant::now() < deadline, "Redis unusable: {e}");
                        self.con = None;
                    }
                }
            }
            assert!(Instant::now() < deadline, "cannot reach Redis");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Resource use of one process: resident memory (KiB) and open descriptors.
fn usage(pid: u32) -> Option<(u64, usize)> {
    let rss = procfs::rss(pid)? / 1024;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    supervisor: (u64, usize),
    workers: BTreeMap<u32, (u64, usize)>,
}

fn sample(sup: u32, since: Instant) -> Sample {
    Sample {
        at: since.elapsed(),
        supervisor: usage(sup).unwrap_or_default(),
        workers: procfs::children(sup)
            .into_iter()
            .filter_map(|w| Some((w, usage(w)?)))
            .collect(),
    }
}

/// What a run found; `problems` empty means every invariant held.
pub struct Report {
    pub text: String,
    pub problems: Vec<String>,
    /// Where the logs are (kept when a check failed, or with `CHAOS_KEEP=1`).
    pub log_dir: PathBuf,
}

impl Report {
    /// Panics with the report when an invariant failed.
    pub fn assert_ok(&self) {
        assert!(
            self.problems.is_empty(),
            "{}\n{} problem(s):\n  {}\n(logs kept in {})",
            self.text,
            self.problems.len(),
            self.problems
                .iter()
                .take(40)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  "),
            self.log_dir.display()
        );
    }
}

/// Runs the whole thing and checks it.
pub fn run(p: Params) -> Report {
    let started = Instant::now();
    let (mut setup, mut sup) = setup(&p);
    let mut problems = Vec::new();
    let url = setup.url.clone();
    let mut reader = Reader::new(&url);

    // Six workers registered before any load.
    wait_until("six registered workers", Duration::from_secs(60), || {
        reader.with(|c| redis::cmd("SCARD").arg("rq:workers").query::<usize>(c)) == 6
    });
    let (mut py_jobs, mut rs_jobs) = plan(&p);
    if p.sentinel {
        // The Python producer alone, through redis.sentinel.Sentinel, confirming each job
        // reached the replica (WAIT); the Rust producer's helper speaks to one server.
        py_jobs.append(&mut rs_jobs);
    }
    let all: Vec<JobSpec> = py_jobs.iter().chain(rs_jobs.iter()).cloned().collect();

    let load_started = Instant::now();
    let mut samples = Vec::new();
    let mut next_sample = load_started;
    let mut py = python_producer(&setup, &py_jobs, p.produce_for);
    let rs = {
        let (url, jobs, over) = (url.clone(), rs_jobs.clone(), p.produce_for);
        std::thread::spawn(move || rust_producer(url, jobs, over))
    };

    // The load (and the chaos window): kills every 50-200 ms and the three Redis events
    // while the window lasts; resource samples while the load lasts.
    let mut rng = fastrand::Rng::with_seed(p.seed ^ 0x5eed);
    let mut kills: Vec<KillRecord> = Vec::new();
    let mut events: Vec<String> = Vec::new();
    let mut sup_exit = None;
    let (mut stalled, mut cut, mut restarted) = (false, false, false);
    let mut squeeze = Squeeze::default();
    let mut stall_thread = None;
    // Sentinel mode: when each failover began (unix time), to explain the re-runs of jobs
    // whose claim the old master took and then lost.
    let mut failovers: Vec<f64> = Vec::new();
    let mut sentinel_steps = 0;
    let mut py_status = None;
    loop {
        let elapsed = load_started.elapsed();
        if let Some(status) = sup.exited() {
            sup_exit = Some(status);
            break;
        }
        if py_status.is_none() {
            py_status = py.try_wait().ok().flatten();
        }
        let in_window = elapsed < p.chaos;
        if !in_window && rs.is_finished() && py_status.is_some() {
            break;
        }
        if let Some(every) = p.sample_every
            && Instant::now() >= next_sample
        {
            samples.push(sample(sup.pid(), load_started));
            next_sample += every;
        }
        if !in_window {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        if !squeeze.started && elapsed >= p.chaos * 5 / 8 && !p.chaos.is_zero() {
            // A worker past its boot (registered, the app preloaded) and between jobs (no
            // horse), so that what fails is the start of its next job.
            let registered = registered_pids(&mut reader);
            let all = victims(sup.pid());
            let busy: HashSet<u32> = all.iter().filter(|v| v.2).map(|v| v.1).collect();
            let ready: Vec<_> = all
                .into_iter()
                .filter(|(pid, _, horse)| !horse && registered.contains(pid) && !busy.contains(pid))
                .collect();
            if let Some(e) = squeeze.start(&ready, &mut rng, elapsed) {
                events.push(e);
            }
        }
        // The squeezed worker is spared while squeezed, so that it takes jobs it cannot start.
        let v: Vec<_> = victims(sup.pid())
            .into_iter()
            .filter(|(_, worker, _)| Some(*worker) != squeeze.pid())
            .collect();
        if !v.is_empty() {
            let (pid, worker, horse) = v[rng.usize(0..v.len())];
            let at = unix_now();
            if kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
                kills.push(KillRecord {
                    at,
                    done: unix_now(),
                    pid,
                    worker,
                    horse,
                });
            }
        }
        if p.sentinel {
            if let Some(e) = sentinel_fault(
                &mut setup,
                &mut reader,
                elapsed,
                &p,
                &mut failovers,
                &mut sentinel_steps,
            ) {
                events.push(e);
            }
        } else if !stalled && elapsed >= p.chaos / 4 {
            stalled = true;
            let (url, secs) = (url.clone(), p.stall_secs);
            events.push(format!(
                "at {:.1}s: DEBUG SLEEP {secs} (Redis stalls longer than the clients' 5 s read timeout)",
                elapsed.as_secs_f64()
            ));
            stall_thread = Some(std::thread::spawn(move || {
                let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
                redis::cmd("DEBUG")
                    .arg("SLEEP")
                    .arg(secs)
                    .exec(&mut c)
                    .unwrap();
            }));
        } else if !cut && elapsed >= p.chaos / 2 {
            cut = true;
            let n: i64 = reader.with(|c| {
                redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("normal")
                    .query(c)
            });
            events.push(format!(
                "at {:.1}s: CLIENT KILL TYPE normal ({n} connections killed)",
                elapsed.as_secs_f64()
            ));
        } else if !restarted && elapsed >= p.chaos * 3 / 4 {
            restarted = true;
            let t = Instant::now();
            if let Backend::Single(redis) = &mut setup.redis {
                redis.restart_graceful();
            }
            reader.con = None;
            events.push(format!(
                "at {:.1}s: redis-server restarted (SIGTERM, same AOF; down {:.2}s)",
                elapsed.as_secs_f64(),
                t.elapsed().as_secs_f64()
            ));
        }
        squeeze.end_when_due();
        std::thread::sleep(Duration::from_millis(rng.u64(50..=200)));
    }
    squeeze.end();
    if let Some(t) = stall_thread {
        t.join().expect("stall thread");
    }
    // The kill record, for post-mortems: unix time, pid, role, the worker it belonged to.
    let record: String = kills
        .iter()
        .map(|k| {
            format!(
                "{:.3} {:.3} {} {} {}\n",
                k.at,
                k.done,
                k.pid,
                if k.horse { "horse" } else { "worker" },
                k.worker
            )
        })
        .collect();
    let _ = std::fs::write(setup.dir.path().join("kills.log"), record);
    let rs_failures = rs.join().expect("rust producer");
    let py_out = wait_output(py, Duration::from_secs(300));
    if let Err(e) = &py_out {
        problems.push(format!("python producer: {e}"));
    }
    let produced_in = load_started.elapsed();
    // Sentinel mode: jobs the master acknowledged while it had no replica (WAIT 1 could not
    // confirm them). One that is gone now was thrown away by a failover: what Redis never
    // replicated is not counted as lost, only reported.
    let unreplicated: HashSet<String> = py_out
        .as_ref()
        .ok()
        .and_then(|o| serde_json::from_str::<Value>(o.trim()).ok())
        .and_then(|v| v.get("unreplicated").cloned())
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let gone_unreplicated: HashSet<String> = if unreplicated.is_empty() {
        HashSet::new()
    } else {
        let ids: Vec<String> = all.iter().map(|j| j.id.clone()).collect();
        all.iter()
            .zip(read_statuses(&mut reader, &ids))
            .filter(|(j, s)| s.is_none() && unreplicated.contains(&j.id))
            .map(|(j, _)| j.id.clone())
            .collect()
    };
    let all: Vec<JobSpec> = all
        .into_iter()
        .filter(|j| !gone_unreplicated.contains(&j.id))
        .collect();

    // Drain: every job reaches its final state.
    let ids: Vec<String> = all.iter().map(|j| j.id.clone()).collect();
    let drain_start = Instant::now();
    let mut statuses;
    loop {
        statuses = read_statuses(&mut reader, &ids);
        let pending = pending_jobs(&all, &statuses);
        if pending.is_empty() {
            break;
        }
        if drain_start.elapsed() > p.drain_limit {
            problems.push(format!(
                "{} job(s) not settled {:?} after the load: {}",
                pending.len(),
                p.drain_limit,
                pending
                    .iter()
                    .take(10)
                    .map(|(id, s)| format!("{id}={s:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let drained_in = drain_start.elapsed();

    // Every worker back: six registered and running, no horse, nothing left over.
    let quiet = wait_quiet(&mut reader, sup.pid(), Duration::from_secs(120));
    if let Err(e) = &quiet {
        problems.push(e.clone());
    }
    if p.sample_every.is_some() {
        samples.push(sample(sup.pid(), load_started));
    }
    if let Some(status) = sup.exited().or(sup_exit) {
        problems.push(format!("rq-supervisor exited: {status:?}"));
    }

    let registries = read_registries(&mut reader, &all);
    let executions = parse_executions(&setup.log);
    let mut procs = processes(sup.pid(), &setup.token);
    procs.registered = reader.with(|c| redis::cmd("SCARD").arg("rq:workers").query(c));
    problems.extend(procs.problems.iter().cloned());
    let verdict = judge(
        &all,
        &statuses,
        &registries,
        &executions,
        &kills,
        &failovers,
    );
    problems.extend(verdict.problems.iter().cloned());
    if squeeze.started && verdict.put_back == 0 {
        problems.push(
            "the resource-exhaustion fault put no job back: the squeezed worker started every job it took, or took none".into(),
        );
    }
    for (what, n) in &registries.leftovers {
        problems.push(format!("left over after the drain: {what}: {n}"));
    }
    if !registries.unknown.is_empty() {
        problems.push(format!(
            "{} job(s) that nobody enqueued: {:?}",
            registries.unknown.len(),
            registries.unknown.iter().take(10).collect::<Vec<_>>()
        ));
    }
    if !samples.is_empty() {
        check_flat(&samples, &mut problems);
    }

    // ---- Report ----
    let mut text = String::new();
    let horses = kills.iter().filter(|k| k.horse).count();
    let handler_runs = std::fs::read_to_string(&setup.runs)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    let _ = writeln!(
        text,
        "{}: {} jobs, {} by Python rq (a producer process) and {} by rq_supervisor::producer (a thread); seed {}",
        p.name,
        all.len(),
        py_jobs.len(),
        rs_jobs.len(),
        p.seed
    );
    let _ = writeln!(
        text,
        "rq-supervisor: pools alpha [high, default] and beta [default, low], 3 workers each"
    );
    if !p.chaos.is_zero() {
        let _ = writeln!(
            text,
            "chaos for {:.0}s: {} SIGKILLs, one every 50-200 ms ({} workers, {} work horses)",
            p.chaos.as_secs_f64(),
            kills.len(),
            kills.len() - horses,
            horses
        );
        for e in &events {
            let _ = writeln!(text, "  {e}");
        }
    }
    let _ = writeln!(
        text,
        "load enqueued in {:.1}s (failed enqueue attempts retried: Rust {rs_failures}, Python {}); queues drained {:.1}s later",
        produced_in.as_secs_f64(),
        py_out
            .as_ref()
            .ok()
            .and_then(|o| serde_json::from_str::<Value>(o.trim()).ok())
            .and_then(|v| v.get("retries").cloned())
            .unwrap_or(Value::Null),
        drained_in.as_secs_f64()
    );
    text.push_str(&verdict.text);
    if p.sentinel {
        let _ = writeln!(
            text,
            "acknowledged by a master without a replica (WAIT 1 could not confirm them): {}, of which gone after a failover: {} (never replicated, so not counted as lost)",
            unreplicated.len(),
            gone_unreplicated.len()
        );
    }
    let _ = writeln!(text, "command handler runs logged: {handler_runs}");
    let _ = writeln!(
        text,
        "left in flight after the drain: queued {}, started {}, in rq:wip {}, in intermediate lists {}, scheduled {}; unknown jobs {}",
        registries.queued,
        verdict.started,
        registries.wip,
        registries.intermediate,
        registries.scheduled,
        registries.unknown.len()
    );
    let _ = writeln!(
        text,
        "processes: {} workers registered in rq:workers, {} running under rq-supervisor, work horses left {}, zombies {}, orphans {}; rq-supervisor exited: {}",
        procs.registered,
        procs.workers,
        procs.horses,
        procs.zombies,
        procs.orphans,
        sup.exited().or(sup_exit).is_some()
    );
    text.push_str(&log_summary(&setup.log));
    if !samples.is_empty() {
        text.push_str(&render_samples(&samples));
    }

    // Last, a warm shutdown: every (idle) worker stops and registers its death, exit 0.
    let shutdown = shut_down(&mut sup, &mut reader);
    let _ = writeln!(text, "warm shutdown afterwards: {shutdown}");
    if !shutdown.starts_with("exit 0") {
        problems.push(format!("warm shutdown: {shutdown}"));
    }
    let _ = writeln!(
        text,
        "problems: {}; run took {:.1}s",
        problems.len(),
        started.elapsed().as_secs_f64()
    );

    drop(sup);
    let keep = !problems.is_empty() || std::env::var_os("CHAOS_KEEP").is_some();
    let Setup { dir, redis, .. } = setup;
    if let (Backend::Sentinel(set), true) = (&redis, keep) {
        let _ = std::fs::write(dir.path().join("sentinel.log"), set.logs());
    }
    drop(redis);
    let log_dir = if keep {
        dir.keep()
    } else {
        dir.path().to_path_buf()
    };
    Report {
        text,
        problems,
        log_dir,
    }
}

/// How long after a failover began a claim may have been taken by the replaced master and
/// lost: Redis 7 demotes a master that survived about ten seconds after the promotion.
const FAILOVER_WINDOW: f64 = 20.0;

/// The Sentinel mode's Redis events, each once: a `SENTINEL FAILOVER` at a quarter of the
/// window, a `CLIENT KILL` of the master's clients at half, the master SIGKILLed at three
/// quarters. Returns the event's line for the report.
fn sentinel_fault(
    setup: &mut Setup,
    reader: &mut Reader,
    elapsed: Duration,
    p: &Params,
    failovers: &mut Vec<f64>,
    steps: &mut usize,
) -> Option<String> {
    let Backend::Sentinel(set) = &mut setup.redis else {
        return None;
    };
    let due = if elapsed >= p.chaos * 3 / 4 {
        3
    } else if elapsed >= p.chaos / 2 {
        2
    } else if elapsed >= p.chaos / 4 {
        1
    } else {
        0
    };
    if due <= *steps {
        return None;
    }
    *steps += 1;
    let step = *steps;
    let at = elapsed.as_secs_f64();
    let master = (0..set.nodes.len()).find(|i| set.role(*i).as_deref() == Some("master"))?;
    let other = 1 - master;
    match step {
        1 => {
            set.wait_in_sync(master);
            let t = Instant::now();
            failovers.push(unix_now());
            set.failover();
            set.wait_master(other, Duration::from_secs(60));
            Some(format!(
                "at {at:.1}s: SENTINEL FAILOVER (node {master} -> node {other}; the Sentinels named the new master {:.2}s later)",
                t.elapsed().as_secs_f64()
            ))
        }
        2 => {
            let n: i64 = reader.with(|c| {
                redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("normal")
                    .query(c)
            });
            Some(format!(
                "at {at:.1}s: CLIENT KILL TYPE normal on the master ({n} connections killed)"
            ))
        }
        _ => {
            set.wait_in_sync(master);
            let t = Instant::now();
            failovers.push(unix_now());
            set.nodes[master].stop();
            reader.con = None;
            set.wait_master(other, Duration::from_secs(60));
            Some(format!(
                "at {at:.1}s: the master SIGKILLed (node {master}; node {other} promoted {:.2}s later)",
                t.elapsed().as_secs_f64()
            ))
        }
    }
}

/// SIGTERM to the supervisor, then its exit and the workers' death registrations.
fn shut_down(sup: &mut SupervisorChild, reader: &mut Reader) -> String {
    let _ = kill(Pid::from_raw(sup.pid() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = sup.exited() {
            break s;
        }
        if Instant::now() > deadline {
            return "did not exit within 60s".into();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let left: usize = reader.with(|c| redis::cmd("SCARD").arg("rq:workers").query(c));
    match status.code() {
        Some(0) if left == 0 => "exit 0, every worker's death registered".into(),
        Some(code) => format!("exit {code}, {left} worker(s) still in rq:workers"),
        None => format!("{status}"),
    }
}

fn wait_output(mut child: Child, limit: Duration) -> Result<String, String> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("did not finish within {limit:?}"));
            }
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{}: {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn read_statuses(reader: &mut Reader, ids: &[String]) -> Vec<Option<String>> {
    reader.with(|c| {
        let mut p = redis::pipe();
        for id in ids {
            p.hget(format!("rq:job:{id}"), "status");
        }
        p.query(c)
    })
}

/// Jobs not yet in their final state: terminal, or deferred behind a parent that failed.
fn pending_jobs<'a>(
    all: &'a [JobSpec],
    statuses: &[Option<String>],
) -> Vec<(&'a str, Option<String>)> {
    let status: HashMap<&str, Option<&str>> = all
        .iter()
        .zip(statuses)
        .map(|(j, s)| (j.id.as_str(), s.as_deref()))
        .collect();
    all.iter()
        .zip(statuses)
        .filter(|(j, s)| match s.as_deref() {
            Some("finished") | Some("failed") => false,
            Some("deferred") => {
                let parent = j.parent.as_deref().and_then(|p| status[p]);
                !matches!(parent, Some("failed"))
            }
            _ => true,
        })
        .map(|(j, s)| (j.id.as_str(), s.clone()))
        .collect()
}

/// Waits until exactly six workers are registered and running under the supervisor, none has
/// a horse, and the registered ones are the running ones.
fn wait_quiet(reader: &mut Reader, sup: u32, limit: Duration) -> Result<usize, String> {
    let deadline = Instant::now() + limit;
    loop {
        let running: HashSet<u32> = procfs::children(sup)
            .into_iter()
            .filter(|p| alive(*p))
            .collect();
        let registered: Vec<Option<u32>> = reader.with(|c| {
            let members: Vec<String> = redis::cmd("SMEMBERS").arg("rq:workers").query(c)?;
            let mut out = Vec::new();
            for m in members {
                let pid: Option<String> = redis::cmd("HGET").arg(&m).arg("pid").query(c)?;
                out.push(pid.and_then(|p| p.parse().ok()));
            }
            Ok(out)
        });
        let reg: HashSet<u32> = registered.iter().flatten().copied().collect();
        let horses: usize = running.iter().map(|w| procfs::children(*w).len()).sum();
        if running.len() == 6 && registered.len() == 6 && reg == running && horses == 0 {
            return Ok(registered.len());
        }
        let last = format!("running {running:?}, registered {registered:?}, horses {horses}");
        if Instant::now() >= deadline {
            return Err(format!(
                "workers not back to six registered and idle within {limit:?}: {last}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[derive(Default)]
struct Registries {
    /// (registry, queue, job id) for every finished, failed and deferred registry member.
    members: HashSet<(&'static str, String, String)>,
    /// Failure text of each failed job's latest result.
    exc: HashMap<String, String>,
    queued: usize,
    wip: usize,
    intermediate: usize,
    scheduled: usize,
    /// Non-empty leftovers, for the problem list.
    leftovers: Vec<(String, usize)>,
    /// Job hashes whose id no producer enqueued.
    unknown: Vec<String>,
}

fn read_registries(reader: &mut Reader, all: &[JobSpec]) -> Registries {
    let mut r = Registries::default();
    for q in QUEUES {
        for reg in ["finished", "failed", "deferred"] {
            let members: Vec<String> = reader.with(|c| {
                redis::cmd("ZRANGE")
                    .arg(format!("rq:{reg}:{q}"))
                    .arg(0)
                    .arg(-1)
                    .query(c)
            });
            for m in members {
                r.members.insert((reg, q.to_string(), m));
            }
        }
        let counts: (usize, usize, usize, usize) = reader.with(|c| {
            redis::pipe()
                .llen(format!("rq:queue:{q}"))
                .zcard(format!("rq:wip:{q}"))
                .llen(format!("rq:queue:{q}:intermediate"))
                .zcard(format!("rq:scheduled:{q}"))
                .query(c)
        });
        r.queued += counts.0;
        r.wip += counts.1;
        r.intermediate += counts.2;
        r.scheduled += counts.3;
        for (what, n) in [
            (format!("rq:queue:{q}"), counts.0),
            (format!("rq:wip:{q}"), counts.1),
            (format!("rq:queue:{q}:intermediate"), counts.2),
            (format!("rq:scheduled:{q}"), counts.3),
        ] {
            if n > 0 {
                r.leftovers.push((what, n));
            }
        }
    }
    let known: HashSet<&str> = all.iter().map(|j| j.id.as_str()).collect();
    let keys: Vec<String> = reader.with(|c| redis::cmd("KEYS").arg("rq:job:*").query(c));
    for k in keys {
        let id = &k["rq:job:".len()..];
        if !id.contains(':') && !known.contains(id) {
            r.unknown.push(id.to_string());
        }
    }
    // The latest result of every job; failures carry their text.
    let excs: Vec<Vec<(String, Fields)>> = reader.with(|c| {
        let mut p = redis::pipe();
        for j in all {
            p.cmd("XREVRANGE")
                .arg(format!("rq:results:{}", j.id))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        p.query(c)
    });
    for (j, entries) in all.iter().zip(excs) {
        if let Some((_, fields)) = entries.first()
            && fields.get("type").map(|t| &t[..]) == Some(b"2")
            && let Some(exc) = fields.get("exc_string")
        {
            r.exc.insert(j.id.clone(), decode_exc_string(exc));
        }
    }
    r
}

/// One execution, from a worker's `job J execution E` debug line.
#[derive(Debug, Clone)]
struct Claim {
    at: f64,
    pid: u32,
    /// Its line in the log. Lines of one process are in the order it wrote them, which the
    /// millisecond stamps cannot tell apart (a job's end and the next claim often share one).
    line: usize,
    /// The work horse's pid, from the worker's `job J work horse pid N` line.
    horse: Option<u32>,
    /// The job could not start in the worker's environment (the resource-exhaustion fault)
    /// and went back to its queue: `job J could not start, …` / `… could not start either`.
    put_back: bool,
}

/// What the workers' logs say about executions.
#[derive(Default)]
struct Executions {
    /// Per job, its executions in time order.
    claims: HashMap<String, Vec<Claim>>,
    /// Per worker pid, the line and time where it logged an execution's end (it settled the
    /// job itself), in log order.
    ends: HashMap<u32, Vec<(usize, f64)>>,
    /// rq-supervisor's crash cleanups that settled a job: (job, dead worker's pid, line). A
    /// worker killed while its claim's reply was on the way never logged that execution; the
    /// cleanup proves it.
    cleanups: Vec<(String, u32, usize, f64)>,
}

fn parse_executions(log: &Path) -> Executions {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = Executions::default();
    for (line, text) in text.lines().enumerate() {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        let (Some(msg), Some(ts), Some(pid)) = (
            v.get("msg").and_then(Value::as_str),
            v.get("ts").and_then(Value::as_str),
            v.get("pid").and_then(Value::as_u64),
        ) else {
            continue;
        };
        let (at, pid) = (rq_time(ts), pid as u32);
        if let Some(job) = msg
            .strip_prefix("supervisor: crash cleanup done")
            .and_then(|rest| rest.split_once("its job "))
            .and_then(|(_, rest)| rest.split_whitespace().next())
        {
            let dead = v
                .get("name")
                .and_then(Value::as_str)
                .and_then(|n| n.rsplit('.').next())
                .and_then(|p| p.parse().ok());
            if let Some(dead) = dead {
                out.cleanups.push((job.to_string(), dead, line, at));
            }
        } else if let Some((job, horse)) = msg
            .strip_prefix("job ")
            .and_then(|rest| rest.split_once(" work horse pid "))
        {
            if let Some(c) = out
                .claims
                .get_mut(job)
                .and_then(|v| v.iter_mut().rev().find(|c| c.pid == pid))
            {
                c.horse = horse.parse().ok();
            }
        } else if let Some((job, _)) = msg
            .strip_prefix("job ")
            .and_then(|rest| rest.split_once(" could not start"))
        {
            if let Some(c) = out
                .claims
                .get_mut(job)
                .and_then(|v| v.iter_mut().rev().find(|c| c.pid == pid))
            {
                c.put_back = true;
            }
        } else if let Some((job, _eid)) = msg
            .strip_prefix("job ")
            .and_then(|rest| rest.split_once(" execution "))
        {
            out.claims.entry(job.to_string()).or_default().push(Claim {
                at,
                pid,
                line,
                horse: None,
                put_back: false,
            });
        } else if msg.starts_with("Job ended normally")
            || msg.starts_with("Job failed")
            || (msg.starts_with("job ")
                && (msg.contains(" was already settled")
                    || msg.contains(" was settled by someone else")
                    || msg.contains(" was deleted while it ran")))
        {
            out.ends.entry(pid).or_default().push((line, at));
        }
    }
    for v in out.claims.values_mut() {
        v.sort_by(|a, b| a.at.total_cmp(&b.at).then(a.line.cmp(&b.line)));
    }
    out
}

struct Verdict {
    text: String,
    problems: Vec<String>,
    started: usize,
    /// Starts put back by the resource-exhaustion fault.
    put_back: usize,
}

/// Checks every job against its kind, its executions and the kills.
fn judge(
    all: &[JobSpec],
    statuses: &[Option<String>],
    registries: &Registries,
    log: &Executions,
    kills: &[KillRecord],
    failovers: &[f64],
) -> Verdict {
    // Executions the workers never logged (killed before their claim's reply arrived) but
    // rq-supervisor's cleanup settled: at the worker's kill, after everything it logged.
    let mut claims = log.claims.clone();
    for (job, dead, line, at) in &log.cleanups {
        let list = claims.entry(job.clone()).or_default();
        if list.iter().any(|c| c.pid == *dead) {
            continue;
        }
        // The latest kill of that pid as a worker before the cleanup (pids are reused).
        if let Some(k) = kills
            .iter()
            .rev()
            .find(|k| k.pid == *dead && !k.horse && k.at <= *at + 0.005)
        {
            list.push(Claim {
                at: k.at,
                pid: *dead,
                line: *line,
                horse: None,
                put_back: false,
            });
            list.sort_by(|a, b| a.at.total_cmp(&b.at).then(a.line.cmp(&b.line)));
        }
    }
    let claims = &claims;
    let mut problems = Vec::new();
    let status_of: HashMap<&str, Option<&str>> = all
        .iter()
        .zip(statuses)
        .map(|(j, s)| (j.id.as_str(), s.as_deref()))
        .collect();
    let mut claims_by_worker: HashMap<u32, Vec<(usize, f64)>> = HashMap::new();
    for c in claims.values().flatten() {
        claims_by_worker
            .entry(c.pid)
            .or_default()
            .push((c.line, c.at));
    }
    for v in claims_by_worker.values_mut() {
        v.sort_by_key(|(line, _)| *line);
    }
    let killed_workers: HashSet<u32> = kills.iter().filter(|k| !k.horse).map(|k| k.pid).collect();
    let mut by_kind: BTreeMap<Kind, [usize; 3]> = BTreeMap::new();
    let (mut finished, mut failed, mut deferred, mut lost, mut started) = (0, 0, 0, 0, 0);
    let (mut ran_more, mut after_kill, mut own_retries, mut failed_by_kill) = (0, 0, 0, 0);
    let mut put_back = 0;
    let mut ran_after_failover = 0;
    let mut executions = 0;
    // The workers' log stamps are cut to the millisecond and written a moment after the
    // event; a kill landed somewhere between its two stamps.
    const SLACK: f64 = 0.005;
    for j in all {
        let status = status_of[j.id.as_str()];
        let cl: &[Claim] = claims.get(&j.id).map(Vec::as_slice).unwrap_or(&[]);
        executions += cl.len();
        // Which executions a kill ended: its worker or that worker's horse killed after the
        // claim and before the execution ended otherwise (the worker logged its end, or the
        // job or that worker was claimed again).
        let hit: Vec<bool> = cl
            .iter()
            .enumerate()
            .map(|(k, c)| {
                let next_of_job = cl.get(k + 1).map_or(f64::INFINITY, |n| n.at);
                // The worker's next line of either kind, by log order.
                let after = |v: Option<&Vec<(usize, f64)>>| {
                    v.and_then(|v| v.iter().find(|(line, _)| *line > c.line))
                        .map_or(f64::INFINITY, |(_, at)| *at)
                };
                let next_of_worker = after(claims_by_worker.get(&c.pid));
                let ended = after(log.ends.get(&c.pid));
                let end = next_of_job.min(next_of_worker).min(ended) + SLACK;
                // The worker itself, or this execution's own horse (pids are reused; a horse
                // killed before its worker logged its pid counts as this execution's).
                kills.iter().any(|k| {
                    k.worker == c.pid
                        && (!k.horse || c.horse.is_none_or(|h| h == k.pid))
                        && k.done >= c.at - SLACK
                        && k.at <= end
                })
            })
            .collect();
        if cl.len() > 1 {
            ran_more += 1;
            let non_final = cl.len() - 1;
            let by_kill = hit[..non_final].iter().filter(|h| **h).count();
            // Put back by the resource-exhaustion fault (never a failure, never a retry).
            let by_env = cl[..non_final]
                .iter()
                .zip(&hit)
                .filter(|(c, h)| c.put_back && !**h)
                .count();
            put_back += by_env;
            if by_kill > 0 {
                after_kill += 1;
            } else if by_env < non_final {
                own_retries += 1;
            }
            // Claimed on a master that a failover replaced, after the replica it promoted
            // had stopped following it: the claim was thrown away with it, and the job
            // was still queued on the new master.
            let by_failover = cl[..non_final]
                .iter()
                .zip(&hit)
                .zip(&cl[..non_final])
                .filter(|((c, h), _)| {
                    !**h && !c.put_back
                        && failovers
                            .iter()
                            .any(|f| c.at >= f - 1.0 && c.at <= f + FAILOVER_WINDOW)
                })
                .count();
            ran_after_failover += usize::from(by_failover > 0);
            let unexplained = (non_final - by_kill - by_env - by_failover) as u32;
            if unexplained > j.own_requeues() {
                problems.push(format!(
                    "job {} ({}) ran {} times: {unexplained} re-run(s) explained neither by a kill nor by its own retries; executions {cl:?}",
                    j.id,
                    j.kind.name(),
                    cl.len()
                ));
            }
        }
        let exc = registries.exc.get(&j.id).map(String::as_str).unwrap_or("");
        let names_killed_worker = exc
            .strip_prefix("WorkerDied: worker ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|name| name.rsplit('.').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| killed_workers.contains(&pid));
        let parent = j
            .parent
            .as_deref()
            .and_then(|p| status_of.get(p).copied().flatten());
        let entry = by_kind.entry(j.kind).or_default();
        match status {
            Some("finished") => {
                finished += 1;
                entry[0] += 1;
                if !j.kind.succeeds() {
                    problems.push(format!("job {} ({}) finished", j.id, j.kind.name()));
                }
                if j.parent.is_some() && parent != Some("finished") {
                    problems.push(format!(
                        "job {} finished though its parent is {parent:?}",
                        j.id
                    ));
                }
            }
            Some("failed") => {
                failed += 1;
                entry[1] += 1;
                if j.kind.succeeds() {
                    if hit.iter().any(|h| *h) || names_killed_worker {
                        failed_by_kill += 1;
                    } else {
                        problems.push(format!(
                            "job {} ({}) failed with no kill during its run: {exc:?}; executions {cl:?}",
                            j.id,
                            j.kind.name()
                        ));
                    }
                }
                if exc.contains("AbandonedJobError") {
                    problems.push(format!("job {} was failed as abandoned: {exc}", j.id));
                }
            }
            Some("deferred") if j.parent.is_some() && parent == Some("failed") => {
                deferred += 1;
                entry[2] += 1;
            }
            other => {
                lost += 1;
                if other == Some("started") {
                    started += 1;
                }
                problems.push(format!(
                    "job {} ({}) is {other:?} after the drain",
                    j.id,
                    j.kind.name()
                ));
            }
        }
        // In exactly one registry: the one that matches its state.
        for reg in ["finished", "failed", "deferred"] {
            let member = registries
                .members
                .contains(&(reg, j.queue.to_string(), j.id.clone()));
            if member != (status == Some(reg)) {
                problems.push(format!(
                    "job {} is {status:?} but {} rq:{reg}:{}",
                    j.id,
                    if member { "is in" } else { "is not in" },
                    j.queue
                ));
            }
        }
    }
    let mut text = String::new();
    let _ = writeln!(
        text,
        "terminal states: finished {finished}, failed {failed}, deferred behind a failed parent {deferred}; lost {lost}"
    );
    let _ = write!(text, "  by kind (finished/failed/deferred):");
    for k in Kind::ALL {
        if let Some([a, b, c]) = by_kind.get(k) {
            let _ = write!(text, " {} {a}/{b}/{c},", k.name());
        }
    }
    text.pop();
    text.push('\n');
    let _ = writeln!(
        text,
        "executions: {executions}; jobs run more than once: {ran_more} (re-run after a kill during an execution: {after_kill}; by their own retries only: {own_retries}; starts put back by the resource-exhaustion fault: {put_back}; re-run after a claim taken within {FAILOVER_WINDOW:.0} s of a failover, which the replaced master may have lost: {ran_after_failover}; unexplained: {})",
        problems
            .iter()
            .filter(|p| p.contains("re-run(s) explained neither"))
            .count()
    );
    let _ = writeln!(
        text,
        "jobs failed although their handler succeeds: {failed_by_kill}, each with a kill of its worker or horse during its run"
    );
    Verdict {
        text,
        problems,
        started,
        put_back,
    }
}

struct Processes {
    registered: usize,
    workers: usize,
    horses: usize,
    zombies: usize,
    orphans: usize,
    problems: Vec<String>,
}

/// Every process on the machine that belongs to this run, from /proc: the supervisor's
/// children (workers) and theirs (horses), zombies among them, and orphans: anything started
/// by this run's workers (environment `RQ_SUPERVISOR_PID`) or handlers (`CHAOS_RUN`) that is
/// not one of the live workers.
fn processes(sup: u32, token: &str) -> Processes {
    let mut problems = Vec::new();
    let workers: Vec<u32> = procfs::children(sup)
        .into_iter()
        .filter(|p| alive(*p))
        .collect();
    let horses: usize = workers.iter().map(|w| procfs::children(*w).len()).sum();
    let mut zombies = 0;
    let mut orphans = 0;
    let sup_env = format!("RQ_SUPERVISOR_PID={sup}");
    let run_env = format!("CHAOS_RUN={token}");
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(procfs::Stat { state, ppid, .. }) = procfs::stat(pid) else {
            continue;
        };
        let ours = ppid == sup || workers.contains(&ppid);
        if state == 'Z' && ours {
            zombies += 1;
            problems.push(format!("zombie pid {pid} (parent {ppid})"));
            continue;
        }
        if pid == sup || workers.contains(&pid) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let has = |needle: &str| env.split(|b| *b == 0).any(|var| var == needle.as_bytes());
        if has(&sup_env) || has(&run_env) {
            orphans += 1;
            problems.push(format!(
                "orphan pid {pid} (parent {ppid}, state {state}): {}",
                cmdline(pid)
            ));
        }
    }
    Processes {
        registered: 0,
        workers: workers.len(),
        horses,
        zombies,
        orphans,
        problems,
    }
}

fn render_samples(samples: &[Sample]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "resources (RSS KiB / open fds): time, rq-supervisor, then each worker by pid"
    );
    for s in samples {
        let _ = write!(
            t,
            "  {:>6.0}s  supervisor {:>6}/{:<3}",
            s.at.as_secs_f64(),
            s.supervisor.0,
            s.supervisor.1
        );
        for (pid, (rss, fds)) in &s.workers {
            let _ = write!(t, "  {pid}: {rss}/{fds}");
        }
        t.push('\n');
    }
    t
}

/// Steady load must not grow the processes: open files identical at start and end, resident
/// memory within 25 % (plus 2 MiB for allocator noise), for the supervisor and each worker
/// that lived through the whole run.
fn check_flat(samples: &[Sample], problems: &mut Vec<String>) {
    let (Some(first), Some(last)) = (samples.get(1).or(samples.first()), samples.last()) else {
        return;
    };
    let grew = |what: String, a: (u64, usize), b: (u64, usize), problems: &mut Vec<String>| {
        if b.1 > a.1 {
            problems.push(format!("{what}: open files grew from {} to {}", a.1, b.1));
        }
        if b.0 as f64 > a.0 as f64 * 1.25 + 2048.0 {
            problems.push(format!("{what}: RSS grew from {} KiB to {} KiB", a.0, b.0));
        }
    };
    grew(
        "rq-supervisor".into(),
        first.supervisor,
        last.supervisor,
        problems,
    );
    for (pid, a) in &first.workers {
        match last.workers.get(pid) {
            Some(b) => grew(format!("worker {pid}"), *a, *b, problems),
            None => problems.push(format!("worker {pid} did not live through the soak")),
        }
    }
}

/// What the supervisor and the workers logged about the chaos, counted.
fn log_summary(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut n: BTreeMap<&str, usize> = BTreeMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let msg = v.get("msg").and_then(Value::as_str).unwrap_or_default();
        for (key, needle) in [
            ("spawned", "supervisor: spawned pid"),
            ("cleanup", "supervisor: crash cleanup done"),
            ("cleanup requeued", "was settled: requeued"),
            ("cleanup failed", "was settled: failed"),
            ("cleanup unknown", "was settled: unknown"),
            ("cleanup deferred", "supervisor: crash cleanup deferred"),
            ("orphans", "killed orphan pid"),
            ("claim errors", "cannot take a job"),
            ("settle errors", "cannot record the outcome"),
            ("already settled", "was already settled"),
            ("horse crashed", "Work-horse terminated unexpectedly"),
            ("stuck", "stuck:"),
        ] {
            if msg.contains(needle) {
                *n.entry(key).or_default() += 1;
            }
        }
    }
    let g = |k: &str| n.get(k).copied().unwrap_or(0);
    format!(
        "supervisor log: {} workers started, {} crash cleanups ({} jobs requeued, {} failed, {} already settled; {} cleanups deferred while Redis was away), {} orphans killed, {} workers killed as stuck\n\
         worker logs: {} failed claims and {} failed settles retried ({} found already settled), {} horse crashes recorded\n",
        g("spawned"),
        g("cleanup"),
        g("cleanup requeued"),
        g("cleanup failed"),
        g("cleanup unknown"),
        g("cleanup deferred"),
        g("orphans"),
        g("stuck"),
        g("claim errors"),
        g("settle errors"),
        g("already settled"),
        g("horse crashed"),
    )
}
