//! Bad config files (docs/reliability.md, "Bad input", config rows). Each is refused with
//! exit 2 by `rq-supervisor check`, by `rq-supervisor` at start and by `rqworker -c`, with a
//! message naming the file, the key and the fix; sent to a running supervisor with SIGHUP it
//! is refused while the running pools keep working (a job queued after the refusal runs).

use crate::support::supervisor::{PoolFile, wait_workers};
use crate::support::*;
use nix::sys::signal::Signal;
use serde_json::json;

const GOOD: &str = "[worker]\nbuiltin_handlers = true\n[pools.a]\nqueues = [\"q\"]\n";

/// Checks one bad file everywhere it can be read; `wanted` are pieces of the message.
fn refused_everywhere(bad: &str, wanted: &[&str]) {
    let redis = RedisServer::start();
    let pool = PoolFile::new(bad);
    let path = pool.path.display().to_string();
    let check = |out: std::process::Output, what: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(stderr.contains(&path), "{what} names the file: {stderr}");
        for w in wanted {
            assert!(stderr.contains(w), "{what}: wanted {w:?} in {stderr}");
        }
    };
    check(
        Supervisor::new(&redis, &pool).arg("check").output(),
        "check",
    );
    check(Supervisor::new(&redis, &pool).output(), "start");
    check(
        Rqworker::new(&redis)
            .config(&path)
            .burst()
            .queues(["q"])
            .output(),
        "rqworker -c",
    );

    // A running supervisor refuses it on reload and keeps serving.
    pool.rewrite(GOOD);
    let sup = Supervisor::new(&redis, &pool).spawn();
    let mut con = redis.con();
    let before = wait_workers(&mut con, 1);
    pool.rewrite(bad);
    sup.signal(Signal::SIGHUP);
    sup.wait_for_log("reload refused, running pools untouched");
    let log = sup.log();
    for w in wanted {
        assert!(log.contains(w), "reload: wanted {w:?} in {log}");
    }
    let id = rs_enqueue(&mut con, "q", "rq.builtin.echo", json!(["still served"]));
    wait_status(&mut con, &id, &["finished"]);
    assert_eq!(
        wait_workers(&mut con, 1),
        before,
        "the same worker served it"
    );
    assert!(alive(sup.pid()));
}

#[test]
fn toml_syntax_error() {
    refused_everywhere(
        "[pools.a\nqueues = [\"q\"]\n",
        &[
            "TOML parse error at line 1, column 9",
            "unclosed table",
            "fix the file at the line shown",
        ],
    );
}

#[test]
fn unknown_key() {
    refused_everywhere(
        "[pools.a]\nqueues = [\"q\"]\nwrokers = 2\n",
        &["unknown field `wrokers`, expected one of", "`workers`"],
    );
}

#[test]
fn wrong_type() {
    refused_everywhere(
        "[pools.a]\nqueues = \"q\"\n",
        &["invalid type: string \"q\", expected a sequence"],
    );
}

#[test]
fn zero_workers() {
    refused_everywhere(
        "[pools.a]\nqueues = [\"q\"]\nworkers = 0\n",
        &["[pools.a] workers: is 0; a pool needs at least one worker; write workers = 1 or more"],
    );
}

#[test]
fn empty_queue_list_and_invalid_queue_names() {
    refused_everywhere(
        "[pools.a]\nqueues = []\n",
        &["[pools.a] queues: is empty; list at least one queue"],
    );
    refused_everywhere(
        "[pools.a]\nqueues = [\"a b\"]\n",
        &[
            "[pools.a] queues: queue name \"a b\" contains ' '",
            "use names without commas",
        ],
    );
    refused_everywhere(
        "[pools.a]\nqueues = [\"\"]\n",
        &["[pools.a] queues: a queue name is empty"],
    );
}

#[test]
fn bad_duration() {
    refused_everywhere(
        "[supervisor]\nwarm_timeout = \"soon\"\n[pools.a]\nqueues = [\"q\"]\n",
        &[
            "\"soon\" is not a duration",
            "write a number of seconds or \"30s\"",
        ],
    );
}

#[test]
fn bad_redis_url() {
    // The password of a URL that does not parse is masked too.
    refused_everywhere(
        "[redis]\nurl = \"redis://u:pw-visible@host:notaport\"\n[pools.a]\nqueues = [\"q\"]\n",
        &[
            "[redis] url: invalid Redis URL redis://u:***@host:notaport",
            "write it as redis://",
        ],
    );
    let pool = PoolFile::new("[redis]\nurl = \"redis://u:pw-visible@host:notaport\"\n");
    let out = Supervisor::check(&pool).output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("redis://u:***@host:notaport"), "{stderr}");
    assert!(!stderr.contains("pw-visible"), "{stderr}");
}

#[test]
fn missing_handler_program() {
    refused_everywhere(
        "[pools.a]\nqueues = [\"q\"]\n[handlers.\"t.x\"]\ncommand = [\"/no/such/program\"]\n",
        &[
            "[handlers.\"t.x\"] command: /no/such/program cannot be used",
            "install the program, fix the path",
        ],
    );
}
