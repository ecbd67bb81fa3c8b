//! A node whose UDP is blocked reaches a real (sans-IO) rendezvous over its stream, and comes
//! back to UDP once UDP works (see `stream`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::stream::{STREAM_AFTER, UDP_RECHECK};
use super::tests::{ep, identity};
use super::*;
use crate::clock::WallClock;
use crate::rendezvous::streams::stream_endpoint;
use crate::rendezvous::{Config, MemoryStore, Port, Server};

const RDV: &str = "203.0.113.10:7000";
const RDV_ALT: &str = "203.0.113.10:7001";
const TLS: &str = "203.0.113.10:443";
/// The node's public UDP endpoint as the rendezvous sees it.
const PUBLIC: &str = "198.51.100.7:40000";

struct World {
    node: Node,
    server: Server,
    now: Instant,
    out: Vec<u8>,
    server_out: Vec<u8>,
    /// The network drops every UDP datagram between the two.
    udp_blocked: bool,
    /// The daemon's TLS never connects: the stream carries nothing.
    stream_dead: bool,
    /// The daemon's connection number (a reconnection is a new one).
    conn: u32,
    /// Datagrams that went each way, by path: (UDP, stream).
    carried: (usize, usize),
}

impl World {
    fn new() -> World {
        let clock = WallClock::new(Instant::now(), 1_800_000_000_000);
        let now = clock.origin();
        let rdv = identity(9);
        let server_identity = Identity::from_secret_bytes(&rdv.signing_key().to_bytes());
        let config = Config::new(server_identity, 7000, 7001);
        let server = Server::new(config, Box::new(MemoryStore::new()), 3, clock, now).unwrap();
        let node = Node::new(NodeConfig {
            identity: identity(1),
            peers: Vec::new(),
            trust: Default::default(),
            hostname: None,
            auto_approve: false,
            keepalive: None,
            seed: 5,
            rendezvous: Some(RendezvousConfig {
                addr: ep(RDV),
                alt_port: 7001,
                key: Some(rdv.public_key()),
                stream: Some(ep(TLS)),
            }),
            standby_rendezvous: Vec::new(),
            shared_registry: false,
            mtu: 1380,
            lan: Vec::new(),
            endpoint: None,
            local_port: 51870,
            clock,
        })
        .unwrap();
        World {
            node,
            server,
            now,
            out: vec![0; 2048],
            server_out: vec![0; 2048],
            udp_blocked: true,
            stream_dead: false,
            conn: 1,
            carried: (0, 0),
        }
    }

    /// The stream's endpoint at the rendezvous.
    fn stream_endpoint(&self) -> SocketAddr {
        stream_endpoint(0x1234, self.conn)
    }

    /// Runs both for `d` in 100 ms steps, carrying datagrams as the daemons would: what goes
    /// to the rendezvous' main address down the stream while the node holds one, the rest
    /// over UDP unless it is blocked.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.node.handle_timeout(self.now);
            self.server.handle_timeout(self.now);
            let mut to_server = Vec::new();
            while let Some(t) = self.node.poll_transmit(self.now, &mut self.out) {
                to_server.push((t.to, t.payload.to_vec()));
            }
            for (to, datagram) in to_server {
                let stream = self.node.rendezvous_stream();
                let (port, from) = match stream {
                    Some(s) if s.rendezvous == to && self.stream_dead => continue,
                    Some(s) if s.rendezvous == to => (Port::Stream, self.stream_endpoint()),
                    _ if self.udp_blocked => continue,
                    _ if to == ep(RDV) => (Port::Main, ep(PUBLIC)),
                    _ if to == ep(RDV_ALT) => (Port::Alt, ep(PUBLIC)),
                    _ => continue,
                };
                let reply = self.server.handle_datagram(
                    port,
                    None,
                    from,
                    &datagram,
                    self.now,
                    &mut self.server_out,
                );
                let mut replies: Vec<(Port, SocketAddr, Vec<u8>)> = reply
                    .map(|t| (t.port, t.to, t.payload.to_vec()))
                    .into_iter()
                    .collect();
                self.server.commit(self.now);
                while let Some(t) = self.server.poll_transmit(&mut self.server_out) {
                    replies.push((t.port, t.to, t.payload.to_vec()));
                }
                for (port, _, datagram) in replies {
                    let from = match port {
                        Port::Stream => {
                            self.carried.1 += 1;
                            ep(RDV)
                        }
                        _ if self.udp_blocked => continue,
                        Port::Main => {
                            self.carried.0 += 1;
                            ep(RDV)
                        }
                        Port::Alt => {
                            self.carried.0 += 1;
                            ep(RDV_ALT)
                        }
                    };
                    self.node
                        .handle_datagram(from, &datagram, self.now, &mut self.out);
                }
            }
            if self.now >= end {
                return;
            }
            self.now += Duration::from_millis(100);
        }
    }
}

