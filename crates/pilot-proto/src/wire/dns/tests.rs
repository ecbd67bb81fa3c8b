//! Queries are built here byte by byte and checked with a checksum written independently of
//! `wire::ip`, so a shared mistake cannot make both sides agree.

use super::*;

const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0xa1b2, 0xc3d4, 0xe5f6);
const BOB: Ipv6Addr = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0x1111, 0x2222, 0x3333);
const CLIENT_PORT: u16 = 40123;
const TYPE_TXT: u16 = 16;
const CLASS_CH: u16 = 3;
/// QUERY, RD set.
const RD: u16 = 0x0100;

/// Wire format of a dotted name (`"."` or `""` is the root).
fn wire_name(dotted: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in dotted.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// A DNS message: header with the given flags and counts, then `body` as it is.
fn message(id: u16, flags: u16, counts: [u16; 4], body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        m.extend_from_slice(&c.to_be_bytes());
    }
    m.extend_from_slice(body);
    m
}

fn question_bytes(name: &str, qtype: u16, qclass: u16) -> Vec<u8> {
    let mut q = wire_name(name);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&qclass.to_be_bytes());
    q
}

/// An EDNS OPT pseudo-record advertising a 1232-byte UDP payload, DO bit set.
fn opt_record() -> Vec<u8> {
    vec![0, 0, 41, 0x04, 0xd0, 0, 0, 0x80, 0, 0, 0]
}

/// Independent ones'-complement sum over the IPv6 pseudo-header and a UDP datagram.
fn udp_sum(src: Ipv6Addr, dst: Ipv6Addr, udp: &[u8]) -> u16 {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&src.octets());
    bytes.extend_from_slice(&dst.octets());
    bytes.extend_from_slice(&(udp.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 17]);
    bytes.extend_from_slice(udp);
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        sum += u32::from(pair[0]) << 8 | u32::from(pair[1]);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether the UDP checksum of a whole IPv6/UDP packet verifies.
fn udp_checksum_ok(packet: &[u8]) -> bool {
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&packet[8..24]).unwrap());
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&packet[24..40]).unwrap());
    packet[46..48] != [0, 0] && udp_sum(src, dst, &packet[40..]) == 0
}

/// A whole IPv6/UDP packet with a correct checksum.
fn udp_packet(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let sum = match udp_sum(src, dst, &p[40..]) {
        0 => 0xffff,
        s => s,
    };
    p[46..48].copy_from_slice(&sum.to_be_bytes());
    p
}

/// A DNS message from the client to the stub.
fn to_stub(message: &[u8]) -> Vec<u8> {
    udp_packet(CLIENT, CLIENT_PORT, DNS_ADDR, DNS_PORT, message)
}

/// A standard recursive query for `name`, as glibc sends it.
pub(crate) fn query(name: &str, qtype: u16) -> Vec<u8> {
    to_stub(&message(
        0x1234,
        RD,
        [1, 0, 0, 0],
        &question_bytes(name, qtype, CLASS_IN),
    ))
}

/// Looks up `bob` only, and records the label it was asked for.
fn bob_only(asked: &mut Option<String>) -> impl FnOnce(&str) -> Option<Ipv6Addr> + '_ {
    move |label| {
        *asked = Some(label.to_owned());
        (label == "bob").then_some(BOB)
    }
}

fn respond(packet: &[u8]) -> Vec<u8> {
    let q = parse_query(packet).expect("a query to the stub");
    let mut out = [0u8; MAX_RESPONSE_LEN];
    let n = write_response(&mut out, &q, answer(&q, bob_only(&mut None))).unwrap();
    out[..n].to_vec()
}

/// `(flags, [qd, an, ns, ar])` of the DNS message in a response packet.
fn header(response: &[u8]) -> (u16, [u16; 4]) {
    let dns = &response[48..];
    let field = |at: usize| u16::from_be_bytes([dns[at], dns[at + 1]]);
    (field(2), [field(4), field(6), field(8), field(10)])
}

