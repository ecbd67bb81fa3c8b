use super::*;

const NOW: u64 = 1_800_000_000_000;

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn pubkey(n: u8) -> NodeKey {
    NodeKey(key(n).verifying_key().to_bytes())
}

/// A complete record between nodes `a` and `b`, approved by `b` and countersigned by `a`.
fn record(a: u8, b: u8, issued_ms: u64) -> TrustRecord {
    TrustRecord::approve(&key(b), pubkey(a), issued_ms)
        .unwrap()
        .countersign(&key(a), NOW)
        .unwrap()
}

#[test]
fn a_request_verifies_and_any_change_breaks_it() {
    let r = TrustRequest::sign(&key(1), pubkey(2), NOW, 7, "nightly sync").unwrap();
    assert_eq!(r.verify(NOW + 1000), Ok(()));
    let mut altered = r.clone();
    altered.justification = "nightly sync!".into();
    assert_eq!(altered.verify(NOW), Err(TrustError::BadSignature));
    let mut retargeted = r.clone();
    retargeted.target = pubkey(3);
    assert_eq!(retargeted.verify(NOW), Err(TrustError::BadSignature));
    let mut stolen = r.clone();
    stolen.requester = pubkey(3);
    assert_eq!(stolen.verify(NOW), Err(TrustError::BadSignature));
    assert_eq!(
        r.verify(NOW + REQUEST_LIFETIME_MS + 1),
        Err(TrustError::Expired)
    );
    assert_eq!(
        r.verify(NOW - MAX_FUTURE_MS - 1),
        Err(TrustError::FromTheFuture)
    );
    assert_eq!(
        TrustRequest::sign(
            &key(1),
            pubkey(2),
            NOW,
            1,
            &"x".repeat(MAX_JUSTIFICATION + 1)
        ),
        Err(TrustError::JustificationTooLong)
    );
    assert_eq!(
        TrustRequest::sign(&key(1), pubkey(1), NOW, 1, ""),
        Err(TrustError::SelfTrust)
    );
}

#[test]
fn a_record_needs_both_signatures_over_the_same_bytes() {
    let half = TrustRecord::approve(&key(2), pubkey(1), NOW).unwrap();
    assert_eq!(
        half.verify(NOW),
        Err(TrustError::Incomplete),
        "one signature is not trust"
    );
    assert_eq!(half.verify_half(&pubkey(2), NOW), Ok(()));
    assert_eq!(
        half.verify_half(&pubkey(1), NOW),
        Err(TrustError::Incomplete),
        "the signature present is 2's, not 1's"
    );
    // Filling the empty slot with a copy of the other signature does not complete it.
    let mut copied = half.clone();
    let sig = if copied.low_signature == [0; 64] {
        copied.high_signature
    } else {
        copied.low_signature
    };
    (copied.low_signature, copied.high_signature) = (sig, sig);
    assert_eq!(copied.verify(NOW), Err(TrustError::BadSignature));
    let full = half.clone().countersign(&key(1), NOW).unwrap();
    assert_eq!(full.verify(NOW), Ok(()));
    // Either side may approve first: the bytes are the same.
    let other_way = TrustRecord::approve(&key(1), pubkey(2), NOW)
        .unwrap()
        .countersign(&key(2), NOW)
        .unwrap();
    assert_eq!(other_way, full);
    // A third party can neither countersign nor alter it.
    assert_eq!(
        half.clone().countersign(&key(3), NOW),
        Err(TrustError::NotAParty)
    );
    let mut later = full.clone();
    later.issued_ms += 1;
    assert_eq!(later.verify(NOW), Err(TrustError::BadSignature));
    for i in 0..64 {
        let mut bad = full.clone();
        bad.low_signature[i] ^= 1;
        assert!(bad.verify(NOW).is_err());
        let mut bad = full.clone();
        bad.high_signature[i] ^= 1;
        assert!(bad.verify(NOW).is_err());
    }
    // Countersigning checks the first signature: a forged half is not completed.
    let mut forged_half = half.clone();
    forged_half.high_signature = [7; 64];
    forged_half.low_signature = [7; 64];
    assert_eq!(
        forged_half.countersign(&key(1), NOW),
        Err(TrustError::BadSignature)
    );
}

#[test]
fn a_record_made_up_by_whoever_delivers_it_is_refused() {
    // The rendezvous holds neither key: all it can do is sign with its own.
    let rendezvous = key(9);
    let mut fake = TrustRecord::approve(&rendezvous, pubkey(1), NOW).unwrap();
    fake = TrustRecord {
        low: pubkey(1).min(pubkey(2)),
        high: pubkey(1).max(pubkey(2)),
        ..fake
    };
    // Its own signature in both slots.
    let sig = fake.low_signature.max(fake.high_signature);
    (fake.low_signature, fake.high_signature) = (sig, sig);
    let mut ledger = TrustLedger::new();
    assert_eq!(
        ledger.admit_record(fake, NOW),
        Err(TrustError::BadSignature)
    );
    assert!(!ledger.trusted(&pubkey(1), &pubkey(2)));
    // Keys out of canonical order are refused before any signature work.
    let mut swapped = record(1, 2, NOW);
    std::mem::swap(&mut swapped.low, &mut swapped.high);
    assert_eq!(swapped.verify(NOW), Err(TrustError::NotCanonical));
}

