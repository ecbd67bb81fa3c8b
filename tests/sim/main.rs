//! Simulation: real `Node`s and a real rendezvous `Server` over a simulated internet with NAT
//! models and a fake clock. A minute of network life runs in milliseconds, deterministically —
//! WireGuard's own timers included: built with the `simulated-clock` feature, boringtun reads
//! a clock that moves only with the world's (`pilot::clock::advance_wireguard`).

mod net;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pilot::clock::WallClock;
use pilot::identity::Identity;
use pilot::node::{
    DropReason, NetOutput, Node, NodeConfig, PathKind, PeerConfig, RendezvousConfig, Socket,
    TrustState, TunOutput,
};
use pilot::rendezvous::{Config, MemoryStore, Port, Refusal, Server};
use pilot::wire::control::{Message, NatKind as Measured, RefusalCode, REGISTER};
use pilot::wire::envelope;
use pilot::wire::trust::{Statement, TrustRecord};

use net::{NatKind, Net, ALL_KINDS};

const RDV_IP: &str = "203.0.113.10";
const RDV_PORT: u16 = 7000;
/// The standby rendezvous' host (`Sim::with_standby`).
const RDV2_IP: &str = "203.0.113.11";
const NODE_PORT: u16 = 51870;
const EPOCH_MS: u64 = 1_800_000_000_000;

struct SimNode {
    host: usize,
    node: Node,
    local: SocketAddr,
    /// Payloads of packets the node delivered to its TUN.
    tun: Vec<Vec<u8>>,
    /// The daemon's save of trust.json takes until the test says it is done (as a write off
    /// the packet task may): the state taken waits here meanwhile.
    slow_saves: bool,
    saving: Option<pilot::node::TrustState>,
    /// How often `handle_timeout` ran, by the reason `poll_timeout` gave.
    wakes: BTreeMap<&'static str, u64>,
}

impl SimNode {
    /// Which of the node's sockets is bound to `port`: the main one, or an open spare (spare
    /// `k` on the port after the main one's `k`th).
    fn socket_at(&self, port: u16) -> Option<Socket> {
        if port == self.local.port() {
            return Some(Socket::Main);
        }
        let k = u8::try_from(port.checked_sub(self.local.port() + 1)?).ok()?;
        self.node.spares().contains(k).then_some(Socket::Spare(k))
    }
}

/// A second rendezvous instance nodes fail over to (`Sim::with_standby`).
struct Standby {
    server: Server,
    host: usize,
}

struct Sim {
    net: Net,
    nodes: Vec<SimNode>,
    /// Nodes (by number) that use the second instance first, the first as their standby.
    second_first: Vec<u8>,
    server: Server,
    server_host: usize,
    /// The first rendezvous is dead: what reaches it is lost, its timers stop.
    primary_down: bool,
    standby: Option<Standby>,
    now: Instant,
    /// One wall clock for the whole world, however late a node joins.
    clock: WallClock,
    buf: Vec<u8>,
}

