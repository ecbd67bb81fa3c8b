//! Loopback tests of the whole module: what crosses, in which order, in how many syscalls.

use super::send::SendStats;
use super::*;
use crate::io::test_support::{in_new_netns, ip_here, privileged_or_skip, run_here};
use std::time::{Duration, Instant};

fn loopback6(sock: &UdpSocket) -> SocketAddr {
    SocketAddr::from((Ipv6Addr::LOCALHOST, sock.local_port()))
}

fn loopback4(sock: &UdpSocket) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, sock.local_port()))
}

/// Waits until `sock` is readable and the kernel has had time to queue a burst.
fn settle(sock: &UdpSocket) {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    assert_eq!(
        unsafe { libc::poll(&mut pfd, 1, 2000) },
        1,
        "nothing arrived"
    );
    std::thread::sleep(Duration::from_millis(50));
}

/// Receives until `want` datagrams have arrived or a second has passed.
fn recv_all(sock: &UdpSocket, batch: &mut RecvBatch, want: usize) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(1);
    while got.len() < want && Instant::now() < deadline {
        match batch.recv(sock) {
            Ok(n) => got.extend((0..n).map(|i| (batch.get(i).0, batch.get(i).1.to_vec()))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
    got
}

fn payload(i: usize) -> Vec<u8> {
    (0..1 + (i * 97) % 1400)
        .map(|j| (i * 7 + j) as u8)
        .collect()
}

/// `len` bytes that differ from those of any other (tag, i).
fn content(tag: u8, i: usize, len: usize) -> Vec<u8> {
    let mut data: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
    data[..3].copy_from_slice(&[tag, i as u8, (i >> 8) as u8]);
    data
}

#[test]
fn full_batch_crosses_in_one_flush_and_one_recv() {
    let (a, b) = (UdpSocket::bind(0).unwrap(), UdpSocket::bind(0).unwrap());
    let mut out = SendBatch::new(MAX_BATCH, 1500);
    for i in 0..MAX_BATCH {
        let p = payload(i);
        if i % 2 == 0 {
            out.next_slot()[..p.len()].copy_from_slice(&p);
            out.commit(p.len(), loopback6(&b));
        } else {
            out.push(&p, loopback6(&b));
        }
    }
    assert!(out.is_full() && out.len() == MAX_BATCH);
    out.flush(&a).unwrap();
    assert!(out.is_empty() && !out.is_full());
    assert_eq!(out.send_errors(), 0);

    settle(&b);
    let mut inb = RecvBatch::new(MAX_BATCH, 1500);
    assert_eq!(
        inb.recv(&b).unwrap(),
        MAX_BATCH,
        "one recvmmsg should take the whole batch"
    );
    for i in 0..MAX_BATCH {
        let (from, data) = inb.get(i);
        assert_eq!(from, loopback6(&a));
        assert_eq!(data, payload(i), "datagram {i}");
    }
    assert_eq!(inb.recv(&b).unwrap_err().kind(), io::ErrorKind::WouldBlock);
}

/// 64 full-size datagrams to `b` (more than one GSO send holds), six to `c` ending in a
/// shorter one, two more to `b`: (destination, datagram) in queue order.
fn mixed_plan(b: SocketAddr, c: SocketAddr) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut plan: Vec<_> = (0..64).map(|i| (b, content(1, i, 1420))).collect();
    plan.extend((0..5).map(|i| (c, content(2, i, 1000))));
    plan.push((c, content(2, 5, 300)));
    plan.extend((0..2).map(|i| (b, content(3, i, 500))));
    plan
}

/// Sends `mixed_plan` from a fresh socket in one flush, checks what `b` and `c` receive
/// and returns what the flush asked of the kernel and how many buffers arrived coalesced.
fn send_mixed_plan(v4: bool, gso: bool) -> (SendStats, u64) {
    let (a, b, c) = (
        UdpSocket::bind(0).unwrap(),
        UdpSocket::bind(0).unwrap(),
        UdpSocket::bind(0).unwrap(),
    );
    let gro = |s: &UdpSocket| nix_socket::getsockopt(&s.socket, sockopt::UdpGroSegment).unwrap();
    assert!(
        a.gso_enabled() && gro(&b) && gro(&c),
        "this kernel has GSO and GRO"
    );
    a.gso.store(gso, Ordering::Relaxed);
    let at = if v4 { loopback4 } else { loopback6 };
    let plan = mixed_plan(at(&b), at(&c));
    let mut out = SendBatch::new(plan.len(), 1500);
    for (to, datagram) in &plan {
        out.push(datagram, *to);
    }
    out.flush(&a).unwrap();
    assert!(out.is_empty());
    assert_eq!(out.send_errors(), 0);

    let mut coalesced = 0;
    for dest in [&b, &c] {
        let sent: Vec<_> = plan
            .iter()
            .filter(|(to, _)| *to == at(dest))
            .map(|(_, d)| (at(&a), d.clone()))
            .collect();
        let mut inb = RecvBatch::new(MAX_BATCH, MAX_DATAGRAM);
        let got = recv_all(dest, &mut inb, sent.len());
        assert_eq!(got.len(), sent.len(), "count (v4: {v4}, gso: {gso})");
        assert!(
            got == sent,
            "contents or order differ (v4: {v4}, gso: {gso})"
        );
        coalesced += inb.coalesced;
    }
    (out.stats, coalesced)
}

#[test]
fn gso_groups_cross_intact_and_in_order() {
    for v4 in [false, true] {
        let (stats, coalesced) = send_mixed_plan(v4, true);
        // 46 + 18 to b (65507 bytes hold 46 of 1420), 6 to c, 2 to b: one syscall.
        let want = SendStats {
            syscalls: 1,
            entries: 4,
            gso_entries: 4,
        };
        assert_eq!(stats, want, "v4: {v4}");
        // Loopback hands GSO buffers to a GRO socket whole.
        assert_eq!(coalesced, 4, "v4: {v4}");
    }
}

#[test]
fn without_gso_the_same_batch_crosses_one_entry_per_datagram() {
    for v4 in [false, true] {
        let (stats, coalesced) = send_mixed_plan(v4, false);
        let want = SendStats {
            syscalls: 1,
            entries: 72,
            gso_entries: 0,
        };
        assert_eq!(stats, want, "v4: {v4}");
        assert_eq!(coalesced, 0, "v4: {v4}");
    }
}

/// 39 datagrams of 1000 bytes and one of 123 to `to`, in one GSO send from `a`.
fn send_forty(a: &UdpSocket, to: SocketAddr) -> Vec<Vec<u8>> {
    let sent: Vec<_> = (0..40)
        .map(|i| content(4, i, if i == 39 { 123 } else { 1000 }))
        .collect();
    let mut out = SendBatch::new(MAX_BATCH, 1500);
    for datagram in &sent {
        out.push(datagram, to);
    }
    out.flush(a).unwrap();
    let want = SendStats {
        syscalls: 1,
        entries: 1,
        gso_entries: 1,
    };
    assert_eq!(out.stats, want);
    sent
}

#[test]
fn gro_buffer_comes_out_as_separate_datagrams() {
    for v4 in [false, true] {
        let (a, b) = (UdpSocket::bind(0).unwrap(), UdpSocket::bind(0).unwrap());
        let at = if v4 { loopback4 } else { loopback6 };
        let sent = send_forty(&a, at(&b));
        settle(&b);
        let mut inb = RecvBatch::new(4, MAX_DATAGRAM);
        assert_eq!(inb.recv(&b).unwrap(), 40, "v4: {v4}");
        assert_eq!(inb.coalesced, 1, "one buffer held them all (v4: {v4})");
        for (i, datagram) in sent.iter().enumerate() {
            assert_eq!(inb.get(i), (at(&a), &datagram[..]), "datagram {i}");
        }
        assert_eq!(inb.recv(&b).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }
}

#[test]
fn receivers_without_gro_get_gso_sends_segmented() {
    let a = UdpSocket::bind(0).unwrap();
    let b = UdpSocket::bind(0).unwrap();
    nix_socket::setsockopt(&b.socket, sockopt::UdpGroSegment, &false).unwrap();
    let sent = send_forty(&a, loopback6(&b));
    let mut inb = RecvBatch::new(MAX_BATCH, 1500);
    let got = recv_all(&b, &mut inb, 40);
    assert!(got.iter().map(|g| &g.1).eq(&sent));
    assert_eq!(inb.coalesced, 0);

    // A peer that is not this program at all.
    let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sent = send_forty(&a, plain.local_addr().unwrap());
    plain
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0; 2000];
    for datagram in &sent {
        let n = plain.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], datagram);
    }
}

