//! Trust requests from throwaway keys (issue 15, A6 and A8): what a flood may push out, what
//! a statement that does not verify may teach, and whose name a trusted key keeps.

use super::*;

const NOW: u64 = 1_800_000_000_000;

fn signing(seed: u32) -> SigningKey {
    let mut bytes = [0x42u8; 32];
    bytes[..4].copy_from_slice(&seed.to_le_bytes());
    SigningKey::from_bytes(&bytes)
}

fn key(seed: u32) -> NodeKey {
    NodeKey(signing(seed).verifying_key().to_bytes())
}

fn request(from: u32, to: NodeKey, issued_ms: u64, why: &str) -> Statement {
    Statement::Request(TrustRequest::sign(&signing(from), to, issued_ms, 1, why).unwrap())
}

#[test]
fn requests_dated_ahead_cannot_push_out_an_honest_one_that_came_first() {
    let me = key(0);
    let mut book = TrustBook::new(me);
    let mut now = NOW;
    // The list is full of junk dated four minutes ahead, then an honest request arrives, then
    // more junk: the earliest arrivals go first, so the honest one stays for a full list's
    // worth of arrivals (it was the first to go when the request's own date decided).
    for i in 1..=MAX_INCOMING as u32 {
        let junk = request(1_000 + i, me, now + 240_000, "junk");
        book.receive(&signing(0), junk, None, false, now).unwrap();
        now += 1;
    }
    let honest = request(1, me, now, "nightly sync");
    book.receive(&signing(0), honest, None, false, now).unwrap();
    for i in 1..=100u32 {
        now += 1;
        let junk = request(5_000 + i, me, now + 240_000, "junk");
        book.receive(&signing(0), junk, None, false, now).unwrap();
    }
    let pending: Vec<NodeKey> = book.incoming(now).map(|i| i.request.requester).collect();
    assert_eq!(pending.len(), MAX_INCOMING);
    assert!(pending.contains(&key(1)), "the honest request was evicted");
}

#[test]
fn nothing_is_learnt_from_a_statement_that_does_not_verify() {
    let me = key(0);
    let mut book = TrustBook::new(me);
    // A request signed by someone else than its requester claims.
    let Statement::Request(mut forged) = request(7, me, NOW, "hi") else {
        unreachable!()
    };
    forged.requester = key(8);
    let name: Hostname = "bob".parse().unwrap();
    let result = book.receive(
        &signing(0),
        Statement::Request(forged),
        Some(name.clone()),
        false,
        NOW,
    );
    assert!(result.is_err());
    assert_eq!(book.name_of(&key(8)), None);
    assert_eq!(book.key_named(&name), None);
}

#[test]
fn a_trusted_key_keeps_its_name_when_another_key_claims_it() {
    let (a, b) = (key(1), key(2));
    let mut book_a = TrustBook::new(a);
    let mut book_b = TrustBook::new(b);
    book_a.handshake(&signing(1), b, "", NOW, 1).unwrap();
    for s in book_a.unsubmitted().to_vec() {
        book_b.receive(&signing(2), s, None, false, NOW).unwrap();
    }
    book_b.approve(&signing(2), a, NOW + 1).unwrap();
    let bob: Hostname = "bob".parse().unwrap();
    for s in book_b.unsubmitted().to_vec() {
        book_a
            .receive(&signing(1), s, Some(bob.clone()), false, NOW + 2)
            .unwrap();
    }
    assert!(book_a.is_trusted(&b));
    assert_eq!(book_a.key_named(&bob), Some(b));
    // bob's registration lapsed and an impostor took the name at the rendezvous; its request
    // arrives under that name (or a lookup answers it).
    let impostor = request(66, a, NOW + 3, "it's me, bob");
    book_a
        .receive(&signing(1), impostor, Some(bob.clone()), false, NOW + 3)
        .unwrap();
    assert!(!book_a.learn_name(key(66), Some(bob.clone())));
    assert_eq!(
        book_a.key_named(&bob),
        Some(b),
        "the name still means the trusted key"
    );
    assert_eq!(book_a.name_of(&key(66)), None);
    // A verb given the name cannot know which key is meant: it is contested, both keys known.
    assert_eq!(book_a.contested(&bob), Some((b, key(66))));
    // Once the rendezvous names bob's key again, it is not.
    assert!(!book_a.learn_name(b, Some(bob.clone())));
    assert_eq!(book_a.contested(&bob), None);
}

#[test]
fn revocations_from_keys_we_never_dealt_with_leave_nothing_behind() {
    // Found by the property test: each throwaway key's revocation took a ledger entry, kept in
    // trust.json and handed to the rendezvous again at every resync (where it ate the node's
    // own submission budget).
    let me = key(0);
    let mut book = TrustBook::new(me);
    for i in 1..=100u32 {
        let junk = Statement::Revocation(Revocation::sign(&signing(i), me, NOW, "").unwrap());
        let got = book.receive(&signing(0), junk, None, false, NOW).unwrap();
        assert!(!got.changed);
    }
    assert_eq!(book.ledger_len(), 0);
    assert!(!book.resubmit_held(), "nothing to hand back");
    // A request withdrawn by its requester: gone from the pending list, and nothing kept.
    let ask = request(7, me, NOW, "hi");
    book.receive(&signing(0), ask, None, false, NOW).unwrap();
    assert_eq!(book.incoming(NOW).count(), 1);
    let withdrawn = Statement::Revocation(Revocation::sign(&signing(7), me, NOW + 1, "").unwrap());
    assert!(
        book.receive(&signing(0), withdrawn, None, false, NOW + 1)
            .unwrap()
            .changed
    );
    assert_eq!(book.incoming(NOW + 1).count(), 0);
    assert_eq!(book.ledger_len(), 0);
    // A forged one is still refused.
    let Statement::Revocation(mut forged) =
        Statement::Revocation(Revocation::sign(&signing(8), me, NOW, "").unwrap())
    else {
        unreachable!()
    };
    forged.issued_ms += 1;
    assert!(book
        .receive(&signing(0), Statement::Revocation(forged), None, false, NOW)
        .is_err());
}
