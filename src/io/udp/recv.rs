//! Receiving: one recvmmsg into preallocated slots, with GRO buffers split back into the
//! datagrams they hold.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use super::cmsg::{self, ControlBuf, CONTROL_LEN};
use super::slots::Slots;
use super::{from_kernel, UdpSocket, MAX_SEGMENTS};

/// Preallocated receive batch (allocated once at start-up, reused forever: no allocation
/// per packet).
pub struct RecvBatch {
    slots: Slots,
    /// What the last recvmmsg left in each slot it filled; None if unusable (truncated,
    /// no source).
    filled: Vec<Option<Filled>>,
    /// The source of each slot's datagrams.
    sources: Vec<SocketAddr>,
    /// The local address each slot's datagrams were sent to, where the socket reports it.
    destinations: Vec<Option<IpAddr>>,
    /// How far `filled` has been split into `ready`. Only when `ready` runs full (buffers
    /// of more than `MAX_SEGMENTS` datagrams on average) does a `recv` stop short of the
    /// end; the next one then carries on here instead of calling recvmmsg.
    cursor: Cursor,
    /// The usable datagrams of the last `recv`, in arrival order.
    ready: Vec<Datagram>,
    truncated: u64,
    /// Buffers that held more than one datagram (GRO at work).
    #[cfg_attr(not(test), allow(dead_code, reason = "read by the tests"))]
    pub(super) coalesced: u64,
}

#[derive(Clone, Copy)]
struct Filled {
    len: usize,
    /// The length of each datagram in the buffer but possibly the last; at least 1.
    segment: usize,
}

#[derive(Clone, Copy, Default)]
struct Cursor {
    slot: usize,
    offset: usize,
}

#[derive(Clone, Copy)]
struct Datagram {
    slot: usize,
    start: usize,
    len: usize,
}

