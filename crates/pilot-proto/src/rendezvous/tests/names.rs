//! Hostnames (first come, first served; kept across expiry and restarts for the name TTL;
//! released by their holder or freed by an operator) and lookups.

use std::time::Duration;

use super::*;
use crate::addr::NodeAddr;
use crate::wire::control::{Found, Query};

#[test]
fn the_first_key_keeps_a_hostname_and_renaming_releases_the_old_one() {
    let mut sim = Sim::new();
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut b = Client::new(2, "203.0.113.2:40002");
    registered(a.register_as(&mut sim, &[], Some("alice")));
    assert_eq!(sim.store.holder(&name("alice")), Some(a.key()));

    // The whole registration is refused, not just the name.
    assert_eq!(
        refused(b.register_as(&mut sim, &[], Some("alice"))),
        RefusalCode::NameTaken
    );
    assert!(sim.server.registration(&b.key(), sim.now).is_none());
    assert!(sim.store.get(&b.key()).is_none());
    registered(b.register_as(&mut sim, &["10.0.0.2:1"], Some("bob")));
    assert_eq!(
        refused(b.register_as(&mut sim, &["10.0.0.2:2"], Some("alice"))),
        RefusalCode::NameTaken
    );
    let kept = sim.server.registration(&b.key(), sim.now).unwrap();
    assert_eq!(kept.hostname, Some(name("bob")));
    assert_eq!(kept.lan, vec!["10.0.0.2:1".parse().unwrap()]);
    assert_eq!(sim.server.counters().refused(Refusal::NameTaken), 2);

    // One name per key: taking another frees the first, which b can then have.
    registered(a.register_as(&mut sim, &[], Some("alicia")));
    assert_eq!(sim.store.holder(&name("alice")), None);
    registered(b.register_as(&mut sim, &[], Some("alice")));
    assert_eq!(sim.store.holder(&name("alice")), Some(b.key()));
    assert_eq!(sim.store.holder(&name("bob")), None);
    // No name releases it too.
    registered(a.register(&mut sim, &[]));
    assert_eq!(sim.store.holder(&name("alicia")), None);
    assert_eq!(sim.store.get(&a.key()).unwrap().hostname, None);
    assert_eq!(look_up(&mut sim, &mut a, Query::Name(name("alicia"))), None);
}

#[test]
fn a_new_name_is_acknowledged_only_once_stored() {
    let mut sim = Sim::new();
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut b = Client::new(2, "203.0.113.2:40002");
    registered(a.register_as(&mut sim, &[], Some("alice")));
    sim.store.fail_writes(true);
    assert_eq!(a.register_as(&mut sim, &[], Some("alicia")), None);
    assert_eq!(b.register_as(&mut sim, &[], Some("bob")), None);
    sim.store.fail_writes(false);
    let found = look_up(&mut sim, &mut b, Query::Name(name("alice")));
    assert_eq!(found, Some((a.key(), Some("alice".into()))), "unchanged");
    assert_eq!(look_up(&mut sim, &mut b, Query::Name(name("alicia"))), None);
    assert_eq!(look_up(&mut sim, &mut b, Query::Name(name("bob"))), None);
}

#[test]
fn names_outlive_expiry_and_restarts_until_the_name_ttl() {
    let mut sim = Sim::new();
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut c = Client::new(3, "192.0.2.3:3");
    registered(a.register_as(&mut sim, &[], Some("alice")));
    sim.advance(Duration::from_secs(100));
    assert!(
        sim.server.registration(&a.key(), sim.now).is_none(),
        "expired"
    );
    assert_eq!(
        refused(c.register_as(&mut sim, &[], Some("alice"))),
        RefusalCode::NameTaken
    );

    let store = sim.store.clone();
    sim.restart(|| Box::new(store));
    assert_eq!(
        refused(c.register_as(&mut sim, &[], Some("alice"))),
        RefusalCode::NameTaken
    );
    let found = look_up(&mut sim, &mut c, Query::Name(name("alice")));
    assert_eq!(found, Some((a.key(), Some("alice".into()))));

    // Registrations without a name are purged a week after expiry; a holder's stays.
    sim.advance(Duration::from_secs(8 * DAY));
    assert!(sim.store.get(&a.key()).is_some());
    let found = look_up(&mut sim, &mut c, Query::Name(name("alice")));
    assert_eq!(found, Some((a.key(), Some("alice".into()))));

    // 30 days after a's last registration the name is free: a reinstalled box (new key)
    // can have it back.
    sim.advance(Duration::from_secs(22 * DAY));
    assert_eq!(look_up(&mut sim, &mut c, Query::Name(name("alice"))), None);
    assert_eq!(sim.store.holder(&name("alice")), None);
    registered(c.register_as(&mut sim, &[], Some("alice")));
    assert_eq!(sim.store.holder(&name("alice")), Some(c.key()));
    // The old registration went with its name, at the next purge.
    sim.advance(Duration::from_secs(3600));
    assert!(sim.store.get(&a.key()).is_none());
}

