//! A Python job's work horse: forked from the worker while it holds the GIL, bracketed by
//! `PyOS_BeforeFork` / `PyOS_AfterFork_*`; the child calls `job.py`'s `run_job`, which
//! returns the report `{"kind", "payload", "text"}` the child writes to the worker.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::capi::{self, Gil, Owned};
use super::interpreter::{self, Interpreter, Runner};
use crate::execution::fork::{self, ForkHooks, Horse};
use crate::execution::report;
use crate::execution::{Execution, Exit, JobFailure, JobStart, Outcome, ReturnValue, StartError};

/// RQ's default callback timeout (seconds).
const CALLBACK_TIMEOUT: u64 = 60;

/// CPython's own fork protocol, which `os.fork()` follows too: the import lock and the
/// interpreter's internal locks are taken before the fork and released (parent) or reset
/// (child) after it; the child's at-fork hooks reseed `random` and reset `threading`.
struct PythonFork {
    runner: Runner,
}

impl ForkHooks for PythonFork {
    fn accepted_threads(&self) -> u32 {
        app_threads(self.runner)
    }

    fn before(&self) {
        // SAFETY: called with the GIL held (a `Gil` guard is alive around the fork), as the
        // C API requires.
        unsafe { (capi::api().PyOS_BeforeFork)() }
    }

    fn after_in_parent(&self) {
        // SAFETY: right after fork (or its failure) in the parent, with the GIL held.
        unsafe { (capi::api().PyOS_AfterFork_Parent)() }
    }

    fn after_in_child(&self) {
        // SAFETY: first thing in the child, before any other Python call.
        unsafe { (capi::api().PyOS_AfterFork_Child)() }
    }
}

/// Runs `fork` (which forks with the hooks it is given) with the GIL held around the fork,
/// so the child starts holding it too.
fn forking<T>(runner: Runner, fork: impl FnOnce(&PythonFork) -> T) -> T {
    let _gil = Gil::acquire();
    // Text the worker buffered (the app printed at import) must not be written again by
    // every horse.
    interpreter::flush_std_streams(runner);
    fork(&PythonFork { runner })
}

/// The horse forked ahead for the next Python job. A horse costs its fork, the interpreter's
/// after-fork work and the first write to every page it touches (copy on write): most of a
/// no-op job's time. Forked while the previous job's horse runs, that cost overlaps it on
/// another core instead of adding to every job. The spare is a copy of the worker, as a horse
/// forked at the job's start is: the worker runs no Python between jobs, so both see the same
/// interpreter. It waits for its job on a socket, then runs it exactly as a fresh horse does.
///
/// Only while jobs come back to back: after the worker found no job (it goes idle, pauses or
/// loses Redis) the spare is killed, so an idle worker keeps no extra process, and a spare
/// never holds a copy of the worker's connections for long. Never when the app runs threads
/// of its own: a horse forked now would miss what they change before the job starts.
#[derive(Default)]
pub struct Ahead {
    spare: Option<Spare>,
    /// A job started since the worker was last idle: the next one may come right after it.
    busy: bool,
}

struct Spare {
    horse: report::Reported,
    /// Where the job goes: one frame (see [`send_job`]).
    jobs: UnixStream,
    forked: Instant,
}

impl Spare {
    fn discard(mut self) {
        self.horse.kill();
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.idle();
    }
}

impl Ahead {
    /// The worker has no job to run next: the spare is killed (and reaped).
    pub fn idle(&mut self) {
        if let Some(spare) = self.spare.take() {
            spare.discard();
        }
        self.busy = false;
    }

    /// Hands `job` to the spare; `None` (the spare gone) when there is none or it cannot take
    /// it, and a horse must be forked for the job now.
    fn hand(&mut self, job: &JobStart<'_>, timeout: i64) -> Option<report::Reported> {
        let mut spare = self.spare.take()?;
        if spare.horse.try_finish().is_some() {
            log::debug!(
                "the spare work horse had died; forking one for job {}",
                job.record.id
            );
            return None;
        }
        if spare.forked.elapsed() > SPARE_FRESH {
            log::debug!(
                "the spare work horse waited too long; forking one for job {}",
                job.record.id
            );
            spare.discard();
            return None;
        }
        // A spare that stopped reading (it cannot, short of a bug) must not hang the worker.
        let sent = spare
            .jobs
            .set_write_timeout(Some(Duration::from_secs(5)))
            .and_then(|()| {
                send_job(
                    &spare.jobs,
                    &job.record.id,
                    &job.record.fields,
                    timeout,
                    job.worker,
                )
            });
        if let Err(e) = sent {
            log::warn!(
                "cannot hand job {} to the spare work horse ({e}); forking one for it",
                job.record.id
            );
            spare.discard();
            return None;
        }
        Some(spare.horse)
    }
}

