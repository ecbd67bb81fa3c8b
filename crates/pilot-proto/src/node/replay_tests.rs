//! Replay protection on the node core under a flood from throwaway keys: the audit's attack
//! (issue 15, A1) was ~16.5k junk messages signed by fresh keys and dated 29 s ahead, which
//! filled one shared table and raised its floor past the rendezvous' next answer.

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;

use super::tests::{ep, identity, node_with_rendezvous};
use super::*;
use crate::clock::WallClock;
use crate::wire::control::{Message, PROBE, REGISTER, REGISTERED};
use crate::wire::envelope;

#[test]
fn a_flood_of_fresh_keys_dated_ahead_never_makes_the_rendezvous_answer_look_stale() {
    let rendezvous = identity(9);
    let rdv = ep("203.0.113.10:7000");
    let clock = WallClock::new(Instant::now(), 1_800_000_000_000);
    let mut a = node_with_rendezvous(1, &rendezvous, rdv, Vec::new(), None, clock);
    let now = clock.origin();
    let mut out = vec![0u8; 2048];
    a.handle_timeout(now);
    let mut register = None;
    while let Some(t) = a.poll_transmit(now, &mut out) {
        if t.payload[0] == REGISTER {
            register = Some(envelope::open(t.payload).unwrap().nonce);
        }
    }
    let echo = register.expect("the node registers");

    // More junk than the old shared table held (16,384), each from a fresh key, dated 29 s
    // ahead, from the rendezvous' own address and from elsewhere.
    let ahead = clock.unix_ms(now) + envelope::MAX_SKEW.as_millis() as u64 - 1_000;
    let mut body = Vec::new();
    Message::Probe {
        target: identity(1).public_key(),
    }
    .encode(&mut body);
    let mut junk = vec![0u8; envelope::OVERHEAD + body.len()];
    for i in 0..17_000u32 {
        let mut seed = [7u8; 32];
        seed[..4].copy_from_slice(&i.to_le_bytes());
        let key = SigningKey::from_bytes(&seed);
        let n = envelope::seal(&mut junk, PROBE, &key, ahead, i.into(), &body).unwrap();
        let from = if i % 2 == 0 {
            rdv
        } else {
            ep("192.0.2.66:4000")
        };
        a.handle_datagram(from, &junk[..n], now, &mut out);
    }

    // The rendezvous' honest answer, dated now, is taken.
    let mut body = Vec::new();
    Message::Registered {
        echo,
        observed: ep("203.0.113.7:40000"),
        keepalive_secs: 25,
        resubmit: true,
    }
    .encode(&mut body);
    let mut reply = vec![0u8; envelope::OVERHEAD + body.len()];
    let later = now + Duration::from_millis(100);
    let n = envelope::seal(
        &mut reply,
        REGISTERED,
        rendezvous.signing_key(),
        clock.unix_ms(later),
        77,
        &body,
    )
    .unwrap();
    a.handle_datagram(rdv, &reply[..n], later, &mut out);
    assert!(a.is_registered(later), "the rendezvous' answer was refused");
    // The junk touched no replay state: it was dropped as from no one we deal with.
    assert_eq!(a.counters().get(DropReason::ReplayedControl), 0);
    assert_eq!(a.counters().get(DropReason::UnexpectedControl), 17_000);
}
