//! Signed trust statements between two nodes: a handshake request, the bilateral trust record
//! both sides sign, and a revocation either side can issue.
//!
//! Every statement is verified by the nodes themselves, never taken on the rendezvous' word:
//! a record names both keys and carries both signatures over the same bytes, so the rendezvous
//! (or anyone) can store and deliver it but cannot make one up or alter it. Which statement
//! holds for a pair is decided by [`TrustLedger`]: the newest wins, and a revocation wins a tie.
//!
//! ```text
//! request    = "pilot/v1/trust-request"  · requester · target · issued_ms · nonce · len · justification  + sig(requester)
//! record     = "pilot/v1/trust-record"   · low key · high key · issued_ms                             + sig(low) + sig(high)
//! revocation = "pilot/v1/trust-revoke"   · by · other · issued_ms · len · reason                      + sig(by)
//! ```
//!
//! On the wire ([`Statement`]) each is a tag byte and its fields in the order above (numbers
//! big-endian, strings as a `u16` length and UTF-8); a record whose second party has not signed
//! yet (an approval on its way to the requester) carries 64 zero bytes in that slot.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use super::codec::{DecodeError, Reader};
use crate::identity::NodeKey;

/// Longest justification a request may carry, in bytes of UTF-8.
pub const MAX_JUSTIFICATION: usize = 256;
/// A request older than this is no longer offered for approval.
pub const REQUEST_LIFETIME_MS: u64 = 7 * 24 * 3600 * 1000;
/// Statements dated further in the future than this are refused (clock skew allowance).
pub const MAX_FUTURE_MS: u64 = 5 * 60 * 1000;

const REQUEST_DOMAIN: &[u8] = b"pilot/v1/trust-request";
const RECORD_DOMAIN: &[u8] = b"pilot/v1/trust-record";
const REVOKE_DOMAIN: &[u8] = b"pilot/v1/trust-revoke";

/// "Please trust me", signed by the requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRequest {
    pub requester: NodeKey,
    pub target: NodeKey,
    pub issued_ms: u64,
    pub nonce: u64,
    pub justification: String,
    pub signature: [u8; 64],
}

/// Mutual trust between two keys, signed by both over the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRecord {
    /// The lower of the two keys (byte order), so both sides build identical bytes.
    pub low: NodeKey,
    pub high: NodeKey,
    pub issued_ms: u64,
    pub low_signature: [u8; 64],
    pub high_signature: [u8; 64],
}

/// "I no longer trust `other`", signed by `by`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub by: NodeKey,
    pub other: NodeKey,
    pub issued_ms: u64,
    /// Why, when a request was rejected (empty for a plain `untrust`).
    pub reason: String,
    pub signature: [u8; 64],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("signature does not verify")]
    BadSignature,
    #[error("a key is not a valid Ed25519 key")]
    BadKey,
    #[error("a node cannot trust itself")]
    SelfTrust,
    #[error("justification longer than {MAX_JUSTIFICATION} bytes")]
    JustificationTooLong,
    #[error("statement dated in the future")]
    FromTheFuture,
    #[error("request expired")]
    Expired,
    #[error("the record's keys are not in canonical order")]
    NotCanonical,
    #[error("this key is not one of the record's two")]
    NotAParty,
    #[error("the record is not signed by both parties")]
    Incomplete,
}

impl TrustRequest {
    /// A request from `key`'s owner to `target`.
    pub fn sign(
        key: &SigningKey,
        target: NodeKey,
        issued_ms: u64,
        nonce: u64,
        justification: &str,
    ) -> Result<TrustRequest, TrustError> {
        let requester = NodeKey(key.verifying_key().to_bytes());
        if requester == target {
            return Err(TrustError::SelfTrust);
        }
        if justification.len() > MAX_JUSTIFICATION {
            return Err(TrustError::JustificationTooLong);
        }
        let mut request = TrustRequest {
            requester,
            target,
            issued_ms,
            nonce,
            justification: justification.to_owned(),
            signature: [0; 64],
        };
        request.signature = key.sign(&request.signed_bytes()).to_bytes();
        Ok(request)
    }

