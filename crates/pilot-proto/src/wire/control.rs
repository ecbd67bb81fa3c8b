//! Pilot's control messages: registration, NAT discovery, punch coordination, path probes and
//! relay frames. All but relay frames travel inside a signed [`envelope`](super::envelope).
//!
//! | first byte | message | from → to | signed |
//! |---|---|---|---|
//! | 0x50 | `Register` | node → rendezvous | node |
//! | 0x51 | `Registered` | rendezvous → node | rendezvous |
//! | 0x52 | `NatProbe` | node → rendezvous (main and alt port) | node |
//! | 0x53 | `NatProbeReply` | rendezvous → node | rendezvous |
//! | 0x54 | `Connect` | node → rendezvous | node |
//! | 0x55 | `Punch` | rendezvous → both nodes | rendezvous |
//! | 0x56 | relay frame to a node: `[0x56][destination key][WireGuard datagram]` | node → rendezvous | no |
//! | 0x57 | relay frame from a node: `[0x57][source key][WireGuard datagram]` | rendezvous → node | no |
//! | 0x58 | `Probe` | node → node, every candidate | node |
//! | 0x59 | `ProbeAck` | node → node | node |
//! | 0x5a | `Submit` (a trust statement) | node → rendezvous | node (and the statement by its signer) |
//! | 0x5b | `Stored` | rendezvous → node | rendezvous |
//! | 0x5c | `Deliver` (a trust statement) | rendezvous → node | rendezvous (and the statement by its signer) |
//! | 0x5d | `Ack` | node → rendezvous | node |
//! | 0x5e | `Lookup` (hostname, address or key) | node → rendezvous | node |
//! | 0x5f | `Refused` | rendezvous → node | rendezvous |
//! | 0x60 | `LookupReply` | rendezvous → node | rendezvous |
//! | 0x61 | `Challenge` (an address cookie) | rendezvous → node | rendezvous |
//! | 0x62 | `ReleaseName` | node → rendezvous | node |
//! | 0x63 | `NameReleased` | rendezvous → node | rendezvous |
//! | 0x64 | `Introduce` (the other half of a `Connect`) | rendezvous → rendezvous sharing its registry | rendezvous |
//!
//! **Return routability.** The rendezvous believes a node's endpoint only once the node showed
//! it receives there: a `Register` from an endpoint not yet proven is answered with a
//! `Challenge` carrying a stateless cookie for that address, and the node registers again with
//! the cookie. Until an endpoint is proven, no reply to it is larger than the request it
//! answers, so the rendezvous cannot be used as a reflector; the requests that may come from
//! unproven endpoints (`Register`, `NatProbe`, `Lookup`, `ReleaseName`) are padded with zeros to
//! [`REQUEST_MIN_LEN`] so their honest answers fit.
//!
//! Relay frames are not signed: they carry WireGuard datagrams, which are authenticated end to
//! end, and the rendezvous admits them only from the registered endpoint of the source key.
//! Endpoints are encoded as `family (4|6) · address · port (BE)`. Every list has a small cap,
//! checked before anything is read, so no length from the network sizes an allocation.

use std::net::SocketAddr;

pub use super::codec::DecodeError;
use super::codec::Reader;
use super::trust::Statement;
use crate::addr::{Hostname, NodeAddr};
use crate::identity::NodeKey;

pub const REGISTER: u8 = 0x50;
pub const REGISTERED: u8 = 0x51;
pub const NAT_PROBE: u8 = 0x52;
pub const NAT_PROBE_REPLY: u8 = 0x53;
pub const CONNECT: u8 = 0x54;
pub const PUNCH: u8 = 0x55;
pub const RELAY_TO: u8 = 0x56;
pub const RELAY_FROM: u8 = 0x57;
pub const PROBE: u8 = 0x58;
pub const PROBE_ACK: u8 = 0x59;
pub const SUBMIT: u8 = 0x5a;
pub const STORED: u8 = 0x5b;
pub const DELIVER: u8 = 0x5c;
pub const ACK: u8 = 0x5d;
pub const LOOKUP: u8 = 0x5e;
pub const REFUSED: u8 = 0x5f;
pub const LOOKUP_REPLY: u8 = 0x60;
pub const CHALLENGE: u8 = 0x61;
pub const RELEASE_NAME: u8 = 0x62;
pub const NAME_RELEASED: u8 = 0x63;
pub const INTRODUCE: u8 = 0x64;

