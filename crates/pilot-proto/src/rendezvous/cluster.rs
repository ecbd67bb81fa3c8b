//! What a server learns from the others sharing its store (several rendezvous instances on one
//! PostgreSQL database): who is alive (heartbeats), and the trust statements the others took.
//!
//! Each server keeps the ledger and the outbox in memory, as the one that took a statement
//! left them. The others learn it from the store: every [`TRUST_READ_INTERVAL`] a server reads
//! the ledger rows and outbox items written since its [`TrustCursor`] (its own included, which
//! it knows already) and takes them in as it took in its snapshot at start. So a trust request
//! submitted at one instance reaches its target at another within about a second, and
//! `Connect` and the relay at every instance follow the ledger. A store only one server can
//! use has no changes to read ([`Config::heartbeat`] is `None`), and the server never asks.
//!
//! [`Config::heartbeat`]: super::Config::heartbeat

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::control::{punch_nat_of, Request};
use super::outbox::Item;
use super::registry::{candidates, candidates_of};
use super::statements::{kind_of, takes_effect, Kind};
use super::store::{Instance, Located, OutboxItem, StoreError, TrustChanges};
use super::writes::{self, Pending, StoreOp, Written};
use super::{streams, Port, Refusal, Server, Transmit};
use crate::identity::NodeKey;
use crate::wire::control::{Message, NatKind, RefusalCode};
use crate::wire::trust::Statement;

/// How often a server sharing its store reads the trust changes the others made.
pub const TRUST_READ_INTERVAL: Duration = Duration::from_secs(1);

/// How long a server remembers which other server a node is registered with (learnt from the
/// store or from that server's `Introduce`) before it asks the store again: a node that moved
/// to a third server is relayed to there within this.
pub const HOME_TTL: Duration = Duration::from_secs(5);

/// How long a server remembers that a node is registered at no other server (so frames
/// relayed to a node that is offline cost a store read this often, not one each).
const NOWHERE_TTL: Duration = Duration::from_secs(2);

/// Most reads of where a node registered waiting at once for relayed frames.
const MAX_LOCATING: usize = 1024;

/// How long an `Introduce` for a pair this server's ledger does not trust yet waits for the
/// trust changes (the record may be one the other server took a moment ago).
const INTRODUCTION_WAIT: Duration = Duration::from_secs(2);
/// Most such introductions waiting at once.
const MAX_WAITING_INTRODUCTIONS: usize = 256;
/// How soon the trust changes are read again while introductions wait for them.
const REREAD: Duration = Duration::from_millis(100);

/// An `Introduce` waiting for this server's ledger to learn the pair's record.
#[derive(Debug)]
pub(super) struct WaitingIntroduction {
    server: NodeKey,
    node: NodeKey,
    peer: NodeKey,
    node_nat: NatKind,
    candidates: Vec<SocketAddr>,
    since: Instant,
}

/// Most nodes registered elsewhere whose home a server remembers; the oldest go first.
const MAX_HOMES: usize = 65_536;

impl Server {
    /// This server as the others sharing its store see it.
    pub(super) fn instance(&self, now: Instant) -> Instance {
        let ip = (self.config.listen).unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        Instance {
            key: self.key,
            main: SocketAddr::new(ip, self.config.main_port),
            alt_port: self.config.alt_port,
            incarnation: self.incarnation,
            beat_ms: self.clock.unix_ms(now),
        }
    }

    /// Whether other servers may share the store (it has heartbeats: see `Config::heartbeat`).
    pub(super) fn shares_store(&self) -> bool {
        self.config.heartbeat.is_some()
    }

    /// Whether `key` is another server sharing the store, alive at its last heartbeat.
    pub(super) fn is_peer_server(&self, key: &NodeKey) -> bool {
        *key != self.key && self.instances.iter().any(|i| i.key == *key)
    }

