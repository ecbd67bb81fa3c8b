//! The harness's own signing and checking, memoised. The structure-aware targets run
//! deterministically (seeded randomness, simulated time), so inputs a fuzzer derives from
//! one another replay the same prefix: the same envelopes sealed by the same parties, the
//! same datagrams out of the code under test. Ed25519 signing is deterministic and checking
//! a signature is a pure function of the bytes, so a cached result is the result. Only the
//! harness's work is cached: the code under test still signs and checks everything itself.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::thread::LocalKey;

use super::wire::fixed_identity;
use crate::wire::envelope::{self, open};

/// Entries per cache (envelopes of up to a few kB: some tens of MB at most). A full cache
/// is dropped rather than grown without bound.
const LIMIT: usize = 1 << 14;

/// Results by their exact arguments, one cache per thread (libFuzzer runs one).
pub(super) type Cache<K, V> = RefCell<HashMap<K, V>>;

/// What [`seal`] is given.
type SealArgs = (u8, u8, u64, u64, Vec<u8>);

/// What `envelope::seal` writes for `kind` and `body` signed by `fixed_identity(signer)`,
/// `None` where it refuses.
pub(super) fn seal(
    kind: u8,
    signer: u8,
    timestamp_ms: u64,
    nonce: u64,
    body: &[u8],
) -> Option<Vec<u8>> {
    thread_local! {
        static SEALED: Cache<SealArgs, Option<Vec<u8>>> = RefCell::new(HashMap::new());
    }
    let key = (kind, signer, timestamp_ms, nonce, body.to_vec());
    cached(&SEALED, key, || {
        let signing = fixed_identity(signer).signing_key();
        let mut out = vec![0; body.len() + envelope::OVERHEAD];
        let n = envelope::seal(&mut out, kind, signing, timestamp_ms, nonce, body).ok()?;
        out.truncate(n);
        Some(out)
    })
}

/// The nonce of `datagram` if it opens (form and signature), as `envelope::open` says.
pub(super) fn opened_nonce(datagram: &[u8]) -> Option<u64> {
    thread_local! {
        static OPENED: Cache<Vec<u8>, Option<u64>> = RefCell::new(HashMap::new());
    }
    cached(&OPENED, datagram.to_vec(), || {
        open(datagram).ok().map(|o| o.nonce)
    })
}

/// `make()`, or what it gave for `key` before.
pub(super) fn cached<K: Eq + Hash, V: Clone>(
    cache: &'static LocalKey<Cache<K, V>>,
    key: K,
    make: impl FnOnce() -> V,
) -> V {
    if let Some(v) = cache.with(|c| c.borrow().get(&key).cloned()) {
        return v;
    }
    let v = make();
    cache.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= LIMIT {
            c.clear();
        }
        c.insert(key, v.clone());
    });
    v
}