    /// Checks the signature, the size limit, and that it is neither from the future nor older
    /// than [`REQUEST_LIFETIME_MS`] at `now_ms`.
    pub fn verify(&self, now_ms: u64) -> Result<(), TrustError> {
        if self.requester == self.target {
            return Err(TrustError::SelfTrust);
        }
        if self.justification.len() > MAX_JUSTIFICATION {
            return Err(TrustError::JustificationTooLong);
        }
        check_time(self.issued_ms, now_ms)?;
        if now_ms.saturating_sub(self.issued_ms) > REQUEST_LIFETIME_MS {
            return Err(TrustError::Expired);
        }
        verify(&self.requester, &self.signed_bytes(), &self.signature)
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut b = REQUEST_DOMAIN.to_vec();
        b.extend_from_slice(&self.requester.0);
        b.extend_from_slice(&self.target.0);
        b.extend_from_slice(&self.issued_ms.to_be_bytes());
        b.extend_from_slice(&self.nonce.to_be_bytes());
        put_text(&mut b, &self.justification);
        b
    }
}

impl TrustRecord {
    /// The approver's half: `key`'s owner signs trust with `other` as of `issued_ms`. The
    /// record is complete once the other side adds its signature with [`TrustRecord::countersign`].
    pub fn approve(
        key: &SigningKey,
        other: NodeKey,
        issued_ms: u64,
    ) -> Result<TrustRecord, TrustError> {
        let me = NodeKey(key.verifying_key().to_bytes());
        if me == other {
            return Err(TrustError::SelfTrust);
        }
        let (low, high) = if me < other { (me, other) } else { (other, me) };
        let mut record = TrustRecord {
            low,
            high,
            issued_ms,
            low_signature: [0; 64],
            high_signature: [0; 64],
        };
        let signature = key.sign(&record.signed_bytes()).to_bytes();
        *record.slot(&me)? = signature;
        Ok(record)
    }

    /// Adds `key`'s signature (the second party's) after checking the first one.
    pub fn countersign(mut self, key: &SigningKey, now_ms: u64) -> Result<TrustRecord, TrustError> {
        let me = NodeKey(key.verifying_key().to_bytes());
        let other = self.other(&me)?;
        check_time(self.issued_ms, now_ms)?;
        let their_signature = if other == self.low {
            self.low_signature
        } else {
            self.high_signature
        };
        verify(&other, &self.signed_bytes(), &their_signature)?;
        let signature = key.sign(&self.signed_bytes()).to_bytes();
        *self.slot(&me)? = signature;
        Ok(self)
    }

    /// Whether both parties have signed (not that the signatures verify).
    pub fn is_complete(&self) -> bool {
        self.low_signature != [0; 64] && self.high_signature != [0; 64]
    }

    /// The party whose signature is missing from an approval in transit, `None` when both slots
    /// are filled.
    pub fn unsigned_party(&self) -> Option<NodeKey> {
        if self.low_signature == [0; 64] {
            Some(self.low)
        } else if self.high_signature == [0; 64] {
            Some(self.high)
        } else {
            None
        }
    }

    /// Checks an approval in transit: `signer`'s signature is present and valid and the other
    /// slot is still empty.
    pub fn verify_half(&self, signer: &NodeKey, now_ms: u64) -> Result<(), TrustError> {
        self.check_form(now_ms)?;
        let other = self.other(signer)?;
        if self.unsigned_party() != Some(other) {
            return Err(TrustError::Incomplete);
        }
        let signature = if *signer == self.low {
            &self.low_signature
        } else {
            &self.high_signature
        };
        verify(signer, &self.signed_bytes(), signature)
    }

    fn check_form(&self, now_ms: u64) -> Result<(), TrustError> {
        if self.low >= self.high {
            return Err(if self.low == self.high {
                TrustError::SelfTrust
            } else {
                TrustError::NotCanonical
            });
        }
        check_time(self.issued_ms, now_ms)
    }

    /// Checks both signatures and the form. A record altered in any byte fails.
    pub fn verify(&self, now_ms: u64) -> Result<(), TrustError> {
        self.check_form(now_ms)?;
        if !self.is_complete() {
            return Err(TrustError::Incomplete);
        }
        let bytes = self.signed_bytes();
        verify(&self.low, &bytes, &self.low_signature)?;
        verify(&self.high, &bytes, &self.high_signature)
    }