#[test]
fn parses_a_standard_query_and_compares_names_case_insensitively() {
    let packet = query("BoB.PiLoT.", TYPE_AAAA);
    let q = parse_query(&packet).unwrap();
    assert_eq!(
        (
            q.src(),
            q.src_port(),
            q.id(),
            q.opcode(),
            q.recursion_desired()
        ),
        (CLIENT, CLIENT_PORT, 0x1234, 0, true)
    );
    let question = q.question().unwrap();
    assert_eq!((question.qtype(), question.qclass()), (TYPE_AAAA, CLASS_IN));
    assert_eq!(
        question.raw(),
        question_bytes("BoB.PiLoT", TYPE_AAAA, CLASS_IN)
    );
    assert_eq!(question.name().to_string(), "BoB.PiLoT.");
    assert_eq!(question.name().as_wire(), wire_name("BoB.PiLoT"));
    let label = question.zone_label().unwrap();
    assert_eq!(label.as_str(), "bob");
    assert_eq!(label.to_hostname().unwrap().as_str(), "bob");
    assert!(question.in_zone());

    let mut asked = None;
    assert_eq!(answer(&q, bob_only(&mut asked)), Answer::Aaaa(BOB));
    assert_eq!(
        asked.as_deref(),
        Some("bob"),
        "lookups see the lowercase label"
    );
}

#[test]
fn an_edns_opt_record_is_accepted_and_not_echoed() {
    let mut body = question_bytes("bob.pilot", TYPE_AAAA, CLASS_IN);
    body.extend_from_slice(&opt_record());
    let packet = to_stub(&message(7, RD, [1, 0, 0, 1], &body));
    let q = parse_query(&packet).unwrap();
    assert_eq!(q.question().unwrap().zone_label().unwrap().as_str(), "bob");
    let response = respond(&packet);
    assert_eq!(header(&response).1, [1, 1, 0, 0]);
}

#[test]
fn zone_placement_of_names() {
    let long = "x".repeat(63);
    let cases: &[(&str, Option<&str>, bool)] = &[
        ("pilot.", None, true),
        ("PILOT", None, true),
        ("bob.pilot", Some("bob"), true),
        ("Edge-7.Pilot.", Some("edge-7"), true),
        (&format!("{long}.pilot"), Some(&long), true),
        ("a.b.pilot", None, true),
        ("_http._tcp.bob.pilot", None, true),
        ("b_b.pilot", None, true),
        ("-bob.pilot", None, true),
        ("bob-.pilot", None, true),
        ("bob.pilot.example", None, false),
        ("example.com", None, false),
        ("pilots", None, false),
        ("xpilot", None, false),
        (".", None, false),
    ];
    for &(name, label, in_zone) in cases {
        let packet = query(name, TYPE_AAAA);
        let q = parse_query(&packet).unwrap();
        let question = q.question().unwrap();
        assert_eq!(
            question.zone_label().as_ref().map(HostLabel::as_str),
            label,
            "{name}"
        );
        assert_eq!(question.in_zone(), in_zone, "{name}");
    }
    let apex = query("Pilot", TYPE_AAAA);
    assert_eq!(
        parse_query(&apex).unwrap().question().unwrap().zone(),
        Zone::Apex
    );
    let nonprintable = to_stub(&message(
        1,
        0,
        [1, 0, 0, 0],
        &[3, b'a', b'.', 0xff, 0, 0, 1, 0, 1],
    ));
    let q = parse_query(&nonprintable).unwrap();
    assert_eq!(q.question().unwrap().name().to_string(), "a\\046\\255.");
    assert_eq!(q.question().unwrap().zone(), Zone::Outside);
}

