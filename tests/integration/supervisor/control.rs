//! The control socket and its commands (`rq-supervisor -c FILE status|scale|pause|resume|
//! restart|reload|stop`), against a running supervisor, a real redis-server and the real
//! binaries; the socket refused to another user (run as `nobody`: CI runs as root).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use crate::support::jail::*;
use crate::support::supervisor::*;
use crate::support::*;
use nix::sys::signal::Signal;
use serde_json::json;

/// Pool `main` (queue `a`, `workers` of them) and pool `other` (queue `o`, one worker), with
/// the gate handler.
fn pools(file: &PoolFile, workers: u32) -> String {
    format!(
        r#"
[supervisor]
health_interval = "500ms"
[worker]
builtin_handlers = true
[pools.main]
queues = ["a"]
workers = {workers}
[pools.other]
queues = ["o"]
{}"#,
        gate_handler(file.dir.path())
    )
}

fn start(workers: u32) -> (RedisServer, PoolFile, Proc) {
    let redis = RedisServer::start();
    let file = PoolFile::new("");
    file.rewrite(&pools(&file, workers));
    let sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    wait_workers(&mut con, workers as usize + 1);
    (redis, file, sup)
}

fn pids(con: &mut redis::Connection, queue: &str) -> Vec<u32> {
    workers_on(con, queue)
}

