//! The control socket's commands that the state machine decides, pure: `scale`, `pause`,
//! `resume`, `restart` and `stop`. Each is answered with one [`Action::Reply`] (the
//! client's exit status and text) and logged as one line.

use std::time::Instant;

use log::Level;

use super::pool::Pool;
use super::state::{Action, Command, Out, Phase, State};

/// A reply: exit status and text.
type Answer = (i32, String);

impl State {
    pub(super) fn on_command(&mut self, now: Instant, command: Command, out: &mut Out) {
        let (code, text) = match command {
            Command::Stop { cold } => self.stop_command(now, cold, out),
            _ if self.phase != Phase::Running => (
                1,
                "rq-supervisor is shutting down: nothing more is changed".to_string(),
            ),
            Command::Scale { pool, workers } => self.scale_command(&pool, workers),
            Command::Pause(pool) => self.pause_command(&pool, true),
            Command::Resume(pool) => self.pause_command(&pool, false),
            Command::Restart(pool) => self.restart_command(pool.as_deref()),
        };
        if code != 2 {
            let level = if code == 0 { Level::Info } else { Level::Warn };
            out.log(level, None, None, format!("control: {text}"));
        }
        out.0.push(Action::Reply { code, text });
    }

    /// The pool named by a command, or the answer that names what exists.
    fn named(&self, name: &str) -> Result<&Pool, Answer> {
        self.pools.get(name).filter(|p| !p.removed).ok_or_else(|| {
            let names: Vec<&str> = self
                .pools
                .values()
                .filter(|p| !p.removed)
                .map(|p| p.spec.name.as_str())
                .collect();
            (
                2,
                format!(
                    "no pool named {name:?}; the pools are: {}",
                    names.join(", ")
                ),
            )
        })
    }

    fn scale_command(&mut self, name: &str, workers: u32) -> Answer {
        let pool = match self.named(name) {
            Ok(p) => p,
            Err(answer) => return answer,
        };
        if let Some(a) = &pool.spec.autoscale {
            return (
                2,
                format!(
                    "pool {name} is autoscaled ({}..{} workers): its count follows its backlog; change min/max in [pools.{name}.autoscale] and reload",
                    a.min, a.max
                ),
            );
        }
        if !(1..=10_000).contains(&workers) {
            return (
                2,
                format!(
                    "{workers} workers: write a count from 1 to 10000 (`pause {name}` stops the pool taking jobs)"
                ),
            );
        }
        let before = pool.desired();
        let file = pool.spec.workers;
        self.pools.get_mut(name).expect("pool").scale_override = Some(workers);
        if before == workers {
            return (0, format!("pool {name}: already at {workers} worker(s)"));
        }
        (
            0,
            format!(
                "pool {name}: workers {before} -> {workers} (the file says {file}; kept until a reload changes this pool's workers)"
            ),
        )
    }

    fn pause_command(&mut self, name: &str, pause: bool) -> Answer {
        let pool = match self.named(name) {
            Ok(p) => p,
            Err(answer) => return answer,
        };
        if pool.paused == pause {
            let what = if pause {
                "already paused"
            } else {
                "not paused"
            };
            return (0, format!("pool {name} is {what}"));
        }
        let n = self
            .workers
            .values()
            .filter(|w| w.pool == name && w.retire.is_none())
            .count();
        self.pools.get_mut(name).expect("pool").paused = pause;
        // The workers are signalled by the tick (`sync_pause`), which also reaches the ones
        // that register later.
        if pause {
            (
                0,
                format!(
                    "pool {name} paused: its {n} worker(s) finish their current job and take no new one until `resume {name}`"
                ),
            )
        } else {
            (
                0,
                format!("pool {name} resumed: its {n} worker(s) take jobs again"),
            )
        }
    }

    fn restart_command(&mut self, only: Option<&str>) -> Answer {
        let names: Vec<String> = match only {
            Some(name) => match self.named(name) {
                Ok(p) => vec![p.spec.name.clone()],
                Err(answer) => return answer,
            },
            None => self
                .pools
                .values()
                .filter(|p| !p.removed)
                .map(|p| p.spec.name.clone())
                .collect(),
        };
        let mut said = Vec::new();
        for name in names {
            let n = self
                .workers
                .values()
                .filter(|w| w.pool == name && w.retire.is_none())
                .count();
            if n == 0 {
                said.push(format!("pool {name}: no worker to roll"));
                continue;
            }
            let pool = self.pools.get_mut(&name).expect("pool");
            // A new generation: the tick rolls every older worker, one at a time, each
            // replacement registered before an old one is retired warm.
            pool.generation += 1;
            pool.roll = None;
            said.push(format!(
                "pool {name}: rolling {n} worker(s) one at a time (a new one registers, then an old one finishes its job and leaves)"
            ));
        }
        (0, said.join("\n"))
    }

    fn stop_command(&mut self, now: Instant, cold: bool, out: &mut Out) -> Answer {
        match self.phase {
            Phase::Running => {
                self.on_stop_signal(now, out);
                if cold {
                    self.on_stop_signal(now, out);
                }
            }
            Phase::Warm { .. } if cold => self.on_stop_signal(now, out),
            _ => {}
        }
        let text = match self.phase {
            Phase::Warm { .. } => {
                "stopping warm: every worker finishes its current job (cold after warm_timeout)"
            }
            Phase::Cold { .. } => {
                "stopping cold: every worker kills its work horse and fails its job"
            }
            _ => "stopping: killing the remaining workers",
        };
        (0, text.to_string())
    }

    /// Brings each worker of `name` in line with the pool's pause: one SIGUSR1 to pause, one
    /// SIGUSR2 to resume. A worker is signalled only once it is registered (its handlers are
    /// installed by then; before them the signal would kill it); one spawned while the pool
    /// is paused starts paused.
    pub(super) fn sync_pause(&mut self, name: &str, out: &mut Out) {
        let Some(pause) = self.pools.get(name).map(|p| p.paused) else {
            return;
        };
        for w in self.workers.values_mut() {
            if w.pool != name || w.paused == pause || w.terms_sent > 0 {
                continue;
            }
            let Some(pid) = w.pid else { continue };
            if !w.registered {
                continue;
            }
            w.paused = pause;
            out.0.push(Action::Pause {
                id: w.id,
                pid,
                on: pause,
            });
        }
    }
}
