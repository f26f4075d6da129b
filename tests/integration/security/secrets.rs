//! Secrets stay where they belong: no shell ever stands between a job and a process (job
//! arguments reach the handler verbatim, one argv element each, and nothing in them runs);
//! the Redis password never shows in any process's argv (`ps`), in any log line of the
//! supervisor or its workers through failures, crashes and reconnects, or in
//! `rq-supervisor check`; and command handlers inherit neither the Redis URL, the TLS
//! settings, the supervisor's pid nor any descriptor of the worker's (its Redis sockets, the
//! config handoff).

use crate::support::supervisor::{PoolFile, wait_workers};
use crate::support::*;
use nix::sys::signal::Signal;
use rq_supervisor::procfs;
use serde_json::{Value, json};

const PASSWORD: &str = "Sup3r-Secret-pw-4711";

/// Where each open descriptor of `pid` points (`socket:[...]`, `memfd:...`, paths).
fn fd_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn job_arguments_reach_the_handler_verbatim_and_no_shell_runs_them() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let pwned = dir.path().join("pwned");
    let record = dir.path().join("argv.json");
    let script = write_script(
        dir.path(),
        "argv.py",
        &format!(
            "#!{}\nimport json, sys\nopen({:?}, 'w').write(json.dumps(sys.argv[1:]))\n",
            python_exe(),
            record.display().to_string()
        ),
    );
    let cfg = write_config(
        dir.path(),
        &format!(
            "[handlers.\"tasks.argv\"]\ncommand = [{}, \"fixed; touch {p}\"]\n",
            toml_str(script.display().to_string()),
            p = pwned.display()
        ),
    );
    let p = pwned.display().to_string();
    let hostile = vec![
        format!("; touch {p}"),
        format!("$(touch {p})"),
        format!("`touch {p}`"),
        format!("&& touch {p} &&"),
        format!("| touch {p}"),
        format!("' ; touch {p} ; '"),
        format!("\" ; touch {p} ; \""),
        format!("\n touch {p}\n"),
        "$HOME ${PATH} *".to_string(),
        "two words".to_string(),
        "-c".to_string(),
        "--help".to_string(),
        String::new(),
    ];
    let mut con = redis.con();
    let id = rs_enqueue(&mut con, "q", "tasks.argv", json!(hostile));
    let mut w = Rqworker::new(&redis)
        .config(&cfg)
        .burst()
        .name("w")
        .queues(["q"])
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    assert_eq!(
        job_status(&mut con, &id).as_deref(),
        Some("finished"),
        "{}",
        w.log()
    );
    let argv: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    let mut expected = vec![format!("fixed; touch {p}")];
    expected.extend(hostile);
    assert_eq!(
        argv, expected,
        "each argument is one argv element, unchanged"
    );
    assert!(!pwned.exists(), "something ran a shell");
}

#[test]
fn the_password_is_in_no_argv_no_log_line_and_not_in_check_output() {
    let redis = RedisServer::start();
    let url = redis.acl_user("rq", PASSWORD, &["~rq:*", "&*", "+@all"]);
    let pool = PoolFile::new("");
    let gate = pool.dir.path().join("gate");
    let gate_script = pool.script(
        "gate.sh",
        "#!/bin/sh\nwhile [ ! -e \"$1\" ]; do sleep 0.02; done\necho released\n",
    );
    pool.rewrite(&format!(
        "[redis]\nurl = {}\n[supervisor]\nhealth_interval = \"200ms\"\n[worker]\nbuiltin_handlers = true\n\
         [pools.p]\nqueues = [\"q\"]\nworkers = 2\n[pools.p.restart]\nbackoff_initial = \"50ms\"\n\
         [handlers.\"tasks.gate\"]\ncommand = [{}]\n",
        toml_str(&url),
        toml_str(gate_script.display().to_string())
    ));
    // `check`, with the password in the file and then in the environment: masked both ways.
    for from_env in [false, true] {
        let sup = if from_env {
            Supervisor::bare().env("RQ_REDIS_URL", &url)
        } else {
            Supervisor::without_url_args()
        };
        let out = sup.arg("check").config(&pool).output();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("pass=***"), "{text}");
        // The file (mode 644) holds the password in a unix URL's pass= parameter: warned.
        assert!(
            text.contains("contains a Redis password in [redis] url"),
            "{text}"
        );
        assert!(!text.contains(PASSWORD), "{text}");
    }

    let mut sup = Supervisor::without_url(&pool).spawn();
    let mut con = redis.con();
    wait_workers(&mut con, 2);

    // A handler running: look at every process's argv.
    let id = rs_enqueue(
        &mut con,
        "q",
        "tasks.gate",
        json!([gate.display().to_string()]),
    );
    wait_status(&mut con, &id, &["started"]);
    let mut tree = Vec::new();
    wait_until("2 workers and a handler", WAIT, || {
        // The supervisor and every descendant: workers, horses, handlers.
        tree = procfs::tree(sup.pid().as_raw() as u32);
        tree.len() >= 4
    });
    for pid in tree {
        let argv = cmdline(pid);
        assert!(!argv.contains(PASSWORD), "pid {pid} argv: {argv}");
        assert!(!argv.contains("pass="), "pid {pid} argv: {argv}");
    }
    std::fs::write(&gate, "").unwrap();
    wait_status(&mut con, &id, &["finished"]);

    // Failures.
    let failed = rs_enqueue(&mut con, "q", "rq.builtin.fail", json!(["boom"]));
    let unknown = rs_enqueue(&mut con, "q", "tasks.nobody_knows", json!([]));
    wait_status(&mut con, &failed, &["failed"]);
    wait_status(&mut con, &unknown, &["failed"]);
    // A crash and its cleanup.
    let victim = wait_workers(&mut con, 2)[0].1;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    sup.wait_for_log("crash cleanup done");
    // Redis restarts without the ACL user: every connection fails authentication for a
    // while (logged), then the user is back and everything reconnects.
    let mut redis = redis;
    redis.restart();
    let mut con = redis.con();
    wait_until("an authentication failure in the log", WAIT, || {
        let log = sup.log();
        log.contains("AuthenticationFailed") || log.contains("WRONGPASS")
    });
    redis.acl_user("rq", PASSWORD, &["~rq:*", "&*", "+@all"]);
    wait_until("two workers registered again", WAIT, || {
        crate::support::supervisor::workers(&mut con).len() == 2
    });
    let after = rs_enqueue(&mut con, "q", "rq.builtin.echo", json!(["after"]));
    wait_status(&mut con, &after, &["finished"]);
    sup.signal(Signal::SIGTERM);
    assert!(sup.wait_exit(WAIT).success(), "{}", sup.log());
    assert!(
        !redis.log_text().contains("crashed by signal"),
        "redis-server crashed:\n{}",
        redis.log_text()
    );

    let log = sup.log();
    assert!(log.contains("Job failed"), "the run had failures: {log}");
    assert!(log.contains("check the user and password"), "{log}");
    assert!(
        !log.contains(PASSWORD),
        "the password leaked into the log:\n{log}"
    );
}

