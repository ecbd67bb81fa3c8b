//! Targets for TUN offload: segmenting what the kernel hands us (a virtio-net header and a
//! packet that may be a 64 KiB TCPv6 super-segment), and coalescing what we write to it.

use std::net::Ipv6Addr;

use super::input::Input;
use crate::io::offload::{segments, Coalescer, PushError, VirtioNetHdr, GSO_TCPV6, VNET_HDR_LEN};
use crate::wire::ip::{self, IPV6_HEADER_LEN};

const PROTO_TCP: u8 = 6;

/// A TUN read (virtio-net header, packet) cut into segments: each no longer than
/// `max_segment_len`, as many as announced, TCP segments with correct lengths and checksums,
/// the payload conserved.
pub fn offload_segment(data: &[u8]) {
    let Some((hdr, packet)) = VirtioNetHdr::parse(data) else {
        return;
    };
    assert_eq!(hdr.to_bytes()[..], data[..VNET_HDR_LEN]);
    let Ok(mut segs) = segments(&hdr, packet) else {
        return;
    };
    let max = segs.max_segment_len();
    let count = segs.remaining();
    assert!(count >= 1);
    let mut out = vec![0u8; max];
    if max > 0 {
        // Too small a buffer fails and consumes nothing.
        assert!(segs.next_into(&mut out[..max - 1]).is_err());
        assert_eq!(segs.remaining(), count);
    }
    let tcp6 = hdr.gso_type & 0x7f == GSO_TCPV6;
    let mut produced = 0;
    let mut payload = 0;
    while let Some(len) = segs.next_into(&mut out).expect("sized by max_segment_len") {
        assert!(len <= max);
        produced += 1;
        let seg = &out[..len];
        if tcp6 {
            let (next, tcp) = ip::ipv6_payload(seg).expect("a segment is IPv6");
            assert_eq!(next, PROTO_TCP);
            assert_eq!(tcp.len(), len - IPV6_HEADER_LEN, "segment payload length");
            let (src, dst) = ip::ipv6_addrs(seg).expect("a segment is IPv6");
            assert_eq!(ip::pseudo_header_checksum(src, dst, PROTO_TCP, tcp), 0);
            payload += tcp.len() - usize::from(tcp[12] >> 4) * 4;
        } else {
            assert_eq!(len, packet.len());
        }
    }
    assert_eq!(produced, count, "segments announced and produced differ");
    if tcp6 {
        let headers = IPV6_HEADER_LEN + usize::from(packet[IPV6_HEADER_LEN + 12] >> 4) * 4;
        assert_eq!(payload, packet.len() - headers, "payload not conserved");
    }
}

/// A sequence of packets written to the TUN, mostly TCPv6 segments of a few flows built
/// from the input (in order or not, full or short, flagged, some with a bad checksum), some
/// raw. Whatever the coalescer merges, segmenting its output gives back exactly the packets
/// pushed.
pub fn offload_coalesce(data: &[u8]) {
    let mut input = Input::new(data);
    let mut coalescer = Coalescer::new(1 + input.choose(64), 0);
    let mut pushed: Vec<Vec<u8>> = Vec::new();
    let mut outputs: Vec<Vec<u8>> = Vec::new();
    let mut next_seq = [1000u32, 5000, 9000];
    let mss = 100 + usize::from(input.u8()) * 4;
    while !input.is_empty() && pushed.len() < 128 {
        let packet = packet(&mut input, &mut next_seq, mss);
        match coalescer.push(&packet) {
            Ok(()) => {}
            Err(PushError::Full) => {
                coalescer.for_each_output(|o| outputs.push(o.to_vec()));
                coalescer.push(&packet).expect("room after writing out");
            }
            Err(PushError::TooLong(_)) => unreachable!("packets are short"),
        }
        pushed.push(packet);
    }
    coalescer.for_each_output(|o| outputs.push(o.to_vec()));
    assert!(coalescer.is_empty());
    let mut resegmented = Vec::new();
    for output in &outputs {
        let (hdr, packet) = VirtioNetHdr::parse(output).expect("an output has a header");
        if packet.is_empty() {
            resegmented.push(Vec::new());
            continue;
        }
        let mut segs = segments(&hdr, packet).expect("the coalescer's output segments");
        let mut out = vec![0u8; segs.max_segment_len()];
        while let Some(len) = segs.next_into(&mut out).expect("sized") {
            resegmented.push(out[..len].to_vec());
        }
    }
    pushed.sort();
    resegmented.sort();
    assert_eq!(resegmented, pushed, "coalescing lost or changed packets");
}

/// One packet for [`offload_coalesce`].
fn packet(input: &mut Input<'_>, next_seq: &mut [u32; 3], mss: usize) -> Vec<u8> {
    let op = input.u8();
    if op >= 0xf0 {
        return input.bytes(200).to_vec();
    }
    let flow = usize::from(op % 3);
    let seq = match op >> 6 {
        0 => next_seq[flow].wrapping_add(u32::from(input.u16())),
        _ => next_seq[flow],
    };
    let len = match input.u8() % 4 {
        0 => usize::from(input.u8()),
        _ => mss,
    };
    let flags = match input.u8() {
        f @ 0..=15 => 0x10 | f,
        _ => 0x10,
    };
    let hop_limit = if input.u8() == 0 { 1 } else { 64 };
    next_seq[flow] = seq.wrapping_add(len as u32);
    let mut p = tcp6(flow, seq, flags, hop_limit, &vec![flow as u8; len]);
    if input.u8() == 0xff {
        p[IPV6_HEADER_LEN + 16] ^= 1;
    }
    p
}

/// An IPv6/TCP packet of flow `flow` (its addresses and ports) with a correct checksum.
fn tcp6(flow: usize, seq: u32, flags: u8, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    let src = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0, 0, 1).octets();
    let dst = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0, 0, 2 + flow as u16).octets();
    let tcp_len = 20 + payload.len();
    let mut p = vec![0u8; IPV6_HEADER_LEN + tcp_len];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
    p[6] = PROTO_TCP;
    p[7] = hop_limit;
    p[8..24].copy_from_slice(&src);
    p[24..40].copy_from_slice(&dst);
    let tcp = &mut p[IPV6_HEADER_LEN..];
    tcp[0..2].copy_from_slice(&(40000 + flow as u16).to_be_bytes());
    tcp[2..4].copy_from_slice(&443u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&7u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    tcp[20..].copy_from_slice(payload);
    let sum = ip::pseudo_header_checksum(&src, &dst, PROTO_TCP, tcp);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    p
}
