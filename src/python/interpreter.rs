//! The embedded interpreter: which Python it is (the one the user's environment would run),
//! loading its libpython, starting it with Python's own signal handling off, and handing
//! everything else (the import path, our job runner `job.py`, the preloaded modules) to
//! Python code; finalizing it at exit so the app's atexit hooks run once, in the worker.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;

use pyo3_ffi::{PyObject, PyThreadState};

use super::PythonSettings;
use super::capi::{self, Gil, Owned};

/// The Python version the binary is built for (the `PyConfig` layout it uses).
pub const LINKED_VERSION: &str = env!("RQS_PYTHON_VERSION");
/// The interpreter the build used, for messages.
const BUILT_WITH: &str = env!("RQS_PYTHON_BUILT_WITH");

/// The job runner, loaded as a module of its own.
const JOB_PY: &str = include_str!("job.py");

/// What the probe asks the interpreter: its version, its real path, and its shared library.
const PROBE: &str = "import sys, sysconfig, os
print('%d.%d' % sys.version_info[:2])
print(sys.executable)
lib = sysconfig.get_config_var('INSTSONAME') or sysconfig.get_config_var('LDLIBRARY') or ''
d = sysconfig.get_config_var('LIBDIR') or ''
print(os.path.join(d, lib) if sysconfig.get_config_var('Py_ENABLE_SHARED') and lib else '')";

/// Why Python could not be started, as a message that names the fix.
#[derive(Debug, Clone, PartialEq)]
pub struct StartFailure {
    pub text: String,
    /// The failed system call's errno, when one failed (a process limit reached at the probe,
    /// a file limit when loading libpython).
    pub errno: Option<i32>,
    /// The interpreter was partly initialized, so it cannot be tried again in this process.
    /// Failures before that (finding it, loading libpython) are tried again by the next job.
    pub lasting: bool,
}

impl StartFailure {
    pub fn new(text: impl Into<String>) -> StartFailure {
        StartFailure {
            text: text.into(),
            errno: None,
            lasting: false,
        }
    }

    fn lasting(self) -> StartFailure {
        StartFailure {
            lasting: true,
            ..self
        }
    }
}

/// The interpreter to embed: where it is and what it says of itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// `sys.executable` of that interpreter; the embedded one takes its `sys.prefix` from it.
    pub executable: PathBuf,
    /// `major.minor`.
    pub version: String,
    /// Its shared libpython.
    pub libpython: String,
    /// How it was chosen, for messages: `$VIRTUAL_ENV`, `[python] executable`, `PATH`.
    pub chosen_by: String,
}

