//! Nothing is lost or run twice: crash cleanup, Redis outages, whole-host loss, the chaos
//! run, and (with
//! `--features fault-injection`) a worker killing itself at each point of a job's life.

mod chaos;
mod crash_cleanup;
mod environment;
#[cfg(feature = "fault-injection")]
mod fault_injection;
mod host_loss;
mod redis_outage;
mod sentinel;
