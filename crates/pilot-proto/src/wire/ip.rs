//! The few IPv6 and ICMPv6 fields the node reads and writes: addresses for cryptokey routing,
//! echo request/reply for `pilotctl ping`, and destination-unreachable errors. The header and
//! checksum helpers are shared with the other packets the daemon answers itself (DNS).

use std::net::Ipv6Addr;

pub const IPV6_HEADER_LEN: usize = 40;
pub const NEXT_HEADER_ICMPV6: u8 = 58;
pub const NEXT_HEADER_UDP: u8 = 17;
const ICMPV6_DEST_UNREACHABLE: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
const HOP_LIMIT: u8 = 64;
/// ICMPv6 errors carry as much of the offending packet as fits in the IPv6 minimum MTU.
const MIN_MTU: usize = 1280;

/// Destination-unreachable codes (RFC 4443 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum UnreachableCode {
    NoRoute = 0,
    AdminProhibited = 1,
    AddressUnreachable = 3,
}

/// Source and destination of an IPv6 packet, or `None` if it is not a whole IPv6 header.
#[inline]
pub fn ipv6_addrs(packet: &[u8]) -> Option<(&[u8; 16], &[u8; 16])> {
    let header = packet.get(..IPV6_HEADER_LEN)?;
    if header[0] >> 4 != 6 {
        return None;
    }
    let src = header[8..24].try_into().ok()?;
    let dst = header[24..40].try_into().ok()?;
    Some((src, dst))
}

/// Next-header field and payload, checked against the payload-length field.
pub fn ipv6_payload(packet: &[u8]) -> Option<(u8, &[u8])> {
    ipv6_addrs(packet)?;
    let len = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
    let payload = packet.get(IPV6_HEADER_LEN..IPV6_HEADER_LEN + len)?;
    Some((packet[6], payload))
}

/// An ICMPv6 echo reply: `(identifier, sequence, data)`, if `packet` is one (with no extension
/// headers) and its checksum is right.
pub fn parse_echo_reply(packet: &[u8]) -> Option<(u16, u16, &[u8])> {
    let (next, icmp) = ipv6_payload(packet)?;
    if next != NEXT_HEADER_ICMPV6 || icmp.len() < 8 || icmp[0] != ICMPV6_ECHO_REPLY || icmp[1] != 0
    {
        return None;
    }
    let (src, dst) = ipv6_addrs(packet)?;
    if icmpv6_checksum(src, dst, icmp) != 0 {
        return None;
    }
    let ident = u16::from_be_bytes([icmp[4], icmp[5]]);
    let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
    Some((ident, seq, &icmp[8..]))
}

/// Writes an ICMPv6 echo request into `buf`; returns its length, or `None` if `buf` is too small.
pub fn write_echo_request(
    buf: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    ident: u16,
    seq: u16,
    data: &[u8],
) -> Option<usize> {
    write_echo(buf, src, dst, ICMPV6_ECHO_REQUEST, ident, seq, data)
}

/// Writes the echo reply a peer's kernel would send; for tests and the fuzz targets.
pub fn write_echo_reply(
    buf: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    ident: u16,
    seq: u16,
    data: &[u8],
) -> Option<usize> {
    write_echo(buf, src, dst, ICMPV6_ECHO_REPLY, ident, seq, data)
}

fn write_echo(
    buf: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    kind: u8,
    ident: u16,
    seq: u16,
    data: &[u8],
) -> Option<usize> {
    let icmp_len = 8 + data.len();
    let total = IPV6_HEADER_LEN + icmp_len;
    let out = buf.get_mut(..total)?;
    write_ipv6_header(
        out,
        &src.octets(),
        &dst.octets(),
        NEXT_HEADER_ICMPV6,
        icmp_len,
    )?;
    let icmp = &mut out[IPV6_HEADER_LEN..];
    icmp[0] = kind;
    icmp[1] = 0;
    icmp[2..4].fill(0);
    icmp[4..6].copy_from_slice(&ident.to_be_bytes());
    icmp[6..8].copy_from_slice(&seq.to_be_bytes());
    icmp[8..].copy_from_slice(data);
    finish_icmpv6(out);
    Some(total)
}

