//! The node, sans-IO: peers, cryptokey routing, the anti-spoofing gate and timers.
//!
//! [`Node`] owns no socket, no TUN and no clock. The daemon feeds it packets read from the TUN
//! ([`Node::handle_tun_packet`]), datagrams read from the UDP socket ([`Node::handle_datagram`])
//! and timer ticks ([`Node::handle_timeout`]), always with an explicit `now`, and pulls what it
//! must send with [`Node::poll_transmit`] and [`Node::poll_event`]. Outputs borrow from
//! caller-owned buffers, so the packet path allocates nothing.
//!
//! Cryptokey routing: a packet to `fd70::X` is encrypted for the peer whose key derives X, and a
//! decrypted packet is handed to the TUN only if its inner source is the sending peer's own
//! address and its destination is ours. Nothing else reaches the kernel.

mod counters;
mod peer;

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;

pub use counters::{Counters, DropReason};
pub use peer::{PathKind, PeerConfig, PeerStatus};

use crate::addr::NodeAddr;
use crate::identity::{Identity, NodeKey};
use crate::wire::ip::{self, UnreachableCode};
use crate::wire::{classify, DatagramKind};
use peer::Peer;

/// Smallest buffer the caller may pass for outputs: boringtun needs `len + 32` and at least 148.
pub const MIN_OUT_BUF: usize = 1500 + 32;
/// How often WireGuard's timers (handshake retry, rekey, keepalive) are run.
const TIMER_TICK: Duration = Duration::from_millis(250);
/// Handshake messages per second answered before cookies are demanded (boringtun's default).
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// ICMPv6 errors written back to the TUN, per second.
const ICMP_ERRORS_PER_SEC: u32 = 10;
/// Pings in flight at once; older ones are forgotten.
const MAX_PINGS_IN_FLIGHT: usize = 64;
/// WireGuard peer indices are 24 bits.
const MAX_PEERS: usize = 1 << 24;

/// Static settings of a node.
pub struct NodeConfig {
    pub identity: Identity,
    pub peers: Vec<PeerConfig>,
    /// WireGuard persistent keepalive in seconds, to hold NAT mappings open.
    pub keepalive: Option<u16>,
    /// Randomness for the ping token; the caller supplies it so simulations replay.
    pub seed: u64,
}

/// A datagram to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Transmit<'a> {
    pub to: SocketAddr,
    pub payload: &'a [u8],
}

/// What to do with a packet read from the TUN.
#[derive(Debug, PartialEq, Eq)]
pub enum TunOutput<'a> {
    /// Send this datagram.
    Send(Transmit<'a>),
    /// Write this packet back into the TUN (an ICMPv6 error for the sender).
    Reply(&'a [u8]),
    /// Nothing to do now (queued behind a handshake, or dropped and counted).
    Nothing,
}

/// What to do with a datagram read from the socket.
#[derive(Debug, PartialEq, Eq)]
pub enum NetOutput<'a> {
    /// Write this IP packet into the TUN.
    Tun(&'a [u8]),
    /// Send this datagram (a handshake response, cookie or keepalive). More may follow from
    /// [`Node::poll_transmit`].
    Send(Transmit<'a>),
    /// Nothing to do (consumed, or dropped and counted).
    Nothing,
}

/// Something the daemon may want to know about.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    PingReply {
        peer: NodeKey,
        seq: u16,
        rtt: Duration,
    },
}

/// Why a ping could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PingError {
    #[error("{0} is not a peer of this node")]
    NoSuchPeer(NodeAddr),
    #[error("no endpoint is known for peer {0} yet")]
    NoEndpoint(NodeAddr),
}

/// Why a peer could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("{0} is this node's own key")]
    OwnKey(NodeKey),
    #[error("peer {0} is already configured")]
    Duplicate(NodeKey),
    #[error("key {0} is not a valid Ed25519 public key")]
    InvalidKey(NodeKey),
    #[error("key {0} derives a reserved address")]
    ReservedAddress(NodeKey),
    #[error("too many peers")]
    TooMany,
}

struct PendingPing {
    peer: usize,
    seq: u16,
    sent: Option<Instant>,
}

/// The sans-IO node.
pub struct Node {
    key: NodeKey,
    addr: NodeAddr,
    ip: Ipv6Addr,
    secret: x25519::StaticSecret,
    public: x25519::PublicKey,
    keepalive: Option<u16>,
    rate_limiter: Arc<RateLimiter>,
    peers: Vec<Peer>,
    by_addr: BTreeMap<NodeAddr, usize>,
    by_wg_key: BTreeMap<[u8; 32], usize>,
    counters: Counters,
    next_tick: Option<Instant>,
    next_rate_reset: Option<Instant>,
    icmp_tokens: u32,
    icmp_refill: Option<Instant>,
    ping_ident: u16,
    ping_token: [u8; 8],
    pings: VecDeque<PendingPing>,
    /// Peers with queued datagrams or due timers, for `poll_transmit`.
    work: VecDeque<usize>,
    events: VecDeque<Event>,
    scratch: [u8; 128],
}

