//! Sending: datagrams queued in preallocated slots, flushed with sendmmsg, runs of
//! same-size datagrams to one destination as single GSO entries.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::os::fd::AsRawFd;

use nix::sys::socket::SockaddrStorage;

use super::cmsg::{ControlBuf, Source};
use super::slots::Slots;
use super::{for_socket, UdpSocket, MAX_GSO_PAYLOAD, MAX_SEGMENTS};

/// Preallocated send batch.
pub struct SendBatch {
    slots: Slots,
    lens: Vec<usize>,
    dests: Vec<SocketAddr>,
    /// The local address each datagram is to leave from; None: the one the kernel picks.
    sources: Vec<Option<IpAddr>>,
    /// Queued datagrams are `head..tail`; `head` advances as sendmmsg accepts them.
    head: usize,
    tail: usize,
    /// How many datagrams each sendmmsg entry of the current vector carries.
    entry_lens: Vec<usize>,
    send_errors: u64,
    #[cfg_attr(not(test), allow(dead_code, reason = "read by the tests"))]
    pub(super) stats: SendStats,
}

/// What `flush` asked of the kernel, for tests to see whether GSO was used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct SendStats {
    /// sendmmsg calls, including failed ones.
    pub syscalls: u64,
    /// Entries the kernel accepted.
    pub entries: u64,
    /// Accepted entries that carried a UDP_SEGMENT message.
    pub gso_entries: u64,
}