const DAY: u64 = 24 * 3600;

#[test]
fn a_name_expires_a_ttl_after_its_holder_last_registered() {
    let ttl = Duration::from_secs(3600);
    let mut sim = Sim::with(MemoryStore::new(), |c| c.name_ttl = ttl);
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut c = Client::new(3, "192.0.2.3:3");
    registered(a.register_as(&mut sim, &[], Some("alice")));
    // A registration renews the hold.
    sim.advance(Duration::from_secs(50 * 60));
    registered(a.register_as(&mut sim, &[], Some("alice")));
    sim.advance(Duration::from_secs(50 * 60));
    assert_eq!(
        refused(c.register_as(&mut sim, &[], Some("alice"))),
        RefusalCode::NameTaken
    );
    // Expired by the timer, not by a scan: due at the name TTL after the last registration.
    let (due, why) = sim.server.poll_timeout().unwrap();
    assert_eq!(
        (due, why),
        (sim.t0 + Duration::from_secs(50 * 60) + ttl, "name expiry")
    );
    sim.advance(Duration::from_secs(11 * 60));
    assert_eq!(look_up(&mut sim, &mut c, Query::Name(name("alice"))), None);
    assert_eq!(sim.store.holder(&name("alice")), None, "released durably");
    registered(c.register_as(&mut sim, &[], Some("alice")));
    // The old holder, back, is told the name is taken.
    assert_eq!(
        refused(a.register_as(&mut sim, &[], Some("alice"))),
        RefusalCode::NameTaken
    );
}

#[test]
fn a_restart_does_not_reset_a_names_ttl_in_memory() {
    let store = MemoryStore::new();
    a_restart_does_not_reset_a_names_ttl(|| Box::new(store.clone()));
}

/// What a `ReleaseName` of `name` from `client` got back.
fn release(sim: &mut Sim, client: &mut Client, name: &str) -> Option<Message> {
    let msg = Message::ReleaseName {
        name: name.parse().unwrap(),
    };
    let d = client.sealed(sim, &msg);
    let sent = sim.send(Port::Main, client.at, &d)?;
    assert!(sent.2.len() <= d.len(), "an answer larger than the request");
    Some(sim.message(&sent))
}

fn released(reply: Option<Message>) -> bool {
    match reply {
        Some(Message::NameReleased { held, .. }) => held,
        other => panic!("expected NameReleased, got {other:?}"),
    }
}

#[test]
fn only_the_holder_releases_its_name_which_another_key_may_then_claim() {
    let mut sim = Sim::new();
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut b = Client::new(2, "203.0.113.2:40002");
    let mut stranger = Client::new(9, "192.0.2.9:9");
    registered(a.register_as(&mut sim, &[], Some("alice")));
    registered(b.register(&mut sim, &[]));

    // Not b's name: nothing changes, and b is told.
    assert!(!released(release(&mut sim, &mut b, "alice")));
    assert_eq!(
        refused(release(&mut sim, &mut stranger, "alice")),
        RefusalCode::NotRegistered
    );
    assert_eq!(sim.store.holder(&name("alice")), Some(a.key()));
    // Not acknowledged unless stored.
    sim.store.fail_writes(true);
    assert_eq!(release(&mut sim, &mut a, "alice"), None);
    sim.store.fail_writes(false);
    assert_eq!(sim.store.holder(&name("alice")), Some(a.key()));

    assert!(released(release(&mut sim, &mut a, "alice")));
    assert_eq!(sim.store.holder(&name("alice")), None);
    assert_eq!(sim.store.get(&a.key()).unwrap().hostname, None);
    assert_eq!(look_up(&mut sim, &mut b, Query::Name(name("alice"))), None);
    // Releasing again finds nothing to release; a stays registered.
    assert!(!released(release(&mut sim, &mut a, "alice")));
    assert!(sim.server.registration(&a.key(), sim.now).is_some());
    // Free for anyone, at once; and a's lazy flush does not bring it back.
    registered(b.register_as(&mut sim, &[], Some("alice")));
    sim.advance(Duration::from_secs(20));
    assert_eq!(sim.store.holder(&name("alice")), Some(b.key()));
    // Released names stay released across a restart.
    let store = sim.store.clone();
    sim.restart(|| Box::new(store));
    let found = look_up(&mut sim, &mut a, Query::Name(name("alice")));
    assert_eq!(found, Some((b.key(), Some("alice".into()))));
    // Only on the main port.
    let msg = Message::ReleaseName {
        name: name("alice"),
    };
    assert_eq!(b.ask(&mut sim, Port::Alt, &msg), None);
}

