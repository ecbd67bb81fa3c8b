//! The server's writes to its store, done at once or queued for the daemon.
//!
//! A server made with [`Server::new`] owns its store and each write runs inside the call that
//! needs it: simulations, tests and fuzzers see every effect at once. A server made with
//! [`Server::with_queued_store`] never waits for a store: each write becomes a [`StoreOp`] the
//! daemon takes with [`Server::poll_store`], runs in order on a thread or task of its own
//! ([`StoreOp::run`]), and hands back with [`Server::handle_store`]. What depends on a write
//! waits in the server, not in the caller: a `Registered`, `Stored` or `NameReleased` answer
//! leaves (through [`Server::poll_transmit`]) only once its write succeeded, so an
//! acknowledgement still means "durable". Both ways run the same code after the write
//! (`committed`, `flushed`, `submitted`, …), so every scenario the simulation proves holds for
//! the daemon's way too, only later.
//!
//! Writes run in the order they were asked for, so the store goes through the same states as
//! with a store owned by the server. A name claimed by a registration that is being written
//! counts as taken (`Server::claimed_name`), and a node whose lazy changes are being written
//! counts as dirty (`Server::is_dirty`), so nothing is acknowledged on the strength of a write
//! that has not happened yet.

use std::collections::VecDeque;

use super::control::Request;
use super::control::Uncommitted;
use super::statements::SubmitWaiting;
use super::store::{
    Instance, Located, NewDelivery, PurgeBefore, Purged, Registration, Store, StoreError,
    Submission, Submitted, TrustChanges, TrustCursor,
};
use super::Server;
use crate::addr::Hostname;
use crate::identity::NodeKey;
use crate::wire::control::{Found, Query};
use crate::wire::trust::Statement;
use std::time::{Duration, Instant};

/// One write the server asks of its store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// [`Store::save`]: the registrations, and since when a name's holder counts as holding
    /// it (UNIX ms).
    Save(Vec<Registration>, u64),
    /// [`Store::submit`].
    Submit(Box<OwnedSubmission>),
    /// [`Store::delivered`].
    Delivered(u64),
    /// [`Store::purge`].
    Purge(PurgeBefore),
    /// [`Store::release_name`].
    ReleaseName(Hostname),
    /// [`Store::heartbeat`]: this server, and how old a beat may be to count as alive.
    Heartbeat(Instance, Duration),
    /// [`Store::look_up`] (a read, for what another server registered).
    LookUp(Query, u64),
    /// [`Store::trust_changes`] (a read, for what another server stored).
    TrustChanges(TrustCursor),
    /// [`Store::locate`] (a read): a node, if seen since (UNIX ms).
    Locate(NodeKey, u64),
}

/// A [`Submission`] that owns its statements (it crosses to the store's thread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedSubmission {
    pub ledger: Option<Statement>,
    pub replaces: Option<u64>,
    /// Target, statement, stored at (UNIX ms).
    pub deliver: Option<(NodeKey, Statement, u64)>,
}

/// What a [`StoreOp`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreDone {
    /// The keys not written because their hostname is held by another key.
    Saved(Vec<NodeKey>),
    /// Written (with the new outbox item's id, if one was made), or superseded.
    Submitted(Submitted),
    Deleted,
    Purged(Purged),
    /// The key that held the name, if any.
    Released(Option<NodeKey>),
    /// The servers alive on the store.
    Beat(Vec<Instance>),
    /// What a lookup found.
    Found(Option<Found>),
    /// The trust changes since the cursor asked from.
    TrustChanges(TrustChanges),
    /// Where a node registered, if anywhere.
    Located(Option<Located>),
}

impl StoreOp {
    /// The operations' names, in the order of [`StoreOp::index`] (for metrics).
    pub const NAMES: [&'static str; 9] = [
        "save",
        "submit",
        "delivered",
        "purge",
        "release_name",
        "heartbeat",
        "look_up",
        "trust_changes",
        "locate",
    ];

