//! Trust on the node: the verbs (`handshake`, `approve`, `reject`, `untrust`), exchanging
//! statements with the rendezvous (submit until `Stored`; acknowledge a delivery only once the
//! daemon has saved it), name lookups, and the gate — what the [`TrustBook`] decides is applied
//! to the peer table here: a peer's packets pass only while its gate is open.

use std::time::{Duration, Instant};

use super::timers::{Earliest, Timer};
use super::trust::{Gate, HandshakeOutcome, TrustBook, TrustState, VerbError};
use super::{DropReason, Event, Node, PeerConfig};
use crate::addr::Hostname;
use crate::identity::NodeKey;
use crate::wire::control::{Found, Message, Query};
use crate::wire::trust::Statement;

/// Unconfirmed statements are sent again this often while registered.
const SUBMIT_RETRY: Duration = Duration::from_secs(2);
/// Statements sent per retry round.
const SUBMIT_BATCH: usize = 32;
/// A lookup is sent again after this long without an answer…
const LOOKUP_RETRY: Duration = Duration::from_secs(1);
/// …and given up after this long.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// Most lookups in flight.
const MAX_LOOKUPS: usize = 64;
/// Most submissions remembered by nonce (to match `Stored` answers).
const MAX_INFLIGHT: usize = 256;

/// Who wants a lookup's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LookupFor {
    /// The daemon (`pilotctl resolve`, or a verb naming a peer by name): reported as an event.
    Caller,
    /// The node itself, to learn a trusted peer's hostname.
    Name,
}

pub(super) struct PendingLookup {
    pub query: Query,
    pub purpose: LookupFor,
    pub nonce: u64,
    pub next_send: Instant,
    pub deadline: Instant,
}

impl Node {
    /// Asks `peer` for trust, or approves its pending request if it asked first.
    pub fn handshake(
        &mut self,
        peer: NodeKey,
        justification: &str,
        now: Instant,
    ) -> Result<HandshakeOutcome, VerbError> {
        self.touch();
        // Before the rendezvous check: a configured peer needs none, and asking again for
        // what holds changes nothing.
        let configured = (self.by_key.get(&peer)).is_some_and(|&i| self.peers[i].path.is_fixed());
        if configured || self.trust.is_trusted(&peer) {
            return Ok(HandshakeOutcome::AlreadyTrusted);
        }
        self.require_rendezvous()?;
        let nonce = self.nonces.next_nonce();
        let now_ms = self.clock.unix_ms(now);
        let (outcome, gate) =
            self.trust
                .handshake(&self.signing, peer, justification, now_ms, nonce)?;
        self.trust_updated(gate, now);
        Ok(outcome)
    }

    /// Approves `peer`'s pending request.
    pub fn approve(&mut self, peer: NodeKey, now: Instant) -> Result<(), VerbError> {
        self.touch();
        self.require_rendezvous()?;
        let now_ms = self.clock.unix_ms(now);
        let gate = self.trust.approve(&self.signing, peer, now_ms)?;
        self.trust_updated(gate, now);
        Ok(())
    }

    /// Rejects `peer`'s pending request, telling it `reason`.
    pub fn reject(&mut self, peer: NodeKey, reason: &str, now: Instant) -> Result<(), VerbError> {
        self.touch();
        self.require_rendezvous()?;
        let now_ms = self.clock.unix_ms(now);
        let gate = self.trust.reject(&self.signing, peer, reason, now_ms)?;
        self.trust_updated(gate, now);
        Ok(())
    }

    /// Ends trust with `peer` (or withdraws a request or an approval): its session is torn
    /// down at once, and the revocation goes to the rendezvous and the peer.
    pub fn untrust(&mut self, peer: NodeKey, now: Instant) -> Result<(), VerbError> {
        self.touch();
        if let Some(&index) = self.by_key.get(&peer) {
            if self.peers[index].path.is_fixed() {
                return Err(VerbError::Configured(self.trust.label(&peer)));
            }
        }
        self.require_rendezvous()?;
        let now_ms = self.clock.unix_ms(now);
        let gate = self.trust.untrust(&self.signing, peer, now_ms)?;
        self.trust_updated(gate, now);
        Ok(())
    }

    /// The trust book, for listing.
    pub fn trust(&self) -> &TrustBook {
        &self.trust
    }

