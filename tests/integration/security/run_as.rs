//! Per-pool `user`/`group`: when rq-supervisor runs as root, a pool's workers, their work
//! horses and their command handlers run as that user and group, and still get their
//! configuration from a pool file only root can read (mode 600, holding the password).
//! A user or group that does not exist, and a `user` when the supervisor is not root, are
//! refused with exit 2 and a message that says why. CI runs as root; elsewhere these tests
//! skip with a message.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

use crate::support::jail::*;
use crate::support::supervisor::{PoolFile, wait_workers};
use crate::support::*;

/// The `Uid:`/`Gid:`/`Groups:` lines of a process (real, effective, saved, fs ids).
fn ids(pid: u32) -> (String, String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    (field("Uid:"), field("Gid:"), field("Groups:"))
}

/// A test redis whose socket any user can connect to, with an ACL user `rq` / `s3cret-pw`.
fn shared_redis() -> (RedisServer, String) {
    let redis = public_redis(&[]);
    let url = redis.acl_user("rq", "s3cret-pw", &["~rq:*", "&*", "+@all"]);
    (redis, url)
}

#[test]
fn workers_horses_and_handlers_run_as_the_pools_user_with_a_root_only_config() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root) to start workers as another user");
        return;
    }
    let (redis, url) = shared_redis();
    let public = open_dir();
    let program = public_copy(public.path(), "rqworker");
    let gate_dir = public.path().join("gates");
    std::fs::create_dir(&gate_dir).unwrap();
    std::fs::set_permissions(&gate_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let handler = write_script(
        public.path(),
        "whoami.sh",
        "#!/bin/sh\nwhile [ ! -e \"$1\" ]; do sleep 0.02; done\necho \"$(id -u) $(id -g)\"\n",
    );
    // The pool file holds the password and is readable by root only, in a root-only dir.
    let pool = PoolFile::new(&format!(
        "[redis]\nurl = {}\n[worker]\nbuiltin_handlers = true\n\
         [pools.jail]\nqueues = [\"q\"]\nprogram = {}\nuser = \"nobody\"\ngroup = \"nogroup\"\n\
         [handlers.\"tasks.whoami\"]\ncommand = [{}]\n",
        toml_str(&url),
        toml_str(program.display().to_string()),
        toml_str(handler.display().to_string()),
    ));
    std::fs::set_permissions(&pool.path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Supervisor::check(&pool).output();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("runs as: user nobody (65534), group nogroup (65534)"),
        "{report}"
    );
    let sup = Supervisor::without_url(&pool).spawn();
    let mut con = redis.con();
    let workers = wait_workers(&mut con, 1);
    let worker_pid = workers[0].1;
    let expect_uid = format!("{NOBODY} {NOBODY} {NOBODY} {NOBODY}");
    let (uid, gid, groups) = ids(worker_pid);
    assert_eq!(uid, expect_uid, "worker uid\n{}", sup.log());
    assert_eq!(gid, expect_uid, "worker gid");
    assert_eq!(groups, "", "supplementary groups are dropped");

    // A command handler (the horse is the handler process) runs as nobody too.
    let gate = gate_dir.join("go");
    let id = rs_enqueue(
        &mut con,
        "q",
        "tasks.whoami",
        serde_json::json!([gate.display().to_string()]),
    );
    let horse = wait_horse_pid(worker_pid);
    let (uid, gid, _) = ids(horse);
    assert_eq!(uid, expect_uid, "handler uid");
    assert_eq!(gid, expect_uid, "handler gid");
    std::fs::write(&gate, "").unwrap();
    wait_status(&mut con, &id, &["finished"]);
    assert_eq!(
        latest_return(&mut con, &id),
        Some(serde_json::json!(format!("{NOBODY} {NOBODY}")))
    );

    // A native horse (a fork of the worker) as well.
    let id = rs_enqueue(&mut con, "q", "rq.builtin.sleep", serde_json::json!([30]));
    let horse = wait_horse_pid(worker_pid);
    let (uid, _, _) = ids(horse);
    assert_eq!(uid, expect_uid, "native horse uid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(horse as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_status(&mut con, &id, &["failed"]);
    assert!(!sup.log().contains("cannot read config"), "{}", sup.log());
}

#[test]
fn a_user_or_group_that_does_not_exist_is_refused_at_start() {
    let redis = RedisServer::start();
    for (key, value, wanted) in [
        (
            "user",
            "no-such-user-rqs",
            "there is no user \"no-such-user-rqs\"",
        ),
        (
            "group",
            "no-such-group-rqs",
            "there is no group \"no-such-group-rqs\"",
        ),
    ] {
        let pool = PoolFile::new(&format!(
            "[pools.p]\nqueues = [\"q\"]\n{key} = \"{value}\"\n"
        ));
        for check in [true, false] {
            let sup = Supervisor::new(&redis, &pool);
            let out = if check { sup.arg("check") } else { sup }.output();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{stderr}");
            assert!(
                stderr.contains(&format!("[pools.p] {key}: {wanted}")) && stderr.contains("create"),
                "{stderr}"
            );
        }
    }
}

#[test]
fn a_user_when_the_supervisor_is_not_root_is_refused() {
    if !is_root() {
        // Not root already: the supervisor itself must refuse.
        let redis = RedisServer::start();
        let pool = PoolFile::new("[pools.p]\nqueues = [\"q\"]\nuser = \"daemon\"\n");
        let out = Supervisor::new(&redis, &pool).output();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("only root can"));
        return;
    }
    let redis = RedisServer::start();
    let public = open_dir();
    let program = public_copy(public.path(), "rqworker");
    let supervisor = public_copy(public.path(), "rq-supervisor");
    let path = public.path().join("pool.toml");
    std::fs::write(
        &path,
        format!(
            "[pools.p]\nqueues = [\"q\"]\nprogram = {}\nuser = \"daemon\"\n",
            toml_str(program.display().to_string())
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    for check in [true, false] {
        let mut cmd = std::process::Command::new(&supervisor);
        cmd.env("RQ_REDIS_URL", redis.url()).uid(NOBODY).gid(NOBODY);
        if check {
            cmd.arg("check");
        }
        let out = cmd.arg("-c").arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("[pools.p] user = \"daemon\"")
                && stderr.contains(&format!("runs as uid {NOBODY}"))
                && stderr.contains("only root can start workers as another user"),
            "{stderr}"
        );
    }
}
