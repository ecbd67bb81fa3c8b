//! `trust.json` in the state directory: the node's trust book between runs (mode 0600,
//! replaced atomically). The node verifies every statement in it again when it loads it, so a
//! file edited by hand can lose entries but never grant trust.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::io::file::write_atomic;
use crate::node::TrustState;

pub const TRUST_FILE: &str = "trust.json";

pub struct TrustFile {
    path: PathBuf,
}

impl TrustFile {
    pub fn new(state_dir: &Path) -> TrustFile {
        TrustFile {
            path: state_dir.join(TRUST_FILE),
        }
    }

    /// The saved state; empty when there is no file yet. A damaged file stops the start rather
    /// than being replaced: it may hold the only copy of approvals the operator gave.
    pub fn load(&self) -> anyhow::Result<TrustState> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TrustState::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        let state: TrustState = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged; fix it or move it away (trust is then re-established with \
                 pilotctl handshake/approve)",
                self.path.display()
            )
        })?;
        if state.version != crate::node::TRUST_STATE_VERSION {
            bail!(
                "{}: unknown version {} (written by a newer pilotd?)",
                self.path.display(),
                state.version
            );
        }
        Ok(state)
    }

    pub fn save(&self, state: &TrustState) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(state)? + "\n";
        write_atomic(&self.path, text.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", self.path.display()))
    }
}
