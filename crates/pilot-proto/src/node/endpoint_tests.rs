//! A configured public endpoint (`--endpoint`) on the node core, against a hand-made
//! rendezvous answer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::tests::{ep, identity, node_with_rendezvous};
use super::*;
use crate::clock::WallClock;
use crate::identity::Identity;

#[test]
fn a_configured_endpoint_is_offered_first_and_the_nat_is_not_probed() {
    use crate::wire::control::{Message, MAX_LAN_ENDPOINTS, NAT_PROBE, REGISTER};
    use crate::wire::envelope;
    let rendezvous = identity(9);
    let rdv = ep("203.0.113.10:7000");
    let endpoint = ep("203.0.113.7:40000");
    let lan: Vec<SocketAddr> = (1..=8).map(|i| ep(&format!("10.0.0.{i}:51870"))).collect();
    let clock = WallClock::new(Instant::now(), 1_800_000_000_000);
    let mut a = node_with_rendezvous(1, &rendezvous, rdv, lan.clone(), Some(endpoint), clock);
    let mut out = vec![0u8; 2048];
    let mut now = clock.origin();
    // Everything the node sends until `until`, by message kind.
    let run = |a: &mut Node, now: &mut Instant, until: Instant| {
        let mut out = vec![0u8; 2048];
        let mut sent = Vec::new();
        while *now <= until {
            a.handle_timeout(*now);
            while let Some(t) = a.poll_transmit(*now, &mut out) {
                sent.push((t.to, t.payload.to_vec()));
            }
            *now += Duration::from_millis(250);
        }
        sent
    };
    let sent = run(&mut a, &mut now, clock.origin());
    let (to, register) = sent.iter().find(|(_, d)| d[0] == REGISTER).unwrap();
    assert_eq!(*to, rdv);
    let opened = envelope::open(register).unwrap();
    let Ok(Message::Register { lan: offered, .. }) = Message::decode(opened.kind, opened.body)
    else {
        panic!("not a registration");
    };
    assert_eq!(offered.len(), MAX_LAN_ENDPOINTS);
    assert_eq!(offered[0], endpoint, "the configured endpoint comes first");
    assert_eq!(&offered[1..], &lan[..MAX_LAN_ENDPOINTS - 1]);

    // The rendezvous sees the node elsewhere (the NAT's own mapping, not the forward).
    let observed = ep("203.0.113.7:55123");
    let reply = registered(
        &rendezvous,
        opened.nonce,
        observed,
        true,
        clock.unix_ms(now),
    );
    a.handle_datagram(rdv, &reply, now, &mut out);
    assert!(a.is_registered(now));
    let sent = run(&mut a, &mut now, clock.origin() + Duration::from_secs(20));
    assert!(
        sent.iter().all(|(_, d)| d[0] != NAT_PROBE),
        "no NAT measurement with a configured endpoint"
    );
    let net = a.net_status(now);
    assert_eq!(net.endpoint, Some(endpoint.to_string()));
    assert!(net.endpoint_configured);
    assert_eq!(net.observed, Some(observed.to_string()));
}

#[test]
fn new_addresses_of_the_host_are_registered_at_once() {
    use crate::wire::control::{Message, REGISTER};
    use crate::wire::envelope;
    let rendezvous = identity(9);
    let rdv = ep("203.0.113.10:7000");
    let clock = WallClock::new(Instant::now(), 1_800_000_000_000);
    let old = vec![ep("[2001:db8:1::10]:51870")];
    let mut a = node_with_rendezvous(1, &rendezvous, rdv, old.clone(), None, clock);
    let mut out = vec![0u8; 2048];
    let mut now = clock.origin();
    // The registrations the node sends until `until`: (nonce, offered endpoints).
    let mut registrations = |a: &mut Node, now: &mut Instant, until: Instant| {
        let mut sent = Vec::new();
        while *now <= until {
            a.handle_timeout(*now);
            while let Some(t) = a.poll_transmit(*now, &mut out) {
                if t.payload[0] != REGISTER {
                    continue;
                }
                let opened = envelope::open(t.payload).unwrap();
                if let Ok(Message::Register { lan, .. }) = Message::decode(opened.kind, opened.body)
                {
                    sent.push((opened.nonce, lan));
                }
            }
            *now += Duration::from_millis(250);
        }
        sent
    };
    let sent = registrations(&mut a, &mut now, clock.origin());
    let (nonce, offered) = sent[0].clone();
    assert_eq!(offered, old);
    let observed = ep("203.0.113.7:40000");
    let reply = registered(&rendezvous, nonce, observed, false, clock.unix_ms(now));
    let mut scratch = vec![0u8; 2048];
    a.handle_datagram(rdv, &reply, now, &mut scratch);
    assert!(a.is_registered(now));
    assert!(registrations(&mut a, &mut now, clock.origin() + Duration::from_secs(5)).is_empty());
    // The IPv6 temporary address rotated: registered again at once, with the new one.
    let new = vec![ep("[2001:db8:1::abcd]:51870")];
    assert!(
        !a.set_lan(old.clone(), now),
        "the same addresses change nothing"
    );
    assert!(a.set_lan(new.clone(), now));
    let at = now;
    let sent = registrations(&mut a, &mut now, at);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1, new);
}

/// The rendezvous' `Registered` answer to registration `echo`, sealed at `unix_ms`.
fn registered(
    rendezvous: &Identity,
    echo: u64,
    observed: SocketAddr,
    resubmit: bool,
    unix_ms: u64,
) -> Vec<u8> {
    use crate::wire::control::{Message, REGISTERED};
    use crate::wire::envelope;
    let mut body = Vec::new();
    Message::Registered {
        echo,
        observed,
        keepalive_secs: 25,
        resubmit,
    }
    .encode(&mut body);
    let mut reply = vec![0u8; envelope::OVERHEAD + body.len()];
    let key = rendezvous.signing_key();
    let n = envelope::seal(&mut reply, REGISTERED, key, unix_ms, 77, &body).unwrap();
    reply.truncate(n);
    reply
}
