//! Write side: merging a batch of decrypted packets so that consecutive segments of one TCP
//! flow reach the kernel as one super-segment (what Linux GRO does on a NIC), cutting the
//! number of write(2) calls and trips through the stack.

use super::{
    fold, pseudo_header_sum, sum, VirtioNetHdr, GSO_TCPV6, IPV6_HEADER_LEN, MAX_IPV6_PACKET,
    NEEDS_CSUM, PROTO_TCP, TCP_ACK, TCP_CSUM_OFFSET, TCP_PSH, VNET_HDR_LEN,
};

/// Collects one batch of IPv6 packets bound for the TUN and hands them back ready to write,
/// each prefixed by a virtio-net header, with runs of TCP segments merged.
///
/// Two segments merge, as in Linux's GRO, when both are TCP over IPv6 with no extension
/// headers, carry payload, have only ACK (and PSH on the last) set, verify their checksum,
/// and agree on every header field except the payload length, sequence number, PSH and
/// checksum (so also ack number, window, options including timestamps, traffic class, flow
/// label and hop limit), and the second continues the first's byte stream exactly. All
/// segments of a super-segment but the last carry the first one's payload size (which
/// becomes `gso_size`); a shorter or PSH segment closes it, and so does 65535 bytes.
///
/// Checksums are verified before merging because the kernel does not check them again: a
/// super-segment written with NEEDS_CSUM becomes CHECKSUM_PARTIAL, which local TCP trusts
/// (seen on Linux 6.18: a garbage checksum field is accepted), so a corrupt segment merged
/// in would reach the socket. Unmerged, it is written as it came and the kernel drops it.
///
/// Within a flow, packets come out in the order they went in: a flow's packet that cannot
/// join its open super-segment closes it. Packets of different flows may be reordered.
///
/// All memory is allocated in [`Coalescer::new`].
pub struct Coalescer {
    /// Each packet as `[virtio-net header][packet]`, back to back.
    arena: Box<[u8]>,
    used: usize,
    max_packets: usize,
    packets: Vec<Held>,
    items: Vec<Item>,
    /// Super-segments are assembled here, one at a time, when they are written out.
    scratch: Box<[u8]>,
}

/// Why [`Coalescer::push`] did not take a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("coalescer is full: write out its packets first")]
    Full,
    #[error("packet of {0} bytes is longer than an IPv6 packet can be")]
    TooLong(usize),
}

#[derive(Debug, Clone, Copy)]
struct Held {
    /// Offset of the packet's virtio-net header in the arena.
    start: usize,
    len: usize,
    /// The packet after this one in the same item.
    next: Option<u16>,
}

/// One output: a packet on its own, or the head of a chain of TCP segments.
#[derive(Debug, Clone, Copy)]
struct Item {
    first: u16,
    last: u16,
    segments: usize,
    /// Only TCP items that may still grow are open; at most one per flow.
    open: bool,
    /// Length of IPv6 + TCP headers (TCP items).
    headers: usize,
    /// Payload size of the first segment: every segment but the last has it.
    mss: usize,
    /// Payload bytes in the whole chain.
    payload: usize,
    /// Sequence number the next segment must carry.
    next_seq: u32,
    psh: bool,
}

/// What a pushed packet is, as far as merging goes.
enum Class {
    /// A TCP segment that may start or extend a super-segment.
    Segment { headers: usize, seq: u32, psh: bool },
    /// A TCP packet that cannot merge (SYN, FIN, RST, pure ACK, bad checksum...): it still
    /// closes its flow's open item so the flow's order is kept.
    FlowOnly,
    /// IPv6 with extension headers (maybe TCP we cannot see into): closes every open item
    /// between the same addresses.
    SameAddresses,
    /// Anything else (UDP, ICMPv6, not IPv6): passes through on its own.
    Other,
}

