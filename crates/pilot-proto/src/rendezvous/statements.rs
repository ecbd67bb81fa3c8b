//! `Submit`: which trust statements the rendezvous takes from whom, and where they go.
//!
//! | statement | the sender must be | it goes to |
//! |---|---|---|
//! | request | the requester | the target's outbox |
//! | approval (half record) | its signer | the unsigned party's outbox |
//! | complete record | one of its parties | the ledger, and the other party's outbox |
//! | revocation | either party | the ledger, and (from its signer) the other party's outbox |
//!
//! Everything is verified here as the nodes will verify it, so junk is refused at the door
//! instead of being stored and delivered; the nodes still trust nothing on the rendezvous'
//! word. `Stored` is sent only once the change is in the store. A statement that changes
//! nothing (a resubmission after a node restart, or one a newer statement has superseded) is
//! answered `Stored` as well: what the node wanted kept is kept. A revocation is taken from the
//! party that did not sign it too, as complete records are: that node hands back what a
//! rendezvous restored from an old backup (or an empty disk) lost while the signer is away,
//! and the signature alone makes it safe.
//!
//! An outbox holds at most one item per kind (request, approval, ledger statement) and other
//! party; a newer one replaces it. Requests and approvals, which anyone may send to anyone,
//! are capped at [`MAX_OUTBOX`] per node and at `Config::max_outbox` for all nodes together;
//! a full outbox is shared by source address (see `Server::make_room`), so a flood from a few
//! addresses displaces its own items and honest requests from elsewhere still get in. Ledger
//! changes are held to neither: a revocation must take effect even while somebody floods the
//! other party's outbox, and each partner can hold at most one ledger item there, so they are
//! bounded by the ledger, whose new pairs are capped (`Config::max_trust_pairs`) and
//! rate-limited per source address. A pair the ledger holds can always change.

use std::collections::BTreeMap;
use std::time::Instant;

use super::control::Request;
use super::outbox::{Item, EPHEMERAL_IDS};
use super::sources::Source;
use super::store::takes_effect_over;
use super::store::Submitted;
use super::writes::{submitted_of, OwnedSubmission, Pending, StoreOp, Written};
use super::{Refusal, Server, StoreError, Transmit, SUBMIT_RATE};
use crate::identity::NodeKey;
use crate::wire::control::{Message, RefusalCode};
use crate::wire::trust::{Statement, TrustError, TrustLedger};

/// Most requests and approvals waiting for one node.
pub const MAX_OUTBOX: usize = 64;
/// Most ledger statements sent back to one node per registration.
const MAX_RESYNC: usize = 1024;

/// What an item is for, in its target's outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Request,
    Approval,
    Ledger,
}

/// Submissions that may wait while another is being written; more are refused (`RateLimited`,
/// counted as `store_busy`), and their nodes retry.
const MAX_DEFERRED_SUBMITS: usize = 4096;

/// A refusal to answer `req` with.
fn refused(req: Request, code: RefusalCode) -> Option<Message> {
    Some(Message::Refused {
        echo: req.nonce,
        code,
    })
}

/// A submission being written (see `writes`): what to do once it is.
pub(super) struct SubmitWaiting {
    pub req: Request,
    statement: Statement,
    target: NodeKey,
    /// Admit it to the ledger.
    ledger: bool,
    /// The outbox item it supersedes.
    replaces: Option<u64>,
    now_ms: u64,
}

/// What to do with a statement that verified.
#[derive(Debug)]
enum Plan {
    /// Nothing new: it is known already, or superseded by what is.
    Known,
    /// Store it for `target` (replacing an older item; a new item only if `notify`), and
    /// admit it to the ledger if `ledger`.
    Deliver {
        target: NodeKey,
        ledger: bool,
        replaces: Option<u64>,
        notify: bool,
    },
}

