//! The layer-3 TUN device: one descriptor, one IP packet per read(2)/write(2), or, with
//! offloads, one virtio-net header plus packet (possibly a 64 KiB TCP super-segment) each.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use super::offload::{MAX_IPV6_PACKET, VNET_HDR_LEN};

mod access;

pub use access::{Cause as RefusalCause, Refusal, CLONE_DEVICE};

/// The smallest read buffer for a TUN with a virtio-net header: the header plus the largest
/// IPv6 packet. A TSO super-segment is at most 64 KiB (the device's GSO limit), but the
/// kernel silently truncates a read into a shorter buffer, so leave no doubt.
pub const OFFLOAD_READ_LEN: usize = VNET_HDR_LEN + MAX_IPV6_PACKET;

/// A TUN interface owned by this process. The kernel removes the interface when the
/// descriptor is closed (the device is not persistent), so dropping this is the cleanup.
pub struct TunDevice {
    device: ::tun::Device,
    name: String,
    vnet_hdr: bool,
    offload: bool,
}

/// Why a TUN device could not be created, phrased for the person running the daemon.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// The device's mode, a missing CAP_NET_ADMIN or a device policy: [`Refusal`] names
    /// which, from what it finds, and the fix.
    #[error("{0}")]
    PermissionDenied(Refusal),
    #[error(
        "/dev/net/tun does not exist — load the tun module (`modprobe tun`) or, in a container, pass the device through"
    )]
    NoDevice,
    #[error("interface {0} is already in use (is another pilotd running?)")]
    Busy(String),
    /// Display is the context only; the OS error is the `source()` (anyhow's `{:#}` or
    /// `Debug` prints both).
    #[error("{0}")]
    Other(String, #[source] io::Error),
}

impl TunDevice {
    /// Layer-3 TUN, no packet-information header (IFF_NO_PI), non-blocking fd, NOT brought
    /// up and no address set through the tun crate (addresses are done via netlink; the
    /// tun crate's IPv6 path fails with EINVAL). The interface disappears when the device
    /// is dropped (not persistent).
    pub fn create(name: &str) -> Result<TunDevice, TunError> {
        Self::open(name, false)
    }

    /// Like [`TunDevice::create`], but with a virtio-net header (IFF_VNET_HDR) on every read
    /// and write, and with checksum and TCPv6 segmentation offload (TUNSETOFFLOAD with
    /// TUN_F_CSUM | TUN_F_TSO6 | TUN_F_TSO_ECN): the kernel then hands us TCP super-segments
    /// of up to 64 KiB whose checksums are still to be finished, and accepts the same back.
    ///
    /// With this device, [`TunDevice::recv`] returns `VNET_HDR_LEN` header bytes then the
    /// packet, into a buffer of at least [`OFFLOAD_READ_LEN`] bytes, and every buffer given
    /// to [`TunDevice::send`] must start with a header (`VirtioNetHdr::NONE` for a plain
    /// packet). Use `offload::segments` and `offload::Coalescer` for both directions.
    ///
    /// IFF_VNET_HDR cannot be taken back once set, so if TUNSETOFFLOAD fails (a kernel or
    /// sandbox without it) the device still has headers but the kernel never sends GSO or
    /// partial checksums; [`TunDevice::offload`] then says false and the same code works.
    pub fn create_with_offload(name: &str) -> Result<TunDevice, TunError> {
        Self::open(name, true)
    }

