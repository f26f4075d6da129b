//! rq-supervisor's crash cleanup (`supervisor::bookkeeping::crash_cleanup`) settles exactly the execution
//! the dead worker ran, never another worker's execution of the same job. The states are
//! written by hand to reach windows a live run only hits under long outages.

use crate::support::*;
use rq_supervisor::conn::RedisTarget;
use rq_supervisor::store::{Store, Verdict};
use rq_supervisor::supervisor::bookkeeping::crash_cleanup as settle_dead_worker;
use serde_json::json;

const DEAD_EID: &str = "0123456789abcdef0123456789abcdef";
const LIVE_EID: &str = "fedcba9876543210fedcba9876543210";

/// A job taken from queue `q` (status started, last claimed by `claimed_by`), and a dead
/// worker `dead` whose record still names it as its current job.
fn started_job(con: &mut redis::Connection, claimed_by: &str) -> String {
    let id = rs_enqueue(con, "q", "rq.builtin.noop", json!([]));
    redis::pipe()
        .cmd("LREM")
        .arg("rq:queue:q")
        .arg(0)
        .arg(&id)
        .hset(format!("rq:job:{id}"), "status", "started")
        .hset(format!("rq:job:{id}"), "worker_name", claimed_by)
        .hset_multiple(
            "rq:worker:dead",
            &[
                ("current_job", id.as_str()),
                ("queues", "q"),
                ("state", "busy"),
            ],
        )
        .sadd("rq:workers", "rq:worker:dead")
        .sadd("rq:workers:q", "rq:worker:dead")
        .exec(con)
        .unwrap();
    id
}

fn add_execution(con: &mut redis::Connection, id: &str, eid: &str, worker: Option<&str>) {
    let score = unix_now() as i64 + 100;
    redis::cmd("ZADD")
        .arg("rq:wip:q")
        .arg(score)
        .arg(format!("{id}:{eid}"))
        .exec(con)
        .unwrap();
    if let Some(w) = worker {
        redis::cmd("HSET")
            .arg(format!("rq:execution:{id}:{eid}"))
            .arg("worker_name")
            .arg(w)
            .exec(con)
            .unwrap();
    }
}

fn store(redis: &RedisServer) -> Store {
    Store::new(RedisTarget::parse(&redis.url()).unwrap())
}

fn assert_death_registered(con: &mut redis::Connection) {
    assert!(!smembers(con, "rq:workers").contains(&"rq:worker:dead".to_string()));
    assert!(!smembers(con, "rq:workers:q").contains(&"rq:worker:dead".to_string()));
    assert!(hget(con, "rq:worker:dead", "death").is_some());
    assert!(hget(con, "rq:worker:dead", "current_job").is_none());
}

#[test]
fn another_workers_execution_of_the_same_job_is_left_alone() {
    // The dead worker's execution was already settled and the job requeued (RQ's abandoned-job
    // cleanup, after an outage longer than its heartbeat TTL); another worker runs it now.
    let redis = RedisServer::start();
    let mut con = redis.con();
    let id = started_job(&mut con, "live");
    add_execution(&mut con, &id, LIVE_EID, Some("live"));

    let c = settle_dead_worker(
        &mut store(&redis),
        "dead",
        "was killed by signal 9 (SIGKILL)",
    )
    .unwrap();
    assert_eq!(c.job, Some((id.clone(), Verdict::Unknown)));
    assert_eq!(
        zrange(&mut con, "rq:wip:q"),
        vec![format!("{id}:{LIVE_EID}")],
        "the live execution stays"
    );
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("started"));
    assert!(results(&mut con, &id).is_empty());
    assert!(
        !exists(&mut con, "rq:queue:q"),
        "not requeued behind the live run"
    );
    assert_death_registered(&mut con);
}

#[test]
fn the_dead_workers_own_execution_is_settled_even_after_its_hash_expired() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    // Its execution hash has expired (a long outage), but the job says who took it last.
    let id = started_job(&mut con, "dead");
    add_execution(&mut con, &id, DEAD_EID, None);

    let c = settle_dead_worker(
        &mut store(&redis),
        "dead",
        "was killed by signal 9 (SIGKILL)",
    )
    .unwrap();
    assert_eq!(c.job, Some((id.clone(), Verdict::Failed)));
    assert!(zrange(&mut con, "rq:wip:q").is_empty());
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("failed"));
    assert_eq!(
        latest_exc(&mut con, &id),
        "WorkerDied: worker dead was killed by signal 9 (SIGKILL) while running this job; rq-supervisor settled it\n"
    );
    assert_death_registered(&mut con);
}

#[test]
fn with_two_executions_only_the_dead_workers_one_is_settled() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let id = started_job(&mut con, "live");
    add_execution(&mut con, &id, DEAD_EID, Some("dead"));
    add_execution(&mut con, &id, LIVE_EID, Some("live"));

    let c = settle_dead_worker(&mut store(&redis), "dead", "exited with status 1").unwrap();
    assert_eq!(c.job.as_ref().map(|j| j.1), Some(Verdict::Failed));
    assert_eq!(
        zrange(&mut con, "rq:wip:q"),
        vec![format!("{id}:{LIVE_EID}")]
    );
    assert!(!exists(&mut con, &format!("rq:execution:{id}:{DEAD_EID}")));
    assert!(exists(&mut con, &format!("rq:execution:{id}:{LIVE_EID}")));
    assert_death_registered(&mut con);
}