impl RecvBatch {
    /// `slots` buffers of `slot_size` bytes each per `recv`. On a socket with GRO (see
    /// `UdpSocket::bind`) one buffer may hold many datagrams of up to 64 KiB in all, so
    /// slots should be `MAX_DATAGRAM` bytes: a smaller one drops a whole coalesced buffer.
    pub fn new(slots: usize, slot_size: usize) -> RecvBatch {
        let slots = Slots::new(slots, slot_size, ControlBuf::EMPTY);
        let count = slots.count();
        RecvBatch {
            slots,
            filled: Vec::with_capacity(count),
            sources: vec![SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)); count],
            destinations: vec![None; count],
            cursor: Cursor::default(),
            ready: Vec::with_capacity(count * MAX_SEGMENTS),
            truncated: 0,
            coalesced: 0,
        }
    }

    /// Up to `slots` buffers with one recvmmsg(MSG_DONTWAIT) call; returns how many
    /// datagrams they held (never 0: Err(WouldBlock) when nothing is queued). With GRO
    /// that can be up to 64 per slot.
    ///
    /// Datagrams longer than the slot (MSG_TRUNC) are skipped here, so `get` only ever
    /// returns whole datagrams; they are counted in `truncated()`. If everything one
    /// syscall returned was skipped, it reads again rather than return 0.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.ready.clear();
        loop {
            if self.cursor.slot == self.filled.len() {
                let n = self.recvmmsg(sock.as_raw_fd())?;
                self.inspect(n);
            }
            self.split();
            if !self.ready.is_empty() {
                return Ok(self.ready.len());
            }
        }
    }

    /// The i-th datagram of the last recv and its source (panics unless `i` is below
    /// what `recv` returned). IPv4-mapped IPv6 sources are returned as SocketAddr::V4 so
    /// the rest of the program sees plain IPv4 endpoints.
    pub fn get(&self, i: usize) -> (SocketAddr, &[u8]) {
        let Datagram { slot, start, len } = self.ready[i];
        (
            self.sources[slot],
            &self.slots.buf(slot)[start..start + len],
        )
    }

    /// The local address the i-th datagram of the last recv was sent to, on a socket that
    /// reports it (see [`UdpSocket::report_destinations`]); None otherwise. IPv4-mapped IPv6
    /// is returned as plain IPv4, as in `get`. Panics unless `i` is below what `recv`
    /// returned.
    pub fn destination(&self, i: usize) -> Option<IpAddr> {
        self.destinations[self.ready[i].slot]
    }

    /// Buffers dropped so far because they did not fit into a slot. With GRO one such
    /// buffer may have held several datagrams.
    pub fn truncated(&self) -> u64 {
        self.truncated
    }

    /// Records what recvmmsg left in its first `n` slots.
    fn inspect(&mut self, n: usize) {
        self.filled.clear();
        self.cursor = Cursor::default();
        for slot in 0..n {
            let filled = self.inspect_slot(slot);
            self.filled.push(filled);
        }
    }

    fn inspect_slot(&mut self, slot: usize) -> Option<Filled> {
        let hdr = &self.slots.hdrs[slot];
        // MSG_CTRUNC: the UDP_GRO message may be what was cut, and without it a coalesced
        // buffer would pass for one datagram (or the destination would be missing).
        // CONTROL_LEN leaves room, so this is a bug.
        if hdr.msg_hdr.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            self.truncated += 1;
            let flags = hdr.msg_hdr.msg_flags;
            tracing::trace!(
                slot_size = self.slots.size,
                flags,
                "dropped truncated datagram"
            );
            return None;
        }
        let len = (hdr.msg_len as usize).min(self.slots.size);
        let from = (hdr.msg_hdr.msg_namelen > 0)
            .then(|| from_kernel(&self.slots.names[slot]))
            .flatten()?;
        self.sources[slot] = from;
        let control = cmsg::parse(self.slots.control(slot));
        // GRO merges only datagrams of one flow: one destination holds for the whole buffer.
        self.destinations[slot] = control.destination;
        let segment = match control.gro_segment {
            Some(segment) if segment < len => {
                self.coalesced += 1;
                segment
            }
            // A zero-length datagram still counts once.
            _ => len.max(1),
        };
        Some(Filled { len, segment })
    }

    /// Moves datagrams from `filled` to `ready` until either runs out.
    fn split(&mut self) {
        while let Some(&filled) = self.filled.get(self.cursor.slot) {
            let slot = self.cursor.slot;
            if let Some(Filled { len, segment }) = filled {
                loop {
                    if self.ready.len() == self.ready.capacity() {
                        return;
                    }
                    let start = self.cursor.offset;
                    let part = segment.min(len - start);
                    self.ready.push(Datagram {
                        slot,
                        start,
                        len: part,
                    });
                    self.cursor.offset += part;
                    if self.cursor.offset >= len {
                        break;
                    }
                }
            }
            self.cursor = Cursor {
                slot: slot + 1,
                offset: 0,
            };
        }
    }

    fn recvmmsg(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..self.slots.count() {
            self.slots.aim_iovec(i, self.slots.size);
            self.slots.aim_header(i, i..i + 1, true, CONTROL_LEN);
        }
        let hdrs = &mut self.slots.hdrs;
        loop {
            // SAFETY: the loop above aimed every header at its own iovec, address storage
            // and control buffer and every iovec at its own disjoint slot of `bufs`; all
            // are owned by `self`, which stays mutably borrowed (so unmoved) for the whole
            // call.
            let n = unsafe {
                let flags = libc::MSG_DONTWAIT as _;
                libc::recvmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    hdrs.len() as _,
                    flags,
                    std::ptr::null_mut(),
                )
            };
            match usize::try_from(n) {
                // Never 0 for a non-empty vector; never spin on it either.
                Ok(0) => return Err(io::ErrorKind::WouldBlock.into()),
                Ok(n) => return Ok(n),
                Err(_) => match io::Error::last_os_error() {
                    e if e.kind() == io::ErrorKind::Interrupted => continue,
                    e => return Err(e),
                },
            }
        }
    }
}
