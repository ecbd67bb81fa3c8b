//! PCP (RFC 6887) MAP requests and answers for UDP over IPv4. The decoder takes any bytes
//! and returns `Err` for whatever is not a well-formed MAP answer.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::WireError;

/// PCP's version number.
pub const VERSION: u8 = 2;
/// The MAP opcode (answers set the top bit).
pub const OP_MAP: u8 = 1;
/// Length of the mapping nonce that ties an answer to our request.
pub const NONCE_LEN: usize = 12;
/// Length of a MAP request or answer without options.
pub const MAP_LEN: usize = 60;
/// Result code "unsupported version" (a NAT-PMP-only server may answer this way too).
pub const UNSUPP_VERSION: u8 = 1;
const PROTOCOL_UDP: u8 = 17;

/// A MAP request: `client` is our own address as the router sees it (the source of the
/// request), `lifetime_secs` 0 deletes the mapping.
pub fn encode_map_request(
    client: Ipv4Addr,
    nonce: &[u8; NONCE_LEN],
    internal_port: u16,
    external_port: u16,
    lifetime_secs: u32,
) -> [u8; MAP_LEN] {
    let mut out = [0u8; MAP_LEN];
    out[0] = VERSION;
    out[1] = OP_MAP;
    out[4..8].copy_from_slice(&lifetime_secs.to_be_bytes());
    out[8..24].copy_from_slice(&client.to_ipv6_mapped().octets());
    out[24..36].copy_from_slice(nonce);
    out[36] = PROTOCOL_UDP;
    out[40..42].copy_from_slice(&internal_port.to_be_bytes());
    out[42..44].copy_from_slice(&external_port.to_be_bytes());
    // Suggested external address: all zeros in its IPv4-mapped form (::ffff:0.0.0.0), i.e.
    // "any IPv4 address" (RFC 6887 §11.1).
    out[44..60].copy_from_slice(&Ipv4Addr::UNSPECIFIED.to_ipv6_mapped().octets());
    out
}

/// A MAP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapResponse {
    pub result: u8,
    pub lifetime_secs: u32,
    pub epoch: u32,
    pub nonce: [u8; NONCE_LEN],
    pub protocol: u8,
    pub internal_port: u16,
    pub external_port: u16,
    /// The assigned external address, when it is IPv4 (the IPv4-mapped form).
    pub external: Option<Ipv4Addr>,
}

/// A PCP answer header (any opcode): enough to see an error such as UNSUPP_VERSION, which
/// a server sends with a short or foreign body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub opcode: u8,
    pub result: u8,
}

/// Reads the first four bytes of an answer (version, R bit and opcode, result code).
pub fn decode_header(datagram: &[u8]) -> Result<Header, WireError> {
    let [version, op, _, result, ..] = datagram else {
        return Err(WireError::Short);
    };
    if op & 0x80 == 0 {
        return Err(WireError::Opcode(*op));
    }
    Ok(Header {
        version: *version,
        opcode: op & 0x7f,
        result: *result,
    })
}

/// Decodes a MAP answer (options after the MAP body are ignored).
pub fn decode_map(datagram: &[u8]) -> Result<MapResponse, WireError> {
    let header = decode_header(datagram)?;
    if header.version != VERSION {
        return Err(WireError::Version(header.version));
    }
    if header.opcode != OP_MAP {
        return Err(WireError::Opcode(header.opcode | 0x80));
    }
    let Some(body) = datagram.get(..MAP_LEN) else {
        return Err(WireError::Short);
    };
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&body[24..36]);
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&body[44..60]);
    Ok(MapResponse {
        result: header.result,
        lifetime_secs: u32::from_be_bytes([body[4], body[5], body[6], body[7]]),
        epoch: u32::from_be_bytes([body[8], body[9], body[10], body[11]]),
        nonce,
        protocol: body[36],
        internal_port: u16::from_be_bytes([body[40], body[41]]),
        external_port: u16::from_be_bytes([body[42], body[43]]),
        external: Ipv6Addr::from(ip).to_ipv4_mapped(),
    })
}

