//! Servers sharing one store (rendezvous instances on one PostgreSQL database, see
//! `cluster`): they find each other by heartbeat, resolve what another registered, and take
//! in the trust statements another took.

use super::*;
use crate::wire::control::Query;
use crate::wire::trust::Revocation;

const BEAT: Option<Duration> = Some(Duration::from_secs(2));

/// Where the two servers listen.
const ONE: &str = "192.0.2.100";
const TWO: &str = "192.0.2.200";

/// Two queued servers with heartbeats on `store`.
fn two_servers(store: &MemoryStore) -> (Sim, Sim) {
    let one = Sim::queued_with(store.clone(), |c| {
        c.heartbeat = BEAT;
        c.listen = Some(ONE.parse().unwrap());
    });
    let two = Sim::queued_with(store.clone(), |c| {
        c.heartbeat = BEAT;
        c.listen = Some(TWO.parse().unwrap());
        c.identity = Identity::from_secret_bytes(&[0xdd; 32]);
    });
    (one, two)
}

/// Two servers on `store`, node `a` registered at one and `b` at two.
fn registered_across(store: &MemoryStore) -> (Sim, Sim, Client, Client) {
    let (mut one, mut two) = two_servers(store);
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut b = Client::new(2, "203.0.113.2:40002");
    registered(a.register(&mut one, &[]));
    registered(b.register(&mut two, &[]));
    (one, two, a, b)
}

/// Two servers that know each other, `a` registered at one and `b` at two, trusting each
/// other (the record taken at one, read by two).
fn a_pair_across(store: &MemoryStore) -> (Sim, Sim, Client, Client) {
    let (mut one, mut two) = two_servers(store);
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut b = Client::new(2, "203.0.113.2:40002");
    registered(a.register(&mut one, &["10.0.0.1:51870"]));
    registered(b.register(&mut two, &["10.1.0.2:51870"]));
    let record = b.record_with(&a, one.now_ms());
    stored(a.submit(&mut one, &record));
    // Both beat (and two reads the record).
    for _ in 0..2 {
        one.advance(Duration::from_secs(2));
        two.advance(Duration::from_secs(2));
    }
    assert!(two.server.ledger().trusted(&a.key(), &b.key()));
    one.drain();
    two.drain();
    (one, two, a, b)
}

fn server_at(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), MAIN)
}

fn stored(reply: Option<Message>) {
    assert!(matches!(reply, Some(Message::Stored { .. })), "{reply:?}");
}

#[test]
fn servers_sharing_a_store_find_each_other_by_heartbeat_and_notice_one_stop() {
    let store = MemoryStore::new();
    let beat = Duration::from_secs(2);
    let mut one = Sim::queued_with(store.clone(), |c| c.heartbeat = Some(beat));
    let mut two = Sim::queued_with(store.clone(), |c| {
        c.heartbeat = Some(beat);
        c.identity = Identity::from_secret_bytes(&[0xdd; 32]);
    });
    assert_eq!(one.server.instances().len(), 1, "alone until it beats");
    for _ in 0..2 {
        one.advance(beat);
        two.advance(beat);
    }
    let keys =
        |sim: &Sim| -> Vec<NodeKey> { sim.server.instances().iter().map(|i| i.key).collect() };
    let mut both = vec![one.server.public_key(), two.server.public_key()];
    both.sort();
    assert_eq!(keys(&one), both);
    assert_eq!(keys(&two), both);
    // The store fails for a while (neither can beat): once it is back, the other's old beat
    // is no evidence that it stopped; it beats again and stays.
    store.fail_writes(true);
    one.advance(beat * 5);
    two.advance(beat * 5);
    store.fail_writes(false);
    one.advance(beat);
    assert_eq!(keys(&one), both, "not dropped on the outage's evidence");
    two.advance(beat);
    one.advance(beat);
    assert_eq!(keys(&one), both);
    // two stops beating (killed): three intervals later one counts itself alone.
    one.advance(beat * 4);
    assert_eq!(keys(&one), vec![one.server.public_key()]);
    // A server without heartbeats (one store per server, as SQLite) never beats.
    let mut alone = Sim::queued(MemoryStore::new());
    alone.advance(Duration::from_secs(60));
    assert_eq!(alone.server.instances().len(), 1);
    assert_ne!(
        alone.server.poll_timeout().map(|(_, why)| why),
        Some("heartbeat")
    );
}

