//! Why packets were dropped, counted per reason. Counting is the only per-packet bookkeeping on
//! the drop path: no logging above TRACE, no allocation.

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
}

impl DropReason {
    pub const ALL: [DropReason; 15] = [
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
        }
    }
}

/// Drop counts by reason.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    drops: [u64; DropReason::ALL.len()],
}

impl Counters {
    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// Every reason with its count, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.get(*r)))
    }

    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.iter()
            .map(|(r, n)| (r.name().to_owned(), n.into()))
            .collect()
    }
}