/// A complete trust record between nodes `a` and `b`, signed by both.
fn record(a: u8, b: u8, issued_ms: u64) -> TrustRecord {
    TrustRecord::approve(
        identity(a).signing_key(),
        identity(b).public_key(),
        issued_ms,
    )
    .unwrap()
    .countersign(identity(b).signing_key(), issued_ms)
    .unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn identity(n: u8) -> Identity {
    (0..=255u8)
        .map(|i| Identity::from_secret_bytes(&[n.wrapping_mul(37) ^ i; 32]))
        .find(|id| !id.address().is_reserved())
        .unwrap()
}

impl Sim {
    fn new() -> Sim {
        let now = Instant::now();
        let clock = WallClock::new(now, EPOCH_MS);
        let mut net = Net::new(Duration::from_millis(20));
        net.exempt = Some(RDV_IP.parse().unwrap());
        let server_host = net.add_host(RDV_IP, None);
        let config = Config::new(identity(200), RDV_PORT, RDV_PORT + 1);
        let server = Server::new(config, Box::new(MemoryStore::new()), 7, clock, now).unwrap();
        Sim {
            net,
            nodes: Vec::new(),
            second_first: Vec::new(),
            server,
            server_host,
            primary_down: false,
            standby: None,
            now,
            clock,
            buf: vec![0; 65536],
        }
    }

    /// [`Sim::new`] with a second rendezvous instance at `RDV2_IP` (its own key and empty
    /// store: instances share nothing yet) that nodes made from now on fail over to.
    fn with_standby() -> Sim {
        let mut sim = Sim::new();
        let host = sim.net.add_host(RDV2_IP, None);
        let config = Config::new(identity(201), RDV_PORT, RDV_PORT + 1);
        let store = Box::new(MemoryStore::new());
        let server = Server::new(config, store, 9, sim.clock, sim.now).unwrap();
        sim.standby = Some(Standby { server, host });
        sim
    }

    /// Two rendezvous instances on one registry (a shared store, as on PostgreSQL): each beats
    /// and learns of the other, reads the other's trust changes, introduces and relays across.
    /// Nodes made from now on use the first and fail over to the second, except those in
    /// `second_first`, which use them the other way round.
    fn with_instances() -> Sim {
        let mut sim = Sim::new();
        let store = MemoryStore::new();
        let instance = |n: u8, ip: &str| {
            let mut config = Config::new(identity(n), RDV_PORT, RDV_PORT + 1);
            config.heartbeat = Some(Duration::from_secs(2));
            config.listen = Some(ip.parse().unwrap());
            config
        };
        let (one, two) = (instance(200, RDV_IP), instance(201, RDV2_IP));
        sim.server = Server::new(one, Box::new(store.clone()), 7, sim.clock, sim.now).unwrap();
        let host = sim.net.add_host(RDV2_IP, None);
        let server = Server::new(two, Box::new(store), 9, sim.clock, sim.now).unwrap();
        sim.standby = Some(Standby { server, host });
        // They meet (a heartbeat each way).
        sim.run_for(Duration::from_secs(3));
        assert_eq!(sim.server.instances().len(), 2);
        sim
    }

    /// A node numbered `n` on host `host` holding mutual trust records (signed by both keys,
    /// as after a handshake and approval) with the listed peers. The node submits them to the
    /// rendezvous when it registers, as after a restart.
    fn add_node(&mut self, n: u8, host: usize, trusted: &[u8]) -> usize {
        self.add_node_at(n, host, trusted, None)
    }

    /// [`Sim::add_node`] with a configured public endpoint (`--endpoint`).
    fn add_node_at(
        &mut self,
        n: u8,
        host: usize,
        trusted: &[u8],
        endpoint: Option<SocketAddr>,
    ) -> usize {
        let clock = self.clock;
        self.add_node_with(n, host, trusted, endpoint, clock)
    }

    /// [`Sim::add_node_at`] with the node's own system clock (which may be wrong).
    fn add_node_with(
        &mut self,
        n: u8,
        host: usize,
        trusted: &[u8],
        endpoint: Option<SocketAddr>,
        clock: WallClock,
    ) -> usize {
        let node = self.make_node(n, host, trusted, endpoint, clock);
        let local = SocketAddr::new(self.net.hosts[host].ip, NODE_PORT);
        self.nodes.push(SimNode {
            host,
            node,
            local,
            tun: Vec::new(),
            slow_saves: false,
            saving: None,
            wakes: BTreeMap::new(),
        });
        self.nodes.len() - 1
    }

    /// Node `n` as it starts on `host`, holding records with `trusted`.
    fn make_node(
        &self,
        n: u8,
        host: usize,
        trusted: &[u8],
        endpoint: Option<SocketAddr>,
        clock: WallClock,
    ) -> Node {
        let ip = self.net.hosts[host].ip;
        let local = SocketAddr::new(ip, NODE_PORT);
        let rendezvous = RendezvousConfig {
            addr: SocketAddr::new(RDV_IP.parse().unwrap(), RDV_PORT),
            alt_port: RDV_PORT + 1,
            key: Some(self.server.public_key()),
            stream: None,
        };
        let standby = self.standby.as_ref().map(|s| RendezvousConfig {
            addr: SocketAddr::new(RDV2_IP.parse().unwrap(), RDV_PORT),
            alt_port: RDV_PORT + 1,
            key: Some(s.server.public_key()),
            stream: None,
        });
        let (rendezvous, standby) = match standby {
            Some(second) if self.second_first.contains(&n) => (second, Some(rendezvous)),
            other => (rendezvous, other),
        };
        Node::new(NodeConfig {
            standby_rendezvous: standby.into_iter().collect(),
            shared_registry: false,
            mtu: 1380,
            identity: identity(n),
            peers: Vec::new(),
            trust: TrustState {
                version: 1,
                ledger: trusted
                    .iter()
                    .map(|&p| {
                        let record = record(n, p, self.clock.unix_ms(self.now) - 1000);
                        hex(&Statement::Record(record).to_bytes())
                    })
                    .collect(),
                ..TrustState::default()
            },
            hostname: None,
            auto_approve: false,
            keepalive: Some(25),
            seed: u64::from(n),
            rendezvous: Some(rendezvous),
            lan: vec![local],
            endpoint,
            local_port: NODE_PORT,
            clock,
        })
        .unwrap()
    }

    /// Two nodes behind NATs of the given kinds, allowing each other.
    fn pair(a: NatKind, b: NatKind) -> (Sim, usize, usize) {
        Sim::pair_in(Sim::new(), a, b)
    }

    /// [`Sim::pair`] in `sim`.
    fn pair_in(mut sim: Sim, a: NatKind, b: NatKind) -> (Sim, usize, usize) {
        let (na, nb) = (
            sim.net.add_nat(a, "203.0.113.1"),
            sim.net.add_nat(b, "203.0.113.2"),
        );
        let ha = sim.net.add_host(
            if a == NatKind::None {
                "198.51.100.10"
            } else {
                "10.1.0.10"
            },
            Some(na),
        );
        let hb = sim.net.add_host(
            if b == NatKind::None {
                "198.51.100.20"
            } else {
                "10.2.0.10"
            },
            Some(nb),
        );
        let x = sim.add_node(1, ha, &[2]);
        let y = sim.add_node(2, hb, &[1]);
        (sim, x, y)
    }

    /// Runs the world until `until`, event by event.
    fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        loop {
            self.deliver_due();
            for i in 0..self.nodes.len() {
                let due = self.nodes[i].node.poll_timeout();
                if due.is_none_or(|(t, _)| t <= self.now) {
                    let why = due.map_or("nothing due", |(_, why)| why);
                    *self.nodes[i].wakes.entry(why).or_default() += 1;
                    Sim::nudge_wireguard();
                    self.nodes[i].node.handle_timeout(self.now);
                }
                self.drain_node(i);
            }
            if !self.primary_down
                && self
                    .server
                    .poll_timeout()
                    .is_some_and(|(t, _)| t <= self.now)
            {
                self.server.handle_timeout(self.now);
            }
            if let Some(s) = &mut self.standby {
                if s.server.poll_timeout().is_some_and(|(t, _)| t <= self.now) {
                    s.server.handle_timeout(self.now);
                }
            }
            self.drain_server();
            let next = [
                self.net.next_arrival(),
                (!self.primary_down)
                    .then(|| self.server.poll_timeout().map(|(t, _)| t))
                    .flatten(),
                self.standby
                    .as_ref()
                    .and_then(|s| s.server.poll_timeout().map(|(t, _)| t)),
                self.nodes
                    .iter()
                    .filter_map(|n| n.node.poll_timeout().map(|(t, _)| t))
                    .min(),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(until);
            if next > until {
                self.advance_to(until);
                return;
            }
            self.advance_to(next.max(self.now));
        }
    }

    /// The world's time moves to `t`, WireGuard's with it.
    fn advance_to(&mut self, t: Instant) {
        pilot::clock::advance_wireguard(t - self.now);
        self.now = t;
    }

    /// Many things happen at one instant of the world's clock, which no real clock does:
    /// WireGuard stamps each handshake initiation with its clock, and refuses one stamped no
    /// later than the last (a replay). So its clock moves on by a microsecond per event; it
    /// stays ahead of the world's by that much in all.
    fn nudge_wireguard() {
        pilot::clock::advance_wireguard(Duration::from_micros(1));
    }

    fn deliver_due(&mut self) {
        while let Some(d) = self.net.pop_due(self.now) {
            Sim::nudge_wireguard();
            if self.standby.as_ref().is_some_and(|s| s.host == d.host) {
                let port = if d.to.port() == RDV_PORT {
                    Port::Main
                } else {
                    Port::Alt
                };
                let standby = self.standby.as_mut().unwrap();
                let answer = standby
                    .server
                    .handle_datagram(port, None, d.from, &d.payload, self.now, &mut self.buf)
                    .map(|t| (t.port, t.to, t.payload.to_vec()));
                standby.server.commit(self.now);
                let host = standby.host;
                if let Some((port, to, payload)) = answer {
                    self.send_from(host, port, to, &payload);
                }
                self.drain_server();
                continue;
            }
            if d.host == self.server_host && self.primary_down {
                continue;
            }
            if d.host == self.server_host {
                let port = if d.to.port() == RDV_PORT {
                    Port::Main
                } else {
                    Port::Alt
                };
                if let Some(t) = self.server.handle_datagram(
                    port,
                    None,
                    d.from,
                    &d.payload,
                    self.now,
                    &mut self.buf,
                ) {
                    let (to, payload, port) = (t.to, t.payload.to_vec(), t.port);
                    self.server_send(port, to, &payload);
                }
                // Each datagram a batch of its own, as far as the store is concerned.
                self.server.commit(self.now);
                self.drain_server();
                continue;
            }
            let Some((i, socket)) = self.nodes.iter().enumerate().find_map(|(i, n)| {
                let socket = n.socket_at(d.to.port())?;
                (n.host == d.host).then_some((i, socket))
            }) else {
                continue;
            };
            let node = &mut self.nodes[i];
            match node
                .node
                .handle_datagram_on(socket, d.from, &d.payload, self.now, &mut self.buf)
            {
                NetOutput::Tun(p) => node.tun.push(p.to_vec()),
                NetOutput::Send(t) => {
                    let (to, socket, payload) = (t.to, t.socket, t.payload.to_vec());
                    self.send_from_node(i, socket, to, &payload);
                }
                NetOutput::Nothing => {}
            }
            self.drain_node(i);
        }
    }

    /// A datagram from node `i`'s `socket`, if the socket is open (a spare the node no longer
    /// wants is closed, as the daemon closes it).
    fn send_from_node(&mut self, i: usize, socket: Socket, to: SocketAddr, payload: &[u8]) {
        let node = &self.nodes[i];
        let main = node.local.port();
        let port = match socket {
            Socket::Main => main,
            Socket::Spare(k) if node.node.spares().contains(k) => main + 1 + u16::from(k),
            Socket::Spare(_) => return,
        };
        let (host, from) = (node.host, SocketAddr::new(node.local.ip(), port));
        self.net.send(self.now, host, from, to, payload);
    }

    fn drain_node(&mut self, i: usize) {
        while let Some(t) = self.nodes[i].node.poll_transmit(self.now, &mut self.buf) {
            let (to, socket, payload) = (t.to, t.socket, t.payload.to_vec());
            self.send_from_node(i, socket, to, &payload);
        }
        // What the daemon does: save the trust state, then let the node acknowledge.
        if self.nodes[i].slow_saves {
            if self.nodes[i].saving.is_none() {
                self.nodes[i].saving = self.nodes[i].node.take_trust_state();
            }
        } else if self.nodes[i].node.take_trust_state().is_some() {
            self.nodes[i].node.trust_saved(self.now);
            while let Some(t) = self.nodes[i].node.poll_transmit(self.now, &mut self.buf) {
                let (to, socket, payload) = (t.to, t.socket, t.payload.to_vec());
                self.send_from_node(i, socket, to, &payload);
            }
        }
        while self.nodes[i].node.poll_event().is_some() {}
    }

    fn drain_server(&mut self) {
        while let Some(t) = (!self.primary_down)
            .then(|| self.server.poll_transmit(&mut self.buf))
            .flatten()
        {
            let (to, payload, port) = (t.to, t.payload.to_vec(), t.port);
            self.server_send(port, to, &payload);
        }
        let Some(standby) = &mut self.standby else {
            return;
        };
        let mut queued = Vec::new();
        while let Some(t) = standby.server.poll_transmit(&mut self.buf) {
            queued.push((t.port, t.to, t.payload.to_vec()));
        }
        let host = standby.host;
        for (port, to, payload) in queued {
            self.send_from(host, port, to, &payload);
        }
    }

    fn server_send(&mut self, port: Port, to: SocketAddr, payload: &[u8]) {
        self.send_from(self.server_host, port, to, payload);
    }

    /// A datagram from the rendezvous on `host`, leaving from its `port`.
    fn send_from(&mut self, host: usize, port: Port, to: SocketAddr, payload: &[u8]) {
        let local_port = if port == Port::Main {
            RDV_PORT
        } else {
            RDV_PORT + 1
        };
        let from = SocketAddr::new(self.net.hosts[host].ip, local_port);
        self.net.send(self.now, host, from, to, payload);
    }

    /// Node `from` writes an IPv6/UDP packet for node `to` into its TUN; returns whether it
    /// left the node (it may wait for a handshake).
    fn send_packet(&mut self, from: usize, to: usize, payload: &[u8]) {
        let (src, dst) = (
            self.nodes[from].node.addr().to_ipv6(),
            self.nodes[to].node.addr().to_ipv6(),
        );
        let packet = udp_packet(src, dst, payload);
        Sim::nudge_wireguard();
        let node = &mut self.nodes[from];
        if let TunOutput::Send(t) = node
            .node
            .handle_tun_packet(&packet, self.now, &mut self.buf)
        {
            let (to, socket, payload) = (t.to, t.socket, t.payload.to_vec());
            self.send_from_node(from, socket, to, &payload);
        }
        self.drain_node(from);
    }

    /// Payloads node `i` has received so far.
    fn received(&self, i: usize) -> Vec<Vec<u8>> {
        self.nodes[i].tun.iter().map(|p| p[48..].to_vec()).collect()
    }

    /// Counters and peer views of every node, for failure messages.
    fn debug(&self) -> String {
        let mut text = String::new();
        for n in &self.nodes {
            let drops: Vec<String> = n
                .node
                .counters()
                .iter()
                .filter(|(_, c)| *c > 0)
                .map(|(r, c)| format!("{}={c}", r.name()))
                .collect();
            let peers: Vec<String> = n
                .node
                .peers(self.now)
                .map(|p| {
                    format!(
                        "{:?} via {:?}, rx {} tx {}",
                        p.path, p.endpoint, p.rx_bytes, p.tx_bytes
                    )
                })
                .collect();
            text += &format!(
                "node {}: drops {drops:?}; peers {peers:?}; {:?}\n",
                n.node.addr(),
                n.node.net_status(self.now)
            );
        }
        text + &format!("rendezvous: {}\n", self.server.counters())
    }

    fn path(&self, from: usize, to: usize) -> PathKind {
        let addr = self.nodes[to].node.addr();
        self.nodes[from]
            .node
            .peer_status(addr, self.now)
            .map_or(PathKind::None, |s| s.path)
    }
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

/// Exchanges a packet each way every 100 ms for `duration`; returns how many of them arrived.
fn traffic(sim: &mut Sim, x: usize, y: usize, duration: Duration) -> usize {
    let before = sim.received(x).len() + sim.received(y).len();
    let rounds = (duration.as_millis() / 100) as usize;
    for i in 0..rounds {
        sim.send_packet(x, y, format!("x{i}").as_bytes());
        sim.send_packet(y, x, format!("y{i}").as_bytes());
        sim.run_for(Duration::from_millis(100));
    }
    sim.received(x).len() + sim.received(y).len() - before
}

fn expected_path(a: NatKind, b: NatKind) -> PathKind {
    use NatKind::*;
    match (a, b) {
        (Sym, Sym) => PathKind::Relay,
        _ => PathKind::Direct,
    }
}

#[test]
fn every_nat_pair_connects_on_the_expected_path() {
    for a in ALL_KINDS {
        for b in ALL_KINDS {
            let (mut sim, x, y) = Sim::pair(a, b);
            sim.run_for(Duration::from_secs(1));
            let arrived = traffic(&mut sim, x, y, Duration::from_secs(8));
            assert!(
                arrived >= 150,
                "{a:?}/{b:?}: only {arrived} of 160 packets crossed\n{}",
                sim.debug()
            );
            let want = expected_path(a, b);
            assert_eq!(sim.path(x, y), want, "{a:?}/{b:?} from the first node");
            assert_eq!(sim.path(y, x), want, "{a:?}/{b:?} from the second node");
            // The counters tell the same story: introduced, punched, and either a direct path
            // found or the punch given up with the relay carrying the traffic.
            for i in [x, y] {
                let c = sim.nodes[i].node.counters();
                let what = format!("{a:?}/{b:?} node {i}: {c:?}");
                assert!(c.handshakes >= 1 && c.punches >= 1, "{what}");
                if want == PathKind::Direct {
                    assert!(c.direct_found >= 1, "{what}");
                } else {
                    assert_eq!(c.direct_found, 0, "{what}");
                    assert!(c.punches_failed >= 1, "{what}");
                    assert!(c.relay_tx_bytes > 0 && c.relay_rx_bytes > 0, "{what}");
                }
            }
        }
    }
}

#[test]
fn a_configured_endpoint_behind_a_port_forward_makes_a_symmetric_pair_direct() {
    // Both behind symmetric NATs: on their own they stay on the relay (see above). The first
    // NAT forwards its public port 40000 to the node, which says so with --endpoint.
    let mut sim = Sim::new();
    let (na, nb) = (
        sim.net.add_nat(NatKind::Sym, "203.0.113.1"),
        sim.net.add_nat(NatKind::Sym, "203.0.113.2"),
    );
    let (ha, hb) = (
        sim.net.add_host("10.1.0.10", Some(na)),
        sim.net.add_host("10.2.0.10", Some(nb)),
    );
    let forward: SocketAddr = "203.0.113.1:40000".parse().unwrap();
    let local = SocketAddr::new(sim.net.hosts[ha].ip, NODE_PORT);
    sim.net.nats[na].forward(forward.port(), local);
    let x = sim.add_node_at(1, ha, &[2], Some(forward));
    let y = sim.add_node(2, hb, &[1]);
    sim.run_for(Duration::from_secs(1));
    let status = sim.nodes[x].node.net_status(sim.now);
    assert_eq!(status.endpoint, Some(forward.to_string()), "{status:?}");
    assert!(status.endpoint_configured);
    assert_ne!(
        status.observed, status.endpoint,
        "the rendezvous sees the NAT's own port"
    );
    assert_eq!(status.nat, Measured::Unknown, "not measured");

    let arrived = traffic(&mut sim, x, y, Duration::from_secs(8));
    assert!(
        arrived >= 150,
        "only {arrived} of 160 crossed\n{}",
        sim.debug()
    );
    assert_eq!(sim.path(y, x), PathKind::Direct, "{}", sim.debug());
    assert_eq!(sim.path(x, y), PathKind::Direct, "{}", sim.debug());
    // The peer reaches the node at the forwarded port, the endpoint it was told.
    let seen = sim.nodes[y]
        .node
        .peer_status(sim.nodes[x].node.addr(), sim.now)
        .unwrap();
    assert_eq!(seen.endpoint, Some(forward), "{}", sim.debug());
    let before = sim.server.counters().relay_frames;
    assert_eq!(traffic(&mut sim, x, y, Duration::from_secs(1)), 20);
    assert_eq!(sim.server.counters().relay_frames, before, "off the relay");
}

#[test]
fn traffic_flows_over_the_relay_at_once_then_goes_direct() {
    let (mut sim, x, y) = Sim::pair(NatKind::Prc, NatKind::Prc);
    let start = sim.now;
    // Two round trips to the rendezvous (20 ms each way: a challenge for the new endpoint,
    // then the registration with its cookie): registered, not yet introduced.
    sim.run_for(Duration::from_millis(85));
    assert!(sim.nodes[x].node.net_status(sim.now).registered);
    sim.send_packet(x, y, b"first");
    sim.run_for(Duration::from_millis(60));
    assert!(
        sim.server.counters().relay_frames > 0,
        "the first packet went through the relay"
    );
    // Introduced and punched: direct within a few round trips (simulated time).
    while sim.path(x, y) != PathKind::Direct {
        assert!(
            sim.now - start < Duration::from_millis(500),
            "no direct path after 500 ms"
        );
        sim.run_for(Duration::from_millis(10));
    }
    sim.run_for(Duration::from_millis(200));
    assert_eq!(
        sim.received(y),
        vec![b"first".to_vec()],
        "the relayed packet arrived"
    );
    let before = sim.server.counters().relay_frames;
    assert_eq!(traffic(&mut sim, x, y, Duration::from_secs(1)), 20);
    assert_eq!(
        sim.server.counters().relay_frames,
        before,
        "direct traffic avoids the relay"
    );
}

#[test]
fn a_packet_sent_before_the_peer_exists_arrives_soon_after_it_registers() {
    for (first, second) in [(1, 2), (2, 1)] {
        // Whichever side has the lower key, the early sender's first packet must not wait for
        // WireGuard's 5 s handshake retry.
        let mut sim = Sim::new();
        let n1 = sim.net.add_nat(NatKind::Prc, "203.0.113.1");
        let n2 = sim.net.add_nat(NatKind::Prc, "203.0.113.2");
        let (h1, h2) = (
            sim.net.add_host("10.1.0.10", Some(n1)),
            sim.net.add_host("10.2.0.10", Some(n2)),
        );
        let x = sim.add_node(first, h1, &[second]);
        sim.run_for(Duration::from_millis(100));
        // x is registered; its peer is not even running. Its handshake goes nowhere.
        let y = sim.add_node(second, h2, &[first]);
        sim.send_packet(x, y, b"early");
        sim.run_for(Duration::from_millis(300));
        let started = sim.now;
        while sim.received(y).is_empty() {
            assert!(
                sim.now - started < Duration::from_secs(1),
                "key order {first}/{second}: packet still waiting\n{}",
                sim.debug()
            );
            sim.run_for(Duration::from_millis(20));
        }
        assert_eq!(sim.received(y), vec![b"early".to_vec()]);
    }
}

#[test]
fn a_dead_direct_path_falls_back_to_the_relay_within_seconds() {
    let (mut sim, x, y) = Sim::pair(NatKind::Cone, NatKind::Prc);
    sim.run_for(Duration::from_secs(2));
    traffic(&mut sim, x, y, Duration::from_secs(2));
    assert_eq!(sim.path(x, y), PathKind::Direct);
    sim.net.block_direct = true;
    // Under traffic, the path is given up after DIRECT_TIMEOUT and the relay carries on.
    let fallbacks = sim.nodes[x].node.counters().relay_fallbacks;
    traffic(&mut sim, x, y, Duration::from_secs(7));
    assert_eq!(sim.path(x, y), PathKind::Relay);
    assert_eq!(sim.path(y, x), PathKind::Relay);
    assert_eq!(sim.nodes[x].node.counters().relay_fallbacks, fallbacks + 1);
    assert_eq!(
        traffic(&mut sim, x, y, Duration::from_secs(2)),
        40,
        "relay carries everything"
    );
    // When the direct path comes back, the periodic retry finds it again.
    sim.net.block_direct = false;
    traffic(&mut sim, x, y, Duration::from_secs(35));
    assert_eq!(sim.path(x, y), PathKind::Direct);
}

#[test]
fn a_node_whose_public_endpoint_changes_recovers() {
    let (mut sim, x, y) = Sim::pair(NatKind::Prc, NatKind::Cone);
    sim.run_for(Duration::from_secs(2));
    traffic(&mut sim, x, y, Duration::from_secs(2));
    assert_eq!(sim.path(x, y), PathKind::Direct);
    // The NAT in front of x forgets every mapping: x's packets leave from a new public port.
    let nat = sim.net.hosts[sim.nodes[x].host].nat.unwrap();
    sim.net.nats[nat].flush();
    traffic(&mut sim, x, y, Duration::from_secs(30));
    assert_eq!(sim.path(x, y), PathKind::Direct);
    assert_eq!(sim.path(y, x), PathKind::Direct);
    assert_eq!(traffic(&mut sim, x, y, Duration::from_secs(1)), 20);
}

#[test]
fn hosts_behind_the_same_nat_talk_over_the_lan() {
    let mut sim = Sim::new();
    let nat = sim.net.add_nat(NatKind::Sym, "203.0.113.1");
    let h1 = sim.net.add_host("10.1.0.10", Some(nat));
    let h2 = sim.net.add_host("10.1.0.11", Some(nat));
    let x = sim.add_node(1, h1, &[2]);
    let y = sim.add_node(2, h2, &[1]);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(traffic(&mut sim, x, y, Duration::from_secs(4)) as u64, 80);
    assert_eq!(sim.path(x, y), PathKind::Direct);
    let endpoint = sim.nodes[x]
        .node
        .peer_status(sim.nodes[y].node.addr(), sim.now)
        .unwrap()
        .endpoint;
    assert_eq!(
        endpoint,
        Some("10.1.0.11:51870".parse().unwrap()),
        "the LAN endpoint, not the NAT"
    );
}

#[test]
fn nat_behaviour_is_measured() {
    for (kind, want) in [
        (NatKind::None, Measured::None),
        (NatKind::Cone, Measured::EndpointIndependent),
        (NatKind::Prc, Measured::EndpointIndependent),
        (NatKind::Sym, Measured::EndpointDependent),
    ] {
        let (mut sim, x, _) = Sim::pair(kind, NatKind::Cone);
        sim.run_for(Duration::from_secs(2));
        let status = sim.nodes[x].node.net_status(sim.now);
        assert!(status.registered);
        assert_eq!(status.nat, want, "{kind:?}");
    }
}

#[test]
fn nothing_passes_until_both_sides_agree_and_untrust_stops_it() {
    let mut sim = Sim::new();
    let n1 = sim.net.add_nat(NatKind::Cone, "203.0.113.1");
    let n2 = sim.net.add_nat(NatKind::Sym, "203.0.113.2");
    let (h1, h2) = (
        sim.net.add_host("10.1.0.10", Some(n1)),
        sim.net.add_host("10.2.0.10", Some(n2)),
    );
    let x = sim.add_node(1, h1, &[]);
    let y = sim.add_node(2, h2, &[]);
    sim.run_for(Duration::from_secs(1));
    let (kx, ky) = (identity(1).public_key(), identity(2).public_key());
    sim.nodes[x]
        .node
        .handshake(ky, "nightly sync", sim.now)
        .unwrap();
    sim.drain_node(x);
    sim.run_for(Duration::from_secs(2));
    // Asked, not approved: y sees the request, nothing passes either way, no introduction.
    let now_ms = sim.clock.unix_ms(sim.now);
    let pending: Vec<_> = sim.nodes[y]
        .node
        .trust()
        .incoming(now_ms)
        .cloned()
        .collect();
    assert_eq!(pending.len(), 1, "{}", sim.debug());
    assert_eq!(pending[0].request.justification, "nightly sync");
    assert_eq!(traffic(&mut sim, x, y, Duration::from_secs(3)), 0);
    assert_eq!(traffic(&mut sim, y, x, Duration::from_secs(1)), 0);
    assert_eq!(
        sim.server.counters().punches,
        0,
        "no introduction before approval"
    );
    // y approves: x countersigns on its own, both hold the record, traffic flows.
    sim.nodes[y].node.approve(kx, sim.now).unwrap();
    sim.drain_node(y);
    let approved = sim.now;
    sim.run_for(Duration::from_millis(500));
    assert!(sim.nodes[x].node.is_trusted(&ky), "{}", sim.debug());
    assert!(sim.nodes[y].node.is_trusted(&kx), "{}", sim.debug());
    assert!(
        traffic(&mut sim, x, y, Duration::from_secs(2)) > 0,
        "{}",
        sim.debug()
    );
    assert!(sim.now - approved < Duration::from_secs(3));
    // x withdraws: within seconds nothing passes either way, and y learned it too.
    sim.nodes[x].node.untrust(ky, sim.now).unwrap();
    sim.drain_node(x);
    sim.run_for(Duration::from_secs(2));
    assert!(!sim.nodes[y].node.is_trusted(&kx), "{}", sim.debug());
    assert_eq!(traffic(&mut sim, x, y, Duration::from_secs(2)), 0);
    assert_eq!(sim.path(y, x), PathKind::None);

    // Trust again, then x revokes and y comes back as a node that ignores it: x configured as
    // a static peer at its public endpoint. x's gate alone must keep it out.
    sim.nodes[x].node.handshake(ky, "again", sim.now).unwrap();
    sim.drain_node(x);
    sim.run_for(Duration::from_secs(1));
    sim.nodes[y].node.approve(kx, sim.now).unwrap();
    sim.drain_node(y);
    sim.run_for(Duration::from_secs(1));
    assert!(
        traffic(&mut sim, x, y, Duration::from_secs(2)) > 0,
        "{}",
        sim.debug()
    );
    sim.nodes[x].node.untrust(ky, sim.now).unwrap();
    sim.drain_node(x);
    sim.run_for(Duration::from_secs(1));
    sim.nodes[y].node = Node::new(NodeConfig {
        standby_rendezvous: Vec::new(),
        shared_registry: false,
        mtu: 1380,
        identity: identity(2),
        peers: vec![PeerConfig {
            key: kx,
            endpoint: Some("203.0.113.1:51870".parse().unwrap()),
        }],
        trust: TrustState::default(),
        hostname: None,
        auto_approve: false,
        keepalive: Some(25),
        seed: 99,
        rendezvous: None,
        lan: vec![sim.nodes[y].local],
        endpoint: None,
        local_port: NODE_PORT,
        clock: sim.clock,
    })
    .unwrap();
    let refused = sim.nodes[x].node.counters().get(DropReason::Untrusted);
    assert_eq!(
        traffic(&mut sim, x, y, Duration::from_secs(3)),
        0,
        "{}",
        sim.debug()
    );
    assert!(
        sim.nodes[x].node.counters().get(DropReason::Untrusted) > refused + 20,
        "y's handshakes reached x and were refused\n{}",
        sim.debug()
    );
}

#[test]
fn replayed_and_forged_registrations_are_refused() {
    let mut sim = Sim::new();
    let me = identity(1);
    let from: SocketAddr = "203.0.113.1:51870".parse().unwrap();
    let unix_ms = sim.clock.unix_ms(sim.now);
    let sealed = |cookie: Option<[u8; 16]>, nonce: u64| {
        let mut body = Vec::new();
        Message::Register {
            lan: vec![],
            hostname: None,
            cookie,
            trust_digest: 0,
        }
        .encode(&mut body);
        let mut register = vec![0u8; 512];
        let n = envelope::seal(
            &mut register,
            REGISTER,
            me.signing_key(),
            unix_ms,
            nonce,
            &body,
        )
        .unwrap();
        register.truncate(n);
        (register, body)
    };
    let mut out = vec![0u8; 65536];
    // A first contact is challenged (statelessly: sending it again only repeats that).
    let (first, body) = sealed(None, 41);
    let challenge = sim
        .server
        .handle_datagram(Port::Main, None, from, &first, sim.now, &mut out)
        .expect("a fresh registration is answered with a challenge");
    let opened = envelope::open(challenge.payload).unwrap();
    let Ok(Message::Challenge { cookie, .. }) = Message::decode(opened.kind, opened.body) else {
        panic!("not a challenge")
    };
    // The registration with the cookie is taken; the same bytes again, from the same or
    // another address, are refused and unanswered.
    let (register, _) = sealed(Some(cookie), 42);
    // A new registration is answered once written: when its batch is committed.
    let direct = (sim.server)
        .handle_datagram(Port::Main, None, from, &register, sim.now, &mut out)
        .is_some();
    assert!(direct || sim.server.commit(sim.now) == 1);
    assert_eq!(sim.server.counters().registrations, 1);
    for replay_from in [from, "203.0.113.66:1234".parse().unwrap()] {
        assert!(sim
            .server
            .handle_datagram(Port::Main, None, replay_from, &register, sim.now, &mut out)
            .is_none());
    }
    assert_eq!(sim.server.counters().refused(Refusal::Replay), 2);
    // Someone else's signature over a registration claiming node 1's key.
    let mut forged = vec![0u8; 512];
    let n = envelope::seal(
        &mut forged,
        REGISTER,
        identity(9).signing_key(),
        unix_ms,
        43,
        &body,
    )
    .unwrap();
    forged.truncate(n);
    forged[2..34].copy_from_slice(&me.public_key().0);
    assert!(sim
        .server
        .handle_datagram(Port::Main, None, from, &forged, sim.now, &mut out)
        .is_none());
    assert_eq!(sim.server.counters().refused(Refusal::BadSignature), 1);
    // A registration signed a minute ago (captured then, replayed now) is stale.
    let mut old = vec![0u8; 512];
    let n = envelope::seal(
        &mut old,
        REGISTER,
        me.signing_key(),
        unix_ms - 60_000,
        44,
        &body,
    )
    .unwrap();
    old.truncate(n);
    // It changes nothing; the answer (smaller than the request) only tells the sender the
    // rendezvous' time, echoing the stale message's nonce.
    let answer = sim
        .server
        .handle_datagram(Port::Main, None, from, &old, sim.now, &mut out)
        .expect("a stale registration is told the time");
    assert!(answer.payload.len() < old.len());
    let opened = envelope::open(answer.payload).unwrap();
    assert_eq!(
        Message::decode(opened.kind, opened.body),
        Ok(Message::Refused {
            echo: 44,
            code: RefusalCode::Stale
        })
    );
    assert_eq!(opened.timestamp_ms, unix_ms);
    assert_eq!(sim.server.counters().refused(Refusal::Stale), 1);
    assert_eq!(sim.server.counters().challenges, 1);
    assert_eq!(sim.server.counters().registrations, 1);
}

#[test]
fn a_rendezvous_that_lost_its_database_gets_the_records_back_within_a_keepalive() {
    // Issue 12, item 1: relayed pairs stayed dead (relay drops `not_allowed`) until a node
    // restarted, because nodes handed their records over only at start.
    let (mut sim, x, y) = Sim::pair(NatKind::Sym, NatKind::Sym);
    sim.run_for(Duration::from_secs(1));
    assert!(
        traffic(&mut sim, x, y, Duration::from_secs(2)) > 0,
        "{}",
        sim.debug()
    );
    assert_eq!(sim.path(x, y), PathKind::Relay);
    // The rendezvous restarts on an empty database (same identity, as after a lost disk).
    let config = Config::new(identity(200), RDV_PORT, RDV_PORT + 1);
    sim.server = Server::new(config, Box::new(MemoryStore::new()), 8, sim.clock, sim.now).unwrap();
    let lost = sim.now;
    // Within one keepalive (25 s) the nodes re-register, are told the rendezvous holds
    // nothing of theirs, hand their records back, and the relay carries them again.
    let mut resumed = None;
    while sim.now < lost + Duration::from_secs(30) {
        if traffic(&mut sim, x, y, Duration::from_millis(500)) > 0 {
            resumed = Some(sim.now - lost);
            break;
        }
    }
    let resumed = resumed.unwrap_or_else(|| panic!("traffic never resumed\n{}", sim.debug()));
    assert!(resumed <= Duration::from_secs(26), "{resumed:?}");
    assert!(sim.server.counters().statements_stored > 0);
}

#[test]
fn a_node_whose_clock_is_hours_days_or_a_year_off_joins_and_connects() {
    // Issue 12, item 3: a board without RTC (or NTP) never registered, silently.
    const HOUR: i64 = 3_600_000;
    for skew_ms in [HOUR, -24 * HOUR, -365 * 24 * HOUR, 365 * 24 * HOUR] {
        let mut sim = Sim::new();
        let na = sim.net.add_nat(NatKind::Cone, "203.0.113.1");
        let nb = sim.net.add_nat(NatKind::Cone, "203.0.113.2");
        let (ha, hb) = (
            sim.net.add_host("10.1.0.10", Some(na)),
            sim.net.add_host("10.2.0.10", Some(nb)),
        );
        let wrong = WallClock::new(
            sim.now,
            sim.clock.unix_ms(sim.now).saturating_add_signed(skew_ms),
        );
        let x = sim.add_node_with(1, ha, &[2], None, wrong);
        let y = sim.add_node(2, hb, &[1]);
        sim.run_for(Duration::from_secs(3));
        let net = sim.nodes[x].node.net_status(sim.now);
        assert!(net.registered, "skew {skew_ms}: {}", sim.debug());
        // The offset is measured to within the simulated round trip, and signed with.
        let offset = net.clock_offset_ms.unwrap();
        assert!(
            (offset + skew_ms).abs() < 100,
            "skew {skew_ms}: offset {offset}"
        );
        assert_eq!(net.clock_correction_ms, offset);
        assert_eq!(sim.nodes[x].node.counters().clock_corrections, 1);
        assert!(
            traffic(&mut sim, x, y, Duration::from_secs(2)) > 0,
            "skew {skew_ms}: {}",
            sim.debug()
        );
        assert_eq!(sim.path(x, y), PathKind::Direct, "skew {skew_ms}");
        // The node with the right clock corrects nothing.
        assert_eq!(sim.nodes[y].node.net_status(sim.now).clock_correction_ms, 0);
    }
}

#[test]
fn a_captured_registration_of_a_node_with_a_wrong_clock_cannot_be_replayed() {
    let mut sim = Sim::new();
    let na = sim.net.add_nat(NatKind::Cone, "203.0.113.1");
    let ha = sim.net.add_host("10.1.0.10", Some(na));
    let wrong = WallClock::new(sim.now, sim.clock.unix_ms(sim.now) - 86_400_000);
    let x = sim.add_node_with(1, ha, &[], None, wrong);
    sim.run_for(Duration::from_secs(3));
    assert!(sim.nodes[x].node.is_registered(sim.now));
    // Its next refresh, as an eavesdropper captures it (from the node's public endpoint).
    let public = sim.nodes[x].node.net_status(sim.now).observed.unwrap();
    let public: SocketAddr = public.parse().unwrap();
    sim.nodes[x]
        .node
        .handle_timeout(sim.now + Duration::from_secs(25));
    let mut captured = None;
    while let Some(t) = sim.nodes[x].node.poll_transmit(sim.now, &mut sim.buf) {
        if t.payload[0] == REGISTER {
            captured = Some(t.payload.to_vec());
        }
    }
    let captured = captured.expect("a refresh");
    let mut out = vec![0u8; 65536];
    let at = sim.now + Duration::from_secs(25);
    let direct = (sim.server)
        .handle_datagram(Port::Main, None, public, &captured, at, &mut out)
        .is_some();
    assert!(direct || sim.server.commit(at) == 1);
    // Replayed at once, from there or elsewhere: refused as a replay, unanswered.
    for from in [public, "192.0.2.66:4000".parse().unwrap()] {
        assert!(sim
            .server
            .handle_datagram(Port::Main, None, from, &captured, at, &mut out)
            .is_none());
    }
    assert_eq!(sim.server.counters().refused(Refusal::Replay), 2);
    // Replayed later: stale. The answer only states the time; nothing moves.
    let later = at + Duration::from_secs(60);
    let registrations = sim.server.counters().registrations;
    let answer = sim
        .server
        .handle_datagram(Port::Main, None, public, &captured, later, &mut out)
        .map(|t| t.payload.to_vec())
        .unwrap();
    let opened = envelope::open(&answer).unwrap();
    assert!(matches!(
        Message::decode(opened.kind, opened.body),
        Ok(Message::Refused {
            code: RefusalCode::Stale,
            ..
        })
    ));
    assert_eq!(sim.server.counters().registrations, registrations);
    // And the node, which is not waiting for an answer to that registration any more, takes
    // no time from it.
    sim.nodes[x].node.handle_datagram(
        SocketAddr::new(RDV_IP.parse().unwrap(), RDV_PORT),
        &answer,
        later,
        &mut sim.buf,
    );
    assert_eq!(sim.nodes[x].node.counters().clock_corrections, 1);
}

#[test]
fn a_node_that_lost_its_trust_file_gets_its_records_back_with_no_verb() {
    // Issue 12, item 2: trust.json lost (disk full while saving, an old image restored):
    // the peer kept sending, the node refused, and nothing but a person repaired it.
    let (mut sim, x, y) = Sim::pair(NatKind::Cone, NatKind::Sym);
    sim.run_for(Duration::from_secs(1));
    assert!(
        traffic(&mut sim, x, y, Duration::from_secs(2)) > 0,
        "{}",
        sim.debug()
    );
    // x restarts with no trust state at all.
    let host = sim.nodes[x].host;
    sim.nodes[x].node = sim.make_node(1, host, &[], None, sim.clock);
    assert!(!sim.nodes[x]
        .node
        .trust()
        .is_trusted(&sim.nodes[y].node.key()));
    let lost = sim.now;
    let mut resumed = None;
    while sim.now < lost + Duration::from_secs(10) {
        if traffic(&mut sim, x, y, Duration::from_millis(500)) > 0
            && traffic(&mut sim, y, x, Duration::from_millis(500)) > 0
        {
            resumed = Some(sim.now - lost);
            break;
        }
    }
    let resumed = resumed.unwrap_or_else(|| panic!("trust never came back\n{}", sim.debug()));
    // Its first registration carries the digest of an empty ledger; the record comes back
    // with the answer's deliveries.
    assert!(resumed <= Duration::from_secs(3), "{resumed:?}");
    assert!(sim.nodes[x]
        .node
        .trust()
        .is_trusted(&sim.nodes[y].node.key()));
    assert!(sim.server.counters().ledger_resyncs >= 1);
}

#[test]
fn a_delivery_is_acknowledged_only_once_the_state_holding_it_is_saved() {
    // The daemon writes trust.json off the packet task: while a save is in flight, a delivery
    // (even a repeat that changes nothing) must not be acknowledged — the copy it repeats may
    // be the one being written, and the rendezvous forgets what is acknowledged.
    let (mut sim, x, y) = Sim::pair(NatKind::Cone, NatKind::Cone);
    sim.run_for(Duration::from_secs(1));
    let z = sim.add_node(3, sim.nodes[y].host, &[]);
    sim.nodes[z].local.set_port(NODE_PORT + 1);
    sim.run_for(Duration::from_secs(1));
    sim.nodes[x].slow_saves = true;
    let xk = sim.nodes[x].node.key();
    sim.nodes[z].node.handshake(xk, "hello", sim.now).unwrap();
    // Delivered, resent every 2 s while unacknowledged: nothing acknowledged meanwhile.
    sim.run_for(Duration::from_secs(7));
    assert!(
        sim.nodes[x].saving.is_some(),
        "the request was not delivered"
    );
    assert_eq!(
        sim.server.outbox_len(),
        1,
        "acknowledged before it was saved"
    );
    assert!(sim.server.counters().deliveries >= 3, "{}", sim.debug());
    // The save completes: now it is acknowledged.
    sim.nodes[x].saving = None;
    sim.nodes[x].slow_saves = false;
    let now = sim.now;
    sim.nodes[x].node.trust_saved(now);
    sim.drain_node(x);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.server.outbox_len(), 0);
}

#[test]
fn a_relayed_pair_moves_to_the_standby_rendezvous_when_the_first_dies() {
    // Issue 14: nodes with a second rendezvous. The first dies under relayed traffic; both
    // nodes register with the second (which knows nothing of them) and hand it their records,
    // and the pair is relayed again, in simulated seconds and deterministically.
    let sim = Sim::with_standby();
    let (mut sim, x, y) = Sim::pair_in(sim, NatKind::Sym, NatKind::Sym);
    sim.run_for(Duration::from_secs(3));
    assert_eq!(sim.path(x, y), PathKind::Relay);
    assert_eq!(traffic(&mut sim, x, y, Duration::from_secs(2)), 40);

    let (moved, resumed) = kill_the_first(&mut sim, x, y);
    // A node relaying traffic refreshes every 3 s, gives up on 4 s without an answer and
    // waits up to 2 s more (jitter), then two round trips (challenge, registration).
    assert!(moved <= Duration::from_secs(10), "moved after {moved:?}");
    assert!(
        resumed <= Duration::from_secs(10),
        "relayed again after {resumed:?}"
    );
    assert_eq!(sim.path(x, y), PathKind::Relay);
    assert_eq!(sim.path(y, x), PathKind::Relay);
    assert_eq!(traffic(&mut sim, x, y, Duration::from_secs(2)), 40);
    let standby_server = &sim.standby.as_ref().unwrap().server;
    assert!(standby_server
        .ledger()
        .trusted(&identity(1).public_key(), &identity(2).public_key()));
    println!("registered with the standby {moved:?} after the first died; relayed again after {resumed:?}");
}

/// The first rendezvous dies while `x` and `y` send each other a packet every 100 ms: how long
/// until both are registered with the second (at `RDV2_IP`), and until a packet crosses again.
fn kill_the_first(sim: &mut Sim, x: usize, y: usize) -> (Duration, Duration) {
    let second = format!("{RDV2_IP}:{RDV_PORT}");
    sim.primary_down = true;
    let died = sim.now;
    let mut moved = None;
    for i in 0..200 {
        sim.send_packet(x, y, format!("x{i}").as_bytes());
        sim.send_packet(y, x, format!("y{i}").as_bytes());
        let before = sim.received(x).len() + sim.received(y).len();
        sim.run_for(Duration::from_millis(100));
        let on_second = [x, y].iter().all(|&n| {
            let status = sim.nodes[n].node.net_status(sim.now);
            status.registered && status.rendezvous.as_deref() == Some(second.as_str())
        });
        if on_second && moved.is_none() {
            moved = Some(sim.now - died);
        }
        let after = sim.received(x).len() + sim.received(y).len();
        if let Some(moved) = moved.filter(|_| after > before) {
            return (moved, sim.now - died);
        }
    }
    let moved = moved.expect("both registered with the second rendezvous");
    panic!("registered with the second after {moved:?}, but never relayed through it");
}

/// Two nodes `n` (behind a NAT of kind `a`) and `n + 1` (kind `b`), trusting each other.
fn pair_of(n: u8, a: NatKind, b: NatKind) -> (Sim, usize, usize) {
    let mut sim = Sim::new();
    let (na, nb) = (
        sim.net.add_nat(a, "203.0.113.1"),
        sim.net.add_nat(b, "203.0.113.2"),
    );
    let ha = sim.net.add_host("10.1.0.10", Some(na));
    let hb = sim.net.add_host("10.2.0.10", Some(nb));
    let x = sim.add_node(n, ha, &[n + 1]);
    let y = sim.add_node(n + 1, hb, &[n]);
    (sim, x, y)
}

#[test]
fn a_symmetric_nat_meets_a_port_restricted_one_direct_by_birthday_probing() {
    // 20 trials with different keys, hence different random ports probed; the hard side
    // first in half of them. Trusting peers are introduced as soon as both are registered;
    // the time is counted from the start of the world, registrations included.
    for trial in 0..20u8 {
        let (a, b) = if trial % 2 == 0 {
            (NatKind::Sym, NatKind::Prc)
        } else {
            (NatKind::Prc, NatKind::Sym)
        };
        let (mut sim, x, y) = pair_of(10 + 2 * trial, a, b);
        let start = sim.now;
        let mut took = None;
        while sim.now - start < Duration::from_secs(5) {
            sim.run_for(Duration::from_millis(20));
            if took.is_none()
                && sim.path(x, y) == PathKind::Direct
                && sim.path(y, x) == PathKind::Direct
            {
                took = Some(sim.now - start);
            }
        }
        let what = format!("trial {trial} ({a:?}/{b:?})\n{}", sim.debug());
        let took = took.unwrap_or_else(|| panic!("never direct: {what}"));
        assert!(
            took <= Duration::from_secs(3),
            "direct after {took:?}: {what}"
        );
        let (hard, easy) = if a == NatKind::Sym { (x, y) } else { (y, x) };
        for i in [hard, easy] {
            let c = sim.nodes[i].node.counters();
            assert_eq!((c.birthday_attempts, c.birthday_direct), (1, 1), "{what}");
            assert!(c.birthday_probes <= 2048, "{what}");
            // The relay carried the traffic until then.
            assert!(c.relay_tx_bytes > 0 && c.relay_rx_bytes > 0, "{what}");
        }
        // The hard side keeps the one spare its path uses; the easy side needs none.
        assert_eq!(sim.nodes[hard].node.spares().iter().count(), 1, "{what}");
        assert!(sim.nodes[easy].node.spares().is_empty(), "{what}");
        // Traffic keeps flowing over it.
        let arrived = traffic(&mut sim, x, y, Duration::from_secs(2));
        assert!(arrived >= 38, "{arrived} of 40 packets crossed: {what}");
        assert_eq!(sim.path(x, y), PathKind::Direct, "{what}");
        assert_eq!(sim.path(y, x), PathKind::Direct, "{what}");
    }
}

#[test]
fn both_sides_sending_from_the_first_moment_get_through_within_a_second() {
    // Both sides' first packets start handshakes at once, and the introduction, the paths found
    // and stale data each want one more: the initiations must not pile up so that every answer
    // misses (with WireGuard's own timers running, that took 15 s to recover).
    for (a, b) in [
        (NatKind::Prc, NatKind::Prc),
        (NatKind::Sym, NatKind::Prc),
        (NatKind::Cone, NatKind::Sym),
    ] {
        let (mut sim, x, y) = pair_of(10, a, b);
        let start = sim.now;
        let mut both = None;
        for _ in 0..250 {
            sim.send_packet(x, y, b"ping");
            sim.send_packet(y, x, b"pong");
            sim.run_for(Duration::from_millis(20));
            if both.is_none() && !sim.received(x).is_empty() && !sim.received(y).is_empty() {
                both = Some(sim.now - start);
            }
        }
        let what = format!("{a:?}/{b:?}\n{}", sim.debug());
        let both = both.unwrap_or_else(|| panic!("nothing crossed both ways: {what}"));
        assert!(
            both <= Duration::from_secs(1),
            "first both ways after {both:?}: {what}"
        );
        let (rx, ry) = (sim.received(x).len(), sim.received(y).len());
        // What went while the handshakes crossed (the first few hundred ms) may be lost.
        assert!(
            rx >= 225 && ry >= 225,
            "{rx} and {ry} of 250 arrived: {what}"
        );
    }
}

#[test]
fn wireguard_rekeys_under_traffic_and_comes_back_after_its_keys_expired() {
    // WireGuard's timers run on the simulated clock: the initiator rekeys every 2 minutes
    // under traffic, and after 10 minutes of silence (keys zeroed at 9) the next packet starts
    // a new handshake and arrives within a second.
    let (mut sim, x, y) = Sim::pair(NatKind::Prc, NatKind::Prc);
    sim.run_for(Duration::from_secs(1));
    let handshakes = |sim: &Sim| sim.nodes[x].node.counters().handshakes;
    let before = handshakes(&sim);
    // Six minutes of a packet each way every second.
    for _ in 0..360 {
        sim.send_packet(x, y, b"x");
        sim.send_packet(y, x, b"y");
        sim.run_for(Duration::from_secs(1));
    }
    let (rx, ry) = (sim.received(x).len(), sim.received(y).len());
    assert!(
        rx >= 355 && ry >= 355,
        "{rx} and {ry} of 360 arrived\n{}",
        sim.debug()
    );
    let rekeys = handshakes(&sim) - before;
    assert!(
        (2..=4).contains(&rekeys),
        "{rekeys} handshakes in 6 minutes\n{}",
        sim.debug()
    );
    // Silence, long past the sessions' expiry.
    sim.run_for(Duration::from_secs(600));
    let seen = sim.received(y).len();
    sim.send_packet(x, y, b"after");
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.received(y).len(), seen + 1, "{}", sim.debug());
    assert!(
        handshakes(&sim) > before + rekeys,
        "a new handshake after the silence"
    );
}

