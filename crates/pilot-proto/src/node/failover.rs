//! More than one rendezvous (`--rendezvous` given several times): the node registers with
//! the first that answers, in the order given, and moves on when the one it uses stops
//! answering.
//!
//! - **Failover.** Registrations unanswered for [`FAILOVER_AFTER`] make the node register
//!   with the next rendezvous, after a random delay of up to [`FAILOVER_JITTER`] so that every
//!   node of a fleet does not hit the survivor in the same instant. The new rendezvous may
//!   know nothing of the node: it asks for the node's trust statements (`Registered.resubmit`)
//!   and the node hands them over, so it introduces and relays the node's pairs within that
//!   round trip. Direct paths do not involve the rendezvous and carry on meanwhile.
//! - **Noticing in time.** An idle node notices at its next refresh (the keepalive, 25 s by
//!   default). A node relaying traffic through the rendezvous, or waiting for its answer to a
//!   trust statement or a lookup (a verb someone typed), refreshes every [`RELAYED_REFRESH`]
//!   instead, so it moves within about 10 s of the rendezvous' death; the refresh is one
//!   small signed datagram.
//! - **Failback.** While on another than the first, the node asks the first for a NAT probe
//!   every [`FAILBACK_EVERY`]; an answer signed with its pinned key brings the node back, so
//!   nodes that got split between instances (each still reachable by some) end up on the same
//!   one again: two nodes can only meet at a rendezvous they both use.
//! - **One service** (`shared_registry`: the rendezvous are instances sharing one registry,
//!   `pilotd rendezvous --store postgres://…`). Any instance introduces and relays any pair,
//!   so there is no failback, and a node starts at the instance its key picks (the key is
//!   random: a fleet spreads evenly over the instances) instead of all at the first.
//! - **Back-off.** A node that fails over again before it got registered (the survivor is
//!   overwhelmed, or down too) waits twice as long at random each time, up to
//!   [`MAX_FAILOVER_WAIT`]: a fleet whose instances all struggle does not hammer them in
//!   step. The first failover keeps the short wait, so a relayed pair is back within about
//!   10 s.
//!
//! Every rendezvous in such a list has a pinned key (the command line refuses a list with an
//! unpinned one): a failback answer is believed only under that key.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::rendezvous::{RendezvousConfig, RendezvousLink};
use super::timers::{Earliest, Timer};
use super::{Event, Node, DEFAULT_KEEPALIVE};
use crate::identity::NodeKey;
use crate::wire::control::Message;
use crate::wire::envelope::Opened;

/// Registrations unanswered this long move the node to the next rendezvous (two retries).
pub const FAILOVER_AFTER: Duration = Duration::from_secs(4);
/// The most a node waits, at random, before registering with the next rendezvous.
pub const FAILOVER_JITTER: Duration = Duration::from_secs(2);
/// How often a node relaying traffic refreshes its registration (when it has a rendezvous
/// to move to).
pub const RELAYED_REFRESH: Duration = Duration::from_secs(3);
/// How often a node on another than the first rendezvous asks the first whether it is back.
pub const FAILBACK_EVERY: Duration = Duration::from_secs(30);
/// The longest random wait before registering with the next rendezvous, however many
/// failovers in a row came before.
pub const MAX_FAILOVER_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(super) struct Failover {
    /// Every rendezvous, in order of preference; the link talks to `list[current]`.
    list: Vec<RendezvousConfig>,
    current: usize,
    /// The nonce of the NAT probe sent to the first rendezvous, awaiting its answer.
    probe: Option<u64>,
    next_probe: Option<Instant>,
    /// The rendezvous are one service on one registry: no failback (see the module doc).
    shared: bool,
    /// Failovers since the node was last registered: each doubles the next random wait.
    in_a_row: u32,
}

impl Failover {
    /// Failover over `list`, in order of preference; with `shared` (one registry), starting
    /// at the instance `key` picks.
    pub fn new(list: Vec<RendezvousConfig>, shared: bool, key: &NodeKey) -> Failover {
        let current = if shared && list.len() > 1 {
            start_index(key, list.len())
        } else {
            0
        };
        Failover {
            list,
            current,
            shared,
            ..Failover::default()
        }
    }