#[test]
fn buffers_of_more_datagrams_than_fit_are_returned_over_several_recvs() {
    let (a, b) = (UdpSocket::bind(0).unwrap(), UdpSocket::bind(0).unwrap());
    // 100 segments in one send: more than SendBatch ever groups, but kernels since 6.11
    // take up to 128, and loopback delivers them as one buffer.
    let sent: Vec<u8> = (0..100 * 50).map(|j| (j / 50) as u8).collect();
    let to =
        nix_socket::SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::LOCALHOST, b.local_port(), 0, 0));
    let segment = 50u16;
    let cmsgs = [nix_socket::ControlMessage::UdpGsoSegments(&segment)];
    let iov = [io::IoSlice::new(&sent)];
    match nix_socket::sendmsg(
        a.as_raw_fd(),
        &iov,
        &cmsgs,
        nix_socket::MsgFlags::empty(),
        Some(&to),
    ) {
        Ok(_) => {}
        Err(nix::errno::Errno::EINVAL) => {
            eprintln!("skipping: this kernel takes at most 64 segments per send");
            return;
        }
        Err(e) => panic!("sendmsg: {e}"),
    }
    settle(&b);
    let mut inb = RecvBatch::new(1, MAX_DATAGRAM);
    let first = inb.recv(&b).unwrap();
    assert!(first < 100, "{first}");
    let mut got: Vec<Vec<u8>> = (0..first).map(|i| inb.get(i).1.to_vec()).collect();
    let rest = inb.recv(&b).unwrap();
    got.extend((0..rest).map(|i| inb.get(i).1.to_vec()));
    assert_eq!(inb.coalesced, 1, "one recvmmsg, one buffer");
    assert_eq!(got.len(), 100);
    for (i, datagram) in got.iter().enumerate() {
        assert_eq!(datagram[..], [i as u8; 50], "datagram {i}");
    }
    assert_eq!(inb.recv(&b).unwrap_err().kind(), io::ErrorKind::WouldBlock);
}

