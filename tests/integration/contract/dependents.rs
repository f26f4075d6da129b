//! RQ 2.12 dependents (§7.11) with jobs enqueued by Python's `depends_on` / `Dependency`: a
//! chain, a job with two dependencies on different queues (read from RQ's double-colon
//! `rq:job::<id>:dependencies` key), a dependent on another queue, `allow_failure`,
//! `enqueue_at_front`, retried parents, and the move out of `rq:deferred:<queue>` being
//! atomic with the parent's ending.

use crate::contract::*;

fn burst(redis: &RedisServer, queues: &[&str]) -> Proc {
    let mut w = Rqworker::new(redis)
        .burst()
        .builtin_handlers()
        .queues(queues)
        .spawn();
    assert_exit_ok(&mut w, WAIT);
    w
}

fn deps_opts(ids: &[&str]) -> String {
    serde_json::json!({ "depends_on": ids }).to_string()
}

#[test]
fn a_chain_runs_in_order_and_each_link_leaves_rq_deferred() {
    let redis = RedisServer::start();
    let a = enqueue(&redis, "q", "rq.builtin.echo", r#"["a"]"#, "{}");
    let b = enqueue(
        &redis,
        "q",
        "rq.builtin.echo",
        r#"["b"]"#,
        &deps_opts(&[&a]),
    );
    let c = enqueue(
        &redis,
        "q",
        "rq.builtin.echo",
        r#"["c"]"#,
        &deps_opts(&[&b]),
    );
    let mut con = redis.con();
    assert_eq!(job_status(&mut con, &b).as_deref(), Some("deferred"));
    assert_eq!(zrange(&mut con, "rq:deferred:q").len(), 2);
    // The producer's keys, which the worker must read exactly.
    assert_eq!(
        smembers(&mut con, &format!("rq:job::{c}:dependencies")),
        vec![b.clone()]
    );
    assert_eq!(
        smembers(&mut con, &format!("rq:job:{a}:dependents")),
        vec![b.clone()]
    );

    let w = burst(&redis, &["q"]);
    let log = w.log();
    let order: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Got rq.builtin.echo("))
        .collect();
    assert_eq!(order.len(), 3, "{log}");
    assert!(
        order[0].contains("('a')") && order[1].contains("('b')") && order[2].contains("('c')"),
        "{log}"
    );
    for id in [&a, &b, &c] {
        assert_eq!(
            job_status(&mut con, id).as_deref(),
            Some("finished"),
            "{id}"
        );
    }
    assert!(zrange(&mut con, "rq:deferred:q").is_empty());
    // All children enqueued: the dependents set is deleted, as RQ does.
    assert!(!exists(&mut con, &format!("rq:job:{a}:dependents")));
    // On success RQ gives the job's dependencies key the result TTL too (double colon).
    let t = ttl(&mut con, &format!("rq:job::{c}:dependencies"));
    assert!((400..=500).contains(&t), "ttl {t}");
    assert!(!exists(&mut con, &format!("rq:job:{c}:dependencies")));
}

#[test]
fn two_dependencies_on_two_queues_wait_for_both_then_go_to_the_childs_own_queue() {
    let redis = RedisServer::start();
    let a = enqueue(&redis, "qa", "rq.builtin.echo", r#"["a"]"#, "{}");
    let b = enqueue(&redis, "qb", "rq.builtin.echo", r#"["b"]"#, "{}");
    let c = enqueue(
        &redis,
        "qc",
        "rq.builtin.echo",
        r#"["c"]"#,
        &deps_opts(&[&a, &b]),
    );
    let mut con = redis.con();
    assert_eq!(smembers(&mut con, &format!("rq:job::{c}:dependencies")), {
        let mut v = vec![a.clone(), b.clone()];
        v.sort();
        v
    });
    assert!(zscore_f64(&mut con, "rq:deferred:qc", &c).is_some());

    // Only a is done: c still waits for b.
    burst(&redis, &["qa"]);
    assert_eq!(job_status(&mut con, &a).as_deref(), Some("finished"));
    assert_eq!(job_status(&mut con, &c).as_deref(), Some("deferred"));
    assert!(zscore_f64(&mut con, "rq:deferred:qc", &c).is_some());
    assert_eq!(llen(&mut con, "rq:queue:qc"), 0);
    // a's dependents set is kept while c is not enqueued.
    assert_eq!(
        smembers(&mut con, &format!("rq:job:{a}:dependents")),
        vec![c.clone()]
    );

    // b is done too: c moves to its own queue qc, which no worker here serves.
    burst(&redis, &["qb"]);
    assert_eq!(job_status(&mut con, &c).as_deref(), Some("queued"));
    assert_eq!(lrange(&mut con, "rq:queue:qc"), vec![c.clone()]);
    assert!(zrange(&mut con, "rq:deferred:qc").is_empty());

    burst(&redis, &["qc"]);
    let doc = job(&redis, &c);
    assert_eq!(doc["status"], "finished", "{doc}");
    assert_eq!(doc["return_value"], serde_json::json!(["c"]), "{doc}");
}

#[test]
fn allow_failure_children_follow_a_failed_parent_and_others_stay_deferred() {
    let redis = RedisServer::start();
    let p = enqueue(&redis, "q", "rq.builtin.fail", "[]", "{}");
    let strict = enqueue(
        &redis,
        "q",
        "rq.builtin.echo",
        r#"["strict"]"#,
        &deps_opts(&[&p]),
    );
    let lenient = enqueue(
        &redis,
        "q",
        "rq.builtin.echo",
        r#"["lenient"]"#,
        &serde_json::json!({ "depends_on": [p], "allow_failure": true }).to_string(),
    );
    let mut con = redis.con();
    assert_eq!(
        hget(
            &mut con,
            &format!("rq:job:{lenient}"),
            "allow_dependency_failures"
        )
        .as_deref(),
        Some("1")
    );
    burst(&redis, &["q"]);
    assert_eq!(job_status(&mut con, &p).as_deref(), Some("failed"));
    assert_eq!(job_status(&mut con, &lenient).as_deref(), Some("finished"));
    assert_eq!(job_status(&mut con, &strict).as_deref(), Some("deferred"));
    assert_eq!(zrange(&mut con, "rq:deferred:q"), vec![strict.clone()]);
}

#[test]
fn a_parent_being_retried_does_not_release_its_allow_failure_children() {
    let redis = RedisServer::start();
    let p = enqueue(
        &redis,
        "q",
        "rq.builtin.fail",
        "[]",
        r#"{"retry": {"max": 1, "interval": 600}}"#,
    );
    let child = enqueue(
        &redis,
        "q",
        "rq.builtin.echo",
        "[]",
        &serde_json::json!({ "depends_on": [p], "allow_failure": true }).to_string(),
    );
    burst(&redis, &["q"]);
    let mut con = redis.con();
    assert_eq!(job_status(&mut con, &p).as_deref(), Some("scheduled"));
    assert_eq!(job_status(&mut con, &child).as_deref(), Some("deferred"));
    assert_eq!(llen(&mut con, "rq:queue:q"), 0);
}

#[test]
fn enqueue_at_front_dependents_jump_the_queue() {
    for at_front in [true, false] {
        let redis = RedisServer::start();
        let p = enqueue(&redis, "parent", "rq.builtin.echo", "[]", "{}");
        let x = enqueue(&redis, "q", "rq.builtin.echo", r#"["x"]"#, "{}");
        let y = enqueue(&redis, "q", "rq.builtin.echo", r#"["y"]"#, "{}");
        let child = enqueue(
            &redis,
            "q",
            "rq.builtin.echo",
            r#"["child"]"#,
            &serde_json::json!({ "depends_on": [p], "dep_at_front": at_front }).to_string(),
        );
        burst(&redis, &["parent"]);
        let mut con = redis.con();
        let want = if at_front {
            vec![child.clone(), x.clone(), y.clone()]
        } else {
            vec![x.clone(), y.clone(), child.clone()]
        };
        assert_eq!(lrange(&mut con, "rq:queue:q"), want, "at_front={at_front}");
    }
}

#[test]
fn the_child_leaves_rq_deferred_in_the_same_step_as_the_parent_finishes() {
    // Readers that look at both in one transaction must never see the parent finished with
    // its only child still deferred and not queued.
    let redis = RedisServer::start();
    let specs: Vec<_> = (0..20)
        .map(|i| serde_json::json!({"func": "rq.builtin.sleep", "args": [0.02 * (i % 3) as f64]}))
        .collect();
    let parents = ids_of(rc(
        &redis,
        &["enqueue_batch", "q", &serde_json::json!(specs).to_string()],
    ));
    let specs: Vec<_> = parents
        .iter()
        .map(|p| serde_json::json!({"func": "rq.builtin.noop", "opts": {"depends_on": [p]}}))
        .collect();
    let children = ids_of(rc(
        &redis,
        &[
            "enqueue_batch",
            "kids",
            &serde_json::json!(specs).to_string(),
        ],
    ));
    assert_eq!(children.len(), 20);
    let mut w = Rqworker::new(&redis)
        .burst()
        .builtin_handlers()
        .queues(["q"])
        .spawn();
    let mut con = redis.con();
    let mut checks = 0usize;
    loop {
        let done = w.child.try_wait().unwrap().is_some();
        for (p, c) in parents.iter().zip(&children) {
            let (ps, deferred, queued): (Option<String>, Option<f64>, Option<i64>) = redis::pipe()
                .atomic()
                .hget(format!("rq:job:{p}"), "status")
                .zscore("rq:deferred:kids", c)
                .cmd("LPOS")
                .arg("rq:queue:kids")
                .arg(c)
                .query(&mut con)
                .unwrap();
            checks += 1;
            if ps.as_deref() == Some("finished") {
                assert!(
                    deferred.is_none() && queued.is_some(),
                    "parent {p} finished, child {c} deferred={deferred:?} queued={queued:?}"
                );
            } else {
                assert!(
                    deferred.is_some() && queued.is_none(),
                    "parent {p} {ps:?}, child {c} deferred={deferred:?} queued={queued:?}"
                );
            }
        }
        if done {
            break;
        }
    }
    assert_exit_ok(&mut w, WAIT);
    assert!(checks > 20);
    assert_eq!(llen(&mut con, "rq:queue:kids"), 20);
}
