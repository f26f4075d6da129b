//! Bad input never wedges or kills a worker: pickled payloads, payloads that are not zlib or
//! not JSON, NaN/Infinity, the wrong shape, ids whose job hash is gone, handler programs that
//! vanish or lose their execute bit after start, non-UTF-8 output. Each fails only its own
//! job with a message that says what to do, and every other job is still processed.

use std::io::Write;

use crate::support::*;
use serde_json::json;

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Writes a job hash the way a foreign or broken producer might, and queues it on `q`.
fn raw_job(con: &mut redis::Connection, id: &str, data: Option<&[u8]>) {
    let key = format!("rq:job:{id}");
    let mut fields: Vec<(&str, &[u8])> = vec![
        ("status", b"queued"),
        ("origin", b"q"),
        ("description", b"raw job"),
        ("timeout", b"180"),
        ("created_at", b"2026-01-01T00:00:00.000000Z"),
        ("enqueued_at", b"2026-01-01T00:00:00.000000Z"),
    ];
    if let Some(d) = data {
        fields.push(("data", d));
    }
    redis::pipe()
        .hset_multiple(&key, &fields)
        .rpush("rq:queue:q", id)
        .exec(con)
        .unwrap();
}

/// `worker` running as `w` with the built-ins, on queue `q`.
fn worker(worker: Rqworker) -> Proc {
    let w = worker.builtin_handlers().name("w").queues(["q"]).spawn();
    w.wait_for_log("Listening for work");
    w
}

/// Queues a good job, then whatever `bad` queues (returning its id), then another good job;
/// waits for all three to settle and checks that only the bad one failed and the worker is
/// still alive and idle. Returns the bad job's failure text.
fn sandwich(
    redis: &RedisServer,
    w: &Proc,
    bad: impl FnOnce(&mut redis::Connection) -> String,
) -> String {
    let mut con = redis.con();
    let before = rs_enqueue(&mut con, "q", "rq.builtin.echo", json!(["before"]));
    let bad_id = bad(&mut con);
    let after = rs_enqueue(&mut con, "q", "rq.builtin.echo", json!(["after"]));
    wait_status(&mut con, &after, &["finished", "failed"]);
    assert_eq!(latest_return(&mut con, &before), Some(json!(["before"])));
    assert_eq!(
        latest_return(&mut con, &after),
        Some(json!(["after"])),
        "{}",
        w.log()
    );
    assert_eq!(
        job_status(&mut con, &bad_id).as_deref(),
        Some("failed"),
        "{}",
        w.log()
    );
    assert!(zscore(&mut con, "rq:failed:q", &bad_id).is_some());
    wait_worker_state(&mut con, "w", "idle");
    assert!(alive(w.pid()), "the worker died:\n{}", w.log());
    assert!(zrange(&mut con, "rq:wip:q").is_empty());
    latest_exc(&mut con, &bad_id)
}

/// Enqueues `rq.builtin.echo(1)` with RQ's default serializer, pickle.
fn pickled_echo(redis: &RedisServer) -> String {
    let out = python(
        redis,
        "rqtool.py",
        &["enqueue-pickle", "q", "rq.builtin.echo", "[1]"],
    );
    serde_json::from_str(out.trim()).unwrap()
}

/// Without Python (the `python` feature off) the worker cannot read pickle at all.
#[cfg(not(feature = "python"))]
#[test]
fn a_pickled_job_fails_with_a_message_to_use_the_json_serializer() {
    let redis = RedisServer::start();
    let w = worker(Rqworker::new(&redis));
    let exc = sandwich(&redis, &w, |_| pickled_echo(&redis));
    assert!(exc.contains("serializer=JSONSerializer"), "{exc}");
    assert!(exc.contains("pickle"), "{exc}");
}

/// With Python, a pickled job is a Python job, even under the name of a built-in handler
/// (the built-ins read JSON only): Python looks the function up as RQ does, and fails this
/// one with RQ's own words (RQ has no `rq.builtin`), the jobs around it unaffected.
#[cfg(feature = "python")]
#[test]
fn a_pickled_job_runs_in_python_and_fails_as_rq_fails_an_unknown_function() {
    let redis = RedisServer::start();
    let w = worker(Rqworker::new(&redis));
    let exc = sandwich(&redis, &w, |_| pickled_echo(&redis));
    assert!(
        exc.contains("ValueError: Invalid attribute name: echo"),
        "{exc}"
    );
    assert!(exc.contains("in import_attribute"), "{exc}");
    assert!(!exc.contains("serializer=JSONSerializer"), "{exc}");
}

#[test]
fn a_payload_that_is_neither_zlib_nor_json_fails_the_job() {
    let redis = RedisServer::start();
    let w = worker(Rqworker::new(&redis));
    let exc = sandwich(&redis, &w, |con| {
        raw_job(con, "text-garbage", Some(b"hello, this is not json"));
        "text-garbage".into()
    });
    assert!(exc.contains("not zlib-compressed JSON"), "{exc}");
    let exc = sandwich(&redis, &w, |con| {
        raw_job(con, "binary-garbage", Some(b"\x01\xfe\xff\x00garbage"));
        "binary-garbage".into()
    });
    assert!(exc.contains("zlib-compressed JSON"), "{exc}");
    let exc = sandwich(&redis, &w, |con| {
        raw_job(con, "no-data", None);
        "no-data".into()
    });
    assert!(exc.contains("no `data` field"), "{exc}");
}

