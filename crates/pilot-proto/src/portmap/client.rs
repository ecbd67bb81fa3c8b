//! The port-mapping state machine: discovery (PCP first, NAT-PMP if the gateway does not
//! speak PCP or does not answer it), renewal at half the lifetime, deletion at shutdown.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::{natpmp, pcp, MapState, PortMapStatus, Protocol, SERVER_PORT};

/// The lifetime asked for (RFC 6886 recommends two hours).
pub const REQUESTED_LIFETIME: Duration = Duration::from_secs(7200);
/// Requests sent per protocol before trying the next one (or giving up): at 250 ms, then
/// doubling, so 3.75 s per protocol.
pub const ATTEMPTS: u32 = 4;
/// After a gateway did not answer or refused, it is asked again this often (one request at a
/// time: a router may start its daemon late, or be replaced).
pub const REDISCOVER: Duration = Duration::from_secs(600);
/// First retransmission interval (RFC 6886 §3.1), doubled each time.
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// Longest interval between renewal retries while a mapping is still valid.
const MAX_RENEW_RETRY: Duration = Duration::from_secs(60);

/// One router's port-mapping client for one internal UDP port.
pub struct PortMapper {
    gateway: Ipv4Addr,
    /// Our address on the gateway's link, as the gateway sees the request's source.
    client: Ipv4Addr,
    internal_port: u16,
    nonce: [u8; pcp::NONCE_LEN],
    phase: Phase,
    /// Datagrams for the gateway's PCP/NAT-PMP port.
    out: VecDeque<Vec<u8>>,
    /// The last epoch the gateway told (a smaller one means it lost its mappings).
    epoch: Option<u32>,
    /// NAT-PMP answers arrive in two halves: the external address and the mapping.
    natpmp_address: Option<Ipv4Addr>,
    natpmp_map: Option<(u16, u32)>,
    last_result: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Asking with `protocol`: `attempt` requests sent, the next one at `next`.
    Asking {
        protocol: Protocol,
        attempt: u32,
        next: Instant,
    },
    Mapped {
        mapping: Mapping,
        /// When to send the next renewal, and how many went unanswered so far.
        renew_at: Instant,
        renewals: u32,
    },
    /// Nothing mapped: asked again at `retry_at`.
    Idle { state: MapState, retry_at: Instant },
    /// Deleting the mapping at shutdown (`done` once the gateway confirmed).
    Releasing { protocol: Protocol, done: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mapping {
    protocol: Protocol,
    external: SocketAddrV4,
    lifetime_secs: u32,
    expires: Instant,
}

impl PortMapper {
    /// A client asking `gateway` to map `internal_port` of `client` (our address on the
    /// gateway's link); the first request is due at `now`. `nonce` ties PCP answers to us
    /// (random, from the caller).
    pub fn new(
        gateway: Ipv4Addr,
        client: Ipv4Addr,
        internal_port: u16,
        nonce: [u8; pcp::NONCE_LEN],
        now: Instant,
    ) -> PortMapper {
        PortMapper {
            gateway,
            client,
            internal_port,
            nonce,
            phase: Phase::Asking {
                protocol: Protocol::Pcp,
                attempt: 0,
                next: now,
            },
            out: VecDeque::new(),
            epoch: None,
            natpmp_address: None,
            natpmp_map: None,
            last_result: None,
        }
    }

    /// Where requests go, and the only address answers are taken from.
    pub fn server(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.gateway), SERVER_PORT)
    }

    /// The mapped public endpoint, while the mapping is valid.
    pub fn mapped(&self, now: Instant) -> Option<SocketAddr> {
        match self.phase {
            Phase::Mapped { mapping, .. } if now < mapping.expires => {
                Some(SocketAddr::V4(mapping.external))
            }
            _ => None,
        }
    }

