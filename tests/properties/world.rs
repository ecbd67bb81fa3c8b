//! One case's world: honest nodes behind the simulation's NATs, attackers on addresses of their
//! own, a real rendezvous `Server` over a `MemoryStore`, and a network that drops, duplicates
//! and delays. Every datagram and packet passes through here, so the invariants
//! (`checks.rs`) are checked on each as it crosses, not sampled afterwards.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pilot::clock::WallClock;
use pilot::identity::{Identity, NodeKey};
use pilot::node::{NetOutput, Node, NodeConfig, RendezvousConfig, TrustState, TunOutput};
use pilot::rendezvous::{Config, MemoryStore, Port, Server};
use pilot::wire::control::{
    Message, ACK, CONNECT, LOOKUP, NAT_PROBE, PUNCH, REGISTER, RELAY_FROM, RELAY_TO, SUBMIT,
};
use pilot::wire::envelope;
use pilot::wire::trust::{Statement, TrustRecord};

use crate::attacker::Attacker;
use crate::checks::{refusals, refused_between, untrust_window, Checks, Written, EXCUSED};
use crate::net::{NatKind, Net};
use crate::rng::Rng;

pub const RDV_IP: &str = "203.0.113.10";
pub const RDV_PORT: u16 = 7000;
pub const NODE_PORT: u16 = 51870;
const EPOCH_MS: u64 = 1_800_000_000_000;
pub const LATENCY: Duration = Duration::from_millis(20);
/// The most a datagram is held up beyond the latency (reordering).
pub const MAX_EXTRA_DELAY: Duration = Duration::from_millis(400);
/// Datagrams remembered for replaying.
const CAPTURED: usize = 512;
/// The rendezvous' caps, small so that attackers reach them within a case.
pub const MAX_NODES: usize = 400;
pub const MAX_OUTBOX: usize = 300;

/// An honest node and what its daemon last saved of its trust state.
pub struct Honest {
    pub host: usize,
    pub local: SocketAddr,
    pub identity: Identity,
    pub key: NodeKey,
    pub node: Node,
    pub saved: TrustState,
    /// Down (the box off) until then, when it starts again; its datagrams are lost meanwhile.
    pub down: Option<(Instant, bool)>,
}

/// Network faults, per mille of datagrams.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub drop: u32,
    pub duplicate: u32,
    pub delay: u32,
}

pub struct World {
    pub seed: u64,
    pub net: Net,
    pub honest: Vec<Honest>,
    pub attackers: Vec<Attacker>,
    pub server: Server,
    pub store: MemoryStore,
    server_host: usize,
    pub now: Instant,
    pub clock: WallClock,
    pub rng: Rng,
    buf: Vec<u8>,
    pub faults: Faults,
    pub captured: Vec<Vec<u8>>,
    /// Hashes of the control datagrams honest nodes sent, and of those the server has seen.
    honest_sent: BTreeSet<u64>,
    seen_at_server: BTreeSet<u64>,
    pub checks: Checks,
    /// See [`untrust_window`].
    pub window: Duration,
    /// Copies of honest nodes' messages the rendezvous took as new, by signer, since it started.
    pub replays_taken: std::collections::BTreeMap<NodeKey, u64>,
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

pub fn server_identity() -> Identity {
    Identity::from_secret_bytes(&[200; 32])
}

/// A node identity from a seed whose address is not reserved.
pub fn identity_from(rng: &mut Rng) -> Identity {
    loop {
        let id = Identity::from_secret_bytes(&rng.bytes::<32>());
        if !id.address().is_reserved() {
            return id;
        }
    }
}

impl World {
    pub fn new(seed: u64, kinds: &[NatKind], attackers: usize) -> World {
        let mut rng = Rng::new(seed);
        let now = Instant::now();
        let clock = WallClock::new(now, EPOCH_MS);
        let mut net = Net::new(LATENCY);
        net.exempt = Some(RDV_IP.parse().unwrap());
        let server_host = net.add_host(RDV_IP, None);
        let store = MemoryStore::new();
        let server = new_server(store.clone(), rng.next_u64(), clock, now);
        let mut world = World {
            seed,
            net,
            honest: Vec::new(),
            attackers: Vec::new(),
            server,
            store,
            server_host,
            now,
            clock,
            rng,
            buf: vec![0; 65536],
            faults: Faults::default(),
            captured: Vec::new(),
            honest_sent: BTreeSet::new(),
            seen_at_server: BTreeSet::new(),
            checks: Checks::default(),
            window: untrust_window(LATENCY, MAX_EXTRA_DELAY),
            replays_taken: Default::default(),
        };
        for (i, &kind) in kinds.iter().enumerate() {
            let public = format!("203.0.113.{}", i + 1);
            let ip = if kind == NatKind::None {
                format!("198.51.100.{}", i + 1)
            } else {
                format!("10.{}.0.10", i + 1)
            };
            let nat = world.net.add_nat(kind, &public);
            let host = world.net.add_host(&ip, Some(nat));
            let identity = identity_from(&mut world.rng);
            let local = SocketAddr::new(world.net.hosts[host].ip, NODE_PORT);
            let key = identity.public_key();
            let node = world.make_node(&identity, local, TrustState::default());
            world.honest.push(Honest {
                host,
                local,
                identity,
                key,
                node,
                saved: TrustState::default(),
                down: None,
            });
        }
        for a in 0..attackers {
            let ip = format!("192.0.2.{}", a + 1);
            let host = world.net.add_host(&ip, None);
            let local = SocketAddr::new(world.net.hosts[host].ip, 40000);
            world.attackers.push(Attacker::new(host, local));
        }
        let n = world.honest.len();
        for x in 0..n {
            for y in 0..n {
                if x != y {
                    world.checks.consent.insert((x, y), Some(false));
                    world.checks.gate.insert((x, y), false);
                }
            }
        }
        world
    }