#[test]
fn answers_follow_the_zone() {
    let class = |name: &str, qtype, qclass| {
        let packet = to_stub(&message(
            1,
            RD,
            [1, 0, 0, 0],
            &question_bytes(name, qtype, qclass),
        ));
        let q = parse_query(&packet).unwrap();
        answer(&q, bob_only(&mut None))
    };
    let ask = |name: &str, qtype| class(name, qtype, CLASS_IN);
    assert_eq!(ask("bob.pilot", TYPE_AAAA), Answer::Aaaa(BOB));
    assert_eq!(ask("BOB.pilot", TYPE_ANY), Answer::Aaaa(BOB));
    assert_eq!(ask("bob.pilot", TYPE_A), Answer::NoData);
    assert_eq!(ask("bob.pilot", TYPE_TXT), Answer::NoData);
    assert_eq!(ask("carol.pilot", TYPE_AAAA), Answer::NxDomain);
    assert_eq!(ask("carol.pilot", TYPE_A), Answer::NxDomain);
    assert_eq!(ask("x.bob.pilot", TYPE_AAAA), Answer::NxDomain);
    assert_eq!(ask("b_b.pilot", TYPE_AAAA), Answer::NxDomain);
    assert_eq!(ask("pilot", TYPE_AAAA), Answer::NoData);
    assert_eq!(ask("example.com", TYPE_AAAA), Answer::Refused);
    assert_eq!(ask("bob.pilot.example", TYPE_AAAA), Answer::Refused);
    assert_eq!(class("bob.pilot", TYPE_AAAA, CLASS_ANY), Answer::Aaaa(BOB));
    assert_eq!(class("bob.pilot", TYPE_TXT, CLASS_CH), Answer::Refused);
}

#[test]
fn aaaa_response_is_a_complete_packet() {
    let packet = query("BoB.pilot", TYPE_AAAA);
    let response = respond(&packet);
    let question = question_bytes("BoB.pilot", TYPE_AAAA, CLASS_IN);
    assert_eq!(response.len(), 40 + 8 + 12 + question.len() + 28);

    // IPv6: version 6, payload length, UDP, hop limit 64, stub → client.
    assert_eq!(response[0] >> 4, 6);
    assert_eq!(
        usize::from(u16::from_be_bytes([response[4], response[5]])),
        response.len() - 40
    );
    assert_eq!((response[6], response[7]), (17, 64));
    assert_eq!(&response[8..24], &DNS_ADDR.octets());
    assert_eq!(&response[24..40], &CLIENT.octets());

    // UDP: 53 → the client's port, length, checksum.
    let udp = &response[40..];
    assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 53);
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), CLIENT_PORT);
    assert_eq!(usize::from(u16::from_be_bytes([udp[4], udp[5]])), udp.len());
    assert!(udp_checksum_ok(&response));

    // DNS: same id; QR, AA, RD; NOERROR; one question (echoed as sent), one answer.
    let dns = &udp[8..];
    assert_eq!(&dns[0..2], &[0x12, 0x34]);
    assert_eq!(header(&response), (0x8500, [1, 1, 0, 0]));
    assert_eq!(&dns[12..12 + question.len()], &question[..]);
    let rr = &dns[12 + question.len()..];
    assert_eq!(&rr[0..2], &[0xc0, 12], "name points at the question");
    assert_eq!(&rr[2..6], &[0, 28, 0, 1], "AAAA IN");
    assert_eq!(&rr[6..10], &60u32.to_be_bytes());
    assert_eq!(&rr[10..12], &[0, 16]);
    assert_eq!(&rr[12..28], &BOB.octets());

    assert_eq!(parse_query(&response), None, "a response is never answered");
}

#[test]
fn negative_responses_carry_the_rcode_and_flags() {
    let cases = [
        ("bob.pilot", TYPE_A, 0x8500),      // NODATA: AA, NOERROR
        ("carol.pilot", TYPE_AAAA, 0x8503), // NXDOMAIN: AA
        ("example.com", TYPE_AAAA, 0x8105), // REFUSED: not authoritative
    ];
    for (name, qtype, flags) in cases {
        let response = respond(&query(name, qtype));
        assert_eq!(header(&response), (flags, [1, 0, 0, 0]), "{name}");
        assert_eq!(
            &response[60..],
            &question_bytes(name, qtype, CLASS_IN)[..],
            "{name}"
        );
        assert!(udp_checksum_ok(&response), "{name}");
    }
    // RD is copied, including when clear.
    let packet = to_stub(&message(
        9,
        0,
        [1, 0, 0, 0],
        &question_bytes("carol.pilot", TYPE_AAAA, CLASS_IN),
    ));
    assert_eq!(header(&respond(&packet)).0, 0x8403);
}

