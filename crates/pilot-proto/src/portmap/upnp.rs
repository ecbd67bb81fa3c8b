//! UPnP-IGD (Internet Gateway Device) messages: the SSDP search for the gateway, its device
//! description, and the SOAP calls that map, renew and delete a UDP port
//! (WANIPConnection:1/2, WANPPPConnection:1). Parsers take any bytes and return `None` for
//! what they do not understand; they never panic and bound what they read.

use std::net::{Ipv4Addr, SocketAddrV4};

/// Where SSDP searches go.
pub const SSDP_GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 255, 250), 1900);
/// The largest HTTP answer read from the gateway (descriptions are a few KiB).
pub const MAX_HTTP: usize = 64 * 1024;
/// UPnP error codes the client acts on.
pub const CONFLICT_IN_MAPPING_ENTRY: u32 = 718;
pub const ONLY_PERMANENT_LEASES_SUPPORTED: u32 = 725;
/// The mapping's description on the router (its UIs list it).
const DESCRIPTION: &str = "pilot";
const SEARCH_TARGET: &str = "urn:schemas-upnp-org:device:InternetGatewayDevice:1";
/// Connection services that map ports, in the order they are preferred.
const SERVICES: [&str; 3] = [
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
];

/// The SSDP M-SEARCH for internet gateways.
pub fn search_request() -> Vec<u8> {
    format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\n\
         MX: 1\r\nST: {SEARCH_TARGET}\r\n\r\n"
    )
    .into_bytes()
}

/// An `http://IP[:PORT]/path` URL on the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub addr: SocketAddrV4,
    pub path: String,
}

impl Location {
    /// Parses an `http://` URL whose host is an IPv4 literal (no name is resolved: the
    /// gateway is named by address).
    pub fn parse(url: &str) -> Option<Location> {
        let rest = url.trim().strip_prefix("http://")?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let addr = match authority.split_once(':') {
            Some((host, port)) => SocketAddrV4::new(host.parse().ok()?, port.parse().ok()?),
            None => SocketAddrV4::new(authority.parse().ok()?, 80),
        };
        Some(Location {
            addr,
            path: path.to_owned(),
        })
    }
}

/// The description's URL from an SSDP answer, if it is a gateway's answer on `gateway`.
pub fn parse_search_response(datagram: &[u8], gateway: Ipv4Addr) -> Option<Location> {
    let text = std::str::from_utf8(datagram).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines.next()?;
    if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
        return None;
    }
    let location = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("location")
            .then_some(value)
    })?;
    Location::parse(location).filter(|l| *l.addr.ip() == gateway)
}

/// The port-mapping service of a device description: its type and control URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub service_type: &'static str,
    pub control: Location,
}

/// Finds the preferred connection service in a device description fetched from `base`.
pub fn parse_description(xml: &str, base: &Location) -> Option<Service> {
    let mut found: Vec<(usize, Location)> = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<service>") {
        let after = &rest[start + "<service>".len()..];
        let end = after.find("</service>").unwrap_or(after.len());
        let block = &after[..end];
        rest = &after[end..];
        let (Some(kind), Some(control)) =
            (element(block, "serviceType"), element(block, "controlURL"))
        else {
            continue;
        };
        let Some(rank) = SERVICES.iter().position(|s| *s == kind.trim()) else {
            continue;
        };
        let control = control.trim();
        let control = if control.starts_with('/') {
            Location {
                addr: base.addr,
                path: control.to_owned(),
            }
        } else {
            match Location::parse(control) {
                // Only the gateway that answered is talked to.
                Some(l) if l.addr.ip() == base.addr.ip() => l,
                _ => continue,
            }
        };
        found.push((rank, control));
    }
    found.sort_by_key(|(rank, _)| *rank);
    let (rank, control) = found.into_iter().next()?;
    Some(Service {
        service_type: SERVICES[rank],
        control,
    })
}

/// An HTTP GET of `location` (closing the connection after the answer).
pub fn get_request(location: &Location) -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        location.path, location.addr
    )
    .into_bytes()
}

/// A SOAP call of `action` with `args` on `service`.
pub fn soap_request(service: &Service, action: &str, args: &[(&str, String)]) -> Vec<u8> {
    let mut body = format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>\
         <u:{action} xmlns:u=\"{}\">",
        service.service_type
    );
    for (name, value) in args {
        body.push_str(&format!("<{name}>{value}</{name}>"));
    }
    body.push_str(&format!("</u:{action}></s:Body></s:Envelope>\r\n"));
    format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/xml; charset=\"utf-8\"\r\n\
         SOAPAction: \"{}#{action}\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        service.control.path,
        service.control.addr,
        service.service_type,
        body.len()
    )
    .into_bytes()
}

/// AddPortMapping of UDP `external_port` to `client:internal_port` for `lease_secs` (0: no
/// expiry, for gateways that support nothing else).
pub fn add_port_mapping(
    service: &Service,
    external_port: u16,
    client: Ipv4Addr,
    internal_port: u16,
    lease_secs: u32,
) -> Vec<u8> {
    soap_request(
        service,
        "AddPortMapping",
        &[
            ("NewRemoteHost", String::new()),
            ("NewExternalPort", external_port.to_string()),
            ("NewProtocol", "UDP".to_owned()),
            ("NewInternalPort", internal_port.to_string()),
            ("NewInternalClient", client.to_string()),
            ("NewEnabled", "1".to_owned()),
            ("NewPortMappingDescription", DESCRIPTION.to_owned()),
            ("NewLeaseDuration", lease_secs.to_string()),
        ],
    )
}

pub fn delete_port_mapping(service: &Service, external_port: u16) -> Vec<u8> {
    soap_request(
        service,
        "DeletePortMapping",
        &[
            ("NewRemoteHost", String::new()),
            ("NewExternalPort", external_port.to_string()),
            ("NewProtocol", "UDP".to_owned()),
        ],
    )
}

pub fn get_external_ip(service: &Service) -> Vec<u8> {
    soap_request(service, "GetExternalIPAddress", &[])
}

/// What a SOAP call answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SoapAnswer {
    /// Success; the body (read with [`element`]).
    Ok(String),
    /// A UPnP error code (or 0 when the fault has none).
    Fault(u32),
}

/// Splits an HTTP answer into its status code and body (chunked bodies are joined).
pub fn parse_http(answer: &[u8]) -> Option<(u16, String)> {
    let text = std::str::from_utf8(answer.get(..answer.len().min(MAX_HTTP))?).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Some((status, body))
}

/// The answer to a SOAP call.
pub fn parse_soap(answer: &[u8]) -> Option<SoapAnswer> {
    let (status, body) = parse_http(answer)?;
    match status {
        200 => Some(SoapAnswer::Ok(body)),
        _ => Some(SoapAnswer::Fault(
            element(&body, "errorCode")
                .and_then(|c| c.trim().parse().ok())
                .unwrap_or(0),
        )),
    }
}

/// The text of the first `<name>…</name>` (or `<prefix:name>`) element in `xml`.
pub fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = xml;
    loop {
        let open = rest.find('<')?;
        rest = &rest[open + 1..];
        let close = rest.find('>')?;
        let tag = rest[..close].split_whitespace().next().unwrap_or("");
        let local = tag.rsplit(':').next().unwrap_or(tag);
        if local == name {
            let content = &rest[close + 1..];
            let end = content.find("</")?;
            return Some(&content[..end]);
        }
    }
}

fn dechunk(body: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
#[path = "upnp_tests.rs"]
mod tests;
