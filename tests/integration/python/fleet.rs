//! Python jobs across processes: Python RQ's own `rq worker`s and ours on the same queue at
//! the same time, each pickled job run exactly once; `rq-supervisor -n N` (as `rq
//! worker-pool`) passing the Python options to its workers; a pool file's `[python] path`,
//! `cwd` and `python` keys.

use std::collections::BTreeMap;
use std::time::Duration;

use super::runtime::VENV_JOBS;
use super::*;
use crate::support::supervisor::PoolFile;
use serde_json::json;

const FLEET_APP: &str = r#"
import time
from rq import get_current_job

def record(i):
    job = get_current_job()
    job.connection.rpush('ran', job.id)
    time.sleep(0.002)
    return i
"#;

const JOBS: usize = 300;

#[test]
fn python_rq_workers_and_ours_run_every_pickled_job_exactly_once() {
    let redis = RedisServer::start();
    let app = App::new(&[("tasks.py", FLEET_APP)]);
    let url = redis.url();
    let python_workers: Vec<Proc> = ["py1", "py2"]
        .iter()
        .map(|name| {
            // RQ's own CLI, its default (pickle) serializer, the app on its path.
            let mut cmd = rq_cli(&["worker", "-u", &url, "--name", name, "-P"]);
            cmd.arg(app.path()).arg("q").current_dir(app.path());
            Proc::spawn(cmd)
        })
        .collect();
    let ours: Vec<Proc> = ["rs1", "rs2"]
        .iter()
        .map(|name| app.named(&redis, name).queues(["q"]).spawn())
        .collect();
    let mut con = redis.con();
    wait_until("4 workers registered", RUN, || {
        smembers(&mut con, "rq:workers").len() == 4
    });
    let jobs: Vec<String> = serde_json::from_value(app.py_args(
        &redis,
        r#"
datas = [Queue.prepare_data('tasks.record', args=(i,)) for i in range(args)]
out = [j.id for j in q.enqueue_many(datas)]
"#,
        json!(JOBS),
    ))
    .unwrap();
    assert_eq!(jobs.len(), JOBS);

    let logs = || {
        let all: Vec<String> = python_workers.iter().chain(&ours).map(Proc::log).collect();
        all.join("\n----\n")
    };
    let mut last = 0;
    wait_until("every job recorded", Duration::from_secs(120), || {
        last = llen(&mut con, "ran");
        last >= JOBS
    });
    wait_until("every job finished", WAIT, || {
        jobs.iter()
            .all(|id| job_status(&mut con, id).as_deref() == Some("finished"))
    });
    let mut ran = lrange(&mut con, "ran");
    ran.sort();
    let mut want = jobs.clone();
    want.sort();
    assert_eq!(ran, want, "a job ran twice or never:\n{}", logs());
    assert_eq!(llen(&mut con, "rq:queue:q"), 0);
    assert!(zrange(&mut con, "rq:wip:q").is_empty());
    assert!(zrange(&mut con, "rq:failed:q").is_empty(), "{}", logs());
    let counts: BTreeMap<&str, u64> = ["py1", "py2", "rs1", "rs2"]
        .into_iter()
        .map(|name| {
            let n = hget(
                &mut con,
                &format!("rq:worker:{name}"),
                "successful_job_count",
            )
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
            (name, n)
        })
        .collect();
    assert_eq!(counts.values().sum::<u64>(), JOBS as u64, "{counts:?}");
    // Both kinds took part.
    assert!(counts["py1"] + counts["py2"] > 0, "{counts:?}");
    assert!(counts["rs1"] + counts["rs2"] > 0, "{counts:?}");
    for w in python_workers.iter().chain(&ours) {
        assert!(alive(w.pid()), "{}", logs());
    }
}

const POOL_APP: &[(&str, &str)] = &[
    ("codec.py", CODEC_PY),
    (
        "tasks.py",
        "def ok(n):\n    return n * 10\n\ndef boom():\n    raise ValueError('boom in the pool')\n",
    ),
    (
        "handlers.py",
        "def record(job, exc_type, exc_value, tb):\n    job.connection.rpush('handled', '%s %s' % (job.id, exc_value))\n",
    ),
];

