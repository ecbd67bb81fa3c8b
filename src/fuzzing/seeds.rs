//! A few valid inputs per target, to start the fuzzers from the interesting places
//! (`tests/fuzz_corpus.rs` writes them into `fuzz/corpus/` on request, and replays them).

use std::net::SocketAddr;

use super::wire::fixed_identity;
use crate::api::Request;
use crate::hex;
use crate::identity::NodeKey;
use crate::wire::control::{Found, Message, NatKind, Query, RefusalCode};
use crate::wire::envelope::seal;
use crate::wire::trust::{Revocation, Statement, TrustRecord, TrustRequest};

const NOW_MS: u64 = 1_800_000_000_000;

/// Seed inputs for the target called `name` (none for an unknown name).
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "control_message" => messages()
            .iter()
            .map(|m| {
                let mut b = vec![m.kind()];
                m.encode(&mut b);
                b
            })
            .chain([relay_frame()])
            .collect(),
        "envelope" => {
            let mut body = Vec::new();
            messages()[0].encode(&mut body);
            let mut buf = vec![0; body.len() + 114];
            let key = fixed_identity(0).signing_key();
            let n = seal(&mut buf, 0x50, key, NOW_MS, 42, &body).expect("sized");
            buf.truncate(n);
            vec![buf, b"P\x01\x00\x00\x01\x8f\x00\x00\x00\x00\x00\x00\x00\x00\x00\x07body".to_vec()]
        }
        "trust_statement" => statements().iter().map(Statement::to_bytes).collect(),
        "trust_ledger" => vec![
            vec![0, 0, 1, 3, 0, 0, 2, 1, 0, 5, 0, 0, 1],
            vec![0, 1, 2, 3, 0, 0, 2, 2, 1, 6, 0, 0, 1, 0, 1, 2, 7, 0, 0x85],
        ],
        "dns_query" => {
            let query = dns_message(b"\x03bob\x05pilot\x00", 28);
            vec![
                [&[0u8][..], &query].concat(),
                [&[2u8][..], &query].concat(),
                [&[0u8][..], &dns_message(b"\x05pilot\x00", 1)].concat(),
                [&[2u8][..], &dns_message(b"\x07example\x03com\x00", 28)].concat(),
            ]
        }
        "ip_packet" => vec![
            echo_reply(),
            ipv6(17, &[0x13, 0x88, 0, 53, 0, 12, 0, 0, 1, 2, 3, 4]),
            ipv6(58, &[1, 0, 0, 0, 0, 0, 0, 0]),
        ],
        "message_frames" => vec![
            frame(1, b"hello"),
            frame(2, b"{\"a\":[1,2,{\"b\":null}]}"),
            [frame(3, &[0, 1, 2, 255]), frame(1, b"again")].concat(),
            b"PACK\x01\x00\x00\x0420260101-0001".to_vec(),
        ],
        "socks5" => vec![
            b"\x00\x05\x01\x00\x05\x01\x00\x01\x0a\x00\x00\x01\x00\x50".to_vec(),
            b"\x00\x05\x02\x00\x02\x05\x01\x00\x03\x09bob.pilot\x01\xbb".to_vec(),
            [
                &b"\x01\x05\x01\x00\x05\x01\x00\x04"[..],
                &[0xfd, 0x70, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5],
                &[0, 22],
            ]
            .concat(),
            b"\x00\x05\x00\x05\x00\x00\x01\x7f\x00\x00\x01\x1f\x90".to_vec(),
        ],
        "control_json" => requests()
            .iter()
            .map(|r| serde_json::to_vec(r).expect("serialises"))
            .chain([br#"{"ok":true,"data":{"x":1},"error":null}"#.to_vec()])
            .collect(),
        "metrics_http" => vec![
            b"\x00GET /metrics HTTP/1.1\r\nHost: localhost:9100\r\nAccept: */*\r\n\r\n".to_vec(),
            b"\x03HEAD /metrics?x=1 HTTP/1.0\n\n".to_vec(),
            b"\x00GET / HTTP/1.1\r\n\r\n".to_vec(),
        ],
        "config_toml" => vec![
            include_bytes!("../../packaging/pilotd.toml").to_vec(),
            include_bytes!("../../packaging/rendezvous.toml").to_vec(),
            b"rendezvous = \"rdv.example:7400\"\nhostname = \"bob\"\nmtu = 1280\n\
              peers = [\"0000000000000000000000000000000000000000000000000000000000000000@1.2.3.4:5\"]\n"
                .to_vec(),
        ],
        "state_files" => vec![
            [&[0u8][..], trust_json().as_bytes()].concat(),
            [&[1u8][..], identity_json().as_bytes()].concat(),
            [
                &[2u8][..],
                format!(
                    "{{\"rendezvous\":\"rendezvous.example:7400\",\"public_key\":\"{}\"}}",
                    key(3)
                )
                .as_bytes(),
            ]
            .concat(),
        ],
        "hosts_file" => vec![
            b"\x02\x00\x05\x01\x07127.0.0.1 localhost\n::1 localhost\n".to_vec(),
            b"\x01\x02\x09127.0.0.1 localhost\n# BEGIN pilot (managed by pilotd; do not edit)\n\
              fd70::1 bob.pilot\n# END pilot\n10.0.0.1 nas"
                .to_vec(),
            b"\x00\x00# BEGIN pilot\nx\n# END pilot".to_vec(),
        ],
        "offload_segment" => offload_segments(),
        "offload_coalesce" => vec![
            [5u8, 50]
                .into_iter()
                .chain((0..6).flat_map(|_| [0x40, 1, 0x20, 1, 0]))
                .collect(),
            [8u8, 10]
                .into_iter()
                .chain((0..4).flat_map(|i| [0x40 + i % 3, 1, 0x20, 1, 0]))
                .chain([0x40, 0, 30, 0x18, 1, 0, 0xf0, 0, 4, 1, 2, 3, 4])
                .collect(),
        ],
        "node_datagrams" => node_programs(),
        "rendezvous_datagrams" | "rendezvous_queued" => rendezvous_programs(),
        // A PCP request answered as sent (mapped), time to its renewal, the renewal answered,
        // then release; and an SSDP answer for the UPnP parsers.
        "port_mapping" => vec![
            [
                // Ask; the answer with an external port (byte 42) and address (byte 59).
                &[0u8, 0, 0, 2, 2, 42, 0x9c, 59, 1, 0][..],
                // 30.7 min later: the renewal, answered; release, answered.
                &[0, 0x70, 0x80, 2, 2, 42, 0x9c, 59, 1, 0, 4, 2, 0, 0][..],
                b"HTTP/1.1 200 OK\r\nLOCATION: http://198.51.100.1:5000/rootDesc.xml\r\n\r\n",
            ]
            .concat(),
            [&[0u8, 0, 0, 1, 0, 0, 0x81, 0, 1][..], &[0, 0, 1, 0, 0, 0, 0, 4][..]].concat(),
        ],
        _ => Vec::new(),
    }
}

