//! WireGuard's cookie mechanism on the node core: a handshake flood from a throwaway key is
//! answered with cookies, and an honest initiator still gets its session.

use std::time::Instant;

use boringtun::noise::{Tunn, TunnResult};

use super::tests::{ep, identity, node, A_EP, B_EP, C_EP};
use super::*;

#[test]
fn under_a_handshake_flood_an_honest_initiator_gets_a_cookie_and_then_its_session() {
    let (ia, ib) = (identity(1), identity(2));
    let mut b = node(2, &[(1, Some(A_EP))]);
    let b_wg = ib.public_key().x25519_public().unwrap();
    let now = Instant::now();
    let (mut out, mut back) = (vec![0u8; 2048], vec![0u8; 2048]);

    // A stranger floods B with handshakes that carry a valid mac1 (which needs nothing but
    // B's public key), from a (possibly spoofed) address: past the rate limit, each one gets
    // a cookie reply to that address and costs B no Diffie-Hellman.
    let mut stranger = Tunn::new(identity(9).x25519_secret(), b_wg, None, None, 9, None);
    let mut cookies = 0;
    for _ in 0..2 * HANDSHAKE_RATE_LIMIT {
        let TunnResult::WriteToNetwork(junk) = stranger.format_handshake_initiation(&mut out, true)
        else {
            panic!()
        };
        if let NetOutput::Send(t) = b.handle_datagram(ep(C_EP), junk, now, &mut back) {
            assert_eq!(t.to, ep(C_EP));
            assert!(
                t.payload.len() < junk.len(),
                "a reply smaller than the request"
            );
            assert_eq!(t.payload[0], 3, "a cookie reply");
            cookies += 1;
        }
    }
    assert!(
        cookies >= HANDSHAKE_RATE_LIMIT - 1,
        "{cookies} cookie replies"
    );
    assert_eq!(b.counters().cookie_replies, cookies);
    assert_eq!(b.counters().get(DropReason::UnderLoad), cookies);

    let mut a = Tunn::new(ia.x25519_secret(), b_wg, None, None, 1, None);
    let TunnResult::WriteToNetwork(init) = a.format_handshake_initiation(&mut out, false) else {
        panic!()
    };
    let init = init.to_vec();

    // The honest peer, direct: a cookie first; its retry carries mac2 and is answered with a
    // handshake response, and the session works.
    let NetOutput::Send(cookie) = b.handle_datagram(ep(A_EP), &init, now, &mut back) else {
        panic!("A gets a cookie reply")
    };
    assert_eq!((cookie.to, cookie.payload[0]), (ep(A_EP), 3));
    assert!(matches!(
        a.decapsulate(Some(ep(B_EP).ip()), cookie.payload, &mut out),
        TunnResult::Done
    ));
    let TunnResult::WriteToNetwork(retry) = a.format_handshake_initiation(&mut out, true) else {
        panic!()
    };
    let NetOutput::Send(resp) = b.handle_datagram(ep(A_EP), retry, now, &mut back) else {
        panic!("B answers A's retry with mac2")
    };
    assert_eq!(resp.payload[0], 2, "a handshake response");
    assert!(matches!(
        a.decapsulate(Some(ep(B_EP).ip()), resp.payload, &mut out),
        TunnResult::WriteToNetwork(_) | TunnResult::Done
    ));
    assert_eq!(b.counters().handshakes, 1);
}