/// The least size (whole datagram, envelope included) of a request that may come from an
/// endpoint the rendezvous has not seen proven: at least its largest answer to such an
/// endpoint (a `Challenge`, `Registered`, `Refused`, `NatProbeReply`, `NameReleased`, or a
/// `LookupReply` naming a node), so none is larger than the request.
pub const REQUEST_MIN_LEN: usize = 256;
/// Bytes of an address cookie.
pub const COOKIE_LEN: usize = 16;

/// Most LAN endpoints a node reports.
pub const MAX_LAN_ENDPOINTS: usize = 8;
/// Most candidate endpoints in a punch message.
pub const MAX_CANDIDATES: usize = 9;
/// Bytes a relay frame adds in front of the WireGuard datagram.
pub const RELAY_HEADER_LEN: usize = 33;

/// How the node's NAT maps its socket, as measured from two rendezvous ports.
#[derive(
    Debug,
    Default,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum NatKind {
    /// Not measured yet.
    #[default]
    Unknown,
    /// The observed endpoint is one of the node's own: no NAT.
    None,
    /// Same public endpoint towards every destination (cone NATs): punching works.
    EndpointIndependent,
    /// A new public endpoint per destination (symmetric NAT): punching from this side fails.
    EndpointDependent,
}

impl NatKind {
    /// The name used in JSON, metrics and the registry database.
    pub fn as_str(self) -> &'static str {
        match self {
            NatKind::Unknown => "unknown",
            NatKind::None => "none",
            NatKind::EndpointIndependent => "endpoint_independent",
            NatKind::EndpointDependent => "endpoint_dependent",
        }
    }
}

/// Why the rendezvous refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    /// The sender is not registered (re-register, then retry).
    NotRegistered = 1,
    /// The target is not registered or has expired.
    UnknownTarget = 2,
    /// The pair has no valid mutual trust record.
    NotAllowed = 3,
    /// Too many requests.
    RateLimited = 4,
    /// The hostname in `Register` belongs to another key.
    NameTaken = 5,
    /// A submitted trust statement does not verify, or is not the sender's to submit.
    BadStatement = 6,
    /// The request's timestamp is too far from the rendezvous' clock. Sent only in answer to
    /// a `Register`; the answer's own envelope carries the rendezvous' time, so a node whose
    /// clock is wrong (no RTC, no NTP yet) learns the time it should sign with. It echoes the
    /// registration's nonce, which is what makes it fresh to the node whatever its clock says.
    Stale = 7,
}

/// What a `Lookup` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Name(Hostname),
    Address(NodeAddr),
    Key(NodeKey),
}

/// A registered node, as a `LookupReply` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub key: NodeKey,
    pub hostname: Option<Hostname>,
}