#[test]
fn handlers_inherit_no_redis_url_tls_settings_or_worker_descriptors() {
    let dir = temp_dir();
    let certs = TlsCerts::generate(dir.path());
    let redis = RedisServer::start_tls(&certs, true);
    let url = redis
        .tls_url()
        .replace("rediss://", &format!("rediss://rq:{PASSWORD}@"));
    redis.acl_user("rq", PASSWORD, &["~rq:*", "&*", "+@all"]);
    let pool = PoolFile::new("");
    let gate = pool.dir.path().join("gate");
    let env_dump = pool.dir.path().join("env.json");
    let handler = pool.script(
        "env.py",
        &format!(
            "#!{}\nimport json, os, sys, time\n\
             open({:?}, 'w').write(json.dumps(dict(os.environ)))\n\
             while not os.path.exists(sys.argv[1]): time.sleep(0.02)\n",
            python_exe(),
            env_dump.display().to_string()
        ),
    );
    pool.rewrite(&format!(
        "[pools.p]\nqueues = [\"q\"]\n[handlers.\"tasks.env\"]\ncommand = [{}]\nenv = {{ PASSED = \"by the config\" }}\n",
        toml_str(handler.display().to_string())
    ));
    let sup = Supervisor::at(&url, &pool)
        .env("RQ_REDIS_TLS_CA_FILE", &certs.ca)
        .env("RQ_REDIS_TLS_CERT_FILE", &certs.client_cert)
        .env("RQ_REDIS_TLS_KEY_FILE", &certs.client_key)
        .env("SOME_SUPERVISOR_SECRET", "not for handlers")
        .spawn();
    let mut con = redis.con();
    let worker = wait_workers(&mut con, 1)[0].1;
    let id = rs_enqueue(
        &mut con,
        "q",
        "tasks.env",
        json!([gate.display().to_string()]),
    );
    wait_until("the handler's environment dump", WAIT, || {
        std::fs::read_to_string(&env_dump).is_ok_and(|t| t.ends_with('}'))
    });
    let handler_pid = wait_horse_pid(worker);
    let env: Value = serde_json::from_str(&std::fs::read_to_string(&env_dump).unwrap()).unwrap();
    for var in [
        "RQ_REDIS_URL",
        "RQ_REDIS_TLS_CA_FILE",
        "RQ_REDIS_TLS_CERT_FILE",
        "RQ_REDIS_TLS_KEY_FILE",
        "RQ_SUPERVISOR_PID",
        "SOME_SUPERVISOR_SECRET",
    ] {
        assert!(env.get(var).is_none(), "{var} leaked to the handler: {env}");
    }
    assert_eq!(env["PASSED"], "by the config");
    assert!(!env.to_string().contains(PASSWORD));
    // No socket of the worker's (Redis connections), no handoff memfd.
    let fds = fd_targets(handler_pid);
    assert!(
        !fds.iter()
            .any(|t| t.starts_with("socket:") || t.contains("memfd:")),
        "the handler inherited {fds:?}"
    );
    // The worker itself closed the handoff after reading it.
    let worker_fds = fd_targets(worker);
    assert!(
        !worker_fds.iter().any(|t| t.contains("memfd:")),
        "the worker kept {worker_fds:?}"
    );
    std::fs::write(&gate, "").unwrap();
    wait_status(&mut con, &id, &["finished"]);
    assert!(!sup.log().contains(PASSWORD), "{}", sup.log());
}
