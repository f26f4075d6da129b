//! Interop with the real Python RQ 2.12: Python enqueues and reads results of jobs our worker
//! runs, `rq info` and `Worker.all()` see our worker, a Python worker and ours drain one queue
//! together, and jobs from the Rust producer read back identically in Python and run on a
//! Python worker.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use crate::support::*;
use nix::sys::signal::Signal;
use serde_json::{Map, Value, json};

/// A Python module the Python worker can import (`dir` goes on its import path).
fn python_tasks(dir: &Path, runs: &Path) {
    std::fs::write(
        dir.join("ptasks.py"),
        format!(
            "import time\n\
             def ident(n):\n    time.sleep(0.01)\n    open({runs:?}, 'a').write('%d\\n' % n)\n    return {{'by': 'python', 'n': n}}\n\
             def describe(*args, **kwargs):\n    return {{'args': list(args), 'kwargs': kwargs}}\n",
            runs = runs.display().to_string()
        ),
    )
    .unwrap();
}

#[test]
fn python_enqueued_jobs_run_and_python_reads_the_return_values() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let mirror = write_script(
        dir.path(),
        "mirror.py",
        &format!(
            "#!{}\nimport json, sys\ndoc = json.load(sys.stdin)\n\
             print(json.dumps({{'args': doc['args'], 'kwargs': doc['kwargs']}}))\n",
            python_exe()
        ),
    );
    let cfg = write_config(
        dir.path(),
        &format!(
            "[handlers.\"tasks.mirror\"]\ncommand = [{}]\n",
            toml_str(mirror.display().to_string())
        ),
    );
    let args = json!([
        1,
        "x",
        "ünïcødé 😀 ✓",
        {"nested": [1, {"deep": null, "f": 2.5}]},
        [true, false],
        -7,
        1.5,
        ""
    ]);
    let kwargs = json!({"k": "v", "emoji": "😀", "list": [1, [2, 3]], "none": null});
    let mirrored = py_enqueue(
        &redis,
        "default",
        "tasks.mirror",
        &args.to_string(),
        &kwargs.to_string(),
        "{}",
    );
    let echoed = py_enqueue_args(&redis, "default", "rq.builtin.echo", &args.to_string());
    let nothing = py_enqueue_args(&redis, "default", "rq.builtin.noop", "[]");
    let mut w = Rqworker::new(&redis)
        .config(&cfg)
        .builtin_handlers()
        .burst()
        .name("rsw")
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());

    let r = py_json(&redis, &["result", &mirrored]);
    assert_eq!(r["status"], "finished", "{r}");
    assert_eq!(r["type"], "SUCCESSFUL");
    assert_eq!(r["return_value"], json!({"args": args, "kwargs": kwargs}));
    assert_eq!(r["worker_name"], "rsw");
    let r = py_json(&redis, &["result", &echoed]);
    assert_eq!(r["status"], "finished");
    assert_eq!(r["return_value"], args);
    let r = py_json(&redis, &["result", &nothing]);
    assert_eq!(r["status"], "finished");
    assert_eq!(r["return_value"], Value::Null);
    assert_eq!(
        py_json(&redis, &["status", &mirrored, &echoed, &nothing]),
        json!(["finished", "finished", "finished"])
    );
}

#[test]
fn big_integers_from_python_are_not_silently_changed() {
    // Python ints have no size limit and its JSON writes them as digits. A worker must either
    // hand them back unchanged or fail the job; turning 2**70 into a float loses data.
    let redis = RedisServer::start();
    let id = py_enqueue_args(
        &redis,
        "default",
        "rq.builtin.echo",
        "[1180591620717411303424]",
    );
    let mut w = Rqworker::new(&redis)
        .builtin_handlers()
        .burst()
        .name("rsw")
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    let out = python(&redis, "rqtool.py", &["result", &id]);
    // Compare the text: serde_json in this test would itself round 2**70 to a float.
    if out.contains("\"status\": \"finished\"") {
        assert!(
            out.contains("\"return_value\": [1180591620717411303424]"),
            "2**70 came back changed: {out}"
        );
    } else {
        assert!(out.contains("\"status\": \"failed\""), "{out}");
    }
}