    /// Starts the case with mutual records between the listed pairs, as after a handshake
    /// and approval long ago (each side holds the record and submits it when it registers).
    pub fn pretrust(&mut self, pairs: &[(usize, usize)]) {
        let issued = self.clock.unix_ms(self.now) - 1000;
        for &(a, b) in pairs {
            let record = TrustRecord::approve(
                self.honest[a].identity.signing_key(),
                self.honest[b].key,
                issued,
            )
            .unwrap()
            .countersign(self.honest[b].identity.signing_key(), issued)
            .unwrap();
            let hex = hex(&Statement::Record(record).to_bytes());
            for (x, y) in [(a, b), (b, a)] {
                self.honest[x].saved.version = 1;
                self.honest[x].saved.ledger.push(hex.clone());
                self.checks.consent.insert((x, y), Some(true));
            }
        }
        for i in 0..self.honest.len() {
            let h = &self.honest[i];
            let (identity, local, saved) = (
                Identity::from_secret_bytes(&h.identity.signing_key().to_bytes()),
                h.local,
                h.saved.clone(),
            );
            let node = self.make_node(&identity, local, saved);
            self.honest[i].node = node;
            self.observe_gates(i);
        }
    }

    fn make_node(&mut self, identity: &Identity, local: SocketAddr, trust: TrustState) -> Node {
        let rendezvous = RendezvousConfig {
            addr: SocketAddr::new(RDV_IP.parse().unwrap(), RDV_PORT),
            alt_port: RDV_PORT + 1,
            key: Some(server_identity().public_key()),
            stream: None,
        };
        Node::new(NodeConfig {
            standby_rendezvous: Vec::new(),
            shared_registry: false,
            mtu: 1380,
            identity: Identity::from_secret_bytes(&identity.signing_key().to_bytes()),
            peers: Vec::new(),
            trust,
            hostname: None,
            auto_approve: false,
            keepalive: Some(25),
            // The daemon seeds from the OS: a restart never reuses its nonces.
            seed: self.rng.next_u64(),
            rendezvous: Some(rendezvous),
            lan: vec![local],
            endpoint: None,
            local_port: NODE_PORT,
            clock: self.clock,
        })
        .unwrap()
    }

    /// Node `i` goes down for `downtime`, then starts again (see [`World::restart_node`]).
    pub fn take_down(&mut self, i: usize, downtime: Duration, lose_state: bool) {
        if self.honest[i].down.is_none() {
            self.trace(|| {
                format!("node {i} down for {downtime:?}, losing its state: {lose_state}")
            });
            self.honest[i].down = Some((self.now + downtime, lose_state));
        }
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.honest[i].down.is_none()
    }

    /// Node `i` restarts with the trust state its daemon last saved, or with none.
    pub fn restart_node(&mut self, i: usize, lose_state: bool) {
        self.trace(|| format!("node {i} starts"));
        let trust = if lose_state {
            self.honest[i].saved = TrustState::default();
            for y in 0..self.honest.len() {
                if y != i {
                    // What its operator said may be gone with the file.
                    self.checks.consent.insert((i, y), None);
                }
            }
            self.checks.stats.lost_state += 1;
            TrustState::default()
        } else {
            self.honest[i].saved.clone()
        };
        let (identity, local) = (
            Identity::from_secret_bytes(&self.honest[i].identity.signing_key().to_bytes()),
            self.honest[i].local,
        );
        self.honest[i].node = self.make_node(&identity, local, trust);
        self.checks.stats.node_restarts += 1;
        self.observe_gates(i);
    }

