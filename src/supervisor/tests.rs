//! The state machine driven without processes: made-up events at made-up instants.

use std::path::Path;
use std::time::{Duration, Instant};

use super::state::*;
use crate::config::Config;
use crate::store::Registration;

fn config(text: &str) -> Config {
    Config::parse(Path::new("/tmp/pool.toml"), text).expect("valid config")
}

const TWO_POOLS: &str = r#"
[supervisor]
warm_timeout = "10s"
cold_timeout = "5s"
spawn_stagger = "10ms"
[pools.a]
queues = ["qa"]
workers = 2
[pools.a.restart]
# Every death counts as a failure to start, so the backoff shows.
min_uptime = "1h"
backoff_initial = "1s"
backoff_max = "8s"
failure_window = "60s"
failure_threshold = 4
degraded_interval = "30s"
[pools.b]
queues = ["qb"]
workers = 1
"#;

/// A state machine plus a fake clock and pid source that answers spawns.
struct Harness {
    st: State,
    now: Instant,
    next_pid: u32,
    log: Vec<String>,
}

impl Harness {
    fn new(text: &str) -> Harness {
        let cfg = config(text);
        let now = Instant::now();
        Harness {
            st: State::new(&cfg, 42),
            now,
            next_pid: 1000,
            log: Vec::new(),
        }
    }

    /// Feeds an event; answers every spawn at once; returns the non-log actions.
    fn feed(&mut self, ev: Event) -> Vec<Action> {
        let mut queue = handle(&mut self.st, self.now, ev);
        let mut out = Vec::new();
        while !queue.is_empty() {
            let a = queue.remove(0);
            match a {
                Action::Log { msg, pool, .. } => self
                    .log
                    .push(format!("{}: {msg}", pool.unwrap_or_default())),
                Action::Spawn(ref s) => {
                    let pid = self.next_pid;
                    self.next_pid += 1;
                    out.push(a.clone());
                    let more = handle(
                        &mut self.st,
                        self.now,
                        Event::Spawned {
                            id: s.id,
                            pid,
                            name: format!("host.{pid}"),
                        },
                    );
                    queue.extend(more);
                }
                other => out.push(other),
            }
        }
        out
    }

    fn advance(&mut self, d: Duration) -> Vec<Action> {
        self.now += d;
        self.feed(Event::Tick)
    }

    /// Ticks through the spawn stagger until nothing more is started.
    fn settle(&mut self) -> Vec<Action> {
        let mut all = self.feed(Event::Tick);
        for _ in 0..100 {
            let more = self.advance(Duration::from_millis(10));
            all.extend(more);
        }
        all
    }

    fn pids(&self, pool: &str) -> Vec<u32> {
        self.st
            .workers
            .values()
            .filter(|w| w.pool == pool && w.retire.is_none())
            .filter_map(|w| w.pid)
            .collect()
    }

    fn id_of(&self, pid: u32) -> WorkerId {
        self.st
            .workers
            .values()
            .find(|w| w.pid == Some(pid))
            .map(|w| w.id)
            .expect("known pid")
    }

    fn exit(&mut self, pid: u32, how: ExitKind) -> Vec<Action> {
        let id = self.id_of(pid);
        self.feed(Event::Exited { id, how })
    }

    /// Every worker asked to leave exits cleanly (it finished its job).
    fn exit_retired(&mut self) {
        let leaving: Vec<u32> = self
            .st
            .workers
            .values()
            .filter(|w| w.retire.is_some())
            .filter_map(|w| w.pid)
            .collect();
        for pid in leaving {
            self.exit(pid, ExitKind::Code(0));
        }
    }

    fn logged(&self, text: &str) -> bool {
        self.log.iter().any(|l| l.contains(text))
    }
}

fn spawns(actions: &[Action]) -> Vec<SpawnSpec> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn terms(actions: &[Action]) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Term { pid, .. } => Some(*pid),
            _ => None,
        })
        .collect()
}

fn kills(actions: &[Action]) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Kill { pid, .. } => Some(*pid),
            _ => None,
        })
        .collect()
}

fn exit_code(actions: &[Action]) -> Option<i32> {
    actions.iter().find_map(|a| match a {
        Action::Exit(c) => Some(*c),
        _ => None,
    })
}

fn sigkill() -> ExitKind {
    ExitKind::Signal(9, "SIGKILL".into())
}

#[test]
fn starts_every_pool_with_a_stagger() {
    let mut h = Harness::new(TWO_POOLS);
    let first = h.feed(Event::Tick);
    assert_eq!(spawns(&first).len(), 1, "one spawn per stagger interval");
    let rest = h.settle();
    let all: Vec<SpawnSpec> = spawns(&first).into_iter().chain(spawns(&rest)).collect();
    assert_eq!(all.len(), 3);
    assert_eq!(all.iter().filter(|s| s.pool == "a").count(), 2);
    assert_eq!(all.iter().filter(|s| s.pool == "b").count(), 1);
    assert!(all.iter().all(|s| !s.burst && s.max_jobs.is_none()));
    assert!(
        h.settle().is_empty(),
        "nothing more once the pools are full"
    );
}