impl Node {
    pub fn new(config: NodeConfig) -> Result<Node, PeerError> {
        let secret = config.identity.x25519_secret();
        let public = x25519::PublicKey::from(&secret);
        let key = config.identity.public_key();
        let addr = config.identity.address();
        let seed = config.seed.to_le_bytes();
        let mut node = Node {
            key,
            addr,
            ip: addr.to_ipv6(),
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            secret,
            public,
            keepalive: config.keepalive,
            peers: Vec::new(),
            by_addr: BTreeMap::new(),
            by_wg_key: BTreeMap::new(),
            counters: Counters::default(),
            next_tick: None,
            next_rate_reset: None,
            icmp_tokens: ICMP_ERRORS_PER_SEC,
            icmp_refill: None,
            ping_ident: u16::from_le_bytes([seed[0], seed[1]]),
            ping_token: seed,
            pings: VecDeque::new(),
            work: VecDeque::new(),
            events: VecDeque::new(),
            scratch: [0; 128],
        };
        for peer in &config.peers {
            node.add_peer(peer)?;
        }
        Ok(node)
    }

    pub fn key(&self) -> NodeKey {
        self.key
    }

    pub fn addr(&self) -> NodeAddr {
        self.addr
    }

    pub fn add_peer(&mut self, config: &PeerConfig) -> Result<(), PeerError> {
        if config.key == self.key {
            return Err(PeerError::OwnKey(config.key));
        }
        let wg_public = config
            .key
            .x25519_public()
            .ok_or(PeerError::InvalidKey(config.key))?;
        let addr = config.key.address();
        if addr.is_reserved() {
            return Err(PeerError::ReservedAddress(config.key));
        }
        if self.by_addr.contains_key(&addr) || self.by_wg_key.contains_key(wg_public.as_bytes()) {
            return Err(PeerError::Duplicate(config.key));
        }
        if self.peers.len() >= MAX_PEERS {
            return Err(PeerError::TooMany);
        }
        let index = self.peers.len();
        self.peers.push(Peer::new(
            config,
            wg_public,
            self.secret.clone(),
            index as u32,
            self.keepalive,
            self.rate_limiter.clone(),
        ));
        self.by_addr.insert(addr, index);
        self.by_wg_key.insert(*wg_public.as_bytes(), index);
        Ok(())
    }

