//! Redis key names RQ 2.12 uses (§1). Every key this crate touches is built here, so a
//! mismatch with Python RQ can only live in one place.

/// Set of queue keys (`rq:queue:Q`) that have ever been enqueued to.
pub const QUEUES: &str = "rq:queues";
/// Set of all live worker keys.
pub const WORKERS: &str = "rq:workers";
/// Existence means every worker is suspended (`rq suspend`).
pub const SUSPENDED: &str = "rq:suspended";

pub fn queue(q: &str) -> String {
    format!("rq:queue:{q}")
}
pub fn intermediate(q: &str) -> String {
    format!("rq:queue:{q}:intermediate")
}
pub fn intermediate_first_seen(q: &str, job: &str) -> String {
    format!("rq:queue:{q}:intermediate:first_seen:{job}")
}
pub fn job(id: &str) -> String {
    format!("rq:job:{id}")
}
pub fn dependents(id: &str) -> String {
    format!("rq:job:{id}:dependents")
}
/// Note the double colon: RQ's `Job.dependencies_key` builds it that way and readers expect it.
pub fn dependencies(id: &str) -> String {
    format!("rq:job::{id}:dependencies")
}
pub fn results(id: &str) -> String {
    format!("rq:results:{id}")
}
pub fn execution(job: &str, execution: &str) -> String {
    format!("rq:execution:{job}:{execution}")
}
pub fn executions(job: &str) -> String {
    format!("rq:executions:{job}")
}
/// The started-job registry (`StartedJobRegistry`); members are `J:E`.
pub fn wip(q: &str) -> String {
    format!("rq:wip:{q}")
}
pub fn finished(q: &str) -> String {
    format!("rq:finished:{q}")
}
pub fn failed(q: &str) -> String {
    format!("rq:failed:{q}")
}
pub fn deferred(q: &str) -> String {
    format!("rq:deferred:{q}")
}
pub fn scheduled(q: &str) -> String {
    format!("rq:scheduled:{q}")
}
pub fn canceled(q: &str) -> String {
    format!("rq:canceled:{q}")
}
pub fn worker(name: &str) -> String {
    format!("rq:worker:{name}")
}
/// Workers listening on queue `q`; `rq info` lists workers per queue from these sets.
pub fn workers_of(q: &str) -> String {
    format!("rq:workers:{q}")
}
pub fn pubsub(worker: &str) -> String {
    format!("rq:pubsub:{worker}")
}
pub fn clean_registries_lock(q: &str) -> String {
    format!("rq:clean_registries:{q}")
}
pub fn scheduler_lock(q: &str) -> String {
    format!("rq:scheduler-lock:{q}")
}
pub fn scheduler(name: &str) -> String {
    format!("rq:scheduler:{name}")
}

/// The member of `rq:wip:Q` for one execution of a job.
pub fn wip_member(job: &str, execution: &str) -> String {
    format!("{job}:{execution}")
}

/// The queue name inside a queue key, or `None` for keys that are not queue keys.
pub fn queue_name(queue_key: &str) -> Option<&str> {
    queue_key.strip_prefix("rq:queue:")
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
