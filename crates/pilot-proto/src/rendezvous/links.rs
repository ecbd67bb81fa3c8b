//! Relay frames forwarded between rendezvous servers sharing a store (see `cluster`): a node
//! relays to its own server as always, and when the destination is registered at another
//! server, this one forwards the frame there:
//!
//! `[FORWARD][sender server key, first 8 bytes][counter u64 BE][source key][destination key]`
//! `[WireGuard datagram][tag, 16 bytes]`
//!
//! The tag is HMAC-SHA256 (truncated) under a key only the two servers can compute: X25519 of
//! their Ed25519 identities (the same key pair for signatures and Diffie-Hellman, shown safe by
//! Thormarker, "On using the same key pair for Ed25519 and an X25519 based KEM", 2021),
//! expanded with both keys and both incarnations, one key per direction. A restart of either
//! side is a new incarnation, so new keys, and counters start again from zero without any
//! earlier frame replaying. The receiver drops frames whose tag fails, whose counter it has
//! seen (a sliding window) or that come from no server in the heartbeats. The payload is
//! WireGuard, encrypted end to end already: the link adds integrity and replay protection,
//! so that nobody who can reach a server's port can make it relay on another's word.
//!
//! No allocation per frame: keys are computed once per pair of incarnations, the tag on the
//! stack.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::identity::{Identity, NodeKey};

/// The first byte of a forwarded relay frame.
pub const FORWARD: u8 = 0x66;
/// How many bytes of the sender's key identify it.
const SENDER_ID: usize = 8;
/// Bytes of the truncated tag.
const TAG: usize = 16;
/// Bytes before the datagram.
pub const HEADER: usize = 1 + SENDER_ID + 8 + 32 + 32;
/// Bytes a forwarded frame adds to the datagram.
pub const OVERHEAD: usize = HEADER + TAG;
/// The largest forwarded frame taken: a node's relayed datagram (at most a WireGuard packet of
/// the largest MTU a node uses) and this overhead, with room to spare. Anything larger is
/// dropped before its tag is computed.
pub const MAX_FRAME: usize = 4096;
/// Counters this far behind the highest seen are still taken once (frames reorder a little).
const WINDOW: u64 = 128;

/// The keys and counters of the link with one other server, for one incarnation of each.
#[derive(Debug)]
pub(super) struct Link {
    /// Whose incarnations the keys are for: (ours, theirs).
    pub incarnations: (u64, u64),
    send: [u8; 32],
    receive: [u8; 32],
    next: u64,
    /// The highest counter received, and which of the `WINDOW` before it were.
    highest: Option<u64>,
    seen: u128,
}

impl Link {
    /// The link between `me` (incarnation `mine`) and the server `peer` (incarnation
    /// `theirs`); `None` if `peer` is no valid key (the Diffie-Hellman result is zero).
    pub fn new(me: &Identity, mine: u64, peer: &NodeKey, theirs: u64) -> Option<Link> {
        let verifying = ed25519_dalek::VerifyingKey::from_bytes(&peer.0).ok()?;
        let shared = verifying
            .to_montgomery()
            .mul_clamped(me.signing_key().to_scalar_bytes())
            .to_bytes();
        if shared == [0; 32] {
            return None;
        }
        let me_key = me.public_key();
        let derive = |from: &NodeKey, from_inc: u64, to: &NodeKey, to_inc: u64| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&shared).expect("any key length");
            mac.update(b"pilot rendezvous link v1");
            mac.update(&from.0);
            mac.update(&from_inc.to_be_bytes());
            mac.update(&to.0);
            mac.update(&to_inc.to_be_bytes());
            let key: [u8; 32] = mac.finalize().into_bytes().into();
            key
        };
        Some(Link {
            incarnations: (mine, theirs),
            send: derive(&me_key, mine, peer, theirs),
            receive: derive(peer, theirs, &me_key, mine),
            next: 0,
            highest: None,
            seen: 0,
        })
    }

    /// Writes the forwarded frame for `datagram` from `src` to `dst` into `out`; its length, or
    /// `None` if it does not fit.
    pub fn seal(
        &mut self,
        me: &NodeKey,
        src: &NodeKey,
        dst: &NodeKey,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Option<usize> {
        let len = OVERHEAD + datagram.len();
        let frame = out.get_mut(..len)?;
        frame[0] = FORWARD;
        frame[1..1 + SENDER_ID].copy_from_slice(&me.0[..SENDER_ID]);
        frame[1 + SENDER_ID..9 + SENDER_ID].copy_from_slice(&self.next.to_be_bytes());
        frame[9 + SENDER_ID..41 + SENDER_ID].copy_from_slice(&src.0);
        frame[41 + SENDER_ID..HEADER].copy_from_slice(&dst.0);
        frame[HEADER..HEADER + datagram.len()].copy_from_slice(datagram);
        let tag = tag(&self.send, &frame[..HEADER + datagram.len()]);
        frame[HEADER + datagram.len()..].copy_from_slice(&tag);
        self.next += 1;
        Some(len)
    }

    /// Checks a forwarded frame from this link's server: its tag, and that its counter is new.
    /// Returns the source, the destination and the datagram.
    pub fn open<'a>(&mut self, frame: &'a [u8]) -> Option<(NodeKey, NodeKey, &'a [u8])> {
        let body_len = frame.len().checked_sub(TAG).filter(|n| *n >= HEADER)?;
        let (body, got) = frame.split_at(body_len);
        let want = tag(&self.receive, body);
        // Constant time: no timing tells a forger how much of its tag was right.
        let diff = want.iter().zip(got).fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff != 0 {
            return None;
        }
        let counter = u64::from_be_bytes(body[1 + SENDER_ID..9 + SENDER_ID].try_into().ok()?);
        if !self.admit(counter) {
            return None;
        }
        let src = NodeKey(body[9 + SENDER_ID..41 + SENDER_ID].try_into().ok()?);
        let dst = NodeKey(body[41 + SENDER_ID..HEADER].try_into().ok()?);
        Some((src, dst, &body[HEADER..]))
    }

    /// Whether `counter` is new (then it is marked seen).
    fn admit(&mut self, counter: u64) -> bool {
        let Some(highest) = self.highest else {
            self.highest = Some(counter);
            self.seen = 1;
            return true;
        };
        if counter > highest {
            let shift = counter - highest;
            self.seen = if shift >= WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = Some(counter);
            return true;
        }
        let behind = highest - counter;
        if behind >= WINDOW || self.seen & (1 << behind) != 0 {
            return false;
        }
        self.seen |= 1 << behind;
        true
    }
}