    /// The key of the peer at overlay address `addr` while packets may pass with it (an
    /// index lookup, not a scan).
    pub fn trusted_peer_at(&self, addr: crate::addr::NodeAddr) -> Option<NodeKey> {
        let &index = self.by_addr.get(&addr)?;
        let peer = &self.peers[index];
        peer.trusted.then_some(peer.key)
    }

    /// Whether packets may pass between this node and `peer` now: a configured peer, or a valid
    /// mutual record.
    pub fn is_trusted(&self, peer: &NodeKey) -> bool {
        self.by_key
            .get(peer)
            .is_some_and(|&i| self.peers[i].trusted)
    }

    pub fn hostname(&self) -> Option<&Hostname> {
        self.hostname.as_ref()
    }

    pub fn auto_approve(&self) -> bool {
        self.auto_approve
    }

    /// Asks the rendezvous who `query` is; the answer comes as [`Event::LookupDone`] with the
    /// returned id (`found: None` when unknown or unanswered within 3 s).
    pub fn lookup(&mut self, query: Query, now: Instant) -> Result<u64, VerbError> {
        self.touch();
        self.require_rendezvous()?;
        Ok(self.start_lookup(query, LookupFor::Caller, now))
    }

    /// The trust state to save, when it changed since the last call. The deliveries it
    /// contains are acknowledged to the rendezvous only after [`Node::trust_saved`]; until
    /// then (the save may take a while, off the packet task) deliveries that arrive are held
    /// back too, even those that change nothing: the copy they repeat may be the one being
    /// written.
    pub fn take_trust_state(&mut self) -> Option<TrustState> {
        self.touch();
        if !self.trust_dirty {
            return None;
        }
        self.trust_dirty = false;
        self.trust_urgent = false;
        let acks = std::mem::take(&mut self.pending_acks);
        self.saving_acks.get_or_insert_with(Vec::new).extend(acks);
        Some(self.trust.state())
    }

    /// Queues every statement we hold for the rendezvous again and sends them now.
    pub(super) fn resubmit_trust(&mut self, now: Instant) {
        if self.trust.resubmit_held() {
            self.trust_dirty = true;
            tracing::info!(
                "the rendezvous' trust records for this node differ from ours (it is new, \
                 restarted without its database, or this node's trust.json was lost or \
                 restored): handing it our trust statements again"
            );
        }
        self.next_submit = Some(now);
    }

    /// Whether the trust state changed since it was last taken for saving.
    pub fn trust_changed(&self) -> bool {
        self.trust_dirty
    }

    /// Whether the unsaved change made or ended trust with a peer: worth writing at once,
    /// while requests arriving in a flood may be written together.
    pub fn trust_urgent(&self) -> bool {
        self.trust_dirty && self.trust_urgent
    }

    /// The state from [`Node::take_trust_state`] is durable: acknowledge what it contains,
    /// and what arrived meanwhile without changing anything (the durable state covers it).
    pub fn trust_saved(&mut self, now: Instant) {
        self.touch();
        let mut acks = self.saving_acks.take().unwrap_or_default();
        if !self.trust_dirty {
            acks.append(&mut self.pending_acks);
        }
        for id in acks {
            self.send_to_rendezvous(0, &Message::Ack { id }, now);
        }
    }

    /// Saving failed: keep the acknowledgements back (the rendezvous delivers again) and offer
    /// the state again at the next [`Node::take_trust_state`].
    pub fn trust_save_failed(&mut self) {
        self.touch();
        self.trust_dirty = true;
        if let Some(acks) = self.saving_acks.take() {
            self.pending_acks.extend(acks);
        }
    }

    fn require_rendezvous(&self) -> Result<(), VerbError> {
        match self.link {
            Some(_) => Ok(()),
            None => Err(VerbError::NoRendezvous),
        }
    }

    /// After the book changed: save it, send what is new, apply the gate. Statements go out
    /// first, so that the rendezvous holds a new record before the `Connect` it allows.
    fn trust_updated(&mut self, gate: Gate, now: Instant) {
        self.trust_dirty = true;
        self.trust_urgent |= gate != Gate::Unchanged;
        // Send at once only when something new was queued: a delivered request (anyone can
        // send those) must not make us send everything still unconfirmed again, or a flood of
        // them spends our own submission budget at the rendezvous.
        let queued = self.trust.queued_total();
        if queued != self.queued_seen {
            self.queued_seen = queued;
            self.next_submit = Some(now);
        }
        self.drive_trust(now);
        self.apply_gate(gate, now);
    }