    /// This operation's place in [`StoreOp::NAMES`].
    pub fn index(&self) -> usize {
        match self {
            StoreOp::Save(..) => 0,
            StoreOp::Submit(_) => 1,
            StoreOp::Delivered(_) => 2,
            StoreOp::Purge(_) => 3,
            StoreOp::ReleaseName(_) => 4,
            StoreOp::Heartbeat(..) => 5,
            StoreOp::LookUp(..) => 6,
            StoreOp::TrustChanges(_) => 7,
            StoreOp::Locate(..) => 8,
        }
    }

    /// Runs the write on `store`.
    pub fn run(&self, store: &mut dyn Store) -> Result<StoreDone, StoreError> {
        match self {
            StoreOp::Save(records, held_since_ms) => {
                store.save(records, *held_since_ms).map(StoreDone::Saved)
            }
            StoreOp::Submit(s) => {
                let deliver =
                    s.deliver
                        .as_ref()
                        .map(|(target, statement, stored_ms)| NewDelivery {
                            target: *target,
                            statement,
                            stored_ms: *stored_ms,
                        });
                let submission = Submission {
                    ledger: s.ledger.as_ref(),
                    replaces: s.replaces,
                    deliver,
                };
                store.submit(&submission).map(StoreDone::Submitted)
            }
            StoreOp::Delivered(id) => store.delivered(*id).map(|()| StoreDone::Deleted),
            StoreOp::Purge(before) => store.purge(*before).map(StoreDone::Purged),
            StoreOp::ReleaseName(name) => store.release_name(name).map(StoreDone::Released),
            StoreOp::Heartbeat(me, within) => store.heartbeat(me, *within).map(StoreDone::Beat),
            StoreOp::LookUp(query, held_since_ms) => {
                store.look_up(query, *held_since_ms).map(StoreDone::Found)
            }
            StoreOp::TrustChanges(since) => {
                store.trust_changes(*since).map(StoreDone::TrustChanges)
            }
            StoreOp::Locate(key, seen_since_ms) => {
                store.locate(key, *seen_since_ms).map(StoreDone::Located)
            }
        }
    }

    /// How many registrations a save writes (0 for other writes), for the daemon's metrics.
    pub fn registrations(&self) -> usize {
        match self {
            StoreOp::Save(records, _) => records.len(),
            _ => 0,
        }
    }
}

/// Where the server's writes go.
pub(super) enum Backend {
    /// Its own store: each write runs at once.
    Inline(Box<dyn Store>),
    /// Writes wait here for the daemon (with their tickets).
    Queued(VecDeque<(u64, StoreOp)>),
}

/// What waits for a queued write.
pub(super) enum Pending {
    /// Registrations to put in effect and answer.
    Commit(Vec<Uncommitted>),
    /// Nodes whose lazy changes are being written.
    Flush(Vec<NodeKey>),
    /// A statement to put in effect and answer.
    Submit(Box<SubmitWaiting>),
    /// A node's own `ReleaseName`, to answer.
    NameRelease { req: Request, name: Hostname },
    /// A purge, whose result trims memory too.
    Purge(PurgeBefore),
    /// An acknowledged delivery, removed from memory once its delete is written.
    Ack { node: NodeKey, id: u64 },
    /// A heartbeat, whose answer is who else is alive.
    Heartbeat,
    /// A lookup memory could not answer, to answer from the store.
    LookUp { req: Request },
    /// A read of the trust changes other servers made.
    TrustChanges,
    /// A `Connect` to a node this server does not hold, to answer once the store says
    /// where it registered.
    Connect { req: Request, target: NodeKey },
    /// Where a node relayed to registered (not here).
    Locate { node: NodeKey },
    /// Nothing but the outcome's count (an eviction, a superseded item, an expired name).
    Quiet,
}

