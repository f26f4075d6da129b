//! What feeds the supervisor's event loop from outside: one [`Input`] channel, fed by the
//! signal thread, the control socket's threads and the metrics server's. Ticks are not
//! inputs: the loop wakes on its own deadlines (the receive timeout).

use crossbeam_channel::{Receiver, Sender};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGTTIN, SIGTTOU};

use super::control::{Reply, Request};

/// One thing that happened outside the event loop.
#[derive(Debug, Clone)]
pub enum Input {
    Signal(SignalInput),
    /// A control-socket command (or a metrics scrape's `status`), and where its answer goes.
    /// The loop answers at once and never waits on the asker.
    Control(Request, Sender<Reply>),
    /// The readings thread's answer (see `sampler`).
    Reading(Box<super::sampler::Sampled>),
}

/// The signals the supervisor acts on, by meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalInput {
    /// SIGTERM or SIGINT: the next shutdown stage.
    Stop,
    /// SIGHUP: read the pool file again.
    Reload,
    /// SIGTTIN: one more worker.
    More,
    /// SIGTTOU: one fewer worker.
    Fewer,
    /// SIGCHLD: a child (a worker, or an orphan re-parented to the supervisor) exited.
    ChildExited,
}

/// Signals the supervisor handles. Never ignored with SIG_IGN: ignored dispositions would
/// leak through exec into the workers.
pub const HANDLED: [i32; 6] = [SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGTTIN, SIGTTOU];

impl SignalInput {
    /// The meaning of a signal in [`HANDLED`].
    pub fn from_number(sig: i32) -> Option<SignalInput> {
        match sig {
            SIGTERM | SIGINT => Some(SignalInput::Stop),
            SIGHUP => Some(SignalInput::Reload),
            SIGTTIN => Some(SignalInput::More),
            SIGTTOU => Some(SignalInput::Fewer),
            SIGCHLD => Some(SignalInput::ChildExited),
            _ => None,
        }
    }
}

/// The channel every source of [`Input`]s sends on.
pub fn channel() -> (Sender<Input>, Receiver<Input>) {
    crossbeam_channel::unbounded()
}

/// Installs the handlers for [`HANDLED`] and starts the thread that turns signals into
/// [`Input`]s on `tx`. Call it before any other thread exists: signal-hook documents a race
/// in first-time registration otherwise. The returned handle stops the thread when closed.
pub fn signal_thread(tx: Sender<Input>) -> Result<signal_hook::iterator::Handle, String> {
    let mut signals = signal_hook::iterator::Signals::new(HANDLED)
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                // Only HANDLED signals arrive, and each has a meaning.
                let Some(input) = SignalInput::from_number(sig) else {
                    continue;
                };
                if tx.send(Input::Signal(input)).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_handled_signal_has_a_meaning() {
        for sig in HANDLED {
            assert!(SignalInput::from_number(sig).is_some(), "{sig}");
        }
        assert_eq!(SignalInput::from_number(SIGINT), Some(SignalInput::Stop));
        assert_eq!(SignalInput::from_number(SIGTERM), Some(SignalInput::Stop));
        assert_eq!(SignalInput::from_number(signal_hook::consts::SIGUSR1), None);
    }
}