/// A control message body (the envelope supplies sender, time and nonce).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Registers (or refreshes) the sender: its LAN endpoints and the hostname it claims.
    Register {
        lan: Vec<SocketAddr>,
        hostname: Option<Hostname>,
        /// A digest of the node's trust ledger ([`TrustLedger::digest_of`]): when the
        /// rendezvous' differs, the two hand each other what they hold.
        ///
        /// [`TrustLedger::digest_of`]: super::trust::TrustLedger::digest_of
        trust_digest: u64,
        /// The rendezvous' cookie for the endpoint this is sent from, if it gave one.
        cookie: Option<[u8; COOKIE_LEN]>,
    },
    /// Answers `Register` (echoing its nonce) with the endpoint the rendezvous saw.
    /// `resubmit`: the node hands the rendezvous its trust statements again, because the
    /// rendezvous held no live registration of this key (it is new, or the rendezvous
    /// restarted, lost its database or was restored from a backup) or their ledgers' digests
    /// differ (and the rendezvous is delivering its own side).
    Registered {
        echo: u64,
        observed: SocketAddr,
        keepalive_secs: u16,
        resubmit: bool,
    },
    /// Asks for the endpoint seen at the port this was sent to.
    NatProbe,
    /// Answers `NatProbe`; `port` says which rendezvous port saw it.
    NatProbeReply {
        echo: u64,
        observed: SocketAddr,
        port: u16,
    },
    /// Asks the rendezvous to introduce the sender to `target`.
    Connect { target: NodeKey },
    /// Tells a node to probe `peer` at `candidates` now (its public endpoint first).
    Punch {
        peer: NodeKey,
        peer_nat: NatKind,
        candidates: Vec<SocketAddr>,
    },
    /// Path probe to `target`, sent to one candidate endpoint.
    Probe { target: NodeKey },
    /// Answers a `Probe` (echoing its nonce) with the endpoint it came from.
    ProbeAck { echo: u64, observed: SocketAddr },
    /// The rendezvous refused the request with nonce `echo`.
    Refused { echo: u64, code: RefusalCode },
    /// A trust statement for the rendezvous to store and pass on to the other party.
    Submit { statement: Statement },
    /// The submission with nonce `echo` is durably stored.
    Stored { echo: u64 },
    /// A trust statement for the receiving node; `id` is acknowledged with `Ack` once the node
    /// has stored it. `from_name` is the hostname the other party registered, if any.
    Deliver {
        id: u64,
        from_name: Option<Hostname>,
        statement: Statement,
    },
    /// The delivery `id` is stored by the node: the rendezvous may forget it.
    Ack { id: u64 },
    /// Which key has this hostname or address (or what is this key's hostname).
    Lookup { query: Query },
    /// Answers `Lookup`; `None` when no such node is registered.
    LookupReply { echo: u64, found: Option<Found> },
    /// Answers a request (nonce `echo`) from an endpoint not yet proven: register again from
    /// it with this cookie.
    Challenge { echo: u64, cookie: [u8; COOKIE_LEN] },
    /// Frees the hostname `name` the sender holds, at once (the sender no longer claims it).
    ReleaseName { name: Hostname },
    /// Answers `ReleaseName` (nonce `echo`). `held`: the sender held the name, which is free
    /// now; false: it did not (it may be another key's), and nothing changed.
    NameReleased { echo: u64, held: bool },
    /// From a rendezvous to another sharing its registry, where `peer` is registered: `node`
    /// (registered at the sender) asked to be introduced to `peer`; send `peer` the `Punch`
    /// for `node`, which has been sent its own.
    Introduce {
        node: NodeKey,
        peer: NodeKey,
        node_nat: NatKind,
        candidates: Vec<SocketAddr>,
    },
}

impl Message {
    /// The first byte this message travels under.
    pub fn kind(&self) -> u8 {
        match self {
            Message::Register { .. } => REGISTER,
            Message::Registered { .. } => REGISTERED,
            Message::NatProbe => NAT_PROBE,
            Message::NatProbeReply { .. } => NAT_PROBE_REPLY,
            Message::Connect { .. } => CONNECT,
            Message::Punch { .. } => PUNCH,
            Message::Probe { .. } => PROBE,
            Message::ProbeAck { .. } => PROBE_ACK,
            Message::Refused { .. } => REFUSED,
            Message::Submit { .. } => SUBMIT,
            Message::Stored { .. } => STORED,
            Message::Deliver { .. } => DELIVER,
            Message::Ack { .. } => ACK,
            Message::Lookup { .. } => LOOKUP,
            Message::LookupReply { .. } => LOOKUP_REPLY,
            Message::Challenge { .. } => CHALLENGE,
            Message::ReleaseName { .. } => RELEASE_NAME,
            Message::NameReleased { .. } => NAME_RELEASED,
            Message::Introduce { .. } => INTRODUCE,
        }
    }

