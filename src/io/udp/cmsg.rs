//! Control messages: the `UDP_SEGMENT` one a GSO send carries and the `UDP_GRO` one that
//! comes with a coalesced receive, plus the packet-info ones of a socket that reports where
//! datagrams were sent to (`IP_PKTINFO`, `IPV6_PKTINFO`) and of a send that sets the address
//! a datagram leaves from. The parser works on the byte slice the kernel filled and checks
//! every length against it, whatever the kernel (or a bug) put there.

use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Control bytes per mmsghdr. A receive carries at most a `UDP_GRO` message (CMSG_SPACE(4) =
/// 24 bytes on 64-bit Linux) and an `IPV6_PKTINFO` one (CMSG_SPACE(20) = 40), a send at most
/// a `UDP_SEGMENT` message (24) and a packet-info one (40); the rest is room for messages
/// other socket options may add later (a cut one would make the datagram's buffer unusable).
pub(super) const CONTROL_LEN: usize = 128;

/// CMSG_ALIGN of `<sys/socket.h>` on Linux: messages start at multiples of a word.
const fn cmsg_align(len: usize) -> usize {
    let word = mem::size_of::<usize>();
    (len + word - 1) & !(word - 1)
}

/// CMSG_SPACE: what a message with `data` bytes takes, padding included.
const fn cmsg_space(data: usize) -> usize {
    cmsg_align(HEADER_LEN + data)
}

/// Where a message's data starts: CMSG_LEN(0).
const HEADER_LEN: usize = cmsg_align(mem::size_of::<libc::cmsghdr>());
/// What a `UDP_SEGMENT` message takes.
const SEGMENT_SPACE: usize = cmsg_space(mem::size_of::<u16>());
/// What the larger of the two packet-info messages takes.
const PKTINFO_SPACE: usize = cmsg_space(mem::size_of::<libc::in6_pktinfo>());

// SAFETY: CMSG_LEN and CMSG_SPACE are plain arithmetic on their argument.
const _: () = assert!(HEADER_LEN == unsafe { libc::CMSG_LEN(0) } as usize);
const _: () = assert!(SEGMENT_SPACE == unsafe { libc::CMSG_SPACE(2) } as usize);
const _: () = assert!(PKTINFO_SPACE == unsafe { libc::CMSG_SPACE(20) } as usize);
const _: () = assert!(mem::size_of::<libc::in_pktinfo>() <= mem::size_of::<libc::in6_pktinfo>());
// The most a send writes, and the most a receive gets (UDP_GRO carries an int).
const _: () = assert!(SEGMENT_SPACE + PKTINFO_SPACE <= CONTROL_LEN);
const _: () = assert!(cmsg_space(4) + PKTINFO_SPACE <= CONTROL_LEN);
const _: () = assert!(mem::align_of::<libc::cmsghdr>() <= mem::align_of::<ControlBuf>());

/// The address a datagram is to leave from, in the form of the message that sets it: the
/// socket's family decides, so an IPv4 source on a dual-stack socket is IPv4-mapped IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// `IP_PKTINFO` with `ipi_spec_dst`.
    V4(Ipv4Addr),
    /// `IPV6_PKTINFO` with `ipi6_addr`.
    V6(Ipv6Addr),
}

/// Control-message space of one mmsghdr, aligned as the kernel expects a cmsghdr.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(super) struct ControlBuf([u8; CONTROL_LEN]);

impl ControlBuf {
    pub(super) const EMPTY: ControlBuf = ControlBuf([0; CONTROL_LEN]);