    /// The party that is not `me`.
    pub fn other(&self, me: &NodeKey) -> Result<NodeKey, TrustError> {
        if *me == self.low {
            Ok(self.high)
        } else if *me == self.high {
            Ok(self.low)
        } else {
            Err(TrustError::NotAParty)
        }
    }

    fn slot(&mut self, party: &NodeKey) -> Result<&mut [u8; 64], TrustError> {
        if *party == self.low {
            Ok(&mut self.low_signature)
        } else if *party == self.high {
            Ok(&mut self.high_signature)
        } else {
            Err(TrustError::NotAParty)
        }
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut b = RECORD_DOMAIN.to_vec();
        b.extend_from_slice(&self.low.0);
        b.extend_from_slice(&self.high.0);
        b.extend_from_slice(&self.issued_ms.to_be_bytes());
        b
    }
}

impl Revocation {
    pub fn sign(
        key: &SigningKey,
        other: NodeKey,
        issued_ms: u64,
        reason: &str,
    ) -> Result<Revocation, TrustError> {
        let by = NodeKey(key.verifying_key().to_bytes());
        if by == other {
            return Err(TrustError::SelfTrust);
        }
        if reason.len() > MAX_JUSTIFICATION {
            return Err(TrustError::JustificationTooLong);
        }
        let mut revocation = Revocation {
            by,
            other,
            issued_ms,
            reason: reason.to_owned(),
            signature: [0; 64],
        };
        revocation.signature = key.sign(&revocation.signed_bytes()).to_bytes();
        Ok(revocation)
    }

    pub fn verify(&self, now_ms: u64) -> Result<(), TrustError> {
        if self.by == self.other {
            return Err(TrustError::SelfTrust);
        }
        if self.reason.len() > MAX_JUSTIFICATION {
            return Err(TrustError::JustificationTooLong);
        }
        check_time(self.issued_ms, now_ms)?;
        verify(&self.by, &self.signed_bytes(), &self.signature)
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut b = REVOKE_DOMAIN.to_vec();
        b.extend_from_slice(&self.by.0);
        b.extend_from_slice(&self.other.0);
        b.extend_from_slice(&self.issued_ms.to_be_bytes());
        put_text(&mut b, &self.reason);
        b
    }
}

/// Any trust statement, as it travels between nodes and the rendezvous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    Request(TrustRequest),
    /// A complete record, or an approval waiting for the requester's countersignature.
    Record(TrustRecord),
    Revocation(Revocation),
}

const TAG_REQUEST: u8 = 1;
const TAG_RECORD: u8 = 2;
const TAG_REVOCATION: u8 = 3;
/// Longest encoded statement (a request or revocation with the longest text).
pub const MAX_STATEMENT_LEN: usize = 1 + 32 + 32 + 8 + 8 + 2 + MAX_JUSTIFICATION + 64;

impl Statement {
    /// The two keys the statement is about, in canonical (low, high) order.
    pub fn pair(&self) -> (NodeKey, NodeKey) {
        match self {
            Statement::Request(r) => ordered(r.requester, r.target),
            Statement::Record(r) => (r.low, r.high),
            Statement::Revocation(v) => ordered(v.by, v.other),
        }
    }

