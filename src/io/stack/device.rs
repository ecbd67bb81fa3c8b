//! The userspace stack's network device: two bounded queues of IP packets instead of a TUN.
//!
//! The data plane pushes decrypted packets into the receive queue and takes the stack's packets
//! from the transmit queue to encrypt them, exactly where kernel mode reads and writes its TUN.
//! Packet buffers come from a pool and go back to it, so nothing is allocated per packet once
//! the queues have filled for the first time.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

pub struct QueueDevice {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    /// What both tokens of a `receive` use at once (hence the cells).
    shared: Shared,
}

struct Shared {
    /// Spare packet buffers, each with room for an MTU-sized packet so it never grows.
    buffers: RefCell<Vec<Vec<u8>>>,
    mtu: usize,
    /// Most packets either queue holds.
    capacity: usize,
    /// Packets dropped because a queue was full.
    dropped: Cell<u64>,
}

impl Shared {
    fn take(&self) -> Vec<u8> {
        let mut buf = self
            .buffers
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.mtu));
        buf.clear();
        buf
    }

    fn put(&self, buf: Vec<u8>) {
        let mut buffers = self.buffers.borrow_mut();
        // Enough for both queues full.
        if buffers.len() < 2 * self.capacity {
            buffers.push(buf);
        }
    }

    fn drop_packet(&self) {
        self.dropped.set(self.dropped.get() + 1);
    }
}

impl QueueDevice {
    pub fn new(mtu: usize, capacity: usize) -> QueueDevice {
        QueueDevice {
            rx: VecDeque::with_capacity(capacity),
            tx: VecDeque::with_capacity(capacity),
            shared: Shared {
                buffers: RefCell::new(Vec::new()),
                mtu,
                capacity,
                dropped: Cell::new(0),
            },
        }
    }

    /// Packets dropped because a queue was full (or a packet too long).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.get()
    }

    /// Queues a packet for the stack. False (and counted) when the queue is full or the packet
    /// is longer than the MTU: TCP will send it again.
    pub fn push_rx(&mut self, packet: &[u8]) -> bool {
        if self.rx.len() >= self.shared.capacity || packet.len() > self.shared.mtu {
            self.shared.drop_packet();
            return false;
        }
        let mut buf = self.shared.take();
        buf.extend_from_slice(packet);
        self.rx.push_back(buf);
        true
    }

    /// The stack's next outgoing packet; hand it back with [`QueueDevice::recycle`].
    pub fn pop_tx(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.shared.put(buf);
    }
}

/// A received packet; its buffer goes back to the pool once the stack has read it.
pub struct RxToken<'a> {
    buf: Vec<u8>,
    shared: &'a Shared,
}

/// Where a transmitted packet goes: the device's transmit queue.
pub struct TxToken<'a> {
    tx: &'a mut VecDeque<Vec<u8>>,
    shared: &'a Shared,
}

impl phy::Device for QueueDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let buf = self.rx.pop_front()?;
        let shared = &self.shared;
        let tx = TxToken {
            tx: &mut self.tx,
            shared,
        };
        Some((RxToken { buf, shared }, tx))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        // A full transmit queue tells the stack to hold its packets (backpressure, not loss).
        (self.tx.len() < self.shared.capacity).then_some(TxToken {
            tx: &mut self.tx,
            shared: &self.shared,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.shared.mtu;
        // Packets arrive authenticated by WireGuard: checking their checksums again would only
        // cost time. The peer's kernel checks ours, so they are computed on the way out.
        let mut checksum = ChecksumCapabilities::ignored();
        checksum.tcp = Checksum::Tx;
        checksum.udp = Checksum::Tx;
        checksum.icmpv6 = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let result = f(&self.buf);
        self.shared.put(self.buf);
        result
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = self.shared.take();
        buf.resize(len, 0);
        let result = f(&mut buf);
        if self.tx.len() < self.shared.capacity {
            self.tx.push_back(buf);
        } else {
            self.shared.drop_packet();
            self.shared.put(buf);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::{Device, RxToken as _, TxToken as _};

    #[test]
    fn queues_are_bounded_and_count_drops() {
        let mut dev = QueueDevice::new(1280, 2);
        assert!(dev.push_rx(&[1; 40]));
        assert!(dev.push_rx(&[2; 40]));
        assert!(!dev.push_rx(&[3; 40]));
        assert!(!dev.push_rx(&[0; 1281]), "longer than the MTU");
        assert_eq!(dev.dropped(), 2);
        let now = Instant::from_millis(0);
        let (rx, _) = dev.receive(now).unwrap();
        assert_eq!(rx.consume(|p| p[0]), 1);
        for i in 0..2u8 {
            dev.transmit(now).unwrap().consume(10, |b| b.fill(i));
        }
        assert!(
            dev.transmit(now).is_none(),
            "full transmit queue holds the stack back"
        );
        let first = dev.pop_tx().unwrap();
        assert_eq!(first, vec![0; 10]);
        dev.recycle(first);
        assert_eq!(dev.pop_tx().unwrap(), vec![1; 10]);
        assert!(dev.pop_tx().is_none());
    }
}
