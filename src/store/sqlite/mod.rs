//! The daemon's [`Store`]: one SQLite database (`rendezvous.db`) in the data directory.
//!
//! - Durability: WAL journal with `synchronous=FULL`, so a committed transaction has reached
//!   the disk when a write returns; a `kill -9` (or a power cut) loses nothing committed.
//! - One writer: `locking_mode=EXCLUSIVE` holds the lock from the first transaction until the
//!   process exits (the kernel drops it even after `kill -9`), so a second server on the same
//!   directory fails at start instead of interleaving writes.
//! - Never wiped: a file SQLite cannot read, or a registration this code cannot decode, is a
//!   start-up error naming the file; nothing is deleted or recreated over it. A ledger or
//!   outbox row that does not decode is skipped with a warning naming it (and left in the
//!   file): the nodes hold their own copies and resubmit, so one bad row must not keep the
//!   registry down.
//! - Mode 0600: the file is created by us before SQLite opens it, and SQLite gives its WAL
//!   file the database file's mode.

mod schema;
#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};

use super::rows::{key_of, lan_text, ledger_row, outbox_row, to_sql, RawRegistration};
use crate::addr::Hostname;
use crate::identity::NodeKey;
use crate::rendezvous::{
    OutboxItem, PurgeBefore, Purged, Registration, Snapshot, Store, StoreError, Submission,
    Submitted,
};
use crate::wire::trust::Statement;
use schema::{migrate, SchemaError, SCHEMA_VERSION};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "rendezvous.db";

pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if absent, mode 0600) the database at `path`, takes its lock, and
    /// brings an older schema up to date.
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
        let mut store = SqliteStore {
            conn,
            path: path.into(),
        };
        store.prepare().map_err(|e| store.classify(e))?;
        match migrate(&mut store.conn) {
            Ok(old) if old != 0 && old < SCHEMA_VERSION => tracing::info!(
                "migrated {} from schema {old} to {SCHEMA_VERSION} (allow-lists dropped: trust \
                 is now the nodes' signed records)",
                path.display()
            ),
            Ok(_) => {}
            Err(SchemaError::Newer(version)) => {
                return Err(StoreError::NewerSchema {
                    path: path.into(),
                    version,
                })
            }
            Err(SchemaError::Sqlite(e)) => return Err(store.classify(e)),
        }
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
        Ok(())
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

    fn load_registrations(&self) -> Result<Vec<Registration>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT r.key, r.observed, r.lan, r.nat, r.first_seen_ms, r.last_seen_ms, n.name \
                 FROM registrations r LEFT JOIN names n ON n.key = r.key",
            )
            .map_err(|e| self.classify(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(RawRegistration {
                    key: r.get(0)?,
                    observed: r.get(1)?,
                    lan: r.get(2)?,
                    nat: r.get(3)?,
                    first_seen_ms: r.get(4)?,
                    last_seen_ms: r.get(5)?,
                    name: r.get(6)?,
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

    /// The ledger's statements; rows that do not decode, or do not belong to the pair they
    /// are filed under, are skipped with a warning.
    fn load_ledger(&self) -> Result<Vec<Statement>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT low, high, statement FROM ledger")
            .map_err(|e| self.classify(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(|e| self.classify(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (low, high, bytes) = row.map_err(|e| self.classify(e))?;
            out.extend(ledger_row(&low, &high, &bytes));
        }
        Ok(out)
    }

    /// The outbox, oldest first; rows that do not decode are skipped with a warning.
    fn load_outbox(&self) -> Result<Vec<OutboxItem>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, target, statement, stored_ms FROM outbox ORDER BY id")
            .map_err(|e| self.classify(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(|e| self.classify(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, target, bytes, stored_ms) = row.map_err(|e| self.classify(e))?;
            out.extend(outbox_row(id, &target, &bytes, stored_ms));
        }
        Ok(out)
    }
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            registrations: self.load_registrations()?,
            ledger: self.load_ledger()?,
            outbox: self.load_outbox()?,
            // One server per database (it holds the lock): nobody else writes changes.
            cursor: Default::default(),
        })
    }

    fn save(
        &mut self,
        records: &[Registration],
        held_since_ms: u64,
    ) -> Result<Vec<NodeKey>, StoreError> {
        let tx = self.conn.transaction().map_err(write)?;
        let mut taken = Vec::new();
        {
            let mut holder = tx
                .prepare_cached(
                    "SELECT n.key, r.last_seen_ms FROM names n \
                     LEFT JOIN registrations r ON r.key = n.key WHERE n.name = ?1",
                )
                .map_err(write)?;
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO registrations \
                     (key, observed, lan, nat, first_seen_ms, last_seen_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                     ON CONFLICT(key) DO UPDATE SET observed = ?2, lan = ?3, nat = ?4, \
                     first_seen_ms = ?5, last_seen_ms = ?6",
                )
                .map_err(write)?;
            let mut release = tx
                .prepare_cached("DELETE FROM names WHERE key = ?1")
                .map_err(write)?;
            // A name filed under a key not seen since `held_since_ms` is a leftover: the
            // registration being written takes it.
            let mut claim = tx
                .prepare_cached(
                    "INSERT INTO names (name, key) VALUES (?1, ?2) \
                     ON CONFLICT(name) DO UPDATE SET key = ?2",
                )
                .map_err(write)?;
            for r in records {
                if let Some(name) = &r.hostname {
                    let held: Option<(Vec<u8>, Option<i64>)> = holder
                        .query_row([name.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))
                        .optional()
                        .map_err(write)?;
                    let by_other = held.is_some_and(|(key, seen)| {
                        key != r.key.0 && seen.is_some_and(|ms| ms >= to_sql(held_since_ms))
                    });
                    if by_other {
                        taken.push(r.key);
                        continue;
                    }
                }
                upsert
                    .execute(params![
                        &r.key.0[..],
                        r.observed.to_string(),
                        lan_text(&r.lan),
                        r.nat.as_str(),
                        to_sql(r.first_seen_ms),
                        to_sql(r.last_seen_ms),
                    ])
                    .map_err(write)?;
                release.execute([&r.key.0[..]]).map_err(write)?;
                if let Some(name) = &r.hostname {
                    claim
                        .execute(params![name.as_str(), &r.key.0[..]])
                        .map_err(write)?;
                }
            }
        }
        tx.commit().map_err(write)?;
        Ok(taken)
    }

    /// Writes what its server decided: no other server shares the database.
    fn submit(&mut self, submission: &Submission<'_>) -> Result<Submitted, StoreError> {
        let tx = self.conn.transaction().map_err(write)?;
        if let Some(statement) = submission.ledger {
            let (low, high) = statement.pair();
            tx.prepare_cached(
                "INSERT INTO ledger (low, high, statement) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(low, high) DO UPDATE SET statement = ?3",
            )
            .and_then(|mut s| s.execute(params![&low.0[..], &high.0[..], statement.to_bytes()]))
            .map_err(write)?;
        }
        if let Some(id) = submission.replaces {
            tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")
                .and_then(|mut s| s.execute([to_sql(id)]))
                .map_err(write)?;
        }
        let id = match submission.deliver {
            None => None,
            Some(new) => {
                tx.prepare_cached(
                    "INSERT INTO outbox (target, statement, stored_ms) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        &new.target.0[..],
                        new.statement.to_bytes(),
                        to_sql(new.stored_ms)
                    ])
                })
                .map_err(write)?;
                let id = u64::try_from(tx.last_insert_rowid())
                    .map_err(|_| StoreError::Write("negative outbox id".into()))?;
                Some(id)
            }
        };
        tx.commit().map_err(write)?;
        Ok(Submitted::Written(id))
    }

    fn delivered(&mut self, id: u64) -> Result<(), StoreError> {
        // No row has an id beyond i64::MAX, so there is nothing to delete for one.
        let Ok(id) = i64::try_from(id) else {
            return Ok(());
        };
        self.conn
            .prepare_cached("DELETE FROM outbox WHERE id = ?1")
            .and_then(|mut s| s.execute([id]))
            .map_err(write)?;
        Ok(())
    }

    fn purge(&mut self, before: PurgeBefore) -> Result<Purged, StoreError> {
        let tx = self.conn.transaction().map_err(write)?;
        let mut purged = Purged::default();
        {
            // Names of holders silent too long, and leftovers whose registration is gone.
            let mut stmt = tx
                .prepare(
                    "DELETE FROM names WHERE key NOT IN \
                     (SELECT key FROM registrations WHERE last_seen_ms >= ?1) RETURNING name",
                )
                .map_err(write)?;
            let names = stmt
                .query_map([to_sql(before.names_ms)], |r| r.get::<_, String>(0))
                .map_err(write)?;
            for name in names {
                purged
                    .names
                    .extend(name.map_err(write)?.parse::<Hostname>().ok());
            }
            // A holder's registration stays: its last_seen_ms is when its name expires.
            let mut stmt = tx
                .prepare(
                    "DELETE FROM registrations WHERE last_seen_ms < ?1 \
                     AND key NOT IN (SELECT key FROM names) RETURNING key",
                )
                .map_err(write)?;
            let keys = stmt
                .query_map([to_sql(before.registrations_ms)], |r| {
                    r.get::<_, Vec<u8>>(0)
                })
                .map_err(write)?;
            for key in keys {
                purged.keys.extend(key_of(&key.map_err(write)?));
            }
        }
        purged.deliveries = tx
            .execute(
                "DELETE FROM outbox WHERE stored_ms < ?1",
                [to_sql(before.deliveries_ms)],
            )
            .map_err(write)?;
        tx.commit().map_err(write)?;
        Ok(purged)
    }

    fn release_name(&mut self, name: &Hostname) -> Result<Option<NodeKey>, StoreError> {
        let key: Option<Vec<u8>> = self
            .conn
            .prepare_cached("DELETE FROM names WHERE name = ?1 RETURNING key")
            .and_then(|mut s| s.query_row([name.as_str()], |r| r.get(0)))
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(write)?;
        Ok(key.as_deref().and_then(key_of))
    }
}

fn write(e: rusqlite::Error) -> StoreError {
    StoreError::Write(e.to_string())
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
