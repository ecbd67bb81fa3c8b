//! TUN offloads, sans-IO: the virtio-net header that a TUN opened with `IFF_VNET_HDR` puts in
//! front of every packet, segmentation of the TCP super-segments the kernel hands us on read
//! (TSO), and coalescing of decrypted TCP segments into super-segments on write (GRO).
//!
//! Everything here works on caller-owned or preallocated buffers and allocates nothing per
//! packet. Input comes from the kernel (reads) or from a peer (writes); parsers return errors
//! and never panic or index out of bounds.
//!
//! The overlay carries IPv6 only, so the only GSO type handled is TCPv6 without extension
//! headers; anything else that asks for segmentation is an error the caller drops and counts.

mod coalesce;
mod segment;

#[cfg(test)]
mod coalesce_tests;
#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
pub(crate) mod test_packets;
#[cfg(test)]
mod tests;

pub use coalesce::{Coalescer, PushError};
pub use segment::{segments, Segments};

/// `sizeof(struct virtio_net_hdr)`: the legacy header TUN uses unless TUNSETVNETHDRSZ says
/// otherwise.
pub const VNET_HDR_LEN: usize = 10;
/// Largest IPv6 packet without jumbograms: the 40-byte header plus a 16-bit payload length.
pub const MAX_IPV6_PACKET: usize = IPV6_HEADER_LEN + 65535;

/// `flags`: the checksum from `csum_start` to the end is still to be computed; the field at
/// `csum_start + csum_offset` holds the pseudo-header sum.
pub const NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was already verified (reads only; nothing to do for us).
pub const DATA_VALID: u8 = 2;
/// `gso_type` values. ECN is a flag or-ed into TCPV4/TCPV6: the super-segment has CWR set,
/// which belongs on its first segment only.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;

pub(crate) const IPV6_HEADER_LEN: usize = 40;
pub(crate) const PROTO_TCP: u8 = 6;
/// Offset of the checksum field in the TCP header.
pub(crate) const TCP_CSUM_OFFSET: usize = 16;
pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_PSH: u8 = 0x08;
pub(crate) const TCP_ACK: u8 = 0x10;
pub(crate) const TCP_CWR: u8 = 0x80;

/// The legacy `struct virtio_net_hdr`.
///
/// The 16-bit fields are in the byte order the TUN was told to use; `TunDevice` sets
/// little-endian with TUNSETVNETLE (which is also the default on the little-endian machines
/// we run on), so they are read and written with `from_le_bytes`/`to_le_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VirtioNetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// Length of the headers to copy into the linear part. On reads the kernel puts
    /// `skb_headlen` here, which can exceed the real headers: do not trust it for parsing.
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS) for GSO packets.
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// A header that asks for nothing: the packet is complete and not to be segmented.
    pub const NONE: VirtioNetHdr = VirtioNetHdr {
        flags: 0,
        gso_type: GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Splits a TUN read into its header and the packet after it; `None` if shorter than a
    /// header.
    pub fn parse(buf: &[u8]) -> Option<(VirtioNetHdr, &[u8])> {
        let (head, packet) = buf.split_first_chunk::<VNET_HDR_LEN>()?;
        let u16_at = |i: usize| u16::from_le_bytes([head[i], head[i + 1]]);
        let hdr = VirtioNetHdr {
            flags: head[0],
            gso_type: head[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        };
        Some((hdr, packet))
    }

    /// The header as the TUN expects it in front of a written packet.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `out`; `None` (and nothing
    /// written) if `out` is shorter.
    pub fn write(&self, out: &mut [u8]) -> Option<()> {
        out.get_mut(..VNET_HDR_LEN)?
            .copy_from_slice(&self.to_bytes());
        Some(())
    }
}

/// Why a packet read from the TUN could not be turned into segments. Each is a reason to
/// drop the packet and count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("packet shorter than its headers or than its IPv6 payload length says")]
    Truncated,
    #[error("GSO type {0:#04x} is not supported (only TCPv6)")]
    UnsupportedGso(u8),
    #[error("GSO packet is not IPv6/TCP without extension headers")]
    NotTcp6,
    #[error("malformed offload request: {0}")]
    Malformed(&'static str),
    #[error("output buffer too small: {needed} bytes needed")]
    BufferTooSmall { needed: usize },
}

/// Adds `data` to a ones-complement sum as big-endian 16-bit words, without folding. `data`
/// must start at an even offset of what is being checksummed. Summing 32-bit words into 64
/// bits and folding later gives the same result as 16-bit words (2^16 ≡ 1 mod 2^16 - 1),
/// with a quarter of the additions; 64 KiB cannot overflow the accumulator.
pub(crate) fn sum(data: &[u8], mut acc: u64) -> u64 {
    let (words, rest) = data.as_chunks::<4>();
    for w in words {
        acc += u64::from(u32::from_be_bytes(*w));
    }
    let (pairs, last) = rest.as_chunks::<2>();
    for p in pairs {
        acc += u64::from(u16::from_be_bytes(*p));
    }
    if let [b] = last {
        acc += u64::from(*b) << 8;
    }
    acc
}

/// Folds a sum from [`sum`] to 16 bits (not complemented).
pub(crate) fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The IPv6 pseudo-header sum (RFC 8200 §8.1) for an upper-layer packet of `len` bytes.
/// `addrs` is bytes 8..40 of the IPv6 header: source then destination.
pub(crate) fn pseudo_header_sum(addrs: &[u8], len: u32, proto: u8) -> u64 {
    sum(addrs, u64::from(len) + u64::from(proto))
}
