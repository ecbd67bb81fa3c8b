use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;
use crate::portmap::{natpmp, pcp, MapState, Protocol};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const PORT: u16 = 51870;
const NONCE: [u8; 12] = [9; 12];

fn server() -> SocketAddr {
    SocketAddr::from((GATEWAY, 5351))
}

fn mapper(now: Instant) -> PortMapper {
    PortMapper::new(GATEWAY, CLIENT, PORT, NONCE, now)
}

fn drain(m: &mut PortMapper) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| m.poll_transmit()).collect()
}

/// What a PCP server answers to `request`, mapping to `external_port` (or refusing with
/// `result`), at `epoch`.
fn pcp_answer(
    request: &[u8],
    result: u8,
    external_port: u16,
    lifetime: u32,
    epoch: u32,
) -> Vec<u8> {
    let mut out = request.to_vec();
    out[1] |= 0x80;
    out[3] = result;
    out[4..8].copy_from_slice(&lifetime.to_be_bytes());
    out[8..12].copy_from_slice(&epoch.to_be_bytes());
    out[12..24].fill(0);
    out[42..44].copy_from_slice(&external_port.to_be_bytes());
    out[44..60].copy_from_slice(&PUBLIC.to_ipv6_mapped().octets());
    out
}

/// A NAT-PMP server's answer to `request`.
fn natpmp_answer(request: &[u8], external_port: u16, epoch: u32) -> Vec<u8> {
    let mut out = vec![0, request[1] + 128, 0, 0];
    out.extend_from_slice(&epoch.to_be_bytes());
    if request[1] == natpmp::OP_ADDRESS {
        out.extend_from_slice(&PUBLIC.octets());
    } else {
        out.extend_from_slice(&request[4..6]);
        out.extend_from_slice(&external_port.to_be_bytes());
        out.extend_from_slice(&request[8..12]);
    }
    out
}

fn lifetime_of_pcp(request: &[u8]) -> u32 {
    u32::from_be_bytes(request[4..8].try_into().unwrap())
}

#[test]
fn pcp_maps_the_port_and_renews_it_at_half_its_lifetime() {
    let t0 = Instant::now();
    let mut m = mapper(t0);
    m.handle_timeout(t0);
    let sent = drain(&mut m);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0][0], pcp::VERSION);
    assert_eq!(lifetime_of_pcp(&sent[0]), 7200);
    m.handle_datagram(server(), &pcp_answer(&sent[0], 0, 40000, 3600, 10), t0);
    assert_eq!(m.mapped(t0), Some(SocketAddr::from((PUBLIC, 40000))));
    let status = m.status(t0);
    assert_eq!(status.state, MapState::Mapped);
    assert_eq!(status.protocol, Some(Protocol::Pcp));
    assert_eq!(status.lifetime_secs, Some(3600));
    assert_eq!(status.external.as_deref(), Some("203.0.113.1:40000"));

    let (renew, why) = m.poll_timeout().unwrap();
    assert_eq!(
        (renew - t0, why),
        (Duration::from_secs(1800), "port mapping renewal")
    );
    m.handle_timeout(renew);
    let renewal = drain(&mut m);
    assert_eq!(renewal.len(), 1);
    assert_eq!(
        &renewal[0][42..44],
        &40000u16.to_be_bytes(),
        "asks for the same port"
    );
    assert_eq!(&renewal[0][24..36], &NONCE, "under the same nonce");
    m.handle_datagram(
        server(),
        &pcp_answer(&renewal[0], 0, 40000, 3600, 1810),
        renew,
    );
    let (next, _) = m.poll_timeout().unwrap();
    assert_eq!(next - renew, Duration::from_secs(1800));
    assert_eq!(
        m.mapped(renew + Duration::from_secs(3500)),
        Some(SocketAddr::from((PUBLIC, 40000)))
    );
}