    fn open(name: &str, vnet_hdr: bool) -> Result<TunDevice, TunError> {
        validate_name(name)?;
        let mut config = ::tun::Configuration::default();
        // Only name and layer: address, MTU and up/down would go through the tun crate's
        // ioctls, which cannot do IPv6; `netlink::configure_interface` does all of that.
        config.tun_name(name).layer(::tun::Layer::L3);
        config.platform_config(|p| {
            p.vnet_hdr(vnet_hdr);
        });
        let device = ::tun::create(&config).map_err(|e| classify(name, e))?;
        device
            .set_nonblock()
            .map_err(|e| TunError::Other(format!("setting O_NONBLOCK on TUN {name}"), e))?;
        // The kernel may rewrite a name containing "%d"; report what it really chose.
        let name = ::tun::AbstractDevice::tun_name(&device).unwrap_or_else(|_| name.to_owned());
        let offload = vnet_hdr && enable_offload(device.as_raw_fd(), &name)?;
        tracing::debug!(%name, fd = device.as_raw_fd(), vnet_hdr, offload, "TUN device created");
        Ok(TunDevice {
            device,
            name,
            vnet_hdr,
            offload,
        })
    }

    /// The interface name as the kernel knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether every read and write carries a virtio-net header (made by
    /// [`TunDevice::create_with_offload`]).
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Whether the kernel may hand us TCP super-segments and partial checksums.
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// One IP packet (after its virtio-net header when [`TunDevice::vnet_hdr`]);
    /// Err(WouldBlock) when none is queued. A packet longer than `buf` is truncated by the
    /// kernel, so size `buf` to at least the interface MTU, or [`OFFLOAD_READ_LEN`] with
    /// offloads.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the fd is open for as long as `self` lives and `buf` is valid for
        // writes of `buf.len()` bytes.
        let n = unsafe { libc::read(self.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        // A negative return is -1 with errno set; anything else fits in usize.
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// One IP packet (after its virtio-net header when [`TunDevice::vnet_hdr`]). The kernel
    /// validates nothing beyond the IP version nibble and the header's offsets, so the caller
    /// must only write packets it has checked (source address, length).
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        // SAFETY: as in `recv`; `packet` is valid for reads of `packet.len()` bytes.
        let n = unsafe { libc::write(self.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

/// The descriptor stays open and unchanged for the lifetime of the `TunDevice`, which is
/// what `tokio::io::unix::AsyncFd::register` (unsafe since tokio 1.54) requires.
impl AsRawFd for TunDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.device.as_raw_fd()
    }
}

impl AsFd for TunDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd is owned by `self.device` and open for as long as `self` lives.
        unsafe { BorrowedFd::borrow_raw(self.as_raw_fd()) }
    }
}

/// Sets little-endian virtio-net headers and turns on checksum and TCPv6 segmentation
/// offload. Ok(false) if the kernel refuses offloads (the device still works, without).
fn enable_offload(fd: RawFd, name: &str) -> Result<bool, TunError> {
    let le: libc::c_int = 1;
    // SAFETY: TUNSETVNETLE reads one int through the pointer, which is valid for the call.
    let rc = unsafe { libc::ioctl(fd, libc::TUNSETVNETLE, &le) };
    // Little-endian is already the default on little-endian machines; elsewhere the headers
    // would be unreadable to `VirtioNetHdr::parse`.
    if rc != 0 && cfg!(target_endian = "big") {
        return Err(TunError::Other(
            format!("TUNSETVNETLE on TUN {name}"),
            io::Error::last_os_error(),
        ));
    }
    let features = libc::TUN_F_CSUM | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
    // SAFETY: TUNSETOFFLOAD takes the feature bits as the argument itself, not a pointer.
    let rc = unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, libc::c_ulong::from(features)) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        tracing::warn!(%name, "TUN offloads unavailable ({err}); continuing without");
        return Ok(false);
    }
    Ok(true)
}

/// Rejects names the kernel would refuse, with a message that says why, instead of the
/// tun crate's terse "device tun name too long".
fn validate_name(name: &str) -> Result<(), TunError> {
    let why = if name.is_empty() {
        "is empty"
    } else if name.len() >= libc::IFNAMSIZ {
        "is longer than 15 bytes"
    } else if name
        .bytes()
        .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
    {
        "contains NUL, '/' or whitespace"
    } else {
        return Ok(());
    };
    Err(TunError::Other(
        format!("interface name {name:?} {why}; choose another name"),
        io::ErrorKind::InvalidInput.into(),
    ))
}

