//! Birthday probing: a direct path when exactly one side's NAT maps endpoint-dependently.
//!
//! The hard side's NAT (endpoint-dependent mapping: "symmetric") gives every destination a
//! new public port, so nobody can tell the other side which port to send to. The easy side's
//! NAT (endpoint-independent mapping, port-restricted filtering: Linux masquerade) keeps one
//! public port but lets in only what comes from an address and port it has sent to. An
//! ordinary punch fails both ways. So the hard side opens [`SPARES`] mappings at once — a
//! probe from each of as many spare sockets to the easy side's public endpoint — while the
//! easy side probes random ports of the hard side's public address. A probe that lands on one
//! of the opened ports passes the hard NAT (the mapping was opened towards exactly that
//! endpoint), and its answer passes the easy NAT (which just sent to that port); the pair then
//! talks over that spare socket, and the others are closed.
//!
//! The arithmetic. With N = 256 mappings among the 64,512 ports a NAT allocates from
//! (1024–65535), each probe to a port not tried before hits with probability about
//! N / 64,512 ≈ 1/252, so m probes all miss with probability (1 − 1/252)^m: 95 % success
//! after 754 probes, 99 % after 1,160, 99.97 % after the whole budget of [`PROBES`] = 2,048.
//! At [`PROBE_RATE`] = 1,000 a second that is 0.75 s for 95 % and 2.05 s for the budget,
//! after [`START_AFTER`] (0.5 s) in which the ordinary punch gets its chance and, when it
//! wins (a full-cone NAT measured as endpoint-independent, a port mapping, a shared LAN), no
//! birthday probe is sent at all. A NAT that allocates sequentially is found the same way.
//!
//! The cost and the pacing: each side sends at most 2,048 probes (~270 KB) per attempt, at
//! 1,000 a second in bursts of at most 25 (one every [`TICK`]); one attempt runs at a time per
//! node, whatever the number of peers; an attempt that fails makes the next one with that
//! peer wait [`RETRY`], doubled per failure up to [`MAX_RETRY`]. The relay carries the pair's
//! traffic throughout.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::timers::{Earliest, Timer};
use super::{Node, Socket};
use crate::identity::NodeKey;
use crate::wire::control::{Message, NatKind};
use crate::wire::envelope::NonceSource;

/// Spare sockets the hard side opens: the mappings the easy side looks for.
pub const SPARES: usize = 256;
/// Probes each side sends in one attempt, at most.
const PROBES: u32 = 2048;
/// Probes a second.
const PROBE_RATE: u64 = 1000;
/// How long after the introduction the probing starts, when no direct path was found by then.
const START_AFTER: Duration = Duration::from_millis(500);
/// How long an attempt lasts from its start: the budget at the rate, and time for answers.
const WINDOW: Duration = Duration::from_secs(3);
/// The node's tick while an attempt runs: probes go out in bursts of this long's worth.
pub const TICK: Duration = Duration::from_millis(25);
/// Wait before the next attempt with a peer after a failed one (doubled per failure).
const RETRY: Duration = Duration::from_secs(60);
const MAX_RETRY: Duration = Duration::from_secs(30 * 60);
/// The ports a NAT allocates from.
const FIRST_PORT: u16 = 1024;

/// Which side of the pair this node plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Our NAT maps endpoint-dependently: we open the spare mappings.
    Hard,
    /// The peer's does: we look for its mappings.
    Easy,
}

/// The role for our NAT `own` and the peer's `peer`; `None` when birthday probing cannot help
/// (no NAT on one side, both hard, not measured).
pub(super) fn role(own: NatKind, peer: NatKind) -> Option<Role> {
    match (own, peer) {
        (NatKind::EndpointDependent, NatKind::EndpointIndependent) => Some(Role::Hard),
        (NatKind::EndpointIndependent, NatKind::EndpointDependent) => Some(Role::Easy),
        _ => None,
    }
}

/// A set of spare sockets, by number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spares([u64; SPARES / 64]);

impl Spares {
    fn all() -> Spares {
        Spares([u64::MAX; SPARES / 64])
    }

    fn insert(&mut self, i: u8) {
        self.0[usize::from(i) / 64] |= 1 << (i % 64);
    }