#[test]
fn a_name_registered_at_another_server_is_found_through_the_store() {
    let store = MemoryStore::new();
    let beat = Some(Duration::from_secs(2));
    let mut one = Sim::queued_with(store.clone(), |c| c.heartbeat = beat);
    let mut two = Sim::queued_with(store.clone(), |c| {
        c.heartbeat = beat;
        c.identity = Identity::from_secret_bytes(&[0xdd; 32]);
    });
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut b = Client::new(2, "203.0.113.2:40002");
    registered(a.register_as(&mut one, &[], Some("alice")));
    registered(b.register_as(&mut two, &[], Some("bob")));
    // b asks its own server for alice, who registered at the other one.
    let found = look_up(&mut two, &mut b, Query::Name(name("alice")));
    assert_eq!(found, Some((a.key(), Some("alice".into()))));
    let found = look_up(&mut two, &mut b, Query::Key(a.key()));
    assert_eq!(found, Some((a.key(), Some("alice".into()))));
    // Nobody anywhere: not found.
    assert_eq!(look_up(&mut two, &mut b, Query::Name(name("carol"))), None);
    // The store cannot be read: no answer at all, never a false "not found".
    store.fail_writes(true);
    let d = b.sealed(
        &two,
        &Message::Lookup {
            query: Query::Name(name("alice")),
        },
    );
    assert!(two.send(Port::Main, b.at, &d).is_none());
}

#[test]
fn trust_statements_taken_at_one_server_reach_nodes_and_the_ledger_at_another() {
    let store = MemoryStore::new();
    let (mut one, mut two, mut a, mut b) = registered_across(&store);

    // a asks at one; b, registered at two, hears it from two within a read interval.
    let ask = request(&a, &b, one.now_ms());
    stored(a.submit(&mut one, &ask));
    assert_eq!(two.deliveries_to(b.at), vec![]);
    two.advance(TRUST_READ_INTERVAL);
    let delivered = two.deliveries_to(b.at);
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0].2, ask);
    b.ack(&mut two, delivered[0].0);
    assert_eq!(
        store.outbox(&b.key()),
        vec![],
        "acknowledged at two, gone for all"
    );

    // b approves at two; a hears it from one.
    let half = Statement::Record(b.approve(&a, two.now_ms()));
    stored(b.submit(&mut two, &half));
    one.advance(TRUST_READ_INTERVAL);
    let delivered = one.deliveries_to(a.at);
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0].2, half);
    a.ack(&mut one, delivered[0].0);

    // a completes the record at one: both ledgers hold it, and b gets it from two.
    let record = b.record_with(&a, one.now_ms());
    stored(a.submit(&mut one, &record));
    assert!(one.server.ledger().trusted(&a.key(), &b.key()));
    assert!(!two.server.ledger().trusted(&a.key(), &b.key()));
    two.advance(TRUST_READ_INTERVAL);
    assert!(two.server.ledger().trusted(&a.key(), &b.key()));
    let delivered = two.deliveries_to(b.at);
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0].2, record);
    // b does not acknowledge it (its node is away); then a revokes at one. Two's ledger
    // follows, and b's next round brings the revocation, not the record it superseded.
    one.advance(Duration::from_secs(1));
    let revoke = Statement::Revocation(
        Revocation::sign(a.signing_key(), b.key(), one.now_ms(), "").unwrap(),
    );
    stored(a.submit(&mut one, &revoke));
    two.advance(TRUST_READ_INTERVAL);
    assert!(!two.server.ledger().trusted(&a.key(), &b.key()));
    two.advance(RESEND_INTERVAL);
    let delivered = two.deliveries_to(b.at);
    assert!(!delivered.is_empty());
    assert!(
        delivered.iter().all(|(_, _, s)| *s == revoke),
        "{delivered:?}"
    );
    // request, record, its delivery to b, revocation, its delivery to b: each taken once,
    // however often two reads.
    assert_eq!(two.server.counters().statements_shared, 5);
    two.advance(TRUST_READ_INTERVAL * 5);
    assert_eq!(two.server.counters().statements_shared, 5);
    assert_eq!(one.server.counters().statements_shared, 1, "b's approval");
}

