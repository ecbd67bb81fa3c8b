//! Registration: durability, replays and forgeries, NAT classification, expiry, restarts.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

#[test]
fn registration_is_stored_before_it_is_acknowledged() {
    let mut sim = Sim::new();
    let mut a = Client::new(1, "198.51.100.1:40001");
    a.fetch_cookie(&mut sim);
    let d = a.sealed(
        &sim,
        &Message::Register {
            lan: vec![],
            hostname: None,
            cookie: a.cookie,
            trust_digest: 0,
        },
    );
    let sent = sim.send(Port::Main, a.at, &d).unwrap();
    assert_eq!((sent.0, sent.1), (Port::Main, a.at));
    assert_eq!(
        sim.message(&sent),
        Message::Registered {
            echo: a.nonce,
            observed: a.at,
            keepalive_secs: 25,
            resubmit: true,
        }
    );
    assert_eq!(sim.store.get(&a.key()).unwrap().observed, a.at);
    assert_eq!(sim.server.counters().registrations, 1);

    // With the store failing, a new registration is not acknowledged and not held.
    sim.store.fail_writes(true);
    let mut b = Client::new(2, "198.51.100.2:1");
    assert_eq!(b.register(&mut sim, &[]), None);
    assert_eq!(sim.server.counters().refused(Refusal::StoreFailed), 1);
    assert!(sim.server.registration(&b.key(), sim.now).is_none());
    sim.store.fail_writes(false);
    assert!(b.register(&mut sim, &[]).is_some());
}

#[test]
fn a_batch_of_new_registrations_is_one_write_and_answered_only_once_written() {
    // Every new registration was written (and fsynced) on its own, on the packet loop: about
    // a thousand a second at most, so 100,000 nodes arriving (a restart on an empty
    // database, a first deployment) timed out and retried for minutes. Now a receive batch's
    // registrations are one transaction (`Server::commit`), answered once it is written.
    let mut sim = Sim::new();
    let mut clients: Vec<Client> = (0..3u8)
        .map(|n| Client::new(10 + n, &format!("198.51.100.{}:40001", 10 + n)))
        .collect();
    let mut batch = Vec::new();
    for (n, c) in clients.iter_mut().enumerate() {
        c.fetch_cookie(&mut sim);
        // Two new keys claiming one name in the same batch: the second is refused.
        let hostname = if n == 0 { "alpha" } else { "beta" };
        let msg = Message::Register {
            lan: vec![],
            hostname: Some(hostname.parse().unwrap()),
            cookie: c.cookie,
            trust_digest: 0,
        };
        batch.push((c.at, c.key(), c.sealed(&sim, &msg)));
    }
    let saves = sim.store.saves();
    let mut out = vec![0u8; 2048];
    let mut refused = 0;
    for (from, _, d) in &batch {
        let direct = (sim.server).handle_datagram(Port::Main, None, *from, d, sim.now, &mut out);
        if let Some(t) = direct {
            let opened = open(t.payload).unwrap();
            let refusal = Message::decode(opened.kind, opened.body).unwrap();
            assert!(
                matches!(
                    refusal,
                    Message::Refused {
                        code: RefusalCode::NameTaken,
                        ..
                    }
                ),
                "{refusal:?}"
            );
            refused += 1;
        }
    }
    assert_eq!(refused, 1, "beta claimed twice in one batch");
    // Nothing is in effect, answered or written before the commit.
    assert!(batch
        .iter()
        .all(|(_, key, _)| sim.server.registration(key, sim.now).is_none()));
    assert!(sim.poll().is_none());
    assert_eq!(sim.store.saves(), saves);
    let answered = sim.server.commit(sim.now);
    if sim.writer.is_some() {
        // A queued store: answered once the daemon has written the batch.
        assert_eq!(answered, 0);
        assert!(sim.poll().is_none(), "nothing answered before the write");
        sim.run_store();
    } else {
        assert_eq!(answered, 2);
    }
    assert_eq!(
        sim.store.saves(),
        saves + 1,
        "one transaction for the batch"
    );
    let answered: Vec<SocketAddr> = sim
        .drain()
        .into_iter()
        .map(|(to, m)| {
            assert!(matches!(m, Message::Registered { .. }), "{m:?}");
            to
        })
        .collect();
    assert_eq!(answered, vec![batch[0].0, batch[1].0]);
    assert!(sim.server.registration(&batch[1].1, sim.now).is_some());
    assert_eq!(sim.store.holder(&"beta".parse().unwrap()), Some(batch[1].1));

    // A batch whose write fails is answered not at all, takes no effect, and is counted.
    sim.store.fail_writes(true);
    let mut late = Client::new(20, "198.51.100.20:40001");
    late.fetch_cookie(&mut sim);
    let msg = Message::Register {
        lan: vec![],
        hostname: None,
        cookie: late.cookie,
        trust_digest: 0,
    };
    let d = late.sealed(&sim, &msg);
    assert!((sim.server)
        .handle_datagram(Port::Main, None, late.at, &d, sim.now, &mut out)
        .is_none());
    assert_eq!(sim.server.commit(sim.now), 0);
    sim.run_store();
    assert!(sim.poll().is_none());
    assert!(sim.server.registration(&late.key(), sim.now).is_none());
    assert_eq!(sim.server.counters().refused(Refusal::StoreFailed), 1);
}

