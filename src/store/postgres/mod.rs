//! The registry on PostgreSQL (`pilotd rendezvous --store postgres://USER@HOST[:PORT]/DB`), for
//! operators who keep their state in a database they already run and back up.
//!
//! - Driver: tokio-postgres, pure Rust (no libpq), the client the rest of the async Rust
//!   ecosystem builds on; its connection pipelines queries. It reads no environment, so the
//!   password sources libpq users expect are implemented in [`target`].
//! - Durability: a write returns `Ok` after `COMMIT`, which with PostgreSQL's default
//!   `synchronous_commit = on` has reached the server's WAL on disk.
//! - The same rows and the same rules as the SQLite store (its module doc): a registration that
//!   does not decode is an error naming the database; a ledger or outbox row that does not is
//!   skipped with a warning and left in place.
//! - The [`Store`] trait is synchronous: the calls go to a thread of the store's own, which
//!   owns the connection and a small runtime for it, and the caller waits for the answer (as
//!   it waits for SQLite's fsync). A call that finds the connection gone reconnects first; a
//!   call that fails half-way is not retried (the server's own retry rules apply). Every call
//!   has a deadline ([`CALL_TIMEOUT`]), so a database that stops answering is an error, not
//!   a hang.

mod schema;
pub mod target;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::rows::{key_of, lan_text, ledger_row, outbox_row, to_sql, RawRegistration};
use crate::addr::Hostname;
use crate::identity::NodeKey;
use crate::rendezvous::{
    Instance, Located, OutboxItem, PurgeBefore, Purged, Registration, Snapshot, Store, StoreError,
    Submission, Submitted, TrustChanges, TrustCursor,
};
use crate::wire::control::{Found, Query};
use crate::wire::trust::Statement;
use schema::{migrate, SchemaError, SCHEMA_VERSION};
pub use target::{PasswordSources, Target};

/// How long one store call may take, connecting included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Every registration with its name and home (columns in [`raw_registration`]'s order).
const REGISTRATIONS: &str = "SELECT r.key, r.observed, r.lan, r.nat, r.first_seen_ms, \
                             r.last_seen_ms, n.name, r.home \
                             FROM registrations r LEFT JOIN names n ON n.key = r.key";
/// The ledger's rows (for [`ledger_rows`]).
const LEDGER: &str = "SELECT low, high, statement FROM ledger";
/// The outbox's rows (for [`outbox_rows`]).
const OUTBOX: &str = "SELECT id, target, statement, stored_ms FROM outbox";

/// A registration row of [`REGISTRATIONS`], not yet decoded.
fn raw_registration(r: &tokio_postgres::Row) -> RawRegistration {
    RawRegistration {
        key: r.get(0),
        observed: r.get(1),
        lan: r.get(2),
        nat: r.get(3),
        first_seen_ms: r.get(4),
        last_seen_ms: r.get(5),
        name: r.get(6),
    }
}

/// The statements of [`LEDGER`] rows (rows that do not decode are skipped, with a warning).
fn ledger_rows(rows: &[tokio_postgres::Row]) -> Vec<Statement> {
    (rows.iter())
        .filter_map(|r| {
            let (low, high, bytes): (Vec<u8>, Vec<u8>, Vec<u8>) = (r.get(0), r.get(1), r.get(2));
            ledger_row(&low, &high, &bytes)
        })
        .collect()
}

/// The items of [`OUTBOX`] rows (rows that do not decode are skipped, with a warning).
fn outbox_rows(rows: &[tokio_postgres::Row]) -> Vec<OutboxItem> {
    (rows.iter())
        .filter_map(|r| {
            let (target, bytes): (Vec<u8>, Vec<u8>) = (r.get(1), r.get(2));
            outbox_row(r.get(0), &target, &bytes, r.get(3))
        })
        .collect()
}

/// The oldest transaction still running, as of this statement's snapshot: every transaction
/// before it has committed or aborted, so no row written by one of them can appear later.
/// Ledger and outbox rows carry the transaction that wrote them (`written`, schema 3), and the
/// trust changes are read between two such points ([`Store::trust_changes`]), none skipped
/// however the writers' commits interleave (a plain id or timestamp would skip a row whose
/// transaction commits after a later one's).
const OLDEST_RUNNING: &str = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint";