impl SendBatch {
    /// `slots` datagrams of up to `slot_size` bytes each.
    pub fn new(slots: usize, slot_size: usize) -> SendBatch {
        let unspecified = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0));
        SendBatch {
            slots: Slots::new(slots, slot_size, ControlBuf::EMPTY),
            lens: vec![0; slots],
            dests: vec![unspecified; slots],
            sources: vec![None; slots],
            head: 0,
            tail: 0,
            entry_lens: vec![0; slots],
            send_errors: 0,
            stats: SendStats::default(),
        }
    }

    /// No free slot is left. After a flush that returned WouldBlock this stays true until
    /// a later flush has sent everything, even if `len()` is below the slot count.
    pub fn is_full(&self) -> bool {
        self.tail == self.lens.len()
    }

    /// Datagrams queued and not yet sent.
    pub fn len(&self) -> usize {
        self.tail - self.head
    }

    pub fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    /// Buffer of the next free slot, for the caller to encrypt into directly (no copy).
    /// Panics if `is_full()`.
    pub fn next_slot(&mut self) -> &mut [u8] {
        assert!(
            !self.is_full(),
            "SendBatch::next_slot on a full batch; flush first"
        );
        self.slots.buf_mut(self.tail)
    }

    /// Commit the first `len` bytes of the slot returned by next_slot as a datagram to
    /// `to`. Panics if `is_full()` or if `len` exceeds the slot size.
    pub fn commit(&mut self, len: usize, to: SocketAddr) {
        self.commit_from(len, None, to);
    }

    fn commit_from(&mut self, len: usize, src: Option<IpAddr>, to: SocketAddr) {
        assert!(
            !self.is_full(),
            "SendBatch::commit on a full batch; flush first"
        );
        assert!(
            len <= self.slots.size,
            "datagram of {len} bytes exceeds its slot"
        );
        self.lens[self.tail] = len;
        self.dests[self.tail] = to;
        self.sources[self.tail] = src;
        self.tail += 1;
    }

    /// Copy a datagram in (for the rarer control-path outputs). One larger than the slot
    /// size is dropped and counted in `send_errors()`. Panics if `is_full()`.
    pub fn push(&mut self, datagram: &[u8], to: SocketAddr) {
        self.push_from(datagram, None, to);
    }

    /// Like [`SendBatch::push`], leaving from the local address `src` if given: an answer
    /// from the address its question was sent to ([`super::RecvBatch::destination`]) on a
    /// socket bound to a wildcard address. The send then carries an IP_PKTINFO or
    /// IPV6_PKTINFO message naming it (interface 0: the routing table picks the interface);
    /// an address of the other family than `to`'s is ignored (the kernel picks one). An
    /// address that is no longer local makes the kernel refuse the datagram (counted in
    /// `send_errors()`).
    pub fn push_from(&mut self, datagram: &[u8], src: Option<IpAddr>, to: SocketAddr) {
        let Some(slot) = self.next_slot().get_mut(..datagram.len()) else {
            debug_assert!(
                false,
                "datagram of {} bytes exceeds its slot",
                datagram.len()
            );
            self.send_errors += 1;
            return;
        };
        slot.copy_from_slice(datagram);
        self.commit_from(datagram.len(), src, to);
    }

    /// Drops everything still queued (after a flush that found the socket full, for a
    /// sender that would rather lose datagrams than wait); returns how many were dropped.
    pub fn clear(&mut self) -> usize {
        let dropped = self.len();
        (self.head, self.tail) = (0, 0);
        dropped
    }

    /// Datagrams dropped so far because the kernel refused them (or they were oversized).
    pub fn send_errors(&self) -> u64 {
        self.send_errors
    }

    /// sendmmsg everything queued (looping over partial sends). On EAGAIN the unsent rest
    /// stays queued and Err(WouldBlock) is returned: wait for writability and call flush
    /// again. Other per-datagram errors (EHOSTUNREACH, ENETUNREACH, EMSGSIZE, EACCES,
    /// ECONNREFUSED from ICMP, ...) drop that one datagram, count it in `send_errors()`
    /// and flushing continues; only errors meaning the socket itself is unusable (EBADF,
    /// ENOTSOCK, EFAULT) are returned. IPv4 destinations go out as IPv4-mapped IPv6 on
    /// the dual-stack socket.
    ///
    /// With GSO, consecutive datagrams to one destination (from one source) that have the
    /// same length (the last may be shorter) go out as one entry of up to 64 datagrams and 65507 bytes,
    /// which the kernel segments. Such a group fails or waits as a whole: an error drops
    /// and counts all its datagrams, and EAGAIN leaves all of them queued. If the kernel
    /// refuses the segmentation itself (EIO, EINVAL, EOPNOTSUPP, EMSGSIZE) the group is
    /// sent again one datagram at a time, and if that works GSO is off for the socket
    /// from then on.
    pub fn flush(&mut self, sock: &UdpSocket) -> io::Result<()> {
        // Datagrams before this index go out alone: a GSO send of them was just refused.
        let mut alone_until = self.head;
        // Why GSO was refused, while the first datagram of that group is tried alone:
        // whether it gets through tells whether GSO or the destination is to blame.
        let mut refused: Option<io::Error> = None;
        while self.head < self.tail {
            let entries = self.build(sock, alone_until);
            let mut next = 0;
            while next < entries {
                let err = match self.sendmmsg(sock, next..entries) {
                    Ok(n) => {
                        // n == 0 cannot happen for a non-empty vector; never spin on it.
                        for entry in next..next + n.max(1) {
                            self.head += self.entry_lens[entry];
                            self.stats.entries += 1;
                            self.stats.gso_entries += u64::from(self.entry_lens[entry] > 1);
                        }
                        next += n.max(1);
                        if let Some(why) = refused.take() {
                            sock.disable_gso(&why);
                        }
                        continue;
                    }
                    Err(err) => err,
                };
                // sendmmsg fails only when the first entry of the call fails.
                let count = self.entry_lens[next];
                match err.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::EAGAIN) => return Err(err),
                    // The socket itself is unusable: a bug, not a property of one datagram.
                    Some(libc::EBADF | libc::ENOTSOCK | libc::EFAULT) => return Err(err),
                    // The route's device may lack checksum offload (EIO), the segment may
                    // not fit its MTU (EINVAL), ...: lose nothing, retry them one by one.
                    Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP | libc::EMSGSIZE)
                        if count > 1 =>
                    {
                        tracing::trace!(to = %self.dests[self.head], count, %err, "GSO refused");
                        alone_until = self.head + count;
                        refused = Some(err);
                        break;
                    }
                    _ => {
                        tracing::trace!(to = %self.dests[self.head], count, %err, "datagrams dropped");
                        self.send_errors += count as u64;
                        self.head += count;
                        next += 1;
                        // Failing alone too, it is the destination, not GSO, at fault.
                        refused = None;
                    }
                }
            }
        }
        (self.head, self.tail) = (0, 0);
        Ok(())
    }

    /// Aims the headers at the queued datagrams, one entry per GSO group (or per datagram
    /// without GSO, and for those before `alone_until`); returns the number of entries.
    fn build(&mut self, sock: &UdpSocket, alone_until: usize) -> usize {
        let gso = sock.gso_enabled();
        let (mut first, mut entry) = (self.head, 0);
        while first < self.tail {
            // No name for an address this socket cannot reach (IPv6 on the IPv4 fallback):
            // the kernel answers EDESTADDRREQ and it is counted like any refused datagram.
            let to = for_socket(self.dests[first], sock.dual_stack);
            let source = to.and_then(|to| source_for(self.sources[first], to));
            let count = if gso && to.is_some() && first >= alone_until {
                let queued = first..self.tail;
                gso_group_len(
                    &self.lens[queued.clone()],
                    &self.dests[queued.clone()],
                    &self.sources[queued],
                )
            } else {
                1
            };
            let datagrams = first..first + count;
            for i in datagrams.clone() {
                self.slots.aim_iovec(i, self.lens[i]);
            }
            self.slots.names[entry] = SockaddrStorage::from(to.unwrap_or(self.dests[first]));
            let segment = match u16::try_from(self.lens[first]) {
                // A group has at least two datagrams in MAX_GSO_PAYLOAD bytes: this fits.
                Ok(segment) if count > 1 => Some(segment),
                _ => None,
            };
            let control_len = self.slots.controls[entry].write_send(segment, source);
            self.slots
                .aim_header(entry, datagrams, to.is_some(), control_len);
            self.entry_lens[entry] = count;
            first += count;
            entry += 1;
        }
        entry
    }

    /// One sendmmsg(MSG_DONTWAIT) of the entries `entries` built by `build`.
    fn sendmmsg(&mut self, sock: &UdpSocket, entries: Range<usize>) -> io::Result<usize> {
        self.stats.syscalls += 1;
        let hdrs = &mut self.slots.hdrs[entries];
        // SAFETY: `build` aimed each of these headers at its own address and control buffer
        // and at a run of iovecs, each aimed at the queued bytes of its own slot; all of it
        // is owned by `self`, which is mutably borrowed, so none of it moved. The kernel
        // only reads them (and writes `msg_len`).
        let n = unsafe {
            let flags = libc::MSG_DONTWAIT as _;
            libc::sendmmsg(sock.as_raw_fd(), hdrs.as_mut_ptr(), hdrs.len() as _, flags)
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

/// The packet-info message that makes a datagram to `to` (as the socket takes it: IPv4 is
/// IPv4-mapped on the dual-stack socket) leave from `src`; None when there is no `src` or it
/// is of the other family.
fn source_for(src: Option<IpAddr>, to: SocketAddr) -> Option<Source> {
    let mapped = |to: &std::net::SocketAddrV6| to.ip().to_ipv4_mapped().is_some();
    match (src?, to) {
        (IpAddr::V4(ip), SocketAddr::V4(_)) => Some(Source::V4(ip)),
        (IpAddr::V4(ip), SocketAddr::V6(to)) if mapped(&to) => {
            Some(Source::V6(ip.to_ipv6_mapped()))
        }
        (IpAddr::V6(ip), SocketAddr::V6(to)) if !mapped(&to) => Some(Source::V6(ip)),
        _ => None,
    }
}

/// How many of the datagrams at the start of `lens`/`dests`/`sources` (not empty) one GSO
/// send can carry: consecutive datagrams to the same destination from the same source, none
/// empty, all as long as the
/// first except possibly a shorter last one, at most `MAX_SEGMENTS` of them and
/// `MAX_GSO_PAYLOAD` bytes in all. 1 means: send the first one alone.
fn gso_group_len(lens: &[usize], dests: &[SocketAddr], sources: &[Option<IpAddr>]) -> usize {
    let (Some(&segment), Some(to), Some(from)) = (lens.first(), dests.first(), sources.first())
    else {
        return 1;
    };
    // A zero-length first datagram would make a segment size of 0, which means no GSO.
    if segment == 0 {
        return 1;
    }
    let (mut count, mut total) = (1, segment);
    let rest = lens.iter().zip(dests).zip(sources).skip(1);
    for ((&len, dest), source) in rest.take(MAX_SEGMENTS - 1) {
        // An empty last datagram would simply vanish into the segmentation.
        if dest != to
            || source != from
            || len == 0
            || len > segment
            || total + len > MAX_GSO_PAYLOAD
        {
            break;
        }
        (count, total) = (count + 1, total + len);
        if len < segment {
            break;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(lens: &[usize], dests: &[u16]) -> usize {
        let dests: Vec<SocketAddr> = dests
            .iter()
            .map(|&port| SocketAddr::from(([127, 0, 0, 1], port)))
            .collect();
        gso_group_len(lens, &dests, &vec![None; lens.len()])
    }

    #[test]
    fn groups_are_same_size_runs_to_one_destination() {
        assert_eq!(group(&[1000; 10], &[1; 10]), 10);
        // A shorter last datagram joins and ends the group; a longer one does not join.
        assert_eq!(group(&[1000, 1000, 999, 1000], &[1; 4]), 3);
        assert_eq!(group(&[1000, 1000, 1001], &[1; 3]), 2);
        assert_eq!(group(&[1000, 1000, 1000, 1000], &[1, 1, 2, 2]), 2);
        assert_eq!(group(&[500], &[1]), 1);
        // Empty datagrams never join (a segment size of 0 means no segmentation).
        assert_eq!(group(&[0, 0, 0], &[1; 3]), 1);
        assert_eq!(group(&[10, 10, 0], &[1; 3]), 2);
    }

    #[test]
    fn groups_do_not_mix_sources() {
        let dests = [SocketAddr::from(([127, 0, 0, 1], 1)); 4];
        let (a, b) = (
            Some(IpAddr::from([127, 0, 0, 2])),
            Some(IpAddr::from([127, 0, 0, 3])),
        );
        assert_eq!(gso_group_len(&[100; 4], &dests, &[a, a, b, b]), 2);
        assert_eq!(gso_group_len(&[100; 4], &dests, &[None, a, a, a]), 1);
        assert_eq!(gso_group_len(&[100; 4], &dests, &[b; 4]), 4);
    }

    #[test]
    fn groups_respect_the_segment_and_byte_limits() {
        assert_eq!(group(&[100; 100], &[1; 100]), MAX_SEGMENTS);
        // 46 * 1420 = 65320 fits, 47 would not.
        assert_eq!(group(&[1420; 64], &[1; 64]), 46);
        assert_eq!(group(&[1420; 46], &[1; 46]), 46);
        // A tail that would cross the limit stays out.
        let mut lens = vec![1420; 46];
        lens.push(188);
        assert_eq!(group(&lens, &[1; 47]), 46);
        lens[46] = 187;
        assert_eq!(group(&lens, &[1; 47]), 47);
        assert_eq!(group(&[40000, 30000], &[1; 2]), 1);
        assert_eq!(group(&[65535, 65535], &[1; 2]), 1);
    }
}
