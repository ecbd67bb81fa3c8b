use super::*;
use crate::wire::trust::MAX_JUSTIFICATION;

const NOW: u64 = 1_800_000_000_000;

fn signing(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn key(n: u8) -> NodeKey {
    NodeKey(signing(n).verifying_key().to_bytes())
}

/// Two nodes' books, and the statements in flight between them (what the rendezvous carries).
struct Two {
    a: TrustBook,
    b: TrustBook,
}

impl Two {
    fn new() -> Two {
        Two {
            a: TrustBook::new(key(1)),
            b: TrustBook::new(key(2)),
        }
    }

    /// Delivers everything `from` has not had confirmed to the other book; returns the gates.
    fn carry(&mut self, from_a: bool, now_ms: u64) -> Vec<Gate> {
        let (from, to, to_key) = if from_a {
            (&mut self.a, &mut self.b, 2)
        } else {
            (&mut self.b, &mut self.a, 1)
        };
        let statements: Vec<Statement> = from.unsubmitted().to_vec();
        let mut gates = Vec::new();
        for s in statements {
            from.submitted(&s);
            if let Ok(r) = to.receive(&signing(to_key), s, None, false, now_ms) {
                gates.push(r.gate);
            }
        }
        gates
    }
}

#[test]
fn handshake_approve_countersign_opens_both_gates() {
    let mut t = Two::new();
    let (outcome, gate) =
        t.a.handshake(&signing(1), key(2), "nightly sync", NOW, 7)
            .unwrap();
    assert_eq!(
        (outcome, gate),
        (HandshakeOutcome::Requested, Gate::Unchanged)
    );
    t.carry(true, NOW + 10);
    let pending: Vec<_> = t.b.incoming(NOW + 10).collect();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].request.justification, "nightly sync");
    assert!(!t.a.is_trusted(&key(2)) && !t.b.is_trusted(&key(1)));

    assert_eq!(
        t.b.approve(&signing(2), key(1), NOW + 20),
        Ok(Gate::Unchanged)
    );
    assert!(!t.b.is_trusted(&key(1)), "one signature is not trust");
    // a countersigns on its own because it asked.
    assert_eq!(t.carry(false, NOW + 30), vec![Gate::Opened(key(2))]);
    assert!(t.a.is_trusted(&key(2)));
    assert_eq!(t.carry(true, NOW + 40), vec![Gate::Opened(key(1))]);
    assert!(t.b.is_trusted(&key(1)));
    assert_eq!(t.a.outgoing().count() + t.b.incoming(NOW).count(), 0);
    assert_eq!(t.b.approved().count(), 0);

    // Asking again, from either side, is a success that changes and sends nothing.
    let before = (t.a.state(), t.b.state());
    for (book, me, peer) in [(&mut t.a, 1, 2), (&mut t.b, 2, 1)] {
        assert_eq!(
            book.handshake(&signing(me), key(peer), "again", NOW + 50, 8),
            Ok((HandshakeOutcome::AlreadyTrusted, Gate::Unchanged))
        );
        assert!(book.unsubmitted().is_empty());
    }
    assert_eq!((t.a.state(), t.b.state()), before);
}

#[test]
fn approving_or_rejecting_what_nobody_asked_fails_and_changes_nothing() {
    let mut b = TrustBook::new(key(2));
    assert_eq!(
        b.approve(&signing(2), key(1), NOW),
        Err(VerbError::NoRequest(key(1).address().to_string()))
    );
    assert!(matches!(
        b.reject(&signing(2), key(1), "no", NOW),
        Err(VerbError::NoRequest(_))
    ));
    assert!(matches!(
        b.untrust(&signing(2), key(1), NOW),
        Err(VerbError::NotTrusted(_))
    ));
    assert_eq!(
        b.handshake(&signing(2), key(2), "", NOW, 1),
        Err(VerbError::SelfTrust)
    );
    assert_eq!(
        b.handshake(
            &signing(2),
            key(1),
            &"x".repeat(MAX_JUSTIFICATION + 1),
            NOW,
            1
        ),
        Err(VerbError::TooLong)
    );
    assert!(b.unsubmitted().is_empty());
    assert_eq!(b.state().ledger.len(), 0);
}

