//! One UDP socket for all peers, read and written in batches with recvmmsg/sendmmsg, with
//! UDP segmentation offload (GSO) on send and UDP GRO on receive where the kernel has them.
//!
//! - Send: `SendBatch::flush` turns each run of consecutive datagrams to one destination
//!   that share a length (the last may be shorter) into a single sendmmsg entry carrying a
//!   `UDP_SEGMENT` control message; the kernel (or the NIC) cuts it back into datagrams.
//! - Receive: the socket asks for `UDP_GRO`, so the kernel may hand over several datagrams
//!   from one source as one buffer plus their size; `RecvBatch` splits such buffers again,
//!   so callers see single datagrams either way.
//! - Addresses: a socket bound to a wildcard address can report where each datagram was
//!   sent to (`UdpSocket::report_destinations`, IP_PKTINFO / IPV6_RECVPKTINFO), and a send
//!   can name the address it leaves from (an IP_PKTINFO / IPV6_PKTINFO message), so a server
//!   with several addresses answers from the one it was asked at.
//!
//! All buffers and the kernel-facing arrays (iovec, mmsghdr, sockaddr, control messages)
//! are allocated once; `RecvBatch::recv` and `SendBatch::flush` allocate nothing. The
//! arrays hold raw pointers into the buffers, so they are rebuilt right before each
//! syscall instead of being kept across moves of the structs.

mod cmsg;
#[cfg(test)]
mod destination_tests;
mod recv;
mod send;
mod slots;
#[cfg(test)]
mod tests;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::socket::{self as nix_socket, sockopt, SockFlag, SockType};
use nix::sys::socket::{AddressFamily, SockaddrStorage};

pub use recv::RecvBatch;
pub use send::SendBatch;

/// Slots per batch as the daemon sizes them: 64 datagrams queued per `SendBatch::flush`,
/// 64 buffers per `RecvBatch::recv` (each holding up to 64 datagrams with GRO).
pub const MAX_BATCH: usize = 64;
/// Largest UDP payload. The receive slot size is chosen by the caller (`RecvBatch::new`);
/// with GRO the kernel fills a slot with up to this many bytes of coalesced datagrams, so
/// receive slots should be this big.
pub const MAX_DATAGRAM: usize = 65535;

/// Socket buffer size asked for: room for bursts at multi-Gbit/s between two wake-ups.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Most datagrams one GSO send carries and one GRO buffer is expected to hold: the
/// kernel's UDP_MAX_SEGMENTS since UDP GSO appeared in 4.18. Kernels since 2024 take 128
/// (6.18 does), but older ones refuse more than 64 with EINVAL, and kernel GRO never
/// merges more than 64 (UDP_GRO_CNT_MAX). Local senders can still hand a GRO socket up to
/// 128 per buffer over loopback; `RecvBatch` copes with that too.
const MAX_SEGMENTS: usize = 64;

/// Most payload bytes one GSO send carries: the largest IPv4 UDP payload (65535 minus the
/// IPv4 and UDP headers). IPv6 would allow 65527, but one limit for both keeps groups
/// valid whichever family the destination has.
const MAX_GSO_PAYLOAD: usize = 65507;

/// The daemon's UDP socket: dual-stack IPv6 when possible, non-blocking.
pub struct UdpSocket {
    socket: std::net::UdpSocket,
    /// True for an AF_INET6 socket with IPV6_V6ONLY=0; false for the IPv4-only fallback.
    dual_stack: bool,
    /// Sends may carry UDP_SEGMENT: the kernel knows the option and has not refused it.
    /// Atomic only because `SendBatch::flush` gets `&UdpSocket`; never contended.
    gso: AtomicBool,
}

