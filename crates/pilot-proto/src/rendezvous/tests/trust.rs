//! Trust statements: who may submit what, what reaches the ledger, and what opens `Connect`
//! and the relay.

use std::time::Duration;

use ed25519_dalek::Signer;

use super::*;
use crate::wire::trust::{
    PairState, Revocation, TrustLedger, TrustRequest, MAX_FUTURE_MS, REQUEST_LIFETIME_MS,
};

fn registered(sim: &mut Sim, n: u8) -> Client {
    let mut c = Client::new(n, &format!("192.0.2.{n}:{}", 40000 + u16::from(n)));
    assert!(matches!(
        c.register(sim, &[]),
        Some(Message::Registered { .. })
    ));
    c
}

fn request(from: &Client, to: &Client, issued_ms: u64, nonce: u64) -> Statement {
    Statement::Request(
        TrustRequest::sign(from.signing_key(), to.key(), issued_ms, nonce, "hi").unwrap(),
    )
}

fn revocation(by: &Client, other: &Client, issued_ms: u64) -> Statement {
    Statement::Revocation(Revocation::sign(by.signing_key(), other.key(), issued_ms, "").unwrap())
}

fn stored(reply: Option<Message>) {
    assert!(matches!(reply, Some(Message::Stored { .. })), "{reply:?}");
}

/// Whether `a` gets introduced to `b` and can relay to it, checking that both answers agree
/// and that a refusal discloses nothing to anyone.
fn open(sim: &mut Sim, a: &mut Client, b: &Client) -> bool {
    // One second apart keeps well inside the Connect rate.
    sim.now += Duration::from_secs(1);
    let connect = a.ask(sim, Port::Main, &Message::Connect { target: b.key() });
    let introduced = match connect {
        Some(Message::Punch { peer, .. }) => {
            assert_eq!(peer, b.key());
            assert_eq!(sim.poll().map(|s| s.1), Some(b.at), "b is punched too");
            true
        }
        other => {
            assert_eq!(refused(other), RefusalCode::NotAllowed);
            false
        }
    };
    let mut frame = vec![0u8; 64];
    let n = write_relay(&mut frame, RELAY_TO, &b.key(), b"\x04wg").unwrap();
    let relayed = sim.send(Port::Main, a.at, &frame[..n]).is_some();
    assert_eq!(introduced, relayed, "Connect and relay disagree");
    assert_eq!(sim.poll(), None, "nothing else sent");
    introduced
}

#[test]
fn only_a_complete_record_opens_connect_and_relay_and_either_revocation_closes_them() {
    let mut sim = Sim::new();
    let mut a = registered(&mut sim, 1);
    let mut b = registered(&mut sim, 2);
    assert!(!open(&mut sim, &mut a, &b), "no record");

    // a asks; b is told.
    let ask = request(&a, &b, sim.now_ms(), 1);
    stored(a.submit(&mut sim, &ask));
    let delivered = sim.deliveries_to(b.at);
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].2, ask);
    b.ack(&mut sim, delivered[0].0);
    assert!(!open(&mut sim, &mut a, &b), "a request opens nothing");

    // b approves: a half record, delivered to a. Still closed, both ways.
    let half = Statement::Record(b.approve(&a, sim.now_ms()));
    stored(b.submit(&mut sim, &half));
    let delivered = sim.deliveries_to(a.at);
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].2, half);
    a.ack(&mut sim, delivered[0].0);
    assert!(!open(&mut sim, &mut a, &b), "a half record opens nothing");
    assert!(!open(&mut sim, &mut b, &a), "a half record opens nothing");

    // a countersigns: the complete record is admitted and delivered to b.
    let Statement::Record(half) = half else {
        unreachable!()
    };
    let complete = Statement::Record(half.countersign(a.signing_key(), sim.now_ms()).unwrap());
    stored(a.submit(&mut sim, &complete));
    let delivered = sim.deliveries_to(b.at);
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].2, complete);
    b.ack(&mut sim, delivered[0].0);
    assert_eq!(sim.store.statement(&a.key(), &b.key()), Some(complete));
    assert!(open(&mut sim, &mut a, &b));
    assert!(open(&mut sim, &mut b, &a));

    // b revokes: closed both ways, and a is told.
    let revoked = revocation(&b, &a, sim.now_ms());
    stored(b.submit(&mut sim, &revoked));
    assert_eq!(sim.deliveries_to(a.at)[0].2, revoked);
    assert!(!open(&mut sim, &mut a, &b));
    assert!(!open(&mut sim, &mut b, &a));

    // A newer record opens it again; a revocation by a closes it as well.
    sim.now += Duration::from_secs(1);
    let again = a.record_with(&b, sim.now_ms());
    stored(b.submit(&mut sim, &again));
    sim.drain();
    assert!(open(&mut sim, &mut a, &b));
    let revoked = revocation(&a, &b, sim.now_ms());
    stored(a.submit(&mut sim, &revoked));
    sim.drain();
    assert!(!open(&mut sim, &mut a, &b));
    assert!(!open(&mut sim, &mut b, &a));
    assert_eq!(sim.server.counters().statements_stored, 6);
}