    pub fn contains(&self, i: u8) -> bool {
        self.0[usize::from(i) / 64] & (1 << (i % 64)) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == [0; SPARES / 64]
    }

    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=u8::MAX).filter(|&i| self.contains(i))
    }
}

/// One attempt with one peer.
struct Attempt {
    peer: usize,
    role: Role,
    /// The peer's public endpoint: where the hard side's spares send, and (its address) where
    /// the easy side's probes go.
    target: SocketAddr,
    /// The introduction.
    introduced: Instant,
    start: Instant,
    until: Instant,
    /// Probes sent: nonce, then the port probed (easy) or the spare sent from (hard), and when.
    sent: Vec<(u64, u16, Instant)>,
    /// Ports probed (easy side), one bit each, so none is probed twice.
    tried: Box<[u64; 1024]>,
}

/// Back-off per peer after failed attempts.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    next: Instant,
}

/// The node's birthday probing: the attempt running, if any, and the back-off per peer.
pub(super) struct Birthday {
    attempt: Option<Attempt>,
    backoff: BTreeMap<NodeKey, Backoff>,
    rng: NonceSource,
    /// The spares the daemon should hold open.
    spares: Spares,
}

impl Birthday {
    pub fn new(seed: u64) -> Birthday {
        Birthday {
            attempt: None,
            backoff: BTreeMap::new(),
            rng: NonceSource::new(seed ^ 0xb1b2_b3b4_b5b6_b7b8),
            spares: Spares::default(),
        }
    }

    /// An attempt is running (the node ticks at [`TICK`]).
    pub fn is_running(&self) -> bool {
        self.attempt.is_some()
    }

    /// A random port not probed before in this attempt.
    fn fresh_port(rng: &mut NonceSource, tried: &mut [u64; 1024]) -> u16 {
        loop {
            let span = u64::from(u16::MAX - FIRST_PORT) + 1;
            let port = FIRST_PORT + (rng.next_nonce() % span) as u16;
            let (word, bit) = (usize::from(port) / 64, port % 64);
            if tried[word] & (1 << bit) == 0 {
                tried[word] |= 1 << bit;
                return port;
            }
        }
    }
}

impl Node {
    /// The spare sockets the daemon should hold open now: all of them while this node is the
    /// hard side of an attempt, then those that direct paths use.
    pub fn spares(&self) -> Spares {
        self.birthday.spares
    }

    /// The rendezvous introduced us to peer `index` (NAT `peer_nat`, public endpoint first in
    /// `candidates`): start an attempt if the NATs call for one and none is running.
    pub(super) fn birthday_introduced(
        &mut self,
        index: usize,
        peer_nat: NatKind,
        candidates: &[SocketAddr],
        now: Instant,
    ) {
        let Some(link) = &self.link else {
            return;
        };
        // A configured or mapped endpoint is reached as it is: no mapping to guess.
        let own = if link.configured.is_some() || self.mapped.is_some() {
            NatKind::Unknown
        } else {
            link.nat
        };
        let (Some(role), Some(&target)) = (role(own, peer_nat), candidates.first()) else {
            return;
        };
        let key = self.peers[index].key;
        let birthday = &mut self.birthday;
        if birthday.attempt.is_some() || birthday.backoff.get(&key).is_some_and(|b| now < b.next) {
            return;
        }
        let start = now + START_AFTER;
        birthday.attempt = Some(Attempt {
            peer: index,
            role,
            target,
            introduced: now,
            start,
            until: start + WINDOW,
            sent: Vec::with_capacity(PROBES as usize),
            tried: Box::new([0; 1024]),
        });
        if role == Role::Hard {
            // Opened now, so they are ready when the probing starts.
            birthday.spares = Spares::all();
        }
        self.counters.birthday_attempts += 1;
        tracing::debug!(peer = %key, ?role, %target, "birthday probing starts in 0.5 s");
        self.wake_by(now + TICK, Timer::Birthday);
    }

    /// While an attempt runs, the node ticks at [`TICK`].
    pub(super) fn birthday_deadlines(&self, base: Instant, next: &mut Earliest) {
        if self.birthday.is_running() {
            next.at(Some(base + TICK), Timer::Birthday);
        }
    }