fn key(n: u8) -> NodeKey {
    fixed_identity(n).public_key()
}

fn endpoint(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

fn messages() -> Vec<Message> {
    let name = |s: &str| s.parse().expect("a hostname");
    vec![
        Message::Register {
            lan: vec![endpoint("10.0.0.2:51870"), endpoint("[fe80::1]:51870")],
            hostname: Some(name("bob")),
            trust_digest: 0x1234,
            cookie: Some([7; 16]),
        },
        Message::Registered {
            echo: 1,
            observed: endpoint("203.0.113.9:4000"),
            keepalive_secs: 25,
            resubmit: true,
        },
        Message::NatProbe,
        Message::NatProbeReply {
            echo: 2,
            observed: endpoint("[2001:db8::1]:4000"),
            port: 7401,
        },
        Message::Connect { target: key(1) },
        Message::Punch {
            peer: key(2),
            peer_nat: NatKind::default(),
            candidates: vec![endpoint("198.51.100.2:51870")],
        },
        Message::Probe { target: key(1) },
        Message::ProbeAck {
            echo: 3,
            observed: endpoint("192.0.2.1:9"),
        },
        Message::Refused {
            echo: 4,
            code: RefusalCode::RateLimited,
        },
        Message::Submit {
            statement: statements()[1].clone(),
        },
        Message::Stored { echo: 5 },
        Message::Deliver {
            id: 6,
            from_name: Some(name("alice")),
            statement: statements()[0].clone(),
        },
        Message::Ack { id: 6 },
        Message::Lookup {
            query: Query::Name(name("bob")),
        },
        Message::Lookup {
            query: Query::Key(key(2)),
        },
        Message::LookupReply {
            echo: 7,
            found: Some(Found {
                key: key(2),
                hostname: Some(name("bob")),
            }),
        },
        Message::Challenge {
            echo: 8,
            cookie: [9; 16],
        },
        Message::ReleaseName { name: name("bob") },
        Message::NameReleased {
            echo: 9,
            held: true,
        },
    ]
}

fn relay_frame() -> Vec<u8> {
    let mut frame = vec![0x56];
    frame.extend_from_slice(&key(1).0);
    frame.extend_from_slice(&[4, 0, 0, 0, 1, 2, 3]);
    frame
}

fn statements() -> Vec<Statement> {
    let (a, b) = (fixed_identity(0), fixed_identity(1));
    let issued = NOW_MS - 1000;
    let request =
        TrustRequest::sign(a.signing_key(), b.public_key(), issued, 1, "please").expect("signs");
    let record = TrustRecord::approve(a.signing_key(), b.public_key(), issued)
        .and_then(|r| r.countersign(b.signing_key(), NOW_MS))
        .expect("signs");
    let revocation =
        Revocation::sign(b.signing_key(), a.public_key(), issued + 1, "bye").expect("signs");
    vec![
        Statement::Request(request),
        Statement::Record(record),
        Statement::Revocation(revocation),
    ]
}

/// A DNS query message for `name` (wire form) of type `qtype`.
fn dns_message(name: &[u8], qtype: u16) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(name);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

fn ipv6(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0, 0, payload.len() as u8, next, 64];
    p.extend_from_slice(&[0xfd, 0x70, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&[0xfd, 0x70, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    p.extend_from_slice(payload);
    p
}

fn echo_reply() -> Vec<u8> {
    let mut buf = [0u8; 100];
    let src = "fd70::1".parse().expect("an address");
    let dst = "fd70::2".parse().expect("an address");
    let n =
        crate::wire::ip::write_echo_reply(&mut buf, src, dst, 1, 2, b"pilot-ping").expect("fits");
    buf[..n].to_vec()
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = b"PMSG\x01".to_vec();
    f.push(kind);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn requests() -> Vec<Request> {
    vec![
        Request::Info {},
        Request::Ping {
            peer: "bob".into(),
            timeout_ms: 1000,
        },
        Request::Handshake {
            peer: key(1).to_string(),
            justification: "it's me".into(),
        },
        Request::Reject {
            peer: "fd70::1:2:3".into(),
            reason: "no".into(),
        },
        Request::Inbox { clear: true },
        Request::ReleaseName {},
    ]
}

fn trust_json() -> String {
    let s = statements();
    let hex = |s: &Statement| hex::encode(&s.to_bytes());
    let state = crate::node::TrustState {
        version: crate::node::TRUST_STATE_VERSION,
        ledger: vec![hex(&s[1])],
        outgoing: Vec::new(),
        incoming: Vec::new(),
        approved: Vec::new(),
        names: [(key(1).to_string(), "alice".parse().expect("a name"))].into(),
        unsubmitted: vec![hex(&s[2])],
    };
    let mut json = serde_json::to_value(&state).expect("serialises");
    // Our own request, waiting for an answer.
    json["outgoing"] = serde_json::json!([{ "request": hex(&s[0]) }]);
    serde_json::to_string_pretty(&json).expect("serialises")
}

fn identity_json() -> String {
    let id = fixed_identity(5);
    format!(
        "{{\"version\":1,\"public_key\":\"{}\",\"secret_key\":\"{}\"}}",
        id.public_key(),
        hex::encode(&id.signing_key().to_bytes())
    )
}

/// A TCPv6 super-segment (GSO) of 3000 bytes with MSS 1200, a packet that needs its checksum,
/// and a plain one.
fn offload_segments() -> Vec<Vec<u8>> {
    let payload = 3000usize;
    let mut tcp = ipv6(6, &[]);
    tcp[4..6].copy_from_slice(&((20 + payload) as u16).to_be_bytes());
    tcp.extend_from_slice(&[
        0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 7, 0x50, 0x18, 0xff, 0xff,
    ]);
    tcp.extend_from_slice(&[0, 0, 0, 0]);
    tcp.extend((0..payload).map(|i| i as u8));
    let gso = [1u8, 4, 60, 0, 0xb0, 0x04, 40, 0, 16, 0];
    let csum = [1u8, 0, 0, 0, 0, 0, 40, 0, 6, 0];
    vec![
        [&gso[..], &tcp].concat(),
        [&csum[..], &ipv6(17, &[0, 1, 0, 2, 0, 12, 0, 0, 1, 2, 3, 4])].concat(),
        [&[0u8; 10][..], &ipv6(59, b"x")].concat(),
    ]
}

/// Programs for `node_datagrams` (see its `step`): a handshake with the peer and data over
/// it; a registration answered by the rendezvous; a probe; junk.
fn node_programs() -> Vec<Vec<u8>> {
    let peer_data = |len: u8| [&[5u8, 2, 1, 1, 0, len][..], &vec![0xab; usize::from(len)]].concat();
    let mut registered = vec![
        3, 0x0b, 0xb8, 1, 0, 0, 1, 128, 0, 0, 0, 0, 0, 0, 0, 9, 0, 18,
    ];
    registered.extend_from_slice(&[0; 8]);
    registered.extend_from_slice(&[4, 203, 0, 113, 9, 0x0f, 0xa0, 0, 25, 0, 2]);
    let mut probe = vec![1, 1, 1, 8, 128, 0, 0, 0, 0, 0, 0, 0, 1, 0, 32];
    probe.extend_from_slice(&key(0).0);
    probe.push(1);
    vec![
        [peer_data(10), peer_data(20), peer_data(30)].concat(),
        registered,
        probe,
        [&[6u8, 1, 1, 0, 5][..], b"hello", &[7, 0, 0, 1]].concat(),
        [&[4u8, 1, 2, 1, 1, 0, 8][..], &[9; 8], &[3, 1, 0]].concat(),
    ]
}

/// Programs for `rendezvous_datagrams` (see its `step`): two registrations (challenged, then
/// with the cookie), an introduction, a relay frame, a trust record, timers; the same with
/// the first node over a TLS stream.
fn rendezvous_programs() -> Vec<Vec<u8>> {
    // Each step starts with the port byte, the client and where it sends from: its own
    // endpoint (1), or (0 then 4) the stream's.
    let program = |from_a: &[u8]| {
        let step = |client: u8, rest: &[u8]| {
            let from: &[u8] = if client == 0 { from_a } else { &[1] };
            [&[1, client][..], from, rest].concat()
        };
        let mut p = Vec::new();
        for c in [0, 0, 1, 1] {
            p.extend(step(c, &[2, 1, c + 1, 1, 1, 1]));
        }
        p.extend(step(0, &[5, 1, 10, 2, 0, 1]));
        p.extend(step(0, &[6, 1, 0, 1]));
        p.extend(step(0, &[3, 1, 0, 8, 4, 0, 0, 0, 1, 2, 3, 4]));
        p.extend(step(0, &[4, 1, 0]));
        p
    };
    vec![
        program(&[1]),
        program(&[0, 4]),
        vec![1, 0, 1, 0, 0, 40, 0x50, 1, 2, 3],
    ]
}
