//! Reload diffs, pure: a new valid [`Config`] against the running pools. Count changes apply
//! in place; pools whose workers' command line or config changed get a new generation and
//! are rolled one worker at a time by the state machine's tick; new pools start; removed
//! pools drain warm. Runtime scale overrides (TTIN/TTOU) survive unless the file changes that
//! pool's count.

use log::Level;

use super::pool::new_pool;
use super::state::{Out, Phase, Retire, Settings, State};
use crate::config::{Config, PoolSpec};

impl State {
    pub(super) fn on_reload(&mut self, cfg: &Config, out: &mut Out) {
        if self.phase != Phase::Running {
            out.info("shutting down: reload ignored".into());
            return;
        }
        self.settings = Settings {
            roll_delay: self.settings.roll_delay,
            ..Settings::from_config(cfg)
        };
        // (pool, what changed), logged in this order once the diff is complete.
        let mut changes = Vec::new();
        for spec in &cfg.pools {
            self.reload_pool(cfg, spec, &mut changes);
        }
        self.drain_removed(cfg, out, &mut changes);
        if changes.is_empty() {
            out.info("reload: no changes".into());
        }
        for (pool, change) in changes {
            out.pool(Level::Info, &pool, format!("reload: {change}"));
        }
    }

    /// Applies one pool of the new file: added, back, rescaled, or changed (a new
    /// generation, rolled by the tick).
    fn reload_pool(&mut self, cfg: &Config, spec: &PoolSpec, changes: &mut Vec<(String, String)>) {
        let fresh = new_pool(cfg, spec);
        match self.pools.get_mut(&spec.name) {
            None => {
                changes.push((
                    spec.name.clone(),
                    format!("added with {} worker(s)", spec.workers),
                ));
                self.pools.insert(spec.name.clone(), fresh);
            }
            Some(pool) => {
                let name = spec.name.clone();
                if pool.removed {
                    pool.removed = false;
                    changes.push((name.clone(), "back in the file".to_string()));
                }
                if pool.spec.workers != spec.workers {
                    changes.push((
                        name.clone(),
                        format!("workers {} -> {}", pool.desired(), spec.workers),
                    ));
                    pool.scale_override = None;
                }
                if pool.spec.autoscale != spec.autoscale {
                    let before = pool.desired();
                    // New bounds hold at once; without autoscale the file's count does.
                    pool.scale_override = match &spec.autoscale {
                        Some(a) => pool.scale_override.map(|n| n.clamp(a.min, a.max)),
                        None => None,
                    };
                    pool.spec.autoscale = spec.autoscale.clone();
                    let after = pool.desired();
                    changes.push((
                        name.clone(),
                        match &spec.autoscale {
                            Some(a) => format!(
                                "autoscale bounds now {}..{}; workers {before} -> {after}",
                                a.min, a.max
                            ),
                            None => format!("autoscale removed; workers {before} -> {after}"),
                        },
                    ));
                }
                if pool.fingerprint != fresh.fingerprint {
                    pool.generation += 1;
                    pool.burst_finished = 0;
                    pool.roll = None;
                    let old = self
                        .workers
                        .values()
                        .filter(|w| w.pool == name && w.retire.is_none())
                        .count();
                    changes.push((
                        name.clone(),
                        format!(
                            "definition changed ({}); rolling {old} worker(s) one at a time",
                            describe_change(&pool.spec, spec)
                        ),
                    ));
                } else if pool.spec.memory_limit != spec.memory_limit
                    || pool.spec.restart != spec.restart
                {
                    changes.push((
                        name.clone(),
                        "memory_limit or restart policy changed (applies at once)".into(),
                    ));
                }
                pool.fingerprint = fresh.fingerprint;
                pool.worker_ttl = fresh.worker_ttl;
                pool.spec = spec.clone();
            }
        }
    }

    /// Pools no longer in the file: their workers drain warm, then the pool is forgotten.
    fn drain_removed(&mut self, cfg: &Config, out: &mut Out, changes: &mut Vec<(String, String)>) {
        let gone: Vec<String> = self
            .pools
            .iter()
            .filter(|(n, p)| !p.removed && !cfg.pools.iter().any(|s| &s.name == *n))
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            if let Some(p) = self.pools.get_mut(&name) {
                p.removed = true;
                p.roll = None;
            }
            let mut n = 0;
            for w in self.workers.values_mut().filter(|w| w.pool == name) {
                if w.retire.is_none() {
                    w.retire = Some(Retire::PoolRemoved);
                }
                w.term_warm(out);
                n += 1;
            }
            changes.push((
                name,
                format!("removed from the file; draining {n} worker(s) warm"),
            ));
        }
    }
}

fn describe_change(old: &PoolSpec, new: &PoolSpec) -> String {
    let mut what = Vec::new();
    if old.queues != new.queues {
        what.push(format!(
            "queues {} -> {}",
            old.queues.join(","),
            new.queues.join(",")
        ));
    }
    if old.burst != new.burst {
        what.push(format!("burst {} -> {}", old.burst, new.burst));
    }
    if old.program != new.program {
        what.push("program".to_string());
    }
    if old.max_jobs != new.max_jobs {
        what.push("max_jobs".to_string());
    }
    if old.user != new.user || old.group != new.group {
        what.push("user/group".to_string());
    }
    if old.worker != new.worker {
        what.push("[worker] overrides".to_string());
    }
    if old.cwd != new.cwd || old.env != new.env || old.python != new.python {
        what.push("cwd/env/python".to_string());
    }
    if what.is_empty() {
        what.push("[worker], [python] or [handlers]".to_string());
    }
    what.join(", ")
}