#[test]
fn forged_replayed_stale_and_misplaced_messages_get_no_reply_and_change_nothing() {
    let mut sim = Sim::new();
    let mut a = Client::new(1, "198.51.100.1:40001");
    a.fetch_cookie(&mut sim);
    let register = a.sealed(
        &sim,
        &Message::Register {
            lan: vec![],
            hostname: None,
            cookie: a.cookie,
            trust_digest: 0,
        },
    );
    let mut forged = register.clone();
    forged[60] ^= 1;
    assert_eq!(sim.send(Port::Main, a.at, &forged), None);
    assert_eq!(sim.server.counters().refused(Refusal::BadSignature), 1);
    assert_eq!(sim.server.registered(), 0);

    assert!(sim.send(Port::Main, a.at, &register).is_some());
    let moved: SocketAddr = "192.0.2.66:1".parse().unwrap();
    assert_eq!(sim.send(Port::Main, moved, &register), None, "replay");
    assert_eq!(sim.server.counters().refused(Refusal::Replay), 1);
    assert_eq!(
        sim.server.registration(&a.key(), sim.now).unwrap().observed,
        a.at
    );

    let old = a.sealed(&sim, &Message::NatProbe);
    sim.now += Duration::from_secs(31);
    assert_eq!(sim.send(Port::Main, a.at, &old), None);
    assert_eq!(sim.server.counters().refused(Refusal::Stale), 1);

    // Register belongs on the main port; Punch is never sent to a rendezvous.
    let on_alt = a.sealed(
        &sim,
        &Message::Register {
            lan: vec![],
            hostname: None,
            cookie: a.cookie,
            trust_digest: 0,
        },
    );
    assert_eq!(sim.send(Port::Alt, a.at, &on_alt), None);
    let punch = Message::Punch {
        peer: a.key(),
        peer_nat: NatKind::None,
        candidates: vec![],
    };
    assert_eq!(a.ask(&mut sim, Port::Main, &punch), None);
    assert_eq!(sim.server.counters().refused(Refusal::Unexpected), 2);
    assert_eq!(sim.server.counters().registrations, 1);
}

#[test]
fn nat_probes_are_answered_per_port_and_classify_the_nat() {
    let mut sim = Sim::new();
    // Endpoint-independent: both ports see the same endpoint.
    let mut a = Client::new(1, "198.51.100.1:40001");
    a.register(&mut sim, &["10.0.0.1:51870"]);
    for (port, number) in [(Port::Main, MAIN), (Port::Alt, ALT)] {
        let d = a.sealed(&sim, &Message::NatProbe);
        let sent = sim.send(port, a.at, &d).unwrap();
        assert_eq!(sent.0, port, "answered from the port asked");
        let Message::NatProbeReply {
            observed,
            port: told,
            ..
        } = sim.message(&sent)
        else {
            panic!()
        };
        assert_eq!((observed, told), (a.at, number));
    }
    let nat = |sim: &Sim, c: &Client| sim.server.registration(&c.key(), sim.now).unwrap().nat;
    assert_eq!(nat(&sim, &a), NatKind::EndpointIndependent);

    // Endpoint-dependent: the alternate port sees another mapping.
    let mut b = Client::new(2, "203.0.113.2:40002");
    b.register(&mut sim, &[]);
    assert_eq!(nat(&sim, &b), NatKind::Unknown);
    let d = b.sealed(&sim, &Message::NatProbe);
    sim.send(Port::Alt, "203.0.113.2:40999".parse().unwrap(), &d)
        .unwrap();
    assert_eq!(nat(&sim, &b), NatKind::EndpointDependent);

    // No NAT: seen at one of its own endpoints.
    let mut c = Client::new(3, "192.0.2.3:51870");
    c.register(&mut sim, &["192.0.2.3:51870"]);
    assert_eq!(nat(&sim, &c), NatKind::None);

    // Unregistered keys are answered but not remembered.
    let mut d = Client::new(4, "192.0.2.4:1");
    assert!(d.ask(&mut sim, Port::Alt, &Message::NatProbe).is_some());
    assert_eq!(sim.server.registered(), 3);
    assert_eq!(sim.server.counters().nat_probes, 4);
}