#[test]
fn birthday_probing_that_fails_is_paced_bounded_and_backs_off() {
    // Nothing gets through between the two NATs (the relay still works): every attempt fails.
    let (mut sim, x, y) = pair_of(10, NatKind::Sym, NatKind::Prc);
    sim.net.block_direct = true;
    let counters = |sim: &Sim, i: usize| sim.nodes[i].node.counters().clone();
    // The first attempt starts 0.5 s after the introduction and sends at most 1,000 probes a
    // second: 0.3 s into it, no more than 300 and a burst.
    sim.run_for(Duration::from_millis(800));
    for i in [x, y] {
        let c = counters(&sim, i);
        assert_eq!(c.birthday_attempts, 1, "{c:?}");
        assert!(c.birthday_probes <= 300 + 25, "{c:?}");
    }
    assert_eq!(
        sim.nodes[x].node.spares().iter().count(),
        256,
        "the hard side's spares"
    );
    // It ends without a direct path, within its budget; the spares close.
    sim.run_for(Duration::from_secs(5));
    for i in [x, y] {
        let c = counters(&sim, i);
        assert_eq!((c.birthday_failed, c.birthday_direct), (1, 0), "{c:?}");
        assert!(c.birthday_probes <= 2048, "{c:?}");
        assert!(sim.nodes[i].node.spares().is_empty());
    }
    assert_eq!(sim.path(x, y), PathKind::Relay, "{}", sim.debug());
    // The pair asks for a punch again every 30 s, but the next attempt waits 60 s.
    sim.run_for(Duration::from_secs(50));
    assert!(counters(&sim, x).punches >= 2, "re-punched meanwhile");
    assert_eq!(counters(&sim, x).birthday_attempts, 1, "backed off");
    // After the wait, and with the way open again, the next attempt goes direct.
    sim.net.block_direct = false;
    sim.run_for(Duration::from_secs(40));
    for i in [x, y] {
        let c = counters(&sim, i);
        assert_eq!((c.birthday_attempts, c.birthday_direct), (2, 1), "{c:?}");
    }
    assert_eq!(sim.path(x, y), PathKind::Direct, "{}", sim.debug());
    assert_eq!(sim.path(y, x), PathKind::Direct, "{}", sim.debug());
}