/// Whether `answer` is the answer to a UDP MAP of `internal_port` under `nonce`.
pub fn answers(answer: &MapResponse, nonce: &[u8; NONCE_LEN], internal_port: u16) -> bool {
    answer.nonce == *nonce
        && answer.protocol == PROTOCOL_UDP
        && answer.internal_port == internal_port
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: [u8; 12] = [7; 12];

    /// A MAP answer as a server builds it from `request`.
    fn answer_to(request: &[u8; MAP_LEN], result: u8, external_port: u16) -> Vec<u8> {
        let mut out = request.to_vec();
        out[1] |= 0x80;
        out[3] = result;
        out[8..12].copy_from_slice(&77u32.to_be_bytes());
        out[12..24].fill(0);
        out[42..44].copy_from_slice(&external_port.to_be_bytes());
        out[44..60].copy_from_slice(&Ipv4Addr::new(203, 0, 113, 1).to_ipv6_mapped().octets());
        out
    }

    #[test]
    fn a_map_request_has_rfc_6887_layout() {
        let request = encode_map_request(Ipv4Addr::new(198, 51, 100, 10), &NONCE, 51870, 0, 7200);
        assert_eq!(&request[..8], &[2, 1, 0, 0, 0, 0, 0x1c, 0x20]);
        assert_eq!(
            &request[8..24],
            &Ipv4Addr::new(198, 51, 100, 10).to_ipv6_mapped().octets()
        );
        assert_eq!(&request[24..36], &NONCE);
        assert_eq!(&request[36..40], &[17, 0, 0, 0]);
        assert_eq!(&request[40..44], &[0xca, 0x9e, 0, 0]);
        assert_eq!(
            &request[44..60],
            &Ipv4Addr::UNSPECIFIED.to_ipv6_mapped().octets()
        );
    }

    #[test]
    fn a_map_answer_decodes_and_matches_its_request() {
        let request = encode_map_request(Ipv4Addr::new(198, 51, 100, 10), &NONCE, 51870, 0, 7200);
        let answer = decode_map(&answer_to(&request, 0, 40000)).unwrap();
        assert_eq!(answer.result, 0);
        assert_eq!(answer.lifetime_secs, 7200);
        assert_eq!(answer.epoch, 77);
        assert_eq!(answer.external_port, 40000);
        assert_eq!(answer.external, Some(Ipv4Addr::new(203, 0, 113, 1)));
        assert!(answers(&answer, &NONCE, 51870));
        assert!(!answers(&answer, &[8; 12], 51870), "another nonce");
        assert!(!answers(&answer, &NONCE, 51871), "another port");
    }

    #[test]
    fn an_unsupported_version_answer_is_readable_from_its_header() {
        // A NAT-PMP-only server answers a version-2 request in NAT-PMP's format.
        let natpmp = [0, 129, 0, 1, 0, 0, 0, 5];
        let header = decode_header(&natpmp).unwrap();
        assert_eq!((header.version, header.result), (0, UNSUPP_VERSION));
        assert_eq!(decode_map(&natpmp), Err(WireError::Version(0)));
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        assert_eq!(decode_map(&[]), Err(WireError::Short));
        assert_eq!(decode_map(&[2, 0x81, 0, 0]), Err(WireError::Short));
        assert_eq!(
            decode_map(&[2, 1, 0, 0]),
            Err(WireError::Opcode(1)),
            "a request"
        );
        assert_eq!(decode_map(&[2, 0x82, 0, 0]), Err(WireError::Opcode(0x82)));
        for len in 0..80 {
            for fill in [0u8, 0x81, 0xff] {
                let mut bytes = vec![fill; len];
                if len > 1 {
                    bytes[0] = 2;
                    bytes[1] = 0x81;
                }
                let _ = decode_map(&bytes);
            }
        }
    }
}