#[test]
fn crash_is_cleaned_up_and_restarted_with_growing_capped_backoff() {
    let mut h = Harness::new(TWO_POOLS);
    h.settle();
    let b_pid = h.pids("b")[0];
    let mut ceilings = Vec::new();
    for round in 0..3 {
        let pid = h.pids("a")[0];
        let acts = h.exit(pid, sigkill());
        assert!(
            acts.iter()
                .any(|a| matches!(a, Action::Cleanup { name, how, .. }
                if *name == format!("host.{pid}") && how.contains("signal 9"))),
            "{acts:?}"
        );
        assert!(spawns(&acts).is_empty(), "restart waits for the backoff");
        let line = h
            .log
            .iter()
            .rev()
            .find(|l| l.contains("restart in"))
            .unwrap();
        let ceiling = line
            .split("ceiling ")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap();
        ceilings.push(ceiling.to_string());
        // The delay is at most the ceiling (1s, 2s, 4s): by then the replacement starts.
        let limit = Duration::from_secs(1 << round);
        let deadline = h.now + limit + Duration::from_millis(20);
        let mut respawned = false;
        while h.now < deadline {
            if !spawns(&h.advance(Duration::from_millis(20))).is_empty() {
                respawned = true;
                break;
            }
        }
        assert!(respawned, "round {round}: no restart within {limit:?}");
    }
    assert_eq!(ceilings, ["1.00s", "2.00s", "4.00s"]);
    assert_eq!(h.pids("b"), [b_pid], "the other pool is untouched");
    // The cap: many more failures never wait longer than backoff_max (8s).
    let mut t = super::restart::RestartTracker::default();
    let policy = h.st.pools["a"].spec.restart.clone();
    let mut rng = fastrand::Rng::with_seed(3);
    for i in 0..3u64 {
        let v = t.record_failure(h.now + Duration::from_secs(i * 100), &policy, &mut rng);
        assert!(v.delay <= Duration::from_secs(8));
    }
}

#[test]
fn a_worker_that_had_been_up_is_replaced_at_once_and_an_early_death_backs_off() {
    let mut h = Harness::new(
        "[pools.p]\nqueues = [\"q\"]\nworkers = 1\n[pools.p.restart]\nmin_uptime = \"2s\"\nbackoff_initial = \"1s\"\n",
    );
    h.settle();
    // Up for 5 s, then SIGKILLed: not a crash loop.
    h.advance(Duration::from_secs(5));
    let pid = h.pids("p")[0];
    let acts = h.exit(pid, sigkill());
    assert!(acts.iter().any(|a| matches!(a, Action::Cleanup { .. })));
    assert_eq!(spawns(&acts).len(), 1, "replaced at once: {:#?}", h.log);
    assert!(h.logged("replacing it now"));
    assert_eq!(h.st.pools["p"].restart.consecutive(), 0);
    // The replacement dies after 0.5 s: a failure to start, which waits for the backoff.
    h.advance(Duration::from_millis(500));
    let pid = h.pids("p")[0];
    let acts = h.exit(pid, ExitKind::Code(1));
    assert!(spawns(&acts).is_empty(), "early death backs off");
    assert!(h.logged("restart in"));
    assert_eq!(h.st.pools["p"].restart.consecutive(), 1);
}

#[test]
fn degraded_after_threshold_within_window_keeps_retrying_and_recovers() {
    let mut h = Harness::new(TWO_POOLS);
    h.settle();
    // Four failures (failure_threshold) inside the 60s window.
    for _ in 0..4 {
        let pid = h.pids("a")[0];
        h.exit(pid, ExitKind::Code(1));
        // Wait until the replacement starts (at most the 8s cap).
        for _ in 0..1000 {
            if h.pids("a").len() == 2 {
                break;
            }
            h.advance(Duration::from_millis(10));
        }
    }
    assert!(h.logged("pool DEGRADED"), "{:#?}", h.log);
    assert!(h.st.pools["a"].restart.is_degraded());
    // While degraded, retries come every degraded_interval (30s) and say so.
    let pid = h.pids("a")[0];
    h.exit(pid, ExitKind::Code(1));
    assert!(h.logged("pool degraded: still failing"));
    assert!(spawns(&h.advance(Duration::from_secs(29))).is_empty());
    let acts = h.advance(Duration::from_secs(2));
    assert_eq!(spawns(&acts).len(), 1);
    assert!(h.logged("pool degraded: trying to start a worker again"));
    assert_eq!(h.pids("b").len(), 1, "pool b never disturbed");
    // Recovery: the new worker survives the whole window.
    h.advance(Duration::from_secs(61));
    assert!(!h.st.pools["a"].restart.is_degraded());
    assert!(h.logged("pool back to normal"));
}

