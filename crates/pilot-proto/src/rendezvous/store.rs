//! Durable storage of registrations, hostnames, the trust ledger and the outbox, behind a
//! small trait so the sans-IO [`Server`] runs on SQLite in the daemon and on a
//! [`MemoryStore`] in simulations.
//!
//! [`Server`]: super::Server

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::addr::Hostname;
use crate::identity::NodeKey;
use crate::wire::control::{Found, NatKind, Query};
use crate::wire::trust::Statement;

/// A registration as the rendezvous keeps it: wall-clock times (UNIX milliseconds), because
/// `Instant`s mean nothing to the next process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub key: NodeKey,
    /// The public endpoint the main port last saw the node's socket at.
    pub observed: SocketAddr,
    /// The node's own (LAN) endpoints, as it reported them.
    pub lan: Vec<SocketAddr>,
    /// The hostname the node holds. Unique among stored registrations; it stays with the key
    /// after the node expires, until the key has not registered for the name TTL (or the
    /// node releases it, or an operator frees it).
    pub hostname: Option<Hostname>,
    pub nat: NatKind,
    pub first_seen_ms: u64,
    /// Time of the last `Register`: the node expires when this gets too old.
    pub last_seen_ms: u64,
}

/// What [`Store::submit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Written, with the new outbox item's id if one was made.
    Written(Option<u64>),
    /// Nothing written: the ledger's row holds a statement the submission's does not take
    /// effect over (another server sharing the store took it).
    Superseded,
}

impl Submitted {
    /// The new outbox item's id, if one was made.
    pub fn id(self) -> Option<u64> {
        match self {
            Submitted::Written(id) => id,
            Submitted::Superseded => None,
        }
    }
}

/// Whether the ledger statement `new` replaces `held` for their pair: the newer wins, and a
/// revocation wins a tie with a record.
pub fn takes_effect_over(new: &Statement, held: &Statement) -> bool {
    let (issued, at) = (new.issued_ms(), held.issued_ms());
    match new {
        Statement::Request(_) => false,
        Statement::Record(_) => issued > at,
        Statement::Revocation(_) => {
            issued > at || (issued == at && !matches!(held, Statement::Revocation(_)))
        }
    }
}

/// A trust statement waiting to be delivered to `target` (and acknowledged by it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// Assigned by the store, never reused: an `Ack` for an old id cannot remove a newer item.
    pub id: u64,
    pub target: NodeKey,
    pub statement: Statement,
    /// When it was stored (UNIX milliseconds); items are purged after
    /// [`REQUEST_LIFETIME_MS`](crate::wire::trust::REQUEST_LIFETIME_MS).
    pub stored_ms: u64,
}

/// A rendezvous server as the others sharing its store see it (see [`Store::heartbeat`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Its public key (what nodes pin).
    pub key: NodeKey,
    /// Where its main port listens (the address may be a wildcard).
    pub main: SocketAddr,
    pub alt_port: u16,
    /// Random per start: a restart is a new incarnation.
    pub incarnation: u64,
    /// Its last beat, UNIX ms (by the store's clock where the store has one).
    pub beat_ms: u64,
}

/// Everything a server restores at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub registrations: Vec<Registration>,
    /// The statement that holds for each pair: a complete record or a revocation.
    pub ledger: Vec<Statement>,
    pub outbox: Vec<OutboxItem>,
    /// Where to read the trust changes other servers make from ([`Store::trust_changes`]):
    /// at or before the point this snapshot was read.
    pub cursor: TrustCursor,
}

/// A node registered at another server sharing the store ([`Store::locate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub registration: Registration,
    /// The key of the server it registered with (its home).
    pub home: NodeKey,
}

/// A position in a shared store's trust changes (see [`Store::trust_changes`]). Opaque: only
/// the store that gave it knows what it counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct TrustCursor(pub u64);

