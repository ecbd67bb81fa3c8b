//! Virtual addresses: 48 bits derived from a node's public key, and their two text forms.
//!
//! The address is a domain-separated SHA-256 of the Ed25519 public key, so anyone holding the
//! key can check that an address belongs to it without asking a server. It is shown either as
//! `xxxx.xxxx.xxxx` (the node form) or as the IPv6 address `fd70::xxxx:xxxx:xxxx` inside
//! [`OVERLAY_PREFIX`]`/`[`OVERLAY_PREFIX_LEN`].

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// The overlay prefix: `fd70::/80`. The low 48 bits are the node address.
pub const OVERLAY_PREFIX: Ipv6Addr = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0, 0, 0);
/// Length of [`OVERLAY_PREFIX`] in bits.
pub const OVERLAY_PREFIX_LEN: u8 = 80;

const DOMAIN: &[u8] = b"pilot/v1/node-address";
const MASK_48: u64 = (1 << 48) - 1;

/// A 48-bit overlay address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeAddr(u64);

/// Why a string is not a node address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrParseError {
    #[error("`{0}` is not a Pilot address: expected xxxx.xxxx.xxxx (hex) or fd70::xxxx:xxxx:xxxx")]
    Malformed(String),
    #[error("`{0}` is an IPv6 address outside fd70::/80")]
    OutsidePrefix(String),
}

impl NodeAddr {
    /// The address a public key owns.
    pub fn from_public_key(public_key: &[u8; 32]) -> NodeAddr {
        let digest = Sha256::new()
            .chain_update(DOMAIN)
            .chain_update(public_key)
            .finalize();
        let mut bits = [0u8; 8];
        bits[2..].copy_from_slice(&digest[..6]);
        NodeAddr(u64::from_be_bytes(bits))
    }

    /// Builds an address from its low 48 bits; higher bits are ignored.
    pub const fn from_bits(bits: u64) -> NodeAddr {
        NodeAddr(bits & MASK_48)
    }

    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Addresses whose upper 32 of 48 bits are zero (`fd70::` to `fd70::ffff`) belong to services
    /// the daemon answers itself; no key may own one.
    pub const fn is_reserved(self) -> bool {
        self.0 >> 16 == 0
    }

    /// The IPv6 form, `fd70::xxxx:xxxx:xxxx`.
    pub fn to_ipv6(self) -> Ipv6Addr {
        let mut octets = OVERLAY_PREFIX.octets();
        octets[10..].copy_from_slice(&self.0.to_be_bytes()[2..]);
        Ipv6Addr::from(octets)
    }

    /// The node address of an IPv6 address inside `fd70::/80`, or `None` outside it.
    pub fn from_ipv6(ip: Ipv6Addr) -> Option<NodeAddr> {
        let octets = ip.octets();
        if octets[..10] != OVERLAY_PREFIX.octets()[..10] {
            return None;
        }
        Self::from_octets(&octets[10..])
    }

    /// The node address in the last six bytes of a raw IPv6 address field, if it is in the prefix.
    /// Used on the packet path, where the field comes straight from a header.
    #[inline]
    pub fn from_ipv6_octets(octets: &[u8; 16]) -> Option<NodeAddr> {
        if octets[..10] != OVERLAY_PREFIX.octets()[..10] {
            return None;
        }
        Self::from_octets(&octets[10..])
    }

    fn from_octets(six: &[u8]) -> Option<NodeAddr> {
        let mut bits = [0u8; 8];
        bits[2..].copy_from_slice(six.get(..6)?);
        Some(NodeAddr(u64::from_be_bytes(bits)))
    }
}

/// DNS zone the daemon answers for: `NAME.pilot`.
pub const NAME_ZONE: &str = "pilot";
/// Longest hostname (one DNS label).
pub const MAX_HOSTNAME: usize = 63;

/// A node's hostname: one DNS label of lowercase letters, digits and `-`, 1–63 characters, not
/// starting or ending with `-`. Unique at the rendezvous (the first key to claim it keeps it).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hostname(String);

/// Why a string is not a hostname.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a valid hostname: use 1-{MAX_HOSTNAME} lowercase letters, digits and `-` (not at either end)")]
pub struct HostnameError(pub String);

impl Hostname {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as typed by a user: a trailing `.pilot` (and a final `.`) is accepted and
    /// dropped, so `bob`, `bob.pilot` and `bob.pilot.` are the same name.
    pub fn parse_user(s: &str) -> Result<Hostname, HostnameError> {
        let trimmed = s.strip_suffix('.').unwrap_or(s);
        let bare = trimmed
            .strip_suffix(NAME_ZONE)
            .and_then(|t| t.strip_suffix('.'))
            .unwrap_or(trimmed);
        bare.parse().map_err(|_| HostnameError(s.to_owned()))
    }
}

impl FromStr for Hostname {
    type Err = HostnameError;

    fn from_str(s: &str) -> Result<Hostname, HostnameError> {
        let valid = (1..=MAX_HOSTNAME).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if valid {
            Ok(Hostname(s.to_owned()))
        } else {
            Err(HostnameError(s.to_owned()))
        }
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hostname({})", self.0)
    }
}

impl serde::Serialize for Hostname {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Hostname {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Hostname, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}.{:04x}.{:04x}",
            (self.0 >> 32) & 0xffff,
            (self.0 >> 16) & 0xffff,
            self.0 & 0xffff
        )
    }
}

