//! The port-mapping client against a fuzzed gateway, and the UPnP-IGD parsers.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::input::Input;
use crate::portmap::{upnp, MapState, PortMapper};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// A program of steps against one [`PortMapper`]: time passing, answers from the gateway (raw,
/// or the last request turned into an answer with fuzzed fields, which reaches the mapped
/// states), datagrams from elsewhere, and the release at shutdown. Then the rest of the input
/// goes through the UPnP-IGD parsers. What must hold: requests are PCP (60 bytes) or NAT-PMP
/// (2 or 12 bytes); a datagram from anywhere but the gateway's port changes nothing; a
/// mapped endpoint is only reported in state `mapped`, with a port.
pub fn port_mapping(data: &[u8]) {
    run(data);
}

/// The program; returns whether a mapping was ever reported.
fn run(data: &[u8]) -> bool {
    let mut ever_mapped = false;
    let mut input = Input::new(data);
    let t0 = Instant::now();
    let mut now = t0;
    let mut mapper = PortMapper::new(GATEWAY, Ipv4Addr::new(198, 51, 100, 10), 51870, [7; 12], t0);
    let server = mapper.server();
    let mut last = Vec::new();
    for _ in 0..64 {
        if input.is_empty() {
            break;
        }
        match input.choose(5) {
            0 => {
                now += Duration::from_millis(u64::from(input.u16()) * 64);
                mapper.handle_timeout(now);
            }
            1 => mapper.handle_datagram(server, input.bytes(200), now),
            2 if !last.is_empty() => {
                let mut answer: Vec<u8> = last.clone();
                answer[1] |= 0x80;
                for _ in 0..input.choose(4) {
                    let at = input.choose(answer.len());
                    answer[at] = input.u8();
                }
                if input.bool() {
                    answer.extend_from_slice(input.bytes(32));
                }
                mapper.handle_datagram(server, &answer, now);
            }
            3 => {
                let before = mapper.status(now);
                let from = SocketAddr::from((GATEWAY, input.u16().max(1).wrapping_add(5351)));
                mapper.handle_datagram(from, input.bytes(200), now);
                assert_eq!(mapper.status(now), before, "a datagram from {from}");
            }
            _ => {
                mapper.release(now);
                mapper.resend_release();
            }
        }
        while let Some(request) = mapper.poll_transmit() {
            assert!(matches!(request.len(), 2 | 12 | 60), "{request:?}");
            last = request;
        }
        let status = mapper.status(now);
        if let Some(mapped) = mapper.mapped(now) {
            assert_eq!(status.state, MapState::Mapped);
            assert_ne!(mapped.port(), 0);
            ever_mapped = true;
        }
    }
    let rest = input.rest();
    let text = String::from_utf8_lossy(rest);
    let _ = upnp::parse_search_response(rest, GATEWAY);
    let _ = upnp::parse_soap(rest);
    if let Some(base) = upnp::Location::parse("http://198.51.100.1:5000/rootDesc.xml") {
        if let Some(service) = upnp::parse_description(&text, &base) {
            assert_eq!(service.control.addr.ip(), &GATEWAY);
        }
    }
    ever_mapped
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_first_seed_reaches_a_mapping() {
        let seeds = super::super::seeds("port_mapping");
        assert!(super::run(&seeds[0]));
    }
}
