//! The PostgreSQL store on real, throwaway clusters (`pilot_lab::postgres`): one per test,
//! on a Unix socket in a temp dir. Without Debian's `postgresql` a test prints why and passes,
//! except under `CI=true`, where it fails.

use pilot_lab::postgres::Cluster;

use super::*;
use crate::rendezvous::Snapshot;
use crate::store::testdata::*;
use crate::wire::control::NatKind;

/// A cluster with database `registry` (see `Cluster::for_test`).
fn cluster(test: &str) -> Option<Cluster> {
    Cluster::for_test(test, "registry")
}

fn with_password() -> PasswordSources {
    PasswordSources {
        env_password: Some(Cluster::PASSWORD.into()),
        ..PasswordSources::default()
    }
}

fn open(cluster: &Cluster) -> PostgresStore {
    let target = Target::parse(&cluster.url("registry"), &with_password()).unwrap();
    PostgresStore::open(target).unwrap_or_else(|e| panic!("{e}"))
}

fn sorted(mut snapshot: Snapshot) -> Vec<Registration> {
    snapshot.registrations.sort_by_key(|r| r.key);
    snapshot.registrations
}

#[test]
fn saved_records_and_names_survive_reopening_and_go_when_purged() {
    let Some(cluster) = cluster("saved_records_and_names_survive_reopening_and_go_when_purged")
    else {
        return;
    };
    let mut changed = record(1);
    changed.lan.clear();
    changed.hostname = None;
    changed.nat = NatKind::Unknown;
    {
        let mut store = open(&cluster);
        store.save(&[record(1), record(2)], 0).unwrap();
        store.save(std::slice::from_ref(&changed), 0).unwrap();
    }
    let mut store = open(&cluster);
    assert_eq!(sorted(store.load().unwrap()), vec![changed, record(2)]);
    // Renaming releases the old name, which another key may then take.
    let mut two = record(2);
    two.hostname = Some("renamed".parse().unwrap());
    let mut three = record(3);
    three.hostname = Some("node-2".parse().unwrap());
    store.save(&[two.clone()], 0).unwrap();
    store.save(&[three.clone()], 0).unwrap();
    assert_eq!(
        cluster
            .sql("registry", "SELECT count(*) FROM names")
            .unwrap(),
        "2"
    );
    // Node 1 (no name) and node 2 are silent too long; 3 keeps its own.
    let purged = store.purge(before(1_700_000_025_003, 0)).unwrap();
    assert_eq!(purged.keys.len(), 2, "{purged:?}");
    assert_eq!(purged.names, vec!["renamed".parse().unwrap()]);
    assert_eq!(sorted(store.load().unwrap()), vec![three]);
    assert_eq!(
        store.release_name(&"node-2".parse().unwrap()).unwrap(),
        Some(NodeKey([3; 32]))
    );
    assert_eq!(
        store.release_name(&"node-2".parse().unwrap()).unwrap(),
        None
    );
}