#[test]
fn an_idle_pair_wakes_for_its_keepalives_and_refreshes_not_every_second() {
    // Issue 16, item 1: a node woke on a fixed tick whatever it had to do (4 a second, then
    // 1). Now an idle pair wakes for what is due: keepalives, registration refreshes, NAT
    // measurements, session ends. And after ten idle minutes it still answers at once.
    let (mut sim, x, y) = Sim::pair(NatKind::Prc, NatKind::Prc);
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.path(x, y), PathKind::Direct, "{}", sim.debug());
    assert!(traffic(&mut sim, x, y, Duration::from_secs(2)) >= 38);
    sim.run_for(Duration::from_secs(60));
    let total = |sim: &Sim, i: usize| sim.nodes[i].wakes.values().sum::<u64>();
    let before = [total(&sim, x), total(&sim, y)];
    let idle = Duration::from_secs(600);
    sim.run_for(idle);
    for (i, before) in [x, y].into_iter().zip(before) {
        let wakes = total(&sim, i) - before;
        eprintln!(
            "node {i}: {wakes} wake-ups in {idle:?}: {:?}",
            sim.nodes[i].wakes
        );
        assert!(
            wakes <= idle.as_secs() / 4,
            "node {i} woke {wakes} times in {idle:?} (a 1 s tick: 600): {:?}",
            sim.nodes[i].wakes
        );
    }
    assert_eq!(sim.path(x, y), PathKind::Direct, "{}", sim.debug());
    let seen = sim.received(y).len();
    sim.send_packet(x, y, b"after");
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.received(y).len(), seen + 1, "{}", sim.debug());
}

