//! Redis ACL users, per-pool users and groups, secrets kept out of argv, logs and handlers,
//! and TLS.

mod acl;
mod run_as;
mod secrets;
mod tls;
