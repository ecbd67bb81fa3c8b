//! The node, sans-IO: peers, cryptokey routing, the anti-spoofing gate, paths (direct or
//! relayed), the rendezvous link and timers.
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
//!
//! Layout: this file holds the types and the public API; `tunnel` the WireGuard side (routing
//! datagrams to peers, direct or wrapped for the relay); `control` the signed control messages
//! (registration, NAT discovery, punching, probes); `path` and `rendezvous` their state.

mod birthday;
mod clock_sync;
mod control;
mod counters;
mod failover;
mod liveness;
mod names;
mod path;
mod peer;
mod pmtu;
mod port_mapping;
mod rendezvous;
mod stream;
mod timers;
mod trust;
mod trust_sync;
mod tunnel;

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519;
use ed25519_dalek::SigningKey;

pub use birthday::{Spares, SPARES};
pub use counters::{Counters, DropReason};
pub use names::{ReleaseError, ReleaseOutcome};
pub use peer::{PathKind, PeerConfig, PeerRef, PeerStatus, PeerTraffic};
pub use rendezvous::{NetStatus, RendezvousConfig, RendezvousProblem};
pub use stream::StreamTarget;
pub use trust::{
    HandshakeOutcome, Incoming, Outgoing, TrustBook, TrustState, VerbError, TRUST_STATE_VERSION,
};

use crate::addr::{Hostname, NodeAddr};
use crate::clock::WallClock;
use crate::identity::{Identity, NodeKey};
use crate::portmap::PortMapStatus;
use crate::wire::control::{Found, RELAY_FROM};
use crate::wire::envelope::{NonceSource, ReplayGuard};
use crate::wire::ip::UnreachableCode;
use crate::wire::trust::Statement;
use crate::wire::{classify, ip, DatagramKind};
use failover::Failover;
use path::{PeerPath, Route};
use peer::Peer;
use rendezvous::RendezvousLink;
use timers::Timer;
use trust_sync::PendingLookup;
use tunnel::Via;

/// Smallest buffer the caller may pass for outputs: boringtun needs `len + 32` and at least
/// 148, and a relay frame adds its header.
pub const MIN_OUT_BUF: usize = 1500 + 32 + crate::wire::control::RELAY_HEADER_LEN;
/// Handshake messages per second answered before cookies are demanded (boringtun's default).
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// Cookie replies sent per second at most. A reply (64 bytes) is smaller than the initiation
/// it answers (148), so this bounds our upstream under a flood rather than any amplification;
/// it is well above any honest handshake rate, so honest initiators under a flood of
/// 1,000 junk handshakes a second still get theirs.
const COOKIE_REPLIES_PER_SEC: u32 = 4096;
/// ICMPv6 errors written back to the TUN, per second.
const ICMP_ERRORS_PER_SEC: u32 = 10;
/// Pings in flight at once; older ones are forgotten.
const MAX_PINGS_IN_FLIGHT: usize = 64;
/// WireGuard peer indices are 24 bits.
const MAX_PEERS: usize = 1 << 24;
/// Senders with replay state at most (our rendezvous and the trusted peers that probed us
/// within the freshness window; see [`ReplayGuard`]).
const REPLAY_SENDERS: usize = 16_384;
/// Default registration refresh until the rendezvous says otherwise.
pub(super) const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(25);