/// A write's fate for the code that asked for it.
pub(super) enum Written {
    /// Done already (a server that owns its store).
    Now(Result<StoreDone, StoreError>),
    /// Queued under this ticket: the caller files what waits for it as a [`Pending`].
    Queued(u64),
}

impl Server {
    /// Runs `op` at once or queues it (see the module doc). A queue already holding
    /// [`Config::max_pending_writes`] fails it at once: a store that stopped answering costs
    /// refused writes (nodes retry), never unbounded memory.
    ///
    /// [`Config::max_pending_writes`]: super::Config::max_pending_writes
    pub(super) fn write(&mut self, op: StoreOp) -> Written {
        match &mut self.backend {
            Backend::Inline(store) => Written::Now(op.run(store.as_mut())),
            Backend::Queued(_) if self.pending.len() >= self.config.max_pending_writes => {
                Written::Now(Err(StoreError::Write(format!(
                    "{} writes are waiting for the store already",
                    self.config.max_pending_writes
                ))))
            }
            Backend::Queued(ops) => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                ops.push_back((ticket, op));
                Written::Queued(ticket)
            }
        }
    }

    /// Files what waits for the write under `ticket`.
    pub(super) fn wait_for(&mut self, ticket: u64, pending: Pending) {
        self.pending.insert(ticket, pending);
    }

    /// A write nothing waits for, beyond its outcome being counted. Returns the error of a
    /// write done at once, so a caller that would act on success can refrain.
    pub(super) fn write_quietly(&mut self, op: StoreOp) -> Result<(), StoreError> {
        match self.write(op) {
            Written::Now(Ok(_)) => {
                self.store_ok();
                Ok(())
            }
            Written::Now(Err(e)) => {
                self.store_error(&e);
                Err(e)
            }
            Written::Queued(ticket) => {
                self.wait_for(ticket, Pending::Quiet);
                Ok(())
            }
        }
    }

    /// The next write for the daemon to run, in order, with its ticket (a server that owns its
    /// store has none).
    pub fn poll_store(&mut self) -> Option<(u64, StoreOp)> {
        match &mut self.backend {
            Backend::Queued(ops) => ops.pop_front(),
            Backend::Inline(_) => None,
        }
    }

    /// Writes asked for and not yet answered by [`Server::handle_store`] (the daemon waits for
    /// none before it exits).
    pub fn store_pending(&self) -> usize {
        self.pending.len()
    }

    /// The outcome of the write under `ticket`: puts in effect, and answers, what waited for
    /// it. Answers wait in [`Server::poll_transmit`].
    pub fn handle_store(
        &mut self,
        ticket: u64,
        result: Result<StoreDone, StoreError>,
        now: Instant,
    ) {
        let Some(pending) = self.pending.remove(&ticket) else {
            tracing::debug!(ticket, "store result for no write");
            return;
        };
        match pending {
            Pending::Commit(waiting) => {
                self.committed(waiting, saved(result), now);
            }
            Pending::Flush(keys) => {
                let _ = self.flushed(keys, saved(result), now);
            }
            Pending::Submit(waiting) => {
                let req = waiting.req;
                let id = submitted_of(result);
                // The answer goes ahead of the deliveries it sets off, as a direct answer
                // would.
                let mark = self.queued.len();
                if let Some(reply) = self.submitted(*waiting, id, now) {
                    self.queue_reply(req, &reply, now);
                    if let Some(answer) = self.queued.pop_back() {
                        self.queued.insert(mark, answer);
                    }
                }
                self.resume_submits(now);
            }
            Pending::NameRelease { req, name } => {
                if let Some(reply) = self.name_released(req, name, result.map(drop)) {
                    self.queue_reply(req, &reply, now);
                }
            }
            Pending::Purge(before) => self.purged(before, purged_of(result)),
            Pending::Ack { node, id } => self.acked(node, id, result.map(drop)),
            Pending::Heartbeat => self.beaten(alive_of(result)),
            Pending::LookUp { req } => {
                if let Some(reply) = self.looked_up(req, found_of(result)) {
                    self.queue_reply(req, &reply, now);
                }
            }
            Pending::TrustChanges => self.trust_changed(changes_of(result), now),
            Pending::Locate { node } => self.located_for_relay(node, located_of(result), now),
            Pending::Connect { req, target } => {
                if let Some(reply) = self.located(req, target, located_of(result), now) {
                    self.queue_reply(req, &reply, now);
                }
            }
            Pending::Quiet => match result {
                Ok(_) => self.store_ok(),
                Err(e) => self.store_error(&e),
            },
        }
    }

    /// The key holding `name` or claiming it in a registration not yet in effect (waiting for
    /// `commit`, or being written), else none.
    pub(super) fn claimed_name(&self, name: &Hostname) -> Option<NodeKey> {
        let waiting = self.uncommitted.iter().rev();
        let writing = self.pending.values().rev().flat_map(|p| {
            let waiting: &[Uncommitted] = match p {
                Pending::Commit(waiting) => waiting,
                _ => &[],
            };
            waiting.iter().rev()
        });
        waiting
            .chain(writing)
            .find(|p| p.record.hostname.as_ref() == Some(name))
            .map(|p| p.record.key)
            .or_else(|| self.directory.holder(name))
    }

    /// Whether `key`'s in-memory state is ahead of what the store has acknowledged.
    pub(super) fn is_dirty(&self, key: &NodeKey) -> bool {
        self.dirty.contains(key) || self.flushing.contains(key)
    }
}

