//! `rqworker [OPTIONS] QUEUE...`: see `docs/worker.md`.

fn main() {
    if let Err(code) = rq_supervisor::worker::main_with(rq_supervisor::Registry::new()) {
        std::process::exit(code);
    }
}
