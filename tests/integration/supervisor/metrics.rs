//! `/metrics` and `/healthz`: the page read over a real TCP connection and parsed by the
//! Python `prometheus_client` OpenMetrics parser, its numbers checked against Redis and the
//! processes; `/healthz` turning 503 when a pool degrades and when Redis stops; slow
//! clients stalling nothing; no password on any page.

use std::io::Write;
use std::process::Stdio;

use crate::support::supervisor::*;
use crate::support::*;
use nix::sys::signal::Signal;
use serde_json::json;

fn file_with(port: u16, pools: &str) -> PoolFile {
    PoolFile::new(&format!(
        "[supervisor]\nmetrics = \"127.0.0.1:{port}\"\nhealth_interval = \"500ms\"\n\
         [worker]\nbuiltin_handlers = true\n{pools}"
    ))
}

/// `main`'s workers count as started at once, so a kill is always a `crashed` restart.
const TWO_POOLS: &str = "[pools.main]\nqueues = [\"a\"]\nworkers = 2\n[pools.main.restart]\nmin_uptime = \"10ms\"\n\
                         [pools.held]\nqueues = [\"h\"]\n";

/// Every sample of a page, as the Python parser reads it (it refuses a malformed page).
fn parse(page: &str) -> Vec<serde_json::Value> {
    let mut child = std::process::Command::new(python_bin())
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let json = stdout_of_success(&format!("parse_metrics.py on\n{page}"), &out);
    serde_json::from_str::<serde_json::Value>(&json)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The value of the sample `name` whose labels include `labels`.
fn value(samples: &[serde_json::Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .and_then(|s| s["value"].as_f64())
}

fn scrape(addr: &str) -> Vec<serde_json::Value> {
    parse(&wait_http(addr, "/metrics", 200))
}

#[test]
fn the_metrics_page_parses_and_its_numbers_match_redis_and_the_processes() {
    let redis = RedisServer::start();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let file = file_with(port, TWO_POOLS);
    let _sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    wait_workers(&mut con, 3);
    let mut ids: Vec<String> = (0..3)
        .map(|_| rs_enqueue(&mut con, "a", "rq.builtin.noop", json!([])))
        .collect();
    ids.extend((0..2).map(|_| rs_enqueue(&mut con, "a", "rq.builtin.fail", json!(["no"]))));
    for id in &ids {
        wait_status(&mut con, id, &["finished", "failed"]);
    }
    control_ok(&file, &["pause", "held"]);
    wait_until("held's worker paused", WAIT, || {
        pool_status(&status_json(&file), "held")["paused_workers"] == 1
    });
    for _ in 0..4 {
        rs_enqueue(&mut con, "h", "rq.builtin.noop", json!([]));
    }
    let mut m = Vec::new();
    wait_until(
        "the page to show the jobs, the queue and the memory",
        WAIT,
        || {
            m = scrape(&addr);
            value(
                &m,
                "rq_supervisor_jobs_total",
                &[("pool", "main"), ("outcome", "finished")],
            ) == Some(3.0)
                && value(&m, "rq_queue_length", &[("queue", "h")]) == Some(4.0)
                && value(&m, "rq_supervisor_pool_rss_bytes", &[("pool", "main")])
                    .is_some_and(|b| b > 0.0)
        },
    );
    let find = |name: &str, labels: &[(&str, &str)]| {
        value(&m, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} in {m:?}"))
    };
    assert_eq!(
        find(
            "rq_supervisor_jobs_total",
            &[("pool", "main"), ("outcome", "failed")]
        ),
        2.0
    );
    assert_eq!(
        find("rq_queue_length", &[("queue", "h")]),
        llen(&mut con, "rq:queue:h") as f64
    );
    assert_eq!(find("rq_queue_length", &[("queue", "a")]), 0.0);
    assert!(find("rq_queue_oldest_job_age_seconds", &[("queue", "h")]) >= 0.0);
    assert_eq!(
        find(
            "rq_supervisor_workers",
            &[("pool", "main"), ("state", "idle")]
        ),
        2.0
    );
    assert_eq!(
        find(
            "rq_supervisor_workers",
            &[("pool", "held"), ("state", "paused")]
        ),
        1.0
    );
    assert_eq!(
        find(
            "rq_supervisor_workers",
            &[("pool", "main"), ("state", "busy")]
        ),
        0.0
    );
    assert_eq!(
        find("rq_supervisor_pool_desired_workers", &[("pool", "main")]),
        2.0
    );
    assert_eq!(
        find("rq_supervisor_pool_degraded", &[("pool", "main")]),
        0.0
    );
    assert_eq!(find("rq_supervisor_pool_paused", &[("pool", "held")]), 1.0);
    assert_eq!(
        find("rq_supervisor_pool_backlog_jobs", &[("pool", "held")]),
        4.0
    );
    assert_eq!(find("rq_supervisor_redis_up", &[]), 1.0);
    // Memory: what /proc says of the workers (and horses), within a reading's drift.
    let rss: u64 = workers_on(&mut con, "a")
        .iter()
        .filter_map(|p| rq_supervisor::procfs::tree_rss(*p))
        .sum();
    let shown = find("rq_supervisor_pool_rss_bytes", &[("pool", "main")]);
    assert!(
        (shown - rss as f64).abs() < rss as f64 * 0.5,
        "{shown} vs /proc's {rss}"
    );
    // A killed worker is a restart with its reason.
    let victim = workers_on(&mut con, "a")[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    wait_until("the restart counted", WAIT, || {
        value(
            &scrape(&addr),
            "rq_supervisor_restarts_total",
            &[("pool", "main"), ("reason", "crashed")],
        ) == Some(1.0)
    });
}

#[test]
fn healthz_turns_503_when_a_pool_degrades() {
    let redis = RedisServer::start();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let file = PoolFile::new("");
    let flag = file.dir.path().join("break");
    // A worker program that, once the flag exists, says its environment cannot run jobs.
    let program = file.script(
        "worker.sh",
        &format!(
            "#!/bin/sh\n[ -e {} ] && exit 3\nexec {} \"$@\"\n",
            flag.display(),
            env!("CARGO_BIN_EXE_rqworker")
        ),
    );
    file.rewrite(&format!(
        "[supervisor]\nmetrics = \"{addr}\"\n[pools.main]\nqueues = [\"a\"]\n\
         [pools.fragile]\nqueues = [\"f\"]\nprogram = {}\n",
        toml_str(program.display().to_string())
    ));
    let _sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    wait_workers(&mut con, 2);
    let ok = wait_http(&addr, "/healthz", 200);
    assert!(ok.starts_with("ok: 2 pool(s)"), "{ok}");
    std::fs::write(&flag, "").unwrap();
    let victim = workers_on(&mut con, "f")[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let body = wait_http(&addr, "/healthz", 503);
    assert!(
        body.contains("pool fragile is degraded") && body.contains("exit status 3"),
        "{body}"
    );
    assert!(
        !body.contains("main"),
        "the healthy pool is not named: {body}"
    );
    let m = scrape(&addr);
    assert_eq!(
        value(&m, "rq_supervisor_pool_degraded", &[("pool", "fragile")]),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "rq_supervisor_pool_degraded", &[("pool", "main")]),
        Some(0.0)
    );
}

#[test]
fn healthz_turns_503_while_redis_is_down_and_no_page_holds_the_password() {
    let mut redis = RedisServer::start();
    let url = redis.acl_user("rq", "s3cret-pw", &["~rq:*", "&*", "+@all"]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let file = file_with(port, "[pools.main]\nqueues = [\"a\"]\n");
    let _sup = Supervisor::at(&url, &file).spawn();
    let mut con = redis.con();
    wait_workers(&mut con, 1);
    wait_http(&addr, "/healthz", 200);
    let pages = [
        wait_http(&addr, "/metrics", 200),
        control_ok(&file, &["status"]),
        control_ok(&file, &["status", "--json"]),
    ];
    for page in &pages {
        assert!(!page.contains("s3cret-pw"), "a password shown:\n{page}");
    }
    assert!(pages[1].contains("unix://"), "{}", pages[1]);
    redis.stop();
    let body = wait_http(&addr, "/healthz", 503);
    assert!(body.contains("does not answer"), "{body}");
    assert!(!body.contains("s3cret-pw"), "{body}");
    assert_eq!(
        value(&scrape(&addr), "rq_supervisor_redis_up", &[]),
        Some(0.0)
    );
    redis.restart();
    redis.acl_user("rq", "s3cret-pw", &["~rq:*", "&*", "+@all"]);
    wait_http(&addr, "/healthz", 200);
}

#[test]
fn slow_clients_stall_neither_restarts_nor_other_requests() {
    let redis = RedisServer::start();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let file = file_with(port, "[pools.main]\nqueues = [\"a\"]\n");
    let _sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    let old = wait_workers(&mut con, 1)[0].1;
    // A scrape that never finishes its request, one that never reads its answer, and a
    // control client that never sends anything.
    let mut half = std::net::TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut deaf = std::net::TcpStream::connect(&addr).unwrap();
    for _ in 0..50 {
        deaf.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
    }
    let socket = std::fs::read_dir(file.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "sock"))
        .unwrap();
    let _silent = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    wait_until("the killed worker replaced", WAIT, || {
        workers(&mut con).iter().any(|(_, p)| *p != old)
    });
    assert_eq!(wait_http(&addr, "/healthz", 200).lines().count(), 1);
    assert!(control_ok(&file, &["status"]).contains("main"));
    let (code, _) = http_get(&addr, "/nope").unwrap();
    assert_eq!(code, 404);
}

/// Clients that never finish their request hold a thread for the request deadline, not for
/// ever; and running out of files (accept failing with EMFILE) pauses the service, never
/// ends it. Both stopped /healthz for good with the HTTP server used before.
#[test]
fn clients_that_hold_connections_and_a_file_limit_never_end_the_service() {
    let redis = RedisServer::start();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let file = file_with(port, "[pools.main]\nqueues = [\"a\"]\n");
    let sup = Supervisor::new(&redis, &file).spawn();
    wait_http(&addr, "/healthz", 200);
    // More half-sent requests than the server serves at once: each is dropped at its
    // deadline, and a health check gets through while they are all still open here.
    let mut held: Vec<std::net::TcpStream> = (0..12)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    wait_http(&addr, "/healthz", 200);
    let first = &mut held[0];
    first
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut rest = Vec::new();
    use std::io::Read;
    first
        .read_to_end(&mut rest)
        .expect("the server closed the half-sent request");
    // The file limit: a soft RLIMIT_NOFILE just above what the supervisor holds now, then
    // connections until accept fails.
    let pid = sup.pid().as_raw();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft: usize = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .expect("the soft file limit");
    let set = |soft: usize| {
        let out = std::process::Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
            .output()
            .unwrap();
        assert!(out.status.success(), "prlimit: {out:?}");
    };
    set(open + 2);
    let flood: Vec<_> = (0..10)
        .filter_map(|_| std::net::TcpStream::connect(&addr).ok())
        .collect();
    sup.wait_for_log("cannot accept connections");
    assert!(
        sup.log().contains("open-file limit is reached"),
        "{}",
        sup.log()
    );
    drop(flood);
    drop(held);
    set(soft);
    wait_http(&addr, "/healthz", 200);
    sup.wait_for_log("accepting connections again");
    assert_eq!(
        lines_with(&sup.log(), "cannot accept connections").len(),
        1,
        "one line per streak: {}",
        sup.log()
    );
}
