//! The rendezvous key this node trusts, kept in the state directory (`rendezvous.json`, 0600).
//!
//! `--rendezvous KEY@HOST:PORT` pins a key explicitly. Given only `HOST:PORT`, the node trusts
//! the key that first answers its registration and writes it here; every later start (and
//! every answer) must then carry the same key, so a rendezvous swapped in later is refused.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::identity::NodeKey;
use crate::io::file::write_atomic;

const PIN_FILE: &str = "rendezvous.json";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinFile {
    rendezvous: String,
    public_key: String,
}

/// Where the pin for one rendezvous address lives.
pub struct RendezvousPin {
    path: PathBuf,
    rendezvous: String,
}

impl RendezvousPin {
    pub fn new(state_dir: &Path, rendezvous: &str) -> RendezvousPin {
        RendezvousPin {
            path: state_dir.join(PIN_FILE),
            rendezvous: rendezvous.to_owned(),
        }
    }

    /// The key pinned for this rendezvous address, if any. A pin for another address is
    /// ignored (the operator moved to a new rendezvous); a damaged file is an error.
    pub fn load(&self) -> anyhow::Result<Option<NodeKey>> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        self.parse(&text)
    }

    /// The key pinned for this rendezvous address in a pin file's text, if any.
    pub(crate) fn parse(&self, text: &str) -> anyhow::Result<Option<NodeKey>> {
        let file: PinFile = serde_json::from_str(text).with_context(|| {
            format!(
                "{} is damaged; remove it to trust the rendezvous anew",
                self.path.display()
            )
        })?;
        if file.rendezvous != self.rendezvous {
            return Ok(None);
        }
        match file.public_key.parse() {
            Ok(key) => Ok(Some(key)),
            Err(e) => bail!("{}: {e}", self.path.display()),
        }
    }

    /// Pins `key` (atomic replace, mode 0600).
    pub fn save(&self, key: NodeKey) -> anyhow::Result<()> {
        let file = PinFile {
            rendezvous: self.rendezvous.clone(),
            public_key: key.to_string(),
        };
        let text = serde_json::to_string_pretty(&file)? + "\n";
        write_atomic(&self.path, text.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_round_trips_per_address_and_refuses_damage() {
        let dir = std::env::temp_dir().join(format!("pilot-pin-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let pin = RendezvousPin::new(&dir, "203.0.113.10:7000");
        assert_eq!(pin.load().unwrap(), None);
        let key = crate::identity::Identity::from_secret_bytes(&[4; 32]).public_key();
        pin.save(key).unwrap();
        assert_eq!(pin.load().unwrap(), Some(key));
        assert_eq!(
            RendezvousPin::new(&dir, "203.0.113.99:7000")
                .load()
                .unwrap(),
            None
        );
        fs::write(dir.join(PIN_FILE), "{").unwrap();
        assert!(pin.load().is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
