//! The node's state on disk, written from the data plane: trust.json (on the save schedule,
//! or at once at shutdown) and the hosts file of trusted peers' names.

use std::time::Instant;

use super::Core;

impl Core {
    /// Saves the trust state if it changed, then lets the node acknowledge the deliveries it
    /// holds. On failure the deliveries stay unacknowledged (the rendezvous sends them again).
    pub(super) fn save_trust(&mut self, now: Instant) {
        if self.saves.due(now, self.node.trust_urgent()) {
            self.write_trust(now);
        }
    }

    /// Writes the trust state if it changed, whatever the schedule says.
    pub(super) fn write_trust(&mut self, now: Instant) {
        let Some(state) = self.node.take_trust_state() else {
            return;
        };
        match self.facts.trust_file.save(&state) {
            Ok(()) => {
                if let Some(failures) = self.saves.saved(now) {
                    tracing::info!("trust state saved again after {failures} failed attempt(s)");
                }
                self.node.trust_saved(now);
                self.update_hosts_file();
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

    /// Rewrites the hosts file's block when there is one (unchanged content is not rewritten).
    pub(super) fn update_hosts_file(&self) {
        if let Some(hosts) = &self.facts.hosts_file {
            if let Err(e) = hosts.write(&self.node.names()) {
                tracing::warn!("updating {}: {e}", hosts.path().display());
            }
        }
    }
}
