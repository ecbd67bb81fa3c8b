//! Unit tests of the virtio-net header and of segmentation, checked against independently
//! built packets and an independent checksum (`test_packets`).

use super::test_packets::*;
use super::*;

#[test]
fn header_round_trips_little_endian() {
    let hdr = VirtioNetHdr {
        flags: NEEDS_CSUM,
        gso_type: GSO_TCPV6 | GSO_ECN,
        hdr_len: 0x0148,
        gso_size: 0x051c,
        csum_start: 40,
        csum_offset: 16,
    };
    let bytes = hdr.to_bytes();
    assert_eq!(bytes, [1, 0x84, 0x48, 0x01, 0x1c, 0x05, 40, 0, 16, 0]);
    let mut buf = bytes.to_vec();
    buf.extend_from_slice(b"packet");
    assert_eq!(VirtioNetHdr::parse(&buf), Some((hdr, &b"packet"[..])));
    assert_eq!(VirtioNetHdr::parse(&buf[..9]), None);
    let mut short = [0u8; 9];
    assert_eq!(hdr.write(&mut short), None);
    assert_eq!(short, [0; 9], "nothing written into a short buffer");
    let mut out = [0u8; 12];
    assert_eq!(hdr.write(&mut out), Some(()));
    assert_eq!(out[..10], bytes);
}

#[test]
fn tso_super_segment_splits_into_checksummed_segments() {
    let base = 0xffff_f000; // the sequence number wraps inside the super-segment
    let payload = pattern(64_000, 0x5a);
    let mut t = Tcp6::data(base);
    t.flags = ACK | PSH | FIN | CWR;
    let mut packet = t.build(&payload);
    // The kernel leaves the pseudo-header sum in the field; it must not matter.
    packet[56..58].copy_from_slice(&[0x12, 0x34]);
    let hdr = VirtioNetHdr {
        flags: NEEDS_CSUM,
        gso_type: GSO_TCPV6 | GSO_ECN,
        hdr_len: 200, // skb_headlen: not the real header length
        gso_size: MSS as u16,
        csum_start: 40,
        csum_offset: 16,
    };
    let segs = segment_all(&hdr, &packet).unwrap();
    assert_eq!(segs.len(), 64_000usize.div_ceil(MSS));
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let chunk = &payload[i * MSS..((i + 1) * MSS).min(payload.len())];
        assert_eq!(seg.len(), 40 + 32 + chunk.len(), "segment {i}");
        assert_eq!(
            usize::from(u16::from_be_bytes([seg[4], seg[5]])),
            32 + chunk.len()
        );
        let (seq, ack, flags, data) = tcp_fields(seg);
        assert_eq!(seq, base.wrapping_add((i * MSS) as u32), "segment {i}");
        assert_eq!(ack, t.ack);
        let mut want = ACK;
        if i == 0 {
            want |= CWR;
        }
        if last {
            want |= PSH | FIN;
        }
        assert_eq!(flags, want, "segment {i}");
        assert_eq!(data, chunk, "segment {i}");
        assert_eq!(naive_checksum(seg), 0, "segment {i} checksum");
        // Everything else is the original header.
        assert_eq!(seg[..4], packet[..4]);
        assert_eq!(seg[6..44], packet[6..44]);
        assert_eq!(seg[48..53], packet[48..53]);
        assert_eq!(seg[54..56], packet[54..56]);
        assert_eq!(seg[58..72], packet[58..72]);
    }
}

#[test]
fn buffer_too_small_is_reported_and_the_segment_kept() {
    let packet = Tcp6::data(1).build(&pattern(3 * MSS, 1));
    let hdr = VirtioNetHdr {
        flags: NEEDS_CSUM,
        gso_type: GSO_TCPV6,
        gso_size: MSS as u16,
        csum_start: 40,
        csum_offset: 16,
        ..VirtioNetHdr::NONE
    };
    let mut segs = segments(&hdr, &packet).unwrap();
    assert_eq!((segs.remaining(), segs.max_segment_len()), (3, 72 + MSS));
    let mut small = [0u8; 100];
    assert_eq!(
        segs.next_into(&mut small),
        Err(OffloadError::BufferTooSmall { needed: 72 + MSS })
    );
    assert_eq!(segs.remaining(), 3);
    let mut buf = [0u8; 1500];
    assert_eq!(segs.next_into(&mut buf), Ok(Some(72 + MSS)));
    assert_eq!(tcp_fields(&buf[..72 + MSS]).0, 1);
    assert_eq!(segs.remaining(), 2);
}

#[test]
fn partial_checksums_are_finished_for_any_protocol() {
    // What the kernel hands over with NEEDS_CSUM: the pseudo-header sum in the field.
    let udp = udp6((A, 5000), (B, 53), b"odd-length payload!");
    let ack = Tcp6::data(7).build(&[]);
    let icmp = {
        let mut p = ipv6(58, A, B, &[128, 0, 0, 0, 0, 1, 0, 2, b'x']);
        set_checksum(&mut p, 42);
        p
    };
    for (complete, offset) in [(udp, 6u16), (ack, 16), (icmp, 2)] {
        let mut partial = complete.clone();
        let len = (complete.len() - 40) as u32;
        let field = 40 + usize::from(offset);
        let pseudo = fold(pseudo_header_sum(&complete[8..40], len, complete[6]));
        partial[field..field + 2].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VirtioNetHdr {
            flags: NEEDS_CSUM,
            csum_start: 40,
            csum_offset: offset,
            ..VirtioNetHdr::NONE
        };
        let segs = segment_all(&hdr, &partial).unwrap();
        assert_eq!(segs.len(), 1);
        assert_eq!(naive_checksum(&segs[0]), 0);
        // Identical unless the right checksum is 0, which is stored as 0xffff.
        if complete[field..field + 2] != [0, 0] {
            assert_eq!(segs[0], complete);
        }
        // Without NEEDS_CSUM the packet is passed on untouched.
        let whole = segment_all(&VirtioNetHdr::NONE, &partial).unwrap();
        assert_eq!(whole, vec![partial]);
    }
}