    /// Appends the body to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::Register {
                lan,
                hostname,
                trust_digest,
                cookie,
            } => {
                put_endpoints(out, lan, MAX_LAN_ENDPOINTS);
                put_name(out, hostname.as_ref());
                out.extend_from_slice(&trust_digest.to_be_bytes());
                // Absent, it is nothing at all (the padding's zeros read the same).
                if let Some(cookie) = cookie {
                    out.push(1);
                    out.extend_from_slice(cookie);
                }
            }
            Message::Registered {
                echo,
                observed,
                keepalive_secs,
                resubmit,
            } => {
                out.extend_from_slice(&echo.to_be_bytes());
                put_endpoint(out, *observed);
                out.extend_from_slice(&keepalive_secs.to_be_bytes());
                out.push(u8::from(*resubmit));
            }
            Message::NatProbe => {}
            Message::NatProbeReply {
                echo,
                observed,
                port,
            } => {
                out.extend_from_slice(&echo.to_be_bytes());
                put_endpoint(out, *observed);
                out.extend_from_slice(&port.to_be_bytes());
            }
            Message::Connect { target } | Message::Probe { target } => {
                out.extend_from_slice(&target.0)
            }
            Message::Punch {
                peer,
                peer_nat,
                candidates,
            } => {
                out.extend_from_slice(&peer.0);
                out.push(nat_to_byte(*peer_nat));
                put_endpoints(out, candidates, MAX_CANDIDATES);
            }
            Message::ProbeAck { echo, observed } => {
                out.extend_from_slice(&echo.to_be_bytes());
                put_endpoint(out, *observed);
            }
            Message::Refused { echo, code } => {
                out.extend_from_slice(&echo.to_be_bytes());
                out.push(*code as u8);
            }
            Message::Submit { statement } => statement.encode(out),
            Message::Stored { echo } | Message::Ack { id: echo } => {
                out.extend_from_slice(&echo.to_be_bytes())
            }
            Message::Deliver {
                id,
                from_name,
                statement,
            } => {
                out.extend_from_slice(&id.to_be_bytes());
                put_name(out, from_name.as_ref());
                statement.encode(out);
            }
            Message::Lookup { query } => match query {
                Query::Name(name) => {
                    out.push(1);
                    put_name(out, Some(name));
                }
                Query::Address(addr) => {
                    out.push(2);
                    out.extend_from_slice(&addr.bits().to_be_bytes()[2..]);
                }
                Query::Key(key) => {
                    out.push(3);
                    out.extend_from_slice(&key.0);
                }
            },
            Message::LookupReply { echo, found } => {
                out.extend_from_slice(&echo.to_be_bytes());
                match found {
                    None => out.push(0),
                    Some(found) => {
                        out.push(1);
                        out.extend_from_slice(&found.key.0);
                        put_name(out, found.hostname.as_ref());
                    }
                }
            }
            Message::Challenge { echo, cookie } => {
                out.extend_from_slice(&echo.to_be_bytes());
                out.extend_from_slice(cookie);
            }
            Message::ReleaseName { name } => put_name(out, Some(name)),
            Message::NameReleased { echo, held } => {
                out.extend_from_slice(&echo.to_be_bytes());
                out.push(u8::from(*held));
            }
            Message::Introduce {
                node,
                peer,
                node_nat,
                candidates,
            } => {
                out.extend_from_slice(&node.0);
                out.extend_from_slice(&peer.0);
                out.push(nat_to_byte(*node_nat));
                put_endpoints(out, candidates, MAX_CANDIDATES);
            }
        }
        if self.may_come_unproven() {
            let min_body = REQUEST_MIN_LEN - super::envelope::OVERHEAD;
            if out.len() < min_body {
                out.resize(min_body, 0);
            }
        }
    }

    /// Decodes the body of a message of type `kind`. Never panics; allocations are bounded by
    /// the list caps.
    pub fn decode(kind: u8, body: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader(body);
        let message = match kind {
            REGISTER => Message::Register {
                lan: r.list(MAX_LAN_ENDPOINTS, Reader::endpoint)?,
                hostname: r.name()?,
                trust_digest: r.u64()?,
                cookie: match r.0.first() {
                    Some(1) => {
                        r.u8()?;
                        Some(r.array()?)
                    }
                    _ => None,
                },
            },
            REGISTERED => Message::Registered {
                echo: r.u64()?,
                observed: r.endpoint()?,
                keepalive_secs: r.u16()?,
                resubmit: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::BadValue),
                },
            },
            NAT_PROBE => Message::NatProbe,
            NAT_PROBE_REPLY => Message::NatProbeReply {
                echo: r.u64()?,
                observed: r.endpoint()?,
                port: r.u16()?,
            },
            CONNECT => Message::Connect { target: r.key()? },
            PUNCH => Message::Punch {
                peer: r.key()?,
                peer_nat: nat_from_byte(r.u8()?)?,
                candidates: r.list(MAX_CANDIDATES, Reader::endpoint)?,
            },
            PROBE => Message::Probe { target: r.key()? },
            PROBE_ACK => Message::ProbeAck {
                echo: r.u64()?,
                observed: r.endpoint()?,
            },
            REFUSED => Message::Refused {
                echo: r.u64()?,
                code: refusal_from_byte(r.u8()?)?,
            },
            SUBMIT => Message::Submit {
                statement: Statement::read(&mut r)?,
            },
            STORED => Message::Stored { echo: r.u64()? },
            DELIVER => Message::Deliver {
                id: r.u64()?,
                from_name: r.name()?,
                statement: Statement::read(&mut r)?,
            },
            ACK => Message::Ack { id: r.u64()? },
            LOOKUP => Message::Lookup {
                query: match r.u8()? {
                    1 => Query::Name(r.name()?.ok_or(DecodeError::BadValue)?),
                    2 => {
                        let six: [u8; 6] = r.array()?;
                        let mut bits = [0u8; 8];
                        bits[2..].copy_from_slice(&six);
                        Query::Address(NodeAddr::from_bits(u64::from_be_bytes(bits)))
                    }
                    3 => Query::Key(r.key()?),
                    _ => return Err(DecodeError::BadValue),
                },
            },
            LOOKUP_REPLY => Message::LookupReply {
                echo: r.u64()?,
                found: match r.u8()? {
                    0 => None,
                    1 => Some(Found {
                        key: r.key()?,
                        hostname: r.name()?,
                    }),
                    _ => return Err(DecodeError::BadValue),
                },
            },
            CHALLENGE => Message::Challenge {
                echo: r.u64()?,
                cookie: r.array()?,
            },
            RELEASE_NAME => Message::ReleaseName {
                name: r.name()?.ok_or(DecodeError::BadValue)?,
            },
            NAME_RELEASED => Message::NameReleased {
                echo: r.u64()?,
                held: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::BadValue),
                },
            },
            INTRODUCE => Message::Introduce {
                node: r.key()?,
                peer: r.key()?,
                node_nat: nat_from_byte(r.u8()?)?,
                candidates: r.list(MAX_CANDIDATES, Reader::endpoint)?,
            },
            other => return Err(DecodeError::UnknownKind(other)),
        };
        // Requests may carry zero padding (see [`REQUEST_MIN_LEN`]), and so may a `Probe` (a
        // path-MTU probe is one padded to the size it tests); nothing else may trail.
        let paddable = message.may_come_unproven() || matches!(message, Message::Probe { .. });
        let padding = paddable && r.0.iter().all(|&b| b == 0);
        if !r.0.is_empty() && !padding {
            return Err(DecodeError::Trailing);
        }
        Ok(message)
    }

    /// Messages only a rendezvous sends (to a node).
    pub fn is_from_rendezvous(&self) -> bool {
        matches!(
            self,
            Message::Registered { .. }
                | Message::NatProbeReply { .. }
                | Message::Punch { .. }
                | Message::Refused { .. }
                | Message::Stored { .. }
                | Message::Deliver { .. }
                | Message::LookupReply { .. }
                | Message::Challenge { .. }
                | Message::NameReleased { .. }
        )
    }

    /// Requests a node may send from an endpoint the rendezvous has not seen proven, which
    /// travel padded to [`REQUEST_MIN_LEN`].
    pub fn may_come_unproven(&self) -> bool {
        matches!(
            self,
            Message::Register { .. }
                | Message::NatProbe
                | Message::Lookup { .. }
                | Message::ReleaseName { .. }
        )
    }
}

