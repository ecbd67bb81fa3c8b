//! The userspace stack's network device: two bounded queues of IP packets instead of a TUN.
//!
//! The data plane pushes decrypted packets into the receive queue and takes the stack's packets
//! from the transmit queue to encrypt them, exactly where kernel mode reads and writes its TUN.
//! Packet buffers come from a pool and go back to it, so nothing is allocated per packet once
//! the queues have filled for the first time.

use std::collections::VecDeque;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

pub struct QueueDevice {
    mtu: usize,
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    /// Most packets either queue holds.
    capacity: usize,
    /// Packets dropped because a queue was full.
    pub dropped: u64,
}

impl QueueDevice {
    pub fn new(mtu: usize, capacity: usize) -> QueueDevice {
        QueueDevice {
            mtu,
            rx: VecDeque::with_capacity(capacity),
            tx: VecDeque::with_capacity(capacity),
            pool: Vec::new(),
            capacity,
            dropped: 0,
        }
    }

    fn buffer(&mut self) -> Vec<u8> {
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf
    }

    /// Queues a packet for the stack. False (and counted) when the queue is full or the packet
    /// is longer than the MTU: TCP will send it again.
    pub fn push_rx(&mut self, packet: &[u8]) -> bool {
        if self.rx.len() >= self.capacity || packet.len() > self.mtu {
            self.dropped += 1;
            return false;
        }
        let mut buf = self.buffer();
        buf.extend_from_slice(packet);
        self.rx.push_back(buf);
        true
    }

    /// The stack's next outgoing packet; hand it back with [`QueueDevice::recycle`].
    pub fn pop_tx(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < 2 * self.capacity {
            self.pool.push(buf);
        }
    }
}

pub struct RxToken {
    buf: Vec<u8>,
}

/// Where a transmitted packet goes: the device's transmit queue.
pub struct TxToken<'a> {
    device: &'a mut QueueDevice,
}

impl phy::Device for QueueDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let buf = self.rx.pop_front()?;
        Some((RxToken { buf }, TxToken { device: self }))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        // A full transmit queue tells the stack to hold its packets (backpressure, not loss).
        (self.tx.len() < self.capacity).then_some(TxToken { device: self })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
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

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.buf)
        // The buffer is not recycled here (the token cannot reach the pool); the pool refills
        // from transmitted packets, which are at least as many as received ones under TCP.
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = self.device.buffer();
        buf.resize(len, 0);
        let result = f(&mut buf);
        if self.device.tx.len() < self.device.capacity {
            self.device.tx.push_back(buf);
        } else {
            self.device.dropped += 1;
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
        assert_eq!(dev.dropped, 2);
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
