//! The benchmark command (`scripts/bench`, see `docs/performance.md`): rq-supervisor's
//! workers beside Python RQ 2.12's, measured in one run against one private redis-server.
//! Not part of `cargo test`; it writes its table into `docs/performance.md`.
//!
//! `cargo bench --bench rq_bench -- [--quick] [--no-rq] [--no-write]`

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rq_supervisor::procfs;
use rq_supervisor::producer::{self, EnqueueOptions};

// The tests' harness: the same redis-server and CPU-time reader. The bench uses only part of
// `redis_server` (not the restarts or ACL users the tests need), hence the allow.
#[path = "../tests/integration/support/cpu.rs"]
mod cpu;
#[allow(dead_code)]
#[path = "../tests/integration/support/redis_server.rs"]
mod redis_server;

use cpu::cpu_seconds;
use redis_server::RedisServer;

const RQWORKER: &str = env!("CARGO_BIN_EXE_rqworker");
const SUPERVISOR: &str = env!("CARGO_BIN_EXE_rq-supervisor");

struct Opts {
    quick: bool,
    rq: bool,
    write: bool,
    /// `--only a,b`: run these sections only (and write nothing to the docs).
    only: Option<Vec<String>>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs bench targets too, without `--bench`: the benchmark
    // takes minutes and belongs to `scripts/bench`, so do nothing then.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(str::to_string).collect::<Vec<_>>());
    let opts = Opts {
        quick: args.iter().any(|a| a == "--quick"),
        rq: !args.iter().any(|a| a == "--no-rq"),
        write: !args.iter().any(|a| a == "--no-write") && only.is_none(),
        only,
    };
    let dir = tempfile::Builder::new()
        .prefix("rq-bench-")
        .tempdir()
        .expect("temp dir");
    let redis = Redis::start();
    let py = Python::detect(opts.rq);
    let mut b = Bench {
        opts,
        redis,
        py,
        dir: dir.path().to_path_buf(),
        rows: Vec::new(),
        notes: Vec::new(),
    };
    eprintln!("redis-server {} on {}", b.redis.version(), b.redis.url);
    let sections: [Section; 10] = [
        ("throughput", Bench::throughput),
        ("nofork", Bench::no_fork),
        ("python", Bench::python),
        ("command", Bench::command_handler),
        ("latency", Bench::latency),
        ("idle", Bench::idle_rss),
        ("restart", Bench::restart_latency),
        ("shutdown", Bench::warm_shutdown),
        ("scale", Bench::scale),
        ("fleet", Bench::fleet_waits_for_redis),
    ];
    for (name, run) in sections {
        if b.opts
            .only
            .as_ref()
            .is_none_or(|o| o.iter().any(|x| x == name))
        {
            run(&mut b);
        }
    }
    let report = b.report();
    println!("{report}");
    if b.opts.write {
        write_report(&report);
    }
}

