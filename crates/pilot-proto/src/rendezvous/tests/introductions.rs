//! Introductions (`Connect` → `Punch`), the relay, and following a node to a new endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

#[test]
fn connect_introduces_only_registered_mutually_trusting_nodes() {
    let mut sim = Sim::new();
    let (mut a, b) = pair(&mut sim);
    let mut stranger = Client::new(9, "192.0.2.9:9");
    let connect_b = Message::Connect { target: b.key() };
    assert_eq!(
        refused(stranger.ask(&mut sim, Port::Main, &connect_b)),
        RefusalCode::NotRegistered
    );
    stranger.register(&mut sim, &[]);
    // No record between the stranger and b: b's endpoint is not disclosed.
    assert_eq!(
        refused(stranger.ask(&mut sim, Port::Main, &connect_b)),
        RefusalCode::NotAllowed
    );
    assert_eq!(sim.poll(), None);
    // Nor whether a key a has no record with is registered at all.
    let nobody = Message::Connect {
        target: NodeKey([7; 32]),
    };
    assert_eq!(
        refused(a.ask(&mut sim, Port::Main, &nobody)),
        RefusalCode::NotAllowed
    );

    let Some(Message::Punch {
        peer,
        peer_nat,
        candidates,
    }) = a.ask(&mut sim, Port::Main, &connect_b)
    else {
        panic!()
    };
    assert_eq!((peer, peer_nat), (b.key(), NatKind::Unknown));
    let b_lan: Vec<SocketAddr> = ["10.1.0.2:51870", "[fd00::2]:51870"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(candidates, [vec![b.at], b_lan].concat());
    let to_b = sim.poll().expect("b is told at once");
    assert_eq!((to_b.0, to_b.1), (Port::Main, b.at));
    let Message::Punch {
        peer, candidates, ..
    } = sim.message(&to_b)
    else {
        panic!()
    };
    assert_eq!(peer, a.key());
    assert_eq!(candidates, vec![a.at, "10.0.0.1:51870".parse().unwrap()]);
    assert_eq!(sim.poll(), None);
    assert_eq!(sim.server.counters().punches, 1);

    // 10 at once are allowed in all (one used above, one refused for want of trust), then
    // the rate limit answers.
    let mut codes = Vec::new();
    for _ in 0..12 {
        match a.ask(&mut sim, Port::Main, &connect_b) {
            Some(Message::Punch { .. }) => codes.push(None),
            other => codes.push(Some(refused(other))),
        }
    }
    assert_eq!(codes.iter().filter(|c| c.is_none()).count(), 8);
    assert!(codes[8..]
        .iter()
        .all(|c| *c == Some(RefusalCode::RateLimited)));
    assert_eq!(sim.server.counters().refused(Refusal::RateLimited), 4);
}

#[test]
fn relay_forwards_between_trusting_nodes_only() {
    let mut sim = Sim::with(MemoryStore::new(), |c| c.relay_bytes_per_sec = 100_000);
    let (a, b) = pair(&mut sim);
    let mut c = Client::new(3, "192.0.2.3:3");
    c.register(&mut sim, &[]);
    let mut frame = vec![0u8; 1500];
    let mut relay = |sim: &mut Sim, from: SocketAddr, dst: NodeKey, port: Port| {
        let n = write_relay(&mut frame, RELAY_TO, &dst, &[4, 0, 0, 0, 42]).unwrap();
        sim.send(port, from, &frame[..n])
    };
    let (port, to, out) = relay(&mut sim, a.at, b.key(), Port::Main).unwrap();
    assert_eq!((port, to), (Port::Main, b.at));
    assert_eq!(out[0], RELAY_FROM);
    assert_eq!(&out[1..33], &a.key().0);
    assert_eq!(&out[33..], &[4, 0, 0, 0, 42]);
    assert_eq!(sim.server.counters().relay_frames, 1);

    assert_eq!(
        relay(&mut sim, a.at, c.key(), Port::Main),
        None,
        "a and c have no record"
    );
    assert_eq!(
        relay(&mut sim, c.at, a.key(), Port::Main),
        None,
        "a and c have no record"
    );
    assert_eq!(
        relay(
            &mut sim,
            "192.0.2.99:1".parse().unwrap(),
            b.key(),
            Port::Main
        ),
        None
    );
    assert_eq!(relay(&mut sim, a.at, NodeKey([7; 32]), Port::Main), None);
    assert_eq!(relay(&mut sim, a.at, b.key(), Port::Alt), None);
    assert_eq!(sim.send(Port::Main, a.at, &[RELAY_TO; 20]), None);
    let counters = sim.server.counters().clone();
    for (reason, n) in [
        (RelayDrop::NotAllowed, 2),
        (RelayDrop::UnknownSender, 1),
        (RelayDrop::UnknownTarget, 1),
        (RelayDrop::WrongPort, 1),
        (RelayDrop::Malformed, 1),
    ] {
        assert_eq!(counters.relay_dropped(reason), n, "{reason:?}");
    }

    // 100 kB/s with a 64 KiB burst: 45 frames of 1433 bytes pass at once, then 7 per 100 ms.
    let mut big = vec![0u8; 1433];
    let n = write_relay(&mut big, RELAY_TO, &b.key(), &[4; 1400]).unwrap();
    let burst = |sim: &mut Sim| {
        (0..100)
            .filter(|_| sim.send(Port::Main, a.at, &big[..n]).is_some())
            .count()
    };
    assert_eq!(burst(&mut sim), 45);
    sim.now += Duration::from_millis(100);
    assert_eq!(burst(&mut sim), 7);
    assert_eq!(
        sim.server.counters().relay_dropped(RelayDrop::RateLimited),
        55 + 93
    );
}

#[test]
fn a_new_endpoint_is_followed_once_proven_with_a_cookie() {
    let mut sim = Sim::new();
    let (mut a, b) = pair(&mut sim);
    let old = a.at;
    a.at = "198.51.100.1:50000".parse().unwrap();
    let Some(Message::Registered { observed, .. }) = a.register(&mut sim, &["10.0.0.1:51870"])
    else {
        panic!()
    };
    assert_eq!(observed, a.at);
    assert_eq!(
        sim.store.get(&a.key()).unwrap().observed,
        a.at,
        "stored before the reply"
    );
    let mut frame = vec![0u8; 64];
    let n = write_relay(&mut frame, RELAY_TO, &b.key(), b"wg").unwrap();
    assert_eq!(sim.send(Port::Main, old, &frame[..n]), None);
    assert!(sim.send(Port::Main, a.at, &frame[..n]).is_some());
    // Relayed traffic for a goes to the new endpoint too.
    let n = write_relay(&mut frame, RELAY_TO, &a.key(), b"wg").unwrap();
    assert_eq!(sim.send(Port::Main, b.at, &frame[..n]).unwrap().1, a.at);

    // A signed Connect from yet another endpoint does not move it (an on-path re-sender or
    // a replay from elsewhere could redirect the node's traffic otherwise) and is not acted
    // on: the rendezvous answers with a challenge there, no larger than the request, and
    // introduces no one.
    let proven = a.at;
    a.at = "198.51.100.1:50001".parse().unwrap();
    let connect = Message::Connect { target: b.key() };
    let d = a.sealed(&sim, &connect);
    let (_, to, challenge) = sim.send(Port::Main, a.at, &d).unwrap();
    assert_eq!(to, a.at);
    assert!(challenge.len() <= d.len());
    assert!(matches!(
        sim.message(&(Port::Main, to, challenge)),
        Message::Challenge { .. }
    ));
    assert!(
        sim.poll().is_none(),
        "no introduction from an unproven endpoint"
    );
    assert_eq!(
        sim.server.registration(&a.key(), sim.now).unwrap().observed,
        proven
    );
    // A Register from there with the cookie it was sent moves the endpoint, and the Connect
    // then introduces it there.
    a.register(&mut sim, &["10.0.0.1:51870"]);
    assert!(matches!(
        a.ask(&mut sim, Port::Main, &connect),
        Some(Message::Punch { .. })
    ));
    let (_, _, to_b) = sim.poll().unwrap();
    let Message::Punch { candidates, .. } = sim.message(&(Port::Main, b.at, to_b)) else {
        panic!()
    };
    assert_eq!(candidates[0], a.at);
    assert_eq!(
        sim.server.registration(&a.key(), sim.now).unwrap().observed,
        a.at
    );
    assert_eq!(sim.store.get(&a.key()).unwrap().observed, a.at);
}

#[test]
fn a_stranger_cannot_take_over_a_nodes_endpoint_for_the_relay() {
    // Issue 15, A5: relay frames are attributed by source endpoint, and a stranger's one
    // spoofed Register with a's endpoint used to make a's frames drop (last writer wins).
    let mut sim = Sim::new();
    let (a, b) = pair(&mut sim);
    let mut c = Client::new(3, "192.0.2.33:40003");
    // c gets a cookie at its own address, then spoofs registrations from a's endpoint with
    // it and without one.
    c.fetch_cookie(&mut sim);
    c.at = a.at;
    for cookie in [c.cookie, None] {
        let d = c.sealed(
            &sim,
            &Message::Register {
                lan: vec![],
                hostname: None,
                cookie,
                trust_digest: 0,
            },
        );
        let sent = sim.send(Port::Main, a.at, &d);
        assert!(
            sent.is_none_or(|s| matches!(sim.message(&s), Message::Challenge { .. })),
            "only ever a challenge"
        );
    }
    assert!(sim.server.registration(&c.key(), sim.now).is_none());
    let mut frame = vec![0u8; 64];
    let n = write_relay(&mut frame, RELAY_TO, &b.key(), b"wg").unwrap();
    let (_, to, _) = sim.send(Port::Main, a.at, &frame[..n]).expect("still a's");
    assert_eq!(to, b.at);
}
