//! The invariants, checked on every packet and datagram as it crosses, and the bookkeeping they
//! need: which packet was written where and when, each node's gate as it was seen to change,
//! and what each operator last said about each pair (the verbs).
//!
//! Nodes are numbered by their index among the honest nodes; attackers have no number here:
//! nobody honest ever trusts one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pilot::identity::NodeKey;
use pilot::rendezvous::{Refusal, Server};
use pilot::wire::control::{Message, RELAY_FROM};
use pilot::wire::envelope;

use crate::world::{World, MAX_NODES, MAX_OUTBOX};

/// How long after a node's gate for a peer closed a packet it wrote before may still reach
/// the peer's TUN: the longest a datagram can be under way, over the relay (two hops, each the
/// simulated latency plus the most extra delay the fault model adds). Nothing written after
/// the gate closed may arrive at all (checked separately).
pub fn untrust_window(latency: Duration, max_extra: Duration) -> Duration {
    (latency + max_extra) * 2 + Duration::from_millis(1)
}

/// A packet written into an honest node's TUN side.
pub struct Written {
    pub from: usize,
    pub to: usize,
    pub at: Instant,
    /// Order among the case's events (several happen at one instant).
    pub seq: u64,
    /// Whether the writer's gate for the destination was open when it was written.
    pub gate_open: bool,
}

/// What an operator last said about a peer through the verbs: `Some(true)` after `handshake`
/// or `approve` succeeded, `Some(false)` after `untrust` or `reject`; `None` once the node lost
/// its trust state (what it said may be gone with it).
pub type Consent = Option<bool>;

/// Refusals of an honest node's own message that its own state explains, not anyone else's
/// traffic: it is not registered (the rendezvous restarted or it expired), its peer is not
/// (yet) registered or trusted at the rendezvous, or it went over its own rate (attackers never
/// share its address, so the new-key limit per address is its own too).
pub const EXCUSED: [Refusal; 4] = [
    Refusal::NotRegistered,
    Refusal::UnknownTarget,
    Refusal::NotAllowed,
    Refusal::RateLimited,
];

#[derive(Default)]
pub struct Checks {
    pub written: BTreeMap<u64, Written>,
    pub reached: BTreeSet<u64>,
    /// (node, peer) → whether node's gate for peer was open when last looked at.
    pub gate: BTreeMap<(usize, usize), bool>,
    /// (node, peer) → when node's gate for peer was last seen to close, and the event number.
    pub closed_at: BTreeMap<(usize, usize), (Instant, u64)>,
    /// Events so far (packets written, gates closed), to order those at one instant.
    pub seq: u64,
    pub consent: BTreeMap<(usize, usize), Consent>,
    pub stats: Stats,
}

/// What a case exercised, so a pass is not vacuous.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub written: u64,
    pub reached_tun: u64,
    pub reached_after_close: u64,
    pub punches: u64,
    pub relayed: u64,
    pub honest_to_server: u64,
    pub honest_refused: BTreeMap<&'static str, u64>,
    pub attacker_keys: u64,
    pub attacker_registered: u64,
    pub attacker_datagrams: u64,
    pub replays: u64,
    pub verbs: u64,
    pub node_restarts: u64,
    pub lost_state: u64,
    pub server_restarts: u64,
    pub empty_store: u64,
    pub nat_flushes: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub delayed: u64,
    pub max_registry: usize,
    pub max_outbox: usize,
    pub max_outbox_one: usize,
    pub max_incoming: usize,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.written += o.written;
        self.reached_tun += o.reached_tun;
        self.reached_after_close += o.reached_after_close;
        self.punches += o.punches;
        self.relayed += o.relayed;
        self.honest_to_server += o.honest_to_server;
        for (k, v) in &o.honest_refused {
            *self.honest_refused.entry(k).or_default() += v;
        }
        self.attacker_keys += o.attacker_keys;
        self.attacker_registered += o.attacker_registered;
        self.attacker_datagrams += o.attacker_datagrams;
        self.replays += o.replays;
        self.verbs += o.verbs;
        self.node_restarts += o.node_restarts;
        self.lost_state += o.lost_state;
        self.server_restarts += o.server_restarts;
        self.empty_store += o.empty_store;
        self.nat_flushes += o.nat_flushes;
        self.dropped += o.dropped;
        self.duplicated += o.duplicated;
        self.delayed += o.delayed;
        self.max_registry = self.max_registry.max(o.max_registry);
        self.max_outbox = self.max_outbox.max(o.max_outbox);
        self.max_outbox_one = self.max_outbox_one.max(o.max_outbox_one);
        self.max_incoming = self.max_incoming.max(o.max_incoming);
    }
}

/// Refusal counts of a server, to tell what one datagram was refused for.
pub fn refusals(server: &Server) -> [u64; Refusal::ALL.len()] {
    Refusal::ALL.map(|r| server.counters().refused(r))
}

