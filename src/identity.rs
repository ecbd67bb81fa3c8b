//! Node identity: one Ed25519 key pair, kept as `identity.json` (mode 0600) in the state
//! directory. It is made on first start and reused forever after: the node's address is derived
//! from it, so a damaged file stops the daemon instead of being replaced.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use boringtun::x25519;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::addr::NodeAddr;

/// File name of the identity inside the state directory.
pub const IDENTITY_FILE: &str = "identity.json";

/// A node's Ed25519 public key: its permanent name. Text form: 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeKey(pub [u8; 32]);

/// A node's secret identity.
pub struct Identity {
    signing: SigningKey,
}

/// The OS error is part of each message and deliberately not its `source()`: shown through
/// anyhow's `{:#}` (pilotd) or alone (`pilotctl init`), it appears once either way.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot create state directory {path}: {error}")]
    CreateDir { path: PathBuf, error: io::Error },
    #[error("cannot read identity {path}: {error}")]
    Read { path: PathBuf, error: io::Error },
    #[error("cannot write identity {path}: {error}")]
    Write { path: PathBuf, error: io::Error },
    #[error(
        "identity {path} is readable by group or others (mode {mode:o}); it holds the node's secret key — \
         run `chmod 600 {path}` if it has not leaked, otherwise move it away to make a new identity"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "identity {path} is corrupt ({reason}); restore it from a backup, or move it away to make a new \
         identity (the node's address will change)"
    )]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a public key: expected 64 hex digits as printed by `pilotctl info`")]
pub struct KeyParseError(pub String);

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    version: u32,
    public_key: String,
    secret_key: String,
}

impl Identity {
    /// Loads the identity from `state_dir`, creating the directory (0700) and a new identity
    /// (0600) if there is none. An existing file that is unreadable, corrupt or readable by
    /// others is an error, never replaced.
    pub fn load_or_create(state_dir: &Path) -> Result<Identity, IdentityError> {
        let path = state_dir.join(IDENTITY_FILE);
        match fs::symlink_metadata(&path) {
            Ok(_) => Identity::load(&path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(state_dir)
                    .map_err(|error| IdentityError::CreateDir {
                        path: state_dir.into(),
                        error,
                    })?;
                let identity = Identity::generate(&mut rand_core::OsRng);
                identity.save_new(&path)?;
                Ok(identity)
            }
            Err(error) => Err(IdentityError::Read { path, error }),
        }
    }

    /// A new random identity whose address is outside the reserved range.
    pub fn generate<R: rand_core::CryptoRngCore>(rng: &mut R) -> Identity {
        loop {
            let signing = SigningKey::generate(rng);
            let identity = Identity { signing };
            if !identity.address().is_reserved() {
                return identity;
            }
        }
    }

    pub fn from_secret_bytes(secret: &[u8; 32]) -> Identity {
        Identity {
            signing: SigningKey::from_bytes(secret),
        }
    }

    pub fn public_key(&self) -> NodeKey {
        NodeKey(self.signing.verifying_key().to_bytes())
    }

    pub fn address(&self) -> NodeAddr {
        NodeAddr::from_public_key(&self.public_key().0)
    }

    /// The Ed25519 key, for signing control messages.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// The WireGuard static secret: the X25519 form of the Ed25519 key.
    pub fn x25519_secret(&self) -> x25519::StaticSecret {
        x25519::StaticSecret::from(self.signing.to_scalar_bytes())
    }

    fn load(path: &Path) -> Result<Identity, IdentityError> {
        let read_err = |error| IdentityError::Read {
            path: path.into(),
            error,
        };
        let corrupt = |reason: String| IdentityError::Corrupt {
            path: path.into(),
            reason,
        };
        let meta = fs::metadata(path).map_err(read_err)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::Permissions {
                path: path.into(),
                mode,
            });
        }
        let text = fs::read_to_string(path).map_err(read_err)?;
        Identity::parse_file(&text).map_err(corrupt)
    }

    /// The identity an identity file's text holds, or why it is corrupt.
    pub(crate) fn parse_file(text: &str) -> Result<Identity, String> {
        let file: IdentityFile =
            serde_json::from_str(text).map_err(|e| format!("not valid identity JSON: {e}"))?;
        if file.version != 1 {
            return Err(format!("unknown version {}", file.version));
        }
        let secret = decode_hex32(&file.secret_key).ok_or("bad secret_key")?;
        let identity = Identity::from_secret_bytes(&secret);
        if identity.public_key().to_string() != file.public_key {
            return Err("public_key does not match secret_key".into());
        }
        Ok(identity)
    }

    /// Writes a new identity file: exclusive create at a temporary name with mode 0600, fsync,
    /// rename into place, fsync the directory, so a crash leaves either no file or a whole one.
    fn save_new(&self, path: &Path) -> Result<(), IdentityError> {
        let write_err = |error| IdentityError::Write {
            path: path.into(),
            error,
        };
        let file = IdentityFile {
            version: 1,
            public_key: self.public_key().to_string(),
            secret_key: crate::hex::encode(&self.signing.to_bytes()),
        };
        let mut text = serde_json::to_string_pretty(&file).expect("identity serializes");
        text.push('\n');
        crate::io::file::write_atomic(path, text.as_bytes(), 0o600).map_err(write_err)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("Identity")
            .field("public_key", &self.public_key())
            .finish()
    }
}

