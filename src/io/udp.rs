//! One UDP socket for all peers, read and written in batches with recvmmsg/sendmmsg.
//!
//! All buffers and the kernel-facing arrays (iovec, mmsghdr, sockaddr) are allocated
//! once; `RecvBatch::recv` and `SendBatch::flush` allocate nothing. The arrays hold raw
//! pointers into the buffers, so they are rebuilt right before each syscall instead of
//! being kept across moves of the structs.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{self as nix_socket, sockopt, SockFlag, SockType};
use nix::sys::socket::{AddressFamily, SockaddrStorage};

/// Most datagrams handled by one `recv`/`flush` syscall.
pub const MAX_BATCH: usize = 64;
/// Largest UDP payload; the receive slot size is chosen by the caller (`RecvBatch::new`).
pub const MAX_DATAGRAM: usize = 65535;

/// Socket buffer size asked for: room for bursts at multi-Gbit/s between two wake-ups.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// The daemon's UDP socket: dual-stack IPv6 when possible, non-blocking.
pub struct UdpSocket {
    socket: std::net::UdpSocket,
    /// True for an AF_INET6 socket with IPV6_V6ONLY=0; false for the IPv4-only fallback.
    dual_stack: bool,
}

impl UdpSocket {
    /// Dual-stack: bind [::]:port with IPV6_V6ONLY=0 so IPv4 and IPv6 peers both work;
    /// port 0 = any. Non-blocking. Tries to raise SO_RCVBUF/SO_SNDBUF to 4 MiB
    /// (SO_RCVBUFFORCE/SO_SNDBUFFORCE first, then the plain options; never fails on
    /// these). If binding [::] fails because IPv6 is disabled, falls back to 0.0.0.0:port.
    pub fn bind(port: u16) -> io::Result<UdpSocket> {
        let (fd, dual_stack) = match bind_socket(port, true) {
            Ok(fd) => (fd, true),
            // EAFNOSUPPORT: booted with ipv6.disable=1. EADDRNOTAVAIL: no usable IPv6.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
                ) =>
            {
                tracing::warn!("IPv6 unavailable ({e}); using an IPv4-only UDP socket");
                (bind_socket(port, false)?, false)
            }
            Err(e) => return Err(e),
        };
        raise_buffer(&fd, sockopt::RcvBufForce, sockopt::RcvBuf);
        raise_buffer(&fd, sockopt::SndBufForce, sockopt::SndBuf);
        Ok(UdpSocket {
            socket: fd.into(),
            dual_stack,
        })
    }

    pub fn local_port(&self) -> u16 {
        self.socket.local_addr().map_or(0, |a| a.port())
    }

    /// One datagram outside any batch (control path); Err(WouldBlock) if the send buffer
    /// is full. IPv4 destinations are handled as in `SendBatch::flush`.
    pub fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        let to = for_socket(to, self.dual_stack)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))?;
        self.socket.send_to(buf, to)
    }
}

/// The descriptor stays open and unchanged for the lifetime of the `UdpSocket`, which is
/// what `tokio::io::unix::AsyncFd::register` (unsafe since tokio 1.54) requires.
impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl AsFd for UdpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// Preallocated receive batch (allocated once at start-up, reused forever: no allocation
/// per packet).
pub struct RecvBatch {
    slots: Slots,
    /// The usable datagrams of the last `recv`, in arrival order: (slot, length, source).
    ready: Vec<(usize, usize, SocketAddr)>,
    truncated: u64,
}

impl RecvBatch {
    /// `slots` datagrams of up to `slot_size` bytes each per `recv`.
    pub fn new(slots: usize, slot_size: usize) -> RecvBatch {
        let slots = Slots::new(slots, slot_size);
        let ready = Vec::with_capacity(slots.hdrs.len());
        RecvBatch {
            slots,
            ready,
            truncated: 0,
        }
    }

