//! Native handlers: a Rust function run in a forked horse, which reports its outcome to the
//! worker over a socket pair as one JSON document (`{"ok": value}`, `{"err": text}` or
//! `{"panic": text}`).

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;

use nix::poll::PollFlags;
use nix::unistd::Pid;
use serde_json::{Value, json};

use super::call::{JobCall, JobError, job_env};
use super::fork::Horse;
use super::{Execution, Exit, Handler, JobFailure, Outcome, StartError, environmental};

/// A native handler: runs in the forked work horse.
pub type NativeFn = dyn Fn(&JobCall) -> Result<Value, JobError>;

pub struct NativeHandler(pub Rc<NativeFn>);

impl Handler for NativeHandler {
    fn start(&self, call: &JobCall) -> Result<Box<dyn Execution>, StartError> {
        spawn(&self.0, call)
            .map(|e| Box::new(e) as Box<dyn Execution>)
            .map_err(|e| StartError {
                environment: environmental(&e) || e.kind() == io::ErrorKind::Other,
                failure: JobFailure::StartFailed {
                    what: "cannot fork a work horse".into(),
                    error: e.to_string(),
                    fix: None,
                },
            })
    }

    fn describe(&self) -> String {
        "native function".into()
    }
}

struct NativeExecution {
    horse: Horse,
    /// `None` once the horse closed it: an end-of-file socket stays readable, and polling it
    /// would spin until the horse has finished exiting.
    report: Option<UnixStream>,
    buf: Vec<u8>,
}

fn spawn(f: &Rc<NativeFn>, call: &JobCall) -> io::Result<NativeExecution> {
    let (report, mut child_end) = UnixStream::pair()?;
    let horse = Horse::fork(move || {
        for (k, v) in job_env(call) {
            // SAFETY: the horse is single-threaded, the one case where set_var is sound.
            unsafe { std::env::set_var(k, v) };
        }
        // One log line instead of the default multi-line report on stderr; the message also
        // reaches the job's exc_string.
        std::panic::set_hook(Box::new(|info| {
            log::error!("work horse {}", info.to_string().replace('\n', " "))
        }));
        let (doc, code) = match catch_unwind(AssertUnwindSafe(|| f(call))) {
            Ok(Ok(value)) => (json!({ "ok": value }), 0),
            Ok(Err(e)) => (json!({ "err": e.to_string() }), 0),
            Err(panic) => (json!({ "panic": panic_message(&*panic) }), 1),
        };
        let _ = child_end.write_all(doc.to_string().as_bytes());
        code
    })?;
    // The parent's copy of the horse's end went with the closure; only the horse holds it, so
    // the report reaches end of file when the horse is done.
    report.set_nonblocking(true)?;
    Ok(NativeExecution {
        horse,
        report: Some(report),
        buf: Vec::new(),
    })
}

impl Execution for NativeExecution {
    fn pid(&self) -> Option<Pid> {
        Some(self.horse.pid)
    }

    fn poll_fds(&self) -> Vec<(std::os::fd::BorrowedFd<'_>, PollFlags)> {
        self.report
            .iter()
            .map(|r| (r.as_fd(), PollFlags::POLLIN))
            .collect()
    }

    fn pump(&mut self) {
        if let Some(r) = &self.report
            && super::command::read_ready(r, |chunk| self.buf.extend_from_slice(chunk))
        {
            self.report = None;
        }
    }

    fn try_finish(&mut self) -> Option<Outcome> {
        let exit = self.horse.exited()?;
        self.pump();
        Some(outcome(exit, &self.buf))
    }

    fn kill(&mut self) -> Exit {
        let exit = self.horse.kill_and_reap();
        self.pump();
        exit
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}

fn outcome(exit: Exit, report: &[u8]) -> Outcome {
    let doc: Option<Value> = serde_json::from_slice(report).ok();
    if let (true, Some(doc)) = (exit.success(), &doc) {
        if let Some(v) = doc.get("ok") {
            return Outcome::Returned(v.clone());
        }
        if let Some(Value::String(e)) = doc.get("err") {
            return Outcome::Failed(JobFailure::Raised(format!("{e}\n")));
        }
    }
    let detail = match doc.as_ref().and_then(|d| d.get("panic")) {
        Some(Value::String(p)) => format!("the handler panicked: {p}"),
        _ if exit.success() => "the horse exited without reporting an outcome".into(),
        _ => String::new(),
    };
    Outcome::Failed(JobFailure::HorseCrashed { exit, detail })
}
