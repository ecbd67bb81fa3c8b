//! The node's metrics page (`pilotd up --metrics`), rendered from a snapshot the data plane
//! hands over.

use std::time::Duration;

use super::exposition::{Exposition, Kind};
use crate::node::{Counters, PathKind, PeerTraffic};
use crate::wire::control::NatKind;

/// What the data plane knows at one moment, copied out so rendering happens elsewhere.
#[derive(Debug, Clone, Default)]
pub struct NodeMetrics {
    pub version: String,
    pub uptime: Duration,
    /// Peers packets may pass with, by path: direct, relay, none.
    pub direct: usize,
    pub relay: usize,
    pub unreachable: usize,
    /// Every peer the node has a tunnel for, with its traffic since start.
    pub traffic: Vec<PeerTraffic>,
    pub counters: Counters,
    /// Drops the data plane counts itself: TUN writes that failed, TUN reads it could not
    /// parse, datagrams the socket refused (or the send batch could not hold).
    pub tun_write_failed: u64,
    pub tun_read_malformed: u64,
    pub udp_send_failed: u64,
    /// Peers with a mutual trust record, configured peers (`--peer`), requests waiting.
    pub trusted: usize,
    pub configured: usize,
    pub pending: usize,
    /// Registered with the rendezvous now (false without one).
    pub registered: bool,
    /// The NAT mapping measured against the rendezvous (`Unknown` without one).
    pub nat: NatKind,
    /// Approvals waiting for a countersignature forgotten past the trust book's limit.
    pub approvals_evicted: u64,
}

impl NodeMetrics {
    /// Peers by path, in the order they are reported.
    pub fn by_path(&self) -> [(PathKind, usize); 3] {
        [
            (PathKind::Direct, self.direct),
            (PathKind::Relay, self.relay),
            (PathKind::None, self.unreachable),
        ]
    }

    /// Every drop: the node's by reason, then the data plane's own.
    pub fn drops(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let own = [
            ("tun_write_failed", self.tun_write_failed),
            ("tun_read_malformed", self.tun_read_malformed),
            ("udp_send_failed", self.udp_send_failed),
        ];
        let node = self.counters.iter().map(|(r, n)| (r.name(), n));
        node.chain(own)
    }
}