#[test]
fn malformed_queries_get_formerr_without_a_question() {
    let q = question_bytes("bob.pilot", TYPE_AAAA, CLASS_IN);
    let mut pointer = vec![3, b'b', b'o', b'b', 0xc0, 12];
    pointer.extend_from_slice(&[0, 28, 0, 1]);
    let mut long_label = vec![64];
    long_label.extend_from_slice(&[b'x'; 64]);
    long_label.extend_from_slice(&[0, 0, 28, 0, 1]);
    // 4 × 63-byte labels: 257 bytes with the root label.
    let long_name = question_bytes(&[&"x".repeat(63)[..]; 4].join("."), TYPE_AAAA, CLASS_IN);
    let cases: Vec<([u16; 4], Vec<u8>)> = vec![
        ([0, 0, 0, 0], vec![]),
        ([2, 0, 0, 0], [q.clone(), q.clone()].concat()),
        ([1, 1, 0, 0], q.clone()),
        ([1, 0, 1, 0], q.clone()),
        (
            [1, 0, 0, 2],
            [q.clone(), opt_record(), opt_record()].concat(),
        ),
        ([1, 0, 0, 0], pointer),
        ([1, 0, 0, 0], vec![0xc0, 12, 0, 28, 0, 1]),
        ([1, 0, 0, 0], vec![0x40, 0, 0, 28, 0, 1]),
        ([1, 0, 0, 0], long_label),
        ([1, 0, 0, 0], long_name),
        ([1, 0, 0, 0], q[..q.len() - 1].to_vec()),
        ([1, 0, 0, 0], wire_name("bob.pilot")),
        ([1, 0, 0, 0], vec![3, b'b', b'o']),
    ];
    for (counts, body) in cases {
        let packet = to_stub(&message(0xbeef, RD, counts, &body));
        let q = parse_query(&packet).expect("the header is readable");
        assert_eq!(
            q.question(),
            Err(Unanswerable::Malformed),
            "{counts:?} {body:?}"
        );
        assert_eq!(answer(&q, |_| panic!("no lookup")), Answer::FormErr);
        let response = respond(&packet);
        assert_eq!(response.len(), 40 + 8 + 12);
        assert_eq!(&response[48..50], &[0xbe, 0xef]);
        assert_eq!(header(&response), (0x8101, [0, 0, 0, 0]));
        assert!(udp_checksum_ok(&response));
    }
}

#[test]
fn other_opcodes_get_notimp() {
    for opcode in [1u16, 2, 4, 5, 15] {
        let body = question_bytes("bob.pilot", TYPE_AAAA, CLASS_IN);
        let packet = to_stub(&message(3, opcode << 11, [1, 0, 0, 0], &body));
        let q = parse_query(&packet).unwrap();
        assert_eq!(q.opcode(), opcode as u8);
        assert_eq!(q.question(), Err(Unanswerable::UnsupportedOpcode));
        let response = respond(&packet);
        assert_eq!(header(&response), (0x8004 | opcode << 11, [0, 0, 0, 0]));
    }
}

#[test]
fn packets_not_for_the_stub_are_ignored() {
    let body = message(
        1,
        RD,
        [1, 0, 0, 0],
        &question_bytes("bob.pilot", TYPE_AAAA, CLASS_IN),
    );
    assert!(parse_query(&to_stub(&body)).is_some());
    let not_ours = [
        udp_packet(CLIENT, CLIENT_PORT, BOB, DNS_PORT, &body),
        udp_packet(CLIENT, CLIENT_PORT, DNS_ADDR, 5353, &body),
        udp_packet(CLIENT, 0, DNS_ADDR, DNS_PORT, &body),
        udp_packet(
            Ipv6Addr::UNSPECIFIED,
            CLIENT_PORT,
            DNS_ADDR,
            DNS_PORT,
            &body,
        ),
        udp_packet(
            "ff02::1".parse().unwrap(),
            CLIENT_PORT,
            DNS_ADDR,
            DNS_PORT,
            &body,
        ),
        // A response (QR set).
        to_stub(&message(1, 0x8000 | RD, [1, 0, 0, 0], &body[12..])),
        // A header shorter than 12 bytes.
        to_stub(&body[..11]),
    ];
    for packet in &not_ours {
        assert_eq!(parse_query(packet), None);
    }
    let good = to_stub(&body);
    let mut tcp = good.clone();
    tcp[6] = 6;
    let mut bad_sum = good.clone();
    bad_sum[47] ^= 1;
    let mut no_sum = good.clone();
    no_sum[46..48].fill(0);
    let mut short_udp_len = good.clone();
    short_udp_len[45] -= 1;
    let mut ipv4 = good.clone();
    ipv4[0] = 0x45;
    let mut trailing = good.clone();
    trailing.push(0);
    for packet in [tcp, bad_sum, no_sum, short_udp_len, ipv4] {
        assert_eq!(parse_query(&packet), None);
    }
    // Bytes after the IPv6 payload (as a TUN never delivers, but a parser must survive).
    assert!(parse_query(&trailing).is_some());
}