/// The refusals one datagram caused.
pub fn refused_between(
    before: &[u64; Refusal::ALL.len()],
    after: &[u64; Refusal::ALL.len()],
) -> Vec<Refusal> {
    Refusal::ALL
        .iter()
        .zip(before.iter().zip(after))
        .filter(|(_, (b, a))| a > b)
        .map(|(r, _)| *r)
        .collect()
}

impl World {
    /// Every key (honest or an attacker's) whose fresh registration is at `to`: several
    /// when an attacker registers many keys from one socket.
    pub fn registered_at(&self, to: SocketAddr) -> Vec<NodeKey> {
        let honest = self.honest.iter().map(|h| h.key);
        let attackers = self.attackers.iter().flat_map(|a| a.keys());
        honest
            .chain(attackers)
            .filter(|k| {
                self.server
                    .registration(k, self.now)
                    .is_some_and(|r| r.observed == to)
            })
            .collect()
    }

    /// Invariants 2 and 3 on what the rendezvous sends to `to`, as it sends it. `reply_to`:
    /// the key an answer is for (the request's signer; a relayed frame's destination); `None`
    /// for what the server queued on its own, which every key registered at `to` receives.
    /// Every message is decoded; the only endpoints any may carry are the recipient's own
    /// (`Registered`, `NatProbeReply`: the address the answer goes to) and, in a `Punch`, those
    /// of a node the ledger says trusts the recipient.
    pub fn check_from_server(
        &mut self,
        to: SocketAddr,
        reply_to: Option<NodeKey>,
        relay_to: Option<NodeKey>,
        bytes: &[u8],
    ) {
        let recipients = || match reply_to {
            Some(key) => vec![key],
            None => self.registered_at(to),
        };
        let seed = self.seed;
        let ledger = self.server.ledger();
        if bytes.first() == Some(&RELAY_FROM) {
            let (src, _) = pilot::wire::control::parse_relay(bytes).expect("a relay frame");
            let dst = relay_to.expect("a relayed frame answers a relay frame");
            assert!(
                ledger.trusted(&src, &dst),
                "seed {seed}: the relay forwarded {src} → {dst}, a pair the ledger does not trust"
            );
            self.assert_honest_pair(&src, &dst, "relayed between");
            self.checks.stats.relayed += 1;
            return;
        }
        let opened = envelope::open(bytes).expect("the server seals what it sends");
        let message = Message::decode(opened.kind, opened.body)
            .unwrap_or_else(|e| panic!("seed {seed}: the server sent an undecodable message: {e}"));
        match message {
            Message::Punch { peer, .. } => {
                let recipients = recipients();
                assert!(
                    !recipients.is_empty(),
                    "seed {seed}: a Punch about {peer} to an address no key registered at"
                );
                for recipient in &recipients {
                    assert!(
                        ledger.trusted(recipient, &peer),
                        "seed {seed}: {peer}'s endpoints told to {recipient}, which it does not \
                         trust"
                    );
                    self.assert_honest_pair(recipient, &peer, "introduced");
                }
                self.checks.stats.punches += 1;
            }
            Message::Registered { observed, .. } | Message::NatProbeReply { observed, .. } => {
                assert_eq!(
                    observed, to,
                    "seed {seed}: an endpoint told to someone other than its owner"
                );
            }
            Message::Deliver { statement, .. } => {
                let (low, high) = statement.pair();
                // To one of its parties, at the address that party registered from.
                let party_at = |k: &NodeKey| {
                    reply_to.map_or_else(
                        || {
                            self.server
                                .registration(k, self.now)
                                .is_some_and(|r| r.observed == to)
                        },
                        |r| r == *k,
                    )
                };
                assert!(
                    party_at(&low) || party_at(&high),
                    "seed {seed}: a statement about {low} and {high} delivered to {to}"
                );
            }
            Message::Challenge { .. }
            | Message::Refused { .. }
            | Message::Stored { .. }
            | Message::LookupReply { .. }
            | Message::NameReleased { .. } => {}
            other => panic!("seed {seed}: the server sent a node's message: {other:?}"),
        }
    }

    /// Nobody honest ever trusts an attacker: a pair the ledger trusts that mixes the two
    /// means trust was forged.
    pub fn assert_honest_pair(&self, a: &NodeKey, b: &NodeKey, what: &str) {
        let honest = |k: &NodeKey| self.honest.iter().any(|h| h.key == *k);
        assert!(
            honest(a) == honest(b),
            "seed {}: {what} {a} and {b}: an honest node and an attacker",
            self.seed
        );
    }