/// Forks the horse for `job`: the spare's, when one waits, else a new one; then, when jobs
/// come back to back, the spare for the next job.
pub fn start(
    interp: &Interpreter,
    ahead: &mut Ahead,
    job: &JobStart<'_>,
) -> Result<Box<dyn Execution>, StartError> {
    let runner = interp.runner;
    let timeout = job.timeout.map_or(-1, |t| t as i64);
    let stopped_callback = job
        .record
        .fields
        .get("stopped_callback_name")
        .is_some_and(|v| !v.is_empty())
        .then(|| StoppedCallback {
            runner,
            job_id: job.record.id.clone(),
            fields: job.record.fields.clone(),
            timeout: job
                .record
                .fields
                .get("stopped_callback_timeout")
                .and_then(|t| std::str::from_utf8(t).ok()?.trim().parse().ok())
                .unwrap_or(CALLBACK_TIMEOUT),
        });
    let inner = match ahead.hand(job, timeout) {
        Some(horse) => horse,
        None => {
            let run = |out: &mut dyn Write| {
                let report = fields_obj(&job.record.fields).and_then(|fields| {
                    run_job(runner, &job.record.id, fields, timeout, job.worker)
                });
                let _ = out.write_all(report_or_failure(report).as_bytes());
                0
            };
            forking(runner, |hooks| report::fork(hooks, run, decode))
                .map_err(|e| StartError::fork(&e))?
        }
    };
    if ahead.busy && fork::threads().is_ok_and(|n| n == 1) {
        match fork_spare(runner) {
            Ok(spare) => ahead.spare = Some(spare),
            // The job runs all the same; the next one forks its own horse.
            Err(e) => log::debug!("cannot fork a spare work horse: {e}"),
        }
    }
    ahead.busy = true;
    Ok(Box::new(PythonExecution {
        inner,
        stopped_callback,
    }))
}

/// A spare older than this is not handed a job (a fresh horse is forked instead): the
/// app's at-fork hooks (`os.register_at_fork`) ran when the spare was forked, and a job
/// should find what they set up nearly fresh, as in a horse forked at its start. Forking
/// ahead pays for jobs of a few milliseconds; after jobs of seconds the fork no longer matters.
const SPARE_FRESH: Duration = Duration::from_secs(5);

/// How long a spare waits for its job before it exits by itself (well past [`SPARE_FRESH`],
/// so it never leaves while the worker may still hand it one).
const SPARE_WAIT: Duration = Duration::from_secs(30);

/// Forks a horse that waits for its job on a socket, then runs it.
fn fork_spare(runner: Runner) -> std::io::Result<Spare> {
    let (jobs, mut inbox) = UnixStream::pair()?;
    let jobs_fd = jobs.as_raw_fd();
    let run = move |out: &mut dyn Write| {
        // SAFETY: the worker's end of the pair, inherited; nothing in this process uses it,
        // and without it the worker closing its own is seen as the end of the stream.
        unsafe { nix::libc::close(jobs_fd) };
        // SAFETY: the GIL is held (the fork was made holding it); it is released while the
        // spare waits, so threads the app's at-fork hooks started can run, and taken back.
        let frame = unsafe {
            let saved = (capi::api().PyEval_SaveThread)();
            let frame = receive(&mut inbox);
            (capi::api().PyEval_RestoreThread)(saved);
            frame
        };
        let Some(frame) = frame else {
            // No job came (the worker moved on, or is gone).
            return 1;
        };
        let call = decode_job(&frame).and_then(|job| {
            let fields = capi::bytes_dict(job.fields)?;
            Some((
                job.id.to_string(),
                job.worker.to_string(),
                job.timeout,
                fields,
            ))
        });
        // Python has its own copy of every field now: a large payload is not held twice.
        drop(frame);
        let report = call.and_then(|(id, worker, timeout, fields)| {
            run_job(runner, &id, fields, timeout, &worker)
        });
        let _ = out.write_all(report_or_failure(report).as_bytes());
        0
    };
    let horse = forking(runner, |hooks| report::fork(hooks, run, decode))?;
    Ok(Spare {
        horse,
        jobs,
        forked: Instant::now(),
    })
}