#[test]
fn a_failing_job_shows_failed_and_its_message_in_python() {
    let redis = RedisServer::start();
    let id = py_enqueue_args(
        &redis,
        "default",
        "rq.builtin.fail",
        r#"["payment declined: card 4242"]"#,
    );
    let mut w = Rqworker::new(&redis)
        .builtin_handlers()
        .burst()
        .name("rsw")
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    let r = py_json(&redis, &["result", &id]);
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["type"], "FAILED");
    assert!(
        r["exc_string"]
            .as_str()
            .unwrap()
            .contains("payment declined: card 4242"),
        "{r}"
    );
    assert_eq!(r["return_value"], Value::Null);
    assert_eq!(r["worker_name"], "rsw");
}

/// The `rq info` line for worker `name`, if listed.
fn info_line(info: &str, name: &str) -> Option<String> {
    info.lines()
        .find(|l| l.starts_with(&format!("{name} (")))
        .map(str::to_string)
}

#[test]
fn rq_info_and_worker_all_list_a_running_worker_and_forget_it_after_death() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let cfg = write_config(dir.path(), &gate_handler(dir.path()));
    let mut w = Rqworker::new(&redis)
        .config(&cfg)
        .name("w-interop")
        .queues(["high", "low"])
        .spawn();
    w.wait_for_log("Listening for work");
    let mut con = redis.con();
    wait_worker_state(&mut con, "w-interop", "idle");

    let info = rq_info(&redis, &[]);
    let line = info_line(&info, "w-interop").unwrap_or_else(|| panic!("not listed:\n{info}"));
    assert!(line.contains(&format!("{} ", hostname())), "{line}");
    assert!(line.contains(&format!(" {})", w.pid())), "{line}");
    assert!(line.contains(": idle high, low."), "{line}");
    assert!(line.contains("jobs: 0 finished, 0 failed"), "{line}");

    let workers = py_json(&redis, &["workers"]);
    assert_eq!(workers.as_array().unwrap().len(), 1, "{workers}");
    let pw = &workers[0];
    assert_eq!(pw["name"], "w-interop");
    assert_eq!(pw["queues"], json!(["high", "low"]));
    assert_eq!(pw["state"], "idle");
    assert_eq!(pw["pid"], json!(w.pid().as_raw()));
    assert_eq!(pw["hostname"], hostname());
    assert!(
        pw["birth_date"].is_string() && pw["last_heartbeat"].is_string(),
        "{pw}"
    );

    // Busy, and Python shows which state.
    let open = dir.path().join("open");
    let id = rs_enqueue(
        &mut con,
        "low",
        "tasks.gate",
        json!([open.display().to_string()]),
    );
    wait_status(&mut con, &id, &["started"]);
    let info = rq_info(&redis, &[]);
    let line = info_line(&info, "w-interop").unwrap_or_else(|| panic!("not listed:\n{info}"));
    assert!(line.contains(": busy high, low."), "{line}");
    assert_eq!(py_json(&redis, &["workers"])[0]["state"], "busy");
    std::fs::write(&open, "").unwrap();
    wait_status(&mut con, &id, &["finished"]);
    wait_worker_state(&mut con, "w-interop", "idle");
    let info = rq_info(&redis, &[]);
    let line = info_line(&info, "w-interop").unwrap_or_else(|| panic!("not listed:\n{info}"));
    assert!(line.contains("jobs: 1 finished, 0 failed"), "{line}");
    assert_eq!(py_json(&redis, &["workers"])[0]["successful_job_count"], 1);

    w.signal(Signal::SIGTERM);
    assert!(w.wait_exit(WAIT).success());
    let info = rq_info(&redis, &[]);
    assert!(
        info_line(&info, "w-interop").is_none(),
        "still listed:\n{info}"
    );
    assert!(info.contains("0 workers"), "{info}");
    assert_eq!(py_json(&redis, &["workers"]), json!([]));
}

