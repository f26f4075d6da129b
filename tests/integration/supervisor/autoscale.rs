//! Autoscale on backlog, against a real redis-server and the real binaries: growing to
//! `max` on a backlog and back to `min` once idle with every job finished, without
//! flapping; a pool at zero that starts a worker for the first job and goes back to zero.

use std::time::{Duration, Instant};

use crate::support::supervisor::*;
use crate::support::*;
use serde_json::json;

fn autoscaled(min: u32, max: u32) -> PoolFile {
    PoolFile::new(&format!(
        r#"
[supervisor]
spawn_stagger = "0s"
health_interval = "500ms"
[worker]
builtin_handlers = true
[pools.work]
queues = ["q"]
[pools.work.autoscale]
min = {min}
max = {max}
jobs_per_worker = 5
idle_before_scale_down = "1s"
"#
    ))
}

/// The `autoscale: workers A -> B` lines, as (A, B), in log order.
fn decisions(log: &str) -> Vec<(u32, u32)> {
    lines_with(log, "autoscale: workers ")
        .iter()
        .map(|l| {
            let rest = l.split("autoscale: workers ").nth(1).unwrap();
            let (a, b) = rest.split_once(" -> ").unwrap();
            let b: String = b.chars().take_while(char::is_ascii_digit).collect();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect()
}

#[test]
fn grows_to_max_on_a_backlog_and_back_to_min_once_idle_with_every_job_finished() {
    let redis = RedisServer::start();
    let file = autoscaled(1, 4);
    let sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    wait_workers(&mut con, 1);
    // 40 queued jobs want ceil(40 / 5) = 8 workers: capped at max = 4.
    let ids: Vec<String> = (0..40)
        .map(|_| rs_enqueue(&mut con, "q", "rq.builtin.sleep", json!([0.25])))
        .collect();
    let t0 = Instant::now();
    let mut most = 0;
    wait_until("4 workers", WAIT, || {
        most = most.max(workers_on(&mut con, "q").len());
        most == 4
    });
    // "Within about a second": a generous bound, so a loaded machine does not flake.
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    for id in &ids {
        let end = wait_status(&mut con, id, &["finished", "failed"]);
        most = most.max(workers_on(&mut con, "q").len());
        assert_eq!(end, "finished", "{id}\n{}", sup.log());
    }
    wait_until("back to min", WAIT, || workers_on(&mut con, "q").len() == 1);
    assert!(most <= 4, "never above max (saw {most})");
    let log = sup.log();
    let d = decisions(&log);
    // No flapping: up (as the jobs arrive) to max, then only down, to min.
    let first_down = d.iter().position(|(a, b)| b < a).expect("a scale-down");
    assert!(
        first_down > 0 && d[..first_down].iter().all(|(a, b)| b > a),
        "{d:?}\n{log}"
    );
    assert_eq!(d[first_down - 1].1, 4, "up to max: {d:?}");
    assert!(d[first_down..].iter().all(|(a, b)| b < a), "{d:?}");
    assert_eq!(d.last().map(|(_, b)| *b), Some(1));
    assert!(
        log.contains("queued on q (ceil("),
        "each decision says why: {log}"
    );
    assert!(!log.contains("crash cleanup"), "no worker died: {log}");
    let st = status_json(&file);
    let work = pool_status(&st, "work");
    assert_eq!(work["jobs_finished"], 40, "{st}");
    assert_eq!(work["autoscale"]["max"], 4);
}

#[test]
fn a_pool_at_zero_starts_a_worker_for_the_first_job_and_goes_back_to_zero() {
    let redis = RedisServer::start();
    let file = autoscaled(0, 2);
    let sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    wait_until("the supervisor to answer", WAIT, || {
        control(&file, &["status"]).status.success()
    });
    let st = status_json(&file);
    let work = pool_status(&st, "work");
    assert_eq!(
        (work["desired"].as_u64(), work["running"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(work["degraded"].is_null(), "idle, not degraded: {st}");
    assert!(workers(&mut con).is_empty());
    let t0 = Instant::now();
    let id = rs_enqueue(&mut con, "q", "rq.builtin.noop", json!([]));
    wait_status(&mut con, &id, &["finished"]);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert!(
        sup.log()
            .contains("autoscale: workers 0 -> 1: 1 queued on q"),
        "{}",
        sup.log()
    );
    wait_until("back to no worker", WAIT, || workers(&mut con).is_empty());
    wait_until("status to show the pool at zero", WAIT, || {
        let st = status_json(&file);
        let w = pool_status(&st, "work");
        w["desired"] == 0 && w["running"] == 0 && w["degraded"].is_null()
    });
}
