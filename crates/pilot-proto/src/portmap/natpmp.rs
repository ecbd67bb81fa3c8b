//! NAT-PMP (RFC 6886) messages: the external-address request, and UDP MAP requests and their
//! answers. Decoders take any bytes and return `Err` for whatever is not a well-formed answer.

use std::net::Ipv4Addr;

use super::WireError;

/// NAT-PMP's version number; PCP servers answer a version-0 request in NAT-PMP's format.
pub const VERSION: u8 = 0;
/// Opcode of the external-address request (answers add 128).
pub const OP_ADDRESS: u8 = 0;
/// Opcode of a UDP mapping request (answers add 128).
pub const OP_MAP_UDP: u8 = 1;
/// Result code "unsupported version" (a PCP-only server answering us, or the reverse).
pub const UNSUPPORTED_VERSION: u16 = 1;

/// The external-address request: two bytes.
pub fn encode_address_request() -> [u8; 2] {
    [VERSION, OP_ADDRESS]
}

/// A UDP MAP request for `internal_port`, hoping for `external_port` (0: any), held for
/// `lifetime_secs` (0 deletes the mapping; then `external_port` must be 0).
pub fn encode_map_request(internal_port: u16, external_port: u16, lifetime_secs: u32) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[0] = VERSION;
    out[1] = OP_MAP_UDP;
    out[4..6].copy_from_slice(&internal_port.to_be_bytes());
    out[6..8].copy_from_slice(&external_port.to_be_bytes());
    out[8..12].copy_from_slice(&lifetime_secs.to_be_bytes());
    out
}

/// A NAT-PMP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// Answer to the external-address request.
    Address {
        result: u16,
        epoch: u32,
        external: Ipv4Addr,
    },
    /// Answer to a UDP MAP request.
    Map {
        result: u16,
        epoch: u32,
        internal_port: u16,
        external_port: u16,
        lifetime_secs: u32,
    },
}

impl Response {
    pub fn result(&self) -> u16 {
        match self {
            Response::Address { result, .. } | Response::Map { result, .. } => *result,
        }
    }

    pub fn epoch(&self) -> u32 {
        match self {
            Response::Address { epoch, .. } | Response::Map { epoch, .. } => *epoch,
        }
    }
}

/// Decodes a NAT-PMP answer. An error answer may be cut short after the result code and
/// epoch (RFC 6886 §3.5 lets a server echo fewer bytes); such answers decode with zeros.
pub fn decode(datagram: &[u8]) -> Result<Response, WireError> {
    let [version, op, r0, r1, rest @ ..] = datagram else {
        return Err(WireError::Short);
    };
    if *version != VERSION {
        return Err(WireError::Version(*version));
    }
    let result = u16::from_be_bytes([*r0, *r1]);
    let field = |at: usize, len: usize| -> Result<&[u8], WireError> {
        match rest.get(at..at + len) {
            Some(bytes) => Ok(bytes),
            None if result != 0 => Ok(&[0u8; 4][..len]),
            None => Err(WireError::Short),
        }
    };
    let epoch = u32_at(field(0, 4)?);
    match *op {
        op if op == 128 + OP_ADDRESS => {
            let ip = field(4, 4)?;
            Ok(Response::Address {
                result,
                epoch,
                external: Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]),
            })
        }
        op if op == 128 + OP_MAP_UDP => Ok(Response::Map {
            result,
            epoch,
            internal_port: u16_at(field(4, 2)?),
            external_port: u16_at(field(6, 2)?),
            lifetime_secs: u32_at(field(8, 4)?),
        }),
        op => Err(WireError::Opcode(op)),
    }
}

fn u16_at(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

fn u32_at(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_request_has_rfc_6886_layout() {
        let request = encode_map_request(51870, 0, 7200);
        assert_eq!(
            request,
            [0, 1, 0, 0, 0xca, 0x9e, 0, 0, 0, 0, 0x1c, 0x20],
            "version 0, opcode 1 (UDP), reserved, internal port, external port, lifetime"
        );
        assert_eq!(encode_address_request(), [0, 0]);
    }

    #[test]
    fn answers_decode() {
        let address = [0, 128, 0, 0, 0, 0, 1, 0, 203, 0, 113, 1];
        assert_eq!(
            decode(&address),
            Ok(Response::Address {
                result: 0,
                epoch: 256,
                external: Ipv4Addr::new(203, 0, 113, 1)
            })
        );
        let map = [
            0, 129, 0, 0, 0, 0, 0, 9, 0xca, 0x9e, 0x9c, 0x40, 0, 0, 0x1c, 0x20,
        ];
        assert_eq!(
            decode(&map),
            Ok(Response::Map {
                result: 0,
                epoch: 9,
                internal_port: 51870,
                external_port: 40000,
                lifetime_secs: 7200
            })
        );
    }

    #[test]
    fn a_short_error_answer_decodes_and_a_short_success_does_not() {
        let refused = [0, 129, 0, 2, 0, 0, 0, 9];
        assert_eq!(decode(&refused).map(|r| r.result()), Ok(2));
        let cut = [0, 129, 0, 0, 0, 0, 0, 9, 0xca];
        assert_eq!(decode(&cut), Err(WireError::Short));
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        assert_eq!(decode(&[]), Err(WireError::Short));
        assert_eq!(decode(&[0, 129, 0]), Err(WireError::Short));
        assert_eq!(decode(&[2, 129, 0, 0]), Err(WireError::Version(2)));
        assert_eq!(decode(&[0, 1, 0, 0, 0, 0, 0, 0]), Err(WireError::Opcode(1)));
        for len in 0..40 {
            for fill in [0u8, 0x80, 0xff] {
                let mut bytes = vec![fill; len];
                if len > 1 {
                    bytes[0] = 0;
                    bytes[1] = 129;
                }
                let _ = decode(&bytes);
            }
        }
    }
}