    /// The rendezvous restarts on the same store, or on an empty one (a lost disk).
    pub fn restart_server(&mut self, empty: bool) {
        self.trace(|| format!("rendezvous restarts, empty store: {empty}"));
        let _ = self.server.flush(self.now);
        if empty {
            self.store = MemoryStore::new();
            self.checks.stats.empty_store += 1;
        }
        self.server = new_server(
            self.store.clone(),
            self.rng.next_u64(),
            self.clock,
            self.now,
        );
        self.checks.stats.server_restarts += 1;
    }

    /// Runs the world until `now + duration`.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        loop {
            self.deliver_due();
            for i in 0..self.honest.len() {
                match self.honest[i].down {
                    Some((until, lose)) if until <= self.now => {
                        self.honest[i].down = None;
                        self.restart_node(i, lose);
                    }
                    Some(_) => continue,
                    None => {}
                }
                if self.honest[i]
                    .node
                    .poll_timeout()
                    .is_none_or(|(t, _)| t <= self.now)
                {
                    self.honest[i].node.handle_timeout(self.now);
                }
                self.after_node(i);
            }
            if self
                .server
                .poll_timeout()
                .is_some_and(|(t, _)| t <= self.now)
            {
                self.server.handle_timeout(self.now);
            }
            self.drain_server();
            let next = [
                self.net.next_arrival(),
                self.server.poll_timeout().map(|(t, _)| t),
                self.honest
                    .iter()
                    .filter_map(|n| match n.down {
                        Some((until, _)) => Some(until),
                        None => n.node.poll_timeout().map(|(t, _)| t),
                    })
                    .min(),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(until);
            if next > until {
                self.now = until;
                // Sizes once a step: every cap is enforced where state grows, so a
                // transient excess would persist until the next look.
                self.check_sizes();
                return;
            }
            self.now = next.max(self.now);
        }
    }

    /// Sends a datagram through the faulty network.
    pub fn emit(&mut self, host: usize, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
        if self.rng.chance(self.faults.drop) {
            self.checks.stats.dropped += 1;
            return;
        }
        let copies = if self.rng.chance(self.faults.duplicate) {
            self.checks.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let extra = if self.rng.chance(self.faults.delay) {
                self.checks.stats.delayed += 1;
                MAX_EXTRA_DELAY.mul_f64(self.rng.below(1000) as f64 / 1000.0)
            } else {
                Duration::ZERO
            };
            self.net
                .send_delayed(self.now, extra, host, from, to, payload);
        }
    }

    fn deliver_due(&mut self) {
        while let Some(d) = self.net.pop_due(self.now) {
            if self.captured.len() < CAPTURED {
                self.captured.push(d.payload.clone());
            } else {
                let slot = self.rng.below(CAPTURED);
                self.captured[slot] = d.payload.clone();
            }
            if d.host == self.server_host {
                let port = if d.to.port() == RDV_PORT {
                    Port::Main
                } else {
                    Port::Alt
                };
                self.server_receive(port, d.from, &d.payload);
            } else if let Some(i) = self.honest.iter().position(|n| n.host == d.host) {
                if self.is_up(i) {
                    self.node_receive(i, d.from, &d.payload);
                }
            } else if let Some(a) = self.attackers.iter().position(|a| a.host == d.host) {
                self.attacker_receive(a, d.from, &d.payload);
            }
        }
    }