/// Writes an ICMPv6 destination-unreachable error about `offending` into `buf`, from `src` back
/// to the offending packet's source. Returns `None` when RFC 4443 forbids an error (the offending
/// packet is itself an ICMPv6 error, or not IPv6) or `buf` is too small.
pub fn write_unreachable(
    buf: &mut [u8],
    src: Ipv6Addr,
    code: UnreachableCode,
    offending: &[u8],
) -> Option<usize> {
    ipv6_addrs(offending)?;
    if offending[6] == NEXT_HEADER_ICMPV6
        && offending.get(IPV6_HEADER_LEN).is_some_and(|t| *t < 128)
    {
        return None;
    }
    write_error(
        buf,
        src,
        (ICMPV6_DEST_UNREACHABLE, code as u8),
        0,
        offending,
    )
}

/// Writes an ICMPv6 Packet Too Big about `offending` into `buf`, from `src` back to the
/// offending packet's source: the path onwards carries at most `mtu` bytes, so the sender's
/// stack lowers its path MTU for that destination (RFC 4443 §3.2, RFC 8201). `None` when the
/// offending packet is not IPv6 or `buf` is too small. Unlike other errors it may answer an
/// ICMPv6 error too large to pass.
pub fn write_packet_too_big(
    buf: &mut [u8],
    src: Ipv6Addr,
    mtu: u32,
    offending: &[u8],
) -> Option<usize> {
    write_error(buf, src, (ICMPV6_PACKET_TOO_BIG, 0), mtu, offending)
}

/// An ICMPv6 error of `(type, code)` with `word` in its second four bytes, quoting as much of
/// `offending` as fits the IPv6 minimum MTU, back to its source.
fn write_error(
    buf: &mut [u8],
    src: Ipv6Addr,
    (kind, code): (u8, u8),
    word: u32,
    offending: &[u8],
) -> Option<usize> {
    let (orig_src, _) = ipv6_addrs(offending)?;
    let quoted = offending.len().min(MIN_MTU - IPV6_HEADER_LEN - 8);
    let icmp_len = 8 + quoted;
    let total = IPV6_HEADER_LEN + icmp_len;
    let orig_src = *orig_src;
    let out = buf.get_mut(..total)?;
    write_ipv6_header(out, &src.octets(), &orig_src, NEXT_HEADER_ICMPV6, icmp_len)?;
    let icmp = &mut out[IPV6_HEADER_LEN..];
    icmp[0] = kind;
    icmp[1] = code;
    icmp[2..4].fill(0);
    icmp[4..8].copy_from_slice(&word.to_be_bytes());
    icmp[8..].copy_from_slice(&offending[..quoted]);
    finish_icmpv6(out);
    Some(total)
}

/// Writes a 40-byte IPv6 header (no flow label, hop limit 64) at the start of `out`.
pub fn write_ipv6_header(
    out: &mut [u8],
    src: &[u8; 16],
    dst: &[u8; 16],
    next_header: u8,
    payload_len: usize,
) -> Option<()> {
    let len = u16::try_from(payload_len).ok()?;
    let h = out.get_mut(..IPV6_HEADER_LEN)?;
    h[..4].copy_from_slice(&[0x60, 0, 0, 0]);
    h[4..6].copy_from_slice(&len.to_be_bytes());
    h[6] = next_header;
    h[7] = HOP_LIMIT;
    h[8..24].copy_from_slice(src);
    h[24..40].copy_from_slice(dst);
    Some(())
}