#[test]
fn nan_and_infinity_from_python_json_fail_the_job_clearly() {
    let redis = RedisServer::start();
    let w = worker(Rqworker::new(&redis));
    let exc = sandwich(&redis, &w, |_| {
        // Python's json.dumps writes bare NaN and Infinity.
        py_enqueue_args(&redis, "q", "rq.builtin.echo", "[1.5, NaN, -Infinity]")
    });
    assert!(exc.contains("NaN or Infinity"), "{exc}");
    // The words inside strings are fine.
    let mut con = redis.con();
    let id = py_enqueue_args(&redis, "q", "rq.builtin.echo", r#"["NaN", "Infinity"]"#);
    wait_status(&mut con, &id, &["finished", "failed"]);
    assert_eq!(
        latest_return(&mut con, &id),
        Some(json!(["NaN", "Infinity"]))
    );
}

#[test]
fn a_payload_of_the_wrong_shape_fails_the_job() {
    let redis = RedisServer::start();
    let w = worker(Rqworker::new(&redis));
    for (id, payload, detail) in [
        (
            "obj",
            &br#"{"func": "rq.builtin.echo"}"#[..],
            "expected a list of 4 items",
        ),
        ("short", br#"["rq.builtin.echo", null, []]"#, "got 3 items"),
        (
            "args",
            br#"["rq.builtin.echo", null, "x", {}]"#,
            "args is a string",
        ),
        (
            "func",
            br#"[42, null, [], {}]"#,
            "function name is a number",
        ),
        (
            "inst",
            br#"["rq.builtin.echo", {"o": 1}, [], {}]"#,
            "instance",
        ),
    ] {
        let exc = sandwich(&redis, &w, |con| {
            raw_job(con, id, Some(&zlib(payload)));
            id.into()
        });
        assert!(exc.contains("wrong shape"), "{id}: {exc}");
        assert!(exc.contains(detail), "{id}: {exc}");
    }
}

#[test]
fn an_id_whose_job_hash_is_gone_is_dropped_and_logged() {
    let redis = RedisServer::start();
    let w = worker(Rqworker::new(&redis));
    let mut con = redis.con();
    let before = rs_enqueue(&mut con, "q", "rq.builtin.echo", json!(["before"]));
    redis::cmd("RPUSH")
        .arg("rq:queue:q")
        .arg("ghost-job")
        .exec(&mut con)
        .unwrap();
    let after = rs_enqueue(&mut con, "q", "rq.builtin.echo", json!(["after"]));
    wait_status(&mut con, &after, &["finished"]);
    assert_eq!(job_status(&mut con, &before).as_deref(), Some("finished"));
    w.wait_for_log("ghost-job");
    assert!(w.log().contains("dropped job id"), "{}", w.log());
    // Nothing is invented for it.
    assert!(!exists(&mut con, "rq:job:ghost-job"));
    assert!(!exists(&mut con, "rq:results:ghost-job"));
    assert!(zrange(&mut con, "rq:failed:q").is_empty());
    assert!(!exists(&mut con, "rq:queue:q"));
    assert!(alive(w.pid()));
}

/// The ghost is the last id in the queue: the worker meets it while it settles the job before
/// it (the settle takes the next job in the same round trip), and that claim finds no job.
#[test]
fn an_id_whose_job_hash_is_gone_is_logged_when_no_job_follows_it() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let before = rs_enqueue(&mut con, "q", "rq.builtin.echo", json!(["before"]));
    redis::cmd("RPUSH")
        .arg("rq:queue:q")
        .arg("ghost-job")
        .exec(&mut con)
        .unwrap();
    let mut w = Rqworker::new(&redis)
        .builtin_handlers()
        .name("w")
        .burst()
        .queues(["q"])
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert_eq!(job_status(&mut con, &before).as_deref(), Some("finished"));
    assert!(!exists(&mut con, "rq:queue:q"));
    let log = w.log();
    assert!(log.contains("dropped job id q:ghost-job"), "{log}");
}

#[test]
fn a_handler_program_removed_or_made_non_executable_after_start_leaves_its_job_queued() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let script = write_script(dir.path(), "tool.sh", "#!/bin/sh\necho ok\n");
    let cfg = write_config(
        dir.path(),
        &format!(
            "[handlers.\"tasks.tool\"]\ncommand = [{}]\n",
            toml_str(script.display().to_string())
        ),
    );
    let w = worker(Rqworker::new(&redis).config(&cfg));
    let mut con = redis.con();
    let ok = rs_enqueue(&mut con, "q", "tasks.tool", json!([]));
    wait_status(&mut con, &ok, &["finished"]);

    // A program gone since the config was checked is the host's fault, not the job's: the job
    // goes back to the front of its queue, and runs, on the same worker, once it is back.
    use std::os::unix::fs::PermissionsExt;
    let breaks: [(&str, &dyn Fn()); 2] = [
        ("chmod -x", &|| {
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap()
        }),
        ("rm", &|| std::fs::remove_file(&script).unwrap()),
    ];
    for (n, (what, break_it)) in breaks.iter().enumerate() {
        break_it();
        let id = rs_enqueue(&mut con, "q", "tasks.tool", json!([]));
        wait_until(&format!("the start failure after {what}"), WAIT, || {
            w.log()
                .matches("could not start, and not for a reason of its own")
                .count()
                > n
        });
        let log = w.log();
        assert!(log.contains(&script.display().to_string()), "{what}: {log}");
        assert!(
            log.contains("the handler's program is gone or no longer executable"),
            "{log}"
        );
        assert_ne!(
            job_status(&mut con, &id).as_deref(),
            Some("failed"),
            "{log}"
        );
        assert!(results(&mut con, &id).is_empty(), "{what}: {log}");
        write_script(dir.path(), "tool.sh", "#!/bin/sh\necho back\n");
        wait_status(&mut con, &id, &["finished", "failed"]);
        assert_eq!(
            latest_return(&mut con, &id),
            Some(json!("back")),
            "{}",
            w.log()
        );
        assert!(alive(w.pid()), "{}", w.log());
    }
}

