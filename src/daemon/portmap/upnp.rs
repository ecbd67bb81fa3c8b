//! The UPnP-IGD side of port mapping, for gateways that answer neither PCP nor NAT-PMP: an
//! SSDP search on the LAN (only the gateway's answer is taken), its description over HTTP, and
//! SOAP calls to map, renew and delete the node's UDP port. Each step has a timeout; the whole
//! runs inside the port-mapping task, never the packet loop.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::portmap::upnp::{self, Location, Service, SoapAnswer};

/// How long the gateway has to answer the SSDP search (asked twice).
const SEARCH_WAIT: Duration = Duration::from_millis(1500);
/// How long one HTTP exchange with the gateway may take.
const HTTP_WAIT: Duration = Duration::from_secs(3);
/// The lease asked for; gateways that only keep permanent mappings get 0 (no expiry).
pub const LEASE_SECS: u32 = 7200;

/// A port the gateway forwards to us over UPnP-IGD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgdMapping {
    pub service: Service,
    pub external: SocketAddrV4,
    /// 0: no expiry (the gateway keeps only permanent mappings).
    pub lease_secs: u32,
}

/// Why no mapping was made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IgdError {
    #[error("no UPnP-IGD answer from the gateway")]
    NoAnswer,
    #[error("the gateway refused (UPnP error {0})")]
    Refused(u32),
    #[error("{0}")]
    Broken(String),
}

/// Finds the gateway's IGD and maps UDP `internal_port` of `client` (our LAN address).
pub async fn map(
    gateway: Ipv4Addr,
    client: Ipv4Addr,
    internal_port: u16,
) -> Result<IgdMapping, IgdError> {
    let description = search(gateway).await?;
    let (status, xml) = http(&description, upnp::get_request(&description)).await?;
    let service = match (status, upnp::parse_description(&xml, &description)) {
        (200, Some(service)) => service,
        _ => {
            return Err(IgdError::Broken(
                "no WAN connection service in its description".into(),
            ))
        }
    };
    let external_ip = match soap(&service, upnp::get_external_ip(&service)).await? {
        SoapAnswer::Ok(body) => upnp::element(&body, "NewExternalIPAddress")
            .and_then(|ip| ip.trim().parse::<Ipv4Addr>().ok())
            .filter(|ip| !ip.is_unspecified() && !ip.is_loopback() && !ip.is_multicast()),
        SoapAnswer::Fault(code) => return Err(IgdError::Refused(code)),
    };
    let Some(external_ip) = external_ip else {
        return Err(IgdError::Broken(
            "the gateway knows no external address".into(),
        ));
    };
    // The same port outside if it is free, else a few others.
    let mut seed = u32::from(internal_port) ^ rand_core::RngCore::next_u32(&mut rand_core::OsRng);
    let mut external_port = internal_port;
    let mut lease = LEASE_SECS;
    for _ in 0..4 {
        let request = upnp::add_port_mapping(&service, external_port, client, internal_port, lease);
        match soap(&service, request).await? {
            SoapAnswer::Ok(_) => {
                return Ok(IgdMapping {
                    service,
                    external: SocketAddrV4::new(external_ip, external_port),
                    lease_secs: lease,
                })
            }
            SoapAnswer::Fault(upnp::ONLY_PERMANENT_LEASES_SUPPORTED) if lease != 0 => lease = 0,
            SoapAnswer::Fault(upnp::CONFLICT_IN_MAPPING_ENTRY) => {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                external_port = 1024 + (seed >> 16) as u16 % (65535 - 1024);
            }
            SoapAnswer::Fault(code) => return Err(IgdError::Refused(code)),
        }
    }
    Err(IgdError::Refused(upnp::CONFLICT_IN_MAPPING_ENTRY))
}

/// Renews `mapping` (the same external port, the same lease).
pub async fn renew(
    mapping: &IgdMapping,
    client: Ipv4Addr,
    internal_port: u16,
) -> Result<(), IgdError> {
    let request = upnp::add_port_mapping(
        &mapping.service,
        mapping.external.port(),
        client,
        internal_port,
        mapping.lease_secs,
    );
    match soap(&mapping.service, request).await? {
        SoapAnswer::Ok(_) => Ok(()),
        SoapAnswer::Fault(code) => Err(IgdError::Refused(code)),
    }
}

pub async fn delete(mapping: &IgdMapping) -> Result<(), IgdError> {
    let request = upnp::delete_port_mapping(&mapping.service, mapping.external.port());
    match soap(&mapping.service, request).await? {
        SoapAnswer::Ok(_) => Ok(()),
        SoapAnswer::Fault(code) => Err(IgdError::Refused(code)),
    }
}

/// The gateway's description URL, from its answer to an SSDP search.
async fn search(gateway: Ipv4Addr) -> Result<Location, IgdError> {
    let broken = |e: std::io::Error| IgdError::Broken(format!("SSDP: {e}"));
    let socket = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(broken)?;
    socket.set_multicast_ttl_v4(2).map_err(broken)?;
    let request = upnp::search_request();
    let mut buf = [0u8; 2048];
    for _ in 0..2 {
        socket
            .send_to(&request, SocketAddr::V4(upnp::SSDP_GROUP))
            .await
            .map_err(broken)?;
        let deadline = tokio::time::Instant::now() + SEARCH_WAIT;
        loop {
            let received = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await;
            let Ok(Ok((n, from))) = received else {
                break;
            };
            if from.ip() != std::net::IpAddr::V4(gateway) {
                continue;
            }
            if let Some(location) = upnp::parse_search_response(&buf[..n], gateway) {
                return Ok(location);
            }
        }
    }
    Err(IgdError::NoAnswer)
}

async fn soap(service: &Service, request: Vec<u8>) -> Result<SoapAnswer, IgdError> {
    let (status, body) = http(&service.control, request).await?;
    let mut answer = format!("HTTP/1.1 {status} -\r\n\r\n").into_bytes();
    answer.extend_from_slice(body.as_bytes());
    upnp::parse_soap(&answer).ok_or_else(|| IgdError::Broken("an unreadable SOAP answer".into()))
}

/// One HTTP exchange with the gateway: `request` out, the status and body back.
async fn http(to: &Location, request: Vec<u8>) -> Result<(u16, String), IgdError> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(SocketAddr::V4(to.addr)).await?;
        stream.write_all(&request).await?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(upnp::MAX_HTTP as u64)
            .read_to_end(&mut answer)
            .await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = match tokio::time::timeout(HTTP_WAIT, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(IgdError::Broken(format!("HTTP to {}: {e}", to.addr))),
        Err(_) => return Err(IgdError::Broken(format!("HTTP to {}: no answer", to.addr))),
    };
    upnp::parse_http(&answer)
        .ok_or_else(|| IgdError::Broken(format!("an unreadable HTTP answer from {}", to.addr)))
}