/// The job's frame, once the worker sends it within [`SPARE_WAIT`]; `None` otherwise.
fn receive(inbox: &mut UnixStream) -> Option<Vec<u8>> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(inbox.as_fd(), PollFlags::POLLIN)];
    let wait = PollTimeout::try_from(SPARE_WAIT).unwrap_or(PollTimeout::MAX);
    loop {
        match poll(&mut fds, wait) {
            Ok(0) => return None,
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
    let mut len = [0u8; 8];
    inbox.read_exact(&mut len).ok()?;
    let mut frame = vec![0u8; usize::try_from(u64::from_le_bytes(len)).ok()?];
    inbox.read_exact(&mut frame).ok()?;
    Some(frame)
}

/// Writes a job as the spare receives it: `u64` frame length, then `id`, `worker`, the job
/// hash's fields (each string a `u64` length and its bytes), and the timeout as `i64`, all
/// little-endian. Written in pieces, so a large payload is not copied into one buffer.
fn send_job(
    to: &UnixStream,
    id: &str,
    fields: &HashMap<String, Vec<u8>>,
    timeout: i64,
    worker: &str,
) -> std::io::Result<()> {
    let strings = || {
        [id.as_bytes(), worker.as_bytes()].into_iter().chain(
            fields
                .iter()
                .flat_map(|(k, v)| [k.as_bytes(), v.as_slice()]),
        )
    };
    let len: usize = strings().map(|b| 8 + b.len()).sum::<usize>() + 8;
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, to);
    out.write_all(&(len as u64).to_le_bytes())?;
    for b in strings() {
        out.write_all(&(b.len() as u64).to_le_bytes())?;
        out.write_all(b)?;
    }
    out.write_all(&timeout.to_le_bytes())?;
    out.flush()
}

struct HandedJob<'a> {
    id: &'a str,
    worker: &'a str,
    fields: Vec<(&'a [u8], &'a [u8])>,
    timeout: i64,
}

/// [`send_job`]'s frame (without its length) back; `None` if it is not one.
fn decode_job(frame: &[u8]) -> Option<HandedJob<'_>> {
    let (body, timeout) = frame.split_at_checked(frame.len().checked_sub(8)?)?;
    let timeout = i64::from_le_bytes(timeout.try_into().ok()?);
    let mut rest = body;
    let mut take = || -> Option<&[u8]> {
        let (len, tail) = rest.split_at_checked(8)?;
        let len = usize::try_from(u64::from_le_bytes(len.try_into().ok()?)).ok()?;
        let (item, tail) = tail.split_at_checked(len)?;
        rest = tail;
        Some(item)
    };
    let id = std::str::from_utf8(take()?).ok()?;
    let worker = std::str::from_utf8(take()?).ok()?;
    let mut fields = Vec::new();
    while let Some(k) = take() {
        fields.push((k, take()?));
    }
    Some(HandedJob {
        id,
        worker,
        fields,
        timeout,
    })
}

/// Calls `job.py`'s `run_job` (the GIL held) and returns its report (`run` flushed the job's
/// output). `None` if the runner itself failed: its traceback, printed to stderr, is flushed.
fn run_job(runner: Runner, id: &str, fields: Owned, timeout: i64, worker: &str) -> Option<String> {
    let report = [
        capi::str_obj(id),
        Some(fields),
        capi::int_obj(timeout),
        capi::str_obj(worker),
    ]
    .into_iter()
    .collect::<Option<Vec<Owned>>>()
    .and_then(|args| runner.call_text(c"run_job", args));
    if report.is_none() {
        interpreter::flush_std_streams(runner);
    }
    report
}

fn report_or_failure(report: Option<String>) -> String {
    report.unwrap_or_else(|| {
        r#"{"kind": "failed", "payload": "rqworker's Python job runner failed (the error is in the worker's log)\n", "text": ""}"#.into()
    })
}