#[test]
fn forged_and_misdirected_statements_are_refused_and_change_nothing() {
    let mut sim = Sim::new();
    let mut a = registered(&mut sim, 1);
    let mut b = registered(&mut sim, 2);
    let mut c = registered(&mut sim, 3);
    let now = sim.now_ms();

    let ask = request(&a, &b, now, 1);
    let Statement::Request(mut altered) = ask.clone() else {
        unreachable!()
    };
    altered.justification.push('!');
    let expired = request(&a, &b, now - REQUEST_LIFETIME_MS - 1, 2);
    let early = request(&a, &b, now + MAX_FUTURE_MS + 60_000, 3);

    // A record for a and b whose second signature is c's, over exactly the bytes b would sign
    // (the same construction with b's key verifies).
    let with_signature_of = |signer: &Client| {
        let mut record = a.approve(&b, now);
        let mut signed = b"pilot/v1/trust-record".to_vec();
        signed.extend_from_slice(&record.low.0);
        signed.extend_from_slice(&record.high.0);
        signed.extend_from_slice(&now.to_be_bytes());
        let signature = signer.signing_key().sign(&signed).to_bytes();
        if record.low == b.key() {
            record.low_signature = signature;
        } else {
            record.high_signature = signature;
        }
        record
    };
    assert_eq!(with_signature_of(&b).verify(now), Ok(()));
    let third = Statement::Record(with_signature_of(&c));
    let complete = a.record_with(&b, now);
    let Statement::Record(mut redated) = complete.clone() else {
        unreachable!()
    };
    redated.issued_ms += 1;
    let half_by_a = Statement::Record(a.approve(&b, now));
    let Statement::Revocation(mut reasoned) = revocation(&a, &b, now) else {
        unreachable!()
    };
    reasoned.reason = "changed my mind".into();

    let cases = [
        ('c', ask.clone(), "request submitted by a third node"),
        ('a', Statement::Request(altered), "altered justification"),
        ('a', expired, "expired request"),
        ('a', early, "request from the future"),
        ('a', third, "record signed by a third key"),
        (
            'a',
            Statement::Record(redated),
            "record with an altered date",
        ),
        ('c', complete, "complete record submitted by a stranger"),
        (
            'b',
            half_by_a.clone(),
            "approval submitted by its unsigned party",
        ),
        ('c', half_by_a, "approval submitted by a stranger"),
        (
            'c',
            revocation(&a, &b, now),
            "revocation submitted by a stranger",
        ),
        (
            'a',
            Statement::Revocation(reasoned),
            "revocation with an altered reason",
        ),
    ];
    let n = cases.len() as u64;
    for (who, statement, what) in cases {
        let client = match who {
            'a' => &mut a,
            'b' => &mut b,
            _ => &mut c,
        };
        assert_eq!(
            refused(client.submit(&mut sim, &statement)),
            RefusalCode::BadStatement,
            "{what}"
        );
    }
    let counters = sim.server.counters();
    assert_eq!(counters.refused(Refusal::BadStatement), n);
    assert_eq!(counters.statements_stored, 0);
    for client in [&a, &b, &c] {
        assert!(sim.store.outbox(&client.key()).is_empty());
    }
    assert_eq!(sim.store.statement(&a.key(), &b.key()), None);
    assert_eq!(sim.server.ledger().state(&a.key(), &b.key()), None);
}

#[test]
fn a_revocation_handed_back_by_the_party_that_did_not_sign_it_takes_effect() {
    // A rendezvous restored from a backup older than b's revocation, while b is away: a, which
    // holds the revocation, hands it back when asked for its side (Registered.resubmit). It
    // used to be refused (bad_statement): relay and introductions stayed open for the pair
    // until b came back.
    let mut sim = Sim::new();
    let mut a = registered(&mut sim, 1);
    let b = registered(&mut sim, 2);
    let record = a.record_with(&b, sim.now_ms());
    stored(a.submit(&mut sim, &record));
    sim.drain();
    assert!(sim.server.ledger().trusted(&a.key(), &b.key()));
    sim.now += Duration::from_secs(1);
    let revoked = revocation(&b, &a, sim.now_ms());
    stored(a.submit(&mut sim, &revoked));
    assert!(!sim.server.ledger().trusted(&a.key(), &b.key()));
    assert_eq!(
        sim.store.statement(&a.key(), &b.key()),
        Some(revoked.clone())
    );
    // Its signer holds it already: nothing is delivered to anyone.
    assert_eq!(sim.drain(), Vec::new());
    assert!(sim.store.outbox(&b.key()).is_empty());
    // Again changes nothing, and is answered Stored.
    stored(a.submit(&mut sim, &revoked));
    assert_eq!(sim.server.counters().refused(Refusal::BadStatement), 0);
}

