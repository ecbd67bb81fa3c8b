//! The database layout, and bringing an older file up to it in place.
//!
//! | version | change |
//! |---|---|
//! | 1 | `registrations`, with the node's allow-list |
//! | 2 | allow-lists dropped (trust is the ledger's now); `names`, `ledger`, `outbox` added |
//!
//! A migration runs in the same transaction as the version bump, so a crash leaves the file
//! either wholly at the old version or wholly at the new one.

use rusqlite::{Connection, TransactionBehavior};

/// The version this code reads and writes (`PRAGMA user_version`).
pub(super) const SCHEMA_VERSION: i64 = 2;

/// Every table at [`SCHEMA_VERSION`]. Statements are kept in their wire encoding, so what is
/// delivered is byte for byte what the signer signed.
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS registrations (
    key BLOB PRIMARY KEY CHECK (length(key) = 32),
    observed TEXT NOT NULL,
    lan TEXT NOT NULL,
    nat TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS names (
    name TEXT PRIMARY KEY,
    key BLOB NOT NULL UNIQUE CHECK (length(key) = 32)
) STRICT;
CREATE TABLE IF NOT EXISTS ledger (
    low BLOB NOT NULL CHECK (length(low) = 32),
    high BLOB NOT NULL CHECK (length(high) = 32),
    statement BLOB NOT NULL,
    PRIMARY KEY (low, high)
) STRICT;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target BLOB NOT NULL CHECK (length(target) = 32),
    statement BLOB NOT NULL,
    stored_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS outbox_by_age ON outbox (stored_ms);
";

/// Why the schema could not be brought up to date.
pub(super) enum SchemaError {
    /// Written by a newer version of this code: left untouched.
    Newer(i64),
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for SchemaError {
    fn from(e: rusqlite::Error) -> SchemaError {
        SchemaError::Sqlite(e)
    }
}

/// Creates the tables of a new database or migrates an older one, in one write transaction
/// (which also takes the exclusive lock at start rather than at the first registration).
/// Returns the version the file had.
pub(super) fn migrate(conn: &mut Connection) -> Result<i64, SchemaError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(SchemaError::Newer(version));
    }
    // Version 0 with the old table is a version 1 file whose version was never written (the
    // first release set it after creating the table, outside the transaction).
    if version < 2 && has_column(&tx, "registrations", "allow")? {
        tx.execute_batch("ALTER TABLE registrations DROP COLUMN allow")?;
    }
    tx.execute_batch(TABLES)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(version)
}

fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}