#[test]
fn unsupported_or_malformed_requests_are_errors() {
    let good = Tcp6::data(1).build(&pattern(3000, 2));
    let tso = VirtioNetHdr {
        flags: NEEDS_CSUM,
        gso_type: GSO_TCPV6,
        hdr_len: 72,
        gso_size: MSS as u16,
        csum_start: 40,
        csum_offset: 16,
    };
    assert_eq!(segment_all(&tso, &good).unwrap().len(), 3);
    let with = |f: &dyn Fn(&mut VirtioNetHdr)| {
        let mut h = tso;
        f(&mut h);
        h
    };
    for gso in [GSO_TCPV4, GSO_UDP, GSO_UDP_L4, GSO_TCPV4 | GSO_ECN, 2, 0x7f] {
        let err = segments(&with(&|h| h.gso_type = gso), &good).unwrap_err();
        assert_eq!(err, OffloadError::UnsupportedGso(gso));
    }
    let err = segments(&with(&|h| h.gso_size = 0), &good).unwrap_err();
    assert!(matches!(err, OffloadError::Malformed(_)), "{err}");
    let err = segments(&with(&|h| h.csum_start = 20), &good).unwrap_err();
    assert!(matches!(err, OffloadError::Malformed(_)), "{err}");
    let partial = with(&|h| {
        h.gso_type = GSO_NONE;
        h.csum_start = 3000;
        h.csum_offset = 100;
    });
    assert!(segments(&partial, &good).is_err());
    let partial = with(&|h| {
        h.gso_type = GSO_NONE;
        h.csum_start = u16::MAX;
        h.csum_offset = u16::MAX;
    });
    assert!(segments(&partial, &good).is_err());

    // Extension header, IPv4, UDP inside a TCPv6 request.
    for (byte, value) in [(6, 0u8), (6, 17), (0, 0x45)] {
        let mut p = good.clone();
        p[byte] = value;
        assert_eq!(segments(&tso, &p).unwrap_err(), OffloadError::NotTcp6);
    }
    // Payload length disagreeing with the read, TCP header beyond the packet or too short.
    assert_eq!(
        segments(&tso, &good[..good.len() - 1]).unwrap_err(),
        OffloadError::Truncated
    );
    let mut p = good.clone();
    p[52] = 0x40;
    assert!(matches!(
        segments(&tso, &p),
        Err(OffloadError::Malformed(_))
    ));
    let mut p = Tcp6::data(1).build(&[]);
    p[52] = 0xf0; // 60-byte header in a 32-byte one
    assert_eq!(segments(&tso, &p).unwrap_err(), OffloadError::Truncated);
    assert_eq!(
        segments(&tso, &good[..45]).unwrap_err(),
        OffloadError::Truncated
    );
    assert_eq!(
        segments(&VirtioNetHdr::NONE, &[]).unwrap_err(),
        OffloadError::Truncated
    );
    // A TSO request with no payload is one header-only segment.
    let bare = Tcp6::data(9).build(&[]);
    assert_eq!(segment_all(&tso, &bare).unwrap(), vec![bare]);
}

#[test]
fn segmenting_random_input_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let valid = Tcp6::data(3).build(&pattern(5000, 3));
    let mut buf = vec![0u8; 70_000];
    for round in 0..20_000 {
        let mut head = [0u8; VNET_HDR_LEN];
        rng.fill(&mut head);
        let mut hdr = VirtioNetHdr::parse(&head).unwrap().0;
        // Mostly plausible requests, so the checks deep inside are reached too.
        if round % 2 == 0 {
            hdr.gso_type = [GSO_NONE, GSO_TCPV6, GSO_TCPV6 | GSO_ECN][rng.below(3)];
            hdr.flags = NEEDS_CSUM;
            hdr.gso_size = rng.below(3000) as u16;
            (hdr.csum_start, hdr.csum_offset) = if rng.below(2) == 0 {
                (40, 16)
            } else {
                (rng.below(6000) as u16, rng.below(100) as u16)
            };
        }
        let mut packet = if round % 3 == 0 {
            let mut p = vec![0u8; rng.below(200)];
            rng.fill(&mut p);
            p
        } else {
            valid[..rng.below(valid.len() + 1)].to_vec()
        };
        for _ in 0..rng.below(4) {
            if !packet.is_empty() {
                let i = rng.below(packet.len());
                packet[i] = rng.next() as u8;
            }
        }
        let out_len = if rng.below(4) == 0 {
            rng.below(2000)
        } else {
            buf.len()
        };
        if let Ok(mut segs) = segments(&hdr, &packet) {
            let mut produced = 0;
            while let Ok(Some(n)) = segs.next_into(&mut buf[..out_len]) {
                assert!(n <= segs.max_segment_len() && n <= out_len);
                produced += 1;
            }
            assert!(produced <= 65_535);
        }
    }
}