#[test]
fn never_panics_on_truncated_or_garbage_input() {
    let mut body = question_bytes("bob.pilot", TYPE_AAAA, CLASS_IN);
    body.extend_from_slice(&opt_record());
    let dns = message(0x4242, RD, [1, 0, 0, 1], &body);
    let packet = to_stub(&dns);
    let mut out = [0u8; MAX_RESPONSE_LEN];
    let mut exercise = |bytes: &[u8]| {
        if let Some(q) = parse_query(bytes) {
            let a = answer(&q, |_| Some(BOB));
            let n = write_response(&mut out, &q, a).expect("fits MAX_RESPONSE_LEN");
            assert!(udp_checksum_ok(&out[..n]));
        }
    };
    // Every truncation of the packet, and of the DNS message inside a valid datagram.
    for len in 0..=packet.len() {
        exercise(&packet[..len]);
    }
    for len in 0..=dns.len() {
        exercise(&to_stub(&dns[..len]));
    }
    // Every single-byte corruption, inside a valid datagram and raw.
    for at in 0..dns.len() {
        for value in [0x00, 0x01, 0x3f, 0x40, 0x80, 0xc0, 0xff] {
            let mut m = dns.clone();
            m[at] = value;
            exercise(&to_stub(&m));
            let mut p = packet.clone();
            p[40 + 8 + at] = value;
            exercise(&p);
        }
    }
    // Garbage of every length up to 600 bytes, behind a valid header and on its own.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    };
    for len in 0..600 {
        let garbage: Vec<u8> = (0..len).map(|_| next()).collect();
        exercise(&garbage);
        exercise(&to_stub(&garbage));
        let mut with_header = message(1, 0, [1, 0, 0, 0], &[]);
        with_header.extend_from_slice(&garbage);
        exercise(&to_stub(&with_header));
    }
}

#[test]
fn the_longest_question_fits_max_response_len_exactly() {
    // 63+63+63+55-byte labels and `pilot`: a 255-byte name.
    let name = [
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(55),
        "pilot".into(),
    ]
    .join(".");
    assert_eq!(wire_name(&name).len(), 255);
    let packet = query(&name, TYPE_AAAA);
    let q = parse_query(&packet).unwrap();
    assert_eq!(q.question().unwrap().zone(), Zone::Unassignable);
    let mut out = [0u8; MAX_RESPONSE_LEN];
    assert_eq!(
        write_response(&mut out, &q, Answer::Aaaa(BOB)),
        Some(MAX_RESPONSE_LEN)
    );
    assert!(udp_checksum_ok(&out));
    assert_eq!(
        write_response(&mut [0u8; MAX_RESPONSE_LEN - 1], &q, Answer::Aaaa(BOB)),
        None
    );
}

#[test]
fn a_record_needs_a_question_to_point_at() {
    let packet = to_stub(&message(1, RD, [0, 0, 0, 0], &[]));
    let q = parse_query(&packet).unwrap();
    let mut out = [0u8; MAX_RESPONSE_LEN];
    assert_eq!(write_response(&mut out, &q, Answer::Aaaa(BOB)), None);
    assert_eq!(write_response(&mut out, &q, Answer::FormErr), Some(60));
}