/// Why a statement is refused.
#[derive(Debug, thiserror::Error)]
enum Bad {
    #[error("the sender is not the statement's signer")]
    NotSigner,
    #[error("the sender is not a party to the statement")]
    NotAParty,
    #[error(transparent)]
    Trust(#[from] TrustError),
}

impl Server {
    pub(super) fn submit<'a>(
        &mut self,
        req: Request,
        statement: Statement,
        now: Instant,
        out: &'a mut [u8],
    ) -> Option<Transmit<'a>> {
        if let Err(code) = self.admit_request(req, |b| &mut b.submits, SUBMIT_RATE, now) {
            return self.refusal_reply(req, code, now, out);
        }
        // One submission is written at a time: each is planned against the ledger and outbox
        // its predecessors left (with a store of its own there is never one waiting).
        if self.submitting() {
            if self.deferred_submits.len() >= MAX_DEFERRED_SUBMITS {
                self.counters.refuse(Refusal::StoreBusy);
                return self.refusal_reply(req, RefusalCode::RateLimited, now, out);
            }
            self.deferred_submits.push_back((req, statement));
            return None;
        }
        let message = self.submit_step(req, statement, now)?;
        self.reply(req, &message, now, out)
    }

    /// Takes up the submissions that waited for the one just written, until one is being
    /// written again; their answers are queued.
    pub(super) fn resume_submits(&mut self, now: Instant) {
        while !self.submitting() {
            let Some((req, statement)) = self.deferred_submits.pop_front() else {
                return;
            };
            if let Some(message) = self.submit_step(req, statement, now) {
                self.queue_reply(req, &message, now);
            }
        }
    }

    /// Whether a submission is being written.
    fn submitting(&self) -> bool {
        self.pending
            .values()
            .any(|p| matches!(p, Pending::Submit(_)))
    }

    /// Plans, makes room for, and writes (or queues the write of) one admitted submission;
    /// the answer to give now, if any (none: refused silently because the store failed, or
    /// answered once written).
    fn submit_step(&mut self, req: Request, statement: Statement, now: Instant) -> Option<Message> {
        let now_ms = self.clock.unix_ms(now);
        let plan = match self.plan(&req.sender, &statement, now_ms) {
            Ok(plan) => plan,
            Err(bad) => {
                self.counters.refuse(Refusal::BadStatement);
                tracing::debug!(node = %req.sender, "trust statement refused: {bad}");
                return refused(req, RefusalCode::BadStatement);
            }
        };
        if let Err(refusal) = self.make_room(&req, &statement, &plan, now) {
            self.counters.refuse(refusal);
            return match refusal {
                Refusal::StoreFailed => None,
                _ => refused(req, RefusalCode::RateLimited),
            };
        }
        let Plan::Deliver {
            target,
            ledger,
            replaces,
            notify,
        } = plan
        else {
            return Some(Message::Stored { echo: req.nonce });
        };
        let op = StoreOp::Submit(Box::new(OwnedSubmission {
            ledger: ledger.then(|| statement.clone()),
            replaces,
            deliver: notify.then(|| (target, statement.clone(), now_ms)),
        }));
        let waiting = SubmitWaiting {
            req,
            statement,
            target,
            ledger,
            replaces,
            now_ms,
        };
        match self.write(op) {
            Written::Now(result) => self.submitted(waiting, submitted_of(result), now),
            Written::Queued(ticket) => {
                self.wait_for(ticket, Pending::Submit(Box::new(waiting)));
                None
            }
        }
    }

    /// A submission is written (or not): in effect, passed on, and the `Stored` to answer
    /// with; none when the write failed (the node retries).
    pub(super) fn submitted(
        &mut self,
        waiting: SubmitWaiting,
        id: Result<Submitted, StoreError>,
        now: Instant,
    ) -> Option<Message> {
        let SubmitWaiting {
            req,
            statement,
            target,
            ledger,
            replaces,
            now_ms,
        } = waiting;
        let id = match id {
            Ok(Submitted::Written(id)) => id,
            Ok(Submitted::Superseded) => {
                // Another server sharing the store took a newer statement for the pair, which
                // this one reads with the next trust changes; the node holds the newer one
                // too. What it asked kept is kept, as with a statement superseded here.
                self.store_ok();
                tracing::debug!(from = %req.sender, to = %target, "trust statement superseded in the store");
                return Some(Message::Stored { echo: req.nonce });
            }
            Err(e) => {
                self.store_error(&e);
                self.counters.refuse(Refusal::StoreFailed);
                return None;
            }
        };
        self.store_ok();
        if ledger {
            self.admit(statement.clone(), now_ms);
            self.drop_superseded(&target, &statement);
        }
        if let Some(old) = replaces {
            self.outbox.remove(old);
        }
        if let Some(id) = id {
            let item = Item {
                target,
                statement,
                stored_ms: now_ms,
                source: (!ledger).then(|| self.source_of(&req.from)),
            };
            self.outbox.insert(id, item);
            self.deliver_new(id, now);
        }
        self.counters.statements_stored += 1;
        tracing::debug!(from = %req.sender, to = %target, ledger, "trust statement stored");
        Some(Message::Stored { echo: req.nonce })
    }

    /// Whether a statement that verified and changes something fits, making room for it if
    /// that is fair. Limits, in the order checked:
    ///
    /// - A request or approval: at most [`MAX_OUTBOX`] per target, and
    ///   [`Config::max_outbox`] for all targets together. At either cap the oldest item of
    ///   the source address holding the most (among the target's items, or among all) is
    ///   evicted, from the store first, provided that source holds more than the submitter's
    ///   will; else the new one is refused. A flood from a few addresses thus displaces its
    ///   own items, and honest requests from other addresses still get in.
    /// - A record or revocation about a pair the ledger does not hold: within the ledger's
    ///   size ([`Config::max_trust_pairs`]) and its source's rate of new pairs. Pairs the
    ///   ledger holds can always change: an untrust is never refused for others' traffic.
    ///
    /// Replacing an item of the same kind and parties adds nothing and is never refused.
    ///
    /// [`Config::max_outbox`]: super::Config::max_outbox
    /// [`Config::max_trust_pairs`]: super::Config::max_trust_pairs
    fn make_room(
        &mut self,
        req: &Request,
        statement: &Statement,
        plan: &Plan,
        now: Instant,
    ) -> Result<(), Refusal> {
        let &Plan::Deliver {
            target,
            ledger,
            replaces,
            notify,
        } = plan
        else {
            return Ok(());
        };
        let source = self.source_of(&req.from);
        if ledger {
            let (a, b) = statement.pair();
            if self.ledger.state(&a, &b).is_none() {
                if self.ledger.len() >= self.config.max_trust_pairs {
                    return Err(Refusal::LedgerFull);
                }
                let rate = self.config.new_pairs_per_source;
                if !self.new_pairs.take(source, rate, 1, now) {
                    return Err(Refusal::NewPairs);
                }
            }
            return Ok(());
        }
        if !notify || replaces.is_some() {
            return Ok(());
        }
        // The target's share first: anyone may send anyone requests, so a flood aimed at one
        // node (one that is down, say) must not lock out that node's honest askers either.
        let for_target: Vec<(u64, Source)> = (self.outbox.of(&target))
            .filter_map(|(id, item)| Some((id, item.source?)))
            .collect();
        let victim = if for_target.len() >= MAX_OUTBOX {
            fair_victim(&for_target, source)
        } else if self.outbox.open() >= self.config.max_outbox {
            let largest = self.outbox.largest_share();
            largest.and_then(|(largest, count, oldest)| {
                (largest != source && count > self.outbox.share(source) + 1).then_some(oldest)
            })
        } else {
            return Ok(());
        };
        let Some(victim) = victim else {
            return Err(Refusal::OutboxFull);
        };
        if self.write_quietly(StoreOp::Delivered(victim)).is_err() {
            return Err(Refusal::StoreFailed);
        }
        self.outbox.remove(victim);
        self.counters.outbox_evicted += 1;
        tracing::debug!(from = %req.sender, "outbox full: evicted the oldest request of the source holding the most");
        Ok(())
    }

    /// `node` registered with a ledger digest unlike ours for it: it lost statements (its
    /// trust.json deleted, or restored from an old image) or holds ones we lack. Sends it our
    /// side — each pair's newest statement, signed by the parties, so the node takes nothing
    /// on our word — through its outbox (acknowledged, resent), unless the outbox holds it
    /// already. The node hands us its side in turn (`Registered.resubmit`).
    pub(super) fn resync_ledger(&mut self, node: NodeKey, now: Instant) {
        let now_ms = self.clock.unix_ms(now);
        let ours: Vec<Statement> = (self.ledger.pairs_of(&node))
            .take(MAX_RESYNC)
            .map(|(_, state)| state.to_statement())
            .collect();
        let mut sent = 0;
        for statement in ours {
            // On its way already (the outbox's ledger item for a pair is always the ledger's
            // newest statement about it: admitting one replaces it).
            if self.outbox_item(&node, &statement, Kind::Ledger).is_some() {
                continue;
            }
            // Not held to the global cap, which junk for keys that never collect it can fill:
            // a node that lost its trust.json must get its records back. At most one item per
            // pair of the node's (see above), so these are bounded by the ledger itself.
            let id = self.next_ephemeral;
            self.next_ephemeral += 1;
            let item = Item {
                target: node,
                statement,
                stored_ms: now_ms,
                source: None,
            };
            self.outbox.insert(id, item);
            sent += 1;
        }
        if sent > 0 {
            tracing::info!(%node, statements = sent, "ledger digests differ: sending the node its trust statements");
        }
    }

    /// Checks that `sender` may submit `statement` and that it verifies, and decides what it
    /// changes. Changes nothing itself.
    fn plan(&self, sender: &NodeKey, statement: &Statement, now_ms: u64) -> Result<Plan, Bad> {
        match statement {
            Statement::Request(r) => {
                if r.requester != *sender {
                    return Err(Bad::NotSigner);
                }
                r.verify(now_ms)?;
                Ok(self.plan_delivery(r.target, statement, Kind::Request))
            }
            Statement::Record(r) if !r.is_complete() => {
                let target = r.other(sender)?;
                r.verify_half(sender, now_ms)?;
                Ok(self.plan_delivery(target, statement, Kind::Approval))
            }
            Statement::Record(r) => {
                let target = r.other(sender)?;
                r.verify(now_ms)?;
                Ok(self.plan_ledger(target, statement))
            }
            Statement::Revocation(v) => {
                v.verify(now_ms)?;
                if v.by == *sender {
                    Ok(self.plan_ledger(v.other, statement))
                } else if v.other == *sender {
                    // Handed back: the ledger takes it; its signer, who holds it, is not told.
                    Ok(match self.plan_ledger(v.by, statement) {
                        Plan::Deliver {
                            target, replaces, ..
                        } => Plan::Deliver {
                            target,
                            ledger: true,
                            replaces,
                            notify: false,
                        },
                        known => known,
                    })
                } else {
                    Err(Bad::NotAParty)
                }
            }
        }
    }

    /// A new item for `target`, unless it holds this statement or a newer one of its kind
    /// from the same party.
    fn plan_delivery(&self, target: NodeKey, statement: &Statement, kind: Kind) -> Plan {
        match self.outbox_item(&target, statement, kind) {
            Some((_, held))
                if held.statement == *statement
                    || held.statement.issued_ms() > statement.issued_ms() =>
            {
                Plan::Known
            }
            held => Plan::Deliver {
                target,
                ledger: false,
                replaces: held.map(|(id, _)| id),
                notify: true,
            },
        }
    }

    /// A ledger change delivered to `target`, if the statement takes effect.
    fn plan_ledger(&self, target: NodeKey, statement: &Statement) -> Plan {
        if !takes_effect(&self.ledger, statement) {
            return Plan::Known;
        }
        Plan::Deliver {
            target,
            ledger: true,
            replaces: self
                .outbox_item(&target, statement, Kind::Ledger)
                .map(|(id, _)| id),
            notify: true,
        }
    }

    /// The item of this kind about the same pair in `target`'s outbox.
    pub(super) fn outbox_item(
        &self,
        target: &NodeKey,
        statement: &Statement,
        kind: Kind,
    ) -> Option<(u64, &Item)> {
        let pair = statement.pair();
        self.outbox
            .of(target)
            .find(|(_, item)| kind_of(&item.statement) == kind && item.statement.pair() == pair)
    }

    /// After the ledger took `statement`: the pair's older ledger item waiting for the party
    /// that is not `target` (the one that submitted or signed it, which holds the newer) is
    /// superseded. Left there, it reached a node that had lost its state ahead of the newer
    /// statement, reviving a record its own revocation had ended. Deleted like an
    /// acknowledged one; if the store fails it stays, and the newer statement still wins.
    fn drop_superseded(&mut self, target: &NodeKey, statement: &Statement) {
        let (low, high) = statement.pair();
        let party = if *target == low { high } else { low };
        let Some((id, _)) = self.outbox_item(&party, statement, Kind::Ledger) else {
            return;
        };
        if id < EPHEMERAL_IDS && self.write_quietly(StoreOp::Delivered(id)).is_err() {
            return;
        }
        self.outbox.remove(id);
    }

    /// Admits a stored record or revocation to the ledger (it was verified just before).
    fn admit(&mut self, statement: Statement, now_ms: u64) {
        let admitted = self.ledger.admit(statement, now_ms);
        debug_assert_eq!(admitted, Ok(true), "takes_effect disagrees with the ledger");
    }
}

