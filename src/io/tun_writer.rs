//! Writes decrypted packets into the TUN (which carries virtio-net headers). TCP segments of
//! one flow that arrive in the same receive batch are coalesced into one super-segment (GRO),
//! so the kernel runs its TCP receive path once per ~64 KB instead of once per packet.

use crate::io::offload::{Coalescer, PushError, VirtioNetHdr, VNET_HDR_LEN};
use crate::io::tun::TunDevice;

/// Packets held for coalescing before they are written (a receive batch or more).
const COALESCE_PACKETS: usize = 256;

/// The data plane's writer into the TUN.
pub struct TunWriter {
    coalescer: Coalescer,
    /// A single packet with its virtio-net header, for writes outside a batch.
    single: Box<[u8]>,
    errors: u64,
}

impl Default for TunWriter {
    fn default() -> TunWriter {
        TunWriter::new()
    }
}

impl TunWriter {
    pub fn new() -> TunWriter {
        TunWriter {
            coalescer: Coalescer::new(COALESCE_PACKETS, 0),
            single: vec![0; VNET_HDR_LEN + 65535].into_boxed_slice(),
            errors: 0,
        }
    }

    /// Queues a packet of the current batch; [`TunWriter::flush`] writes what is queued.
    pub fn push(&mut self, tun: &TunDevice, packet: &[u8]) {
        match self.coalescer.push(packet) {
            Ok(()) => {}
            Err(PushError::Full) => {
                self.flush(tun);
                if self.coalescer.push(packet).is_err() {
                    self.errors += 1;
                }
            }
            Err(PushError::TooLong(_)) => self.errors += 1,
        }
    }

    /// Writes one packet now, outside any batch (ICMPv6 errors for local senders).
    pub fn write_now(&mut self, tun: &TunDevice, packet: &[u8]) {
        let Some(out) = self.single.get_mut(..VNET_HDR_LEN + packet.len()) else {
            self.errors += 1;
            return;
        };
        out[..VNET_HDR_LEN].copy_from_slice(&VirtioNetHdr::NONE.to_bytes());
        out[VNET_HDR_LEN..].copy_from_slice(packet);
        if tun.send(out).is_err() {
            self.errors += 1;
        }
    }

    /// Writes everything queued since the last flush.
    pub fn flush(&mut self, tun: &TunDevice) {
        let mut errors = 0;
        self.coalescer.for_each_output(|buf| {
            if tun.send(buf).is_err() {
                errors += 1;
            }
        });
        self.errors += errors;
    }

    /// Packets the kernel refused (queue full, or malformed).
    pub fn errors(&self) -> u64 {
        self.errors
    }
}
