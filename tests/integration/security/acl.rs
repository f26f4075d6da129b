//! Redis ACL users with passwords. The minimum rule set documented in
//! `docs/compatibility.md` is read from that file and used as-is: a supervisor and its
//! workers run every kind of job, command and cleanup under it and Redis's `ACL LOG` records
//! no refusal. A user missing a permission gets an error naming the permission and the fix;
//! the worker keeps running and nothing is lost: a job it cannot take stays queued, an
//! outcome it cannot record is written once the permission is granted.

use crate::support::supervisor::{PoolFile, wait_workers};
use crate::support::*;
use nix::sys::signal::Signal;
use serde_json::json;

const USER: &str = "rqworker";
const PASSWORD: &str = "acl-pw-Zq81";

/// The rules from the `ACL SETUSER rqworker on >PASSWORD ...` line of the docs.
fn documented_rules() -> Vec<String> {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/compatibility.md"),
    )
    .unwrap();
    let line = doc
        .lines()
        .find(|l| l.starts_with("ACL SETUSER rqworker on >PASSWORD "))
        .expect("docs/compatibility.md has the ACL SETUSER line");
    // After "ACL SETUSER rqworker on >PASSWORD": the helper sets the password itself.
    line.split_whitespace()
        .skip(5)
        .map(str::to_string)
        .collect()
}

fn acl_user(redis: &RedisServer, rules: &[String]) -> String {
    let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
    redis.acl_user(USER, PASSWORD, &rules)
}

/// Entries of `ACL LOG` as text, one per refusal.
fn acl_log(con: &mut redis::Connection) -> Vec<String> {
    let entries: Vec<redis::Value> = redis::cmd("ACL").arg("LOG").query(con).unwrap();
    entries.into_iter().map(|e| format!("{e:?}")).collect()
}

fn rules_without(rule: &str) -> Vec<String> {
    let rules = documented_rules();
    assert!(
        rules.iter().any(|r| r == rule),
        "{rule} is in the documented set"
    );
    rules.into_iter().filter(|r| r != rule).collect()
}

#[test]
fn the_documented_minimum_rules_are_enough_for_workers_and_the_supervisor() {
    let redis = RedisServer::start();
    let url = acl_user(&redis, &documented_rules());
    let pool = PoolFile::new(
        "[worker]\nbuiltin_handlers = true\nmaintenance_interval = \"1s\"\nwith_scheduler = true\n\
         [pools.acl]\nqueues = [\"q\", \"low\"]\nworkers = 1\n",
    );
    let mut sup = Supervisor::at(&url, &pool).spawn();
    let mut con = redis.con();
    let worker = wait_workers(&mut con, 1)[0].clone();

    // Finished, failed after a retry, a dependent, a scheduled job.
    let ok = rs_enqueue(&mut con, "q", "rq.builtin.echo", json!(["ok"]));
    let retried = rs_enqueue_with(
        &mut con,
        "q",
        "rq.builtin.fail",
        json!(["boom"]),
        &rq_supervisor::producer::EnqueueOptions {
            retry: Some((1, vec![0])),
            ..Default::default()
        },
    );
    let parent = py_enqueue(&redis, "q", "rq.builtin.echo", "[1]", "{}", "{}");
    let child = py_enqueue(
        &redis,
        "low",
        "rq.builtin.echo",
        "[2]",
        "{}",
        &json!({ "depends_on": parent }).to_string(),
    );
    let scheduled: String = serde_json::from_str(
        python(
            &redis,
            "rqtool.py",
            &["enqueue-in", "q", "1", "rq.builtin.echo", "[3]"],
        )
        .trim(),
    )
    .unwrap();
    for id in [&ok, &parent, &child, &scheduled] {
        wait_status(&mut con, id, &["finished"]);
    }
    wait_status(&mut con, &retried, &["failed"]);

    // RQ's stop-job command over pub/sub.
    let long = rs_enqueue(&mut con, "q", "rq.builtin.sleep", json!([30]));
    wait_status(&mut con, &long, &["started"]);
    python(&redis, "rqtool.py", &["send", "stop-job", &long]);
    wait_status(&mut con, &long, &["stopped"]);

    // A crash: the supervisor's cleanup (same user) settles the job and registers the death.
    let crashed = rs_enqueue(&mut con, "q", "rq.builtin.sleep", json!([30]));
    wait_status(&mut con, &crashed, &["started"]);
    let pid = wait_workers(&mut con, 1)[0].1;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    wait_status(&mut con, &crashed, &["failed"]);
    sup.wait_for_log("crash cleanup done");
    wait_until("a replacement worker", WAIT, || {
        crate::support::supervisor::workers(&mut con)
            .iter()
            .any(|(name, _)| *name != worker.0)
    });

    sup.signal(Signal::SIGTERM);
    assert!(sup.wait_exit(WAIT).success(), "{}", sup.log());
    assert!(
        crate::support::supervisor::workers(&mut con).is_empty(),
        "death registered"
    );
    // Every script checks its commands with redis.acl_check_cmd; Redis 7.0 crashed when
    // that was called with fewer arguments than the command needs (redis/redis#14843).
    assert!(
        !redis.log_text().contains("crashed by signal"),
        "{}",
        redis.log_text()
    );
    let refusals = acl_log(&mut con);
    assert!(
        refusals.is_empty(),
        "Redis refused something:\n{}\n{}",
        refusals.join("\n"),
        sup.log()
    );
    assert!(!sup.log().contains(PASSWORD));
}

