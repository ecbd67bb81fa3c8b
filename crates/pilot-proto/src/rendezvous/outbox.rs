//! Trust statements on their way to a node: delivered with `Deliver` until the node answers
//! `Ack`, however often it comes and goes.
//!
//! Every item is in the store before it is in memory, and leaves memory only once its
//! deletion (on `Ack`, or at the end of its lifetime) is in the store, so a restart neither
//! loses nor resurrects one. A node gets its items:
//!
//! - at once, when one is stored while the node is registered and fresh;
//! - when it registers (a node that was away catches up at once), and right after a restart
//!   of the rendezvous if it is still registered, at most [`DELIVERY_ROUND`] at a time,
//!   oldest first;
//! - again every [`RESEND_INTERVAL`] while any is unacknowledged and the node is fresh
//!   (a lost `Deliver` or `Ack` costs seconds, not a keepalive).
//!
//! Rounds are scheduled per node, not per item, so a node with many items costs one timer.
//! A `Register` starts them only when they are not running: `Register` is not rate-limited
//! and its source address is not proven (UDP), so a round per `Register` would let anyone who
//! can spoof a source address turn a small datagram into a round of deliveries aimed at
//! somebody else. Running rounds reach a node within [`RESEND_INTERVAL`], at its new endpoint
//! if it moved.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::control::Request;
use super::sources::Source;
use super::store::OutboxItem;
use super::writes::{Pending, StoreOp, Written};
use super::{streams, Server, StoreError};
use crate::identity::NodeKey;
use crate::wire::control::Message;
use crate::wire::trust::Statement;

/// Outbox ids from here up are items held in memory only: a node's ledger sent back to it
/// because its registration's digest differed from ours. Not stored, because the ledger they
/// come from is: after a restart the next registration finds the difference again. (No
/// store row has such an id: SQLite's are at most `i64::MAX`.)
pub const EPHEMERAL_IDS: u64 = 1 << 63;
/// Most `Deliver`s sent to one node per round.
pub const DELIVERY_ROUND: usize = 32;
/// How long an unacknowledged delivery waits before it is sent again.
pub const RESEND_INTERVAL: Duration = Duration::from_secs(2);

/// One statement for one node.
#[derive(Debug, Clone)]
pub(super) struct Item {
    pub target: NodeKey,
    pub statement: Statement,
    pub stored_ms: u64,
    /// For a request or an approval (which anyone may send to anyone), where its sender
    /// submitted it from: these share the outbox's global cap by source (see
    /// [`Outbox::largest_share`]). None for ledger statements, which the ledger bounds.
    pub source: Option<Source>,
}

impl Item {
    /// The item a stored row holds (at start, or written by another server), `None` if its
    /// target is no party to its statement. A request's or approval's source is taken to be
    /// where its sender registered from (`sender_ip`), as that is not stored.
    pub fn from_stored(
        stored: OutboxItem,
        sender_ip: impl FnOnce(&NodeKey) -> Option<IpAddr>,
    ) -> Option<Item> {
        let (low, high) = stored.statement.pair();
        if stored.target != low && stored.target != high {
            return None;
        }
        let sender = if stored.target == low { high } else { low };
        let open = match &stored.statement {
            Statement::Request(_) => true,
            Statement::Record(r) => !r.is_complete(),
            Statement::Revocation(_) => false,
        };
        let source = open.then(|| sender_ip(&sender).map_or(Source::Unknown, Source::of));
        Some(Item {
            target: stored.target,
            statement: stored.statement,
            stored_ms: stored.stored_ms,
            source,
        })
    }
}

#[derive(Debug, Default)]
pub(super) struct Outbox {
    items: BTreeMap<u64, Item>,
    /// Each node's item ids; ids grow, so iteration is oldest first.
    by_target: BTreeMap<NodeKey, BTreeSet<u64>>,
    /// When each node's next round is due, and the same ordered by time.
    rounds: BTreeMap<NodeKey, Instant>,
    due: BTreeSet<(Instant, NodeKey)>,
    /// Requests and approvals by the source they came from, oldest first, and the sources
    /// ordered by how many they hold.
    by_source: BTreeMap<Source, BTreeSet<u64>>,
    shares: BTreeSet<(usize, Source)>,
    /// Requests and approvals waiting, all sources together.
    open: usize,
}

