//! The embedded interpreter: which Python it is (the one the user's environment would run),
//! starting it with Python's own signal handling off, the app's import path, loading our
//! job runner (`job.py`) and the preloaded modules, and finalizing it at exit so the app's
//! atexit hooks run once, in the worker.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;

use pyo3::prelude::*;
use pyo3::types::{PyList, PyModule};

use super::PythonSettings;

/// The Python version the binary is linked against (from the build).
pub const LINKED_VERSION: &str = env!("RQS_PYTHON_VERSION");
/// The interpreter the build used, for messages.
const BUILT_WITH: &str = env!("RQS_PYTHON_BUILT_WITH");

/// The job runner, loaded as a module of its own.
const JOB_PY: &CStr = {
    match CStr::from_bytes_with_nul(concat!(include_str!("job.py"), "\0").as_bytes()) {
        Ok(s) => s,
        Err(_) => panic!("job.py has a NUL byte"),
    }
};

/// Why Python could not be started, as a message that names the fix.
#[derive(Debug, Clone, PartialEq)]
pub struct StartFailure(pub String);

/// The interpreter to embed: where it is and what it says of itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// `sys.executable` of that interpreter; the embedded one takes its `sys.prefix` from it.
    pub executable: PathBuf,
    /// `major.minor`.
    pub version: String,
    /// How it was chosen, for messages: `$VIRTUAL_ENV`, `[python] executable`, `PATH`.
    pub chosen_by: String,
}