#[test]
fn an_unproven_release_is_challenged_not_acted_on() {
    let mut sim = Sim::new();
    let mut a = Client::new(1, "198.51.100.1:40001");
    registered(a.register_as(&mut sim, &[], Some("alice")));
    // Someone replays a's release from elsewhere (or a's NAT moved it).
    a.at = "192.0.2.77:1".parse().unwrap();
    let reply = release(&mut sim, &mut a, "alice");
    assert!(
        matches!(reply, Some(Message::Challenge { .. })),
        "{reply:?}"
    );
    assert_eq!(sim.store.holder(&name("alice")), Some(a.key()));
}

#[test]
fn an_operator_frees_a_name_in_memory_and_in_the_store() {
    let mut sim = Sim::new();
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut c = Client::new(3, "192.0.2.3:3");
    registered(a.register_as(&mut sim, &[], Some("alice")));
    assert_eq!(sim.server.free_name(&name("alice")).unwrap(), Some(a.key()));
    assert_eq!(sim.server.free_name(&name("alice")).unwrap(), None);
    sim.run_store(); // a server with a queued store: the daemon writes it
    assert_eq!(sim.store.holder(&name("alice")), None);
    assert_eq!(look_up(&mut sim, &mut c, Query::Name(name("alice"))), None);
    registered(c.register_as(&mut sim, &[], Some("alice")));
    // a's lazily kept state, flushed later, does not take it back.
    registered(a.register(&mut sim, &[]));
    sim.advance(Duration::from_secs(20));
    assert_eq!(sim.store.holder(&name("alice")), Some(c.key()));
}

#[test]
fn lookups_find_keys_by_name_and_address_and_names_by_key() {
    let mut sim = Sim::new();
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut b = Client::new(2, "203.0.113.2:40002");
    registered(a.register_as(&mut sim, &[], Some("alice")));
    registered(b.register(&mut sim, &[]));
    // Anyone with a key may ask.
    let mut stranger = Client::new(9, "192.0.2.9:9");
    let alice = Some((a.key(), Some("alice".to_string())));
    for query in [
        Query::Name(name("alice")),
        Query::Address(a.key().address()),
        Query::Key(a.key()),
    ] {
        assert_eq!(look_up(&mut sim, &mut stranger, query), alice);
    }
    assert_eq!(
        look_up(&mut sim, &mut stranger, Query::Address(b.key().address())),
        Some((b.key(), None))
    );
    for unknown in [
        Query::Name(name("nobody")),
        Query::Address(NodeAddr::from_bits(0x1234_5678_9abc)),
        Query::Key(stranger.key()),
    ] {
        assert_eq!(look_up(&mut sim, &mut stranger, unknown), None);
    }
    assert_eq!(sim.server.counters().lookups, 7);
    assert_eq!(sim.server.registered(), 2, "the stranger is not remembered");

    // A registered node has a burst of 10; the answer then is RateLimited.
    let query = Message::Lookup {
        query: Query::Key(b.key()),
    };
    let replies: Vec<Option<Message>> = (0..12)
        .map(|_| a.ask(&mut sim, Port::Main, &query))
        .collect();
    assert!(replies[..10].iter().all(|r| matches!(
        r,
        Some(Message::LookupReply {
            found: Some(Found { .. }),
            ..
        })
    )));
    assert_eq!(refused(replies[11].clone()), RefusalCode::RateLimited);
    // Lookups belong on the main port.
    assert_eq!(a.ask(&mut sim, Port::Alt, &query), None);
}

#[test]
fn a_hostname_is_unique_across_servers_sharing_a_store() {
    // Two servers on one store, as instances on one database: neither holds the other's
    // registrations in memory; the store decides.
    let store = MemoryStore::new();
    let mut one = Sim::with(store.clone(), |_| {});
    let mut two = Sim::with(store.clone(), |_| {});
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut b = Client::new(2, "203.0.113.2:40002");
    registered(a.register_as(&mut one, &[], Some("alice")));
    let reply = b.register_as(&mut two, &[], Some("alice"));
    assert_eq!(refused(reply), RefusalCode::NameTaken);
    assert_eq!(two.server.counters().refused(Refusal::NameTaken), 1);
    assert!(
        two.server.registration(&b.key(), two.now).is_none(),
        "not in effect"
    );
    assert_eq!(store.holder(&name("alice")), Some(a.key()));
    // b takes another name there; alice stays a's.
    registered(b.register_as(&mut two, &[], Some("bob")));
    assert_eq!(store.holder(&name("bob")), Some(b.key()));
    // a's name outlives a's silence only for the name TTL: then b may take it.
    two.advance(one.name_ttl + Duration::from_secs(1));
    registered(b.register_as(&mut two, &[], Some("alice")));
    assert_eq!(store.holder(&name("alice")), Some(b.key()));
}