#[test]
fn a_python_worker_and_ours_drain_one_queue_together_without_duplicates_or_losses() {
    const JOBS: usize = 200;
    let redis = RedisServer::start();
    let dir = temp_dir();
    let runs = dir.path().join("runs.txt");
    python_tasks(dir.path(), &runs);
    let script = write_script(
        dir.path(),
        "ident.sh",
        &format!(
            "#!/bin/sh\nsleep 0.01\necho \"$1\" >> {}\necho \"{{\\\"by\\\": \\\"rust\\\", \\\"n\\\": $1}}\"\n",
            runs.display()
        ),
    );
    let cfg = write_config(
        dir.path(),
        &format!(
            "[handlers.\"ptasks.ident\"]\ncommand = [{}]\n",
            toml_str(script.display().to_string())
        ),
    );
    let ids: Vec<String> = serde_json::from_value(py_json(
        &redis,
        &["enqueue-many", "q", "ptasks.ident", "200"],
    ))
    .unwrap();
    assert_eq!(ids.len(), JOBS);

    let mut con = redis.con();
    let mut py = python_worker(&redis, dir.path(), &["--burst", "--name", "pyw", "q"]);
    // Start ours once the Python worker is up, so that both really take part.
    wait_until("the Python worker's birth", WAIT, || {
        exists(&mut con, "rq:worker:pyw")
    });
    let mut rs = Rqworker::new(&redis)
        .config(&cfg)
        .burst()
        .name("rsw")
        .queues(["q"])
        .spawn();
    assert!(rs.wait_exit(WAIT * 3).success(), "{}", rs.log());
    assert!(py.wait_exit(WAIT * 3).success(), "{}", py.log());

    let mut by: HashMap<String, usize> = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            job_status(&mut con, id).as_deref(),
            Some("finished"),
            "job {i}"
        );
        let entries = results(&mut con, id);
        assert_eq!(entries.len(), 1, "job {i} has {} results", entries.len());
        let fields = &entries[0].1;
        let value = decode_return_value(&fields["return_value"]);
        assert_eq!(value["n"], json!(i), "job {i}: {value}");
        let who = value["by"].as_str().unwrap().to_string();
        let expected_worker = if who == "rust" { "rsw" } else { "pyw" };
        assert_eq!(
            String::from_utf8_lossy(&fields["worker_name"]),
            expected_worker,
            "job {i}"
        );
        assert_eq!(
            hget(&mut con, &format!("rq:job:{id}"), "worker_name").as_deref(),
            Some(expected_worker)
        );
        *by.entry(who).or_default() += 1;
    }
    let (rust, python) = (
        by.get("rust").copied().unwrap_or(0),
        by.get("python").copied().unwrap_or(0),
    );
    assert_eq!(rust + python, JOBS);
    assert!(
        rust > 0 && python > 0,
        "both workers must take part: {by:?}"
    );

    // Every job ran exactly once, counted by the programs themselves.
    let mut count = vec![0; JOBS];
    for line in std::fs::read_to_string(&runs).unwrap().lines() {
        count[line.trim().parse::<usize>().unwrap()] += 1;
    }
    let wrong: Vec<(usize, i32)> = count
        .iter()
        .enumerate()
        .filter(|(_, c)| **c != 1)
        .map(|(i, c)| (i, *c))
        .collect();
    assert!(
        wrong.is_empty(),
        "jobs not run exactly once (job, runs): {wrong:?}"
    );

    assert_eq!(zrange(&mut con, "rq:finished:q").len(), JOBS);
    assert!(zrange(&mut con, "rq:failed:q").is_empty());
    assert!(zrange(&mut con, "rq:wip:q").is_empty());
    assert!(!exists(&mut con, "rq:queue:q"));
    let count_of = |con: &mut redis::Connection, w: &str| {
        hget(con, &format!("rq:worker:{w}"), "successful_job_count")
            .map(|c| c.parse::<usize>().unwrap())
            .unwrap_or(0)
    };
    assert_eq!(count_of(&mut con, "rsw"), rust);
    assert_eq!(count_of(&mut con, "pyw"), python);
}