/// The text exposition of `m`. Families appear in a fixed order, every drop reason always
/// (zero included), so dashboards and alerts see a series from the first scrape.
pub fn render(m: &NodeMetrics) -> String {
    let mut page = Exposition::new();
    page.process(
        &m.version,
        ("pilot_uptime_seconds", "Seconds since the daemon started."),
        m.uptime,
    );
    let mut peers = page.family(
        "pilot_peers",
        Kind::Gauge,
        "Peers packets may pass with (configured or trusted), by how they are reached now.",
    );
    for (path, n) in m.by_path() {
        peers.sample(&[("path", path.as_str())], n);
    }
    let (rx, tx) = m
        .traffic
        .iter()
        .fold((0, 0), |(rx, tx), t| (rx + t.rx_bytes, tx + t.tx_bytes));
    page.single(
        "pilot_rx_bytes_total",
        Kind::Counter,
        "Bytes received from peers through the tunnels (decrypted), all peers.",
        rx,
    );
    page.single(
        "pilot_tx_bytes_total",
        Kind::Counter,
        "Bytes sent to peers through the tunnels (before encryption), all peers.",
        tx,
    );
    let mut peer_rx = page.family(
        "pilot_peer_rx_bytes_total",
        Kind::Counter,
        "Bytes received through the tunnel, by peer node address.",
    );
    for t in &m.traffic {
        peer_rx.sample(&[("peer", &t.addr.to_string())], t.rx_bytes);
    }
    let mut peer_tx = page.family(
        "pilot_peer_tx_bytes_total",
        Kind::Counter,
        "Bytes sent through the tunnel, by peer node address.",
    );
    for t in &m.traffic {
        peer_tx.sample(&[("peer", &t.addr.to_string())], t.tx_bytes);
    }
    let c = &m.counters;
    page.single(
        "pilot_handshakes_total",
        Kind::Counter,
        "WireGuard sessions established (handshakes completed, as initiator or responder).",
        c.handshakes,
    );
    let mut drops = page.family(
        "pilot_drops_total",
        Kind::Counter,
        "Packets and datagrams dropped, by reason.",
    );
    for (reason, n) in m.drops() {
        drops.sample(&[("reason", reason)], n);
    }
    for (name, help, value) in [
        (
            "pilot_punches_total",
            "Hole punches started (probing windows opened by an introduction).",
            c.punches,
        ),
        (
            "pilot_direct_paths_found_total",
            "Peers whose path became direct from relayed or none.",
            c.direct_found,
        ),
        (
            "pilot_punches_failed_total",
            "Punch windows that closed without a direct path (the pair stays relayed).",
            c.punches_failed,
        ),
        (
            "pilot_birthday_attempts_total",
            "Birthday probing attempts (one side's NAT maps endpoint-dependently).",
            c.birthday_attempts,
        ),
        (
            "pilot_birthday_direct_total",
            "Birthday probing attempts that ended with a direct path.",
            c.birthday_direct,
        ),
        (
            "pilot_birthday_failed_total",
            "Birthday probing attempts that ended without a direct path (the next waits).",
            c.birthday_failed,
        ),
        (
            "pilot_birthday_probes_total",
            "Probes sent by birthday probing.",
            c.birthday_probes,
        ),
        (
            "pilot_relay_fallbacks_total",
            "Direct paths given up after going silent under traffic.",
            c.relay_fallbacks,
        ),
        (
            "pilot_packets_too_big_total",
            "Packets larger than a direct IPv6 path carries, answered with an ICMPv6 Packet Too Big.",
            c.too_big,
        ),
        (
            "pilot_rendezvous_switches_total",
            "Moves to another rendezvous (the one in use stopped answering, or the first came back).",
            c.rendezvous_switches,
        ),
        (
            "pilot_rendezvous_streams_total",
            "Moves of the rendezvous link to a TLS stream (UDP to the rendezvous got no answer).",
            c.rendezvous_streams,
        ),
        (
            "pilot_relay_tx_bytes_total",
            "Bytes of relay frames sent to the rendezvous.",
            c.relay_tx_bytes,
        ),
        (
            "pilot_relay_rx_bytes_total",
            "Bytes of relay frames received from the rendezvous.",
            c.relay_rx_bytes,
        ),
        (
            "pilot_clock_corrections_total",
            "Times the clock control messages are signed with was corrected from the \
             rendezvous' time (this system's clock is off).",
            c.clock_corrections,
        ),
        (
            "pilot_peer_clock_resets_total",
            "Peers' WireGuard sessions started afresh because their handshake was dated before \
             their last one after a silence (their clock went back).",
            c.peer_clock_resets,
        ),
        (
            "pilot_cookie_replies_total",
            "WireGuard cookie replies sent to handshakes that arrived while under load.",
            c.cookie_replies,
        ),
        (
            "pilot_punch_candidates_evicted_total",
            "Punch candidates dropped past the per-peer limit of 16 (the oldest first).",
            c.candidates_evicted,
        ),
        (
            "pilot_trust_approvals_evicted_total",
            "Approvals waiting for a countersignature forgotten past the limit (the oldest first).",
            m.approvals_evicted,
        ),
    ] {
        page.single(name, Kind::Counter, help, value);
    }
    for (name, help, value) in [
        (
            "pilot_trusted_peers",
            "Peers with a valid mutual trust record.",
            m.trusted,
        ),
        (
            "pilot_configured_peers",
            "Peers configured with --peer (trusted by configuration).",
            m.configured,
        ),
        (
            "pilot_trust_requests_pending",
            "Trust requests waiting for `pilotctl approve`.",
            m.pending,
        ),
    ] {
        page.single(name, Kind::Gauge, help, value);
    }
    page.single(
        "pilot_registered",
        Kind::Gauge,
        "1 while registered with the rendezvous, else 0.",
        m.registered,
    );
    page.family(
        "pilot_nat_info",
        Kind::Gauge,
        "NAT mapping behaviour measured against the rendezvous; always 1.",
    )
    .sample(&[("nat", m.nat.as_str())], 1u64);
    page.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::node::DropReason;

    #[test]
    fn a_known_state_renders_exactly() {
        let peer = Identity::from_secret_bytes(&[7; 32]).address();
        let mut counters = Counters::default();
        counters.drop(DropReason::SpoofedSource);
        counters.drop(DropReason::SpoofedSource);
        counters.drop(DropReason::NoPeer);
        counters.handshakes = 3;
        counters.punches = 4;
        counters.direct_found = 2;
        counters.punches_failed = 1;
        counters.birthday_attempts = 3;
        counters.birthday_direct = 2;
        counters.birthday_probes = 900;
        counters.relay_fallbacks = 1;
        counters.relay_tx_bytes = 330;
        counters.relay_rx_bytes = 660;
        counters.cookie_replies = 7;
        counters.candidates_evicted = 8;
        let m = NodeMetrics {
            version: "0.1.0-\"dev\"\\x".into(),
            uptime: Duration::from_millis(61_500),
            direct: 1,
            relay: 0,
            unreachable: 2,
            traffic: vec![PeerTraffic {
                addr: peer,
                rx_bytes: 1000,
                tx_bytes: 2000,
            }],
            counters,
            tun_write_failed: 5,
            tun_read_malformed: 0,
            udp_send_failed: 6,
            trusted: 2,
            configured: 1,
            pending: 1,
            registered: true,
            nat: NatKind::EndpointIndependent,
            approvals_evicted: 9,
        };
        let page = render(&m);
        let lines: Vec<&str> = page.lines().collect();
        let peer = peer.to_string();
        for expected in [
            "# HELP pilot_build_info The running pilotd's version; always 1.",
            "# TYPE pilot_build_info gauge",
            r#"pilot_build_info{version="0.1.0-\"dev\"\\x"} 1"#,
            "# TYPE pilot_uptime_seconds gauge",
            "pilot_uptime_seconds 61.5",
            "# TYPE pilot_peers gauge",
            r#"pilot_peers{path="direct"} 1"#,
            r#"pilot_peers{path="relay"} 0"#,
            r#"pilot_peers{path="none"} 2"#,
            "# TYPE pilot_rx_bytes_total counter",
            "pilot_rx_bytes_total 1000",
            "pilot_tx_bytes_total 2000",
            &format!(r#"pilot_peer_rx_bytes_total{{peer="{peer}"}} 1000"#),
            &format!(r#"pilot_peer_tx_bytes_total{{peer="{peer}"}} 2000"#),
            "pilot_handshakes_total 3",
            "# TYPE pilot_drops_total counter",
            r#"pilot_drops_total{reason="not_ipv6"} 0"#,
            r#"pilot_drops_total{reason="no_peer"} 1"#,
            r#"pilot_drops_total{reason="spoofed_source"} 2"#,
            r#"pilot_drops_total{reason="bad_trust_statement"} 0"#,
            r#"pilot_drops_total{reason="tun_write_failed"} 5"#,
            r#"pilot_drops_total{reason="tun_read_malformed"} 0"#,
            r#"pilot_drops_total{reason="udp_send_failed"} 6"#,
            "pilot_punches_total 4",
            "pilot_direct_paths_found_total 2",
            "pilot_punches_failed_total 1",
            "pilot_birthday_attempts_total 3",
            "pilot_birthday_direct_total 2",
            "pilot_birthday_failed_total 0",
            "pilot_birthday_probes_total 900",
            "pilot_relay_fallbacks_total 1",
            "pilot_packets_too_big_total 0",
            "pilot_rendezvous_switches_total 0",
            "pilot_rendezvous_streams_total 0",
            "pilot_relay_tx_bytes_total 330",
            "pilot_relay_rx_bytes_total 660",
            "pilot_clock_corrections_total 0",
            "pilot_peer_clock_resets_total 0",
            "pilot_cookie_replies_total 7",
            "pilot_punch_candidates_evicted_total 8",
            "pilot_trust_approvals_evicted_total 9",
            r#"pilot_drops_total{reason="under_load"} 0"#,
            "# TYPE pilot_trusted_peers gauge",
            "pilot_trusted_peers 2",
            "pilot_configured_peers 1",
            "pilot_trust_requests_pending 1",
            "pilot_registered 1",
            "# TYPE pilot_nat_info gauge",
            r#"pilot_nat_info{nat="endpoint_independent"} 1"#,
        ] {
            assert!(lines.contains(&expected), "no `{expected}` in\n{page}");
        }
        // Every drop reason appears, once; every family has its HELP and TYPE once.
        let drops = lines.iter().filter(|l| l.starts_with("pilot_drops_total{"));
        assert_eq!(drops.count(), DropReason::ALL.len() + 3);
        let families = lines.iter().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(families, 32);
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("# HELP ")).count(),
            families
        );
        assert!(page.ends_with('\n'));
    }
}
