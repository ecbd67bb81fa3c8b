//! The DNS stub for the `pilot.` zone: recognising a query in a packet read from the TUN, and
//! writing the whole IPv6/UDP response packet that goes back into it.
//!
//! Unmodified programs (`curl http://bob.pilot:8080/`) resolve names through the system
//! resolver, never through a Pilot library, so the daemon has to be a DNS server to reach them.
//! It is one on [`DNS_ADDR`] (`fd70::53`), inside the service range of the overlay prefix that no
//! key can own and that the kernel already routes into the TUN. That needs no socket and no
//! port-53 bind (which would clash with systemd-resolved on `127.0.0.53` or a local dnsmasq),
//! no privilege the TUN does not already have, and the server exists exactly while the
//! interface does. The node answers it the way it answers ICMPv6: sans-IO, on the packet path,
//! into the caller's buffer, without allocating.
//!
//! What it answers is only what the resolvers of unmodified programs ask:
//!
//! - `NAME.pilot.` AAAA (or ANY): one AAAA record with a short TTL ([`ANSWER_TTL`]).
//! - `NAME.pilot.` A or any other type: NOERROR with no records. The overlay is IPv6-only, and an
//!   empty NOERROR (rather than NXDOMAIN) tells `getaddrinfo(AF_UNSPEC)`, which asks A and AAAA in
//!   parallel, that the name exists, so the AAAA answer is kept.
//! - Names in the zone that no node holds: NXDOMAIN, authoritative, without an SOA (the resolver
//!   then caches nothing, which is what a zone that changes as peers come and go wants).
//! - Names outside `pilot.`: REFUSED. This is not a recursive resolver (RA=0); systemd-resolved
//!   only routes `~pilot` here, and glibc moves on to its next `nameserver` on REFUSED.
//!
//! Responses carry no EDNS OPT record (a query's OPT is accepted and ignored): the largest answer
//! ([`MAX_RESPONSE_LEN`] minus the IPv6 and UDP headers) fits in the 512 bytes every DNS client
//! accepts, so truncation never arises.

use std::net::Ipv6Addr;

use super::ip::{self, IPV6_HEADER_LEN, NEXT_HEADER_UDP};
use name::MAX_NAME_LEN;
pub use name::{HostLabel, Name, Zone};

mod name;

/// The reserved overlay address the stub answers on.
pub const DNS_ADDR: Ipv6Addr = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0, 0, 0x53);
/// The UDP port the stub answers on.
pub const DNS_PORT: u16 = 53;
/// TTL of an AAAA answer, seconds. A node's address never changes (it is derived from its key),
/// but a name can stop resolving when trust ends; caches should not outlive that by much.
pub const ANSWER_TTL: u32 = 60;

/// Query types the stub tells apart.
pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_ANY: u16 = 255;
/// Query classes the stub answers; any other is refused.
pub const CLASS_IN: u16 = 1;
pub const CLASS_ANY: u16 = 255;

/// The longest packet [`write_response`] writes: IPv6, UDP and DNS headers, the longest
/// question (a 255-byte name, type and class) and one AAAA record. A buffer this size never
/// makes it fail.
pub const MAX_RESPONSE_LEN: usize =
    IPV6_HEADER_LEN + UDP_HEADER_LEN + DNS_HEADER_LEN + MAX_NAME_LEN + 4 + AAAA_RECORD_LEN;

// Every response fits the 512 bytes any DNS client accepts without EDNS.
const _: () = assert!(MAX_RESPONSE_LEN - IPV6_HEADER_LEN - UDP_HEADER_LEN <= 512);

const UDP_HEADER_LEN: usize = 8;
const DNS_HEADER_LEN: usize = 12;
/// Name (a pointer), type, class, TTL, RDLENGTH, the address.
const AAAA_RECORD_LEN: usize = 2 + 2 + 2 + 4 + 2 + 16;
/// A compression pointer to offset 12, where the echoed question's name starts.
const POINTER_TO_QUESTION: [u8; 2] = [0xc0, DNS_HEADER_LEN as u8];

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_RD: u16 = 0x0100;
const OPCODE_SHIFT: u16 = 11;

/// A DNS message to the stub, read from a packet in place. Its header was readable; whether it
/// holds a question the stub can answer is [`Query::question`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query<'a> {
    src: Ipv6Addr,
    src_port: u16,
    id: u16,
    opcode: u8,
    rd: bool,
    question: Result<Question<'a>, Unanswerable>,
}

/// Why a message to the stub gets an error instead of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswerable {
    /// Not one well-formed question (wrong section counts, a truncated or compressed name, a
    /// label or name too long): FORMERR.
    Malformed,
    /// An opcode other than QUERY (NOTIFY, UPDATE, …): NOTIMP.
    UnsupportedOpcode,
}

/// The one question of a standard query, borrowed from the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Question<'a> {
    /// Name, type and class exactly as received, echoed in the response.
    raw: &'a [u8],
    name: Name<'a>,
    qtype: u16,
    qclass: u16,
}