#[test]
fn a_server_that_cannot_read_the_store_catches_up_when_it_can() {
    let store = MemoryStore::new();
    let (mut one, mut two, mut a, b) = registered_across(&store);
    let ask = request(&a, &b, one.now_ms());
    stored(a.submit(&mut one, &ask));
    // The store fails two's reads for a while (one wrote before): nothing is lost, only late.
    store.fail_writes(true);
    two.advance(TRUST_READ_INTERVAL * 3);
    assert_eq!(two.deliveries_to(b.at), vec![]);
    assert!(two.server.counters().store_errors >= 3);
    store.fail_writes(false);
    two.advance(TRUST_READ_INTERVAL);
    let delivered = two.deliveries_to(b.at);
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0].2, ask);
}

#[test]
fn a_server_that_restarts_reads_on_from_its_snapshot() {
    let store = MemoryStore::new();
    let (mut one, two, mut a, mut b) = registered_across(&store);
    // Before two restarts: in its snapshot. After: read as a change.
    let ask = request(&a, &b, one.now_ms());
    stored(a.submit(&mut one, &ask));
    let (_, mut two) = (
        two,
        Sim::queued_with(store.clone(), |c| {
            c.heartbeat = BEAT;
            c.identity = Identity::from_secret_bytes(&[0xdd; 32]);
        }),
    );
    registered(b.register(&mut two, &[]));
    two.advance(Duration::ZERO);
    let delivered = two.deliveries_to(b.at);
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0].2, ask);
    b.ack(&mut two, delivered[0].0);
    let record = b.record_with(&a, one.now_ms());
    stored(a.submit(&mut one, &record));
    two.advance(TRUST_READ_INTERVAL);
    let delivered = two.deliveries_to(b.at);
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0].2, record);
    assert_eq!(
        two.server.counters().statements_shared,
        2,
        "the record and its delivery"
    );
}

#[test]
fn a_server_that_has_not_read_a_newer_statement_does_not_write_an_older_one_over_it() {
    let store = MemoryStore::new();
    let (mut one, mut two, mut a, mut b) = registered_across(&store);
    let now = one.now_ms();
    // a revokes at one; before two reads it, b hands an older record in at two (as a node
    // does that lost its state and restores its ledger).
    let revoke =
        Statement::Revocation(Revocation::sign(a.signing_key(), b.key(), now + 10, "").unwrap());
    stored(a.submit(&mut one, &revoke));
    let older = b.record_with(&a, now);
    // Two answers Stored (what b asked kept is kept, superseded), writes nothing over the
    // revocation and takes nothing in: the store said the record is superseded.
    stored(b.submit(&mut two, &older));
    assert_eq!(store.statement(&a.key(), &b.key()), Some(revoke.clone()));
    assert_eq!(
        store.outbox(&a.key()),
        vec![],
        "nothing for a from the older record"
    );
    assert!(!two.server.ledger().trusted(&a.key(), &b.key()));
    assert_eq!(two.server.counters().statements_stored, 0);
    // Its next read brings the revocation, and b gets it.
    two.advance(TRUST_READ_INTERVAL);
    let held = two.server.ledger().state(&a.key(), &b.key());
    assert_eq!(held.map(|s| s.to_statement()), Some(revoke.clone()));
    let delivered = two.deliveries_to(b.at);
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0].2, revoke);
    assert!(!one.server.ledger().trusted(&a.key(), &b.key()));
}

