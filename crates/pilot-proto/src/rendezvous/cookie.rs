//! Address cookies: the stateless proof that a node receives at the endpoint it sends from.
//!
//! A cookie is a MAC, under a secret only this rendezvous knows, of the sender's key, its
//! endpoint and the current two-minute epoch. The rendezvous keeps nothing per cookie: it
//! recomputes the MAC when the cookie comes back, accepting the current and the previous
//! epoch (so a cookie lives two to four minutes). Someone who spoofs another's address never
//! sees the cookie sent there, so cannot make the rendezvous believe that address.

use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::identity::{Identity, NodeKey};
use crate::wire::control::COOKIE_LEN;

/// How long one cookie secret epoch lasts.
const EPOCH_MS: u64 = 120_000;

pub(super) struct AddressCookies {
    secret: [u8; 32],
}

impl AddressCookies {
    /// The secret is derived from the rendezvous' identity (domain-separated), so cookies
    /// handed out before a restart still verify after it.
    pub fn new(identity: &Identity) -> AddressCookies {
        let mut hash = Sha256::new();
        hash.update(b"pilot/v1/address-cookie");
        hash.update(identity.signing_key().to_bytes());
        AddressCookies {
            secret: hash.finalize().into(),
        }
    }

    /// The cookie for `sender` at `from`, now.
    pub fn issue(&self, sender: &NodeKey, from: SocketAddr, now_ms: u64) -> [u8; COOKIE_LEN] {
        let full = self
            .mac(sender, from, now_ms / EPOCH_MS)
            .finalize()
            .into_bytes();
        let mut cookie = [0u8; COOKIE_LEN];
        cookie.copy_from_slice(&full[..COOKIE_LEN]);
        cookie
    }

    /// Whether `cookie` is this rendezvous' cookie for `sender` at `from`, of this epoch or
    /// the previous one (compared in constant time, by the MAC's own check).
    pub fn verify(
        &self,
        sender: &NodeKey,
        from: SocketAddr,
        cookie: &[u8; COOKIE_LEN],
        now_ms: u64,
    ) -> bool {
        let epoch = now_ms / EPOCH_MS;
        [epoch, epoch.saturating_sub(1)].iter().any(|&e| {
            self.mac(sender, from, e)
                .verify_truncated_left(cookie)
                .is_ok()
        })
    }

    /// The MAC over the epoch, the key and the endpoint (IPv4 as mapped IPv6), not finished.
    fn mac(&self, sender: &NodeKey, from: SocketAddr, epoch: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(&epoch.to_be_bytes());
        mac.update(&sender.0);
        match from {
            SocketAddr::V4(v4) => mac.update(&v4.ip().to_ipv6_mapped().octets()),
            SocketAddr::V6(v6) => mac.update(&v6.ip().octets()),
        }
        mac.update(&from.port().to_be_bytes());
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_bound_to_key_address_and_time() {
        let cookies = AddressCookies::new(&Identity::from_secret_bytes(&[9; 32]));
        let (a, b) = (NodeKey([1; 32]), NodeKey([2; 32]));
        let here: SocketAddr = "198.51.100.1:40001".parse().unwrap();
        let there: SocketAddr = "198.51.100.1:40002".parse().unwrap();
        let t = 1_800_000_000_000;
        let c = cookies.issue(&a, here, t);
        assert!(cookies.verify(&a, here, &c, t));
        assert!(
            cookies.verify(&a, here, &c, t + EPOCH_MS),
            "the next epoch still takes it"
        );
        assert!(!cookies.verify(&a, here, &c, t + 2 * EPOCH_MS + EPOCH_MS));
        assert!(!cookies.verify(&b, here, &c, t), "another key");
        assert!(!cookies.verify(&a, there, &c, t), "another port");
        let other = AddressCookies::new(&Identity::from_secret_bytes(&[8; 32]));
        assert!(!other.verify(&a, here, &c, t), "another rendezvous");
        // The same rendezvous identity after a restart takes its own cookies.
        let again = AddressCookies::new(&Identity::from_secret_bytes(&[9; 32]));
        assert!(again.verify(&a, here, &c, t));
    }
}
