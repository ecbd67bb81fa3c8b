//! When the node sends its trust statements to the rendezvous: at once when something new is
//! queued, else every retry interval — not again for every statement delivered to it.

use std::time::Duration;

use super::release_tests::Link;
use super::tests::identity;
use super::*;
use crate::wire::control::{Message, DELIVER, SUBMIT};
use crate::wire::envelope;
use crate::wire::trust::TrustRequest;

fn submits(link: &mut Link) -> usize {
    let mut out = vec![0u8; 65535];
    let mut n = 0;
    while let Some(t) = link.node.poll_transmit(link.now, &mut out) {
        n += usize::from(t.payload[0] == SUBMIT);
    }
    n
}

#[test]
fn requests_delivered_in_a_flood_do_not_make_the_node_send_its_own_statements_again() {
    // Found by the property test: each delivered request re-sent every unconfirmed statement
    // of ours, so junk requests spent the node's submission budget at the rendezvous (and
    // overflowed its replay window there, refusing its acks).
    let mut link = Link::new("edge-9");
    link.run(Duration::from_secs(1));
    assert!(link.node.is_registered(link.now));
    link.up = false;
    link.node
        .handshake(identity(2).public_key(), "hi", link.now)
        .unwrap();
    assert_eq!(submits(&mut link), 1, "a new statement goes at once");
    let now_ms = link.node.wall_ms(link.now);
    let rendezvous = identity(9);
    let mut out = vec![0u8; 65535];
    for n in 0..20u8 {
        let stranger = identity(100 + n);
        let ask = TrustRequest::sign(stranger.signing_key(), link.node.key(), now_ms, 1, "x");
        let deliver = Message::Deliver {
            id: u64::from(n),
            from_name: None,
            statement: Statement::Request(ask.unwrap()),
        };
        let mut body = Vec::new();
        deliver.encode(&mut body);
        let mut datagram = vec![0u8; 2048];
        let nonce = 1000 + u64::from(n);
        let len = envelope::seal(
            &mut datagram,
            DELIVER,
            rendezvous.signing_key(),
            now_ms,
            nonce,
            &body,
        )
        .unwrap();
        link.node
            .handle_datagram(link.rdv, &datagram[..len], link.now, &mut out);
    }
    assert_eq!(link.node.trust().incoming(now_ms).count(), 20);
    assert_eq!(
        submits(&mut link),
        0,
        "nothing of ours again before the retry"
    );
    // The retry still comes.
    link.now += Duration::from_secs(2);
    link.node.handle_timeout(link.now);
    assert_eq!(submits(&mut link), 1);
}