/// The ledger statements and outbox items written (by any server) since a [`TrustCursor`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustChanges {
    /// The statement each changed pair's row holds now.
    pub ledger: Vec<Statement>,
    /// Outbox items written since, that are still there, oldest first.
    pub outbox: Vec<OutboxItem>,
    /// Where to read from next time.
    pub cursor: TrustCursor,
}

/// What one accepted `Submit` changes, written all or none: if the node was told `Stored`, the
/// ledger change and the delivery to the other party both survive a crash.
#[derive(Debug, Clone, Copy, Default)]
pub struct Submission<'a> {
    /// The statement that now holds for its pair (replacing the pair's row).
    pub ledger: Option<&'a Statement>,
    /// An outbox item the new one supersedes (an older request from the same requester).
    pub replaces: Option<u64>,
    /// A new outbox item.
    pub deliver: Option<NewDelivery<'a>>,
}

/// An outbox item before the store gave it an id.
#[derive(Debug, Clone, Copy)]
pub struct NewDelivery<'a> {
    pub target: NodeKey,
    pub statement: &'a Statement,
    pub stored_ms: u64,
}

/// What a purge removes: everything older than these times (UNIX milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeBefore {
    /// Hostnames whose holder was last seen before this.
    pub names_ms: u64,
    /// Registrations last seen before this that hold no hostname (a holder's registration is
    /// kept while it holds one: its `last_seen_ms` is when the name expires).
    pub registrations_ms: u64,
    /// Outbox items stored before this.
    pub deliveries_ms: u64,
}

/// What a purge removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purged {
    /// Hostnames released because their holder was silent too long.
    pub names: Vec<Hostname>,
    /// Keys whose registration is gone.
    pub keys: Vec<NodeKey>,
    /// Outbox items removed for their age.
    pub deliveries: usize,
}

/// Why the store failed. Every variant says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the registry database {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error(
        "the registry database {path} is corrupt or not a database ({reason}); restore it from a \
         backup, or move it away to start with an empty registry (nodes re-register on their own \
         within one keepalive interval)"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "the registry database {path} is in use by another process — is another `pilotd \
         rendezvous` running with this data directory?"
    )]
    Locked { path: PathBuf },
    #[error("the registry database {path} was written by a newer pilotd (schema {version}); upgrade pilotd")]
    NewerSchema { path: PathBuf, version: i64 },
    #[error("writing the registry: {0}")]
    Write(String),
    #[error("reading the registry: {0}")]
    Read(String),
}

