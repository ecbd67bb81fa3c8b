//! Memory under a flood of trust requests from keys made for the purpose (issue 15, A4): the
//! outbox is capped for all nodes together, so what a flood can make the server hold is
//! bounded whatever the number of keys and targets.
//!
//! `cargo test --release --lib memory_under_a_million_submits -- --ignored --nocapture`
//! prints the figures (a million signed submissions take about two minutes); the small case
//! runs with the other tests.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::*;
use crate::wire::trust::TrustRequest;

/// The resident set of this process, in KiB (Linux: /proc/self/status).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Fresh keys, 20 submissions each (their rate's burst), each a request to a target nobody
/// registered (any 32 bytes); sources spread over addresses so the per-source limit on new
/// keys lets them in (32 keys, 640 submissions per address). Returns (submissions sent,
/// stored, refused for a full outbox, evicted to make room).
fn flood(sim: &mut Sim, submissions: usize) -> (usize, u64, u64, u64) {
    let mut sent = 0;
    let mut n: u32 = 0;
    while sent < submissions {
        n += 1;
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n / 32));
        let at = SocketAddr::new(ip, 1024 + (n % 32) as u16);
        let mut secret = [0u8; 32];
        secret[..4].copy_from_slice(&n.to_be_bytes());
        let mut c = Client {
            identity: Identity::from_secret_bytes(&secret),
            at,
            nonce: u64::from(n) << 32,
            cookie: None,
            trust_digest: None,
            port: Port::Main,
        };
        assert!(matches!(
            c.register(sim, &[]),
            Some(Message::Registered { .. })
        ));
        for i in 0..20u32 {
            let mut target = [0xa5u8; 32];
            target[..4].copy_from_slice(&n.to_be_bytes());
            target[4..8].copy_from_slice(&i.to_be_bytes());
            let ask = TrustRequest::sign(
                c.signing_key(),
                NodeKey(target),
                sim.now_ms(),
                u64::from(i),
                "let me in",
            )
            .unwrap();
            c.submit(sim, &Statement::Request(ask));
            sent += 1;
        }
        sim.drain();
    }
    let counters = sim.server.counters();
    (
        sent,
        counters.statements_stored,
        counters.refused(Refusal::OutboxFull),
        counters.outbox_evicted,
    )
}

#[test]
fn a_flood_of_requests_to_made_up_targets_stops_at_the_outbox_limit() {
    let mut sim = Sim::with(MemoryStore::new(), |c| c.max_outbox = 1_000);
    let (sent, stored, full, evicted) = flood(&mut sim, 4_000);
    assert_eq!(sent, 4_000);
    assert_eq!(stored + full, 4_000, "each stored or refused");
    assert_eq!(stored - evicted, 1_000, "what is held: the limit");
    assert!(full > 0 && evicted > 0, "{full} refused, {evicted} evicted");
    assert_eq!(sim.server.outbox_len(), 1_000);
    assert_eq!(sim.store.outbox_len(), 1_000, "evicted from the store too");
}

#[test]
#[ignore = "a million signed submissions: run in release, see the module's documentation"]
fn memory_under_a_million_submits() {
    let mut sim = Sim::new();
    let before = rss_kib();
    let started = std::time::Instant::now();
    let (sent, stored, full, evicted) = flood(&mut sim, 1_000_000);
    let after = rss_kib();
    println!(
        "{sent} submissions from {} fresh keys in {:.0} s: {stored} stored, {evicted} of them \
         evicted later to make room (the oldest of the address holding the most), {full} \
         refused (outbox_full); outbox {} items; RSS {} MiB -> {} MiB (+{} MiB, memory store \
         included: it keeps a second copy of every item)",
        sent / 20,
        started.elapsed().as_secs_f64(),
        sim.server.outbox_len(),
        before / 1024,
        after / 1024,
        after.saturating_sub(before) / 1024
    );
    assert_eq!(sim.server.outbox_len(), 250_000);
}
