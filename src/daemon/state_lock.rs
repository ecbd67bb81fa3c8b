//! One daemon per state directory. A second `pilotd up` on the same directory would use the
//! same identity, so the same address, and both would fight over trust.json, the inbox and the
//! rendezvous registration; a second rendezvous would share the SQLite registry. So each takes
//! an exclusive `flock` on `pilotd.lock` in its directory before it creates anything else, and
//! holds it until it exits (the kernel releases it however the process ends, so a crash leaves
//! no stale lock). The holder writes its pid into the file for the refusal to name.

use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// File name of the lock inside the state (or data) directory.
pub const LOCK_FILE: &str = "pilotd.lock";

/// Which directory a daemon locks, as its refusal names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockedDir {
    /// `pilotd up --state-dir`.
    State,
    /// `pilotd rendezvous --data-dir`.
    Data,
}

impl LockedDir {
    fn noun(self) -> &'static str {
        match self {
            LockedDir::State => "state directory",
            LockedDir::Data => "data directory",
        }
    }

    fn advice(self) -> &'static str {
        match self {
            LockedDir::State => {
                "stop it first (`pilotctl daemon stop`), or give this one a state directory of \
                 its own with --state-dir"
            }
            LockedDir::Data => {
                "stop it first, or give this rendezvous a data directory of its own with \
                 --data-dir"
            }
        }
    }
}

/// The lock, held while this value lives.
#[derive(Debug)]
pub struct StateLock {
    _file: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{} {} is in use by another pilotd{}: {}", .which.noun(), .dir.display(), holder(*.pid), .which.advice())]
    Held {
        which: LockedDir,
        dir: PathBuf,
        pid: Option<u32>,
    },
    // The OS error is part of the text, not a `source()`: printed once however it is shown.
    #[error("cannot create {} {}: {error}", .which.noun(), .dir.display())]
    CreateDir {
        which: LockedDir,
        dir: PathBuf,
        error: io::Error,
    },
    #[error("cannot lock {}: {error}", .path.display())]
    Lock { path: PathBuf, error: io::Error },
}

fn holder(pid: Option<u32>) -> String {
    pid.map_or_else(String::new, |pid| format!(" (pid {pid})"))
}

impl StateLock {
    /// Creates `dir` (mode 0700) if needed and locks it, or says who holds it.
    pub fn acquire(dir: &Path, which: LockedDir) -> Result<StateLock, LockError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|error| LockError::CreateDir {
                which,
                dir: dir.to_owned(),
                error,
            })?;
        let path = dir.join(LOCK_FILE);
        let lock_error = |error| LockError::Lock {
            path: path.clone(),
            error,
        };
        // Not truncated on open: until the lock is ours, the pid in it is the holder's.
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(lock_error)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(file) => file,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                return Err(LockError::Held {
                    which,
                    dir: dir.to_owned(),
                    pid: read_pid(&mut file),
                })
            }
            Err((_, errno)) => return Err(lock_error(io::Error::from(errno))),
        };
        write_pid(&mut file, std::process::id()).map_err(lock_error)?;
        Ok(StateLock { _file: file })
    }
}

/// The pid a holder wrote, if it got that far.
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

fn write_pid(file: &mut File, pid: u32) -> io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{pid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pilot-lock-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_held_directory_is_refused_naming_it_and_the_holder_then_free_again() {
        let dir = scratch("held");
        let first = StateLock::acquire(&dir, LockedDir::State).unwrap();
        let text = fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        // flock locks belong to the open file: a second open in this process conflicts too.
        let err = StateLock::acquire(&dir, LockedDir::State).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "state directory {} is in use by another pilotd (pid {}): stop it first \
                 (`pilotctl daemon stop`), or give this one a state directory of its own with \
                 --state-dir",
                dir.display(),
                std::process::id()
            )
        );
        drop(first);
        let again = StateLock::acquire(&dir, LockedDir::Data);
        assert!(again.is_ok(), "{again:?}");
        drop(again);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_holder_that_wrote_no_pid_yet_is_still_refused() {
        let dir = scratch("nopid");
        fs::create_dir_all(&dir).unwrap();
        let file = File::create(dir.join(LOCK_FILE)).unwrap();
        let held = Flock::lock(file, FlockArg::LockExclusiveNonblock).unwrap();
        let err = StateLock::acquire(&dir, LockedDir::Data).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "data directory {} is in use by another pilotd: ",
                dir.display()
            )),
            "{text}"
        );
        drop(held);
        let _ = fs::remove_dir_all(&dir);
    }
}