/// Writes a relay frame (`RELAY_TO` or `RELAY_FROM`) into `out`; returns its length.
pub fn write_relay(out: &mut [u8], kind: u8, key: &NodeKey, datagram: &[u8]) -> Option<usize> {
    let total = RELAY_HEADER_LEN + datagram.len();
    let out = out.get_mut(..total)?;
    out[0] = kind;
    out[1..RELAY_HEADER_LEN].copy_from_slice(&key.0);
    out[RELAY_HEADER_LEN..].copy_from_slice(datagram);
    Some(total)
}

/// The key and WireGuard datagram of a relay frame.
pub fn parse_relay(frame: &[u8]) -> Option<(NodeKey, &[u8])> {
    let key: [u8; 32] = frame.get(1..RELAY_HEADER_LEN)?.try_into().ok()?;
    let datagram = frame.get(RELAY_HEADER_LEN..)?;
    (!datagram.is_empty()).then_some((NodeKey(key), datagram))
}

/// Whether a control datagram of this type is a (unsigned) relay frame.
pub fn is_relay(kind: u8) -> bool {
    kind == RELAY_TO || kind == RELAY_FROM
}

/// A list of endpoints: how many (at most `max`, the rest left out), then each.
fn put_endpoints(out: &mut Vec<u8>, list: &[SocketAddr], max: usize) {
    out.push(list.len().min(max) as u8);
    list.iter().take(max).for_each(|e| put_endpoint(out, *e));
}