impl Outbox {
    pub fn insert(&mut self, id: u64, item: Item) {
        self.by_target.entry(item.target).or_default().insert(id);
        if let Some(source) = item.source {
            let ids = self.by_source.entry(source).or_default();
            self.shares.remove(&(ids.len(), source));
            ids.insert(id);
            self.shares.insert((ids.len(), source));
            self.open += 1;
        }
        if let Some(old) = self.items.insert(id, item) {
            // Ids are never reused; if one were, the old item's accounting goes with it.
            self.forget_source(id, &old);
        }
    }

    pub fn get(&self, id: u64) -> Option<&Item> {
        self.items.get(&id)
    }

    /// Removes an item; a node left without items has no more rounds.
    pub fn remove(&mut self, id: u64) -> Option<Item> {
        let item = self.items.remove(&id)?;
        self.forget_source(id, &item);
        if let Some(ids) = self.by_target.get_mut(&item.target) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_target.remove(&item.target);
                self.unschedule(&item.target);
            }
        }
        Some(item)
    }

    fn forget_source(&mut self, id: u64, item: &Item) {
        let Some(source) = item.source else { return };
        let Some(ids) = self.by_source.get_mut(&source) else {
            return;
        };
        if !ids.remove(&id) {
            return;
        }
        self.shares.remove(&(ids.len() + 1, source));
        self.open -= 1;
        if ids.is_empty() {
            self.by_source.remove(&source);
        } else {
            self.shares.insert((ids.len(), source));
        }
    }

    /// Requests and approvals waiting (what [`Config::max_outbox`] caps).
    ///
    /// [`Config::max_outbox`]: super::Config::max_outbox
    pub fn open(&self) -> usize {
        self.open
    }

    /// How many requests and approvals from `source` are waiting.
    pub fn share(&self, source: Source) -> usize {
        self.by_source.get(&source).map_or(0, BTreeSet::len)
    }

    /// The source with the most requests and approvals waiting, its count, and its oldest.
    pub fn largest_share(&self) -> Option<(Source, usize, u64)> {
        let &(count, source) = self.shares.last()?;
        let oldest = *self.by_source.get(&source)?.first()?;
        Some((source, count, oldest))
    }

    /// `target`'s items, oldest first.
    pub fn of<'a>(&'a self, target: &NodeKey) -> impl Iterator<Item = (u64, &'a Item)> + 'a {
        let ids = self.by_target.get(target).into_iter().flatten();
        ids.filter_map(|id| Some((*id, self.items.get(id)?)))
    }

    /// Items waiting, for every target.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The most items any one node has waiting.
    pub fn largest(&self) -> usize {
        self.by_target
            .values()
            .map(BTreeSet::len)
            .max()
            .unwrap_or(0)
    }

    /// Nodes with items.
    pub fn targets(&self) -> impl Iterator<Item = NodeKey> + '_ {
        self.by_target.keys().copied()
    }

    /// Sets `target`'s next round to `at`.
    pub fn schedule(&mut self, target: NodeKey, at: Instant) {
        self.unschedule(&target);
        self.rounds.insert(target, at);
        self.due.insert((at, target));
    }

    pub fn is_scheduled(&self, target: &NodeKey) -> bool {
        self.rounds.contains_key(target)
    }

    pub fn unschedule(&mut self, target: &NodeKey) {
        if let Some(at) = self.rounds.remove(target) {
            self.due.remove(&(at, *target));
        }
    }

    pub fn next_round(&self) -> Option<Instant> {
        self.due.first().map(|(at, _)| *at)
    }

    /// A node whose round is due at `now`, taken off the schedule.
    pub fn take_due(&mut self, now: Instant) -> Option<NodeKey> {
        let &(at, target) = self.due.first().filter(|(at, _)| *at <= now)?;
        self.due.remove(&(at, target));
        self.rounds.remove(&target);
        Some(target)
    }

    /// Forgets items stored before `stored_before_ms` (already purged from the store).
    pub fn purge(&mut self, stored_before_ms: u64) {
        let old: Vec<u64> = self
            .items
            .iter()
            .filter(|(_, item)| item.stored_ms < stored_before_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            self.remove(id);
        }
    }
}