    /// A packet the kernel wrote into the TUN. `out` must hold at least `packet.len() + 32`
    /// bytes and [`MIN_OUT_BUF`] for ICMP errors.
    pub fn handle_tun_packet<'a>(
        &mut self,
        packet: &[u8],
        now: Instant,
        out: &'a mut [u8],
    ) -> TunOutput<'a> {
        let Some((_, dst)) = ip::ipv6_addrs(packet) else {
            self.counters.drop(DropReason::NotIpv6);
            return TunOutput::Nothing;
        };
        let Some(dst) = NodeAddr::from_ipv6_octets(dst) else {
            self.counters.drop(DropReason::NotOverlay);
            return TunOutput::Nothing;
        };
        let Some(&index) = self.by_addr.get(&dst) else {
            self.counters.drop(DropReason::NoPeer);
            return self.unreachable(UnreachableCode::NoRoute, packet, now, out);
        };
        let peer = &mut self.peers[index];
        let Some(endpoint) = peer.endpoint else {
            self.counters.drop(DropReason::NoEndpoint);
            return self.unreachable(UnreachableCode::AddressUnreachable, packet, now, out);
        };
        // The source is not checked here: the receiving peer enforces that a packet's source is
        // the sender's own address, which is the check that matters.
        match peer.tunn.encapsulate(packet, out) {
            TunnResult::WriteToNetwork(datagram) => TunOutput::Send(Transmit {
                to: endpoint,
                payload: datagram,
            }),
            // Queued inside boringtun until the handshake completes.
            _ => TunOutput::Nothing,
        }
    }

    /// A datagram that arrived on the node's socket from `from`.
    pub fn handle_datagram<'a>(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &'a mut [u8],
    ) -> NetOutput<'a> {
        match classify(datagram) {
            DatagramKind::WireGuard => self.handle_wireguard(from, datagram, now, out),
            DatagramKind::Pilot(_) => {
                self.counters.drop(DropReason::UnhandledControl);
                NetOutput::Nothing
            }
            DatagramKind::Unknown => {
                self.counters.drop(DropReason::UnknownDatagram);
                NetOutput::Nothing
            }
        }
    }

    /// Runs what is due at `now`. Call when [`Node::poll_timeout`] says so (earlier is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_tick.is_none_or(|t| now >= t) {
            self.next_tick = Some(now + TIMER_TICK);
            for index in 0..self.peers.len() {
                self.peers[index].timers_due = true;
                self.schedule(index);
            }
        }
        if self.next_rate_reset.is_none_or(|t| now >= t) {
            self.next_rate_reset = Some(now + Duration::from_secs(1));
            self.rate_limiter.reset_count();
        }
    }

    /// When the node next needs [`Node::handle_timeout`], and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let tick = self.next_tick.map(|t| (t, "wireguard timers"));
        let reset = self
            .next_rate_reset
            .map(|t| (t, "handshake rate limit reset"));
        match (tick, reset) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// The next datagram the node wants sent, written into `out`; `None` when there is none.
    /// Call until `None` after every batch of input and every timeout.
    pub fn poll_transmit<'a>(&mut self, now: Instant, out: &'a mut [u8]) -> Option<Transmit<'a>> {
        let (to, len) = self.next_transmit(now, out)?;
        Some(Transmit {
            to,
            payload: &out[..len],
        })
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Queues an ICMPv6 echo request to the peer owning `target`; the reply comes back as
    /// [`Event::PingReply`] and is not written to the TUN.
    pub fn ping(&mut self, target: NodeAddr, seq: u16) -> Result<(), PingError> {
        let &peer = self
            .by_addr
            .get(&target)
            .ok_or(PingError::NoSuchPeer(target))?;
        if self.peers[peer].endpoint.is_none() {
            return Err(PingError::NoEndpoint(target));
        }
        if self.pings.len() >= MAX_PINGS_IN_FLIGHT {
            self.pings.pop_front();
        }
        self.pings.push_back(PendingPing {
            peer,
            seq,
            sent: None,
        });
        Ok(())
    }

    pub fn peers(&self) -> impl Iterator<Item = PeerStatus> + '_ {
        self.peers.iter().map(Peer::status)
    }

    /// The peer owning `addr`, if any.
    pub fn peer_status(&self, addr: NodeAddr) -> Option<PeerStatus> {
        self.by_addr.get(&addr).map(|&i| self.peers[i].status())
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    fn handle_wireguard<'a>(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &'a mut [u8],
    ) -> NetOutput<'a> {
        let Some(index) = self.route_wireguard(from, datagram, out) else {
            return NetOutput::Nothing;
        };
        let peer = &mut self.peers[index];
        match peer.tunn.decapsulate(Some(from.ip()), datagram, out) {
            TunnResult::WriteToNetwork(reply) => {
                // Authenticated: follow the peer to wherever it now sends from (roaming).
                peer.endpoint = Some(from);
                peer.needs_flush = true;
                self.schedule(index);
                NetOutput::Send(Transmit {
                    to: from,
                    payload: reply,
                })
            }
            TunnResult::WriteToTunnelV6(packet, src) => {
                peer.endpoint = Some(from);
                if NodeAddr::from_ipv6(src) != Some(peer.addr) {
                    self.counters.drop(DropReason::SpoofedSource);
                    return NetOutput::Nothing;
                }
                let Some((_, dst)) = ip::ipv6_addrs(packet) else {
                    self.counters.drop(DropReason::NotIpv6Inner);
                    return NetOutput::Nothing;
                };
                if *dst != self.ip.octets() {
                    self.counters.drop(DropReason::WrongDestination);
                    return NetOutput::Nothing;
                }
                if let Some((ident, seq, data)) = ip::parse_echo_reply(packet) {
                    if ident == self.ping_ident && data == self.ping_token {
                        let pos = self
                            .pings
                            .iter()
                            .position(|p| p.peer == index && p.seq == seq);
                        if let Some(PendingPing {
                            sent: Some(sent), ..
                        }) = pos.and_then(|i| self.pings.remove(i))
                        {
                            let rtt = now.saturating_duration_since(sent);
                            self.peers[index].last_rtt = Some(rtt);
                            self.events.push_back(Event::PingReply {
                                peer: self.peers[index].key,
                                seq,
                                rtt,
                            });
                        }
                        return NetOutput::Nothing;
                    }
                }
                NetOutput::Tun(packet)
            }
            TunnResult::WriteToTunnelV4(..) => {
                peer.endpoint = Some(from);
                self.counters.drop(DropReason::NotIpv6Inner);
                NetOutput::Nothing
            }
            // A keepalive, or a handshake response that completed the session.
            TunnResult::Done => {
                peer.endpoint = Some(from);
                peer.needs_flush = true;
                self.schedule(index);
                NetOutput::Nothing
            }
            TunnResult::Err(_) => {
                self.counters.drop(DropReason::BadWireGuard);
                NetOutput::Nothing
            }
        }
    }

    /// Which peer a WireGuard datagram is for: by our receiver index for responses and data,
    /// by the initiator's static key (decrypted from the message) for handshake initiations.
    fn route_wireguard(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        scratch: &mut [u8],
    ) -> Option<usize> {
        let index = match Tunn::parse_incoming_packet(datagram) {
            Ok(Packet::HandshakeInit(_)) => {
                // mac1 (and, under load, the cookie) is checked before the expensive
                // Diffie-Hellman that reveals the sender's key.
                let Ok(Packet::HandshakeInit(init)) =
                    self.rate_limiter
                        .verify_packet(Some(from.ip()), datagram, scratch)
                else {
                    self.counters.drop(DropReason::BadWireGuard);
                    return None;
                };
                let Ok(half) = parse_handshake_anon(&self.secret, &self.public, &init) else {
                    self.counters.drop(DropReason::BadWireGuard);
                    return None;
                };
                let Some(&index) = self.by_wg_key.get(&half.peer_static_public) else {
                    self.counters.drop(DropReason::UnknownPeer);
                    return None;
                };
                index
            }
            Ok(Packet::HandshakeResponse(p)) => (p.receiver_idx >> 8) as usize,
            Ok(Packet::PacketCookieReply(p)) => (p.receiver_idx >> 8) as usize,
            Ok(Packet::PacketData(p)) => (p.receiver_idx >> 8) as usize,
            Err(_) => {
                self.counters.drop(DropReason::BadWireGuard);
                return None;
            }
        };
        if index >= self.peers.len() {
            self.counters.drop(DropReason::BadWireGuard);
            return None;
        }
        Some(index)
    }

    /// Writes the next datagram into `out`; returns where it goes and its length. Lengths rather
    /// than slices keep the borrow of `out` local to each branch.
    fn next_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<(SocketAddr, usize)> {
        while let Some(i) = self.pings.iter().position(|p| p.sent.is_none()) {
            let peer_index = self.pings[i].peer;
            let Some(endpoint) = self.peers[peer_index].endpoint else {
                self.pings.remove(i);
                continue;
            };
            self.pings[i].sent = Some(now);
            let len = self.write_ping(peer_index, self.pings[i].seq);
            if let TunnResult::WriteToNetwork(d) = self.peers[peer_index]
                .tunn
                .encapsulate(&self.scratch[..len], out)
            {
                return Some((endpoint, d.len()));
            }
            // Queued behind the handshake: boringtun sends it once the session is up.
        }
        // Only peers with something to do are visited: no scan of the whole table per batch.
        while let Some(&index) = self.work.front() {
            let peer = &mut self.peers[index];
            if peer.endpoint.is_none() {
                peer.needs_flush = false;
                peer.timers_due = false;
            }
            if let (Some(endpoint), true) = (peer.endpoint, peer.needs_flush || peer.timers_due) {
                let result = if peer.needs_flush {
                    peer.tunn.decapsulate(None, &[], out)
                } else {
                    peer.timers_due = false;
                    peer.tunn.update_timers(out)
                };
                match result {
                    // The peer stays at the front: it may have more queued.
                    TunnResult::WriteToNetwork(d) => return Some((endpoint, d.len())),
                    _ if peer.needs_flush => peer.needs_flush = false,
                    _ => {}
                }
                continue;
            }
            peer.queued = false;
            self.work.pop_front();
        }
        None
    }

    /// Puts a peer on the work list `poll_transmit` walks, once.
    fn schedule(&mut self, index: usize) {
        let peer = &mut self.peers[index];
        if !peer.queued {
            peer.queued = true;
            self.work.push_back(index);
        }
    }

    fn write_ping(&mut self, peer: usize, seq: u16) -> usize {
        let dst = self.peers[peer].addr.to_ipv6();
        ip::write_echo_request(
            &mut self.scratch,
            self.ip,
            dst,
            self.ping_ident,
            seq,
            &self.ping_token,
        )
        .expect("scratch holds an echo request")
    }

    fn unreachable<'a>(
        &mut self,
        code: UnreachableCode,
        packet: &[u8],
        now: Instant,
        out: &'a mut [u8],
    ) -> TunOutput<'a> {
        if self.icmp_refill.is_none_or(|t| now >= t) {
            self.icmp_refill = Some(now + Duration::from_secs(1));
            self.icmp_tokens = ICMP_ERRORS_PER_SEC;
        }
        if self.icmp_tokens == 0 {
            return TunOutput::Nothing;
        }
        match ip::write_unreachable(out, self.ip, code, packet) {
            Some(len) => {
                self.icmp_tokens -= 1;
                TunOutput::Reply(&out[..len])
            }
            None => TunOutput::Nothing,
        }
    }
}

#[cfg(test)]
mod tests;