#[test]
fn non_utf8_handler_output_fails_the_job() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let script = write_script(dir.path(), "bin.sh", "#!/bin/sh\nprintf 'ok\\377\\376'\n");
    let cfg = write_config(
        dir.path(),
        &format!(
            "[handlers.\"tasks.bin\"]\ncommand = [{}]\n",
            toml_str(script.display().to_string())
        ),
    );
    let w = worker(Rqworker::new(&redis).config(&cfg));
    let exc = sandwich(&redis, &w, |con| {
        rs_enqueue(con, "q", "tasks.bin", json!([]))
    });
    assert!(exc.contains("not UTF-8"), "{exc}");
}

#[test]
fn a_burst_through_mixed_bad_and_good_jobs_loses_nothing() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for i in 0..5 {
        good.push(rs_enqueue(&mut con, "q", "rq.builtin.echo", json!([i])));
        let id = format!("bad-{i}");
        let payload: Vec<u8> = match i {
            0 => b"not json".to_vec(),
            1 => zlib(br#"["rq.builtin.echo", null, [NaN], {}]"#),
            2 => zlib(b"{}"),
            3 => zlib(b"\x80\x05K\x03."),
            _ => zlib(br#"["no.such.fn", null, [], {}]"#),
        };
        raw_job(&mut con, &id, Some(&payload));
        bad.push(id);
        redis::cmd("RPUSH")
            .arg("rq:queue:q")
            .arg(format!("ghost-{i}"))
            .exec(&mut con)
            .unwrap();
    }
    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    for (i, id) in good.iter().enumerate() {
        assert_eq!(latest_return(&mut con, id), Some(json!([i])));
    }
    for id in &bad {
        assert_eq!(job_status(&mut con, id).as_deref(), Some("failed"), "{id}");
        assert_eq!(results(&mut con, id).len(), 1, "{id}");
    }
    let mut finished = zrange(&mut con, "rq:finished:q");
    let mut failed = zrange(&mut con, "rq:failed:q");
    finished.sort();
    failed.sort();
    good.sort();
    assert_eq!(finished, good);
    assert_eq!(failed, bad);
    assert!(!exists(&mut con, "rq:queue:q"));
    assert!(zrange(&mut con, "rq:wip:q").is_empty());
    let wh = hgetall(&mut con, "rq:worker:w");
    assert_eq!(wh["successful_job_count"], "5");
    assert_eq!(wh["failed_job_count"], "5");
}

#[test]
fn json_stored_without_zlib_is_read_like_python_reads_it() {
    // Python falls back to the raw bytes when `data` is not zlib; so does the worker.
    let redis = RedisServer::start();
    let mut con = redis.con();
    raw_job(
        &mut con,
        "raw-json",
        Some(br#"["rq.builtin.echo", null, ["plain"], {}]"#),
    );
    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert_eq!(latest_return(&mut con, "raw-json"), Some(json!(["plain"])));
}

#[test]
fn broken_json_that_mentions_nan_in_a_string_is_not_blamed_on_nan() {
    let redis = RedisServer::start();
    let w = worker(Rqworker::new(&redis));
    // Truncated JSON whose only "NaN" is text inside a string.
    let exc = sandwich(&redis, &w, |con| {
        raw_job(
            con,
            "truncated",
            Some(&zlib(
                br#"["rq.builtin.echo", null, ["NaN and Infinity"], {}"#,
            )),
        );
        "truncated".into()
    });
    assert!(exc.contains("not zlib-compressed JSON"), "{exc}");
    assert!(!exc.contains("contains NaN or Infinity"), "{exc}");
}
