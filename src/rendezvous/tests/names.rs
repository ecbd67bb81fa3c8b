//! Hostnames (first come, first served; kept across expiry and restarts) and lookups.

use std::time::Duration;

use super::*;
use crate::addr::{Hostname, NodeAddr};
use crate::wire::control::{Found, Query};

fn name(s: &str) -> Hostname {
    s.parse().unwrap()
}

fn registered(reply: Option<Message>) {
    assert!(
        matches!(reply, Some(Message::Registered { .. })),
        "{reply:?}"
    );
}

/// The key a lookup finds, and its hostname.
fn look_up(sim: &mut Sim, asker: &mut Client, query: Query) -> Option<(NodeKey, Option<String>)> {
    match asker.ask(sim, Port::Main, &Message::Lookup { query }) {
        Some(Message::LookupReply { echo, found }) => {
            assert_eq!(echo, asker.nonce);
            found.map(|f| (f.key, f.hostname.map(|h| h.to_string())))
        }
        other => panic!("{other:?}"),
    }
}

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
fn names_outlive_expiry_and_restarts_until_the_registration_is_purged() {
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

    // Purged with the registration, 7 days after it expired.
    sim.advance(Duration::from_secs(7 * 24 * 3600 + 3600));
    assert!(sim.store.get(&a.key()).is_none());
    assert_eq!(look_up(&mut sim, &mut c, Query::Name(name("alice"))), None);
    assert_eq!(look_up(&mut sim, &mut c, Query::Key(a.key())), None);
    registered(c.register_as(&mut sim, &[], Some("alice")));
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
