//! The registry store's own thread: it runs the server's writes in the order they were asked
//! for (SQLite's fsync, PostgreSQL's round trips) and sends each result back to the loop, so
//! the packet loop never waits for the store (see `rendezvous::writes`).

use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::rendezvous::{Store, StoreDone, StoreError, StoreOp};

/// A write's outcome, for the loop.
pub struct Finished {
    pub ticket: u64,
    pub result: Result<StoreDone, StoreError>,
    /// Registrations the write saved (0 for other writes).
    pub registrations: usize,
    /// Which operation it was ([`StoreOp::index`]).
    pub op: usize,
    pub took: Duration,
}

pub struct StoreThread {
    jobs: Option<std_mpsc::Sender<(u64, StoreOp)>>,
    pub done: mpsc::UnboundedReceiver<Finished>,
    thread: Option<thread::JoinHandle<()>>,
}

impl StoreThread {
    /// Hands `store` to a thread of its own.
    pub fn spawn(mut store: Box<dyn Store>) -> std::io::Result<StoreThread> {
        let (jobs, queue) = std_mpsc::channel::<(u64, StoreOp)>();
        let (finished, done) = mpsc::unbounded_channel();
        let thread = thread::Builder::new()
            .name("registry-store".into())
            .spawn(move || {
                while let Ok((ticket, op)) = queue.recv() {
                    let started = Instant::now();
                    let result = op.run(store.as_mut());
                    let done = Finished {
                        ticket,
                        result,
                        registrations: op.registrations(),
                        op: op.index(),
                        took: started.elapsed(),
                    };
                    if finished.send(done).is_err() {
                        break; // the loop is gone
                    }
                }
            })?;
        Ok(StoreThread {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    /// Queues a write; false if the thread has stopped.
    pub fn send(&self, ticket: u64, op: StoreOp) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|j| j.send((ticket, op)).is_ok())
    }
}

impl Drop for StoreThread {
    /// Lets the thread finish the writes it has (closing its queue ends its loop), then joins
    /// it: the store is closed cleanly (SQLite's lock released) before the process exits.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