#[test]
fn a_nat_pmp_only_gateway_is_asked_with_nat_pmp() {
    let t0 = Instant::now();
    let mut m = mapper(t0);
    m.handle_timeout(t0);
    let pcp_request = drain(&mut m);
    // A NAT-PMP server answers a version-2 request with "unsupported version".
    let mut unsupported = vec![0, 0x81, 0, 1];
    unsupported.extend_from_slice(&5u32.to_be_bytes());
    assert!(!pcp_request.is_empty());
    m.handle_datagram(server(), &unsupported, t0);
    let sent = drain(&mut m);
    assert_eq!(sent.len(), 2, "the external address and the mapping");
    assert_eq!(sent[0], natpmp::encode_address_request());
    assert_eq!(sent[1], natpmp::encode_map_request(PORT, 0, 7200));
    m.handle_datagram(server(), &natpmp_answer(&sent[1], 40001, 6), t0);
    assert_eq!(m.mapped(t0), None, "the external address is not known yet");
    m.handle_datagram(server(), &natpmp_answer(&sent[0], 0, 6), t0);
    assert_eq!(m.mapped(t0), Some(SocketAddr::from((PUBLIC, 40001))));
    assert_eq!(m.status(t0).protocol, Some(Protocol::NatPmp));

    assert!(m.release(t0));
    let delete = drain(&mut m);
    assert_eq!(
        delete,
        vec![natpmp::encode_map_request(PORT, 0, 0).to_vec()]
    );
    assert!(!m.released());
    m.handle_datagram(server(), &natpmp_answer(&delete[0], 0, 7), t0);
    assert!(m.released());
}

#[test]
fn a_silent_gateway_costs_a_few_requests_and_then_nothing_for_ten_minutes() {
    let t0 = Instant::now();
    let mut m = mapper(t0);
    let mut now = t0;
    let mut sent = Vec::new();
    while let Some((at, _)) = m.poll_timeout() {
        if at >= t0 + Duration::from_secs(60) {
            break;
        }
        now = at;
        m.handle_timeout(now);
        sent.extend(drain(&mut m));
    }
    let pcp = sent.iter().filter(|d| d[0] == pcp::VERSION).count();
    let natpmp = sent.iter().filter(|d| d[0] == natpmp::VERSION).count();
    assert_eq!((pcp, natpmp), (4, 8), "4 PCP requests, 4 NAT-PMP pairs");
    assert!(
        now - t0 < Duration::from_secs(8),
        "gave up after {:?}",
        now - t0
    );
    assert_eq!(m.status(now).state, MapState::NoAnswer);
    assert_eq!(m.mapped(now), None);
    let (again, _) = m.poll_timeout().unwrap();
    assert_eq!(again - now, REDISCOVER);
    assert!(!m.release(now), "nothing to delete");
    assert!(m.released());
    assert!(drain(&mut m).is_empty());
}

#[test]
fn answers_from_elsewhere_or_to_another_request_are_ignored() {
    let t0 = Instant::now();
    let mut m = mapper(t0);
    m.handle_timeout(t0);
    let request = drain(&mut m).remove(0);
    let good = pcp_answer(&request, 0, 40000, 3600, 1);
    let others = [
        SocketAddr::from((GATEWAY, 5350)),
        SocketAddr::from((Ipv4Addr::new(198, 51, 100, 2), 5351)),
        SocketAddr::from((PUBLIC, 5351)),
    ];
    for from in others {
        m.handle_datagram(from, &good, t0);
        assert_eq!(m.mapped(t0), None, "from {from}");
    }
    let mut wrong_nonce = good.clone();
    wrong_nonce[24] ^= 1;
    let mut wrong_port = good.clone();
    wrong_port[40] ^= 1;
    let mut wrong_protocol = good.clone();
    wrong_protocol[36] = 6;
    let mut unspecified = good.clone();
    unspecified[44..60].copy_from_slice(&Ipv4Addr::UNSPECIFIED.to_ipv6_mapped().octets());
    for bad in [
        &wrong_nonce,
        &wrong_port,
        &wrong_protocol,
        &good[..40].to_vec(),
    ] {
        m.handle_datagram(server(), bad, t0);
        assert_eq!(m.mapped(t0), None);
        assert_eq!(m.status(t0).state, MapState::Asking);
    }
    m.handle_datagram(server(), &unspecified, t0);
    assert_eq!(m.mapped(t0), None, "0.0.0.0 is not advertised");
    assert_eq!(m.status(t0).state, MapState::Refused);
}