#[test]
fn warm_then_cold_then_kill_and_no_restarts_during_shutdown() {
    let mut h = Harness::new(TWO_POOLS);
    h.settle();
    let all: Vec<u32> = h.st.workers.values().filter_map(|w| w.pid).collect();
    let acts = h.feed(Event::Signal(Sig::Stop));
    let mut warm = terms(&acts);
    warm.sort();
    assert_eq!(warm, all, "exactly one warm SIGTERM per worker");
    // A worker crashing now is cleaned up but not restarted.
    let acts = h.exit(all[0], sigkill());
    assert!(acts.iter().any(|a| matches!(a, Action::Cleanup { .. })));
    assert!(spawns(&acts).is_empty());
    assert!(spawns(&h.advance(Duration::from_secs(5))).is_empty());
    // Second signal: one more SIGTERM to each remaining worker (cold), never a third.
    let acts = h.feed(Event::Signal(Sig::Stop));
    assert_eq!(terms(&acts).len(), 2);
    assert!(terms(&h.advance(Duration::from_secs(1))).is_empty());
    // cold_timeout (5s) later: SIGKILL for every remaining group.
    let acts = h.advance(Duration::from_secs(5));
    assert_eq!(kills(&acts).len(), 2);
    h.exit(all[1], sigkill());
    let acts = h.exit(all[2], sigkill());
    assert_eq!(exit_code(&acts), Some(1), "escalated shutdown exits 1");
}

#[test]
fn warm_timeout_escalates_by_itself_and_all_warm_exits_zero() {
    let mut h = Harness::new(TWO_POOLS);
    h.settle();
    h.feed(Event::Signal(Sig::Stop));
    assert!(terms(&h.advance(Duration::from_secs(9))).is_empty());
    let acts = h.advance(Duration::from_millis(1100));
    assert_eq!(terms(&acts).len(), 3, "warm_timeout sends the cold signal");
    assert!(h.logged("cold stage after warm_timeout"));

    let mut h = Harness::new(TWO_POOLS);
    h.settle();
    h.feed(Event::Signal(Sig::Stop));
    let pids: Vec<u32> = h.st.workers.values().filter_map(|w| w.pid).collect();
    let mut last = Vec::new();
    for pid in pids {
        last = h.exit(pid, ExitKind::Code(0));
    }
    assert_eq!(exit_code(&last), Some(0));
}

#[test]
fn a_worker_spawned_after_the_stop_signal_gets_the_signals_the_others_got() {
    for stops in [1, 2] {
        let mut h = Harness::new(TWO_POOLS);
        h.settle();
        // The runtime handles every event of a batch before it performs any action, so a
        // TTIN and a TERM arriving together leave a spawn pending into the shutdown.
        let pending = spawns(&handle(&mut h.st, h.now, Event::Signal(Sig::More)));
        assert_eq!(pending.len(), 1);
        for _ in 0..stops {
            assert_eq!(terms(&h.feed(Event::Signal(Sig::Stop))).len(), 3);
        }
        let acts = h.feed(Event::Spawned {
            id: pending[0].id,
            pid: 4242,
            name: "host.4242".into(),
        });
        assert_eq!(
            terms(&acts),
            vec![4242; stops],
            "after {stops} stop signal(s) the late worker gets as many SIGTERMs"
        );
    }
}

#[test]
fn retired_workers_get_no_second_warm_signal() {
    let mut h = Harness::new(&TWO_POOLS.replace("workers = 2", "workers = 3"));
    h.settle();
    // TTOU retires one worker of the first pool with a warm TERM...
    let acts = h.feed(Event::Signal(Sig::Fewer));
    let retired = terms(&acts);
    assert_eq!(retired.len(), 1);
    // ...and the shutdown's warm stage does not signal it again (that would be cold).
    let acts = h.feed(Event::Signal(Sig::Stop));
    assert!(!terms(&acts).contains(&retired[0]));
    assert_eq!(terms(&acts).len(), 3);
}

#[test]
fn reload_diff_scales_in_place_rolls_changed_pools_adds_and_drains() {
    let mut h = Harness::new(TWO_POOLS);
    h.settle();
    let a_before = h.pids("a");
    let b_before = h.pids("b");
    // a: 2 -> 4 workers; b: queues changed; c: new; (nothing removed yet).
    let text = TWO_POOLS
        .replace("workers = 2", "workers = 4")
        .replace("queues = [\"qb\"]", "queues = [\"qb\", \"qb2\"]")
        + "[pools.c]\nqueues = [\"qc\"]\n";
    let acts = h.feed(Event::Reload(Box::new(config(&text))));
    assert!(terms(&acts).is_empty());
    assert!(h.logged("a: reload: workers 2 -> 4"), "{:#?}", h.log);
    assert!(h.logged("b: reload: definition changed (queues qb -> qb,qb2)"));
    assert!(h.logged("c: reload: added"));
    let acts = h.settle();
    let a_after = h.pids("a");
    assert_eq!(a_after.len(), 4);
    assert!(
        a_before.iter().all(|p| a_after.contains(p)),
        "old pids kept"
    );
    assert_eq!(h.pids("c").len(), 1);
    // b rolled: a new worker, then (after the roll delay) the old one retired warm.
    let b_spawns: Vec<_> = spawns(&acts)
        .into_iter()
        .filter(|s| s.pool == "b")
        .collect();
    assert_eq!(b_spawns.len(), 1);
    assert_eq!(b_spawns[0].queues, ["qb", "qb2"]);
    assert!(
        !terms(&acts).contains(&b_before[0]),
        "old one waits for the new"
    );
    let acts = h.advance(Duration::from_secs(3));
    assert_eq!(terms(&acts), b_before);

    // Scale down retires idle workers first, with a warm TERM.
    let busy = h.pids("a");
    let samples = busy
        .iter()
        .enumerate()
        .map(|(i, pid)| Sample {
            id: h.id_of(*pid),
            rss: None,
            registration: Some(Registration {
                present: true,
                heartbeat_age: Some(Duration::ZERO),
                state: Some(if i == 1 { "idle" } else { "busy" }.into()),
                busy_within_timeout: i != 1,
            }),
        })
        .collect();
    h.feed(Event::Health {
        redis_ok: true,
        samples,
    });
    let text2 = text.replace("workers = 4", "workers = 3");
    let acts = h.feed(Event::Reload(Box::new(config(&text2))));
    assert_eq!(terms(&acts), [busy[1]], "the idle one goes");

    // A removed pool drains warm and is forgotten once empty.
    let c = h.pids("c");
    let text3 = text2.replace("[pools.c]\nqueues = [\"qc\"]\n", "");
    let acts = h.feed(Event::Reload(Box::new(config(&text3))));
    assert_eq!(terms(&acts), c);
    assert!(h.logged("c: reload: removed from the file"));
    h.exit(c[0], ExitKind::Code(0));
    assert!(!h.st.pools.contains_key("c"));
    // Nothing changed: said so.
    h.feed(Event::Reload(Box::new(config(&text3))));
    assert!(h.logged("reload: no changes"));
}