/// Static settings of a node.
pub struct NodeConfig {
    pub identity: Identity,
    /// Configured peers (`--peer KEY@HOST:PORT`), trusted by configuration on both sides as in
    /// WireGuard. Without an endpoint a configured peer is found through the rendezvous.
    /// Everyone else needs a signed mutual trust record (see [`TrustBook`]).
    pub peers: Vec<PeerConfig>,
    /// The trust state saved by the daemon (`trust.json`); verified again on load.
    pub trust: TrustState,
    /// The hostname to claim at the rendezvous.
    pub hostname: Option<Hostname>,
    /// Approve every incoming trust request (an explicit opt-in, for public services).
    pub auto_approve: bool,
    /// WireGuard persistent keepalive in seconds, to hold NAT mappings open.
    pub keepalive: Option<u16>,
    /// Randomness for nonces and the ping token; the caller supplies it so simulations replay.
    pub seed: u64,
    pub rendezvous: Option<RendezvousConfig>,
    /// Rendezvous to move to, in order, when the one in use stops answering (see `failover`);
    /// each with a pinned key.
    pub standby_rendezvous: Vec<RendezvousConfig>,
    /// The rendezvous (first and standby) are instances of one service sharing a registry:
    /// start at the one this node's key picks and stay where failover takes it (see
    /// `failover`).
    pub shared_registry: bool,
    /// The node's own endpoints on its local networks, offered to peers as candidates.
    pub lan: Vec<SocketAddr>,
    /// This node's public endpoint when the operator knows it (`--endpoint`: a fixed public
    /// address, or a port forward to this node's port). Offered to peers ahead of the LAN
    /// endpoints, and NAT behaviour is not measured: the endpoint says how to reach us.
    pub endpoint: Option<SocketAddr>,
    /// The UDP port the node's socket is bound to (for `netcheck`'s port preservation).
    pub local_port: u16,
    /// The TUN's MTU: the largest packet the kernel hands over (see `pmtu`).
    pub mtu: u16,
    pub clock: WallClock,
}

/// Which of the node's UDP sockets a datagram leaves from or arrived on: the main one, or
/// spare number `n`, which the daemon opens while [`Node::spares`] wants it (see `birthday`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Socket {
    #[default]
    Main,
    Spare(u8),
}

/// A datagram to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Transmit<'a> {
    pub to: SocketAddr,
    /// The socket to send it from.
    pub socket: Socket,
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
    /// The rendezvous answered for the first time with this key; pin it from now on.
    RendezvousKey(NodeKey),
    /// How a peer is reached changed.
    PathChanged {
        peer: NodeKey,
        path: PathKind,
        endpoint: Option<SocketAddr>,
    },
    /// Our public endpoint, as the rendezvous sees it, is new or changed.
    PublicEndpoint(SocketAddr),
    /// The node now registers with the rendezvous at `to` instead of `from`, because `why`.
    RendezvousSwitched {
        from: SocketAddr,
        to: SocketAddr,
        why: &'static str,
    },
    /// A peer's gate opened (a valid mutual record) or closed (revoked).
    TrustChanged { peer: NodeKey, trusted: bool },
    /// A trust request waits for `pilotctl approve`.
    TrustRequest {
        from: NodeKey,
        name: Option<Hostname>,
        justification: String,
    },
    /// The rendezvous refused our registration: another key holds this hostname.
    HostnameTaken(Hostname),
    /// Answer to [`Node::lookup`] number `id`.
    LookupDone { id: u64, found: Option<Found> },
    /// Something in the saved trust state did not verify and was left out.
    TrustWarning(String),
    /// How [`Node::release_name`] of `name` ended.
    NameReleased {
        name: Hostname,
        outcome: ReleaseOutcome,
    },
}

/// Why a ping could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PingError {
    #[error("{0} is not a peer of this node (trust it first: pilotctl handshake)")]
    NoSuchPeer(NodeAddr),
    #[error("{0} is not trusted (its trust was revoked)")]
    Untrusted(NodeAddr),
    #[error("no path to peer {0} yet (no endpoint, and not registered with a rendezvous)")]
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

