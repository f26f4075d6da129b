//! Command handlers from the config file (argv, stdin, environment, cwd, output to result,
//! exit status, output caps, glob names, the handler's timeout, config validation) and jobs
//! naming a function no handler serves.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{Value, json};

/// One `[handlers."NAME"]` table running `program`.
fn handler_toml(name: &str, program: &Path, extra: &str) -> String {
    format!(
        "[handlers.\"{name}\"]\ncommand = [{}]\n{extra}\n",
        toml_str(program.display().to_string())
    )
}

#[test]
fn a_command_handler_gets_args_in_argv_the_job_on_stdin_and_rq_environment() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let record = dir.path().join("record.json");
    let script = write_script(
        dir.path(),
        "inspect.py",
        &format!(
            "#!{}\nimport json, os, sys\n\
             doc = json.load(sys.stdin)\n\
             rec = {{'argv': sys.argv[1:], 'stdin': doc, 'cwd': os.getcwd(), 'env': dict(os.environ)}}\n\
             open(os.environ['INSPECT_OUT'], 'w').write(json.dumps(rec))\n\
             print(json.dumps({{'ok': True, 'argc': len(sys.argv) - 1}}))\n",
            python_exe()
        ),
    );
    let cfg = write_config(
        dir.path(),
        &format!(
            "[handlers.\"tasks.inspect\"]\ncommand = [{}, \"fixed-arg\"]\ncwd = {}\n\
             env = {{ INSPECT_OUT = {}, CUSTOM = \"from config\" }}\n",
            toml_str(script.display().to_string()),
            toml_str(work.display().to_string()),
            toml_str(record.display().to_string()),
        ),
    );
    let args = json!(["hello world", 1, 2.5, true, null, [1, "x"], {"a": 1}, "ünï \"q\""]);
    let id = py_enqueue(
        &redis,
        "q",
        "tasks.inspect",
        &args.to_string(),
        r#"{"k": "v", "n": [1, 2]}"#,
        r#"{"meta": {"m": 1}}"#,
    );
    let mut w = Rqworker::new(&redis)
        .config(&cfg)
        .burst()
        .name("w")
        .queues(["q"])
        .env("SECRET_FROM_WORKER", "must not leak")
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    let mut con = redis.con();
    assert_eq!(
        job_status(&mut con, &id).as_deref(),
        Some("finished"),
        "{}",
        w.log()
    );
    assert_eq!(
        latest_return(&mut con, &id),
        Some(json!({"ok": true, "argc": 9}))
    );

    let rec: Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    // argv: the config's fixed args, then the job's args: strings as-is, the rest as JSON.
    let argv: Vec<&str> = rec["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(argv.len(), 9, "{argv:?}");
    assert_eq!(argv[0], "fixed-arg");
    for (i, arg) in args.as_array().unwrap().iter().enumerate() {
        let got = argv[i + 1];
        match arg {
            Value::String(s) => assert_eq!(got, s),
            other => assert_eq!(
                serde_json::from_str::<Value>(got).unwrap_or(Value::Null),
                *other,
                "argv[{}] = {got:?}",
                i + 1
            ),
        }
    }
    assert_eq!(argv[2], "1");
    assert_eq!(argv[5], "null");

    // stdin: the job as JSON.
    let doc = &rec["stdin"];
    assert_eq!(doc["id"], id);
    assert_eq!(doc["func_name"], "tasks.inspect");
    assert_eq!(doc["args"], args);
    assert_eq!(doc["kwargs"], json!({"k": "v", "n": [1, 2]}));
    assert_eq!(doc["origin"], "q");
    assert_eq!(
        doc["description"].as_str(),
        hget(&mut con, &format!("rq:job:{id}"), "description").as_deref()
    );
    assert_eq!(doc["meta"], json!({"m": 1}));

    // Environment: RQ_* set, the config's env added, the worker's own secrets withheld.
    let env = &rec["env"];
    let eid = {
        let entries = results(&mut con, &id);
        String::from_utf8(entries[0].1["execution_id"].clone()).unwrap()
    };
    assert_eq!(env["RQ_JOB_ID"], id);
    assert_eq!(env["RQ_WORKER_ID"], "w");
    assert_eq!(env["RQ_EXECUTION_ID"], eid);
    assert_eq!(env["RQ_FUNC_NAME"], "tasks.inspect");
    assert_eq!(env["RQ_QUEUE"], "q");
    assert_eq!(env["CUSTOM"], "from config");
    assert!(
        env.get("RQ_REDIS_URL").is_none(),
        "the Redis URL leaked: {env}"
    );
    assert!(env.get("SECRET_FROM_WORKER").is_none(), "{env}");

    // cwd.
    assert_eq!(
        Path::new(rec["cwd"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        work.canonicalize().unwrap()
    );
}

#[test]
fn stdout_json_becomes_a_structured_result_text_a_string_and_empty_none() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let json_sh = write_script(
        dir.path(),
        "json.sh",
        "#!/bin/sh\necho '{\"a\": [1, 2.5, null]}'\n",
    );
    let text_sh = write_script(
        dir.path(),
        "text.sh",
        "#!/bin/sh\nprintf 'plain text, not JSON\\n'\n",
    );
    let empty_sh = write_script(dir.path(), "empty.sh", "#!/bin/sh\nexit 0\n");
    let num_sh = write_script(dir.path(), "num.sh", "#!/bin/sh\necho 42\n");
    let cfg = write_config(
        dir.path(),
        &[
            handler_toml("t.json", &json_sh, ""),
            handler_toml("t.text", &text_sh, ""),
            handler_toml("t.empty", &empty_sh, ""),
            handler_toml("t.num", &num_sh, ""),
        ]
        .concat(),
    );
    let mut con = redis.con();
    let j = rs_enqueue(&mut con, "q", "t.json", json!([]));
    let t = rs_enqueue(&mut con, "q", "t.text", json!([]));
    let e = rs_enqueue(&mut con, "q", "t.empty", json!([]));
    let n = rs_enqueue(&mut con, "q", "t.num", json!([]));
    let mut w = Rqworker::new(&redis)
        .config(&cfg)
        .burst()
        .name("w")
        .queues(["q"])
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert_eq!(
        latest_return(&mut con, &j),
        Some(json!({"a": [1, 2.5, null]}))
    );
    assert_eq!(
        latest_return(&mut con, &t),
        Some(json!("plain text, not JSON"))
    );
    assert_eq!(latest_return(&mut con, &e), None);
    assert_eq!(job_status(&mut con, &e).as_deref(), Some("finished"));
    assert_eq!(latest_return(&mut con, &n), Some(json!(42)));
    assert!(
        w.log().contains("Job ended normally without result"),
        "{}",
        w.log()
    );
    // Python sees the same values.
    assert_eq!(
        py_json(&redis, &["result", &j])["return_value"],
        json!({"a": [1, 2.5, null]})
    );
    assert_eq!(
        py_json(&redis, &["result", &e])["return_value"],
        Value::Null
    );
}

#[test]
fn a_non_zero_exit_fails_the_job_with_the_status_and_the_stderr_tail() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let fail = write_script(
        dir.path(),
        "fail.sh",
        "#!/bin/sh\necho 'partial output'\necho 'first line' >&2\necho 'the real reason' >&2\nexit 3\n",
    );
    // 10 000 bytes of noise, then the line that matters: only the tail is kept.
    let noisy = write_script(
        dir.path(),
        "noisy.sh",
        "#!/bin/sh\nhead -c 10000 /dev/zero | tr '\\0' n >&2\necho >&2\necho 'THE END' >&2\nexit 1\n",
    );
    let cfg = write_config(
        dir.path(),
        &[
            handler_toml("t.fail", &fail, ""),
            handler_toml("t.noisy", &noisy, ""),
        ]
        .concat(),
    );
    let mut con = redis.con();
    let f = rs_enqueue(&mut con, "q", "t.fail", json!([]));
    let n = rs_enqueue(&mut con, "q", "t.noisy", json!([]));
    let mut w = Rqworker::new(&redis)
        .config(&cfg)
        .burst()
        .name("w")
        .queues(["q"])
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert_eq!(job_status(&mut con, &f).as_deref(), Some("failed"));
    let exc = latest_exc(&mut con, &f);
    assert!(exc.contains("exited with status 3"), "{exc}");
    assert!(exc.contains("the real reason"), "{exc}");
    assert!(exc.contains("fail.sh"), "names the program: {exc}");
    let exc = latest_exc(&mut con, &n);
    assert!(exc.contains("THE END"), "{exc}");
    assert!(exc.contains("exited with status 1"), "{exc}");
    let noise = exc.matches('n').count();
    assert!(
        (1000..10_000).contains(&noise),
        "only a tail of stderr is kept ({noise} bytes of noise)"
    );
}

