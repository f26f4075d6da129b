//! `rq-supervisor -c pool.toml`: see `docs/supervisor.md`. `rq-supervisor worker ...` is
//! the worker built into it (the same as `rqworker ...`), which its pools run by default.

fn main() {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let result = if args
        .get(1)
        .is_some_and(|a| a == rq_supervisor::launch::flag::WORKER)
    {
        args.remove(1);
        // The process shows as `rqworker` in ps/top and to pkill, not as a supervisor.
        let _ = nix::sys::prctl::set_name(c"rqworker");
        rq_supervisor::worker::main_from(args, rq_supervisor::Registry::new())
    } else {
        rq_supervisor::supervisor::main()
    };
    if let Err(code) = result {
        std::process::exit(code);
    }
}
