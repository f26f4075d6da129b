//! Python job functions (feature `python`): the app's own functions, run as `rq worker` runs
//! them, in a work horse forked from an interpreter embedded in the worker. Nothing outside
//! this module knows the C-API.
//!
//! The interpreter starts the first time a job needs it (or at boot with `preload`), never in
//! a worker that runs no Python job: libpython is not even linked, but loaded then, from the
//! interpreter the environment names ([`capi`]), so a worker without Python jobs has the
//! memory of one built without Python. Every fork is bracketed by `PyOS_BeforeFork` and
//! `PyOS_AfterFork_*` with stdout and stderr flushed; the horse calls `job.py`'s `run`, which
//! runs the job with its own serializer and reports back, then `_exit`s (skipping atexit);
//! the worker finalizes the interpreter when it stops.

mod capi;
mod horse;
mod interpreter;

use std::cell::RefCell;
use std::time::Duration;

use crate::execution::{Execution, Handler, JobFailure, JobStart, Outcome, StartError};
use crate::protocol::payload::PayloadError;
pub use interpreter::StartFailure;

pub use interpreter::LINKED_VERSION;

/// Most bytes a serialized return value may take; larger results fail the job with a message
/// that says so (Redis itself refuses values over 512 MB, and base64 adds a third).
pub const RESULT_CAP: usize = 128 * 1024 * 1024;

/// How long after its timeout a Python job that did not stop on its JobTimeoutException
/// (stuck in C code, or deadlocked at the fork) has its horse killed.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

pub use crate::settings::PythonSettings;

/// Runs Python jobs; the registry's fallback.
pub struct PythonHandler {
    settings: PythonSettings,
    state: RefCell<State>,
    /// The horse forked ahead for the next job, while jobs come back to back.
    ahead: RefCell<horse::Ahead>,
}

enum State {
    NotStarted,
    Running(interpreter::Interpreter),
    /// Python could not start: every Python job fails with this text (and the worker said so
    /// once, loudly).
    Failed(String),
    Finalized,
}

impl PythonHandler {
    pub fn new(settings: PythonSettings) -> PythonHandler {
        PythonHandler {
            settings,
            state: RefCell::new(State::NotStarted),
            ahead: RefCell::default(),
        }
    }

    /// Starts the interpreter now, for `preload`: an import error stops the worker (its
    /// traceback is the error).
    pub fn start_now(&self) -> Result<(), StartFailure> {
        self.ensure_started()
    }

    fn ensure_started(&self) -> Result<(), StartFailure> {
        let mut state = self.state.borrow_mut();
        match &*state {
            State::Running(_) => return Ok(()),
            State::Failed(e) => return Err(StartFailure::new(e.clone())),
            State::Finalized => {
                return Err(StartFailure::new("the Python interpreter was finalized"));
            }
            State::NotStarted => {}
        }
        let started = std::time::Instant::now();
        // Finding the interpreter runs it once (a child process): a failure there, such as a
        // process limit reached, is tried again by the next Python job. A failure after
        // libpython was loaded is final, since an interpreter does not initialize twice.
        let found = interpreter::find(self.settings.executable.as_deref())?;
        match interpreter::Interpreter::start(&found, &self.settings) {
            Ok(interp) => {
                log::info!(
                    "Python {} started from {} ({}) in {:.0?}",
                    found.version,
                    found.executable.display(),
                    found.chosen_by,
                    started.elapsed()
                );
                *state = State::Running(interp);
                Ok(())
            }
            Err(e) => {
                if e.lasting {
                    *state = State::Failed(e.text.clone());
                }
                Err(e)
            }
        }
    }

    /// Finalizes the interpreter if it was started: the app's atexit hooks run once, here.
    pub fn finalize(&self) {
        self.ahead.borrow_mut().idle();
        let state = std::mem::replace(&mut *self.state.borrow_mut(), State::Finalized);
        if let State::Running(interp) = state {
            interp.finalize();
        }
    }
}

impl PythonHandler {
    /// Starts the interpreter if need be; a failure is the environment's.
    fn started_or_start_error(&self) -> Result<(), StartError> {
        self.ensure_started().map_err(|e| StartError {
            environment: true,
            errno: e.errno,
            failure: JobFailure::StartFailed {
                what: "cannot start the Python interpreter".into(),
                error: e.text,
                fix: None,
            },
        })
    }
}

impl Handler for PythonHandler {
    fn start(&self, job: &JobStart<'_>) -> Result<Box<dyn Execution>, StartError> {
        self.started_or_start_error()?;
        let state = self.state.borrow();
        let State::Running(interp) = &*state else {
            unreachable!("started above")
        };
        horse::start(interp, &mut self.ahead.borrow_mut(), job)
    }

    fn idle(&self) {
        self.ahead.borrow_mut().idle();
    }

    fn run_in_process(&self, job: &JobStart<'_>) -> Option<Result<Outcome, StartError>> {
        if let Err(e) = self.started_or_start_error() {
            return Some(Err(e));
        }
        let state = self.state.borrow();
        let State::Running(interp) = &*state else {
            unreachable!("started above")
        };
        Some(Ok(horse::run_in_process(interp, job)))
    }

    fn kill_grace(&self) -> Duration {
        KILL_GRACE
    }

    fn reads_payload(&self, why: &PayloadError) -> bool {
        match why {
            PayloadError::Pickle => true,
            // Bytes that are not JSON are a custom serializer's, if one is configured.
            PayloadError::NotUtf8(_) | PayloadError::NotJson(_) => {
                self.settings.serializer.is_some()
            }
            _ => false,
        }
    }

    fn runs_python_callbacks(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        "Python function".into()
    }
}