/// Runs the job in the worker's own process (no-fork mode): the app's state persists from
/// job to job, as under RQ's SimpleWorker; the timeout raises JobTimeoutException inside the
/// job, as in a horse. A stopped callback has nothing to run after (no horse to kill).
pub fn run_in_process(interp: &Interpreter, job: &JobStart<'_>) -> Outcome {
    let timeout = job.timeout.map_or(-1, |t| t as i64);
    let _gil = Gil::acquire();
    let report = fields_obj(&job.record.fields)
        .and_then(|fields| run_job(interp.runner, &job.record.id, fields, timeout, job.worker));
    decode(
        crate::execution::inline::exit_code(0),
        report_or_failure(report).as_bytes(),
    )
}

/// The job hash as `job.py` reads it: a dict of bytes, as redis-py's `HGETALL` gives it
/// (built here, in C, in a fraction of what parsing it in Python took).
fn fields_obj(fields: &HashMap<String, Vec<u8>>) -> Option<Owned> {
    capi::bytes_dict(fields.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())))
}

/// A running Python job: the horse, and what a stop-job command runs after killing it.
struct PythonExecution {
    inner: report::Reported,
    stopped_callback: Option<StoppedCallback>,
}

/// The job's `on_stopped` callback, run in a horse of its own after the job's was killed (RQ
/// runs it in the worker; a horse keeps the app's code out of the worker process).
struct StoppedCallback {
    runner: Runner,
    job_id: String,
    fields: HashMap<String, Vec<u8>>,
    timeout: u64,
}

impl Execution for PythonExecution {
    fn pid(&self) -> Option<nix::unistd::Pid> {
        self.inner.pid()
    }
    fn poll_fds(&self) -> Vec<(std::os::fd::BorrowedFd<'_>, nix::poll::PollFlags)> {
        self.inner.poll_fds()
    }
    fn pump(&mut self) {
        self.inner.pump()
    }
    fn try_finish(&mut self) -> Option<Outcome> {
        self.inner.try_finish()
    }
    fn kill(&mut self) -> Exit {
        self.inner.kill()
    }

    fn after_stop(&mut self) {
        let Some(cb) = self.stopped_callback.take() else {
            return;
        };
        let forked = forking(cb.runner, |hooks| {
            Horse::fork_with(hooks, || {
                if let (Some(id), Some(fields)) =
                    (capi::str_obj(&cb.job_id), fields_obj(&cb.fields))
                {
                    cb.runner.call(c"run_stopped", vec![id, fields]);
                }
                interpreter::flush_std_streams(cb.runner);
                0
            })
        });
        let mut horse = match forked {
            Ok(h) => h,
            Err(e) => {
                log::warn!("job {}: cannot run its stopped callback: {e}", cb.job_id);
                return;
            }
        };
        // The callback has its own timeout inside; this is the backstop.
        let deadline = Instant::now() + Duration::from_secs(cb.timeout + 5);
        while horse.exited().is_none() {
            if Instant::now() >= deadline {
                horse.kill_and_reap();
                log::warn!(
                    "job {}: its stopped callback ran past its timeout ({} s); killed",
                    cb.job_id,
                    cb.timeout
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// How many threads the app started (`threading.active_count()` less the worker's own).
fn app_threads(runner: Runner) -> u32 {
    runner
        .call_text(c"app_threads", Vec::new())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The job's outcome from the horse's exit and report.
fn decode(exit: Exit, report: &[u8]) -> Outcome {
    let doc: Option<Value> = serde_json::from_slice(report).ok();
    let field = |name: &str| {
        doc.as_ref()
            .and_then(|d| d.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match (exit.success(), field("kind").as_deref()) {
        (true, Some("ok")) => Outcome::Returned(ReturnValue::Serialized {
            base64: field("payload").unwrap_or_default(),
            repr: field("text").unwrap_or_default(),
        }),
        (true, Some("failed")) => {
            Outcome::Failed(JobFailure::Raised(field("payload").unwrap_or_default()))
        }
        (true, Some("retry")) => {
            // `text` is "max interval interval ...".
            let spec: Vec<u64> = field("text")
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            Outcome::Retry {
                base64: field("payload").unwrap_or_default(),
                max: spec.first().map_or(1, |m| *m as u32),
                intervals: spec.get(1..).unwrap_or_default().to_vec(),
            }
        }
        _ => Outcome::Failed(JobFailure::HorseCrashed {
            exit,
            detail: "the Python job ended its work horse without reporting an outcome (it called os._exit(), or the interpreter crashed)".into(),
        }),
    }
}
