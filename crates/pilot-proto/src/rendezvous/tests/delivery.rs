//! Delivery of trust statements: to nodes that are away, across restarts, until acknowledged.

use std::time::Duration;

use super::*;
use crate::wire::trust::{TrustRequest, REQUEST_LIFETIME_MS};

#[test]
fn a_request_waits_for_its_target_across_a_restart_in_memory() {
    let store = MemoryStore::new();
    let sim = Sim::with(store.clone(), |_| {});
    a_request_waits_for_its_target_across_a_restart(sim, || Box::new(store.clone()));
    assert!(store
        .outbox(&Client::new(2, "192.0.2.2:2").key())
        .is_empty());
}

#[test]
fn a_returning_node_gets_its_items_in_rounds_oldest_first() {
    let mut sim = Sim::new();
    let mut b = Client::new(2, "203.0.113.2:40002");
    let total = DELIVERY_ROUND + 8;
    for n in 0..total {
        let n = 10 + n as u8;
        let mut c = Client::new(n, &format!("192.0.2.{n}:1"));
        c.register(&mut sim, &[]).unwrap();
        let ask = request(&c, &b, sim.now_ms());
        c.submit(&mut sim, &ask).unwrap();
    }
    b.register(&mut sim, &[]).unwrap();
    let first = sim.deliveries_to(b.at);
    assert_eq!(first.len(), DELIVERY_ROUND);
    let ids: Vec<u64> = first.iter().map(|d| d.0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first");
    for id in ids {
        b.ack(&mut sim, id);
    }
    sim.advance(RESEND_INTERVAL);
    let rest = sim.deliveries_to(b.at);
    assert_eq!(rest.len(), 8);
    for (id, ..) in rest {
        b.ack(&mut sim, id);
    }
    assert!(sim.store.outbox(&b.key()).is_empty());
    assert_ne!(sim.server.poll_timeout().unwrap().1, "delivery");
}

#[test]
fn a_fresh_target_is_told_at_once_and_until_it_acknowledges_or_leaves() {
    let mut sim = Sim::new();
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut b = Client::new(2, "203.0.113.2:40002");
    a.register(&mut sim, &[]).unwrap();
    b.register(&mut sim, &[]).unwrap();
    let ask = request(&a, &b, sim.now_ms());
    a.submit(&mut sim, &ask).unwrap();
    let (id, from_name, _) = sim.deliveries_to(b.at).remove(0);
    assert_eq!(from_name, None, "a has no hostname");

    // An ack that cannot be stored does not count: the item comes again.
    sim.store.fail_writes(true);
    b.ack(&mut sim, id);
    assert_eq!(sim.server.counters().acks, 0);
    sim.advance(RESEND_INTERVAL);
    assert_eq!(sim.deliveries_to(b.at).len(), 1);
    sim.store.fail_writes(false);

    // b goes silent: resends stop when it expires (80 s after its registration)...
    let sent = sim.server.counters().deliveries;
    sim.advance(Duration::from_secs(100));
    let resent = sim.server.counters().deliveries - sent;
    assert!((38..=40).contains(&resent), "{resent}");
    sim.drain();
    assert_ne!(sim.server.poll_timeout().unwrap().1, "delivery");
    // ...and start again when it is back.
    b.register(&mut sim, &[]).unwrap();
    assert_eq!(sim.deliveries_to(b.at)[0].0, id);
    b.ack(&mut sim, id);
    assert_eq!(sim.server.counters().acks, 1);
}

#[test]
fn registering_again_does_not_multiply_deliveries() {
    let mut sim = Sim::new();
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut b = Client::new(2, "203.0.113.2:40002");
    a.register(&mut sim, &[]).unwrap();
    let ask = request(&a, &b, sim.now_ms());
    a.submit(&mut sim, &ask).unwrap();
    // A burst of registrations (a node, or someone spoofing its source address) gets one
    // round; the next comes with the running schedule, at b's latest endpoint.
    for _ in 0..5 {
        b.register(&mut sim, &[]).unwrap();
    }
    assert_eq!(sim.deliveries_to(b.at).len(), 1);
    b.at = "203.0.113.2:50000".parse().unwrap();
    b.register(&mut sim, &[]).unwrap();
    assert_eq!(sim.drain(), vec![]);
    sim.advance(RESEND_INTERVAL);
    assert_eq!(sim.deliveries_to(b.at).len(), 1);
}

#[test]
fn undelivered_items_are_purged_after_their_lifetime() {
    let mut sim = Sim::new();
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut b = Client::new(2, "203.0.113.2:40002");
    a.register(&mut sim, &[]).unwrap();
    let ask = request(&a, &b, sim.now_ms());
    a.submit(&mut sim, &ask).unwrap();
    sim.advance(Duration::from_millis(REQUEST_LIFETIME_MS) - Duration::from_secs(3600));
    assert_eq!(sim.store.outbox(&b.key()).len(), 1, "kept for its lifetime");
    sim.advance(Duration::from_secs(2 * 3600));
    assert!(sim.store.outbox(&b.key()).is_empty());
    b.register(&mut sim, &[]).unwrap();
    assert_eq!(sim.deliveries_to(b.at), vec![]);
}

#[test]
fn the_outbox_is_bounded_for_all_nodes_together() {
    // Issue 15, A4: the outbox was capped per target only, and targets can be any key.
    let mut sim = Sim::with(MemoryStore::new(), |c| c.max_outbox = 3);
    let mut a = Client::new(1, "198.51.100.1:40001");
    a.register(&mut sim, &[]);
    for n in 0..4u8 {
        let target = Client::new(100 + n, "192.0.2.1:1").key();
        let ask =
            TrustRequest::sign(a.signing_key(), target, sim.now_ms(), u64::from(n), "hi").unwrap();
        let reply = a.submit(&mut sim, &Statement::Request(ask));
        if n < 3 {
            assert!(matches!(reply, Some(Message::Stored { .. })), "{reply:?}");
        } else {
            assert_eq!(refused(reply), RefusalCode::RateLimited);
        }
    }
    assert_eq!(sim.server.counters().refused(Refusal::OutboxFull), 1);
}

#[test]
fn a_revocation_that_ends_trust_goes_through_a_full_outbox() {
    // Found by the property test: junk for keys that never collect it filled the outbox, and
    // an untrust was refused (rate_limited) for as long as the junk lived (a week), while
    // the rendezvous kept introducing and relaying the pair.
    let mut sim = Sim::with(MemoryStore::new(), |c| c.max_outbox = 3);
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut b = Client::new(2, "198.51.100.2:40002");
    let mut junk = Client::new(3, "192.0.2.3:40003");
    for c in [&mut a, &mut b, &mut junk] {
        c.register(&mut sim, &[]).unwrap();
    }
    let record = a.record_with(&b, sim.now_ms());
    assert!(matches!(
        a.submit(&mut sim, &record),
        Some(Message::Stored { .. })
    ));
    for (id, ..) in sim.deliveries_to(b.at) {
        b.ack(&mut sim, id);
    }
    for n in 0..3u8 {
        let nobody = Client::new(100 + n, "192.0.2.1:1");
        let ask = request(&junk, &nobody, sim.now_ms());
        assert!(matches!(
            junk.submit(&mut sim, &ask),
            Some(Message::Stored { .. })
        ));
    }
    let nobody = Client::new(110, "192.0.2.1:1");
    let more = request(&junk, &nobody, sim.now_ms());
    assert_eq!(
        refused(junk.submit(&mut sim, &more)),
        RefusalCode::RateLimited
    );
    // b ends trust: stored, in the ledger, and delivered to a.
    sim.advance(Duration::from_secs(1));
    let revoked = Statement::Revocation(
        crate::wire::trust::Revocation::sign(b.signing_key(), a.key(), sim.now_ms(), "").unwrap(),
    );
    assert!(matches!(
        b.submit(&mut sim, &revoked),
        Some(Message::Stored { .. })
    ));
    assert!(!sim.server.ledger().trusted(&a.key(), &b.key()));
    let delivered = sim.deliveries_to(a.at);
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].2, revoked);
    // A revocation of a pair the ledger does not hold is not an outbox item that anyone may
    // send anyone: it is held to the ledger's limits (see below), not the outbox's.
    let withdrawn = Statement::Revocation(
        crate::wire::trust::Revocation::sign(junk.signing_key(), nobody.key(), sim.now_ms(), "")
            .unwrap(),
    );
    assert!(matches!(
        junk.submit(&mut sim, &withdrawn),
        Some(Message::Stored { .. })
    ));
}

