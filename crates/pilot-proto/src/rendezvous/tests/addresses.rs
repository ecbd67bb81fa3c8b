//! A server with several addresses (the daemon bound to a wildcard): answers leave from the
//! address the question was sent to, everything else sent to a node from the address its
//! registration was sent to, since the node's NAT lets in nothing else.

use std::net::{IpAddr, SocketAddr};

use super::*;

const FIRST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 10));
const SECOND: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 11));

impl Sim {
    /// `datagram` from `from` to the server's address `local_ip` at `port`: what goes back,
    /// and the address it leaves from.
    fn send_to_ip(
        &mut self,
        port: Port,
        local_ip: IpAddr,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Option<(Option<IpAddr>, Sent)> {
        self.deliver(port, Some(local_ip), from, datagram)
    }

    /// Everything queued: the address it leaves from, where it goes, and what it says.
    fn drain_with_sources(&mut self) -> Vec<(Option<IpAddr>, SocketAddr, Message)> {
        let mut out = Vec::new();
        while let Some((src_ip, sent)) = self.poll_with_source() {
            out.push((src_ip, sent.1, self.message(&sent)));
        }
        out
    }
}

impl Client {
    /// Sends `message` to the server's address `local_ip`; the answer and where it left from.
    fn ask_at(
        &mut self,
        sim: &mut Sim,
        port: Port,
        local_ip: IpAddr,
        message: &Message,
    ) -> (Option<IpAddr>, Message) {
        let d = self.sealed(sim, message);
        let (src, sent) = sim
            .send_to_ip(port, local_ip, self.at, &d)
            .expect("an answer");
        (src, sim.message(&sent))
    }

    /// Registers at the server's address `local_ip` as a node does (a challenge first, from
    /// a new endpoint), checking that every answer leaves from that address.
    fn register_at(&mut self, sim: &mut Sim, local_ip: IpAddr) {
        for _ in 0..2 {
            let register = Message::Register {
                lan: vec![],
                hostname: None,
                trust_digest: sim.server.ledger().digest_of(&self.key()),
                cookie: self.cookie,
            };
            let (src, reply) = self.ask_at(sim, Port::Main, local_ip, &register);
            assert_eq!(src, Some(local_ip), "{reply:?}");
            match reply {
                Message::Challenge { cookie, .. } => self.cookie = Some(cookie),
                Message::Registered { .. } => return,
                other => panic!("{other:?}"),
            }
        }
        panic!("challenged twice in a row")
    }
}

#[test]
fn answers_leave_from_the_address_asked_and_the_rest_from_where_the_node_registered() {
    let mut sim = Sim::new();
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut b = Client::new(2, "192.0.2.2:40002");
    a.register_at(&mut sim, SECOND);
    b.register_at(&mut sim, FIRST);

    // NAT probes are answered from the address and port asked, wherever the node registered.
    for (port, at) in [(Port::Alt, SECOND), (Port::Alt, FIRST), (Port::Main, FIRST)] {
        let (src, reply) = a.ask_at(&mut sim, port, at, &Message::NatProbe);
        assert!(matches!(reply, Message::NatProbeReply { .. }), "{reply:?}");
        assert_eq!(src, Some(at));
    }

    // The trust statement is acknowledged from where it was submitted, and delivered to b
    // from where b registered.
    let record = b.record_with(&a, sim.now_ms());
    let submit = Message::Submit {
        statement: record.clone(),
    };
    let (src, reply) = a.ask_at(&mut sim, Port::Main, SECOND, &submit);
    assert!(matches!(reply, Message::Stored { .. }), "{reply:?}");
    assert_eq!(src, Some(SECOND));
    let queued = sim.drain_with_sources();
    let Some((src, to, Message::Deliver { id, .. })) = queued.first() else {
        panic!("{queued:?}")
    };
    assert_eq!((*src, *to, queued.len()), (Some(FIRST), b.at, 1));
    b.ack(&mut sim, *id);
    assert!(sim.server.ledger().trusted(&a.key(), &b.key()));

    // An introduction: a's Punch answers a, b's is sent to b on the server's initiative.
    let connect = Message::Connect { target: b.key() };
    let (src, reply) = a.ask_at(&mut sim, Port::Main, SECOND, &connect);
    assert!(matches!(reply, Message::Punch { .. }), "{reply:?}");
    assert_eq!(src, Some(SECOND));
    let queued = sim.drain_with_sources();
    assert!(
        matches!(queued[..], [(Some(FIRST), to, Message::Punch { .. })] if to == b.at),
        "{queued:?}"
    );

    // Relayed frames leave from the address their target registered at, whichever address
    // the sender used.
    let mut frame = vec![0u8; 100];
    let mut relay = |sim: &mut Sim, from: &Client, to: &Client, at: IpAddr| {
        let n = write_relay(&mut frame, RELAY_TO, &to.key(), b"wg").unwrap();
        let (src, sent) = sim
            .send_to_ip(Port::Main, at, from.at, &frame[..n])
            .expect("relayed");
        assert_eq!(sent.1, to.at);
        src
    };
    assert_eq!(relay(&mut sim, &a, &b, SECOND), Some(FIRST));
    assert_eq!(relay(&mut sim, &b, &a, FIRST), Some(SECOND));

    // a now registers at the first address (its configuration changed): what is sent to it
    // follows.
    a.register_at(&mut sim, FIRST);
    assert_eq!(relay(&mut sim, &b, &a, FIRST), Some(FIRST));
}

#[test]
fn without_addresses_from_the_daemon_nothing_names_a_source() {
    // The daemon bound to one address passes none in; the kernel answers from it.
    let mut sim = Sim::new();
    let (mut a, b) = pair(&mut sim);
    let d = a.sealed(&sim, &Message::Connect { target: b.key() });
    let t = sim
        .server
        .handle_datagram(Port::Main, None, a.at, &d, sim.now, &mut sim.out)
        .expect("a punch");
    assert_eq!(t.src_ip, None);
    let t = sim.server.poll_transmit(&mut sim.out).expect("b's punch");
    assert_eq!((t.src_ip, t.to), (None, b.at));
}

#[test]
fn ipv4_mapped_addresses_from_a_dual_stack_socket_count_as_ipv4() {
    let mut sim = Sim::new();
    let mut a = Client::new(1, "198.51.100.1:40001");
    let IpAddr::V4(second) = SECOND else {
        unreachable!()
    };
    let mapped = IpAddr::V6(second.to_ipv6_mapped());
    let (src, _) = a.ask_at(&mut sim, Port::Alt, mapped, &Message::NatProbe);
    assert_eq!(src, Some(SECOND));
}

#[test]
fn a_registration_dated_off_is_told_the_time_from_the_address_it_asked() {
    let mut sim = Sim::new();
    let mut a = Client::new(1, "198.51.100.1:40001");
    let register = Message::Register {
        lan: vec![],
        hostname: None,
        trust_digest: 0,
        cookie: None,
    };
    let old = a.sealed(&sim, &register);
    sim.now += std::time::Duration::from_secs(3600);
    let (src, sent) = sim
        .send_to_ip(Port::Main, SECOND, a.at, &old)
        .expect("told the time");
    let reply = sim.message(&sent);
    assert!(
        matches!(
            reply,
            Message::Refused {
                code: RefusalCode::Stale,
                ..
            }
        ),
        "{reply:?}"
    );
    assert_eq!(src, Some(SECOND));
}
