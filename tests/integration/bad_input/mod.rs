//! The bad-input rows of docs/reliability.md: config files, handlers, payloads and Redis
//! data that must be refused or failed one job at a time, never wedging a worker.

mod config;
mod handler;
mod payload;
mod redis;