#[test]
fn output_over_one_mebibyte_is_cut_with_a_note() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let big = write_script(
        dir.path(),
        "big.sh",
        "#!/bin/sh\nhead -c 2097152 /dev/zero | tr '\\0' x\n",
    );
    let cfg = write_config(dir.path(), &handler_toml("t.big", &big, ""));
    let mut con = redis.con();
    let id = rs_enqueue(&mut con, "q", "t.big", json!([]));
    let mut w = Rqworker::new(&redis)
        .config(&cfg)
        .burst()
        .name("w")
        .queues(["q"])
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("finished"));
    let Some(Value::String(out)) = latest_return(&mut con, &id) else {
        panic!("expected a string result")
    };
    let xs = out.bytes().take_while(|b| *b == b'x').count();
    assert_eq!(xs, 1024 * 1024, "exactly 1 MiB of output is kept");
    let note = &out[xs..];
    assert!(
        note.contains("output cut at 1048576 of 2097152 bytes"),
        "{note:?}"
    );
    assert!(note.len() < 200, "{note:?}");
}

#[test]
fn glob_handler_names_match_and_an_exact_name_wins() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let glob = write_script(
        dir.path(),
        "glob.sh",
        "#!/bin/sh\necho \"glob $RQ_FUNC_NAME\"\n",
    );
    let exact = write_script(dir.path(), "exact.sh", "#!/bin/sh\necho exact\n");
    let cfg = write_config(
        dir.path(),
        &[
            handler_toml("tasks.*", &glob, ""),
            handler_toml("tasks.exact", &exact, ""),
        ]
        .concat(),
    );
    let mut con = redis.con();
    let e = rs_enqueue(&mut con, "q", "tasks.exact", json!([]));
    let g = rs_enqueue(&mut con, "q", "tasks.other", json!([]));
    let none = rs_enqueue(&mut con, "q", "other.tasks", json!([]));
    let mut w = Rqworker::new(&redis)
        .config(&cfg)
        .burst()
        .name("w")
        .queues(["q"])
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert_eq!(latest_return(&mut con, &g), Some(json!("glob tasks.other")));
    assert_eq!(
        latest_return(&mut con, &e),
        Some(json!("exact")),
        "the exact handler must win over the glob"
    );
    assert_eq!(job_status(&mut con, &none).as_deref(), Some("failed"));
}