#[test]
fn silent_nodes_expire_and_refreshes_are_written_lazily() {
    let mut sim = Sim::new();
    let (mut a, mut b) = pair(&mut sim);
    let registered_ms = sim.store.get(&a.key()).unwrap().last_seen_ms;
    sim.advance(Duration::from_secs(20));
    a.register(&mut sim, &["10.0.0.1:51870"]);
    assert_eq!(
        sim.store.get(&a.key()).unwrap().last_seen_ms,
        registered_ms,
        "lazy"
    );
    let (when, why) = sim.server.poll_timeout().unwrap();
    assert_eq!((when, why), (sim.now + FLUSH_INTERVAL, "flush"));
    sim.advance(FLUSH_INTERVAL);
    assert_eq!(
        sim.store.get(&a.key()).unwrap().last_seen_ms,
        registered_ms + 20_000
    );

    // b has been silent since t0: it expires at t0 + 80 s.
    assert_eq!(
        sim.server.poll_timeout().unwrap(),
        (sim.t0 + Duration::from_secs(80), "expiry")
    );
    sim.advance(Duration::from_secs(50));
    assert_eq!(sim.server.counters().expired, 1);
    assert!(sim.server.registration(&b.key(), sim.now).is_none());
    let connect = Message::Connect { target: b.key() };
    assert!(matches!(
        a.ask(&mut sim, Port::Main, &connect),
        Some(Message::Refused {
            code: RefusalCode::UnknownTarget,
            ..
        })
    ));
    // It stays in the store until purged, and comes back by registering.
    assert!(sim.store.get(&b.key()).is_some());
    b.register(&mut sim, &[]);
    assert!(sim.server.registration(&b.key(), sim.now).is_some());
}

#[test]
fn lazy_changes_are_written_as_soon_as_a_batch_waits() {
    let store = MemoryStore::new();
    let mut sim = Sim::with(store.clone(), |c| c.lazy_batch = 3);
    let mut nodes: Vec<Client> = (1..=4)
        .map(|n| Client::new(n, &format!("198.51.100.{n}:40000")))
        .collect();
    for node in &mut nodes {
        assert!(matches!(
            node.register(&mut sim, &[]),
            Some(Message::Registered { .. })
        ));
    }
    sim.advance(Duration::from_secs(20));
    for node in &mut nodes[..2] {
        node.register(&mut sim, &[]);
    }
    // Two waiting: the interval decides.
    assert_eq!(
        sim.server.poll_timeout().unwrap(),
        (sim.now + FLUSH_INTERVAL, "flush")
    );
    let saves = store.saves();
    nodes[2].register(&mut sim, &[]);
    // The third fills the batch: written at the next tick, not 10 s later.
    assert_eq!(sim.server.poll_timeout().unwrap(), (sim.now, "flush"));
    sim.advance(Duration::ZERO);
    assert_eq!(store.saves(), saves + 1, "one write for the batch");
    for node in &nodes[..3] {
        assert_eq!(
            store.get(&node.key()).unwrap().last_seen_ms,
            EPOCH_MS + 20_000
        );
    }

    // A failing store keeps its retry interval however many wait.
    sim.advance(Duration::from_secs(20));
    store.fail_writes(true);
    for node in &mut nodes[..3] {
        node.register(&mut sim, &[]);
    }
    sim.advance(Duration::ZERO);
    assert!(sim.server.counters().store_errors > 0);
    let retry = sim.now + FLUSH_INTERVAL;
    nodes[3].register(&mut sim, &[]);
    assert_eq!(sim.server.poll_timeout().unwrap(), (retry, "flush"));
    store.fail_writes(false);
    sim.advance(FLUSH_INTERVAL);
    assert_eq!(
        store.get(&nodes[3].key()).unwrap().last_seen_ms,
        EPOCH_MS + 40_000
    );
}

