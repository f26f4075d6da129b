//! `rq-supervisor -c pool.toml`: see `docs/supervisor.md`.

fn main() {
    if let Err(code) = rq_supervisor::supervisor::main() {
        std::process::exit(code);
    }
}