#[test]
fn an_older_record_replayed_after_a_revocation_changes_nothing() {
    let mut sim = Sim::new();
    let (mut a, mut b) = pair(&mut sim);
    let old = sim.store.statement(&a.key(), &b.key()).unwrap();
    sim.now += Duration::from_secs(1);
    let revoked_ms = sim.now_ms();
    let revoked = revocation(&b, &a, revoked_ms);
    stored(b.submit(&mut sim, &revoked));
    let (id, _, _) = sim.deliveries_to(a.at).remove(0);
    a.ack(&mut sim, id);
    let stored_before = sim.server.counters().statements_stored;

    // Resubmitted, the old record is answered like any known statement, but the revocation
    // stands; so does it against a record issued at the same millisecond.
    sim.now += Duration::from_secs(1);
    stored(a.submit(&mut sim, &old));
    stored(a.submit(&mut sim, &b.record_with(&a, revoked_ms)));
    stored(b.submit(&mut sim, &revoked));
    assert!(matches!(
        sim.server.ledger().state(&a.key(), &b.key()),
        Some(PairState::Revoked(_))
    ));
    assert_eq!(sim.store.statement(&a.key(), &b.key()), Some(revoked));
    assert_eq!(sim.server.counters().statements_stored, stored_before);
    assert_eq!(sim.drain(), vec![], "nothing delivered");
    assert!(sim.store.outbox(&a.key()).is_empty() && sim.store.outbox(&b.key()).is_empty());
    assert!(!open(&mut sim, &mut a, &b));
}

#[test]
fn stored_is_sent_only_once_the_statement_is_in_the_store() {
    let mut sim = Sim::new();
    let mut a = registered(&mut sim, 1);
    let b = registered(&mut sim, 2);
    let ask = request(&a, &b, sim.now_ms(), 1);
    let complete = b.record_with(&a, sim.now_ms());

    sim.store.fail_writes(true);
    assert_eq!(a.submit(&mut sim, &ask), None);
    assert_eq!(a.submit(&mut sim, &complete), None);
    assert_eq!(sim.server.counters().refused(Refusal::StoreFailed), 2);
    assert_eq!(sim.drain(), vec![], "nothing delivered");
    assert!(sim.store.outbox(&b.key()).is_empty());
    assert_eq!(sim.server.ledger().state(&a.key(), &b.key()), None);
    assert!(!open(&mut sim, &mut a, &b));

    // The node retries once the disk works again.
    sim.store.fail_writes(false);
    stored(a.submit(&mut sim, &ask));
    stored(a.submit(&mut sim, &complete));
    assert_eq!(sim.store.outbox(&b.key()).len(), 2);
    sim.drain();
    assert!(open(&mut sim, &mut a, &b));
}

#[test]
fn submissions_need_a_fresh_registration_and_keep_to_a_rate() {
    let mut sim = Sim::new();
    let mut a = registered(&mut sim, 1);
    let b = registered(&mut sim, 2);
    let mut stranger = Client::new(9, "192.0.2.9:9");
    let now = sim.now_ms();
    assert_eq!(
        refused(stranger.submit(&mut sim, &request(&stranger, &b, now, 1))),
        RefusalCode::NotRegistered
    );
    // A burst of 20, each replacing the one before (same requester and target).
    let replies: Vec<Option<Message>> = (0..25)
        .map(|nonce| a.submit(&mut sim, &request(&a, &b, now, nonce)))
        .collect();
    assert!(replies[..20]
        .iter()
        .all(|r| matches!(r, Some(Message::Stored { .. }))));
    assert!(replies[20..].iter().all(|r| matches!(
        r,
        Some(Message::Refused {
            code: RefusalCode::RateLimited,
            ..
        })
    )));
    assert_eq!(
        sim.store.outbox(&b.key()).len(),
        1,
        "one request per requester"
    );
}

