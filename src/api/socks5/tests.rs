//! Both sides over in-memory pipes: the pair against each other, each against scripted bytes.

use std::time::Duration;

use tokio::io::{duplex, DuplexStream};
use tokio::time::timeout;

use super::*;

/// Far beyond anything an in-memory exchange takes: reaching it means a side hangs.
const LIMIT: Duration = Duration::from_secs(5);

/// `curl --socks5-hostname` asking for bob.pilot:8080: greeting, then request.
const NAME_REQUEST: &[u8] = b"\x05\x01\x00\x05\x01\x00\x03\x09bob.pilot\x1f\x90";
const IPV4_REQUEST: &[u8] = b"\x05\x01\x00\x05\x01\x00\x01\x0a\x00\x00\x01\x00\x50";
const IPV6_REQUEST: &[u8] =
    b"\x05\x01\x00\x05\x01\x00\x04\xfd\x70\0\0\0\0\0\0\0\x01\0\x02\0\x03\0\x04\x1f\x90";
const GREETING_LEN: usize = 3;

/// What a refusal after `05 00` looks like: the method choice, then REP with `0.0.0.0:0`.
fn refused_with(code: u8) -> Vec<u8> {
    vec![5, 0, 5, code, 0, 1, 0, 0, 0, 0, 0, 0]
}

/// Feeds `bytes` to `accept` as a client that then stops sending; returns what `accept` made
/// of them and every byte the proxy side sent back.
async fn accept_bytes(bytes: &[u8]) -> (Result<Target, Socks5Error>, Vec<u8>) {
    let (mut client, mut proxy) = duplex(4096);
    client.write_all(bytes).await.unwrap();
    client.shutdown().await.unwrap();
    let result = timeout(LIMIT, accept(&mut proxy))
        .await
        .expect("accept hangs on a closed client");
    drop(proxy);
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    (result, answer)
}

/// Runs `connect` against a proxy that sends `answer` and then stops sending; returns the
/// outcome and the client's stream, still readable.
async fn connect_scripted(
    answer: &[u8],
    target: &Target,
) -> (Result<(), Socks5Error>, DuplexStream) {
    let (mut client, mut proxy) = duplex(4096);
    proxy.write_all(answer).await.unwrap();
    proxy.shutdown().await.unwrap();
    let result = timeout(LIMIT, connect(&mut client, target))
        .await
        .expect("connect hangs on a closed proxy");
    (result, client)
}