    /// A datagram reaches the rendezvous (through the network, or injected by an attacker
    /// from any address).
    pub fn server_receive(&mut self, port: Port, from: SocketAddr, payload: &[u8]) {
        let h = hash(payload);
        let honest_first = self.honest_sent.contains(&h) && self.seen_at_server.insert(h);
        let before = refusals(&self.server);
        let sender = envelope::open(payload).ok().map(|o| o.sender);
        let relay_to = (payload.first() == Some(&RELAY_TO))
            .then(|| pilot::wire::control::parse_relay(payload).map(|(k, _)| k))
            .flatten();
        let out = self
            .server
            .handle_datagram(port, None, from, payload, self.now, &mut self.buf)
            .map(|t| (t.port, t.to, t.payload.to_vec()));
        // Each datagram a batch of its own: a registration that changed is written (and
        // answered, below) now, and a refusal of it counts against this datagram.
        self.server.commit(self.now);
        if let Some((port, to, bytes)) = out {
            self.check_from_server(to, sender.or(relay_to), relay_to, &bytes);
            self.server_send(port, to, &bytes);
        }
        let after = refusals(&self.server);
        let honest_sender = sender.filter(|k| self.honest.iter().any(|h| h.key == *k));
        if let Some(key) = honest_sender.filter(|_| !honest_first) {
            if refused_between(&before, &after).is_empty() {
                // Another copy of an honest node's message taken as new: a replay after the
                // rendezvous restarted (its replay state is memory only) or a duplicate.
                *self.replays_taken.entry(key).or_default() += 1;
                self.trace(|| {
                    format!(
                        "copy of {key}'s {:?} taken again",
                        envelope::open(payload).map(|o| o.kind)
                    )
                });
            }
        }
        if honest_first {
            self.checks.stats.honest_to_server += 1;
            for reason in refused_between(&before, &after) {
                let excused = EXCUSED.contains(&reason);
                if reason == pilot::rendezvous::Refusal::RateLimited {
                    let copies = honest_sender
                        .and_then(|k| self.replays_taken.get(&k))
                        .copied();
                    self.trace(|| {
                        format!(
                            "honest {:?} rate limited; copies taken: {copies:?}",
                            envelope::open(payload)
                                .map(|o| (o.sender, Message::decode(o.kind, o.body)))
                        )
                    });
                }
                assert!(
                    excused,
                    "seed {}: an honest node's message was refused ({}) at {:?} (signed {:?} ms \
                     off): {:?}\n{}",
                    self.seed,
                    reason.name(),
                    self.now - self.clock.origin(),
                    envelope::open(payload)
                        .map(|o| o.timestamp_ms as i64 - self.clock.unix_ms(self.now) as i64),
                    envelope::open(payload).map(|o| (o.sender, Message::decode(o.kind, o.body))),
                    self.server.counters()
                );
                *self
                    .checks
                    .stats
                    .honest_refused
                    .entry(reason.name())
                    .or_default() += 1;
            }
        }
        self.drain_server();
    }

    fn drain_server(&mut self) {
        while let Some(t) = self.server.poll_transmit(&mut self.buf) {
            let (port, to, bytes) = (t.port, t.to, t.payload.to_vec());
            self.check_from_server(to, None, None, &bytes);
            self.server_send(port, to, &bytes);
        }
    }

    fn server_send(&mut self, port: Port, to: SocketAddr, payload: &[u8]) {
        let local_port = if port == Port::Main {
            RDV_PORT
        } else {
            RDV_PORT + 1
        };
        let from = SocketAddr::new(self.net.hosts[self.server_host].ip, local_port);
        self.emit(self.server_host, from, to, payload);
    }

    /// A datagram reaches honest node `i` (through the network, or injected).
    pub fn node_receive(&mut self, i: usize, from: SocketAddr, payload: &[u8]) {
        if !self.is_up(i) {
            return;
        }
        let out = match self.honest[i]
            .node
            .handle_datagram(from, payload, self.now, &mut self.buf)
        {
            NetOutput::Tun(p) => Some(Ok(p.to_vec())),
            NetOutput::Send(t) => Some(Err((t.to, t.payload.to_vec()))),
            NetOutput::Nothing => None,
        };
        match out {
            Some(Ok(packet)) => self.reached_tun(i, &packet),
            Some(Err((to, bytes))) => {
                let (host, local) = (self.honest[i].host, self.honest[i].local);
                self.emit(host, local, to, &bytes);
            }
            None => {}
        }
        self.after_node(i);
    }

    fn attacker_receive(&mut self, a: usize, from: SocketAddr, payload: &[u8]) {
        // Nothing of an honest node's ever reaches an attacker through the rendezvous.
        assert!(
            payload.first() != Some(&RELAY_FROM),
            "seed {}: a relayed frame reached an attacker",
            self.seed
        );
        assert!(
            payload.first() != Some(&PUNCH),
            "seed {}: a Punch (a node's endpoints) reached an attacker",
            self.seed
        );
        let replies = self.attackers[a].receive(
            from,
            payload,
            &mut self.checks.stats,
            self.clock.unix_ms(self.now),
        );
        let (host, local) = (self.attackers[a].host, self.attackers[a].local);
        for (to, bytes) in replies {
            self.emit(host, local, to, &bytes);
        }
    }

