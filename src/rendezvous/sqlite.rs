//! The daemon's [`Store`]: one SQLite database (`rendezvous.db`) in the data directory.
//!
//! - Durability: WAL journal with `synchronous=FULL`, so a committed transaction has reached
//!   the disk when `save` returns; a `kill -9` (or a power cut) loses nothing committed.
//! - One writer: `locking_mode=EXCLUSIVE` holds the lock from the first transaction until the
//!   process exits (the kernel drops it even after `kill -9`), so a second server on the same
//!   directory fails at start instead of interleaving writes.
//! - Never wiped: a file SQLite cannot read, or a row this code cannot decode, is a start-up
//!   error naming the file; nothing is deleted or recreated over it.
//! - Mode 0600: the file is created by us before SQLite opens it, and SQLite gives its WAL
//!   file the database file's mode.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OpenFlags};

use super::store::{Registration, Store, StoreError};
use crate::identity::NodeKey;
use crate::wire::control::{NatKind, MAX_LAN_ENDPOINTS};

const MAX_ALLOW: usize = 32;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "rendezvous.db";
const SCHEMA_VERSION: i64 = 1;
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS registrations (
    key BLOB PRIMARY KEY CHECK (length(key) = 32),
    observed TEXT NOT NULL,
    lan TEXT NOT NULL,
    allow BLOB NOT NULL,
    nat TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL
) STRICT";

pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if absent, mode 0600) the database at `path` and takes its lock.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: path.into(),
            reason,
        };
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => warn_if_readable(path),
            Err(e) => return Err(open_err(e.to_string())),
        }
        // No SQLITE_OPEN_CREATE: the file exists now, and if it vanished meanwhile an error
        // is better than a fresh empty registry.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| open_err(e.to_string()))?;
        let store = SqliteStore {
            conn,
            path: path.into(),
        };
        store.prepare().map_err(|e| store.classify(e))?;
        store.check_version()?;
        Ok(store)
    }

    fn prepare(&self) -> rusqlite::Result<()> {
        // Fail at once when another process holds the lock instead of waiting for it.
        self.conn.busy_timeout(Duration::ZERO)?;
        // Exclusive mode must be set before WAL is first used: then no shared-memory index
        // is made and the lock stays with this connection.
        self.conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(journal_mode = %mode, "SQLite did not switch to WAL");
        }
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        let check: String = self
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(check),
            ));
        }
        // A write transaction takes the exclusive lock now, not at the first registration.
        self.conn
            .execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA}; COMMIT;"))
    }

    fn check_version(&self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.classify(e))?;
        match version {
            0 => self
                .conn
                .pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(|e| self.classify(e)),
            SCHEMA_VERSION => Ok(()),
            newer => Err(StoreError::NewerSchema {
                path: self.path.clone(),
                version: newer,
            }),
        }
    }

    /// Maps SQLite's error codes to what the operator must do.
    fn classify(&self, e: rusqlite::Error) -> StoreError {
        let path = self.path.clone();
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
                path,
                reason: e.to_string(),
            },
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                StoreError::Locked { path }
            }
            _ => StoreError::Open {
                path,
                reason: e.to_string(),
            },
        }
    }

    fn corrupt(&self, reason: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<Vec<Registration>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT key, observed, lan, allow, nat, first_seen_ms, last_seen_ms \
                 FROM registrations",
            )
            .map_err(|e| self.classify(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(RawRow {
                    key: r.get(0)?,
                    observed: r.get(1)?,
                    lan: r.get(2)?,
                    allow: r.get(3)?,
                    nat: r.get(4)?,
                    first_seen_ms: r.get(5)?,
                    last_seen_ms: r.get(6)?,
                })
            })
            .map_err(|e| self.classify(e))?;
        let mut out = Vec::new();
        for row in rows {
            let row = row.map_err(|e| self.classify(e))?;
            out.push(row.decode().map_err(|reason| self.corrupt(reason))?);
        }
        Ok(out)
    }

    fn save(&mut self, records: &[Registration]) -> Result<(), StoreError> {
        let write = |e: rusqlite::Error| StoreError::Write(e.to_string());
        let tx = self.conn.transaction().map_err(write)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO registrations \
                     (key, observed, lan, allow, nat, first_seen_ms, last_seen_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT(key) DO UPDATE SET observed = ?2, lan = ?3, allow = ?4, \
                     nat = ?5, first_seen_ms = ?6, last_seen_ms = ?7",
                )
                .map_err(write)?;
            for r in records {
                let lan: Vec<String> = r.lan.iter().map(|e| e.to_string()).collect();
                let allow: Vec<u8> = r.allow.iter().flat_map(|k| k.0).collect();
                stmt.execute(params![
                    &r.key.0[..],
                    r.observed.to_string(),
                    lan.join(" "),
                    allow,
                    nat_name(r.nat),
                    ms_to_sql(r.first_seen_ms),
                    ms_to_sql(r.last_seen_ms),
                ])
                .map_err(write)?;
            }
        }
        tx.commit().map_err(write)
    }

    fn purge(&mut self, last_seen_before_ms: u64) -> Result<usize, StoreError> {
        self.conn
            .execute(
                "DELETE FROM registrations WHERE last_seen_ms < ?1",
                [ms_to_sql(last_seen_before_ms)],
            )
            .map_err(|e| StoreError::Write(e.to_string()))
    }
}

