//! Environment faults are not job failures: a worker whose process or file limit is reached
//! cannot start a work horse, a command handler or a Python job, and the job goes back to the
//! front of its queue unchanged; the worker backs off, names the limit and its value, and after
//! a streak of five exits with status 3 (never "burst finished" with jobs left). A worker with
//! normal limits then runs them all. Under rq-supervisor the pool turns degraded with that
//! reason instead of restarting in a loop.
//!
//! The limits are real: `RLIMIT_NPROC` binds only a user that is not root, so the workers run
//! as an unprivileged uid of their own (one per test, so that parallel tests do not share a
//! process count), which needs root; elsewhere these tests skip with a message. A limit is set
//! at exec (as `prlimit CMD` would) or on the running worker (`prlimit --pid`), after a first
//! job has run, so that the Python interpreter is up and the fault is the horse's start.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use crate::support::jail::*;
use crate::support::supervisor::{PoolFile, workers};
use crate::support::*;
use nix::sys::resource::{Resource, setrlimit};
use serde_json::json;

const QUEUE: &str = "q";
const JOBS: usize = 20;
/// How long a worker may take to give up: five failures with 0.25 + 0.5 + 1 + 2 s of backoff
/// between them (jittered), and the slack of a loaded machine.
const GIVE_UP: Duration = Duration::from_secs(30);

/// Which way a job is run.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// `rq.builtin.echo`: a forked work horse.
    Native,
    /// A `[handlers]` program.
    Command,
    /// The app's Python function `tasks.add` (a JSON job).
    #[cfg(feature = "python")]
    Python,
}

#[derive(Clone, Copy, Debug)]
enum Limit {
    /// `RLIMIT_NPROC` 1: the worker is the user's only allowed process.
    Processes,
    /// `RLIMIT_NOFILE` 3 on a running worker (8 at exec): no descriptor for a pipe.
    Files,
}

impl Limit {
    fn resource(self) -> Resource {
        match self {
            Limit::Processes => Resource::RLIMIT_NPROC,
            Limit::Files => Resource::RLIMIT_NOFILE,
        }
    }

    /// What the worker's diagnosis says of it.
    fn named(self, value: u64) -> String {
        match self {
            Limit::Processes => format!("RLIMIT_NPROC is {value}"),
            Limit::Files => format!("RLIMIT_NOFILE is {value}"),
        }
    }
}

/// A Redis, an app directory and a copy of `rqworker` that the test's own uid can reach.
struct Jail {
    redis: RedisServer,
    app: tempfile::TempDir,
    program: std::path::PathBuf,
    config: String,
    uid: u32,
}

impl Jail {
    fn new(uid: u32) -> Jail {
        let redis = public_redis(&[]);
        let app = open_dir();
        let program = public_copy(app.path(), "rqworker");
        std::fs::write(
            app.path().join("tasks.py"),
            "def add(a, b):\n    return a + b\n",
        )
        .unwrap();
        let handler = write_script(app.path(), "hello.sh", "#!/bin/sh\necho hello\n");
        let config = write_config(
            app.path(),
            &format!(
                "[worker]\nbuiltin_handlers = true\n[handlers.\"tasks.hello\"]\ncommand = [{}]\n",
                toml_str(handler.display().to_string())
            ),
        );
        Jail {
            redis,
            app,
            program,
            config,
            uid,
        }
    }

    /// `rqworker -c CONFIG q` from the app directory, as the jail's uid, with `limit` set at
    /// exec when given.
    fn worker(&self, limit: Option<(Limit, u64)>, burst: bool) -> Proc {
        let mut w = Rqworker::new(&self.redis)
            .config(&self.config)
            .name("jailed");
        if burst {
            w = w.burst();
        }
        if let Some(python) = system_python() {
            w = w.opt("--python", python);
        }
        let mut cmd = w.queues([QUEUE]).current_dir(self.app.path()).command();
        // The program is the public copy; everything else as the builder made it.
        let mut jailed = std::process::Command::new(&self.program);
        jailed.args(cmd.get_args()).current_dir(self.app.path());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => jailed.env(k, v),
                None => jailed.env_remove(k),
            };
        }
        cmd = jailed;
        cmd.uid(self.uid).gid(NOBODY);
        if let Some((limit, value)) = limit {
            let resource = limit.resource();
            // SAFETY: setrlimit is async-signal-safe; it only lowers this child's own limit.
            unsafe {
                cmd.pre_exec(move || {
                    setrlimit(resource, value, value).map_err(std::io::Error::from)
                });
            }
        }
        Proc::spawn(cmd)
    }

    fn enqueue(&self, con: &mut redis::Connection, kind: Kind, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| match kind {
                Kind::Native => rs_enqueue(con, QUEUE, "rq.builtin.echo", json!([i])),
                Kind::Command => rs_enqueue(con, QUEUE, "tasks.hello", json!([])),
                #[cfg(feature = "python")]
                Kind::Python => rs_enqueue(con, QUEUE, "tasks.add", json!([i, 1])),
            })
            .collect()
    }
}

