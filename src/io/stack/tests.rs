//! Two stacks wired back to back (each one's packets are the other's input), with tasks on the
//! far ends of the pipes, as the daemon runs them.

use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const A: Ipv6Addr = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0xa, 0xa, 0xa);
const B: Ipv6Addr = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0xb, 0xb, 0xb);

fn pair(limits: Limits) -> (Stack, Stack) {
    (
        Stack::new(A, 80, 1380, limits, 1),
        Stack::new(B, 80, 1380, limits, 2),
    )
}

/// Moves every queued packet across (unless `drop`), returning how many moved.
fn carry(from: &mut Stack, to: &mut Stack, drop: bool) -> usize {
    let mut n = 0;
    while let Some(p) = from.pop_packet() {
        if !drop {
            to.push_packet(&p);
        }
        from.recycle(p);
        n += 1;
    }
    n
}

/// Runs both stacks and the tasks until `done` is finished or the time is up.
async fn run_until<T>(
    a: &mut Stack,
    b: &mut Stack,
    mut done: tokio::task::JoinHandle<T>,
    drop: bool,
) -> T {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let now = Instant::now();
        a.poll(now);
        b.poll(now);
        let moved = carry(a, b, drop) + carry(b, a, drop);
        if moved == 0 {
            tokio::select! {
                out = &mut done => return out.unwrap(),
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        } else {
            tokio::task::yield_now().await;
        }
        if done.is_finished() {
            return done.await.unwrap();
        }
        assert!(Instant::now() < give_up, "stacks stalled");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_megabytes_stream_crosses_both_ways_intact() {
    let (mut a, mut b) = pair(Limits::default());
    b.listen(8080);
    let (stream, established) = a
        .connect(SocketAddrV6::new(B, 8080, 0, 0), Instant::now())
        .unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let expected = Sha256::digest(&data);
    let client = tokio::spawn(async move {
        established.await.unwrap().unwrap();
        // Write and read at once: an echo holds less than the whole stream.
        let (mut r, mut w) = tokio::io::split(stream);
        let writer = tokio::spawn(async move {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut echo = Vec::new();
        r.read_to_end(&mut echo).await.unwrap();
        writer.await.unwrap();
        Sha256::digest(&echo)
    });
    // Accept on b and echo everything back.
    let accepted = loop {
        let now = Instant::now();
        a.poll(now);
        b.poll(now);
        carry(&mut a, &mut b, false);
        carry(&mut b, &mut a, false);
        if let Some(acc) = b.take_accepted() {
            break acc;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(accepted.port, 8080);
    assert_eq!(*accepted.remote.ip(), A);
    tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(accepted.stream);
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let digest = run_until(&mut a, &mut b, client, false).await;
    assert_eq!(digest, expected);
    // Both sides close; the connections leave the tables.
    for _ in 0..100 {
        let now = Instant::now();
        a.poll(now);
        b.poll(now);
        carry(&mut a, &mut b, false);
        carry(&mut b, &mut a, false);
        tokio::task::yield_now().await;
    }
    assert_eq!(a.stats().connections, 0);
    assert_eq!(b.stats().connections, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_port_nobody_listens_on_is_refused() {
    let (mut a, mut b) = pair(Limits::default());
    let (_stream, established) = a
        .connect(SocketAddrV6::new(B, 9, 0, 0), Instant::now())
        .unwrap();
    let waiter = tokio::spawn(established);
    let outcome = run_until(&mut a, &mut b, waiter, false).await.unwrap();
    assert_eq!(outcome, Err(ConnectError::Refused));
}

#[tokio::test(flavor = "current_thread")]
async fn an_unanswered_connect_times_out() {
    let (mut a, _) = pair(Limits::default());
    let start = Instant::now();
    let (_stream, mut established) = a.connect(SocketAddrV6::new(B, 80, 0, 0), start).unwrap();
    a.poll(start);
    assert!(a.pop_packet().is_some(), "a SYN left");
    let deadline = a.poll_at(start).unwrap();
    assert!(deadline <= start + CONNECT_TIMEOUT);
    a.poll(start + CONNECT_TIMEOUT + Duration::from_millis(1));
    assert_eq!(established.try_recv().unwrap(), Err(ConnectError::TimedOut));
}

#[tokio::test(flavor = "current_thread")]
async fn the_connection_limit_refuses_at_once_both_ways() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let (mut a, mut b) = pair(limits);
    b.listen(7);
    let now = Instant::now();
    let mut streams = Vec::new();
    for _ in 0..2 {
        streams.push(a.connect(SocketAddrV6::new(B, 7, 0, 0), now).unwrap());
    }
    assert_eq!(
        a.connect(SocketAddrV6::new(B, 7, 0, 0), now).unwrap_err(),
        ConnectError::Limit(2)
    );
    assert_eq!(a.stats().limit_refusals, 1);
    // b holds two connections from a; a third peer connection would find no listener.
    let (_, established) = streams.pop().unwrap();
    let _ = run_until(&mut a, &mut b, tokio::spawn(established), false).await;
    for _ in 0..20 {
        let now = Instant::now();
        a.poll(now);
        b.poll(now);
        carry(&mut a, &mut b, false);
        carry(&mut b, &mut a, false);
    }
    assert_eq!(b.stats().connections, 2);
    assert!(
        b.listeners[0].slots.is_empty(),
        "no listener past the limit"
    );
    assert!(b.stats().limit_refusals >= 1);
}

/// A bare TCP SYN (no options) as a peer's kernel would send it, checksum left out (the
/// device does not check it).
fn syn(src: SocketAddrV6, dst: SocketAddrV6) -> Vec<u8> {
    let mut p = vec![0u8; 60];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&20u16.to_be_bytes());
    p[6] = 6; // TCP
    p[7] = 64;
    p[8..24].copy_from_slice(&src.ip().octets());
    p[24..40].copy_from_slice(&dst.ip().octets());
    p[40..42].copy_from_slice(&src.port().to_be_bytes());
    p[42..44].copy_from_slice(&dst.port().to_be_bytes());
    p[44..48].copy_from_slice(&0x1000_0000u32.to_be_bytes());
    p[52] = 5 << 4;
    p[53] = 0x02; // SYN
    p[54..56].copy_from_slice(&65535u16.to_be_bytes());
    p
}

/// Takes every packet `stack` queued; returns the TCP flags and destination port of each.
fn sent_tcp(stack: &mut Stack) -> Vec<(u8, u16)> {
    let mut out = Vec::new();
    while let Some(p) = stack.pop_packet() {
        if p.len() >= 60 && p[6] == 6 {
            out.push((p[53], u16::from_be_bytes([p[42], p[43]])));
        }
        stack.recycle(p);
    }
    out
}

#[tokio::test(flavor = "current_thread")]
async fn half_open_connections_time_out_and_the_port_accepts_again() {
    const SYN_ACK: u8 = 0x12;
    const RST: u8 = 0x04;
    let (mut a, mut b) = pair(Limits::default());
    b.listen(8080);
    let port = SocketAddrV6::new(B, 8080, 0, 0);
    let start = Instant::now();
    // A peer takes both listening slots with SYNs it never completes; its SYN-ACKs are lost.
    let backlog = Limits::default().backlog as u16;
    for p in 0..backlog {
        b.push_packet(&syn(SocketAddrV6::new(A, 40_000 + p, 0, 0), port));
    }
    b.poll(start);
    let answered = sent_tcp(&mut b);
    assert_eq!(answered.len(), usize::from(backlog));
    assert!(answered
        .iter()
        .all(|&(flags, _)| flags & SYN_ACK == SYN_ACK));
    assert_eq!(b.half_open_count(), usize::from(backlog), "port wedged");
    // The stack asks to be woken by the deadline, and keeps the slots until then.
    assert!(b.poll_at(start).unwrap() <= start + HANDSHAKE_TIMEOUT);
    let just_before = start + HANDSHAKE_TIMEOUT - Duration::from_millis(1);
    b.poll(just_before);
    assert_eq!(b.half_open_count(), usize::from(backlog));
    assert_eq!(b.stats().half_open_timeouts, 0);

    // At the deadline: the half-open peers get an RST, and the slots listen again.
    let mut now = start + HANDSHAKE_TIMEOUT;
    b.poll(now);
    b.poll(now);
    let resets: Vec<u16> = sent_tcp(&mut b)
        .into_iter()
        .filter(|&(flags, _)| flags & RST != 0)
        .map(|(_, to)| to)
        .collect();
    assert_eq!(resets.len(), usize::from(backlog), "{resets:?}");
    assert_eq!(b.stats().half_open_timeouts, u64::from(backlog));
    assert_eq!(b.half_open_count(), 0);

    // And a real connection is accepted.
    let (_stream, mut established) = a.connect(port, now).unwrap();
    let outcome = loop {
        a.poll(now);
        b.poll(now);
        carry(&mut a, &mut b, false);
        carry(&mut b, &mut a, false);
        if let Ok(outcome) = established.try_recv() {
            break outcome;
        }
        now += Duration::from_millis(1);
        assert!(now < start + HANDSHAKE_TIMEOUT * 2, "no answer");
    };
    assert_eq!(outcome, Ok(()));
    b.poll(now);
    let accepted = b.take_accepted().expect("accepted on the freed slot");
    assert_eq!(accepted.port, 8080);
    assert_eq!(b.stats().accepted, 1);
}

/// TCP flags of an IPv6 packet carrying TCP with no extension headers.
fn tcp_flags(packet: &[u8]) -> Option<u8> {
    (packet.get(6) == Some(&6)).then(|| packet.get(40 + 13).copied())?
}

/// A connection its task refuses (an exposed port whose local service is down) is reset:
/// the peer gets a RST, never a FIN, and the connection leaves the table.
#[tokio::test(flavor = "current_thread")]
async fn a_refused_connection_is_reset_not_closed() {
    const FIN: u8 = 0x01;
    const RST: u8 = 0x04;
    let (mut a, mut b) = pair(Limits::default());
    b.listen(8080);
    let (_stream, established) = a
        .connect(SocketAddrV6::new(B, 8080, 0, 0), Instant::now())
        .unwrap();
    let waiter = tokio::spawn(established);
    run_until(&mut a, &mut b, waiter, false)
        .await
        .unwrap()
        .unwrap();
    let mut accepted = None;
    for _ in 0..20 {
        b.poll(Instant::now());
        accepted = accepted.or_else(|| b.take_accepted());
    }
    let accepted = accepted.expect("accepted");
    accepted.refusal.refuse();
    drop(accepted.stream);
    let mut flags = Vec::new();
    for _ in 0..20 {
        b.poll(Instant::now());
        while let Some(p) = b.pop_packet() {
            flags.extend(tcp_flags(&p));
            b.recycle(p);
        }
    }
    assert!(flags.iter().any(|f| f & RST != 0), "no RST: {flags:?}");
    assert!(flags.iter().all(|f| f & FIN == 0), "a FIN: {flags:?}");
    assert_eq!(b.stats().connections, 0);
}