/// Enqueues a gate job on `queue`; returns its id and the file that releases it.
fn gate_job(
    con: &mut redis::Connection,
    file: &PoolFile,
    queue: &str,
) -> (String, std::path::PathBuf) {
    let gate = file.dir.path().join(format!("go-{}", fastrand::u32(..)));
    let id = rs_enqueue(
        con,
        queue,
        "tasks.gate",
        json!([gate.display().to_string()]),
    );
    wait_status(con, &id, &["started"]);
    (id, gate)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn status_shows_every_pool_and_worker_as_a_table_and_as_json() {
    let (redis, file, _sup) = start(2);
    let mut con = redis.con();
    let (id, gate) = gate_job(&mut con, &file, "a");
    let mut st = serde_json::Value::Null;
    wait_until("status to show the running job", WAIT, || {
        st = status_json(&file);
        st["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["current_job"] == id.as_str())
    });
    let main = pool_status(&st, "main");
    assert_eq!(main["desired"], 2);
    assert_eq!(main["file_workers"], 2);
    assert_eq!(
        (main["busy"].as_u64(), main["idle"].as_u64()),
        (Some(1), Some(1)),
        "{st}"
    );
    assert_eq!(pool_status(&st, "other")["running"], 1);
    // The workers are the ones Redis knows, with their pids.
    let registered = workers(&mut con);
    let listed: Vec<(String, u64)> = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap().to_string(),
                w["pid"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed.len(), registered.len());
    for (name, pid) in &registered {
        assert!(
            listed.contains(&(name.clone(), u64::from(*pid))),
            "{name} {pid} in {st}"
        );
    }
    let table = control_ok(&file, &["status"]);
    assert!(
        table.contains("POOL") && table.contains("WORKER"),
        "{table}"
    );
    for (name, _) in &registered {
        assert!(table.contains(name), "{name} in\n{table}");
    }
    assert!(table.contains(&id), "the running job:\n{table}");
    std::fs::write(&gate, "").unwrap();
    wait_status(&mut con, &id, &["finished"]);
    wait_until("one job counted and the RSS read", WAIT, || {
        let st = status_json(&file);
        let main = pool_status(&st, "main");
        main["jobs_finished"] == 1
            && st["workers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|w| w["rss_bytes"].as_u64().is_some_and(|b| b > 1024 * 1024))
    });
}

#[test]
fn without_a_supervisor_a_command_names_the_socket_and_exits_1() {
    let file = PoolFile::new("[pools.main]\nqueues = [\"a\"]\n");
    let out = control(&file, &["status"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no rq-supervisor is running"), "{err}");
    assert!(
        err.contains(&file.dir.path().display().to_string()),
        "the socket's path: {err}"
    );
    assert!(err.contains("rq-supervisor -c"), "how to start one: {err}");
}

#[test]
fn an_unknown_pool_or_a_bad_count_is_refused_with_exit_2() {
    let (_redis, file, _sup) = start(1);
    let out = control(&file, &["scale", "nope", "3"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no pool named \"nope\"; the pools are: main, other"),
        "{}",
        stderr(&out)
    );
    for bad in ["x", "-1", "2.5"] {
        let out = control(&file, &["scale", "main", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(
            stderr(&out).contains(&format!("{bad:?}: not a worker count")),
            "{}",
            stderr(&out)
        );
    }
    let out = control(&file, &["scale", "main", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("pause main"), "{}", stderr(&out));
    for cmd in [["pause", "nope"], ["resume", "nope"], ["restart", "nope"]] {
        let out = control(&file, &cmd);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}");
    }
}

#[test]
fn scale_up_then_down_keeps_the_busy_worker_and_survives_a_reload_until_the_count_changes() {
    let (redis, file, sup) = start(2);
    let mut con = redis.con();
    let out = control_ok(&file, &["scale", "main", "4"]);
    assert!(out.contains("workers 2 -> 4 (the file says 2"), "{out}");
    wait_until("4 workers on a", WAIT, || pids(&mut con, "a").len() == 4);
    let (id, gate) = gate_job(&mut con, &file, "a");
    let busy: u32 = hget(&mut con, &format!("rq:job:{id}"), "worker_name")
        .and_then(|n| hget(&mut con, &format!("rq:worker:{n}"), "pid"))
        .unwrap()
        .parse()
        .unwrap();
    // Let a reading see which one is busy, then go down to one.
    wait_until("status to see the busy worker", WAIT, || {
        pool_status(&status_json(&file), "main")["busy"] == 1
    });
    control_ok(&file, &["scale", "main", "1"]);
    wait_until("1 worker on a", WAIT, || pids(&mut con, "a") == [busy]);
    assert!(alive(busy), "the busy worker was kept");
    std::fs::write(&gate, "").unwrap();
    wait_status(&mut con, &id, &["finished"]);
    let st = status_json(&file);
    let main = pool_status(&st, "main");
    assert_eq!(
        (main["desired"].as_u64(), main["file_workers"].as_u64()),
        (Some(1), Some(2))
    );
    // A reload that leaves main's count alone keeps the scale; one that changes it wins.
    let out = control_ok(&file, &["reload"]);
    assert!(out.contains("reload: no changes"), "{out}");
    assert_eq!(pool_status(&status_json(&file), "main")["desired"], 1);
    file.rewrite(&pools(&file, 3));
    let out = control_ok(&file, &["reload"]);
    assert!(
        out.contains("[main] reload: workers 1 -> 3"),
        "the diff printed back: {out}"
    );
    wait_until("3 workers on a", WAIT, || pids(&mut con, "a").len() == 3);
    assert!(!sup.log().contains("crash cleanup"), "{}", sup.log());
}

#[test]
fn pause_lets_the_running_job_finish_and_takes_no_new_one_until_resume() {
    let (redis, file, _sup) = start(1);
    let mut con = redis.con();
    let (running, gate) = gate_job(&mut con, &file, "a");
    let out = control_ok(&file, &["pause", "main"]);
    assert!(out.contains("pool main paused"), "{out}");
    std::fs::write(&gate, "").unwrap();
    wait_status(&mut con, &running, &["finished"]);
    let worker = pids(&mut con, "a")[0];
    wait_until("the worker to show suspended in Redis", WAIT, || {
        let name = workers(&mut con)
            .into_iter()
            .find(|(_, p)| *p == worker)
            .unwrap()
            .0;
        hget(&mut con, &format!("rq:worker:{name}"), "state").as_deref() == Some("suspended")
    });
    let waiting = rs_enqueue(&mut con, "a", "rq.builtin.noop", json!([]));
    // Room for a (wrong) claim: the worker polls at least once a second while paused.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(job_status(&mut con, &waiting).as_deref(), Some("queued"));
    let st = status_json(&file);
    let main = pool_status(&st, "main");
    assert_eq!(main["paused"], true);
    assert_eq!(main["paused_workers"], 1, "{st}");
    assert_eq!(
        control(&file, &["pause", "main"]).status.code(),
        Some(0),
        "pausing twice is fine"
    );
    let out = control_ok(&file, &["resume", "main"]);
    assert!(out.contains("pool main resumed"), "{out}");
    wait_status(&mut con, &waiting, &["finished"]);
    assert_eq!(
        pids(&mut con, "a"),
        [worker],
        "the same worker, paused and resumed"
    );
}

#[test]
fn a_rolling_restart_under_load_replaces_every_worker_and_loses_no_job() {
    let (redis, file, sup) = start(2);
    let mut con = redis.con();
    let old = pids(&mut con, "a");
    let ids: Vec<String> = (0..60)
        .map(|_| rs_enqueue(&mut con, "a", "rq.builtin.sleep", json!([0.05])))
        .collect();
    let out = control_ok(&file, &["restart", "main"]);
    assert!(
        out.contains("pool main: rolling 2 worker(s) one at a time"),
        "{out}"
    );
    let mut most = 0;
    wait_until("both workers replaced", Duration::from_secs(30), || {
        let now = pids(&mut con, "a");
        most = most.max(now.len());
        now.len() == 2 && !now.iter().any(|p| old.contains(p))
    });
    assert!(most <= 3, "one extra worker at a time (saw {most})");
    for id in &ids {
        assert_eq!(
            wait_status(&mut con, id, &["finished", "failed"]),
            "finished",
            "{id}\n{}",
            sup.log()
        );
    }
    wait_until("both retirements logged", WAIT, || {
        lines_with(&sup.log(), "(retired: rolling restart)").len() == 2
    });
    assert_eq!(
        pool_status(&status_json(&file), "main")["restarts"]["rolling"],
        2
    );
    assert_eq!(
        pids(&mut con, "o").len(),
        1,
        "restart POOL leaves the other pools alone"
    );
}

#[test]
fn reload_prints_the_refusal_and_exits_2() {
    let (_redis, file, _sup) = start(1);
    file.rewrite(&pools(&file, 1).replace("workers = 1", "workers = 0"));
    let out = control(&file, &["reload"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("reload refused") && err.contains("[pools.main] workers"),
        "{err}"
    );
}

#[test]
fn stop_waits_for_a_warm_exit_and_removes_the_socket() {
    let (redis, file, mut sup) = start(1);
    let mut con = redis.con();
    let id = rs_enqueue(&mut con, "a", "rq.builtin.sleep", json!([1]));
    wait_status(&mut con, &id, &["started"]);
    let out = control_ok(&file, &["stop"]);
    assert!(
        out.contains("stopping warm") && out.contains("has exited"),
        "{out}"
    );
    // The command returned once the supervisor was gone.
    let status = sup.wait_exit(Duration::from_secs(2));
    assert!(status.success(), "{}", sup.log());
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("finished"));
    let sockets: Vec<_> = std::fs::read_dir(file.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sock"))
        .collect();
    assert!(sockets.is_empty(), "socket removed at exit: {sockets:?}");
}

#[test]
fn stop_cold_fails_the_running_job_at_once() {
    let (redis, file, mut sup) = start(1);
    let mut con = redis.con();
    let id = rs_enqueue(&mut con, "a", "rq.builtin.sleep", json!([60]));
    wait_status(&mut con, &id, &["started"]);
    let out = control_ok(&file, &["stop", "--cold"]);
    assert!(out.contains("stopping cold"), "{out}");
    assert_eq!(
        sup.wait_exit(Duration::from_secs(2)).code(),
        Some(1),
        "{}",
        sup.log()
    );
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("failed"));
}

#[test]
fn a_live_socket_is_never_stolen_and_a_stale_one_is_replaced() {
    let (redis, file, mut first) = start(1);
    let mut con = redis.con();
    let before = workers(&mut con);
    let out = Supervisor::new(&redis, &file).output();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("another rq-supervisor (pid {})", first.pid())),
        "{err}"
    );
    assert_eq!(
        workers(&mut con),
        before,
        "the second one started no worker"
    );
    // Killed: its socket stays behind, and the next supervisor replaces it.
    first.signal(Signal::SIGKILL);
    first.wait_exit(WAIT);
    wait_workers(&mut con, 0);
    let second = Supervisor::new(&redis, &file).spawn();
    second.wait_for_log("replaced a stale socket");
    wait_workers(&mut con, 2);
    assert!(control_ok(&file, &["status"]).contains(&format!("pid {}", second.pid())));
}

#[test]
fn the_socket_is_owner_only_and_another_user_is_refused_by_the_kernel() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root) to connect as nobody");
        return;
    }
    let redis = RedisServer::start();
    // A directory anyone may enter: only the socket's own mode keeps nobody out.
    let public = open_dir();
    let file = PoolFile::new("");
    file.rewrite(&pools(&file, 1));
    let _sup = Supervisor::new(&redis, &file)
        .env("RUNTIME_DIRECTORY", public.path())
        .spawn();
    let mut con = redis.con();
    wait_workers(&mut con, 2);
    let socket = std::fs::read_dir(public.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "sock"))
        .expect("the socket");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", socket.display());
    // The build tree may be private to root: nobody runs a copy.
    let bin = public_copy(public.path(), "rq-supervisor");
    let run = |uid: Option<u32>| {
        let mut cmd = std::process::Command::new(&bin);
        cmd.arg("-c")
            .arg(&file.path)
            .arg("status")
            .env("RUNTIME_DIRECTORY", public.path());
        if let Some(uid) = uid {
            cmd.uid(uid).gid(NOBODY);
        }
        cmd.output().unwrap()
    };
    let out = run(Some(NOBODY));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("ermission denied") && err.contains("owner-only"),
        "{err}"
    );
    assert!(run(None).status.success(), "root gets in");
}

