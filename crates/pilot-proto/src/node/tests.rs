//! The node core on crafted packets: two (or three) nodes wired back to back in memory.

use std::net::{Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;
use crate::clock::WallClock;
use boringtun::noise::{Tunn, TunnResult};

pub(super) const A_EP: &str = "192.0.2.1:51870";
pub(super) const B_EP: &str = "198.51.100.2:51870";
pub(super) const C_EP: &str = "203.0.113.3:51870";

pub(super) fn ep(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A bare WireGuard tunnel holding `me`'s key, towards `peer` (a node under test), with table
/// index `index`: a peer (or an attacker holding that key) without a node around it.
fn wg_peer(me: &Identity, peer: &Identity, index: u32) -> Tunn {
    Tunn::new(
        me.x25519_secret(),
        peer.public_key().x25519_public().unwrap(),
        None,
        None,
        index,
        None,
    )
}

fn secret(n: u8) -> [u8; 32] {
    // Deterministic keys; skip any whose address would be reserved.
    (0..=255u8)
        .map(|i| [n ^ i.wrapping_mul(31); 32])
        .find(|s| !Identity::from_secret_bytes(s).address().is_reserved())
        .unwrap()
}

pub(super) fn identity(n: u8) -> Identity {
    Identity::from_secret_bytes(&secret(n))
}

/// Node number `me` with peers given by number and endpoint.
/// Node `me` with a rendezvous at `rdv` pinned to `rendezvous`'s key, its LAN endpoints and
/// a configured public endpoint, on `clock`.
pub(super) fn node_with_rendezvous(
    me: u8,
    rendezvous: &Identity,
    rdv: SocketAddr,
    lan: Vec<SocketAddr>,
    endpoint: Option<SocketAddr>,
    clock: WallClock,
) -> Node {
    Node::new(NodeConfig {
        standby_rendezvous: Vec::new(),
        shared_registry: false,
        mtu: 1380,
        identity: identity(me),
        peers: Vec::new(),
        trust: Default::default(),
        hostname: None,
        auto_approve: false,
        keepalive: None,
        seed: 1,
        rendezvous: Some(RendezvousConfig {
            addr: rdv,
            alt_port: rdv.port() + 1,
            key: Some(rendezvous.public_key()),
            stream: None,
        }),
        lan,
        endpoint,
        local_port: 51870,
        clock,
    })
    .unwrap()
}

pub(super) fn node(me: u8, peers: &[(u8, Option<&str>)]) -> Node {
    Node::new(NodeConfig {
        standby_rendezvous: Vec::new(),
        shared_registry: false,
        mtu: 1380,
        identity: identity(me),
        peers: peers
            .iter()
            .map(|(n, e)| PeerConfig {
                key: identity(*n).public_key(),
                endpoint: e.map(ep),
            })
            .collect(),
        trust: Default::default(),
        hostname: None,
        auto_approve: false,
        keepalive: None,
        seed: 0x5eed,
        rendezvous: None,
        lan: Vec::new(),
        endpoint: None,
        local_port: 51870,
        clock: WallClock::new(Instant::now(), 1_800_000_000_000),
    })
    .unwrap()
}

/// An IPv6/UDP packet as a kernel would write it into the TUN.
pub(super) fn udp_packet(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40 + 8 + payload.len()];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p[48..].copy_from_slice(payload);
    p
}

/// Two nodes and the datagrams in flight between them.
pub(super) struct Pair {
    pub(super) a: Node,
    pub(super) b: Node,
    now: Instant,
    /// Packets each side's node wrote to its TUN.
    a_tun: Vec<Vec<u8>>,
    b_tun: Vec<Vec<u8>>,
}

impl Pair {
    pub(super) fn new() -> Pair {
        Pair {
            a: node(1, &[(2, Some(B_EP))]),
            b: node(2, &[(1, Some(A_EP))]),
            now: Instant::now(),
            a_tun: Vec::new(),
            b_tun: Vec::new(),
        }
    }

    /// Delivers `datagrams` (from, to, bytes) and everything they cause, until quiet.
    fn run(&mut self, mut wire: Vec<(SocketAddr, SocketAddr, Vec<u8>)>) {
        let mut out = vec![0u8; 2048];
        for _ in 0..100 {
            for (from, to, bytes) in std::mem::take(&mut wire) {
                let (node, tun, me) = if to == ep(A_EP) {
                    (&mut self.a, &mut self.a_tun, ep(A_EP))
                } else if to == ep(B_EP) {
                    (&mut self.b, &mut self.b_tun, ep(B_EP))
                } else {
                    continue;
                };
                match node.handle_datagram(from, &bytes, self.now, &mut out) {
                    NetOutput::Tun(p) => tun.push(p.to_vec()),
                    NetOutput::Send(t) => wire.push((me, t.to, t.payload.to_vec())),
                    NetOutput::Nothing => {}
                }
            }
            for (node, me) in [(&mut self.a, ep(A_EP)), (&mut self.b, ep(B_EP))] {
                while let Some(t) = node.poll_transmit(self.now, &mut out) {
                    wire.push((me, t.to, t.payload.to_vec()));
                }
            }
            if wire.is_empty() {
                return;
            }
            self.now += Duration::from_millis(1);
        }
        panic!("no quiescence");
    }

    pub(super) fn send_from_a(&mut self, packet: &[u8]) -> TunVerdict {
        let mut out = vec![0u8; 2048];
        let verdict = match self.a.handle_tun_packet(packet, self.now, &mut out) {
            TunOutput::Send(t) => {
                let d = (ep(A_EP), t.to, t.payload.to_vec());
                self.run(vec![d]);
                TunVerdict::Sent
            }
            TunOutput::Reply(p) => TunVerdict::Reply(p.to_vec()),
            TunOutput::Nothing => TunVerdict::Nothing,
        };
        self.run(vec![]);
        verdict
    }
}

#[derive(Debug, PartialEq)]
pub(super) enum TunVerdict {
    Sent,
    Reply(Vec<u8>),
    Nothing,
}

#[test]
fn packets_cross_both_ways_after_the_handshake() {
    let mut p = Pair::new();
    let (a_ip, b_ip) = (p.a.addr().to_ipv6(), p.b.addr().to_ipv6());
    let first = udp_packet(a_ip, b_ip, b"hello over pilot");
    assert_eq!(
        p.send_from_a(&first),
        TunVerdict::Sent,
        "handshake initiation goes out"
    );
    // The first packet waited in the tunnel's queue and was flushed once the session came up.
    assert_eq!(p.b_tun, vec![first.clone()]);

    let back = udp_packet(b_ip, a_ip, b"and back");
    let mut out = vec![0u8; 2048];
    let TunOutput::Send(t) = p.b.handle_tun_packet(&back, p.now, &mut out) else {
        panic!("session is up: data goes straight out")
    };
    assert_eq!(t.to, ep(A_EP));
    assert!(
        !t.payload.windows(8).any(|w| w == b"and back"),
        "payload is encrypted"
    );
    let d = (ep(B_EP), t.to, t.payload.to_vec());
    p.run(vec![d]);
    assert_eq!(p.a_tun, vec![back.clone()]);
    assert_eq!(p.a.peers(p.now).next().unwrap().path, PathKind::Direct);
    assert_eq!(p.a.counters().iter().map(|(_, n)| n).sum::<u64>(), 0);

    // One session, counted on both sides; the tunnels carried exactly the two packets.
    assert_eq!(
        (p.a.counters().handshakes, p.b.counters().handshakes),
        (1, 1)
    );
    let a = p.a.traffic().next().unwrap();
    let b = p.b.traffic().next().unwrap();
    assert_eq!((a.addr, b.addr), (p.b.addr(), p.a.addr()));
    assert_eq!(
        (a.tx_bytes, a.rx_bytes),
        (first.len() as u64, back.len() as u64)
    );
    assert_eq!(
        (b.tx_bytes, b.rx_bytes),
        (back.len() as u64, first.len() as u64)
    );
    assert_eq!(
        p.a.counters().relay_tx_bytes,
        0,
        "static peers never use the relay"
    );
}

#[test]
fn forged_inner_source_is_dropped_and_counted() {
    let mut p = Pair::new();
    let (a_ip, b_ip) = (p.a.addr().to_ipv6(), p.b.addr().to_ipv6());
    p.send_from_a(&udp_packet(a_ip, b_ip, b"warm up"));
    assert_eq!(p.b_tun.len(), 1);

    // A's kernel emits a packet claiming to come from another overlay node, and from outside.
    for forged_src in ["fd70::1234:5678:9abc", "2001:db8::1"] {
        let forged = udp_packet(forged_src.parse().unwrap(), b_ip, b"forged");
        assert_eq!(p.send_from_a(&forged), TunVerdict::Sent);
    }
    assert_eq!(p.b_tun.len(), 1, "nothing forged reached B's TUN");
    assert_eq!(p.b.counters().get(DropReason::SpoofedSource), 2);
}

#[test]
fn decrypted_packet_for_another_destination_is_dropped() {
    // A malicious peer holding A's real key encrypts whatever it likes.
    let (ia, ib) = (identity(1), identity(2));
    let mut b = node(2, &[(1, Some(A_EP))]);
    let mut evil = wg_peer(&ia, &ib, 7);
    let now = Instant::now();
    let mut out = vec![0u8; 2048];
    let mut back = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(init) = evil.format_handshake_initiation(&mut out, false) else {
        panic!()
    };
    let NetOutput::Send(resp) = b.handle_datagram(ep(A_EP), init, now, &mut back) else {
        panic!("B answers A's key")
    };
    assert!(matches!(
        evil.decapsulate(None, resp.payload, &mut out),
        TunnResult::WriteToNetwork(_)
    ));
    let elsewhere = udp_packet(
        ia.address().to_ipv6(),
        "fd70::aaaa:bbbb:cccc".parse().unwrap(),
        b"x",
    );
    let TunnResult::WriteToNetwork(d) = evil.encapsulate(&elsewhere, &mut out) else {
        panic!()
    };
    assert_eq!(
        b.handle_datagram(ep(A_EP), d, now, &mut back),
        NetOutput::Nothing
    );
    assert_eq!(b.counters().get(DropReason::WrongDestination), 1);

    let to_b = udp_packet(ia.address().to_ipv6(), ib.address().to_ipv6(), b"fine");
    let TunnResult::WriteToNetwork(d) = evil.encapsulate(&to_b, &mut out) else {
        panic!()
    };
    assert_eq!(
        b.handle_datagram(ep(A_EP), d, now, &mut back),
        NetOutput::Tun(&to_b[..])
    );
}

#[test]
fn handshake_from_an_unknown_key_gets_no_answer() {
    let (ib, ic) = (identity(2), identity(3));
    let mut b = node(2, &[]);
    let mut c = wg_peer(&ic, &ib, 1);
    let mut out = vec![0u8; 2048];
    let mut back = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(init) = c.format_handshake_initiation(&mut out, false) else {
        panic!()
    };
    assert_eq!(
        b.handle_datagram(ep(C_EP), init, Instant::now(), &mut back),
        NetOutput::Nothing
    );
    assert_eq!(b.counters().get(DropReason::UnknownPeer), 1);
    assert!(b.poll_transmit(Instant::now(), &mut back).is_none());
}

#[test]
fn packet_to_an_address_with_no_peer_gets_icmp_unreachable() {
    let mut p = Pair::new();
    let a_ip = p.a.addr().to_ipv6();
    let packet = udp_packet(a_ip, "fd70::dead:beef:1".parse().unwrap(), b"anyone?");
    let TunVerdict::Reply(icmp) = p.send_from_a(&packet) else {
        panic!("expected an ICMPv6 error")
    };
    assert_eq!(
        crate::wire::ip::ipv6_addrs(&icmp).unwrap().1,
        &a_ip.octets(),
        "error goes back to the sender"
    );
    assert_eq!(icmp[40], 1, "destination unreachable");
    assert_eq!(p.a.counters().get(DropReason::NoPeer), 1);
    // Errors are rate limited: a flood of them stops at the budget.
    let replies = (0..100)
        .filter(|_| matches!(p.send_from_a(&packet), TunVerdict::Reply(_)))
        .count();
    assert_eq!(replies, ICMP_ERRORS_PER_SEC as usize - 1);
    assert_eq!(p.a.counters().get(DropReason::NoPeer), 101);
}

#[test]
fn non_overlay_and_non_ipv6_packets_are_dropped() {
    let mut p = Pair::new();
    let a_ip = p.a.addr().to_ipv6();
    assert_eq!(
        p.send_from_a(&udp_packet(a_ip, "ff02::16".parse().unwrap(), b"mld")),
        TunVerdict::Nothing
    );
    assert_eq!(p.send_from_a(&[0x45; 60]), TunVerdict::Nothing);
    assert_eq!(p.a.counters().get(DropReason::NotOverlay), 1);
    assert_eq!(p.a.counters().get(DropReason::NotIpv6), 1);
}

#[test]
fn datagrams_are_demultiplexed_by_first_byte() {
    let mut p = Pair::new();
    let mut out = vec![0u8; 2048];
    for (bytes, reason) in [
        (&[0x50, 1, 2][..], DropReason::BadControl),
        (&[0x00, 1][..], DropReason::UnknownDatagram),
        (&[0x04, 0, 0, 0, 1][..], DropReason::BadWireGuard),
        (&[][..], DropReason::UnknownDatagram),
    ] {
        assert_eq!(
            p.b.handle_datagram(ep(C_EP), bytes, p.now, &mut out),
            NetOutput::Nothing
        );
        assert_eq!(
            p.b.counters().get(reason),
            1 + u64::from(reason == DropReason::UnknownDatagram && bytes.is_empty())
        );
    }
}

#[test]
fn ping_reply_is_consumed_and_reported() {
    let mut p = Pair::new();
    let b_addr = p.b.addr();
    p.a.ping(b_addr, 9, p.now).unwrap();
    p.run(vec![]);
    // B's kernel received the echo request; answer it as a kernel would.
    let [request] = &p.b_tun[..] else {
        panic!("one echo request expected, got {:?}", p.b_tun)
    };
    let ident = u16::from_be_bytes([request[44], request[45]]);
    let seq = u16::from_be_bytes([request[46], request[47]]);
    let mut reply = [0u8; 128];
    let n = crate::wire::ip::write_echo_reply(
        &mut reply,
        p.b.addr().to_ipv6(),
        p.a.addr().to_ipv6(),
        ident,
        seq,
        &request[48..],
    )
    .unwrap();
    let reply = reply[..n].to_vec();
    p.now += Duration::from_millis(5);
    let mut out = vec![0u8; 2048];
    let TunOutput::Send(t) = p.b.handle_tun_packet(&reply, p.now, &mut out) else {
        panic!()
    };
    let d = (ep(B_EP), t.to, t.payload.to_vec());
    p.run(vec![d]);
    assert!(
        p.a_tun.is_empty(),
        "our own ping reply is not written to the TUN"
    );
    let Some(Event::PingReply { peer, seq: 9, rtt }) = p.a.poll_event() else {
        panic!("no ping reply event")
    };
    assert_eq!(peer, p.b.key());
    assert!(rtt >= Duration::from_millis(5));
    assert_eq!(p.a.poll_event(), None);
    // A second, unsolicited copy of the reply is consumed too, and reports nothing.
    let TunOutput::Send(t) = p.b.handle_tun_packet(&reply, p.now, &mut out) else {
        panic!()
    };
    let d = (ep(B_EP), t.to, t.payload.to_vec());
    p.run(vec![d]);
    assert!(p.a_tun.is_empty());
    assert_eq!(p.a.poll_event(), None);
    assert_eq!(
        p.a.ping("fd70::1:2:3".parse().unwrap(), 1, p.now),
        Err(PingError::NoSuchPeer("1.2.3".parse().unwrap()))
    );
}

#[test]
fn timers_start_the_handshake_and_keep_it() {
    let mut p = Pair::new();
    p.a.handle_timeout(p.now);
    p.b.handle_timeout(p.now);
    // Nothing to time: no rendezvous, no keepalive, no traffic.
    assert_eq!(p.a.poll_timeout(), None);
    // No traffic yet: WireGuard starts no handshake by itself without keepalive.
    p.run(vec![]);
    assert!(p.a_tun.is_empty() && p.b_tun.is_empty());
}

#[test]
fn bad_peer_configs_are_refused() {
    let (ia, ib) = (identity(1), identity(2));
    let mut a = node(1, &[(2, None)]);
    assert_eq!(
        a.add_peer(&PeerConfig {
            key: ib.public_key(),
            endpoint: None
        }),
        Err(PeerError::Duplicate(ib.public_key()))
    );
    assert_eq!(
        a.add_peer(&PeerConfig {
            key: ia.public_key(),
            endpoint: None
        }),
        Err(PeerError::OwnKey(ia.public_key()))
    );
    // A peer with no endpoint yet: packets to it are refused with an ICMPv6 error, not sent.
    let pkt = udp_packet(ia.address().to_ipv6(), ib.address().to_ipv6(), b"x");
    assert!(matches!(
        a.handle_tun_packet(&pkt, Instant::now(), &mut [0u8; 2048]),
        TunOutput::Reply(_)
    ));
    assert_eq!(a.counters().get(DropReason::NoEndpoint), 1);
}

#[test]
fn the_dns_stub_answers_own_and_trusted_names_only() {
    use crate::wire::dns::{tests::query, TYPE_A, TYPE_AAAA};
    let config = NodeConfig {
        standby_rendezvous: Vec::new(),
        shared_registry: false,
        mtu: 1380,
        identity: identity(1),
        peers: Vec::new(),
        trust: Default::default(),
        hostname: Some("alice".parse().unwrap()),
        auto_approve: false,
        keepalive: None,
        seed: 1,
        rendezvous: None,
        lan: Vec::new(),
        endpoint: None,
        local_port: 51870,
        clock: WallClock::new(Instant::now(), 1_800_000_000_000),
    };
    let mut a = Node::new(config).unwrap();
    let mut out = vec![0u8; 2048];
    let mut ask = |a: &mut Node, name: &str, qtype: u16| -> (u8, Vec<u8>) {
        match a.handle_tun_packet(&query(name, qtype), Instant::now(), &mut out) {
            TunOutput::Reply(reply) => (reply[48 + 3] & 0x0f, reply.to_vec()),
            other => panic!("{name}: {other:?}"),
        }
    };
    let (rcode, reply) = ask(&mut a, "Alice.pilot", TYPE_AAAA);
    assert_eq!(rcode, 0);
    assert_eq!(
        &reply[reply.len() - 16..],
        &identity(1).address().to_ipv6().octets()
    );
    assert_eq!(
        ask(&mut a, "alice.pilot", TYPE_A).1.len(),
        reply.len() - 28,
        "A: no record"
    );
    assert_eq!(
        ask(&mut a, "bob.pilot", TYPE_AAAA).0,
        3,
        "unknown: NXDOMAIN"
    );
    assert_eq!(
        ask(&mut a, "example.com", TYPE_AAAA).0,
        5,
        "outside the zone: REFUSED"
    );
    // Other reserved addresses are not answered.
    let to_reserved = udp_packet(
        identity(1).address().to_ipv6(),
        "fd70::7".parse().unwrap(),
        b"x",
    );
    assert!(matches!(
        a.handle_tun_packet(&to_reserved, Instant::now(), &mut out),
        TunOutput::Reply(_)
    ));
    assert_eq!(a.counters().get(DropReason::NoPeer), 1);
}

#[test]
fn handshake_with_a_configured_peer_is_already_trusted_even_without_a_rendezvous() {
    let mut a = node(1, &[(2, Some(B_EP))]);
    let now = Instant::now();
    assert_eq!(
        a.handshake(identity(2).public_key(), "again", now),
        Ok(HandshakeOutcome::AlreadyTrusted)
    );
    assert_eq!(
        a.handshake(identity(3).public_key(), "", now),
        Err(VerbError::NoRendezvous),
        "anyone else still needs the rendezvous"
    );
    let mut out = vec![0u8; 2048];
    assert!(a.poll_transmit(now, &mut out).is_none(), "nothing was sent");
}

#[test]
fn a_peer_whose_clock_went_back_gets_a_session_again_once_it_was_silent() {
    // boringtun refuses a handshake dated no later than the peer's last one (replay
    // protection). A peer that rebooted without RTC stamps its handshakes with a clock that
    // went back: it was refused until this node restarted.
    let (ia, ib) = (identity(1), identity(2));
    let mut b = node(2, &[(1, Some(A_EP))]);
    let tunnel = || wg_peer(&ia, &ib, 7);
    let (mut out, mut back) = (vec![0u8; 2048], vec![0u8; 2048]);
    // The rebooted peer's first handshake, dated by the clock that went back: made first.
    let mut rebooted = tunnel();
    let TunnResult::WriteToNetwork(d) = rebooted.format_handshake_initiation(&mut out, false)
    else {
        panic!()
    };
    let older = d.to_vec();
    std::thread::sleep(Duration::from_millis(2));
    // Before the reboot: a session, as usual.
    let mut before = tunnel();
    let TunnResult::WriteToNetwork(init) = before.format_handshake_initiation(&mut out, false)
    else {
        panic!()
    };
    let now = Instant::now();
    assert!(matches!(
        b.handle_datagram(ep(A_EP), init, now, &mut back),
        NetOutput::Send(_)
    ));
    // While the peer is heard from, an older handshake is a replay: refused, nothing reset.
    let soon = now + Duration::from_secs(1);
    assert_eq!(
        b.handle_datagram(ep(A_EP), &older, soon, &mut back),
        NetOutput::Nothing
    );
    assert_eq!(b.counters().peer_clock_resets, 0);
    // After a silence (the reboot), it starts the peer afresh and answers.
    let later = now + Duration::from_secs(20);
    let NetOutput::Send(resp) = b.handle_datagram(ep(A_EP), &older, later, &mut back) else {
        panic!("the rebooted peer's handshake is refused")
    };
    assert!(matches!(
        rebooted.decapsulate(None, resp.payload, &mut out),
        TunnResult::WriteToNetwork(_)
    ));
    assert_eq!(b.counters().peer_clock_resets, 1);
    // Not again within the interval, whatever arrives.
    let again = later + Duration::from_secs(20);
    assert_eq!(
        b.handle_datagram(ep(A_EP), &older, again, &mut back),
        NetOutput::Nothing
    );
    assert_eq!(b.counters().peer_clock_resets, 1);
}

#[test]
fn keepalives_to_many_peers_go_out_together() {
    // Peers last sent to at different moments: the keepalives due within half an interval go
    // with the first one due, and stay in step after, so the node wakes once an interval.
    let mut a = node(
        1,
        &[
            (2, Some(B_EP)),
            (3, Some("198.51.100.3:51870")),
            (4, Some("198.51.100.4:51870")),
        ],
    );
    a.keepalive = Some(25);
    let t0 = a.clock.origin();
    a.handle_timeout(t0);
    a.peers[1].keepalive_from = Some(t0 + Duration::from_secs(5));
    a.peers[2].keepalive_from = Some(t0 + Duration::from_secs(10));
    a.touch();
    let mut out = vec![0u8; 2048];
    let mut wakes = Vec::new();
    while let Some((t, why)) = a
        .poll_timeout()
        .filter(|(t, _)| *t < t0 + Duration::from_secs(60))
    {
        a.handle_timeout(t);
        let mut sent = 0;
        while a.poll_transmit(t, &mut out).is_some() {
            sent += 1;
        }
        wakes.push(((t - t0).as_secs(), why, sent));
    }
    // Each goes out as a handshake initiation (no session yet); at 50 s boringtun, whose clock
    // these tests do not move, sees its handshakes as just sent and holds the retries.
    let times: Vec<_> = wakes.iter().map(|(t, why, _)| (*t, *why)).collect();
    assert_eq!(
        times,
        [(25, "keepalive"), (50, "keepalive")],
        "one wake an interval: {wakes:?}"
    );
    assert_eq!(wakes[0].2, 3, "every peer's keepalive in the first");
}

#[test]
fn junk_from_the_internet_does_not_make_the_timer_table_be_read_again() {
    // An idle node reads its table afresh after an input that may change a deadline; junk
    // (a datagram that is only dropped) must not, or a flood would walk every peer per batch.
    let mut a = node(1, &[(2, Some(B_EP))]);
    a.keepalive = Some(25);
    let now = a.clock.origin();
    a.handle_timeout(now);
    let before = a.generation;
    let mut out = vec![0u8; 2048];
    let stranger = ep("203.0.113.99:4444");
    for junk in [&[0xff_u8; 40][..], &[1u8; 148][..], &[4u8; 64][..]] {
        assert_eq!(
            a.handle_datagram(stranger, junk, now, &mut out),
            NetOutput::Nothing
        );
        assert!(a.poll_transmit(now, &mut out).is_none());
    }
    // (A junk initiation starts the handshake rate limit's second: that deadline is kept
    // apart from the table, at no cost.)
    assert_eq!(a.generation, before);
    // A verb does.
    let _ = a.lookup(
        crate::wire::control::Query::Name("bob".parse().unwrap()),
        now,
    );
    assert_ne!(a.generation, before);
}

#[test]
fn an_idle_node_wakes_for_its_deadlines_only_and_resets_no_rate_limit_nobody_used() {
    // Issue 16, item 1: a node with nothing to do woke four times a second forever, then once.
    let mut a = node(1, &[(2, Some(B_EP))]);
    a.keepalive = Some(25);
    let every = Duration::from_secs(25);
    let now = a.clock.origin();
    a.handle_timeout(now);
    assert_eq!(a.poll_timeout(), Some((now + every, "keepalive")));
    // A handshake message starts the rate limit's second; it is reset once, then not again.
    // Our answer to it is a datagram sent: the keepalive is due an interval after it.
    let (ia, ib) = (identity(2), identity(1));
    let mut b = wg_peer(&ia, &ib, 9);
    let mut out = vec![0u8; 2048];
    let mut back = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(init) = b.format_handshake_initiation(&mut out, false) else {
        panic!()
    };
    let soon = now + Duration::from_millis(400);
    let NetOutput::Send(response) = a.handle_datagram(ep(B_EP), init, soon, &mut back) else {
        panic!()
    };
    // The peer confirms the session with a keepalive of its own.
    let mut confirm = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(confirm) = b.decapsulate(None, response.payload, &mut confirm)
    else {
        panic!()
    };
    let mut sink = vec![0u8; 2048];
    assert_eq!(
        a.handle_datagram(ep(B_EP), confirm, soon, &mut sink),
        NetOutput::Nothing
    );
    let reset = soon + Duration::from_secs(1);
    assert_eq!(
        a.poll_timeout(),
        Some((reset, "handshake rate limit reset"))
    );
    a.handle_timeout(reset);
    assert_eq!(a.poll_timeout(), Some((soon + every, "keepalive")));
    // Early calls change nothing.
    a.handle_timeout(reset + Duration::from_secs(3));
    assert_eq!(a.poll_timeout(), Some((soon + every, "keepalive")));
    // The keepalive: an empty data packet in the session, and the next one an interval on.
    let at = soon + every;
    a.handle_timeout(at);
    let t = a.poll_transmit(at, &mut back).expect("a keepalive");
    assert_eq!((t.to, t.payload.len(), t.payload[0]), (ep(B_EP), 32, 4));
    assert!(a.poll_transmit(at, &mut back).is_none());
    assert_eq!(a.poll_timeout(), Some((at + every, "keepalive")));
    // Data: WireGuard's timers run at the tick while it counts (16 s), then rest.
    let data = at + Duration::from_secs(2);
    let packet = udp_packet(a.ip, identity(2).address().to_ipv6(), b"hello");
    assert!(matches!(
        a.handle_tun_packet(&packet, data, &mut back),
        TunOutput::Send(_)
    ));
    let (first, why) = a.poll_timeout().unwrap();
    assert!(
        first <= data + Duration::from_secs(1) && why == "wireguard timers",
        "{why}"
    );
    let mut t = data;
    let mut wakes = 0;
    while let Some((next, why)) = a.poll_timeout().filter(|(n, _)| *n < data + every) {
        assert_eq!(why, "wireguard timers");
        t = t.max(next);
        a.handle_timeout(t);
        while a.poll_transmit(t, &mut back).is_some() {}
        wakes += 1;
    }
    assert!((16..=18).contains(&wakes), "{wakes} wake-ups");
    // The keepalive went with the tick half an interval after the data (13 s: see
    // `Node::keepalive_soon`); the next is an interval after it.
    assert_eq!(
        a.poll_timeout(),
        Some((data + Duration::from_secs(13) + every, "keepalive"))
    );
}

#[test]
fn stale_data_from_a_peer_at_another_index_after_a_restart_starts_a_handshake_at_once() {
    // a knows b second; after a restart, first. b's session still names the old index, so
    // the index no longer finds b: a used to drop the data and wait for b's timers (15 s of
    // silence, forever in a simulation whose clock boringtun does not read).
    let mut pair = Pair {
        a: node(1, &[(3, Some("192.0.2.3:51870")), (2, Some(B_EP))]),
        b: node(2, &[(1, Some(A_EP))]),
        now: Instant::now(),
        a_tun: Vec::new(),
        b_tun: Vec::new(),
    };
    let (ia, ib) = (pair.a.addr().to_ipv6(), pair.b.addr().to_ipv6());
    assert_eq!(
        pair.send_from_a(&udp_packet(ia, ib, b"one")),
        TunVerdict::Sent
    );
    assert_eq!(pair.b_tun.len(), 1);
    pair.a = node(1, &[(2, Some(B_EP))]);
    let mut out = vec![0u8; 2048];
    let mut from_b = |pair: &mut Pair, payload: &[u8]| {
        let TunOutput::Send(t) =
            pair.b
                .handle_tun_packet(&udp_packet(ib, ia, payload), pair.now, &mut out)
        else {
            panic!("b has a session")
        };
        let d = (ep(B_EP), t.to, t.payload.to_vec());
        pair.run(vec![d]);
    };
    // The first is lost with the old session; a handshakes at once, and the next crosses.
    from_b(&mut pair, b"stale");
    assert_eq!(pair.a.counters().get(DropReason::BadWireGuard), 1);
    assert!(pair.a_tun.is_empty());
    assert_eq!(pair.a.counters().handshakes, 1);
    from_b(&mut pair, b"fresh");
    assert_eq!(pair.a_tun.len(), 1);
    assert!(pair.a_tun[0].ends_with(b"fresh"));
}