    /// Writes the messages of one send: `UDP_SEGMENT` with `segment` if given, and the
    /// packet-info message setting `source` if given (interface index 0: the routing table
    /// picks the interface). Returns the msg_controllen to send them with; 0 for none.
    pub(super) fn write_send(&mut self, segment: Option<u16>, source: Option<Source>) -> usize {
        let mut len = 0;
        if let Some(size) = segment {
            len = self.put(len, libc::SOL_UDP, libc::UDP_SEGMENT, size);
        }
        match source {
            Some(Source::V4(ip)) => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from_ne_bytes(ip.octets()),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                len = self.put(len, libc::IPPROTO_IP, libc::IP_PKTINFO, info);
            }
            Some(Source::V6(ip)) => {
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: ip.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                len = self.put(len, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, info);
            }
            None => {}
        }
        len
    }

    pub(super) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.0.as_mut_ptr()
    }

    /// The first `len` bytes (what the kernel reported in msg_controllen), never more than
    /// the buffer holds.
    pub(super) fn filled(&self, len: usize) -> &[u8] {
        &self.0[..len.min(CONTROL_LEN)]
    }

    /// Writes one message carrying `data` at offset `at`; returns where the next one starts.
    /// Only called with the messages `write_send` knows, which fit (asserted above).
    fn put<T: Copy>(&mut self, at: usize, level: libc::c_int, kind: libc::c_int, data: T) -> usize {
        let end = at + cmsg_space(mem::size_of::<T>());
        let bytes = &mut self.0[at..end];
        // SAFETY: all-zero is a valid cmsghdr; it also zeroes the padding musl declares.
        let mut header: libc::cmsghdr = unsafe { mem::zeroed() };
        header.cmsg_len = (HEADER_LEN + mem::size_of::<T>()) as _;
        header.cmsg_level = level;
        header.cmsg_type = kind;
        // SAFETY: `bytes` holds a header and `data` (CMSG_SPACE of it, checked by the
        // slicing above); write_unaligned has no alignment requirement.
        unsafe {
            std::ptr::write_unaligned(bytes.as_mut_ptr().cast(), header);
            std::ptr::write_unaligned(bytes[HEADER_LEN..].as_mut_ptr().cast(), data);
        }
        end
    }
}

/// What the control messages of one received buffer said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Received {
    /// The segment size of a `UDP_GRO` message: the length of every datagram of a coalesced
    /// buffer but possibly the last.
    pub gro_segment: Option<usize>,
    /// The local address the datagrams were sent to (`IP_PKTINFO`/`IPV6_PKTINFO`, IPv4-mapped
    /// IPv6 as plain IPv4), if the socket asks for it and it can be replied from (not
    /// multicast, broadcast or unspecified).
    pub destination: Option<IpAddr>,
}

/// Reads `control` (what one recvmmsg entry got) in one pass.
pub(super) fn parse(control: &[u8]) -> Received {
    let mut received = Received::default();
    for m in (Messages { rest: control }) {
        match (m.level, m.kind) {
            (libc::SOL_UDP, libc::UDP_GRO) => {
                received.gro_segment = read::<libc::c_int>(m.data)
                    .and_then(|size| usize::try_from(size).ok())
                    .filter(|&size| size > 0);
            }
            (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                received.destination = read::<libc::in_pktinfo>(m.data).and_then(|info| {
                    // The local address the kernel would answer from (for unicast, the
                    // destination itself), else the header's destination.
                    let spec_dst = Ipv4Addr::from(info.ipi_spec_dst.s_addr.to_ne_bytes());
                    let header_dst = Ipv4Addr::from(info.ipi_addr.s_addr.to_ne_bytes());
                    [spec_dst, header_dst]
                        .into_iter()
                        .find(|ip| !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast()))
                        .map(IpAddr::V4)
                });
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                received.destination = read::<libc::in6_pktinfo>(m.data).and_then(|info| {
                    let ip = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                    match ip.to_ipv4_mapped() {
                        Some(v4)
                            if !(v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast()) =>
                        {
                            Some(IpAddr::V4(v4))
                        }
                        Some(_) => None,
                        None if ip.is_unspecified() || ip.is_multicast() => None,
                        None => Some(IpAddr::V6(ip)),
                    }
                });
            }
            _ => {}
        }
    }
    received
}

/// A `T` from the start of a message's data, if the data is long enough.
fn read<T: Copy>(data: &[u8]) -> Option<T> {
    let bytes = data.get(..mem::size_of::<T>())?;
    // SAFETY: `bytes` is exactly one T long, read_unaligned has no alignment requirement,
    // and it is only used with plain C structs of integers, valid for every bit pattern.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

struct Message<'a> {
    level: libc::c_int,
    kind: libc::c_int,
    data: &'a [u8],
}