#[test]
fn every_nat_pair_split_across_two_instances_connects_as_on_one() {
    // The multi-instance model: node 1 uses the first instance, node 2 the second; they share
    // one registry. Trust (handed over at registration, at each instance) reaches both
    // ledgers through it, the Connect at one instance introduces through the other, and
    // what cannot go direct is relayed through both.
    for a in ALL_KINDS {
        for b in ALL_KINDS {
            let mut sim = Sim::with_instances();
            sim.second_first.push(2);
            let (mut sim, x, y) = Sim::pair_in(sim, a, b);
            sim.run_for(Duration::from_secs(2));
            let arrived = traffic(&mut sim, x, y, Duration::from_secs(8));
            assert!(
                arrived >= 140,
                "{a:?}/{b:?}: only {arrived} of 160 packets crossed\n{}",
                sim.debug()
            );
            let want = expected_path(a, b);
            assert_eq!(sim.path(x, y), want, "{a:?}/{b:?} from the first node");
            assert_eq!(sim.path(y, x), want, "{a:?}/{b:?} from the second node");
            let (one, two) = (&sim.server, &sim.standby.as_ref().unwrap().server);
            let first = sim.nodes[x].node.net_status(sim.now).rendezvous;
            let second = sim.nodes[y].node.net_status(sim.now).rendezvous;
            assert_ne!(first, second, "{a:?}/{b:?}: on different instances");
            if want == PathKind::Relay {
                // Each instance forwarded its node's frames to the other.
                let (c1, c2) = (one.counters(), two.counters());
                assert!(
                    c1.relay_forwarded_frames > 0 && c2.relay_forwarded_frames > 0,
                    "{a:?}/{b:?}: {c1} / {c2}"
                );
            }
        }
    }
}