/// Of `items` (ids oldest first, with their sources), the oldest of the source holding the
/// most, if that source is not `newcomer`'s and holds more than it will (with the new one).
fn fair_victim(items: &[(u64, Source)], newcomer: Source) -> Option<u64> {
    let mut shares: BTreeMap<Source, (usize, u64)> = BTreeMap::new();
    for &(id, source) in items {
        shares.entry(source).or_insert((0, id)).0 += 1;
    }
    let mine = shares.get(&newcomer).map_or(0, |(count, _)| *count);
    let (&largest, &(count, oldest)) = shares.iter().max_by_key(|(_, (count, _))| *count)?;
    (largest != newcomer && count > mine + 1).then_some(oldest)
}

pub(super) fn kind_of(statement: &Statement) -> Kind {
    match statement {
        Statement::Request(_) => Kind::Request,
        Statement::Record(r) if !r.is_complete() => Kind::Approval,
        Statement::Record(_) | Statement::Revocation(_) => Kind::Ledger,
    }
}

/// Whether admitting this verified record or revocation would change its pair's state: the
/// ledger's own rule (the newest wins, a revocation wins a tie), asked before the store write
/// because the ledger can only be changed, not rolled back, and nothing may change in memory
/// unless it is durable.
pub(super) fn takes_effect(ledger: &TrustLedger, statement: &Statement) -> bool {
    let (a, b) = statement.pair();
    match ledger.state(&a, &b) {
        None => !matches!(statement, Statement::Request(_)),
        Some(state) => takes_effect_over(statement, &state.to_statement()),
    }
}
