//! Python jobs in no-fork mode (`-w rq.SimpleWorker`): the app's function runs in the worker
//! process itself, so the app's state lives from job to job, as under RQ's SimpleWorker; the
//! timeout raises JobTimeoutException inside the job and the worker goes on.

use super::*;
use serde_json::json;

const APP: &str = r#"
import os, time

calls = []

def pid():
    return os.getpid()

def remember(n):
    calls.append(n)
    return list(calls)

def sleepy(secs):
    try:
        time.sleep(secs)
    finally:
        print("finally ran", flush=True)
"#;

#[test]
fn python_jobs_run_in_the_worker_keep_the_apps_state_and_time_out_inside() {
    let redis = RedisServer::start();
    let app = App::new(&[("tasks.py", APP)]);
    let w = app
        .worker(&redis)
        .opt("-w", "rq.SimpleWorker")
        .queues(["q"])
        .spawn();
    let mut con = redis.con();
    let pid = rs_enqueue(&mut con, "q", "tasks.pid", json!([]));
    let one = rs_enqueue(&mut con, "q", "tasks.remember", json!([1]));
    let two = rs_enqueue(&mut con, "q", "tasks.remember", json!([2]));
    wait_status_within(&mut con, &two, &["finished"], RUN);
    assert_eq!(
        latest_return(&mut con, &pid),
        Some(json!(w.pid().as_raw())),
        "the job ran in the worker process"
    );
    assert_eq!(latest_return(&mut con, &one), Some(json!([1])));
    assert_eq!(
        latest_return(&mut con, &two),
        Some(json!([1, 2])),
        "state kept"
    );
    let opts = rq_supervisor::producer::EnqueueOptions {
        timeout: Some(1),
        ..Default::default()
    };
    let slow = rs_enqueue_with(&mut con, "q", "tasks.sleepy", json!([30]), &opts);
    wait_status_within(&mut con, &slow, &["failed"], RUN);
    let exc = latest_exc(&mut con, &slow);
    assert!(
        exc.contains("JobTimeoutException: Task exceeded maximum timeout value (1 seconds)"),
        "{exc}"
    );
    w.wait_for_log("finally ran");
    // The worker lives on, with its state.
    let three = rs_enqueue(&mut con, "q", "tasks.remember", json!([3]));
    wait_status_within(&mut con, &three, &["finished"], RUN);
    assert_eq!(latest_return(&mut con, &three), Some(json!([1, 2, 3])));
    assert!(alive(w.pid()), "{}", w.log());
}