#[test]
fn a_full_outbox_is_shared_by_source_address() {
    // Issue 15, A4: registered throwaway keys filled the global outbox with requests to keys
    // nobody collects, and honest requests were refused outbox_full for the week the junk
    // lived. Now a full outbox evicts the oldest item of the source holding the most.
    let mut sim = Sim::with(MemoryStore::new(), |c| c.max_outbox = 4);
    let mut junk = Client::new(3, "192.0.2.3:40003");
    let mut junk2 = Client::new(4, "192.0.2.3:40004");
    let mut honest = Client::new(5, "198.51.100.5:40005");
    for c in [&mut junk, &mut junk2, &mut honest] {
        c.register(&mut sim, &[]).unwrap();
    }
    let nobody = |n: u8| Client::new(100 + n, "192.0.2.1:1");
    let mut junk_items = Vec::new();
    for n in 0..4u8 {
        let from = if n % 2 == 0 { &mut junk } else { &mut junk2 };
        let ask = request(from, &nobody(n), sim.now_ms());
        assert!(matches!(
            from.submit(&mut sim, &ask),
            Some(Message::Stored { .. })
        ));
        junk_items.push(ask);
        sim.advance(Duration::from_millis(10));
    }
    // A fifth from the same address, whatever the key: refused, nothing evicted.
    let ask = request(&junk2, &nobody(9), sim.now_ms());
    assert_eq!(
        refused(junk2.submit(&mut sim, &ask)),
        RefusalCode::RateLimited
    );
    assert_eq!(sim.server.counters().refused(Refusal::OutboxFull), 1);
    // An honest request from elsewhere gets in; the flood's oldest item makes room, in the
    // store as in memory.
    let target = Client::new(50, "203.0.113.50:1");
    let honest_ask = request(&honest, &target, sim.now_ms());
    assert!(matches!(
        honest.submit(&mut sim, &honest_ask),
        Some(Message::Stored { .. })
    ));
    assert_eq!(sim.server.counters().outbox_evicted, 1);
    assert_eq!(sim.server.outbox_len(), 4);
    assert!(
        sim.store.outbox(&nobody(0).key()).is_empty(),
        "the oldest evicted"
    );
    assert_eq!(sim.store.outbox(&nobody(1).key()).len(), 1);
    assert_eq!(sim.store.outbox(&target.key())[0].statement, honest_ask);

    // After a restart the shares are known again (from where each sender registered): the
    // next honest request still displaces the flood, never the honest one.
    let store = sim.store.clone();
    sim.restart_with(|| Box::new(store), |c| c.max_outbox = 4);
    let second = request(&honest, &Client::new(51, "203.0.113.51:1"), sim.now_ms());
    honest.register(&mut sim, &[]).unwrap();
    assert!(matches!(
        honest.submit(&mut sim, &second),
        Some(Message::Stored { .. })
    ));
    assert!(
        sim.store.outbox(&nobody(1).key()).is_empty(),
        "the next oldest evicted"
    );
    assert_eq!(
        sim.store.outbox(&target.key()).len(),
        1,
        "the honest one kept"
    );
    // Two each now: the flood's next is refused rather than evicting the honest source.
    junk.register(&mut sim, &[]).unwrap();
    let ask = request(&junk, &nobody(10), sim.now_ms());
    assert_eq!(
        refused(junk.submit(&mut sim, &ask)),
        RefusalCode::RateLimited
    );
    assert_eq!(sim.server.outbox_len(), 4);
}