#[test]
fn rust_producer_jobs_read_back_like_python_ones_and_run_on_a_python_worker() {
    use rq_supervisor::producer::{EnqueueOptions, enqueue};
    let redis = RedisServer::start();
    let dir = temp_dir();
    python_tasks(dir.path(), &dir.path().join("runs.txt"));
    let mut con = redis.con();
    let args =
        json!([1, "x", "it's \"quoted\"", "ünï 😀", 2.5, 1e20, null, true, {"a": [1]}, [[]]]);
    let kwargs = json!({"alpha": "v", "beta": [1, 2], "gamma": null});
    let meta = json!({"m": 1, "u": "ü"});
    let opts = EnqueueOptions {
        job_id: Some("rust-job-1".into()),
        timeout: Some(77),
        result_ttl: Some(1000),
        failure_ttl: Some(2000),
        meta: Some(meta.as_object().unwrap().clone()),
        ..Default::default()
    };
    let id = enqueue(
        &mut con,
        "q",
        "ptasks.describe",
        args.as_array().unwrap().clone(),
        kwargs.as_object().unwrap().clone(),
        &opts,
    )
    .unwrap();
    assert_eq!(id, "rust-job-1");
    // The same call enqueued by Python, for comparison.
    let py_id = py_enqueue(
        &redis,
        "pyq",
        "ptasks.describe",
        &args.to_string(),
        &kwargs.to_string(),
        &json!({"timeout": 77, "result_ttl": 1000, "failure_ttl": 2000, "meta": meta}).to_string(),
    );
    let ours = py_json(&redis, &["fetch", &id]);
    let theirs = py_json(&redis, &["fetch", &py_id]);
    for field in [
        "func_name",
        "args",
        "kwargs",
        "description",
        "timeout",
        "result_ttl",
        "failure_ttl",
        "meta",
        "status",
    ] {
        assert_eq!(ours[field], theirs[field], "field {field}");
    }
    assert_eq!(ours["origin"], "q");
    assert_eq!(ours["args"], args);
    assert_eq!(ours["meta"], meta);
    assert_eq!(ours["timeout"], 77);
    assert!(ours["enqueued_at"].is_string(), "{ours}");
    // The payload is byte-for-byte the JSON Python writes.
    let inflate = |con: &mut redis::Connection, id: &str| {
        use std::io::Read;
        let data: Vec<u8> = redis::cmd("HGET")
            .arg(format!("rq:job:{id}"))
            .arg("data")
            .query(con)
            .unwrap();
        let mut text = String::new();
        flate2::read::ZlibDecoder::new(&data[..])
            .read_to_string(&mut text)
            .unwrap();
        text
    };
    assert_eq!(inflate(&mut con, &id), inflate(&mut con, &py_id));
    let raw_meta =
        |con: &mut redis::Connection, id: &str| hget(con, &format!("rq:job:{id}"), "meta");
    assert_eq!(raw_meta(&mut con, &id), raw_meta(&mut con, &py_id));
    assert!(smembers(&mut con, "rq:queues").contains(&"rq:queue:q".to_string()));

    // A Python worker runs it.
    let mut py = python_worker(&redis, dir.path(), &["--burst", "--name", "pyw", "q"]);
    assert!(py.wait_exit(WAIT * 2).success(), "{}", py.log());
    let r = py_json(&redis, &["result", &id]);
    assert_eq!(r["status"], "finished", "{r}\n{}", py.log());
    let mut expected = Map::new();
    expected.insert("args".into(), args);
    expected.insert("kwargs".into(), kwargs);
    assert_eq!(r["return_value"], Value::Object(expected));
    assert_eq!(r["worker_name"], "pyw");
}

#[test]
fn the_installed_python_rq_is_2_12() {
    // Guards the interop tests above against a missing or wrong rq install.
    let out = Command::new(python_bin())
        .args(["-c", "import rq; print(rq.__version__)"])
        .output()
        .expect("python3");
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.starts_with("2.12"), "Python rq {version}");
}

#[test]
fn python_rq_commands_stop_a_job_kill_a_horse_and_shut_the_worker_down() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let mut w = Rqworker::new(&redis)
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    w.wait_for_log("Listening for work");

    // stop-job: status `stopped`, a type-2 result with RQ's text, the failed registry.
    let stopped = rs_enqueue(&mut con, "q", "rq.builtin.sleep", json!([30]));
    wait_status(&mut con, &stopped, &["started"]);
    let horse = wait_horse(&w);
    py_json(&redis, &["send", "stop-job", &stopped]);
    wait_status(&mut con, &stopped, &["stopped", "failed", "finished"]);
    assert_eq!(job_status(&mut con, &stopped).as_deref(), Some("stopped"));
    assert_eq!(
        latest_exc(&mut con, &stopped),
        "Job stopped by user, work-horse terminated."
    );
    assert!(zscore(&mut con, "rq:failed:q", &stopped).is_some());
    assert!(!alive(horse));
    assert_eq!(py_json(&redis, &["status", &stopped]), json!(["stopped"]));

    // kill-horse: RQ's crash text.
    let killed = rs_enqueue(&mut con, "q", "rq.builtin.sleep", json!([30]));
    wait_status(&mut con, &killed, &["started"]);
    py_json(&redis, &["send", "kill-horse", "w"]);
    wait_status(&mut con, &killed, &["failed", "finished"]);
    assert!(
        latest_exc(&mut con, &killed)
            .starts_with("Work-horse terminated unexpectedly; waitpid returned 9 (signal 9); "),
        "{}",
        latest_exc(&mut con, &killed)
    );

    // The worker still works, then shuts down on request.
    let next = rs_enqueue(&mut con, "q", "rq.builtin.noop", json!([]));
    wait_status(&mut con, &next, &["finished"]);
    py_json(&redis, &["send", "shutdown", "w"]);
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert!(hget(&mut con, "rq:worker:w", "death").is_some());
}

