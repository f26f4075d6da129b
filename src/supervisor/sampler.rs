//! The reading of every pool's queues and workers (`Store::backlog`, one script), made on a
//! thread of its own with its own connection: the event loop asks for one at a time and
//! gets the answer as an [`Input::Reading`], so a stalled Redis delays the readings, never
//! the loop (signals, restarts and control requests go on being served).

use crossbeam_channel::Sender;

use super::input::Input;
use super::state::WorkerId;
use crate::conn::RedisTarget;
use crate::store::{Backlog, Store};

/// What to read: the queues, the live workers by id and name, and the names of workers
/// that exited since (for their last job counts).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub queues: Vec<String>,
    pub workers: Vec<(WorkerId, String)>,
    pub finals: Vec<String>,
}

/// A plan and what Redis answered (or why not).
#[derive(Debug, Clone)]
pub struct Sampled {
    pub plan: Plan,
    pub result: Result<Backlog, String>,
}

pub struct Sampler {
    requests: Sender<Plan>,
    /// A reading is under way; the next waits for its answer.
    busy: bool,
}

impl Sampler {
    /// Starts the thread; its answers arrive on `inputs`.
    pub fn start(target: RedisTarget, inputs: Sender<Input>) -> Result<Sampler, String> {
        let (requests, plans) = crossbeam_channel::unbounded::<Plan>();
        std::thread::Builder::new()
            .name("readings".into())
            .spawn(move || {
                let mut store = Store::new(target);
                for plan in plans {
                    let names: Vec<String> = plan
                        .workers
                        .iter()
                        .map(|(_, n)| n.clone())
                        .chain(plan.finals.iter().cloned())
                        .collect();
                    let result = store
                        .backlog(&plan.queues, &names)
                        .map_err(|e| e.to_string());
                    if inputs
                        .send(Input::Reading(Box::new(Sampled { plan, result })))
                        .is_err()
                    {
                        break;
                    }
                }
            })
            .map_err(|e| format!("cannot start the readings thread: {e}"))?;
        Ok(Sampler {
            requests,
            busy: false,
        })
    }

    /// Asks for a reading unless one is under way; returns whether it asked.
    pub fn request(&mut self, plan: Plan) -> bool {
        if self.busy {
            return false;
        }
        self.busy = self.requests.send(plan).is_ok();
        self.busy
    }

    /// The answer arrived.
    pub fn done(&mut self) {
        self.busy = false;
    }
}