/// The sender id of a forwarded frame (the first bytes of its server's key).
pub(super) fn sender_id(frame: &[u8]) -> Option<&[u8]> {
    frame.get(1..1 + SENDER_ID)
}

/// Whether `key` is the server a frame's sender id names.
pub(super) fn is_sender(key: &NodeKey, id: &[u8]) -> bool {
    key.0[..SENDER_ID] == *id
}

fn tag(key: &[u8; 32], body: &[u8]) -> [u8; TAG] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(body);
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; TAG];
    out.copy_from_slice(&full[..TAG]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(n: u8) -> Identity {
        Identity::from_secret_bytes(&[n; 32])
    }

    fn pair() -> (Link, Link) {
        let (one, two) = (server(1), server(2));
        let a = Link::new(&one, 10, &two.public_key(), 20).unwrap();
        let b = Link::new(&two, 20, &one.public_key(), 10).unwrap();
        (a, b)
    }

    #[test]
    fn a_frame_opens_once_at_the_other_end_only() {
        let (mut one, mut two) = pair();
        let me = server(1).public_key();
        let (src, dst) = (NodeKey([5; 32]), NodeKey([6; 32]));
        let mut out = [0u8; 256];
        let n = one.seal(&me, &src, &dst, b"wireguard", &mut out).unwrap();
        assert_eq!(n, OVERHEAD + 9);
        assert!(is_sender(&me, sender_id(&out[..n]).unwrap()));
        let frame = out[..n].to_vec();
        assert_eq!(two.open(&frame), Some((src, dst, &b"wireguard"[..])));
        assert_eq!(two.open(&frame), None, "a replay");
        // Its own end cannot open it (keys differ by direction), nor can a third server's.
        let mut again = pair().0;
        assert_eq!(again.open(&frame), None);
        let third = Link::new(&server(3), 30, &server(1).public_key(), 10).unwrap();
        let mut third = third;
        assert_eq!(third.open(&frame), None);
        // Any altered byte fails the tag; a truncated frame is refused.
        for i in 0..frame.len() {
            let (_, mut fresh) = pair();
            let mut bad = frame.clone();
            bad[i] ^= 1;
            assert_eq!(fresh.open(&bad), None, "byte {i}");
        }
        assert_eq!(two.open(&frame[..OVERHEAD - 1]), None);
    }

    #[test]
    fn a_new_incarnation_is_a_new_key() {
        let (mut one, _) = pair();
        let me = server(1).public_key();
        let mut out = [0u8; 128];
        let n = one.seal(&me, &me, &me, b"x", &mut out).unwrap();
        // Two restarted: its link with one is keyed for its new incarnation.
        let mut restarted = Link::new(&server(2), 21, &me, 10).unwrap();
        assert_eq!(restarted.open(&out[..n]), None);
    }

    #[test]
    fn counters_are_taken_once_within_the_window_in_any_order() {
        let (_, mut link) = pair();
        for c in [5, 3, 4, 200, 199, 73] {
            assert!(link.admit(c), "{c}");
        }
        for c in [5, 200, 199, 73, 72] {
            assert!(!link.admit(c), "{c} is a replay or too old");
        }
        assert!(link.admit(198));
        assert!(!link.admit(198));
        assert!(link.admit(u64::MAX));
        assert!(!link.admit(200), "far behind now");
    }
}