/// The messages of a control buffer; stops at the first whose length does not fit.
struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Messages<'a> {
    type Item = Message<'a>;

    fn next(&mut self) -> Option<Message<'a>> {
        let header_bytes = self.rest.get(..mem::size_of::<libc::cmsghdr>())?;
        // SAFETY: `header_bytes` is exactly one cmsghdr long, read_unaligned has no
        // alignment requirement, and every bit pattern is a valid cmsghdr (integers only).
        let header: libc::cmsghdr =
            unsafe { std::ptr::read_unaligned(header_bytes.as_ptr().cast()) };
        #[allow(clippy::unnecessary_cast, reason = "socklen_t on musl")]
        let len = header.cmsg_len as usize;
        let data = self.rest.get(HEADER_LEN..len)?;
        // The last message need not be padded to the alignment.
        self.rest = self.rest.get(cmsg_align(len)..).unwrap_or_default();
        Some(Message {
            level: header.cmsg_level,
            kind: header.cmsg_type,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control message as the kernel lays it out, padded to the alignment.
    fn message(level: libc::c_int, kind: libc::c_int, data: &[u8], declared_len: usize) -> Vec<u8> {
        // SAFETY: all-zero is a valid cmsghdr.
        let mut header: libc::cmsghdr = unsafe { mem::zeroed() };
        header.cmsg_len = declared_len as _;
        header.cmsg_level = level;
        header.cmsg_type = kind;
        let mut bytes = vec![0; HEADER_LEN];
        // SAFETY: `bytes` is at least one cmsghdr long; no alignment is needed.
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast(), header) };
        bytes.extend_from_slice(data);
        bytes.resize(cmsg_align(bytes.len()), 0);
        bytes
    }

    fn gro_segment_size_of(control: &[u8]) -> Option<usize> {
        parse(control).gro_segment
    }

    fn gro(size: i32) -> Vec<u8> {
        message(
            libc::SOL_UDP,
            libc::UDP_GRO,
            &size.to_ne_bytes(),
            HEADER_LEN + 4,
        )
    }

    #[test]
    fn finds_the_gro_size_after_other_messages() {
        assert_eq!(gro_segment_size_of(&gro(1420)), Some(1420));
        let other = message(
            libc::SOL_IPV6,
            libc::IPV6_HOPLIMIT,
            &64i32.to_ne_bytes(),
            HEADER_LEN + 4,
        );
        assert_eq!(
            gro_segment_size_of(&[other.clone(), gro(1200)].concat()),
            Some(1200)
        );
        assert_eq!(gro_segment_size_of(&other), None);
        assert_eq!(gro_segment_size_of(&[]), None);
    }

    #[test]
    fn malformed_control_bytes_yield_nothing_and_never_read_past_the_end() {
        let good = gro(1420);
        // Cut anywhere: the message is incomplete, so it is not reported.
        for cut in 0..HEADER_LEN + 4 {
            assert_eq!(gro_segment_size_of(&good[..cut]), None, "cut at {cut}");
        }
        // The unpadded last message is fine.
        assert_eq!(gro_segment_size_of(&good[..HEADER_LEN + 4]), Some(1420));
        // Lengths pointing past the buffer, inside the header, or at nothing.
        for declared in [usize::MAX, 1 << 20, good.len() + 1, HEADER_LEN - 1, 0] {
            let bad = message(
                libc::SOL_UDP,
                libc::UDP_GRO,
                &1420i32.to_ne_bytes(),
                declared,
            );
            assert_eq!(gro_segment_size_of(&bad), None, "cmsg_len {declared}");
        }
        // A GRO message too short for an int, and sizes that make no sense.
        let short = message(libc::SOL_UDP, libc::UDP_GRO, &[1, 2], HEADER_LEN + 2);
        assert_eq!(gro_segment_size_of(&short), None);
        assert_eq!(gro_segment_size_of(&gro(0)), None);
        assert_eq!(gro_segment_size_of(&gro(-5)), None);
    }

    #[test]
    fn send_messages_read_back() {
        let mut buf = ControlBuf::EMPTY;
        assert_eq!(buf.write_send(None, None), 0);
        let len = buf.write_send(Some(1452), None);
        assert_eq!(len, SEGMENT_SPACE);
        let msg = Messages {
            rest: buf.filled(len),
        }
        .next()
        .unwrap();
        assert_eq!((msg.level, msg.kind), (libc::SOL_UDP, libc::UDP_SEGMENT));
        assert_eq!(msg.data, 1452u16.to_ne_bytes());

        // A source alone, then after a segment size: the kernel's own layout, which the
        // receive parser reads back as a destination.
        let v4 = Ipv4Addr::new(192, 0, 2, 7);
        let v6: Ipv6Addr = "2001:db8::7".parse().unwrap();
        for segment in [None, Some(1200)] {
            for (source, want) in [
                (Source::V4(v4), IpAddr::V4(v4)),
                (Source::V6(v6), IpAddr::V6(v6)),
            ] {
                let len = buf.write_send(segment, Some(source));
                let messages: Vec<_> = Messages {
                    rest: buf.filled(len),
                }
                .map(|m| (m.level, m.kind))
                .collect();
                let info = match source {
                    Source::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO),
                    Source::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO),
                };
                let mut expected = vec![info];
                if segment.is_some() {
                    expected.insert(0, (libc::SOL_UDP, libc::UDP_SEGMENT));
                }
                assert_eq!(messages, expected);
                assert_eq!(parse(buf.filled(len)).destination, Some(want));
            }
        }
        // IPv4-mapped IPv6 (what a dual-stack socket reports for IPv4) reads as IPv4.
        let len = buf.write_send(None, Some(Source::V6(v4.to_ipv6_mapped())));
        assert_eq!(parse(buf.filled(len)).destination, Some(IpAddr::V4(v4)));
    }

    fn pktinfo4(spec_dst: [u8; 4], addr: [u8; 4]) -> Vec<u8> {
        let info = libc::in_pktinfo {
            ipi_ifindex: 2,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from_ne_bytes(spec_dst),
            },
            ipi_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(addr),
            },
        };
        // SAFETY: in_pktinfo is plain integers without padding (12 bytes).
        let bytes: [u8; 12] = unsafe { mem::transmute(info) };
        message(libc::IPPROTO_IP, libc::IP_PKTINFO, &bytes, HEADER_LEN + 12)
    }

    #[test]
    fn destination_is_a_local_unicast_address() {
        let spec = [203, 0, 113, 11];
        let got = |control: &[u8]| parse(control).destination;
        assert_eq!(got(&pktinfo4(spec, spec)), Some(IpAddr::from(spec)));
        // To a broadcast address: the local address the kernel names, never the broadcast.
        assert_eq!(got(&pktinfo4(spec, [255; 4])), Some(IpAddr::from(spec)));
        assert_eq!(got(&pktinfo4([0; 4], [255; 4])), None);
        assert_eq!(got(&pktinfo4([0; 4], spec)), Some(IpAddr::from(spec)));
        // Next to a GRO message, in either order; cut short, nothing.
        let both = [gro(1000), pktinfo4(spec, spec)].concat();
        assert_eq!(
            parse(&both),
            Received {
                gro_segment: Some(1000),
                destination: Some(IpAddr::from(spec))
            }
        );
        let both = [pktinfo4(spec, spec), gro(1000)].concat();
        assert_eq!(parse(&both).destination, Some(IpAddr::from(spec)));
        let short = message(libc::IPPROTO_IP, libc::IP_PKTINFO, &[1; 8], HEADER_LEN + 8);
        assert_eq!(got(&short), None);
        let multicast: Ipv6Addr = "ff02::1".parse().unwrap();
        let mut buf = ControlBuf::EMPTY;
        let len = buf.write_send(None, Some(Source::V6(multicast)));
        assert_eq!(got(buf.filled(len)), None);
    }
}