#[test]
fn a_handler_timeout_applies_to_jobs_without_their_own() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let slow = write_script(dir.path(), "slow.sh", "#!/bin/sh\nsleep 30\n");
    let cfg = write_config(
        dir.path(),
        &handler_toml("t.slow", &slow, "timeout = \"1s\""),
    );
    let mut con = redis.con();
    // Python always writes `timeout`; a job without one comes from other producers.
    let id = "no-timeout-job";
    let data = rq_supervisor::protocol::payload::encode(&rq_supervisor::protocol::payload::Call {
        func_name: "t.slow".into(),
        args: vec![],
        kwargs: Default::default(),
    });
    redis::pipe()
        .hset_multiple(
            format!("rq:job:{id}"),
            &[
                ("status", &b"queued"[..]),
                ("data", &data[..]),
                ("origin", b"q"),
                ("description", b"t.slow()"),
                ("created_at", b"2026-01-01T00:00:00.000000Z"),
                ("enqueued_at", b"2026-01-01T00:00:00.000000Z"),
            ],
        )
        .rpush("rq:queue:q", id)
        .exec(&mut con)
        .unwrap();
    assert!(hget(&mut con, &format!("rq:job:{id}"), "timeout").is_none());
    let start = Instant::now();
    let mut w = Rqworker::new(&redis)
        .config(&cfg)
        .burst()
        .name("w")
        .queues(["q"])
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(job_status(&mut con, id).as_deref(), Some("failed"));
    let exc = latest_exc(&mut con, id);
    assert!(
        exc.contains("JobTimeoutException: Task exceeded maximum timeout value (1 seconds)"),
        "{exc}"
    );
}

#[test]
fn relative_handler_programs_resolve_against_the_config_directory() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    write_script(dir.path(), "rel.sh", "#!/bin/sh\necho relative\n");
    let cfg = write_config(
        dir.path(),
        "[handlers.\"t.rel\"]\ncommand = [\"./rel.sh\"]\n",
    );
    let mut con = redis.con();
    let id = rs_enqueue(&mut con, "q", "t.rel", json!([]));
    // Run from elsewhere so that only the config's directory can explain success.
    let mut w = Rqworker::new(&redis)
        .config(&cfg)
        .burst()
        .name("w")
        .queues(["q"])
        .current_dir("/")
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert_eq!(latest_return(&mut con, &id), Some(json!("relative")));
}

