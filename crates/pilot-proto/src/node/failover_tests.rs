//! Several rendezvous: moving on when the one in use stops answering, and back to the first
//! once it answers again (see `failover`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::failover::{FAILBACK_EVERY, FAILOVER_AFTER, FAILOVER_JITTER};
use super::tests::{ep, identity};
use super::*;
use crate::clock::WallClock;
use crate::identity::Identity;
use crate::wire::control::{Message, NAT_PROBE, NAT_PROBE_REPLY, REGISTER, REGISTERED};
use crate::wire::envelope;

struct World {
    node: Node,
    clock: WallClock,
    now: Instant,
    out: Vec<u8>,
    /// Each rendezvous' identity number and address.
    first: (u8, SocketAddr),
    second: (u8, SocketAddr),
    /// Which of the two answer registrations (in `run`).
    alive: [bool; 2],
}

impl World {
    fn new() -> World {
        World::with(false)
    }

    /// With `shared`, the two rendezvous are instances on one registry (`shared_registry`).
    fn with(shared: bool) -> World {
        let clock = WallClock::new(Instant::now(), 1_800_000_000_000);
        let first = (9, ep("203.0.113.10:7000"));
        let second = (8, ep("203.0.113.20:7000"));
        let config = |(id, addr): &(u8, SocketAddr)| RendezvousConfig {
            addr: *addr,
            alt_port: addr.port() + 1,
            key: Some(identity(*id).public_key()),
            stream: None,
        };
        let node = Node::new(NodeConfig {
            identity: identity(1),
            peers: Vec::new(),
            trust: Default::default(),
            hostname: None,
            auto_approve: false,
            keepalive: None,
            seed: 5,
            rendezvous: Some(config(&first)),
            standby_rendezvous: vec![config(&second)],
            shared_registry: shared,
            mtu: 1380,
            lan: Vec::new(),
            endpoint: None,
            local_port: 51870,
            clock,
        })
        .unwrap();
        World {
            node,
            clock,
            now: clock.origin(),
            out: vec![0; 2048],
            first,
            second,
            alive: [false; 2],
        }
    }

    /// Runs the node's timers for `d` in 100 ms steps, the rendezvous that are alive answering
    /// its registrations; returns every control message it sent as (to, kind, nonce).
    fn run(&mut self, d: Duration) -> Vec<(SocketAddr, u8, u64)> {
        let end = self.now + d;
        let mut sent = Vec::new();
        loop {
            self.node.handle_timeout(self.now);
            let mut registers = Vec::new();
            while let Some(t) = self.node.poll_transmit(self.now, &mut self.out) {
                if let Ok(opened) = envelope::open(t.payload) {
                    sent.push((t.to, opened.kind, opened.nonce));
                    if opened.kind == REGISTER {
                        registers.push((t.to, opened.nonce));
                    }
                }
            }
            for (to, echo) in registers {
                for at in [0, 1] {
                    let addr = if at == 0 { self.first.1 } else { self.second.1 };
                    if self.alive[at] && to == addr {
                        self.registered(at, echo);
                    }
                }
            }
            if self.now >= end {
                return sent;
            }
            self.now += Duration::from_millis(100);
        }
    }

    /// `message` arrives from `from`, signed with `key`.
    fn answer(&mut self, key: &Identity, from: SocketAddr, kind: u8, message: &Message) {
        let mut body = Vec::new();
        message.encode(&mut body);
        let mut sealed = vec![0u8; envelope::OVERHEAD + body.len()];
        let unix_ms = self.clock.unix_ms(self.now);
        let nonce = unix_ms ^ u64::from(kind);
        let n = envelope::seal(&mut sealed, kind, key.signing_key(), unix_ms, nonce, &body);
        let n = n.unwrap();
        let mut out = vec![0u8; 2048];
        self.node
            .handle_datagram(from, &sealed[..n], self.now, &mut out);
    }

