//! Packet builders and an independent checksum for the offload tests (unit and kernel).

use std::net::Ipv6Addr;

use super::{segments, Coalescer, OffloadError, VirtioNetHdr, GSO_TCPV6};

pub const A: Ipv6Addr = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0xa, 0xb, 0xc);
pub const B: Ipv6Addr = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0x1, 0x2, 0x3);

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;
pub const ECE: u8 = 0x40;
pub const CWR: u8 = 0x80;

/// The fields of a TCP/IPv6 packet; `build` gives it a correct checksum.
#[derive(Debug, Clone)]
pub struct Tcp6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub options: Vec<u8>,
    pub hop_limit: u8,
    pub traffic_class: u8,
}

impl Tcp6 {
    /// A data segment A:1000 -> B:2000 with a timestamp option, as Linux sends them.
    pub fn data(seq: u32) -> Tcp6 {
        Tcp6 {
            src: A,
            dst: B,
            sport: 1000,
            dport: 2000,
            seq,
            ack: 0x5000_0000,
            flags: ACK,
            window: 512,
            // NOP NOP TS(val 0x11223344, ecr 0x55667788)
            options: vec![1, 1, 8, 10, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88],
            hop_limit: 64,
            traffic_class: 0,
        }
    }

    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        assert_eq!(self.options.len() % 4, 0, "options must be padded");
        let tcp_len = 20 + self.options.len() + payload.len();
        let mut p = Vec::with_capacity(40 + tcp_len);
        p.push(0x60 | self.traffic_class >> 4);
        p.extend_from_slice(&[self.traffic_class << 4, 0, 0]);
        p.extend_from_slice(&(tcp_len as u16).to_be_bytes());
        p.extend_from_slice(&[6, self.hop_limit]);
        p.extend_from_slice(&self.src.octets());
        p.extend_from_slice(&self.dst.octets());
        p.extend_from_slice(&self.sport.to_be_bytes());
        p.extend_from_slice(&self.dport.to_be_bytes());
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&self.ack.to_be_bytes());
        p.push((((20 + self.options.len()) / 4) << 4) as u8);
        p.push(self.flags);
        p.extend_from_slice(&self.window.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        p.extend_from_slice(&self.options);
        p.extend_from_slice(payload);
        set_checksum(&mut p, 56);
        p
    }
}

/// An IPv6 packet with `next_header` and `body` (checksum left as given).
pub fn ipv6(next_header: u8, src: Ipv6Addr, dst: Ipv6Addr, body: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(body.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next_header, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(body);
    p
}

/// A UDP/IPv6 packet with a correct checksum.
pub fn udp6(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&src.1.to_be_bytes());
    body.extend_from_slice(&dst.1.to_be_bytes());
    body.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    body.extend_from_slice(&[0, 0]);
    body.extend_from_slice(payload);
    let mut p = ipv6(17, src.0, dst.0, &body);
    set_checksum(&mut p, 46);
    p
}

/// The upper-layer checksum of an IPv6 packet without extension headers, computed the
/// slow, obvious way (16-bit words, one at a time): 0 when the stored checksum is right.
pub fn naive_checksum(packet: &[u8]) -> u16 {
    let upper = &packet[40..];
    let mut words: Vec<u8> = Vec::new();
    words.extend_from_slice(&packet[8..40]);
    words.extend_from_slice(&(upper.len() as u32).to_be_bytes());
    words.extend_from_slice(&[0, 0, 0, packet[6]]);
    words.extend_from_slice(upper);
    if words.len() % 2 == 1 {
        words.push(0);
    }
    let mut sum: u32 = 0;
    for pair in words.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Zeroes the checksum at `field` and stores the right one.
pub fn set_checksum(packet: &mut [u8], field: usize) {
    packet[field..field + 2].fill(0);
    let csum = naive_checksum(packet);
    packet[field..field + 2].copy_from_slice(&csum.to_be_bytes());
}

/// TCP fields of a TCP/IPv6 packet: (seq, ack, flags, payload).
pub fn tcp_fields(packet: &[u8]) -> (u32, u32, u8, &[u8]) {
    let t = &packet[40..];
    let seq = u32::from_be_bytes(t[4..8].try_into().unwrap());
    let ack = u32::from_be_bytes(t[8..12].try_into().unwrap());
    let headers = usize::from(t[12] >> 4) * 4;
    (seq, ack, t[13], &t[headers..])
}

/// A deterministic xorshift generator, so property-style loops replay exactly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

pub const MSS: usize = 1308;

pub fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ salt).collect()
}

/// All segments of one TUN read, as owned packets.
pub fn segment_all(hdr: &VirtioNetHdr, packet: &[u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
    let mut segs = segments(hdr, packet)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; segs.max_segment_len()];
    while let Some(n) = segs.next_into(&mut buf)? {
        out.push(buf[..n].to_vec());
    }
    Ok(out)
}

/// Everything a coalescer emits: (header, packet) pairs.
pub fn drain(c: &mut Coalescer) -> Vec<(VirtioNetHdr, Vec<u8>)> {
    let mut out = Vec::new();
    let n = c.for_each_output(|buf| {
        let (hdr, packet) = VirtioNetHdr::parse(buf).expect("header");
        out.push((hdr, packet.to_vec()));
    });
    assert_eq!(n, out.len());
    assert!(c.is_empty());
    out
}

pub fn coalesce(packets: &[Vec<u8>]) -> Vec<(VirtioNetHdr, Vec<u8>)> {
    let mut c = Coalescer::new(packets.len(), packets.len() * 1500);
    for p in packets {
        c.push(p).expect("room");
    }
    drain(&mut c)
}

/// A run of `n` data segments of flow `t` starting at `seq`, each `MSS` bytes.
pub fn run(t: &Tcp6, seq: u32, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut s = t.clone();
            s.seq = seq.wrapping_add((i * MSS) as u32);
            s.build(&pattern(MSS, i as u8))
        })
        .collect()
}

/// The outputs as (number of segments, first sequence number) for TCP, in order.
pub fn shape(out: &[(VirtioNetHdr, Vec<u8>)]) -> Vec<(usize, u32)> {
    out.iter()
        .map(|(hdr, p)| {
            let payload = tcp_fields(p).3.len();
            let segs = if hdr.gso_type == GSO_TCPV6 {
                payload.div_ceil(usize::from(hdr.gso_size))
            } else {
                assert_eq!(*hdr, VirtioNetHdr::NONE);
                1
            };
            (segs, tcp_fields(p).0)
        })
        .collect()
}