    /// Opens or closes a peer's gate. Opening adds the peer (found through the rendezvous) if it
    /// is new; closing tears its session down at once, so nothing already established outlives
    /// the trust it was built on.
    pub(super) fn apply_gate(&mut self, gate: Gate, now: Instant) {
        match gate {
            Gate::Unchanged => {}
            Gate::Opened(key) => {
                let index = match self.by_key.get(&key) {
                    Some(&index) => index,
                    None => {
                        let config = PeerConfig {
                            key,
                            endpoint: None,
                        };
                        if let Err(e) = self.add_peer(&config) {
                            tracing::warn!("cannot add trusted peer {key}: {e}");
                            return;
                        }
                        self.peers.len() - 1
                    }
                };
                self.peers[index].trusted = true;
                self.peers[index].path.reconnect_now(now);
                self.events.push_back(Event::TrustChanged {
                    peer: key,
                    trusted: true,
                });
                if self.trust.name_of(&key).is_none() {
                    self.start_lookup(Query::Key(key), LookupFor::Name, now);
                }
                self.drive(now);
            }
            Gate::Closed(key) => {
                if let Some(&index) = self.by_key.get(&key) {
                    if !self.peers[index].path.is_fixed() {
                        self.peers[index].close();
                        self.pings.retain(|p| p.peer != index);
                    }
                }
                self.events.push_back(Event::TrustChanged {
                    peer: key,
                    trusted: false,
                });
            }
        }
    }

    /// `Stored`: the submission with this nonce is durable at the rendezvous.
    pub(super) fn on_stored(&mut self, echo: u64, now: Instant) -> bool {
        let Some(statement) = self.inflight.remove(&echo) else {
            return false;
        };
        if self.trust.submitted(&statement) {
            self.trust_dirty = true;
        }
        // The rendezvous holds the record now: an introduction it refused before is due.
        if let Statement::Record(record) = &statement {
            let peer = record.other(&self.key).ok();
            if let Some(&index) = peer.and_then(|p| self.by_key.get(&p)) {
                if record.is_complete() && self.peers[index].trusted {
                    self.peers[index].path.reconnect_now(now);
                }
            }
        }
        true
    }

    /// A submission was refused for good (it does not verify at the rendezvous): drop it.
    pub(super) fn on_submission_refused(&mut self, echo: u64) -> bool {
        let Some(statement) = self.inflight.remove(&echo) else {
            return false;
        };
        tracing::warn!(?statement, "the rendezvous refused a trust statement");
        if self.trust.submitted(&statement) {
            self.trust_dirty = true;
        }
        true
    }

    /// `Deliver`: a statement for us. It is verified by the book; whatever it was, the delivery
    /// is acknowledged once our state is saved (a bad one is acknowledged too: sending it again
    /// would not make it verify).
    pub(super) fn on_deliver(
        &mut self,
        id: u64,
        from_name: Option<Hostname>,
        statement: Statement,
        now: Instant,
    ) {
        let now_ms = self.clock.unix_ms(now);
        match self.trust.receive(
            &self.signing,
            statement,
            from_name,
            self.auto_approve,
            now_ms,
        ) {
            Ok(received) => {
                if let Some(from) = received.new_request {
                    if let Some(incoming) = self
                        .trust
                        .incoming(now_ms)
                        .find(|i| i.request.requester == from)
                    {
                        self.events.push_back(Event::TrustRequest {
                            from,
                            name: incoming.from_name.clone(),
                            justification: incoming.request.justification.clone(),
                        });
                    }
                }
                if received.changed {
                    self.trust_updated(received.gate, now);
                }
            }
            Err(e) => {
                self.counters.drop(DropReason::BadTrustStatement);
                tracing::debug!("refused a delivered trust statement: {e}");
            }
        }
        if self.trust_dirty || self.saving_acks.is_some() {
            self.pending_acks.push(id);
        } else {
            self.send_to_rendezvous(0, &Message::Ack { id }, now);
        }
    }

