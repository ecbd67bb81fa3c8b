//! The offloads against the real kernel (root; skipped otherwise, fatal under CI=true): a TUN
//! with IFF_VNET_HDR and TUNSETOFFLOAD in a private network namespace, and a fake TCP peer
//! written here that answers the kernel's sockets through it.
//!
//! Read side: a kernel socket sends 200 KB to the fake peer, which must arrive as TSO
//! super-segments that `segments` cuts into valid TCP segments. Write side: the fake peer
//! sends 100 KB to a kernel listener as coalesced super-segments, which the kernel must
//! accept and acknowledge whole.

use std::io::{Read, Write};
use std::net::{Ipv6Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::test_packets::*;
use super::*;
use crate::io::test_support::{in_new_netns, privileged_or_skip, unique_ifname};
use crate::io::tun::{TunDevice, OFFLOAD_READ_LEN};

const LOCAL: Ipv6Addr = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0, 0, 1);
const PEER: Ipv6Addr = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0, 0, 2);
const MTU: u32 = 1380;
/// MTU - 40 (IPv6) - 20 (TCP without options: neither side offers timestamps here).
const PEER_MSS: usize = 1320;
const PEER_ISN: u32 = 0x7000_0000;

/// An offloading TUN with LOCAL/80 on it, in the calling thread's namespace.
fn offload_tun() -> TunDevice {
    let name = unique_ifname();
    let tun = TunDevice::create_with_offload(&name).expect("create TUN with offload");
    assert!(tun.vnet_hdr(), "IFF_VNET_HDR must be set");
    assert!(tun.offload(), "TUNSETOFFLOAD must succeed on this kernel");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(crate::io::netlink::configure_interface(
        &name, LOCAL, 80, MTU,
    ))
    .expect("configure");
    tun
}