    pub fn status(&self, now: Instant) -> PortMapStatus {
        let mut status = PortMapStatus {
            gateway: Some(self.server().to_string()),
            result_code: self.last_result.filter(|&r| r != 0),
            ..PortMapStatus::default()
        };
        match self.phase {
            Phase::Asking { protocol, .. } => {
                status.state = MapState::Asking;
                status.protocol = Some(protocol);
            }
            Phase::Mapped { mapping, .. } if now < mapping.expires => {
                status.state = MapState::Mapped;
                status.protocol = Some(mapping.protocol);
                status.external = Some(mapping.external.to_string());
                status.lifetime_secs = Some(mapping.lifetime_secs);
            }
            Phase::Mapped { mapping, .. } => {
                status.state = MapState::Asking;
                status.protocol = Some(mapping.protocol);
            }
            Phase::Idle { state, .. } => status.state = state,
            Phase::Releasing { .. } => status.state = MapState::Off,
        }
        status
    }

    /// The next request to send to [`server`](Self::server).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to run next, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        match self.phase {
            Phase::Asking { next, .. } => Some((next, "port mapping request")),
            Phase::Mapped {
                renew_at, mapping, ..
            } => Some(if renew_at < mapping.expires {
                (renew_at, "port mapping renewal")
            } else {
                (mapping.expires, "port mapping expiry")
            }),
            Phase::Idle { retry_at, .. } => Some((retry_at, "port mapping rediscovery")),
            Phase::Releasing { .. } => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Asking {
                protocol,
                attempt,
                next,
            } if now >= next => {
                if attempt < ATTEMPTS {
                    self.send_request(protocol, 0, REQUESTED_LIFETIME.as_secs() as u32);
                    self.phase = Phase::Asking {
                        protocol,
                        attempt: attempt + 1,
                        next: now + FIRST_RETRY * 2u32.pow(attempt),
                    };
                } else if protocol == Protocol::Pcp {
                    // No answer to PCP: maybe a NAT-PMP-only router that ignores it.
                    self.phase = Phase::Asking {
                        protocol: Protocol::NatPmp,
                        attempt: 0,
                        next: now,
                    };
                    self.handle_timeout(now);
                } else {
                    tracing::info!(
                        gateway = %self.gateway,
                        "no port mapping offered: the gateway answers neither PCP nor NAT-PMP"
                    );
                    self.idle(MapState::NoAnswer, now);
                }
            }
            Phase::Mapped {
                mapping,
                renew_at,
                renewals,
            } if now >= renew_at => {
                if now >= mapping.expires {
                    tracing::info!(external = %mapping.external, "port mapping expired unrenewed; asking again");
                    self.restart(now);
                    return self.handle_timeout(now);
                }
                let lifetime = REQUESTED_LIFETIME.as_secs() as u32;
                self.send_request(mapping.protocol, mapping.external.port(), lifetime);
                let retry = (FIRST_RETRY * 2u32.pow(renewals.min(8))).min(MAX_RENEW_RETRY);
                self.phase = Phase::Mapped {
                    mapping,
                    renew_at: (now + retry).min(mapping.expires),
                    renewals: renewals + 1,
                };
            }
            Phase::Idle { retry_at, .. } if now >= retry_at => {
                self.restart(now);
                self.handle_timeout(now);
            }
            _ => {}
        }
    }

    /// A datagram that arrived on the mapping socket from `from`. Anything not from the
    /// gateway's port, malformed, or not an answer to our request is ignored.
    pub fn handle_datagram(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        if from != self.server() {
            return;
        }
        if unsupported_version(datagram) {
            // A NAT-PMP-only gateway answering PCP (in either format; nothing of ours is
            // echoed to check). It only moves an unanswered PCP discovery on to NAT-PMP, so a
            // spoofed one can do nothing more.
            if let Phase::Asking {
                protocol: Protocol::Pcp,
                ..
            } = self.phase
            {
                self.phase = Phase::Asking {
                    protocol: Protocol::NatPmp,
                    attempt: 0,
                    next: now,
                };
                self.handle_timeout(now);
            }
            return;
        }
        match datagram.first() {
            Some(&pcp::VERSION) => self.on_pcp(datagram, now),
            Some(&natpmp::VERSION) => self.on_natpmp(datagram, now),
            _ => {}
        }
    }

    /// Starts deleting the mapping (at shutdown): queues the delete request. Returns whether
    /// there is one to wait for ([`released`](Self::released)); a request may be queued again
    /// with [`resend_release`](Self::resend_release).
    pub fn release(&mut self, now: Instant) -> bool {
        let protocol = match self.phase {
            Phase::Mapped { mapping, .. } if now < mapping.expires => mapping.protocol,
            _ => {
                self.phase = Phase::Releasing {
                    protocol: Protocol::Pcp,
                    done: true,
                };
                return false;
            }
        };
        self.phase = Phase::Releasing {
            protocol,
            done: false,
        };
        self.resend_release();
        true
    }

    pub fn resend_release(&mut self) {
        if let Phase::Releasing {
            protocol,
            done: false,
        } = self.phase
        {
            self.send_request(protocol, 0, 0);
        }
    }

    /// Whether the gateway confirmed the deletion (or there was nothing to delete).
    pub fn released(&self) -> bool {
        matches!(self.phase, Phase::Releasing { done: true, .. })
    }

    fn send_request(&mut self, protocol: Protocol, external_port: u16, lifetime: u32) {
        match protocol {
            Protocol::Pcp => self.out.push_back(
                pcp::encode_map_request(
                    self.client,
                    &self.nonce,
                    self.internal_port,
                    external_port,
                    lifetime,
                )
                .to_vec(),
            ),
            // Not this client's protocol (see `daemon::portmap::upnp`).
            Protocol::UpnpIgd => {}
            Protocol::NatPmp => {
                if lifetime > 0 {
                    self.out
                        .push_back(natpmp::encode_address_request().to_vec());
                }
                // RFC 6886 §3.4: a deletion names no external port.
                let external_port = if lifetime == 0 { 0 } else { external_port };
                self.out.push_back(
                    natpmp::encode_map_request(self.internal_port, external_port, lifetime)
                        .to_vec(),
                );
            }
        }
    }

    fn on_pcp(&mut self, datagram: &[u8], now: Instant) {
        let Ok(answer) = pcp::decode_map(datagram) else {
            return;
        };
        if !pcp::answers(&answer, &self.nonce, self.internal_port) {
            return;
        }
        if self.gateway_rebooted(answer.epoch, now) {
            return;
        }
        if let Phase::Releasing {
            protocol: Protocol::Pcp,
            ..
        } = self.phase
        {
            self.phase = Phase::Releasing {
                protocol: Protocol::Pcp,
                done: true,
            };
            return;
        }
        if !self.expecting(Protocol::Pcp) {
            return;
        }
        self.last_result = Some(u16::from(answer.result));
        let external = answer.external.filter(|ip| usable(*ip));
        match (answer.result, external) {
            (0, Some(ip)) if answer.lifetime_secs > 0 && answer.external_port != 0 => self
                .mapped_to(
                    Protocol::Pcp,
                    SocketAddrV4::new(ip, answer.external_port),
                    answer.lifetime_secs,
                    now,
                ),
            _ => self.refused(Protocol::Pcp, u16::from(answer.result), now),
        }
    }

    fn on_natpmp(&mut self, datagram: &[u8], now: Instant) {
        let Ok(answer) = natpmp::decode(datagram) else {
            return;
        };
        if let natpmp::Response::Map { internal_port, .. } = answer {
            if internal_port != self.internal_port && answer.result() == 0 {
                return;
            }
        }
        if self.gateway_rebooted(answer.epoch(), now) {
            return;
        }
        if let Phase::Releasing {
            protocol: Protocol::NatPmp,
            ..
        } = self.phase
        {
            if matches!(answer, natpmp::Response::Map { .. }) {
                self.phase = Phase::Releasing {
                    protocol: Protocol::NatPmp,
                    done: true,
                };
            }
            return;
        }
        if !self.expecting(Protocol::NatPmp) {
            return;
        }
        self.last_result = Some(answer.result());
        if answer.result() != 0 {
            return self.refused(Protocol::NatPmp, answer.result(), now);
        }
        match answer {
            natpmp::Response::Address { external, .. } => {
                self.natpmp_address = Some(external).filter(|ip| usable(*ip))
            }
            natpmp::Response::Map {
                external_port,
                lifetime_secs,
                ..
            } => {
                if lifetime_secs == 0 || external_port == 0 {
                    return self.refused(Protocol::NatPmp, 0, now);
                }
                self.natpmp_map = Some((external_port, lifetime_secs));
            }
        }
        if let (Some(ip), Some((port, lifetime))) = (self.natpmp_address, self.natpmp_map) {
            self.natpmp_map = None;
            self.mapped_to(Protocol::NatPmp, SocketAddrV4::new(ip, port), lifetime, now);
        }
    }

    /// Whether an answer under `protocol` is one we wait for (discovery or renewal).
    fn expecting(&self, protocol: Protocol) -> bool {
        match self.phase {
            Phase::Asking { protocol: p, .. } => p == protocol,
            Phase::Mapped { mapping, .. } => mapping.protocol == protocol,
            _ => false,
        }
    }

    fn mapped_to(
        &mut self,
        protocol: Protocol,
        external: SocketAddrV4,
        lifetime: u32,
        now: Instant,
    ) {
        let before = self.mapped(now);
        let lifetime_d = Duration::from_secs(u64::from(lifetime));
        self.phase = Phase::Mapped {
            mapping: Mapping {
                protocol,
                external,
                lifetime_secs: lifetime,
                expires: now + lifetime_d,
            },
            renew_at: now + lifetime_d / 2,
            renewals: 0,
        };
        if before != Some(SocketAddr::V4(external)) {
            tracing::info!(%external, %protocol, lifetime_secs = lifetime, "port mapped on the gateway");
        }
    }

    fn refused(&mut self, protocol: Protocol, code: u16, now: Instant) {
        if let Phase::Mapped { mapping, .. } = self.phase {
            if now < mapping.expires {
                // A failed renewal: the mapping holds until it expires; retries go on.
                return;
            }
        }
        tracing::info!(gateway = %self.gateway, %protocol, code, "the gateway refused a port mapping");
        self.idle(MapState::Refused, now);
    }

    fn idle(&mut self, state: MapState, now: Instant) {
        self.phase = Phase::Idle {
            state,
            retry_at: now + REDISCOVER,
        };
    }

    /// Discovery from the start (PCP first).
    fn restart(&mut self, now: Instant) {
        self.natpmp_address = None;
        self.natpmp_map = None;
        self.phase = Phase::Asking {
            protocol: Protocol::Pcp,
            attempt: 0,
            next: now,
        };
    }

    /// An epoch that went backwards means the gateway restarted and lost its mappings (RFC
    /// 6886 §3.6, RFC 6887 §8.5): ask for ours again now. Returns whether it did.
    fn gateway_rebooted(&mut self, epoch: u32, now: Instant) -> bool {
        let previous = self.epoch.replace(epoch);
        let rebooted =
            previous.is_some_and(|p| epoch < p) && matches!(self.phase, Phase::Mapped { .. });
        if rebooted {
            tracing::info!(gateway = %self.gateway, "the gateway restarted; mapping the port again");
            self.restart(now);
            self.handle_timeout(now);
        }
        rebooted
    }
}

/// Whether `datagram` is an "unsupported version" answer to a request (PCP's layout or
/// NAT-PMP's: the result code's low byte is the fourth byte in both).
fn unsupported_version(datagram: &[u8]) -> bool {
    match datagram {
        [pcp::VERSION, op, _, result, ..] => op & 0x80 != 0 && *result == pcp::UNSUPP_VERSION,
        [natpmp::VERSION, op, r0, r1, ..] => {
            op & 0x80 != 0 && u16::from_be_bytes([*r0, *r1]) == natpmp::UNSUPPORTED_VERSION
        }
        _ => false,
    }
}

/// Whether a router's external address can be advertised to peers.
fn usable(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast())
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