#[test]
fn on_instances_sharing_a_registry_a_relayed_pair_fails_over_knowing_its_trust() {
    // As `a_relayed_pair_moves_to_the_standby_rendezvous_when_the_first_dies`, with the two
    // instances sharing a registry: the survivor knows the pair's trust already, and its own
    // timing is the same, deterministically.
    let sim = Sim::with_instances();
    let (mut sim, x, y) = Sim::pair_in(sim, NatKind::Sym, NatKind::Sym);
    sim.run_for(Duration::from_secs(3));
    assert_eq!(sim.path(x, y), PathKind::Relay);
    assert_eq!(traffic(&mut sim, x, y, Duration::from_secs(2)), 40);
    let (a, b) = (identity(1).public_key(), identity(2).public_key());
    let survivor = &sim.standby.as_ref().unwrap().server;
    assert!(survivor.ledger().trusted(&a, &b), "read from the registry");
    let stored_before = survivor.counters().statements_stored;

    let (moved, resumed) = kill_the_first(&mut sim, x, y);
    assert!(moved <= Duration::from_secs(10), "moved after {moved:?}");
    assert!(
        resumed <= Duration::from_secs(10),
        "relayed again after {resumed:?}"
    );
    assert_eq!(traffic(&mut sim, x, y, Duration::from_secs(2)), 40);
    // The nodes handed their records over (a new instance asks), and nothing had to be
    // written: the registry had them.
    let survivor = &sim.standby.as_ref().unwrap().server;
    assert_eq!(survivor.counters().statements_stored, stored_before);
    assert_eq!(survivor.instances().len(), 1, "the first stopped beating");
    println!("shared registry: on the second instance {moved:?} after the first died; relayed again after {resumed:?}");
}

