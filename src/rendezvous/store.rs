//! Durable storage of registrations, behind a small trait so the sans-IO [`Server`] runs on
//! SQLite in the daemon and on a [`MemoryStore`] in simulations.
//!
//! [`Server`]: super::Server

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::identity::NodeKey;
use crate::wire::control::NatKind;

/// A registration as the rendezvous keeps it: wall-clock times (UNIX milliseconds), because
/// `Instant`s mean nothing to the next process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub key: NodeKey,
    /// The public endpoint the main port last saw the node's socket at.
    pub observed: SocketAddr,
    /// The node's own (LAN) endpoints, as it reported them.
    pub lan: Vec<SocketAddr>,
    /// Keys the node accepts introductions and relayed traffic from.
    pub allow: Vec<NodeKey>,
    pub nat: NatKind,
    pub first_seen_ms: u64,
    /// Time of the last `Register`: the node expires when this gets too old.
    pub last_seen_ms: u64,
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

/// Where registrations survive restarts. Implementations must have made a `save` durable
/// (surviving a crash of the process) by the time it returns `Ok`.
pub trait Store: Send {
    /// Every stored registration, expired or not.
    fn load(&mut self) -> Result<Vec<Registration>, StoreError>;
    /// Inserts or replaces these registrations (by key), all or none.
    fn save(&mut self, records: &[Registration]) -> Result<(), StoreError>;
    /// Deletes registrations last seen before `last_seen_before_ms`; returns how many.
    fn purge(&mut self, last_seen_before_ms: u64) -> Result<usize, StoreError>;
}

/// A store in memory, for simulations and tests. Clones share their contents, so a test can
/// "restart" a server on the same store; [`MemoryStore::fail_writes`] simulates a full disk.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    records: Arc<Mutex<BTreeMap<NodeKey, Registration>>>,
    failing: Arc<AtomicBool>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// While true, `save` and `purge` fail and change nothing.
    pub fn fail_writes(&self, fail: bool) {
        self.failing.store(fail, Ordering::Relaxed);
    }

    /// A copy of what is stored for `key`.
    pub fn get(&self, key: &NodeKey) -> Option<Registration> {
        self.lock().get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeKey, Registration>> {
        // A panic while holding the lock leaves plain data behind, still usable.
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::Relaxed) {
            return Err(StoreError::Write("simulated write failure".into()));
        }
        Ok(())
    }
}

impl Store for MemoryStore {
    fn load(&mut self) -> Result<Vec<Registration>, StoreError> {
        Ok(self.lock().values().cloned().collect())
    }

    fn save(&mut self, records: &[Registration]) -> Result<(), StoreError> {
        self.check_writable()?;
        let mut map = self.lock();
        for r in records {
            map.insert(r.key, r.clone());
        }
        Ok(())
    }

    fn purge(&mut self, last_seen_before_ms: u64) -> Result<usize, StoreError> {
        self.check_writable()?;
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, r| r.last_seen_ms >= last_seen_before_ms);
        Ok(before - map.len())
    }
}