    /// The servers sharing the store, this one included, as the last heartbeat found them.
    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    /// Tells the store this server is alive (see [`Config::heartbeat`]).
    pub(super) fn heartbeat(&mut self, now: Instant) {
        let Some(interval) = self.config.heartbeat else {
            return;
        };
        self.next_heartbeat = Some(now + interval);
        let op = StoreOp::Heartbeat(self.instance(now), interval * 3);
        match self.write(op) {
            Written::Now(result) => self.beaten(writes::alive_of(result)),
            Written::Queued(ticket) => self.wait_for(ticket, Pending::Heartbeat),
        }
    }

    /// A heartbeat's answer: who shares the store now. Arrivals and departures are logged.
    pub(super) fn beaten(&mut self, alive: Result<Vec<Instance>, StoreError>) {
        let mut alive = match alive {
            Ok(alive) => alive,
            Err(e) => {
                self.beat_failed = true;
                return self.store_error(&e);
            }
        };
        // After beats failed, the others' are as old as the outage (they could not write
        // either): nobody counts as gone on that evidence. The next beat decides.
        let recovering = std::mem::take(&mut self.beat_failed);
        self.store_ok();
        if recovering {
            for i in &self.instances {
                if !alive.iter().any(|k| k.key == i.key) {
                    alive.push(i.clone());
                }
            }
        }
        // This server is alive whatever the store says (its own row may lag a write).
        if !alive.iter().any(|i| i.key == self.key) {
            alive.extend(self.instances.iter().find(|i| i.key == self.key).cloned());
        }
        alive.sort_by_key(|i| i.key);
        for i in alive
            .iter()
            .filter(|i| !self.instances.iter().any(|k| k.key == i.key))
        {
            tracing::info!(instance = %i.key, main = %i.main, "another rendezvous shares the registry");
        }
        for i in self
            .instances
            .iter()
            .filter(|i| !alive.iter().any(|k| k.key == i.key))
        {
            tracing::info!(instance = %i.key, "a rendezvous sharing the registry stopped beating");
        }
        self.instances = alive;
        // Links with servers that stopped are made again (new keys) if they come back.
        let instances = &self.instances;
        self.links
            .retain(|key, _| instances.iter().any(|i| i.key == *key));
    }

    /// Asks the store what the servers sharing it wrote to the ledger and outbox since the
    /// last read (one read at a time).
    pub(super) fn read_trust_changes(&mut self, now: Instant) {
        let Some(next) = self.next_trust_read else {
            return;
        };
        if next > now || self.reading_trust {
            return;
        }
        self.next_trust_read = Some(now + TRUST_READ_INTERVAL);
        match self.write(StoreOp::TrustChanges(self.trust_cursor)) {
            Written::Now(result) => self.trust_changed(writes::changes_of(result), now),
            Written::Queued(ticket) => {
                self.reading_trust = true;
                self.wait_for(ticket, Pending::TrustChanges);
            }
        }
    }

    /// Takes in the trust changes read from the store: ledger statements that take effect
    /// (verified again, as at start), then outbox items memory lacks. A statement for a node
    /// registered here starts its deliveries.
    pub(super) fn trust_changed(
        &mut self,
        changes: Result<TrustChanges, StoreError>,
        now: Instant,
    ) {
        self.reading_trust = false;
        let changes = match changes {
            Ok(changes) => changes,
            Err(e) => {
                self.store_error(&e);
                return self.retry_introductions(now);
            }
        };
        self.store_ok();
        self.trust_cursor = changes.cursor;
        let now_ms = self.clock.unix_ms(now);
        for statement in changes.ledger {
            if !takes_effect(&self.ledger, &statement) {
                continue;
            }
            // (`takes_effect` refuses requests: no ledger statement.)
            let (low, high) = statement.pair();
            match self.ledger.admit(statement.clone(), now_ms) {
                Ok(_) => {
                    self.counters.statements_shared += 1;
                    self.drop_outdated_ledger_items(&statement);
                }
                Err(e) => {
                    tracing::warn!(%low, %high, "skipping a ledger statement another server stored: {e}")
                }
            }
        }
        for item in changes.outbox {
            let target = item.target;
            if self.take_shared_item(item) {
                self.counters.statements_shared += 1;
                // Told at once, as when the statement is stored here.
                if self.registry.fresh(&target, now).is_some() {
                    self.outbox.schedule(target, now);
                }
            }
        }
        // What the changes brought leaves ahead of any introduction they make possible: a
        // node takes a `Punch` only from a peer it already trusts.
        self.run_deliveries(now);
        self.retry_introductions(now);
    }

