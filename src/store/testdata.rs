//! Rows the stores' tests write and read back (both stores pass the same cases).

use ed25519_dalek::SigningKey;

use crate::identity::NodeKey;
use crate::rendezvous::{NewDelivery, PurgeBefore, Registration, Submission, Submitted};
use crate::wire::control::NatKind;
use crate::wire::trust::{Statement, TrustRecord, TrustRequest};

pub(super) const NOW: u64 = 1_800_000_000_000;

pub(super) fn record(n: u8) -> Registration {
    Registration {
        key: NodeKey([n; 32]),
        observed: "192.0.2.1:4000".parse().unwrap(),
        lan: vec![
            "10.0.0.2:51870".parse().unwrap(),
            "[fe80::1]:51870".parse().unwrap(),
        ],
        hostname: Some(format!("node-{n}").parse().unwrap()),
        nat: NatKind::EndpointIndependent,
        first_seen_ms: 1_700_000_000_000,
        last_seen_ms: 1_700_000_025_000 + u64::from(n),
    }
}

/// Purges names and registrations silent since before `silent_ms`, deliveries stored
/// before `stored_ms`.
pub(super) fn before(silent_ms: u64, stored_ms: u64) -> PurgeBefore {
    PurgeBefore {
        names_ms: silent_ms,
        registrations_ms: silent_ms,
        deliveries_ms: stored_ms,
    }
}

pub(super) fn signer(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

pub(super) fn public(n: u8) -> NodeKey {
    NodeKey(signer(n).verifying_key().to_bytes())
}

pub(super) fn trust(a: u8, b: u8, issued_ms: u64) -> Statement {
    let record = TrustRecord::approve(&signer(b), public(a), issued_ms)
        .unwrap()
        .countersign(&signer(a), NOW)
        .unwrap();
    Statement::Record(record)
}

pub(super) fn request(from: u8, to: u8) -> Statement {
    Statement::Request(TrustRequest::sign(&signer(from), public(to), NOW, 1, "hello").unwrap())
}

pub(super) fn deliver(target: NodeKey, statement: &Statement, stored_ms: u64) -> Submission<'_> {
    Submission {
        deliver: Some(NewDelivery {
            target,
            statement,
            stored_ms,
        }),
        ..Submission::default()
    }
}

/// Several servers share one store: a name filed under another key seen at or after
/// `held_since` is not taken (that registration is not written, its key returned), a name
/// filed under a key not seen since is a leftover and is taken, and a node renaming itself
/// keeps its own name free of such checks. Every store passes it.
pub(super) fn names_are_first_come_first_served_across_servers(
    store: &mut dyn crate::rendezvous::Store,
) {
    let held_since = 1_700_000_025_000;
    let holder = record(1); // node-1, seen at held_since + 1
    assert_eq!(
        store
            .save(std::slice::from_ref(&holder), held_since)
            .unwrap(),
        vec![]
    );
    // Another key claims node-1 (at another server, which did not know): refused, unwritten.
    let mut rival = record(2);
    rival.hostname = Some("node-1".parse().unwrap());
    let other = record(3);
    let taken = store
        .save(&[rival.clone(), other.clone()], held_since)
        .unwrap();
    assert_eq!(taken, vec![rival.key]);
    let snapshot = store.load().unwrap();
    let mut keys: Vec<NodeKey> = snapshot.registrations.iter().map(|r| r.key).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![holder.key, other.key],
        "the rest of the batch is written"
    );
    // Once the holder has not been seen since held_since, its name is a leftover.
    let taken = store
        .save(&[rival.clone()], holder.last_seen_ms + 1)
        .unwrap();
    assert_eq!(taken, vec![]);
    let snapshot = store.load().unwrap();
    let named: Vec<(NodeKey, Option<String>)> = {
        let mut v: Vec<_> = snapshot
            .registrations
            .iter()
            .map(|r| (r.key, r.hostname.as_ref().map(|h| h.to_string())))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        named,
        vec![
            (holder.key, None),
            (rival.key, Some("node-1".into())),
            (other.key, Some("node-3".into())),
        ]
    );
    // The holder renames itself, and claims its own name again: never refused.
    let mut renamed = rival.clone();
    renamed.hostname = Some("renamed".parse().unwrap());
    assert_eq!(store.save(&[renamed], u64::MAX).unwrap(), vec![]);
    assert_eq!(store.save(&[rival], 0).unwrap(), vec![]);
}

/// Several servers share one store: a ledger statement is written over the pair's row only if
/// it takes effect over it (the newer wins, a revocation wins a tie); otherwise the submission
/// writes nothing at all, its delivery included, and says so by returning no id. A store
/// several servers can share passes it (SQLite, which one server holds, writes what its
/// server decided).
pub(super) fn an_older_ledger_statement_is_not_written_over_a_newer_one(
    store: &mut dyn crate::rendezvous::Store,
) {
    use crate::wire::trust::Revocation;
    let revocation = |issued_ms| {
        Statement::Revocation(Revocation::sign(&signer(1), public(2), issued_ms, "").unwrap())
    };
    let newer = trust(1, 2, NOW + 5);
    fn with_delivery(statement: &Statement) -> Submission<'_> {
        Submission {
            ledger: Some(statement),
            ..deliver(public(2), statement, NOW)
        }
    }
    assert!(store.submit(&with_delivery(&newer)).unwrap().id().is_some());
    // A server that had not read `newer` yet takes an older revocation: nothing is written.
    let older = revocation(NOW);
    assert_eq!(
        store.submit(&with_delivery(&older)).unwrap(),
        Submitted::Superseded
    );
    let snapshot = store.load().unwrap();
    assert_eq!(snapshot.ledger, vec![newer.clone()]);
    assert_eq!(snapshot.outbox.len(), 1, "only newer's delivery");
    // A revocation issued with the record wins the tie; a record does not win it back.
    let tie = revocation(NOW + 5);
    assert!(store.submit(&with_delivery(&tie)).unwrap().id().is_some());
    assert_eq!(
        store.submit(&with_delivery(&newer)).unwrap(),
        Submitted::Superseded
    );
    assert_eq!(store.load().unwrap().ledger, vec![tie]);
    let renewed = trust(1, 2, NOW + 6);
    assert!(store
        .submit(&with_delivery(&renewed))
        .unwrap()
        .id()
        .is_some());
    assert_eq!(store.load().unwrap().ledger, vec![renewed]);
}