fn mismatch(done: &StoreDone) -> StoreError {
    StoreError::Write(format!("the store answered another write ({done:?})"))
}

/// A save's outcome: the keys not written because another key holds their hostname.
pub(super) fn saved(result: Result<StoreDone, StoreError>) -> Result<Vec<NodeKey>, StoreError> {
    result.and_then(|done| match done {
        StoreDone::Saved(taken) => Ok(taken),
        other => Err(mismatch(&other)),
    })
}

/// A submit's outcome.
pub(super) fn submitted_of(result: Result<StoreDone, StoreError>) -> Result<Submitted, StoreError> {
    result.and_then(|done| match done {
        StoreDone::Submitted(id) => Ok(id),
        other => Err(mismatch(&other)),
    })
}

/// A heartbeat's outcome: the servers alive on the store.
pub(super) fn alive_of(result: Result<StoreDone, StoreError>) -> Result<Vec<Instance>, StoreError> {
    result.and_then(|done| match done {
        StoreDone::Beat(alive) => Ok(alive),
        other => Err(mismatch(&other)),
    })
}

/// A lookup's outcome.
pub(super) fn found_of(result: Result<StoreDone, StoreError>) -> Result<Option<Found>, StoreError> {
    result.and_then(|done| match done {
        StoreDone::Found(found) => Ok(found),
        other => Err(mismatch(&other)),
    })
}

/// A locate's outcome.
pub(super) fn located_of(
    result: Result<StoreDone, StoreError>,
) -> Result<Option<Located>, StoreError> {
    result.and_then(|done| match done {
        StoreDone::Located(located) => Ok(located),
        other => Err(mismatch(&other)),
    })
}

/// A read of the trust changes' outcome.
pub(super) fn changes_of(
    result: Result<StoreDone, StoreError>,
) -> Result<TrustChanges, StoreError> {
    result.and_then(|done| match done {
        StoreDone::TrustChanges(changes) => Ok(changes),
        other => Err(mismatch(&other)),
    })
}

/// A purge's outcome.
pub(super) fn purged_of(result: Result<StoreDone, StoreError>) -> Result<Purged, StoreError> {
    result.and_then(|done| match done {
        StoreDone::Purged(purged) => Ok(purged),
        other => Err(mismatch(&other)),
    })
}
