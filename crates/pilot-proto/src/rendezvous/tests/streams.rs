//! Nodes over streams (their UDP blocked): served like UDP nodes, answered and relayed down
//! their stream, never offered to peers as an address to punch, and their endpoints never
//! usable from UDP.

use std::net::SocketAddr;

use super::*;

fn relay_frame(to: &Client) -> Vec<u8> {
    let mut frame = vec![0u8; 64];
    let n = write_relay(&mut frame, RELAY_TO, &to.key(), b"wg").unwrap();
    frame.truncate(n);
    frame
}

#[test]
fn a_node_over_a_stream_registers_and_is_relayed_to_and_from_down_its_stream() {
    let mut sim = Sim::new();
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut b = Client::over_stream(2, 7);
    sim.server
        .stream_opened(b.at, "203.0.113.2".parse().unwrap());
    assert!(matches!(
        a.register(&mut sim, &[]),
        Some(Message::Registered { .. })
    ));
    // Challenged, then registered, all over the stream.
    let Some(Message::Registered { observed, .. }) = b.register(&mut sim, &["10.1.0.2:51870"])
    else {
        panic!("b registers over its stream")
    };
    assert_eq!(observed, b.at);
    trust(&mut sim, &mut a, &mut b);

    let (port, to, out) = sim.send(Port::Main, a.at, &relay_frame(&b)).unwrap();
    assert_eq!((port, to), (Port::Stream, b.at), "down b's stream");
    assert_eq!((out[0], &out[1..33]), (RELAY_FROM, &a.key().0[..]));
    let (port, to, _) = sim.send(Port::Stream, b.at, &relay_frame(&a)).unwrap();
    assert_eq!((port, to), (Port::Main, a.at), "a over UDP");
}

#[test]
fn an_introduction_offers_no_stream_as_an_address_and_punches_down_the_stream() {
    let mut sim = Sim::new();
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut b = Client::over_stream(2, 7);
    a.register(&mut sim, &[]);
    // A node could list a stream endpoint among its LAN addresses: it is no address either.
    let lan = ["10.1.0.2:51870", "[100::5a17:0:9]:443"];
    b.register(&mut sim, &lan);
    trust(&mut sim, &mut a, &mut b);
    let connect = Message::Connect { target: b.key() };
    let Some(Message::Punch { candidates, .. }) = a.ask(&mut sim, Port::Main, &connect) else {
        panic!("a is introduced")
    };
    assert_eq!(
        candidates,
        vec!["10.1.0.2:51870".parse::<SocketAddr>().unwrap()]
    );
    let (port, to, punch) = sim.poll().expect("b's Punch");
    assert_eq!((port, to), (Port::Stream, b.at));
    assert!(matches!(
        sim.message(&(port, to, punch)),
        Message::Punch { .. }
    ));
}

#[test]
fn stream_endpoints_are_refused_from_udp_and_only_they_come_over_streams() {
    let mut sim = Sim::new();
    let mut b = Client::over_stream(2, 7);
    b.register(&mut sim, &[]);
    let mut a = Client::new(1, "198.51.100.1:40001");
    a.register(&mut sim, &[]);
    trust(&mut sim, &mut a, &mut b);
    let before = sim.server.counters().refused(Refusal::WrongTransport);
    // A spoofer on UDP claiming b's stream endpoint: neither relayed nor answered.
    assert_eq!(sim.send(Port::Main, b.at, &relay_frame(&a)), None);
    let register = Message::Register {
        lan: vec![],
        hostname: None,
        cookie: None,
        trust_digest: 0,
    };
    let d = b.sealed(&sim, &register);
    assert_eq!(sim.send(Port::Main, b.at, &d), None);
    // And a stream datagram from an ordinary address (a confused daemon).
    assert_eq!(sim.send(Port::Stream, a.at, &relay_frame(&b)), None);
    assert_eq!(
        sim.server.counters().refused(Refusal::WrongTransport),
        before + 3
    );
    // NAT probes mean nothing over a stream.
    let d = b.sealed(&sim, &Message::NatProbe);
    assert_eq!(sim.send(Port::Stream, b.at, &d), None);
}