impl UdpSocket {
    /// Dual-stack: bind [::]:port with IPV6_V6ONLY=0 so IPv4 and IPv6 peers both work;
    /// port 0 = any. Non-blocking. Tries to raise SO_RCVBUF/SO_SNDBUF to 4 MiB
    /// (SO_RCVBUFFORCE/SO_SNDBUFFORCE first, then the plain options; never fails on
    /// these). If binding [::] fails because IPv6 is disabled, falls back to 0.0.0.0:port.
    ///
    /// Also turns on UDP GRO (Linux 5.0+) and checks that the kernel knows UDP GSO
    /// (4.18+); without either the socket simply carries one datagram per entry.
    pub fn bind(port: u16) -> io::Result<UdpSocket> {
        match UdpSocket::bind_addr(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))) {
            // EAFNOSUPPORT: booted with ipv6.disable=1. EADDRNOTAVAIL: no usable IPv6.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
                ) =>
            {
                tracing::warn!("IPv6 unavailable ({e}); using an IPv4-only UDP socket");
                UdpSocket::bind_addr(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
            }
            result => result,
        }
    }

    /// Raises the buffers to what [`UdpSocket::bind`] gives (a spare socket that now carries
    /// a peer's traffic).
    pub fn raise_buffers(&self) {
        raise_buffer(&self.socket, sockopt::RcvBufForce, sockopt::RcvBuf);
        raise_buffer(&self.socket, sockopt::SndBufForce, sockopt::SndBuf);
    }

    /// A spare socket (birthday probing, see `node::birthday`): dual-stack on any port, with
    /// the kernel's default buffers — hundreds may be open at once, and only the one a peer's
    /// path ends up on carries traffic.
    pub fn bind_spare() -> io::Result<UdpSocket> {
        let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0));
        match bind_socket(v6, true) {
            Ok(fd) => Ok(UdpSocket::with_offloads(fd, v6, true)),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
                ) =>
            {
                let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
                Ok(UdpSocket::with_offloads(bind_socket(v4, false)?, v4, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Binds exactly `addr` (port 0 = any), so replies leave from the address peers sent to
    /// — what a server on a host with several addresses needs. The IPv6 wildcard is made
    /// dual-stack explicitly (the default follows the net.ipv6.bindv6only sysctl); any other
    /// IPv6 address serves IPv6 only. Buffers and offloads as for [`UdpSocket::bind`].
    pub fn bind_addr(addr: SocketAddr) -> io::Result<UdpSocket> {
        let dual_stack = matches!(addr, SocketAddr::V6(v6) if v6.ip().is_unspecified());
        let fd = bind_socket(addr, dual_stack)?;
        raise_buffer(&fd, sockopt::RcvBufForce, sockopt::RcvBuf);
        raise_buffer(&fd, sockopt::SndBufForce, sockopt::SndBuf);
        Ok(UdpSocket::with_offloads(fd, addr, dual_stack))
    }

    /// The socket on `fd` (bound to `addr`), with GSO when the kernel knows it and GRO on.
    fn with_offloads(fd: OwnedFd, addr: SocketAddr, dual_stack: bool) -> UdpSocket {
        // A kernel that does not know UDP_SEGMENT would not refuse the control message but
        // ignore it and send one oversized datagram, so ask before ever using it. Reading
        // the option leaves the socket's default segment size (0: none) alone.
        let gso = nix_socket::getsockopt(&fd, sockopt::UdpGsoSegment).is_ok();
        // Without GRO no UDP_GRO message ever comes and every buffer is one datagram.
        let gro = nix_socket::setsockopt(&fd, sockopt::UdpGroSegment, &true).is_ok();
        allow_fragmentation(&fd, addr);
        tracing::debug!(gso, gro, "UDP offloads");
        UdpSocket {
            socket: fd.into(),
            dual_stack,
            gso: AtomicBool::new(gso),
        }
    }

    /// Asks the kernel to report the local address each datagram was sent to
    /// ([`RecvBatch::destination`]), so that answers can leave from it
    /// ([`SendBatch::push_from`]). A socket bound to a wildcard address on a host with several
    /// addresses otherwise answers from whichever one the routing table prefers, and a NAT in
    /// front of the asker drops that. Returns whether reports are on: a socket bound to one
    /// address needs none of this (its answers leave from that address), so it is left alone.
    /// On the dual-stack socket IPv4 datagrams are reported too (IPv4-mapped by the kernel).
    pub fn report_destinations(&self) -> io::Result<bool> {
        let local = self.local_addr()?;
        if !local.ip().is_unspecified() {
            return Ok(false);
        }
        match local {
            SocketAddr::V6(_) => {
                nix_socket::setsockopt(&self.socket, sockopt::Ipv6RecvPacketInfo, &true)?
            }
            SocketAddr::V4(_) => {
                nix_socket::setsockopt(&self.socket, sockopt::Ipv4PacketInfo, &true)?
            }
        }
        Ok(true)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
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

    fn gso_enabled(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// For good: a GSO send was refused (`why`) while the same datagram went out alone.
    fn disable_gso(&self, why: &io::Error) {
        if self.gso.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                "UDP segmentation offload refused ({why}); sending datagrams one by one \
                 from now on"
            );
        }
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

fn bind_socket(addr: SocketAddr, dual_stack: bool) -> io::Result<OwnedFd> {
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    match addr {
        SocketAddr::V6(v6) => {
            let fd = nix_socket::socket(AddressFamily::Inet6, SockType::Datagram, flags, None)?;
            nix_socket::setsockopt(&fd, sockopt::Ipv6V6Only, &!dual_stack)?;
            nix_socket::bind(fd.as_raw_fd(), &nix_socket::SockaddrIn6::from(v6))?;
            Ok(fd)
        }
        SocketAddr::V4(v4) => {
            let fd = nix_socket::socket(AddressFamily::Inet, SockType::Datagram, flags, None)?;
            nix_socket::bind(fd.as_raw_fd(), &nix_socket::SockaddrIn::from(v4))?;
            Ok(fd)
        }
    }
}

/// Sends IPv4 datagrams without DF, as kernel WireGuard does, so a router whose next link is
/// too small for one (PPPoE, mobile, a tunnel: 1280 bytes where a full tunnel packet is
/// 1440) fragments it instead of dropping it. With DF, delivery depends on the router's ICMP
/// "fragmentation needed" reaching us, and where it is filtered every full-size packet is
/// lost while pings and handshakes still pass. (GSO batches already went without DF: the
/// kernel sets it only on datagrams within the path MTU it knows.) Best effort: without it
/// the kernel's default (DF, learning the path MTU from ICMP) still works where ICMP does.
/// IPv6 routers never fragment; there the kernel fragments to the path MTU it has learnt.
fn allow_fragmentation(fd: &OwnedFd, addr: SocketAddr) {
    // The dual-stack socket takes IPv4-level options for its IPv4 traffic.
    let ipv4 = addr.is_ipv4() || addr.ip().is_unspecified();
    if ipv4 {
        let value: libc::c_int = libc::IP_PMTUDISC_DONT;
        // SAFETY: the descriptor is open (borrowed for the call), and the option value is a
        // c_int that lives across the call, with its size passed alongside.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                std::ptr::from_ref(&value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            tracing::warn!("cannot clear DF on the UDP socket ({e}): full-size packets rely on ICMP across small links");
        }
    }
}

/// The *FORCE option ignores net.core.[rw]mem_max but needs CAP_NET_ADMIN; the plain one
/// is capped by that sysctl. A smaller buffer only costs drops under bursts, so no error.
fn raise_buffer<F, P>(fd: &impl AsFd, force: F, plain: P)
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