/// What the stub says to a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// One AAAA record for the question's name.
    Aaaa(Ipv6Addr),
    /// NOERROR without records: the name exists, but not with this type.
    NoData,
    /// The name does not exist in the zone.
    NxDomain,
    /// Not ours to answer (outside `pilot.`, or a class other than IN).
    Refused,
    FormErr,
    NotImp,
}

/// Reads `packet` (a whole IPv6 packet from the TUN) as a DNS message to `[fd70::53]:53`.
///
/// `None` means it is not one: another destination, port or protocol, extension headers, a bad
/// UDP checksum or length, a header shorter than 12 bytes, or a DNS response (never answered,
/// so two stubs cannot bounce messages). Anything else is a [`Query`], answerable or not.
pub fn parse_query(packet: &[u8]) -> Option<Query<'_>> {
    let (next_header, udp) = ip::ipv6_payload(packet)?;
    let (src, dst) = ip::ipv6_addrs(packet)?;
    if next_header != NEXT_HEADER_UDP || *dst != DNS_ADDR.octets() {
        return None;
    }
    let src_addr = Ipv6Addr::from(*src);
    if src_addr.is_multicast() || src_addr.is_unspecified() {
        return None;
    }
    let src_port = be16(udp, 0)?;
    let length = be16(udp, 4)?;
    let checksum = be16(udp, 6)?;
    // A zero checksum means "none", which IPv6 does not allow for UDP (RFC 8200 §8.1).
    if be16(udp, 2)? != DNS_PORT || src_port == 0 || usize::from(length) != udp.len() {
        return None;
    }
    if checksum == 0 || ip::pseudo_header_checksum(src, dst, NEXT_HEADER_UDP, udp) != 0 {
        return None;
    }
    let message = udp.get(UDP_HEADER_LEN..)?;
    let id = be16(message, 0)?;
    let flags = be16(message, 2)?;
    message.get(..DNS_HEADER_LEN)?;
    if flags & FLAG_QR != 0 {
        return None;
    }
    let opcode = ((flags >> OPCODE_SHIFT) & 0xf) as u8;
    let question = if opcode == 0 {
        parse_question(message)
    } else {
        Err(Unanswerable::UnsupportedOpcode)
    };
    Some(Query {
        src: src_addr,
        src_port,
        id,
        opcode,
        rd: flags & FLAG_RD != 0,
        question,
    })
}

/// Decides the answer to `query`; `lookup` maps a lowercase hostname (`bob`) to the address of
/// the node holding it, if the caller wants it to resolve.
pub fn answer(query: &Query<'_>, lookup: impl FnOnce(&str) -> Option<Ipv6Addr>) -> Answer {
    let question = match query.question() {
        Ok(question) => question,
        Err(why) => return why.into(),
    };
    if !matches!(question.qclass(), CLASS_IN | CLASS_ANY) {
        return Answer::Refused;
    }
    match question.zone() {
        Zone::Outside => Answer::Refused,
        Zone::Apex => Answer::NoData,
        Zone::Unassignable => Answer::NxDomain,
        Zone::Host(label) => match lookup(label.as_str()) {
            None => Answer::NxDomain,
            Some(addr) if matches!(question.qtype(), TYPE_AAAA | TYPE_ANY) => Answer::Aaaa(addr),
            Some(_) => Answer::NoData,
        },
    }
}

