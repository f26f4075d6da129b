//! Enqueueing with the crate's own producer, for tests where the producer is not the subject.

use std::time::{Duration, Instant};

/// Enqueues with the crate's Rust producer (fast; for tests where the producer is not the
/// subject). `args` must be a JSON list.
pub fn rs_enqueue(
    con: &mut redis::Connection,
    queue: &str,
    func: &str,
    args: serde_json::Value,
) -> String {
    rs_enqueue_with(con, queue, func, args, &Default::default())
}

pub fn rs_enqueue_with(
    con: &mut redis::Connection,
    queue: &str,
    func: &str,
    args: serde_json::Value,
    opts: &rq_supervisor::producer::EnqueueOptions,
) -> String {
    let serde_json::Value::Array(args) = args else {
        panic!("args must be a list")
    };
    rq_supervisor::producer::enqueue(con, queue, func, args, Default::default(), opts)
        .expect("enqueue")
}

/// Enqueues with the Rust producer through connection losses and Redis restarts. The job
/// must have its own id (`opts.job_id`): a failed enqueue is repeated only if the job does not
/// exist, since the producer writes it in one MULTI/EXEC (it either fully happened or not at
/// all), so nothing is doubled or dropped. `con` is reopened from `client` as needed. Returns
/// how many attempts failed.
pub fn enqueue_through_outages(
    client: &redis::Client,
    con: &mut Option<redis::Connection>,
    queue: &str,
    func: &str,
    args: Vec<serde_json::Value>,
    opts: &rq_supervisor::producer::EnqueueOptions,
    limit: Duration,
) -> u32 {
    let id = opts
        .job_id
        .clone()
        .expect("enqueue_through_outages needs a job id");
    let deadline = Instant::now() + limit;
    let mut failures = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "cannot enqueue {id} within {limit:?}"
        );
        let c = match con {
            Some(c) => c,
            None => match client.get_connection_with_timeout(Duration::from_secs(3)) {
                Ok(c) => {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(15)));
                    con.insert(c)
                }
                Err(_) => {
                    failures += 1;
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        let exists: redis::RedisResult<bool> =
            redis::cmd("EXISTS").arg(format!("rq:job:{id}")).query(c);
        let done = match exists {
            Ok(true) => true,
            Ok(false) => rq_supervisor::producer::enqueue(
                c,
                queue,
                func,
                args.clone(),
                Default::default(),
                opts,
            )
            .is_ok(),
            Err(_) => false,
        };
        if done {
            return failures;
        }
        failures += 1;
        *con = None;
        std::thread::sleep(Duration::from_millis(50));
    }
}
