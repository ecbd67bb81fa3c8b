use super::*;
use crate::store::testdata::*;
use crate::wire::control::NatKind;
use crate::wire::trust::Revocation;

fn temp(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pilot-sqlite-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn saved_records_survive_reopening_with_mode_0600() {
    let dir = temp("reopen");
    let path = dir.join(DB_FILE);
    let mut changed = record(1);
    changed.lan.clear();
    changed.hostname = None;
    changed.nat = NatKind::Unknown;
    {
        let mut store = SqliteStore::open(&path).unwrap();
        store.save(&[record(1), record(2)], 0).unwrap();
        store.save(std::slice::from_ref(&changed), 0).unwrap();
    }
    let mut store = SqliteStore::open(&path).unwrap();
    let mut loaded = store.load().unwrap().registrations;
    loaded.sort_by_key(|r| r.key);
    assert_eq!(loaded, vec![changed, record(2)]);
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let purged = store.purge(before(1_700_000_025_002, 0)).unwrap();
    assert_eq!(purged.keys, vec![NodeKey([1; 32])]);
    assert_eq!(store.load().unwrap().registrations, vec![record(2)]);
    drop(store);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn names_follow_their_registration_and_go_when_it_is_purged() {
    let dir = temp("names");
    let mut store = SqliteStore::open(&dir.join(DB_FILE)).unwrap();
    let mut one = record(1);
    store.save(&[one.clone(), record(2)], 0).unwrap();
    // Renaming releases the old name, which another key may then take.
    one.hostname = Some("renamed".parse().unwrap());
    let mut three = record(3);
    three.hostname = Some("node-1".parse().unwrap());
    store.save(&[one.clone()], 0).unwrap();
    store.save(&[three.clone()], 0).unwrap();
    let mut loaded = store.load().unwrap().registrations;
    loaded.sort_by_key(|r| r.key);
    assert_eq!(loaded, vec![one, record(2), three.clone()]);
    // Purging node 2 and 1 frees their names; 3 keeps its own.
    let purged = store.purge(before(1_700_000_025_003, 0)).unwrap();
    assert_eq!(purged.keys.len(), 2);
    assert_eq!(purged.names.len(), 2);
    let names: i64 = store
        .conn
        .query_row("SELECT count(*) FROM names", [], |r| r.get(0))
        .unwrap();
    assert_eq!(names, 1);
    assert_eq!(store.load().unwrap().registrations, vec![three]);
    drop(store);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_holder_keeps_its_registration_until_its_name_expires_and_released_names_stay_free() {
    let dir = temp("nameholds");
    let path = dir.join(DB_FILE);
    {
        let mut store = SqliteStore::open(&path).unwrap();
        let mut nameless = record(2);
        nameless.hostname = None;
        store.save(&[record(1), nameless, record(3)], 0).unwrap();
        // Registrations are old enough to purge, names are not: only the nameless one goes.
        let purged = store
            .purge(PurgeBefore {
                names_ms: 1_700_000_000_000,
                registrations_ms: 1_700_000_026_000,
                deliveries_ms: 0,
            })
            .unwrap();
        assert_eq!(purged.keys, vec![NodeKey([2; 32])]);
        assert!(purged.names.is_empty());
        // Released by name: the registration stays, without it; a second release finds none.
        let three: Hostname = "node-3".parse().unwrap();
        assert_eq!(store.release_name(&three).unwrap(), Some(NodeKey([3; 32])));
        assert_eq!(store.release_name(&three).unwrap(), None);
    }
    // Across a reopen: node 1 still holds its name, with the time its holder was last seen
    // (what the server's name expiry is computed from); node 3's stays free.
    let mut store = SqliteStore::open(&path).unwrap();
    let mut loaded = store.load().unwrap().registrations;
    loaded.sort_by_key(|r| r.key);
    let mut three = record(3);
    three.hostname = None;
    assert_eq!(loaded, vec![record(1), three]);
    // Once the holder is silent past the name's lifetime, name and registration both go.
    let purged = store.purge(before(1_700_000_026_000, 0)).unwrap();
    assert_eq!(purged.names, vec!["node-1".parse::<Hostname>().unwrap()]);
    assert_eq!(purged.keys.len(), 2);
    assert!(store.load().unwrap().registrations.is_empty());
    drop(store);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ledger_and_outbox_survive_reopening_and_ids_are_never_reused() {
    let dir = temp("outbox");
    let path = dir.join(DB_FILE);
    let record = trust(1, 2, NOW);
    let revoked = Statement::Revocation(
        Revocation::sign(&signer(2), public(1), NOW + 1, "no longer needed").unwrap(),
    );
    let ask = request(3, 4);
    {
        let mut store = SqliteStore::open(&path).unwrap();
        let first = Submission {
            ledger: Some(&record),
            ..deliver(public(1), &record, NOW)
        };
        assert_eq!(store.submit(&first).unwrap().id(), Some(1));
        // The revocation replaces the pair's row and the undelivered record.
        let second = Submission {
            ledger: Some(&revoked),
            replaces: Some(1),
            ..deliver(public(1), &revoked, NOW + 1)
        };
        assert_eq!(store.submit(&second).unwrap().id(), Some(2));
        store.delivered(2).unwrap();
        // The highest id was deleted; the next one is still new.
        assert_eq!(
            store
                .submit(&deliver(public(4), &ask, NOW + 2))
                .unwrap()
                .id(),
            Some(3)
        );
        assert_eq!(
            store.submit(&Submission::default()).unwrap(),
            Submitted::Written(None)
        );
    }
    let mut store = SqliteStore::open(&path).unwrap();
    let snapshot = store.load().unwrap();
    assert_eq!(snapshot.ledger, vec![revoked]);
    assert_eq!(
        snapshot.outbox,
        vec![OutboxItem {
            id: 3,
            target: public(4),
            statement: ask,
            stored_ms: NOW + 2
        }]
    );
    assert_eq!(store.purge(before(0, NOW + 3)).unwrap().deliveries, 1);
    assert!(store.load().unwrap().outbox.is_empty());
    drop(store);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn undecodable_ledger_and_outbox_rows_are_skipped_and_kept() {
    let dir = temp("badstatement");
    let mut store = SqliteStore::open(&dir.join(DB_FILE)).unwrap();
    let good = trust(1, 2, NOW);
    let other = trust(3, 4, NOW);
    let ask = request(5, 6);
    for statement in [&good, &other] {
        store
            .submit(&Submission {
                ledger: Some(statement),
                ..Submission::default()
            })
            .unwrap();
    }
    store.submit(&deliver(public(6), &ask, NOW)).unwrap();
    store.submit(&deliver(public(6), &ask, NOW)).unwrap();
    let (low, _) = other.pair();
    store
        .conn
        .execute(
            "UPDATE ledger SET statement = x'02ff' WHERE low = ?1",
            [&low.0[..]],
        )
        .unwrap();
    store
        .conn
        .execute("UPDATE outbox SET statement = x'00' WHERE id = 1", [])
        .unwrap();
    let snapshot = store.load().unwrap();
    assert_eq!(snapshot.ledger, vec![good]);
    assert_eq!(snapshot.outbox.len(), 1);
    assert_eq!(snapshot.outbox[0].id, 2);
    let rows: i64 = store
        .conn
        .query_row(
            "SELECT (SELECT count(*) FROM ledger) + (SELECT count(*) FROM outbox)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 4, "never deleted");
    drop(store);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_version_1_database_is_migrated_in_place_keeping_registrations() {
    let dir = temp("migrate");
    let path = dir.join(DB_FILE);
    {
        let v1 = Connection::open(&path).unwrap();
        v1.execute_batch(
            "CREATE TABLE registrations (
                key BLOB PRIMARY KEY CHECK (length(key) = 32),
                observed TEXT NOT NULL,
                lan TEXT NOT NULL,
                allow BLOB NOT NULL,
                nat TEXT NOT NULL,
                first_seen_ms INTEGER NOT NULL,
                last_seen_ms INTEGER NOT NULL
            ) STRICT;
            PRAGMA user_version = 1;",
        )
        .unwrap();
        v1.execute(
            "INSERT INTO registrations VALUES (?1, '192.0.2.1:4000', '10.0.0.2:51870', ?2, \
             'endpoint_dependent', 1700000000000, 1700000025000)",
            params![&[7u8; 32][..], &[9u8; 64][..]],
        )
        .unwrap();
    }
    let mut store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.load().unwrap().registrations,
        vec![Registration {
            key: NodeKey([7; 32]),
            observed: "192.0.2.1:4000".parse().unwrap(),
            lan: vec!["10.0.0.2:51870".parse().unwrap()],
            hostname: None,
            nat: NatKind::EndpointDependent,
            first_seen_ms: 1_700_000_000_000,
            last_seen_ms: 1_700_000_025_000,
        }]
    );
    let version: i64 = store
        .conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
    let allow: i64 = store
        .conn
        .query_row(
            "SELECT count(*) FROM pragma_table_info('registrations') WHERE name = 'allow'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(allow, 0, "allow column dropped");
    // The new tables work.
    store.save(&[record(1)], 0).unwrap();
    store
        .submit(&deliver(public(2), &request(1, 2), NOW))
        .unwrap();
    drop(store);
    // Reopening a version 2 file changes nothing.
    let mut store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.load().unwrap().registrations.len(), 2);
    drop(store);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_newer_schema_is_refused_and_left_alone() {
    let dir = temp("newer");
    let path = dir.join(DB_FILE);
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE future (x); PRAGMA user_version = 3;")
        .unwrap();
    let err = SqliteStore::open(&path).err().expect("must refuse");
    assert!(
        matches!(err, StoreError::NewerSchema { version: 3, .. }),
        "{err}"
    );
    let tables: i64 = Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 1, "nothing created");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_opener_is_refused_while_the_first_holds_the_lock() {
    let dir = temp("lock");
    let path = dir.join(DB_FILE);
    let first = SqliteStore::open(&path).unwrap();
    let err = SqliteStore::open(&path)
        .err()
        .expect("second open must fail");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    drop(first);
    SqliteStore::open(&path).unwrap();
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_that_is_not_a_database_is_an_error_and_left_alone() {
    let dir = temp("corrupt");
    let path = dir.join(DB_FILE);
    let junk = b"this is not an SQLite database, but it is somebody's file".repeat(100);
    fs::write(&path, &junk).unwrap();
    let err = SqliteStore::open(&path).err().expect("must refuse");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("move it away"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), junk, "never wiped");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn undecodable_registrations_are_reported_not_skipped() {
    let dir = temp("badrow");
    let path = dir.join(DB_FILE);
    let mut store = SqliteStore::open(&path).unwrap();
    store.save(&[record(1)], 0).unwrap();
    store
        .conn
        .execute("UPDATE registrations SET observed = 'nowhere'", [])
        .unwrap();
    let err = store.load().unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    drop(store);
    fs::remove_dir_all(&dir).unwrap();
}

/// The server's scenarios across restarts (`rendezvous::testing`), on a database file.
mod across_restarts {
    use std::path::PathBuf;

    use pilot_proto::rendezvous::testing::{
        a_request_waits_for_its_target_across_a_restart, a_restart_does_not_reset_a_names_ttl, Sim,
    };

    use super::*;

    fn database(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pilot-rdv-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(DB_FILE)
    }

    #[test]
    fn a_request_waits_for_its_target_across_a_restart_in_sqlite() {
        let path = database("outbox");
        let open = || -> Box<dyn Store> { Box::new(SqliteStore::open(&path).unwrap()) };
        let sim = Sim::on(open(), |_| {});
        a_request_waits_for_its_target_across_a_restart(sim, open);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_restart_does_not_reset_a_names_ttl_in_sqlite() {
        let path = database("names");
        a_restart_does_not_reset_a_names_ttl(|| Box::new(SqliteStore::open(&path).unwrap()));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}

#[test]
fn names_are_first_come_first_served_across_servers_in_sqlite() {
    let dir = temp("across");
    let mut store = SqliteStore::open(&dir.join(DB_FILE)).unwrap();
    names_are_first_come_first_served_across_servers(&mut store);
    drop(store);
    fs::remove_dir_all(&dir).unwrap();
}
