//! The trust ledger's merge: statements signed by a few fixed keys, admitted into two ledgers
//! in opposite orders. The ledgers must agree on what matters (for every pair: trusted or
//! revoked, as of when; for every key: the digest a node and the rendezvous compare), and a
//! statement altered after signing is never admitted.

use std::cell::RefCell;
use std::collections::HashMap;

use super::input::Input;
use super::wire::fixed_identity;
use crate::identity::NodeKey;
use crate::wire::trust::{PairState, Revocation, TrustLedger, TrustRecord, MAX_FUTURE_MS};

/// The ledgers' clock.
const NOW_MS: u64 = 1_800_000_000_000;
/// Parties.
const KEYS: u8 = 4;
/// Statements per run. Two to four on one pair are what an order dependence needs; eight
/// leave room for several pairs at once, and halve the worst run of sixteen (each statement
/// costs both ledgers up to two signature checks).
const MAX_STATEMENTS: usize = 8;
/// Built statements kept for later runs (some 20 MB at most); there are about 10^5 specs,
/// so in a long run the cache is dropped now and then rather than grown without bound.
const CACHE_LIMIT: usize = 1 << 16;

#[derive(Clone)]
enum Signed {
    Record(TrustRecord),
    Revocation(Revocation),
}

/// What the input asks for, every field as the statement uses it: equal specs build equal
/// statements (Ed25519 signing is deterministic), so they are built once and kept.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Spec {
    op: u8,
    a: u8,
    b: u8,
    issued: u64,
    /// The signature byte flipped after signing, if any.
    tamper: Option<u8>,
    reason: u8,
}

/// A statement, and whether it verifies at `NOW_MS` (what a ledger must agree with).
#[derive(Clone)]
struct Built {
    signed: Signed,
    valid: bool,
}

thread_local! {
    static BUILT: RefCell<HashMap<Spec, Option<Built>>> = RefCell::new(HashMap::new());
}

pub fn trust_ledger(data: &[u8]) {
    let mut input = Input::new(data);
    let mut statements = Vec::new();
    while !input.is_empty() && statements.len() < MAX_STATEMENTS {
        if let Some(s) = built(spec(&mut input)) {
            statements.push(s);
        }
    }
    let mut forward = TrustLedger::new();
    let mut backward = TrustLedger::new();
    for s in &statements {
        admit(&mut forward, s);
    }
    for s in statements.iter().rev() {
        admit(&mut backward, s);
    }
    let keys: Vec<NodeKey> = (0..KEYS).map(|n| fixed_identity(n).public_key()).collect();
    for a in &keys {
        assert_eq!(
            forward.digest_of(a),
            backward.digest_of(a),
            "ledger digests depend on the order statements arrived in"
        );
        for b in &keys {
            let summary = |l: &TrustLedger| {
                l.state(a, b)
                    .map(|s| (matches!(s, PairState::Trusted(_)), s.issued_ms()))
            };
            assert_eq!(
                summary(&forward),
                summary(&backward),
                "ledgers disagree on a pair"
            );
            assert_eq!(forward.trusted(a, b), forward.trusted(b, a));
        }
        let pairs: Vec<NodeKey> = forward.pairs_of(a).map(|(other, _)| other).collect();
        assert!(
            pairs.windows(2).all(|w| w[0] < w[1]),
            "pairs_of out of order"
        );
        assert!(!pairs.contains(a), "a key paired with itself");
    }
    assert_eq!(forward.len(), backward.len());
}

/// One statement: who, what, when; sometimes altered after signing (then it must be refused).
fn spec(input: &mut Input<'_>) -> Spec {
    let op = input.u8() % 3;
    let a = input.u8() % KEYS;
    let b = input.u8() % KEYS;
    // Mostly in the past, sometimes a little (or too far) in the future.
    let issued = (NOW_MS - 1000 + u64::from(input.u8() % 8) * 100)
        .wrapping_add(u64::from(input.u8() >> 6) * MAX_FUTURE_MS / 2);
    let tamper = input.u8();
    let reason = if op == 2 { input.u8() % 3 } else { 0 };
    Spec {
        op,
        a,
        b,
        issued,
        tamper: (tamper & 0x80 != 0).then_some(tamper & 0x3f),
        reason,
    }
}

/// The statement `spec` asks for, built and verified once per spec (signing and checking
/// it is most of the cost of a run; the ledgers under test still check every signature of
/// every statement they are given, each run).
fn built(spec: Spec) -> Option<Built> {
    if let Some(known) = BUILT.with(|b| b.borrow().get(&spec).cloned()) {
        return known;
    }
    let built = build(spec).map(|signed| {
        let valid = match &signed {
            Signed::Record(r) => r.verify(NOW_MS).is_ok(),
            Signed::Revocation(v) => v.verify(NOW_MS).is_ok(),
        };
        Built { signed, valid }
    });
    BUILT.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() >= CACHE_LIMIT {
            b.clear();
        }
        b.insert(spec, built.clone());
    });
    built
}

fn build(spec: Spec) -> Option<Signed> {
    let a = fixed_identity(spec.a);
    let b = fixed_identity(spec.b);
    let mut signed = match spec.op {
        0 | 1 => {
            let half = TrustRecord::approve(a.signing_key(), b.public_key(), spec.issued).ok()?;
            let record = if spec.op == 0 {
                half.countersign(b.signing_key(), NOW_MS).ok()?
            } else {
                half
            };
            Signed::Record(record)
        }
        _ => {
            let reason = ["", "gone", "key lost"][usize::from(spec.reason)];
            let revocation =
                Revocation::sign(a.signing_key(), b.public_key(), spec.issued, reason).ok()?;
            Signed::Revocation(revocation)
        }
    };
    if let Some(at) = spec.tamper {
        let at = usize::from(at);
        match &mut signed {
            Signed::Record(r) => r.low_signature[at] ^= 1,
            Signed::Revocation(v) => v.signature[at] ^= 1,
        }
    }
    Some(signed)
}

/// Admits `statement`: accepted exactly when it verifies.
fn admit(ledger: &mut TrustLedger, statement: &Built) {
    let result = match &statement.signed {
        Signed::Record(r) => ledger.admit_record(r.clone(), NOW_MS),
        Signed::Revocation(v) => ledger.admit_revocation(v.clone(), NOW_MS),
    };
    assert_eq!(
        result.is_ok(),
        statement.valid,
        "admitted what does not verify (or the reverse)"
    );
}
