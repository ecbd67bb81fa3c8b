//! Read side: turning what the TUN hands us (a packet that may still need its checksum, or a
//! TCPv6 super-segment of up to 64 KiB) into complete, checksummed packets of at most the MTU.

use super::{
    fold, pseudo_header_sum, sum, OffloadError, VirtioNetHdr, GSO_ECN, GSO_NONE, GSO_TCPV6,
    IPV6_HEADER_LEN, NEEDS_CSUM, PROTO_TCP, TCP_CSUM_OFFSET, TCP_CWR, TCP_FIN, TCP_PSH,
};

/// The complete packets contained in one TUN read, produced one at a time into a buffer the
/// caller chooses (typically straight into a send slot), so each is written exactly once.
#[derive(Debug)]
pub struct Segments<'a> {
    packet: &'a [u8],
    kind: Kind,
    /// Segments already produced.
    done: usize,
    count: usize,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A complete packet: copied as it is.
    Whole,
    /// A packet whose checksum from `start` on is still to be computed and stored at `field`.
    Checksum { start: usize, field: usize },
    /// A TCPv6 super-segment: `headers` bytes of IPv6 + TCP header, then payload cut into
    /// pieces of `mss`.
    Tcp6 { headers: usize, mss: usize },
}

/// Checks `packet` against what `hdr` asks for and returns its segments. Rejects GSO for
/// anything but TCPv6 without extension headers, zero `gso_size`, inconsistent lengths and
/// checksum offsets outside the packet.
pub fn segments<'a>(hdr: &VirtioNetHdr, packet: &'a [u8]) -> Result<Segments<'a>, OffloadError> {
    if packet.is_empty() {
        return Err(OffloadError::Truncated);
    }
    let needs_csum = hdr.flags & NEEDS_CSUM != 0;
    let (kind, count) = match hdr.gso_type & !GSO_ECN {
        GSO_NONE if needs_csum => (checksum_kind(hdr, packet)?, 1),
        GSO_NONE => (Kind::Whole, 1),
        GSO_TCPV6 => tcp6_kind(hdr, packet)?,
        _ => return Err(OffloadError::UnsupportedGso(hdr.gso_type)),
    };
    Ok(Segments {
        packet,
        kind,
        done: 0,
        count,
    })
}

impl Segments<'_> {
    /// Writes the next segment into the start of `out` and returns its length; `Ok(None)`
    /// when all have been produced. Fails only if `out` is too small for this segment (size
    /// it with [`Segments::max_segment_len`]); the segment is then not consumed.
    pub fn next_into(&mut self, out: &mut [u8]) -> Result<Option<usize>, OffloadError> {
        if self.done >= self.count {
            return Ok(None);
        }
        let len = match self.kind {
            Kind::Whole => copy_whole(self.packet, out)?,
            Kind::Checksum { start, field } => {
                let len = copy_whole(self.packet, out)?;
                // The field holds the pseudo-header sum; it is included in the sum as is.
                let mut csum = !fold(sum(&out[start..len], 0));
                if csum == 0 {
                    // As the kernel does (CSUM_MANGLED_0): for UDP 0 means "no checksum";
                    // for TCP and ICMPv6 0xffff is the same value in ones' complement.
                    csum = 0xffff;
                }
                out[field..field + 2].copy_from_slice(&csum.to_be_bytes());
                len
            }
            Kind::Tcp6 { headers, mss } => {
                write_tcp6_segment(self.packet, headers, mss, self.done, self.count, out)?
            }
        };
        self.done += 1;
        Ok(Some(len))
    }

    /// Segments not yet produced.
    pub fn remaining(&self) -> usize {
        self.count - self.done
    }

    /// The longest segment this will produce: `out` of this size always suffices.
    pub fn max_segment_len(&self) -> usize {
        match self.kind {
            Kind::Whole | Kind::Checksum { .. } => self.packet.len(),
            Kind::Tcp6 { headers, mss } => headers + mss.min(self.packet.len() - headers),
        }
    }
}