/// Sizes of a node's in-memory state ([`Node::state_sizes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateSizes {
    /// The peer table: configured peers and keys that were trusted at some time (a stranger
    /// gets no entry).
    pub peers: usize,
    /// Senders with replay state: at most 16,384.
    pub replay_senders: usize,
    /// Records and revocations held, one per pair: only with keys this node dealt with.
    pub ledger: usize,
    /// Trust requests waiting for approval: at most 1,024.
    pub incoming: usize,
    /// Our own requests.
    pub outgoing: usize,
    /// Our approvals waiting for a countersignature: at most 1,024.
    pub approved: usize,
    /// Our statements the rendezvous has not confirmed: at most 4,096.
    pub unsubmitted: usize,
    /// Hostnames learnt.
    pub names: usize,
    /// Submissions waiting for `Stored`: at most 256.
    pub inflight: usize,
    /// Lookups in flight: at most 64.
    pub lookups: usize,
    /// Sealed control messages waiting for [`Node::poll_transmit`].
    pub control_out: usize,
    /// Events waiting for [`Node::poll_event`].
    pub events: usize,
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
    signing: SigningKey,
    secret: x25519::StaticSecret,
    public: x25519::PublicKey,
    keepalive: Option<u16>,
    rate_limiter: Arc<RateLimiter>,
    /// Cookie replies still allowed this second (see [`COOKIE_REPLIES_PER_SEC`]).
    cookie_budget: u32,
    peers: Vec<Peer>,
    by_addr: BTreeMap<NodeAddr, usize>,
    by_key: BTreeMap<NodeKey, usize>,
    by_wg_key: BTreeMap<[u8; 32], usize>,
    link: Option<RendezvousLink>,
    /// The rendezvous list, when there is more than one.
    failover: Failover,
    /// Reaching the rendezvous over TLS when UDP gets no answer.
    stream: stream::StreamFallback,
    lan: Vec<SocketAddr>,
    tun_mtu: u16,
    /// What the router offered (PCP, NAT-PMP), and the public endpoint it mapped to us, told
    /// to peers after the configured one (see `port_mapping.rs`).
    port_map: PortMapStatus,
    mapped: Option<SocketAddr>,
    local_port: u16,
    clock: WallClock,
    replay: ReplayGuard,
    nonces: NonceSource,
    counters: Counters,
    /// The next deadline as the last run of the timers computed it (see `timers`).
    wake: Option<(Instant, Timer)>,
    /// The earliest deadline inputs asked for since (see `Node::wake_by`).
    asked: Option<(Instant, Timer)>,
    /// Bumped by every input that may change a deadline (see `Node::touch`).
    generation: u64,
    /// The table as last read afresh, for the generation it was read at: inputs that change
    /// nothing (junk from the internet) do not make every batch read it again.
    table: std::cell::Cell<(u64, Option<(Instant, Timer)>)>,
    /// When the timers last ran.
    timers_ran: Option<Instant>,
    next_rate_reset: Option<Instant>,
    icmp_tokens: u32,
    icmp_refill: Option<Instant>,
    ping_ident: u16,
    ping_token: [u8; 8],
    pings: VecDeque<PendingPing>,
    /// Peers with queued datagrams or due timers, for `poll_transmit`.
    work: VecDeque<usize>,
    /// Sealed control messages waiting to be sent.
    control_out: VecDeque<((SocketAddr, Socket), Vec<u8>)>,
    events: VecDeque<Event>,
    scratch: [u8; 128],
    trust: TrustBook,
    hostname: Option<Hostname>,
    auto_approve: bool,
    /// The trust book changed since the daemon last saved it.
    trust_dirty: bool,
    /// The unsaved change opened or closed a peer's gate: write it at once rather than
    /// coalesced with others (see `Node::trust_urgent`).
    trust_urgent: bool,
    /// Deliveries to acknowledge once the trust state is saved.
    pending_acks: Vec<u64>,
    /// Deliveries the state being saved now (taken, not yet confirmed) contains: acknowledged
    /// by `Node::trust_saved`. `None` while no save is in flight.
    saving_acks: Option<Vec<u64>>,
    /// Statements submitted and not yet confirmed, by the nonce they went out with.
    inflight: BTreeMap<u64, Statement>,
    next_submit: Option<Instant>,
    /// The trust book's `queued_total` when we last sent at once.
    queued_seen: u64,
    lookups: BTreeMap<u64, PendingLookup>,
    lookup_seq: u64,
    /// Our `ReleaseName` waiting for its answer.
    release: Option<names::PendingRelease>,
    /// When undecryptable data last made us look for its sender by endpoint (see
    /// `Node::recover_by_source`).
    last_source_scan: Option<Instant>,
    /// Birthday probing with a peer when one of the two NATs maps endpoint-dependently.
    birthday: birthday::Birthday,
}

