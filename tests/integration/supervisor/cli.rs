//! `rq-supervisor check`, config errors, the password warning, startup errors and JSON logs.

use std::os::unix::fs::PermissionsExt;

use crate::support::supervisor::*;
use crate::support::*;
use nix::sys::signal::Signal;

fn check(file: &PoolFile) -> std::process::Output {
    Supervisor::check(file).output()
}

#[test]
fn check_prints_the_effective_configuration_and_the_shutdown_budget() {
    let file = PoolFile::new("");
    let handler = file.script("send.sh", "#!/bin/sh\ncat >/dev/null\necho '{}'\n");
    file.rewrite(&format!(
        r#"
[redis]
url = "redis://app:s3cret@127.0.0.1:6379/2"
[supervisor]
warm_timeout = "2m"
cold_timeout = "15s"
[worker]
builtin_handlers = true
[pools.fast]
queues = ["high", "default"]
workers = 4
max_jobs = 100
max_jobs_jitter = 20
memory_limit = "256MiB"
[pools.fast.worker]
job_monitoring_interval = "5s"
[pools.batch]
queues = ["batch"]
burst = true
[handlers."tasks.send_newsletter"]
command = ["{}"]
timeout = "30s"
"#,
        handler.display()
    ));
    std::fs::set_permissions(&file.path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = check(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.is_empty(), "no warning for a private file: {stderr}");
    for want in [
        "is valid",
        "redis://app:***@127.0.0.1:6379/2 (from [redis] url)",
        "warm_timeout = 2m",
        "cold_timeout = 15s",
        "shutdown budget: 2m 20s (warm_timeout 2m + cold_timeout 15s + 5s margin)",
        "TimeoutStopSec=140",
        "terminationGracePeriodSeconds: 140",
        "[pools.fast]",
        "queues = high, default",
        "workers = 4",
        "max_jobs = 100..=120",
        "memory_limit = 256 MiB",
        "job_monitoring_interval=5s",
        "builtin_handlers=true",
        "[pools.batch]",
        "burst = true",
        "worker (built in, the default)",
        "\"tasks.send_newsletter\"",
        "(timeout 30s)",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("s3cret"), "{stdout}");
    // Readable by others: warned, still valid.
    std::fs::set_permissions(&file.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success());
    assert!(
        stderr.contains("contains a Redis password in [redis] url") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
    // A secret in a handler's env counts too.
    let text = std::fs::read_to_string(&file.path).unwrap();
    let text = text.replace("app:s3cret@", "").replace(
        "timeout = \"30s\"",
        "timeout = \"30s\"\nenv = { SMTP_PASSWORD = \"hunter2\" }",
    );
    file.rewrite(&text);
    let out = check(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success());
    assert!(
        stderr.contains("a secret in a handler's env (SMTP_PASSWORD)"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2"));
}

#[test]
fn a_bad_file_exits_2_naming_the_file_key_and_fix() {
    let file = PoolFile::new("[pools.a]\nqueues = [\"q\"]\nworkers = 0\n");
    for (args, sup) in [
        ("check -c", Supervisor::bare().arg("check").config(&file)),
        ("-c", Supervisor::bare().config(&file)),
    ] {
        let out = sup.output();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&file.path.display().to_string())
                && stderr.contains("[pools.a] workers")
                && stderr.contains("write workers = 1 or more"),
            "{stderr}"
        );
    }
    file.rewrite("[pools.a]\nqueues = [\"q\"]\nwrokers = 2\n");
    let out = check(&file);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `wrokers`"));
    let out = Supervisor::bare().output();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-c pool.toml"));
    let out = Supervisor::bare()
        .arg("check")
        .config("/no/such/pool.toml")
        .output();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/pool.toml"));
}

#[test]
fn json_logs_name_pool_and_worker_on_every_line() {
    let redis = RedisServer::start();
    let file = PoolFile::new(
        r#"
[supervisor]
log_format = "json"
[worker]
builtin_handlers = true
[pools.jp]
queues = ["default"]
workers = 2
"#,
    );
    let mut sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    let registered = wait_workers(&mut con, 2);
    sup.signal(Signal::SIGTERM);
    assert!(sup.wait_exit(WAIT).success(), "{}", sup.log());
    let log = sup.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.len() > 6);
    for l in &lines {
        assert!(
            l["name"].is_string() && l["msg"].is_string() && l["ts"].is_string(),
            "{l}"
        );
    }
    for (name, pid) in &registered {
        let about: Vec<_> = lines.iter().filter(|l| l["name"] == *name).collect();
        assert!(about.iter().all(|l| l["pool"] == "jp"), "{about:?}");
        assert!(
            about
                .iter()
                .any(|l| l["msg"] == format!("supervisor: spawned pid {pid} for queues default")),
            "{about:?}"
        );
        assert!(
            about
                .iter()
                .any(|l| l["msg"].as_str().unwrap().contains("exited with status 0"))
        );
    }
    assert!(lines.iter().any(|l| {
        l["name"] == "rq-supervisor"
            && l["msg"]
                .as_str()
                .unwrap()
                .starts_with("shutdown: warm stage")
    }));
}

#[test]
fn the_shipped_example_checks_and_runs_its_pools_and_handler() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("supervisor.toml.example");
    let out = Supervisor::check(&example).output();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("redis://127.0.0.1:6379/0"), "{stdout}");
    assert!(
        stdout.contains("send_newsletter.py (timeout 30s)"),
        "{stdout}"
    );
    // Run it against the test redis ($RQ_REDIS_URL wins over the file's url).
    let redis = RedisServer::start();
    // Its control socket goes in a temp dir, not beside the example in the source tree.
    let run_dir = temp_dir();
    let mut sup = Supervisor::new(&redis, &example)
        .env("RUNTIME_DIRECTORY", run_dir.path())
        .spawn();
    let mut con = redis.con();
    wait_workers(&mut con, 3);
    let mail = rq_supervisor::producer::enqueue(
        &mut con,
        "mail",
        "tasks.send_newsletter",
        vec!["me@nvie.com".into()],
        serde_json::from_str(r#"{"subject": "Hello"}"#).unwrap(),
        &Default::default(),
    )
    .unwrap();
    let echo = rs_enqueue(
        &mut con,
        "low",
        "rq.builtin.echo",
        serde_json::json!(["hi"]),
    );
    wait_status(&mut con, &mail, &["finished"]);
    wait_status(&mut con, &echo, &["finished"]);
    let result = rq_supervisor::producer::latest_result(&mut con, &mail)
        .unwrap()
        .and_then(|r| r.return_value)
        .unwrap();
    assert_eq!(result["sent_to"], "me@nvie.com");
    assert_eq!(result["subject"], "Hello");
    sup.signal(Signal::SIGTERM);
    assert!(sup.wait_exit(WAIT).success(), "{}", sup.log());
}