/// A row as SQLite holds it, before it is checked.
struct RawRow {
    key: Vec<u8>,
    observed: String,
    lan: String,
    allow: Vec<u8>,
    nat: String,
    first_seen_ms: i64,
    last_seen_ms: i64,
}

impl RawRow {
    fn decode(self) -> Result<Registration, String> {
        let key = NodeKey(
            self.key
                .as_slice()
                .try_into()
                .map_err(|_| "a key is not 32 bytes".to_string())?,
        );
        let endpoint = |text: &str| {
            text.parse::<SocketAddr>()
                .map_err(|_| format!("bad endpoint `{text}` for key {key}"))
        };
        let lan = self
            .lan
            .split_ascii_whitespace()
            .map(endpoint)
            .collect::<Result<Vec<_>, _>>()?;
        if lan.len() > MAX_LAN_ENDPOINTS || !self.allow.len().is_multiple_of(32) {
            return Err(format!("bad endpoint or allow list for key {key}"));
        }
        let allow: Vec<NodeKey> = self
            .allow
            .chunks_exact(32)
            .filter_map(|c| c.try_into().ok().map(NodeKey))
            .collect();
        if allow.len() > MAX_ALLOW {
            return Err(format!("allow list too long for key {key}"));
        }
        Ok(Registration {
            key,
            observed: endpoint(&self.observed)?,
            lan,
            allow,
            nat: nat_from_name(&self.nat)
                .ok_or_else(|| format!("unknown NAT kind `{}` for key {key}", self.nat))?,
            first_seen_ms: u64::try_from(self.first_seen_ms)
                .map_err(|_| format!("negative time for key {key}"))?,
            last_seen_ms: u64::try_from(self.last_seen_ms)
                .map_err(|_| format!("negative time for key {key}"))?,
        })
    }
}

/// Names as in the JSON output, readable with the sqlite3 shell.
fn nat_name(nat: NatKind) -> &'static str {
    match nat {
        NatKind::Unknown => "unknown",
        NatKind::None => "none",
        NatKind::EndpointIndependent => "endpoint_independent",
        NatKind::EndpointDependent => "endpoint_dependent",
    }
}

fn nat_from_name(name: &str) -> Option<NatKind> {
    Some(match name {
        "unknown" => NatKind::Unknown,
        "none" => NatKind::None,
        "endpoint_independent" => NatKind::EndpointIndependent,
        "endpoint_dependent" => NatKind::EndpointDependent,
        _ => return None,
    })
}

fn ms_to_sql(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// The registry holds no secret, but node endpoints are nobody else's business.
fn warn_if_readable(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "{} is readable by group or others (mode {mode:o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pilot-sqlite-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn record(n: u8) -> Registration {
        Registration {
            key: NodeKey([n; 32]),
            observed: "192.0.2.1:4000".parse().unwrap(),
            lan: vec![
                "10.0.0.2:51870".parse().unwrap(),
                "[fe80::1]:51870".parse().unwrap(),
            ],
            allow: vec![NodeKey([9; 32]), NodeKey([8; 32])],
            nat: NatKind::EndpointIndependent,
            first_seen_ms: 1_700_000_000_000,
            last_seen_ms: 1_700_000_025_000 + u64::from(n),
        }
    }

    #[test]
    fn saved_records_survive_reopening_with_mode_0600() {
        let dir = temp("reopen");
        let path = dir.join(DB_FILE);
        {
            let mut store = SqliteStore::open(&path).unwrap();
            store.save(&[record(1), record(2)]).unwrap();
            let mut changed = record(1);
            changed.lan.clear();
            changed.allow.clear();
            changed.nat = NatKind::Unknown;
            store.save(&[changed]).unwrap();
        }
        let mut store = SqliteStore::open(&path).unwrap();
        let mut loaded = store.load().unwrap();
        loaded.sort_by_key(|r| r.key);
        let mut expected = record(1);
        expected.lan.clear();
        expected.allow.clear();
        expected.nat = NatKind::Unknown;
        assert_eq!(loaded, vec![expected, record(2)]);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(store.purge(1_700_000_025_002).unwrap(), 1);
        assert_eq!(store.load().unwrap(), vec![record(2)]);
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_opener_is_refused_while_the_first_holds_the_lock() {
        let dir = temp("lock");
        let path = dir.join(DB_FILE);
        let first = SqliteStore::open(&path).unwrap();
        let err = SqliteStore::open(&path)
            .err()
            .expect("second open must fail");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        drop(first);
        SqliteStore::open(&path).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_database_is_an_error_and_left_alone() {
        let dir = temp("corrupt");
        let path = dir.join(DB_FILE);
        let junk = b"this is not an SQLite database, but it is somebody's file".repeat(100);
        fs::write(&path, &junk).unwrap();
        let err = SqliteStore::open(&path).err().expect("must refuse");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("move it away"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), junk, "never wiped");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn undecodable_rows_are_reported_not_skipped() {
        let dir = temp("badrow");
        let path = dir.join(DB_FILE);
        let mut store = SqliteStore::open(&path).unwrap();
        store.save(&[record(1)]).unwrap();
        store
            .conn
            .execute("UPDATE registrations SET observed = 'nowhere'", [])
            .unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }
}
