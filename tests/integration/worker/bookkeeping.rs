//! Redis bookkeeping exactly as RQ 2.12 writes it, checked on the raw keys: job hash fields and
//! timestamps, result stream entries, registries and their scores, result and failure TTLs,
//! the started registry and execution records while a job runs, and the worker hash.

use std::collections::HashMap;

use crate::support::*;
use nix::sys::signal::Signal;
use serde_json::json;

fn is_hex32(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

fn text(fields: &HashMap<String, Vec<u8>>, name: &str) -> String {
    String::from_utf8(
        fields
            .get(name)
            .unwrap_or_else(|| panic!("no field {name}"))
            .clone(),
    )
    .unwrap()
}

/// A score that should be `now + ttl`: within a few seconds of it.
fn assert_score_near(what: &str, score: Option<String>, expected: f64) {
    let score: f64 = score
        .unwrap_or_else(|| panic!("{what}: not in the registry"))
        .parse()
        .unwrap();
    assert!(
        (score - expected).abs() <= 5.0,
        "{what}: score {score}, expected about {expected}"
    );
}

fn assert_ttl_near(con: &mut redis::Connection, key: &str, expected: i64) {
    let t = ttl(con, key);
    assert!(
        t <= expected && t >= expected - 10,
        "TTL of {key} is {t}, expected about {expected}"
    );
}

#[test]
fn a_finished_job_is_recorded_as_rq_records_it() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let id = py_enqueue(
        &redis,
        "q",
        "rq.builtin.echo",
        r#"["a", 1, {"deep": [true, null]}]"#,
        "{}",
        r#"{"meta": {"m": 1, "note": "keep me"}}"#,
    );
    let key = format!("rq:job:{id}");
    redis::cmd("HSET")
        .arg(&key)
        .arg("x_unknown_field")
        .arg("left alone")
        .exec(&mut con)
        .unwrap();
    let before = hgetall(&mut con, &key);
    let data_before: Vec<u8> = redis::cmd("HGET")
        .arg(&key)
        .arg("data")
        .query(&mut con)
        .unwrap();

    let mut w = Rqworker::new(&redis)
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    wait_status(&mut con, &id, &["finished"]);
    // The settle step writes the job and the worker in one go; wait for the worker to be idle.
    wait_worker_state(&mut con, "w", "idle");
    let after_worker_settled = unix_now();

    // Job hash: only status, timestamps and worker_name change; meta and unknown fields stay.
    let job = hgetall(&mut con, &key);
    assert_eq!(job["status"], "finished");
    assert_eq!(job["worker_name"], "w");
    for f in ["started_at", "ended_at", "last_heartbeat"] {
        assert_rq_timestamp(f, &job[f]);
    }
    let (started, ended) = (rq_time(&job["started_at"]), rq_time(&job["ended_at"]));
    assert!(started <= ended && ended <= after_worker_settled + 1.0);
    assert!(after_worker_settled - started < 30.0);
    assert_eq!(job["meta"], r#"{"m": 1, "note": "keep me"}"#);
    for (k, v) in &before {
        if [
            "status",
            "started_at",
            "ended_at",
            "last_heartbeat",
            "worker_name",
            "data",
        ]
        .contains(&k.as_str())
        {
            continue;
        }
        assert_eq!(job.get(k), Some(v), "field {k} changed");
    }
    let data_after: Vec<u8> = redis::cmd("HGET")
        .arg(&key)
        .arg("data")
        .query(&mut con)
        .unwrap();
    assert_eq!(data_after, data_before, "data must not be rewritten");

    // Result stream: one type-1 entry, base64 JSON return value, execution fields.
    let entries = results(&mut con, &id);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let (_, r) = &entries[0];
    assert_eq!(text(r, "type"), "1");
    assert_eq!(text(r, "worker_name"), "w");
    assert_eq!(
        decode_return_value(&r["return_value"]),
        json!(["a", 1, {"deep": [true, null]}])
    );
    let eid = text(r, "execution_id");
    assert!(is_hex32(&eid), "execution_id {eid:?}");
    let exec_started: f64 = text(r, "execution_started_at").parse().unwrap();
    let exec_ended: f64 = text(r, "execution_ended_at").parse().unwrap();
    assert!(exec_started <= exec_ended, "{exec_started} > {exec_ended}");
    assert!((exec_started - started).abs() < 2.0);
    assert!((exec_ended - ended).abs() < 2.0);

    // Registries and TTLs: result_ttl defaults to 500.
    assert_score_near(
        "rq:finished:q",
        zscore(&mut con, "rq:finished:q", &id),
        ended + 500.0,
    );
    assert_ttl_near(&mut con, &key, 500);
    assert_ttl_near(&mut con, &format!("rq:results:{id}"), 500);
    assert!(zrange(&mut con, "rq:wip:q").is_empty());
    assert!(zrange(&mut con, "rq:failed:q").is_empty());
    assert!(!exists(&mut con, &format!("rq:execution:{id}:{eid}")));
    assert!(zrange(&mut con, &format!("rq:executions:{id}")).is_empty());
    assert!(!exists(&mut con, "rq:queue:q"));

    // Worker hash.
    let wh = hgetall(&mut con, "rq:worker:w");
    for f in ["birth", "last_heartbeat"] {
        assert_rq_timestamp(f, &wh[f]);
    }
    assert_eq!(wh["queues"], "q");
    assert_eq!(wh["pid"], w.pid().to_string());
    assert_eq!(wh["hostname"], hostname());
    assert!(!wh["ip_address"].is_empty());
    assert_eq!(wh["version"], "2.12.0");
    assert_eq!(wh["state"], "idle");
    assert_eq!(wh["successful_job_count"], "1");
    assert_eq!(
        wh.get("failed_job_count")
            .map(String::as_str)
            .unwrap_or("0"),
        "0"
    );
    let working: f64 = wh["total_working_time"].parse().unwrap();
    assert!(
        working > 0.0 && working < 30.0,
        "total_working_time {working}"
    );
    assert!(!wh.contains_key("current_job"), "{wh:?}");

    // Python reads the same job back.
    let py = py_json(&redis, &["result", &id]);
    assert_eq!(py["status"], "finished");
    assert_eq!(py["return_value"], json!(["a", 1, {"deep": [true, null]}]));
    assert_eq!(py["worker_name"], "w");
    let fetched = py_json(&redis, &["fetch", &id]);
    assert_eq!(fetched["meta"], json!({"m": 1, "note": "keep me"}));
    assert_eq!(fetched["worker_name"], "w");

    // Death: out of the sets, `death` written, the hash kept for 60 s.
    w.signal(Signal::SIGTERM);
    assert!(w.wait_exit(WAIT).success());
    let wh = hgetall(&mut con, "rq:worker:w");
    assert_rq_timestamp("death", &wh["death"]);
    assert!(smembers(&mut con, "rq:workers").is_empty());
    assert!(smembers(&mut con, "rq:workers:q").is_empty());
    assert_ttl_near(&mut con, "rq:worker:w", 60);
}

#[test]
fn a_failed_job_is_recorded_as_rq_records_it() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let id = py_enqueue(
        &redis,
        "q",
        "rq.builtin.fail",
        r#"["boom: it broke"]"#,
        "{}",
        r#"{"meta": {"keep": "yes"}}"#,
    );
    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    let key = format!("rq:job:{id}");
    let job = hgetall(&mut con, &key);
    assert_eq!(job["status"], "failed");
    assert_eq!(job["worker_name"], "w");
    assert_rq_timestamp("ended_at", &job["ended_at"]);
    assert_eq!(job["meta"], r#"{"keep": "yes"}"#);
    assert!(
        !job.contains_key("exc_info"),
        "2.x writes no exc_info: {job:?}"
    );
    let ended = rq_time(&job["ended_at"]);

    let entries = results(&mut con, &id);
    assert_eq!(entries.len(), 1);
    let (_, r) = &entries[0];
    assert_eq!(text(r, "type"), "2");
    assert_eq!(text(r, "worker_name"), "w");
    assert!(!r.contains_key("return_value"));
    assert!(is_hex32(&text(r, "execution_id")));
    text(r, "execution_started_at").parse::<f64>().unwrap();
    text(r, "execution_ended_at").parse::<f64>().unwrap();
    let exc = decode_exc_string(&r["exc_string"]);
    assert!(exc.contains("boom: it broke"), "{exc}");

    // Without failure_ttl: a year for the registry and the job, no TTL on the stream.
    assert_score_near(
        "rq:failed:q",
        zscore(&mut con, "rq:failed:q", &id),
        ended + 31_536_000.0,
    );
    assert_ttl_near(&mut con, &key, 31_536_000);
    assert_eq!(ttl(&mut con, &format!("rq:results:{id}")), -1);
    assert!(zrange(&mut con, "rq:finished:q").is_empty());
    assert!(zrange(&mut con, "rq:wip:q").is_empty());

    let wh = hgetall(&mut con, "rq:worker:w");
    assert_eq!(wh["failed_job_count"], "1");
    assert_eq!(
        wh.get("successful_job_count")
            .map(String::as_str)
            .unwrap_or("0"),
        "0"
    );

    let py = py_json(&redis, &["result", &id]);
    assert_eq!(py["status"], "failed");
    assert_eq!(py["type"], "FAILED");
    assert!(
        py["exc_string"]
            .as_str()
            .unwrap()
            .contains("boom: it broke")
    );
}

#[test]
fn failure_ttl_sets_the_failed_score_and_the_job_and_result_expiry() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let id = py_enqueue(
        &redis,
        "q",
        "rq.builtin.fail",
        r#"["x"]"#,
        "{}",
        r#"{"failure_ttl": 100}"#,
    );
    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("failed"));
    let ended = rq_time(&hget(&mut con, &format!("rq:job:{id}"), "ended_at").unwrap());
    assert_score_near(
        "rq:failed:q",
        zscore(&mut con, "rq:failed:q", &id),
        ended + 100.0,
    );
    assert_ttl_near(&mut con, &format!("rq:job:{id}"), 100);
    assert_ttl_near(&mut con, &format!("rq:results:{id}"), 100);
}