#[test]
fn a_node_flooded_with_requests_still_gets_honest_ones() {
    // The per-node cap is shared by source too: 64 throwaway keys at one address filled a
    // node's outbox (a node that is down, say), and its honest askers were refused for a week.
    let mut sim = Sim::new();
    let victim = Client::new(2, "203.0.113.2:40002");
    for n in 0..MAX_OUTBOX as u8 {
        let mut junk = Client::new(10 + n, &format!("192.0.2.3:{}", 40_000 + u16::from(n)));
        junk.register(&mut sim, &[]).unwrap();
        let ask = request(&junk, &victim, sim.now_ms());
        assert!(matches!(
            junk.submit(&mut sim, &ask),
            Some(Message::Stored { .. })
        ));
    }
    let mut honest = Client::new(1, "198.51.100.1:40001");
    honest.register(&mut sim, &[]).unwrap();
    let ask = request(&honest, &victim, sim.now_ms());
    assert!(matches!(
        honest.submit(&mut sim, &ask),
        Some(Message::Stored { .. })
    ));
    assert_eq!(sim.server.counters().outbox_evicted, 1);
    let waiting = sim.store.outbox(&victim.key());
    assert_eq!(waiting.len(), MAX_OUTBOX);
    assert!(waiting.iter().any(|i| i.statement == ask));
}