/// Debian's `/usr/bin/python3`, which any user can run (a pyenv under /root is not), when it is
/// the Python the tests build for; the Python cases need it.
fn system_python() -> Option<String> {
    if !cfg!(feature = "python") {
        return None;
    }
    let version = |py: &str| {
        std::process::Command::new(py)
            .args(["-c", "import sys; print(sys.version_info[:2])"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| o.stdout)
    };
    let system = "/usr/bin/python3";
    (Path::new(system).exists() && version(system) == version(&python_bin()))
        .then(|| system.to_string())
}

/// Sets `limit` to `value` on the running process `pid` of `uid`, as `prlimit --pid` does: run
/// as that uid, which may lower its own processes' limits without CAP_SYS_RESOURCE (which a
/// container's root may lack).
fn prlimit_pid(pid: u32, uid: u32, limit: Limit, value: u64) {
    let flag = match limit {
        Limit::Processes => "--nproc",
        Limit::Files => "--nofile",
    };
    let out = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("{flag}={value}:{value}"),
        ])
        .uid(uid)
        .gid(NOBODY)
        .output()
        .expect("run prlimit (util-linux)");
    assert!(out.status.success(), "prlimit: {out:?}");
}

/// Every job hash as it is now, for "unchanged".
fn snapshot(
    con: &mut redis::Connection,
    ids: &[String],
) -> Vec<std::collections::HashMap<String, String>> {
    ids.iter()
        .map(|id| hgetall(con, &format!("rq:job:{id}")))
        .collect()
}

/// The jobs are all queued, in their order, exactly as they were enqueued: no result, no
/// failure, nothing in flight.
fn assert_untouched(
    con: &mut redis::Connection,
    ids: &[String],
    before: &[std::collections::HashMap<String, String>],
    log: &str,
) {
    assert_eq!(
        lrange(con, &format!("rq:queue:{QUEUE}")),
        ids,
        "queue order\n{log}"
    );
    assert_eq!(snapshot(con, ids), before, "job hashes changed\n{log}");
    for id in ids {
        assert!(results(con, id).is_empty(), "{id} has a result\n{log}");
    }
    for registry in ["rq:wip", "rq:failed", "rq:finished"] {
        let members = zrange(con, &format!("{registry}:{QUEUE}"));
        assert!(
            !ids.iter().any(|id| members.contains(id)),
            "{registry}:{QUEUE}\n{log}"
        );
    }
}

/// The worker gives up with status 3 within the streak, having said which limit and its value.
fn assert_gave_up(w: &mut Proc, limit: Limit, value: u64) {
    let status = w.wait_exit(GIVE_UP);
    let log = w.log();
    assert_eq!(status.code(), Some(3), "exit status\n{log}");
    assert!(log.contains(&limit.named(value)), "names the limit:\n{log}");
    assert!(log.contains("giving up: 5 jobs in a row"), "{log}");
    assert_eq!(
        log.matches("could not start, and not for a reason of its own")
            .count(),
        1,
        "the cause is logged once per streak:\n{log}"
    );
    assert!(!log.contains("burst finished"), "{log}");
}

/// A worker with normal limits (root's, from the build tree) runs all of them.
fn assert_a_healthy_worker_runs_them(jail: &Jail, ids: &[String]) {
    let mut w = Rqworker::new(&jail.redis)
        .config(&jail.config)
        .burst()
        .queues([QUEUE])
        .current_dir(jail.app.path())
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    let mut con = jail.redis.con();
    for id in ids {
        assert_eq!(
            job_status(&mut con, id).as_deref(),
            Some("finished"),
            "{id}\n{}",
            w.log()
        );
    }
}

fn skip_unless_root() -> bool {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root) to run a worker as another user");
    }
    !is_root()
}