    /// One recvmmsg(MSG_DONTWAIT) call filling up to `slots` datagrams; returns how many
    /// (never 0: Err(WouldBlock) when nothing is queued).
    ///
    /// Datagrams longer than the slot (MSG_TRUNC) are skipped here, so `get` only ever
    /// returns whole datagrams; they are counted in `truncated()`. If everything one
    /// syscall returned was skipped, it reads again rather than return 0.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.ready.clear();
        while self.ready.is_empty() {
            let n = self.recvmmsg(sock.as_raw_fd())?;
            for (slot, hdr) in self.slots.hdrs[..n].iter().enumerate() {
                if hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                    self.truncated += 1;
                    tracing::trace!(slot_size = self.slots.size, "dropped truncated datagram");
                    continue;
                }
                let name = &self.slots.names[slot];
                let from = (hdr.msg_hdr.msg_namelen > 0)
                    .then(|| from_kernel(name))
                    .flatten();
                if let Some(from) = from {
                    self.ready.push((slot, hdr.msg_len as usize, from));
                }
            }
        }
        Ok(self.ready.len())
    }

    /// The i-th datagram of the last recv and its source (panics unless `i` is below
    /// what `recv` returned). IPv4-mapped IPv6 sources are returned as SocketAddr::V4 so
    /// the rest of the program sees plain IPv4 endpoints.
    pub fn get(&self, i: usize) -> (SocketAddr, &[u8]) {
        let (slot, len, from) = self.ready[i];
        (from, &self.slots.buf(slot)[..len])
    }

    /// Datagrams dropped so far because they did not fit into a slot.
    pub fn truncated(&self) -> u64 {
        self.truncated
    }

    fn recvmmsg(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..self.slots.hdrs.len() {
            self.slots.point(i, self.slots.size, true);
        }
        let hdrs = &mut self.slots.hdrs;
        loop {
            // SAFETY: `point` aimed every header at its own iovec and address storage and
            // every iovec at its own disjoint slot of `bufs`; all are owned by `self`,
            // which stays mutably borrowed (so unmoved) for the whole call.
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
                Ok(n) => return Ok(n),
                Err(_) => match io::Error::last_os_error() {
                    e if e.kind() == io::ErrorKind::Interrupted => continue,
                    e => return Err(e),
                },
            }
        }
    }
}

/// Preallocated send batch.
pub struct SendBatch {
    slots: Slots,
    lens: Vec<usize>,
    dests: Vec<SocketAddr>,
    /// Queued datagrams are `head..tail`; `head` advances as sendmmsg accepts them.
    head: usize,
    tail: usize,
    send_errors: u64,
}

impl SendBatch {
    /// `slots` datagrams of up to `slot_size` bytes each.
    pub fn new(slots: usize, slot_size: usize) -> SendBatch {
        let unspecified = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0));
        SendBatch {
            slots: Slots::new(slots, slot_size),
            lens: vec![0; slots],
            dests: vec![unspecified; slots],
            head: 0,
            tail: 0,
            send_errors: 0,
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
        self.tail += 1;
    }

    /// Copy a datagram in (for the rarer control-path outputs). One larger than the slot
    /// size is dropped and counted in `send_errors()`. Panics if `is_full()`.
    pub fn push(&mut self, datagram: &[u8], to: SocketAddr) {
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
        self.commit(datagram.len(), to);
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
    pub fn flush(&mut self, sock: &UdpSocket) -> io::Result<()> {
        for i in self.head..self.tail {
            // No name for an address this socket cannot reach (IPv6 on the IPv4 fallback):
            // the kernel answers EDESTADDRREQ and it is counted like any refused datagram.
            let to = for_socket(self.dests[i], sock.dual_stack);
            let has_name = to.is_some();
            self.slots.names[i] = SockaddrStorage::from(to.unwrap_or(self.dests[i]));
            self.slots.point(i, self.lens[i], has_name);
        }
        while self.head < self.tail {
            let pending = &mut self.slots.hdrs[self.head..self.tail];
            // SAFETY: the loop above aimed each pending header at its own iovec and
            // address and each iovec at its slot; `self` is mutably borrowed, so none of
            // it moved. The kernel only reads them (and writes `msg_len`).
            let n = unsafe {
                let flags = libc::MSG_DONTWAIT as _;
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    pending.as_mut_ptr(),
                    pending.len() as _,
                    flags,
                )
            };
            if let Ok(n) = usize::try_from(n) {
                // n == 0 cannot happen for a non-empty vector; never spin on it anyway.
                self.head += n.max(1);
                continue;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) => return Err(err),
                // The socket itself is unusable: a bug, not a property of one datagram.
                Some(libc::EBADF | libc::ENOTSOCK | libc::EFAULT) => return Err(err),
                // sendmmsg fails only when the first datagram of the call fails.
                _ => {
                    tracing::trace!(to = %self.dests[self.head], %err, "datagram dropped");
                    self.send_errors += 1;
                    self.head += 1;
                }
            }
        }
        (self.head, self.tail) = (0, 0);
        Ok(())
    }
}