#[test]
fn status_answers_at_once_while_redis_stalls() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "local"]);
    let file =
        PoolFile::new("[supervisor]\nhealth_interval = \"1m\"\n[pools.main]\nqueues = [\"a\"]\n");
    let _sup = Supervisor::new(&redis, &file).spawn();
    let mut con = redis.con();
    wait_workers(&mut con, 1);
    let stall = std::thread::spawn({
        let mut c = redis.con();
        move || redis::cmd("DEBUG").arg("SLEEP").arg(4).exec(&mut c)
    });
    // Let a reading start, so the readings thread is the one waiting.
    std::thread::sleep(Duration::from_millis(600));
    wait_redis_stalled(&redis.url());
    // The readings thread waits on Redis; the loop does not.
    let t0 = std::time::Instant::now();
    let out = control_ok(&file, &["status"]);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
    assert!(out.contains("main"), "{out}");
    stall.join().unwrap().unwrap();
}

/// The socket a supervisor of `file` made in `dir` (and its lock beside it).
fn socket_in(dir: &std::path::Path, file: &std::path::Path) -> std::path::PathBuf {
    dir.join(rq_supervisor::supervisor::control::socket_name(file))
}

/// A supervisor as root without systemd (no `$RUNTIME_DIRECTORY`), with one worker
/// registered; and where its socket must be.
fn in_run(redis: &RedisServer) -> (PoolFile, Proc, std::path::PathBuf) {
    let file = PoolFile::new("[pools.main]\nqueues = [\"a\"]\n");
    let sup = Supervisor::new(redis, &file)
        .env_remove("RUNTIME_DIRECTORY")
        .spawn();
    wait_workers(&mut redis.con(), 1);
    let socket = socket_in(std::path::Path::new("/run/rq-supervisor"), &file.path);
    (file, sup, socket)
}

