//! One peer: its key, the address that key owns, its WireGuard tunnel and where to reach it.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use boringtun::x25519;
use serde::{Deserialize, Serialize};

use super::liveness::Liveness;
use super::path::{PeerPath, Route};
use crate::addr::{Hostname, NodeAddr};
use crate::identity::NodeKey;

/// A WireGuard session older than this is gone (boringtun's REJECT_AFTER_TIME is 180 s).
pub(super) const SESSION_LIFETIME: Duration = Duration::from_secs(180);

/// How a peer is configured: its key and, when known, where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub key: NodeKey,
    pub endpoint: Option<SocketAddr>,
}

/// How the node currently reaches a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// A live WireGuard session straight to the peer's endpoint.
    Direct,
    /// Through the rendezvous relay.
    Relay,
    /// No live session.
    None,
}

impl PathKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Relay => "relay",
            PathKind::None => "none",
        }
    }
}

/// A peer as verbs and replies name it: its key, the overlay address that key owns, and its
/// hostname when one is known. On the control socket it is
/// `{"address": "fd70::…", "node": "a1b2.c3d4.e5f6", "hostname": "bob", "public_key": "…"}`;
/// reading one checks that the address is the key's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "PeerRefWire", try_from = "PeerRefWire")]
pub struct PeerRef {
    pub key: NodeKey,
    pub addr: NodeAddr,
    pub hostname: Option<Hostname>,
}

impl PeerRef {
    pub fn new(key: NodeKey, hostname: Option<Hostname>) -> PeerRef {
        PeerRef {
            key,
            addr: key.address(),
            hostname,
        }
    }