/// Where the server's state survives restarts. Every write must be durable (surviving a crash
/// of the process) by the time it returns `Ok`, and must change nothing when it fails.
pub trait Store: Send {
    /// Everything stored: registrations (expired or not) with their hostnames, the ledger and
    /// the outbox.
    fn load(&mut self) -> Result<Snapshot, StoreError>;
    /// Inserts or replaces these registrations (by key) and sets their hostnames, all or none,
    /// except those whose hostname the store files under another key seen at or after
    /// `held_since_ms` (a node registered at another server on the same store holds it):
    /// those are not written, and their keys are returned. A name filed under a key seen
    /// before then is a leftover, and the registration being written takes it.
    fn save(
        &mut self,
        records: &[Registration],
        held_since_ms: u64,
    ) -> Result<Vec<NodeKey>, StoreError>;
    /// Writes one accepted submission, all or none, with the id of the new outbox item. A
    /// store several servers share writes nothing when the ledger's row holds a statement
    /// that the submission's does not take effect over ([`takes_effect_over`]: another server
    /// stored a newer one): [`Submitted::Superseded`].
    fn submit(&mut self, submission: &Submission<'_>) -> Result<Submitted, StoreError>;
    /// Deletes the outbox item `id`: its target has it.
    fn delivered(&mut self, id: u64) -> Result<(), StoreError>;
    /// Deletes what is older than `before` says, all or none: first the hostnames of holders
    /// silent too long, then registrations that hold no hostname, then outbox items.
    fn purge(&mut self, before: PurgeBefore) -> Result<Purged, StoreError>;
    /// Frees the hostname `name` (the registration that held it stays); returns the key that
    /// held it, `None` when nobody did.
    fn release_name(&mut self, name: &Hostname) -> Result<Option<NodeKey>, StoreError>;
    /// Records that `me` is alive and returns every server sharing the store whose last beat
    /// is at most `within` old, `me` included. A store only one server can use (SQLite holds
    /// its lock) returns `me` alone, which is this default.
    fn heartbeat(&mut self, me: &Instance, within: Duration) -> Result<Vec<Instance>, StoreError> {
        let _ = within;
        Ok(vec![me.clone()])
    }
    /// A node the store knows that the server's memory may not (it registered at another
    /// server sharing the store): the holder of a name held since `held_since_ms`, or a
    /// registered key with its name. Lookups by address are answered from memory only. A store
    /// only one server can use has nothing memory lacks: this default finds nothing.
    fn look_up(&mut self, query: &Query, held_since_ms: u64) -> Result<Option<Found>, StoreError> {
        let _ = (query, held_since_ms);
        Ok(None)
    }
    /// The trust changes written since `since` by any server sharing the store (this one's
    /// own included), and the cursor to ask from next: nothing written may be skipped, though
    /// a change may be returned twice (the server takes what it holds already as known). A
    /// store only one server can use has no changes it did not make: this default returns
    /// none.
    fn trust_changes(&mut self, since: TrustCursor) -> Result<TrustChanges, StoreError> {
        Ok(TrustChanges {
            cursor: since,
            ..TrustChanges::default()
        })
    }
    /// Which server sharing the store writes its registrations: each one saved from now on is
    /// filed as that server's node (its home). Stores only one server can use ignore it.
    fn set_home(&mut self, server: NodeKey) {
        let _ = server;
    }
    /// The registration of `key`, if it was seen at or after `seen_since_ms`, with the server
    /// it registered with. Stores only one server can use know nothing memory does not:
    /// this default finds nothing.
    fn locate(&mut self, key: &NodeKey, seen_since_ms: u64) -> Result<Option<Located>, StoreError> {
        let _ = (key, seen_since_ms);
        Ok(None)
    }
}

/// A store in memory, for simulations and tests. Clones share their contents, so a test can
/// "restart" a server on the same store; [`MemoryStore::fail_writes`] simulates a full disk.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    contents: Arc<Mutex<Contents>>,
    failing: Arc<AtomicBool>,
    /// `save` calls that wrote (each is one transaction, one fsync, on SQLite).
    saves: Arc<std::sync::atomic::AtomicU64>,
    /// The server this handle saves for (each server's clone has its own).
    home: Option<NodeKey>,
}

#[derive(Debug, Default)]
struct Contents {
    records: BTreeMap<NodeKey, Registration>,
    names: BTreeMap<Hostname, NodeKey>,
    ledger: BTreeMap<(NodeKey, NodeKey), Statement>,
    outbox: BTreeMap<u64, OutboxItem>,
    /// Ids are never reused, as with SQLite's AUTOINCREMENT.
    last_id: u64,
    /// Counts trust writes; each ledger row and outbox item remembers the count that wrote it
    /// (the cursor of [`Store::trust_changes`]).
    writes: u64,
    ledger_written: BTreeMap<(NodeKey, NodeKey), u64>,
    outbox_written: BTreeMap<u64, u64>,
    /// The servers sharing this store, by key.
    instances: BTreeMap<NodeKey, Instance>,
    /// Which server last saved each registration.
    homes: BTreeMap<NodeKey, NodeKey>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// While true, every write fails and changes nothing.
    pub fn fail_writes(&self, fail: bool) {
        self.failing.store(fail, Ordering::Relaxed);
    }

    /// How many `save` calls wrote registrations.
    pub fn saves(&self) -> u64 {
        self.saves.load(Ordering::Relaxed)
    }

    /// A copy of what is stored for `key`.
    pub fn get(&self, key: &NodeKey) -> Option<Registration> {
        self.lock().records.get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().records.is_empty()
    }