#[test]
fn a_restarted_server_keeps_fresh_registrations() {
    let mut sim = Sim::new();
    let (mut a, b) = pair(&mut sim);
    let mut old = Client::new(5, "192.0.2.5:5");
    old.register(&mut sim, &[]);
    sim.advance(Duration::from_secs(60));
    a.register(&mut sim, &["10.0.0.1:51870"]);
    // Crash 5 s later, before the lazy write of a's refresh: a new server on the same store
    // and the same wall clock. The trust record comes back with it.
    sim.now += Duration::from_secs(5);
    let store = sim.store.clone();
    sim.restart(|| Box::new(store));
    assert_eq!(sim.server.registered(), 3);
    let connect = Message::Connect { target: b.key() };
    assert!(matches!(
        a.ask(&mut sim, Port::Main, &connect),
        Some(Message::Punch { .. })
    ));
    assert_eq!(
        sim.poll().unwrap().1,
        b.at,
        "b is punched without re-registering"
    );
    // At most the one unwritten refresh was lost: a's next keepalive comes before the
    // expiry of the refresh before it.
    sim.advance(Duration::from_secs(10));
    a.register(&mut sim, &["10.0.0.1:51870"]);
    sim.advance(Duration::from_secs(6));
    assert_eq!(sim.server.registered(), 1);
    assert!(sim.server.registration(&a.key(), sim.now).is_some());
}

#[test]
fn a_full_registry_refuses_new_nodes_but_refreshes_old_ones() {
    let mut sim = Sim::with(MemoryStore::new(), |c| c.max_nodes = 2);
    let (mut a, _b) = pair(&mut sim);
    let mut c = Client::new(3, "192.0.2.3:3");
    assert!(matches!(
        c.register(&mut sim, &[]),
        Some(Message::Refused {
            code: RefusalCode::RateLimited,
            ..
        })
    ));
    assert_eq!(sim.server.counters().refused(Refusal::RegistryFull), 1);
    assert!(matches!(
        a.register(&mut sim, &[]),
        Some(Message::Registered { .. })
    ));
}

#[test]
fn junk_never_panics_and_changes_nothing() {
    let mut sim = Sim::new();
    let (a, _b) = pair(&mut sim);
    let before = sim.store.get(&a.key());
    let mut x = 0x2545_f491_u32;
    let mut junk = vec![0u8; 400];
    for len in 0..400 {
        for byte in junk.iter_mut().take(len) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *byte = x as u8;
        }
        // Half of them look like Pilot control or relay datagrams.
        if len > 0 && len % 2 == 0 {
            junk[0] = 0x50 + (x % 8) as u8;
        }
        for port in [Port::Main, Port::Alt] {
            assert_eq!(sim.send(port, a.at, &junk[..len]), None, "{len}");
        }
    }
    assert_eq!(sim.store.get(&a.key()), before);
    assert_eq!(sim.server.registered(), 2);
    assert_eq!(sim.server.counters().registrations, 2);
}