/// The datagram buffers of a batch plus the arrays the kernel reads: one mmsghdr, iovec
/// and address per slot.
struct Slots {
    size: usize,
    bufs: Vec<u8>,
    names: Vec<SockaddrStorage>,
    iovecs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iovecs`/`hdrs` are only (re)written by `point` right before
// a syscall made through `&mut self` and are never dereferenced by Rust code; they do not
// make the buffers shared, so moving or sharing a Slots across threads is sound.
unsafe impl Send for Slots {}
unsafe impl Sync for Slots {}

impl Slots {
    fn new(count: usize, size: usize) -> Slots {
        assert!(
            count > 0 && size > 0,
            "a batch needs at least one non-empty slot"
        );
        let iovec = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Slots {
            size,
            bufs: vec![0; count * size],
            names: vec![SockaddrStorage::from(SocketAddr::from(([0; 4], 0))); count],
            iovecs: vec![iovec; count],
            // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths), which also
            // covers the padding fields some libcs have.
            hdrs: vec![unsafe { mem::zeroed() }; count],
        }
    }

    fn buf(&self, i: usize) -> &[u8] {
        &self.bufs[i * self.size..(i + 1) * self.size]
    }

    fn buf_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.bufs[i * self.size..(i + 1) * self.size]
    }

    /// Aims header `i` at the first `len` bytes of slot `i` and, if `with_name`, at the
    /// address storage `i` (the source for recvmmsg, the destination for sendmmsg).
    fn point(&mut self, i: usize, len: usize, with_name: bool) {
        self.iovecs[i] = libc::iovec {
            iov_base: self.buf_mut(i).as_mut_ptr().cast(),
            iov_len: len,
        };
        let hdr = &mut self.hdrs[i].msg_hdr;
        hdr.msg_name = if with_name {
            (&mut self.names[i] as *mut SockaddrStorage).cast()
        } else {
            std::ptr::null_mut()
        };
        hdr.msg_namelen = if with_name {
            mem::size_of::<SockaddrStorage>() as _
        } else {
            0
        };
        hdr.msg_iov = &mut self.iovecs[i];
        hdr.msg_iovlen = 1;
        hdr.msg_control = std::ptr::null_mut();
        hdr.msg_controllen = 0;
        hdr.msg_flags = 0;
    }
}

/// `addr` in the form the socket takes: IPv4 as IPv4-mapped IPv6 on the dual-stack
/// socket, IPv4-mapped IPv6 as plain IPv4 on the fallback; None if it cannot reach it.
fn for_socket(addr: SocketAddr, dual_stack: bool) -> Option<SocketAddr> {
    match (addr, dual_stack) {
        (SocketAddr::V4(v4), true) => Some((v4.ip().to_ipv6_mapped(), v4.port()).into()),
        (SocketAddr::V6(v6), false) => v6.ip().to_ipv4_mapped().map(|ip| (ip, v6.port()).into()),
        (addr, _) => Some(addr),
    }
}

/// A source address the kernel wrote, with IPv4-mapped IPv6 turned into plain IPv4.
fn from_kernel(name: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(sin) = name.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*sin)));
    }
    let v6 = SocketAddrV6::from(*name.as_sockaddr_in6()?);
    Some(match v6.ip().to_ipv4_mapped() {
        Some(ip) => SocketAddr::from((ip, v6.port())),
        None => SocketAddr::V6(v6),
    })
}

fn bind_socket(port: u16, ipv6: bool) -> io::Result<OwnedFd> {
    let family = if ipv6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = nix_socket::socket(family, SockType::Datagram, flags, None)?;
    if ipv6 {
        // Explicitly, because the default follows the net.ipv6.bindv6only sysctl.
        nix_socket::setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
        let any = SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0);
        nix_socket::bind(fd.as_raw_fd(), &nix_socket::SockaddrIn6::from(any))?;
    } else {
        let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
        nix_socket::bind(fd.as_raw_fd(), &nix_socket::SockaddrIn::from(any))?;
    }
    Ok(fd)
}

/// The *FORCE option ignores net.core.[rw]mem_max but needs CAP_NET_ADMIN; the plain one
/// is capped by that sysctl. A smaller buffer only costs drops under bursts, so no error.
fn raise_buffer<F, P>(fd: &OwnedFd, force: F, plain: P)
where
    F: nix_socket::SetSockOpt<Val = usize>,
    P: nix_socket::SetSockOpt<Val = usize> + nix_socket::GetSockOpt<Val = usize> + Copy,
{
    if nix_socket::setsockopt(fd, force, &SOCKET_BUFFER_BYTES).is_err() {
        let _ = nix_socket::setsockopt(fd, plain, &SOCKET_BUFFER_BYTES);
    }
    // The kernel reports twice the usable size (it counts its bookkeeping overhead).
    tracing::debug!(bytes = ?nix_socket::getsockopt(fd, plain), "UDP socket buffer");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::test_support::{in_new_netns, ip_here, privileged_or_skip, run_here};
    use std::time::{Duration, Instant};

    fn loopback6(sock: &UdpSocket) -> SocketAddr {
        SocketAddr::from((Ipv6Addr::LOCALHOST, sock.local_port()))
    }

    /// Waits until `sock` is readable and the kernel has had time to queue a burst.
    fn settle(sock: &UdpSocket) {
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        assert_eq!(
            unsafe { libc::poll(&mut pfd, 1, 2000) },
            1,
            "nothing arrived"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Receives until `want` datagrams have arrived or a second has passed.
    fn recv_all(
        sock: &UdpSocket,
        batch: &mut RecvBatch,
        want: usize,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(1);
        while got.len() < want && Instant::now() < deadline {
            match batch.recv(sock) {
                Ok(n) => got.extend((0..n).map(|i| (batch.get(i).0, batch.get(i).1.to_vec()))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
        got
    }

    fn payload(i: usize) -> Vec<u8> {
        (0..1 + (i * 97) % 1400)
            .map(|j| (i * 7 + j) as u8)
            .collect()
    }

    #[test]
    fn full_batch_crosses_in_one_flush_and_one_recv() {
        let (a, b) = (UdpSocket::bind(0).unwrap(), UdpSocket::bind(0).unwrap());
        let mut out = SendBatch::new(MAX_BATCH, 1500);
        for i in 0..MAX_BATCH {
            let p = payload(i);
            if i % 2 == 0 {
                out.next_slot()[..p.len()].copy_from_slice(&p);
                out.commit(p.len(), loopback6(&b));
            } else {
                out.push(&p, loopback6(&b));
            }
        }
        assert!(out.is_full() && out.len() == MAX_BATCH);
        out.flush(&a).unwrap();
        assert!(out.is_empty() && !out.is_full());
        assert_eq!(out.send_errors(), 0);

        settle(&b);
        let mut inb = RecvBatch::new(MAX_BATCH, 1500);
        assert_eq!(
            inb.recv(&b).unwrap(),
            MAX_BATCH,
            "one recvmmsg should take the whole batch"
        );
        for i in 0..MAX_BATCH {
            let (from, data) = inb.get(i);
            assert_eq!(from, loopback6(&a));
            assert_eq!(data, payload(i), "datagram {i}");
        }
        assert_eq!(inb.recv(&b).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn ipv4_peers_are_plain_v4_both_ways() {
        let (a, b) = (UdpSocket::bind(0).unwrap(), UdpSocket::bind(0).unwrap());
        let b4 = SocketAddr::from(([127, 0, 0, 1], b.local_port()));
        let mut out = SendBatch::new(4, 100);
        out.push(b"batched", b4);
        out.flush(&a).unwrap();
        a.send_to(b"single", b4).unwrap();
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        plain.send_to(b"from v4-only", b4).unwrap();

        let got = recv_all(&b, &mut RecvBatch::new(8, 100), 3);
        let a4 = SocketAddr::from(([127, 0, 0, 1], a.local_port()));
        assert_eq!(got[0], (a4, b"batched".to_vec()));
        assert_eq!(got[1], (a4, b"single".to_vec()));
        assert_eq!(
            got[2],
            (plain.local_addr().unwrap(), b"from v4-only".to_vec())
        );

        // And the reply path: a plain IPv4 endpoint as destination reaches a v4-only peer.
        out.push(b"reply", plain.local_addr().unwrap());
        out.flush(&b).unwrap();
        let mut buf = [0u8; 16];
        plain
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let (n, from) = plain.recv_from(&mut buf).unwrap();
        assert_eq!(
            (&buf[..n], from),
            (
                &b"reply"[..],
                SocketAddr::from(([127, 0, 0, 1], b.local_port()))
            )
        );
    }

    #[test]
    fn failing_datagrams_are_dropped_and_counted_not_wedged() {
        let (a, b) = (UdpSocket::bind(0).unwrap(), UdpSocket::bind(0).unwrap());
        let mut out = SendBatch::new(8, MAX_DATAGRAM);
        out.push(b"one", loopback6(&b));
        out.push(b"port zero", SocketAddr::from((Ipv6Addr::LOCALHOST, 0))); // EINVAL
        out.push(b"two", loopback6(&b));
        let too_big = vec![0u8; MAX_DATAGRAM];
        out.push(&too_big, SocketAddr::from(([127, 0, 0, 1], b.local_port()))); // EMSGSIZE
        out.push(b"three", loopback6(&b));
        out.flush(&a).unwrap();
        assert_eq!(out.send_errors(), 2);
        assert!(out.is_empty());
        let got: Vec<_> = recv_all(&b, &mut RecvBatch::new(8, 100), 3)
            .into_iter()
            .map(|g| g.1)
            .collect();
        assert_eq!(got, [&b"one"[..], b"two", b"three"]);
    }

    #[test]
    fn unreachable_destination_does_not_stop_the_batch() {
        if !privileged_or_skip("unreachable_destination_does_not_stop_the_batch") {
            return;
        }
        // A namespace with only `lo`, so "unreachable" is certain and nothing leaves the host.
        in_new_netns(|| {
            ip_here(&["link", "set", "lo", "up"]);
            let (a, b) = (UdpSocket::bind(0).unwrap(), UdpSocket::bind(0).unwrap());
            let mut out = SendBatch::new(8, 100);
            out.push(b"before", loopback6(&b));
            out.push(b"x", "[2001:db8::1]:9".parse().unwrap()); // ENETUNREACH
            out.push(b"x", "192.0.2.1:9".parse().unwrap()); // ENETUNREACH
            out.push(b"after", loopback6(&b));
            out.flush(&a).unwrap();
            assert_eq!(out.send_errors(), 2);
            let got: Vec<_> = recv_all(&b, &mut RecvBatch::new(8, 100), 2)
                .into_iter()
                .map(|g| g.1)
                .collect();
            assert_eq!(got, [&b"before"[..], b"after"]);
        });
    }

    #[test]
    fn full_send_buffer_keeps_the_rest_queued_for_the_next_flush() {
        if !privileged_or_skip("full_send_buffer_keeps_the_rest_queued_for_the_next_flush") {
            return;
        }
        in_new_netns(|| {
            ip_here(&["link", "set", "lo", "up"]);
            // A nearly stopped qdisc holds the datagrams, which stay charged to the sender's
            // (small) send buffer, so sendmmsg soon reports EAGAIN.
            let tbf = ["rate", "1kbit", "burst", "10kb", "limit", "10mb"];
            run_here(
                "tc",
                &[&["qdisc", "add", "dev", "lo", "root", "tbf"][..], &tbf].concat(),
            );
            let (a, b) = (UdpSocket::bind(0).unwrap(), UdpSocket::bind(0).unwrap());
            nix_socket::setsockopt(&a.socket, sockopt::SndBuf, &4096).unwrap();
            let mut out = SendBatch::new(MAX_BATCH, 1000);
            for i in 0..MAX_BATCH {
                out.push(&[i as u8; 1000], loopback6(&b));
            }
            let err = out.flush(&a).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
            let unsent = out.len();
            assert!(unsent > 0 && unsent < MAX_BATCH, "{unsent} unsent");
            assert!(out.is_full() && out.send_errors() == 0);

            // Dropping the qdisc frees the held datagrams; the rest goes out in order.
            run_here("tc", &["qdisc", "del", "dev", "lo", "root"]);
            out.flush(&a).unwrap();
            assert!(out.is_empty() && out.send_errors() == 0);
            // Datagrams the qdisc let through or dropped come first or not at all; the
            // unsent tail must arrive complete and in order.
            let got = recv_all(&b, &mut RecvBatch::new(MAX_BATCH, 1000), MAX_BATCH);
            let firsts: Vec<u8> = got.iter().map(|(_, d)| d[0]).collect();
            let expected: Vec<u8> = (MAX_BATCH - unsent..MAX_BATCH).map(|i| i as u8).collect();
            assert!(firsts.ends_with(&expected), "{firsts:?}, {unsent} unsent");
        });
    }

    #[test]
    fn truncated_datagrams_are_skipped_and_counted() {
        let (a, b) = (UdpSocket::bind(0).unwrap(), UdpSocket::bind(0).unwrap());
        a.send_to(&[1; 200], loopback6(&b)).unwrap();
        a.send_to(&[2; 64], loopback6(&b)).unwrap();
        settle(&b);
        let mut inb = RecvBatch::new(4, 100);
        assert_eq!(inb.recv(&b).unwrap(), 1);
        assert_eq!(inb.get(0).1, [2; 64]);
        assert_eq!(inb.truncated(), 1);
        // A batch holding only truncated datagrams yields WouldBlock, never Ok(0).
        a.send_to(&[3; 200], loopback6(&b)).unwrap();
        settle(&b);
        assert_eq!(inb.recv(&b).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert_eq!(inb.truncated(), 2);
    }

    #[test]
    fn bind_is_dual_stack_nonblocking_with_big_buffers() {
        let sock = UdpSocket::bind(0).unwrap();
        assert!(sock.dual_stack && sock.local_port() != 0);
        let fd = sock.as_raw_fd();
        // SAFETY: fcntl(F_GETFL) on an open fd.
        assert_ne!(
            unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_NONBLOCK,
            0
        );
        let v6only = nix_socket::getsockopt(&sock.socket, sockopt::Ipv6V6Only).unwrap();
        assert!(!v6only);
        // Without CAP_NET_ADMIN the size is capped by net.core.rmem_max, so only assert
        // the full 4 MiB (reported doubled) when running as root.
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let rcv = nix_socket::getsockopt(&sock.socket, sockopt::RcvBuf).unwrap();
            assert!(rcv >= 2 * SOCKET_BUFFER_BYTES, "SO_RCVBUF {rcv}");
        }
    }
}