#[test]
fn ledger_and_outbox_survive_reopening_and_ids_are_never_reused() {
    let Some(cluster) = cluster("ledger_and_outbox_survive_reopening_and_ids_are_never_reused")
    else {
        return;
    };
    let record = trust(1, 2, NOW);
    let ask = request(3, 4);
    let (first, second) = {
        let mut store = open(&cluster);
        let first = store
            .submit(&Submission {
                ledger: Some(&record),
                ..deliver(public(1), &record, NOW)
            })
            .unwrap()
            .id()
            .unwrap();
        // A newer request replaces the older one in one transaction.
        let second = store
            .submit(&Submission {
                replaces: Some(first),
                ..deliver(public(4), &ask, NOW + 2)
            })
            .unwrap()
            .id()
            .unwrap();
        (first, second)
    };
    assert!(second > first);
    let mut store = open(&cluster);
    let snapshot = store.load().unwrap();
    assert_eq!(snapshot.ledger, vec![record.clone()]);
    assert_eq!(snapshot.outbox.len(), 1);
    assert_eq!(
        (snapshot.outbox[0].id, &snapshot.outbox[0].statement),
        (second, &ask)
    );
    store.delivered(second).unwrap();
    store.delivered(u64::MAX).unwrap(); // no such row: nothing to do
    let third = store
        .submit(&deliver(public(4), &ask, NOW))
        .unwrap()
        .id()
        .unwrap();
    assert!(
        third > second,
        "ids are never reused: {third} after {second}"
    );
    assert_eq!(store.purge(before(0, NOW + 1)).unwrap().deliveries, 1);
    assert!(store.load().unwrap().outbox.is_empty());
    // An undecodable ledger row is skipped and left in place.
    cluster
        .sql(
            "registry",
            "INSERT INTO ledger VALUES (decode(repeat('00', 32), 'hex'), \
             decode(repeat('01', 32), 'hex'), '\\x00')",
        )
        .unwrap();
    assert_eq!(store.load().unwrap().ledger, vec![record]);
    assert_eq!(
        cluster
            .sql("registry", "SELECT count(*) FROM ledger")
            .unwrap(),
        "2"
    );
}