/// Finds the interpreter as `rq worker` would run: the configured executable, else the
/// active virtualenv's, else `python3` on `PATH`; asks it for its version and real path.
pub fn find(configured: Option<&Path>) -> Result<Found, StartFailure> {
    let (candidate, chosen_by) = match (configured, std::env::var_os("VIRTUAL_ENV")) {
        (Some(p), _) => (
            p.to_path_buf(),
            "[python] executable (or --python)".to_string(),
        ),
        (None, Some(venv)) if !venv.is_empty() => (
            PathBuf::from(&venv).join("bin").join("python"),
            format!("$VIRTUAL_ENV ({})", PathBuf::from(&venv).display()),
        ),
        _ => (PathBuf::from("python3"), "python3 on PATH".to_string()),
    };
    let out = Command::new(&candidate)
        .args([
            "-c",
            "import sys; print('%d.%d' % sys.version_info[:2]); print(sys.executable)",
        ])
        .env_remove("PYTHONSTARTUP")
        .output()
        .map_err(|e| {
            StartFailure(format!(
                "cannot run the Python interpreter {} ({chosen_by}): {e}; install Python {LINKED_VERSION}, activate the app's virtualenv, or name an interpreter with [python] executable",
                candidate.display()
            ))
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (Some(version), Some(executable)) = (lines.next(), lines.next()) else {
        return Err(StartFailure(format!(
            "the Python interpreter {} ({chosen_by}) did not say its version (exit {}, stderr: {}); check that it runs",
            candidate.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    };
    let found = Found {
        executable: PathBuf::from(executable.trim()),
        version: version.trim().to_string(),
        chosen_by,
    };
    if found.version != LINKED_VERSION {
        return Err(StartFailure(version_mismatch(&found)));
    }
    Ok(found)
}

fn version_mismatch(found: &Found) -> String {
    format!(
        "the Python interpreter {} ({}) is Python {}, but this rqworker is built for Python {LINKED_VERSION} (it embeds libpython {LINKED_VERSION}, built with {BUILT_WITH}); run the worker in an environment with Python {LINKED_VERSION}, or build rqworker for Python {}: `PYO3_PYTHON={} cargo build --release`, or `pip install .` inside that virtualenv",
        found.executable.display(),
        found.chosen_by,
        found.version,
        found.version,
        found.executable.display()
    )
}

/// The started interpreter. The worker's thread is detached from it between jobs, so threads
/// the app started can run, as they would under `rq worker`.
pub struct Interpreter {
    /// The runner module (`job.py`).
    pub runner: Py<PyModule>,
    /// The detached thread state, restored to finalize.
    saved: *mut pyo3::ffi::PyThreadState,
}

impl Interpreter {
    /// Starts the interpreter `found`, with the import path and settings, preloading modules.
    pub fn start(found: &Found, settings: &PythonSettings) -> Result<Interpreter, StartFailure> {
        init(&found.executable)?;
        let runner = Python::attach(|py| setup(py, settings)).map_err(StartFailure)?;
        // SAFETY: the interpreter is initialized and this thread holds its GIL (it initialized
        // it); the saved state is restored before finalizing.
        let saved = unsafe { pyo3::ffi::PyEval_SaveThread() };
        Ok(Interpreter { runner, saved })
    }

    /// Runs the app's atexit hooks and `logging.shutdown`, once, as the worker exits.
    pub fn finalize(self) {
        // SAFETY: `saved` is this thread's state from `start`, detached since; restoring it
        // re-attaches the thread, after which finalizing is allowed.
        unsafe {
            pyo3::ffi::PyEval_RestoreThread(self.saved);
            drop(self.runner);
            pyo3::ffi::Py_FinalizeEx();
        }
    }
}

/// `Py_InitializeFromConfig` with the program name set to `executable` (so `sys.prefix` and
/// the site-packages are that interpreter's or virtualenv's) and Python's signal handlers off
/// (the worker's own are installed before; Python must not take SIGINT).
fn init(executable: &Path) -> Result<(), StartFailure> {
    use pyo3::ffi;
    let program = CString::new(executable.as_os_str().as_encoded_bytes()).map_err(|_| {
        StartFailure(format!(
            "the interpreter path {} has a NUL byte",
            executable.display()
        ))
    })?;
    // SAFETY: a PyConfig initialized by PyConfig_InitPythonConfig, set through the config API,
    // and cleared after use, as the C API documents; nothing else initializes Python here.
    unsafe {
        let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::zeroed();
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let config = config.assume_init_mut();
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        let status =
            ffi::PyConfig_SetBytesString(config, &mut config.program_name, program.as_ptr());
        if ffi::PyStatus_Exception(status) != 0 {
            ffi::PyConfig_Clear(config);
            return Err(status_failure("cannot set the program name", status));
        }
        let status = ffi::Py_InitializeFromConfig(config);
        ffi::PyConfig_Clear(config);
        if ffi::PyStatus_Exception(status) != 0 {
            return Err(status_failure(
                "cannot start the Python interpreter",
                status,
            ));
        }
    }
    Ok(())
}

fn status_failure(what: &str, status: pyo3::ffi::PyStatus) -> StartFailure {
    let msg = if status.err_msg.is_null() {
        "no reason given".to_string()
    } else {
        // SAFETY: a non-null err_msg is a NUL-terminated static string from CPython.
        unsafe { CStr::from_ptr(status.err_msg) }
            .to_string_lossy()
            .into_owned()
    };
    StartFailure(format!("{what}: {msg}"))
}

/// The import path, the runner, its configuration, and the preloaded modules.
fn setup(py: Python<'_>, settings: &PythonSettings) -> Result<Py<PyModule>, String> {
    let traceback = |e: PyErr| format_exception(py, &e);
    let sys = py.import("sys").map_err(traceback)?;
    let path = sys.getattr("path").map_err(traceback)?;
    let path = path.cast::<PyList>().map_err(|e| e.to_string())?;
    // As `rq worker` run from the project directory: the app's modules import from it.
    let mut front: Vec<String> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        front.push(cwd.display().to_string());
    }
    front.extend(settings.paths.iter().map(|p| p.display().to_string()));
    for (i, dir) in front.iter().enumerate() {
        path.insert(i, dir).map_err(traceback)?;
    }
    let runner = PyModule::from_code(py, JOB_PY, c"<rqworker job runner>", c"_rqworker_job")
        .map_err(traceback)?;
    runner
        .call_method1(
            "configure",
            (
                settings.redis_url.as_str(),
                settings.serializer.as_deref(),
                settings.exception_handlers.clone(),
                super::RESULT_CAP,
            ),
        )
        .map_err(traceback)?;
    for module in &settings.preload {
        py.import(module.as_str()).map_err(|e| {
            format!(
                "cannot preload Python module {module:?}:\n{}",
                format_exception(py, &e)
            )
        })?;
    }
    flush_std_streams(py);
    Ok(runner.unbind())
}

/// Python's own traceback text for `e`.
pub fn format_exception(py: Python<'_>, e: &PyErr) -> String {
    let formatted = py.import("traceback").and_then(|tb| {
        tb.call_method1(
            "format_exception",
            (e.get_type(py), e.value(py), e.traceback(py)),
        )
    });
    match formatted.and_then(|lines| lines.extract::<Vec<String>>()) {
        Ok(lines) => lines.concat(),
        Err(_) => format!("{e}\n"),
    }
}

/// Flushes `sys.stdout` and `sys.stderr`: before a fork, so text buffered in the worker is not
/// written again by every horse, and before a horse exits, so the job's output is not lost.
pub fn flush_std_streams(py: Python<'_>) {
    for name in ["stdout", "stderr"] {
        if let Ok(stream) = py.import("sys").and_then(|s| s.getattr(name)) {
            let _ = stream.call_method0("flush");
        }
    }
}