impl NodeKey {
    pub fn address(&self) -> NodeAddr {
        NodeAddr::from_public_key(&self.0)
    }

    /// The WireGuard static public key: the X25519 (Montgomery) form of this Ed25519 key.
    /// `None` if the bytes are not a valid Ed25519 point.
    pub fn x25519_public(&self) -> Option<x25519::PublicKey> {
        let vk = VerifyingKey::from_bytes(&self.0).ok()?;
        Some(x25519::PublicKey::from(vk.to_montgomery().to_bytes()))
    }
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hex::encode(&self.0))
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", &crate::hex::encode(&self.0)[..16])
    }
}

impl FromStr for NodeKey {
    type Err = KeyParseError;
    fn from_str(s: &str) -> Result<NodeKey, KeyParseError> {
        let bytes = decode_hex32(s).ok_or_else(|| KeyParseError(s.into()))?;
        let key = NodeKey(bytes);
        key.x25519_public().ok_or_else(|| KeyParseError(s.into()))?;
        Ok(key)
    }
}

/// The state directory when none is given: `/var/lib/pilot` for root, `~/.pilot` otherwise.
pub fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/pilot");
    }
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join(".pilot"),
        _ => PathBuf::from(".pilot"),
    }
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    crate::hex::decode(s)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pilot-identity-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// As pilotd prints it (anyhow's `{:#}`, the whole chain): the OS error once, not twice.
    #[test]
    fn an_error_is_printed_once() {
        let dir = temp_dir("once");
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a-file");
        fs::write(&file, "").unwrap();
        let err = Identity::load_or_create(&file.join("state")).err().unwrap();
        let text = format!("{:#}", anyhow::Error::from(err));
        assert_eq!(
            text,
            format!(
                "cannot read identity {}/state/identity.json: Not a directory (os error 20)",
                file.display()
            )
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn creates_once_then_reuses() {
        let dir = temp_dir("reuse").join("state");
        let first = Identity::load_or_create(&dir).unwrap();
        let path = dir.join(IDENTITY_FILE);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let second = Identity::load_or_create(&dir).unwrap();
        assert_eq!(first.public_key(), second.public_key());
        assert_eq!(first.address(), second.address());
        assert!(!first.address().is_reserved());
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn refuses_group_or_world_readable_file() {
        let dir = temp_dir("perms");
        Identity::load_or_create(&dir).unwrap();
        let path = dir.join(IDENTITY_FILE);
        let before = fs::read(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load_or_create(&dir).unwrap_err();
        assert!(
            matches!(err, IdentityError::Permissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
        assert_eq!(
            fs::read(&path).unwrap(),
            before,
            "file must not be replaced"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_corrupt_file_without_replacing_it() {
        let dir = temp_dir("corrupt");
        Identity::load_or_create(&dir).unwrap();
        let path = dir.join(IDENTITY_FILE);
        let other = Identity::generate(&mut rand_core::OsRng);
        let good = fs::read_to_string(&path).unwrap();
        let mismatched = good.replace(
            &Identity::load_or_create(&dir)
                .unwrap()
                .public_key()
                .to_string(),
            &other.public_key().to_string(),
        );
        for bad in ["", "{", "{\"version\":1}", "null", mismatched.as_str()] {
            fs::write(&path, bad).unwrap();
            let err = Identity::load_or_create(&dir).unwrap_err();
            assert!(
                matches!(err, IdentityError::Corrupt { .. }),
                "{bad:?}: {err}"
            );
            assert_eq!(
                fs::read_to_string(&path).unwrap(),
                bad,
                "file must not be replaced"
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_output_has_no_secret() {
        let id = Identity::from_secret_bytes(&[0x42; 32]);
        let shown = format!("{id:?}");
        assert!(!shown.contains(&crate::hex::encode(&[0x42; 32])));
    }

    #[test]
    fn key_text_round_trips_and_x25519_forms_agree() {
        let a = Identity::generate(&mut rand_core::OsRng);
        let b = Identity::generate(&mut rand_core::OsRng);
        let key: NodeKey = a.public_key().to_string().parse().unwrap();
        assert_eq!(key, a.public_key());
        // Both sides derive the same Diffie-Hellman secret from the converted keys.
        let ab = a
            .x25519_secret()
            .diffie_hellman(&b.public_key().x25519_public().unwrap());
        let ba = b
            .x25519_secret()
            .diffie_hellman(&a.public_key().x25519_public().unwrap());
        assert_eq!(ab.as_bytes(), ba.as_bytes());
        assert!("abc".parse::<NodeKey>().is_err());
        assert!("zz".repeat(32).parse::<NodeKey>().is_err());
    }
}