#[test]
fn a_newer_schema_is_refused_and_left_alone_and_a_bad_registration_is_an_error() {
    let Some(cluster) =
        cluster("a_newer_schema_is_refused_and_left_alone_and_a_bad_registration_is_an_error")
    else {
        return;
    };
    drop(open(&cluster));
    assert_eq!(
        cluster
            .sql("registry", "SELECT version FROM pilot_schema")
            .unwrap(),
        SCHEMA_VERSION.to_string()
    );
    cluster
        .sql(
            "registry",
            "INSERT INTO registrations VALUES (decode(repeat('07', 32), 'hex'), \
             'not an endpoint', '', 'none', 0, 0)",
        )
        .unwrap();
    let target = Target::parse(&cluster.url("registry"), &with_password()).unwrap();
    let e = PostgresStore::open(target.clone())
        .unwrap()
        .load()
        .unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("not an endpoint"), "{e}");
    cluster
        .sql("registry", "UPDATE pilot_schema SET version = 9")
        .unwrap();
    let e = PostgresStore::open(target).err().expect("refused");
    assert!(
        matches!(e, StoreError::NewerSchema { version: 9, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("upgrade pilotd"), "{e}");
    assert_eq!(
        cluster
            .sql("registry", "SELECT version FROM pilot_schema")
            .unwrap(),
        "9"
    );
    assert_eq!(
        cluster
            .sql("registry", "SELECT count(*) FROM registrations")
            .unwrap(),
        "1"
    );
}

#[test]
fn a_missing_or_wrong_password_is_a_clear_error_that_names_no_secret() {
    let Some(cluster) =
        cluster("a_missing_or_wrong_password_is_a_clear_error_that_names_no_secret")
    else {
        return;
    };
    let url = cluster.url("registry");
    let none = Target::parse(&url, &PasswordSources::default()).unwrap();
    let e = PostgresStore::open(none)
        .err()
        .expect("no password")
        .to_string();
    assert!(e.contains("password"), "{e}");
    let wrong = PasswordSources {
        env_password: Some("not-the-password".into()),
        ..PasswordSources::default()
    };
    let e = PostgresStore::open(Target::parse(&url, &wrong).unwrap())
        .err()
        .expect("wrong password")
        .to_string();
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains("not-the-password"), "{e}");
    let missing_db = Target::parse(&cluster.url("nosuchdb"), &with_password()).unwrap();
    let e = PostgresStore::open(missing_db)
        .err()
        .expect("no database")
        .to_string();
    assert!(
        e.contains("nosuchdb") && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn a_stopped_database_fails_writes_quickly_and_a_restarted_one_is_reconnected() {
    let Some(mut cluster) =
        cluster("a_stopped_database_fails_writes_quickly_and_a_restarted_one_is_reconnected")
    else {
        return;
    };
    let mut store = open(&cluster);
    store.save(&[record(1)], 0).unwrap();
    cluster.stop().unwrap();
    let started = std::time::Instant::now();
    let e = store.save(&[record(2)], 0).unwrap_err();
    assert!(matches!(e, StoreError::Write(_)), "{e}");
    assert!(
        started.elapsed() < CALL_TIMEOUT,
        "failed at once, not at the deadline"
    );
    assert!(store.save(&[record(2)], 0).is_err(), "still down");
    cluster.restart().unwrap();
    store.save(&[record(2)], 0).unwrap();
    assert_eq!(sorted(store.load().unwrap()), vec![record(1), record(2)]);
}

/// The server's scenarios across restarts (`rendezvous::testing`), on PostgreSQL.
mod across_restarts {
    use pilot_proto::rendezvous::testing::{
        a_request_waits_for_its_target_across_a_restart, a_restart_does_not_reset_a_names_ttl, Sim,
    };

    use super::*;

    #[test]
    fn a_request_waits_for_its_target_across_a_restart_in_postgres() {
        let Some(cluster) = cluster("a_request_waits_for_its_target_across_a_restart_in_postgres")
        else {
            return;
        };
        let open = || -> Box<dyn Store> { Box::new(open(&cluster)) };
        let sim = Sim::on(open(), |_| {});
        a_request_waits_for_its_target_across_a_restart(sim, open);
    }

    #[test]
    fn a_restart_does_not_reset_a_names_ttl_in_postgres() {
        let Some(cluster) = cluster("a_restart_does_not_reset_a_names_ttl_in_postgres") else {
            return;
        };
        a_restart_does_not_reset_a_names_ttl(|| Box::new(open(&cluster)));
    }
}

#[test]
fn names_are_first_come_first_served_across_servers_in_postgres() {
    let Some(cluster) = cluster("names_are_first_come_first_served_across_servers_in_postgres")
    else {
        return;
    };
    names_are_first_come_first_served_across_servers(&mut open(&cluster));
}

#[test]
fn an_older_ledger_statement_is_not_written_over_a_newer_one_in_postgres() {
    let test = "an_older_ledger_statement_is_not_written_over_a_newer_one_in_postgres";
    let Some(cluster) = cluster(test) else {
        return;
    };
    an_older_ledger_statement_is_not_written_over_a_newer_one(&mut open(&cluster));
    // A row an older version wrote (no issued_ms) is replaced by any statement, as then.
    cluster
        .sql(
            "registry",
            "UPDATE ledger SET issued_ms = NULL, revoked = NULL",
        )
        .unwrap();
    let mut store = open(&cluster);
    let old = trust(1, 2, NOW);
    let written = store.submit(&Submission {
        ledger: Some(&old),
        ..Submission::default()
    });
    assert_eq!(written.unwrap(), Submitted::Written(None));
    assert_eq!(store.load().unwrap().ledger, vec![old]);
}

#[test]
fn an_older_ledger_statement_is_not_written_over_a_newer_one_in_memory() {
    let mut store = crate::rendezvous::MemoryStore::new();
    an_older_ledger_statement_is_not_written_over_a_newer_one(&mut store);
}

#[test]
fn instances_beat_by_the_database_clock_and_a_silent_one_drops_out() {
    let Some(cluster) = cluster("instances_beat_by_the_database_clock_and_a_silent_one_drops_out")
    else {
        return;
    };
    let mut store = open(&cluster);
    let instance = |n: u8| crate::rendezvous::Instance {
        key: NodeKey([n; 32]),
        main: "203.0.113.10:7000".parse().unwrap(),
        alt_port: 7001,
        incarnation: u64::from(n),
        // The server's own clock, a year off: the database's clock decides.
        beat_ms: 1,
    };
    let within = std::time::Duration::from_secs(6);
    assert_eq!(store.heartbeat(&instance(1), within).unwrap().len(), 1);
    let both = store.heartbeat(&instance(2), within).unwrap();
    assert_eq!(both.iter().map(|i| i.key).collect::<Vec<_>>().len(), 2);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        both.iter().all(|i| i.beat_ms.abs_diff(now_ms) < 60_000),
        "{both:?}"
    );
    // Instance 2 goes silent: with a window shorter than its silence it is gone.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let alive = store
        .heartbeat(&instance(1), std::time::Duration::from_millis(200))
        .unwrap();
    assert_eq!(
        alive.iter().map(|i| i.key).collect::<Vec<_>>(),
        vec![NodeKey([1; 32])]
    );
}

#[test]
fn a_version_1_database_is_migrated_keeping_its_rows() {
    let Some(cluster) = cluster("a_version_1_database_is_migrated_keeping_its_rows") else {
        return;
    };
    // A database as the first release left it: schema 1, one registration.
    let v1 = [
        "CREATE TABLE pilot_schema (version integer NOT NULL)",
        "INSERT INTO pilot_schema VALUES (1)",
        "CREATE TABLE registrations (key bytea PRIMARY KEY CHECK (length(key) = 32), \
         observed text NOT NULL, lan text NOT NULL, nat text NOT NULL, \
         first_seen_ms bigint NOT NULL, last_seen_ms bigint NOT NULL)",
        "CREATE TABLE names (name text PRIMARY KEY, key bytea NOT NULL UNIQUE)",
        "CREATE TABLE ledger (low bytea NOT NULL, high bytea NOT NULL, statement bytea NOT NULL, \
         PRIMARY KEY (low, high))",
        "CREATE TABLE outbox (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         target bytea NOT NULL, statement bytea NOT NULL, stored_ms bigint NOT NULL)",
        "INSERT INTO registrations VALUES (decode(repeat('05', 32), 'hex'), \
         '192.0.2.1:4000', '', 'none', 1, 2)",
    ];
    for sql in v1 {
        cluster.sql("registry", sql).unwrap();
    }
    let mut store = open(&cluster);
    assert_eq!(
        cluster
            .sql("registry", "SELECT version FROM pilot_schema")
            .unwrap(),
        SCHEMA_VERSION.to_string()
    );
    assert_eq!(store.load().unwrap().registrations[0].key, NodeKey([5; 32]));
    let me = crate::rendezvous::Instance {
        key: NodeKey([9; 32]),
        main: "0.0.0.0:7000".parse().unwrap(),
        alt_port: 7001,
        incarnation: 1,
        beat_ms: 0,
    };
    assert_eq!(
        store
            .heartbeat(&me, std::time::Duration::from_secs(6))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_lookup_finds_what_another_instance_registered() {
    let Some(cluster) = cluster("a_lookup_finds_what_another_instance_registered") else {
        return;
    };
    use crate::wire::control::{Found, Query};
    let mut store = open(&cluster);
    store.save(&[record(1)], 0).unwrap(); // node-1, seen at 1_700_000_025_001
    let found = Some(Found {
        key: NodeKey([1; 32]),
        hostname: Some("node-1".parse().unwrap()),
    });
    let seen = record(1).last_seen_ms;
    assert_eq!(
        store
            .look_up(&Query::Name("node-1".parse().unwrap()), seen)
            .unwrap(),
        found
    );
    assert_eq!(
        store.look_up(&Query::Key(NodeKey([1; 32])), seen).unwrap(),
        found
    );
    // Silent since before the hold: not found; nor is what nobody registered.
    assert_eq!(
        store
            .look_up(&Query::Name("node-1".parse().unwrap()), seen + 1)
            .unwrap(),
        None
    );
    assert_eq!(
        store.look_up(&Query::Key(NodeKey([2; 32])), 0).unwrap(),
        None
    );
    assert_eq!(
        store
            .look_up(&Query::Name("nobody".parse().unwrap()), 0)
            .unwrap(),
        None
    );
}

/// `bytes` as a PostgreSQL bytea literal.
fn bytea(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("'\\x{hex}'")
}

#[test]
fn trust_changes_are_read_once_each_none_skipped_however_commits_interleave() {
    let Some(cluster) =
        cluster("trust_changes_are_read_once_each_none_skipped_however_commits_interleave")
    else {
        return;
    };
    let (mut one, mut two) = (open(&cluster), open(&cluster));
    let start = two.load().unwrap().cursor;
    let nothing = two.trust_changes(start).unwrap();
    assert_eq!((nothing.ledger.len(), nothing.outbox.len()), (0, 0));
    // A transaction begins writing a delivery and stays open (a slow writer elsewhere)...
    let ask = request(3, 4);
    let mut slow = cluster.session("registry").unwrap();
    slow.run("BEGIN").unwrap();
    slow.run(&format!(
        "INSERT INTO outbox (target, statement, stored_ms) VALUES ({}, {}, {NOW})",
        bytea(&public(4).0),
        bytea(&ask.to_bytes())
    ))
    .unwrap();
    // ... while one writes and commits a record after it.
    let record = trust(1, 2, NOW);
    let submitted = Submission {
        ledger: Some(&record),
        ..deliver(public(1), &record, NOW)
    };
    let id = one.submit(&submitted).unwrap().id().unwrap();
    // Two waits for the older transaction: reading one's write now and moving past it would
    // skip the slow one's when it commits.
    let held = two.trust_changes(start).unwrap();
    assert_eq!((held.ledger.len(), held.outbox.len()), (0, 0));
    slow.run("COMMIT").unwrap();
    let changes = two.trust_changes(held.cursor).unwrap();
    assert_eq!(changes.ledger, vec![record.clone()]);
    let outbox: Vec<(u64, &crate::wire::trust::Statement)> = (changes.outbox.iter())
        .map(|i| (i.id, &i.statement))
        .collect();
    assert_eq!(outbox.len(), 2, "{outbox:?}");
    assert_eq!((outbox[0].1, outbox[1]), (&ask, (id, &record)));
    // Each once: nothing new, nothing again.
    let again = two.trust_changes(changes.cursor).unwrap();
    assert_eq!((again.ledger.len(), again.outbox.len()), (0, 0));
    // A ledger row written again is a change again; a delivered item is gone.
    let newer = trust(1, 2, NOW + 5);
    one.submit(&Submission {
        ledger: Some(&newer),
        ..Submission::default()
    })
    .unwrap();
    one.delivered(id).unwrap();
    let last = two.trust_changes(again.cursor).unwrap();
    assert_eq!(last.ledger, vec![newer]);
    assert_eq!(last.outbox, vec![]);
    // A store that cannot be read says so.
    drop(slow);
    let mut cluster = cluster;
    cluster.stop().unwrap();
    assert!(two.trust_changes(last.cursor).is_err());
}

#[test]
fn a_node_is_located_at_the_instance_that_last_saved_it() {
    let Some(cluster) = cluster("a_node_is_located_at_the_instance_that_last_saved_it") else {
        return;
    };
    let (mut one, mut two) = (open(&cluster), open(&cluster));
    let node = record(1);
    let seen = node.last_seen_ms;
    // Saved before any instance said who it is: filed under no home, located nowhere.
    one.save(std::slice::from_ref(&node), 0).unwrap();
    assert_eq!(two.locate(&node.key, seen).unwrap(), None);
    one.set_home(NodeKey([0xa1; 32]));
    one.save(std::slice::from_ref(&node), 0).unwrap();
    let located = two.locate(&node.key, seen).unwrap().unwrap();
    assert_eq!(
        (located.registration, located.home),
        (node.clone(), NodeKey([0xa1; 32]))
    );
    // Not seen since: not located; nor a key nobody registered.
    assert_eq!(two.locate(&node.key, seen + 1).unwrap(), None);
    assert_eq!(two.locate(&NodeKey([7; 32]), 0).unwrap(), None);
    // It moves to two (fails over): located there.
    two.set_home(NodeKey([0xb2; 32]));
    two.save(std::slice::from_ref(&node), 0).unwrap();
    assert_eq!(
        one.locate(&node.key, seen).unwrap().unwrap().home,
        NodeKey([0xb2; 32])
    );
}