#[test]
fn a_reload_that_shrinks_and_changes_a_pool_retires_the_extra_workers_before_rolling() {
    let mut h = Harness::new(&TWO_POOLS.replace("workers = 2", "workers = 3"));
    h.settle();
    let before = h.pids("a");
    assert_eq!(before.len(), 3);
    let text = TWO_POOLS.replace("queues = [\"qa\"]", "queues = [\"qa\", \"qa2\"]");
    let acts = h.feed(Event::Reload(Box::new(config(&text))));
    assert_eq!(
        terms(&acts).len(),
        1,
        "one of three retired for the new count"
    );
    assert!(
        spawns(&acts).is_empty(),
        "no worker started above the count"
    );
    // Then the roll, one worker at a time: the new count plus the one a roll step starts
    // before it retires an old worker.
    // A retired worker leaves when it has finished its job (here: after a tick); the next
    // step waits for it, so the processes never number more than one over the count.
    for _ in 0..200 {
        let processes = h.st.workers.values().filter(|w| w.pool == "a").count();
        assert!(
            processes <= 3,
            "{processes} workers in a pool of 2 during a roll"
        );
        h.advance(Duration::from_millis(50));
        h.exit_retired();
    }
    let after = h.pids("a");
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|p| !before.contains(p)), "both rolled");
}

#[test]
fn runtime_scale_survives_reload_unless_the_file_changes_the_count() {
    let mut h = Harness::new(TWO_POOLS);
    h.settle();
    h.feed(Event::Signal(Sig::More));
    h.settle();
    assert_eq!(h.pids("a").len(), 3, "TTIN adds to the first pool by name");
    h.feed(Event::Reload(Box::new(config(TWO_POOLS))));
    h.settle();
    assert_eq!(h.pids("a").len(), 3, "file count unchanged: override kept");
    let acts = h.feed(Event::Reload(Box::new(config(
        &TWO_POOLS.replace("workers = 2", "workers = 1"),
    ))));
    assert_eq!(terms(&acts).len(), 2, "file changed the count: 3 -> 1");
    h.feed(Event::Signal(Sig::Fewer));
    assert!(h.logged("the minimum"), "TTOU never goes below one worker");
}

#[test]
fn memory_over_limit_three_times_recycles_warm_and_replaces_after_exit() {
    let text = TWO_POOLS.replace("workers = 1\n", "workers = 1\nmemory_limit = \"100MiB\"\n");
    let mut h = Harness::new(&text);
    h.settle();
    let pid = h.pids("b")[0];
    let id = h.id_of(pid);
    let reading = |rss: u64| Event::Health {
        redis_ok: true,
        samples: vec![Sample {
            id,
            rss: Some(rss << 20),
            registration: None,
        }],
    };
    h.feed(reading(150));
    h.feed(reading(150));
    h.feed(reading(50)); // a dip resets the count
    h.feed(reading(150));
    assert!(terms(&h.feed(reading(150))).is_empty());
    let acts = h.feed(reading(150));
    assert_eq!(terms(&acts), [pid]);
    assert!(h.logged("over memory_limit 100 MiB for 3 readings"));
    assert!(
        spawns(&h.settle()).is_empty(),
        "replaced only when it exits"
    );
    let acts = h.exit(pid, ExitKind::Code(0));
    assert_eq!(spawns(&acts).len(), 1);
}