#[test]
fn config_validation_refuses_a_missing_or_non_executable_program() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let missing = dir.path().join("not-there.sh");
    let plain = dir.path().join("plain.sh");
    std::fs::write(&plain, "#!/bin/sh\necho hi\n").unwrap();
    for (program, problem) in [(&missing, "cannot be used"), (&plain, "is not executable")] {
        let cfg = write_config(dir.path(), &handler_toml("tasks.x", program, ""));
        let mut w = Rqworker::new(&redis).config(&cfg).burst().name("w").spawn();
        let status = w.wait_exit(WAIT);
        let log = w.log();
        assert_eq!(status.code(), Some(2), "{log}");
        assert!(log.contains(&program.display().to_string()), "{log}");
        assert!(log.contains("[handlers.\"tasks.x\"] command"), "{log}");
        assert!(log.contains(problem), "{log}");
        assert!(log.contains("pool.toml"), "names the file: {log}");
    }
}

/// A worker with a command handler `tasks.known` and the built-ins, and two jobs: one for a
/// function no handler declares, one for `tasks.known`. Returns the first's failure text once
/// the second has finished too.
fn unknown_then_known(redis: &RedisServer) -> String {
    let dir = temp_dir();
    let known = write_script(dir.path(), "known.sh", "#!/bin/sh\necho ok\n");
    let cfg = write_config(dir.path(), &handler_toml("tasks.known", &known, ""));
    let mut con = redis.con();
    let bad = rs_enqueue(&mut con, "q", "tasks.unknown_fn", json!([1]));
    let good = rs_enqueue(&mut con, "q", "tasks.known", json!([]));
    let w = Rqworker::new(redis)
        .config(&cfg)
        .current_dir(dir.path())
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    wait_status(&mut con, &bad, &["failed", "finished"]);
    assert_eq!(job_status(&mut con, &bad).as_deref(), Some("failed"));
    let exc = latest_exc(&mut con, &bad);
    wait_status(&mut con, &good, &["finished"]);
    assert!(alive(w.pid()));
    exc
}

/// Without Python (the `python` feature off), a name no handler declares has nothing to run
/// it.
#[cfg(not(feature = "python"))]
#[test]
fn an_unknown_function_fails_naming_it_and_the_known_handlers() {
    let redis = RedisServer::start();
    let exc = unknown_then_known(&redis);
    for needle in [
        "\"tasks.unknown_fn\"",
        "tasks.known",
        "rq.builtin.echo",
        "rq.builtin.sleep",
    ] {
        assert!(exc.contains(needle), "{needle:?} missing from {exc}");
    }
}

/// With Python, a name no handler declares is a Python function: Python looks it up as RQ
/// does (here in a directory without a `tasks` module) and fails the job with RQ's words.
#[cfg(feature = "python")]
#[test]
fn a_function_no_handler_declares_runs_in_python_and_fails_as_rq_fails_an_unknown_one() {
    let redis = RedisServer::start();
    let exc = unknown_then_known(&redis);
    assert!(
        exc.contains("ValueError: Invalid attribute name: tasks.unknown_fn"),
        "{exc}"
    );
    assert!(exc.contains("in import_attribute"), "{exc}");
}

#[test]
fn a_positional_argument_too_long_for_argv_fails_with_a_hint_to_use_kwargs() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let tool = write_script(dir.path(), "tool.sh", "#!/bin/sh\necho ok\n");
    let cfg = write_config(dir.path(), &handler_toml("t.tool", &tool, ""));
    let mut con = redis.con();
    // Linux caps one argv string at 128 KiB; the same value as a kwarg travels on stdin.
    let big = "y".repeat(300_000);
    let too_long = rs_enqueue(&mut con, "q", "t.tool", json!([big]));
    let mut kwargs = serde_json::Map::new();
    kwargs.insert("big".into(), json!(big));
    let as_kwarg = rq_supervisor::producer::enqueue(
        &mut con,
        "q",
        "t.tool",
        vec![],
        kwargs,
        &Default::default(),
    )
    .unwrap();
    let mut w = Rqworker::new(&redis)
        .config(&cfg)
        .burst()
        .name("w")
        .queues(["q"])
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert_eq!(job_status(&mut con, &too_long).as_deref(), Some("failed"));
    let exc = latest_exc(&mut con, &too_long);
    assert!(exc.contains("too long"), "{exc}");
    assert!(exc.contains("keyword"), "says what to do instead: {exc}");
    assert!(
        !exc.contains("chmod"),
        "the program is fine; do not blame it: {exc}"
    );
    assert_eq!(latest_return(&mut con, &as_kwarg), Some(json!("ok")));
}