#[test]
fn a_flood_from_throwaway_keys_dated_ahead_never_refuses_an_honest_registration() {
    // The audit's attack (issue 15, A1): more junk than the old shared replay table held
    // (100,000), signed by throwaway keys and dated 29 s ahead, made the next honest
    // Register "stale" for ~20 s. Replay state is per sender now, and strangers get none.
    let mut sim = Sim::new();
    let mut a = Client::new(1, "198.51.100.1:40001");
    assert!(matches!(
        a.register(&mut sim, &[]),
        Some(Message::Registered { .. })
    ));
    let ahead = sim.now_ms() + crate::wire::envelope::MAX_SKEW.as_millis() as u64 - 1_000;
    let mut body = Vec::new();
    Message::NatProbe.encode(&mut body);
    let mut junk = vec![0u8; 512];
    let keys: Vec<Identity> = (0..1_000u32)
        .map(|i| {
            let mut seed = [0x5a; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            Identity::from_secret_bytes(&seed)
        })
        .collect();
    let attacker: SocketAddr = "192.0.2.66:4000".parse().unwrap();
    for i in 0..101_000u64 {
        let key = keys[(i % 1_000) as usize].signing_key();
        let n = seal(&mut junk, Message::NatProbe.kind(), key, ahead, i, &body).unwrap();
        sim.send(Port::Main, attacker, &junk[..n]);
    }
    assert!(matches!(
        a.register(&mut sim, &[]),
        Some(Message::Registered { .. })
    ));
    assert_eq!(sim.server.counters().refused(Refusal::Stale), 0);
}

#[test]
fn new_keys_are_rate_limited_per_source_address_and_refreshes_are_not() {
    // Issue 15, A4: Register had no rate limit; throwaway keys now cost proven addresses.
    let mut sim = Sim::with(MemoryStore::new(), |c| {
        c.new_keys_per_source = rate::Rate {
            per_sec: 1,
            burst: 3,
        }
    });
    let mut clients: Vec<Client> = (1..=4)
        .map(|n| Client::new(n, &format!("198.51.100.9:{}", 40_000 + u16::from(n))))
        .collect();
    for c in &mut clients[..3] {
        assert!(matches!(
            c.register(&mut sim, &[]),
            Some(Message::Registered { .. })
        ));
    }
    assert_eq!(
        refused(clients[3].register(&mut sim, &[])),
        RefusalCode::RateLimited
    );
    assert_eq!(sim.server.counters().refused(Refusal::RateLimited), 1);
    // Refreshes of keys already registered are not new keys; another address has its own.
    assert!(matches!(
        clients[0].register(&mut sim, &[]),
        Some(Message::Registered { .. })
    ));
    let mut elsewhere = Client::new(9, "203.0.113.9:40009");
    assert!(matches!(
        elsewhere.register(&mut sim, &[]),
        Some(Message::Registered { .. })
    ));
    // A second later the address may add one more.
    sim.advance(Duration::from_millis(1_100));
    assert!(matches!(
        clients[3].register(&mut sim, &[]),
        Some(Message::Registered { .. })
    ));
}

#[test]
fn a_known_key_registers_at_most_at_its_rate() {
    // Issue 15, A4: every registration that changes something is written to disk at once;
    // a key of one's own could rewrite its row as fast as it could send.
    let mut sim = Sim::new();
    let mut a = Client::new(1, "198.51.100.1:40001");
    // The first registration, then a burst of ten.
    for i in 0..11 {
        let lan = [format!("10.0.0.{i}:51870")];
        let lan: Vec<&str> = lan.iter().map(String::as_str).collect();
        assert!(
            matches!(a.register(&mut sim, &lan), Some(Message::Registered { .. })),
            "registration {i}"
        );
    }
    assert_eq!(
        refused(a.register(&mut sim, &["10.0.1.1:51870"])),
        RefusalCode::RateLimited
    );
    assert_eq!(sim.server.counters().refused(Refusal::RegisterRate), 1);
    sim.advance(Duration::from_millis(1_100));
    assert!(matches!(
        a.register(&mut sim, &["10.0.1.1:51870"]),
        Some(Message::Registered { .. })
    ));
}

#[test]
fn hostnames_are_claimed_at_a_rate_per_source_address_and_up_to_a_limit() {
    // Issue 15, A4: 20,000 hostnames were claimed in 8.7 s, each held for the name TTL.
    let mut sim = Sim::with(MemoryStore::new(), |c| {
        c.name_claim_interval_secs = 60;
        c.name_claim_burst = 2;
        c.max_names = 3;
    });
    let mut clients: Vec<Client> = (1..=4)
        .map(|n| Client::new(n, &format!("198.51.100.9:{}", 40_000 + u16::from(n))))
        .collect();
    for (i, c) in clients[..2].iter_mut().enumerate() {
        let name = format!("claim{i}");
        assert!(matches!(
            c.register_as(&mut sim, &[], Some(&name)),
            Some(Message::Registered { .. })
        ));
    }
    assert_eq!(
        refused(clients[2].register_as(&mut sim, &[], Some("claim2"))),
        RefusalCode::RateLimited
    );
    assert_eq!(sim.server.counters().refused(Refusal::NameClaims), 1);
    // Keeping a name is no claim; registering without one neither.
    assert!(matches!(
        clients[0].register_as(&mut sim, &[], Some("claim0")),
        Some(Message::Registered { .. })
    ));
    assert!(matches!(
        clients[2].register(&mut sim, &[]),
        Some(Message::Registered { .. })
    ));
    // Another address has its own allowance; a minute later this one has one more.
    let mut elsewhere = Client::new(9, "203.0.113.9:40009");
    assert!(matches!(
        elsewhere.register_as(&mut sim, &[], Some("claim9")),
        Some(Message::Registered { .. })
    ));
    sim.advance(Duration::from_secs(61));
    clients[0].register_as(&mut sim, &[], Some("claim0"));
    clients[1].register_as(&mut sim, &[], Some("claim1"));
    elsewhere.register_as(&mut sim, &[], Some("claim9"));
    // Three names are held: the limit. A fourth is refused whatever the rate allows.
    assert_eq!(
        refused(clients[2].register_as(&mut sim, &[], Some("claim2"))),
        RefusalCode::RateLimited
    );
    assert_eq!(sim.server.counters().refused(Refusal::NameClaims), 2);
}
