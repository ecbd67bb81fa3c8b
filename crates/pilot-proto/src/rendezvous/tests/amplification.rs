//! The rendezvous as a reflector (issue 15, A2): what a spoofed request makes it send to the
//! address it claims, per message type. Until an endpoint is proven (a registration with its
//! cookie), nothing sent there may be larger than the request. `cargo test --lib
//! amplification -- --nocapture` prints the table the README publishes.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::wire::control::{Query, NAT_PROBE, REQUEST_MIN_LEN};
use crate::wire::trust::{Statement, TrustRequest};

/// Sends `datagram` from `victim` and returns every byte the server then sends to `victim`,
/// at once and over the next 20 s of timers (deliveries and their resends every 2 s).
fn reflected(sim: &mut Sim, port: Port, victim: SocketAddr, datagram: &[u8]) -> usize {
    let mut total = sim
        .send(port, victim, datagram)
        .filter(|s| s.1 == victim)
        .map_or(0, |s| s.2.len());
    for _ in 0..10 {
        while let Some((_, to, bytes)) = sim.poll() {
            if to == victim {
                total += bytes.len();
            }
        }
        sim.advance(Duration::from_secs(2));
    }
    total
}

#[test]
fn no_message_type_reflects_more_than_it_costs_to_an_unproven_address() {
    let mut sim = Sim::new();
    let (mut a, mut b) = pair(&mut sim);
    let victim: SocketAddr = "192.0.2.99:53".parse().unwrap();
    // A stranger's key, with a trust request waiting for it: the audit's 5,800× case was a
    // spoofed Register that started Deliver rounds to the victim.
    let mut stranger = Client::new(7, "192.0.2.99:53");
    let ask = TrustRequest::sign(a.signing_key(), stranger.key(), sim.now_ms(), 1, "hi").unwrap();
    assert!(matches!(
        a.submit(&mut sim, &Statement::Request(ask)),
        Some(Message::Stored { .. })
    ));
    sim.drain();

    let mut rows: Vec<(String, usize, usize)> = Vec::new();
    // Each case from the victim's address; a and b refresh their registrations after it.
    fn case(
        sim: &mut Sim,
        rows: &mut Vec<(String, usize, usize)>,
        honest: [&mut Client; 2],
        victim: SocketAddr,
        (name, port, d): (&str, Port, Vec<u8>),
    ) {
        let out = reflected(sim, port, victim, &d);
        rows.push((name.to_owned(), d.len(), out));
        for node in honest {
            assert!(matches!(
                node.register(sim, &[]),
                Some(Message::Registered { .. })
            ));
        }
        sim.drain();
    }
    let register = Message::Register {
        lan: vec![],
        hostname: Some("victim".parse().unwrap()),
        cookie: Some([0; 16]),
        trust_digest: 0,
    };
    let d = stranger.sealed(&sim, &register);
    case(
        &mut sim,
        &mut rows,
        [&mut a, &mut b],
        victim,
        ("Register (stranger, bad cookie)", Port::Main, d),
    );
    let d = stranger.sealed(&sim, &Message::NatProbe);
    case(
        &mut sim,
        &mut rows,
        [&mut a, &mut b],
        victim,
        ("NatProbe (stranger)", Port::Main, d.clone()),
    );
    // An attacker need not pad: an unpadded probe gets nothing (its answer would be larger).
    let mut unpadded = vec![0u8; 512];
    let n = seal(
        &mut unpadded,
        NAT_PROBE,
        stranger.signing_key(),
        sim.now_ms(),
        99,
        &[],
    )
    .unwrap();
    unpadded.truncate(n);
    case(
        &mut sim,
        &mut rows,
        [&mut a, &mut b],
        victim,
        ("NatProbe (stranger, unpadded)", Port::Alt, unpadded),
    );
    let lookup = Message::Lookup {
        query: Query::Key(b.key()),
    };
    let d = stranger.sealed(&sim, &lookup);
    case(
        &mut sim,
        &mut rows,
        [&mut a, &mut b],
        victim,
        ("Lookup (stranger)", Port::Main, d),
    );
    // A registered node's own messages, captured and replayed from the victim's address.
    let connect = Message::Connect { target: b.key() };
    let d = a.sealed(&sim, &connect);
    case(
        &mut sim,
        &mut rows,
        [&mut a, &mut b],
        victim,
        ("Connect (registered key, new address)", Port::Main, d),
    );
    let d = a.sealed(&sim, &lookup);
    case(
        &mut sim,
        &mut rows,
        [&mut a, &mut b],
        victim,
        ("Lookup (registered key, new address)", Port::Main, d),
    );
    let record = b.record_with(&a, sim.now_ms());
    let d = a.sealed(&sim, &Message::Submit { statement: record });
    case(
        &mut sim,
        &mut rows,
        [&mut a, &mut b],
        victim,
        ("Submit (registered key, new address)", Port::Main, d),
    );
    let d = a.sealed(&sim, &Message::Ack { id: 1 });
    case(
        &mut sim,
        &mut rows,
        [&mut a, &mut b],
        victim,
        ("Ack (registered key, new address)", Port::Main, d),
    );
    let release = Message::ReleaseName {
        name: "victim".parse().unwrap(),
    };
    let d = stranger.sealed(&sim, &release);
    case(
        &mut sim,
        &mut rows,
        [&mut a, &mut b],
        victim,
        ("ReleaseName (stranger)", Port::Main, d),
    );
    let d = a.sealed(&sim, &release);
    case(
        &mut sim,
        &mut rows,
        [&mut a, &mut b],
        victim,
        ("ReleaseName (registered key, new address)", Port::Main, d),
    );
    let register = Message::Register {
        lan: vec![],
        hostname: None,
        cookie: None,
        trust_digest: 0,
    };
    let d = a.sealed(&sim, &register);
    case(
        &mut sim,
        &mut rows,
        [&mut a, &mut b],
        victim,
        ("Register (registered key, new address)", Port::Main, d),
    );

    eprintln!("| request from an unproven address | request bytes | bytes sent there | ratio |");
    eprintln!("|---|---|---|---|");
    for (name, sent, out) in &rows {
        eprintln!(
            "| {name} | {sent} | {out} | {:.2} |",
            *out as f64 / *sent as f64
        );
    }
    for (name, sent, out) in &rows {
        assert!(out <= sent, "{name}: {out} bytes for {sent}");
    }
    // Nothing was registered at the victim, nothing delivered there, a's endpoint unmoved.
    assert!(sim.server.registration(&stranger.key(), sim.now).is_none());
    assert_eq!(
        sim.server.registration(&a.key(), sim.now).unwrap().observed,
        a.at
    );
    // Honest requests are padded so their answers fit: a NatProbe answer goes out in full.
    let honest = rows.iter().find(|r| r.0 == "NatProbe (stranger)").unwrap();
    assert_eq!(honest.1, REQUEST_MIN_LEN);
    assert!(honest.2 > 0);
}