/// Writes the complete response packet to `query` into `out`: from `[fd70::53]:53` to the
/// query's source, hop limit 64, UDP checksum filled in, the question echoed when there was a
/// well-formed one. Returns its length, or `None` if `out` is shorter than the packet (it never
/// is at [`MAX_RESPONSE_LEN`]) or `answer` is an AAAA record for a query without a question.
pub fn write_response(out: &mut [u8], query: &Query<'_>, answer: Answer) -> Option<usize> {
    let question = query.question.as_ref().ok().map(|q| q.raw);
    let record = match answer {
        Answer::Aaaa(_) if question.is_none() => return None,
        Answer::Aaaa(addr) => Some(addr),
        _ => None,
    };
    let question_len = question.map_or(0, <[u8]>::len);
    let dns_len = DNS_HEADER_LEN + question_len + record.map_or(0, |_| AAAA_RECORD_LEN);
    let udp_len = UDP_HEADER_LEN + dns_len;
    let udp_len_field = u16::try_from(udp_len).ok()?;
    let out = out.get_mut(..IPV6_HEADER_LEN + udp_len)?;
    let (src, dst) = (DNS_ADDR.octets(), query.src.octets());
    ip::write_ipv6_header(out, &src, &dst, NEXT_HEADER_UDP, udp_len)?;

    let udp = &mut out[IPV6_HEADER_LEN..];
    udp[0..2].copy_from_slice(&DNS_PORT.to_be_bytes());
    udp[2..4].copy_from_slice(&query.src_port.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len_field.to_be_bytes());
    udp[6..8].fill(0);

    let dns = &mut udp[UDP_HEADER_LEN..];
    let mut flags = FLAG_QR | u16::from(query.opcode) << OPCODE_SHIFT | answer.rcode();
    if answer.is_authoritative() {
        flags |= FLAG_AA;
    }
    if query.rd {
        flags |= FLAG_RD;
    }
    let counts = [
        u16::from(question.is_some()),
        u16::from(record.is_some()),
        0,
        0,
    ];
    dns[0..2].copy_from_slice(&query.id.to_be_bytes());
    dns[2..4].copy_from_slice(&flags.to_be_bytes());
    for (field, count) in dns[4..DNS_HEADER_LEN].chunks_exact_mut(2).zip(counts) {
        field.copy_from_slice(&count.to_be_bytes());
    }
    let (_, rest) = dns.split_at_mut(DNS_HEADER_LEN);
    let (echo, rr) = rest.split_at_mut(question_len);
    echo.copy_from_slice(question.unwrap_or_default());
    if let Some(addr) = record {
        rr[0..2].copy_from_slice(&POINTER_TO_QUESTION);
        rr[2..4].copy_from_slice(&TYPE_AAAA.to_be_bytes());
        rr[4..6].copy_from_slice(&CLASS_IN.to_be_bytes());
        rr[6..10].copy_from_slice(&ANSWER_TTL.to_be_bytes());
        rr[10..12].copy_from_slice(&16u16.to_be_bytes());
        rr[12..28].copy_from_slice(&addr.octets());
    }

    let mut checksum = ip::pseudo_header_checksum(&src, &dst, NEXT_HEADER_UDP, udp);
    if checksum == 0 {
        // 0 would mean "no checksum"; its ones'-complement twin says the same sum.
        checksum = 0xffff;
    }
    udp[6..8].copy_from_slice(&checksum.to_be_bytes());
    Some(IPV6_HEADER_LEN + udp_len)
}

impl<'a> Query<'a> {
    pub fn src(&self) -> Ipv6Addr {
        self.src
    }

    pub fn src_port(&self) -> u16 {
        self.src_port
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    pub fn opcode(&self) -> u8 {
        self.opcode
    }

    /// The RD flag, copied into the response (recursion is never offered: RA stays 0).
    pub fn recursion_desired(&self) -> bool {
        self.rd
    }

    /// The question, or why the query gets an error instead.
    pub fn question(&self) -> Result<&Question<'a>, Unanswerable> {
        self.question.as_ref().map_err(|why| *why)
    }
}

impl<'a> Question<'a> {
    pub fn name(&self) -> Name<'a> {
        self.name
    }

    pub fn qtype(&self) -> u16 {
        self.qtype
    }

    pub fn qclass(&self) -> u16 {
        self.qclass
    }

    /// Name, type and class as they were on the wire.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Where the name stands relative to `pilot.`, compared case-insensitively.
    pub fn zone(&self) -> Zone {
        self.name().zone()
    }

    /// The host label when the name is exactly `LABEL.pilot.` with a valid hostname label.
    pub fn zone_label(&self) -> Option<HostLabel> {
        match self.zone() {
            Zone::Host(label) => Some(label),
            _ => None,
        }
    }

    /// Whether the name is `pilot.` or below it.
    pub fn in_zone(&self) -> bool {
        self.zone() != Zone::Outside
    }
}

impl Answer {
    fn rcode(self) -> u16 {
        match self {
            Answer::Aaaa(_) | Answer::NoData => 0,
            Answer::FormErr => 1,
            Answer::NxDomain => 3,
            Answer::NotImp => 4,
            Answer::Refused => 5,
        }
    }

    /// Answers about the zone's own names are authoritative; errors about the message are not.
    fn is_authoritative(self) -> bool {
        matches!(self, Answer::Aaaa(_) | Answer::NoData | Answer::NxDomain)
    }
}

impl From<Unanswerable> for Answer {
    fn from(why: Unanswerable) -> Answer {
        match why {
            Unanswerable::Malformed => Answer::FormErr,
            Unanswerable::UnsupportedOpcode => Answer::NotImp,
        }
    }
}

/// The question of a standard query: exactly one, no answer or authority records, and at most
/// one additional record (an EDNS OPT, which is not read).
fn parse_question(message: &[u8]) -> Result<Question<'_>, Unanswerable> {
    let malformed = Unanswerable::Malformed;
    let [Some(qd), Some(an), Some(ns), Some(ar)] = [4, 6, 8, 10].map(|at| be16(message, at)) else {
        return Err(malformed);
    };
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return Err(malformed);
    }
    let rest = message.get(DNS_HEADER_LEN..).ok_or(malformed)?;
    let name = Name::parse_prefix(rest).ok_or(malformed)?;
    let name_len = name.as_wire().len();
    Ok(Question {
        raw: rest.get(..name_len + 4).ok_or(malformed)?,
        name,
        qtype: be16(rest, name_len).ok_or(malformed)?,
        qclass: be16(rest, name_len + 2).ok_or(malformed)?,
    })
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let pair = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([pair[0], pair[1]]))
}

#[cfg(test)]
pub(crate) mod tests;
