//! The node's state on disk, written from the data plane: trust.json and the hosts file of
//! trusted peers' names.
//!
//! Writing trust.json rewrites the file and syncs it (milliseconds, more on a slow SD card),
//! so it happens on a blocking thread, never on the packet task: [`Core::save_trust`] takes
//! the state and starts the write, [`Core::save_done`] hears how it went. One write at a time;
//! the deliveries a state holds are acknowledged once it is durable (see
//! `Node::take_trust_state`). At shutdown [`Core::flush_trust`] waits for a write in flight
//! and writes what changed since.

use std::time::Instant;

use tokio::task::JoinError;

use super::Core;

impl Core {
    /// Starts writing the trust state if it changed and its turn has come (the save
    /// schedule), unless a write is in flight.
    pub(super) fn save_trust(&mut self, now: Instant) {
        if self.saving.is_none() && self.saves.due(now, self.node.trust_urgent()) {
            self.start_save();
        }
    }

    /// Takes the state (if it changed) and writes it, then the hosts file, on a blocking
    /// thread.
    fn start_save(&mut self) {
        let Some(state) = self.node.take_trust_state() else {
            return;
        };
        let file = self.facts.trust_file.clone();
        let hosts = (self.facts.hosts_file.clone()).map(|hosts| (hosts, self.node.names()));
        self.saving = Some(tokio::task::spawn_blocking(move || {
            file.save(&state)?;
            if let Some((hosts, names)) = hosts {
                if let Err(e) = hosts.write(&names) {
                    tracing::warn!("updating {}: {e}", hosts.path().display());
                }
            }
            Ok(())
        }));
    }

    /// A write started by [`Core::save_trust`] finished: acknowledge what it holds, or keep
    /// the acknowledgements back and retry with back-off.
    pub(super) fn save_done(&mut self, result: Result<anyhow::Result<()>, JoinError>) {
        let now = Instant::now();
        self.saving = None;
        match result.map_err(anyhow::Error::from).and_then(|saved| saved) {
            Ok(()) => {
                if let Some(failures) = self.saves.saved(now) {
                    tracing::info!("trust state saved again after {failures} failed attempt(s)");
                }
                self.node.trust_saved(now);
            }
            Err(e) => {
                let error = format!("{e:#}");
                if self.saves.failed(error.clone(), now) {
                    tracing::error!(
                        "cannot save the trust state: {error}; retrying with back-off \
                         (deliveries stay unacknowledged meanwhile)"
                    );
                }
                self.node.trust_save_failed();
            }
        }
    }

    /// At shutdown: waits for a write in flight, then writes what changed since, whatever
    /// the schedule says.
    pub(super) async fn flush_trust(&mut self) {
        if let Some(saving) = self.saving.take() {
            self.save_done(saving.await);
        }
        self.start_save();
        if let Some(saving) = self.saving.take() {
            self.save_done(saving.await);
        }
    }

    /// Rewrites the hosts file's block when there is one (unchanged content is not rewritten).
    pub(super) fn update_hosts_file(&self) {
        if let Some(hosts) = &self.facts.hosts_file {
            if let Err(e) = hosts.write(&self.node.names()) {
                tracing::warn!("updating {}: {e}", hosts.path().display());
            }
        }
    }
}
