//! The node's trust book: which peers it trusts (verified records and revocations), the
//! requests it made and received, its approvals waiting for a countersignature, the names it
//! learned, and its own statements not yet stored by the rendezvous.
//!
//! Every statement in here was verified by this node, whoever delivered it: the rendezvous can
//! lose or delay statements but cannot make one up. The book only decides; the node applies
//! what it decides (opening or closing the gate for a peer, sending statements), and the daemon
//! writes [`TrustState`] to `trust.json` in the state directory.
//!
//! The handshake, in statements:
//!
//! ```text
//! alice: handshake bob  → TrustRequest(alice → bob)           → rendezvous → bob: pending
//! bob:   approve alice  → TrustRecord signed by bob (half)     → rendezvous → alice
//! alice (automatically, because she asked) countersigns        → rendezvous → bob
//! both:  the record signed by both is in the ledger: the gate opens
//! either: untrust       → Revocation                           → rendezvous → the other: gate closes
//! ```

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::addr::Hostname;
use crate::hex::{decode as decode_hex, encode as encode_hex};
use crate::identity::NodeKey;
use crate::wire::trust::{
    PairState, Revocation, Statement, TrustError, TrustLedger, TrustRecord, TrustRequest,
    MAX_FUTURE_MS, REQUEST_LIFETIME_MS,
};

/// Most requests kept waiting for approval; the oldest is dropped beyond it.
const MAX_INCOMING: usize = 1024;
/// Most statements waiting to be stored by the rendezvous.
const MAX_UNSUBMITTED: usize = 4096;
/// Most contested names remembered (see [`TrustBook::contested`]).
const MAX_CONTESTED: usize = 256;
/// Most approvals waiting for the requester's countersignature; the oldest is forgotten beyond
/// it. With `--auto-approve` every request anyone sends lands here, so it must be bounded.
/// Forgetting one changes nothing on the wire: the approval was sent, and a countersigned
/// record that comes back is admitted on its own signatures.
const MAX_APPROVED: usize = 1024;

/// A request this node made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub request: TrustRequest,
    /// Set when the peer rejected it: when, and the reason it gave.
    pub rejected: Option<(u64, String)>,
}

/// A request waiting for this node's approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub request: TrustRequest,
    /// The requester's hostname, as the rendezvous knows it.
    pub from_name: Option<Hostname>,
    /// When it arrived, by our clock (ms since the UNIX epoch): when the list is full, the
    /// earliest arrival goes. Not the request's own date, which its sender chooses: requests
    /// dated into the future would otherwise push out every honest one.
    pub arrived_ms: u64,
}

/// What a verb or a delivered statement did to a peer's gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Nothing changed for the pair's reachability.
    Unchanged,
    /// A valid mutual record now holds: packets may pass.
    Opened(NodeKey),
    /// Trust ended (or never was): nothing passes.
    Closed(NodeKey),
}

/// What a delivered statement meant, for the node to act on and report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub gate: Gate,
    /// A new request waits for approval (for the log).
    pub new_request: Option<NodeKey>,
    /// Whether the book changed (and must be saved).
    pub changed: bool,
}

/// How `handshake` went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandshakeOutcome {
    /// A request is on its way; trust holds once the peer approves.
    Requested,
    /// The peer had asked us already: this approved its request.
    Approved,
    /// Trust holds already (a mutual record, or `--peer`): nothing was sent. Scripts call
    /// `handshake` idempotently, so this is a success, not an error.
    AlreadyTrusted,
}

/// Why a trust verb was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerbError {
    #[error("that is this node's own key")]
    SelfTrust,
    #[error("there is no pending trust request from {0}")]
    NoRequest(String),
    #[error("{0} is not trusted, and no request to or from it is pending")]
    NotTrusted(String),
    #[error("{0} is configured with --peer; remove it from the configuration instead")]
    Configured(String),
    #[error(
        "justification or reason longer than {} bytes",
        crate::wire::trust::MAX_JUSTIFICATION
    )]
    TooLong,
    #[error("no rendezvous configured: trust statements travel through the rendezvous (start pilotd with --rendezvous)")]
    NoRendezvous,
}

