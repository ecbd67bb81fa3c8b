//! What `pilotctl peers` is told about a peer.

use std::time::Instant;

use super::tests::{udp_packet, Pair, TunVerdict};
use super::*;

/// A handshake over a sub-millisecond path gives boringtun an estimate of 0 whole
/// milliseconds: that is no measurement, and the peer's RTT stays unknown until one is made.
#[test]
fn an_rtt_never_measured_is_unknown_not_zero() {
    let mut p = Pair::new();
    let (a_ip, b_ip) = (p.a.addr().to_ipv6(), p.b.addr().to_ipv6());
    assert_eq!(
        p.send_from_a(&udp_packet(a_ip, b_ip, b"hello")),
        TunVerdict::Sent
    );
    let status = p.a.peer_status(p.b.addr(), Instant::now()).unwrap();
    assert_eq!(status.path, PathKind::Direct, "{status:?}");
    assert!(status.last_handshake_secs.is_some(), "{status:?}");
    // boringtun measures the handshake on the real clock: on a loaded machine it may take a
    // millisecond or more, and then that is the measurement shown.
    let index = p.a.by_addr[&p.b.addr()];
    let estimate = p.a.peers[index].tunn.stats().4;
    match estimate {
        Some(0) | None => assert_eq!(status.rtt_ms, None, "{status:?}"),
        Some(_) => assert!(status.rtt_ms.is_some_and(|ms| ms >= 1.0), "{status:?}"),
    }
}