#[test]
fn ipv4_peers_are_plain_v4_both_ways() {
    let (a, b) = (UdpSocket::bind(0).unwrap(), UdpSocket::bind(0).unwrap());
    let b4 = SocketAddr::from(([127, 0, 0, 1], b.local_port()));
    let mut out = SendBatch::new(4, 100);
    out.push(b"batched", b4);
    out.flush(&a).unwrap();
    a.send_to(b"single", b4).unwrap();
    let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    plain.send_to(b"from v4-only", b4).unwrap();

    let got = recv_all(&b, &mut RecvBatch::new(8, 100), 3);
    let a4 = SocketAddr::from(([127, 0, 0, 1], a.local_port()));
    assert_eq!(got[0], (a4, b"batched".to_vec()));
    assert_eq!(got[1], (a4, b"single".to_vec()));
    assert_eq!(
        got[2],
        (plain.local_addr().unwrap(), b"from v4-only".to_vec())
    );

    // And the reply path: a plain IPv4 endpoint as destination reaches a v4-only peer.
    out.push(b"reply", plain.local_addr().unwrap());
    out.flush(&b).unwrap();
    let mut buf = [0u8; 16];
    plain
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let (n, from) = plain.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..n], from),
        (
            &b"reply"[..],
            SocketAddr::from(([127, 0, 0, 1], b.local_port()))
        )
    );
}

#[test]
fn failing_datagrams_are_dropped_and_counted_not_wedged() {
    let (a, b) = (UdpSocket::bind(0).unwrap(), UdpSocket::bind(0).unwrap());
    let mut out = SendBatch::new(8, MAX_DATAGRAM);
    out.push(b"one", loopback6(&b));
    out.push(b"port zero", SocketAddr::from((Ipv6Addr::LOCALHOST, 0))); // EINVAL
    out.push(b"two", loopback6(&b));
    let too_big = vec![0u8; MAX_DATAGRAM];
    out.push(&too_big, SocketAddr::from(([127, 0, 0, 1], b.local_port()))); // EMSGSIZE
    out.push(b"three", loopback6(&b));
    out.flush(&a).unwrap();
    assert_eq!(out.send_errors(), 2);
    assert!(out.is_empty());
    let got: Vec<_> = recv_all(&b, &mut RecvBatch::new(8, 100), 3)
        .into_iter()
        .map(|g| g.1)
        .collect();
    assert_eq!(got, [&b"one"[..], b"two", b"three"]);
}

