//! The router's port mapping on the node: the daemon's `portmap` task tells what the gateway
//! offered and the public endpoint it mapped; the node advertises that endpoint to peers
//! (after a configured `--endpoint`) and re-registers at once when it changes, re-introducing
//! its peers so they probe it.

use std::net::SocketAddr;
use std::time::Instant;

use super::Node;
use crate::portmap::PortMapStatus;

impl Node {
    /// What the gateway offered now, and the endpoint it mapped (`None`: no mapping).
    pub fn set_port_mapping(
        &mut self,
        status: PortMapStatus,
        mapped: Option<SocketAddr>,
        now: Instant,
    ) {
        self.touch();
        self.port_map = status;
        if mapped == self.mapped {
            return;
        }
        self.mapped = mapped;
        let Some(link) = &mut self.link else {
            return;
        };
        // Register now with the new candidate list, then ask for new introductions: peers learn
        // candidates only from a `Punch`.
        link.next_register = Some(now);
        for peer in &mut self.peers {
            peer.path.reconnect_now(now);
        }
        self.drive(now);
    }

    /// The public endpoint the gateway mapped to this node, if any.
    pub fn mapped_endpoint(&self) -> Option<SocketAddr> {
        self.mapped
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use super::super::tests::{ep, identity, node_with_rendezvous};
    use super::super::Node;
    use crate::clock::WallClock;
    use crate::portmap::{MapState, PortMapStatus};
    use crate::wire::control::{Message, REGISTER};
    use crate::wire::envelope;

    /// The candidate lists of every registration the node sends until `until`.
    fn registrations(a: &mut Node, now: &mut Instant, until: Instant) -> Vec<Vec<SocketAddr>> {
        let mut out = vec![0u8; 2048];
        let mut lists = Vec::new();
        while *now <= until {
            a.handle_timeout(*now);
            while let Some(t) = a.poll_transmit(*now, &mut out) {
                if t.payload[0] != REGISTER {
                    continue;
                }
                let opened = envelope::open(t.payload).unwrap();
                if let Ok(Message::Register { lan, .. }) = Message::decode(opened.kind, opened.body)
                {
                    lists.push(lan);
                }
            }
            *now += Duration::from_millis(250);
        }
        lists
    }

    #[test]
    fn a_mapped_endpoint_is_offered_after_the_configured_one_and_registered_at_once() {
        let rendezvous = identity(9);
        let rdv = ep("203.0.113.10:7000");
        let lan = vec![ep("198.51.100.10:51870")];
        let configured = ep("192.0.2.99:51870");
        let clock = WallClock::new(Instant::now(), 1_800_000_000_000);
        let mut a = node_with_rendezvous(1, &rendezvous, rdv, lan.clone(), Some(configured), clock);
        let mut now = clock.origin();
        let first = registrations(&mut a, &mut now, clock.origin());
        assert_eq!(first, vec![vec![configured, lan[0]]]);

        let mapped = ep("203.0.113.1:40000");
        let status = PortMapStatus {
            state: MapState::Mapped,
            external: Some(mapped.to_string()),
            ..PortMapStatus::default()
        };
        a.set_port_mapping(status.clone(), Some(mapped), now);
        // Sent at once, although the unanswered first registration's retry is not due yet.
        let again = registrations(&mut a, &mut now.clone(), now);
        assert_eq!(again, vec![vec![configured, mapped, lan[0]]]);
        assert_eq!(a.mapped_endpoint(), Some(mapped));
        assert_eq!(a.net_status(now).port_mapping, status);

        // The same mapping again changes nothing; losing it registers without it.
        a.set_port_mapping(status, Some(mapped), now);
        assert!(registrations(&mut a, &mut now.clone(), now).is_empty());
        a.set_port_mapping(PortMapStatus::default(), None, now);
        let without = registrations(&mut a, &mut now.clone(), now);
        assert_eq!(without, vec![vec![configured, lan[0]]]);
    }
}
