//! What Linux's `/proc` tells us: a process's children (the worker's horses,
//! orphans re-parented to the supervisor as subreaper) and resident memory.

use std::fs;

/// The direct children of `pid`. Reads `/proc/PID/task/*/children` (every thread, since a
/// child belongs to the thread that forked it, and re-parented orphans to any live thread);
/// falls back to scanning every `/proc/*/stat` when that file is not available.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut found_file = false;
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = fs::read_to_string(task.path().join("children")) {
                found_file = true;
                out.extend(
                    text.split_whitespace()
                        .filter_map(|s| s.parse::<u32>().ok()),
                );
            }
        }
    }
    if !found_file {
        out = scan_children(pid);
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn scan_children(parent: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|s| s.ppid == parent))
        .collect()
}

/// `pid` and all its descendants, parents before children.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() && out.len() < 4096 {
        let kids = children(out[i]);
        out.extend(kids);
        i += 1;
    }
    out
}

/// The fields of `/proc/PID/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `D`, `Z`, `T`...
    pub state: char,
    pub ppid: u32,
    /// How many threads the process has (`num_threads`).
    pub threads: u32,
}

pub fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses the text of a `/proc/PID/stat` file.
pub fn parse_stat(text: &str) -> Option<Stat> {
    // The command name is in parentheses and may contain anything; fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (field 3 of proc(5)), ppid (4), ... num_threads (20).
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        threads: fields.get(17)?.parse().ok()?,
    })
}

/// Resident memory of one process in bytes (`VmRSS`), `None` if it is gone or a zombie.
pub fn rss(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Memory of `pid` and every descendant (the worker, its work horse, the horse forked ahead
/// for the next job): the worker's resident memory plus what each descendant has of its own
/// (`Private_Clean + Private_Dirty`: what it allocated or copied on write). The pages a horse
/// still shares with the worker are counted once, in the worker's; summing resident memory
/// would count them once per process.
pub fn tree_rss(pid: u32) -> Option<u64> {
    let own = rss(pid)?;
    Some(
        own + tree(pid)
            .iter()
            .skip(1)
            .filter_map(|p| private(*p))
            .sum::<u64>(),
    )
}

/// Memory only `pid` maps (`Private_Clean + Private_Dirty` of `/proc/PID/smaps_rollup`), in
/// bytes; its resident memory where that file does not exist (Linux before 4.14).
pub fn private(pid: u32) -> Option<u64> {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
        return rss(pid);
    };
    let kb = |name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((kb("Private_Clean:")? + kb("Private_Dirty:")?) * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child's own memory is part of its resident memory; the shared part (its libc, its
    /// binary's code) is not.
    #[test]
    fn a_childs_private_memory_leaves_out_what_it_shares() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id();
        let (mut own, mut resident) = (None, None);
        for _ in 0..100 {
            // Until the exec is done, the child is a copy of this process.
            if cmdline_is_sleep(pid) {
                own = private(pid);
                resident = rss(pid);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let (own, resident) = (own.expect("private"), resident.expect("rss"));
        assert!(own > 0 && own < resident, "private {own}, rss {resident}");
    }

    fn cmdline_is_sleep(pid: u32) -> bool {
        fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep"))
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let s = stat(me).expect("own stat");
        assert_eq!(s.ppid, nix::unistd::getppid().as_raw() as u32);
        // The test harness runs tests on threads of its own.
        assert!(s.threads >= 1, "{s:?}");
        let with_space = "42 (a) b) S 7 1 1 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 3 0 1 2 3";
        assert_eq!(
            parse_stat(with_space),
            Some(Stat {
                state: 'S',
                ppid: 7,
                threads: 3
            })
        );
        assert!(rss(me).unwrap() > 0);
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let kids = children(me);
        assert!(kids.contains(&child.id()), "{kids:?}");
        assert!(scan_children(me).contains(&child.id()));
        assert!(tree_rss(me).unwrap() > rss(me).unwrap());
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
