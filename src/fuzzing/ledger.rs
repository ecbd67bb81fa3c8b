//! The trust ledger's merge: statements signed by a few fixed keys, admitted into two ledgers
//! in opposite orders. The ledgers must agree on what matters (for every pair: trusted or
//! revoked, as of when; for every key: the digest a node and the rendezvous compare), and a
//! statement altered after signing is never admitted.

use super::input::Input;
use super::wire::fixed_identity;
use crate::identity::NodeKey;
use crate::wire::trust::{PairState, Revocation, TrustLedger, TrustRecord, MAX_FUTURE_MS};

/// The ledgers' clock.
const NOW_MS: u64 = 1_800_000_000_000;
/// Parties.
const KEYS: u8 = 4;

enum Signed {
    Record(TrustRecord),
    Revocation(Revocation),
}

pub fn trust_ledger(data: &[u8]) {
    let mut input = Input::new(data);
    let mut statements = Vec::new();
    while !input.is_empty() && statements.len() < 16 {
        if let Some(s) = statement(&mut input) {
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
fn statement(input: &mut Input<'_>) -> Option<Signed> {
    let op = input.u8();
    let a = fixed_identity(input.u8() % KEYS);
    let b = fixed_identity(input.u8() % KEYS);
    // Mostly in the past, sometimes a little (or too far) in the future.
    let issued = (NOW_MS - 1000 + u64::from(input.u8() % 8) * 100)
        .wrapping_add(u64::from(input.u8() >> 6) * MAX_FUTURE_MS / 2);
    let tamper = input.u8();
    let mut signed = match op % 3 {
        0 | 1 => {
            let half = TrustRecord::approve(a.signing_key(), b.public_key(), issued).ok()?;
            let record = if op.is_multiple_of(3) {
                half.countersign(b.signing_key(), NOW_MS).ok()?
            } else {
                half
            };
            Signed::Record(record)
        }
        _ => {
            let reason = ["", "gone", "key lost"][usize::from(input.u8() % 3)];
            let revocation =
                Revocation::sign(a.signing_key(), b.public_key(), issued, reason).ok()?;
            Signed::Revocation(revocation)
        }
    };
    if tamper & 0x80 != 0 {
        let at = usize::from(tamper & 0x3f);
        match &mut signed {
            Signed::Record(r) => r.low_signature[at] ^= 1,
            Signed::Revocation(v) => v.signature[at] ^= 1,
        }
    }
    Some(signed)
}

fn admit(ledger: &mut TrustLedger, statement: &Signed) {
    let (result, valid) = match statement {
        Signed::Record(r) => (
            ledger.admit_record(r.clone(), NOW_MS),
            r.verify(NOW_MS).is_ok(),
        ),
        Signed::Revocation(v) => (
            ledger.admit_revocation(v.clone(), NOW_MS),
            v.verify(NOW_MS).is_ok(),
        ),
    };
    assert_eq!(
        result.is_ok(),
        valid,
        "admitted what does not verify (or the reverse)"
    );
}