#[test]
fn an_outbox_keeps_the_newest_request_per_requester_and_at_most_64() {
    let mut sim = Sim::new();
    let mut a = registered(&mut sim, 1);
    let b = Client::new(2, "203.0.113.2:40002"); // away: nothing is delivered meanwhile
    let first = request(&a, &b, sim.now_ms(), 1);
    stored(a.submit(&mut sim, &first));
    stored(a.submit(&mut sim, &first));
    assert_eq!(sim.store.outbox(&b.key()).len(), 1, "identical: kept once");
    sim.now += Duration::from_secs(1);
    let now = sim.now_ms();
    let newer = request(&a, &b, now, 2);
    stored(a.submit(&mut sim, &newer));
    stored(a.submit(&mut sim, &first));
    let held = sim.store.outbox(&b.key());
    assert_eq!(held.len(), 1);
    assert_eq!(
        held[0].statement, newer,
        "the newer replaced the older, and stays"
    );
    assert_eq!(sim.server.counters().statements_stored, 2);

    // 63 more requesters fill the outbox; the next one is turned away...
    for n in 10..73 {
        let mut c = registered(&mut sim, n);
        stored(c.submit(&mut sim, &request(&c, &b, now, 1)));
    }
    assert_eq!(sim.store.outbox(&b.key()).len(), MAX_OUTBOX);
    let mut late = registered(&mut sim, 80);
    assert_eq!(
        refused(late.submit(&mut sim, &request(&late, &b, now, 1))),
        RefusalCode::RateLimited
    );
    assert_eq!(sim.server.counters().refused(Refusal::OutboxFull), 1);
    // ...but a ledger change is never refused for a full outbox.
    stored(late.submit(&mut sim, &revocation(&late, &b, now)));
    assert_eq!(sim.store.outbox(&b.key()).len(), MAX_OUTBOX + 1);
}

#[test]
fn a_node_that_lost_its_ledger_gets_it_back_and_is_asked_for_its_own_once() {
    // Issue 12, item 2: a node whose trust.json was lost (or restored from an old image) was
    // refused by nothing and repaired by nothing: its peer kept sending, it kept dropping.
    let mut sim = Sim::new();
    let (mut a, mut b) = pair(&mut sim);
    let record = sim
        .server
        .ledger()
        .state(&a.key(), &b.key())
        .unwrap()
        .to_statement();
    // b restarts with an empty ledger: its registration says so with its digest.
    b.trust_digest = Some(TrustLedger::new().digest_of(&b.key()));
    let Some(Message::Registered { resubmit, .. }) = b.register(&mut sim, &[]) else {
        panic!("not registered")
    };
    assert!(resubmit, "b is asked to hand over its side too");
    let delivered = sim.deliveries_to(b.at);
    assert_eq!(delivered.len(), 1);
    assert_eq!(
        delivered[0].2, record,
        "the record, signed by both, goes back to b"
    );
    assert_eq!(sim.server.counters().ledger_resyncs, 1);
    // Held in memory only: the ledger it came from is durable.
    assert!(sim.store.outbox(&b.key()).is_empty());
    b.ack(&mut sim, delivered[0].0);
    assert!(sim.deliveries_to(b.at).is_empty());
    // The same difference again (say b refuses what it got) is not acted on twice.
    let Some(Message::Registered { resubmit, .. }) = b.register(&mut sim, &[]) else {
        panic!("not registered")
    };
    assert!(!resubmit);
    assert_eq!(sim.server.counters().ledger_resyncs, 1);
    // In step again: nothing to do.
    b.trust_digest = None;
    let Some(Message::Registered { resubmit, .. }) = b.register(&mut sim, &[]) else {
        panic!("not registered")
    };
    assert!(!resubmit);
    assert!(sim.deliveries_to(b.at).is_empty());
    // a, in step all along, was never asked for anything.
    let Some(Message::Registered { resubmit, .. }) = a.register(&mut sim, &[]) else {
        panic!("not registered")
    };
    assert!(!resubmit);
}

#[test]
fn a_ledger_sent_back_unacknowledged_is_resent_and_forgotten_on_restart() {
    let mut sim = Sim::new();
    let (_a, mut b) = pair(&mut sim);
    b.trust_digest = Some(TrustLedger::new().digest_of(&b.key()));
    b.register(&mut sim, &[]);
    assert_eq!(sim.deliveries_to(b.at).len(), 1);
    // Lost on the way: sent again.
    sim.advance(Duration::from_secs(3));
    let again = sim.deliveries_to(b.at);
    assert_eq!(again.len(), 1);
    // A restart forgets it (nothing was stored); b's next registration finds the difference
    // again and it is sent again.
    let store = sim.store.clone();
    sim.restart(|| Box::new(store));
    sim.drain();
    b.register(&mut sim, &[]);
    assert_eq!(sim.deliveries_to(b.at).len(), 1);
}