#[test]
fn forged_and_altered_statements_are_refused() {
    let mut b = TrustBook::new(key(2));
    // A request claiming to be from 1 but signed by 3 (what a rendezvous could make up).
    let mut forged = TrustRequest::sign(&signing(3), key(2), NOW, 1, "hi").unwrap();
    forged.requester = key(1);
    assert_eq!(
        b.receive(&signing(2), Statement::Request(forged), None, false, NOW),
        Err(TrustError::BadSignature)
    );
    // A genuine request with its justification changed in transit.
    let mut altered = TrustRequest::sign(&signing(1), key(2), NOW, 1, "hi").unwrap();
    altered.justification = "give me everything".into();
    assert!(b
        .receive(&signing(2), Statement::Request(altered), None, false, NOW)
        .is_err());
    // A record "signed by both" that only the deliverer signed, twice.
    let fake = TrustRecord::approve(&signing(9), key(2), NOW).unwrap();
    let sig = fake.low_signature.max(fake.high_signature);
    let made_up = TrustRecord {
        low: key(1).min(key(2)),
        high: key(1).max(key(2)),
        issued_ms: NOW,
        low_signature: sig,
        high_signature: sig,
    };
    assert!(b
        .receive(&signing(2), Statement::Record(made_up), None, false, NOW)
        .is_err());
    // A revocation about other nodes.
    let elsewhere = Revocation::sign(&signing(1), key(3), NOW, "").unwrap();
    assert_eq!(
        b.receive(
            &signing(2),
            Statement::Revocation(elsewhere),
            None,
            false,
            NOW
        ),
        Err(TrustError::NotAParty)
    );
    assert_eq!(b.incoming(NOW).count(), 0);
    assert!(!b.is_trusted(&key(1)));
    assert!(b.unsubmitted().is_empty());
}

#[test]
fn expired_requests_are_refused_and_dropped() {
    let mut b = TrustBook::new(key(2));
    let old = TrustRequest::sign(&signing(1), key(2), NOW, 1, "").unwrap();
    let late = NOW + REQUEST_LIFETIME_MS + 1;
    assert_eq!(
        b.receive(
            &signing(2),
            Statement::Request(old.clone()),
            None,
            false,
            late
        ),
        Err(TrustError::Expired)
    );
    b.receive(&signing(2), Statement::Request(old), None, false, NOW)
        .unwrap();
    assert_eq!(b.incoming(NOW).count(), 1);
    assert_eq!(b.incoming(late).count(), 0, "not offered once expired");
    assert!(b.expire(late));
    assert!(matches!(
        b.approve(&signing(2), key(1), late),
        Err(VerbError::NoRequest(_))
    ));
}

#[test]
fn an_approval_is_countersigned_only_for_a_request_still_standing() {
    let mut a = TrustBook::new(key(1));
    // 2 approves out of the blue: 1 never asked, so it does not sign.
    let unasked = TrustRecord::approve(&signing(2), key(1), NOW).unwrap();
    let r = a
        .receive(&signing(1), Statement::Record(unasked), None, false, NOW)
        .unwrap();
    assert_eq!(r.gate, Gate::Unchanged);
    assert!(!a.is_trusted(&key(2)) && a.unsubmitted().is_empty());
    // 1 asks, then withdraws; the approval of the old request arrives late.
    a.handshake(&signing(1), key(2), "", NOW, 1).unwrap();
    a.untrust(&signing(1), key(2), NOW + 10).unwrap();
    let late = TrustRecord::approve(&signing(2), key(1), NOW + 20).unwrap();
    let r = a
        .receive(&signing(1), Statement::Record(late), None, false, NOW + 30)
        .unwrap();
    assert_eq!(r.gate, Gate::Unchanged);
    assert!(!a.is_trusted(&key(2)));
}