/// `stop` from an operator's shell, which has no `$RUNTIME_DIRECTORY` either: -c FILE is all
/// it needs. The socket is gone once the supervisor has exited.
fn stop_from_a_shell(file: &PoolFile, mut sup: Proc, socket: &std::path::Path) {
    let out = Supervisor::control(file, &["stop"])
        .env_remove("RUNTIME_DIRECTORY")
        .output();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(sup.wait_exit(WAIT).success());
    assert!(!socket.exists(), "removed at exit");
    let _ = std::fs::remove_file(format!("{}.lock", socket.display()));
}

#[test]
fn as_root_without_systemd_the_default_socket_is_in_run() {
    if !is_root() {
        eprintln!("skipped: /run/rq-supervisor is root's default (CI runs as root)");
        return;
    }
    let redis = RedisServer::start();
    let (file, sup, socket) = in_run(&redis);
    assert!(socket.exists(), "{}\n{}", socket.display(), sup.log());
    stop_from_a_shell(&file, sup, &socket);
}

#[test]
fn a_stale_socket_in_an_earlier_directory_does_not_hide_the_live_one() {
    if !is_root() {
        eprintln!("skipped: /run/rq-supervisor is root's default (CI runs as root)");
        return;
    }
    let redis = RedisServer::start();
    let (file, sup, live) = in_run(&redis);
    wait_until("the control socket", WAIT, || live.exists());
    // What a supervisor killed with SIGKILL leaves: a socket file nobody listens on, in
    // the directory a client looks at first ($RUNTIME_DIRECTORY).
    let earlier = tempfile::tempdir().unwrap();
    let stale = socket_in(earlier.path(), &file.path);
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let out = Supervisor::control(&file, &["status"])
        .env("RUNTIME_DIRECTORY", earlier.path())
        .output();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("main"));
    stop_from_a_shell(&file, sup, &live);
}