#[test]
fn stuck_worker_is_killed_but_not_a_long_job_nor_during_a_redis_outage() {
    let text = format!("{TWO_POOLS}[pools.b.worker]\nworker_ttl = \"20s\"\n");
    let mut h = Harness::new(&text);
    h.settle();
    let pid = h.pids("b")[0];
    let id = h.id_of(pid);
    let reg = |age: u64, busy: bool| Registration {
        present: true,
        heartbeat_age: Some(Duration::from_secs(age)),
        state: Some(if busy { "busy" } else { "idle" }.into()),
        busy_within_timeout: busy,
    };
    let health = |ok: bool, r: Option<Registration>| Event::Health {
        redis_ok: ok,
        samples: vec![Sample {
            id,
            rss: None,
            registration: r,
        }],
    };
    h.now += Duration::from_secs(30);
    // Busy on a job within its timeout: silence is a long job, not a hang.
    assert!(kills(&h.feed(health(true, Some(reg(25, true))))).is_empty());
    // Redis unreachable: nothing can be concluded.
    assert!(kills(&h.feed(health(false, None))).is_empty());
    // Redis back: the clocks restart, so no kill at once...
    assert!(kills(&h.feed(health(true, Some(reg(25, false))))).is_empty());
    // ...but a worker that stays silent past worker_ttl is killed and replaced.
    h.now += Duration::from_secs(21);
    let acts = h.feed(health(true, Some(reg(46, false))));
    assert_eq!(kills(&acts), [pid]);
    assert!(h.logged("stuck:"));
    let acts = h.exit(pid, sigkill());
    assert!(acts.iter().any(|a| matches!(a, Action::Cleanup { .. })));
    assert_eq!(spawns(&acts).len(), 1, "replaced at once");
}

#[test]
fn burst_pools_finish_and_the_supervisor_exits_zero() {
    let mut h = Harness::new(
        "[pools.x]\nqueues = [\"q\"]\nworkers = 2\nburst = true\n[pools.y]\nqueues = [\"r\"]\nburst = true\n",
    );
    let acts = h.settle();
    assert!(spawns(&acts).iter().all(|s| s.burst));
    let x = h.pids("x");
    let y = h.pids("y");
    // A crash is restarted even in burst mode...
    let mut acts = h.exit(x[0], ExitKind::Code(1));
    acts.extend(h.advance(Duration::from_millis(200)));
    assert_eq!(spawns(&acts).len(), 1);
    // ...a clean exit is not.
    let acts = h.exit(x[1], ExitKind::Code(0));
    assert!(spawns(&acts).is_empty());
    let x2 = h.pids("x");
    assert_eq!(x2.len(), 1);
    h.exit(y[0], ExitKind::Code(0));
    let acts = h.exit(x2[0], ExitKind::Code(0));
    assert_eq!(exit_code(&acts), Some(0));
}

#[test]
fn job_limit_is_drawn_per_worker_within_the_jitter_range() {
    let mut h = Harness::new(
        "[supervisor]\nspawn_stagger = 0\n[pools.m]\nqueues = [\"q\"]\nworkers = 40\nmax_jobs = 10\nmax_jobs_jitter = 5\n",
    );
    let acts = h.feed(Event::Tick);
    let limits: Vec<u64> = spawns(&acts).iter().filter_map(|s| s.max_jobs).collect();
    assert_eq!(limits.len(), 40);
    assert!(limits.iter().all(|n| (10..=15).contains(n)), "{limits:?}");
    let distinct: std::collections::BTreeSet<_> = limits.iter().collect();
    assert!(distinct.len() > 2, "workers must not recycle in lockstep");
    // A worker that reached its limit (clean exit) is replaced at once.
    let pid = h.pids("m")[0];
    let acts = h.exit(pid, ExitKind::Code(0));
    assert_eq!(spawns(&acts).len(), 1);
}

#[test]
fn spawn_failure_counts_as_a_failure() {
    let mut h = Harness::new(TWO_POOLS);
    let acts = handle(&mut h.st, h.now, Event::Tick);
    let Some(Action::Spawn(s)) = acts.into_iter().find(|a| matches!(a, Action::Spawn(_))) else {
        panic!("no spawn");
    };
    h.feed(Event::SpawnFailed {
        id: s.id,
        error: "No such file or directory".into(),
        environment: false,
    });
    assert!(h.logged("cannot start a worker: No such file"));
    assert!(h.logged("restart in"));
}

#[test]
fn a_worker_that_cannot_work_here_degrades_its_pool_at_once_and_never_spins() {
    let mut h = Harness::new(
        "[supervisor]\nspawn_stagger = 0\n[pools.a]\nqueues = [\"q\"]\nworkers = 2\n[pools.a.restart]\ndegraded_interval = \"60s\"\n",
    );
    h.settle();
    let pids = h.pids("a");
    assert_eq!(pids.len(), 2);
    // Long after start: not an early death, yet not a healthy one to replace at once.
    h.advance(Duration::from_secs(30));
    let acts = h.exit(pids[0], ExitKind::Code(crate::launch::EXIT_ENVIRONMENT));
    assert!(spawns(&acts).is_empty());
    assert!(h.logged("pool DEGRADED: its workers cannot start jobs in this environment"));
    let pool = &h.st.pools["a"];
    assert!(pool.restart.is_degraded());
    assert!(
        pool.degraded_reason
            .as_deref()
            .unwrap()
            .contains("exit status 3")
    );
    // No replacement before degraded_interval, however many ticks.
    for _ in 0..59 {
        assert!(spawns(&h.advance(Duration::from_secs(1))).is_empty());
    }
    let acts = h.advance(Duration::from_secs(2));
    let again = spawns(&acts);
    assert_eq!(again.len(), 1, "it tries again after degraded_interval");
    // A spawn refused for a process limit degrades the same way, without the backoff ladder.
    let new_pid = h.pids("a").into_iter().max().unwrap();
    let id = h.id_of(new_pid);
    h.st.workers.get_mut(&id).unwrap().pid = None;
    h.feed(Event::SpawnFailed {
        id,
        error: "Resource temporarily unavailable (os error 11)".into(),
        environment: true,
    });
    assert!(h.logged("still degraded: cannot start workers: Resource temporarily unavailable"));
    assert!(spawns(&h.advance(Duration::from_secs(30))).is_empty());
}

