//! SOCKS5 (RFC 1928), both sides: the proxy that `pilotd up --userspace` serves so unmodified
//! programs reach overlay peers (`curl --socks5-hostname 127.0.0.1:1080 http://bob.pilot:8080/`),
//! and the client `pilotctl connect` uses to go through it. Generic over any
//! `AsyncRead + AsyncWrite` stream; opening the overlay connection is the caller's business.
//!
//! Supported: the no-authentication method and the CONNECT command, to an IPv4 address, an IPv6
//! address or a domain name. The proxy resolves names itself, which is what makes `NAME.pilot`
//! work; clients must be told to hand names over (`socks5h://`, `--socks5-hostname`) rather than
//! resolve them locally, where `.pilot` means nothing in userspace mode.
//!
//! Refused, with the reply RFC 1928 defines where there is one:
//! - Every authentication method (`05 FF`). Access is decided by where the proxy listens
//!   (loopback by default), and RFC 1929's username/password crosses in clear anyway.
//! - BIND and UDP ASSOCIATE (`07`, command not supported): the userspace stack carries TCP only,
//!   and BIND exists for FTP-style callbacks that a peer can make to this node's address directly.
//! - Unknown address types (`08`), and names that are empty, not UTF-8 or hold control characters
//!   (`01`, general failure; such a name would reach logs and the resolver otherwise).
//! - Anything that is not SOCKS5 at all (SOCKS4, an HTTP request or TLS sent to the proxy port):
//!   no reply, since the client would not understand one, and an error that says what it looks
//!   like.
//!
//! Every length on the wire is a single byte (at most 255 methods, a name of at most 255 bytes)
//! and is read into fixed buffers; nothing panics on what a client sends. Nothing here times out:
//! the caller bounds each exchange with `tokio::time::timeout`.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Where a CONNECT goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Ip(SocketAddr),
    /// A domain name for the proxy to resolve (1 to 255 bytes of text), and a port.
    Name(String, u16),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Ip(addr) => write!(f, "{addr}"),
            Target::Name(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

/// The proxy's answer to a request (RFC 1928 section 6), with its code on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reply {
    Succeeded = 0,
    GeneralFailure = 1,
    NotAllowed = 2,
    NetworkUnreachable = 3,
    HostUnreachable = 4,
    ConnectionRefused = 5,
    TtlExpired = 6,
    CommandNotSupported = 7,
    AddressTypeNotSupported = 8,
}

impl Reply {
    const ALL: [Reply; 9] = [
        Reply::Succeeded,
        Reply::GeneralFailure,
        Reply::NotAllowed,
        Reply::NetworkUnreachable,
        Reply::HostUnreachable,
        Reply::ConnectionRefused,
        Reply::TtlExpired,
        Reply::CommandNotSupported,
        Reply::AddressTypeNotSupported,
    ];

    /// The REP byte.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The reply a REP byte stands for; `None` for the codes RFC 1928 leaves unassigned.
    pub fn from_code(code: u8) -> Option<Reply> {
        Reply::ALL.into_iter().find(|reply| reply.code() == code)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reply::Succeeded => "succeeded",
            Reply::GeneralFailure => "general SOCKS server failure",
            Reply::NotAllowed => "connection not allowed by ruleset",
            Reply::NetworkUnreachable => "network unreachable",
            Reply::HostUnreachable => "host unreachable",
            Reply::ConnectionRefused => "connection refused",
            Reply::TtlExpired => "TTL expired",
            Reply::CommandNotSupported => "command not supported",
            Reply::AddressTypeNotSupported => "address type not supported",
        })
    }
}

/// The message being read or written when an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Client to proxy: version and offered methods.
    Greeting,
    /// Proxy to client: the method chosen.
    MethodChoice,
    /// Client to proxy: command and target.
    Request,
    /// Proxy to client: the outcome and bound address.
    Reply,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Greeting => "the greeting",
            Stage::MethodChoice => "the method choice",
            Stage::Request => "the request",
            Stage::Reply => "the reply",
        })
    }
}

