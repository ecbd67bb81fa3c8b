//! Loopback tests of answering from the address a question was sent to, on sockets bound to
//! a wildcard address (IP_PKTINFO / IPV6_RECVPKTINFO in, IP_PKTINFO / IPV6_PKTINFO out).
//! Linux answers for all of 127.0.0.0/8 on `lo`, so 127.0.0.2 and .3 are a host's second and
//! third address without any setup.

use super::*;
use crate::io::test_support::{in_new_netns, ip_here, privileged_or_skip};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How `server` answers in `ask`.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    /// From the address each question was sent to (`push_from` with its destination).
    FromDestination,
    /// Without naming a source: the kernel picks one.
    Plain,
}

/// A plain socket at `client` sends one question to each of `asked` (at `server`'s port);
/// `server` answers each with three equal datagrams (a GSO group) as `answer` says. Returns
/// the destinations `server` saw, in order, and where each answer came from.
fn ask(
    server: &UdpSocket,
    client: SocketAddr,
    asked: &[IpAddr],
    answer: Answer,
) -> (Vec<Option<IpAddr>>, Vec<(SocketAddr, String)>) {
    let client = std::net::UdpSocket::bind(client).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    for ip in asked {
        let to = SocketAddr::new(*ip, server.local_port());
        client.send_to(ip.to_string().as_bytes(), to).unwrap();
    }
    let mut batch = RecvBatch::new(8, MAX_DATAGRAM);
    let mut out = SendBatch::new(3 * asked.len(), 100);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(1);
    while seen.len() < asked.len() && Instant::now() < deadline {
        let n = match batch.recv(server) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => panic!("recv: {e}"),
        };
        for i in 0..n {
            let (from, question) = batch.get(i);
            let destination = batch.destination(i);
            seen.push(destination);
            let src = match answer {
                Answer::FromDestination => destination,
                Answer::Plain => None,
            };
            for _ in 0..3 {
                out.push_from(question, src, from);
            }
        }
    }
    assert_eq!(seen.len(), asked.len(), "questions lost");
    out.flush(server).unwrap();
    assert_eq!(out.send_errors(), 0);
    let answers = (0..3 * asked.len())
        .map(|_| {
            let mut buf = [0u8; 100];
            let (n, from) = client.recv_from(&mut buf).expect("an answer");
            (from, String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .collect();
    (seen, answers)
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|ip| ip.parse().unwrap()).collect()
}

/// Each answer came from the address its question was sent to (the question's text).
fn assert_from_asked(answers: &[(SocketAddr, String)], port: u16) {
    for (from, text) in answers {
        let asked: IpAddr = text.parse().unwrap();
        assert_eq!(
            *from,
            SocketAddr::new(asked, port),
            "answer to a question to {text}"
        );
    }
}

#[test]
fn a_wildcard_ipv4_socket_answers_from_the_address_asked_at() {
    let server = UdpSocket::bind_addr("0.0.0.0:0".parse().unwrap()).unwrap();
    assert!(server.report_destinations().unwrap());
    let port = server.local_port();
    let asked = ips(&["127.0.0.2", "127.0.0.3", "127.0.0.1"]);
    let client = "127.0.0.1:0".parse().unwrap();

    // Without a named source the kernel answers from the address it prefers, 127.0.0.1 —
    // the bug a NAT in front of the asker turns into silence.
    let (seen, answers) = ask(&server, client, &asked, Answer::Plain);
    assert_eq!(seen, asked.iter().copied().map(Some).collect::<Vec<_>>());
    assert!(answers.iter().all(|(from, _)| from.ip() == asked[2]));

    let (seen, answers) = ask(&server, client, &asked, Answer::FromDestination);
    assert_eq!(seen, asked.iter().copied().map(Some).collect::<Vec<_>>());
    assert_from_asked(&answers, port);
}

#[test]
fn gso_groups_keep_their_source() {
    let server = UdpSocket::bind_addr("0.0.0.0:0".parse().unwrap()).unwrap();
    assert!(server.report_destinations().unwrap() && server.gso_enabled());
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let to = client.local_addr().unwrap();
    // Three equal datagrams from .2, three from .3, to one destination: two GSO entries.
    let mut out = SendBatch::new(8, 100);
    for src in ips(&[
        "127.0.0.2",
        "127.0.0.2",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.3",
        "127.0.0.3",
    ]) {
        out.push_from(src.to_string().as_bytes(), Some(src), to);
    }
    out.flush(&server).unwrap();
    assert_eq!(out.stats.entries, 2);
    assert_eq!(out.stats.gso_entries, 2);
    let mut buf = [0u8; 100];
    let answers: Vec<_> = (0..6)
        .map(|_| {
            let (n, from) = client.recv_from(&mut buf).unwrap();
            (from, String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .collect();
    assert_from_asked(&answers, server.local_port());
}

#[test]
fn the_dual_stack_socket_reports_ipv4_destinations_as_plain_ipv4() {
    let server = UdpSocket::bind(0).unwrap();
    assert!(server.dual_stack && server.report_destinations().unwrap());
    let asked = ips(&["127.0.0.2", "127.0.0.3"]);
    let (seen, answers) = ask(
        &server,
        "127.0.0.1:0".parse().unwrap(),
        &asked,
        Answer::FromDestination,
    );
    assert_eq!(seen, asked.iter().copied().map(Some).collect::<Vec<_>>());
    assert_from_asked(&answers, server.local_port());
}

#[test]
fn the_dual_stack_socket_answers_ipv6_from_the_address_asked_at() {
    if !privileged_or_skip("the_dual_stack_socket_answers_ipv6_from_the_address_asked_at") {
        return;
    }
    // IPv6 has one loopback address; a namespace of our own gets two more on `lo`.
    in_new_netns(|| {
        ip_here(&["link", "set", "lo", "up"]);
        for ip in ["2001:db8::1/128", "2001:db8::2/128"] {
            ip_here(&["addr", "add", ip, "dev", "lo", "nodad"]);
        }
        let server = UdpSocket::bind(0).unwrap();
        assert!(server.report_destinations().unwrap());
        let asked = ips(&["2001:db8::2", "2001:db8::1", "::1"]);
        let client = "[::1]:0".parse().unwrap();
        let (_, plain) = ask(&server, client, &asked, Answer::Plain);
        assert!(
            plain.iter().all(|(from, _)| from.ip() == asked[2]),
            "{plain:?}"
        );
        let (seen, answers) = ask(&server, client, &asked, Answer::FromDestination);
        assert_eq!(seen, asked.iter().copied().map(Some).collect::<Vec<_>>());
        assert_from_asked(&answers, server.local_port());
        // IPv4 on the same socket, in the same batch as IPv6.
        let (_, answers) = ask(
            &server,
            "127.0.0.1:0".parse().unwrap(),
            &ips(&["127.0.0.2"]),
            Answer::FromDestination,
        );
        assert_from_asked(&answers, server.local_port());
    });
}

#[test]
fn a_socket_bound_to_one_address_is_left_alone() {
    let server = UdpSocket::bind_addr("127.0.0.2:0".parse().unwrap()).unwrap();
    assert!(!server.report_destinations().unwrap());
    let (seen, answers) = ask(
        &server,
        "127.0.0.1:0".parse().unwrap(),
        &ips(&["127.0.0.2"]),
        Answer::FromDestination,
    );
    assert_eq!(seen, [None]);
    assert_from_asked(&answers, server.local_port());
}

#[test]
fn a_source_of_the_other_family_is_ignored() {
    // Not what a server does, but it must not make the datagram fail.
    let server = UdpSocket::bind(0).unwrap();
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut out = SendBatch::new(2, 100);
    out.push_from(
        b"x",
        Some("::1".parse().unwrap()),
        client.local_addr().unwrap(),
    );
    out.flush(&server).unwrap();
    assert_eq!(out.send_errors(), 0);
    let mut buf = [0u8; 8];
    let (_, from) = client.recv_from(&mut buf).unwrap();
    assert_eq!(from.ip(), IpAddr::from([127, 0, 0, 1]));
}
