//! Rows the stores' tests write and read back (both stores pass the same cases).

use ed25519_dalek::SigningKey;

use crate::identity::NodeKey;
use crate::rendezvous::{NewDelivery, PurgeBefore, Registration, Submission};
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
