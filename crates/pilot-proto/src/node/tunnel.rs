//! The WireGuard side of the node: which peer a datagram belongs to, decryption with the
//! anti-spoofing gate, and writing datagrams where a peer's path needs them — at the start of
//! the caller's buffer for a direct path, behind a relay header for the relay, so neither case
//! copies the datagram.

use std::net::{Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};

use super::path::Route;
use super::timers::TIMER_TICK;
use super::{
    DropReason, Event, NetOutput, Node, PathKind, PendingPing, Socket, Transmit, TunOutput,
    ICMP_ERRORS_PER_SEC,
};
use crate::addr::NodeAddr;
use crate::identity::NodeKey;
use crate::wire::control::{RELAY_HEADER_LEN, RELAY_TO};
use crate::wire::ip::{self, UnreachableCode};

/// How a WireGuard datagram reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    /// Straight from this endpoint, on this socket of ours.
    Direct(SocketAddr, Socket),
    /// Inside a relay frame from the rendezvous at this endpoint, from this key (as the
    /// rendezvous says: unauthenticated, like a direct datagram's source).
    Relay(SocketAddr, NodeKey),
}

/// Where a WireGuard datagram goes: to a peer, or back to its sender as a cookie reply.
enum Routed {
    Peer(usize, MessageKind),
    /// A cookie reply of this many bytes at the start of the buffer: the handshake came
    /// while under load without a valid mac2.
    Cookie(usize),
}

/// Which WireGuard message a datagram carries, as far as counting sessions cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageKind {
    Initiation,
    Response,
    Other,
}

/// How long the higher key waits for the lower key's handshake before starting its own (see
/// `Node::kick_handshake`): a few round trips.
const HIGHER_KEY_KICK_AFTER: Duration = Duration::from_secs(1);

/// Least time between two handshakes a node starts of its own accord with one peer.
const KICK_INTERVAL: Duration = Duration::from_secs(1);

/// Least time between two handshakes started because stale data arrived.
const RECOVERY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A peer silent this long whose handshake is dated before its last one gets a fresh tunnel
/// (see `peer_clock_went_back`).
const CLOCK_RESET_QUIET: Duration = super::liveness::ANSWER_WITHIN;
/// Least time between two such restarts of one peer's tunnel.
const CLOCK_RESET_INTERVAL: Duration = Duration::from_secs(30);

/// WireGuard's message types of a handshake initiation and response.
const HANDSHAKE_INITIATION: u8 = 1;
const HANDSHAKE_RESPONSE: u8 = 2;

/// What a boringtun call produced, as positions in the caller's buffer.
enum Produced {
    /// A datagram of this many bytes at the start of the buffer, for this endpoint, from this
    /// socket.
    Network((SocketAddr, Socket), usize),
    /// A decrypted IPv6 packet in this range of the buffer, with this inner source.
    Tunnel(Range<usize>, Ipv6Addr),
    TunnelV4,
    Done,
    Failed,
    /// A handshake initiation dated no later than the peer's last one (boringtun's replay
    /// protection: the TAI64N timestamp must grow).
    OlderTimestamp,
}