fn put_endpoint(out: &mut Vec<u8>, endpoint: SocketAddr) {
    match endpoint {
        SocketAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.ip().octets());
        }
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => {
                out.push(4);
                out.extend_from_slice(&v4.octets());
            }
            None => {
                out.push(6);
                out.extend_from_slice(&v6.ip().octets());
            }
        },
    }
    out.extend_from_slice(&endpoint.port().to_be_bytes());
}

/// A hostname as a length byte and its bytes; length 0 for none.
fn put_name(out: &mut Vec<u8>, name: Option<&Hostname>) {
    let name = name.map_or("", Hostname::as_str);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

fn nat_to_byte(nat: NatKind) -> u8 {
    match nat {
        NatKind::Unknown => 0,
        NatKind::None => 1,
        NatKind::EndpointIndependent => 2,
        NatKind::EndpointDependent => 3,
    }
}

fn nat_from_byte(b: u8) -> Result<NatKind, DecodeError> {
    Ok(match b {
        0 => NatKind::Unknown,
        1 => NatKind::None,
        2 => NatKind::EndpointIndependent,
        3 => NatKind::EndpointDependent,
        _ => return Err(DecodeError::BadValue),
    })
}

fn refusal_from_byte(b: u8) -> Result<RefusalCode, DecodeError> {
    Ok(match b {
        1 => RefusalCode::NotRegistered,
        2 => RefusalCode::UnknownTarget,
        3 => RefusalCode::NotAllowed,
        4 => RefusalCode::RateLimited,
        5 => RefusalCode::NameTaken,
        6 => RefusalCode::BadStatement,
        7 => RefusalCode::Stale,
        _ => return Err(DecodeError::BadValue),
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn key(n: u8) -> NodeKey {
        NodeKey([n; 32])
    }

    fn sample_statement() -> Statement {
        let signing = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let request =
            crate::wire::trust::TrustRequest::sign(&signing, key(8), 1_700_000_000_000, 9, "why")
                .unwrap();
        Statement::Request(request)
    }

    fn samples() -> Vec<Message> {
        let v4: SocketAddr = "192.0.2.1:51870".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::7]:9".parse().unwrap();
        vec![
            Message::Register {
                lan: vec![v4, v6],
                hostname: Some("edge-7".parse().unwrap()),
                trust_digest: 0x0123_4567_89ab_cdef,
                cookie: Some([7; COOKIE_LEN]),
            },
            Message::Register {
                lan: vec![],
                hostname: None,
                trust_digest: 0,
                cookie: None,
            },
            Message::Challenge {
                echo: 3,
                cookie: [0xc0; COOKIE_LEN],
            },
            Message::Registered {
                echo: 7,
                observed: v4,
                keepalive_secs: 25,
                resubmit: true,
            },
            Message::NatProbe,
            Message::NatProbeReply {
                echo: 1,
                observed: v6,
                port: 3479,
            },
            Message::Connect { target: key(3) },
            Message::Punch {
                peer: key(4),
                peer_nat: NatKind::EndpointDependent,
                candidates: vec![v4, v6],
            },
            Message::Probe { target: key(5) },
            Message::ProbeAck {
                echo: u64::MAX,
                observed: v4,
            },
            Message::Refused {
                echo: 3,
                code: RefusalCode::NotAllowed,
            },
            Message::Refused {
                echo: 4,
                code: RefusalCode::NameTaken,
            },
            Message::Refused {
                echo: 5,
                code: RefusalCode::Stale,
            },
            Message::Submit {
                statement: sample_statement(),
            },
            Message::Stored { echo: 11 },
            Message::Deliver {
                id: 12,
                from_name: Some("alice".parse().unwrap()),
                statement: sample_statement(),
            },
            Message::Ack { id: 12 },
            Message::Lookup {
                query: Query::Name("bob".parse().unwrap()),
            },
            Message::Lookup {
                query: Query::Address(NodeAddr::from_bits(0xa1b2_c3d4_e5f6)),
            },
            Message::Lookup {
                query: Query::Key(key(6)),
            },
            Message::LookupReply {
                echo: 5,
                found: Some(Found {
                    key: key(7),
                    hostname: None,
                }),
            },
            Message::LookupReply {
                echo: 5,
                found: None,
            },
            Message::ReleaseName {
                name: "edge-7".parse().unwrap(),
            },
            Message::NameReleased {
                echo: 9,
                held: true,
            },
            Message::NameReleased {
                echo: 9,
                held: false,
            },
            Message::Introduce {
                node: key(3),
                peer: key(4),
                node_nat: NatKind::EndpointDependent,
                candidates: vec!["203.0.113.9:40000".parse().unwrap()],
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            let mut body = Vec::new();
            m.encode(&mut body);
            assert_eq!(Message::decode(m.kind(), &body), Ok(m.clone()), "{m:?}");
            if m.may_come_unproven() {
                // Padded to the request size; the padding may be cut, not added to with
                // anything but zeros.
                assert_eq!(
                    body.len() + super::super::envelope::OVERHEAD,
                    REQUEST_MIN_LEN,
                    "{m:?}"
                );
                body.push(1);
                assert_eq!(
                    Message::decode(m.kind(), &body),
                    Err(DecodeError::Trailing),
                    "{m:?}"
                );
                continue;
            }
            if !body.is_empty() {
                assert!(
                    Message::decode(m.kind(), &body[..body.len() - 1]).is_err(),
                    "{m:?} truncated"
                );
            }
            body.push(0);
            if matches!(m, Message::Probe { .. }) {
                // A path-MTU probe: padded with zeros to the size it tests, and nothing else.
                assert_eq!(Message::decode(m.kind(), &body), Ok(m.clone()));
                body.push(1);
            }
            assert_eq!(
                Message::decode(m.kind(), &body),
                Err(DecodeError::Trailing),
                "{m:?}"
            );
        }
    }

    #[test]
    fn mapped_ipv4_endpoints_travel_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:192.0.2.9]:5".parse().unwrap();
        let m = Message::ProbeAck {
            echo: 1,
            observed: mapped,
        };
        let mut body = Vec::new();
        m.encode(&mut body);
        let Ok(Message::ProbeAck { observed, .. }) = Message::decode(PROBE_ACK, &body) else {
            panic!()
        };
        assert_eq!(observed, "192.0.2.9:5".parse().unwrap());
    }

    /// Found by the `control_message` fuzz target: an IPv4-mapped address sent as family 6
    /// decoded as IPv6 (so it did not re-encode to the same message) and escaped the
    /// unspecified/multicast checks, which look at the IPv6 form.
    #[test]
    fn mapped_ipv4_endpoints_sent_as_ipv6_are_read_and_checked_as_ipv4() {
        let body = |ip: [u8; 4]| {
            let mut b = 1u64.to_be_bytes().to_vec();
            b.push(6);
            b.extend_from_slice(&Ipv4Addr::from(ip).to_ipv6_mapped().octets());
            b.extend_from_slice(&5u16.to_be_bytes());
            b
        };
        let Ok(Message::ProbeAck { observed, .. }) =
            Message::decode(PROBE_ACK, &body([192, 0, 2, 9]))
        else {
            panic!()
        };
        assert_eq!(observed, "192.0.2.9:5".parse().unwrap());
        for bad in [[0, 0, 0, 0], [224, 0, 0, 1]] {
            assert_eq!(
                Message::decode(PROBE_ACK, &body(bad)),
                Err(DecodeError::BadEndpoint),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn hostile_bodies_are_refused_without_panic() {
        // Overlong list counts are refused before reading.
        assert_eq!(Message::decode(REGISTER, &[200]), Err(DecodeError::TooMany));
        assert_eq!(
            Message::decode(PUNCH, &[0; 33]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            Message::decode(CONNECT, &[0; 31]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            Message::decode(0x65, &[]),
            Err(DecodeError::UnknownKind(0x65))
        );
        let mut introduce = [0u8; 66];
        introduce[64] = 9;
        assert_eq!(
            Message::decode(INTRODUCE, &introduce),
            Err(DecodeError::BadValue),
            "an unknown NAT kind"
        );
        // A release names a hostname; an empty one, or a bad answer flag, is refused.
        assert_eq!(
            Message::decode(RELEASE_NAME, &[0; 10]),
            Err(DecodeError::BadValue)
        );
        assert_eq!(
            Message::decode(NAME_RELEASED, &[0, 0, 0, 0, 0, 0, 0, 1, 2]),
            Err(DecodeError::BadValue)
        );
        // Port 0 and unspecified addresses are not endpoints.
        assert_eq!(
            Message::decode(PROBE_ACK, &[0, 0, 0, 0, 0, 0, 0, 0, 4, 192, 0, 2, 1, 0, 0]),
            Err(DecodeError::BadEndpoint)
        );
        assert_eq!(
            Message::decode(PROBE_ACK, &[0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 1]),
            Err(DecodeError::BadEndpoint)
        );
        // Nor is the limited broadcast address (a probe sent there reaches the whole LAN).
        assert_eq!(
            Message::decode(
                PROBE_ACK,
                &[0, 0, 0, 0, 0, 0, 0, 0, 4, 255, 255, 255, 255, 0, 1]
            ),
            Err(DecodeError::BadEndpoint)
        );
        // A hostname that is not a valid label is refused.
        assert_eq!(
            Message::decode(REGISTER, &[0, 3, b'B', b'o', b'b']),
            Err(DecodeError::BadValue)
        );
        let mut x = 0x9e37_79b9_u32;
        for kind in REGISTER..=INTRODUCE {
            for len in 0..120 {
                let junk: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        (x % 7) as u8
                    })
                    .collect();
                let _ = Message::decode(kind, &junk);
            }
        }
    }

    #[test]
    fn relay_frames_carry_key_and_datagram() {
        let mut buf = [0u8; 64];
        let n = write_relay(&mut buf, RELAY_TO, &key(9), b"wireguard").unwrap();
        assert_eq!(n, RELAY_HEADER_LEN + 9);
        assert_eq!(parse_relay(&buf[..n]), Some((key(9), &b"wireguard"[..])));
        assert_eq!(
            parse_relay(&buf[..RELAY_HEADER_LEN]),
            None,
            "empty datagram"
        );
        assert_eq!(parse_relay(&buf[..10]), None);
        assert_eq!(
            write_relay(&mut [0u8; 10], RELAY_TO, &key(9), b"wireguard"),
            None
        );
    }
}