    /// Records node `i`'s gates; its own verbs bind it at once (1e).
    pub fn observe_gates(&mut self, i: usize) {
        for y in 0..self.honest.len() {
            if y == i {
                continue;
            }
            let open = self.honest[i].node.is_trusted(&self.honest[y].key);
            let was = self.checks.gate.insert((i, y), open);
            if was == Some(true) && !open {
                self.checks.seq += 1;
                let seq = self.checks.seq;
                self.checks.closed_at.insert((i, y), (self.now, seq));
            }
            if open {
                assert!(
                    self.checks.consent.get(&(i, y)) != Some(&Some(false)),
                    "seed {}: node {i} trusts node {y} after its operator withdrew (untrust or \
                     reject) and did not ask again",
                    self.seed
                );
            }
        }
    }

    /// Invariant 1 on a packet node `x` hands to its TUN.
    pub fn reached_tun(&mut self, x: usize, packet: &[u8]) {
        let seed = self.seed;
        let src: [u8; 16] = packet[8..24].try_into().unwrap();
        let y = self
            .honest
            .iter()
            .position(|h| h.node.addr().to_ipv6().octets() == src)
            .unwrap_or_else(|| panic!("seed {seed}: a packet from no honest node reached a TUN"));
        let id = u64::from_be_bytes(packet[48..56].try_into().unwrap());
        let w = self
            .checks
            .written
            .get(&id)
            .expect("a packet the case wrote");
        assert!(
            w.from == y && w.to == x,
            "seed {seed}: packet {id} arrived with the wrong addresses"
        );
        assert!(
            self.checks.reached.insert(id),
            "seed {seed}: packet {id} reached node {x}'s TUN twice (a replay got through)"
        );
        let (kx, ky) = (self.honest[x].key, self.honest[y].key);
        assert!(
            self.honest[x].node.is_trusted(&ky),
            "seed {seed}: node {x} handed node {y}'s packet to its TUN without trusting it"
        );
        assert!(
            w.gate_open,
            "seed {seed}: node {y} sent a packet to node {x} written while its gate was closed"
        );
        if !self.honest[y].node.is_trusted(&kx) {
            let closed = self.checks.closed_at.get(&(y, x)).copied();
            let late = closed.is_some_and(|(c, seq)| w.seq > seq || self.now > c + self.window);
            assert!(
                closed.is_some() && !late,
                "seed {seed}: node {x} got node {y}'s packet (written at {:?}) at {:?}, after \
                 node {y} stopped trusting it at {:?} (window {:?})",
                w.at - self.clock.origin(),
                self.now - self.clock.origin(),
                closed.map(|(c, _)| c - self.clock.origin()),
                self.window
            );
            self.checks.stats.reached_after_close += 1;
        }
        self.checks.stats.reached_tun += 1;
    }

    /// Invariant 5: state stays bounded whatever the attackers send.
    pub fn check_sizes(&mut self) {
        let seed = self.seed;
        let s = self.server.state_sizes();
        let st = &mut self.checks.stats;
        st.max_registry = st.max_registry.max(s.registry);
        st.max_outbox = st.max_outbox.max(s.outbox);
        st.max_outbox_one = st.max_outbox_one.max(s.outbox_largest);
        assert!(s.registry <= MAX_NODES, "seed {seed}: registry {s:?}");
        assert!(
            s.replay_senders <= 2 * MAX_NODES,
            "seed {seed}: replay {s:?}"
        );
        // The global cap, plus what is not held to it: revocations that end trust and
        // ledgers sent back to nodes that lost theirs, at most one item per pair and party.
        assert!(
            s.outbox <= MAX_OUTBOX + 2 * s.ledger,
            "seed {seed}: outbox {s:?}"
        );
        assert!(s.new_key_sources <= 65_536, "seed {seed}: sources {s:?}");
        assert!(s.queued <= 4096, "seed {seed}: queued {s:?}");
        let honest = self.honest.len();
        for (i, h) in self.honest.iter().enumerate() {
            let n = h.node.state_sizes(self.now);
            st.max_incoming = st.max_incoming.max(n.incoming);
            // Strangers get no peer entry and no replay state: only honest keys are ever
            // trusted, and the rendezvous.
            assert!(n.peers < honest, "seed {seed}: node {i} peers {n:?}");
            assert!(
                n.replay_senders <= honest,
                "seed {seed}: node {i} replay {n:?}"
            );
            // Only honest nodes ever deal with an honest node: a request from an attacker
            // waits in `incoming`, but nothing of theirs makes it into the ledger.
            assert!(n.ledger < honest, "seed {seed}: node {i} ledger {n:?}");
            assert!(n.incoming <= 1024, "seed {seed}: node {i} incoming {n:?}");
            assert!(n.approved <= 1024, "seed {seed}: node {i} approved {n:?}");
            assert!(
                n.unsubmitted <= 4096,
                "seed {seed}: node {i} unsubmitted {n:?}"
            );
            assert!(n.inflight <= 256, "seed {seed}: node {i} inflight {n:?}");
            assert!(n.lookups <= 64, "seed {seed}: node {i} lookups {n:?}");
            assert!(
                n.control_out <= 4096,
                "seed {seed}: node {i} control_out {n:?}"
            );
        }
    }
}