    /// Runs the attempt: its probes due at `now`, and its end. Also keeps the set of spares in
    /// use up to date.
    pub(super) fn drive_birthday(&mut self, now: Instant) {
        if let Some(attempt) = &self.birthday.attempt {
            let index = attempt.peer;
            let peer = &self.peers[index];
            // A direct path from before the introduction may be stale (the peer restarted,
            // its NAT forgot the mapping): it does not count.
            let direct = peer.path.direct_heard_since(attempt.introduced);
            if !peer.trusted || (direct && now < attempt.start) {
                // Not needed (the ordinary punch won), or no longer allowed.
                self.end_birthday(None, now);
            } else if direct {
                self.end_birthday(Some(true), now);
            } else if now >= attempt.until {
                self.end_birthday(Some(false), now);
            } else if now >= attempt.start {
                self.birthday_probes(now);
            }
        }
        if self.birthday.attempt.is_none() {
            let mut spares = Spares::default();
            for peer in &self.peers {
                if let Some(i) = peer.path.spare() {
                    spares.insert(i);
                }
            }
            self.birthday.spares = spares;
        }
    }

    /// Sends the probes due by `now` at [`PROBE_RATE`], up to [`PROBES`].
    fn birthday_probes(&mut self, now: Instant) {
        let Some(attempt) = &self.birthday.attempt else {
            return;
        };
        let elapsed = now.saturating_duration_since(attempt.start);
        let due = (elapsed.as_millis() as u64 * PROBE_RATE / 1000 + 1).min(u64::from(PROBES));
        let (index, role, target) = (attempt.peer, attempt.role, attempt.target);
        let message = Message::Probe {
            target: self.peers[index].key,
        };
        while let Some(attempt) = self
            .birthday
            .attempt
            .as_mut()
            .filter(|a| (a.sent.len() as u64) < due)
        {
            let (socket, to, tag) = match role {
                Role::Hard => {
                    let spare = (attempt.sent.len() % SPARES) as u8;
                    (Socket::Spare(spare), target, u16::from(spare))
                }
                Role::Easy => {
                    let port = Birthday::fresh_port(&mut self.birthday.rng, &mut attempt.tried);
                    (Socket::Main, SocketAddr::new(target.ip(), port), port)
                }
            };
            let nonce = self.send_control_from(socket, to, &message, now);
            if let Some(attempt) = &mut self.birthday.attempt {
                attempt.sent.push((nonce, tag, now));
            }
            self.counters.birthday_probes += 1;
        }
    }

    /// A probe answer from `from` on `socket` echoing `echo`, for peer `index`: if it answers
    /// one of the attempt's probes, how long the probe took.
    pub(super) fn birthday_answered(
        &self,
        index: usize,
        echo: u64,
        from: SocketAddr,
        socket: Socket,
        now: Instant,
    ) -> Option<Duration> {
        let attempt = self.birthday.attempt.as_ref().filter(|a| a.peer == index)?;
        let &(_, tag, sent) = attempt.sent.iter().find(|(nonce, ..)| *nonce == echo)?;
        let matches = match attempt.role {
            Role::Hard => socket == Socket::Spare(tag as u8) && from == attempt.target,
            Role::Easy => {
                socket == Socket::Main && from == SocketAddr::new(attempt.target.ip(), tag)
            }
        };
        matches.then(|| now.saturating_duration_since(sent))
    }

    /// Ends the attempt: `Some(true)` with a direct path, `Some(false)` without (the next
    /// waits), `None` when it was not needed after all.
    fn end_birthday(&mut self, direct: Option<bool>, now: Instant) {
        let Some(attempt) = self.birthday.attempt.take() else {
            return;
        };
        let key = self.peers[attempt.peer].key;
        tracing::debug!(peer = %key, role = ?attempt.role, ?direct, probes = attempt.sent.len(), "birthday probing ends");
        match direct {
            Some(true) => {
                self.counters.birthday_direct += 1;
                self.birthday.backoff.remove(&key);
            }
            Some(false) => {
                self.counters.birthday_failed += 1;
                let failures = self
                    .birthday
                    .backoff
                    .get(&key)
                    .map_or(1, |b| b.failures.saturating_add(1));
                let wait = RETRY
                    .saturating_mul(1 << (failures - 1).min(16))
                    .min(MAX_RETRY);
                self.birthday.backoff.insert(
                    key,
                    Backoff {
                        failures,
                        next: now + wait,
                    },
                );
            }
            None => {}
        }
    }
}
