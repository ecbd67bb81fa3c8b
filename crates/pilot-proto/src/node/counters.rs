//! What the node did and dropped, counted: drops per reason, WireGuard sessions, punches and
//! their outcomes, relay traffic. Counting is the only per-packet bookkeeping on the drop
//! path: no logging above TRACE, no allocation.

/// Why the node dropped a packet or datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// From the TUN: not an IPv6 packet.
    NotIpv6,
    /// From the TUN: destination outside fd70::/80 (e.g. multicast the kernel sends on its own).
    NotOverlay,
    /// From the TUN: no peer owns the destination address.
    NoPeer,
    /// From the TUN: the peer's endpoint is not known yet.
    NoEndpoint,
    /// Decrypted packet whose inner source is not the sending peer's own address.
    SpoofedSource,
    /// Decrypted packet not addressed to this node.
    WrongDestination,
    /// Decrypted packet that is not IPv6.
    NotIpv6Inner,
    /// A WireGuard handshake from a key that is not one of our peers.
    UnknownPeer,
    /// WireGuard datagram that failed to parse, authenticate or decrypt, or was replayed.
    BadWireGuard,
    /// A control message that failed to parse or whose signature did not verify.
    BadControl,
    /// A control message that was stale or already seen (replay).
    ReplayedControl,
    /// A well-formed control message from someone not entitled to send it (not our
    /// rendezvous, not a peer), or one this node does not handle.
    UnexpectedControl,
    /// A datagram whose first byte is no known kind.
    UnknownDatagram,
    /// To or from a peer without a valid mutual trust record (or whose trust was revoked).
    Untrusted,
    /// A delivered trust statement that does not verify or is not about this node.
    BadTrustStatement,
    /// A WireGuard handshake without a valid cookie while handshakes arrive faster than the
    /// rate limit: answered with a cookie reply (when it came direct) instead of a handshake.
    UnderLoad,
}

impl DropReason {
    pub const ALL: [DropReason; 16] = [
        DropReason::NotIpv6,
        DropReason::NotOverlay,
        DropReason::NoPeer,
        DropReason::NoEndpoint,
        DropReason::SpoofedSource,
        DropReason::WrongDestination,
        DropReason::NotIpv6Inner,
        DropReason::UnknownPeer,
        DropReason::BadWireGuard,
        DropReason::BadControl,
        DropReason::ReplayedControl,
        DropReason::UnexpectedControl,
        DropReason::UnknownDatagram,
        DropReason::Untrusted,
        DropReason::BadTrustStatement,
        DropReason::UnderLoad,
    ];

    /// Stable snake_case name used in JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::NotIpv6 => "not_ipv6",
            DropReason::NotOverlay => "not_overlay",
            DropReason::NoPeer => "no_peer",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::WrongDestination => "wrong_destination",
            DropReason::NotIpv6Inner => "not_ipv6_inner",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::BadWireGuard => "bad_wireguard",
            DropReason::BadControl => "bad_control",
            DropReason::ReplayedControl => "replayed_control",
            DropReason::UnexpectedControl => "unexpected_control",
            DropReason::UnknownDatagram => "unknown_datagram",
            DropReason::Untrusted => "untrusted",
            DropReason::BadTrustStatement => "bad_trust_statement",
            DropReason::UnderLoad => "under_load",
        }
    }
}

/// Everything the node counts since it started. All counts only grow.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// WireGuard sessions established (a handshake completed, as initiator or responder).
    pub handshakes: u64,
    /// Punches started: probing windows opened by an introduction from the rendezvous (or by
    /// the peer's probe from an endpoint not being probed).
    pub punches: u64,
    /// Peers whose path became direct from relayed or none (a probe answered, or the peer's
    /// WireGuard arrived straight from a new endpoint).
    pub direct_found: u64,
    /// Punch windows that closed with no direct path (the pair stays on the relay).
    pub punches_failed: u64,
    /// Birthday probing attempts started (one side's NAT maps endpoint-dependently, see
    /// `birthday`), those that ended with a direct path, those that ended without, and the
    /// probes they sent.
    pub birthday_attempts: u64,
    pub birthday_direct: u64,
    pub birthday_failed: u64,
    pub birthday_probes: u64,
    /// Direct paths given up after going silent under traffic (back to the relay).
    pub relay_fallbacks: u64,
    /// Packets from the TUN larger than a direct IPv6 path carries, answered with an ICMPv6
    /// Packet Too Big (see `pmtu`).
    pub too_big: u64,
    /// Moves to another rendezvous (it stopped answering, or the first one came back).
    pub rendezvous_switches: u64,
    /// Moves of the rendezvous link to a TLS stream (UDP to it got no answer).
    pub rendezvous_streams: u64,
    /// Bytes of relay frames sent to and received from the rendezvous (headers included).
    pub relay_tx_bytes: u64,
    pub relay_rx_bytes: u64,
    /// WireGuard cookie replies sent: handshakes answered under load with the cookie that
    /// the initiator's retry must carry (mac2), proving it owns its source address.
    pub cookie_replies: u64,
    /// Punch candidates dropped past the per-peer limit (the oldest go first).
    pub candidates_evicted: u64,
    /// Times the clock the node signs with was corrected from the rendezvous' time.
    pub clock_corrections: u64,
    /// Peers' tunnels started afresh because their handshake was dated before their last
    /// one while they had been silent (their clock went back).
    pub peer_clock_resets: u64,
    drops: [u64; DropReason::ALL.len()],
    /// Every drop, whatever its reason.
    dropped: u64,
}

impl Counters {
    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
        self.dropped += 1;
    }

    /// Every drop so far, whatever its reason.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// A punch started or extended.
    pub(super) fn punched(&mut self, start: super::path::PunchStart) {
        self.punches += u64::from(start.opened);
        self.candidates_evicted += start.evicted;
    }

    /// Drops for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// Every drop reason with its count, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.get(*r)))
    }

    /// Drops by reason, as `pilotctl info` shows them.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.iter()
            .map(|(r, n)| (r.name().to_owned(), n.into()))
            .collect()
    }
}
