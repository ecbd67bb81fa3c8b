//! Targets for the byte formats in `wire`: control messages and relay frames, the signed
//! envelope, trust statements, the DNS stub and the ICMPv6 helpers.

use std::net::Ipv6Addr;
use std::sync::OnceLock;

use super::input::Input;
use crate::identity::Identity;
use crate::wire::control::{parse_relay, write_relay, Message};
use crate::wire::envelope::{self, check_fresh, open, seal, EnvelopeError, ReplayGuard};
use crate::wire::trust::Statement;
use crate::wire::{dns, ip};

/// A fixed identity for the targets that sign (made once: deriving it costs a scalar
/// multiplication, and it is the same for every run).
pub(super) fn fixed_identity(n: u8) -> &'static Identity {
    static IDS: OnceLock<Vec<Identity>> = OnceLock::new();
    let ids = IDS.get_or_init(|| {
        (0..8u8)
            .map(|n| {
                // Deterministic keys, skipping any whose address would be reserved.
                (0..=255u8)
                    .map(|i| Identity::from_secret_bytes(&[n.wrapping_mul(37) ^ i; 32]))
                    .find(|id| !id.address().is_reserved())
                    .expect("a key with an ordinary address")
            })
            .collect()
    });
    &ids[usize::from(n) % ids.len()]
}

/// `[kind][body]`: a control message body of type `kind`, and the same bytes as a relay frame.
/// Whatever decodes re-encodes to something that decodes to the same message, and encoding
/// is deterministic.
pub fn control_message(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    if let Some((key, inner)) = parse_relay(data) {
        assert!(!inner.is_empty());
        let mut out = vec![0; data.len()];
        assert_eq!(write_relay(&mut out, kind, &key, inner), Some(data.len()));
        assert_eq!(out, data, "relay frame does not round-trip");
    }
    let Ok(message) = Message::decode(kind, body) else {
        return;
    };
    assert_eq!(message.kind(), kind);
    let mut encoded = Vec::new();
    message.encode(&mut encoded);
    let again = Message::decode(kind, &encoded).expect("an encoded message decodes");
    assert_eq!(again, message, "control message does not round-trip");
    let mut twice = Vec::new();
    again.encode(&mut twice);
    assert_eq!(twice, encoded, "encoding is not deterministic");
}

/// Any datagram through `open`; then the input's tail sealed under a fixed key must open to
/// exactly what was sealed, pass the freshness check at its own time, and be refused as a
/// replay the second time.
pub fn envelope(data: &[u8]) {
    if let Ok(opened) = open(data) {
        assert_eq!(opened.kind, data[0]);
        assert_eq!(opened.sender.0[..], data[2..34]);
        assert_eq!(
            opened.body,
            &data[envelope::HEADER_LEN..data.len() - envelope::SIGNATURE_LEN]
        );
    }
    let mut input = Input::new(data);
    let kind = input.u8().max(crate::wire::PILOT_FIRST);
    // A new sender's floor is 0: a message dated at the epoch itself is stale to the guard.
    let timestamp_ms = input.u64().max(1);
    let nonce = input.u64();
    let body = input.rest();
    let key = fixed_identity(input.u8()).signing_key();
    let mut out = vec![0; envelope::OVERHEAD + body.len()];
    let len = seal(&mut out, kind, key, timestamp_ms, nonce, body).expect("buffer sized");
    assert_eq!(len, out.len());
    let opened = open(&out).expect("a sealed envelope opens");
    assert_eq!(
        (opened.kind, opened.timestamp_ms, opened.nonce, opened.body),
        (kind, timestamp_ms, nonce, body)
    );
    assert_eq!(opened.sender.0, key.verifying_key().to_bytes());
    check_fresh(&opened, timestamp_ms).expect("fresh at its own time");
    let mut guard = ReplayGuard::new(4);
    guard.check(&opened, timestamp_ms).expect("first sight");
    assert_eq!(
        guard.check(&opened, timestamp_ms),
        Err(EnvelopeError::Replay)
    );
    // One flipped bit anywhere and it no longer opens as the same message.
    if let Some(at) = data.first().map(|&b| usize::from(b) % out.len()) {
        out[at] ^= 1;
        if let Ok(tampered) = open(&out) {
            panic!("a tampered envelope opened: {tampered:?}");
        }
    }
}

/// A trust statement: the encoding is canonical (what decodes re-encodes to the same bytes),
/// and verifying it never panics.
pub fn trust_statement(data: &[u8]) {
    let Ok(statement) = Statement::decode(data) else {
        return;
    };
    assert_eq!(
        statement.to_bytes(),
        data,
        "statement encoding not canonical"
    );
    let now = statement.issued_ms();
    let _ = match &statement {
        Statement::Request(r) => r.verify(now),
        Statement::Record(r) => r.verify(now),
        Statement::Revocation(v) => v.verify(now),
    };
}