const AUTOSCALED: &str = r#"
[supervisor]
spawn_stagger = "0s"
[pools.a]
queues = ["qa", "qa2"]
[pools.a.autoscale]
min = 1
max = 5
jobs_per_worker = 10
idle_before_scale_down = "30s"
max_wait = "5s"
[pools.b]
queues = ["qb"]
workers = 2
"#;

use crate::store::{JobCounts, QueueLoad, WorkerLoad};

impl Harness {
    /// A reading: `backlog` jobs queued on `qa` (oldest `oldest` ago), and every live worker
    /// registered with the state `busy` gives (by pid), idle otherwise, counters as given.
    fn read(&mut self, backlog: u64, oldest: Duration, busy: &[u32], jobs: u64) -> Vec<Action> {
        self.read_without(backlog, oldest, busy, jobs, &[])
    }

    /// As [`Harness::read`], with the workers `absent` (by pid) not yet registered.
    fn read_without(
        &mut self,
        backlog: u64,
        oldest: Duration,
        busy: &[u32],
        jobs: u64,
        absent: &[u32],
    ) -> Vec<Action> {
        let mut queues = std::collections::BTreeMap::new();
        queues.insert(
            "qa".to_string(),
            QueueLoad {
                length: backlog,
                oldest: (backlog > 0).then_some(oldest),
            },
        );
        let workers = self
            .st
            .workers
            .values()
            .filter(|w| w.pid.is_some_and(|p| !absent.contains(&p)))
            .map(|w| {
                let b = busy.contains(&w.pid.unwrap());
                (
                    w.id,
                    WorkerLoad {
                        present: true,
                        state: Some(if b { "busy" } else { "idle" }.to_string()),
                        job: b.then(|| "job1".to_string()),
                        jobs: JobCounts {
                            finished: jobs,
                            failed: 0,
                        },
                    },
                )
            })
            .collect();
        self.feed(Event::Reading(Reading {
            queues,
            workers,
            finals: Vec::new(),
        }))
    }

    fn command(&mut self, c: Command) -> (i32, String, Vec<Action>) {
        let acts = self.feed(Event::Command(c));
        let (code, text) = acts
            .iter()
            .find_map(|a| match a {
                Action::Reply { code, text } => Some((*code, text.clone())),
                _ => None,
            })
            .expect("a reply");
        (code, text, acts)
    }
}

#[test]
fn autoscale_grows_on_backlog_within_max_and_counts_busy_workers() {
    let mut h = Harness::new(AUTOSCALED);
    h.settle();
    assert_eq!(h.pids("a").len(), 1, "starts at min");
    h.read(25, Duration::from_secs(1), &[], 0);
    h.settle();
    assert_eq!(h.pids("a").len(), 3, "ceil(25 / 10)");
    assert!(h.logged("autoscale: workers 1 -> 3: 25 queued on qa,qa2"));
    let busy = h.pids("a");
    h.read(15, Duration::from_secs(1), &busy, 0);
    h.settle();
    assert_eq!(h.pids("a").len(), 5, "ceil(15 / 10) + 3 busy = 5, the max");
    h.read(1000, Duration::from_secs(1), &busy, 0);
    h.settle();
    assert_eq!(h.pids("a").len(), 5, "never above max");
    assert_eq!(h.pids("b").len(), 2, "the other pool is untouched");
}

#[test]
fn autoscale_grows_while_the_oldest_job_waits_past_max_wait() {
    let mut h = Harness::new(AUTOSCALED);
    h.settle();
    let busy = h.pids("a");
    // One job queued (ceil = 1) + 1 busy = 2 wanted.
    h.read(1, Duration::from_secs(1), &busy, 0);
    h.settle();
    assert_eq!(h.pids("a").len(), 2);
    // Still one queued and one busy (2 wanted, 2 running), but the job has waited 6s.
    h.read(1, Duration::from_secs(6), &busy, 0);
    h.settle();
    assert_eq!(h.pids("a").len(), 3, "one more while the wait exceeds 5s");
    assert!(h.logged("the oldest job has waited"));
    // The one just added has not registered yet: no more until it has (it may be what the
    // job is waiting for), however often the readings come.
    let new = *h.pids("a").iter().max().unwrap();
    for _ in 0..4 {
        h.now += Duration::from_millis(500);
        h.read_without(1, Duration::from_secs(7), &busy, 0, &[new]);
        h.settle();
    }
    assert_eq!(h.pids("a").len(), 3, "no growth while a worker is starting");
    h.read(1, Duration::from_secs(9), &busy, 0);
    h.settle();
    assert_eq!(
        h.pids("a").len(),
        4,
        "registered, and the job still waits: one more"
    );
}