/// As its node form, `a1b2.c3d4.e5f6` (either form is read back).
impl serde::Serialize for NodeAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for NodeAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<NodeAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeAddr({self})")
    }
}

impl FromStr for NodeAddr {
    type Err = AddrParseError;

    /// Accepts the node form `xxxx.xxxx.xxxx` and any spelling of an IPv6 address in
    /// `fd70::/80` (optionally in brackets).
    fn from_str(s: &str) -> Result<NodeAddr, AddrParseError> {
        let malformed = || AddrParseError::Malformed(s.to_owned());
        let trimmed = s.trim_start_matches('[').trim_end_matches(']');
        if trimmed.contains(':') {
            let ip: Ipv6Addr = trimmed.parse().map_err(|_| malformed())?;
            return NodeAddr::from_ipv6(ip).ok_or_else(|| AddrParseError::OutsidePrefix(s.into()));
        }
        let mut bits = 0u64;
        let mut groups = 0;
        for group in trimmed.split('.') {
            let valid =
                (1..=4).contains(&group.len()) && group.bytes().all(|b| b.is_ascii_hexdigit());
            if !valid || groups == 3 {
                return Err(malformed());
            }
            bits = (bits << 16) | u64::from_str_radix(group, 16).map_err(|_| malformed())?;
            groups += 1;
        }
        if groups != 3 {
            return Err(malformed());
        }
        Ok(NodeAddr(bits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_stable_and_domain_separated() {
        let key = [7u8; 32];
        let a = NodeAddr::from_public_key(&key);
        assert_eq!(a, NodeAddr::from_public_key(&key));
        // Domain separation: not simply the first bytes of SHA-256(key).
        let plain = Sha256::digest(key);
        let mut bits = [0u8; 8];
        bits[2..].copy_from_slice(&plain[..6]);
        assert_ne!(a.bits(), u64::from_be_bytes(bits));
        assert_ne!(a, NodeAddr::from_public_key(&[8u8; 32]));
        assert!(a.bits() <= MASK_48);
    }

    #[test]
    fn text_and_ipv6_forms_round_trip() {
        let a = NodeAddr::from_bits(0xa1b2_c3d4_e5f6);
        assert_eq!(a.to_string(), "a1b2.c3d4.e5f6");
        assert_eq!(a.to_ipv6().to_string(), "fd70::a1b2:c3d4:e5f6");
        assert_eq!("a1b2.c3d4.e5f6".parse::<NodeAddr>(), Ok(a));
        assert_eq!("fd70::a1b2:c3d4:e5f6".parse::<NodeAddr>(), Ok(a));
        assert_eq!("[fd70:0:0:0:0:a1b2:c3d4:e5f6]".parse::<NodeAddr>(), Ok(a));
        assert_eq!(NodeAddr::from_ipv6(a.to_ipv6()), Some(a));
        assert_eq!(NodeAddr::from_ipv6_octets(&a.to_ipv6().octets()), Some(a));
        for bits in [0, 1, 0xffff, 0x1_0000, MASK_48, 0x0001_0000_0000] {
            let a = NodeAddr::from_bits(bits);
            assert_eq!(a.to_string().parse::<NodeAddr>(), Ok(a));
            assert_eq!(a.to_ipv6().to_string().parse::<NodeAddr>(), Ok(a));
        }
        assert_eq!(NodeAddr::from_bits(1).to_string(), "0000.0000.0001");
    }

    #[test]
    fn rejects_malformed_and_foreign_addresses() {
        for bad in [
            "",
            "a1b2.c3d4",
            "a1b2.c3d4.e5f6.0000",
            "a1b2.c3d4.e5f6x",
            "12345.0.0",
            "g000.0.0",
            "a1b2..e5f6",
            "::1",
            "fd71::1",
            "fd70:0:0:1::1",
            "fd70::zz",
        ] {
            assert!(bad.parse::<NodeAddr>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            "fd71::1".parse::<NodeAddr>(),
            Err(AddrParseError::OutsidePrefix("fd71::1".into()))
        );
    }

    #[test]
    fn reserved_range_is_upper_32_bits_zero() {
        assert!(NodeAddr::from_bits(0).is_reserved());
        assert!(NodeAddr::from_bits(0xffff).is_reserved());
        assert!(!NodeAddr::from_bits(0x1_0000).is_reserved());
        assert_eq!(
            "fd70::ffff".parse::<NodeAddr>().map(NodeAddr::is_reserved),
            Ok(true)
        );
    }

    #[test]
    fn hostnames_are_one_lowercase_label() {
        for good in ["a", "bob", "edge-7", "0", &"x".repeat(63)] {
            assert_eq!(good.parse::<Hostname>().unwrap().as_str(), good);
        }
        for bad in [
            "",
            "Bob",
            "-bob",
            "bob-",
            "bo b",
            "bob.pilot",
            "bø",
            &"x".repeat(64),
        ] {
            assert!(bad.parse::<Hostname>().is_err(), "{bad:?} accepted");
        }
        for typed in ["bob", "bob.pilot", "bob.pilot."] {
            assert_eq!(Hostname::parse_user(typed).unwrap().as_str(), "bob");
        }
        assert!(Hostname::parse_user(".pilot").is_err());
        assert!(Hostname::parse_user("a.b.pilot").is_err());
    }
}