/// Finds the interpreter as `rq worker` would run: the configured executable, else the
/// active virtualenv's, else `python3` on `PATH`; asks it for its version, real path and
/// libpython.
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
        .args(["-c", PROBE])
        .env_remove("PYTHONSTARTUP")
        .output()
        .map_err(|e| StartFailure {
            text: format!(
                "cannot run the Python interpreter {} ({chosen_by}): {e}; install Python {LINKED_VERSION}, activate the app's virtualenv, or name an interpreter with [python] executable",
                candidate.display()
            ),
            errno: e.raw_os_error(),
            lasting: false,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (Some(version), Some(executable), Some(libpython)) =
        (lines.next(), lines.next(), lines.next())
    else {
        return Err(StartFailure::new(format!(
            "the Python interpreter {} ({chosen_by}) did not say its version (exit {}, stderr: {}); check that it runs",
            candidate.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    };
    let found = Found {
        executable: PathBuf::from(executable.trim()),
        version: version.trim().to_string(),
        libpython: libpython.trim().to_string(),
        chosen_by,
    };
    if found.version != LINKED_VERSION {
        return Err(StartFailure::new(version_mismatch(&found)));
    }
    if found.libpython.is_empty() {
        return Err(StartFailure::new(format!(
            "the Python interpreter {} ({}) has no shared libpython, which rqworker embeds; use a Python built with --enable-shared (Debian's python3 with python3-dev, pyenv, python.org builds)",
            found.executable.display(),
            found.chosen_by
        )));
    }
    Ok(found)
}

fn version_mismatch(found: &Found) -> String {
    format!(
        "the Python interpreter {} ({}) is Python {}, but this rqworker is built for Python {LINKED_VERSION} (built with {BUILT_WITH}); run the worker in an environment with Python {LINKED_VERSION}, or build rqworker for Python {}: `PYO3_PYTHON={} cargo build --release`, or `pip install .` inside that virtualenv",
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
    pub runner: Runner,
    /// The detached thread state, restored to finalize.
    saved: *mut PyThreadState,
}

/// The runner module (`job.py`), alive from the interpreter's start to its end: a handle to
/// call its functions with (the GIL held).
#[derive(Clone, Copy)]
pub struct Runner(*mut PyObject);

impl Runner {
    /// Calls `job.py`'s function `name(*args)`; `None` if it raised (printed to stderr).
    pub fn call(self, name: &CStr, args: Vec<Owned>) -> Option<Owned> {
        // SAFETY: the module object lives until the interpreter is finalized; the GIL is held.
        let func =
            Owned::new(unsafe { (capi::api().PyObject_GetAttrString)(self.0, name.as_ptr()) })?;
        capi::call(func.0, args)
    }

    /// Calls a function of `job.py` that returns text.
    pub fn call_text(self, name: &CStr, args: Vec<Owned>) -> Option<String> {
        self.call(name, args).and_then(|r| capi::text_of(&r))
    }
}

impl Interpreter {
    /// Loads `found`'s libpython, starts the interpreter, and runs the runner's bootstrap:
    /// the import path, its configuration, the preloaded modules.
    pub fn start(found: &Found, settings: &PythonSettings) -> Result<Interpreter, StartFailure> {
        capi::load(&found.libpython).map_err(|e| StartFailure {
            text: e.text,
            errno: e.errno,
            lasting: false,
        })?;
        init(&found.executable).map_err(StartFailure::lasting)?;
        let runner = load_runner(settings).map_err(StartFailure::lasting);
        // SAFETY: the interpreter is initialized and this thread holds its GIL (it
        // initialized it); the saved state is restored before finalizing.
        let saved = unsafe { (capi::api().PyEval_SaveThread)() };
        Ok(Interpreter {
            runner: runner?,
            saved,
        })
    }

    /// Runs the app's atexit hooks and `logging.shutdown`, once, as the worker exits.
    pub fn finalize(self) {
        // SAFETY: `saved` is this thread's state from `start`, detached since; restoring it
        // re-attaches the thread, after which finalizing is allowed.
        unsafe {
            (capi::api().PyEval_RestoreThread)(self.saved);
            (capi::api().Py_FinalizeEx)();
        }
    }
}

/// `Py_InitializeFromConfig` with the program name set to `executable` (so `sys.prefix` and
/// the site-packages are that interpreter's or virtualenv's) and Python's signal handlers off
/// (the worker's own are installed before; Python must not take SIGINT).
fn init(executable: &Path) -> Result<(), StartFailure> {
    let api = capi::api();
    let program = CString::new(executable.as_os_str().as_encoded_bytes()).map_err(|_| {
        StartFailure::new(format!(
            "the interpreter path {} has a NUL byte",
            executable.display()
        ))
    })?;
    // SAFETY: a PyConfig initialized by PyConfig_InitPythonConfig (the layout is the build's
    // Python version, which `find` checked), set through the config API, and cleared after
    // use, as the C API documents; nothing else initializes Python in this process.
    unsafe {
        let mut config = std::mem::MaybeUninit::<pyo3_ffi::PyConfig>::zeroed();
        (api.PyConfig_InitPythonConfig)(config.as_mut_ptr());
        let config = config.assume_init_mut();
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        let status =
            (api.PyConfig_SetBytesString)(config, &mut config.program_name, program.as_ptr());
        if (api.PyStatus_Exception)(status) != 0 {
            (api.PyConfig_Clear)(config);
            return Err(status_failure("cannot set the program name", status));
        }
        let status = (api.Py_InitializeFromConfig)(config);
        (api.PyConfig_Clear)(config);
        if (api.PyStatus_Exception)(status) != 0 {
            return Err(status_failure(
                "cannot start the Python interpreter",
                status,
            ));
        }
    }
    Ok(())
}

fn status_failure(what: &str, status: pyo3_ffi::PyStatus) -> StartFailure {
    let msg = if status.err_msg.is_null() {
        "no reason given".to_string()
    } else {
        // SAFETY: a non-null err_msg is a NUL-terminated static string from CPython.
        unsafe { CStr::from_ptr(status.err_msg) }
            .to_string_lossy()
            .into_owned()
    };
    StartFailure::new(format!("{what}: {msg}"))
}

/// Compiles `job.py` as the module `_rqworker_job` and runs its bootstrap (with the GIL the
/// initializing thread holds).
fn load_runner(settings: &PythonSettings) -> Result<Runner, StartFailure> {
    let api = capi::api();
    let code = CString::new(JOB_PY).expect("job.py has no NUL byte");
    // SAFETY: the GIL is held (this thread initialized the interpreter); both strings are
    // NUL-terminated; the code object is released after the module took it.
    let module = unsafe {
        let compiled = Owned::new((api.Py_CompileString)(
            code.as_ptr(),
            c"<rqworker job runner>".as_ptr(),
            pyo3_ffi::Py_file_input,
        ));
        compiled.and_then(|c| {
            Owned::new((api.PyImport_ExecCodeModule)(
                c"_rqworker_job".as_ptr(),
                c.0,
            ))
        })
    };
    let Some(module) = module else {
        capi::print_error();
        return Err(StartFailure::new(
            "cannot load rqworker's Python job runner (the error is above)",
        ));
    };
    let mut front: Vec<String> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        front.push(cwd.display().to_string());
    }
    front.extend(settings.paths.iter().map(|p| p.display().to_string()));
    let config = serde_json::json!({
        "front": front,
        "redis_url": settings.redis_url,
        "sentinel_username": settings.redis_sentinel.username,
        "sentinel_password": settings.redis_sentinel.password,
        "serializer": settings.serializer,
        "exception_handlers": settings.exception_handlers,
        "preload": settings.preload,
        "result_cap": super::RESULT_CAP,
    })
    .to_string();
    // Kept for the process's life (until the interpreter is finalized).
    let runner = Runner(module.into_raw());
    let error = capi::str_obj(&config).and_then(|c| runner.call_text(c"bootstrap", vec![c]));
    match error.as_deref() {
        Some("") => Ok(runner),
        Some(text) => Err(StartFailure::new(text.trim_end().to_string())),
        None => Err(StartFailure::new(
            "rqworker's Python job runner failed to start (the error is above)",
        )),
    }
}

/// Flushes `sys.stdout` and `sys.stderr`: before a fork, so text buffered in the worker is not
/// written again by every horse, and before a horse exits, so the job's output is not lost.
pub fn flush_std_streams(runner: Runner) {
    let _gil = Gil::acquire();
    runner.call(c"flush", Vec::new());
}