/// A limit reached by a running worker, after a first job of the same kind ran.
fn limit_on_a_running_worker(uid: u32, kind: Kind, limit: Limit) {
    if skip_unless_root() {
        return;
    }
    let jail = Jail::new(uid);
    let mut w = jail.worker(None, false);
    let mut con = jail.redis.con();
    let first = jail.enqueue(&mut con, kind, 1);
    wait_status(&mut con, &first[0], &["finished"]);
    wait_worker_state(&mut con, "jailed", "idle");
    let value = match limit {
        Limit::Processes => 1,
        Limit::Files => 3,
    };
    prlimit_pid(w.pid().as_raw() as u32, uid, limit, value);
    // Suspended (as `rq suspend`) while the jobs go in, so that the snapshot is theirs before
    // the worker touches any.
    redis::cmd("SET")
        .arg("rq:suspended")
        .arg("1")
        .exec(&mut con)
        .unwrap();
    wait_worker_state(&mut con, "jailed", "suspended");
    let ids = jail.enqueue(&mut con, kind, JOBS);
    let before = snapshot(&mut con, &ids);
    redis::cmd("DEL")
        .arg("rq:suspended")
        .exec(&mut con)
        .unwrap();
    assert_gave_up(&mut w, limit, value);
    assert_untouched(&mut con, &ids, &before, &w.log());
    assert!(
        !smembers(&mut con, "rq:workers").contains(&"rq:worker:jailed".to_string()),
        "death is registered\n{}",
        w.log()
    );
    assert_a_healthy_worker_runs_them(&jail, &ids);
}

/// A burst worker started with the limit already reached (`prlimit --nproc=1 rqworker`).
fn limit_at_exec(uid: u32, kind: Kind, limit: Limit, value: u64) {
    if skip_unless_root() {
        return;
    }
    let jail = Jail::new(uid);
    let mut con = jail.redis.con();
    let ids = jail.enqueue(&mut con, kind, JOBS);
    let before = snapshot(&mut con, &ids);
    let mut w = jail.worker(Some((limit, value)), true);
    assert_gave_up(&mut w, limit, value);
    assert_untouched(&mut con, &ids, &before, &w.log());
    assert_a_healthy_worker_runs_them(&jail, &ids);
}

#[test]
fn a_burst_worker_at_its_process_limit_leaves_native_jobs_queued_and_exits_3() {
    limit_at_exec(61101, Kind::Native, Limit::Processes, 1);
}

#[test]
fn a_burst_worker_at_its_file_limit_leaves_command_jobs_queued_and_exits_3() {
    limit_at_exec(61102, Kind::Command, Limit::Files, 8);
}

#[test]
fn a_process_limit_reached_while_running_leaves_command_jobs_queued() {
    limit_on_a_running_worker(61103, Kind::Command, Limit::Processes);
}

#[test]
fn a_file_limit_reached_while_running_leaves_native_jobs_queued() {
    limit_on_a_running_worker(61104, Kind::Native, Limit::Files);
}

#[cfg(feature = "python")]
#[test]
fn a_process_limit_reached_while_running_leaves_python_jobs_queued() {
    if system_python().is_none() {
        eprintln!("skipped: needs /usr/bin/python3 of the version the tests build for");
        return;
    }
    limit_on_a_running_worker(61105, Kind::Python, Limit::Processes);
}

#[cfg(feature = "python")]
#[test]
fn a_file_limit_reached_while_running_leaves_python_jobs_queued() {
    if system_python().is_none() {
        eprintln!("skipped: needs /usr/bin/python3 of the version the tests build for");
        return;
    }
    limit_on_a_running_worker(61106, Kind::Python, Limit::Files);
}