#[test]
fn rust_producer_descriptions_escape_non_printable_characters_like_python_repr() {
    // Python's repr escapes every character that is not printable (C1 controls, no-break
    // space, zero-width and line-separator characters...), not only ASCII controls.
    let redis = RedisServer::start();
    let mut con = redis.con();
    let args = json!([
        "tab\there",
        "a\u{200b}b",
        "\u{85}",
        "nb\u{a0}sp",
        "line\u{2028}sep",
        "é😀"
    ]);
    let ours = rs_enqueue(&mut con, "q", "tasks.f", args.clone());
    let theirs = py_enqueue_args(&redis, "q", "tasks.f", &args.to_string());
    let desc = |con: &mut redis::Connection, id: &str| {
        hget(con, &format!("rq:job:{id}"), "description").unwrap()
    };
    assert_eq!(desc(&mut con, &ours), desc(&mut con, &theirs));
}

#[test]
fn a_burst_worker_obeys_stop_job_and_shutdown_commands_too() {
    // Python RQ subscribes to rq:pubsub:<worker> in burst mode as well, so a long job in a
    // burst run can be stopped and the run shut down.
    let redis = RedisServer::start();
    let mut con = redis.con();
    let long = rs_enqueue(&mut con, "q", "rq.builtin.sleep", json!([60]));
    let second = rs_enqueue(&mut con, "q", "rq.builtin.sleep", json!([60]));
    let third = rs_enqueue(&mut con, "q", "rq.builtin.noop", json!([]));
    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    wait_status(&mut con, &long, &["started"]);
    py_json(&redis, &["send", "stop-job", &long]);
    wait_until("the stop-job command to stop the job", WAIT, || {
        job_status(&mut con, &long).as_deref() == Some("stopped")
    });
    wait_status(&mut con, &second, &["started"]);
    py_json(&redis, &["send", "shutdown", "w"]);
    wait_until("shutdown_requested_date", WAIT, || {
        hget(&mut con, "rq:worker:w", "shutdown_requested_date").is_some()
    });
    // A warm shutdown: the worker waits for the running job (ended here by kill-horse)
    // and does not take the next one.
    py_json(&redis, &["send", "kill-horse", "w"]);
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert_eq!(job_status(&mut con, &second).as_deref(), Some("failed"));
    assert_eq!(job_status(&mut con, &third).as_deref(), Some("queued"));
}

#[test]
fn a_dependent_job_is_enqueued_and_run_once_its_dependency_finishes() {
    // RQ 2.12: q.enqueue(..., depends_on=a) defers the job; the worker that finishes `a`
    // enqueues it (protocol notes §7.11).
    let redis = RedisServer::start();
    let mut con = redis.con();
    let a = py_enqueue_args(&redis, "q", "rq.builtin.echo", r#"["a"]"#);
    let b = py_enqueue(
        &redis,
        "q",
        "rq.builtin.echo",
        r#"["b"]"#,
        "{}",
        &json!({ "depends_on": a }).to_string(),
    );
    assert_eq!(job_status(&mut con, &b).as_deref(), Some("deferred"));
    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert_eq!(job_status(&mut con, &a).as_deref(), Some("finished"));
    assert_eq!(
        job_status(&mut con, &b).as_deref(),
        Some("finished"),
        "the dependent never ran:\n{}",
        w.log()
    );
    assert!(zrange(&mut con, "rq:deferred:q").is_empty());
}
