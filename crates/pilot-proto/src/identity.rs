//! Node identity: one Ed25519 key pair, and its text as `identity.json` (the daemon keeps the
//! file: `pilot::identity`). The node's address is derived from it.

use std::fmt;
use std::str::FromStr;

use boringtun::x25519;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::addr::NodeAddr;

/// File name of the identity inside the state directory.
pub const IDENTITY_FILE: &str = "identity.json";

/// A node's Ed25519 public key: its permanent name. Text form: 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeKey(pub [u8; 32]);

/// A node's secret identity.
pub struct Identity {
    signing: SigningKey,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a public key: expected 64 hex digits as printed by `pilotctl info`")]
pub struct KeyParseError(pub String);

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    version: u32,
    public_key: String,
    secret_key: String,
}

impl Identity {
    /// A new random identity whose address is outside the reserved range.
    pub fn generate<R: rand_core::CryptoRngCore>(rng: &mut R) -> Identity {
        loop {
            let signing = SigningKey::generate(rng);
            let identity = Identity { signing };
            if !identity.address().is_reserved() {
                return identity;
            }
        }
    }

    pub fn from_secret_bytes(secret: &[u8; 32]) -> Identity {
        Identity {
            signing: SigningKey::from_bytes(secret),
        }
    }

    pub fn public_key(&self) -> NodeKey {
        NodeKey(self.signing.verifying_key().to_bytes())
    }

    pub fn address(&self) -> NodeAddr {
        NodeAddr::from_public_key(&self.public_key().0)
    }

    /// The Ed25519 key, for signing control messages.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// The WireGuard static secret: the X25519 form of the Ed25519 key.
    pub fn x25519_secret(&self) -> x25519::StaticSecret {
        x25519::StaticSecret::from(self.signing.to_scalar_bytes())
    }

    /// The identity an identity file's text holds, or why it is corrupt.
    pub fn parse_file(text: &str) -> Result<Identity, String> {
        let file: IdentityFile =
            serde_json::from_str(text).map_err(|e| format!("not valid identity JSON: {e}"))?;
        if file.version != 1 {
            return Err(format!("unknown version {}", file.version));
        }
        let secret = decode_hex32(&file.secret_key).ok_or("bad secret_key")?;
        let identity = Identity::from_secret_bytes(&secret);
        if identity.public_key().to_string() != file.public_key {
            return Err("public_key does not match secret_key".into());
        }
        Ok(identity)
    }

    /// The identity file's text (holding the secret key: the caller writes it 0600).
    pub fn to_file_text(&self) -> String {
        let file = IdentityFile {
            version: 1,
            public_key: self.public_key().to_string(),
            secret_key: crate::hex::encode(&self.signing.to_bytes()),
        };
        let mut text = serde_json::to_string_pretty(&file).expect("identity serializes");
        text.push('\n');
        text
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("Identity")
            .field("public_key", &self.public_key())
            .finish()
    }
}

impl NodeKey {
    pub fn address(&self) -> NodeAddr {
        NodeAddr::from_public_key(&self.0)
    }

    /// The WireGuard static public key: the X25519 (Montgomery) form of this Ed25519 key.
    /// `None` if the bytes are not a valid Ed25519 point.
    pub fn x25519_public(&self) -> Option<x25519::PublicKey> {
        let vk = VerifyingKey::from_bytes(&self.0).ok()?;
        Some(x25519::PublicKey::from(vk.to_montgomery().to_bytes()))
    }
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hex::encode(&self.0))
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", &crate::hex::encode(&self.0)[..16])
    }
}

impl FromStr for NodeKey {
    type Err = KeyParseError;
    fn from_str(s: &str) -> Result<NodeKey, KeyParseError> {
        let bytes = decode_hex32(s).ok_or_else(|| KeyParseError(s.into()))?;
        let key = NodeKey(bytes);
        key.x25519_public().ok_or_else(|| KeyParseError(s.into()))?;
        Ok(key)
    }
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    crate::hex::decode(s)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_has_no_secret() {
        let id = Identity::from_secret_bytes(&[0x42; 32]);
        let shown = format!("{id:?}");
        assert!(!shown.contains(&crate::hex::encode(&[0x42; 32])));
    }

    #[test]
    fn key_text_round_trips_and_x25519_forms_agree() {
        let a = Identity::generate(&mut rand_core::OsRng);
        let b = Identity::generate(&mut rand_core::OsRng);
        let key: NodeKey = a.public_key().to_string().parse().unwrap();
        assert_eq!(key, a.public_key());
        // Both sides derive the same Diffie-Hellman secret from the converted keys.
        let ab = a
            .x25519_secret()
            .diffie_hellman(&b.public_key().x25519_public().unwrap());
        let ba = b
            .x25519_secret()
            .diffie_hellman(&a.public_key().x25519_public().unwrap());
        assert_eq!(ab.as_bytes(), ba.as_bytes());
        assert!("abc".parse::<NodeKey>().is_err());
        assert!("zz".repeat(32).parse::<NodeKey>().is_err());
    }
}
