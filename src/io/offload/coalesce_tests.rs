//! Unit tests of coalescing: what merges, what does not, order, limits, and a round trip
//! through our own segmentation.

use super::test_packets::*;
use super::*;

#[test]
fn run_of_segments_becomes_one_super_segment_that_resegments_to_the_originals() {
    let t = Tcp6::data(0xffff_0000);
    let mut packets = run(&t, t.seq, 40);
    let mut last = t.clone();
    last.seq = t.seq.wrapping_add((40 * MSS) as u32);
    last.flags = ACK | PSH;
    packets.push(last.build(&pattern(500, 0xee)));

    let out = coalesce(&packets);
    assert_eq!(out.len(), 1);
    let (hdr, sup) = &out[0];
    let payload = 40 * MSS + 500;
    assert_eq!(
        *hdr,
        VirtioNetHdr {
            flags: NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            hdr_len: 72,
            gso_size: MSS as u16,
            csum_start: 40,
            csum_offset: 16,
        }
    );
    assert_eq!(sup.len(), 72 + payload);
    assert_eq!(
        usize::from(u16::from_be_bytes([sup[4], sup[5]])),
        32 + payload
    );
    let (seq, _, flags, data) = tcp_fields(sup);
    assert_eq!((seq, flags), (t.seq, ACK | PSH));
    let want: Vec<u8> = packets.iter().flat_map(|p| p[72..].to_vec()).collect();
    assert_eq!(data, want);
    // The checksum field holds the uncomplemented pseudo-header sum over the whole TCP
    // length: finishing it the way the kernel does gives the right checksum.
    let field = u16::from_be_bytes([sup[56], sup[57]]);
    assert_eq!(
        !field,
        naive_checksum_of_pseudo(&sup[8..40], (32 + payload) as u32)
    );
    let finished = segment_all(
        &VirtioNetHdr {
            gso_type: GSO_NONE,
            ..*hdr
        },
        sup,
    )
    .unwrap();
    assert_eq!(naive_checksum(&finished[0]), 0);
    // Our own segmentation gives back the originals, byte for byte.
    assert_eq!(segment_all(hdr, sup).unwrap(), packets);
}