#[test]
fn a_refused_settle_names_the_permission_and_the_outcome_is_written_once_granted() {
    let redis = RedisServer::start();
    let url = acl_user(&redis, &rules_without("+xadd"));
    let w = Rqworker::at(&url)
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    w.wait_for_log("Listening for work");
    let mut con = redis.con();
    let id = rs_enqueue(&mut con, "q", "rq.builtin.echo", json!(["kept"]));
    w.wait_for_log("cannot record the outcome of job");
    let log = w.log();
    assert!(
        log.contains("no permissions to run the 'xadd' command"),
        "{log}"
    );
    // Retried with backoff, not in a busy loop.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let refusals = w.log().matches("cannot record the outcome").count();
    assert!(refusals <= 4, "{refusals} attempts in 300 ms:\n{}", w.log());
    assert!(
        log.contains("the Redis user lacks a permission (the 'xadd' command)")
            && log.contains("ACL SETUSER <user> +xadd")
            && log.contains("docs/compatibility.md"),
        "{log}"
    );
    assert!(alive(w.pid()), "{log}");
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(USER)
        .arg("+xadd")
        .exec(&mut con)
        .unwrap();
    wait_status(&mut con, &id, &["finished"]);
    assert_eq!(latest_return(&mut con, &id), Some(json!(["kept"])));
    // And it goes on with the next job.
    let next = rs_enqueue(&mut con, "q", "rq.builtin.echo", json!(["next"]));
    wait_status(&mut con, &next, &["finished"]);
    assert!(!w.log().contains(PASSWORD));
}

#[test]
fn a_refused_claim_leaves_the_job_queued_and_names_the_fix() {
    let redis = RedisServer::start();
    let url = acl_user(&redis, &rules_without("+lpop"));
    let w = Rqworker::at(&url)
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    w.wait_for_log("cannot take a job");
    let mut con = redis.con();
    let id = rs_enqueue(&mut con, "q", "rq.builtin.echo", json!(["waits"]));
    // A refusal is logged at every attempt: wait for one made with the job in the queue.
    let refusals = w.log().matches("cannot take a job").count();
    wait_until("a claim attempt after the enqueue", WAIT, || {
        w.log().matches("cannot take a job").count() > refusals
    });
    let log = w.log();
    assert!(
        log.contains("the 'lpop' command") && log.contains("ACL SETUSER <user> +lpop"),
        "{log}"
    );
    assert!(
        !log.contains("delete or rename that key"),
        "a refusal is not a broken queue: {log}"
    );
    // Still queued, and the worker is alive and retrying.
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("queued"));
    let queued: Vec<String> = redis::cmd("LRANGE")
        .arg("rq:queue:q")
        .arg(0)
        .arg(-1)
        .query(&mut con)
        .unwrap();
    assert_eq!(queued, vec![id.clone()]);
    assert!(alive(w.pid()));
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(USER)
        .arg("+lpop")
        .exec(&mut con)
        .unwrap();
    wait_status(&mut con, &id, &["finished"]);
}

#[test]
fn a_user_without_client_tracking_still_works_and_is_told_the_fix() {
    let redis = RedisServer::start();
    let url = acl_user(&redis, &rules_without("+client|tracking"));
    let w = Rqworker::at(&url)
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    w.wait_for_log("cannot open the notification connection");
    let log = w.log();
    assert!(
        log.contains("NOPERM") && log.contains("+client|tracking"),
        "{log}"
    );
    // Without notices it checks the queues every second.
    let mut con = redis.con();
    let id = rs_enqueue(&mut con, "q", "rq.builtin.echo", json!(["polled"]));
    wait_status(&mut con, &id, &["finished"]);
}

#[test]
fn a_wrong_password_stops_the_worker_at_start_without_showing_it() {
    let redis = RedisServer::start();
    acl_user(&redis, &documented_rules());
    let url = format!(
        "unix://{}?user={USER}&pass=not-the-password-xyz",
        redis.socket.display()
    );
    let mut w = Rqworker::at(&url).name("w").queues(["q"]).spawn();
    assert_eq!(w.wait_exit(WAIT).code(), Some(1));
    let log = w.log();
    assert!(
        log.contains("check the user and password in the Redis URL"),
        "{log}"
    );
    assert!(!log.contains("not-the-password-xyz"), "{log}");
}