#[test]
fn autoscale_retires_only_workers_idle_long_enough_never_busy_ones() {
    let mut h = Harness::new(AUTOSCALED);
    h.settle();
    h.read(50, Duration::from_secs(1), &[], 0);
    h.settle();
    assert_eq!(h.pids("a").len(), 5);
    let pids = h.pids("a");
    let busy = [pids[0]];
    // Queue drained; one worker still busy. A quiet reading retires nobody yet.
    let acts = h.read(0, Duration::ZERO, &busy, 3);
    assert!(terms(&acts).is_empty(), "not idle long enough: {acts:?}");
    h.now += Duration::from_secs(31);
    let acts = h.read(0, Duration::ZERO, &busy, 3);
    let retired = terms(&acts);
    assert_eq!(retired.len(), 4, "down to the busy one: {acts:?}");
    assert!(!retired.contains(&pids[0]), "the busy worker is kept");
    assert!(h.logged("autoscale: workers 5 -> 1: retiring 4 worker(s) idle for 30s+"));
    // Nothing below min, even when the last one idles.
    h.now += Duration::from_secs(60);
    let acts = h.read(0, Duration::ZERO, &[], 3);
    assert!(terms(&acts).is_empty(), "min = 1 is kept");
}

#[test]
fn autoscale_shrinks_from_the_workers_that_run_not_the_target() {
    // Min 2 here, so "every live worker retired" and "down to min" differ.
    let text = AUTOSCALED.replace("min = 1", "min = 2")
        + "[pools.a.restart]\nmin_uptime = \"1m\"\nbackoff_initial = \"2m\"\nbackoff_max = \"5m\"\n";
    let mut h = Harness::new(&text);
    h.settle();
    h.read(50, Duration::from_secs(1), &[], 0);
    h.settle();
    let pids = h.pids("a");
    assert_eq!(pids.len(), 5);
    // Two die at once: early deaths, so their replacements wait out a backoff.
    h.exit(pids[0], sigkill());
    h.exit(pids[1], sigkill());
    assert_eq!(h.pids("a").len(), 3);
    h.read(0, Duration::ZERO, &[], 0);
    h.now += Duration::from_secs(31);
    let acts = h.read(0, Duration::ZERO, &[], 0);
    let retired = terms(&acts);
    assert_eq!(
        retired.len(),
        1,
        "3 running, min 2: one retired, not all three: {acts:?}"
    );
    assert_eq!(h.st.pools["a"].desired(), 2, "the target is what is left");
    assert!(
        h.logged("autoscale: workers 5 -> 3: 3 running, none retired"),
        "first the target comes down to the workers that run: {:#?}",
        h.log
    );
    assert!(h.logged("autoscale: workers 3 -> 2: retiring 1 worker(s)"));
}

#[test]
fn a_reload_moves_the_autoscaled_count_into_new_bounds_and_drops_it_without_autoscale() {
    let mut h = Harness::new(AUTOSCALED);
    h.settle();
    h.read(50, Duration::from_secs(1), &[], 0);
    h.settle();
    assert_eq!(h.pids("a").len(), 5);
    let acts = h.feed(Event::Reload(Box::new(config(
        &AUTOSCALED.replace("max = 5", "max = 3"),
    ))));
    assert_eq!(h.st.pools["a"].desired(), 3, "clamped to the new max");
    assert_eq!(terms(&acts).len(), 2, "the two over it retire: {acts:?}");
    assert!(
        h.logged("reload: autoscale bounds now 1..3; workers 5 -> 3"),
        "{:#?}",
        h.log
    );
    h.exit_retired();
    // Autoscale removed with no `workers`: the file's count (1) holds, not the last target.
    let plain = AUTOSCALED
        .replace("[pools.a.autoscale]\nmin = 1\nmax = 5\njobs_per_worker = 10\nidle_before_scale_down = \"30s\"\nmax_wait = \"5s\"\n", "");
    assert!(!plain.contains("[pools.a.autoscale]"));
    h.feed(Event::Reload(Box::new(config(&plain))));
    assert_eq!(h.st.pools["a"].desired(), h.st.pools["a"].spec.workers);
    assert!(h.logged("reload: autoscale removed; workers 3 ->"));
}

#[test]
fn a_worker_that_keeps_doing_jobs_is_not_idle() {
    let mut h = Harness::new(AUTOSCALED);
    h.settle();
    h.read(20, Duration::from_secs(1), &[], 0);
    h.settle();
    assert_eq!(h.pids("a").len(), 2);
    // Every reading sees it idle between two jobs, but its counters move: not idle.
    for n in 1..=40 {
        h.now += Duration::from_secs(1);
        let acts = h.read(0, Duration::ZERO, &[], n);
        assert!(terms(&acts).is_empty(), "reading {n}: {acts:?}");
    }
}

