//! Redis key names RQ 2.12 uses (§1). Every key this crate touches is built here, in Rust
//! and in the Lua scripts alike ([`lua_prelude`] defines the same prefixes for every script),
//! so a mismatch with Python RQ can only live in one place.

/// Set of queue keys (`rq:queue:Q`) that have ever been enqueued to.
pub const QUEUES: &str = "rq:queues";
/// Set of all live worker keys.
pub const WORKERS: &str = "rq:workers";
/// Existence means every worker is suspended (`rq suspend`).
pub const SUSPENDED: &str = "rq:suspended";
/// A key that never exists: the claim script's first write (`SET ... XX`), which Redis refuses
/// when it is out of memory or a read-only replica, before anything is popped.
pub const CLAIM_WRITE_CHECK: &str = "rq:claim-write-check";
/// The key the scripts' ACL check names for every command it checks (see `store::script`).
pub const ACL_CHECK: &str = "rq:acl-check";

const QUEUE: &str = "rq:queue:";
const JOB: &str = "rq:job:";
const RESULTS: &str = "rq:results:";
const EXECUTION: &str = "rq:execution:";
const EXECUTIONS: &str = "rq:executions:";
const WIP: &str = "rq:wip:";
const FINISHED: &str = "rq:finished:";
const FAILED: &str = "rq:failed:";
const DEFERRED: &str = "rq:deferred:";
const SCHEDULED: &str = "rq:scheduled:";
const CANCELED: &str = "rq:canceled:";
const WORKER: &str = "rq:worker:";
const WORKERS_OF: &str = "rq:workers:";
const PUBSUB: &str = "rq:pubsub:";
const CLEAN_REGISTRIES: &str = "rq:clean_registries:";
const SCHEDULER_LOCK: &str = "rq:scheduler-lock:";
const SCHEDULER: &str = "rq:scheduler:";

/// The key names as Lua sees them: one `local` per prefix and a function per key built of
/// several parts, put in front of every script, so no script spells a key name itself. Locals
/// cost nothing per call; the three functions are three small closures.
pub fn lua_prelude() -> String {
    let constants: [(&str, &str); 18] = [
        ("KEY_QUEUES", QUEUES),
        ("KEY_WORKERS", WORKERS),
        ("KEY_SUSPENDED", SUSPENDED),
        ("KEY_CLAIM_WRITE_CHECK", CLAIM_WRITE_CHECK),
        ("KEY_QUEUE", QUEUE),
        ("KEY_JOB", JOB),
        ("KEY_RESULTS", RESULTS),
        ("KEY_EXECUTION", EXECUTION),
        ("KEY_EXECUTIONS", EXECUTIONS),
        ("KEY_WIP", WIP),
        ("KEY_FINISHED", FINISHED),
        ("KEY_FAILED", FAILED),
        ("KEY_DEFERRED", DEFERRED),
        ("KEY_SCHEDULED", SCHEDULED),
        ("KEY_WORKER", WORKER),
        ("KEY_WORKERS_OF", WORKERS_OF),
        ("KEY_SCHEDULER_LOCK", SCHEDULER_LOCK),
        ("KEY_SCHEDULER", SCHEDULER),
    ];
    let mut out = String::new();
    for (name, value) in constants {
        out.push_str(&format!("local {name} = '{value}'\n"));
    }
    // The same shapes as `dependents`, `dependencies` and `execution` below.
    out.push_str(&format!(
        "local function key_dependents(id) return KEY_JOB .. id .. '{DEPENDENTS_SUFFIX}' end\n\
         local function key_dependencies(id) return '{DEPENDENCIES_PREFIX}' .. id .. '{DEPENDENCIES_SUFFIX}' end\n\
         local function key_execution(id, e) return KEY_EXECUTION .. id .. ':' .. e end\n"
    ));
    out
}

const DEPENDENTS_SUFFIX: &str = ":dependents";
const DEPENDENCIES_PREFIX: &str = "rq:job::";
const DEPENDENCIES_SUFFIX: &str = ":dependencies";

pub fn queue(q: &str) -> String {
    format!("{QUEUE}{q}")
}
pub fn intermediate(q: &str) -> String {
    format!("{QUEUE}{q}:intermediate")
}
pub fn intermediate_first_seen(q: &str, job: &str) -> String {
    format!("{QUEUE}{q}:intermediate:first_seen:{job}")
}
pub fn job(id: &str) -> String {
    format!("{JOB}{id}")
}
pub fn dependents(id: &str) -> String {
    format!("{JOB}{id}{DEPENDENTS_SUFFIX}")
}
/// Note the double colon: RQ's `Job.dependencies_key` builds it that way and readers expect it.
pub fn dependencies(id: &str) -> String {
    format!("{DEPENDENCIES_PREFIX}{id}{DEPENDENCIES_SUFFIX}")
}
pub fn results(id: &str) -> String {
    format!("{RESULTS}{id}")
}
pub fn execution(job: &str, execution: &str) -> String {
    format!("{EXECUTION}{job}:{execution}")
}
pub fn executions(job: &str) -> String {
    format!("{EXECUTIONS}{job}")
}
/// The started-job registry (`StartedJobRegistry`); members are `J:E`.
pub fn wip(q: &str) -> String {
    format!("{WIP}{q}")
}
pub fn finished(q: &str) -> String {
    format!("{FINISHED}{q}")
}
pub fn failed(q: &str) -> String {
    format!("{FAILED}{q}")
}
pub fn deferred(q: &str) -> String {
    format!("{DEFERRED}{q}")
}
pub fn scheduled(q: &str) -> String {
    format!("{SCHEDULED}{q}")
}
pub fn canceled(q: &str) -> String {
    format!("{CANCELED}{q}")
}
pub fn worker(name: &str) -> String {
    format!("{WORKER}{name}")
}
/// Workers listening on queue `q`; `rq info` lists workers per queue from these sets.
pub fn workers_of(q: &str) -> String {
    format!("{WORKERS_OF}{q}")
}
pub fn pubsub(worker: &str) -> String {
    format!("{PUBSUB}{worker}")
}
pub fn clean_registries_lock(q: &str) -> String {
    format!("{CLEAN_REGISTRIES}{q}")
}
pub fn scheduler_lock(q: &str) -> String {
    format!("{SCHEDULER_LOCK}{q}")
}
pub fn scheduler(name: &str) -> String {
    format!("{SCHEDULER}{name}")
}

/// The member of `rq:wip:Q` for one execution of a job.
pub fn wip_member(job: &str, execution: &str) -> String {
    format!("{job}:{execution}")
}

/// The queue name inside a queue key, or `None` for keys that are not queue keys.
pub fn queue_name(queue_key: &str) -> Option<&str> {
    queue_key.strip_prefix(QUEUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_rq() {
        assert_eq!(queue("high"), "rq:queue:high");
        assert_eq!(dependencies("abc"), "rq:job::abc:dependencies");
        assert_eq!(wip_member("j", "e"), "j:e");
        assert_eq!(queue_name("rq:queue:low"), Some("low"));
        assert_eq!(queue_name("rq:job:x"), None);
    }
}
