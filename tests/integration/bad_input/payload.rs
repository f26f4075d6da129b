//! Payload rows of docs/reliability.md's bad-input table that tests/worker_bad_input.rs does
//! not already cover: 50 MB of arguments (they run, through a native horse and through a
//! command handler's stdin, without a 50 MB log line), a compression bomb (refused with a
//! message, without exhausting the worker's memory), zlib-compressed data that is not
//! UTF-8, and TTLs no Redis command accepts. The worker keeps running and serves the next
//! job each time.

use crate::support::*;
use serde_json::json;

/// Runs Python with RQ's producer against `redis`; `code` gets `q` (a JSON-serializer Queue
/// on queue "q"), `conn`, `zlib` and `corrupt(data)`, which enqueues a job whose `data` is
/// replaced before any worker can see it; `code` must print a job id.
fn py_code(redis: &RedisServer, code: &str) -> String {
    let script = format!(
        "import json, os, sys, zlib\nfrom redis import Redis\nfrom rq import Queue\n\
         from rq.serializers import JSONSerializer\n\
         conn = Redis.from_url(os.environ['RQ_REDIS_URL'])\n\
         q = Queue('q', connection=conn, serializer=JSONSerializer)\n\
         def corrupt(data):\n\
         \x20   job = Queue('hold', connection=conn, serializer=JSONSerializer).enqueue('rq.builtin.noop')\n\
         \x20   conn.lrem('rq:queue:hold', 0, job.id)\n\
         \x20   conn.hset(job.key, mapping={{'data': data, 'origin': 'q'}})\n\
         \x20   conn.rpush('rq:queue:q', job.id)\n\
         \x20   return job.id\n{code}\n"
    );
    let out = python_cmd(redis)
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn worker(redis: &RedisServer, cfg: &str) -> Proc {
    let w = Rqworker::new(redis)
        .config(cfg)
        .builtin_handlers()
        .name("w")
        .queues(["q"])
        .spawn();
    w.wait_for_log("Listening for work");
    w
}

fn next_job_still_runs(redis: &RedisServer, w: &Proc) {
    let mut con = redis.con();
    let id = rs_enqueue(&mut con, "q", "rq.builtin.echo", json!(["next"]));
    wait_status(&mut con, &id, &["finished"]);
    assert!(alive(w.pid()), "{}", w.log());
}

#[test]
fn fifty_megabytes_of_arguments_run_without_a_fifty_megabyte_log_line() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    // A command handler that counts the bytes of the job it gets on stdin.
    let cfg = write_config(
        dir.path(),
        "[handlers.\"tasks.count\"]\ncommand = [\"wc\", \"-c\"]\ntimeout = \"120s\"\n",
    );
    let w = worker(&redis, &cfg);
    let size = 50 * 1000 * 1000;
    let native = py_code(
        &redis,
        &format!("print(q.enqueue('rq.builtin.noop', 'x' * {size}).id)"),
    );
    let command = py_code(
        &redis,
        &format!("print(q.enqueue('tasks.count', big='y' * {size}).id)"),
    );
    let mut con = redis.con();
    for id in [&native, &command] {
        let status = wait_status(&mut con, id, &["finished", "failed"]);
        assert_eq!(
            status,
            "finished",
            "{}",
            w.log().chars().take(2000).collect::<String>()
        );
    }
    let counted = latest_return(&mut con, &command).unwrap();
    assert!(
        counted.as_u64().unwrap() > size as u64,
        "the handler read the whole job from stdin: {counted}"
    );
    let log = w.log();
    assert!(
        log.len() < 100_000,
        "the log holds the arguments: {} bytes",
        log.len()
    );
    assert!(
        log.contains("Got rq.builtin.noop('xxxx"),
        "{}",
        &log[..log.len().min(2000)]
    );
    next_job_still_runs(&redis, &w);
}

#[test]
fn a_compression_bomb_is_refused_without_exhausting_memory() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let cfg = write_config(dir.path(), "");
    let w = worker(&redis, &cfg);
    // About 300 KB of zlib that inflates to 300 MiB.
    let id = py_code(
        &redis,
        "c = zlib.compressobj()\n\
         data = b''.join(c.compress(b' ' * (1 << 20)) for _ in range(300)) + c.flush()\n\
         print(corrupt(data))",
    );
    let mut con = redis.con();
    assert_eq!(
        wait_status(&mut con, &id, &["finished", "failed"]),
        "failed"
    );
    let exc = latest_exc(&mut con, &id);
    assert!(
        exc.starts_with("DeserializationError: the job payload inflates to more than 256 MiB")
            && exc.contains("pass large data by reference"),
        "{exc}"
    );
    next_job_still_runs(&redis, &w);
}

#[test]
fn zlib_data_that_is_not_utf8_fails_the_job() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let cfg = write_config(dir.path(), "");
    let w = worker(&redis, &cfg);
    let id = py_code(
        &redis,
        "print(corrupt(zlib.compress(b'[\"rq.builtin.noop\", null, [\"\\xff\\xfe\"], {}]')))",
    );
    let mut con = redis.con();
    assert_eq!(
        wait_status(&mut con, &id, &["finished", "failed"]),
        "failed"
    );
    let exc = latest_exc(&mut con, &id);
    assert!(
        exc.starts_with("DeserializationError: the job payload is not UTF-8 text")
            && exc.contains("zlib-compressed JSON as written by RQ's JSONSerializer"),
        "{exc}"
    );
    next_job_still_runs(&redis, &w);
}

#[test]
fn absurd_ttls_in_the_job_hash_do_not_keep_the_outcome_from_being_recorded() {
    let redis = RedisServer::start();
    let dir = temp_dir();
    let cfg = write_config(dir.path(), "");
    let w = worker(&redis, &cfg);
    let mut con = redis.con();
    let mut ids = Vec::new();
    for (func, field, value) in [
        ("rq.builtin.echo", "result_ttl", "1e30"),
        ("rq.builtin.echo", "result_ttl", "99999999999999999999"),
        ("rq.builtin.echo", "result_ttl", "2.5"),
        ("rq.builtin.fail", "failure_ttl", "1e30"),
        ("rq.builtin.fail", "failure_ttl", "nan"),
    ] {
        // Written after the enqueue but before a worker can see the job.
        redis::cmd("SET")
            .arg("rq:suspended")
            .arg("1")
            .exec(&mut con)
            .unwrap();
        let id = rs_enqueue(&mut con, "q", func, json!(["x"]));
        redis::cmd("HSET")
            .arg(format!("rq:job:{id}"))
            .arg(field)
            .arg(value)
            .exec(&mut con)
            .unwrap();
        redis::cmd("DEL")
            .arg("rq:suspended")
            .exec(&mut con)
            .unwrap();
        ids.push((id, func));
    }
    for (id, func) in &ids {
        let want = if *func == "rq.builtin.echo" {
            "finished"
        } else {
            "failed"
        };
        assert_eq!(
            wait_status(&mut con, id, &["finished", "failed"]),
            want,
            "{}",
            w.log()
        );
    }
    assert!(
        !w.log().contains("cannot record the outcome"),
        "{}",
        w.log()
    );
    next_job_still_runs(&redis, &w);
}
