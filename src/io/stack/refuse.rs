//! How the task serving an accepted connection refuses it: with a TCP reset, as a kernel does
//! for a port nobody listens on, rather than the orderly close that dropping its end of the
//! pipe gives (which a peer reads as "accepted, then nothing").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Handed out with each accepted connection; [`Refusal::refuse`] resets it.
#[derive(Debug, Clone)]
pub struct Refusal {
    flag: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Refusal {
    pub(super) fn new(notify: Arc<Notify>) -> Refusal {
        Refusal {
            flag: Arc::new(AtomicBool::new(false)),
            notify,
        }
    }

    /// Resets the connection: the stack sends the peer a RST at its next poll. Call it before
    /// dropping the stream, so the stack never mistakes the drop for an orderly close.
    pub fn refuse(&self) {
        self.flag.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub(super) fn refused(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}