#[test]
fn a_refusal_is_reported_with_its_code() {
    let t0 = Instant::now();
    let mut m = mapper(t0);
    m.handle_timeout(t0);
    let request = drain(&mut m).remove(0);
    // NOT_AUTHORIZED (2).
    m.handle_datagram(server(), &pcp_answer(&request, 2, 0, 0, 1), t0);
    let status = m.status(t0);
    assert_eq!(
        (status.state, status.result_code),
        (MapState::Refused, Some(2))
    );
    assert_eq!(m.poll_timeout().unwrap().0 - t0, REDISCOVER);
}

#[test]
fn a_gateway_that_restarted_is_asked_again_at_once() {
    let t0 = Instant::now();
    let mut m = mapper(t0);
    m.handle_timeout(t0);
    let request = drain(&mut m).remove(0);
    m.handle_datagram(server(), &pcp_answer(&request, 0, 40000, 3600, 5000), t0);
    let t1 = t0 + Duration::from_secs(1800);
    m.handle_timeout(t1);
    let renewal = drain(&mut m).remove(0);
    // The epoch went back: the router rebooted and forgot every mapping.
    m.handle_datagram(server(), &pcp_answer(&renewal, 0, 40000, 3600, 3), t1);
    let again = drain(&mut m);
    assert_eq!(again.len(), 1, "a new request at once");
    assert_eq!(&again[0][42..44], &[0, 0]);
    m.handle_datagram(server(), &pcp_answer(&again[0], 0, 40002, 3600, 4), t1);
    assert_eq!(m.mapped(t1), Some(SocketAddr::from((PUBLIC, 40002))));
}

#[test]
fn unanswered_renewals_are_retried_until_the_mapping_expires() {
    let t0 = Instant::now();
    let mut m = mapper(t0);
    m.handle_timeout(t0);
    let request = drain(&mut m).remove(0);
    m.handle_datagram(server(), &pcp_answer(&request, 0, 40000, 120, 1), t0);
    let mut renewals = 0;
    let mut now = t0;
    while now < t0 + Duration::from_secs(120) {
        let (at, _) = m.poll_timeout().unwrap();
        now = at;
        m.handle_timeout(now);
        renewals += drain(&mut m)
            .iter()
            .filter(|d| lifetime_of_pcp(d) > 0)
            .count();
    }
    assert!(renewals >= 5, "{renewals} renewals");
    assert_eq!(m.mapped(now), None, "expired");
    assert_eq!(
        m.status(now).state,
        MapState::Asking,
        "asking again from scratch"
    );
}

#[test]
fn a_pcp_mapping_is_deleted_at_shutdown() {
    let t0 = Instant::now();
    let mut m = mapper(t0);
    m.handle_timeout(t0);
    let request = drain(&mut m).remove(0);
    m.handle_datagram(server(), &pcp_answer(&request, 0, 40000, 3600, 1), t0);
    assert!(m.release(t0));
    let delete = drain(&mut m);
    assert_eq!(delete.len(), 1);
    assert_eq!(lifetime_of_pcp(&delete[0]), 0);
    assert_eq!(&delete[0][24..36], &NONCE);
    m.resend_release();
    assert_eq!(drain(&mut m).len(), 1);
    m.handle_datagram(server(), &pcp_answer(&delete[0], 0, 40000, 0, 2), t0);
    assert!(m.released());
    assert_eq!(m.mapped(t0), None);
}

#[test]
fn garbage_from_the_gateway_never_panics_or_maps() {
    let t0 = Instant::now();
    let mut m = mapper(t0);
    m.handle_timeout(t0);
    drain(&mut m);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for len in 0..80 {
        for _ in 0..50 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            m.handle_datagram(server(), &bytes, t0);
        }
    }
    assert_eq!(m.mapped(t0), None);
}