fn copy_whole(packet: &[u8], out: &mut [u8]) -> Result<usize, OffloadError> {
    let needed = packet.len();
    out.get_mut(..needed)
        .ok_or(OffloadError::BufferTooSmall { needed })?
        .copy_from_slice(packet);
    Ok(needed)
}

fn checksum_kind(hdr: &VirtioNetHdr, packet: &[u8]) -> Result<Kind, OffloadError> {
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    // The checksum covers at least its own field, which must lie inside the packet.
    if field + 2 > packet.len() {
        return Err(OffloadError::Malformed("checksum field beyond the packet"));
    }
    Ok(Kind::Checksum { start, field })
}

/// Validates a TCPv6 super-segment; returns its kind and number of segments.
fn tcp6_kind(hdr: &VirtioNetHdr, packet: &[u8]) -> Result<(Kind, usize), OffloadError> {
    let ip = packet
        .get(..IPV6_HEADER_LEN)
        .ok_or(OffloadError::Truncated)?;
    if ip[0] >> 4 != 6 || ip[6] != PROTO_TCP {
        return Err(OffloadError::NotTcp6);
    }
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    if IPV6_HEADER_LEN + payload_len != packet.len() {
        return Err(OffloadError::Truncated);
    }
    let doff = packet
        .get(IPV6_HEADER_LEN + 12)
        .ok_or(OffloadError::Truncated)?;
    let tcp_len = usize::from(doff >> 4) * 4;
    if tcp_len < 20 {
        return Err(OffloadError::Malformed("TCP data offset below 5"));
    }
    let headers = IPV6_HEADER_LEN + tcp_len;
    if headers > packet.len() {
        return Err(OffloadError::Truncated);
    }
    if hdr.flags & NEEDS_CSUM != 0
        && (usize::from(hdr.csum_start), usize::from(hdr.csum_offset))
            != (IPV6_HEADER_LEN, TCP_CSUM_OFFSET)
    {
        return Err(OffloadError::Malformed("TCP checksum offsets"));
    }
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(OffloadError::Malformed("gso_size is 0"));
    }
    // A super-segment with no payload is still one (header-only) segment.
    let count = (packet.len() - headers).div_ceil(mss).max(1);
    Ok((Kind::Tcp6 { headers, mss }, count))
}

/// Writes segment `index` of `count` of a validated super-segment into `out`.
fn write_tcp6_segment(
    packet: &[u8],
    headers: usize,
    mss: usize,
    index: usize,
    count: usize,
    out: &mut [u8],
) -> Result<usize, OffloadError> {
    let offset = index * mss;
    let payload = &packet[headers + offset..];
    let payload = &payload[..payload.len().min(mss)];
    let needed = headers + payload.len();
    let out = out
        .get_mut(..needed)
        .ok_or(OffloadError::BufferTooSmall { needed })?;
    out[..headers].copy_from_slice(&packet[..headers]);
    out[headers..].copy_from_slice(payload);

    let tcp_len = needed - IPV6_HEADER_LEN;
    // tcp_len ≤ packet length - 40 ≤ 65535: it came from a 16-bit field.
    out[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
    let (ip, tcp) = out.split_at_mut(IPV6_HEADER_LEN);
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]).wrapping_add(offset as u32);
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    if index + 1 < count {
        tcp[13] &= !(TCP_FIN | TCP_PSH);
    }
    if index > 0 {
        tcp[13] &= !TCP_CWR;
    }
    tcp[TCP_CSUM_OFFSET..TCP_CSUM_OFFSET + 2].fill(0);
    let csum = !fold(sum(
        tcp,
        pseudo_header_sum(&ip[8..40], tcp_len as u32, PROTO_TCP),
    ));
    tcp[TCP_CSUM_OFFSET..TCP_CSUM_OFFSET + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(needed)
}
