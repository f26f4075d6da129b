//! Python job functions (feature `python`): the app's own functions, written by each test into
//! a temp dir (`tasks.py`...), enqueued and read back by the real Python RQ 2.12
//! (`tests/py/pyjobs.py`, pickle unless a test says otherwise), run by the real `rqworker`
//! started in that dir.
//!
//! - `runtime`: which interpreter (PATH, `$VIRTUAL_ENV`, `--python`, another version refused),
//!   the lazy start, `--preload`, signals, the fork rules (flushes, random, atexit, threads);
//! - `jobs`: resolution, serializers, results, `get_current_job`, callbacks, Retry, exception
//!   handlers, `-d`, timeouts;
//! - `failures`: jobs that cannot run, or whose result cannot be stored;
//! - `fleet`: Python `rq worker`s and ours on the same queues, `rq-supervisor -n` and pool
//!   files with Python keys.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

mod failures;
mod fleet;
mod jobs;
mod no_fork;
mod runtime;

/// A bound for a burst worker's whole run: the interpreter's start and a few jobs, each a fork,
/// on a loaded machine.
pub const RUN: Duration = Duration::from_secs(60);

/// A Python app in a temp dir: the test's modules, and the worker's working directory.
pub struct App {
    pub dir: tempfile::TempDir,
}

impl App {
    /// An app made of `files` (name, text); names may have directories (`pkg/sub.py`).
    pub fn new(files: &[(&str, &str)]) -> App {
        let app = App {
            dir: tempfile::Builder::new()
                .prefix("rqs-pyapp-")
                .tempdir()
                .expect("temp dir"),
        };
        for (name, text) in files {
            app.write(name, text);
        }
        app
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.file(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write app file");
        p
    }

    /// The file's text; empty if it does not exist.
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.file(name)).unwrap_or_default()
    }

    /// `rqworker --name w` started in the app's directory; the test adds the rest.
    pub fn worker(&self, redis: &RedisServer) -> Rqworker {
        self.named(redis, "w")
    }

    /// `rqworker --name NAME` started in the app's directory.
    pub fn named(&self, redis: &RedisServer, name: &str) -> Rqworker {
        Rqworker::new(redis).current_dir(self.path()).name(name)
    }

    /// Runs `rqworker --name w --burst [extra...] q` in the app's directory to the end; it
    /// must exit 0. Returns its log.
    pub fn burst(&self, redis: &RedisServer, extra: &[&str]) -> String {
        let worker = extra
            .iter()
            .fold(self.worker(redis).burst(), |w, a| w.arg(a));
        let mut w = worker.queues(["q"]).spawn();
        let status = w.wait_exit(RUN);
        let log = w.log();
        assert!(status.success(), "rqworker exited {status:?}:\n{log}");
        log
    }

    /// Runs `code` in Python with RQ, the app first on its import path (see
    /// `tests/py/pyjobs.py`); returns the JSON of what it put in `out`.
    pub fn py(&self, redis: &RedisServer, code: &str) -> Value {
        self.py_args(redis, code, Value::Null)
    }

    /// [`App::py`] with `args` available to the code as `args`.
    pub fn py_args(&self, redis: &RedisServer, code: &str, args: Value) -> Value {
        let app = self.path().display().to_string();
        let args = args.to_string();
        let out = python(redis, "pyjobs.py", &[&app, code, &args]);
        // The app may print at import; the JSON is the last line.
        let last = out.trim().lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|e| panic!("pyjobs: {e}:\n{out}"))
    }
}

/// The job ids a producer returned as a JSON object, by name.
pub fn ids(v: &Value) -> std::collections::BTreeMap<String, String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object of ids: {v}"))
        .iter()
        .map(|(k, id)| (k.clone(), id.as_str().expect("job id").to_string()))
        .collect()
}

/// `major.minor` of the tests' Python, which rqworker embeds.
pub fn python_version() -> String {
    let out = std::process::Command::new(python_bin())
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .expect("python3");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// How often `text` occurs in `log`.
pub fn count(log: &str, text: &str) -> usize {
    log.matches(text).count()
}

/// The log line that says the interpreter started (`Python 3.11 started from ...`).
pub fn started_line(version: &str) -> String {
    format!("Python {version} started from ")
}

/// A plain virtualenv (no system site-packages, no pip) with a module the base interpreter
/// lacks; returns the venv's directory.
pub fn venv_with_module(app: &App) -> std::path::PathBuf {
    let venv = app.file("venv");
    let out = std::process::Command::new(python_bin())
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .output()
        .expect("python3 -m venv");
    stdout_of_success("python3 -m venv", &out);
    let site = venv
        .join("lib")
        .join(format!("python{}", python_version()))
        .join("site-packages");
    assert!(site.is_dir(), "no {}", site.display());
    std::fs::write(
        site.join("foo_only_in_venv.py"),
        "def hello(n):\n    return 'hello %s from the venv' % n\n",
    )
    .unwrap();
    venv
}

/// `codec.B64Json`, a serializer that writes neither JSON nor pickle: only a worker told
/// `-S codec.B64Json` reads its jobs.
pub const CODEC_PY: &str = r#"
import base64, json

class B64Json:
    @staticmethod
    def dumps(obj):
        return b'B64:' + base64.b64encode(json.dumps(obj).encode())

    @staticmethod
    def loads(data):
        assert data[:4] == b'B64:', data[:10]
        return json.loads(base64.b64decode(data[4:]))
"#;