impl Coalescer {
    /// Room for `max_packets` packets totalling `buffer_bytes` (headers included: give
    /// `max_packets * (VNET_HDR_LEN + MTU)` for a batch of full-size packets). The buffer is
    /// raised to hold at least one largest IPv6 packet, so any packet fits an empty
    /// coalescer. `max_packets` is capped at 65536.
    pub fn new(max_packets: usize, buffer_bytes: usize) -> Coalescer {
        let max_packets = max_packets.clamp(1, 1 << 16);
        let buffer_bytes = buffer_bytes.max(VNET_HDR_LEN + MAX_IPV6_PACKET);
        Coalescer {
            arena: vec![0; buffer_bytes].into_boxed_slice(),
            used: 0,
            max_packets,
            packets: Vec::with_capacity(max_packets),
            items: Vec::with_capacity(max_packets),
            scratch: vec![0; VNET_HDR_LEN + MAX_IPV6_PACKET].into_boxed_slice(),
        }
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Copies `packet` in. `Full` means write out what is held and push again.
    pub fn push(&mut self, packet: &[u8]) -> Result<(), PushError> {
        if packet.len() > MAX_IPV6_PACKET {
            return Err(PushError::TooLong(packet.len()));
        }
        let spare = self.spare();
        spare
            .get_mut(..packet.len())
            .ok_or(PushError::Full)?
            .copy_from_slice(packet);
        self.commit(packet.len())
    }

    /// Free room for the next packet, so a packet can be decrypted straight into the
    /// coalescer and then [`Coalescer::commit`]ted. Empty when no packet can be added.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.packets.len() >= self.max_packets {
            return &mut [];
        }
        let start = (self.used + VNET_HDR_LEN).min(self.arena.len());
        let end = self.arena.len().min(start + MAX_IPV6_PACKET);
        &mut self.arena[start..end]
    }

    /// Takes the first `len` bytes of [`Coalescer::spare`] as the next packet; `Full` if
    /// they are not all there.
    pub fn commit(&mut self, len: usize) -> Result<(), PushError> {
        // The same bounds as `spare`, header included, so a zero `len` is checked too.
        if self.packets.len() >= self.max_packets
            || len > MAX_IPV6_PACKET
            || self.used + VNET_HDR_LEN + len > self.arena.len()
        {
            return Err(PushError::Full);
        }
        let start = self.used;
        let index = self.packets.len() as u16; // < max_packets ≤ 65536
        self.arena[start..start + VNET_HDR_LEN].copy_from_slice(&VirtioNetHdr::NONE.to_bytes());
        self.packets.push(Held {
            start,
            len,
            next: None,
        });
        self.used += VNET_HDR_LEN + len;
        let packet = &self.arena[start + VNET_HDR_LEN..start + VNET_HDR_LEN + len];
        match classify(packet) {
            Class::Segment { headers, seq, psh } => {
                if let Some(open) = self.open_item(|held| same_flow(held, packet)) {
                    if self.try_append(open, index, headers, seq, psh) {
                        return Ok(());
                    }
                    self.items[open].open = false;
                }
                let mss = len - headers;
                self.items.push(Item {
                    first: index,
                    last: index,
                    segments: 1,
                    open: !psh,
                    headers,
                    mss,
                    payload: mss,
                    next_seq: seq.wrapping_add(mss as u32),
                    psh,
                });
                return Ok(());
            }
            Class::FlowOnly => {
                if let Some(open) = self.open_item(|held| same_flow(held, packet)) {
                    self.items[open].open = false;
                }
            }
            Class::SameAddresses => {
                let addrs = &packet[8..IPV6_HEADER_LEN];
                for i in 0..self.items.len() {
                    if self.items[i].open && self.first_packet(i)[8..IPV6_HEADER_LEN] == *addrs {
                        self.items[i].open = false;
                    }
                }
            }
            Class::Other => {}
        }
        self.items.push(Item {
            first: index,
            last: index,
            segments: 1,
            open: false,
            headers: 0,
            mss: 0,
            payload: 0,
            next_seq: 0,
            psh: false,
        });
        Ok(())
    }

    /// Calls `write` with each buffer to write to the TUN, virtio-net header first, in the
    /// order described on [`Coalescer`], then empties the coalescer. Returns how many
    /// buffers there were.
    pub fn for_each_output(&mut self, mut write: impl FnMut(&[u8])) -> usize {
        let outputs = self.items.len();
        for i in 0..outputs {
            let item = self.items[i];
            let first = self.packets[usize::from(item.first)];
            if item.segments == 1 {
                write(&self.arena[first.start..first.start + VNET_HDR_LEN + first.len]);
                continue;
            }
            let len = self.assemble(&item);
            write(&self.scratch[..len]);
        }
        self.clear();
        outputs
    }

    /// Drops everything held.
    pub fn clear(&mut self) {
        self.used = 0;
        self.packets.clear();
        self.items.clear();
    }

    fn first_packet(&self, item: usize) -> &[u8] {
        let held = self.packets[usize::from(self.items[item].first)];
        &self.arena[held.start + VNET_HDR_LEN..held.start + VNET_HDR_LEN + held.len]
    }

    /// The open item whose first packet satisfies `matches`.
    fn open_item(&self, matches: impl Fn(&[u8]) -> bool) -> Option<usize> {
        (0..self.items.len())
            .rev()
            .find(|&i| self.items[i].open && matches(self.first_packet(i)))
    }

    /// Appends packet `index` (a segment of the same flow) to item `i` if it continues it.
    fn try_append(&mut self, i: usize, index: u16, headers: usize, seq: u32, psh: bool) -> bool {
        let item = self.items[i];
        let held = self.packets[usize::from(index)];
        let payload = held.len - headers;
        let packet = &self.arena[held.start + VNET_HDR_LEN..held.start + VNET_HDR_LEN + held.len];
        if headers != item.headers
            || seq != item.next_seq
            || payload > item.mss
            || item.headers + item.payload + payload > MAX_IPV6_PACKET - IPV6_HEADER_LEN
            || !same_headers(self.first_packet(i), packet, headers)
        {
            return false;
        }
        let item = &mut self.items[i];
        self.packets[usize::from(item.last)].next = Some(index);
        item.last = index;
        item.segments += 1;
        item.payload += payload;
        item.next_seq = seq.wrapping_add(payload as u32);
        item.psh = psh;
        item.open = !psh && payload == item.mss;
        true
    }

    /// Builds the super-segment of a chain in `scratch`; returns its length with header.
    fn assemble(&mut self, item: &Item) -> usize {
        let tcp_len = item.headers - IPV6_HEADER_LEN + item.payload;
        let total = VNET_HDR_LEN + item.headers + item.payload;
        let hdr = VirtioNetHdr {
            flags: NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            hdr_len: item.headers as u16,
            gso_size: item.mss as u16,
            csum_start: IPV6_HEADER_LEN as u16,
            csum_offset: TCP_CSUM_OFFSET as u16,
        };
        self.scratch[..VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
        let mut at = VNET_HDR_LEN;
        let mut next = Some(item.first);
        while let Some(index) = next {
            let held = self.packets[usize::from(index)];
            let packet_start = held.start + VNET_HDR_LEN;
            // The first packet brings the headers; the others only their payload.
            let from = if index == item.first {
                packet_start
            } else {
                packet_start + item.headers
            };
            let piece = &self.arena[from..packet_start + held.len];
            self.scratch[at..at + piece.len()].copy_from_slice(piece);
            at += piece.len();
            next = held.next;
        }
        let packet = &mut self.scratch[VNET_HDR_LEN..total];
        packet[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        let (ip, tcp) = packet.split_at_mut(IPV6_HEADER_LEN);
        if item.psh {
            tcp[13] |= TCP_PSH;
        }
        // NEEDS_CSUM: the field holds the folded, uncomplemented pseudo-header sum over the
        // whole TCP length; whoever finishes the checksum adds the rest and complements.
        let partial = fold(pseudo_header_sum(&ip[8..40], tcp_len as u32, PROTO_TCP));
        tcp[TCP_CSUM_OFFSET..TCP_CSUM_OFFSET + 2].copy_from_slice(&partial.to_be_bytes());
        total
    }
}

fn classify(packet: &[u8]) -> Class {
    const UDP: u8 = 17;
    const ICMPV6: u8 = 58;
    const NO_NEXT_HEADER: u8 = 59;
    let Some(ip) = packet.get(..IPV6_HEADER_LEN) else {
        return Class::Other;
    };
    if ip[0] >> 4 != 6 {
        return Class::Other;
    }
    match ip[6] {
        PROTO_TCP => {}
        UDP | ICMPV6 | NO_NEXT_HEADER => return Class::Other,
        _ => return Class::SameAddresses,
    }
    // The ports are what `same_flow` compares; the kernel drops a shorter TCP packet anyway.
    let Some(tcp) = packet.get(IPV6_HEADER_LEN..IPV6_HEADER_LEN + 20) else {
        return Class::Other;
    };
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let headers = IPV6_HEADER_LEN + usize::from(tcp[12] >> 4) * 4;
    let flags = tcp[13];
    if IPV6_HEADER_LEN + payload_len != packet.len()
        || headers < IPV6_HEADER_LEN + 20
        || headers >= packet.len()
        || flags & !TCP_PSH != TCP_ACK
    {
        return Class::FlowOnly;
    }
    let tcp_len = packet.len() - IPV6_HEADER_LEN;
    let pseudo = pseudo_header_sum(&ip[8..40], tcp_len as u32, PROTO_TCP);
    if fold(sum(&packet[IPV6_HEADER_LEN..], pseudo)) != 0xffff {
        return Class::FlowOnly;
    }
    Class::Segment {
        headers,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        psh: flags & TCP_PSH != 0,
    }
}

/// Same addresses and ports. Both are TCP packets of at least 44 bytes.
fn same_flow(a: &[u8], b: &[u8]) -> bool {
    a.get(8..44).is_some() && a.get(8..44) == b.get(8..44)
}

/// Every header field but payload length, sequence number, PSH and checksum is equal. Both
/// packets have `headers` bytes of IPv6 + TCP header.
fn same_headers(a: &[u8], b: &[u8], headers: usize) -> bool {
    let (Some(a), Some(b)) = (a.get(..headers), b.get(..headers)) else {
        return false;
    };
    let tcp = IPV6_HEADER_LEN;
    a[..4] == b[..4]
        && a[6..tcp + 4] == b[6..tcp + 4]
        && a[tcp + 8..tcp + 13] == b[tcp + 8..tcp + 13]
        && a[tcp + 13] & !TCP_PSH == b[tcp + 13] & !TCP_PSH
        && a[tcp + 14..tcp + 16] == b[tcp + 14..tcp + 16]
        && a[tcp + 18..] == b[tcp + 18..]
}