    /// The rendezvous to use first.
    pub fn first_choice(&self) -> Option<&RendezvousConfig> {
        self.list.get(self.current)
    }

    /// There is a rendezvous to move to.
    pub fn is_on(&self) -> bool {
        self.list.len() > 1
    }

    /// The first rendezvous, while another is in use (none for one service: any will do).
    pub fn preferred(&self) -> Option<SocketAddr> {
        (self.current != 0 && !self.shared)
            .then(|| self.list.first().map(|r| r.addr))
            .flatten()
    }

    /// The rendezvous not in use, in order.
    pub fn standby(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let current = self.current;
        (self.list.iter().enumerate())
            .filter(move |(i, _)| *i != current)
            .map(|(_, r)| r.addr)
    }
}

impl Node {
    /// Failover's part of the rendezvous timers: move on from a silent rendezvous, refresh
    /// often while relaying, and ask the first whether it is back.
    pub(super) fn drive_failover(&mut self, now: Instant) {
        if !self.failover.is_on() {
            return;
        }
        // Someone waits on the rendezvous: traffic through its relay, or a verb's statement or
        // lookup not yet answered. Then a dead rendezvous must be noticed in seconds.
        let relaying = (self.peers.iter()).any(|p| p.trusted && p.path.relays_traffic(now));
        let waiting = relaying || !self.inflight.is_empty() || !self.lookups.is_empty();
        let Some(link) = &mut self.link else {
            return;
        };
        if link.is_registered(now) {
            self.failover.in_a_row = 0;
        }
        if link.unanswered_for(now) >= FAILOVER_AFTER {
            let next = (self.failover.current + 1) % self.failover.list.len();
            self.switch_rendezvous(next, "it stopped answering", now);
            return;
        }
        if waiting {
            link.refresh_within(RELAYED_REFRESH, now);
        }
        let back_home =
            !self.failover.shared && self.failover.current != 0 && link.is_registered(now);
        if back_home && self.failover.next_probe.is_none_or(|t| now >= t) {
            let first = self.failover.list[0].addr;
            self.failover.probe = Some(self.send_control(first, &Message::NatProbe, now));
            self.failover.next_probe = Some(now + FAILBACK_EVERY);
        }
    }

    /// When [`Node::drive_failover`] next has work: the move on from a silent rendezvous, and
    /// while on another than the first, the next failback probe.
    pub(super) fn failover_deadlines(&self, base: Instant, next: &mut Earliest) {
        let Some(link) = self.link.as_ref().filter(|_| self.failover.is_on()) else {
            return;
        };
        let silent = link.unanswered_since().map(|t| t + FAILOVER_AFTER);
        next.at(silent, Timer::Register);
        if !self.failover.shared && self.failover.current != 0 && link.is_registered(base) {
            next.at(self.failover.next_probe.or(Some(base)), Timer::Failback);
        }
    }

    /// A signed answer from the first rendezvous to our failback probe, while we use another:
    /// it is back, so we return to it. Returns whether `message` was that answer.
    pub(super) fn on_failback_answer(
        &mut self,
        from: SocketAddr,
        opened: &Opened<'_>,
        message: &Message,
        now: Instant,
    ) -> bool {
        let Message::NatProbeReply { echo, .. } = message else {
            return false;
        };
        let first = &self.failover.list.first();
        let is_first =
            first.is_some_and(|r| r.addr == from && r.key.is_some_and(|k| k == opened.sender));
        if !is_first || self.failover.current == 0 || self.failover.probe != Some(*echo) {
            return false;
        }
        self.failover.probe = None;
        self.switch_rendezvous(0, "the first one is back", now);
        true
    }

    /// Whether a rendezvous message from `from` signed by `opened.sender` may be the answer
    /// to our failback probe (checked fully in [`Node::on_failback_answer`]).
    pub(super) fn failback_entitled(&self, from: SocketAddr, opened: &Opened<'_>) -> bool {
        self.failover.current != 0
            && self.failover.probe.is_some()
            && (self.failover.list.first())
                .is_some_and(|r| r.addr == from && r.key.is_some_and(|k| k == opened.sender))
    }