#[test]
fn revocations_win_over_older_records_and_replays() {
    let mut t = Two::new();
    t.a.handshake(&signing(1), key(2), "", NOW, 1).unwrap();
    t.carry(true, NOW);
    t.b.approve(&signing(2), key(1), NOW + 1).unwrap();
    t.carry(false, NOW + 2);
    t.carry(true, NOW + 3);
    let record = t.b.state().ledger[0].clone();
    assert!(t.a.is_trusted(&key(2)) && t.b.is_trusted(&key(1)));

    // b untrusts: both gates close.
    assert_eq!(
        t.b.untrust(&signing(2), key(1), NOW + 100),
        Ok(Gate::Closed(key(1)))
    );
    assert_eq!(t.carry(false, NOW + 101), vec![Gate::Closed(key(2))]);
    // The old record, replayed (by the rendezvous or anyone): refused by the ledger.
    let old = Statement::decode(&decode_hex(&record).unwrap()).unwrap();
    let r =
        t.a.receive(&signing(1), old.clone(), None, false, NOW + 200)
            .unwrap();
    assert_eq!(r.gate, Gate::Unchanged);
    assert!(!t.a.is_trusted(&key(2)));
    // The old request, replayed to b: answered (revoked) since, so not pending again.
    let request = TrustRequest::sign(&signing(1), key(2), NOW, 1, "").unwrap();
    t.b.receive(
        &signing(2),
        Statement::Request(request),
        None,
        false,
        NOW + 200,
    )
    .unwrap();
    assert_eq!(t.b.incoming(NOW + 200).count(), 0);

    // A new handshake after the revocation works again: the new record is newer.
    t.a.handshake(&signing(1), key(2), "again", NOW + 300, 2)
        .unwrap();
    t.carry(true, NOW + 300);
    assert_eq!(t.b.incoming(NOW + 300).count(), 1);
    t.b.approve(&signing(2), key(1), NOW + 400).unwrap();
    t.carry(false, NOW + 401);
    t.carry(true, NOW + 402);
    assert!(t.a.is_trusted(&key(2)) && t.b.is_trusted(&key(1)));
}

#[test]
fn a_rejection_reaches_the_requester_with_its_reason() {
    let mut t = Two::new();
    t.a.handshake(&signing(1), key(2), "please", NOW, 1)
        .unwrap();
    t.carry(true, NOW);
    t.b.reject(&signing(2), key(1), "not on a Friday", NOW + 5)
        .unwrap();
    assert_eq!(t.b.incoming(NOW).count(), 0);
    t.carry(false, NOW + 6);
    let outgoing: Vec<_> = t.a.outgoing().collect();
    assert_eq!(
        outgoing[0].rejected,
        Some((NOW + 5, "not on a Friday".to_owned()))
    );
    assert!(!t.a.is_trusted(&key(2)));
}

#[test]
fn crossing_requests_and_auto_approve_approve_at_once() {
    let mut t = Two::new();
    t.a.handshake(&signing(1), key(2), "", NOW, 1).unwrap();
    t.b.handshake(&signing(2), key(1), "", NOW, 2).unwrap();
    // Each receives the other's request while asking itself: each approves.
    for _ in 0..3 {
        t.carry(true, NOW + 10);
        t.carry(false, NOW + 10);
    }
    assert!(t.a.is_trusted(&key(2)) && t.b.is_trusted(&key(1)));

    let mut server = TrustBook::new(key(3));
    let request = TrustRequest::sign(&signing(1), key(3), NOW, 1, "").unwrap();
    let r = server
        .receive(&signing(3), Statement::Request(request), None, true, NOW)
        .unwrap();
    assert_eq!(r.new_request, None);
    assert_eq!(server.approved().collect::<Vec<_>>(), vec![key(1)]);
}

