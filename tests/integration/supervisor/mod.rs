//! `rq-supervisor`: its command line and `check`, restarts and recycling, reloads and
//! scaling, its two-stage shutdown, and operating it: the control socket, autoscale, the
//! metrics and health page, and systemd's notifications.

mod autoscale;
mod cli;
mod control;
mod kubernetes;
mod metrics;
mod reload;
mod restart;
mod sd_notify;
mod shutdown;