/// Our client against our proxy: returns the target the proxy saw, having checked that the
/// first byte after the handshake is the proxied data's.
async fn through_the_pair(target: &Target, bound: SocketAddr) -> Target {
    let (mut client, mut proxy) = duplex(4096);
    let proxy_side = async {
        let seen = accept(&mut proxy).await?;
        reply(&mut proxy, Reply::Succeeded, bound).await.unwrap();
        proxy.write_all(b"hello").await.unwrap();
        Ok::<_, Socks5Error>(seen)
    };
    let (seen, connected) = timeout(LIMIT, async {
        tokio::join!(proxy_side, connect(&mut client, target))
    })
    .await
    .expect("the pair hangs");
    connected.unwrap();
    let mut data = [0; 5];
    client.read_exact(&mut data).await.unwrap();
    assert_eq!(&data, b"hello");
    seen.unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn the_pair_agrees_on_every_kind_of_target() {
    let targets = [
        Target::Name("bob.pilot".into(), 8080),
        Target::Ip("[fd70::1:2:3]:8080".parse().unwrap()),
        Target::Ip("10.0.0.1:80".parse().unwrap()),
    ];
    let bounds = ["[fd70::9]:4242", "127.0.0.1:1080"].map(|b| b.parse().unwrap());
    for target in &targets {
        for bound in bounds {
            assert_eq!(&through_the_pair(target, bound).await, target);
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_name_of_255_bytes_goes_through_and_256_is_refused_before_sending() {
    let longest = Target::Name(format!("{}.pilot", "a".repeat(249)), 443);
    let bound = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    assert_eq!(through_the_pair(&longest, bound).await, longest);

    let too_long = Target::Name(format!("{}.pilot", "a".repeat(250)), 443);
    let (mut client, mut proxy) = duplex(4096);
    let result = connect(&mut client, &too_long).await;
    assert!(
        matches!(result, Err(Socks5Error::NameLength(256))),
        "{result:?}"
    );
    drop(client);
    let mut sent = Vec::new();
    proxy.read_to_end(&mut sent).await.unwrap();
    assert_eq!(sent, b"");
    let (result, _) = connect_scripted(b"", &Target::Name(String::new(), 443)).await;
    assert!(
        matches!(result, Err(Socks5Error::NameLength(0))),
        "{result:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn accept_reads_what_curl_sends() {
    let (target, answer) = accept_bytes(NAME_REQUEST).await;
    assert_eq!(target.unwrap(), Target::Name("bob.pilot".into(), 8080));
    assert_eq!(answer, [5, 0]);

    let (target, _) = accept_bytes(IPV4_REQUEST).await;
    assert_eq!(target.unwrap(), Target::Ip("10.0.0.1:80".parse().unwrap()));
    let (target, _) = accept_bytes(IPV6_REQUEST).await;
    assert_eq!(
        target.unwrap(),
        Target::Ip("[fd70::1:2:3:4]:8080".parse().unwrap())
    );
}

#[tokio::test(flavor = "current_thread")]
async fn an_address_literal_in_the_name_field_is_an_address() {
    let mut request = b"\x05\x01\x00\x05\x01\x00\x03\x0dfd70::1:2:3:4".to_vec();
    request.extend_from_slice(&[0, 80]);
    let (target, _) = accept_bytes(&request).await;
    assert_eq!(
        target.unwrap(),
        Target::Ip("[fd70::1:2:3:4]:80".parse().unwrap())
    );
}

#[tokio::test(flavor = "current_thread")]
async fn targets_display_as_host_and_port() {
    assert_eq!(
        Target::Ip("[fd70::1]:80".parse().unwrap()).to_string(),
        "[fd70::1]:80"
    );
    assert_eq!(
        Target::Ip("10.0.0.1:80".parse().unwrap()).to_string(),
        "10.0.0.1:80"
    );
    assert_eq!(
        Target::Name("bob.pilot".into(), 80).to_string(),
        "bob.pilot:80"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn replies_are_written_as_the_rfc_lays_them_out() {
    let mut wire = Vec::new();
    reply(
        &mut wire,
        Reply::Succeeded,
        "10.1.2.3:1080".parse().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(wire, [5, 0, 0, 1, 10, 1, 2, 3, 0x04, 0x38]);

    let mut wire = Vec::new();
    reply(
        &mut wire,
        Reply::ConnectionRefused,
        "[fd70::1]:80".parse().unwrap(),
    )
    .await
    .unwrap();
    let mut expected = vec![5, 5, 0, 4, 0xfd, 0x70];
    expected.extend_from_slice(&[0; 13]);
    expected.extend_from_slice(&[1, 0, 80]);
    assert_eq!(wire, expected);
}

#[tokio::test(flavor = "current_thread")]
async fn a_client_without_no_authentication_gets_05_ff() {
    // Offers username/password (0x02) only.
    let (result, answer) = accept_bytes(&[5, 1, 2]).await;
    assert!(
        matches!(result, Err(Socks5Error::NoAcceptableMethod)),
        "{result:?}"
    );
    assert_eq!(answer, [5, 0xff]);
    assert_eq!(
        result.unwrap_err().to_string(),
        "the client offers no method this proxy accepts (only no-authentication)"
    );
    // Offers nothing at all.
    let (result, answer) = accept_bytes(&[5, 0]).await;
    assert!(
        matches!(result, Err(Socks5Error::NoAcceptableMethod)),
        "{result:?}"
    );
    assert_eq!(answer, [5, 0xff]);
}

#[tokio::test(flavor = "current_thread")]
async fn bind_and_udp_associate_get_07() {
    for (command, name) in [(2, "BIND"), (3, "UDP ASSOCIATE"), (9, "an unknown command")] {
        let request = [5, 1, 0, 5, command, 0, 1, 127, 0, 0, 1, 0, 80];
        let (result, answer) = accept_bytes(&request).await;
        let Err(e @ Socks5Error::UnsupportedCommand(c)) = result else {
            panic!("command {command}: {result:?}");
        };
        assert_eq!(c, command);
        assert!(e.to_string().contains(name), "{e}");
        assert_eq!(answer, refused_with(7));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_unknown_address_type_gets_08() {
    let (result, answer) = accept_bytes(&[5, 1, 0, 5, 1, 0, 9, 1, 2, 3, 4, 0, 80]).await;
    assert!(
        matches!(result, Err(Socks5Error::UnknownAddressType(9))),
        "{result:?}"
    );
    assert_eq!(answer, refused_with(8));
}

#[tokio::test(flavor = "current_thread")]
async fn malformed_names_get_01() {
    let empty = [5, 1, 0, 5, 1, 0, 3, 0, 0, 80];
    let (result, answer) = accept_bytes(&empty).await;
    assert!(matches!(result, Err(Socks5Error::EmptyName)), "{result:?}");
    assert_eq!(answer, refused_with(1));

    let not_utf8 = [5, 1, 0, 5, 1, 0, 3, 2, 0xff, 0xfe, 0, 80];
    let (result, answer) = accept_bytes(&not_utf8).await;
    assert!(
        matches!(result, Err(Socks5Error::NameNotText)),
        "{result:?}"
    );
    assert_eq!(answer, refused_with(1));

    let control = b"\x05\x01\x00\x05\x01\x00\x03\x0abob\n.pilot\x00\x50";
    let (result, _) = accept_bytes(control).await;
    assert!(
        matches!(result, Err(Socks5Error::NameNotText)),
        "{result:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn something_that_is_not_socks5_is_named_and_gets_no_reply() {
    let cases: [(&[u8], &str); 4] = [
        (
            b"GET / HTTP/1.1\r\nHost: bob.pilot:8080\r\n\r\n",
            "not a SOCKS5 client (version byte 0x47 — an HTTP request sent to the proxy port?)",
        ),
        (
            b"CONNECT bob.pilot:8080 HTTP/1.1\r\n\r\n",
            "not a SOCKS5 client (version byte 0x43 — an HTTP request sent to the proxy port?)",
        ),
        (
            b"\x04\x01\x1f\x90\x0a\x00\x00\x01\x00",
            "not a SOCKS5 client (version byte 0x04 — a SOCKS4 client? use SOCKS5 with remote names, e.g. socks5h://)",
        ),
        (
            b"\x16\x03\x01\x02\x00",
            "not a SOCKS5 client (version byte 0x16 — a TLS handshake sent to the proxy port?)",
        ),
    ];
    for (bytes, message) in cases {
        let (result, answer) = accept_bytes(bytes).await;
        assert_eq!(result.unwrap_err().to_string(), message);
        assert_eq!(answer, b"");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn every_truncated_request_is_an_error() {
    for full in [NAME_REQUEST, IPV4_REQUEST, IPV6_REQUEST] {
        for len in 0..full.len() {
            let (result, _) = accept_bytes(&full[..len]).await;
            let expected = if len < GREETING_LEN {
                Stage::Greeting
            } else {
                Stage::Request
            };
            match result {
                Err(Socks5Error::Truncated(stage)) if stage == expected => {}
                other => panic!("{len} bytes of {full:?}: {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn every_truncated_answer_is_an_error() {
    let name_bound = b"\x05\x00\x05\x00\x00\x03\x0dproxy.example\x04\x38";
    let ipv4_bound = b"\x05\x00\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38";
    let ipv6_bound = b"\x05\x00\x05\x00\x00\x04\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01\x04\x38";
    let target = Target::Name("bob.pilot".into(), 8080);
    for full in [&name_bound[..], &ipv4_bound[..], &ipv6_bound[..]] {
        let (result, _) = connect_scripted(full, &target).await;
        assert!(result.is_ok(), "{result:?}");
        for len in 0..full.len() {
            let (result, _) = connect_scripted(&full[..len], &target).await;
            let expected = if len < 2 {
                Stage::MethodChoice
            } else {
                Stage::Reply
            };
            match result {
                Err(Socks5Error::Truncated(stage)) if stage == expected => {}
                other => panic!("{len} bytes of {full:?}: {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn connect_consumes_the_whole_reply_whatever_the_bound_address() {
    let target = Target::Ip("[fd70::1]:80".parse().unwrap());
    let answer = b"\x05\x00\x05\x00\x00\x03\x0dproxy.example\x04\x38hello";
    let (result, mut client) = connect_scripted(answer, &target).await;
    result.unwrap();
    let mut data = Vec::new();
    client.read_to_end(&mut data).await.unwrap();
    assert_eq!(data, b"hello");

    let (result, _) = connect_scripted(b"\x05\x00\x05\x00\x00\x07\x00\x00", &target).await;
    assert!(
        matches!(result, Err(Socks5Error::UnknownAddressType(7))),
        "{result:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn connect_sends_the_greeting_then_the_request() {
    let (mut client, mut proxy) = duplex(4096);
    proxy.write_all(&[5, 0]).await.unwrap();
    proxy.write_all(&refused_with(5)[2..]).await.unwrap();
    let target = Target::Name("bob.pilot".into(), 8080);
    let result = timeout(LIMIT, connect(&mut client, &target)).await.unwrap();
    assert!(
        matches!(result, Err(Socks5Error::Rejected(5))),
        "{result:?}"
    );
    drop(client);
    let mut sent = Vec::new();
    proxy.read_to_end(&mut sent).await.unwrap();
    assert_eq!(sent, NAME_REQUEST);
}

#[tokio::test(flavor = "current_thread")]
async fn every_failure_reply_is_an_error_naming_it() {
    let target = Target::Name("bob.pilot".into(), 8080);
    for code in 1..=u8::MAX {
        // Some proxies close right after REP: the rest of a failure is not waited for.
        let (result, _) = connect_scripted(&[5, 0, 5, code], &target).await;
        let Err(e @ Socks5Error::Rejected(c)) = result else {
            panic!("code {code}: {result:?}");
        };
        assert_eq!(c, code);
        let expected = match Reply::from_code(code) {
            Some(reply) => format!("the proxy says: {reply}"),
            None => format!(
                "the proxy refused with reply code {code:#04x}, which RFC 1928 leaves unassigned"
            ),
        };
        assert_eq!(e.to_string(), expected);
    }
    let (result, _) = connect_scripted(&[5, 0, 5, 5], &target).await;
    assert_eq!(
        result.unwrap_err().to_string(),
        "the proxy says: connection refused"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn reply_codes_are_the_rfc_ones() {
    for code in 0..=8 {
        assert_eq!(Reply::from_code(code).map(Reply::code), Some(code));
    }
    assert_eq!(Reply::CommandNotSupported.code(), 7);
    assert_eq!(Reply::from_code(9), None);
}

#[tokio::test(flavor = "current_thread")]
async fn a_proxy_that_wants_authentication_or_is_not_socks5_is_named() {
    let target = Target::Name("bob.pilot".into(), 8080);
    let (result, _) = connect_scripted(&[5, 0xff], &target).await;
    assert!(
        matches!(result, Err(Socks5Error::MethodRefused(0xff))),
        "{result:?}"
    );
    assert!(result
        .unwrap_err()
        .to_string()
        .contains("wants authentication"));

    let (result, _) = connect_scripted(&[5, 2], &target).await;
    assert!(
        matches!(result, Err(Socks5Error::MethodRefused(2))),
        "{result:?}"
    );

    let (result, _) = connect_scripted(b"HTTP/1.1 400 Bad Request\r\n\r\n", &target).await;
    assert!(
        matches!(result, Err(Socks5Error::NotSocks5Proxy(b'H'))),
        "{result:?}"
    );
}

#[test]
fn the_proxy_warns_when_other_hosts_can_reach_it() {
    for addr in [
        "127.0.0.1:1080",
        "127.8.9.10:1",
        "[::1]:1080",
        "[::ffff:127.0.0.1]:1080",
    ] {
        let addr: SocketAddr = addr.parse().unwrap();
        assert_eq!(exposure_warning(addr), None, "{addr}");
    }
    for addr in [
        "0.0.0.0:1080",
        "192.0.2.7:1080",
        "[::]:1080",
        "[2001:db8::1]:1080",
    ] {
        let addr: SocketAddr = addr.parse().unwrap();
        let warning = exposure_warning(addr).unwrap_or_else(|| panic!("no warning for {addr}"));
        for part in [
            &addr.to_string()[..],
            "no authentication",
            "every peer this node trusts",
            "--socks5 127.0.0.1:1080",
        ] {
            assert!(warning.contains(part), "no `{part}` in: {warning}");
        }
    }
}
