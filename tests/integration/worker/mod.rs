//! `rqworker` on its own: burst and priority, its command line, a job's life (heartbeats,
//! timeouts, crashes, warm and cold shutdown), command handlers, the Redis bookkeeping as RQ
//! writes it, and bad payloads.

mod bad_input;
mod basics;
mod bookkeeping;
mod cli;
mod handlers;
mod lifecycle;
mod no_fork;