impl Node {
    pub(super) fn handle_wireguard<'a>(
        &mut self,
        via: Via,
        datagram: &[u8],
        now: Instant,
        out: &'a mut [u8],
    ) -> NetOutput<'a> {
        let (Via::Direct(from, _) | Via::Relay(from, _)) = via;
        // Initiations and responses count towards the handshake rate limit.
        if matches!(datagram.first(), Some(1 | 2)) {
            self.handshake_seen(now);
        }
        let (index, kind) = match self.route_wireguard(from, datagram, out) {
            Some(Routed::Peer(index, kind)) => (index, kind),
            Some(Routed::Cookie(len)) => return self.cookie_reply(via, len, out),
            None => {
                self.recover_by_source(via, datagram, now);
                return NetOutput::Nothing;
            }
        };
        // Answer the way the datagram came.
        let route = match via {
            Via::Direct(from, socket) => Route::Direct(from, socket),
            Via::Relay(..) => Route::Relay,
        };
        let mut produced = self.tunnel_io(index, route, now, out, |tunn, buf| {
            tunn.decapsulate(Some(from.ip()), datagram, buf)
        });
        if matches!(produced, Produced::OlderTimestamp) && self.peer_clock_went_back(index, now) {
            produced = self.tunnel_io(index, route, now, out, |tunn, buf| {
                tunn.decapsulate(Some(from.ip()), datagram, buf)
            });
        }
        if matches!(produced, Produced::Failed | Produced::OlderTimestamp) {
            self.counters.drop(DropReason::BadWireGuard);
            if kind == MessageKind::Other && !self.peers[index].has_session() {
                self.recover_session(index, now);
            } else {
                self.recover_by_source(via, datagram, now);
            }
            return NetOutput::Nothing;
        }
        // Authenticated: it may move a deadline even if what it carries is then dropped (data
        // with a spoofed inner source still counts as data for WireGuard's timers).
        self.touch();
        if established(kind, &produced, via, out) {
            self.counters.handshakes += 1;
            self.peers[index].session_at = Some(now);
        }
        // Authenticated: this is where the peer is now (roaming, NAT rebinding, a punched path).
        self.on_authenticated(index, via, now);
        match produced {
            Produced::Network((to, socket), len) => {
                self.peers[index].needs_flush = true;
                self.schedule(index);
                NetOutput::Send(Transmit {
                    to,
                    socket,
                    payload: &out[..len],
                })
            }
            Produced::Tunnel(range, src) => {
                self.peers[index].data_at = Some(now);
                self.deliver(index, src, range, now, out)
            }
            Produced::TunnelV4 => {
                self.counters.drop(DropReason::NotIpv6Inner);
                NetOutput::Nothing
            }
            // A keepalive, or a handshake response that completed the session.
            Produced::Done => {
                self.peers[index].needs_flush = true;
                self.schedule(index);
                NetOutput::Nothing
            }
            Produced::Failed | Produced::OlderTimestamp => NetOutput::Nothing,
        }
    }

    /// A handshake initiation from peer `index`, authenticated by its static key, but dated no
    /// later than its last one. A replay — or the peer's clock went back: a board without RTC
    /// rebooted before NTP, and boringtun stamps initiations with the system clock. The peer
    /// would then be refused until we restart. When the peer has been silent for
    /// [`CLOCK_RESET_QUIET`] (a live peer's session keeps it heard; a rebooted one was gone),
    /// start its tunnel afresh, at most once per [`CLOCK_RESET_INTERVAL`], and let the
    /// initiation in. A replay then costs an attacker nothing and us a session that was idle
    /// anyway. Returns whether the tunnel was restarted.
    fn peer_clock_went_back(&mut self, index: usize, now: Instant) -> bool {
        let peer = &self.peers[index];
        let quiet = |t: Option<Instant>, d| t.is_none_or(|t| now.saturating_duration_since(t) >= d);
        if !peer.trusted
            || !quiet(peer.liveness.last_heard(), CLOCK_RESET_QUIET)
            || !quiet(peer.last_clock_reset, CLOCK_RESET_INTERVAL)
        {
            return false;
        }
        self.touch();
        let name = self.trust.name_of(&self.peers[index].key);
        let peer = &mut self.peers[index];
        peer.last_clock_reset = Some(now);
        peer.restart_tunnel();
        self.counters.peer_clock_resets += 1;
        let _span = peer.log_span(name).entered();
        tracing::warn!(
            "the peer's handshake is dated before its last one (its clock went back: a reboot \
             without RTC?); starting its WireGuard session afresh"
        );
        true
    }

    /// Runs a boringtun operation producing a datagram for peer `index`, sent along `route`
    /// (the peer's current one). Returns where to send the datagram and its length in `out`.
    pub(super) fn send_via_path(
        &mut self,
        index: usize,
        route: Route,
        now: Instant,
        out: &mut [u8],
        op: impl for<'b> FnOnce(&mut Tunn, &'b mut [u8]) -> TunnResult<'b>,
    ) -> Option<((SocketAddr, Socket), usize)> {
        match self.tunnel_io(index, route, now, out, op) {
            Produced::Network(to, len) => Some((to, len)),
            _ => None,
        }
    }

    /// Writes the next datagram into `out`; returns where it goes and its length. Lengths rather
    /// than slices keep the borrow of `out` local to each branch.
    pub(super) fn next_transmit(
        &mut self,
        now: Instant,
        out: &mut [u8],
    ) -> Option<((SocketAddr, Socket), usize)> {
        while let Some((to, bytes)) = self.control_out.pop_front() {
            if let Some(dst) = out.get_mut(..bytes.len()) {
                dst.copy_from_slice(&bytes);
                return Some((to, bytes.len()));
            }
        }
        while let Some(i) = self
            .pings
            .iter()
            .position(|p| p.sent.is_none() && self.peers[p.peer].trusted)
        {
            let (index, seq) = (self.pings[i].peer, self.pings[i].seq);
            self.pings[i].sent = Some(now);
            self.peers[index].liveness.sent_data(now);
            self.peers[index].data_at = Some(now);
            let (packet, len) = self.write_ping(index, seq);
            let route = self.route(index, now);
            if let Some(sent) = self.send_via_path(index, route, now, out, |tunn, buf| {
                tunn.encapsulate(&packet[..len], buf)
            }) {
                return Some(sent);
            }
            // Queued behind the handshake: boringtun sends it once the session is up.
        }
        // Only peers with something to do are visited: no scan of the whole table per batch.
        while let Some(&index) = self.work.front() {
            if !self.peers[index].trusted {
                // Closed since it was queued: nothing goes to it, not even a handshake.
                self.peers[index].queued = false;
                self.work.pop_front();
                continue;
            }
            // boringtun's timers log their warnings without saying which tunnel: this says it.
            // Not per data packet: timers and flushes only.
            let name = self.trust.name_of(&self.peers[index].key);
            let _span = self.peers[index].log_span(name).entered();
            // A kick within [`KICK_INTERVAL`] of the last one waits until then (and is dropped
            // if a session came up meanwhile): each new initiation replaces the one before it
            // (boringtun answers the two latest), so a burst of them — an introduction, a path
            // found, stale data, all at once — makes the peer's answers miss, and both sides'
            // crossing sessions churn.
            let last_kick = self.peers[index].last_kick;
            let kicked_lately =
                last_kick.is_some_and(|t| now.saturating_duration_since(t) < KICK_INTERVAL);
            let kick = std::mem::take(&mut self.peers[index].kick_handshake)
                && !self.peers[index].has_session();
            if kick && kicked_lately {
                let at = last_kick.map(|t| t + KICK_INTERVAL);
                let peer = &mut self.peers[index];
                peer.kick_at = peer.kick_at.min(at).or(at);
            }
            if kick && !kicked_lately {
                self.peers[index].last_kick = Some(now);
                let route = self.route(index, now);
                let produced = self.tunnel_io(index, route, now, out, |tunn, buf| {
                    tunn.format_handshake_initiation(buf, true)
                });
                if let Produced::Network(to, len) = produced {
                    return Some((to, len));
                }
            }
            let peer = &self.peers[index];
            let (flush, timers, keepalive) =
                (peer.needs_flush, peer.timers_due, peer.keepalive_due);
            if !flush && !timers && !keepalive {
                self.peers[index].queued = false;
                self.work.pop_front();
                continue;
            }
            let route = self.route(index, now);
            let produced = if flush {
                self.tunnel_io(index, route, now, out, |tunn, buf| {
                    tunn.decapsulate(None, &[], buf)
                })
            } else if timers {
                self.peers[index].timers_due = false;
                self.peers[index].timers_at = Some(now);
                self.tunnel_io(index, route, now, out, |tunn, buf| tunn.update_timers(buf))
            } else {
                // An empty data packet; with no session, boringtun starts a handshake instead
                // (as its own persistent keepalive does). Such a handshake is no hurry, as no
                // data waits for it: it is retried with the next keepalive, not at the tick
                // (a trusted peer that is offline would keep the node awake).
                let urgent = self.peers[index].handshake_at;
                self.peers[index].keepalive_due = false;
                let produced = self.tunnel_io(index, route, now, out, |tunn, buf| {
                    tunn.encapsulate(&[], buf)
                });
                self.peers[index].handshake_at = urgent;
                produced
            };
            match produced {
                // The peer stays at the front: it may have more queued.
                Produced::Network(to, len) => return Some((to, len)),
                _ if flush => self.peers[index].needs_flush = false,
                _ => {}
            }
        }
        None
    }

    /// A path to peer `index` just appeared (introduced, or a direct path answered): if no
    /// session is up, start a handshake now rather than when boringtun's 5 s retry fires —
    /// an initiation sent before the peer was reachable (over a relay that did not know it
    /// yet) is simply lost. Both sides learn of the path at the same moment, and two
    /// initiations that cross overwrite each other's handshake state (boringtun keeps one), so
    /// only the side with the lower key kicks; the other answers. But the lower key may hold a
    /// session from before the other side restarted, and then it kicks nothing: so the higher
    /// key kicks too, [`HIGHER_KEY_KICK_AFTER`] later, if no session came up by then.
    pub(super) fn kick_handshake(&mut self, index: usize, now: Instant) {
        if self.key >= self.peers[index].key {
            self.peers[index].kick_at = Some(now + HIGHER_KEY_KICK_AFTER);
            return;
        }
        self.peers[index].kick_handshake = true;
        self.schedule(index);
    }

    /// Data arrived in a session this node does not have: it restarted (or dropped the session)
    /// and the peer kept its keys. The peer will not start a handshake before its own timers
    /// say so (up to 15 s of silence in the meantime), so start one now, whichever key is
    /// lower: the peer believes it has a session, so no initiation of its own can cross ours.
    /// At most one per second, however fast the stale data comes.
    fn recover_session(&mut self, index: usize, now: Instant) {
        let peer = &mut self.peers[index];
        if peer
            .last_recovery
            .is_some_and(|t| now.saturating_duration_since(t) < RECOVERY_INTERVAL)
        {
            return;
        }
        peer.last_recovery = Some(now);
        peer.kick_handshake = true;
        self.schedule(index);
    }

    /// Data that our receiver index does not place (no such index, or another peer's): the
    /// index is the one a previous run of this node gave the sender — it restarted and built
    /// its table in another order. The sender is then the trusted peer it came from, by the
    /// relay frame's source key or the peer's direct endpoint; recover its session as above.
    /// Nothing here is authenticated, as with the index: at most a handshake a second per peer
    /// that has no session, which is what its own timers would send.
    fn recover_by_source(&mut self, via: Via, datagram: &[u8], now: Instant) {
        if !matches!(
            Tunn::parse_incoming_packet(datagram),
            Ok(Packet::PacketData(_))
        ) {
            return;
        }
        let index = match via {
            Via::Relay(_, key) => self.by_key.get(&key).copied(),
            // A scan of the table: at most one a second, however much junk comes.
            Via::Direct(..)
                if self
                    .last_source_scan
                    .is_some_and(|t| now.saturating_duration_since(t) < RECOVERY_INTERVAL) =>
            {
                None
            }
            Via::Direct(from, _) => {
                self.last_source_scan = Some(now);
                self.peers
                    .iter()
                    .position(|p| p.trusted && p.path.direct_endpoint() == Some(from))
            }
        };
        if let Some(index) = index {
            if self.peers[index].trusted && !self.peers[index].has_session() {
                self.recover_session(index, now);
            }
        }
    }

    /// Puts a peer on the work list `poll_transmit` walks, once.
    pub(super) fn schedule(&mut self, index: usize) {
        let peer = &mut self.peers[index];
        if !peer.queued {
            peer.queued = true;
            self.work.push_back(index);
        }
    }

    /// An ICMPv6 Packet Too Big for `packet` into the TUN, within the ICMPv6 error budget.
    pub(super) fn too_big<'a>(
        &mut self,
        mtu: u16,
        packet: &[u8],
        now: Instant,
        out: &'a mut [u8],
    ) -> TunOutput<'a> {
        if !self.take_icmp_token(now) {
            return TunOutput::Nothing;
        }
        match ip::write_packet_too_big(out, self.ip, u32::from(mtu), packet) {
            Some(len) => TunOutput::Reply(&out[..len]),
            None => TunOutput::Nothing,
        }
    }

    /// One ICMPv6 error from this second's budget, if any is left.
    fn take_icmp_token(&mut self, now: Instant) -> bool {
        if self.icmp_refill.is_none_or(|t| now >= t) {
            self.icmp_refill = Some(now + Duration::from_secs(1));
            self.icmp_tokens = ICMP_ERRORS_PER_SEC;
        }
        if self.icmp_tokens == 0 {
            return false;
        }
        self.icmp_tokens -= 1;
        true
    }

    pub(super) fn unreachable<'a>(
        &mut self,
        code: UnreachableCode,
        packet: &[u8],
        now: Instant,
        out: &'a mut [u8],
    ) -> TunOutput<'a> {
        if !self.take_icmp_token(now) {
            return TunOutput::Nothing;
        }
        match ip::write_unreachable(out, self.ip, code, packet) {
            Some(len) => TunOutput::Reply(&out[..len]),
            None => TunOutput::Nothing,
        }
    }

    /// Runs `op` on peer `index`'s tunnel with `out` laid out for `route`, and wraps a datagram
    /// it produces in a relay frame when the route is the relay. With no route, datagrams are
    /// dropped (the timers still run).
    fn tunnel_io(
        &mut self,
        index: usize,
        route: Route,
        now: Instant,
        out: &mut [u8],
        op: impl for<'b> FnOnce(&mut Tunn, &'b mut [u8]) -> TunnResult<'b>,
    ) -> Produced {
        self.freshen_timers(index, route, now, out);
        let relay_to = match route {
            Route::Relay => self.link.as_ref().map(|l| l.config.addr),
            _ => None,
        };
        let offset = if relay_to.is_some() {
            RELAY_HEADER_LEN
        } else {
            0
        };
        let Some(buf) = out.get_mut(offset..) else {
            return Produced::Failed;
        };
        let base = buf.as_ptr() as usize;
        let (network_len, produced) = match op(&mut self.peers[index].tunn, buf) {
            TunnResult::WriteToNetwork(d) => (Some(d.len()), Produced::Done),
            TunnResult::WriteToTunnelV6(p, src) => {
                let start = offset + (p.as_ptr() as usize - base);
                (None, Produced::Tunnel(start..start + p.len(), src))
            }
            TunnResult::WriteToTunnelV4(..) => (None, Produced::TunnelV4),
            TunnResult::Done => (None, Produced::Done),
            TunnResult::Err(WireGuardError::WrongTai64nTimestamp) => {
                (None, Produced::OlderTimestamp)
            }
            TunnResult::Err(_) => (None, Produced::Failed),
        };
        let Some(len) = network_len else {
            return produced;
        };
        let peer = &mut self.peers[index];
        peer.keepalive_from = Some(now);
        if out.get(offset) == Some(&HANDSHAKE_INITIATION) {
            peer.handshake_at = Some(now);
        }
        match (route, relay_to) {
            (Route::Direct(to, socket), _) => Produced::Network((to, socket), len),
            (Route::Relay, Some(rendezvous)) => {
                out[0] = RELAY_TO;
                out[1..RELAY_HEADER_LEN].copy_from_slice(&self.peers[index].key.0);
                self.counters.relay_tx_bytes += (RELAY_HEADER_LEN + len) as u64;
                Produced::Network((rendezvous, Socket::Main), RELAY_HEADER_LEN + len)
            }
            _ => Produced::Done,
        }
    }

    /// boringtun dates everything that happens by its last `update_timers`, and the node runs
    /// those only when due (see `timers`): after a quiet spell, run them before the tunnel is
    /// used, or a session would be dated when the timers last ran and expire early. What they
    /// send (a rekey, a keepalive) goes out first.
    fn freshen_timers(&mut self, index: usize, route: Route, now: Instant, out: &mut [u8]) {
        let peer = &mut self.peers[index];
        if peer.timers_at.is_some_and(|t| now < t + TIMER_TICK) {
            return;
        }
        peer.timers_at = Some(now);
        let produced = self.tunnel_io(index, route, now, out, |tunn, buf| tunn.update_timers(buf));
        if let Produced::Network(to, len) = produced {
            // Rare (a quiet spell ending in a rekey): a copy is fine.
            self.control_out.push_back((to, out[..len].to_vec()));
        }
    }

    /// The anti-spoofing gate, then ping interception, for a decrypted packet.
    fn deliver<'a>(
        &mut self,
        index: usize,
        src: Ipv6Addr,
        range: Range<usize>,
        now: Instant,
        out: &'a mut [u8],
    ) -> NetOutput<'a> {
        if NodeAddr::from_ipv6(src) != Some(self.peers[index].addr) {
            self.counters.drop(DropReason::SpoofedSource);
            return NetOutput::Nothing;
        }
        let packet = &out[range];
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
                    let peer = self.peers[index].key;
                    self.events.push_back(Event::PingReply { peer, seq, rtt });
                }
                return NetOutput::Nothing;
            }
        }
        NetOutput::Tun(packet)
    }

    fn on_authenticated(&mut self, index: usize, via: Via, now: Instant) {
        self.peers[index].liveness.heard(now);
        let path = &mut self.peers[index].path;
        match via {
            Via::Direct(from, socket) => {
                let before = path.route(false);
                path.on_direct_rx(from, socket, now);
                if before == Route::Nowhere {
                    self.counters.direct_found += 1;
                }
                if before != Route::Direct(from, socket) {
                    let peer = self.peers[index].key;
                    let changed = Event::PathChanged {
                        peer,
                        path: PathKind::Direct,
                        endpoint: Some(from),
                    };
                    self.events.push_back(changed);
                }
            }
            Via::Relay(..) => path.on_relay_rx(now),
        }
    }

    /// Which peer a WireGuard datagram is for: by our receiver index for responses and data,
    /// by the initiator's static key (decrypted from the message) for handshake initiations.
    fn route_wireguard(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        scratch: &mut [u8],
    ) -> Option<Routed> {
        let (index, kind) = match Tunn::parse_incoming_packet(datagram) {
            Ok(Packet::HandshakeInit(_)) => {
                // mac1 (and, under load, the cookie) is checked before the expensive
                // Diffie-Hellman that reveals the sender's key. Under load, a handshake
                // without a valid mac2 gets the cookie its retry must carry, which only the
                // owner of the source address can read: a flood from spoofed addresses then
                // costs us a 64-byte reply per 148-byte initiation and no Diffie-Hellman.
                let init = match self
                    .rate_limiter
                    .verify_packet(Some(from.ip()), datagram, scratch)
                {
                    Ok(Packet::HandshakeInit(init)) => init,
                    Err(TunnResult::WriteToNetwork(cookie)) => {
                        self.counters.drop(DropReason::UnderLoad);
                        return Some(Routed::Cookie(cookie.len()));
                    }
                    _ => {
                        self.counters.drop(DropReason::BadWireGuard);
                        return None;
                    }
                };
                let Ok(half) = parse_handshake_anon(&self.secret, &self.public, &init) else {
                    self.counters.drop(DropReason::BadWireGuard);
                    return None;
                };
                let Some(&index) = self.by_wg_key.get(&half.peer_static_public) else {
                    self.counters.drop(DropReason::UnknownPeer);
                    return None;
                };
                (index, MessageKind::Initiation)
            }
            Ok(Packet::HandshakeResponse(p)) => {
                ((p.receiver_idx >> 8) as usize, MessageKind::Response)
            }
            Ok(Packet::PacketCookieReply(p)) => {
                ((p.receiver_idx >> 8) as usize, MessageKind::Other)
            }
            Ok(Packet::PacketData(p)) => ((p.receiver_idx >> 8) as usize, MessageKind::Other),
            Err(_) => {
                self.counters.drop(DropReason::BadWireGuard);
                return None;
            }
        };
        if index >= self.peers.len() {
            self.counters.drop(DropReason::BadWireGuard);
            return None;
        }
        // The gate: without trust nothing from this key is answered or decrypted.
        if !self.peers[index].trusted {
            self.counters.drop(DropReason::Untrusted);
            return None;
        }
        Some(Routed::Peer(index, kind))
    }

    /// Sends the cookie reply at the start of `out` back where the handshake came from, within
    /// the per-second budget. Only for datagrams that came direct: the cookie binds the
    /// source address, and a relayed initiation's source is the rendezvous (whose relay only
    /// carries trusted pairs' traffic, rate-limited per node), so a reply there helps nobody.
    fn cookie_reply<'a>(&mut self, via: Via, len: usize, out: &'a [u8]) -> NetOutput<'a> {
        let Via::Direct(to, socket) = via else {
            return NetOutput::Nothing;
        };
        if self.cookie_budget == 0 {
            return NetOutput::Nothing;
        }
        self.cookie_budget -= 1;
        self.counters.cookie_replies += 1;
        NetOutput::Send(Transmit {
            to,
            socket,
            payload: &out[..len],
        })
    }

    fn write_ping(&mut self, peer: usize, seq: u16) -> ([u8; 128], usize) {
        let dst = self.peers[peer].addr.to_ipv6();
        let len = ip::write_echo_request(
            &mut self.scratch,
            self.ip,
            dst,
            self.ping_ident,
            seq,
            &self.ping_token,
        )
        .expect("scratch holds an echo request");
        (self.scratch, len)
    }
}

/// Whether handling a datagram of `kind` established a WireGuard session: a response that
/// boringtun accepted (we initiated), or an initiation it answered with a response rather than
/// a cookie reply (we respond). `out` holds what `produced` describes, behind a relay header
/// when the datagram came through the relay.
fn established(kind: MessageKind, produced: &Produced, via: Via, out: &[u8]) -> bool {
    match (kind, produced) {
        (MessageKind::Response, Produced::Network(..) | Produced::Done) => true,
        (MessageKind::Initiation, Produced::Network(..)) => {
            let start = match via {
                Via::Direct(..) => 0,
                Via::Relay(..) => RELAY_HEADER_LEN,
            };
            out.get(start) == Some(&HANDSHAKE_RESPONSE)
        }
        _ => false,
    }
}
