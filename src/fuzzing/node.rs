//! A real `Node` fed sequences of datagrams: raw bytes from anywhere, control messages
//! correctly sealed by its rendezvous, its configured peer or a stranger (bodies from the
//! input, sometimes echoing the nonce of what the node last sent), relay frames, WireGuard
//! from a real peer tunnel (so handshakes complete and transport data arrives), TUN packets,
//! timers and operator verbs. Whatever happens, the node never panics and nothing reaches
//! its TUN but packets from its trusted peer's own address to its own.

use std::collections::VecDeque;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};

use super::input::Input;
use super::memo;
use super::wire::fixed_identity;
use crate::clock::WallClock;
use crate::identity::Identity;
use crate::node::{NetOutput, Node, NodeConfig, PeerConfig, RendezvousConfig, TunOutput};
use crate::wire::control::{write_relay, RELAY_FROM, RELAY_TO};

const EPOCH_MS: u64 = 1_800_000_000_000;
const RDV: &str = "203.0.113.7:7400";
const RDV_ALT: &str = "203.0.113.7:7401";
const PEER: &str = "198.51.100.2:51870";
const STRANGER: &str = "192.0.2.66:40000";

/// Parties: 0 the node, 1 its configured peer, 2 a stranger, 3 the rendezvous.
const ME: u8 = 0;
const PEER_ID: u8 = 1;
const STRANGER_ID: u8 = 2;
const RDV_ID: u8 = 3;

struct World {
    node: Node,
    /// The configured peer's end of the tunnel.
    peer: Tunn,
    t0: Instant,
    now: Instant,
    /// Datagrams on their way to the node.
    inbound: VecDeque<(SocketAddr, Vec<u8>)>,
    /// The nonce of the last control message the node sent to the rendezvous, and to the peer.
    last_nonce: [u64; 2],
    out: Vec<u8>,
    scratch: Vec<u8>,
}

pub fn node_datagrams(data: &[u8]) {
    let mut input = Input::new(data);
    let mut world = World::new();
    for _ in 0..48 {
        if input.is_empty() {
            break;
        }
        world.step(&mut input);
        world.settle();
    }
}