    /// Introductions that waited for the trust changes: made if the ledger trusts the pair
    /// now, kept (and the changes read again soon) while younger than [`INTRODUCTION_WAIT`],
    /// refused after.
    fn retry_introductions(&mut self, now: Instant) {
        let waiting = std::mem::take(&mut self.waiting_introductions);
        for w in waiting {
            if self.ledger.trusted(&w.node, &w.peer) {
                self.punch_for_server(w.server, w.node, w.peer, w.node_nat, w.candidates, now);
            } else if now.saturating_duration_since(w.since) < INTRODUCTION_WAIT {
                self.waiting_introductions.push(w);
            } else {
                self.counters.refuse(Refusal::NotAllowed);
            }
        }
        if !self.waiting_introductions.is_empty() {
            let soon = now + REREAD;
            self.next_trust_read = self.next_trust_read.map(|t| t.min(soon));
        }
    }

    /// Adds an outbox item another server stored, unless memory has it, or a newer one of its
    /// kind about the same pair, or it is a ledger statement the ledger no longer holds. An
    /// older one of its kind is dropped from memory (its writer deleted it from the store).
    fn take_shared_item(&mut self, item: OutboxItem) -> bool {
        let id = item.id;
        if self.outbox.get(id).is_some() {
            return false;
        }
        // The sender's source: where it registered from, if it registered here.
        let registry = &self.registry;
        let sender_ip = |k: &NodeKey| registry.record(k, None).map(|r| r.observed.ip());
        let Some(kept) = Item::from_stored(item, sender_ip) else {
            tracing::warn!(
                id,
                "skipping a delivery another server stored: not for a party"
            );
            return false;
        };
        let (low, high) = kept.statement.pair();
        let kind = kind_of(&kept.statement);
        let in_force = || self.ledger.state(&low, &high).map(|s| s.to_statement());
        if kind == Kind::Ledger && in_force().as_ref() != Some(&kept.statement) {
            return false;
        }
        if let Some((older, _)) = self.outbox_item(&kept.target, &kept.statement, kind) {
            if older > id {
                return false;
            }
            self.outbox.remove(older);
        }
        self.outbox.insert(id, kept);
        true
    }

    /// After the ledger took `statement` from another server: ledger items about its pair that
    /// hold an older statement are dropped (from the store too: their writer may not have
    /// known them), so no node gets a statement its partner has superseded.
    fn drop_outdated_ledger_items(&mut self, statement: &Statement) {
        let (low, high) = statement.pair();
        for party in [low, high] {
            let Some((id, item)) = self.outbox_item(&party, statement, Kind::Ledger) else {
                continue;
            };
            if item.statement == *statement {
                continue;
            }
            if id < super::outbox::EPHEMERAL_IDS
                && self.write_quietly(StoreOp::Delivered(id)).is_err()
            {
                continue;
            }
            self.outbox.remove(id);
        }
    }

