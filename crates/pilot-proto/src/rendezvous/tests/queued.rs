//! A server whose writes the daemon runs (`Server::with_queued_store`, see `writes`): nothing
//! that needs a write is in effect or answered before the write is done, a name being written
//! is taken, and submissions are written one at a time, each planned on what the one before
//! left. (The whole suite also runs this way: `PILOT_SIM_QUEUED_STORE=1`.)

use super::*;

fn register_datagram(sim: &Sim, c: &mut Client, hostname: &str) -> Vec<u8> {
    let msg = Message::Register {
        lan: vec![],
        hostname: Some(hostname.parse().unwrap()),
        cookie: c.cookie,
        trust_digest: 0,
    };
    c.sealed(sim, &msg)
}

#[test]
fn a_registration_is_answered_once_written_and_its_name_is_taken_meanwhile() {
    let store = MemoryStore::new();
    let mut sim = Sim::queued(store.clone());
    let (mut a, mut c) = (
        Client::new(1, "198.51.100.1:40001"),
        Client::new(3, "192.0.2.3:40003"),
    );
    a.fetch_cookie(&mut sim);
    c.fetch_cookie(&mut sim);
    let mut out = vec![0u8; 2048];
    let d = register_datagram(&sim, &mut a, "alice");
    let now = sim.now;
    assert!(sim
        .server
        .handle_datagram(Port::Main, None, a.at, &d, now, &mut out)
        .is_none());
    assert_eq!(sim.server.commit(now), 0, "answered only once written");
    assert_eq!(sim.server.store_pending(), 1);
    // Written by nobody yet: not in effect, not answered, not in the store.
    assert!(sim.server.registration(&a.key(), now).is_none());
    assert!(sim.server.poll_transmit(&mut out).is_none());
    assert!(store.is_empty());
    // Meanwhile the name is taken: another key claiming it is refused at once.
    let d = register_datagram(&sim, &mut c, "alice");
    let refused = sim
        .server
        .handle_datagram(Port::Main, None, c.at, &d, now, &mut out);
    let refused = refused.map(|t| (t.port, t.to, t.payload.to_vec())).unwrap();
    assert!(
        matches!(
            sim.message(&refused),
            Message::Refused {
                code: RefusalCode::NameTaken,
                ..
            }
        ),
        "{:?}",
        sim.message(&refused)
    );
    // The daemon writes it: now it is in effect and answered.
    sim.run_store();
    assert_eq!(sim.server.store_pending(), 0);
    assert!(sim.server.registration(&a.key(), now).is_some());
    assert_eq!(store.holder(&"alice".parse().unwrap()), Some(a.key()));
    let answered = sim.drain();
    assert!(
        matches!(answered.as_slice(), [(to, Message::Registered { .. })] if *to == a.at),
        "{answered:?}"
    );
}

#[test]
fn a_failed_write_answers_nothing_and_changes_nothing() {
    let store = MemoryStore::new();
    let mut sim = Sim::queued(store.clone());
    let mut a = Client::new(1, "198.51.100.1:40001");
    a.fetch_cookie(&mut sim);
    store.fail_writes(true);
    let d = register_datagram(&sim, &mut a, "alice");
    assert!(sim.send(Port::Main, a.at, &d).is_none());
    assert!(sim.server.registration(&a.key(), sim.now).is_none());
    assert_eq!(sim.server.counters().refused(Refusal::StoreFailed), 1);
    assert_eq!(sim.server.store_pending(), 0);
    // Its name was never taken.
    store.fail_writes(false);
    let mut c = Client::new(3, "192.0.2.3:40003");
    registered(c.register_as(&mut sim, &[], Some("alice")));
}

#[test]
fn submissions_are_written_one_at_a_time_each_planned_on_what_the_last_left() {
    let store = MemoryStore::new();
    let mut sim = Sim::queued(store.clone());
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut b = Client::new(2, "203.0.113.2:40002");
    registered(a.register(&mut sim, &[]));
    registered(b.register(&mut sim, &[]));
    // Both submit the same complete record back to back, as both do after a rendezvous lost
    // its database.
    let record = a.record_with(&b, sim.now_ms());
    let submit = Message::Submit {
        statement: record.clone(),
    };
    let (da, db) = (a.sealed(&sim, &submit), b.sealed(&sim, &submit));
    let mut out = vec![0u8; 2048];
    let now = sim.now;
    assert!(sim
        .server
        .handle_datagram(Port::Main, None, a.at, &da, now, &mut out)
        .is_none());
    assert!(sim
        .server
        .handle_datagram(Port::Main, None, b.at, &db, now, &mut out)
        .is_none());
    assert_eq!(
        sim.server.store_pending(),
        1,
        "the second waits for the first"
    );
    assert!(sim.server.poll_transmit(&mut out).is_none());
    sim.run_store();
    // One write; the second found the record in force and is answered without one.
    assert_eq!(sim.server.counters().statements_stored, 1);
    assert_eq!(store.statement(&a.key(), &b.key()), Some(record));
    assert_eq!(sim.server.ledger().len(), 1);
    let answers: Vec<_> = sim
        .drain()
        .into_iter()
        .filter(|(_, m)| matches!(m, Message::Stored { .. }))
        .map(|(to, _)| to)
        .collect();
    assert_eq!(answers, vec![a.at, b.at]);
}

#[test]
fn a_store_that_stops_answering_costs_refusals_not_memory() {
    let store = MemoryStore::new();
    let mut sim = Sim::queued_with(store.clone(), |c| c.max_pending_writes = 2);
    let mut out = vec![0u8; 2048];
    let mut clients: Vec<Client> = (0..3u8)
        .map(|n| Client::new(10 + n, &format!("198.51.100.{}:40001", 10 + n)))
        .collect();
    for c in &mut clients {
        c.fetch_cookie(&mut sim); // (runs the store: before any registration)
    }
    // Nobody runs the writes: two new nodes' registrations wait, the third is refused.
    for (n, c) in clients.iter_mut().enumerate() {
        let d = register_datagram(&sim, c, &format!("node{n}"));
        let now = sim.now;
        assert!(sim
            .server
            .handle_datagram(Port::Main, None, c.at, &d, now, &mut out)
            .is_none());
        assert_eq!(sim.server.commit(now), 0);
    }
    assert_eq!(sim.server.store_pending(), 2);
    assert_eq!(sim.server.counters().refused(Refusal::StoreFailed), 1);
    // The store answers again: the two are written and answered.
    sim.run_store();
    assert_eq!(store.len(), 2);
    let registered = sim.drain();
    assert_eq!(registered.len(), 2, "{registered:?}");
}