    /// The key holding `name`.
    pub fn holder(&self, name: &Hostname) -> Option<NodeKey> {
        self.lock().names.get(name).copied()
    }

    /// The ledger's statement for the pair of `a` and `b`.
    pub fn statement(&self, a: &NodeKey, b: &NodeKey) -> Option<Statement> {
        let pair = if a < b { (*a, *b) } else { (*b, *a) };
        self.lock().ledger.get(&pair).cloned()
    }

    /// Outbox items, all targets together.
    pub fn outbox_len(&self) -> usize {
        self.lock().outbox.len()
    }

    /// The outbox items for `target`, oldest first.
    pub fn outbox(&self, target: &NodeKey) -> Vec<OutboxItem> {
        let contents = self.lock();
        let items = contents.outbox.values();
        items.filter(|i| i.target == *target).cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Contents> {
        // A panic while holding the lock leaves plain data behind, still usable.
        self.contents.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::Relaxed) {
            return Err(StoreError::Write("simulated write failure".into()));
        }
        Ok(())
    }
}

impl Store for MemoryStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let contents = self.lock();
        Ok(Snapshot {
            registrations: contents.records.values().cloned().collect(),
            ledger: contents.ledger.values().cloned().collect(),
            outbox: contents.outbox.values().cloned().collect(),
            cursor: TrustCursor(contents.writes + 1),
        })
    }

    fn save(
        &mut self,
        records: &[Registration],
        held_since_ms: u64,
    ) -> Result<Vec<NodeKey>, StoreError> {
        self.check_writable()?;
        self.saves.fetch_add(1, Ordering::Relaxed);
        let mut contents = self.lock();
        let mut taken = Vec::new();
        for r in records {
            let holder = r
                .hostname
                .as_ref()
                .and_then(|n| contents.names.get(n))
                .copied();
            let seen = holder
                .and_then(|k| contents.records.get(&k))
                .map(|h| h.last_seen_ms);
            if holder.is_some_and(|k| k != r.key) && seen.is_some_and(|ms| ms >= held_since_ms) {
                taken.push(r.key);
                continue;
            }
            contents.names.retain(|_, k| *k != r.key);
            if let Some(name) = &r.hostname {
                let previous = contents.names.insert(name.clone(), r.key);
                if let Some(other) = previous.and_then(|k| contents.records.get_mut(&k)) {
                    other.hostname = None;
                }
            }
            contents.records.insert(r.key, r.clone());
            if let Some(home) = self.home {
                contents.homes.insert(r.key, home);
            }
        }
        Ok(taken)
    }

    fn submit(&mut self, submission: &Submission<'_>) -> Result<Submitted, StoreError> {
        self.check_writable()?;
        let mut contents = self.lock();
        if let Some(statement) = submission.ledger {
            let held = contents.ledger.get(&statement.pair());
            if held.is_some_and(|held| !takes_effect_over(statement, held)) {
                return Ok(Submitted::Superseded);
            }
        }
        contents.writes += 1;
        let write = contents.writes;
        if let Some(statement) = submission.ledger {
            contents.ledger.insert(statement.pair(), statement.clone());
            contents.ledger_written.insert(statement.pair(), write);
        }
        if let Some(id) = submission.replaces {
            contents.outbox.remove(&id);
            contents.outbox_written.remove(&id);
        }
        let Some(new) = submission.deliver else {
            return Ok(Submitted::Written(None));
        };
        contents.last_id += 1;
        let id = contents.last_id;
        let item = OutboxItem {
            id,
            target: new.target,
            statement: new.statement.clone(),
            stored_ms: new.stored_ms,
        };
        contents.outbox.insert(id, item);
        contents.outbox_written.insert(id, write);
        Ok(Submitted::Written(Some(id)))
    }

    fn delivered(&mut self, id: u64) -> Result<(), StoreError> {
        self.check_writable()?;
        let mut contents = self.lock();
        contents.outbox.remove(&id);
        contents.outbox_written.remove(&id);
        Ok(())
    }

    fn purge(&mut self, before: PurgeBefore) -> Result<Purged, StoreError> {
        self.check_writable()?;
        let mut contents = self.lock();
        let mut purged = Purged::default();
        let Contents { records, names, .. } = &mut *contents;
        names.retain(|name, key| {
            let silent = records
                .get(key)
                .is_none_or(|r| r.last_seen_ms < before.names_ms);
            if silent {
                purged.names.push(name.clone());
                if let Some(r) = records.get_mut(key) {
                    r.hostname = None;
                }
            }
            !silent
        });
        records.retain(|key, r| {
            let keep = r.hostname.is_some() || r.last_seen_ms >= before.registrations_ms;
            if !keep {
                purged.keys.push(*key);
            }
            keep
        });
        let before_len = contents.outbox.len();
        let Contents {
            outbox,
            outbox_written,
            ..
        } = &mut *contents;
        outbox.retain(|_, item| item.stored_ms >= before.deliveries_ms);
        outbox_written.retain(|id, _| outbox.contains_key(id));
        purged.deliveries = before_len - contents.outbox.len();
        Ok(purged)
    }

    fn release_name(&mut self, name: &Hostname) -> Result<Option<NodeKey>, StoreError> {
        self.check_writable()?;
        let mut contents = self.lock();
        let Some(key) = contents.names.remove(name) else {
            return Ok(None);
        };
        if let Some(r) = contents.records.get_mut(&key) {
            r.hostname = None;
        }
        Ok(Some(key))
    }

    fn look_up(&mut self, query: &Query, held_since_ms: u64) -> Result<Option<Found>, StoreError> {
        self.check_writable()?; // a store that fails, fails reads too
        let contents = self.lock();
        let key = match query {
            Query::Name(name) => contents.names.get(name).copied().filter(|k| {
                let seen = contents.records.get(k).map(|r| r.last_seen_ms);
                seen.is_some_and(|ms| ms >= held_since_ms)
            }),
            Query::Key(key) => contents.records.contains_key(key).then_some(*key),
            Query::Address(_) => None,
        };
        Ok(key.map(|key| Found {
            key,
            hostname: contents.records.get(&key).and_then(|r| r.hostname.clone()),
        }))
    }

    fn set_home(&mut self, server: NodeKey) {
        self.home = Some(server);
    }

    fn locate(&mut self, key: &NodeKey, seen_since_ms: u64) -> Result<Option<Located>, StoreError> {
        self.check_writable()?; // a store that fails, fails reads too
        let contents = self.lock();
        let Some(registration) = contents.records.get(key) else {
            return Ok(None);
        };
        let home = contents.homes.get(key).copied();
        Ok(home
            .filter(|_| registration.last_seen_ms >= seen_since_ms)
            .map(|home| Located {
                registration: registration.clone(),
                home,
            }))
    }

    fn trust_changes(&mut self, since: TrustCursor) -> Result<TrustChanges, StoreError> {
        self.check_writable()?; // a store that fails, fails reads too
        let contents = self.lock();
        let TrustCursor(since) = since;
        let ledger = (contents.ledger_written.iter())
            .filter(|(_, write)| **write >= since)
            .filter_map(|(pair, _)| contents.ledger.get(pair).cloned())
            .collect();
        let outbox = (contents.outbox_written.iter())
            .filter(|(_, write)| **write >= since)
            .filter_map(|(id, _)| contents.outbox.get(id).cloned())
            .collect();
        Ok(TrustChanges {
            ledger,
            outbox,
            cursor: TrustCursor(contents.writes + 1),
        })
    }

    /// Beats are dated by the beating server's clock (a simulation's servers share one).
    fn heartbeat(&mut self, me: &Instance, within: Duration) -> Result<Vec<Instance>, StoreError> {
        self.check_writable()?;
        let mut contents = self.lock();
        contents.instances.insert(me.key, me.clone());
        let since = me.beat_ms.saturating_sub(within.as_millis() as u64);
        Ok(contents
            .instances
            .values()
            .filter(|i| i.beat_ms >= since)
            .cloned()
            .collect())
    }
}