    /// When it was signed.
    pub fn issued_ms(&self) -> u64 {
        match self {
            Statement::Request(r) => r.issued_ms,
            Statement::Record(r) => r.issued_ms,
            Statement::Revocation(v) => v.issued_ms,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Statement::Request(r) => {
                out.push(TAG_REQUEST);
                out.extend_from_slice(&r.requester.0);
                out.extend_from_slice(&r.target.0);
                out.extend_from_slice(&r.issued_ms.to_be_bytes());
                out.extend_from_slice(&r.nonce.to_be_bytes());
                put_text(out, &r.justification);
                out.extend_from_slice(&r.signature);
            }
            Statement::Record(r) => {
                out.push(TAG_RECORD);
                out.extend_from_slice(&r.low.0);
                out.extend_from_slice(&r.high.0);
                out.extend_from_slice(&r.issued_ms.to_be_bytes());
                out.extend_from_slice(&r.low_signature);
                out.extend_from_slice(&r.high_signature);
            }
            Statement::Revocation(v) => {
                out.push(TAG_REVOCATION);
                out.extend_from_slice(&v.by.0);
                out.extend_from_slice(&v.other.0);
                out.extend_from_slice(&v.issued_ms.to_be_bytes());
                put_text(out, &v.reason);
                out.extend_from_slice(&v.signature);
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_STATEMENT_LEN);
        self.encode(&mut out);
        out
    }

    /// Decodes one statement that must fill `bytes` exactly. Only the form is checked here;
    /// signatures are checked by `verify` (and by [`TrustLedger`]).
    pub fn decode(bytes: &[u8]) -> Result<Statement, DecodeError> {
        let mut r = Reader(bytes);
        let statement = Statement::read(&mut r)?;
        if !r.0.is_empty() {
            return Err(DecodeError::Trailing);
        }
        Ok(statement)
    }

    /// Reads one statement from the front of `r`.
    pub(super) fn read(r: &mut Reader<'_>) -> Result<Statement, DecodeError> {
        Ok(match r.u8()? {
            TAG_REQUEST => Statement::Request(TrustRequest {
                requester: r.key()?,
                target: r.key()?,
                issued_ms: r.u64()?,
                nonce: r.u64()?,
                justification: read_text(r)?,
                signature: r.array()?,
            }),
            TAG_RECORD => Statement::Record(TrustRecord {
                low: r.key()?,
                high: r.key()?,
                issued_ms: r.u64()?,
                low_signature: r.array()?,
                high_signature: r.array()?,
            }),
            TAG_REVOCATION => Statement::Revocation(Revocation {
                by: r.key()?,
                other: r.key()?,
                issued_ms: r.u64()?,
                reason: read_text(r)?,
                signature: r.array()?,
            }),
            _ => return Err(DecodeError::BadValue),
        })
    }
}

fn read_text(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let len = usize::from(r.u16()?);
    if len > MAX_JUSTIFICATION {
        return Err(DecodeError::TooMany);
    }
    let bytes = r.take(len)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::BadValue)
}

/// What is known about one pair: its newest verified statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairState {
    Trusted(TrustRecord),
    Revoked(Revocation),
}

impl PairState {
    /// When the statement that decides the pair was signed.
    pub fn issued_ms(&self) -> u64 {
        match self {
            PairState::Trusted(r) => r.issued_ms,
            PairState::Revoked(v) => v.issued_ms,
        }
    }

    /// The deciding statement itself, as it travels.
    pub fn to_statement(&self) -> Statement {
        match self {
            PairState::Trusted(r) => Statement::Record(r.clone()),
            PairState::Revoked(v) => Statement::Revocation(v.clone()),
        }
    }
}

/// The verified trust statements a node (or the rendezvous) holds, one per pair. Only
/// statements that verify are admitted, so nothing in here was made up by whoever delivered
/// it; the newest statement for a pair wins, and a revocation wins a tie with a record.
#[derive(Debug, Default, Clone)]
pub struct TrustLedger {
    pairs: BTreeMap<(NodeKey, NodeKey), PairState>,
    /// (high, low) for every pair: with `pairs` (keyed (low, high)) a node's pairs are two
    /// range reads, not a scan (the rendezvous holds everyone's).
    by_high: BTreeSet<(NodeKey, NodeKey)>,
}

impl TrustLedger {
    pub fn new() -> TrustLedger {
        TrustLedger::default()
    }

    /// Pairs with a statement (a record or a revocation).
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Admits a record if it verifies and is newer than what is known for the pair. Returns
    /// whether it changed the pair's state.
    pub fn admit_record(&mut self, record: TrustRecord, now_ms: u64) -> Result<bool, TrustError> {
        record.verify(now_ms)?;
        let pair = (record.low, record.high);
        let newer = match self.pairs.get(&pair) {
            None => true,
            Some(known) => record.issued_ms > known.issued_ms(),
        };
        if newer {
            self.insert(pair, PairState::Trusted(record));
        }
        Ok(newer)
    }