#[test]
fn a_pool_at_its_process_limit_turns_degraded_instead_of_restarting_in_a_loop() {
    if skip_unless_root() {
        return;
    }
    let redis = public_redis(&[]);
    let public = open_dir();
    let program = public_copy(public.path(), "rqworker");
    // `games` is in every Debian's base-passwd and runs nothing, so its process count is
    // this pool's alone.
    let pool = PoolFile::new(&format!(
        "[worker]\nbuiltin_handlers = true\n\
         [pools.jail]\nqueues = [\"q\"]\nprogram = {}\nuser = \"games\"\n\
         [pools.jail.restart]\ndegraded_interval = \"1h\"\n",
        toml_str(program.display().to_string()),
    ));
    let mut con = redis.con();
    let ids: Vec<String> = (0..JOBS)
        .map(|i| rs_enqueue(&mut con, QUEUE, "rq.builtin.echo", json!([i])))
        .collect();
    let before = snapshot(&mut con, &ids);
    // As `prlimit --nproc=1 rq-supervisor`: root's own forks ignore it, its workers inherit it.
    let mut cmd = Supervisor::new(&redis, &pool).command();
    // SAFETY: setrlimit is async-signal-safe; it only lowers this child's own limit.
    unsafe {
        cmd.pre_exec(|| setrlimit(Resource::RLIMIT_NPROC, 1, 1).map_err(std::io::Error::from));
    }
    let sup = Proc::spawn(cmd);
    sup.wait_for_log("pool DEGRADED: its workers cannot start jobs in this environment");
    let log = sup.log();
    assert!(log.contains("next attempt in 1h"), "{log}");
    assert!(
        log.contains("RLIMIT_NPROC is 1"),
        "the worker's diagnosis is in the log:\n{log}"
    );
    // A loop would respawn within the restart backoff (at most 1 s by default).
    std::thread::sleep(Duration::from_secs(3));
    let log = sup.log();
    assert_eq!(log.matches("exited with status 3").count(), 1, "{log}");
    assert!(workers(&mut con).is_empty(), "{log}");
    assert_untouched(&mut con, &ids, &before, &log);
    drop(sup);
    let mut w = Rqworker::new(&redis)
        .builtin_handlers()
        .burst()
        .queues([QUEUE])
        .spawn();
    assert!(w.wait_exit(WAIT).success(), "{}", w.log());
    for id in &ids {
        assert_eq!(job_status(&mut con, id).as_deref(), Some("finished"));
    }
}

#[test]
fn a_reconnect_at_the_file_limit_says_so_and_succeeds_once_it_is_raised() {
    // RLIMIT_NOFILE binds root too, and a process may change its own user's limits: no jail.
    let redis = RedisServer::start();
    let w = Rqworker::new(&redis)
        .builtin_handlers()
        .name("w")
        .queues([QUEUE])
        .spawn();
    let mut con = redis.con();
    wait_worker_state(&mut con, "w", "idle");
    let pid = w.pid().as_raw() as u32;
    let set_nofile = |value: u64| {
        let out = std::process::Command::new("prlimit")
            // The soft limit only, which a process may raise again up to its hard one.
            .args(["--pid", &pid.to_string(), &format!("--nofile={value}:")])
            .output()
            .expect("run prlimit (util-linux)");
        assert!(out.status.success(), "prlimit: {out:?}");
    };
    set_nofile(3);
    // Its command connection and its wake-up connection (subscribed, so of type pubsub).
    for kind in ["pubsub", "normal"] {
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg(kind)
            .exec(&mut con)
            .unwrap();
    }
    let deadline = std::time::Instant::now() + WAIT;
    while !w
        .log()
        .contains("open-file limit is reached, so it cannot open a socket")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no EMFILE hint:\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !w.log().contains("check that Redis is running"),
        "{}",
        w.log()
    );
    set_nofile(1024);
    let mut con = redis.con();
    let id = rs_enqueue(&mut con, QUEUE, "rq.builtin.echo", json!(["back"]));
    wait_status(&mut con, &id, &["finished"]);
    assert!(alive(w.pid()), "{}", w.log());
}

#[cfg(feature = "python")]
#[test]
fn a_preload_at_the_file_limit_is_the_environments_fault_exit_3_not_a_usage_error() {
    // RLIMIT_NOFILE binds root too: no jail. With 8 descriptors the worker itself starts,
    // but the interpreter's probe (pipes) or libpython's open(2) cannot.
    let redis = RedisServer::start();
    let app = temp_dir();
    std::fs::write(
        app.path().join("tasks.py"),
        "def add(a, b):\n    return a + b\n",
    )
    .unwrap();
    let mut cmd = Rqworker::new(&redis)
        .name("w")
        .opt("--preload", "tasks")
        .queues([QUEUE])
        .current_dir(app.path())
        .command();
    // SAFETY: setrlimit is async-signal-safe; it only lowers this child's own limit.
    unsafe {
        cmd.pre_exec(|| setrlimit(Resource::RLIMIT_NOFILE, 8, 8).map_err(std::io::Error::from));
    }
    let mut w = Proc::spawn(cmd);
    let status = w.wait_exit(WAIT);
    let log = w.log();
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(
        log.contains("RLIMIT_NOFILE is 8"),
        "names the limit:\n{log}"
    );
    assert_eq!(log.matches("ERROR").count(), 1, "said once:\n{log}");
}