#[test]
fn scale_to_zero_and_back_on_the_first_job() {
    let text = AUTOSCALED.replace("min = 1", "min = 0");
    let mut h = Harness::new(&text);
    h.settle();
    assert!(
        h.pids("a").is_empty(),
        "an idle pool with min 0 runs no worker"
    );
    h.read(0, Duration::ZERO, &[], 0);
    assert!(h.st.ready(), "and is ready, not waiting for it");
    let mut acts = h.read(1, Duration::from_millis(10), &[], 0);
    acts.extend(h.settle());
    assert_eq!(spawns(&acts).len(), 1, "one worker for the first job");
    let snap = h.st.snapshot(h.now);
    assert_eq!(snap.pools[0].degraded, None);
}

#[test]
fn scale_command_answers_and_refuses_clearly() {
    let mut h = Harness::new(TWO_POOLS);
    h.settle();
    let (code, text, _) = h.command(Command::Scale {
        pool: "nope".into(),
        workers: 3,
    });
    assert_eq!(code, 2);
    assert!(
        text.contains("no pool named \"nope\"") && text.contains("a, b"),
        "{text}"
    );
    let (code, text, _) = h.command(Command::Scale {
        pool: "b".into(),
        workers: 0,
    });
    assert_eq!(code, 2, "{text}");
    let (code, text, _) = h.command(Command::Scale {
        pool: "b".into(),
        workers: 3,
    });
    assert_eq!(code, 0);
    assert!(text.contains("workers 1 -> 3 (the file says 1"), "{text}");
    h.settle();
    assert_eq!(h.pids("b").len(), 3);
    let snap = h.st.snapshot(h.now);
    let b = snap.pools.iter().find(|p| p.name == "b").unwrap();
    assert_eq!(
        (b.desired, b.file_workers),
        (3, 1),
        "status shows both numbers"
    );

    let mut h = Harness::new(AUTOSCALED);
    let (code, text, _) = h.command(Command::Scale {
        pool: "a".into(),
        workers: 3,
    });
    assert_eq!(code, 2);
    assert!(text.contains("autoscaled (1..5"), "{text}");
}

#[test]
fn pause_signals_registered_workers_and_new_ones_start_paused() {
    let mut h = Harness::new(TWO_POOLS);
    h.settle();
    // Registered: the reading says so.
    h.read(0, Duration::ZERO, &[], 0);
    let (code, _, acts) = h.command(Command::Pause("a".into()));
    assert_eq!(code, 0);
    let paused: Vec<u32> = acts
        .iter()
        .filter_map(|a| match a {
            Action::Pause { pid, on: true, .. } => Some(*pid),
            _ => None,
        })
        .collect();
    assert_eq!(paused.len(), 2, "{acts:?}");
    assert!(h.st.pools["a"].paused);
    // A replacement spawned while paused starts paused, and is not signalled again.
    let acts = h.exit(paused[0], ExitKind::Code(0));
    let s = spawns(&acts);
    assert_eq!(s.len(), 1);
    assert!(s[0].paused, "{s:?}");
    let (_, _, acts) = h.command(Command::Resume("a".into()));
    h.read(0, Duration::ZERO, &[], 0);
    let acts: Vec<Action> = acts
        .into_iter()
        .chain(h.advance(Duration::from_millis(1)))
        .collect();
    let resumed = acts
        .iter()
        .filter(|a| matches!(a, Action::Pause { on: false, .. }))
        .count();
    assert_eq!(resumed, 1, "the one still paused; {acts:?}");
}

#[test]
fn restart_rolls_every_worker_and_counts_it() {
    let mut h = Harness::new(TWO_POOLS);
    h.settle();
    let before = h.pids("a");
    let (code, text, _) = h.command(Command::Restart(Some("a".into())));
    assert_eq!(code, 0, "{text}");
    for _ in 0..200 {
        h.advance(Duration::from_millis(50));
        // Retired workers exit when asked.
        let leaving: Vec<u32> =
            h.st.workers
                .values()
                .filter(|w| w.retire.is_some())
                .filter_map(|w| w.pid)
                .collect();
        for pid in leaving {
            h.exit(pid, ExitKind::Code(0));
        }
    }
    let after = h.pids("a");
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|p| !before.contains(p)), "both rolled");
    assert_eq!(h.st.pools["a"].restarts.get("rolling"), Some(&2));
}

#[test]
fn job_counts_add_up_across_exits() {
    let mut h = Harness::new(TWO_POOLS);
    h.settle();
    h.read(0, Duration::ZERO, &[], 4);
    let pid = h.pids("b")[0];
    let name = format!("host.{pid}");
    h.exit(pid, ExitKind::Code(0));
    // Its record, read after its exit, says it did 6 in all.
    h.feed(Event::Reading(Reading {
        finals: vec![(
            name,
            Some(JobCounts {
                finished: 6,
                failed: 1,
            }),
        )],
        ..Reading::default()
    }));
    let snap = h.st.snapshot(h.now);
    let b = snap.pools.iter().find(|p| p.name == "b").unwrap();
    assert_eq!((b.jobs_finished, b.jobs_failed), (6, 1));
    assert_eq!(b.restarts.get("exited"), Some(&1));
}