#[test]
fn new_ledger_pairs_are_capped_and_rate_limited_per_source_and_known_pairs_always_change() {
    // Issue 15, A4: a revocation needs only its signer's key, so one registered key could
    // grow the ledger without bound by revoking made-up partners.
    let mut sim = Sim::with(MemoryStore::new(), |c| {
        c.max_trust_pairs = 4;
        c.new_pairs_per_source = crate::rendezvous::rate::Rate {
            per_sec: 1,
            burst: 2,
        };
    });
    let (mut a, mut b) = pair(&mut sim);
    trust(&mut sim, &mut a, &mut b);
    let mut junk = Client::new(3, "192.0.2.3:40003");
    junk.register(&mut sim, &[]).unwrap();
    let revoke = |by: &Client, other: NodeKey, now_ms: u64| {
        let v = crate::wire::trust::Revocation::sign(by.signing_key(), other, now_ms, "");
        Statement::Revocation(v.unwrap())
    };
    let nobody = |n: u8| Client::new(100 + n, "192.0.2.1:1").key();
    for n in 0..2 {
        let v = revoke(&junk, nobody(n), sim.now_ms());
        assert!(matches!(
            junk.submit(&mut sim, &v),
            Some(Message::Stored { .. })
        ));
    }
    let v = revoke(&junk, nobody(2), sim.now_ms());
    assert_eq!(refused(junk.submit(&mut sim, &v)), RefusalCode::RateLimited);
    assert_eq!(sim.server.counters().refused(Refusal::NewPairs), 1);
    sim.advance(Duration::from_secs(1));
    let v = revoke(&junk, nobody(3), sim.now_ms());
    assert!(matches!(
        junk.submit(&mut sim, &v),
        Some(Message::Stored { .. })
    ));
    sim.advance(Duration::from_secs(1));
    let v = revoke(&junk, nobody(4), sim.now_ms());
    assert_eq!(refused(junk.submit(&mut sim, &v)), RefusalCode::RateLimited);
    assert_eq!(sim.server.counters().refused(Refusal::LedgerFull), 1);
    assert_eq!(sim.server.ledger().len(), 4);
    // A pair the ledger holds changes however full it is: the untrust goes through.
    let v = revoke(&b, a.key(), sim.now_ms());
    assert!(matches!(
        b.submit(&mut sim, &v),
        Some(Message::Stored { .. })
    ));
    assert!(!sim.server.ledger().trusted(&a.key(), &b.key()));
}

#[test]
fn a_ledger_item_superseded_while_waiting_is_not_delivered() {
    // Found by the property test: b left a record waiting in its outbox, then revoked; after
    // losing its state it got the record back (and trusted a again) along with its revocation.
    let mut sim = Sim::new();
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut b = Client::new(2, "198.51.100.2:40002");
    a.register(&mut sim, &[]).unwrap();
    b.register(&mut sim, &[]).unwrap();
    let record = a.record_with(&b, sim.now_ms());
    assert!(matches!(
        a.submit(&mut sim, &record),
        Some(Message::Stored { .. })
    ));
    assert_eq!(
        sim.store.outbox(&b.key()).len(),
        1,
        "b has not acknowledged it"
    );
    sim.advance(Duration::from_secs(1));
    let revoked = Statement::Revocation(
        crate::wire::trust::Revocation::sign(b.signing_key(), a.key(), sim.now_ms(), "").unwrap(),
    );
    assert!(matches!(
        b.submit(&mut sim, &revoked),
        Some(Message::Stored { .. })
    ));
    assert!(
        sim.store.outbox(&b.key()).is_empty(),
        "the record is superseded"
    );
    let to_a = sim.store.outbox(&a.key());
    assert_eq!(to_a.len(), 1);
    assert_eq!(to_a[0].statement, revoked);
    sim.drain();
    sim.advance(Duration::from_secs(3));
    assert!(sim.deliveries_to(b.at).is_empty());
}

#[test]
fn a_node_that_lost_its_ledger_gets_it_back_through_a_full_outbox() {
    // Found by the property test under a heavy flood: the resync was refused outbox_full, and
    // the node that lost its trust.json stayed cut off from its peers for as long as the
    // junk lived.
    let mut sim = Sim::with(MemoryStore::new(), |c| c.max_outbox = 3);
    let (a, mut b) = pair(&mut sim);
    let mut junk = Client::new(3, "192.0.2.3:40003");
    junk.register(&mut sim, &[]).unwrap();
    for n in 0..3u8 {
        let nobody = Client::new(100 + n, "192.0.2.1:1");
        let ask = request(&junk, &nobody, sim.now_ms());
        assert!(matches!(
            junk.submit(&mut sim, &ask),
            Some(Message::Stored { .. })
        ));
    }
    b.trust_digest = Some(crate::wire::trust::TrustLedger::new().digest_of(&b.key()));
    b.register(&mut sim, &[]).unwrap();
    let delivered = sim.deliveries_to(b.at);
    assert_eq!(delivered.len(), 1);
    assert_eq!(
        Some(delivered[0].2.clone()),
        sim.server
            .ledger()
            .state(&a.key(), &b.key())
            .map(|s| s.to_statement())
    );
    assert_eq!(sim.server.counters().refused(Refusal::OutboxFull), 0);
}