    fn registered(&mut self, at: usize, echo: u64) {
        let (n, from) = if at == 0 { self.first } else { self.second };
        let key = identity(n);
        let message = Message::Registered {
            echo,
            observed: ep("198.51.100.7:40000"),
            keepalive_secs: 25,
            resubmit: false,
        };
        self.answer(&key, from, REGISTERED, &message);
    }
}

fn registers_to(sent: &[(SocketAddr, u8, u64)], to: SocketAddr) -> Vec<u64> {
    let sent = sent
        .iter()
        .filter(|(t, kind, _)| *t == to && *kind == REGISTER);
    sent.map(|(_, _, nonce)| *nonce).collect()
}

#[test]
fn a_silent_rendezvous_is_left_for_the_next_and_the_first_is_taken_back_when_it_answers() {
    let mut w = World::new();
    let (first, second) = (w.first.1, w.second.1);
    w.alive = [true, true];
    let sent = w.run(Duration::from_secs(1));
    assert!(
        registers_to(&sent, second).is_empty(),
        "only the first is used"
    );
    assert!(w.node.is_registered(w.now));
    let status = w.node.net_status(w.now);
    assert_eq!(status.rendezvous, Some(first.to_string()));
    assert_eq!(status.standby, vec![second.to_string()]);

    // The first dies. The next refresh (25 s) goes unanswered; the node moves on within
    // FAILOVER_AFTER plus its jitter, and never registers with both at once.
    w.alive[0] = false;
    let sent = w.run(Duration::from_secs(25));
    let refresh_at = w.now;
    assert_eq!(registers_to(&sent, first).len(), 1, "the refresh");
    let window = FAILOVER_AFTER + FAILOVER_JITTER + Duration::from_millis(200);
    let sent = w.run(window);
    assert_eq!(registers_to(&sent, second).len(), 1, "{sent:?}");
    assert!(w.now - refresh_at <= window);
    assert_eq!(w.node.counters().rendezvous_switches, 1);
    assert!(w.node.is_registered(w.now));
    let status = w.node.net_status(w.now);
    assert_eq!(status.rendezvous, Some(second.to_string()));
    assert_eq!(status.standby, vec![first.to_string()]);
    assert_eq!(
        status.preferred,
        Some(first.to_string()),
        "status tells why"
    );

    // Asked every FAILBACK_EVERY whether the first is back. A forged answer (another key, at
    // the first's address) changes nothing.
    let sent = w.run(FAILBACK_EVERY);
    let probes: Vec<u64> = (sent.iter())
        .filter(|(t, kind, _)| *t == first && *kind == NAT_PROBE)
        .map(|(_, _, n)| *n)
        .collect();
    assert_eq!(probes.len(), 1, "{sent:?}");
    let reply = Message::NatProbeReply {
        echo: probes[0],
        observed: ep("198.51.100.7:40000"),
        port: 7000,
    };
    w.answer(&identity(66), first, NAT_PROBE_REPLY, &reply);
    assert_eq!(w.node.counters().rendezvous_switches, 1);
    // The real one: the node goes back and registers with it.
    w.alive[0] = true;
    w.answer(&identity(w.first.0), first, NAT_PROBE_REPLY, &reply);
    assert_eq!(w.node.counters().rendezvous_switches, 2);
    let sent = w.run(FAILOVER_JITTER + Duration::from_millis(200));
    assert_eq!(registers_to(&sent, first).len(), 1, "{sent:?}");
    assert!(w.node.is_registered(w.now));
    assert_eq!(w.node.net_status(w.now).rendezvous, Some(first.to_string()));
    assert_eq!(w.node.net_status(w.now).preferred, None);
    // An answer the node did not ask for (no probe out) changes nothing.
    w.answer(&identity(w.first.0), first, NAT_PROBE_REPLY, &reply);
    w.run(Duration::from_secs(60));
    assert_eq!(w.node.counters().rendezvous_switches, 2);
}

