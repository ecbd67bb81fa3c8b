//! Values the command lines and the config files share, parsed and checked the same way in
//! both: endpoints, hostnames, static peers, rendezvous, the SOCKS5 address, log filters,
//! periods, durations and the relay rate.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::anyhow;

use tracing_subscriber::EnvFilter;

use crate::addr::Hostname;
use crate::identity::NodeKey;
use crate::node::{PeerConfig, RendezvousConfig};

/// `--socks5`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Socks5Addr(pub Option<SocketAddr>);

impl std::str::FromStr for Socks5Addr {
    type Err = String;

    fn from_str(s: &str) -> Result<Socks5Addr, String> {
        if s == "off" {
            return Ok(Socks5Addr(None));
        }
        s.parse()
            .map(|a| Socks5Addr(Some(a)))
            .map_err(|_| format!("`{s}`: expected IP:PORT (IPv6 in brackets) or off"))
    }
}

/// Parses `--endpoint IP:PORT`: an address peers can send to.
pub fn parse_endpoint(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| format!("`{text}`: expected IP:PORT (IPv6 in brackets)"))?;
    let ip = addr.ip();
    if ip.is_unspecified() || ip.is_multicast() || addr.port() == 0 {
        return Err(format!(
            "`{text}`: give the address and port peers reach this node at (not a wildcard, \
             multicast address or port 0)"
        ));
    }
    Ok(addr)
}

pub fn parse_hostname(s: &str) -> Result<Hostname, String> {
    s.parse()
        .map_err(|e: crate::addr::HostnameError| e.to_string())
}

/// Parses `KEY@HOST:PORT`, resolving HOST once, now.
pub fn parse_peer(text: &str) -> Result<PeerConfig, String> {
    let (key, endpoint) = text
        .split_once('@')
        .ok_or_else(|| format!("`{text}`: expected KEY@HOST:PORT"))?;
    let key: NodeKey = key.parse().map_err(|e| format!("{e}"))?;
    let endpoint = resolve_endpoint(endpoint)?;
    Ok(PeerConfig {
        key,
        endpoint: Some(endpoint),
    })
}

/// The TCP port nodes try for the rendezvous' TLS streams when UDP to it gets no answer.
pub const DEFAULT_STREAM_PORT: u16 = 443;

/// Parses `[KEY@]HOST:PORT` for `--rendezvous`; the alternate port defaults to PORT + 1.
pub fn parse_rendezvous(text: &str) -> Result<RendezvousConfig, String> {
    let (key, endpoint) = match text.split_once('@') {
        Some((key, endpoint)) => (
            Some(key.parse::<NodeKey>().map_err(|e| format!("{e}"))?),
            endpoint,
        ),
        None => (None, text),
    };
    let addr = resolve_endpoint(endpoint)?;
    let alt_port = addr.port().checked_add(1).ok_or_else(|| {
        format!("`{text}`: port 65535 leaves no room for the alternate port; give --rendezvous-alt-port")
    })?;
    Ok(RendezvousConfig {
        addr,
        alt_port,
        key,
        // Where a rendezvous started with `--tcp-listen 0.0.0.0:443` takes streams: tried
        // only when UDP to it gets no answer.
        stream: Some(SocketAddr::new(addr.ip(), DEFAULT_STREAM_PORT)),
    })
}

fn resolve_endpoint(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("`{text}`: expected HOST:PORT ({e})"))?;
    addrs
        .next()
        .ok_or_else(|| format!("`{text}`: the name has no address"))
}

/// The levels `--log-level` takes alone, as its refusals list them.
const LOG_LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Parses a log filter as `--log-level` and the config files take it. A bare word that is not
/// a level is refused: tracing would read it as a target name (`verbose`, `warning`) and log
/// nothing else at all.
pub fn log_filter(filter: &str) -> Result<EnvFilter, String> {
    for directive in filter.split(',').map(str::trim) {
        if directive.is_empty() || directive.contains('=') {
            continue;
        }
        if !LOG_LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive)) {
            return Err(format!(
                "`{directive}` is not a log level: use one of {}, or directives TARGET=LEVEL \
                 such as pilot=debug,boringtun=warn",
                LOG_LEVELS.join(", ")
            ));
        }
    }
    EnvFilter::try_new(filter).map_err(|e| format!("`{filter}` is not a log filter ({e})"))
}

/// Longest name TTL accepted (ten years): longer means "never", which is not offered.
const MAX_NAME_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);

/// `--keepalive` and `--stats-interval` are periods of at least a second (0 would spin).
pub fn check_period(secs: u64) -> Result<(), &'static str> {
    match secs {
        0 => Err("must be at least 1 second"),
        _ => Ok(()),
    }
}

/// Parses a duration as people write one: a number with a unit, `s`, `m`, `h` or `d`
/// (`30d`, `90m`), or several (`1d12h`); at least a second, at most ten years.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}`: expected a duration such as 30d, 12h, 90m or 45s");
    let mut total: u64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let mut units = rest[digits..].chars();
        let unit = match units.next() {
            Some('s') => 1,
            Some('m') => 60,
            Some('h') => 3600,
            Some('d') => 24 * 3600,
            _ => return Err(bad()),
        };
        rest = units.as_str();
        total = number
            .checked_mul(unit)
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| format!("`{text}`: longer than ten years"))?;
    }
    let duration = Duration::from_secs(total);
    if duration.is_zero() {
        return Err(format!("`{text}`: must be at least 1s"));
    }
    if duration > MAX_NAME_TTL {
        return Err(format!("`{text}`: longer than ten years"));
    }
    Ok(duration)
}

/// `--relay-rate` in bytes per second.
pub fn relay_bytes_per_sec(mbit: u64) -> anyhow::Result<u64> {
    mbit.checked_mul(1_000_000 / 8)
        .ok_or_else(|| anyhow!("--relay-rate {mbit} Mbit/s is too large"))
}