/// The complemented checksum of an empty upper layer: the pseudo-header alone.
fn naive_checksum_of_pseudo(addrs: &[u8], len: u32) -> u16 {
    let mut sum: u32 = 0;
    let mut words = addrs.to_vec();
    words.extend_from_slice(&len.to_be_bytes());
    words.extend_from_slice(&[0, 0, 0, 6]);
    for pair in words.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[test]
fn a_single_segment_and_other_protocols_pass_through_with_an_empty_header() {
    let packets = vec![
        Tcp6::data(1).build(&pattern(100, 1)),
        udp6((A, 1), (B, 2), b"udp"),
        ipv6(58, A, B, &[128, 0, 0, 0, 0, 0, 0, 0]),
        vec![0x45; 60],
        vec![0x60; 3],
        Vec::new(),
    ];
    let out = coalesce(&packets);
    let want: Vec<_> = packets
        .iter()
        .map(|p| (VirtioNetHdr::NONE, p.clone()))
        .collect();
    assert_eq!(out, want);
}

#[test]
fn out_of_order_segments_keep_their_order() {
    let t = Tcp6::data(0);
    let s = run(&t, 0, 5);
    let m = MSS as u32;
    let out = coalesce(&[s[0].clone(), s[2].clone(), s[1].clone()]);
    assert_eq!(shape(&out), [(1, 0), (1, 2 * m), (1, m)]);
    let out = coalesce(&[
        s[0].clone(),
        s[1].clone(),
        s[3].clone(),
        s[4].clone(),
        s[2].clone(),
    ]);
    assert_eq!(shape(&out), [(2, 0), (2, 3 * m), (1, 2 * m)]);
    // A retransmission of the first segment does not join.
    let out = coalesce(&[s[0].clone(), s[1].clone(), s[0].clone()]);
    assert_eq!(shape(&out), [(2, 0), (1, 0)]);
}

#[test]
fn interleaved_flows_merge_separately() {
    let a = Tcp6::data(100);
    let mut b = Tcp6::data(9000);
    b.sport = 1001;
    let mut c = Tcp6::data(100);
    c.src = B;
    c.dst = A;
    let (ra, rb, rc) = (run(&a, 100, 3), run(&b, 9000, 3), run(&c, 100, 3));
    let mut packets = Vec::new();
    for i in 0..3 {
        packets.extend([ra[i].clone(), rb[i].clone(), rc[i].clone()]);
    }
    let out = coalesce(&packets);
    assert_eq!(shape(&out), [(3, 100), (3, 9000), (3, 100)]);
    assert_eq!(segment_all(&out[0].0, &out[0].1).unwrap(), ra);
    assert_eq!(segment_all(&out[1].0, &out[1].1).unwrap(), rb);
    assert_eq!(segment_all(&out[2].0, &out[2].1).unwrap(), rc);
}

#[test]
fn flagged_segments_break_the_run() {
    let m = MSS as u32;
    for flag in [SYN, FIN, RST, URG, ECE, CWR, 0] {
        let t = Tcp6::data(0);
        let mut s = run(&t, 0, 5);
        let mut odd = t.clone();
        odd.seq = 2 * m;
        odd.flags = if flag == 0 { 0 } else { ACK | flag }; // 0: not even ACK
        s[2] = odd.build(&pattern(MSS, 2));
        let out = coalesce(&s);
        assert_eq!(
            shape(&out),
            [(2, 0), (1, 2 * m), (2, 3 * m)],
            "flag {flag:#x}"
        );
        assert_eq!(out[1].1, s[2]);
    }
    // A packet that cannot merge keeps later segments of its flow behind it, even ones that
    // would continue the open run: a pure ACK here.
    let t = Tcp6::data(0);
    let s = run(&t, 0, 4);
    let mut ack = t.clone();
    ack.seq = 2 * m;
    let pure_ack = ack.build(&[]);
    let out = coalesce(&[
        s[0].clone(),
        s[1].clone(),
        pure_ack.clone(),
        s[2].clone(),
        s[3].clone(),
    ]);
    assert_eq!(shape(&out), [(2, 0), (1, 2 * m), (2, 2 * m)]);
    assert_eq!(out[1].1, pure_ack);
}

#[test]
fn psh_or_a_short_segment_ends_a_super_segment() {
    let t = Tcp6::data(0);
    let m = MSS as u32;
    let mut s = run(&t, 0, 4);
    let mut psh = t.clone();
    psh.seq = m;
    psh.flags = ACK | PSH;
    s[1] = psh.build(&pattern(MSS, 1));
    let out = coalesce(&s);
    assert_eq!(shape(&out), [(2, 0), (2, 2 * m)]);
    assert_eq!(tcp_fields(&out[0].1).2, ACK | PSH);
    assert_eq!(tcp_fields(&out[1].1).2, ACK);

    let mut s = run(&t, 0, 3);
    let mut short = t.clone();
    short.seq = m;
    s[1] = short.build(&pattern(100, 1));
    s[2] = {
        let mut n = t.clone();
        n.seq = m + 100;
        n.build(&pattern(MSS, 2))
    };
    let out = coalesce(&s);
    assert_eq!(shape(&out), [(2, 0), (1, m + 100)]);
    assert_eq!(out[0].1.len(), 72 + MSS + 100);

    // A first segment shorter than the next: the next would not fit gso_size.
    let mut first = t.clone();
    first.seq = 0;
    let small = first.build(&pattern(1000, 0));
    let mut next = t.clone();
    next.seq = 1000;
    let out = coalesce(&[small, next.build(&pattern(MSS, 1))]);
    assert_eq!(shape(&out), [(1, 0), (1, 1000)]);
}

#[test]
fn any_other_header_difference_breaks_the_run() {
    let m = MSS as u32;
    type Change = (&'static str, fn(&mut Tcp6));
    let changes: [Change; 7] = [
        ("timestamp", |t| t.options[7] ^= 1),
        ("option length", |t| t.options.extend([1, 1, 1, 1])),
        ("ack", |t| t.ack += 1),
        ("window", |t| t.window += 1),
        ("hop limit", |t| t.hop_limit -= 1),
        ("traffic class", |t| t.traffic_class = 3),
        ("destination", |t| t.dst = A),
    ];
    for (what, change) in changes {
        let t = Tcp6::data(0);
        let mut changed = t.clone();
        change(&mut changed);
        let mut s = run(&t, 0, 1);
        s.extend(run(&changed, m, 2));
        let out = coalesce(&s);
        assert_eq!(shape(&out), [(1, 0), (2, m)], "{what}");
    }
}

#[test]
fn a_bad_checksum_is_not_merged_and_passes_through_unchanged() {
    let t = Tcp6::data(0);
    let mut s = run(&t, 0, 3);
    s[1][100] ^= 0x40;
    let out = coalesce(&s);
    let m = MSS as u32;
    assert_eq!(shape(&out), [(1, 0), (1, m), (1, 2 * m)]);
    assert_eq!(out[1].1, s[1]);
}

#[test]
fn super_segments_stop_at_65535_bytes() {
    let t = Tcp6::data(0);
    let packets = run(&t, 0, 60);
    let out = coalesce(&packets);
    // (65535 - 72) / 1308 = 50 segments fit in the first.
    assert_eq!(shape(&out), [(50, 0), (10, (50 * MSS) as u32)]);
    assert!(out.iter().all(|(_, p)| p.len() <= 65535));
    let again: Vec<_> = out
        .iter()
        .flat_map(|(h, p)| segment_all(h, p).unwrap())
        .collect();
    assert_eq!(again, packets);
}

#[test]
fn extension_headers_close_runs_between_the_same_addresses_only() {
    let t = Tcp6::data(0);
    let s = run(&t, 0, 4);
    let m = MSS as u32;
    let hop_by_hop = ipv6(0, A, B, &[6, 0, 1, 4, 0, 0, 0, 0]);
    let out = coalesce(&[
        s[0].clone(),
        s[1].clone(),
        hop_by_hop.clone(),
        s[2].clone(),
        s[3].clone(),
    ]);
    assert_eq!(out.len(), 3);
    assert_eq!(shape(&out[..1]), [(2, 0)]);
    assert_eq!(out[1], (VirtioNetHdr::NONE, hop_by_hop.clone()));
    assert_eq!(shape(&out[2..]), [(2, 2 * m)]);
    // Between other addresses, or UDP between the same ones, it does not.
    let elsewhere = ipv6(0, B, B, &[6, 0, 1, 4, 0, 0, 0, 0]);
    let udp = udp6((A, 1000), (B, 2000), b"same ports, not TCP");
    let out = coalesce(&[s[0].clone(), elsewhere.clone(), udp.clone(), s[1].clone()]);
    assert_eq!(shape(&out[..1]), [(2, 0)]);
    assert_eq!(
        out[1..],
        [(VirtioNetHdr::NONE, elsewhere), (VirtioNetHdr::NONE, udp)]
    );
}

#[test]
fn full_coalescer_refuses_until_written_out() {
    let p = Tcp6::data(0).build(&pattern(MSS, 0));
    let mut c = Coalescer::new(3, 0);
    for _ in 0..3 {
        c.push(&p).unwrap();
    }
    assert_eq!(c.len(), 3);
    assert_eq!(c.push(&p), Err(PushError::Full));
    assert!(c.spare().is_empty());
    assert_eq!(
        c.for_each_output(|_| {}),
        3,
        "the same segment thrice: no merge"
    );
    c.push(&p).unwrap();
    assert_eq!(
        c.push(&vec![0x60; MAX_IPV6_PACKET + 1]),
        Err(PushError::TooLong(65576))
    );
    c.clear();
    assert!(c.is_empty());

    // Bytes run out before packet slots do; the largest packet always fits an empty one.
    let mut c = Coalescer::new(1000, 0);
    let mut pushed = 0;
    while c.push(&p).is_ok() {
        pushed += 1;
    }
    assert_eq!(
        pushed,
        (VNET_HDR_LEN + MAX_IPV6_PACKET) / (VNET_HDR_LEN + p.len())
    );
    c.clear();
    c.push(&vec![0x60; MAX_IPV6_PACKET]).unwrap();
    assert_eq!(c.push(&[0x60]), Err(PushError::Full));
    assert_eq!(c.push(&[]), Err(PushError::Full), "not even a header fits");
    assert_eq!(c.commit(0), Err(PushError::Full));
    assert_eq!(c.for_each_output(|_| {}), 1);
}

#[test]
fn packets_decrypted_into_spare_room_coalesce_like_pushed_ones() {
    let t = Tcp6::data(0);
    let packets = run(&t, 0, 8);
    let mut c = Coalescer::new(8, 8 * 1500);
    for p in &packets {
        let spare = c.spare();
        spare[..p.len()].copy_from_slice(p);
        c.commit(p.len()).unwrap();
    }
    assert_eq!(c.commit(1_000_000), Err(PushError::Full));
    let out = drain(&mut c);
    assert_eq!(shape(&out), [(8, 0)]);
    assert_eq!(segment_all(&out[0].0, &out[0].1).unwrap(), packets);
}

/// Random mixes of several flows' segments (in order, repeated, skipped, flagged, corrupted)
/// with other packets and garbage: nothing panics, every packet comes out exactly once (after
/// re-segmenting), and each flow's packets keep their order.
#[test]
fn random_batches_round_trip_and_keep_per_flow_order() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let flows: Vec<Tcp6> = (0..3)
        .map(|i| {
            let mut t = Tcp6::data(0);
            t.sport = 1000 + i;
            t
        })
        .collect();
    let mut merged = 0;
    for _ in 0..300 {
        let mut next_seq = [0u32, 77_777, 0xffff_ff00];
        let mut batch: Vec<Vec<u8>> = Vec::new();
        for _ in 0..rng.below(64) + 1 {
            let f = rng.below(3);
            let mut t = flows[f].clone();
            let len = match rng.below(10) {
                0 => rng.below(MSS),
                1 => 0,
                _ => MSS,
            };
            t.seq = next_seq[f];
            match rng.below(20) {
                0 => t.flags |= PSH,
                1 => t.flags |= [SYN, FIN, RST, URG][rng.below(4)],
                2 => t.seq = t.seq.wrapping_sub(MSS as u32), // retransmission
                3 => t.seq = t.seq.wrapping_add(MSS as u32), // a loss
                4 => t.ack += 1,
                _ => {}
            }
            next_seq[f] = t.seq.wrapping_add(len as u32);
            let mut p = t.build(&pattern(len, rng.next() as u8));
            match rng.below(25) {
                0 => {
                    let i = rng.below(p.len());
                    p[i] ^= 1 << rng.below(8);
                }
                1 => p.truncate(rng.below(p.len())),
                2 => {
                    p = vec![0; rng.below(100)];
                    rng.fill(&mut p);
                }
                3 => p = udp6((A, 1000), (B, 2000), &pattern(rng.below(50), 0)),
                _ => {}
            }
            batch.push(p);
        }
        let out = coalesce(&batch);
        let mut again: Vec<Vec<u8>> = Vec::new();
        for (hdr, p) in &out {
            if hdr.gso_type == GSO_NONE {
                assert_eq!(*hdr, VirtioNetHdr::NONE);
                again.push(p.clone());
            } else {
                merged += 1;
                again.extend(segment_all(hdr, p).unwrap());
            }
        }
        let flow_of =
            |p: &Vec<u8>| (p.len() >= 60 && p[0] >> 4 == 6 && p[6] == 6).then(|| p[8..44].to_vec());
        for f in &flows {
            let key = Some(f.build(&[])[8..44].to_vec());
            let before: Vec<_> = batch.iter().filter(|p| flow_of(p) == key).collect();
            let after: Vec<_> = again.iter().filter(|p| flow_of(p) == key).collect();
            assert_eq!(before, after, "a flow's packets changed or moved");
        }
        let (mut sorted_in, mut sorted_out) = (batch.clone(), again);
        sorted_in.sort();
        sorted_out.sort();
        assert_eq!(sorted_in, sorted_out);
    }
    assert!(
        merged > 300,
        "only {merged} super-segments: the mix is too hostile"
    );
}