/// The next TCP packet from the TUN between LOCAL and PEER (other traffic, such as MLD
/// reports, is skipped), with its virtio-net header.
fn read_tcp(tun: &TunDevice, buf: &mut [u8], deadline: Instant) -> (VirtioNetHdr, Vec<u8>) {
    loop {
        match tun.recv(buf) {
            Ok(n) => {
                assert!(n < buf.len(), "read filled the buffer: truncated?");
                let (hdr, packet) = VirtioNetHdr::parse(&buf[..n]).expect("virtio-net header");
                if packet.len() >= 60 && packet[6] == 6 && packet[24..40] == PEER.octets() {
                    return (hdr, packet.to_vec());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(!left.is_zero(), "timed out waiting for the kernel");
                let mut pfd = libc::pollfd {
                    fd: tun.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
            }
            Err(e) => panic!("TUN read: {e}"),
        }
    }
}

/// Writes a plain packet, behind an empty virtio-net header.
fn write_plain(tun: &TunDevice, packet: &[u8]) {
    let mut buf = VirtioNetHdr::NONE.to_bytes().to_vec();
    buf.extend_from_slice(packet);
    assert_eq!(tun.send(&buf).expect("TUN write"), buf.len());
}

/// A segment from the fake peer on `port` to the kernel's `kernel_port`.
fn from_peer(port: u16, kernel_port: u16, seq: u32, ack: u32, flags: u8) -> Tcp6 {
    Tcp6 {
        src: PEER,
        dst: LOCAL,
        sport: port,
        dport: kernel_port,
        seq,
        ack,
        flags,
        window: 65535,
        options: Vec::new(),
        hop_limit: 64,
        traffic_class: 0,
    }
}

#[test]
fn kernel_tso_super_segments_split_into_valid_tcp() {
    if !privileged_or_skip("kernel_tso_super_segments_split_into_valid_tcp") {
        return;
    }
    in_new_netns(|| {
        let tun = offload_tun();
        let data = pattern(200_000, 0x3c);
        let sent = data.clone();
        // A thread spawned here shares this thread's network namespace.
        let sender = std::thread::spawn(move || {
            let mut s = TcpStream::connect_timeout(&(PEER, 9).into(), Duration::from_secs(5))
                .expect("connect through the TUN");
            // Bounded, so a failed test does not leave this thread blocked.
            s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(&sent).expect("send");
            s
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = vec![0u8; OFFLOAD_READ_LEN];

        let (hdr, syn) = read_tcp(&tun, &mut buf, deadline);
        let (isn, _, flags, _) = tcp_fields(&syn);
        assert_eq!((flags, hdr.gso_type), (SYN, GSO_NONE), "{hdr:?}");
        let kernel_port = u16::from_be_bytes([syn[40], syn[41]]);
        let mut syn_ack = from_peer(9, kernel_port, PEER_ISN, isn.wrapping_add(1), SYN | ACK);
        // MSS 1320, window scale 7 (NOP-padded): the kernel may have 8 MB in flight.
        syn_ack.options = vec![2, 4, 0x05, 0x28, 1, 3, 3, 7];
        write_plain(&tun, &syn_ack.build(&[]));

        let mut expected = isn.wrapping_add(1);
        let mut received = Vec::new();
        let (mut reads, mut gso_reads, mut biggest) = (0, 0, 0);
        let mut seg = vec![0u8; 2000];
        while received.len() < data.len() {
            let (hdr, packet) = read_tcp(&tun, &mut buf, deadline);
            reads += 1;
            biggest = biggest.max(packet.len());
            if hdr.gso_type != GSO_NONE {
                gso_reads += 1;
                assert_eq!(hdr.gso_type & !GSO_ECN, GSO_TCPV6, "{hdr:?}");
                assert_eq!(usize::from(hdr.gso_size), PEER_MSS, "{hdr:?}");
                assert_eq!((hdr.csum_start, hdr.csum_offset), (40, 16), "{hdr:?}");
            }
            let mut segs = segments(&hdr, &packet).expect("kernel packet must segment");
            while let Some(n) = segs.next_into(&mut seg).unwrap() {
                let s = &seg[..n];
                assert!(n <= MTU as usize, "segment of {n} bytes exceeds the MTU");
                assert_eq!(naive_checksum(s), 0, "segment checksum");
                let (seq, _, _, payload) = tcp_fields(s);
                if !payload.is_empty() {
                    assert_eq!(seq, expected, "segments must be contiguous");
                    expected = expected.wrapping_add(payload.len() as u32);
                    received.extend_from_slice(payload);
                }
            }
            let ack = from_peer(9, kernel_port, PEER_ISN + 1, expected, ACK);
            write_plain(&tun, &ack.build(&[]));
        }
        assert!(received == data, "the bytes the socket sent, in order");
        eprintln!(
            "TSO: {reads} reads for 200000 bytes, {gso_reads} of them GSO, largest {biggest} bytes"
        );
        assert!(
            gso_reads > 0,
            "the kernel never handed over a super-segment"
        );
        assert!(biggest > MTU as usize);
        drop(sender.join().expect("sender"));
    });
}

#[test]
fn kernel_accepts_coalesced_super_segments() {
    if !privileged_or_skip("kernel_accepts_coalesced_super_segments") {
        return;
    }
    in_new_netns(|| {
        let tun = offload_tun();
        let listener = TcpListener::bind((LOCAL, 0)).expect("listen");
        let kernel_port = listener.local_addr().unwrap().port();
        let data = pattern(100_000, 0xa5);
        let total = data.len();
        listener.set_nonblocking(true).unwrap();
        let receiver = std::thread::spawn(move || {
            // Polled with a deadline, so a failed test does not leave this thread blocked.
            let give_up = Instant::now() + Duration::from_secs(20);
            let mut s = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(_) if Instant::now() < give_up => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = vec![0u8; total];
            s.read_exact(&mut got)
                .expect("the kernel socket must get every byte");
            got
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = vec![0u8; OFFLOAD_READ_LEN];
        const PORT: u16 = 40_000;

        let mut syn = from_peer(PORT, kernel_port, PEER_ISN, 0, SYN);
        syn.options = vec![2, 4, 0x05, 0x28]; // MSS 1320
        write_plain(&tun, &syn.build(&[]));
        let (_, syn_ack) = read_tcp(&tun, &mut buf, deadline);
        let (kernel_isn, ack, flags, _) = tcp_fields(&syn_ack);
        assert_eq!((flags, ack), (SYN | ACK, PEER_ISN + 1));
        let mut window = usize::from(u16::from_be_bytes([syn_ack[54], syn_ack[55]]));
        let their_seq = kernel_isn.wrapping_add(1);
        let mut seq = PEER_ISN + 1;
        write_plain(
            &tun,
            &from_peer(PORT, kernel_port, seq, their_seq, ACK).build(&[]),
        );

        let mut coalescer = Coalescer::new(64, 64 * 1500);
        let (mut sent, mut super_segments, mut rounds) = (0, 0, 0);
        while sent < total {
            // One batch: as much as the kernel's window allows, the last segment with PSH.
            let batch_end = total.min(sent + window.min(60 * PEER_MSS));
            assert!(batch_end > sent, "the kernel closed its window");
            while sent < batch_end {
                let len = PEER_MSS.min(batch_end - sent);
                let flags = if sent + len == batch_end {
                    ACK | PSH
                } else {
                    ACK
                };
                let segment = from_peer(PORT, kernel_port, seq, their_seq, flags);
                coalescer
                    .push(&segment.build(&data[sent..sent + len]))
                    .expect("room");
                seq = seq.wrapping_add(len as u32);
                sent += len;
            }
            coalescer.for_each_output(|out| {
                let (hdr, packet) = VirtioNetHdr::parse(out).unwrap();
                if hdr.gso_type == GSO_TCPV6 {
                    super_segments += 1;
                    assert!(packet.len() > MTU as usize);
                }
                assert_eq!(
                    tun.send(out).expect("TUN write of a super-segment"),
                    out.len()
                );
            });
            rounds += 1;
            // The kernel acknowledges everything sent so far, and reopens its window.
            loop {
                let (_, reply) = read_tcp(&tun, &mut buf, deadline);
                let (_, ack, flags, _) = tcp_fields(&reply);
                assert_eq!(flags & (SYN | RST), 0, "unexpected reply flags {flags:#x}");
                if ack == seq {
                    window = usize::from(u16::from_be_bytes([reply[54], reply[55]]));
                    break;
                }
            }
        }
        let got = receiver.join().expect("receiver");
        assert!(got == data, "the socket must read exactly the bytes sent");
        eprintln!("GRO: {total} bytes in {rounds} rounds as {super_segments} super-segments");
        assert!(super_segments >= rounds, "every round must coalesce");
    });
}