#[test]
fn blocked_udp_moves_the_link_to_the_stream_and_working_udp_brings_it_back() {
    let mut w = World::new();
    w.run(STREAM_AFTER - Duration::from_secs(1));
    assert_eq!(w.node.rendezvous_stream(), None, "UDP is given its time");
    assert!(!w.node.is_registered(w.now));

    w.run(Duration::from_secs(2));
    let target = w.node.rendezvous_stream().expect("on the stream");
    assert_eq!(
        (target.tls, target.rendezvous, target.key),
        (ep(TLS), ep(RDV), Some(identity(9).public_key()))
    );
    w.run(Duration::from_secs(1));
    assert!(w.node.is_registered(w.now), "registered over the stream");
    assert!(w.carried.1 > 0 && w.carried.0 == 0);
    let status = w.node.net_status(w.now);
    assert_eq!(status.observed, None, "the stream's endpoint is not ours");
    assert_eq!(status.stream.as_deref(), Some(TLS));
    assert_eq!(w.node.counters().rendezvous_streams, 1);
    // It stays there, registered, while UDP stays blocked.
    w.run(UDP_RECHECK * 2);
    assert!(w.node.is_registered(w.now));
    assert!(w.node.rendezvous_stream().is_some());

    // UDP works again: within a recheck the node is back on UDP, registered there and
    // measuring its NAT.
    w.udp_blocked = false;
    w.run(UDP_RECHECK + Duration::from_secs(2));
    assert_eq!(w.node.rendezvous_stream(), None, "back on UDP");
    assert!(w.node.is_registered(w.now));
    let status = w.node.net_status(w.now);
    assert_eq!(status.observed.as_deref(), Some(PUBLIC));
    assert_eq!(status.stream, None);
}

#[test]
fn a_reconnected_stream_is_registered_again_at_once() {
    let mut w = World::new();
    w.run(STREAM_AFTER + Duration::from_secs(2));
    let key = w.node.key();
    let at = |w: &World| w.server.registration(&key, w.now).map(|r| r.observed);
    assert_eq!(at(&w), Some(w.stream_endpoint()));
    // The connection dropped and the daemon made a new one: a new endpoint to the rendezvous.
    w.conn = 2;
    w.node.stream_connected(w.now);
    w.run(Duration::from_secs(1));
    assert_eq!(
        at(&w),
        Some(w.stream_endpoint()),
        "not a keepalive (25 s) later"
    );
}

#[test]
fn a_stream_nobody_answers_is_named_as_the_problem() {
    let mut w = World::new();
    w.stream_dead = true;
    w.run(STREAM_AFTER + Duration::from_secs(8));
    assert!(w.node.rendezvous_stream().is_some());
    let problem = w.node.net_status(w.now).problem.expect("a problem");
    assert!(
        problem.contains("none over TLS at 203.0.113.10:443"),
        "{problem}"
    );
}

#[test]
fn a_rendezvous_without_a_stream_address_stays_on_udp() {
    let mut w = World::new();
    if let Some(link) = &mut w.node.link {
        link.config.stream = None;
    }
    w.run(STREAM_AFTER * 3);
    assert_eq!(w.node.rendezvous_stream(), None);
    assert_eq!(w.node.counters().rendezvous_streams, 0);
}