    /// Sends what node `i` has to send, saves its trust state as the daemon does, and notes
    /// how its gates changed.
    pub fn after_node(&mut self, i: usize) {
        let (host, local) = (self.honest[i].host, self.honest[i].local);
        let rdv: std::net::IpAddr = RDV_IP.parse().unwrap();
        loop {
            while let Some(t) = self.honest[i].node.poll_transmit(self.now, &mut self.buf) {
                let (to, bytes) = (t.to, t.payload.to_vec());
                // The node's requests to its rendezvous (not answers to whatever someone
                // sent it from the rendezvous' address).
                let request = [REGISTER, NAT_PROBE, CONNECT, SUBMIT, ACK, LOOKUP, RELAY_TO];
                if to.ip() == rdv && bytes.first().is_some_and(|k| request.contains(k)) {
                    self.honest_sent.insert(hash(&bytes));
                }
                self.emit(host, local, to, &bytes);
            }
            let Some(state) = self.honest[i].node.take_trust_state() else {
                break;
            };
            self.honest[i].saved = state;
            self.honest[i].node.trust_saved(self.now);
        }
        while self.honest[i].node.poll_event().is_some() {}
        self.observe_gates(i);
    }

    /// Node `from` writes a packet for node `to` into its TUN.
    pub fn write_packet(&mut self, from: usize, to: usize, id: u64) {
        let gate_open = self.honest[from].node.is_trusted(&self.honest[to].key);
        self.checks.seq += 1;
        self.checks.written.insert(
            id,
            Written {
                from,
                to,
                at: self.now,
                seq: self.checks.seq,
                gate_open,
            },
        );
        self.checks.stats.written += 1;
        let packet = udp_packet(
            self.honest[from].node.addr().to_ipv6(),
            self.honest[to].node.addr().to_ipv6(),
            &id.to_be_bytes(),
        );
        let out = match self.honest[from]
            .node
            .handle_tun_packet(&packet, self.now, &mut self.buf)
        {
            TunOutput::Send(t) => Some((t.to, t.payload.to_vec())),
            _ => None,
        };
        if let Some((to, bytes)) = out {
            let (host, local) = (self.honest[from].host, self.honest[from].local);
            self.emit(host, local, to, &bytes);
        }
        self.after_node(from);
    }

    /// Notes what the schedule did, printed as it happens under `PILOT_PROPERTY_TRACE=1`.
    pub fn trace(&self, what: impl FnOnce() -> String) {
        if std::env::var_os("PILOT_PROPERTY_TRACE").is_some() {
            println!("{:>9.3?} {}", self.now - self.clock.origin(), what());
        }
    }

    /// What every node and the rendezvous think, for failure messages.
    pub fn debug(&self) -> String {
        let mut text = String::new();
        for (i, h) in self.honest.iter().enumerate() {
            let drops: Vec<String> = h
                .node
                .counters()
                .iter()
                .filter(|(_, c)| *c > 0)
                .map(|(r, c)| format!("{}={c}", r.name()))
                .collect();
            let peers: Vec<String> = h
                .node
                .peers(self.now)
                .map(|p| {
                    format!(
                        "{} {:?} via {:?} rx {} tx {} hs {:?}",
                        p.peer.addr,
                        p.path,
                        p.endpoint,
                        p.rx_bytes,
                        p.tx_bytes,
                        p.last_handshake_secs
                    )
                })
                .collect();
            let nat = self.net.hosts[h.host].nat.map(|n| self.net.nats[n].kind);
            text += &format!(
                "node {i} {} behind {nat:?}: drops {drops:?}; peers {peers:?}; {:?}; {:?}\n",
                h.node.addr(),
                h.node.net_status(self.now),
                h.node.counters(),
            );
        }
        text + &format!("rendezvous: {}\n", self.server.counters())
    }

    pub fn node_public(&self, i: usize) -> Option<SocketAddr> {
        self.server
            .registration(&self.honest[i].key, self.now)
            .map(|r| r.observed)
    }
}

fn new_server(store: MemoryStore, seed: u64, clock: WallClock, now: Instant) -> Server {
    let mut config = Config::new(server_identity(), RDV_PORT, RDV_PORT + 1);
    config.max_nodes = MAX_NODES;
    config.max_outbox = MAX_OUTBOX;
    Server::new(config, Box::new(store), seed, clock, now).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn udp_packet(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 48 + payload.len()];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p[48..].copy_from_slice(payload);
    p
}