#[test]
fn auto_approve_keeps_a_bounded_number_of_approvals_oldest_forgotten() {
    let mut server = TrustBook::new(key(3));
    let requester = |i: usize| {
        let mut seed = [0xa5; 32];
        seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
        SigningKey::from_bytes(&seed)
    };
    let extra = 5;
    // Anyone can make keys: a flood of requests, each approved at once, none countersigned.
    for i in 0..MAX_APPROVED + extra {
        let at = NOW + i as u64;
        let request = TrustRequest::sign(&requester(i), key(3), at, 1, "").unwrap();
        server
            .receive(&signing(3), Statement::Request(request), None, true, at)
            .unwrap();
    }
    assert_eq!(server.approved().count(), MAX_APPROVED);
    assert_eq!(server.approvals_evicted(), extra as u64);
    let approved: Vec<NodeKey> = server.approved().collect();
    let key_of = |i: usize| NodeKey(requester(i).verifying_key().to_bytes());
    for i in 0..extra {
        assert!(!approved.contains(&key_of(i)), "the oldest went first");
    }
    assert!(approved.contains(&key_of(extra)));
    assert!(approved.contains(&key_of(MAX_APPROVED + extra - 1)));
    assert!(
        server.state().approved.len() <= MAX_APPROVED,
        "and the saved state"
    );
}

#[test]
fn the_saved_state_round_trips_and_tampering_is_left_out() {
    let mut t = Two::new();
    t.a.handshake(&signing(1), key(2), "", NOW, 1).unwrap();
    t.carry(true, NOW);
    t.b.approve(&signing(2), key(1), NOW + 1).unwrap();
    t.carry(false, NOW + 2);
    t.a.learn_name(key(2), Some("bob".parse().unwrap()));
    let state = t.a.state();
    let (loaded, warnings) = TrustBook::load(key(1), &state, NOW + 10);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(loaded.is_trusted(&key(2)));
    assert_eq!(loaded.name_of(&key(2)).unwrap().as_str(), "bob");
    // What we hold is offered to the rendezvous again after a restart.
    assert!(loaded
        .unsubmitted()
        .iter()
        .any(|s| matches!(s, Statement::Record(r) if r.is_complete())));

    // One byte of the record changed in the file: the record is left out, with a warning.
    let mut tampered = state.clone();
    let mut bytes = decode_hex(&tampered.ledger[0]).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    tampered.ledger[0] = encode_hex(&bytes);
    let (loaded, warnings) = TrustBook::load(key(1), &tampered, NOW + 10);
    assert!(!loaded.is_trusted(&key(2)));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    // A file written for another node grants nothing to this one.
    let (other, warnings) = TrustBook::load(key(5), &state, NOW + 10);
    assert_eq!(other.trusted().count(), 0);
    assert!(!warnings.is_empty());
}

#[test]
fn a_node_that_lost_its_state_takes_its_own_revocation_back_over_the_record_it_ended() {
    // Found by the property test: a node untrusted a peer, lost trust.json, and the
    // rendezvous handed back both the record (still waiting in the node's outbox) and the
    // node's own revocation (its ledger's newest); the node refused its own revocation and
    // trusted the peer again.
    let mut t = Two::new();
    t.a.handshake(&signing(1), key(2), "", NOW, 7).unwrap();
    t.carry(true, NOW + 10);
    t.b.approve(&signing(2), key(1), NOW + 20).unwrap();
    t.carry(false, NOW + 30);
    let record = t.a.unsubmitted().to_vec();
    t.carry(true, NOW + 40);
    assert!(t.a.is_trusted(&key(2)) && t.b.is_trusted(&key(1)));
    t.a.untrust(&signing(1), key(2), NOW + 50).unwrap();
    let revocation = t.a.unsubmitted().last().cloned().unwrap();
    assert!(matches!(revocation, Statement::Revocation(_)));
    // a starts again with nothing; the record comes back first, then its own revocation.
    let mut a = TrustBook::new(key(1));
    for s in record.clone() {
        a.receive(&signing(1), s, None, false, NOW + 60).unwrap();
    }
    assert!(a.is_trusted(&key(2)));
    let got = a
        .receive(&signing(1), revocation.clone(), None, false, NOW + 61)
        .unwrap();
    assert_eq!(got.gate, Gate::Closed(key(2)));
    // The other way round: the revocation first, and the older record changes nothing.
    let mut a = TrustBook::new(key(1));
    a.receive(&signing(1), revocation, None, false, NOW + 60)
        .unwrap();
    assert_eq!(a.ledger_len(), 1);
    for s in record {
        a.receive(&signing(1), s, None, false, NOW + 62).unwrap();
    }
    assert!(!a.is_trusted(&key(2)));
}