#[test]
fn as_a_user_the_default_socket_is_found_with_the_file_alone() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root) to run the supervisor as nobody");
        return;
    }
    let redis = crate::support::jail::public_redis(&[]);
    let public = open_dir();
    let bin = public_copy(public.path(), "rq-supervisor");
    let path = public.path().join("pool.toml");
    std::fs::write(&path, "[pools.main]\nqueues = [\"a\"]\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let as_nobody = |args: &[&str]| {
        let mut cmd = std::process::Command::new(&bin);
        cmd.arg("-c")
            .arg(&path)
            .args(args)
            .env("RQ_REDIS_URL", redis.url())
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("XDG_RUNTIME_DIR")
            .current_dir(public.path())
            .uid(NOBODY)
            .gid(NOBODY);
        cmd
    };
    let mut sup = Proc::spawn(as_nobody(&[]));
    let mut con = redis.con();
    wait_workers(&mut con, 1);
    let dir = std::path::PathBuf::from(format!("/tmp/rq-supervisor-{NOBODY}"));
    let socket = socket_in(&dir, &path);
    assert!(socket.exists(), "{}\n{}", socket.display(), sup.log());
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o700,
        "the user's own directory"
    );
    let out = as_nobody(&["status"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("main"));
    assert!(as_nobody(&["stop"]).output().unwrap().status.success());
    assert!(sup.wait_exit(WAIT).success(), "{}", sup.log());
    let _ = std::fs::remove_file(format!("{}.lock", socket.display()));
}

#[test]
fn a_worker_started_paused_takes_no_job_until_sigusr2() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let worker = Rqworker::new(&redis)
        .name("held")
        .builtin_handlers()
        .arg("--paused")
        .queues(["q"])
        .spawn();
    wait_until("registered as suspended", WAIT, || {
        hget(&mut con, "rq:worker:held", "state").as_deref() == Some("suspended")
    });
    let id = rs_enqueue(&mut con, "q", "rq.builtin.noop", json!([]));
    // Room for a (wrong) claim: a paused worker wakes at least once a second.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(job_status(&mut con, &id).as_deref(), Some("queued"));
    worker.signal(Signal::SIGUSR2);
    wait_status(&mut con, &id, &["finished"]);
    worker.signal(Signal::SIGUSR1);
    wait_until("suspended again", WAIT, || {
        hget(&mut con, "rq:worker:held", "state").as_deref() == Some("suspended")
    });
    let log = worker.log();
    assert!(
        log.contains("paused (SIGUSR1)") && log.contains("resumed (SIGUSR2)"),
        "{log}"
    );
}
