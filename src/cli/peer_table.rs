//! `pilotctl peers` for people: one line per peer, one fact per column, `-` where a fact is
//! not known (no hostname, no endpoint, no handshake yet, no round trip measured).

use std::fmt::Write;

use crate::api::PeerRef;
use crate::node::PeerStatus;
use crate::wire::printable::printable;

/// The table, header first; `no peers` when there are none.
pub(super) fn peer_table(peers: &[PeerStatus]) -> String {
    if peers.is_empty() {
        return "no peers\n".into();
    }
    let mut text = String::new();
    row(
        &mut text,
        [
            "NODE",
            "HOSTNAME",
            "ADDRESS",
            "PATH",
            "ENDPOINT",
            "RX",
            "TX",
            "HANDSHAKE",
            "HEARD",
            "RTT",
        ],
    );
    for p in peers {
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        row(
            &mut text,
            [
                &p.peer.addr.to_string(),
                &or_dash(p.peer.hostname.as_ref().map(ToString::to_string)),
                &p.peer.addr.to_ipv6().to_string(),
                p.path.as_str(),
                &or_dash(p.endpoint.map(|e| e.to_string())),
                &p.rx_bytes.to_string(),
                &p.tx_bytes.to_string(),
                &or_dash(p.last_handshake_secs.map(|s| format!("{s}s ago"))),
                &heard(p),
                &or_dash(p.rtt_ms.map(|r| format!("{r:.2}ms"))),
            ],
        );
    }
    text
}

/// When the peer was last heard from; `gone` when it no longer answers.
fn heard(p: &PeerStatus) -> String {
    match (p.last_heard_secs, p.unreachable) {
        (_, true) => "gone".into(),
        (Some(s), false) => format!("{s}s ago"),
        (None, false) => "-".into(),
    }
}

fn row(
    text: &mut String,
    [node, name, address, path, endpoint, rx, tx, handshake, heard, rtt]: [&str; 10],
) {
    let _ = writeln!(
        text,
        "{node:<14} {name:<16} {address:<22} {path:<6} {endpoint:<22} {rx:>10} {tx:>10} \
         {handshake:>9} {heard:>9} {rtt:>9}"
    );
}

/// `bob (fd70::…)`, or the node address when there is no hostname. Hostnames come from the
/// rendezvous: escaped like any text from the network.
pub(super) fn who(peer: &PeerRef) -> String {
    match &peer.hostname {
        Some(name) => format!("{} ({})", printable(name.as_str()), peer.addr.to_ipv6()),
        None => format!("{} ({})", peer.addr, peer.addr.to_ipv6()),
    }
}

/// How long ago `issued_ms` was: `secs` as the daemon measured it with the node's clock
/// (corrected when this system's clock is off), else by this system's clock.
pub(super) fn age(issued_ms: u64, secs: Option<u64>) -> String {
    let secs = secs.unwrap_or_else(|| crate::clock::unix_ms_now().saturating_sub(issued_ms) / 1000);
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::PathKind;

    fn peer(hostname: Option<&str>, rtt_ms: Option<f64>) -> PeerStatus {
        PeerStatus {
            peer: PeerRef {
                key: crate::identity::NodeKey([0; 32]),
                addr: "a1b2.c3d4.e5f6".parse().unwrap(),
                hostname: hostname.map(|h| h.parse().unwrap()),
            },
            path: PathKind::Direct,
            endpoint: Some("198.51.100.2:51870".parse().unwrap()),
            rx_bytes: 1234,
            tx_bytes: 56,
            last_handshake_secs: Some(7),
            rtt_ms,
            last_heard_secs: Some(3),
            unreachable: false,
        }
    }

    #[test]
    fn each_column_holds_what_its_header_says_and_unknowns_are_dashes() {
        let static_peer = PeerStatus {
            endpoint: None,
            last_handshake_secs: None,
            last_heard_secs: None,
            path: PathKind::None,
            ..peer(None, None)
        };
        let gone = PeerStatus {
            path: PathKind::None,
            unreachable: true,
            ..peer(Some("carol"), None)
        };
        assert_eq!(
            peer_table(&[peer(Some("bob"), Some(1.234)), static_peer, gone]),
            "NODE           HOSTNAME         ADDRESS                PATH   ENDPOINT                       \
             RX         TX HANDSHAKE     HEARD       RTT\n\
             a1b2.c3d4.e5f6 bob              fd70::a1b2:c3d4:e5f6   direct 198.51.100.2:51870           \
             1234         56    7s ago    3s ago    1.23ms\n\
             a1b2.c3d4.e5f6 -                fd70::a1b2:c3d4:e5f6   none   -                            \
             1234         56         -         -         -\n\
             a1b2.c3d4.e5f6 carol            fd70::a1b2:c3d4:e5f6   none   198.51.100.2:51870           \
             1234         56    7s ago      gone         -\n"
        );
        assert_eq!(peer_table(&[]), "no peers\n");
    }
}