#[test]
fn one_rendezvous_is_never_left() {
    let rendezvous = identity(9);
    let rdv = ep("203.0.113.10:7000");
    let clock = WallClock::new(Instant::now(), 1_800_000_000_000);
    let mut a = super::tests::node_with_rendezvous(1, &rendezvous, rdv, Vec::new(), None, clock);
    let mut out = vec![0u8; 2048];
    let mut now = clock.origin();
    for _ in 0..600 {
        a.handle_timeout(now);
        while let Some(t) = a.poll_transmit(now, &mut out) {
            assert_eq!(t.to.ip(), rdv.ip());
        }
        now += Duration::from_millis(100);
    }
    assert_eq!(a.counters().rendezvous_switches, 0);
}

#[test]
fn an_idle_node_asked_for_a_lookup_notices_a_dead_rendezvous_within_seconds() {
    let mut w = World::new();
    let second = w.second.1;
    w.alive = [true, true];
    w.run(Duration::from_secs(1));
    assert!(w.node.is_registered(w.now));
    // The first dies; the node is idle, so it would notice at its next refresh (25 s).
    w.alive[0] = false;
    w.run(Duration::from_secs(5));
    let asked = w.now;
    let name: crate::addr::Hostname = "bob".parse().unwrap();
    w.node
        .lookup(crate::wire::control::Query::Name(name), w.now)
        .unwrap();
    let mut moved = None;
    for _ in 0..150 {
        w.run(Duration::from_millis(100));
        if w.node.net_status(w.now).rendezvous == Some(second.to_string())
            && w.node.is_registered(w.now)
        {
            moved = Some(w.now - asked);
            break;
        }
    }
    let moved = moved.expect("moved to the second");
    assert!(moved <= Duration::from_secs(10), "after {moved:?}");
}

#[test]
fn on_one_registry_a_node_starts_where_its_key_says_and_stays_after_a_failover() {
    let mut w = World::with(true);
    w.alive = [true, true];
    let sent = w.run(Duration::from_secs(1));
    assert!(w.node.is_registered(w.now));
    let start = w.node.net_status(w.now).rendezvous.unwrap();
    let (used, left, other) = if start == w.first.1.to_string() {
        (0, w.first.1, w.second.1)
    } else {
        (1, w.second.1, w.first.1)
    };
    assert!(
        registers_to(&sent, other).is_empty(),
        "one instance at a time"
    );
    assert_eq!(
        w.node.net_status(w.now).preferred,
        None,
        "none is preferred"
    );
    // The one in use dies: the node moves to the other at its next refresh.
    w.alive[used] = false;
    w.run(Duration::from_secs(25) + FAILOVER_AFTER + FAILOVER_JITTER + Duration::from_secs(1));
    assert!(w.node.is_registered(w.now));
    assert_eq!(w.node.net_status(w.now).rendezvous, Some(other.to_string()));
    // It comes back; the node stays (any instance serves any pair): no probe, no move.
    w.alive = [true, true];
    let sent = w.run(FAILBACK_EVERY * 3);
    let probes = (sent.iter())
        .filter(|(to, kind, _)| to.ip() == left.ip() && *kind == NAT_PROBE)
        .count();
    assert_eq!(probes, 0, "{sent:?}");
    assert_eq!(w.node.counters().rendezvous_switches, 1);
    assert_eq!(w.node.net_status(w.now).rendezvous, Some(other.to_string()));
}

#[test]
fn a_node_that_finds_no_rendezvous_answering_backs_off_between_moves() {
    let mut w = World::with(true);
    w.alive = [true, true];
    w.run(Duration::from_secs(1));
    // Both die. Moving on every FAILOVER_AFTER plus up to FAILOVER_JITTER would be about 24
    // moves in two minutes; each move in a row doubles the random wait (up to a minute).
    w.alive = [false, false];
    w.run(Duration::from_secs(25));
    let before = w.node.counters().rendezvous_switches;
    w.run(Duration::from_secs(120));
    let moves = w.node.counters().rendezvous_switches - before;
    assert!((3..=12).contains(&moves), "{moves} moves in two minutes");
    // One answers again: the node registers, and its next move waits the short time again.
    w.alive = [true, true];
    w.run(Duration::from_secs(70));
    assert!(w.node.is_registered(w.now));
}
