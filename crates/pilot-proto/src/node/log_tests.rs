//! What the node's log says about its peers.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::tests::{node, udp_packet, B_EP};
use super::*;

/// A log sink for a test's own subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// boringtun's own warnings say nothing of the tunnel they are about; in the node's log they
/// name the peer. Takes boringtun's REKEY_TIMEOUT (5 s) of real time: its timers read the
/// system clock, not the node's `now`.
#[test]
fn wireguard_warnings_name_the_peer() {
    let log = Captured::default();
    let sink = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    let retried = {
        let log = log.clone();
        move || String::from_utf8_lossy(&log.0.lock().unwrap()).contains("HANDSHAKE(REKEY_TIMEOUT)")
    };
    let peer = tracing::subscriber::with_default(subscriber, || {
        let mut a = node(1, &[(2, Some(B_EP))]);
        let peer = super::tests::identity(2).address();
        let mut out = vec![0u8; 2048];
        // A packet for the peer starts a handshake nobody answers.
        let packet = udp_packet(a.addr().to_ipv6(), peer.to_ipv6(), b"anyone there?");
        let start = Instant::now();
        assert!(matches!(
            a.handle_tun_packet(&packet, start, &mut out),
            TunOutput::Send(_)
        ));
        // REKEY_TIMEOUT plus boringtun's random jitter (up to a third of a second), on a busy
        // machine perhaps later: tick as the daemon does until the retry shows, 10 s at most.
        std::thread::sleep(Duration::from_millis(5_000));
        while !retried() && start.elapsed() < Duration::from_secs(10) {
            let now = Instant::now();
            a.handle_timeout(now);
            while a.poll_transmit(now, &mut out).is_some() {}
            std::thread::sleep(Duration::from_millis(100));
        }
        // Once the node knows the peer's hostname, the lines carry it too (recorded once).
        let name: Hostname = "bob".parse().unwrap();
        for _ in 0..2 {
            let _span = a.peers[0].log_span(Some(&name)).entered();
            tracing::warn!("named");
        }
        peer
    });
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("HANDSHAKE(REKEY_TIMEOUT)"))
        .unwrap_or_else(|| panic!("no handshake retry warning in:\n{text}"));
    assert!(
        line.contains(&format!("peer{{node={peer}}}")),
        "the warning does not name the peer: {line}"
    );
    let named: Vec<&str> = text.lines().filter(|l| l.ends_with("named")).collect();
    assert_eq!(named.len(), 2, "{text}");
    for line in named {
        assert!(
            line.contains(&format!("peer{{node={peer} name=bob}}")),
            "{line}"
        );
    }
}