#[test]
fn a_failing_group_counts_all_its_datagrams_and_keeps_gso() {
    let (a, b) = (UdpSocket::bind(0).unwrap(), UdpSocket::bind(0).unwrap());
    let mut out = SendBatch::new(8, 100);
    let port_zero = SocketAddr::from((Ipv6Addr::LOCALHOST, 0));
    for _ in 0..3 {
        out.push(b"nowhere", port_zero); // EINVAL, with or without GSO
    }
    out.push(b"one", loopback6(&b));
    out.push(b"two", loopback6(&b));
    out.flush(&a).unwrap();
    assert_eq!(out.send_errors(), 3);
    // Sent alone the datagrams failed just the same: the destination, not GSO, was wrong.
    assert!(a.gso_enabled());
    assert_eq!(out.stats.gso_entries, 1);
    let got: Vec<_> = recv_all(&b, &mut RecvBatch::new(8, MAX_DATAGRAM), 2)
        .into_iter()
        .map(|g| g.1)
        .collect();
    assert_eq!(got, [&b"one"[..], b"two"]);
}

#[test]
fn refused_gso_is_resent_datagram_by_datagram_and_turned_off() {
    if !privileged_or_skip("refused_gso_is_resent_datagram_by_datagram_and_turned_off") {
        return;
    }
    in_new_netns(|| {
        ip_here(&["link", "set", "lo", "up"]);
        // A segment must fit the route's MTU, a plain datagram gets fragmented instead.
        ip_here(&["link", "set", "lo", "mtu", "1280"]);
        for v4 in [false, true] {
            let (a, b) = (UdpSocket::bind(0).unwrap(), UdpSocket::bind(0).unwrap());
            let at = if v4 { loopback4 } else { loopback6 };
            let sent: Vec<_> = (0..3).map(|i| content(5, i, 1300)).collect();
            let mut out = SendBatch::new(8, 1500);
            for datagram in &sent {
                out.push(datagram, at(&b));
            }
            out.flush(&a).unwrap();
            assert_eq!(out.send_errors(), 0, "v4: {v4}");
            assert!(!a.gso_enabled(), "GSO is off after the refusal (v4: {v4})");
            let want = SendStats {
                syscalls: 2,
                entries: 3,
                gso_entries: 0,
            };
            assert_eq!(out.stats, want, "v4: {v4}");
            let got = recv_all(&b, &mut RecvBatch::new(8, MAX_DATAGRAM), 3);
            assert!(got.iter().map(|g| &g.1).eq(&sent), "v4: {v4}");
        }
    });
}

#[test]
fn unreachable_destination_does_not_stop_the_batch() {
    if !privileged_or_skip("unreachable_destination_does_not_stop_the_batch") {
        return;
    }
    // A namespace with only `lo`, so "unreachable" is certain and nothing leaves the host.
    in_new_netns(|| {
        ip_here(&["link", "set", "lo", "up"]);
        let (a, b) = (UdpSocket::bind(0).unwrap(), UdpSocket::bind(0).unwrap());
        let mut out = SendBatch::new(8, 100);
        out.push(b"before", loopback6(&b));
        out.push(b"x", "[2001:db8::1]:9".parse().unwrap()); // ENETUNREACH
        out.push(b"x", "192.0.2.1:9".parse().unwrap()); // ENETUNREACH
        out.push(b"after", loopback6(&b));
        out.flush(&a).unwrap();
        assert_eq!(out.send_errors(), 2);
        let got: Vec<_> = recv_all(&b, &mut RecvBatch::new(8, 100), 2)
            .into_iter()
            .map(|g| g.1)
            .collect();
        assert_eq!(got, [&b"before"[..], b"after"]);
    });
}

