//! The PostgreSQL layout, and bringing an older database up to it.
//!
//! | version | change |
//! |---|---|
//! | 1 | `registrations`, `names`, `ledger`, `outbox` (as SQLite's schema 2) |
//! | 2 | `instances`: the rendezvous servers sharing the database, and their heartbeats |
//! | 3 | `ledger.written`, `outbox.written`: the transaction that wrote each row, for the trust changes others read; `ledger.issued_ms`, `ledger.revoked`, so a statement older than the row's is not written over it; `registrations.home`: the instance the node registered with |
//!
//! The version lives in `pilot_schema`. Migrations run in one transaction with the version
//! bump, under an advisory lock, so instances starting together migrate once and a crash
//! leaves the database wholly at the old version or wholly at the new one.

use tokio_postgres::Client;

/// The version this code reads and writes.
pub(super) const SCHEMA_VERSION: i32 = 3;

/// `MIGRATIONS[n]` takes a database from version n to n + 1.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    "
CREATE TABLE registrations (
    key bytea PRIMARY KEY CHECK (length(key) = 32),
    observed text NOT NULL,
    lan text NOT NULL,
    nat text NOT NULL,
    first_seen_ms bigint NOT NULL,
    last_seen_ms bigint NOT NULL
);
CREATE TABLE names (
    name text PRIMARY KEY,
    key bytea NOT NULL UNIQUE CHECK (length(key) = 32)
);
CREATE TABLE ledger (
    low bytea NOT NULL CHECK (length(low) = 32),
    high bytea NOT NULL CHECK (length(high) = 32),
    statement bytea NOT NULL,
    PRIMARY KEY (low, high)
);
CREATE TABLE outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target bytea NOT NULL CHECK (length(target) = 32),
    statement bytea NOT NULL,
    stored_ms bigint NOT NULL
);
CREATE INDEX outbox_by_age ON outbox (stored_ms);
",
    "
CREATE TABLE instances (
    key bytea PRIMARY KEY CHECK (length(key) = 32),
    main text NOT NULL,
    alt_port integer NOT NULL,
    incarnation bigint NOT NULL,
    beat_ms bigint NOT NULL
);
",
    // The id of the transaction that wrote each row: see `trust_changes`. When the row's
    // statement was issued and whether it is a revocation: see `submit` (NULL in rows an
    // older version wrote, which any statement replaces, as before).
    "
ALTER TABLE ledger ADD COLUMN written bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint);
ALTER TABLE registrations ADD COLUMN home bytea CHECK (length(home) = 32);
ALTER TABLE ledger ADD COLUMN issued_ms bigint;
ALTER TABLE ledger ADD COLUMN revoked boolean;
ALTER TABLE outbox ADD COLUMN written bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint);
CREATE INDEX ledger_by_write ON ledger (written);
CREATE INDEX outbox_by_write ON outbox (written);
",
];

/// An arbitrary constant: the advisory lock that serialises migrations ("pilot" in ASCII).
const MIGRATION_LOCK: i64 = 0x70_69_6c_6f_74;

/// Why the schema could not be brought up to date.
pub(super) enum SchemaError {
    /// Written by a newer version of this code: left untouched.
    Newer(i32),
    Postgres(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for SchemaError {
    fn from(e: tokio_postgres::Error) -> SchemaError {
        SchemaError::Postgres(e)
    }
}

/// Creates the tables of an empty database or migrates an older one; returns the version it
/// had.
pub(super) async fn migrate(client: &mut Client) -> Result<i32, SchemaError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS pilot_schema (version integer NOT NULL)")
        .await?;
    let version: i32 = tx
        .query_opt("SELECT max(version) FROM pilot_schema", &[])
        .await?
        .and_then(|row| row.get::<_, Option<i32>>(0))
        .unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Err(SchemaError::Newer(version));
    }
    for migration in &MIGRATIONS[version.max(0) as usize..] {
        tx.batch_execute(migration).await?;
    }
    if version < SCHEMA_VERSION {
        tx.execute("DELETE FROM pilot_schema", &[]).await?;
        tx.execute(
            "INSERT INTO pilot_schema (version) VALUES ($1)",
            &[&SCHEMA_VERSION],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(version)
}