/// A lookup's parameter: a name or a key.
enum LookUpParam {
    Text(String),
    Bytes(Vec<u8>),
}

/// A job for the store's thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The registry in a PostgreSQL database.
pub struct PostgresStore {
    target: Target,
    /// The instance whose registrations this handle writes (see [`Store::set_home`]).
    home: Option<Vec<u8>>,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// What the store's thread owns.
struct Connection {
    runtime: tokio::runtime::Runtime,
    target: Target,
    client: Option<Client>,
}

impl Connection {
    /// Runs `f` on the connection (made first if there is none, or it was lost), within
    /// [`CALL_TIMEOUT`]. A failure that lost the connection drops it, so the next call
    /// reconnects.
    fn run<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, Failed> {
        let Connection {
            runtime,
            target,
            client,
        } = self;
        let result = runtime.block_on(async {
            tokio::time::timeout(CALL_TIMEOUT, async {
                if client.as_ref().is_none_or(Client::is_closed) {
                    *client = None;
                    let (c, connection) = target
                        .config
                        .connect(NoTls)
                        .await
                        .map_err(Failed::Connect)?;
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::warn!("the registry database connection ended: {e}");
                        }
                    });
                    *client = Some(c);
                }
                let c = client.as_mut().expect("connected above");
                f(c).await.map_err(Failed::Query)
            })
            .await
            .unwrap_or(Err(Failed::Timeout))
        });
        if let Err(failed) = &result {
            if !matches!(failed, Failed::Query(e) if e.as_db_error().is_some()) {
                // Not an answer from the server: the connection may be half-dead. Start over.
                *client = None;
            }
        }
        result
    }

    /// [`Connection::run`] for a [`Store`] call: a failure is a write error naming the
    /// database.
    fn call<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        self.run(f)
            .map_err(|failed| StoreError::Write(format!("{}: {failed}", self.target)))
    }
}

/// Why a call to the database failed.
enum Failed {
    Connect(tokio_postgres::Error),
    Query(tokio_postgres::Error),
    Timeout,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Connect(e) => write!(f, "cannot connect: {}", describe(e)),
            Failed::Query(e) => f.write_str(&describe(e)),
            Failed::Timeout => write!(f, "no answer within {} s", CALL_TIMEOUT.as_secs()),
        }
    }
}

/// The server's own message when there is one (tokio-postgres' Display says only "db
/// error"), else the error with its causes ("invalid configuration: password missing").
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