#[test]
fn a_fleet_whose_instance_dies_arrives_at_the_survivor_spread_out_not_at_once() {
    // 150 idle nodes, started over one keepalive interval as a fleet boots, all on the first
    // instance. It dies: each notices at its own next refresh (the keepalive, 25 s), gives up
    // 4 s later and waits up to 2 s more, so the survivor sees the fleet arrive over about
    // half a minute; the busiest second brings a small share of it, not everyone at once.
    let mut sim = Sim::with_instances();
    let nodes: Vec<usize> = (10..160u8)
        .map(|n| {
            let host = sim.net.add_host(&format!("198.51.100.{n}"), None);
            let i = sim.add_node(n, host, &[]);
            sim.run_for(Duration::from_millis(166));
            i
        })
        .collect();
    sim.run_for(Duration::from_secs(5));
    let on_first = nodes
        .iter()
        .filter(|&&i| sim.nodes[i].node.is_registered(sim.now))
        .count();
    assert_eq!(on_first, nodes.len());
    sim.primary_down = true;
    let mut arrivals = Vec::new();
    let mut held = sim.standby.as_ref().unwrap().server.registered();
    for _ in 0..45 {
        sim.run_for(Duration::from_secs(1));
        let now_held = sim.standby.as_ref().unwrap().server.registered();
        arrivals.push(now_held - held);
        held = now_held;
    }
    let moved = nodes
        .iter()
        .filter(|&&i| sim.nodes[i].node.is_registered(sim.now))
        .count();
    assert_eq!(
        moved,
        nodes.len(),
        "all on the survivor within 45 s: {arrivals:?}"
    );
    let busiest = arrivals.iter().max().copied().unwrap_or(0);
    let seconds_with_arrivals = arrivals.iter().filter(|&&a| a > 0).count();
    println!("arrivals per second at the survivor: {arrivals:?}");
    assert!(
        busiest * 10 <= nodes.len(),
        "busiest second {busiest} of {}: {arrivals:?}",
        nodes.len()
    );
    assert!(seconds_with_arrivals >= 20, "{arrivals:?}");
}
