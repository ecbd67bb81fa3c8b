//! The datagram buffers of a batch plus the arrays the kernel reads and writes.

use std::mem;
use std::net::SocketAddr;
use std::ops::Range;

use nix::sys::socket::SockaddrStorage;

use super::cmsg::ControlBuf;

/// One buffer and one iovec per slot, and one mmsghdr, address and control buffer per
/// sendmmsg/recvmmsg entry. There are as many entries as slots: on receive entry `i` is
/// slot `i`; on send an entry covers one slot or a run of consecutive slots (a GSO group).
pub(super) struct Slots {
    pub size: usize,
    bufs: Vec<u8>,
    pub names: Vec<SockaddrStorage>,
    iovecs: Vec<libc::iovec>,
    pub hdrs: Vec<libc::mmsghdr>,
    pub controls: Vec<ControlBuf>,
}

// SAFETY: the raw pointers in `iovecs`/`hdrs` are only (re)written by `aim_*` right before
// a syscall made through `&mut self` and are never dereferenced by Rust code; they do not
// make the buffers shared, so moving or sharing a Slots across threads is sound.
unsafe impl Send for Slots {}
unsafe impl Sync for Slots {}

impl Slots {
    /// `count` slots of `size` bytes; every entry's control buffer starts as `control`.
    pub fn new(count: usize, size: usize, control: ControlBuf) -> Slots {
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
            controls: vec![control; count],
        }
    }

    pub fn count(&self) -> usize {
        self.hdrs.len()
    }

    pub fn buf(&self, i: usize) -> &[u8] {
        &self.bufs[i * self.size..(i + 1) * self.size]
    }

    pub fn buf_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.bufs[i * self.size..(i + 1) * self.size]
    }

    /// Aims iovec `i` at the first `len` bytes of slot `i`.
    pub fn aim_iovec(&mut self, i: usize, len: usize) {
        let buf = &mut self.buf_mut(i)[..len];
        self.iovecs[i] = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
    }

    /// Aims header `entry` at the iovecs `iovecs` (a non-empty range), at address storage
    /// `entry` if `with_name` (the source for recvmmsg, the destination for sendmmsg) and at
    /// the first `control_len` bytes of control buffer `entry`.
    pub fn aim_header(
        &mut self,
        entry: usize,
        iovecs: Range<usize>,
        with_name: bool,
        control_len: usize,
    ) {
        let iovecs = &mut self.iovecs[iovecs];
        let hdr = &mut self.hdrs[entry].msg_hdr;
        hdr.msg_name = if with_name {
            (&mut self.names[entry] as *mut SockaddrStorage).cast()
        } else {
            std::ptr::null_mut()
        };
        hdr.msg_namelen = if with_name {
            mem::size_of::<SockaddrStorage>() as _
        } else {
            0
        };
        hdr.msg_iov = iovecs.as_mut_ptr();
        hdr.msg_iovlen = iovecs.len() as _;
        let control = &mut self.controls[entry];
        hdr.msg_control = if control_len > 0 {
            control.as_mut_ptr().cast()
        } else {
            std::ptr::null_mut()
        };
        hdr.msg_controllen = control_len.min(mem::size_of::<ControlBuf>()) as _;
        hdr.msg_flags = 0;
    }

    /// The control bytes the kernel left in entry `entry` after recvmmsg.
    pub fn control(&self, entry: usize) -> &[u8] {
        #[allow(clippy::unnecessary_cast, reason = "socklen_t on musl")]
        let len = self.hdrs[entry].msg_hdr.msg_controllen as usize;
        self.controls[entry].filled(len)
    }
}
