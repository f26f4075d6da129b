//! Property tests (proptest). Their regression files are under `tests/proptest-regressions/`,
//! where proptest looks for them (beside the directory holding `main.rs`).

mod config;
mod protocol;