/// Why an exchange failed: [`accept`] returns the proxy-side errors, [`connect`] the client-side
/// ones; truncation and I/O errors say which message they interrupted.
#[derive(Debug, thiserror::Error)]
pub enum Socks5Error {
    /// Proxy side: the first byte is not 5.
    #[error("{}", not_socks5_client(*.0))]
    NotSocks5Client(u8),
    #[error("the client offers no method this proxy accepts (only no-authentication)")]
    NoAcceptableMethod,
    #[error("the request's version byte is {0:#04x}, not 0x05: the client does not speak SOCKS5 correctly")]
    RequestVersion(u8),
    #[error("the client asks for {name} (command {0:#04x}); this proxy supports only CONNECT", name = command_name(*.0))]
    UnsupportedCommand(u8),
    #[error(
        "address type {0:#04x} is not one SOCKS5 defines (0x01 IPv4, 0x03 domain name, 0x04 IPv6)"
    )]
    UnknownAddressType(u8),
    #[error("the request names an empty domain")]
    EmptyName,
    #[error("the requested domain name is not hostname text (not UTF-8, or control characters)")]
    NameNotText,
    /// Client side: a name SOCKS5 cannot carry.
    #[error("a SOCKS5 domain name is 1 to 255 bytes long; this one is {0}")]
    NameLength(usize),
    #[error(
        "not a SOCKS5 proxy (it answered with version byte {0:#04x}); check the proxy address"
    )]
    NotSocks5Proxy(u8),
    #[error("{}", method_refused(*.0))]
    MethodRefused(u8),
    /// Client side: the proxy answered the request with this REP code (never 0).
    #[error("{}", rejected(*.0))]
    Rejected(u8),
    #[error("the connection closed before the end of {0} (unexpected EOF)")]
    Truncated(Stage),
    #[error("I/O error during {stage}: {source}")]
    Io { stage: Stage, source: io::Error },
}

/// What `pilotd up --userspace` warns at start when the proxy listens at `bound`, or `None`
/// when only this host can reach it (loopback). The proxy asks for no authentication, so
/// whoever can connect to it reaches every peer this node trusts, as this node.
pub fn exposure_warning(bound: SocketAddr) -> Option<String> {
    if bound.ip().to_canonical().is_loopback() {
        return None;
    }
    Some(format!(
        "the SOCKS5 proxy listens on {bound}, where other hosts can reach it, and asks for no \
         authentication: anyone who can connect to it reaches every peer this node trusts, as \
         this node. Bind it to loopback (--socks5 127.0.0.1:1080) or firewall the port"
    ))
}

/// Proxy side: runs the greeting and reads a request, returning its target. The caller opens the
/// connection and answers with [`reply`]; on an error the connection should just be closed (this
/// has already sent the refusal the protocol defines, if any).
///
/// Does not time out: the caller applies one, or a client that stays silent holds the task.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<Target, Socks5Error> {
    // The version alone first: a non-SOCKS client is named for what it is, not for being short.
    let [version] = read_array(stream, Stage::Greeting).await?;
    if version != VERSION {
        return Err(Socks5Error::NotSocks5Client(version));
    }
    let [count] = read_array(stream, Stage::Greeting).await?;
    let mut methods = [0; 255];
    let methods = &mut methods[..usize::from(count)];
    read_exact(stream, methods, Stage::Greeting).await?;
    if !methods.contains(&METHOD_NO_AUTH) {
        // The refusal is the news for the caller; whether `05 FF` arrived matters less.
        let _ = write_all(
            stream,
            &[VERSION, METHOD_NONE_ACCEPTABLE],
            Stage::MethodChoice,
        )
        .await;
        return Err(Socks5Error::NoAcceptableMethod);
    }
    write_all(stream, &[VERSION, METHOD_NO_AUTH], Stage::MethodChoice).await?;

    // RSV should be 0, but nothing depends on it, so it is not held against the client.
    let [version, command, _reserved, atyp] = read_array(stream, Stage::Request).await?;
    if version != VERSION {
        return Err(Socks5Error::RequestVersion(version));
    }
    let address = match read_address(stream, atyp, Stage::Request).await {
        Ok(address) => address,
        Err(e @ Socks5Error::UnknownAddressType(_)) => {
            refuse(stream, Reply::AddressTypeNotSupported).await;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    // Refused only now that the whole request is read: closing with unread bytes makes the
    // kernel send a reset, which can destroy the reply before the client reads it.
    if command != CMD_CONNECT {
        refuse(stream, Reply::CommandNotSupported).await;
        return Err(Socks5Error::UnsupportedCommand(command));
    }
    match address.into_target() {
        Ok(target) => Ok(target),
        Err(e) => {
            refuse(stream, Reply::GeneralFailure).await;
            Err(e)
        }
    }
}

/// Proxy side: answers a request. `bound` is the address the proxy connected from (IPv4 or
/// IPv6 as given); clients ignore it, and `0.0.0.0:0` is the usual value when there is none.
pub async fn reply<S: AsyncWrite + Unpin>(
    stream: &mut S,
    reply: Reply,
    bound: SocketAddr,
) -> io::Result<()> {
    let mut message = Vec::with_capacity(MAX_MESSAGE);
    message.extend_from_slice(&[VERSION, reply.code(), 0]);
    push_ip_address(&mut message, bound);
    stream.write_all(&message).await?;
    stream.flush().await
}

/// Client side: asks the proxy on `stream` to CONNECT to `target`. On `Ok` the stream carries
/// the target's bytes, the reply having been read to its end.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    target: &Target,
) -> Result<(), Socks5Error> {
    // Built first: a target SOCKS5 cannot carry fails before a byte is sent.
    let request = connect_request(target)?;
    write_all(stream, &[VERSION, 1, METHOD_NO_AUTH], Stage::Greeting).await?;
    let [version, method] = read_array(stream, Stage::MethodChoice).await?;
    if version != VERSION {
        return Err(Socks5Error::NotSocks5Proxy(version));
    }
    if method != METHOD_NO_AUTH {
        return Err(Socks5Error::MethodRefused(method));
    }
    write_all(stream, &request, Stage::Request).await?;

    let [version, code] = read_array(stream, Stage::Reply).await?;
    if version != VERSION {
        return Err(Socks5Error::NotSocks5Proxy(version));
    }
    if code != Reply::Succeeded.code() {
        // The rest of a failure is of no use, and some proxies close without sending it.
        return Err(Socks5Error::Rejected(code));
    }
    // Consumed so that the caller's first read is the target's first byte.
    let [_reserved, atyp] = read_array(stream, Stage::Reply).await?;
    read_address(stream, atyp, Stage::Reply).await?;
    Ok(())
}

