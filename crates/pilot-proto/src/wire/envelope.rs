//! The signed envelope every Pilot control message travels in, and the replay guard that
//! goes with it.
//!
//! ```text
//! 0       type        u8   (>= wire::PILOT_FIRST)
//! 1       version     u8   (1)
//! 2..34   sender      Ed25519 public key
//! 34..42  timestamp   u64 BE, milliseconds since the UNIX epoch
//! 42..50  nonce       u64 BE, random
//! 50..n   body        type-specific
//! n..n+64 signature   Ed25519 over "pilot/v1/control" || bytes 0..n
//! ```
//!
//! A receiver accepts a message only if the signature verifies, the timestamp is within
//! [`MAX_SKEW`] of its own clock, and the (sender, nonce) pair has not been seen inside that
//! window. A captured message therefore cannot be replayed, and nobody can speak for a key
//! they do not hold.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::identity::NodeKey;
use crate::wire::PILOT_FIRST;

pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 50;
pub const SIGNATURE_LEN: usize = 64;
/// Bytes an envelope adds around its body.
pub const OVERHEAD: usize = HEADER_LEN + SIGNATURE_LEN;
/// How far a message's timestamp may be from the receiver's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(30);
const DOMAIN: &[u8] = b"pilot/v1/control";

/// A verified message: who sent it, when, and its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened<'a> {
    pub kind: u8,
    pub sender: NodeKey,
    pub timestamp_ms: u64,
    pub nonce: u64,
    pub body: &'a [u8],
}

/// Why an envelope was refused. Each is counted by the receiver; none changes its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("datagram too short for a control message")]
    Truncated,
    #[error("not a control message type")]
    NotControl,
    #[error("unsupported control message version {0}")]
    Version(u8),
    #[error("sender key is not a valid Ed25519 key")]
    BadKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("timestamp outside the accepted window")]
    Stale,
    #[error("message already seen (replay)")]
    Replay,
    #[error("too many senders to remember for replay protection")]
    Busy,
    #[error("output buffer too small")]
    BufferTooSmall,
}

/// Writes `kind` + `body` as a signed envelope into `out`; returns its length.
pub fn seal(
    out: &mut [u8],
    kind: u8,
    key: &SigningKey,
    timestamp_ms: u64,
    nonce: u64,
    body: &[u8],
) -> Result<usize, EnvelopeError> {
    let signed_len = HEADER_LEN + body.len();
    let total = signed_len + SIGNATURE_LEN;
    if kind < PILOT_FIRST {
        return Err(EnvelopeError::NotControl);
    }
    let out = out.get_mut(..total).ok_or(EnvelopeError::BufferTooSmall)?;
    out[0] = kind;
    out[1] = VERSION;
    out[2..34].copy_from_slice(key.verifying_key().as_bytes());
    out[34..42].copy_from_slice(&timestamp_ms.to_be_bytes());
    out[42..50].copy_from_slice(&nonce.to_be_bytes());
    out[HEADER_LEN..signed_len].copy_from_slice(body);
    let signature = key.sign(&signing_input(&out[..signed_len]));
    out[signed_len..].copy_from_slice(&signature.to_bytes());
    Ok(total)
}

/// Checks an envelope's form and signature (not its freshness: see [`ReplayGuard`]).
pub fn open(datagram: &[u8]) -> Result<Opened<'_>, EnvelopeError> {
    if datagram.len() < OVERHEAD {
        return Err(EnvelopeError::Truncated);
    }
    let kind = datagram[0];
    if kind < PILOT_FIRST {
        return Err(EnvelopeError::NotControl);
    }
    if datagram[1] != VERSION {
        return Err(EnvelopeError::Version(datagram[1]));
    }
    let (signed, signature) = datagram.split_at(datagram.len() - SIGNATURE_LEN);
    let sender: [u8; 32] = signed[2..34]
        .try_into()
        .map_err(|_| EnvelopeError::Truncated)?;
    let verifying = VerifyingKey::from_bytes(&sender).map_err(|_| EnvelopeError::BadKey)?;
    let signature = Signature::from_slice(signature).map_err(|_| EnvelopeError::BadSignature)?;
    verifying
        .verify(&signing_input(signed), &signature)
        .map_err(|_| EnvelopeError::BadSignature)?;
    let u64_at = |at: usize| {
        signed[at..at + 8]
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| EnvelopeError::Truncated)
    };
    Ok(Opened {
        kind,
        sender: NodeKey(sender),
        timestamp_ms: u64_at(34)?,
        nonce: u64_at(42)?,
        body: &signed[HEADER_LEN..],
    })
}