/// The book as it is saved (`trust.json`): statements as hex of their wire bytes, so the file
/// holds exactly what was signed and is verified again when loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustState {
    pub version: u32,
    /// Records and revocations, the newest per pair.
    #[serde(default)]
    pub ledger: Vec<String>,
    #[serde(default)]
    pub outgoing: Vec<SavedOutgoing>,
    #[serde(default)]
    pub incoming: Vec<SavedIncoming>,
    /// Our approvals waiting for the requester's countersignature.
    #[serde(default)]
    pub approved: Vec<String>,
    /// Peers' hostnames by public key (hex).
    #[serde(default)]
    pub names: BTreeMap<String, Hostname>,
    /// Our statements the rendezvous has not confirmed storing yet.
    #[serde(default)]
    pub unsubmitted: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedOutgoing {
    pub request: String,
    #[serde(default)]
    pub rejected_ms: Option<u64>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedIncoming {
    pub request: String,
    #[serde(default)]
    pub from_name: Option<Hostname>,
    #[serde(default)]
    pub arrived_ms: u64,
}

pub const TRUST_STATE_VERSION: u32 = 1;

/// The node's trust state. See the module documentation.
#[derive(Debug, Clone)]
pub struct TrustBook {
    me: NodeKey,
    ledger: TrustLedger,
    outgoing: BTreeMap<NodeKey, Outgoing>,
    incoming: BTreeMap<NodeKey, Incoming>,
    approved: BTreeMap<NodeKey, TrustRecord>,
    names: BTreeMap<NodeKey, Hostname>,
    /// Names a trusted key holds here that the rendezvous has since given another key (that
    /// key, by name): such a name is ambiguous until one of them lets go.
    contested: BTreeMap<Hostname, NodeKey>,
    unsubmitted: Vec<Statement>,
    /// Approvals forgotten past [`MAX_APPROVED`] since start.
    approvals_evicted: u64,
    /// Statements queued since start (see [`TrustBook::queued_total`]).
    queued: u64,
}

impl TrustBook {
    pub fn new(me: NodeKey) -> TrustBook {
        TrustBook {
            me,
            ledger: TrustLedger::new(),
            outgoing: BTreeMap::new(),
            incoming: BTreeMap::new(),
            approved: BTreeMap::new(),
            names: BTreeMap::new(),
            contested: BTreeMap::new(),
            unsubmitted: Vec::new(),
            approvals_evicted: 0,
            queued: 0,
        }
    }

    /// Rebuilds the book from a saved state, verifying every statement again: one that does not
    /// verify, is not about this node or cannot be decoded is left out and reported in the
    /// returned warnings. Everything we hold is queued for the rendezvous once more, so a
    /// rendezvous that lost its store learns it back.
    pub fn load(me: NodeKey, state: &TrustState, now_ms: u64) -> (TrustBook, Vec<String>) {
        let mut book = TrustBook::new(me);
        let mut warnings = Vec::new();
        let decode = |warnings: &mut Vec<String>, what: &str, hex: &str| -> Option<Statement> {
            match decode_hex(hex).map(|b| Statement::decode(&b)) {
                Some(Ok(s)) if s.pair().0 == me || s.pair().1 == me => Some(s),
                Some(Ok(_)) => {
                    warnings.push(format!("{what}: a statement about other nodes; left out"));
                    None
                }
                _ => {
                    warnings.push(format!("{what}: not a statement; left out"));
                    None
                }
            }
        };
        for hex in &state.ledger {
            let result = match decode(&mut warnings, "ledger", hex) {
                Some(Statement::Record(r)) => book.ledger.admit_record(r, now_ms).map(|_| ()),
                Some(Statement::Revocation(v)) => {
                    book.ledger.admit_revocation(v, now_ms).map(|_| ())
                }
                Some(Statement::Request(_)) => Err(TrustError::NotAParty),
                None => continue,
            };
            if let Err(e) = result {
                warnings.push(format!("ledger: a statement refused ({e}); left out"));
            }
        }
        for saved in &state.outgoing {
            if let Some(Statement::Request(r)) = decode(&mut warnings, "outgoing", &saved.request) {
                if r.requester == me && r.verify(now_ms).is_ok() {
                    let rejected = saved
                        .rejected_ms
                        .map(|at| (at, saved.reason.clone().unwrap_or_default()));
                    book.outgoing.insert(
                        r.target,
                        Outgoing {
                            request: r,
                            rejected,
                        },
                    );
                }
            }
        }
        for saved in &state.incoming {
            if let Some(Statement::Request(r)) = decode(&mut warnings, "incoming", &saved.request) {
                if r.target == me && r.verify(now_ms).is_ok() {
                    let from_name = saved.from_name.clone();
                    book.incoming.insert(
                        r.requester,
                        Incoming {
                            request: r,
                            from_name,
                            arrived_ms: saved.arrived_ms,
                        },
                    );
                }
            }
        }
        for hex in &state.approved {
            if let Some(Statement::Record(r)) = decode(&mut warnings, "approved", hex) {
                if r.verify_half(&me, now_ms).is_ok() {
                    if let Ok(other) = r.other(&me) {
                        book.approved.insert(other, r);
                    }
                }
            }
        }
        for (key, name) in &state.names {
            if let Ok(key) = key.parse::<NodeKey>() {
                book.names.insert(key, name.clone());
            }
        }
        for hex in &state.unsubmitted {
            if let Some(s) = decode(&mut warnings, "unsubmitted", hex) {
                book.queue(s);
            }
        }
        // Resubmit what we hold: the rendezvous answers `Stored` for what it knows already.
        book.resubmit_held();
        (book, warnings)
    }

    /// Queues for the rendezvous every statement we hold that it should have: the ledger's
    /// (records and revocations), our live requests and our approvals. It answers `Stored` for
    /// what it knows already. Returns whether anything waits to be submitted.
    pub fn resubmit_held(&mut self) -> bool {
        let held: Vec<Statement> = self
            .ledger
            .pairs_of(&self.me)
            .map(|(_, state)| state.to_statement())
            .chain(
                self.outgoing
                    .values()
                    .filter(|o| o.rejected.is_none())
                    .map(|o| Statement::Request(o.request.clone())),
            )
            .chain(self.approved.values().cloned().map(Statement::Record))
            .collect();
        for s in held {
            self.queue(s);
        }
        !self.unsubmitted.is_empty()
    }

    /// The digest of this node's ledger, for the rendezvous to compare with its own
    /// ([`TrustLedger::digest_of`]).
    pub fn ledger_digest(&self) -> u64 {
        self.ledger.digest_of(&self.me)
    }

    pub fn state(&self) -> TrustState {
        let hex = |s: Statement| encode_hex(&s.to_bytes());
        TrustState {
            version: TRUST_STATE_VERSION,
            ledger: self
                .ledger
                .pairs_of(&self.me)
                .map(|(_, state)| hex(state.to_statement()))
                .collect(),
            outgoing: self
                .outgoing
                .values()
                .map(|o| SavedOutgoing {
                    request: hex(Statement::Request(o.request.clone())),
                    rejected_ms: o.rejected.as_ref().map(|r| r.0),
                    reason: o.rejected.as_ref().map(|r| r.1.clone()),
                })
                .collect(),
            incoming: self
                .incoming
                .values()
                .map(|i| SavedIncoming {
                    request: hex(Statement::Request(i.request.clone())),
                    from_name: i.from_name.clone(),
                    arrived_ms: i.arrived_ms,
                })
                .collect(),
            approved: self
                .approved
                .values()
                .map(|r| hex(Statement::Record(r.clone())))
                .collect(),
            names: self
                .names
                .iter()
                .map(|(k, n)| (k.to_string(), n.clone()))
                .collect(),
            unsubmitted: self.unsubmitted.iter().cloned().map(hex).collect(),
        }
    }

    pub fn is_trusted(&self, peer: &NodeKey) -> bool {
        self.ledger.trusted(&self.me, peer)
    }

    /// Pairs in this node's ledger (records and revocations).
    pub fn ledger_len(&self) -> usize {
        self.ledger.len()
    }

    /// Peers with a valid mutual record.
    pub fn trusted(&self) -> impl Iterator<Item = (NodeKey, &TrustRecord)> + '_ {
        self.ledger
            .pairs_of(&self.me)
            .filter_map(|(peer, state)| match state {
                PairState::Trusted(r) => Some((peer, r)),
                PairState::Revoked(_) => None,
            })
    }

    pub fn outgoing(&self) -> impl Iterator<Item = &Outgoing> {
        self.outgoing.values()
    }

    /// Requests waiting for approval that have not expired at `now_ms`.
    pub fn incoming(&self, now_ms: u64) -> impl Iterator<Item = &Incoming> {
        self.incoming
            .values()
            .filter(move |i| now_ms.saturating_sub(i.request.issued_ms) <= REQUEST_LIFETIME_MS)
    }

    /// Peers we approved whose countersignature has not arrived yet.
    pub fn approved(&self) -> impl Iterator<Item = NodeKey> + '_ {
        self.approved.keys().copied()
    }

    /// Approvals forgotten because more than [`MAX_APPROVED`] waited at once.
    pub fn approvals_evicted(&self) -> u64 {
        self.approvals_evicted
    }

    /// How messages name `key`: `bob (a1b2.c3d4.e5f6)` when its hostname is known, else its
    /// node address.
    pub fn label(&self, key: &NodeKey) -> String {
        match self.names.get(key) {
            Some(name) => format!("{name} ({})", key.address()),
            None => key.address().to_string(),
        }
    }

    /// Every hostname learned, by key.
    pub fn names(&self) -> impl Iterator<Item = (&NodeKey, &Hostname)> {
        self.names.iter()
    }

    pub fn name_of(&self, key: &NodeKey) -> Option<&Hostname> {
        self.names.get(key)
    }

    /// The key we know under `name`, if any.
    pub fn key_named(&self, name: &Hostname) -> Option<NodeKey> {
        self.names
            .iter()
            .find_map(|(k, n)| (n == name).then_some(*k))
    }

    /// When `name` is contested: the trusted key that holds it here, and the key the
    /// rendezvous has since given it to. A verb naming the peer by it cannot know which is
    /// meant.
    pub fn contested(&self, name: &Hostname) -> Option<(NodeKey, NodeKey)> {
        let other = *self.contested.get(name)?;
        let holder = self.key_named(name)?;
        (holder != other && self.is_trusted(&holder)).then_some((holder, other))
    }

    /// Remembers `key`'s hostname. Returns whether it changed.
    ///
    /// A name belongs to one key: whoever had it before lost it at the rendezvous — unless
    /// that key is trusted. A trusted key keeps its name here whatever the rendezvous says
    /// later (its registration may have lapsed and someone else claimed the name, or the
    /// rendezvous lies), so `untrust bob` can never hit an impostor instead of bob.
    pub fn learn_name(&mut self, key: NodeKey, name: Option<Hostname>) -> bool {
        let Some(name) = name else {
            return false;
        };
        if key == self.me {
            return false;
        }
        if self.names.get(&key) == Some(&name) {
            // The rendezvous names the holder again: nothing contested any more.
            self.contested.remove(&name);
            return false;
        }
        let held_by_trusted = self
            .names
            .iter()
            .any(|(k, n)| *n == name && *k != key && self.is_trusted(k));
        if held_by_trusted {
            // Kept, but remembered: verbs given this name refuse it and show both keys.
            if self.contested.len() < MAX_CONTESTED || self.contested.contains_key(&name) {
                self.contested.insert(name, key);
            }
            return false;
        }
        self.contested.remove(&name);
        self.names.retain(|_, n| *n != name);
        self.names.insert(key, name);
        true
    }

    /// Whether we have anything to do with `key`: trust, a request either way, an approval
    /// or a ledger statement.
    fn deals_with(&self, key: &NodeKey) -> bool {
        self.is_trusted(key)
            || self.incoming.contains_key(key)
            || self.outgoing.contains_key(key)
            || self.approved.contains_key(key)
            || self.ledger.state(&self.me, key).is_some()
    }

    /// Drops `key`'s name once we have nothing to do with it any more.
    fn forget_name_unless_known(&mut self, key: &NodeKey) {
        if !self.deals_with(key) {
            self.names.remove(key);
        }
    }

    /// How many statements were ever queued for the rendezvous: when it moves, there is
    /// something new to send.
    pub fn queued_total(&self) -> u64 {
        self.queued
    }

    /// Our statements the rendezvous has not confirmed.
    pub fn unsubmitted(&self) -> &[Statement] {
        &self.unsubmitted
    }

    /// The rendezvous stored `statement` (or refused it for good): stop sending it.
    pub fn submitted(&mut self, statement: &Statement) -> bool {
        let before = self.unsubmitted.len();
        self.unsubmitted.retain(|s| s != statement);
        self.unsubmitted.len() != before
    }

    /// `pilotctl handshake`: asks `peer` for trust, or approves its request if it asked first.
    pub fn handshake(
        &mut self,
        signing: &SigningKey,
        peer: NodeKey,
        justification: &str,
        now_ms: u64,
        nonce: u64,
    ) -> Result<(HandshakeOutcome, Gate), VerbError> {
        if peer == self.me {
            return Err(VerbError::SelfTrust);
        }
        if self.is_trusted(&peer) {
            return Ok((HandshakeOutcome::AlreadyTrusted, Gate::Unchanged));
        }
        if self.incoming.contains_key(&peer) {
            return Ok((
                HandshakeOutcome::Approved,
                self.approve(signing, peer, now_ms)?,
            ));
        }
        let request =
            TrustRequest::sign(signing, peer, now_ms, nonce, justification).map_err(verb_error)?;
        self.queue(Statement::Request(request.clone()));
        self.outgoing.insert(
            peer,
            Outgoing {
                request,
                rejected: None,
            },
        );
        Ok((HandshakeOutcome::Requested, Gate::Unchanged))
    }

    /// `pilotctl approve`: signs our half of the record; trust holds once the requester
    /// countersigns (its node does that on its own, having asked).
    pub fn approve(
        &mut self,
        signing: &SigningKey,
        peer: NodeKey,
        now_ms: u64,
    ) -> Result<Gate, VerbError> {
        if !self.incoming.contains_key(&peer) {
            return Err(VerbError::NoRequest(self.label(&peer)));
        }
        let half = TrustRecord::approve(signing, peer, now_ms).map_err(verb_error)?;
        self.incoming.remove(&peer);
        self.queue(Statement::Record(half.clone()));
        if self.approved.len() >= MAX_APPROVED && !self.approved.contains_key(&peer) {
            let oldest = self
                .approved
                .iter()
                .min_by_key(|(_, r)| r.issued_ms)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.approved.remove(&k);
                self.approvals_evicted += 1;
            }
        }
        self.approved.insert(peer, half);
        Ok(Gate::Unchanged)
    }

    /// `pilotctl reject`: answers a pending request with a signed revocation carrying `reason`.
    pub fn reject(
        &mut self,
        signing: &SigningKey,
        peer: NodeKey,
        reason: &str,
        now_ms: u64,
    ) -> Result<Gate, VerbError> {
        if !self.incoming.contains_key(&peer) {
            return Err(VerbError::NoRequest(self.label(&peer)));
        }
        self.revoke(signing, peer, reason, now_ms)
    }

    /// `pilotctl untrust`: ends trust (or withdraws a request or approval) with a revocation.
    pub fn untrust(
        &mut self,
        signing: &SigningKey,
        peer: NodeKey,
        now_ms: u64,
    ) -> Result<Gate, VerbError> {
        let involved = self.is_trusted(&peer)
            || self.outgoing.contains_key(&peer)
            || self.incoming.contains_key(&peer)
            || self.approved.contains_key(&peer);
        if !involved {
            return Err(VerbError::NotTrusted(self.label(&peer)));
        }
        self.revoke(signing, peer, "", now_ms)
    }

    fn revoke(
        &mut self,
        signing: &SigningKey,
        peer: NodeKey,
        reason: &str,
        now_ms: u64,
    ) -> Result<Gate, VerbError> {
        let was_trusted = self.is_trusted(&peer);
        // Never older than what it must override: a record dated a little in the future (a
        // peer's clock ahead of ours) must still lose to this.
        let newest = self
            .ledger
            .state(&self.me, &peer)
            .map_or(0, PairState::issued_ms);
        let revocation =
            Revocation::sign(signing, peer, now_ms.max(newest), reason).map_err(verb_error)?;
        self.ledger
            .admit_revocation(revocation.clone(), now_ms.max(newest))
            .map_err(verb_error)?;
        self.settle(&peer);
        self.queue(Statement::Revocation(revocation));
        Ok(if was_trusted {
            Gate::Closed(peer)
        } else {
            Gate::Unchanged
        })
    }

    /// A statement delivered through the rendezvous. It is verified here; one that does not
    /// verify or is not about us changes nothing and is returned as an error.
    pub fn receive(
        &mut self,
        signing: &SigningKey,
        statement: Statement,
        from_name: Option<Hostname>,
        auto_approve: bool,
        now_ms: u64,
    ) -> Result<Received, TrustError> {
        let (low, high) = statement.pair();
        let peer = if low == self.me {
            high
        } else if high == self.me {
            low
        } else {
            return Err(TrustError::NotAParty);
        };
        // Nothing is learnt from a statement before it verified: the name comes along below.
        let mut changed = false;
        let was_trusted = self.is_trusted(&peer);
        let mut new_request = None;
        match statement {
            Statement::Request(request) => {
                if request.requester != peer {
                    return Err(TrustError::NotAParty);
                }
                request.verify(now_ms)?;
                if self.answered_since(&peer, request.issued_ms) || was_trusted {
                    // Approved, rejected or revoked after it was made: a replay or a late copy.
                } else if self
                    .outgoing
                    .get(&peer)
                    .is_some_and(|o| o.rejected.is_none())
                    || auto_approve
                {
                    // Both asked (or we approve everyone): approve at once.
                    let incoming = Incoming {
                        request,
                        from_name: from_name.clone(),
                        arrived_ms: now_ms,
                    };
                    self.incoming.insert(peer, incoming);
                    let _ = self.approve(signing, peer, now_ms);
                    changed = true;
                } else if self
                    .incoming
                    .get(&peer)
                    .is_none_or(|i| i.request.issued_ms < request.issued_ms)
                {
                    if self.incoming.len() >= MAX_INCOMING && !self.incoming.contains_key(&peer) {
                        let earliest = self
                            .incoming
                            .iter()
                            .min_by_key(|(_, i)| i.arrived_ms)
                            .map(|(k, _)| *k);
                        if let Some(k) = earliest {
                            self.incoming.remove(&k);
                            self.forget_name_unless_known(&k);
                        }
                    }
                    let incoming = Incoming {
                        request,
                        from_name: from_name.clone(),
                        arrived_ms: now_ms,
                    };
                    self.incoming.insert(peer, incoming);
                    new_request = Some(peer);
                    changed = true;
                }
            }
            Statement::Record(record) if !record.is_complete() => {
                // The peer approved: countersign if we asked it, and the approval is not older
                // than our request (an approval of something we withdrew is not consent).
                record.verify_half(&peer, now_ms)?;
                let asked = self.outgoing.get(&peer).is_some_and(|o| {
                    o.rejected.is_none() && record.issued_ms + MAX_FUTURE_MS >= o.request.issued_ms
                });
                if asked {
                    let full = record.countersign(signing, now_ms)?;
                    if self.ledger.admit_record(full.clone(), now_ms)? {
                        self.settle(&peer);
                        self.queue(Statement::Record(full));
                        changed = true;
                    }
                }
            }
            Statement::Record(record) => {
                if self.ledger.admit_record(record, now_ms)? {
                    self.settle(&peer);
                    changed = true;
                }
            }
            Statement::Revocation(revocation) => {
                // Ours, handed back by the rendezvous after we lost our state: it must win
                // over the record it ended, which may come back too.
                let ours = revocation.by == self.me;
                if revocation.by != peer && !ours {
                    return Err(TrustError::NotAParty);
                }
                let (at, reason) = (revocation.issued_ms, revocation.reason.clone());
                // Kept only where it changes what holds between us: a record with the peer,
                // our request to it, our approval of its request. One that withdraws the
                // peer's own request to us takes that away; from a key we have nothing to do
                // with it changes nothing. Neither is kept, or every throwaway key could add
                // an entry to our ledger (and trust.json, and what we hand the rendezvous
                // again at each resync).
                let matters = ours
                    || self.ledger.state(&self.me, &peer).is_some()
                    || self.outgoing.contains_key(&peer)
                    || self.approved.contains_key(&peer);
                if !matters {
                    revocation.verify(now_ms)?;
                    if self
                        .incoming
                        .get(&peer)
                        .is_some_and(|i| i.request.issued_ms <= at)
                    {
                        self.incoming.remove(&peer);
                        changed = true;
                    }
                } else if self.ledger.admit_revocation(revocation, now_ms)? {
                    if let Some(o) = self.outgoing.get_mut(&peer).filter(|_| !ours) {
                        if o.request.issued_ms <= at + MAX_FUTURE_MS {
                            o.rejected = Some((at, reason));
                        }
                    }
                    if self
                        .incoming
                        .get(&peer)
                        .is_some_and(|i| i.request.issued_ms <= at)
                    {
                        self.incoming.remove(&peer);
                    }
                    self.approved.remove(&peer);
                    changed = true;
                }
            }
        }
        // The statement verified: remember the peer's name if we deal with it at all (junk
        // that changed nothing leaves no name behind).
        if self.deals_with(&peer) {
            changed |= self.learn_name(peer, from_name);
        }
        let gate = match (was_trusted, self.is_trusted(&peer)) {
            (false, true) => Gate::Opened(peer),
            (true, false) => Gate::Closed(peer),
            _ => Gate::Unchanged,
        };
        Ok(Received {
            gate,
            new_request,
            changed,
        })
    }

    /// When the first pending request expires (Unix ms; see [`TrustBook::expire`]).
    pub fn next_expiry_ms(&self) -> Option<u64> {
        let incoming = self.incoming.values().map(|i| i.request.issued_ms);
        let outgoing = (self.outgoing.values())
            .filter(|o| o.rejected.is_none())
            .map(|o| o.request.issued_ms);
        incoming
            .chain(outgoing)
            .min()
            .map(|issued| issued.saturating_add(REQUEST_LIFETIME_MS))
    }

    /// Drops requests that expired. Returns whether anything was dropped.
    pub fn expire(&mut self, now_ms: u64) -> bool {
        let live = |issued: u64| now_ms.saturating_sub(issued) <= REQUEST_LIFETIME_MS;
        let before = self.incoming.len() + self.outgoing.len();
        self.incoming.retain(|_, i| live(i.request.issued_ms));
        self.outgoing
            .retain(|_, o| o.rejected.is_some() || live(o.request.issued_ms));
        before != self.incoming.len() + self.outgoing.len()
    }

    /// The pair's ledger statement decided it: no request or approval about it is in flight.
    fn settle(&mut self, peer: &NodeKey) {
        self.outgoing.remove(peer);
        self.incoming.remove(peer);
        self.approved.remove(peer);
    }

    /// Whether the pair's newest ledger statement is at least as new as `issued_ms`.
    fn answered_since(&self, peer: &NodeKey, issued_ms: u64) -> bool {
        self.ledger
            .state(&self.me, peer)
            .is_some_and(|s| s.issued_ms() >= issued_ms)
    }

    fn queue(&mut self, statement: Statement) {
        if self.unsubmitted.contains(&statement) {
            return;
        }
        // A newer statement about the same pair of the same kind supersedes the older one.
        let kind = std::mem::discriminant(&statement);
        let pair = statement.pair();
        self.unsubmitted
            .retain(|s| std::mem::discriminant(s) != kind || s.pair() != pair);
        if self.unsubmitted.len() >= MAX_UNSUBMITTED {
            self.unsubmitted.remove(0);
        }
        self.unsubmitted.push(statement);
        self.queued += 1;
    }
}

fn verb_error(e: TrustError) -> VerbError {
    match e {
        TrustError::SelfTrust => VerbError::SelfTrust,
        TrustError::JustificationTooLong => VerbError::TooLong,
        // Signing our own statements cannot fail otherwise; report it as such if it does.
        other => VerbError::NotTrusted(other.to_string()),
    }
}

#[cfg(test)]
mod flood_tests;
#[cfg(test)]
mod tests;