/// A whole IPv6 packet from the TUN to the DNS stub (first byte odd), or a DNS message the
/// target wraps in a correct IPv6/UDP packet to `[fd70::53]:53` (first byte even) so the
/// checksum does not stop the fuzzer at the door. Every query gets a response that fits
/// [`dns::MAX_RESPONSE_LEN`], goes back to the asker with a correct checksum and is never
/// itself taken for a query.
pub fn dns_query(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let wrapped;
    let packet = if mode & 1 == 1 {
        rest
    } else {
        wrapped = udp_to_stub(rest);
        &wrapped
    };
    let Some(query) = dns::parse_query(packet) else {
        return;
    };
    let resolves = mode & 2 == 2;
    let answer = dns::answer(&query, |name| {
        assert!(!name.is_empty() && name.bytes().all(|b| !b.is_ascii_uppercase()));
        resolves.then_some(Ipv6Addr::new(0xfd70, 1, 2, 3, 4, 5, 6, 7))
    });
    let mut out = [0u8; dns::MAX_RESPONSE_LEN];
    let len = dns::write_response(&mut out, &query, answer).expect("a response always fits");
    let response = &out[..len];
    let (next, udp) = ip::ipv6_payload(response).expect("the response is IPv6");
    assert_eq!(next, ip::NEXT_HEADER_UDP);
    assert_eq!(udp.len(), len - ip::IPV6_HEADER_LEN);
    let (src, dst) = ip::ipv6_addrs(response).expect("the response is IPv6");
    assert_eq!(*dst, query.src().octets());
    assert_eq!(
        ip::pseudo_header_checksum(src, dst, ip::NEXT_HEADER_UDP, udp),
        0
    );
    assert!(len - ip::IPV6_HEADER_LEN - 8 <= 512);
    assert!(
        dns::parse_query(response).is_none(),
        "a response read as a query"
    );
}

/// `message` in an IPv6/UDP packet from `[fd70::1234]:5353` to the stub, checksum filled in.
fn udp_to_stub(message: &[u8]) -> Vec<u8> {
    let src = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0, 0, 0x1234).octets();
    let dst = dns::DNS_ADDR.octets();
    let udp_len = (8 + message.len()).min(usize::from(u16::MAX));
    let mut packet = vec![0u8; ip::IPV6_HEADER_LEN + udp_len];
    if ip::write_ipv6_header(&mut packet, &src, &dst, ip::NEXT_HEADER_UDP, udp_len).is_none() {
        return packet;
    }
    let udp = &mut packet[ip::IPV6_HEADER_LEN..];
    udp[0..2].copy_from_slice(&5353u16.to_be_bytes());
    udp[2..4].copy_from_slice(&dns::DNS_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp[8..].copy_from_slice(&message[..udp_len - 8]);
    let sum = ip::pseudo_header_checksum(&src, &dst, ip::NEXT_HEADER_UDP, udp);
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// A packet read from the TUN through the ICMPv6 helpers: the echo reply parser, and the
/// unreachable error about it, which must fit the IPv6 minimum MTU, go back to the packet's
/// source and never answer an ICMPv6 error. An echo written from the input's tail parses back.
pub fn ip_packet(data: &[u8]) {
    let _ = ip::parse_echo_reply(data);
    let src = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0, 0, 1);
    let mut out = [0u8; 1280];
    if let Some(len) = ip::write_unreachable(&mut out, src, ip::UnreachableCode::NoRoute, data) {
        assert!(len <= 1280);
        let reply = &out[..len];
        let (_, dst) = ip::ipv6_addrs(reply).expect("the error is IPv6");
        assert_eq!(dst[..], data[8..24], "the error goes back to the source");
        let (next, icmp) = ip::ipv6_payload(reply).expect("the error is IPv6");
        assert_eq!(next, ip::NEXT_HEADER_ICMPV6);
        let (src, dst) = ip::ipv6_addrs(reply).expect("the error is IPv6");
        assert_eq!(ip::pseudo_header_checksum(src, dst, next, icmp), 0);
        assert!(
            !(data[6] == ip::NEXT_HEADER_ICMPV6 && data.get(40).is_some_and(|t| *t < 128)),
            "an ICMPv6 error answered with another"
        );
    }
    let mut input = Input::new(data);
    let (ident, seq) = (input.u16(), input.u16());
    let payload = input.take(1200);
    let mut buf = [0u8; 1280];
    let dst = Ipv6Addr::new(0xfd70, 1, 0, 0, 0, 0, 0, 2);
    let len = ip::write_echo_reply(&mut buf, src, dst, ident, seq, payload).expect("fits");
    assert_eq!(
        ip::parse_echo_reply(&buf[..len]),
        Some((ident, seq, payload)),
        "echo reply does not round-trip"
    );
}