const VERSION: u8 = 0x05;
const METHOD_NO_AUTH: u8 = 0x00;
const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;
const CMD_CONNECT: u8 = 0x01;
const CMD_BIND: u8 = 0x02;
const CMD_UDP_ASSOCIATE: u8 = 0x03;
const ATYP_IPV4: u8 = 0x01;
const ATYP_NAME: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;
/// The longest request or reply: header, a 255-byte name after its length byte, port.
const MAX_MESSAGE: usize = 4 + 1 + 255 + 2;

/// An address as read off the wire, its name not yet checked.
#[allow(
    clippy::large_enum_variant,
    reason = "one per request, on the stack for its duration; boxing would allocate for nothing"
)]
enum WireAddress {
    Ip(SocketAddr),
    Name {
        bytes: [u8; 255],
        len: u8,
        port: u16,
    },
}

impl WireAddress {
    fn into_target(self) -> Result<Target, Socks5Error> {
        let (bytes, len, port) = match self {
            WireAddress::Ip(addr) => return Ok(Target::Ip(addr)),
            WireAddress::Name { bytes, len, port } => (bytes, len, port),
        };
        // `len` is a u8 and the buffer 255 bytes long: this slice is always in bounds.
        let bytes = &bytes[..usize::from(len)];
        if bytes.is_empty() {
            return Err(Socks5Error::EmptyName);
        }
        let Ok(name) = std::str::from_utf8(bytes) else {
            return Err(Socks5Error::NameNotText);
        };
        if name.chars().any(char::is_control) {
            return Err(Socks5Error::NameNotText);
        }
        // Some clients put an address literal in the name field; it is an address all the same.
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(Target::Ip(SocketAddr::new(ip, port)));
        }
        Ok(Target::Name(name.to_owned(), port))
    }
}