#[test]
fn rq_supervisor_dash_n_runs_a_pool_that_passes_the_python_options_to_its_workers() {
    let redis = RedisServer::start();
    let app = App::new(POOL_APP);
    let jobs = ids(&app.py(
        &redis,
        r#"
import codec
cq = Queue('q', connection=conn, serializer=codec.B64Json)
out = {'ok %d' % i: cq.enqueue('tasks.ok', i).id for i in range(20)}
out['boom'] = cq.enqueue('tasks.boom').id
"#,
    ));
    // Started elsewhere: the app is found through -P only.
    let elsewhere = temp_dir();
    let mut sup = Supervisor::without_url_args()
        .current_dir(elsewhere.path())
        .arg("-n")
        .arg("2")
        .arg("--burst")
        .arg("-u")
        .arg(redis.url())
        .arg("-P")
        .arg(app.path())
        .arg("-S")
        .arg("codec.B64Json")
        .arg("--exception-handler")
        .arg("handlers.record")
        .arg("q")
        .spawn();
    let status = sup.wait_exit(RUN);
    let log = sup.log();
    assert!(status.success(), "exit {status:?}:\n{log}");
    let r = app.py_args(
        &redis,
        "import codec\nout = {k: result(v, codec.B64Json) for k, v in args.items()}",
        json!(jobs),
    );
    for i in 0..20 {
        let job = &r[&format!("ok {i}")];
        assert_eq!(job["status"], "finished", "{job}\n{log}");
        assert_eq!(job["return_value"], i * 10);
    }
    assert_eq!(r["boom"]["status"], "failed");
    let mut con = redis.con();
    assert_eq!(
        lrange(&mut con, "handled"),
        [format!("{} boom in the pool", jobs["boom"])]
    );
    let spawned = crate::support::supervisor::spawned_pids(&log, "pool");
    assert_eq!(spawned.len(), 2, "{log}");
}

#[test]
fn a_pool_files_python_path_cwd_and_interpreters_reach_its_workers() {
    let redis = RedisServer::start();
    let app = App::new(&[(
        "here.py",
        "import os\n\ndef cwd():\n    return os.getcwd()\n",
    )]);
    let venv = venv_with_module(&app);
    let venv_python = venv.join("bin").join("python");
    let base_python = python_exe();
    let version = python_version();
    let pool = PoolFile::new("");
    std::fs::create_dir(pool.dir.path().join("lib")).unwrap();
    std::fs::write(pool.dir.path().join("lib").join("vjobs.py"), VENV_JOBS).unwrap();
    // `[python] executable` for every pool, `python` for one; `path` relative to the file.
    pool.rewrite(&format!(
        r#"
[python]
executable = {base}
path = ["lib"]

[pools.venv]
queues = ["qv"]
workers = 1
burst = true
cwd = {cwd}
python = {venv}

[pools.base]
queues = ["qb"]
workers = 1
burst = true
cwd = {cwd}
"#,
        base = toml_str(&base_python),
        venv = toml_str(venv_python.display().to_string()),
        cwd = toml_str(app.path().display().to_string()),
    ));
    let jobs = ids(&app.py(
        &redis,
        r#"
out = {}
for pool in ['v', 'b']:
    qq = Queue('q' + pool, connection=conn)
    out[pool + ' use'] = qq.enqueue('vjobs.use', 7).id
    out[pool + ' cwd'] = qq.enqueue('here.cwd').id
"#,
    ));
    let mut sup = Supervisor::new(&redis, &pool)
        .env_remove("VIRTUAL_ENV")
        .spawn();
    let status = sup.wait_exit(RUN);
    let log = sup.log();
    assert!(status.success(), "exit {status:?}:\n{log}");
    let r = app.py_args(
        &redis,
        "out = {k: result(v) for k, v in args.items()}",
        json!(jobs),
    );
    // The pool's `python` wins over `[python] executable`.
    assert_eq!(r["v use"]["status"], "finished", "{}\n{log}", r["v use"]);
    assert_eq!(r["v use"]["return_value"], "hello 7 from the venv");
    assert!(
        log.contains(&format!(
            "{}{}",
            started_line(&version),
            venv_python.display()
        )),
        "{log}"
    );
    // The other pool runs `[python] executable`, which lacks the venv's module.
    assert_eq!(r["b use"]["status"], "failed", "{}", r["b use"]);
    let exc = r["b use"]["exc_string"].as_str().unwrap();
    assert!(
        exc.contains("ModuleNotFoundError: No module named 'foo_only_in_venv'"),
        "{exc}"
    );
    assert!(
        log.contains(&format!(
            "{}{base_python} ([python] executable (or --python))",
            started_line(&version)
        )),
        "{log}"
    );
    // Both in the pool's cwd.
    let cwd = std::fs::canonicalize(app.path()).unwrap();
    for pool in ["v", "b"] {
        assert_eq!(
            r[&format!("{pool} cwd")]["return_value"],
            cwd.display().to_string(),
            "{log}"
        );
    }
}