    /// What people call it: its hostname, else its node address.
    pub fn name(&self) -> String {
        match &self.hostname {
            Some(name) => name.to_string(),
            None => self.addr.to_string(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct PeerRefWire {
    address: Ipv6Addr,
    node: NodeAddr,
    hostname: Option<Hostname>,
    public_key: String,
}

impl From<PeerRef> for PeerRefWire {
    fn from(p: PeerRef) -> PeerRefWire {
        PeerRefWire {
            address: p.addr.to_ipv6(),
            node: p.addr,
            hostname: p.hostname,
            public_key: p.key.to_string(),
        }
    }
}

impl TryFrom<PeerRefWire> for PeerRef {
    type Error = String;

    fn try_from(w: PeerRefWire) -> Result<PeerRef, String> {
        let key: NodeKey = w
            .public_key
            .parse()
            .map_err(|e| format!("public_key {:?}: {e}", w.public_key))?;
        let peer = PeerRef::new(key, w.hostname);
        if peer.addr != w.node || peer.addr.to_ipv6() != w.address {
            return Err(format!(
                "{} and {} are not the addresses of key {key}",
                w.node, w.address
            ));
        }
        Ok(peer)
    }
}

/// A snapshot of one peer for `pilotctl peers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    #[serde(flatten)]
    pub peer: PeerRef,
    pub path: PathKind,
    pub endpoint: Option<SocketAddr>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub last_handshake_secs: Option<u64>,
    pub rtt_ms: Option<f64>,
    /// Seconds since an authenticated datagram from the peer last arrived.
    #[serde(default)]
    pub last_heard_secs: Option<u64>,
    /// The peer does not answer (see `node::liveness`): its path is then `none`, whatever
    /// WireGuard's session age says.
    #[serde(default)]
    pub unreachable: bool,
}

/// Bytes through one peer's tunnels since the node started, across sessions and revocations
/// (boringtun's own counts start again with each tunnel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerTraffic {
    pub addr: NodeAddr,
    /// Decrypted bytes received, and plaintext bytes sent (what the peer's tunnel carried).
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

pub(crate) struct Peer {
    pub key: NodeKey,
    pub addr: NodeAddr,
    pub tunn: Tunn,
    pub path: PeerPath,
    /// boringtun queued datagrams for this peer that `poll_transmit` must drain.
    pub needs_flush: bool,
    /// WireGuard's timers are due for this peer (`Tunn::update_timers` at the next
    /// `poll_transmit`).
    pub timers_due: bool,
    /// When `Tunn::update_timers` last ran: boringtun dates every event by that call, so the
    /// node runs it first when it is a tick old (see `Node::tunnel_io`).
    pub timers_at: Option<Instant>,
    /// The last data packet either way (not keepalives): WireGuard's data timers follow it.
    pub data_at: Option<Instant>,
    /// The last handshake initiation we sent.
    pub handshake_at: Option<Instant>,
    /// The last session established, either side initiating.
    pub session_at: Option<Instant>,
    /// The last datagram we sent the peer, or the last keepalive tried: our persistent
    /// keepalive is due an interval after it (see `Node::keepalive_deadline`).
    pub keepalive_from: Option<Instant>,
    /// A persistent keepalive is due (sent at the next `poll_transmit`).
    pub keepalive_due: bool,
    /// On the node's work list already.
    pub queued: bool,
    /// Start a handshake at the next `poll_transmit` unless a session is up.
    pub kick_handshake: bool,
    /// The higher key's deferred kick (see `Node::kick_handshake`): start a handshake then if
    /// no session came up by itself.
    pub kick_at: Option<Instant>,
    /// When stale data last made this node start a handshake (see `recover_session`).
    pub last_recovery: Option<Instant>,
    /// When we last started a handshake of our own accord (a kick, see `Node::kick_handshake`).
    pub last_kick: Option<Instant>,
    /// When the tunnel was last started afresh because the peer's clock went back.
    pub last_clock_reset: Option<Instant>,
    /// Latest round trip measured by `pilotctl ping`.
    pub last_rtt: Option<Duration>,
    /// Whether the peer answers, from what arrives.
    pub liveness: Liveness,
    /// The measured MTU of a direct IPv6 path (see `pmtu`).
    pub pmtu: super::pmtu::PathMtu,
    /// The gate: a configured peer, or a valid mutual trust record. While false, nothing is
    /// sent to the peer and nothing from it is answered or delivered.
    pub trusted: bool,
    own_secret: x25519::StaticSecret,
    wg_public: x25519::PublicKey,
    index: u32,
    rate_limiter: Arc<RateLimiter>,
    /// Bytes received and sent through tunnels closed before the current one.
    closed_rx: u64,
    closed_tx: u64,
    /// Entered around boringtun's timer calls, so that its warnings (a handshake retried, a
    /// connection expired) name the peer: `peer{node=… name=…}`. Made once per peer; the name
    /// is recorded when the node learns it ([`Peer::log_span`]).
    log_span: tracing::Span,
    log_span_named: bool,
}

impl Peer {
    pub fn new(
        key: NodeKey,
        path: PeerPath,
        wg_public: x25519::PublicKey,
        own_secret: x25519::StaticSecret,
        index: u32,
        rate_limiter: Arc<RateLimiter>,
    ) -> Peer {
        Peer {
            key,
            addr: key.address(),
            tunn: tunnel(&own_secret, wg_public, index, &rate_limiter),
            path,
            needs_flush: false,
            timers_due: false,
            timers_at: None,
            data_at: None,
            handshake_at: None,
            session_at: None,
            keepalive_from: None,
            keepalive_due: false,
            queued: false,
            kick_handshake: false,
            kick_at: None,
            last_recovery: None,
            last_kick: None,
            last_clock_reset: None,
            last_rtt: None,
            liveness: Liveness::default(),
            pmtu: Default::default(),
            trusted: false,
            own_secret,
            wg_public,
            index,
            rate_limiter,
            closed_rx: 0,
            closed_tx: 0,
            log_span: tracing::error_span!(
                "peer",
                node = %key.address(),
                name = tracing::field::Empty
            ),
            log_span_named: false,
        }
    }

    /// The span naming this peer in log lines, with `name` recorded the first time it is known.
    pub fn log_span(&mut self, name: Option<&impl std::fmt::Display>) -> tracing::Span {
        if let (false, Some(name)) = (self.log_span_named, name) {
            self.log_span.record("name", tracing::field::display(name));
            self.log_span_named = true;
        }
        self.log_span.clone()
    }

    /// Closes the gate and forgets the session: a fresh tunnel (same index) holds no keys, so
    /// nothing sent under the old session is accepted any more, and the path starts over.
    pub fn close(&mut self) {
        self.trusted = false;
        self.restart_tunnel();
        self.path = PeerPath::discovered();
        self.needs_flush = false;
        self.kick_handshake = false;
        self.last_rtt = None;
    }

    /// A fresh tunnel (same index): no session, and no memory of the peer's last handshake
    /// timestamp. Traffic counts carry over; trust and path stay as they are.
    pub fn restart_tunnel(&mut self) {
        let traffic = self.traffic();
        (self.closed_rx, self.closed_tx) = (traffic.rx_bytes, traffic.tx_bytes);
        self.tunn = tunnel(
            &self.own_secret,
            self.wg_public,
            self.index,
            &self.rate_limiter,
        );
        (self.timers_at, self.handshake_at, self.session_at) = (None, None, None);
        self.keepalive_due = false;
    }

    /// Bytes through this peer's tunnels since the node started.
    pub fn traffic(&self) -> PeerTraffic {
        let (_, tx_bytes, rx_bytes, ..) = self.tunn.stats();
        PeerTraffic {
            addr: self.addr,
            rx_bytes: self.closed_rx + rx_bytes as u64,
            tx_bytes: self.closed_tx + tx_bytes as u64,
        }
    }

    /// Whether a WireGuard session is up (a handshake completed within its lifetime).
    pub fn has_session(&self) -> bool {
        let (since_handshake, ..) = self.tunn.stats();
        since_handshake.is_some_and(|t| t < SESSION_LIFETIME)
    }

    /// A snapshot for `pilotctl peers`; `route` is where datagrams go now, `relay` the
    /// rendezvous address when there is one.
    pub fn status(
        &self,
        route: Route,
        relay: Option<SocketAddr>,
        keepalive: Option<u16>,
        now: Instant,
    ) -> PeerStatus {
        let (since_handshake, tx_bytes, rx_bytes, _loss, rtt) = self.tunn.stats();
        let unreachable = self.liveness.is_unreachable(keepalive, now);
        let live = since_handshake.is_some_and(|t| t < SESSION_LIFETIME) && !unreachable;
        let (path, endpoint) = match route {
            Route::Direct(e, _) if live => (PathKind::Direct, Some(e)),
            Route::Relay if live => (PathKind::Relay, relay),
            Route::Direct(e, _) => (PathKind::None, Some(e)),
            _ => (PathKind::None, None),
        };
        // boringtun's estimate is the handshake's round trip in whole milliseconds: 0 says
        // only "under 1 ms", which `0.00ms` would misstate, so it counts as not measured.
        let rtt_ms = self
            .last_rtt
            .or(self.path.direct_rtt().filter(|_| path == PathKind::Direct))
            .map(|d| d.as_secs_f64() * 1000.0)
            .or(rtt.filter(|&ms| ms > 0).map(f64::from));
        PeerStatus {
            peer: PeerRef {
                key: self.key,
                addr: self.addr,
                hostname: None,
            },
            path,
            endpoint,
            rx_bytes: rx_bytes as u64,
            tx_bytes: tx_bytes as u64,
            last_handshake_secs: since_handshake.map(|d| d.as_secs()),
            rtt_ms,
            last_heard_secs: self
                .liveness
                .last_heard()
                .map(|t| now.saturating_duration_since(t).as_secs()),
            unreachable,
        }
    }
}

/// A peer's boringtun tunnel. Without boringtun's persistent keepalive: that one is checked
/// only when its timers run, which would have to be every second; the node sends its own
/// (see `Node::keepalive_deadline`).
fn tunnel(
    own_secret: &x25519::StaticSecret,
    wg_public: x25519::PublicKey,
    index: u32,
    rate_limiter: &Arc<RateLimiter>,
) -> Tunn {
    Tunn::new(
        own_secret.clone(),
        wg_public,
        None,
        None,
        index,
        Some(rate_limiter.clone()),
    )
}
