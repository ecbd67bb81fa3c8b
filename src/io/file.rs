//! Durable small files: the state the daemon must not lose or half-write (trust records, the
//! rendezvous pin, the identity).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context};

/// Makes a daemon's state directory (0700) if needed, and refuses one that group or others can
/// write to: they could replace the identity, the trust records or the pin. One they can read
/// is only warned about (the identity file itself is 0600 and checked on its own).
pub fn prepare_private_dir(dir: &Path, what: &str) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {what} {}", dir.display()))?;
    let mode = fs::metadata(dir)
        .with_context(|| format!("cannot read {what} {}", dir.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o022 != 0 {
        bail!(
            "{what} {} is writable by group or others (mode {mode:o}); run `chmod 700 {}`",
            dir.display(),
            dir.display()
        );
    }
    if mode & 0o077 != 0 {
        tracing::warn!(
            "{what} {} is readable by group or others (mode {mode:o}); consider `chmod 700 {}`",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Replaces `path` with `bytes` so that a crash at any moment leaves either the old file or the
/// new one, whole: exclusive create of `PATH.tmp` with `mode`, write, fsync, rename over `path`,
/// fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    // A temporary left by a crash is ours to replace.
    let _ = fs::remove_file(tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = written.and_then(|()| fs::rename(tmp, path)) {
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_directory_others_can_write_is_refused_and_a_new_one_is_private() {
        let base = std::env::temp_dir().join(format!("pilot-private-dir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let new = base.join("state");
        prepare_private_dir(&new, "state directory").unwrap();
        let mode = fs::metadata(&new).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        fs::set_permissions(&new, fs::Permissions::from_mode(0o777)).unwrap();
        let err = prepare_private_dir(&new, "state directory")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("writable by group or others (mode 777)"),
            "{err}"
        );
        assert!(err.contains("chmod 700"), "{err}");
        fs::set_permissions(&new, fs::Permissions::from_mode(0o755)).unwrap();
        prepare_private_dir(&new, "state directory").unwrap();
        fs::remove_dir_all(&base).unwrap();
    }

    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_files_with_the_given_mode() {
        let dir = std::env::temp_dir().join(format!("pilot-file-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!dir.join("state.json.tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