/// Reads the address and port that follow ATYP in a request or a reply.
async fn read_address<S: AsyncRead + Unpin>(
    stream: &mut S,
    atyp: u8,
    stage: Stage,
) -> Result<WireAddress, Socks5Error> {
    match atyp {
        ATYP_IPV4 => {
            let ip: [u8; 4] = read_array(stream, stage).await?;
            let port = read_port(stream, stage).await?;
            Ok(WireAddress::Ip(SocketAddr::new(
                Ipv4Addr::from(ip).into(),
                port,
            )))
        }
        ATYP_IPV6 => {
            let ip: [u8; 16] = read_array(stream, stage).await?;
            let port = read_port(stream, stage).await?;
            Ok(WireAddress::Ip(SocketAddr::new(
                Ipv6Addr::from(ip).into(),
                port,
            )))
        }
        ATYP_NAME => {
            let [len] = read_array(stream, stage).await?;
            let mut bytes = [0; 255];
            read_exact(stream, &mut bytes[..usize::from(len)], stage).await?;
            let port = read_port(stream, stage).await?;
            Ok(WireAddress::Name { bytes, len, port })
        }
        other => Err(Socks5Error::UnknownAddressType(other)),
    }
}

async fn read_port<S: AsyncRead + Unpin>(stream: &mut S, stage: Stage) -> Result<u16, Socks5Error> {
    Ok(u16::from_be_bytes(read_array(stream, stage).await?))
}

fn connect_request(target: &Target) -> Result<Vec<u8>, Socks5Error> {
    let mut request = Vec::with_capacity(MAX_MESSAGE);
    request.extend_from_slice(&[VERSION, CMD_CONNECT, 0]);
    match target {
        Target::Ip(addr) => push_ip_address(&mut request, *addr),
        Target::Name(name, port) => {
            let len = u8::try_from(name.len())
                .ok()
                .filter(|&len| len > 0)
                .ok_or(Socks5Error::NameLength(name.len()))?;
            request.extend_from_slice(&[ATYP_NAME, len]);
            request.extend_from_slice(name.as_bytes());
            request.extend_from_slice(&port.to_be_bytes());
        }
    }
    Ok(request)
}

/// Appends ATYP, address and port for an IP address.
fn push_ip_address(message: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            message.push(ATYP_IPV4);
            message.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            message.push(ATYP_IPV6);
            message.extend_from_slice(&ip.octets());
        }
    }
    message.extend_from_slice(&addr.port().to_be_bytes());
}

/// Sends a failure reply, best effort: the error that caused it is what the caller reports.
async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, why: Reply) {
    let _ = reply(stream, why, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await;
}

async fn read_array<S: AsyncRead + Unpin, const N: usize>(
    stream: &mut S,
    stage: Stage,
) -> Result<[u8; N], Socks5Error> {
    let mut bytes = [0; N];
    read_exact(stream, &mut bytes, stage).await?;
    Ok(bytes)
}

async fn read_exact<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    stage: Stage,
) -> Result<(), Socks5Error> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) => Err(stream_error(stage, e)),
    }
}

async fn write_all<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    stage: Stage,
) -> Result<(), Socks5Error> {
    let written = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    written.await.map_err(|e| stream_error(stage, e))
}

fn stream_error(stage: Stage, source: io::Error) -> Socks5Error {
    if source.kind() == io::ErrorKind::UnexpectedEof {
        Socks5Error::Truncated(stage)
    } else {
        Socks5Error::Io { stage, source }
    }
}

fn not_socks5_client(version: u8) -> String {
    let guess = match version {
        // GET, POST, CONNECT, HEAD, PUT, ...: every HTTP method starts with a capital letter.
        b'A'..=b'Z' => "an HTTP request sent to the proxy port?",
        0x04 => "a SOCKS4 client? use SOCKS5 with remote names, e.g. socks5h://",
        0x16 => "a TLS handshake sent to the proxy port?",
        _ => "expected 0x05",
    };
    format!("not a SOCKS5 client (version byte {version:#04x} — {guess})")
}

fn command_name(command: u8) -> &'static str {
    match command {
        CMD_BIND => "BIND",
        CMD_UDP_ASSOCIATE => "UDP ASSOCIATE",
        _ => "an unknown command",
    }
}

fn method_refused(method: u8) -> String {
    if method == METHOD_NONE_ACCEPTABLE {
        "the proxy accepts no method offered (only no-authentication was): it wants \
         authentication, which this client does not do"
            .to_owned()
    } else {
        format!("the proxy chose method {method:#04x}, which was not offered (only no-authentication was)")
    }
}

fn rejected(code: u8) -> String {
    match Reply::from_code(code) {
        Some(reply) => format!("the proxy says: {reply}"),
        None => format!(
            "the proxy refused with reply code {code:#04x}, which RFC 1928 leaves unassigned"
        ),
    }
}

#[cfg(test)]
mod tests;