/// Maps the errno of open("/dev/net/tun") / ioctl(TUNSETIFF) to what the user must do.
fn classify(name: &str, err: ::tun::Error) -> TunError {
    let err = match err {
        ::tun::Error::Io(e) => e,
        other => return TunError::Other(format!("creating TUN {name}"), io::Error::other(other)),
    };
    match err.raw_os_error() {
        // EPERM: TUNSETIFF without CAP_NET_ADMIN, or a device cgroup refused the open.
        // EACCES: the device's mode forbids the open. Which one it was is read off the
        // process and the device, not guessed from the errno.
        Some(libc::EPERM | libc::EACCES) => TunError::PermissionDenied(Refusal::inspect()),
        // ENOENT: no device node. ENODEV/ENXIO: node present but no tun driver behind it.
        Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => TunError::NoDevice,
        // EBUSY: a live TUN of that name already has a queue attached.
        Some(libc::EBUSY) => TunError::Busy(name.to_owned()),
        // EINVAL: typically an interface of that name exists but is not a TUN.
        Some(libc::EINVAL) => TunError::Other(
            format!(
                "creating TUN {name} (does an interface of that name exist that is not a TUN? \
                 check `ip link show {name}`)"
            ),
            err,
        ),
        _ => TunError::Other(format!("creating TUN {name}"), err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::test_support::{in_new_netns, ip_here, privileged_or_skip, unique_ifname};
    use std::net::Ipv6Addr;

    #[test]
    fn invalid_names_are_rejected_before_the_kernel() {
        for bad in ["", "sixteen-chars-xx", "a/b", "a b"] {
            let err = TunDevice::create(bad).err().expect(bad);
            assert!(matches!(err, TunError::Other(_, _)), "{bad:?}: {err:?}");
            assert!(err.to_string().contains("choose another name"), "{err}");
        }
    }

    #[test]
    fn create_is_nonblocking_and_interface_goes_away_on_drop() {
        if !privileged_or_skip("create_is_nonblocking_and_interface_goes_away_on_drop") {
            return;
        }
        in_new_netns(|| {
            let name = unique_ifname();
            let tun = TunDevice::create(&name).expect("create TUN");
            assert_eq!(tun.name(), name);
            // SAFETY: fcntl(F_GETFL) on an fd we own.
            let flags = unsafe { libc::fcntl(tun.as_raw_fd(), libc::F_GETFL) };
            assert_ne!(flags & libc::O_NONBLOCK, 0, "fd must be O_NONBLOCK");
            let mut buf = [0u8; 1500];
            let err = tun.recv(&mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
            let link = ip_here(&["-d", "link", "show", &name]);
            assert!(link.contains("tun type tun"), "{link}");
            assert!(link.contains("pi off"), "IFF_NO_PI expected: {link}");
            assert!(
                !link.contains("persist on"),
                "must not be persistent: {link}"
            );
            assert!(!link.contains(",UP"), "must not be brought up: {link}");
            drop(tun);
            assert!(!ip_here(&["-br", "link"]).contains(&name));
        });
    }

    #[test]
    fn offload_device_has_vnet_hdr_and_offloads() {
        if !privileged_or_skip("offload_device_has_vnet_hdr_and_offloads") {
            return;
        }
        in_new_netns(|| {
            let name = unique_ifname();
            let tun = TunDevice::create_with_offload(&name).expect("create TUN");
            assert!(tun.vnet_hdr() && tun.offload());
            let link = ip_here(&["-d", "link", "show", &name]);
            assert!(link.contains("vnet_hdr on"), "{link}");
            let mut buf = vec![0u8; OFFLOAD_READ_LEN];
            let err = tun.recv(&mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
            // The kernel checks the header: a GSO request with gso_size 0 is refused.
            let mut bad = crate::io::offload::VirtioNetHdr {
                gso_type: crate::io::offload::GSO_TCPV6,
                ..crate::io::offload::VirtioNetHdr::NONE
            }
            .to_bytes()
            .to_vec();
            bad.extend_from_slice(&[0x60; 80]);
            assert!(tun.send(&bad).is_err(), "gso_size 0 must be refused");
            drop(tun);
            let plain = TunDevice::create(&name).expect("create plain TUN");
            assert!(!plain.vnet_hdr() && !plain.offload());
            assert!(ip_here(&["-d", "link", "show", &name]).contains("vnet_hdr off"));
        });
    }

    /// IPv6/UDP packet with a valid checksum, as a peer's decrypted packet would be.
    fn udp6_packet(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), payload: &[u8]) -> Vec<u8> {
        let udp_len = (8 + payload.len()) as u16;
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&udp_len.to_be_bytes());
        p.extend_from_slice(&[17, 64]); // next header UDP, hop limit
        p.extend_from_slice(&src.0.octets());
        p.extend_from_slice(&dst.0.octets());
        for word in [src.1, dst.1, udp_len, 0] {
            p.extend_from_slice(&word.to_be_bytes());
        }
        p.extend_from_slice(payload);
        // Checksum over the pseudo-header (addresses, length, next header) and UDP part.
        let mut sum: u32 = u32::from(udp_len) + 17;
        let mut words = p[8..40].to_vec();
        words.extend_from_slice(&p[40..]);
        words.resize(words.len().next_multiple_of(2), 0);
        for pair in words.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        p[46..48].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        p
    }

    #[test]
    fn packets_cross_between_fd_and_kernel_under_async_fd() {
        if !privileged_or_skip("packets_cross_between_fd_and_kernel_under_async_fd") {
            return;
        }
        in_new_netns(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let name = unique_ifname();
            let tun = TunDevice::create(&name).expect("create TUN");
            let (local, peer): (Ipv6Addr, Ipv6Addr) =
                ("fd70::1".parse().unwrap(), "fd70::2".parse().unwrap());
            rt.block_on(crate::io::netlink::configure_interface(
                &name, local, 80, 1420,
            ))
            .expect("configure");
            let sock = std::net::UdpSocket::bind((local, 0)).unwrap();
            let port = sock.local_addr().unwrap().port();

            // Kernel -> TUN: a datagram to another address of the /80 leaves via the TUN,
            // as a bare IPv6 packet (no packet-information header), waking AsyncFd.
            sock.send_to(b"ping", (peer, 9)).unwrap();
            let tun = rt.block_on(async {
                // SAFETY: TunDevice owns its fd and never changes or closes it while alive.
                let afd = unsafe { tokio::io::unix::AsyncFd::register(tun) }.unwrap();
                let mut buf = [0u8; 1500];
                let n = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                    loop {
                        let mut guard = afd.readable().await.unwrap();
                        if let Ok(r) = guard.try_io(|t| t.get_ref().recv(&mut buf)) {
                            break r.unwrap();
                        }
                    }
                })
                .await
                .expect("no packet from the TUN");
                assert_eq!(buf[0] >> 4, 6, "not an IPv6 packet: {:02x?}", &buf[..n]);
                assert_eq!((buf[6], &buf[24..40]), (17, &peer.octets()[..]));
                assert_eq!(&buf[48..n], b"ping");
                afd.into_inner()
            });

            // TUN -> kernel: a packet written to the fd is delivered to the local socket.
            let packet = udp6_packet((peer, 4000), (local, port), b"pong");
            assert_eq!(tun.send(&packet).unwrap(), packet.len());
            sock.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = sock
                .recv_from(&mut buf)
                .expect("packet written to TUN not delivered");
            assert_eq!((&buf[..n], from), (&b"pong"[..], (peer, 4000).into()));
        });
    }

    #[test]
    fn second_create_of_same_name_is_busy() {
        if !privileged_or_skip("second_create_of_same_name_is_busy") {
            return;
        }
        in_new_netns(|| {
            let name = unique_ifname();
            let _first = TunDevice::create(&name).expect("create TUN");
            let err = TunDevice::create(&name)
                .err()
                .expect("second create must fail");
            assert!(matches!(&err, TunError::Busy(n) if *n == name), "{err:?}");
            assert!(err.to_string().contains("another pilotd"), "{err}");
        });
    }

    #[test]
    fn without_cap_net_admin_it_says_permission_denied() {
        if !privileged_or_skip("without_cap_net_admin_it_says_permission_denied") {
            return;
        }
        in_new_netns(|| {
            // The raw syscall changes the credentials of this thread only; glibc's
            // setresuid() wrapper would drop root for every thread of the test binary.
            // SAFETY: plain syscall; this thread exits right after the check.
            let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
            assert_eq!(rc, 0, "setresuid: {}", io::Error::last_os_error());
            let err = TunDevice::create(&unique_ifname())
                .err()
                .expect("must fail");
            let TunError::PermissionDenied(refusal) = &err else {
                panic!("{err:?}");
            };
            // Whatever the device's mode here, the missing capability is named.
            assert!(!refusal.net_admin, "{refusal:?}");
            assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
        });
    }

    #[test]
    fn root_without_cap_net_admin_says_permission_denied() {
        if !privileged_or_skip("root_without_cap_net_admin_says_permission_denied") {
            return;
        }
        // Still root, so open("/dev/net/tun") succeeds whatever its mode, but TUNSETIFF
        // fails with EPERM: the other way the same message must come out.
        in_new_netns(|| {
            #[repr(C)]
            struct CapHeader {
                version: u32,
                pid: i32,
            }
            #[repr(C)]
            #[derive(Default, Clone, Copy)]
            struct CapData {
                effective: u32,
                permitted: u32,
                inheritable: u32,
            }
            const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
            const CAP_NET_ADMIN: u32 = 12;
            let mut header = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let mut data = [CapData::default(); 2];
            // SAFETY: capget/capset with a v3 header and two data words, as the ABI
            // requires. The raw syscalls change this thread's capabilities only.
            unsafe {
                let rc = libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr());
                assert_eq!(rc, 0, "capget: {}", io::Error::last_os_error());
                data[0].effective &= !(1 << CAP_NET_ADMIN);
                data[0].permitted &= !(1 << CAP_NET_ADMIN);
                let rc = libc::syscall(libc::SYS_capset, &mut header, data.as_ptr());
                assert_eq!(rc, 0, "capset: {}", io::Error::last_os_error());
            }
            let err = TunDevice::create(&unique_ifname())
                .err()
                .expect("must fail");
            let TunError::PermissionDenied(refusal) = &err else {
                panic!("{err:?}");
            };
            // Root opens the device whatever its mode: the capability is the cause.
            assert_eq!(refusal.cause(), RefusalCause::NoNetAdmin, "{refusal:?}");
            assert!(err.to_string().contains("does not hold"), "{err}");
        });
    }

    #[test]
    fn missing_dev_net_tun_says_no_device() {
        if !privileged_or_skip("missing_dev_net_tun_says_no_device") {
            return;
        }
        in_new_netns(|| {
            // A private mount namespace for this thread only, with an empty tmpfs over
            // /dev/net. Propagation is made private first so nothing leaks to the host.
            // SAFETY: plain syscalls with valid NUL-terminated strings.
            unsafe {
                assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare(CLONE_NEWNS)");
                let flags = libc::MS_REC | libc::MS_PRIVATE;
                let rc = libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                );
                assert_eq!(rc, 0, "make / private: {}", io::Error::last_os_error());
                let rc = libc::mount(
                    c"tmpfs".as_ptr(),
                    c"/dev/net".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                );
                assert_eq!(rc, 0, "mount tmpfs: {}", io::Error::last_os_error());
            }
            let err = TunDevice::create(&unique_ifname())
                .err()
                .expect("must fail");
            assert!(matches!(err, TunError::NoDevice), "{err:?}");
            assert!(err.to_string().contains("modprobe tun"), "{err}");
        });
    }
}