/// Fills in the ICMPv6 checksum of a packet built by this module.
fn finish_icmpv6(packet: &mut [u8]) {
    let (head, icmp) = packet.split_at_mut(IPV6_HEADER_LEN);
    let src: [u8; 16] = head[8..24].try_into().expect("header is 40 bytes");
    let dst: [u8; 16] = head[24..40].try_into().expect("header is 40 bytes");
    icmp[2..4].fill(0);
    let sum = icmpv6_checksum(&src, &dst, icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
}

/// The Internet checksum over the IPv6 pseudo-header and `icmp`; 0 when verifying a correct one.
fn icmpv6_checksum(src: &[u8; 16], dst: &[u8; 16], icmp: &[u8]) -> u16 {
    pseudo_header_checksum(src, dst, NEXT_HEADER_ICMPV6, icmp)
}

/// The Internet checksum over the IPv6 pseudo-header (RFC 8200 §8.1) and an upper-layer
/// packet (ICMPv6, UDP) whose own checksum field is zero when writing; 0 when verifying a
/// correct one.
pub fn pseudo_header_checksum(
    src: &[u8; 16],
    dst: &[u8; 16],
    next_header: u8,
    upper: &[u8],
) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        let mut chunks = bytes.chunks_exact(2);
        for c in &mut chunks {
            sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u64::from(*last) << 8;
        }
    };
    add(src);
    add(dst);
    add(&(upper.len() as u32).to_be_bytes());
    add(&[0, 0, 0, next_header]);
    add(upper);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv6Addr = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0xa, 0xb, 0xc);
    const B: Ipv6Addr = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0x1, 0x2, 0x3);

    #[test]
    fn echo_request_round_trips_through_a_reply() {
        let mut buf = [0u8; 128];
        let n = write_echo_request(&mut buf, A, B, 0x1234, 7, b"pilot-ping").unwrap();
        let req = &buf[..n];
        assert_eq!(ipv6_addrs(req), Some((&A.octets(), &B.octets())));
        // The request's own checksum verifies.
        assert_eq!(
            icmpv6_checksum(&A.octets(), &B.octets(), &req[IPV6_HEADER_LEN..]),
            0
        );
        assert_eq!(parse_echo_reply(req), None, "a request is not a reply");
        let mut reply = [0u8; 128];
        let m = write_echo_reply(&mut reply, B, A, 0x1234, 7, b"pilot-ping").unwrap();
        let reply = reply[..m].to_vec();
        assert_eq!(
            parse_echo_reply(&reply),
            Some((0x1234, 7, &b"pilot-ping"[..]))
        );
        let mut bad = reply.clone();
        bad[n - 1] ^= 1;
        assert_eq!(parse_echo_reply(&bad), None, "checksum must be checked");
    }

    #[test]
    fn unreachable_quotes_the_packet_and_never_answers_an_error() {
        let mut req = [0u8; 1500];
        let n = write_echo_request(&mut req, A, B, 1, 1, &[0x55; 1400]).unwrap();
        let mut buf = [0u8; 1500];
        let m = write_unreachable(&mut buf, A, UnreachableCode::NoRoute, &req[..n]).unwrap();
        assert_eq!(m, MIN_MTU);
        let err = &buf[..m];
        assert_eq!(ipv6_addrs(err), Some((&A.octets(), &A.octets())));
        assert_eq!(
            icmpv6_checksum(&A.octets(), &A.octets(), &err[IPV6_HEADER_LEN..]),
            0
        );
        assert_eq!(&err[48..88], &req[..40]);
        assert_eq!(
            write_unreachable(&mut [0u8; 1500], A, UnreachableCode::NoRoute, err),
            None
        );
    }

    #[test]
    fn packet_too_big_names_the_mtu_and_quotes_the_packet() {
        let mut req = [0u8; 1500];
        let n = write_echo_request(&mut req, B, A, 1, 1, &[0x55; 1400]).unwrap();
        let mut buf = [0u8; 1500];
        let m = write_packet_too_big(&mut buf, A, 1340, &req[..n]).unwrap();
        assert_eq!(m, MIN_MTU, "as much of the packet as fits the minimum MTU");
        let err = &buf[..m];
        assert_eq!(
            ipv6_addrs(err),
            Some((&A.octets(), &B.octets())),
            "back to its sender"
        );
        let icmp = &err[IPV6_HEADER_LEN..];
        assert_eq!((icmp[0], icmp[1]), (ICMPV6_PACKET_TOO_BIG, 0));
        assert_eq!(u32::from_be_bytes(icmp[4..8].try_into().unwrap()), 1340);
        assert_eq!(icmpv6_checksum(&A.octets(), &B.octets(), icmp), 0);
        assert_eq!(&err[48..88], &req[..40]);
        assert_eq!(
            write_packet_too_big(&mut buf, A, 1340, &[0x45; 60]),
            None,
            "not IPv6"
        );
    }

    #[test]
    fn parsers_reject_short_and_non_ipv6_input() {
        assert_eq!(ipv6_addrs(&[]), None);
        assert_eq!(ipv6_addrs(&[0x60; 39]), None);
        assert_eq!(ipv6_addrs(&[0x45; 40]), None);
        // Payload length larger than the packet.
        let mut p = [0u8; 48];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&100u16.to_be_bytes());
        p[6] = NEXT_HEADER_ICMPV6;
        assert_eq!(parse_echo_reply(&p), None);
        assert_eq!(
            write_unreachable(&mut [0u8; 4], A, UnreachableCode::NoRoute, &p),
            None
        );
    }
}