impl Node {
    pub fn new(config: NodeConfig) -> Result<Node, PeerError> {
        let secret = config.identity.x25519_secret();
        let public = x25519::PublicKey::from(&secret);
        let key = config.identity.public_key();
        let addr = config.identity.address();
        let seed = config.seed.to_le_bytes();
        let now_ms = config.clock.unix_ms(config.clock.origin());
        let (trust, warnings) = TrustBook::load(key, &config.trust, now_ms);
        let mut node = Node {
            key,
            addr,
            ip: addr.to_ipv6(),
            signing: config.identity.signing_key().clone(),
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            cookie_budget: COOKIE_REPLIES_PER_SEC,
            secret,
            public,
            keepalive: config.keepalive,
            peers: Vec::new(),
            by_addr: BTreeMap::new(),
            by_key: BTreeMap::new(),
            by_wg_key: BTreeMap::new(),
            failover: Failover::new(
                (config.rendezvous.iter().cloned())
                    .chain(config.standby_rendezvous)
                    .collect(),
                config.shared_registry,
                &key,
            ),
            stream: stream::StreamFallback::default(),
            link: None,
            lan: config.lan,
            port_map: PortMapStatus::off(),
            mapped: None,
            local_port: config.local_port,
            tun_mtu: config.mtu,
            clock: config.clock,
            replay: ReplayGuard::new(REPLAY_SENDERS),
            nonces: NonceSource::new(config.seed ^ 0x9e37_79b9_7f4a_7c15),
            counters: Counters::default(),
            wake: None,
            asked: None,
            generation: 0,
            table: std::cell::Cell::new((u64::MAX, None)),
            timers_ran: None,
            next_rate_reset: None,
            icmp_tokens: ICMP_ERRORS_PER_SEC,
            icmp_refill: None,
            ping_ident: u16::from_le_bytes([seed[0], seed[1]]),
            ping_token: seed,
            pings: VecDeque::new(),
            work: VecDeque::new(),
            control_out: VecDeque::new(),
            events: warnings.into_iter().map(Event::TrustWarning).collect(),
            scratch: [0; 128],
            trust,
            hostname: config.hostname,
            auto_approve: config.auto_approve,
            trust_dirty: false,
            trust_urgent: false,
            pending_acks: Vec::new(),
            saving_acks: None,
            inflight: BTreeMap::new(),
            next_submit: None,
            queued_seen: 0,
            lookups: BTreeMap::new(),
            lookup_seq: 0,
            release: None,
            last_source_scan: None,
            birthday: birthday::Birthday::new(config.seed),
        };
        // The first choice: the first given, or on one registry the instance the key picks.
        if config.rendezvous.is_some() {
            node.link = (node.failover.first_choice().cloned())
                .map(|r| RendezvousLink::new(r, DEFAULT_KEEPALIVE, config.endpoint));
        }
        for peer in &config.peers {
            node.add_peer(peer)?;
            let index = node.peers.len() - 1;
            node.peers[index].trusted = true;
        }
        let trusted: Vec<NodeKey> = node.trust.trusted().map(|(k, _)| k).collect();
        for key in trusted {
            if !node.by_key.contains_key(&key) {
                if let Err(e) = node.add_peer(&PeerConfig {
                    key,
                    endpoint: None,
                }) {
                    node.events
                        .push_back(Event::TrustWarning(format!("trusted peer {key}: {e}")));
                    continue;
                }
            }
            let index = node.by_key[&key];
            node.peers[index].trusted = true;
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
        self.touch();
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
        let path = config
            .endpoint
            .map_or_else(PeerPath::discovered, PeerPath::fixed);
        self.peers.push(Peer::new(
            config.key,
            path,
            wg_public,
            self.secret.clone(),
            index as u32,
            self.rate_limiter.clone(),
        ));
        self.by_addr.insert(addr, index);
        self.by_key.insert(config.key, index);
        self.by_wg_key.insert(*wg_public.as_bytes(), index);
        Ok(())
    }

    /// A packet the kernel wrote into the TUN. `out` must hold at least [`MIN_OUT_BUF`] and
    /// `packet.len() + 32` plus a relay header.
    pub fn handle_tun_packet<'a>(
        &mut self,
        packet: &[u8],
        now: Instant,
        out: &'a mut [u8],
    ) -> TunOutput<'a> {
        self.touch();
        let Some((_, dst)) = ip::ipv6_addrs(packet) else {
            self.counters.drop(DropReason::NotIpv6);
            return TunOutput::Nothing;
        };
        let Some(dst) = NodeAddr::from_ipv6_octets(dst) else {
            self.counters.drop(DropReason::NotOverlay);
            return TunOutput::Nothing;
        };
        if dst.is_reserved() {
            return self.serve_reserved(packet, now, out);
        }
        let Some(&index) = self.by_addr.get(&dst) else {
            self.counters.drop(DropReason::NoPeer);
            return self.unreachable(UnreachableCode::NoRoute, packet, now, out);
        };
        if !self.peers[index].trusted {
            self.counters.drop(DropReason::Untrusted);
            return self.unreachable(UnreachableCode::AdminProhibited, packet, now, out);
        }
        let route = self.route(index, now);
        if route == Route::Nowhere {
            self.counters.drop(DropReason::NoEndpoint);
            return self.unreachable(UnreachableCode::AddressUnreachable, packet, now, out);
        }
        if let (Route::Direct(..), Some(mtu)) = (route, self.peers[index].pmtu.inner()) {
            if packet.len() > usize::from(mtu) {
                // The path carries less than the TUN lets through: tell the sender's stack.
                self.counters.too_big += 1;
                return self.too_big(mtu, packet, now, out);
            }
        }
        self.peers[index].path.on_tx(now);
        self.peers[index].liveness.sent_data(now);
        self.peers[index].data_at = Some(now);
        // The source is not checked here: the receiving peer enforces that a packet's source is
        // the sender's own address, which is the check that matters.
        match self.send_via_path(index, route, now, out, |tunn, buf| {
            tunn.encapsulate(packet, buf)
        }) {
            Some(((to, socket), len)) => TunOutput::Send(Transmit {
                to,
                socket,
                payload: &out[..len],
            }),
            // Queued inside boringtun until the handshake completes.
            None => TunOutput::Nothing,
        }
    }

    /// A datagram that arrived on the node's main socket from `from`.
    pub fn handle_datagram<'a>(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &'a mut [u8],
    ) -> NetOutput<'a> {
        self.handle_datagram_on(Socket::Main, from, datagram, now, out)
    }

    /// A datagram that arrived on `socket` from `from`. Relay frames count only on the main
    /// socket, which is the one registered with the rendezvous.
    pub fn handle_datagram_on<'a>(
        &mut self,
        socket: Socket,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &'a mut [u8],
    ) -> NetOutput<'a> {
        let dropped = self.counters.dropped();
        let output = self.demux(socket, from, datagram, now, out);
        // Junk (a drop and nothing else) leaves the timer table as it was. What was
        // authenticated before a drop has said so itself (see `Node::touch`).
        if self.counters.dropped() == dropped {
            self.touch();
        }
        output
    }

    fn demux<'a>(
        &mut self,
        socket: Socket,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &'a mut [u8],
    ) -> NetOutput<'a> {
        match classify(datagram) {
            DatagramKind::WireGuard => {
                self.handle_wireguard(Via::Direct(from, socket), datagram, now, out)
            }
            DatagramKind::Pilot(RELAY_FROM) => {
                let from_rendezvous = socket == Socket::Main
                    && self.link.as_ref().is_some_and(|l| l.is_rendezvous(from));
                match crate::wire::control::parse_relay(datagram) {
                    Some((source, inner)) if from_rendezvous => {
                        self.counters.relay_rx_bytes += datagram.len() as u64;
                        self.handle_wireguard(Via::Relay(from, source), inner, now, out)
                    }
                    _ => {
                        self.counters.drop(DropReason::UnexpectedControl);
                        NetOutput::Nothing
                    }
                }
            }
            DatagramKind::Pilot(_) => {
                self.handle_control(from, socket, datagram, now);
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
        if self.timers_deadline().is_none_or(|(t, _)| now >= t) {
            self.timers_ran = Some(now);
            self.asked = None;
            self.drive(now);
            self.touch();
            self.wake = self.deadline(now);
            self.table.set((self.generation, self.wake));
        }
        // The handshake rate limit counts per second, from the first handshake message seen
        // (see `Node::handshake_seen`); with none, there is nothing to reset.
        if self.next_rate_reset.is_some_and(|t| now >= t) {
            self.next_rate_reset = None;
            self.rate_limiter.reset_count();
            self.cookie_budget = COOKIE_REPLIES_PER_SEC;
        }
    }

    /// A handshake message arrived: the rate limit's second is running.
    pub(super) fn handshake_seen(&mut self, now: Instant) {
        self.next_rate_reset
            .get_or_insert(now + Duration::from_secs(1));
    }

    /// When the timers run next, and for what: the last run's answer while it is at most a
    /// tick away, else read afresh (an input may have made something due sooner).
    fn timers_deadline(&self) -> Option<(Instant, Timer)> {
        let Some(ran) = self.timers_ran else {
            // The first run: at once (the clock's origin is the node's start).
            return Some((self.clock.origin(), Timer::Start));
        };
        let table = match self.wake {
            Some((t, timer)) if t <= ran + timers::TIMER_TICK => Some((t, timer)),
            _ => self.table_since(ran),
        };
        timers::earlier(table, self.asked)
    }

    /// When the node next needs [`Node::handle_timeout`], and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let timers = self.timers_deadline().map(|(t, timer)| (t, timer.name()));
        let reset = self
            .next_rate_reset
            .map(|t| (t, "handshake rate limit reset"));
        timers::earlier(timers, reset)
    }

    /// The next datagram the node wants sent, written into `out`; `None` when there is none.
    /// Call until `None` after every batch of input and every timeout.
    pub fn poll_transmit<'a>(&mut self, now: Instant, out: &'a mut [u8]) -> Option<Transmit<'a>> {
        // What goes out, and the work list walked on the way, move deadlines (a keepalive's,
        // a deferred kick's, a ping's data); an empty call changes nothing.
        if !self.work.is_empty() || !self.pings.is_empty() {
            self.touch();
        }
        let ((to, socket), len) = self.next_transmit(now, out)?;
        self.touch();
        Some(Transmit {
            to,
            socket,
            payload: &out[..len],
        })
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Queues an ICMPv6 echo request to the peer owning `target`; the reply comes back as
    /// [`Event::PingReply`] and is not written to the TUN.
    pub fn ping(&mut self, target: NodeAddr, seq: u16, now: Instant) -> Result<(), PingError> {
        self.touch();
        let &peer = self
            .by_addr
            .get(&target)
            .ok_or(PingError::NoSuchPeer(target))?;
        if !self.peers[peer].trusted {
            return Err(PingError::Untrusted(target));
        }
        if self.route(peer, now) == Route::Nowhere {
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

    /// The peers packets may pass with now (configured or trusted).
    pub fn peers(&self, now: Instant) -> impl Iterator<Item = PeerStatus> + '_ {
        (0..self.peers.len())
            .filter(|&i| self.peers[i].trusted)
            .map(move |i| self.peer_status_at(i, now))
    }

    /// The peer owning `addr`, if any.
    pub fn peer_status(&self, addr: NodeAddr, now: Instant) -> Option<PeerStatus> {
        self.by_addr
            .get(&addr)
            .map(|&i| self.peer_status_at(i, now))
    }

    /// Why the rendezvous does not register this node, when it can tell.
    pub fn rendezvous_problem(&self, now: Instant) -> Option<RendezvousProblem> {
        self.link.as_ref().and_then(|l| l.problem(now))
    }

    /// Public endpoint and NAT behaviour, as far as measured.
    /// This host's own endpoints now (its addresses changed): offered to peers from the
    /// registration this makes due at once. Returns whether they changed.
    pub fn set_lan(&mut self, lan: Vec<SocketAddr>, now: Instant) -> bool {
        self.touch();
        if lan == self.lan {
            return false;
        }
        self.lan = lan;
        if let Some(link) = &mut self.link {
            link.next_register = Some(now);
        }
        self.drive_rendezvous(now);
        true
    }

    pub fn net_status(&self, now: Instant) -> NetStatus {
        match &self.link {
            Some(link) => NetStatus {
                clock_correction_ms: self.clock.offset_ms(),
                port_mapping: self.port_map.clone(),
                standby: self.failover.standby().map(|a| a.to_string()).collect(),
                preferred: self.failover.preferred().map(|a| a.to_string()),
                ..link.status(self.local_port, now)
            },
            None => NetStatus {
                port_mapping: self.port_map.clone(),
                ..NetStatus::default()
            },
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Bytes through every peer's tunnels since the node started, one entry per peer in the
    /// table (trusted or not: the counts of a peer whose trust ended stay), in table order.
    pub fn traffic(&self) -> impl Iterator<Item = PeerTraffic> + '_ {
        self.peers.iter().map(Peer::traffic)
    }

    /// Whether the node is registered with its rendezvous now (false without one).
    pub fn is_registered(&self, now: Instant) -> bool {
        self.link.as_ref().is_some_and(|l| l.is_registered(now))
    }

    /// Wall-clock time at `now`, in UNIX milliseconds.
    pub fn wall_ms(&self, now: Instant) -> u64 {
        self.clock.unix_ms(now)
    }

    /// Keys of every peer in the table (trusted or not).
    pub fn peer_keys(&self) -> impl Iterator<Item = NodeKey> + '_ {
        self.peers.iter().map(|p| p.key)
    }

    /// How much state the node holds now, for tests and metrics: each figure is bounded (see
    /// [`StateSizes`]) whatever strangers send. Cheap: sizes of in-memory collections.
    pub fn state_sizes(&self, now: Instant) -> StateSizes {
        let now_ms = self.clock.unix_ms(now);
        StateSizes {
            peers: self.peers.len(),
            replay_senders: self.replay.senders(),
            ledger: self.trust.ledger_len(),
            incoming: self.trust.incoming(now_ms).count(),
            outgoing: self.trust.outgoing().count(),
            approved: self.trust.approved().count(),
            unsubmitted: self.trust.unsubmitted().len(),
            names: self.trust.names().count(),
            inflight: self.inflight.len(),
            lookups: self.lookups.len(),
            control_out: self.control_out.len(),
            events: self.events.len(),
        }
    }

    /// Keys of the peers configured with `--peer` (trusted by configuration).
    pub fn configured_peers(&self) -> impl Iterator<Item = NodeKey> + '_ {
        self.peers
            .iter()
            .filter(|p| p.path.is_fixed())
            .map(|p| p.key)
    }

    fn peer_status_at(&self, index: usize, now: Instant) -> PeerStatus {
        let relay = self.link.as_ref().map(|l| l.config.addr);
        let mut status =
            self.peers[index].status(self.route(index, now), relay, self.keepalive, now);
        status.peer.hostname = self.trust.name_of(&self.peers[index].key).cloned();
        status
    }

    /// Where datagrams for peer `index` go now.
    fn route(&self, index: usize, now: Instant) -> Route {
        let relay = self.link.as_ref().is_some_and(|l| l.is_registered(now));
        self.peers[index].path.route(relay)
    }
}

#[cfg(test)]
mod cookie_tests;
#[cfg(test)]
mod endpoint_tests;
#[cfg(test)]
mod failover_tests;
#[cfg(test)]
mod log_tests;
#[cfg(test)]
mod release_tests;
#[cfg(test)]
mod replay_tests;
#[cfg(test)]
mod status_tests;
#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod submit_tests;
#[cfg(test)]
mod tests;