/// A named part of the benchmark, for `--only`.
type Section = (&'static str, fn(&mut Bench));

/// Rounds of each side in an alternating comparison.
const ROUNDS: usize = 3;

/// One timed burst run: jobs/s, and Redis commands, round trips and CPU per job.
struct Burst {
    rate: f64,
    commands: f64,
    trips: f64,
    redis_cpu_us: f64,
    /// CPU of the workers, their horses and any supervisor per job: every process the
    /// burst started, counted when it was reaped (getrusage RUSAGE_CHILDREN).
    workers_cpu_us: f64,
}

/// The bursts of an alternating comparison.
#[derive(Default)]
struct Rounds {
    ours: Vec<Burst>,
    rq: Vec<Burst>,
}

impl Rounds {
    fn ours_text(&self) -> String {
        spread(&self.ours.iter().map(|b| b.rate).collect::<Vec<_>>())
    }

    fn rq_text(&self) -> String {
        if self.rq.is_empty() {
            return "not measured".into();
        }
        spread(&self.rq.iter().map(|b| b.rate).collect::<Vec<_>>())
    }

    /// The median of the per-round ratios, and their lowest and highest.
    fn ratio(&self) -> Option<(f64, f64, f64)> {
        if self.rq.is_empty() {
            return None;
        }
        let r: Vec<f64> = self
            .ours
            .iter()
            .zip(&self.rq)
            .map(|(o, q)| o.rate / q.rate)
            .collect();
        let lo = r.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = r.iter().cloned().fold(0.0, f64::max);
        Some((median(&r), lo, hi))
    }
}

/// One line of the results table.
struct Row {
    what: String,
    ours: String,
    rq: String,
    ratio: String,
    target: String,
    met: String,
}

struct Bench {
    opts: Opts,
    redis: Redis,
    py: Python,
    dir: PathBuf,
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Bench {
    fn n_jobs(&self) -> usize {
        if self.opts.quick { 2_000 } else { 10_000 }
    }

    fn row(
        &mut self,
        what: &str,
        ours: String,
        rq: String,
        ratio: String,
        target: &str,
        met: Option<bool>,
    ) {
        eprintln!("  {what}: ours {ours}, RQ {rq}, ratio {ratio}");
        self.rows.push(Row {
            what: what.into(),
            ours,
            rq,
            ratio,
            target: target.into(),
            met: match met {
                Some(true) => "yes".into(),
                Some(false) => "**no**".into(),
                None => "".into(),
            },
        });
    }

    /// Empties Redis, enqueues `n` jobs with `enqueue`, then times `start`'s workers until
    /// they exit. `None` when they failed or left jobs unfinished.
    fn burst(
        &self,
        n: usize,
        enqueue: impl Fn(&Self),
        start: impl FnOnce(&Self) -> Child,
    ) -> Option<Burst> {
        self.redis.flush();
        enqueue(self);
        let before = self.redis.stats();
        let cpu = self.redis.cpu_seconds();
        let children = children_cpu_seconds();
        let t = Instant::now();
        let ok = start(self).wait().expect("wait").success();
        let rate = n as f64 / t.elapsed().as_secs_f64();
        let children = children_cpu_seconds() - children;
        let after = self.redis.stats();
        let cpu = self.redis.cpu_seconds() - cpu;
        (ok && self.redis.finished("default") == n).then(|| Burst {
            rate,
            commands: (after.0 - before.0) as f64 / n as f64,
            trips: (after.1 - before.1) as f64 / n as f64,
            redis_cpu_us: cpu / n as f64 * 1e6,
            workers_cpu_us: children / n as f64 * 1e6,
        })
    }

    fn config(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Jobs RQ's side runs per round: its rate is per job, and RQ is 20-60 times slower.
    fn n_rq(&self) -> usize {
        self.n_jobs() / 5
    }

    /// `ours` and `rq` run alternately, [`ROUNDS`] times each, so that a noisy moment of the
    /// machine hits both sides; `rq` is skipped without Python RQ.
    fn alternate(
        &self,
        what: &str,
        ours: impl Fn(&Self) -> Option<Burst>,
        rq: impl Fn(&Self) -> Option<Burst>,
    ) -> Rounds {
        let mut r = Rounds::default();
        for round in 1..=ROUNDS {
            eprintln!("  {what}: round {round} of {ROUNDS}");
            r.ours
                .push(ours(self).unwrap_or_else(|| panic!("{what}: ours failed or left jobs")));
            if self.py.ok {
                r.rq.extend(rq(self));
            }
        }
        r
    }

    /// One row from alternating rounds: medians, spreads, the median of the round ratios.
    fn rounds_row(&mut self, what: &str, r: &Rounds, target: &str, at_least: Option<f64>) {
        let ratio = r.ratio();
        self.row(
            what,
            r.ours_text(),
            r.rq_text(),
            ratio.map_or_else(String::new, |(m, lo, hi)| {
                format!("{m:.1}× ({lo:.1}–{hi:.1})")
            }),
            target,
            at_least.and_then(|t| ratio.map(|(m, _, _)| m >= t)),
        );
    }

    /// No-op jobs, fork per job: one worker, then a pool of two, ours and RQ's, alternating.
    fn throughput(&mut self) {
        let (n, n_rq) = (self.n_jobs(), self.n_rq());
        eprintln!("throughput: {n} no-op jobs ({n_rq} for RQ), {ROUNDS} alternating rounds");
        let noop = move |s: &Self| s.enqueue_ours("default", "rq.builtin.noop", n);
        let py_noop = move |s: &Self| s.py.enqueue(&s.redis, "default", "benchjobs.noop", n_rq, 0);
        let url = self.redis.url.clone();
        let one = self.alternate(
            "1 worker",
            |s| {
                s.burst(n, noop, |s| {
                    s.ours_worker(&["--burst", "--builtin-handlers", "-q"])
                })
            },
            |s| {
                s.burst(n_rq, py_noop, |s| {
                    s.py.rq_at(&s.redis, &url, &["worker", "--burst"])
                })
            },
        );
        self.rounds_row(
            "throughput, 1 worker, fork per job (jobs/s)",
            &one,
            "",
            None,
        );
        // A burst pool of two under rq-supervisor.
        let cfg = self.config(
            "burst2.toml",
            "[supervisor]\nlog_level = \"warning\"\n[worker]\nbuiltin_handlers = true\nlog_level = \"warning\"\n[pools.bench]\nqueues = [\"default\"]\nworkers = 2\nburst = true\n",
        );
        let two = self.alternate(
            "pool of 2",
            |s| s.burst(n, noop, |s| s.supervisor(&cfg)),
            |s| {
                s.burst(n_rq, py_noop, |s| {
                    s.py.rq_at(&s.redis, &url, &["worker-pool", "-n", "2", "--burst"])
                })
            },
        );
        self.rounds_row(
            "throughput, pool of 2 workers, fork per job (jobs/s)",
            &two,
            "≥ 30× `rq worker-pool -n 2`",
            Some(30.0),
        );
        // Once, over a unix socket: how much of a job's cost is the TCP round trip.
        let unix_url = self.redis.unix_url.clone();
        let ours_unix = self
            .burst(n, noop, |s| {
                s.ours_worker_at(&unix_url, &["--burst", "--builtin-handlers", "-q"])
            })
            .map(|b| b.rate);
        self.row(
            "throughput, 1 worker, fork per job, Redis over a unix socket, one round (jobs/s)",
            opt(ours_unix, f0),
            "—".into(),
            "".into(),
            "",
            None,
        );
        let (per_job, trips) = (one.ours[0].commands, one.ours[0].trips);
        let rq_first = one.rq.first();
        self.row(
            "Redis commands per job (INFO commandstats)",
            f1(per_job),
            opt(rq_first.map(|b| b.commands), f1),
            opt(rq_first.map(|b| per_job / b.commands), |x| {
                format!("{x:.2}")
            }),
            "≤ 26 (and ≤ ½ of RQ's)",
            // As printed: a run's few fixed commands (birth, death) add a few thousandths.
            Some(
                (per_job * 10.0).round() <= 260.0
                    && rq_first.is_none_or(|b| per_job <= b.commands / 2.0),
            ),
        );
        self.row(
            "round trips per job (INFO stats total_reads_processed)",
            f1(trips),
            opt(rq_first.map(|b| b.trips), f1),
            "".into(),
            "≤ 1",
            Some(trips <= 1.05),
        );
        self.ceiling(&two);
    }

    /// What bounds fork per job on this machine: a bare fork loop of the worker binary and
    /// the CPU Redis spends per job, and the fraction of that ceiling the pool of two reached.
    fn ceiling(&mut self, two: &Rounds) {
        let forks: Vec<f64> = (0..ROUNDS)
            .filter_map(|_| {
                let out = Command::new(RQWORKER)
                    .args(["--fork-loop", "5000"])
                    .output()
                    .ok()?;
                String::from_utf8_lossy(&out.stdout).trim().parse().ok()
            })
            .collect();
        let fork_rate = median(&forks);
        let redis_us = median(&two.ours.iter().map(|b| b.redis_cpu_us).collect::<Vec<_>>());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        // Each job costs at least one fork + exit + wait of the worker and its share of
        // Redis' CPU; with as many workers as cores, that is the most the machine can do.
        let ceiling = cores / (1.0 / fork_rate + redis_us / 1e6);
        let reached = median(&two.ours.iter().map(|b| b.rate).collect::<Vec<_>>()) / ceiling;
        self.row(
            "ceiling: bare fork + exit + wait loop of the worker binary, 1 process (forks/s)",
            spread(&forks),
            "—".into(),
            "".into(),
            "",
            None,
        );
        self.row(
            "ceiling: Redis CPU per job, pool of 2 (µs, INFO used_cpu_user+sys)",
            f0(redis_us),
            "—".into(),
            "".into(),
            "",
            None,
        );
        // The same bound from what the run itself spent: every core busy with the workers,
        // their horses and Redis, nothing idle.
        let ours_us = median(
            &two.ours
                .iter()
                .map(|b| b.workers_cpu_us)
                .collect::<Vec<_>>(),
        );
        let cpu_bound = cores / ((ours_us + redis_us) / 1e6);
        self.row(
            "CPU per job, pool of 2: supervisor, workers and horses (µs, getrusage of the reaped tree)",
            f0(ours_us),
            "—".into(),
            format!(
                "cores / (this + Redis) = {} jobs/s, {:.0}% reached",
                f0(cpu_bound),
                reached * ceiling / cpu_bound * 100.0
            ),
            "",
            None,
        );
        self.row(
            &format!(
                "ceiling for fork per job on {cores:.0} cores: cores / (1 / fork rate + Redis CPU per job) (jobs/s)"
            ),
            f0(ceiling),
            "—".into(),
            format!("{:.0}% reached by the pool of 2", reached * 100.0),
            "",
            None,
        );
    }

    /// No fork (`-w rq.SimpleWorker`): the same Python no-op function, JSON jobs, in the
    /// worker process, ours beside RQ's SimpleWorker; and a native no-op for reference.
    fn no_fork(&mut self) {
        let (n, n_rq) = (self.n_jobs(), self.n_rq());
        eprintln!("no fork: {n} JSON no-op jobs ({n_rq} for RQ), {ROUNDS} alternating rounds");
        let bench = Python::bench_dir();
        let bench = bench.to_str().expect("utf-8 path").to_string();
        let url = self.redis.url.clone();
        let jobs = move |k: usize| {
            move |s: &Self| s.py.enqueue(&s.redis, "default", "benchjobs.noop", k, 0)
        };
        let py = self.alternate(
            "no fork, Python",
            |s| {
                s.burst(n, jobs(n), |s| {
                    s.ours_worker(&[
                        "--burst",
                        "-q",
                        "-w",
                        "rq.SimpleWorker",
                        "-P",
                        &bench,
                        "--preload",
                        "benchjobs",
                    ])
                })
            },
            |s| {
                s.burst(n_rq, jobs(n_rq), |s| {
                    s.py.rq_with_app_json(
                        &s.redis,
                        &url,
                        &["worker", "-w", "rq.SimpleWorker", "--burst"],
                    )
                })
            },
        );
        self.rounds_row(
            "no fork, 1 worker, Python JSON no-op, in the worker process (jobs/s)",
            &py,
            "≥ 15× RQ's SimpleWorker",
            Some(15.0),
        );
        self.no_fork_bound(&py);
        let noop = move |s: &Self| s.enqueue_ours("default", "rq.builtin.noop", n);
        let native = self
            .burst(n, noop, |s| {
                s.ours_worker(&[
                    "--burst",
                    "--builtin-handlers",
                    "-q",
                    "-w",
                    "rq.SimpleWorker",
                ])
            })
            .map(|b| b.rate);
        self.row(
            "no fork, 1 worker, native no-op (rq.builtin.noop), one round (jobs/s)",
            opt(native, f0),
            "—".into(),
            "".into(),
            "",
            None,
        );
    }

    /// What bounds one no-fork worker: it waits for each round trip, so a job costs at least
    /// the worker's own CPU plus Redis' CPU for it, one after the other.
    fn no_fork_bound(&mut self, py: &Rounds) {
        let med = |f: fn(&Burst) -> f64| median(&py.ours.iter().map(f).collect::<Vec<_>>());
        let (worker, redis) = (med(|b| b.workers_cpu_us), med(|b| b.redis_cpu_us));
        let bound = 1e6 / (worker + redis);
        let rate = med(|b| b.rate);
        let rq = (!py.rq.is_empty()).then(|| {
            let m = |f: fn(&Burst) -> f64| median(&py.rq.iter().map(f).collect::<Vec<_>>());
            (m(|b| b.workers_cpu_us), m(|b| b.redis_cpu_us))
        });
        self.row(
            "no fork, Python: CPU per job, worker + Redis (µs)",
            format!("{} + {}", f0(worker), f0(redis)),
            rq.map_or_else(
                || "not measured".into(),
                |(w, r)| format!("{} + {}", f0(w), f0(r)),
            ),
            "".into(),
            "",
            None,
        );
        self.row(
            "no fork, Python: bound 1 / (worker + Redis CPU per job) (jobs/s)",
            f0(bound),
            "—".into(),
            format!("{:.0}% reached", rate / bound * 100.0),
            "",
            None,
        );
    }

    /// The app's own Python functions: pickled no-op jobs (RQ's default serializer), a horse
    /// forked per job, ours (the app preloaded) beside RQ's; the ceiling of fork-per-job
    /// Python (a bare `os.fork` loop of the same interpreter calling the same function); and
    /// the idle RSS of a worker with the app loaded.
    fn python(&mut self) {
        if !self.py.ok {
            self.notes.push(
                "Python rows not measured: Python RQ 2.12 is needed to enqueue pickled jobs".into(),
            );
            return;
        }
        let (n, n_rq) = (self.n_jobs() / 2, self.n_rq());
        eprintln!("python: {n} pickled no-op jobs ({n_rq} for RQ), {ROUNDS} alternating rounds");
        let bench = Python::bench_dir();
        let bench = bench.to_str().expect("utf-8 path");
        let pickled = |n: usize| {
            move |s: &Self| {
                s.py.enqueue_pickle(&s.redis, "default", "benchjobs.noop", n)
            }
        };
        let url = self.redis.url.clone();
        let one = self.alternate(
            "Python, 1 worker",
            |s| {
                s.burst(n, pickled(n), |s| {
                    s.ours_worker(&["--burst", "-q", "-P", bench, "--preload", "benchjobs"])
                })
            },
            |s| {
                s.burst(n_rq, pickled(n_rq), |s| {
                    s.py.rq_pickle(&s.redis, &url, &["worker", "--burst"])
                })
            },
        );
        let cfg = self.config(
            "python2.toml",
            &format!(
                "[supervisor]\nlog_level = \"warning\"\n[worker]\nlog_level = \"warning\"\n[python]\npath = [{bench:?}]\npreload = [\"benchjobs\"]\n[pools.bench]\nqueues = [\"default\"]\nworkers = 2\nburst = true\n"
            ),
        );
        let two = self.alternate(
            "Python, pool of 2",
            |s| s.burst(n, pickled(n), |s| s.supervisor(&cfg)),
            |s| {
                s.burst(n_rq, pickled(n_rq), |s| {
                    s.py.rq_pickle(&s.redis, &url, &["worker-pool", "-n", "2", "--burst"])
                })
            },
        );
        self.rounds_row(
            "Python, 1 worker, pickled no-op, fork per job (jobs/s)",
            &one,
            "≥ 5× `rq worker`",
            Some(5.0),
        );
        self.rounds_row(
            "Python, pool of 2, pickled no-op, fork per job (jobs/s)",
            &two,
            "≥ 5× `rq worker-pool -n 2`",
            Some(5.0),
        );
        let ceiling = self.py.forkloop(&self.redis, n);
        let one = Some(median(&one.ours.iter().map(|b| b.rate).collect::<Vec<_>>()));
        self.row(
            "Python ceiling: a bare os.fork loop calling the same function, 1 process (jobs/s)",
            opt(ceiling, f0),
            "—".into(),
            opt(one.zip(ceiling).map(|(o, c)| o / c), |x| {
                format!("{:.0}% reached", x * 100.0)
            }),
            "",
            None,
        );
        self.redis.flush();
        let mut w = self.ours_worker(&["-q", "-P", bench, "--preload", "benchjobs"]);
        self.redis.wait_workers(1);
        let ours = rss_kib(w.id());
        stop(&mut w);
        self.redis.flush();
        let mut w = self.py.rq_with_app(&self.redis, &["worker"]);
        self.redis.wait_workers(1);
        let rq = rss_kib(w.id());
        stop(&mut w);
        self.row(
            "idle worker RSS, the app (benchjobs) preloaded (MiB)",
            mib(ours),
            mib(rq),
            format!("1/{:.1}", rq as f64 / ours as f64),
            "",
            None,
        );
    }

    /// A command handler running `true`, fork + exec per job.
    fn command_handler(&mut self) {
        let n = self.n_jobs() / 2;
        eprintln!("command handler: {n} jobs running `true`");
        self.redis.flush();
        self.enqueue_ours("default", "bench.true", n);
        let cfg = self.config(
            "true.toml",
            "[handlers.\"bench.true\"]\ncommand = [\"true\"]\n[worker]\nlog_level = \"warning\"\n",
        );
        let t = Instant::now();
        let status = self
            .ours_worker(&["--burst", "-c", cfg.to_str().unwrap()])
            .wait()
            .expect("wait");
        let rate = n as f64 / t.elapsed().as_secs_f64();
        assert!(status.success());
        self.redis.expect_finished("default", n);
        self.row(
            "throughput, command handler `true`, 1 worker (jobs/s)",
            f0(rate),
            "—".into(),
            "".into(),
            "",
            None,
        );
    }

    /// Enqueue → started and enqueue → finished with an idle worker, jobs spaced out.
    fn latency(&mut self) {
        let n = if self.opts.quick { 200 } else { 1_000 };
        eprintln!("latency: {n} jobs spaced out to an idle worker");
        self.redis.flush();
        let mut worker = self.ours_worker(&["--builtin-handlers", "-q"]);
        self.redis.wait_workers(1);
        let mut con = self.redis.con();
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(
                producer::enqueue(
                    &mut con,
                    "default",
                    "rq.builtin.noop",
                    vec![],
                    Default::default(),
                    &EnqueueOptions::default(),
                )
                .expect("enqueue"),
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.redis.wait_finished("default", n);
        stop(&mut worker);
        let mut started = Vec::new();
        let mut finished = Vec::new();
        for id in &ids {
            let f = producer::job_fields(&mut con, id).expect("job");
            let t = |k: &str| {
                rq_supervisor::protocol::time::parse_iso(&f[k])
                    .expect("timestamp")
                    .secs_f64()
            };
            started.push(t("started_at") - t("enqueued_at"));
            finished.push(t("ended_at") - t("enqueued_at"));
        }
        let (mut rq_started, mut rq_finished) = (Vec::new(), Vec::new());
        if self.py.ok {
            self.redis.flush();
            let mut w = self.py.rq(&self.redis, &["worker"]);
            self.redis.wait_workers(1);
            let rq_n = n / 5;
            self.py
                .enqueue(&self.redis, "default", "benchjobs.noop", rq_n, 25);
            self.redis.wait_finished("default", rq_n);
            stop(&mut w);
            for [e, s, f] in self.py.times(&self.redis, "default") {
                rq_started.push(s - e);
                rq_finished.push(f - e);
            }
        }
        for (label, ours, rq, target) in [
            (
                "enqueue → started",
                &mut started,
                &mut rq_started,
                Some(0.001),
            ),
            ("enqueue → finished", &mut finished, &mut rq_finished, None),
        ] {
            for (p, name) in [(0.5, "p50"), (0.99, "p99")] {
                let o = percentile(ours, p);
                let r = if rq.is_empty() {
                    None
                } else {
                    Some(percentile(rq, p))
                };
                let t = target.filter(|_| p == 0.5);
                self.row(
                    &format!("latency {label} {name}, idle worker (ms)"),
                    f2(o * 1e3),
                    opt(r.map(|x| x * 1e3), f2),
                    opt(r.map(|x| x / o), |x| format!("{x:.0}×")),
                    if t.is_some() { "< 1 ms" } else { "" },
                    t.map(|t| o < t),
                );
            }
        }
        self.notes.push(
            "Idle Redis traffic of a pool: the supervisor's health check (one pipelined HMGET per worker every `health_interval`, 5 s) plus each worker's heartbeat every `worker_ttl` - 15 s (405 s); an idle worker sends nothing else: it sleeps on its notification connection.".into(),
        );
        self.notes.push(format!(
            "Latency: {n} jobs one every 5 ms for ours; RQ: {} jobs one every 25 ms (it handles about 90 jobs/s). Times come from the jobs' own `enqueued_at`, `started_at` and `ended_at`.",
            n / 5
        ));
    }

    fn idle_rss(&mut self) {
        eprintln!("idle RSS");
        self.redis.flush();
        let mut w = self.ours_worker(&["--builtin-handlers"]);
        self.redis.wait_workers(1);
        let ours = rss_kib(w.id());
        let ours_anon = status_kib(w.id(), "RssAnon:");
        stop(&mut w);
        let cfg = self.config("idle2.toml", "[supervisor]\nlog_level = \"warning\"\n[pools.p]\nqueues = [\"default\"]\nworkers = 2\n");
        let mut s = self.supervisor(&cfg);
        self.redis.wait_workers(2);
        let sup = rss_kib(s.id());
        stop(&mut s);
        let (mut rq, mut rq_anon) = (None, None);
        if self.py.ok {
            self.redis.flush();
            let mut w = self.py.rq(&self.redis, &["worker"]);
            self.redis.wait_workers(1);
            rq = Some(rss_kib(w.id()));
            rq_anon = Some(status_kib(w.id(), "RssAnon:"));
            stop(&mut w);
        }
        let r = rq.map(|r| r as f64 / ours as f64);
        self.row(
            "idle worker RSS (MiB)",
            mib(ours),
            rq.map(mib).unwrap_or_else(|| "not measured".into()),
            opt(r, |x| format!("1/{x:.1}")),
            "≤ 1/10 of RQ's (Python compiled in, not started)",
            r.map(|x| x >= 10.0),
        );
        // RSS counts the binary's own code pages, which every worker on the host shares;
        // the anonymous part is what each further worker really costs.
        self.row(
            "idle worker anonymous memory (RssAnon, MiB)",
            mib(ours_anon),
            rq_anon.map(mib).unwrap_or_else(|| "not measured".into()),
            opt(rq_anon.map(|r| r as f64 / ours_anon.max(1) as f64), |x| {
                format!("1/{x:.1}")
            }),
            "",
            None,
        );
        self.row(
            "idle supervisor RSS, 2 workers (MiB)",
            mib(sup),
            "—".into(),
            "".into(),
            "",
            None,
        );
    }

    /// SIGKILL a worker → its replacement registered, p50 over 20 kills.
    fn restart_latency(&mut self) {
        let kills = if self.opts.quick { 6 } else { 20 };
        eprintln!("restart latency: {kills} kills");
        self.redis.flush();
        let cfg = self.config("restart.toml", "[supervisor]\nlog_level = \"warning\"\n[pools.p]\nqueues = [\"default\"]\nworkers = 4\n");
        let mut s = self.supervisor(&cfg);
        let ours = self.kill_and_time(4, kills);
        stop(&mut s);
        let mut rq = None;
        if self.py.ok {
            self.redis.flush();
            let mut pool = self.py.rq(&self.redis, &["worker-pool", "-n", "4"]);
            rq = Some(self.kill_and_time(4, kills));
            stop(&mut pool);
        }
        let r = rq.map(|r| r / ours);
        self.row(
            "restart latency: SIGKILL → replacement registered, p50 (ms)",
            f1(ours * 1e3),
            opt(rq.map(|x| x * 1e3), f1),
            opt(r, |x| format!("1/{x:.0}")),
            "≤ 1/10 of RQ's and < 50 ms",
            Some(ours < 0.05 && r.is_none_or(|x| x >= 10.0)),
        );
    }

    fn kill_and_time(&self, n: usize, kills: usize) -> f64 {
        let mut times = Vec::new();
        let mut con = self.redis.con();
        self.redis.wait_workers(n);
        // Every name ever registered: RQ's pool leaves a killed worker's record behind, so
        // only a name never seen before is a replacement.
        let mut seen = members(&mut con);
        for _ in 0..kills {
            // Kill workers that have been up past min_uptime (1 s): a killed healthy worker,
            // not a crash loop, which would rightly back off.
            std::thread::sleep(Duration::from_millis(1_200));
            let victim = members(&mut con)
                .into_iter()
                .find_map(|w| live_pid(&mut con, &w))
                .expect("a live worker");
            let t = Instant::now();
            kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill");
            loop {
                if members(&mut con).iter().any(|w| !seen.contains(w)) {
                    break;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "no replacement after 30 s"
                );
                std::thread::sleep(Duration::from_micros(500));
            }
            times.push(t.elapsed().as_secs_f64());
            self.redis.wait_workers(n);
            seen.extend(members(&mut con));
        }
        percentile(&mut times, 0.5)
    }

    /// SIGTERM to an idle pool of 16 → the supervisor (or pool) has exited.
    fn warm_shutdown(&mut self) {
        eprintln!("idle warm shutdown, 16 workers");
        self.redis.flush();
        let cfg = self.config("idle16.toml", "[supervisor]\nlog_level = \"warning\"\n[pools.p]\nqueues = [\"default\"]\nworkers = 16\n");
        let mut s = self.supervisor(&cfg);
        self.redis.wait_workers(16);
        let ours = time_exit(&mut s, Signal::SIGTERM);
        let mut rq = None;
        if self.py.ok {
            self.redis.flush();
            let mut pool = self.py.rq(&self.redis, &["worker-pool", "-n", "16"]);
            self.redis.wait_workers(16);
            rq = Some(time_exit(&mut pool, Signal::SIGTERM));
        }
        self.row(
            "idle warm shutdown, 16 workers: SIGTERM → exit (ms)",
            f1(ours * 1e3),
            opt(rq.map(|x| x * 1e3), f1),
            opt(rq.map(|r| r / ours), |x| format!("1/{x:.0}")),
            "< 200 ms",
            Some(ours < 0.2),
        );
    }

    /// 64 and 256 idle workers under one supervisor.
    fn scale(&mut self) {
        let idle = if self.opts.quick { 10 } else { 60 };
        for n in [64usize, 256] {
            eprintln!("scale: {n} workers, {idle} s idle");
            self.redis.flush();
            let cfg = self.config(
                "scale.toml",
                &format!("[supervisor]\nlog_level = \"warning\"\n[pools.p]\nqueues = [\"default\"]\nworkers = {n}\n"),
            );
            let t = Instant::now();
            let mut s = self.supervisor(&cfg);
            self.redis.wait_workers(n);
            let up = t.elapsed().as_secs_f64();
            let workers = procfs::children(s.id());
            let total_rss: u64 = rss_kib(s.id()) + workers.iter().map(|p| rss_kib(*p)).sum::<u64>();
            let total_pss: u64 = pss_kib(s.id()) + workers.iter().map(|p| pss_kib(*p)).sum::<u64>();
            let cpu0 = cpu_seconds(s.id()).unwrap_or(0.0);
            let stats0 = self.redis.stats();
            let t0 = Instant::now();
            std::thread::sleep(Duration::from_secs(idle));
            let cpu = (cpu_seconds(s.id()).unwrap_or(0.0) - cpu0) / t0.elapsed().as_secs_f64();
            let commands = (self.redis.stats().0 - stats0.0) as f64 / t0.elapsed().as_secs_f64();
            stop(&mut s);
            self.row(
                &format!("{n} idle workers: time until all registered (s)"),
                f2(up),
                "—".into(),
                "".into(),
                "",
                None,
            );
            self.row(
                &format!("{n} idle workers: total RSS, supervisor + workers (MiB)"),
                mib(total_rss),
                "—".into(),
                "".into(),
                "",
                None,
            );
            self.row(
                &format!("{n} idle workers: total PSS, shared pages split (MiB)"),
                mib(total_pss),
                "—".into(),
                "".into(),
                "",
                None,
            );
            let target = if n == 64 { "< 1% of a core" } else { "" };
            self.row(
                &format!("{n} idle workers: supervisor CPU over {idle} s idle (% of a core)"),
                format!("{:.2}%", cpu * 100.0),
                "—".into(),
                "".into(),
                target,
                (n == 64).then_some(cpu < 0.01),
            );
            self.row(
                &format!("{n} idle workers: their Redis traffic (commands/s)"),
                f1(commands),
                "—".into(),
                "".into(),
                "small",
                None,
            );
        }
    }

    /// 256 workers and a Redis that is not there: started before it, then through an outage.
    /// How soon after Redis answers they are back, and how hard they knock meanwhile.
    fn fleet_waits_for_redis(&mut self) {
        let n = 256;
        eprintln!("fleet: {n} workers started before Redis, then a 3 s outage");
        self.redis.flush();
        self.redis.server.stop();
        let cfg = self.config(
            "fleet.toml",
            &format!("[supervisor]\nlog_level = \"error\"\n[pools.p]\nqueues = [\"default\"]\nworkers = {n}\n"),
        );
        let mut s = self.supervisor(&cfg);
        let t = Instant::now();
        while procfs::children(s.id()).len() < n {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "workers not spawned"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Every worker has tried and is waiting (its backoff is capped at 1 s).
        std::thread::sleep(Duration::from_secs(2));
        self.redis.server.restart();
        let (registered, peak_start) = self.redis.wait_sampling(|c| {
            redis::cmd("SCARD")
                .arg("rq:workers")
                .query::<usize>(c)
                .unwrap_or(0)
                >= n
        });
        self.redis.server.stop();
        std::thread::sleep(Duration::from_secs(3));
        self.redis.server.restart();
        // Each worker holds two connections (commands, wake-ups); the reader is one more.
        let (back, peak_outage) = self.redis.wait_sampling(|c| {
            let info: String = redis::cmd("INFO")
                .arg("clients")
                .query(c)
                .unwrap_or_default();
            info.lines()
                .find_map(|l| l.strip_prefix("connected_clients:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .is_some_and(|k| k > 2 * n)
        });
        stop(&mut s);
        self.row(
            &format!("{n} workers started before Redis: all registered after it answers (s)"),
            f2(registered),
            "—".into(),
            "".into(),
            "< 2 s",
            Some(registered < 2.0),
        );
        self.row(
            &format!("{n} workers, 3 s outage: all reconnected after Redis answers (s)"),
            f2(back),
            "—".into(),
            "".into(),
            "< 2 s",
            Some(back < 2.0),
        );
        self.row(
            &format!("{n} workers coming back: peak new connections per second"),
            format!("{} / {}", f0(peak_start), f0(peak_outage)),
            "—".into(),
            "".into(),
            "spread over the 1 s backoff cap",
            None,
        );
    }

    fn report(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Measured {} by `scripts/bench`{} on this machine: {}.",
            date(),
            if self.opts.quick { " --quick" } else { "" },
            machine()
        );
        let _ = writeln!(
            out,
            "Redis {} on loopback TCP; {}.\n",
            self.redis.version(),
            self.py.describe()
        );
        let _ = writeln!(out, "| measure | ours | RQ 2.12 | ratio | target | met? |");
        let _ = writeln!(out, "|---|---:|---:|---:|---|---|");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                r.what, r.ours, r.rq, r.ratio, r.target, r.met
            );
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }

    fn enqueue_ours(&self, queue: &str, func: &str, n: usize) {
        let mut con = self.redis.con();
        for _ in 0..n {
            producer::enqueue(
                &mut con,
                queue,
                func,
                vec![],
                Default::default(),
                &EnqueueOptions::default(),
            )
            .expect("enqueue");
        }
    }

    fn ours_worker(&self, args: &[&str]) -> Child {
        self.ours_worker_at(&self.redis.url, args)
    }

    fn ours_worker_at(&self, url: &str, args: &[&str]) -> Child {
        Command::new(RQWORKER)
            .args(args)
            .env("RQ_REDIS_URL", url)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn rqworker")
    }

    fn supervisor(&self, cfg: &Path) -> Child {
        Command::new(SUPERVISOR)
            .arg("-c")
            .arg(cfg)
            .env("RQ_REDIS_URL", &self.redis.url)
            // The control socket beside the pool file, not in /run.
            .env(
                "RUNTIME_DIRECTORY",
                cfg.parent().unwrap_or(Path::new("/tmp")),
            )
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn rq-supervisor")
    }
}

/// The docs page keeps the generated table between these markers.
const BEGIN: &str = "<!-- bench:begin -->";
const END: &str = "<!-- bench:end -->";

fn write_report(report: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/performance.md");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        eprintln!(
            "{} has no {BEGIN} ... {END} markers; not written",
            path.display()
        );
        return;
    };
    let new = format!("{}{BEGIN}\n{report}{}", &text[..b], &text[e..]);
    std::fs::write(&path, new).expect("write docs/performance.md");
    eprintln!("wrote {}", path.display());
}

/// The benchmark's redis-server: the tests' harness (`RedisServer`, on a unix socket in its own
/// temp dir) with a loopback TCP port too.
struct Redis {
    server: RedisServer,
    /// Loopback TCP: what every measurement uses unless it says otherwise.
    url: String,
    /// The same server on a unix socket, for the one comparison that shows the transport.
    unix_url: String,
}

impl Redis {
    fn start() -> Redis {
        let server = RedisServer::start_on_port("rq-bench-redis-", |port| {
            [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "no",
                "--maxclients",
                "10000",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        });
        let url = format!("redis://127.0.0.1:{}/0", server.port.expect("a TCP port"));
        let unix_url = server.url();
        Redis {
            server,
            url,
            unix_url,
        }
    }

    fn con(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection())
            .unwrap_or_else(|e| panic!("connect: {e}\n{}", self.server.log_text()))
    }

    fn version(&self) -> String {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut self.con())
            .expect("INFO");
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_string()
    }

    fn flush(&self) {
        redis::cmd("FLUSHALL")
            .exec(&mut self.con())
            .expect("FLUSHALL");
    }

    /// (commands executed, read events processed): every command, and every request the
    /// server read from a client (one per round trip when the client waits for replies).
    fn stats(&self) -> (u64, u64) {
        let mut con = self.con();
        let cs: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut con)
            .expect("INFO");
        let calls = cs
            .lines()
            .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        let st: String = redis::cmd("INFO")
            .arg("stats")
            .query(&mut con)
            .expect("INFO");
        let reads = st
            .lines()
            .find_map(|l| l.strip_prefix("total_reads_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        (calls, reads)
    }

    /// Redis' own CPU time so far (INFO cpu: used_cpu_user + used_cpu_sys), seconds.
    fn cpu_seconds(&self) -> f64 {
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .query(&mut self.con())
            .expect("INFO");
        ["used_cpu_user:", "used_cpu_sys:"]
            .iter()
            .filter_map(|k| {
                info.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .sum()
    }

    fn finished(&self, queue: &str) -> usize {
        redis::cmd("ZCARD")
            .arg(format!("rq:finished:{queue}"))
            .query(&mut self.con())
            .expect("ZCARD")
    }

    fn expect_finished(&self, queue: &str, n: usize) {
        let got = self.finished(queue);
        assert_eq!(got, n, "expected {n} finished jobs, found {got}");
    }

    fn wait_finished(&self, queue: &str, n: usize) {
        let t = Instant::now();
        while self.finished(queue) < n {
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "jobs did not finish"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `done` holds, sampling `total_connections_received` every 100 ms; returns
    /// how long it took and the highest rate of new connections over one such window.
    fn wait_sampling(&self, mut done: impl FnMut(&mut redis::Connection) -> bool) -> (f64, f64) {
        let received = |con: &mut redis::Connection| -> u64 {
            let st: String = redis::cmd("INFO").arg("stats").query(con).expect("INFO");
            st.lines()
                .find_map(|l| l.strip_prefix("total_connections_received:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let t = Instant::now();
        let mut con = self.con();
        let mut last = (Instant::now(), received(&mut con));
        let mut peak: f64 = 0.0;
        loop {
            if last.0.elapsed() >= Duration::from_millis(100) {
                let now = received(&mut con);
                peak = peak.max((now - last.1) as f64 / last.0.elapsed().as_secs_f64());
                last = (Instant::now(), now);
            }
            if done(&mut con) {
                return (t.elapsed().as_secs_f64(), peak);
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "not back within 60 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn wait_workers(&self, n: usize) -> HashSet<String> {
        let mut con = self.con();
        let t = Instant::now();
        loop {
            let m = members(&mut con);
            let live = m
                .iter()
                .filter(|w| {
                    redis::cmd("HEXISTS")
                        .arg(*w)
                        .arg("death")
                        .query::<bool>(&mut con)
                        .map(|d| !d)
                        .unwrap_or(false)
                })
                .count();
            if live >= n && m.len() >= n {
                return m;
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "only {live} of {n} workers registered"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The pid of a registered worker whose process is alive.
fn live_pid(con: &mut redis::Connection, worker: &str) -> Option<i32> {
    let pid: Option<String> = redis::cmd("HGET").arg(worker).arg("pid").query(con).ok()?;
    let pid = pid?.parse::<u32>().ok()?;
    procfs::stat(pid).is_some().then_some(pid as i32)
}

fn members(con: &mut redis::Connection) -> HashSet<String> {
    redis::cmd("SMEMBERS")
        .arg("rq:workers")
        .query(con)
        .expect("SMEMBERS")
}

struct Python {
    exe: String,
    ok: bool,
    version: String,
}

impl Python {
    fn detect(wanted: bool) -> Python {
        let exe = std::env::var("RQ_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let out = Command::new(&exe)
            .args(["-c", "import rq; print(rq.__version__)"])
            .output();
        let version = out
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Python {
            ok: wanted && version.starts_with("2.12"),
            exe,
            version,
        }
    }

    fn describe(&self) -> String {
        if self.ok {
            format!(
                "Python RQ {} with the JSON serializer (RQ columns)",
                self.version
            )
        } else {
            "Python RQ 2.12 not available: RQ columns not measured".into()
        }
    }

    fn bench_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("benches")
    }

    fn cmd(&self, redis: &Redis) -> Command {
        let mut c = Command::new(&self.exe);
        c.env("RQ_REDIS_URL", &redis.url)
            .env("PYTHONPATH", Self::bench_dir())
            .current_dir(Self::bench_dir())
            .stdin(Stdio::null());
        c
    }

    fn enqueue(&self, redis: &Redis, queue: &str, func: &str, n: usize, spacing_ms: u64) {
        let ok = self
            .cmd(redis)
            .arg(Self::bench_dir().join("rq_side.py"))
            .args([
                "enqueue",
                queue,
                func,
                &n.to_string(),
                &spacing_ms.to_string(),
            ])
            .status()
            .expect("python")
            .success();
        assert!(ok, "Python enqueue failed");
    }

    fn enqueue_pickle(&self, redis: &Redis, queue: &str, func: &str, n: usize) {
        let ok = self
            .cmd(redis)
            .arg(Self::bench_dir().join("rq_side.py"))
            .args(["enqueue-pickle", queue, func, &n.to_string()])
            .status()
            .expect("python")
            .success();
        assert!(ok, "Python enqueue failed");
    }

    /// The fork-per-job ceiling of this interpreter (jobs/s).
    fn forkloop(&self, redis: &Redis, n: usize) -> Option<f64> {
        let out = self
            .cmd(redis)
            .arg(Self::bench_dir().join("rq_side.py"))
            .args(["forkloop", &n.to_string()])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    /// `rq <args> --url URL -q default` with RQ's default serializer (pickle).
    fn rq_pickle(&self, redis: &Redis, url: &str, args: &[&str]) -> Child {
        self.rq_cli(redis, "from rq.cli import main; main()", url, args, &[])
    }

    /// `rq <args> -S JSONSerializer` with the app imported first (RQ's SimpleWorker runs the
    /// jobs in that process).
    fn rq_with_app_json(&self, redis: &Redis, url: &str, args: &[&str]) -> Child {
        self.rq_cli(
            redis,
            "import benchjobs; from rq.cli import main; main()",
            url,
            args,
            &["-S", "rq.serializers.JSONSerializer"],
        )
    }

    /// `rq worker` with the app (benchjobs) imported first, as a preloaded worker has it.
    fn rq_with_app(&self, redis: &Redis, args: &[&str]) -> Child {
        self.rq_cli(
            redis,
            "import benchjobs; from rq.cli import main; main()",
            &redis.url,
            args,
            &[],
        )
    }

    fn rq_cli(&self, redis: &Redis, code: &str, url: &str, args: &[&str], extra: &[&str]) -> Child {
        use std::os::unix::process::CommandExt;
        let mut c = self.cmd(redis);
        c.args(["-c", code])
            .args(&args[..1])
            .args(["--url", url])
            .args(&args[1..])
            .args(extra)
            .args(["-q", "default"]);
        c.process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c.spawn().expect("spawn rq")
    }

    fn times(&self, redis: &Redis, queue: &str) -> Vec<[f64; 3]> {
        let out = self
            .cmd(redis)
            .arg(Self::bench_dir().join("rq_side.py"))
            .args(["times", queue])
            .output()
            .expect("python");
        serde_json::from_slice(&out.stdout).expect("times JSON")
    }

    /// `rq <args> --url URL -q -S JSONSerializer default` with RQ's own CLI, in its own
    /// process group.
    fn rq(&self, redis: &Redis, args: &[&str]) -> Child {
        self.rq_at(redis, &redis.url, args)
    }

    fn rq_at(&self, redis: &Redis, url: &str, args: &[&str]) -> Child {
        self.rq_cli(
            redis,
            "from rq.cli import main; main()",
            url,
            args,
            &["-S", "rq.serializers.JSONSerializer"],
        )
    }
}

fn stop(child: &mut Child) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let t = Instant::now();
    while child.try_wait().ok().flatten().is_none() {
        if t.elapsed() > Duration::from_secs(30) {
            let _ = nix::sys::signal::killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn time_exit(child: &mut Child, sig: Signal) -> f64 {
    let t = Instant::now();
    kill(Pid::from_raw(child.id() as i32), sig).expect("signal");
    while child.try_wait().ok().flatten().is_none() {
        assert!(t.elapsed() < Duration::from_secs(120), "did not exit");
        std::thread::sleep(Duration::from_micros(200));
    }
    t.elapsed().as_secs_f64()
}

/// CPU time (user + system) of every child this process has reaped, and their reaped
/// descendants, seconds.
fn children_cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(u.user_time()) + secs(u.system_time())
}

/// A `kB` field of /proc/PID/status, e.g. `RssAnon:`.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    kib_field(&status, field)
}

/// The value of a `Name:   123 kB` line.
fn kib_field(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    procfs::rss(pid).unwrap_or(0) / 1024
}

/// Proportional set size: shared pages (code, libc) divided among the processes mapping them.
fn pss_kib(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    kib_field(&rollup, "Pss:")
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    percentile(&mut v, 0.5)
}

/// `median (lowest–highest)`.
fn spread(v: &[f64]) -> String {
    if v.is_empty() {
        return "not measured".into();
    }
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(0.0, f64::max);
    format!("{:.0} ({lo:.0}–{hi:.0})", median(v))
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "not measured".into())
}

fn f0(x: f64) -> String {
    format!("{x:.0}")
}
fn f1(x: f64) -> String {
    format!("{x:.1}")
}
fn f2(x: f64) -> String {
    format!("{x:.2}")
}
fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({model}), {:.0} GiB RAM, Linux {}",
        total as f64 / 1024.0 / 1024.0,
        kernel.trim()
    )
}

fn date() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
