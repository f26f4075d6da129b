//! Redis refusing the worker (docs/reliability.md, "Bad input", Redis rows): a queue key of
//! the wrong type, Redis out of memory (`maxmemory` with `noeviction`), and a read-only
//! replica. In each case the message says what is wrong and what to do, the supervisor and
//! its workers keep running, and no job is lost: it stays queued while Redis refuses writes
//! and runs once Redis accepts them. (ACL refusals: tests/security_acl.rs.)

use std::time::Duration;

use crate::support::supervisor::{PoolFile, wait_workers};
use crate::support::*;
use serde_json::json;

fn pool_file(queues: &str) -> PoolFile {
    PoolFile::new(&format!(
        "[supervisor]\nhealth_interval = \"200ms\"\n[worker]\nbuiltin_handlers = true\n\
         [pools.p]\nqueues = [{queues}]\n\
         [pools.p.restart]\nbackoff_initial = \"50ms\"\nbackoff_max = \"200ms\"\ndegraded_interval = \"200ms\"\n"
    ))
}

#[test]
fn a_queue_key_of_the_wrong_type_is_skipped_and_reported_while_other_queues_run() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    redis::cmd("SET")
        .arg("rq:queue:bad")
        .arg("not a list")
        .exec(&mut con)
        .unwrap();
    let pool = pool_file("\"bad\", \"good\"");
    let sup = Supervisor::new(&redis, &pool).spawn();
    wait_workers(&mut con, 1);
    let ids: Vec<String> = (0..3)
        .map(|i| rs_enqueue(&mut con, "good", "rq.builtin.echo", json!([i])))
        .collect();
    for id in &ids {
        wait_status(&mut con, id, &["finished"]);
    }
    sup.wait_for_log("queue bad: WRONGTYPE");
    let log = sup.log();
    assert!(
        log.contains("rq:queue:bad must be a list of job ids: delete or rename that key. Skipping this queue, serving the others"),
        "{log}"
    );
    // Reported once a minute, not once per claim.
    assert_eq!(log.matches("queue bad: WRONGTYPE").count(), 1, "{log}");
    // Fixed: the queue is served again, by the same worker.
    redis::cmd("DEL")
        .arg("rq:queue:bad")
        .exec(&mut con)
        .unwrap();
    let id = rs_enqueue(&mut con, "bad", "rq.builtin.echo", json!(["fixed"]));
    wait_status(&mut con, &id, &["finished"]);
    assert_eq!(wait_workers(&mut con, 1).len(), 1);
    assert!(!sup.log().contains("supervisor: pid"), "no worker exited");
}

#[test]
fn out_of_memory_keeps_the_job_queued_until_redis_accepts_writes_again() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let pool = pool_file("\"q\"");
    let sup = Supervisor::new(&redis, &pool).spawn();
    let worker = wait_workers(&mut con, 1)[0].clone();
    // Suspend the worker, queue a job, make Redis refuse writes, then resume: the worker
    // wakes and tries to take the job while Redis is out of memory.
    redis::cmd("SET")
        .arg("rq:suspended")
        .arg("1")
        .exec(&mut con)
        .unwrap();
    wait_worker_state(&mut con, &worker.0, "suspended");
    let id = rs_enqueue(&mut con, "q", "rq.builtin.echo", json!(["after OOM"]));
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .exec(&mut con)
        .unwrap();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .exec(&mut con)
        .unwrap();
    redis::cmd("DEL")
        .arg("rq:suspended")
        .exec(&mut con)
        .unwrap();
    sup.wait_for_log("cannot take a job");
    let log = sup.log();
    assert!(
        log.contains("command not allowed when used memory")
            && log.contains("Redis is out of memory")
            && log.contains("raise maxmemory"),
        "{log}"
    );
    // Nothing was taken: still queued, in the queue, not started.
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("queued"));
    assert_eq!(lrange(&mut con, "rq:queue:q"), vec![id.clone()]);
    assert!(zrange(&mut con, "rq:wip:q").is_empty());
    // Room again: the job runs on the same worker, which never stopped.
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .exec(&mut con)
        .unwrap();
    wait_status(&mut con, &id, &["finished"]);
    assert_eq!(latest_return(&mut con, &id), Some(json!(["after OOM"])));
    assert_eq!(wait_workers(&mut con, 1)[0].1, worker.1);
    assert!(!sup.log().contains("supervisor: pid"), "no worker exited");
}

#[test]
fn a_read_only_replica_is_named_and_the_job_runs_once_it_is_promoted() {
    // The primary needs a TCP port: replication does not run over unix sockets.
    let primary = RedisServer::start_on_port("rqs-redis-", |port| {
        vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
        ]
    });
    let port = primary.port.unwrap();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port.to_string()]);
    let mut rcon = replica.con();
    wait_until("the replica in sync", WAIT, || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut rcon)
            .unwrap();
        info.contains("master_link_status:up")
    });
    let mut pcon = primary.con();
    let id = rs_enqueue(
        &mut pcon,
        "q",
        "rq.builtin.echo",
        json!(["from the primary"]),
    );
    wait_until("the job replicated", WAIT, || {
        job_status(&mut rcon, &id).as_deref() == Some("queued")
    });
    let pool = pool_file("\"q\"");
    let sup = Supervisor::new(&replica, &pool).spawn();
    sup.wait_for_log("read only replica");
    wait_until("a few restarts", WAIT, || {
        sup.log().matches("exited with status 1").count() >= 2
    });
    let log = sup.log();
    assert!(
        log.contains("You can't write against a read only replica")
            && log.contains("this Redis is a read-only replica: point the URL at the primary"),
        "{log}"
    );
    // The job is untouched, on both.
    assert_eq!(job_status(&mut pcon, &id).as_deref(), Some("queued"));
    assert_eq!(job_status(&mut rcon, &id).as_deref(), Some("queued"));
    // The supervisor keeps trying; once the replica is promoted, a worker registers there
    // and runs the job.
    redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .exec(&mut rcon)
        .unwrap();
    wait_status_within(&mut rcon, &id, &["finished"], Duration::from_secs(30));
    assert_eq!(
        latest_return(&mut rcon, &id),
        Some(json!(["from the primary"]))
    );
    assert!(alive(sup.pid()));
}