/// Fills a batch, lets the kernel push back part-way and checks the rest follows in order.
/// With GSO the datagrams come in groups of four, and whole groups stay queued.
fn full_send_buffer_case(gso: bool) {
    in_new_netns(move || {
        ip_here(&["link", "set", "lo", "up"]);
        // A nearly stopped qdisc holds the datagrams, which stay charged to the sender's
        // (small) send buffer, so sendmmsg soon reports EAGAIN.
        let tbf = ["rate", "1kbit", "burst", "10kb", "limit", "10mb"];
        run_here(
            "tc",
            &[&["qdisc", "add", "dev", "lo", "root", "tbf"][..], &tbf].concat(),
        );
        let (a, b) = (UdpSocket::bind(0).unwrap(), UdpSocket::bind(0).unwrap());
        a.gso.store(gso, Ordering::Relaxed);
        nix_socket::setsockopt(&a.socket, sockopt::SndBuf, &4096).unwrap();
        let mut out = SendBatch::new(MAX_BATCH, 1000);
        for i in 0..MAX_BATCH {
            out.push(&vec![i as u8; 1000 - (i / 4) % 2], loopback6(&b));
        }
        let err = out.flush(&a).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        let unsent = out.len();
        assert!(unsent > 0 && unsent < MAX_BATCH, "{unsent} unsent");
        assert!(!gso || unsent.is_multiple_of(4), "{unsent} unsent");
        assert!(out.is_full() && out.send_errors() == 0);

        // Dropping the qdisc frees the held datagrams; the rest goes out in order.
        run_here("tc", &["qdisc", "del", "dev", "lo", "root"]);
        out.flush(&a).unwrap();
        assert!(out.is_empty() && out.send_errors() == 0);
        assert_eq!(out.stats.gso_entries > 0, gso);
        // Datagrams the qdisc let through or dropped come first or not at all; the
        // unsent tail must arrive complete and in order.
        let got = recv_all(&b, &mut RecvBatch::new(MAX_BATCH, MAX_DATAGRAM), MAX_BATCH);
        let firsts: Vec<u8> = got.iter().map(|(_, d)| d[0]).collect();
        let expected: Vec<u8> = (MAX_BATCH - unsent..MAX_BATCH).map(|i| i as u8).collect();
        assert!(firsts.ends_with(&expected), "{firsts:?}, {unsent} unsent");
    });
}

#[test]
fn full_send_buffer_keeps_the_rest_queued_for_the_next_flush() {
    if !privileged_or_skip("full_send_buffer_keeps_the_rest_queued_for_the_next_flush") {
        return;
    }
    // One GSO send would carry all 64 equal datagrams, so this checks the plain path.
    full_send_buffer_case(false);
}

#[test]
fn full_send_buffer_keeps_whole_gso_groups_queued() {
    if !privileged_or_skip("full_send_buffer_keeps_whole_gso_groups_queued") {
        return;
    }
    full_send_buffer_case(true);
}

#[test]
fn truncated_datagrams_are_skipped_and_counted() {
    let (a, b) = (UdpSocket::bind(0).unwrap(), UdpSocket::bind(0).unwrap());
    a.send_to(&[1; 200], loopback6(&b)).unwrap();
    a.send_to(&[2; 64], loopback6(&b)).unwrap();
    settle(&b);
    let mut inb = RecvBatch::new(4, 100);
    assert_eq!(inb.recv(&b).unwrap(), 1);
    assert_eq!(inb.get(0).1, [2; 64]);
    assert_eq!(inb.truncated(), 1);
    // A batch holding only truncated datagrams yields WouldBlock, never Ok(0).
    a.send_to(&[3; 200], loopback6(&b)).unwrap();
    settle(&b);
    assert_eq!(inb.recv(&b).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    assert_eq!(inb.truncated(), 2);
}

#[test]
fn bind_is_dual_stack_nonblocking_with_big_buffers() {
    let sock = UdpSocket::bind(0).unwrap();
    assert!(sock.dual_stack && sock.local_port() != 0);
    let fd = sock.as_raw_fd();
    // SAFETY: fcntl(F_GETFL) on an open fd.
    assert_ne!(
        unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_NONBLOCK,
        0
    );
    let v6only = nix_socket::getsockopt(&sock.socket, sockopt::Ipv6V6Only).unwrap();
    assert!(!v6only);
    // GRO on, and GSO known but not set as a default for every send.
    assert!(nix_socket::getsockopt(&sock.socket, sockopt::UdpGroSegment).unwrap());
    assert_eq!(
        nix_socket::getsockopt(&sock.socket, sockopt::UdpGsoSegment).unwrap(),
        0
    );
    // Without CAP_NET_ADMIN the size is capped by net.core.rmem_max, so only assert
    // the full 4 MiB (reported doubled) when running as root.
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let rcv = nix_socket::getsockopt(&sock.socket, sockopt::RcvBuf).unwrap();
        assert!(rcv >= 2 * SOCKET_BUFFER_BYTES, "SO_RCVBUF {rcv}");
    }
}
