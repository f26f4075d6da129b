//! The integration tests, one binary: the real `rqworker` and `rq-supervisor` binaries against
//! real redis-servers (one per test, on a unix socket in its own temp dir), beside Python RQ
//! 2.12, plus property tests over the decoders and the config parser.
//!
//! One module per behaviour area; `support` is the shared harness (also used by
//! `benches/rq_bench.rs`). Every test runs in this one process, in parallel: a test must not
//! change process-wide state (the environment, the working directory, the umask, signal
//! dispositions) and must not count processes it did not start itself.
//!
//! `cargo test --test integration worker::` runs one area; the reliability tests that make
//! the worker kill itself need `--features fault-injection`, and the `python` area (the app's
//! Python job functions) the `python` feature, on by default. A few tests have a Python-free
//! twin (`#[cfg(not(feature = "python"))]`): `cargo test --no-default-features --features
//! tls,fault-injection --test integration` runs that build's suite.

mod support;

mod bad_input;
mod contract;
mod fuzz;
mod interop;
#[cfg(feature = "python")]
mod python;
mod reliability;
mod security;
mod supervisor;
mod worker;