#[test]
fn new_keys_over_streams_count_against_the_address_the_connection_comes_from() {
    let mut sim = Sim::with(MemoryStore::new(), |c| {
        c.new_keys_per_source = Rate {
            per_sec: 1,
            burst: 2,
        };
    });
    let registered = |sim: &mut Sim, n: u8, conn: u32, from: &str| {
        let mut node = Client::over_stream(n, conn);
        sim.server.stream_opened(node.at, from.parse().unwrap());
        matches!(node.register(sim, &[]), Some(Message::Registered { .. }))
    };
    assert!(registered(&mut sim, 1, 1, "192.0.2.1"));
    assert!(registered(&mut sim, 2, 2, "192.0.2.1"));
    assert!(
        !registered(&mut sim, 3, 3, "192.0.2.1"),
        "its address' burst is spent"
    );
    // Another address behind another connection is not held to it, though every stream
    // endpoint shares one prefix.
    assert!(registered(&mut sim, 4, 4, "198.51.100.9"));
    sim.server
        .stream_closed(&crate::rendezvous::streams::stream_endpoint(STREAM_SALT, 4));
}

#[test]
fn two_nodes_over_streams_are_relayed_stream_to_stream() {
    let mut sim = Sim::new();
    let mut a = Client::over_stream(1, 1);
    let mut b = Client::over_stream(2, 2);
    for node in [&mut a, &mut b] {
        assert!(matches!(
            node.register(&mut sim, &[]),
            Some(Message::Registered { .. })
        ));
    }
    trust(&mut sim, &mut a, &mut b);
    let (port, to, out) = sim.send(Port::Stream, a.at, &relay_frame(&b)).unwrap();
    assert_eq!((port, to), (Port::Stream, b.at));
    assert_eq!(&out[1..33], &a.key().0[..]);
    let (port, to, _) = sim.send(Port::Stream, b.at, &relay_frame(&a)).unwrap();
    assert_eq!((port, to), (Port::Stream, a.at));
}

#[test]
fn a_node_on_a_stream_is_introduced_with_no_nat_kind_to_aim_birthday_probes_at() {
    // b was measured behind a symmetric NAT over UDP, then moved to a stream: its public
    // endpoint is no candidate any more, so its peers must not spray probes at that address.
    let mut sim = Sim::new();
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut b = Client::new(2, "198.51.100.2:40002");
    a.register(&mut sim, &[]);
    b.register(&mut sim, &[]);
    trust(&mut sim, &mut a, &mut b);
    let at = b.at;
    b.at = "198.51.100.2:40999".parse().unwrap();
    assert!(matches!(
        b.ask(&mut sim, Port::Alt, &Message::NatProbe),
        Some(Message::NatProbeReply { .. })
    ));
    b.at = at;
    let connect = Message::Connect { target: b.key() };
    let peer_nat = |reply| match reply {
        Some(Message::Punch { peer_nat, .. }) => peer_nat,
        other => panic!("a is introduced: {other:?}"),
    };
    assert_eq!(
        peer_nat(a.ask(&mut sim, Port::Main, &connect)),
        NatKind::EndpointDependent
    );
    while sim.poll().is_some() {}
    let nonce = b.nonce;
    let mut b = Client::over_stream(2, 7);
    b.nonce = nonce;
    sim.server
        .stream_opened(b.at, "198.51.100.2".parse().unwrap());
    assert!(matches!(
        b.register(&mut sim, &[]),
        Some(Message::Registered { .. })
    ));
    while sim.poll().is_some() {}
    assert_eq!(
        peer_nat(a.ask(&mut sim, Port::Main, &connect)),
        NatKind::Unknown
    );
}