#[test]
fn the_newest_statement_wins_and_a_revocation_wins_a_tie() {
    let (a, b) = (pubkey(1), pubkey(2));
    let mut ledger = TrustLedger::new();
    assert_eq!(ledger.admit_record(record(1, 2, NOW - 100), NOW), Ok(true));
    assert!(ledger.trusted(&a, &b) && ledger.trusted(&b, &a));
    // Either side revokes; the revocation is newer, so trust ends.
    let revoke = Revocation::sign(&key(2), a, NOW - 50, "").unwrap();
    assert_eq!(ledger.admit_revocation(revoke.clone(), NOW), Ok(true));
    assert!(!ledger.trusted(&a, &b));
    // The old record delivered again (a replay) changes nothing.
    assert_eq!(ledger.admit_record(record(1, 2, NOW - 100), NOW), Ok(false));
    assert!(!ledger.trusted(&a, &b));
    // A record as old as the revocation loses the tie.
    assert_eq!(ledger.admit_record(record(1, 2, NOW - 50), NOW), Ok(false));
    assert!(!ledger.trusted(&a, &b));
    // A new approval after the revocation restores trust; a stale revocation cannot undo it.
    assert_eq!(ledger.admit_record(record(1, 2, NOW - 10), NOW), Ok(true));
    assert!(ledger.trusted(&a, &b));
    assert_eq!(ledger.admit_revocation(revoke, NOW), Ok(false));
    assert!(ledger.trusted(&a, &b));
    assert_eq!(ledger.pairs_of(&a).count(), 1);
    assert_eq!(ledger.pairs_of(&pubkey(3)).count(), 0);
}

#[test]
fn forged_or_future_revocations_change_nothing() {
    let (a, b) = (pubkey(1), pubkey(2));
    let mut ledger = TrustLedger::new();
    ledger.admit_record(record(1, 2, NOW - 100), NOW).unwrap();
    // A third party "revoking" on b's behalf.
    let mut forged = Revocation::sign(&key(3), a, NOW, "").unwrap();
    forged.by = b;
    assert_eq!(
        ledger.admit_revocation(forged, NOW),
        Err(TrustError::BadSignature)
    );
    let future = Revocation::sign(&key(2), a, NOW + MAX_FUTURE_MS + 1, "").unwrap();
    assert_eq!(
        ledger.admit_revocation(future, NOW),
        Err(TrustError::FromTheFuture)
    );
    assert!(ledger.trusted(&a, &b));
    assert_eq!(
        Revocation::sign(&key(2), b, NOW, ""),
        Err(TrustError::SelfTrust)
    );
}

#[test]
fn statements_round_trip_and_hostile_bytes_are_refused() {
    let request = TrustRequest::sign(&key(1), pubkey(2), NOW, 7, "nightly sync").unwrap();
    let half = TrustRecord::approve(&key(2), pubkey(1), NOW).unwrap();
    let full = record(1, 2, NOW);
    let revocation = Revocation::sign(&key(2), pubkey(1), NOW, "not today").unwrap();
    for s in [
        Statement::Request(request),
        Statement::Record(half),
        Statement::Record(full),
        Statement::Revocation(revocation),
    ] {
        let bytes = s.to_bytes();
        assert!(bytes.len() <= MAX_STATEMENT_LEN);
        assert_eq!(Statement::decode(&bytes), Ok(s.clone()));
        assert_eq!(s.pair(), ordered(pubkey(1), pubkey(2)));
        for cut in 0..bytes.len() {
            assert!(
                Statement::decode(&bytes[..cut]).is_err(),
                "{s:?} cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Statement::decode(&longer), Err(DecodeError::Trailing));
    }
    // A text length beyond the limit is refused before anything is read.
    let mut bytes = vec![1u8];
    bytes.extend_from_slice(&[0; 80]);
    bytes.extend_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(Statement::decode(&bytes), Err(DecodeError::TooMany));
    assert_eq!(Statement::decode(&[9]), Err(DecodeError::BadValue));
    // An altered byte anywhere makes the statement fail verification (or decoding).
    let full = Statement::Record(record(1, 2, NOW));
    let bytes = full.to_bytes();
    for i in 1..bytes.len() {
        let mut altered = bytes.clone();
        altered[i] ^= 0x01;
        if let Ok(Statement::Record(r)) = Statement::decode(&altered) {
            assert!(r.verify(NOW).is_err(), "byte {i}");
        }
    }
}

#[test]
fn a_nodes_pairs_are_found_by_index_and_digested_alike_in_any_order() {
    // Both index paths: pairs where the node is the lower key and where it is the higher.
    let pairs = [(1, 2), (1, 3), (2, 3), (4, 1), (5, 2), (6, 1)];
    let mut forward = TrustLedger::new();
    let mut backward = TrustLedger::new();
    for &(a, b) in &pairs {
        forward.admit_record(record(a, b, NOW - 100), NOW).unwrap();
    }
    for &(a, b) in pairs.iter().rev() {
        backward.admit_record(record(a, b, NOW - 100), NOW).unwrap();
    }
    let me = pubkey(1);
    let others: Vec<NodeKey> = forward.pairs_of(&me).map(|(k, _)| k).collect();
    let mut expected = vec![pubkey(2), pubkey(3), pubkey(4), pubkey(6)];
    expected.sort();
    assert_eq!(others, expected, "every pair of node 1, in key order, once");
    assert_eq!(forward.digest_of(&me), backward.digest_of(&me));
    assert_eq!(TrustLedger::new().pairs_of(&me).count(), 0);
    // A newer statement about one pair changes the digest of both its parties only.
    let (d1, d2, d5) = (
        forward.digest_of(&me),
        forward.digest_of(&pubkey(2)),
        forward.digest_of(&pubkey(5)),
    );
    let revoke = Revocation::sign(&key(2), me, NOW - 50, "").unwrap();
    assert!(forward.admit_revocation(revoke, NOW).unwrap());
    assert_ne!(forward.digest_of(&me), d1);
    assert_ne!(forward.digest_of(&pubkey(2)), d2);
    assert_eq!(forward.digest_of(&pubkey(5)), d5);
    assert_ne!(TrustLedger::new().digest_of(&me), d1);
}