fn ep(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

fn clone_identity(n: u8) -> Identity {
    Identity::from_secret_bytes(&fixed_identity(n).signing_key().to_bytes())
}

impl World {
    fn new() -> World {
        let t0 = Instant::now();
        let node = Node::new(NodeConfig {
            standby_rendezvous: Vec::new(),
            shared_registry: false,
            mtu: 1380,
            identity: clone_identity(ME),
            peers: vec![PeerConfig {
                key: fixed_identity(PEER_ID).public_key(),
                endpoint: Some(ep(PEER)),
            }],
            trust: Default::default(),
            hostname: Some("fuzz".parse().expect("a hostname")),
            auto_approve: false,
            keepalive: None,
            seed: 7,
            rendezvous: Some(RendezvousConfig {
                addr: ep(RDV),
                alt_port: ep(RDV_ALT).port(),
                key: Some(fixed_identity(RDV_ID).public_key()),
                stream: None,
            }),
            lan: vec![ep("10.0.0.2:51870")],
            endpoint: None,
            local_port: 51870,
            clock: WallClock::new(t0, EPOCH_MS),
        })
        .expect("the node starts");
        // The same every run, and a point decompression to work out.
        static ME_X25519: OnceLock<boringtun::x25519::PublicKey> = OnceLock::new();
        let me = ME_X25519.get_or_init(|| {
            let me = fixed_identity(ME).public_key();
            me.x25519_public().expect("a valid key")
        });
        let peer = Tunn::new(
            fixed_identity(PEER_ID).x25519_secret(),
            *me,
            None,
            None,
            0x77,
            None,
        );
        World {
            node,
            peer,
            t0,
            now: t0,
            inbound: VecDeque::new(),
            last_nonce: [0; 2],
            out: vec![0; 65535],
            scratch: vec![0; 65535],
        }
    }

    fn wall_ms(&self) -> u64 {
        EPOCH_MS + self.now.duration_since(self.t0).as_millis() as u64
    }

    fn step(&mut self, input: &mut Input<'_>) {
        match input.u8() % 9 {
            0 => {
                let from = [RDV, RDV_ALT, PEER, STRANGER][input.choose(4)];
                let bytes = input.bytes(1500).to_vec();
                self.inbound.push_back((ep(from), bytes));
            }
            1 | 2 => {
                let echo = input.u8().is_multiple_of(2);
                self.sealed(input, echo);
            }
            3 => {
                self.now += Duration::from_millis(u64::from(input.u16()) * 10);
                self.node.handle_timeout(self.now);
            }
            4 => {
                // A relay frame from the rendezvous carrying the peer's WireGuard (or junk).
                let inner = if input.bool() {
                    self.peer_packet(input)
                } else {
                    Some(input.bytes(1500).to_vec())
                };
                let Some(inner) = inner.filter(|i| !i.is_empty()) else {
                    return;
                };
                let mut frame = vec![0; inner.len() + 33];
                let key = fixed_identity(PEER_ID).public_key();
                write_relay(&mut frame, RELAY_FROM, &key, &inner).expect("sized");
                let from = if input.bool() { RDV } else { STRANGER };
                self.inbound.push_back((ep(from), frame));
            }
            5 => {
                if let Some(d) = self.peer_packet(input) {
                    self.inbound.push_back((ep(PEER), d));
                }
            }
            6 => {
                let packet = if input.bool() {
                    let dst = fixed_identity(input.u8() % 4).address().to_ipv6();
                    ipv6_packet(
                        fixed_identity(ME).address().to_ipv6(),
                        dst,
                        input.bytes(1400),
                    )
                } else {
                    input.bytes(1500).to_vec()
                };
                let now = self.now;
                let mut out = std::mem::take(&mut self.out);
                if let TunOutput::Send(t) = self.node.handle_tun_packet(&packet, now, &mut out) {
                    let (to, payload) = (t.to, t.payload.to_vec());
                    self.route(to, &payload);
                }
                self.out = out;
            }
            7 => self.verb(input),
            _ => {
                // Something the peer already sent, again (a replay).
                if let Some((from, d)) = self.inbound.back().cloned() {
                    self.inbound.push_back((from, d));
                }
            }
        }
    }

    /// A control message sealed by one of the parties, its body from the input; with `echo`,
    /// its first 8 bytes are the nonce of what the node last sent that party.
    fn sealed(&mut self, input: &mut Input<'_>, echo: bool) {
        let signer = [RDV_ID, PEER_ID, STRANGER_ID][input.choose(3)];
        let kind = 0x50 + input.u8() % 0x14;
        let skew_ms = (i64::from(input.u8()) - 128) * 500;
        let nonce = input.u64();
        let mut body = input.bytes(600).to_vec();
        if echo && body.len() >= 8 {
            let last = self.last_nonce[usize::from(signer != RDV_ID)];
            body[..8].copy_from_slice(&last.to_be_bytes());
        }
        let from = match (signer, input.u8() % 4) {
            (_, 0) => STRANGER,
            (RDV_ID, 1) => RDV_ALT,
            (RDV_ID, _) => RDV,
            (PEER_ID, _) => PEER,
            _ => STRANGER,
        };
        let ts = self.wall_ms().saturating_add_signed(skew_ms);
        if let Some(sealed) = memo::seal(kind, signer, ts, nonce, &body) {
            self.inbound.push_back((ep(from), sealed));
        }
    }

    /// An IPv6 packet from the peer's side of the tunnel (its own source address, or a spoofed
    /// one), encapsulated by the peer's tunnel; `None` while it has no session (a handshake
    /// initiation goes out instead).
    fn peer_packet(&mut self, input: &mut Input<'_>) -> Option<Vec<u8>> {
        let src = match input.u8() % 4 {
            0 => fixed_identity(STRANGER_ID).address().to_ipv6(),
            1 => Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0, 0, 0x53),
            _ => fixed_identity(PEER_ID).address().to_ipv6(),
        };
        let dst = match input.u8() % 4 {
            0 => fixed_identity(STRANGER_ID).address().to_ipv6(),
            _ => fixed_identity(ME).address().to_ipv6(),
        };
        let packet = if input.u8().is_multiple_of(8) {
            input.bytes(1400).to_vec()
        } else {
            ipv6_packet(src, dst, input.bytes(1400))
        };
        match self.peer.encapsulate(&packet, &mut self.scratch) {
            TunnResult::WriteToNetwork(d) => Some(d.to_vec()),
            _ => None,
        }
    }

    fn verb(&mut self, input: &mut Input<'_>) {
        let now = self.now;
        let peer = fixed_identity(PEER_ID);
        let stranger = fixed_identity(STRANGER_ID).public_key();
        match input.u8() % 5 {
            0 => {
                let _ = self.node.ping(peer.address(), input.u16(), now);
            }
            1 => {
                let _ = self.node.handshake(stranger, "fuzz", now);
            }
            2 => {
                let _ = self.node.approve(stranger, now);
            }
            3 => {
                let query = crate::wire::control::Query::Name("bob".parse().expect("a name"));
                let _ = self.node.lookup(query, now);
            }
            _ => {
                let _ = self.node.release_name(now);
            }
        }
    }

    /// Delivers what is in flight, and what that provokes, up to a budget.
    fn settle(&mut self) {
        for _ in 0..64 {
            self.transmit();
            let Some((from, datagram)) = self.inbound.pop_front() else {
                break;
            };
            let now = self.now;
            let mut out = std::mem::take(&mut self.out);
            match self.node.handle_datagram(from, &datagram, now, &mut out) {
                NetOutput::Tun(packet) => check_tun(packet),
                NetOutput::Send(t) => {
                    let (to, payload) = (t.to, t.payload.to_vec());
                    self.route(to, &payload);
                }
                NetOutput::Nothing => {}
            }
            self.out = out;
        }
        self.inbound.clear();
        while self.node.poll_event().is_some() {}
    }

    /// Everything the node wants sent.
    fn transmit(&mut self) {
        let now = self.now;
        let mut out = std::mem::take(&mut self.out);
        while let Some(t) = self.node.poll_transmit(now, &mut out) {
            let (to, payload) = (t.to, t.payload.to_vec());
            self.route(to, &payload);
        }
        self.out = out;
    }

    /// A datagram the node sent: remembered (the nonce of a control message, for echoes)
    /// and, for the peer, handed to its tunnel, whose answers go back to the node.
    fn route(&mut self, to: SocketAddr, payload: &[u8]) {
        let to_rendezvous = to == ep(RDV) || to == ep(RDV_ALT);
        let wireguard = match payload.first() {
            Some(&RELAY_TO) if to_rendezvous => payload.get(33..),
            Some(1..=4) if to == ep(PEER) => Some(payload),
            _ => {
                if let Some(nonce) = memo::opened_nonce(payload) {
                    self.last_nonce[usize::from(!to_rendezvous)] = nonce;
                }
                None
            }
        };
        let Some(datagram) = wireguard else {
            return;
        };
        let mut result = self.peer.decapsulate(None, datagram, &mut self.scratch);
        while let TunnResult::WriteToNetwork(d) = result {
            self.inbound.push_back((ep(PEER), d.to_vec()));
            result = self.peer.decapsulate(None, &[], &mut self.scratch);
        }
    }
}

/// What the node writes to its TUN comes from its trusted peer, to itself.
fn check_tun(packet: &[u8]) {
    let (src, dst) = crate::wire::ip::ipv6_addrs(packet).expect("the node wrote IPv6");
    assert_eq!(
        Ipv6Addr::from(*src),
        fixed_identity(PEER_ID).address().to_ipv6(),
        "a packet reached the TUN from an address that is not its peer's"
    );
    assert_eq!(
        Ipv6Addr::from(*dst),
        fixed_identity(ME).address().to_ipv6(),
        "a packet reached the TUN for another address"
    );
}

/// An IPv6 packet (next header 59, "no next header") carrying `payload`.
fn ipv6_packet(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40 + payload.len()];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    p[6] = 59;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p[40..].copy_from_slice(payload);
    p
}