impl PostgresStore {
    /// Connects, brings the schema up to date (refusing a newer one), and returns the store.
    /// Safe to call from async code: all database work happens on the store's thread.
    pub fn open(target: Target) -> Result<PostgresStore, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: PathBuf::from(target.to_string()),
            reason,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| open_err(format!("cannot start the database thread's runtime: {e}")))?;
        let mut connection = Connection {
            runtime,
            target: target.clone(),
            client: None,
        };
        let (jobs, inbox) = mpsc::channel::<Job>();
        let thread = thread::Builder::new()
            .name("registry-db".into())
            .spawn(move || {
                while let Ok(job) = inbox.recv() {
                    job(&mut connection);
                }
            })
            .map_err(|e| open_err(format!("cannot start the database thread: {e}")))?;
        let store = PostgresStore {
            target: target.clone(),
            home: None,
            jobs: Some(jobs),
            thread: Some(thread),
        };
        let migrated = store.call(|c| Ok(c.run(async |client| Ok(migrate(client).await))))?;
        match migrated.map_err(|failed| open_err(failed.to_string()))? {
            Ok(old) if old != 0 && old < SCHEMA_VERSION => {
                tracing::info!("migrated {target} from schema {old} to {SCHEMA_VERSION}")
            }
            Ok(_) => {}
            Err(SchemaError::Newer(version)) => {
                return Err(StoreError::NewerSchema {
                    path: PathBuf::from(target.to_string()),
                    version: version.into(),
                })
            }
            Err(SchemaError::Postgres(e)) => return Err(open_err(describe(&e))),
        }
        Ok(store)
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Runs `job` on the store's thread and waits for its answer.
    fn call<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let gone = || StoreError::Write("the registry database thread has stopped".into());
        let (answer, answered) = mpsc::sync_channel(1);
        self.jobs
            .as_ref()
            .ok_or_else(gone)?
            .send(Box::new(move |c| {
                let _ = answer.send(job(c));
            }))
            .map_err(|_| gone())?;
        answered.recv().map_err(|_| gone())?
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.jobs = None; // the thread's loop ends when its queue closes
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Store for PostgresStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let target = self.target.clone();
        let (cursor, registrations, ledger, outbox) = self.call(|c| {
            c.call(async |client| {
                // First: what is written after this point is read as a change later (what
                // is read below too, perhaps, and then taken as known).
                let cursor: i64 = client.query_one(OLDEST_RUNNING, &[]).await?.get(0);
                let registrations = client.query(REGISTRATIONS, &[]).await?;
                let ledger = client.query(LEDGER, &[]).await?;
                let outbox = client.query(&format!("{OUTBOX} ORDER BY id"), &[]).await?;
                Ok((cursor, registrations, ledger, outbox))
            })
        })?;
        let corrupt = |reason: String| StoreError::Corrupt {
            path: PathBuf::from(target.to_string()),
            reason,
        };
        let mut snapshot = Snapshot {
            cursor: TrustCursor(cursor.max(0) as u64),
            ..Snapshot::default()
        };
        for r in &registrations {
            let registration = raw_registration(r).decode().map_err(corrupt)?;
            snapshot.registrations.push(registration);
        }
        snapshot.ledger = ledger_rows(&ledger);
        snapshot.outbox = outbox_rows(&outbox);
        Ok(snapshot)
    }

    /// Registrations claiming a name are written one by one (each claim is decided on its
    /// row, under a savepoint); all the others in one statement (`unnest`), so a batch of
    /// thousands is a handful of round trips.
    fn save(
        &mut self,
        records: &[Registration],
        held_since_ms: u64,
    ) -> Result<Vec<NodeKey>, StoreError> {
        // One row per key (the last given): a statement may not update a row twice.
        let mut seen = std::collections::BTreeSet::new();
        let mut rows: Vec<_> = (records.iter().rev())
            .filter(|r| seen.insert(r.key))
            .map(|r| {
                (
                    r.key.0.to_vec(),
                    r.observed.to_string(),
                    lan_text(&r.lan),
                    r.nat.as_str().to_owned(),
                    to_sql(r.first_seen_ms),
                    to_sql(r.last_seen_ms),
                    r.hostname.as_ref().map(|h| h.as_str().to_owned()),
                )
            })
            .collect();
        rows.reverse();
        let held_since = to_sql(held_since_ms);
        let home = self.home.clone();
        let taken: Vec<Vec<u8>> = self.call(move |c| {
            c.call(async |client| {
                let mut tx = client.transaction().await?;
                let mut taken: Vec<Vec<u8>> = Vec::new();
                if rows.iter().any(|r| r.6.is_some()) {
                    let release_others = tx
                        .prepare("DELETE FROM names WHERE key = $1 AND name <> $2")
                        .await?;
                    // Several servers may share this database: the claim takes the name only
                    // if it is free, ours already, or filed under a key not seen since
                    // `held_since_ms` (a leftover), decided on the row itself, so two servers
                    // claiming one name at once cannot both get it.
                    let claim = tx
                        .prepare(
                            "INSERT INTO names (name, key) VALUES ($1, $2) \
                             ON CONFLICT (name) DO UPDATE SET key = EXCLUDED.key \
                             WHERE names.key = EXCLUDED.key OR NOT EXISTS \
                             (SELECT 1 FROM registrations r \
                              WHERE r.key = names.key AND r.last_seen_ms >= $3) \
                             RETURNING key",
                        )
                        .await?;
                    for (key, .., name) in &rows {
                        let Some(name) = name else {
                            continue;
                        };
                        let claiming = tx.savepoint("claim").await?;
                        claiming.execute(&release_others, &[key, name]).await?;
                        let got = claiming
                            .query_opt(&claim, &[name, key, &held_since])
                            .await?;
                        if got.is_none() {
                            claiming.rollback().await?;
                            taken.push(key.clone());
                            continue;
                        }
                        claiming.commit().await?;
                    }
                }
                let nameless: Vec<&[u8]> = (rows.iter())
                    .filter(|r| r.6.is_none())
                    .map(|r| r.0.as_slice())
                    .collect();
                if !nameless.is_empty() {
                    tx.execute("DELETE FROM names WHERE key = ANY($1)", &[&nameless])
                        .await?;
                }
                let written: Vec<_> = rows.iter().filter(|r| !taken.contains(&r.0)).collect();
                if !written.is_empty() {
                    let keys: Vec<&[u8]> = written.iter().map(|r| r.0.as_slice()).collect();
                    let observed: Vec<&str> = written.iter().map(|r| r.1.as_str()).collect();
                    let lan: Vec<&str> = written.iter().map(|r| r.2.as_str()).collect();
                    let nat: Vec<&str> = written.iter().map(|r| r.3.as_str()).collect();
                    let first: Vec<i64> = written.iter().map(|r| r.4).collect();
                    let last: Vec<i64> = written.iter().map(|r| r.5).collect();
                    tx.execute(
                        "INSERT INTO registrations \
                         (key, observed, lan, nat, first_seen_ms, last_seen_ms, home) \
                         SELECT k, o, l, n, f, s, $7::bytea FROM unnest($1::bytea[], \
                         $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[]) \
                         AS t(k, o, l, n, f, s) \
                         ON CONFLICT (key) DO UPDATE SET observed = EXCLUDED.observed, \
                         lan = EXCLUDED.lan, nat = EXCLUDED.nat, \
                         first_seen_ms = EXCLUDED.first_seen_ms, \
                         last_seen_ms = EXCLUDED.last_seen_ms, home = EXCLUDED.home",
                        &[&keys, &observed, &lan, &nat, &first, &last, &home],
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(taken)
            })
        })?;
        Ok(taken.iter().filter_map(|k| key_of(k)).collect())
    }

    fn submit(&mut self, submission: &Submission<'_>) -> Result<Submitted, StoreError> {
        let ledger = submission.ledger.map(|s| {
            let (low, high) = s.pair();
            let revoked = matches!(s, Statement::Revocation(_));
            (
                low.0.to_vec(),
                high.0.to_vec(),
                s.to_bytes(),
                to_sql(s.issued_ms()),
                revoked,
            )
        });
        let replaces = submission.replaces.map(to_sql);
        let deliver = submission.deliver.map(|d| {
            (
                d.target.0.to_vec(),
                d.statement.to_bytes(),
                to_sql(d.stored_ms),
            )
        });
        // Err(()): superseded.
        let id: Result<Option<i64>, ()> = self.call(move |c| {
            c.call(async |client| {
                let tx = client.transaction().await?;
                if let Some((low, high, bytes, issued_ms, revoked)) = &ledger {
                    // The ledger's rule (the newest wins, a revocation wins a tie), decided
                    // on the row: another instance may have written a newer statement this
                    // one has not read yet. Then nothing is written (the caller planned on
                    // an older ledger; it reads the newer one at its next read of the trust
                    // changes, and the node that submitted holds the newer one too).
                    let written = tx
                        .execute(
                            "INSERT INTO ledger (low, high, statement, issued_ms, revoked) \
                             VALUES ($1, $2, $3, $4, $5) \
                             ON CONFLICT (low, high) DO UPDATE SET statement = $3, \
                             issued_ms = $4, revoked = $5, written = DEFAULT \
                             WHERE ledger.issued_ms IS NULL OR $4 > ledger.issued_ms \
                             OR ($5 AND $4 = ledger.issued_ms AND NOT ledger.revoked)",
                            &[low, high, bytes, issued_ms, revoked],
                        )
                        .await?;
                    if written == 0 {
                        tx.rollback().await?;
                        return Ok(Err(()));
                    }
                }
                if let Some(id) = &replaces {
                    tx.execute("DELETE FROM outbox WHERE id = $1", &[id])
                        .await?;
                }
                let id = match &deliver {
                    None => None,
                    Some((target, bytes, stored_ms)) => Some(
                        tx.query_one(
                            "INSERT INTO outbox (target, statement, stored_ms) \
                             VALUES ($1, $2, $3) RETURNING id",
                            &[target, bytes, stored_ms],
                        )
                        .await?
                        .get(0),
                    ),
                };
                tx.commit().await?;
                Ok(Ok(id))
            })
        })?;
        let Ok(id) = id else {
            return Ok(Submitted::Superseded);
        };
        let id = id.map(|id| {
            u64::try_from(id).map_err(|_| StoreError::Write("negative outbox id".into()))
        });
        id.transpose().map(Submitted::Written)
    }

    fn delivered(&mut self, id: u64) -> Result<(), StoreError> {
        // No row has an id beyond i64::MAX, so there is nothing to delete for one.
        let Ok(id) = i64::try_from(id) else {
            return Ok(());
        };
        self.call(move |c| {
            c.call(async |client| {
                client
                    .execute("DELETE FROM outbox WHERE id = $1", &[&id])
                    .await
                    .map(drop)
            })
        })
    }

    fn purge(&mut self, before: PurgeBefore) -> Result<Purged, StoreError> {
        let (names_ms, registrations_ms, deliveries_ms) = (
            to_sql(before.names_ms),
            to_sql(before.registrations_ms),
            to_sql(before.deliveries_ms),
        );
        let (names, keys, deliveries) = self.call(move |c| {
            c.call(async |client| {
                let tx = client.transaction().await?;
                // Names of holders silent too long, and leftovers whose registration is gone.
                let names = tx
                    .query(
                        "DELETE FROM names WHERE key NOT IN \
                         (SELECT key FROM registrations WHERE last_seen_ms >= $1) RETURNING name",
                        &[&names_ms],
                    )
                    .await?;
                // A holder's registration stays: its last_seen_ms is when its name expires.
                let keys = tx
                    .query(
                        "DELETE FROM registrations WHERE last_seen_ms < $1 \
                         AND key NOT IN (SELECT key FROM names) RETURNING key",
                        &[&registrations_ms],
                    )
                    .await?;
                let deliveries = tx
                    .execute("DELETE FROM outbox WHERE stored_ms < $1", &[&deliveries_ms])
                    .await?;
                tx.commit().await?;
                let names: Vec<String> = names.iter().map(|r| r.get(0)).collect();
                let keys: Vec<Vec<u8>> = keys.iter().map(|r| r.get(0)).collect();
                Ok((names, keys, deliveries))
            })
        })?;
        Ok(Purged {
            names: names.iter().filter_map(|n| n.parse().ok()).collect(),
            keys: keys.iter().filter_map(|k| key_of(k)).collect(),
            deliveries: usize::try_from(deliveries).unwrap_or(usize::MAX),
        })
    }

    /// What another instance registered: the holder of a name, or a key (seen since
    /// `held_since_ms`), with its name.
    fn look_up(&mut self, query: &Query, held_since_ms: u64) -> Result<Option<Found>, StoreError> {
        let (sql, param) = match query {
            Query::Name(name) => (
                "SELECT n.key, n.name FROM names n JOIN registrations r ON r.key = n.key \
                 WHERE n.name = $1 AND r.last_seen_ms >= $2",
                LookUpParam::Text(name.as_str().to_owned()),
            ),
            Query::Key(key) => (
                "SELECT r.key, n.name FROM registrations r LEFT JOIN names n ON n.key = r.key \
                 WHERE r.key = $1 AND r.last_seen_ms >= $2",
                LookUpParam::Bytes(key.0.to_vec()),
            ),
            Query::Address(_) => return Ok(None),
        };
        let held_since = to_sql(held_since_ms);
        let row: Option<(Vec<u8>, Option<String>)> = self.call(move |c| {
            c.call(async |client| {
                let row = match &param {
                    LookUpParam::Text(text) => client.query_opt(sql, &[text, &held_since]).await?,
                    LookUpParam::Bytes(bytes) => {
                        client.query_opt(sql, &[bytes, &held_since]).await?
                    }
                };
                Ok(row.map(|r| (r.get(0), r.get(1))))
            })
        })?;
        Ok(row.and_then(|(key, name)| {
            Some(Found {
                key: key_of(&key)?,
                hostname: name.and_then(|n| n.parse().ok()),
            })
        }))
    }

    /// Beats are dated by the database's clock, so the servers' own clocks (which may be off)
    /// do not decide who is alive. Rows gone silent for a day are deleted.
    fn heartbeat(&mut self, me: &Instance, within: Duration) -> Result<Vec<Instance>, StoreError> {
        let (key, main) = (me.key.0.to_vec(), me.main.to_string());
        let (alt_port, incarnation) = (i32::from(me.alt_port), me.incarnation as i64);
        let within_ms = i64::try_from(within.as_millis()).unwrap_or(i64::MAX);
        let rows: Vec<(Vec<u8>, String, i32, i64, i64)> = self.call(move |c| {
            c.call(async |client| {
                let now = "(extract(epoch from clock_timestamp()) * 1000)::bigint";
                client
                    .execute(
                        &format!(
                            "INSERT INTO instances (key, main, alt_port, incarnation, beat_ms) \
                             VALUES ($1, $2, $3, $4, {now}) ON CONFLICT (key) DO UPDATE SET \
                             main = $2, alt_port = $3, incarnation = $4, beat_ms = {now}"
                        ),
                        &[&key, &main, &alt_port, &incarnation],
                    )
                    .await?;
                client
                    .execute(
                        &format!("DELETE FROM instances WHERE beat_ms < {now} - 86400000"),
                        &[],
                    )
                    .await?;
                let rows = client
                    .query(
                        &format!(
                            "SELECT key, main, alt_port, incarnation, beat_ms FROM instances \
                             WHERE beat_ms >= {now} - $1"
                        ),
                        &[&within_ms],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                    .collect())
            })
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(key, main, alt_port, incarnation, beat_ms)| {
                Some(Instance {
                    key: key_of(&key)?,
                    main: main.parse().ok()?,
                    alt_port: u16::try_from(alt_port).ok()?,
                    incarnation: incarnation as u64,
                    beat_ms: u64::try_from(beat_ms).ok()?,
                })
            })
            .collect())
    }

    /// Rows written by transactions from `since` up to the oldest one still running, read in
    /// one snapshot (see [`OLDEST_RUNNING`]). A transaction still running then is read the
    /// next time, when it has ended.
    fn trust_changes(&mut self, since: TrustCursor) -> Result<TrustChanges, StoreError> {
        let since = i64::try_from(since.0).unwrap_or(i64::MAX);
        let (upto, ledger, outbox) = self.call(move |c| {
            c.call(async |client| {
                let tx = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await?;
                let upto: i64 = tx.query_one(OLDEST_RUNNING, &[]).await?.get(0);
                let between = "WHERE written >= $1 AND written < $2";
                let ledger = tx
                    .query(&format!("{LEDGER} {between}"), &[&since, &upto])
                    .await?;
                let outbox = tx
                    .query(&format!("{OUTBOX} {between} ORDER BY id"), &[&since, &upto])
                    .await?;
                tx.commit().await?;
                Ok((upto, ledger, outbox))
            })
        })?;
        Ok(TrustChanges {
            ledger: ledger_rows(&ledger),
            outbox: outbox_rows(&outbox),
            cursor: TrustCursor(upto.max(since).max(0) as u64),
        })
    }

    fn set_home(&mut self, server: NodeKey) {
        self.home = Some(server.0.to_vec());
    }

    fn locate(&mut self, key: &NodeKey, seen_since_ms: u64) -> Result<Option<Located>, StoreError> {
        let (key, seen_since) = (key.0.to_vec(), to_sql(seen_since_ms));
        let row = self.call(move |c| {
            c.call(async |client| {
                let row = client
                    .query_opt(
                        &format!(
                            "{REGISTRATIONS} WHERE r.key = $1 AND r.last_seen_ms >= $2 \
                             AND r.home IS NOT NULL"
                        ),
                        &[&key, &seen_since],
                    )
                    .await?;
                Ok(row.map(|r| (raw_registration(&r), r.get::<_, Vec<u8>>(7))))
            })
        })?;
        let Some((raw, home)) = row else {
            return Ok(None);
        };
        // A row that does not decode is nobody to introduce (load names it at start).
        let (Ok(registration), Some(home)) = (raw.decode(), key_of(&home)) else {
            return Ok(None);
        };
        Ok(Some(Located { registration, home }))
    }

    fn release_name(&mut self, name: &Hostname) -> Result<Option<NodeKey>, StoreError> {
        let name = name.as_str().to_owned();
        let key: Option<Vec<u8>> = self.call(move |c| {
            c.call(async |client| {
                let row = client
                    .query_opt("DELETE FROM names WHERE name = $1 RETURNING key", &[&name])
                    .await?;
                Ok(row.map(|r| r.get(0)))
            })
        })?;
        Ok(key.as_deref().and_then(key_of))
    }
}
