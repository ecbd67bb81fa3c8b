//! Control messages: the `UDP_SEGMENT` one a GSO send carries and the `UDP_GRO` one that
//! comes with a coalesced receive. The parser works on the byte slice the kernel filled
//! and checks every length against it, whatever the kernel (or a bug) put there.

use std::mem;

/// Control bytes per mmsghdr. One `UDP_GRO` message takes CMSG_SPACE(4) = 24 bytes on
/// 64-bit Linux; the rest is room for messages other socket options may add later.
pub(super) const CONTROL_LEN: usize = 64;

/// CMSG_ALIGN of `<sys/socket.h>` on Linux: messages start at multiples of a word.
const fn cmsg_align(len: usize) -> usize {
    let word = mem::size_of::<usize>();
    (len + word - 1) & !(word - 1)
}

/// Where a message's data starts: CMSG_LEN(0).
const HEADER_LEN: usize = cmsg_align(mem::size_of::<libc::cmsghdr>());
/// CMSG_SPACE(sizeof(u16)): what a `UDP_SEGMENT` message takes, i.e. its msg_controllen.
const SEGMENT_SPACE: usize = cmsg_align(HEADER_LEN + mem::size_of::<u16>());

// SAFETY: CMSG_LEN and CMSG_SPACE are plain arithmetic on their argument.
const _: () = assert!(HEADER_LEN == unsafe { libc::CMSG_LEN(0) } as usize);
const _: () = assert!(SEGMENT_SPACE == unsafe { libc::CMSG_SPACE(2) } as usize);
const _: () = assert!(SEGMENT_SPACE <= CONTROL_LEN);
const _: () = assert!(mem::align_of::<libc::cmsghdr>() <= mem::align_of::<ControlBuf>());

/// Control-message space of one mmsghdr, aligned as the kernel expects a cmsghdr.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(super) struct ControlBuf([u8; CONTROL_LEN]);

impl ControlBuf {
    pub(super) const EMPTY: ControlBuf = ControlBuf([0; CONTROL_LEN]);

    /// A buffer holding one `SOL_UDP`/`UDP_SEGMENT` message; its size is set per send with
    /// `set_segment_size`.
    pub(super) fn segment() -> ControlBuf {
        let mut buf = ControlBuf::EMPTY;
        // SAFETY: all-zero is a valid cmsghdr; it also zeroes the padding musl declares.
        let mut header: libc::cmsghdr = unsafe { mem::zeroed() };
        header.cmsg_len = (HEADER_LEN + mem::size_of::<u16>()) as _;
        header.cmsg_level = libc::SOL_UDP;
        header.cmsg_type = libc::UDP_SEGMENT;
        // SAFETY: the buffer is CONTROL_LEN bytes, more than a cmsghdr (asserted above),
        // and write_unaligned has no alignment requirement.
        unsafe { std::ptr::write_unaligned(buf.0.as_mut_ptr().cast(), header) };
        buf
    }

    /// Sets the segment size of a buffer made by `segment`; returns the msg_controllen to
    /// send it with.
    pub(super) fn set_segment_size(&mut self, size: u16) -> usize {
        self.0[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&size.to_ne_bytes());
        SEGMENT_SPACE
    }

    pub(super) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.0.as_mut_ptr()
    }

    /// The first `len` bytes (what the kernel reported in msg_controllen), never more than
    /// the buffer holds.
    pub(super) fn filled(&self, len: usize) -> &[u8] {
        &self.0[..len.min(CONTROL_LEN)]
    }
}

/// The segment size of a `UDP_GRO` message among `control`, if there is one: the length
/// of every datagram of a coalesced buffer but possibly the last.
pub(super) fn gro_segment_size(control: &[u8]) -> Option<usize> {
    Messages { rest: control }
        .find(|m| m.level == libc::SOL_UDP && m.kind == libc::UDP_GRO)
        .and_then(|m| Some(i32::from_ne_bytes(m.data.get(..4)?.try_into().ok()?)))
        .and_then(|size| usize::try_from(size).ok())
        .filter(|&size| size > 0)
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
        assert_eq!(gro_segment_size(&gro(1420)), Some(1420));
        let other = message(
            libc::SOL_IPV6,
            libc::IPV6_HOPLIMIT,
            &64i32.to_ne_bytes(),
            HEADER_LEN + 4,
        );
        assert_eq!(
            gro_segment_size(&[other.clone(), gro(1200)].concat()),
            Some(1200)
        );
        assert_eq!(gro_segment_size(&other), None);
        assert_eq!(gro_segment_size(&[]), None);
    }

    #[test]
    fn malformed_control_bytes_yield_nothing_and_never_read_past_the_end() {
        let good = gro(1420);
        // Cut anywhere: the message is incomplete, so it is not reported.
        for cut in 0..HEADER_LEN + 4 {
            assert_eq!(gro_segment_size(&good[..cut]), None, "cut at {cut}");
        }
        // The unpadded last message is fine.
        assert_eq!(gro_segment_size(&good[..HEADER_LEN + 4]), Some(1420));
        // Lengths pointing past the buffer, inside the header, or at nothing.
        for declared in [usize::MAX, 1 << 20, good.len() + 1, HEADER_LEN - 1, 0] {
            let bad = message(
                libc::SOL_UDP,
                libc::UDP_GRO,
                &1420i32.to_ne_bytes(),
                declared,
            );
            assert_eq!(gro_segment_size(&bad), None, "cmsg_len {declared}");
        }
        // A GRO message too short for an int, and sizes that make no sense.
        let short = message(libc::SOL_UDP, libc::UDP_GRO, &[1, 2], HEADER_LEN + 2);
        assert_eq!(gro_segment_size(&short), None);
        assert_eq!(gro_segment_size(&gro(0)), None);
        assert_eq!(gro_segment_size(&gro(-5)), None);
    }

    #[test]
    fn segment_message_reads_back() {
        let mut buf = ControlBuf::segment();
        let len = buf.set_segment_size(1452);
        let msg = Messages {
            rest: buf.filled(len),
        }
        .next()
        .unwrap();
        assert_eq!((msg.level, msg.kind), (libc::SOL_UDP, libc::UDP_SEGMENT));
        assert_eq!(msg.data, 1452u16.to_ne_bytes());
    }
}
