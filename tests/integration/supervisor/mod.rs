//! `rq-supervisor`: its command line and `check`, restarts and recycling, reloads and
//! scaling, and its two-stage shutdown.

mod cli;
mod reload;
mod restart;
mod shutdown;