    fn switch_rendezvous(&mut self, to: usize, why: &'static str, now: Instant) {
        let Some(old) = self.link.take() else {
            return;
        };
        let config = self.failover.list[to].clone();
        let (from, addr) = (old.config.addr, config.addr);
        let mut link = RendezvousLink::new(config, DEFAULT_KEEPALIVE, old.configured);
        let wait = failover_wait(self.failover.in_a_row);
        self.failover.in_a_row = self.failover.in_a_row.saturating_add(1);
        let jitter_ms = self.nonces.next_nonce() % (wait.as_millis() as u64 + 1);
        link.next_register = Some(now + Duration::from_millis(jitter_ms));
        self.link = Some(link);
        self.failover.current = to;
        self.failover.probe = None;
        self.failover.next_probe = Some(now + FAILBACK_EVERY);
        self.stream_on_switch();
        self.counters.rendezvous_switches += 1;
        self.events.push_back(Event::RendezvousSwitched {
            from,
            to: addr,
            why,
        });
    }
}

/// The most a node waits at random before registering with the next rendezvous, after
/// `in_a_row` failovers without registering: [`FAILOVER_JITTER`], doubled for each.
pub(super) fn failover_wait(in_a_row: u32) -> Duration {
    let doubled = FAILOVER_JITTER.saturating_mul(1 << in_a_row.min(16));
    doubled.min(MAX_FAILOVER_WAIT)
}

/// The instance a node with `key` starts at among `n` sharing a registry. Keys are random,
/// so a fleet spreads evenly; the same key always picks the same instance.
fn start_index(key: &NodeKey, n: usize) -> usize {
    let mut first = [0u8; 8];
    first.copy_from_slice(&key.0[..8]);
    (u64::from_le_bytes(first) % n as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(port: u16) -> RendezvousConfig {
        RendezvousConfig {
            addr: SocketAddr::from(([203, 0, 113, 10], port)),
            alt_port: port + 1,
            key: Some(NodeKey([port as u8; 32])),
            stream: None,
        }
    }

    #[test]
    fn one_rendezvous_is_no_failover_and_the_standby_list_skips_the_current() {
        let key = NodeKey([1; 32]);
        assert!(!Failover::new(vec![config(7000)], false, &key).is_on());
        let f = Failover::new(vec![config(7000), config(7100), config(7200)], false, &key);
        assert!(f.is_on());
        let standby: Vec<u16> = f.standby().map(|a| a.port()).collect();
        assert_eq!(standby, vec![7100, 7200]);
    }

    #[test]
    fn a_fleet_on_one_registry_spreads_over_its_instances_and_backs_off() {
        let list = vec![config(7000), config(7100), config(7200)];
        let mut seen = [0usize; 3];
        for n in 0..3000u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&n.wrapping_mul(2_654_435_761).to_le_bytes());
            key[4..8].copy_from_slice(&n.to_be_bytes());
            let f = Failover::new(list.clone(), true, &NodeKey(key));
            seen[f.current] += 1;
            let again = Failover::new(list.clone(), true, &NodeKey(key));
            assert_eq!(again.current, f.current, "the same key, the same instance");
            assert_eq!(f.preferred(), None, "no instance is preferred");
        }
        assert!(seen.iter().all(|&s| (900..=1100).contains(&s)), "{seen:?}");
        // Independent rendezvous: always the first.
        let f = Failover::new(list, false, &NodeKey([0xff; 32]));
        assert_eq!(f.current, 0);
        // The wait doubles per failover in a row, capped.
        assert_eq!(failover_wait(0), FAILOVER_JITTER);
        assert_eq!(failover_wait(1), FAILOVER_JITTER * 2);
        assert_eq!(failover_wait(3), FAILOVER_JITTER * 8);
        assert_eq!(failover_wait(40), MAX_FAILOVER_WAIT);
    }
}
