//! The accept loop of the supervisor's two listening sockets (the control socket and the
//! metrics port): a thread per client, at most `max` at once, and an accept error waited
//! out instead of ending the service or spinning. The usual accept error is EMFILE (the
//! file limit reached, perhaps by clients that hold connections open); it clears as soon as
//! a client leaves, so the loop must survive it.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long an accept error is waited out before the next try.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves connections on a thread named `what` until the process ends. `accept` takes the
/// next connection; `busy` answers one over the `max` at once (on the accept thread, so it
/// must not block: set a write timeout first); `handle` serves one on a thread of its own.
pub fn serve<S, A, B, H>(
    what: &'static str,
    max: usize,
    accept: A,
    busy: B,
    handle: H,
) -> io::Result<()>
where
    S: Send + 'static,
    A: FnMut() -> io::Result<S> + Send + 'static,
    B: Fn(S) + Send + 'static,
    H: Fn(S) + Send + Sync + 'static,
{
    let mut accept = accept;
    let handle = Arc::new(handle);
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name(what.into())
        .spawn(move || {
            let mut failing = false;
            loop {
                let conn = match accept() {
                    Ok(c) => c,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // Once per streak: the log must not fill at ten lines a second.
                        if !failing {
                            log::warn!(
                                "{what}: cannot accept connections: {e}{}; retrying every {} ms",
                                if e.raw_os_error() == Some(nix::libc::EMFILE) {
                                    " (the supervisor's open-file limit is reached: raise LimitNOFILE / ulimit -n)"
                                } else {
                                    ""
                                },
                                ACCEPT_RETRY.as_millis()
                            );
                            failing = true;
                        }
                        std::thread::sleep(ACCEPT_RETRY);
                        continue;
                    }
                };
                if failing {
                    log::info!("{what}: accepting connections again");
                    failing = false;
                }
                if active.fetch_add(1, Ordering::SeqCst) >= max {
                    active.fetch_sub(1, Ordering::SeqCst);
                    busy(conn);
                    continue;
                }
                let (handle, mine) = (Arc::clone(&handle), Arc::clone(&active));
                let spawned = std::thread::Builder::new()
                    .name(format!("{what}-client"))
                    .spawn(move || {
                        handle(conn);
                        mine.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    // The connection went with the closure (and is closed); only the count
                    // is left to fix.
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })
        .map(drop)
}
