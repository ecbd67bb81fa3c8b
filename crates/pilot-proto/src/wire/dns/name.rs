//! Domain names as they arrive in a question, and where they stand relative to `pilot.`.

use std::fmt;

use crate::addr::{Hostname, MAX_HOSTNAME, NAME_ZONE};

/// RFC 1035 §2.3.4: a name is at most 255 bytes on the wire, length bytes and root included.
pub(super) const MAX_NAME_LEN: usize = 255;
const MAX_LABEL_LEN: usize = 63;

/// A domain name in wire format (length-prefixed labels ending in the root label), checked to
/// be well formed and uncompressed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Name<'a>(&'a [u8]);

/// Where a name stands relative to the `pilot.` zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    /// Not under `pilot.`: refused.
    Outside,
    /// `pilot.` itself.
    Apex,
    /// `LABEL.pilot.` with a label that is a valid hostname (lowercased).
    Host(HostLabel),
    /// Under `pilot.` but no node can hold it: more than one label below the zone, or a label
    /// that is not a valid hostname.
    Unassignable,
}

/// A hostname label taken from a query, lowercased into a fixed buffer so the packet path does
/// not allocate. Follows the same rules as [`Hostname`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HostLabel {
    bytes: [u8; MAX_HOSTNAME],
    len: u8,
}

impl<'a> Name<'a> {
    /// The uncompressed name at the start of `bytes`, or `None` if it runs past the end, has a
    /// label or total length over the limits, or uses a compression pointer (or an obsolete
    /// extended label type). RFC 1035 lets a pointer refer only backwards, and before a
    /// question's name there is nothing but the header: in a question a pointer is malformed.
    pub(super) fn parse_prefix(bytes: &'a [u8]) -> Option<Name<'a>> {
        let mut at = 0;
        loop {
            let len = usize::from(*bytes.get(at)?);
            at += 1 + len;
            if len > MAX_LABEL_LEN || at > MAX_NAME_LEN {
                return None;
            }
            if len == 0 {
                return Some(Name(&bytes[..at]));
            }
        }
    }

    /// The labels, most specific first, as received (case preserved); the root is not one.
    pub fn labels(&self) -> impl Iterator<Item = &'a [u8]> {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            let (&len, tail) = rest.split_first()?;
            let label = tail.get(..usize::from(len)).filter(|l| !l.is_empty())?;
            rest = &tail[label.len()..];
            Some(label)
        })
    }

    /// The name in wire format, root label included.
    pub fn as_wire(&self) -> &'a [u8] {
        self.0
    }

    /// Where the name stands relative to `pilot.`, compared case-insensitively.
    pub fn zone(&self) -> Zone {
        let in_zone = self
            .labels()
            .last()
            .is_some_and(|last| last.eq_ignore_ascii_case(NAME_ZONE.as_bytes()));
        if !in_zone {
            return Zone::Outside;
        }
        match (self.labels().next(), self.labels().count()) {
            (_, 1) => Zone::Apex,
            (Some(first), 2) => HostLabel::new(first).map_or(Zone::Unassignable, Zone::Host),
            _ => Zone::Unassignable,
        }
    }
}

/// Presentation format (`BoB.pilot.`), with bytes outside printable ASCII, dots and backslashes
/// inside labels escaped as `\DDD` (RFC 4343 §2.1), for logs.
impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut any = false;
        for label in self.labels() {
            any = true;
            for &b in label {
                if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                    write!(f, "{}", char::from(b))?;
                } else {
                    write!(f, "\\{b:03}")?;
                }
            }
            f.write_str(".")?;
        }
        if !any {
            f.write_str(".")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({self})")
    }
}

impl HostLabel {
    /// Lowercases `label` and checks it against the hostname rules, or `None`.
    pub(super) fn new(label: &[u8]) -> Option<HostLabel> {
        let mut bytes = [0u8; MAX_HOSTNAME];
        let dst = bytes.get_mut(..label.len())?;
        for (d, s) in dst.iter_mut().zip(label) {
            *d = s.to_ascii_lowercase();
        }
        let valid = !dst.is_empty()
            && dst
                .iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && dst.first() != Some(&b'-')
            && dst.last() != Some(&b'-');
        let len = u8::try_from(dst.len()).ok()?;
        valid.then_some(HostLabel { bytes, len })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored, so this is always the whole label.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }

    /// The label as a [`Hostname`]; allocates, so not for the packet path. Always `Some` while
    /// the two follow the same rules (a test holds them to it).
    pub fn to_hostname(&self) -> Option<Hostname> {
        self.as_str().parse().ok()
    }
}

impl fmt::Debug for HostLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostLabel({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_labels_follow_the_hostname_rules() {
        for label in [
            "a", "bob", "0", "edge-7", "b_b", "-x", "x-", "bø", "", "a b",
        ] {
            let ours = HostLabel::new(label.as_bytes()).map(|l| l.as_str().to_owned());
            let theirs = label
                .parse::<Hostname>()
                .ok()
                .map(|h| h.as_str().to_owned());
            assert_eq!(ours, theirs, "{label:?}");
        }
        assert!(HostLabel::new(&[b'x'; 64]).is_none());
        assert_eq!(HostLabel::new(b"BOB").unwrap().as_str(), "bob");
    }

    #[test]
    fn names_with_pointers_or_overlong_parts_are_refused() {
        assert_eq!(
            Name::parse_prefix(&[3, b'b', b'o', b'b', 0, 0xff]).map(|n| n.as_wire().len()),
            Some(5)
        );
        for bad in [
            &[][..],
            &[3, b'b', b'o'],
            &[0xc0, 12],
            &[0x40, 0],
            &[0x80, 0],
            &[1, b'x'],
        ] {
            assert_eq!(Name::parse_prefix(bad), None, "{bad:?}");
        }
        let mut long = Vec::new();
        for _ in 0..4 {
            long.push(63);
            long.extend_from_slice(&[b'x'; 63]);
        }
        long.push(0);
        assert_eq!(Name::parse_prefix(&long), None, "257 bytes");
        long.truncate(3 * 64);
        long.extend_from_slice(&[61]);
        long.extend_from_slice(&[b'x'; 61]);
        long.push(0);
        assert_eq!(
            Name::parse_prefix(&long).map(|n| n.labels().count()),
            Some(4),
            "255 bytes"
        );
    }
}