/// The bytes actually signed: a domain tag, then the message, so a signature made for a
/// control message can never be passed off as one for anything else the key signs.
fn signing_input(signed: &[u8]) -> Vec<u8> {
    // Control messages are rare (registrations, punches, keepalives): one small allocation
    // per message is not on the packet path.
    let mut input = Vec::with_capacity(DOMAIN.len() + signed.len());
    input.extend_from_slice(DOMAIN);
    input.extend_from_slice(signed);
    input
}

/// Envelope nonces from a seed (SplitMix64): they only need to be unique per sender within the
/// replay window, and a seeded generator keeps simulations reproducible.
#[derive(Debug, Clone)]
pub struct NonceSource(u64);

impl NonceSource {
    pub fn new(seed: u64) -> NonceSource {
        NonceSource(seed)
    }

    pub fn next_nonce(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Messages remembered per sender inside the freshness window. A sender that sends more
/// within the window (±[`MAX_SKEW`]) has its oldest forgotten and its own older messages
/// refused from then on; no other sender is affected.
pub const PER_SENDER: usize = 64;

/// Replay protection, kept per sender: the messages each sender sent inside the freshness
/// window, and a floor below which that sender's messages are refused. One sender's traffic —
/// a flood from a throwaway key dated into the future, a million honest refreshes — never
/// makes another sender's messages stale or replayed.
///
/// The caller decides who gets state: only senders it serves (a registered node, the
/// rendezvous, a trusted peer), after the signature verified. Everyone else is checked with
/// [`check_fresh`] alone and answered without state, so strangers cannot fill the guard.
/// At most `max_senders` senders are remembered; when full, senders whose window has passed
/// are forgotten, and if none has, a new sender is refused as [`EnvelopeError::Busy`] (the
/// ones already remembered are never evicted, which could reopen their replays).
pub struct ReplayGuard {
    window_ms: u64,
    max_senders: usize,
    senders: BTreeMap<NodeKey, SenderWindow>,
}

#[derive(Debug, Default)]
struct SenderWindow {
    /// This sender's messages at or before this timestamp are refused (raised when its
    /// window overflows [`PER_SENDER`]).
    floor_ms: u64,
    /// (timestamp, nonce) of the messages seen inside the window, oldest first.
    seen: VecDeque<(u64, u64)>,
}

impl SenderWindow {
    /// Forgets what can no longer pass the freshness check anyway.
    fn expire(&mut self, oldest_acceptable: u64) {
        while self
            .seen
            .front()
            .is_some_and(|&(ts, _)| ts < oldest_acceptable)
        {
            self.seen.pop_front();
        }
    }

    /// Whether nothing here matters any more: every message it could refuse is stale anyway.
    fn is_spent(&self, oldest_acceptable: u64) -> bool {
        self.seen.is_empty() && self.floor_ms < oldest_acceptable
    }
}

/// The stateless half of the check: the timestamp is within [`MAX_SKEW`] of `now_ms`.
pub fn check_fresh(message: &Opened<'_>, now_ms: u64) -> Result<(), EnvelopeError> {
    if message.timestamp_ms.abs_diff(now_ms) > MAX_SKEW.as_millis() as u64 {
        return Err(EnvelopeError::Stale);
    }
    Ok(())
}

impl ReplayGuard {
    pub fn new(max_senders: usize) -> ReplayGuard {
        ReplayGuard {
            window_ms: MAX_SKEW.as_millis() as u64,
            max_senders: max_senders.max(1),
            senders: BTreeMap::new(),
        }
    }

    /// Accepts `message` at local time `now_ms` (ms since the UNIX epoch) if it is fresh and
    /// new for its sender, and remembers it.
    pub fn check(&mut self, message: &Opened<'_>, now_ms: u64) -> Result<(), EnvelopeError> {
        let oldest_acceptable = now_ms.saturating_sub(self.window_ms);
        if let Some(window) = self.senders.get_mut(&message.sender) {
            window.expire(oldest_acceptable);
        }
        check_fresh(message, now_ms)?;
        if !self.senders.contains_key(&message.sender) && self.senders.len() >= self.max_senders {
            self.senders.retain(|_, w| {
                w.expire(oldest_acceptable);
                !w.is_spent(oldest_acceptable)
            });
            if self.senders.len() >= self.max_senders {
                return Err(EnvelopeError::Busy);
            }
        }
        let window = self.senders.entry(message.sender).or_default();
        window.expire(oldest_acceptable);
        let (ts, nonce) = (message.timestamp_ms, message.nonce);
        if ts <= window.floor_ms {
            return Err(EnvelopeError::Stale);
        }
        if window.seen.iter().any(|&(_, n)| n == nonce) {
            return Err(EnvelopeError::Replay);
        }
        if window.seen.len() >= PER_SENDER {
            if let Some((oldest, _)) = window.seen.pop_front() {
                window.floor_ms = window.floor_ms.max(oldest);
            }
            if ts <= window.floor_ms {
                return Err(EnvelopeError::Stale);
            }
        }
        let pos = window.seen.partition_point(|&(t, _)| t <= ts);
        window.seen.insert(pos, (ts, nonce));
        Ok(())
    }

    /// Messages remembered, over all senders.
    pub fn len(&self) -> usize {
        self.senders.values().map(|w| w.seen.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Senders with state.
    pub fn senders(&self) -> usize {
        self.senders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: u8 = PILOT_FIRST + 1;
    const NOW: u64 = 1_800_000_000_000;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn sealed(k: &SigningKey, ts: u64, nonce: u64, body: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 1500];
        let n = seal(&mut buf, KIND, k, ts, nonce, body).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn sealed_message_opens_with_its_sender_and_body() {
        let k = key(1);
        let msg = sealed(&k, NOW, 42, b"register me");
        assert_eq!(msg.len(), OVERHEAD + 11);
        let opened = open(&msg).unwrap();
        assert_eq!(opened.kind, KIND);
        assert_eq!(opened.sender, NodeKey(k.verifying_key().to_bytes()));
        assert_eq!((opened.timestamp_ms, opened.nonce), (NOW, 42));
        assert_eq!(opened.body, b"register me");
    }

    #[test]
    fn any_altered_byte_is_refused() {
        let msg = sealed(&key(1), NOW, 7, b"body");
        for i in 0..msg.len() {
            let mut bad = msg.clone();
            bad[i] ^= 0x01;
            assert!(open(&bad).is_err(), "flipping byte {i} went unnoticed");
        }
        // A valid signature by another key over the same claimed sender fails too.
        let mut forged = sealed(&key(2), NOW, 7, b"body");
        forged[2..34].copy_from_slice(&msg[2..34]);
        assert_eq!(open(&forged), Err(EnvelopeError::BadSignature));
    }

    #[test]
    fn short_and_foreign_input_is_refused_without_panic() {
        assert_eq!(open(&[]), Err(EnvelopeError::Truncated));
        assert_eq!(open(&[KIND; OVERHEAD - 1]), Err(EnvelopeError::Truncated));
        let mut msg = sealed(&key(1), NOW, 1, b"");
        msg[1] = 9;
        assert_eq!(open(&msg), Err(EnvelopeError::Version(9)));
        msg[0] = 4;
        assert_eq!(open(&msg), Err(EnvelopeError::NotControl));
        let mut x = 0x1234_5678_u32;
        for len in 0..300 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = open(&junk);
        }
        assert_eq!(
            seal(&mut [0u8; 10], KIND, &key(1), NOW, 1, b""),
            Err(EnvelopeError::BufferTooSmall)
        );
    }

    #[test]
    fn replays_and_stale_messages_are_refused() {
        let k = key(3);
        let mut guard = ReplayGuard::new(1000);
        let fresh = sealed(&k, NOW, 1, b"x");
        let m = open(&fresh).unwrap();
        assert_eq!(guard.check(&m, NOW + 100), Ok(()));
        assert_eq!(guard.check(&m, NOW + 200), Err(EnvelopeError::Replay));
        // Same nonce from another sender is a different message.
        let other = sealed(&key(4), NOW, 1, b"x");
        assert_eq!(guard.check(&open(&other).unwrap(), NOW), Ok(()));
        let skew = MAX_SKEW.as_millis() as u64;
        let old = sealed(&k, NOW - skew - 1, 2, b"x");
        assert_eq!(
            guard.check(&open(&old).unwrap(), NOW),
            Err(EnvelopeError::Stale)
        );
        let future = sealed(&k, NOW + skew + 1, 3, b"x");
        assert_eq!(
            guard.check(&open(&future).unwrap(), NOW),
            Err(EnvelopeError::Stale)
        );
        // Once the window has passed, the original cannot come back either: it is stale.
        assert_eq!(guard.check(&m, NOW + skew + 101), Err(EnvelopeError::Stale));
        // Its sender's expired entries are forgotten (key 4's wait for its next message).
        assert_eq!(guard.len(), 1);
    }

    #[test]
    fn a_full_window_never_reopens_a_replay() {
        let k = key(5);
        let mut guard = ReplayGuard::new(10);
        let n = PER_SENDER as u64 + 6;
        let msgs: Vec<Vec<u8>> = (0..n).map(|i| sealed(&k, NOW + i, i, b"")).collect();
        for m in &msgs {
            assert_eq!(guard.check(&open(m).unwrap(), NOW + 10), Ok(()));
        }
        assert_eq!(guard.len(), PER_SENDER);
        for m in &msgs {
            assert!(guard.check(&open(m).unwrap(), NOW + 10).is_err());
        }
    }

    #[test]
    fn a_flood_from_other_keys_dated_into_the_future_never_refuses_an_honest_sender() {
        // The audit's attack: junk signed by throwaway keys, dated now + 29 s, used to raise
        // one shared floor past the honest node's messages. State is per sender now.
        let mut guard = ReplayGuard::new(100_000);
        let skew = MAX_SKEW.as_millis() as u64;
        for i in 0..2_000u64 {
            let junk = sealed(&key((i % 200) as u8 + 10), NOW + skew - 1_000, i, b"");
            let _ = guard.check(&open(&junk).unwrap(), NOW);
        }
        let honest = sealed(&key(1), NOW, 7, b"register");
        assert_eq!(guard.check(&open(&honest).unwrap(), NOW), Ok(()));
        assert_eq!(
            guard.check(&open(&honest).unwrap(), NOW),
            Err(EnvelopeError::Replay)
        );
    }

    #[test]
    fn a_full_guard_refuses_new_senders_until_old_windows_pass_and_keeps_the_ones_it_has() {
        let mut guard = ReplayGuard::new(2);
        let a = sealed(&key(1), NOW, 1, b"");
        let b = sealed(&key(2), NOW, 1, b"");
        let c = sealed(&key(3), NOW, 1, b"");
        assert_eq!(guard.check(&open(&a).unwrap(), NOW), Ok(()));
        assert_eq!(guard.check(&open(&b).unwrap(), NOW), Ok(()));
        assert_eq!(
            guard.check(&open(&c).unwrap(), NOW),
            Err(EnvelopeError::Busy)
        );
        // The remembered senders keep their state: their replays stay refused.
        assert_eq!(
            guard.check(&open(&a).unwrap(), NOW),
            Err(EnvelopeError::Replay)
        );
        // Once their window has passed, they are forgotten and a new sender fits.
        let later = NOW + MAX_SKEW.as_millis() as u64 + 1;
        let c = sealed(&key(3), later, 2, b"");
        assert_eq!(guard.check(&open(&c).unwrap(), later), Ok(()));
        assert_eq!(guard.senders(), 1);
    }

    #[test]
    fn freshness_alone_is_checked_without_state() {
        let m = sealed(&key(1), NOW, 1, b"");
        assert_eq!(check_fresh(&open(&m).unwrap(), NOW + 1_000), Ok(()));
        let late = NOW + MAX_SKEW.as_millis() as u64 + 1;
        assert_eq!(
            check_fresh(&open(&m).unwrap(), late),
            Err(EnvelopeError::Stale)
        );
    }
}