impl Server {
    /// Sends `target` its oldest items now if it is fresh, and schedules the next round;
    /// a node that is gone or has nothing waiting gets no more rounds until it registers.
    pub(super) fn delivery_round(&mut self, target: NodeKey, now: Instant) {
        let Some(entry) = self.registry.fresh(&target, now) else {
            self.outbox.unschedule(&target);
            return;
        };
        let (src_ip, to) = (entry.local_ip, entry.observed);
        let ids: Vec<u64> = self
            .outbox
            .of(&target)
            .take(DELIVERY_ROUND)
            .map(|(id, _)| id)
            .collect();
        if ids.is_empty() {
            return;
        }
        for id in ids {
            self.send_delivery(id, src_ip, to, now);
        }
        self.outbox.schedule(target, now + RESEND_INTERVAL);
    }

    /// Sends a just-stored item at once if its target is fresh, rather than at its next round,
    /// and starts the target's rounds if none are running.
    pub(super) fn deliver_new(&mut self, id: u64, now: Instant) {
        let Some(target) = self.outbox.get(id).map(|i| i.target) else {
            return;
        };
        let Some(entry) = self.registry.fresh(&target, now) else {
            return;
        };
        let (src_ip, to) = (entry.local_ip, entry.observed);
        self.send_delivery(id, src_ip, to, now);
        if !self.outbox.is_scheduled(&target) {
            self.outbox.schedule(target, now + RESEND_INTERVAL);
        }
    }

    /// After a `Register` of `target`: a round now, unless its rounds are running already.
    pub(super) fn start_deliveries(&mut self, target: NodeKey, now: Instant) {
        if !self.outbox.is_scheduled(&target) {
            self.delivery_round(target, now);
        }
    }

    /// Runs every round due at `now`.
    pub(super) fn run_deliveries(&mut self, now: Instant) {
        while let Some(target) = self.outbox.take_due(now) {
            self.delivery_round(target, now);
        }
    }

    /// Handles `Ack`: the target has stored the item, so it is deleted (from the store first;
    /// if that fails the item stays and is delivered, and acknowledged, again). Acks for ids
    /// that are unknown or belong to another node are ignored.
    pub(super) fn ack(&mut self, req: Request, id: u64) {
        if self.outbox.get(id).is_none_or(|i| i.target != req.sender) {
            tracing::trace!(node = %req.sender, id, "ack for no delivery of this node");
            return;
        }
        // Items sent back from the ledger live in memory only: nothing to delete.
        if id >= EPHEMERAL_IDS {
            return self.acked(req.sender, id, Ok(()));
        }
        match self.write(StoreOp::Delivered(id)) {
            Written::Now(result) => self.acked(req.sender, id, result.map(drop)),
            // Until the delete is written the item stays (a resend meanwhile is harmless).
            Written::Queued(ticket) => self.wait_for(
                ticket,
                Pending::Ack {
                    node: req.sender,
                    id,
                },
            ),
        }
    }

    /// The delete of an acknowledged item is written (or not: the item stays, and is
    /// delivered and acknowledged again).
    pub(super) fn acked(&mut self, node: NodeKey, id: u64, result: Result<(), StoreError>) {
        if let Err(e) = result {
            self.store_error(&e);
            return;
        }
        if id < EPHEMERAL_IDS {
            self.store_ok();
        }
        // Counted once, though a resend while the delete was written may bring a second ack.
        if self.outbox.remove(id).is_some() {
            self.counters.acks += 1;
            tracing::debug!(%node, id, "delivery acknowledged");
        }
    }

    fn send_delivery(&mut self, id: u64, src_ip: Option<IpAddr>, to: SocketAddr, now: Instant) {
        let Some(item) = self.outbox.get(id) else {
            return;
        };
        // Named after the party that is not the target: who asks, approves or revokes.
        let (low, high) = item.statement.pair();
        let other = if low == item.target { high } else { low };
        let message = Message::Deliver {
            id,
            from_name: self.directory.name_of(&other).cloned(),
            statement: item.statement.clone(),
        };
        self.queue(streams::port_of(&to), src_ip, to, &message, now);
        self.counters.deliveries += 1;
    }
}