    /// A `Connect` (trusted) to a node not registered here: the store says where it
    /// registered, and the answer waits for it (no answer if the store cannot be read: the
    /// node asks again).
    pub(super) fn connect_elsewhere<'a>(
        &mut self,
        req: Request,
        target: NodeKey,
        now: Instant,
        out: &'a mut [u8],
    ) -> Option<Transmit<'a>> {
        let expiry_ms = self.config.expiry.as_millis() as u64;
        let seen_since_ms = self.clock.unix_ms(now).saturating_sub(expiry_ms);
        match self.write(StoreOp::Locate(target, seen_since_ms)) {
            Written::Now(result) => {
                let reply = self.located(req, target, writes::located_of(result), now)?;
                self.reply(req, &reply, now, out)
            }
            Written::Queued(ticket) => {
                self.wait_for(ticket, Pending::Connect { req, target });
                None
            }
        }
    }

    /// Where `target` registered, for `req`'s `Connect`: its home server is sent an
    /// `Introduce` (it sends `target` the `Punch` for the sender) and the sender is answered
    /// with its own `Punch`. A node registered nowhere alive is `UnknownTarget`.
    pub(super) fn located(
        &mut self,
        req: Request,
        target: NodeKey,
        located: Result<Option<Located>, StoreError>,
        now: Instant,
    ) -> Option<Message> {
        let located = match located {
            Ok(located) => {
                self.store_ok();
                if let Some(l) = &located {
                    self.remember_peer(l.clone());
                }
                located
            }
            Err(e) => {
                self.store_error(&e);
                // The store cannot be read: a pair introduced before is introduced again
                // from what was read then (the node asks again if this is stale); a pair
                // never introduced gets no answer, never a false one.
                let cached = self.peers_elsewhere.get(&target).cloned();
                Some(cached.filter(|l| self.is_peer_server(&l.home))?)
            }
        };
        let home = located.as_ref().and_then(|l| {
            let home = self
                .instances
                .iter()
                .find(|i| i.key == l.home && i.key != self.key);
            home.map(|i| i.main)
                .filter(|main| !main.ip().is_unspecified())
        });
        let (Some(located), Some(home_main)) = (located, home) else {
            self.counters.refuse(Refusal::UnknownTarget);
            return Some(Message::Refused {
                echo: req.nonce,
                code: RefusalCode::UnknownTarget,
            });
        };
        // The sender may have gone since it asked (the store took a moment).
        let me = self.registry.fresh(&req.sender, now)?;
        let introduce = Message::Introduce {
            node: req.sender,
            peer: target,
            node_nat: punch_nat_of(me.observed, me.nat),
            candidates: candidates(me),
        };
        // Both sides probe at the same moment: the introduction goes out before the answer.
        self.queue(Port::Main, self.config.listen, home_main, &introduce, now);
        self.remember_home(target, located.home, now);
        self.counters.punches += 1;
        tracing::debug!(from = %req.sender, to = %target, home = %located.home, "introduced through another server");
        let peer = &located.registration;
        Some(Message::Punch {
            peer: target,
            peer_nat: punch_nat_of(peer.observed, peer.nat),
            candidates: candidates_of(peer.observed, &peer.lan),
        })
    }

    /// Another server's `Introduce`: `node`, registered there, asked to meet `peer`,
    /// registered here, and has its `Punch`; `peer` gets the other. Only from a server
    /// sharing the store (its key is in the heartbeats), and only for a pair this server's
    /// ledger trusts.
    pub(super) fn introduced(
        &mut self,
        req: Request,
        node: NodeKey,
        peer: NodeKey,
        node_nat: NatKind,
        candidates: Vec<SocketAddr>,
        now: Instant,
    ) {
        if !self.is_peer_server(&req.sender) {
            self.counters.refuse(Refusal::Unexpected);
            return;
        }
        if !self.ledger.trusted(&node, &peer) {
            // The other server checked its ledger; this one may not have read the record
            // yet. It reads now, and introduces if the record is there.
            if self.waiting_introductions.len() >= MAX_WAITING_INTRODUCTIONS {
                self.counters.refuse(Refusal::NotAllowed);
                return;
            }
            self.waiting_introductions.push(WaitingIntroduction {
                server: req.sender,
                node,
                peer,
                node_nat,
                candidates,
                since: now,
            });
            self.next_trust_read = self.next_trust_read.map(|t| t.min(now));
            self.read_trust_changes(now);
            return;
        }
        self.punch_for_server(req.sender, node, peer, node_nat, candidates, now);
    }

    /// Sends `peer` (registered here) the `Punch` for `node`, which `server` introduced.
    fn punch_for_server(
        &mut self,
        server: NodeKey,
        node: NodeKey,
        peer: NodeKey,
        node_nat: NatKind,
        candidates: Vec<SocketAddr>,
        now: Instant,
    ) {
        let Some(entry) = self.registry.fresh(&peer, now) else {
            self.counters.refuse(Refusal::UnknownTarget);
            return;
        };
        let (local_ip, observed) = (entry.local_ip, entry.observed);
        let punch = Message::Punch {
            peer: node,
            peer_nat: node_nat,
            candidates,
        };
        self.queue(streams::port_of(&observed), local_ip, observed, &punch, now);
        self.remember_home(node, server, now);
        self.counters.punches += 1;
        tracing::debug!(%node, %peer, by = %server, "introduced by another server");
    }

    /// Keeps what the store said of a node registered elsewhere, to introduce it while the
    /// store cannot be read (at most [`MAX_HOMES`]; beyond, another one is forgotten).
    fn remember_peer(&mut self, located: Located) {
        let key = located.registration.key;
        if self.peers_elsewhere.len() >= MAX_HOMES && !self.peers_elsewhere.contains_key(&key) {
            if let Some(first) = self.peers_elsewhere.keys().next().copied() {
                self.peers_elsewhere.remove(&first);
            }
        }
        self.peers_elsewhere.insert(key, located);
    }

    /// Notes that `node` is registered at the server `home` (for relaying to it).
    pub(super) fn remember_home(&mut self, node: NodeKey, home: NodeKey, now: Instant) {
        if self.homes.len() >= MAX_HOMES && !self.homes.contains_key(&node) {
            let oldest = self
                .homes
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.homes.remove(&oldest);
            }
        }
        self.homes.insert(node, (home, now));
    }

    /// The server `node` is registered at, if another, alive, and learnt within [`HOME_TTL`].
    pub(super) fn home_of(&self, node: &NodeKey, now: Instant) -> Option<NodeKey> {
        let (home, at) = self.homes.get(node)?;
        (now.saturating_duration_since(*at) < HOME_TTL && self.is_peer_server(home))
            .then_some(*home)
    }

    /// The server `node` was last known at, however long ago, if it is still alive: used
    /// while the store is asked again (or cannot be read), so a pair relayed across servers
    /// is not cut by a slow or stopped database.
    pub(super) fn last_home(&self, node: &NodeKey) -> Option<NodeKey> {
        let (home, _) = self.homes.get(node)?;
        self.is_peer_server(home).then_some(*home)
    }

    /// Asks the store where `node` registered, for relayed frames to it (at most one read per
    /// node at a time, and none while it is known to be nowhere else).
    pub(super) fn locate_for_relay(&mut self, node: NodeKey, now: Instant) {
        let nowhere = self.homes.get(&node).is_some_and(|(home, at)| {
            *home == self.key && now.saturating_duration_since(*at) < NOWHERE_TTL
        });
        if nowhere || self.locating.contains(&node) || self.locating.len() >= MAX_LOCATING {
            return;
        }
        let expiry_ms = self.config.expiry.as_millis() as u64;
        let seen_since_ms = self.clock.unix_ms(now).saturating_sub(expiry_ms);
        match self.write(StoreOp::Locate(node, seen_since_ms)) {
            Written::Now(result) => self.located_for_relay(node, writes::located_of(result), now),
            Written::Queued(ticket) => {
                self.locating.insert(node);
                self.wait_for(ticket, Pending::Locate { node });
            }
        }
    }

    /// Where `node` registered, for relaying to it: remembered (nowhere else, too).
    pub(super) fn located_for_relay(
        &mut self,
        node: NodeKey,
        located: Result<Option<Located>, StoreError>,
        now: Instant,
    ) {
        self.locating.remove(&node);
        match located {
            Ok(located) => {
                self.store_ok();
                let home = located.map(|l| l.home).filter(|h| self.is_peer_server(h));
                self.remember_home(node, home.unwrap_or(self.key), now);
            }
            Err(e) => self.store_error(&e),
        }
    }
}
