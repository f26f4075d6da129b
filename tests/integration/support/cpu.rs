//! CPU time a process has used, which `rq_supervisor::procfs` does not read. Shared by the
//! tests and `benches/rq_bench.rs` (which includes this file with `#[path]`).

/// User plus system CPU time of `pid` in seconds, from `/proc/PID/stat`; `None` once the
/// process is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised command name: utime and stime are the 12th and 13th fields
    // (14 and 15 of the whole line).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    Some(ticks as f64 / per_sec as f64)
}