#[test]
fn result_ttl_custom_zero_forever_and_the_worker_default() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let echo = |opts: &str| py_enqueue(&redis, "q", "rq.builtin.echo", "[1]", "{}", opts);
    let custom = echo(r#"{"result_ttl": 1000}"#);
    let zero = echo(r#"{"result_ttl": 0}"#);
    let forever = echo(r#"{"result_ttl": -1}"#);
    let default = echo("{}");
    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .name("w")
        .opt("--results-ttl", "77")
        .queues(["q"])
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    let now = unix_now();

    assert_eq!(job_status(&mut con, &custom).as_deref(), Some("finished"));
    assert_score_near(
        "custom",
        zscore(&mut con, "rq:finished:q", &custom),
        now + 1000.0,
    );
    assert_ttl_near(&mut con, &format!("rq:job:{custom}"), 1000);
    assert_ttl_near(&mut con, &format!("rq:results:{custom}"), 1000);

    // 0: the job is deleted and nothing is kept.
    assert!(
        !exists(&mut con, &format!("rq:job:{zero}")),
        "result_ttl=0 deletes the job"
    );
    assert!(!exists(&mut con, &format!("rq:results:{zero}")));
    assert!(zscore(&mut con, "rq:finished:q", &zero).is_none());
    assert!(!exists(&mut con, &format!("rq:executions:{zero}")));

    // -1: persisted, score +inf.
    assert_eq!(job_status(&mut con, &forever).as_deref(), Some("finished"));
    assert_eq!(
        zscore(&mut con, "rq:finished:q", &forever).as_deref(),
        Some("inf")
    );
    assert_eq!(ttl(&mut con, &format!("rq:job:{forever}")), -1);
    assert_eq!(ttl(&mut con, &format!("rq:results:{forever}")), -1);
    assert_eq!(latest_return(&mut con, &forever), Some(json!([1])));

    // No result_ttl on the job: the worker's --results-ttl.
    assert_score_near(
        "default",
        zscore(&mut con, "rq:finished:q", &default),
        now + 77.0,
    );
    assert_ttl_near(&mut con, &format!("rq:job:{default}"), 77);
    assert_ttl_near(&mut con, &format!("rq:results:{default}"), 77);

    let wh = hgetall(&mut con, "rq:worker:w");
    assert_eq!(wh["successful_job_count"], "4", "result_ttl=0 still counts");
}

#[test]
fn a_running_job_is_in_the_started_registry_with_an_execution_record() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let cfg = write_config(dir.path(), &gate_handler(dir.path()));
    let gate = dir.path().join("open");
    let mut con = redis.con();
    // ttl: the job key expires while queued; the worker must persist it once started.
    let id = py_enqueue(
        &redis,
        "q",
        "tasks.gate",
        &json!([gate.display().to_string()]).to_string(),
        "{}",
        r#"{"ttl": 3000}"#,
    );
    let key = format!("rq:job:{id}");
    assert!(ttl(&mut con, &key) > 0);
    let w = Rqworker::new(&redis)
        .config(&cfg)
        .name("w")
        .queues(["q"])
        .spawn();
    wait_status(&mut con, &id, &["started"]);

    let wip = zrange(&mut con, "rq:wip:q");
    assert_eq!(wip.len(), 1, "{wip:?}");
    let (member_job, eid) = wip[0].split_once(':').expect("member is J:E");
    assert_eq!(member_job, id);
    assert!(is_hex32(eid), "{eid}");
    let eid = eid.to_string();
    // Score: now + heartbeat TTL (job_monitoring_interval 30 + 60).
    assert_score_near(
        "rq:wip:q",
        zscore(&mut con, "rq:wip:q", &wip[0]),
        unix_now() + 90.0,
    );

    let ekey = format!("rq:execution:{id}:{eid}");
    let exec = hgetall(&mut con, &ekey);
    assert_eq!(exec["id"], eid);
    assert_eq!(exec["worker_name"], "w");
    let created: f64 = exec["created_at"].parse().unwrap();
    assert!((created - unix_now()).abs() < 30.0);
    exec["last_heartbeat"].parse::<f64>().unwrap();
    assert!(ttl(&mut con, &ekey) > 0, "execution hash expires");
    assert_eq!(
        zrange(&mut con, &format!("rq:executions:{id}")),
        vec![eid.clone()]
    );

    let job = hgetall(&mut con, &key);
    assert_eq!(job["worker_name"], "w");
    assert_rq_timestamp("started_at", &job["started_at"]);
    assert_eq!(ttl(&mut con, &key), -1, "a started job is persisted");

    let wh = hgetall(&mut con, "rq:worker:w");
    assert_eq!(wh["state"], "busy");
    assert_eq!(wh["current_job"], id);

    std::fs::write(&gate, "").unwrap();
    wait_status(&mut con, &id, &["finished"]);
    wait_worker_state(&mut con, "w", "idle");
    assert!(zrange(&mut con, "rq:wip:q").is_empty());
    assert!(!exists(&mut con, &ekey));
    assert!(hget(&mut con, "rq:worker:w", "current_job").is_none());
    let entries = results(&mut con, &id);
    assert_eq!(text(&entries[0].1, "execution_id"), eid);
    assert_eq!(
        decode_return_value(&entries[0].1["return_value"]),
        json!("released")
    );
    drop(w);
}

#[test]
fn retried_failures_requeue_without_a_result_until_the_last_one() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let id = py_enqueue(
        &redis,
        "q",
        "rq.builtin.fail",
        r#"["again"]"#,
        "{}",
        r#"{"retry": {"max": 2}}"#,
    );
    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert_eq!(
        w.log()
            .matches("Got rq.builtin.fail('again') from q")
            .count(),
        3
    );
    let job = hgetall(&mut con, &format!("rq:job:{id}"));
    assert_eq!(job["status"], "failed");
    assert_eq!(job["retries_left"], "0");
    // RQ writes no result for a retried failure; only the final one.
    let entries = results(&mut con, &id);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(decode_exc_string(&entries[0].1["exc_string"]).contains("again"));
    assert!(zscore(&mut con, "rq:failed:q", &id).is_some());
    // Retries count as failures in the worker's statistics.
    assert_eq!(
        hget(&mut con, "rq:worker:w", "failed_job_count").as_deref(),
        Some("3")
    );
    let py = py_json(&redis, &["results", &id]);
    assert_eq!(py.as_array().unwrap().len(), 1, "{py}");
    assert_eq!(py[0]["type"], "FAILED");
}
