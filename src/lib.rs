//! # rq-supervisor
//!
//! A Rust implementation of the [RQ](https://python-rq.org) worker, wire-compatible with
//! Python RQ 2.12 and its JSON serializer, plus a pool supervisor. Python applications
//! enqueue with the real `rq` package; `rqworker` runs the jobs; the applications read
//! results back as if a Python worker had run them, and `rq info`, rq-dashboard and
//! rq-exporter see the workers.
//!
//! Rust programs use this crate to register native job functions and build their own worker
//! binary (see `examples/native_worker.rs`), and to enqueue and read jobs ([`producer`]).
//!
//! # Layout
//!
//! - [`protocol`]: RQ 2.12 on the wire. Key names, timestamps, the job record and payload
//!   codec, result stream entries. Knows nothing of processes.
//! - [`store`]: the one Redis gateway: claim, settle, registrations, crash cleanup,
//!   maintenance, the scheduler's moves, and the producer's writes; each Lua script in its own
//!   `.lua` file beside the typed wrapper that builds its arguments and reads its reply.
//! - [`conn`]: Redis URLs (masked in every message), TLS (`rediss://`, CA and client
//!   certificate), connecting, hints for errors an operator must fix (ACL, read-only replica,
//!   out of memory), capped jittered backoff.
//! - [`listener`]: the worker's wake-up connection, on which Redis pushes queue changes and
//!   `rq:pubsub:<worker>` commands, so an idle worker sleeps in `poll(2)` and still reacts to
//!   signals at once.
//! - [`config`]: `pool.toml`, parsed raw then validated into typed specs.
//! - [`settings`]: the worker settings every layer fills (`[worker]`, `[pools.NAME.worker]`,
//!   the command line), the rules they all obey, and the one merge into a worker's spec.
//! - [`handler`]: the registry of what a `func_name` runs: native functions,
//!   config-declared commands, built-ins.
//! - [`execution`]: the seam between the loop and a running job: each handler kind starts an
//!   [`execution::Execution`] (today a forked work horse), and every ending is an
//!   [`execution::Outcome`] whose failures render RQ's exception texts in one place.
//! - `python` (feature `python`): the embedded interpreter that runs the app's own Python
//!   job functions, forked per job; nothing outside it knows the C-API.
//! - [`worker`]: the life-cycle loop (claim -> execute -> settle), signals, heartbeats,
//!   commands, and the command line.
//! - [`launch`]: the supervisor -> worker contract: the argv, environment and handoff
//!   descriptor (through which a supervised worker receives its configuration: it may run as
//!   a user that cannot read the pool file) built in one place and parsed by the worker's
//!   command line.
//! - [`procfs`]: what `/proc` says about processes: children, state, resident memory.
//! - [`producer`]: enqueueing jobs exactly as Python RQ writes them, and reading them back.
//! - [`logging`]: one line per `write(2)`, naming the pool and worker.
//! - [`fault`]: named points where a worker built with the `fault-injection` feature kills
//!   itself, for the reliability tests; nothing at all without the feature.
//! - [`supervisor`]: `rq-supervisor`: a pure state machine (events in, actions out), the
//!   event loop that performs its actions on real processes, restart policy, health checks
//!   from `/proc` and Redis, reload diffs, and the `check` report.
//!
//! Data flows one way: queue -> claim -> execution -> outcome -> settle; and config -> spec ->
//! supervisor state -> actions -> processes. `docs/architecture.md` says what each module may
//! import and which invariants hold.

pub mod config;
pub mod conn;
pub mod execution;
pub mod fault;
pub mod handler;
pub mod launch;
pub mod listener;
pub mod logging;
pub mod procfs;
pub mod producer;
pub mod protocol;
#[cfg(feature = "python")]
pub mod python;
pub mod settings;
pub mod store;
pub mod supervisor;
pub mod worker;

pub use handler::{JobCall, JobError, Registry};