    /// Admits a revocation if it verifies and is not older than what is known for the pair.
    pub fn admit_revocation(
        &mut self,
        revocation: Revocation,
        now_ms: u64,
    ) -> Result<bool, TrustError> {
        revocation.verify(now_ms)?;
        let pair = ordered(revocation.by, revocation.other);
        let wins = match self.pairs.get(&pair) {
            None => true,
            Some(PairState::Trusted(r)) => revocation.issued_ms >= r.issued_ms,
            Some(PairState::Revoked(v)) => revocation.issued_ms > v.issued_ms,
        };
        if wins {
            self.insert(pair, PairState::Revoked(revocation));
        }
        Ok(wins)
    }

    /// Admits a record or a revocation (see [`TrustLedger::admit_record`] and
    /// [`TrustLedger::admit_revocation`]); a request is no ledger statement and changes nothing.
    pub fn admit(&mut self, statement: Statement, now_ms: u64) -> Result<bool, TrustError> {
        match statement {
            Statement::Record(r) => self.admit_record(r, now_ms),
            Statement::Revocation(v) => self.admit_revocation(v, now_ms),
            Statement::Request(_) => Ok(false),
        }
    }

    /// Whether `a` and `b` trust each other now.
    pub fn trusted(&self, a: &NodeKey, b: &NodeKey) -> bool {
        matches!(
            self.pairs.get(&ordered(*a, *b)),
            Some(PairState::Trusted(_))
        )
    }

    pub fn state(&self, a: &NodeKey, b: &NodeKey) -> Option<&PairState> {
        self.pairs.get(&ordered(*a, *b))
    }

    fn insert(&mut self, (low, high): (NodeKey, NodeKey), state: PairState) {
        self.by_high.insert((high, low));
        self.pairs.insert((low, high), state);
    }

    /// Every pair `key` is part of, with its state, in the other party's key order: those
    /// where it is the higher key (the others are lower), then the lower.
    pub fn pairs_of<'a>(
        &'a self,
        key: &'a NodeKey,
    ) -> impl Iterator<Item = (NodeKey, &'a PairState)> + 'a {
        let range = (*key, NodeKey([0; 32]))..=(*key, NodeKey([0xff; 32]));
        let lower = (self.by_high.range(range.clone()))
            .filter_map(move |&(high, low)| Some((low, self.pairs.get(&(low, high))?)));
        let higher = (self.pairs.range(range)).map(|(&(_, high), state)| (high, state));
        lower.chain(higher)
    }

    /// A digest of `key`'s pairs (who, what, as of when), for two holders of a node's ledger
    /// — the node and the rendezvous — to tell cheaply whether they agree.
    pub fn digest_of(&self, key: &NodeKey) -> u64 {
        let mut hash = Sha256::new();
        hash.update(b"pilot/v1/ledger-digest");
        for (other, state) in self.pairs_of(key) {
            hash.update(other.0);
            hash.update(state.issued_ms().to_be_bytes());
            hash.update([match state {
                PairState::Trusted(_) => 1,
                PairState::Revoked(_) => 2,
            }]);
        }
        let digest = hash.finalize();
        u64::from_be_bytes(digest[..8].try_into().unwrap_or_default())
    }
}

fn ordered(a: NodeKey, b: NodeKey) -> (NodeKey, NodeKey) {
    if a < b {
        (a, b)
    } else {
        (b, a)
    }
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn check_time(issued_ms: u64, now_ms: u64) -> Result<(), TrustError> {
    if issued_ms > now_ms.saturating_add(MAX_FUTURE_MS) {
        return Err(TrustError::FromTheFuture);
    }
    Ok(())
}

fn verify(key: &NodeKey, bytes: &[u8], signature: &[u8; 64]) -> Result<(), TrustError> {
    let key = VerifyingKey::from_bytes(&key.0).map_err(|_| TrustError::BadKey)?;
    key.verify(bytes, &Signature::from_bytes(signature))
        .map_err(|_| TrustError::BadSignature)
}

#[cfg(test)]
mod tests;
