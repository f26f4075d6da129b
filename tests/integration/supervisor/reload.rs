//! SIGHUP reloads and TTIN/TTOU scaling, against a real redis-server and the real binaries.

use std::time::Duration;

use crate::support::supervisor::*;
use crate::support::*;
use nix::sys::signal::Signal;

fn pool(workers: u32, queues: &str) -> String {
    format!(
        r#"
[supervisor]
health_interval = "500ms"
[worker]
builtin_handlers = true
[pools.main]
queues = [{queues}]
workers = {workers}
"#
    )
}

fn pids(con: &mut redis::Connection) -> Vec<u32> {
    workers(con).into_iter().map(|(_, p)| p).collect()
}

#[test]
fn hup_from_two_to_four_workers_keeps_the_first_two() {
    let redis = RedisServer::start();
    let file = PoolFile::new(&pool(2, "\"default\""));
    let sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    wait_workers(&mut con, 2);
    let before = pids(&mut con);
    file.rewrite(&pool(4, "\"default\""));
    sup.signal(Signal::SIGHUP);
    let after: Vec<u32> = wait_workers(&mut con, 4)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert!(
        before.iter().all(|p| after.contains(p)),
        "{before:?} {after:?}"
    );
    let log = sup.log();
    assert!(
        log.contains("[main/rq-supervisor] reload: workers 2 -> 4"),
        "{log}"
    );
    // And back down to 2: two go, warm, and the pool stays at 2.
    file.rewrite(&pool(2, "\"default\""));
    sup.signal(Signal::SIGHUP);
    wait_workers(&mut con, 2);
    sup.wait_for_log("(retired: scale down)");
    assert_eq!(lines_with(&sup.log(), "retiring pid").len(), 2);
}

#[test]
fn hup_with_a_broken_file_changes_nothing() {
    let redis = RedisServer::start();
    let file = PoolFile::new(&pool(2, "\"default\""));
    let sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    let before = wait_workers(&mut con, 2);
    file.rewrite(&pool(2, "\"default\"").replace("workers = 2", "workers = 0"));
    sup.signal(Signal::SIGHUP);
    sup.wait_for_log("reload refused, running pools untouched");
    let log = sup.log();
    assert!(log.contains("[pools.main] workers"), "{log}");
    file.rewrite("[pools.main\n");
    sup.signal(Signal::SIGHUP);
    wait_until("second refusal", WAIT, || {
        lines_with(&sup.log(), "reload refused").len() == 2
    });
    // Give the supervisor a moment in which it could (wrongly) act, then compare.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(workers(&mut con), before);
    let log = sup.log();
    assert!(!log.contains("retiring"), "{log}");
    assert_eq!(lines_with(&log, "spawned pid").len(), 2, "{log}");
}

#[test]
fn ttin_and_ttou_scale_the_first_pool_and_survive_an_unchanged_reload() {
    let redis = RedisServer::start();
    let file = PoolFile::new(&format!(
        "{}[pools.zeta]\nqueues = [\"z\"]\n",
        pool(1, "\"default\"")
    ));
    let sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    wait_workers(&mut con, 2);
    sup.signal(Signal::SIGTTIN);
    wait_until("3 workers on default", WAIT, || {
        workers_on(&mut con, "default").len() == 2
    });
    sup.signal(Signal::SIGTTIN);
    wait_until("3 workers on default", WAIT, || {
        workers_on(&mut con, "default").len() == 3
    });
    assert_eq!(
        workers_on(&mut con, "z").len(),
        1,
        "only the first pool by name"
    );
    // A reload that leaves main's count alone keeps the runtime scale.
    sup.signal(Signal::SIGHUP);
    sup.wait_for_log("reload: no changes");
    assert_eq!(workers_on(&mut con, "default").len(), 3);
    sup.signal(Signal::SIGTTOU);
    wait_until("2 workers on default", WAIT, || {
        workers_on(&mut con, "default").len() == 2
    });
    let log = sup.log();
    assert!(log.contains("TTOU: workers 3 -> 2"), "{log}");
    assert!(
        log.contains("its state in Redis: idle"),
        "an idle worker goes:\n{log}"
    );
}

#[test]
fn a_changed_pool_is_rolled_one_worker_at_a_time() {
    let redis = RedisServer::start();
    let file = PoolFile::new(&pool(2, "\"a\""));
    let sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    let old: Vec<u32> = wait_workers(&mut con, 2)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    file.rewrite(&pool(2, "\"a\", \"b\""));
    sup.signal(Signal::SIGHUP);
    let mut fewest = usize::MAX;
    let mut most = 0;
    wait_until("both workers replaced", Duration::from_secs(30), || {
        let on_a = workers_on(&mut con, "a");
        fewest = fewest.min(on_a.len());
        most = most.max(on_a.len());
        let on_b = workers_on(&mut con, "b");
        on_b.len() == 2 && on_a.len() == 2 && !old.iter().any(|p| on_a.contains(p))
    });
    assert!(fewest >= 2, "capacity never dropped below 2 (saw {fewest})");
    assert!(most <= 3, "one extra worker at a time (saw {most})");
    let log = sup.log();
    assert!(
        log.contains("reload: definition changed (queues a -> a,b); rolling 2 worker(s)"),
        "{log}"
    );
    wait_until("both old workers' exits logged", WAIT, || {
        lines_with(&sup.log(), "(retired: rolling restart)").len() == 2
    });
}

#[test]
fn hup_that_moves_to_another_redis_is_refused() {
    let redis = RedisServer::start();
    let body = format!(
        "[redis]\nurl = \"{}\"\n{}",
        redis.url(),
        pool(1, "\"default\"")
    );
    let file = PoolFile::new(&body);
    let sup = Supervisor::without_url(&file).spawn();
    let mut con = redis.con();
    let before = wait_workers(&mut con, 1);
    file.rewrite(&body.replace(&redis.url(), "redis://:pw@127.0.0.1:1/0"));
    sup.signal(Signal::SIGHUP);
    sup.wait_for_log("reload refused, running pools untouched");
    let log = sup.log();
    assert!(log.contains("restart rq-supervisor to switch"), "{log}");
    assert!(!log.contains(":pw@"), "password masked:\n{log}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(workers(&mut con), before);
}
