//! `release_name` against the real (sans-IO) rendezvous: the node stops claiming its name and
//! the rendezvous frees it; refusals change nothing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::tests::{ep, identity, node_with_rendezvous};
use super::*;
use crate::clock::WallClock;
use crate::rendezvous::{Config, MemoryStore, Port, Server};

/// A node and a rendezvous joined by a lossless link, with a fake clock.
pub(super) struct Link {
    pub(super) node: Node,
    server: Server,
    store: MemoryStore,
    pub(super) rdv: SocketAddr,
    at: SocketAddr,
    pub(super) now: Instant,
    /// The rendezvous answers nothing while false.
    pub(super) up: bool,
}

impl Link {
    pub(super) fn new(hostname: &str) -> Link {
        let rendezvous = identity(9);
        let rdv = ep("203.0.113.10:7000");
        let clock = WallClock::new(Instant::now(), 1_800_000_000_000);
        let now = clock.origin();
        let mut node = node_with_rendezvous(1, &rendezvous, rdv, Vec::new(), None, clock);
        node.hostname = Some(hostname.parse().unwrap());
        let store = MemoryStore::new();
        let config = Config::new(rendezvous, 7000, 7001);
        let server = Server::new(config, Box::new(store.clone()), 3, clock, now).unwrap();
        Link {
            node,
            server,
            store,
            rdv,
            at: ep("198.51.100.1:51870"),
            now,
            up: true,
        }
    }

    /// Moves the clock by `by` in 100 ms steps, carrying every datagram both ways.
    pub(super) fn run(&mut self, by: Duration) {
        let until = self.now + by;
        let mut out = vec![0u8; 65535];
        let mut reply = vec![0u8; 65535];
        while self.now < until {
            self.node.handle_timeout(self.now);
            self.server.handle_timeout(self.now);
            while let Some(t) = self.node.poll_transmit(self.now, &mut out) {
                let port = if t.to == self.rdv {
                    Port::Main
                } else {
                    Port::Alt
                };
                let datagram = t.payload.to_vec();
                if !self.up {
                    continue;
                }
                let answer = self
                    .server
                    .handle_datagram(port, None, self.at, &datagram, self.now, &mut reply)
                    .map(|a| (a.port, a.payload.to_vec()));
                // A registration that changed is answered once written (`commit`).
                self.server.commit(self.now);
                let mut answers: Vec<(Port, Vec<u8>)> = answer.into_iter().collect();
                while let Some(t) = self.server.poll_transmit(&mut reply) {
                    answers.push((t.port, t.payload.to_vec()));
                }
                for (port, bytes) in answers {
                    let from = if port == Port::Main {
                        self.rdv
                    } else {
                        SocketAddr::new(self.rdv.ip(), 7001)
                    };
                    self.node.handle_datagram(from, &bytes, self.now, &mut out);
                }
            }
            self.now += Duration::from_millis(100);
        }
    }

    fn holder(&self, name: &str) -> Option<crate::identity::NodeKey> {
        self.store.holder(&name.parse().unwrap())
    }

    fn release_event(&mut self) -> Option<(Hostname, ReleaseOutcome)> {
        while let Some(event) = self.node.poll_event() {
            if let Event::NameReleased { name, outcome } = event {
                return Some((name, outcome));
            }
        }
        None
    }
}

#[test]
fn a_released_name_is_freed_at_the_rendezvous_and_no_longer_claimed() {
    let mut link = Link::new("edge-7");
    link.run(Duration::from_secs(1));
    assert!(link.node.is_registered(link.now));
    assert_eq!(link.holder("edge-7"), Some(link.node.key()));

    assert_eq!(
        link.node.release_name(link.now),
        Ok("edge-7".parse().unwrap())
    );
    assert_eq!(link.node.hostname(), None, "stops claiming at once");
    assert_eq!(
        link.node.release_name(link.now),
        Err(ReleaseError::Busy("edge-7".parse().unwrap()))
    );
    link.run(Duration::from_secs(1));
    assert_eq!(
        link.release_event(),
        Some(("edge-7".parse().unwrap(), ReleaseOutcome::Released))
    );
    assert_eq!(link.holder("edge-7"), None);
    // Later registrations go without it: it stays free.
    link.run(Duration::from_secs(60));
    assert_eq!(link.holder("edge-7"), None);
    assert!(link.node.is_registered(link.now));
    assert_eq!(
        link.node.release_name(link.now),
        Err(ReleaseError::NoHostname)
    );
}

#[test]
fn a_release_that_cannot_be_asked_or_goes_unanswered_changes_nothing() {
    let mut link = Link::new("edge-8");
    // Not registered yet: refused, still claiming.
    let err = link.node.release_name(link.now).unwrap_err();
    assert!(matches!(err, ReleaseError::NotRegistered(_)), "{err}");
    assert_eq!(link.node.hostname().map(|h| h.as_str()), Some("edge-8"));

    link.run(Duration::from_secs(1));
    link.up = false;
    link.node.release_name(link.now).unwrap();
    link.run(Duration::from_secs(6));
    assert_eq!(
        link.release_event(),
        Some(("edge-8".parse().unwrap(), ReleaseOutcome::Unconfirmed))
    );
    // Claimed again, as before; the rendezvous never heard of the release.
    assert_eq!(link.node.hostname().map(|h| h.as_str()), Some("edge-8"));
    link.up = true;
    link.run(Duration::from_secs(30));
    assert_eq!(link.holder("edge-8"), Some(link.node.key()));
}