#[test]
fn a_connect_to_a_node_at_another_server_introduces_both_through_it() {
    let store = MemoryStore::new();
    let (mut one, mut two, mut a, b) = a_pair_across(&store);
    // a asks one; one reads where b registered, tells two, and answers a.
    let d = a.sealed(&one, &Message::Connect { target: b.key() });
    let first = one.send(Port::Main, a.at, &d);
    let sent: Vec<Sent> = first
        .into_iter()
        .chain(std::iter::from_fn(|| one.poll()))
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    // The introduction first (both sides must probe at once), to two's main port.
    let (_, to, introduce) = &sent[0];
    assert_eq!(*to, server_at(TWO));
    match one.message(&sent[1]) {
        Message::Punch {
            peer, candidates, ..
        } => {
            assert_eq!(sent[1].1, a.at);
            assert_eq!(peer, b.key());
            let expected: Vec<SocketAddr> = vec![b.at, "10.1.0.2:51870".parse().unwrap()];
            assert_eq!(candidates, expected);
        }
        other => panic!("{other:?}"),
    }
    // Two sends b the other half.
    assert!(two.send(Port::Main, server_at(ONE), introduce).is_none());
    let punches = two.drain();
    assert_eq!(punches.len(), 1, "{punches:?}");
    let (to, punch) = &punches[0];
    assert_eq!(*to, b.at);
    match punch {
        Message::Punch {
            peer, candidates, ..
        } => {
            assert_eq!(*peer, a.key());
            let expected: Vec<SocketAddr> = vec![a.at, "10.0.0.1:51870".parse().unwrap()];
            assert_eq!(*candidates, expected);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(one.server.counters().punches, 1);
    assert_eq!(two.server.counters().punches, 1);
    // The same introduction again is a replay: dropped.
    assert!(two.send(Port::Main, server_at(ONE), introduce).is_none());
    assert_eq!(two.drain(), vec![]);
    assert_eq!(two.server.counters().refused(Refusal::Replay), 1);
}

#[test]
fn only_a_server_sharing_the_store_introduces_and_only_trusted_pairs() {
    let store = MemoryStore::new();
    let (mut one, mut two, a, b) = a_pair_across(&store);
    // A node (any key but a server's) sending an Introduce gets nothing done.
    let mut mallory = Client::new(9, "192.0.2.66:4000");
    let forged = Message::Introduce {
        node: a.key(),
        peer: b.key(),
        node_nat: NatKind::EndpointIndependent,
        candidates: vec![mallory.at],
    };
    let d = mallory.sealed(&two, &forged);
    assert!(two.send(Port::Main, mallory.at, &d).is_none());
    assert_eq!(two.drain(), vec![]);
    assert_eq!(two.server.counters().refused(Refusal::Unexpected), 1);
    // One introducing a pair two's ledger does not trust: nothing.
    let c = Client::new(3, "192.0.2.3:4000");
    let mut as_one = Client {
        identity: Identity::from_secret_bytes(&[0xee; 32]),
        ..Client::new(0, &server_at(ONE).to_string())
    };
    let untrusted = Message::Introduce {
        node: c.key(),
        peer: b.key(),
        node_nat: NatKind::EndpointIndependent,
        candidates: vec![c.at],
    };
    let d = as_one.sealed(&two, &untrusted);
    assert!(two.send(Port::Main, server_at(ONE), &d).is_none());
    // It waits for the trust changes a while (the record may be new), then is refused.
    two.advance(Duration::from_secs(3));
    let punches = two.drain();
    assert!(
        !punches
            .iter()
            .any(|(_, m)| matches!(m, Message::Punch { .. })),
        "{punches:?}"
    );
    assert_eq!(two.server.counters().refused(Refusal::NotAllowed), 1);
    // Once two stops beating, one no longer introduces to its nodes.
    one.advance(Duration::from_secs(12));
    let mut a = a;
    let reply = a.ask(&mut one, Port::Main, &Message::Connect { target: b.key() });
    assert_eq!(refused(reply), RefusalCode::UnknownTarget);
    let _ = &mut two;
}

#[test]
fn a_connect_to_a_node_registered_nowhere_is_unknown_and_a_store_failure_unanswered() {
    let store = MemoryStore::new();
    let (mut one, _two, mut a, b) = a_pair_across(&store);
    // The store cannot be read: no answer (a's node asks again), never a false one.
    store.fail_writes(true);
    let d = a.sealed(&one, &Message::Connect { target: b.key() });
    assert!(
        one.send(Port::Main, a.at, &d).is_none(),
        "no answer, never a false one"
    );
    store.fail_writes(false);
    // b stops refreshing (and two stops beating): once b's registration is older than the
    // expiry, it is registered nowhere.
    one.advance(Duration::from_secs(81));
    registered(a.register(&mut one, &[]));
    let reply = a.ask(&mut one, Port::Main, &Message::Connect { target: b.key() });
    assert_eq!(refused(reply), RefusalCode::UnknownTarget);
}

/// A relay frame `from` sends to `to`.
fn relay_frame(to: &Client, datagram: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; 64 + datagram.len()];
    let n = write_relay(&mut frame, RELAY_TO, &to.key(), datagram).unwrap();
    frame.truncate(n);
    frame
}

#[test]
fn a_relayed_frame_to_a_node_at_another_server_goes_through_it_authenticated() {
    let store = MemoryStore::new();
    let (mut one, mut two, a, b) = a_pair_across(&store);
    let frame = relay_frame(&b, b"\x04wireguard");
    // The first frame makes one read where b is; it is dropped, the next ones go.
    assert!(one.send(Port::Main, a.at, &frame).is_none());
    let (port, to, forwarded) = one.send(Port::Main, a.at, &frame).expect("forwarded");
    assert_eq!((port, to), (Port::Main, server_at(TWO)));
    assert_eq!(one.server.counters().relay_forwarded_frames, 1);
    // Oversized, it is not even checked; nor from anywhere but one's address.
    let mut big = forwarded.clone();
    big.resize(crate::rendezvous::links::MAX_FRAME + 1, 0);
    assert!(two.send(Port::Main, server_at(ONE), &big).is_none());
    assert_eq!(two.server.counters().relay_dropped(RelayDrop::Malformed), 1);
    let elsewhere: SocketAddr = "192.0.2.66:7000".parse().unwrap();
    assert!(two.send(Port::Main, elsewhere, &forwarded).is_none());
    // Two relays it to b, from a, as if a had relayed at two.
    let (_, to, relayed) = two
        .send(Port::Main, server_at(ONE), &forwarded)
        .expect("relayed");
    assert_eq!(to, b.at);
    assert_eq!(relayed[0], RELAY_FROM);
    assert_eq!(&relayed[1..33], &a.key().0);
    assert_eq!(&relayed[33..], b"\x04wireguard");
    // A replay of the forwarded frame, or one altered anywhere, is dropped.
    assert!(two.send(Port::Main, server_at(ONE), &forwarded).is_none());
    for i in [1, 12, 30, 60, forwarded.len() - 20, forwarded.len() - 1] {
        let mut bad = forwarded.clone();
        bad[i] ^= 0x40;
        assert!(
            two.send(Port::Main, server_at(ONE), &bad).is_none(),
            "byte {i}"
        );
    }
    assert_eq!(
        two.server.counters().relay_dropped(RelayDrop::BadForward),
        8
    );
    // b answers through two, which knows where a is from the frame: no read, no loss.
    let back = relay_frame(&a, b"\x04reply");
    let (_, to, forwarded) = two.send(Port::Main, b.at, &back).expect("forwarded back");
    assert_eq!(to, server_at(ONE));
    let (_, to, relayed) = one
        .send(Port::Main, server_at(TWO), &forwarded)
        .expect("relayed");
    assert_eq!(to, a.at);
    assert_eq!(&relayed[33..], b"\x04reply");
    // Once one stops beating, two takes no frame from it (with a good tag or not).
    let (_, _, late) = one.send(Port::Main, a.at, &frame).expect("forwarded");
    two.advance(Duration::from_secs(8));
    assert!(two.send(Port::Main, server_at(ONE), &late).is_none());
    assert_eq!(
        two.server.counters().relay_dropped(RelayDrop::BadForward),
        9
    );
}

#[test]
fn frames_between_servers_follow_the_ledger_and_the_heartbeats() {
    let store = MemoryStore::new();
    let (mut one, mut two, mut a, b) = a_pair_across(&store);
    // A node b does not trust relays nothing anywhere.
    let mut c = Client::new(3, "192.0.2.3:4000");
    registered(c.register(&mut one, &[]));
    let frame = relay_frame(&b, b"\x04x");
    assert!(one.send(Port::Main, c.at, &frame).is_none());
    assert_eq!(
        one.server.counters().relay_dropped(RelayDrop::NotAllowed),
        1
    );
    assert!(one.send(Port::Main, a.at, &frame).is_none()); // locating b
    let (_, _, forwarded) = one.send(Port::Main, a.at, &frame).expect("forwarded");
    // a revokes at one; two reads it, and refuses what one forwarded before it knew.
    one.advance(Duration::from_secs(1));
    let revoke = Statement::Revocation(
        Revocation::sign(a.signing_key(), b.key(), one.now_ms(), "").unwrap(),
    );
    stored(a.submit(&mut one, &revoke));
    two.advance(TRUST_READ_INTERVAL);
    assert!(two.send(Port::Main, server_at(ONE), &forwarded).is_none());
    assert_eq!(
        two.server.counters().relay_dropped(RelayDrop::NotAllowed),
        1
    );
    let _ = &mut a;
}

#[test]
fn an_introduction_for_a_record_the_other_server_just_took_waits_for_it() {
    let store = MemoryStore::new();
    let (mut one, mut two, mut a, b) = registered_across(&store);
    for _ in 0..2 {
        one.advance(Duration::from_secs(2));
        two.advance(Duration::from_secs(2));
    }
    one.drain();
    two.drain();
    // a completes the record at one and at once asks to meet b: two has not read it yet.
    let record = b.record_with(&a, one.now_ms());
    stored(a.submit(&mut one, &record));
    assert!(!two.server.ledger().trusted(&a.key(), &b.key()));
    let d = a.sealed(&one, &Message::Connect { target: b.key() });
    let first = one.send(Port::Main, a.at, &d);
    let sent: Vec<Sent> = first
        .into_iter()
        .chain(std::iter::from_fn(|| one.poll()))
        .collect();
    let introduce = sent
        .iter()
        .find(|s| s.1 == server_at(TWO))
        .expect("an Introduce");
    // Two reads the trust changes then and there, and b is punched without waiting, right
    // after the record's delivery (a node takes a Punch only from a peer it trusts).
    let first = two.send(Port::Main, server_at(ONE), &introduce.2);
    let sent: Vec<Sent> = first
        .into_iter()
        .chain(std::iter::from_fn(|| two.poll()))
        .collect();
    let to_b: Vec<Message> = (sent.iter())
        .filter(|s| s.1 == b.at)
        .map(|s| two.message(s))
        .collect();
    assert!(
        matches!(&to_b[..], [Message::Deliver { statement, .. }, Message::Punch { peer, .. }]
            if *statement == record && *peer == a.key()),
        "{to_b:?}"
    );
    assert_eq!(two.server.counters().punches, 1);
    assert!(two.server.ledger().trusted(&a.key(), &b.key()));
}

#[test]
fn a_pair_introduced_across_servers_is_introduced_again_while_the_store_is_down() {
    let store = MemoryStore::new();
    let (mut one, mut two, mut a, b) = a_pair_across(&store);
    let connect = |one: &mut Sim, a: &mut Client| -> Vec<Sent> {
        let d = a.sealed(one, &Message::Connect { target: b.key() });
        let first = one.send(Port::Main, a.at, &d);
        first
            .into_iter()
            .chain(std::iter::from_fn(|| one.poll()))
            .collect()
    };
    assert_eq!(
        connect(&mut one, &mut a).len(),
        2,
        "introduced through the store"
    );
    // The store stops answering: introduced again from what it said last time.
    store.fail_writes(true);
    one.now += Duration::from_secs(1);
    let sent = connect(&mut one, &mut a);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0].1, server_at(TWO));
    assert!(
        matches!(one.message(&sent[1]), Message::Punch { peer, .. } if peer == b.key()),
        "{sent:?}"
    );
    // Two (which holds the pair's record in memory) punches b.
    assert!(two.send(Port::Main, server_at(ONE), &sent[0].2).is_none());
    let punched = two.drain();
    assert!(
        punched
            .iter()
            .any(|(to, m)| *to == b.at
                && matches!(m, Message::Punch { peer, .. } if *peer == a.key())),
        "{punched:?}"
    );
}
