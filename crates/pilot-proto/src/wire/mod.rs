//! Byte formats. Everything here parses untrusted input: functions return `Option`/`Result` and
//! never panic or index out of bounds.
//!
//! One UDP socket carries every kind of datagram, told apart by the first byte. WireGuard's
//! message types are little-endian `u32`s 1–4, so their first byte is 1–4; Pilot's own messages
//! (control, probes, relay frames — later issues) take first bytes from [`PILOT_FIRST`] up, far
//! from WireGuard's range so neither can be mistaken for the other.

pub mod codec;
pub mod control;
pub mod dns;
pub mod envelope;
pub mod ip;
pub mod message;
pub mod printable;
pub mod trust;

/// First byte of Pilot's own datagrams start here (`'P'`).
pub const PILOT_FIRST: u8 = 0x50;

/// What a datagram arriving on the node's socket is, decided by its first byte alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    /// A WireGuard message (handshake initiation/response, cookie reply, transport data).
    WireGuard,
    /// A Pilot control message (registration, punch, probe, relay); first byte is the type.
    Pilot(u8),
    /// Anything else: dropped and counted.
    Unknown,
}

/// Classifies a datagram by its first byte.
#[inline]
pub fn classify(datagram: &[u8]) -> DatagramKind {
    match datagram.first() {
        Some(1..=4) => DatagramKind::WireGuard,
        Some(&b) if b >= PILOT_FIRST => DatagramKind::Pilot(b),
        _ => DatagramKind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demux_by_first_byte() {
        assert_eq!(classify(&[]), DatagramKind::Unknown);
        assert_eq!(classify(&[0]), DatagramKind::Unknown);
        for t in 1..=4u8 {
            assert_eq!(classify(&[t, 0, 0, 0]), DatagramKind::WireGuard);
        }
        assert_eq!(classify(&[5]), DatagramKind::Unknown);
        assert_eq!(classify(&[0x4f]), DatagramKind::Unknown);
        assert_eq!(
            classify(&[PILOT_FIRST, 1]),
            DatagramKind::Pilot(PILOT_FIRST)
        );
        assert_eq!(classify(&[0xff]), DatagramKind::Pilot(0xff));
    }
}
