//! Node identity (`pilot_proto::identity`), kept as `identity.json` (mode 0600) in the state
//! directory. It is made on first start and reused forever after: the node's address is
//! derived from it, so a damaged file stops the daemon instead of being replaced.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use pilot_proto::identity::*;

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

/// Loads the identity from `state_dir`, creating the directory (0700) and a new identity
/// (0600) if there is none. An existing file that is unreadable, corrupt or readable by
/// others is an error, never replaced.
pub fn load_or_create(state_dir: &Path) -> Result<Identity, IdentityError> {
    let path = state_dir.join(IDENTITY_FILE);
    match fs::symlink_metadata(&path) {
        Ok(_) => load(&path),
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
            save_new(&identity, &path)?;
            Ok(identity)
        }
        Err(error) => Err(IdentityError::Read { path, error }),
    }
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

/// Writes a new identity file: exclusive create at a temporary name with mode 0600, fsync,
/// rename into place, fsync the directory, so a crash leaves either no file or a whole one.
fn save_new(identity: &Identity, path: &Path) -> Result<(), IdentityError> {
    let write_err = |error| IdentityError::Write {
        path: path.into(),
        error,
    };
    let text = identity.to_file_text();
    crate::io::file::write_atomic(path, text.as_bytes(), 0o600).map_err(write_err)
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
        let err = load_or_create(&file.join("state")).err().unwrap();
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
        let first = load_or_create(&dir).unwrap();
        let path = dir.join(IDENTITY_FILE);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let second = load_or_create(&dir).unwrap();
        assert_eq!(first.public_key(), second.public_key());
        assert_eq!(first.address(), second.address());
        assert!(!first.address().is_reserved());
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn refuses_group_or_world_readable_file() {
        let dir = temp_dir("perms");
        load_or_create(&dir).unwrap();
        let path = dir.join(IDENTITY_FILE);
        let before = fs::read(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(&dir).unwrap_err();
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
        load_or_create(&dir).unwrap();
        let path = dir.join(IDENTITY_FILE);
        let other = Identity::generate(&mut rand_core::OsRng);
        let good = fs::read_to_string(&path).unwrap();
        let mismatched = good.replace(
            &load_or_create(&dir).unwrap().public_key().to_string(),
            &other.public_key().to_string(),
        );
        for bad in ["", "{", "{\"version\":1}", "null", mismatched.as_str()] {
            fs::write(&path, bad).unwrap();
            let err = load_or_create(&dir).unwrap_err();
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
}