    pub(super) fn on_lookup_reply(&mut self, echo: u64, found: Option<Found>) -> bool {
        let Some(id) = self
            .lookups
            .iter()
            .find_map(|(id, l)| (l.nonce == echo).then_some(*id))
        else {
            return false;
        };
        let Some(lookup) = self.lookups.remove(&id) else {
            return false;
        };
        // Names are the rendezvous' word; addresses are checked against the key here.
        let found = found.filter(|f| match &lookup.query {
            Query::Name(name) => f.hostname.as_ref() == Some(name),
            Query::Address(addr) => f.key.address() == *addr,
            Query::Key(key) => f.key == *key,
        });
        if let Some(f) = &found {
            if self.trust.learn_name(f.key, f.hostname.clone()) {
                self.trust_dirty = true;
            }
        }
        if lookup.purpose == LookupFor::Caller {
            self.events.push_back(Event::LookupDone { id, found });
        }
        true
    }

    /// Timer work: resend unconfirmed statements and unanswered lookups; give lookups up.
    pub(super) fn drive_trust(&mut self, now: Instant) {
        let registered = self.link.as_ref().is_some_and(|l| l.is_registered(now));
        if registered
            && self.next_submit.is_none_or(|t| now >= t)
            && !self.trust.unsubmitted().is_empty()
        {
            self.next_submit = Some(now + SUBMIT_RETRY);
            let batch: Vec<Statement> = self
                .trust
                .unsubmitted()
                .iter()
                .take(SUBMIT_BATCH)
                .cloned()
                .collect();
            if self.inflight.len() + batch.len() > MAX_INFLIGHT {
                self.inflight.clear();
            }
            for statement in batch {
                let submit = Message::Submit {
                    statement: statement.clone(),
                };
                let nonce = self.send_to_rendezvous(0, &submit, now);
                self.inflight.insert(nonce, statement);
            }
        }
        let mut due = Vec::new();
        let mut expired = Vec::new();
        for (&id, lookup) in &mut self.lookups {
            if now >= lookup.deadline {
                expired.push(id);
            } else if registered && now >= lookup.next_send {
                lookup.next_send = now + LOOKUP_RETRY;
                due.push(id);
            }
        }
        for id in expired {
            if let Some(LookupFor::Caller) = self.lookups.remove(&id).map(|l| l.purpose) {
                self.events.push_back(Event::LookupDone { id, found: None });
            }
        }
        for id in due {
            let query = self.lookups[&id].query.clone();
            let nonce = self.send_to_rendezvous(0, &Message::Lookup { query }, now);
            if let Some(lookup) = self.lookups.get_mut(&id) {
                lookup.nonce = nonce;
            }
        }
        if self.trust.expire(self.clock.unix_ms(now)) {
            self.trust_dirty = true;
        }
    }

    /// When [`Node::drive_trust`] next has work: statements to submit again, lookups to
    /// resend or give up, and the first pending request to expire.
    pub(super) fn trust_deadlines(&self, base: Instant, next: &mut Earliest) {
        let registered = self.link.as_ref().is_some_and(|l| l.is_registered(base));
        if registered && !self.trust.unsubmitted().is_empty() {
            next.at(self.next_submit.or(Some(base)), Timer::TrustSubmit);
        }
        for lookup in self.lookups.values() {
            next.at(Some(lookup.deadline), Timer::Lookup);
            if registered {
                next.at(Some(lookup.next_send), Timer::Lookup);
            }
        }
        if let Some(expiry_ms) = self.trust.next_expiry_ms() {
            let wait = expiry_ms.saturating_sub(self.clock.unix_ms(base));
            // One millisecond past it: `TrustBook::expire` drops requests older than their
            // lifetime, not as old.
            next.at(
                Some(base + Duration::from_millis(wait + 1)),
                Timer::TrustExpiry,
            );
        }
    }

    /// Starts a lookup; returns its id.
    fn start_lookup(&mut self, query: Query, purpose: LookupFor, now: Instant) -> u64 {
        if self.lookups.len() >= MAX_LOOKUPS {
            self.lookups.pop_first();
        }
        self.lookup_seq = self.lookup_seq.wrapping_add(1);
        let id = self.lookup_seq;
        self.lookups.insert(
            id,
            PendingLookup {
                query,
                purpose,
                nonce: 0,
                next_send: now,
                deadline: now + LOOKUP_TIMEOUT,
            },
        );
        self.drive_trust(now);
        id
    }
}
