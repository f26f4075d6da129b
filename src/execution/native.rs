//! Native handlers: a Rust function run in a forked horse, which reports its outcome as one
//! JSON document (`{"ok": value}`, `{"err": text}` or `{"panic": text}`).

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;

use serde_json::{Value, json};

use super::call::{JobCall, JobError, job_env};
use super::fork::ForkHooks;
use super::{Execution, Exit, Handler, JobFailure, JobStart, Outcome, StartError};

/// A native handler: runs in the forked work horse.
pub type NativeFn = dyn Fn(&JobCall) -> Result<Value, JobError>;

pub struct NativeHandler(pub Rc<NativeFn>);

struct Plain;
impl ForkHooks for Plain {}

/// Who runs a native function, for its panic's log line.
const HORSE: &str = "work horse";

/// Runs `f` on `call` where it is (the horse, or the worker in no-fork mode), writing the
/// report to `out`; returns the exit code a horse would end with (1 after a panic).
fn run_call(f: &NativeFn, call: &JobCall, out: &mut dyn io::Write, who: &'static str) -> i32 {
    // In a horse only: the worker itself must not grow its environment per job (glibc keeps
    // every value ever set, and looks it up in a tree each time); the function has the call.
    if who == HORSE {
        for (k, v) in job_env(call) {
            // SAFETY: the horse is single-threaded, the one case where set_var is sound.
            unsafe { std::env::set_var(k, v) };
        }
    }
    // One log line instead of the default multi-line report on stderr; the message also
    // reaches the job's exc_string.
    std::panic::set_hook(Box::new(move |info| {
        log::error!("{who} {}", info.to_string().replace('\n', " "))
    }));
    let (doc, code) = match catch_unwind(AssertUnwindSafe(|| f(call))) {
        Ok(Ok(value)) => (json!({ "ok": value }), 0),
        Ok(Err(e)) => (json!({ "err": e.to_string() }), 0),
        Err(panic) => (json!({ "panic": panic_message(&*panic) }), 1),
    };
    let _ = out.write_all(doc.to_string().as_bytes());
    code
}

impl Handler for NativeHandler {
    fn run_in_process(&self, job: &JobStart<'_>) -> Option<Result<Outcome, StartError>> {
        let call = match job.call() {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        let mut report = Vec::new();
        let code = super::inline::with_deadline(job.timeout, || {
            run_call(&*self.0, call, &mut report, "job")
        });
        let _ = std::panic::take_hook();
        let exit = super::inline::exit_code(code);
        Some(Ok(outcome(exit, &report)))
    }

    fn start(&self, job: &JobStart<'_>) -> Result<Box<dyn Execution>, StartError> {
        let call = job.call()?;
        let f = &self.0;
        let run = |out: &mut dyn io::Write| run_call(&**f, call, out, HORSE);
        super::report::fork(&Plain, run, outcome)
            .map(|e| Box::new(e) as Box<dyn Execution>)
            .map_err(|e| StartError::fork(&e))
    }

    fn describe(&self) -> String {
        "native function".into()
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
            return Outcome::Returned(v.clone().into());
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
