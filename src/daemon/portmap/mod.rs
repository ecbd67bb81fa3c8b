//! The port-mapping task: finds the IPv4 default gateway (again every [`GATEWAY_CHECK`]), runs
//! a [`PortMapper`] against it on its own UDP socket, and tells the data plane what the
//! gateway offered and which endpoint it mapped. It runs beside the packet loop and never blocks it: a silent gateway costs a few
//! requests in the background. At shutdown the mapping is deleted (waiting at most
//! [`RELEASE_WAIT`] for the gateway to confirm).

mod upnp;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::daemon::node::control::Command;
use crate::portmap::{MapState, PortMapStatus, PortMapper, Protocol, REDISCOVER, SERVER_PORT};
use upnp::{IgdError, IgdMapping};

/// How long shutdown waits for the gateway to confirm the deletion (three requests).
pub const RELEASE_WAIT: Duration = Duration::from_millis(750);

/// The running task; [`stop`](PortMapping::stop) deletes the mapping and ends it.
pub struct PortMapping {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl PortMapping {
    /// Starts mapping UDP port `internal_port` on the default gateway; reports go to the data
    /// plane through `commands`.
    pub fn start(internal_port: u16, commands: mpsc::Sender<Command>) -> PortMapping {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(internal_port, commands, stopped));
        PortMapping { stop, task }
    }

    /// Deletes the mapping on the gateway (if there is one) and ends the task.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let wait = RELEASE_WAIT + Duration::from_millis(250);
        if tokio::time::timeout(wait, self.task).await.is_err() {
            tracing::debug!("port mapping: deletion not confirmed in time");
        }
    }
}

/// The gateway is looked up again this often: a laptop moves to another network, a host
/// boots before DHCP has given it a default route.
pub const GATEWAY_CHECK: Duration = Duration::from_secs(60);

/// One gateway being asked: its socket and the client talking to it.
struct Session {
    gateway: Ipv4Addr,
    /// Our address towards it.
    client: Ipv4Addr,
    socket: tokio::net::UdpSocket,
    mapper: PortMapper,
    igd: Igd,
}

/// UPnP-IGD, asked once PCP and NAT-PMP went unanswered or were refused.
enum Igd {
    Untried,
    Mapped {
        mapping: IgdMapping,
        renew_at: Instant,
        /// `None`: a permanent mapping (renewed anyway, in case the router restarted).
        expires: Option<Instant>,
    },
    Failed {
        error: IgdError,
        retry_at: Instant,
    },
}

/// A permanent UPnP-IGD mapping is added again this often.
const PERMANENT_RENEWAL: Duration = Duration::from_secs(1800);
/// A failed UPnP-IGD renewal is retried this often while the mapping lasts.
const IGD_RENEW_RETRY: Duration = Duration::from_secs(60);

impl Session {
    async fn open(gateway: Ipv4Addr, internal_port: u16) -> std::io::Result<Session> {
        let (socket, client) = connect(gateway).await?;
        let mut nonce = [0u8; 12];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        let mapper = PortMapper::new(gateway, client, internal_port, nonce, Instant::now());
        Ok(Session {
            gateway,
            client,
            socket,
            mapper,
            igd: Igd::Untried,
        })
    }

    /// What the gateway offered and the endpoint mapped, whichever protocol did it.
    fn status(&self, now: Instant) -> (PortMapStatus, Option<SocketAddr>) {
        match &self.igd {
            Igd::Mapped { mapping, .. } => (
                PortMapStatus {
                    state: MapState::Mapped,
                    gateway: Some(mapping.service.control.addr.to_string()),
                    protocol: Some(Protocol::UpnpIgd),
                    external: Some(mapping.external.to_string()),
                    lifetime_secs: Some(mapping.lease_secs),
                    result_code: None,
                },
                Some(SocketAddr::V4(mapping.external)),
            ),
            Igd::Failed {
                error: IgdError::Refused(code),
                ..
            } if self.mapper.mapped(now).is_none() => (
                PortMapStatus {
                    state: MapState::Refused,
                    protocol: Some(Protocol::UpnpIgd),
                    result_code: Some(u16::try_from(*code).unwrap_or(u16::MAX)),
                    ..self.mapper.status(now)
                },
                None,
            ),
            _ => (self.mapper.status(now), self.mapper.mapped(now)),
        }
    }

    /// When UPnP-IGD work is due: a renewal, or a try once PCP and NAT-PMP gave up (again:
    /// a retry waits for their own retry to fail, so the two never ask at once).
    fn igd_due(&self, now: Instant) -> Option<Instant> {
        let others_gave_up = matches!(
            self.mapper.status(now).state,
            MapState::NoAnswer | MapState::Refused
        );
        match &self.igd {
            Igd::Untried => others_gave_up.then_some(now),
            Igd::Mapped { renew_at, .. } => Some(*renew_at),
            Igd::Failed { retry_at, .. } => others_gave_up.then_some(*retry_at),
        }
    }

    /// Maps, or renews, over UPnP-IGD.
    async fn igd_step(&mut self, internal_port: u16) {
        let now = Instant::now();
        let until = |lease: u32| {
            let lease = Duration::from_secs(u64::from(lease));
            match lease.is_zero() {
                true => (now + PERMANENT_RENEWAL, None),
                false => (now + lease / 2, Some(now + lease)),
            }
        };
        self.igd = match std::mem::replace(&mut self.igd, Igd::Untried) {
            Igd::Mapped {
                mapping, expires, ..
            } => match upnp::renew(&mapping, self.client, internal_port).await {
                Ok(()) => {
                    let (renew_at, expires) = until(mapping.lease_secs);
                    Igd::Mapped {
                        mapping,
                        renew_at,
                        expires,
                    }
                }
                Err(error) if expires.is_some_and(|t| now >= t) => {
                    tracing::info!("port mapping (UPnP-IGD) lapsed: {error}");
                    Igd::Failed {
                        error,
                        retry_at: now,
                    }
                }
                Err(_) => Igd::Mapped {
                    mapping,
                    renew_at: now + IGD_RENEW_RETRY,
                    expires,
                },
            },
            _ => match upnp::map(self.gateway, self.client, internal_port).await {
                Ok(mapping) => {
                    tracing::info!(
                        external = %mapping.external,
                        lease_secs = mapping.lease_secs,
                        "port mapped on the gateway with UPnP-IGD"
                    );
                    let (renew_at, expires) = until(mapping.lease_secs);
                    Igd::Mapped {
                        mapping,
                        renew_at,
                        expires,
                    }
                }
                Err(error) => {
                    tracing::info!(gateway = %self.gateway, "no port mapping offered: {error}");
                    Igd::Failed {
                        error,
                        retry_at: now + REDISCOVER,
                    }
                }
            },
        };
    }
}

async fn run(
    internal_port: u16,
    commands: mpsc::Sender<Command>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut session: Option<Session> = None;
    let mut last = None;
    let mut next_check = Instant::now();
    let mut buf = [0u8; 1100];
    loop {
        let now = Instant::now();
        if now >= next_check {
            next_check = now + GATEWAY_CHECK;
            let gateway = std::fs::read_to_string("/proc/net/route")
                .ok()
                .and_then(|table| default_gateway(&table));
            if gateway != session.as_ref().map(|s| s.gateway) {
                // A new gateway knows nothing of the old one's mapping: start afresh.
                session = match gateway {
                    Some(gateway) => match Session::open(gateway, internal_port).await {
                        Ok(session) => Some(session),
                        Err(e) => {
                            tracing::debug!("port mapping: cannot reach gateway {gateway}: {e}");
                            None
                        }
                    },
                    None => None,
                };
                if session.is_none() {
                    tracing::debug!("port mapping: no IPv4 default gateway to ask");
                }
            }
        }
        let mut wake = next_check;
        if let Some(s) = &mut session {
            // While UPnP-IGD holds the mapping, PCP and NAT-PMP are not asked again.
            if !matches!(s.igd, Igd::Mapped { .. }) {
                s.mapper.handle_timeout(now);
                send_all(&s.socket, &mut s.mapper).await;
            }
            if s.igd_due(now).is_some_and(|t| now >= t) {
                tokio::select! {
                    _ = &mut stopped => break,
                    () = s.igd_step(internal_port) => {}
                }
            }
        }
        let current = match &session {
            Some(s) => {
                let now = Instant::now();
                // The client's timers do not run while UPnP-IGD holds the mapping.
                let mapper = match s.igd {
                    Igd::Mapped { .. } => None,
                    _ => s.mapper.poll_timeout().map(|(t, _)| t),
                };
                for at in [mapper, s.igd_due(now)].into_iter().flatten() {
                    wake = wake.min(at);
                }
                s.status(now)
            }
            None => (PortMapStatus::no_gateway(), None),
        };
        if last.as_ref() != Some(&current) {
            let (status, mapped) = current.clone();
            if commands
                .send(Command::PortMapping { status, mapped })
                .await
                .is_err()
            {
                return;
            }
            last = Some(current);
        }
        let received = async {
            match &session {
                Some(s) => s.socket.recv_from(&mut buf).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stopped => break,
            received = received => match received {
                Ok((n, from)) => {
                    if let Some(s) = &mut session {
                        s.mapper.handle_datagram(from, &buf[..n], Instant::now());
                    }
                }
                // An ICMP error (nothing listens there), reported once: the retries run out
                // on their own.
                Err(e) => tracing::trace!("port mapping: {e}"),
            },
            () = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    if let Some(session) = session {
        release(session).await;
    }
}

/// Deletes the session's mapping, if it has one, waiting at most [`RELEASE_WAIT`].
async fn release(mut session: Session) {
    if let Igd::Mapped { mapping, .. } = &session.igd {
        match tokio::time::timeout(RELEASE_WAIT, upnp::delete(mapping)).await {
            Ok(Ok(())) => tracing::info!("port mapping deleted on the gateway"),
            Ok(Err(e)) => tracing::debug!("port mapping: deleting it: {e}"),
            Err(_) => tracing::debug!("port mapping: deletion not confirmed in time"),
        }
        return;
    }
    let (socket, mapper) = (&session.socket, &mut session.mapper);
    if !mapper.release(Instant::now()) {
        return;
    }
    let mut buf = [0u8; 1100];
    let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
    while !mapper.released() && tokio::time::Instant::now() < deadline {
        send_all(socket, mapper).await;
        let resend = tokio::time::Instant::now() + RELEASE_WAIT / 3;
        while !mapper.released() {
            tokio::select! {
                received = socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = received {
                        mapper.handle_datagram(from, &buf[..n], Instant::now());
                    }
                }
                () = tokio::time::sleep_until(resend.min(deadline)) => break,
            }
        }
        mapper.resend_release();
    }
    if mapper.released() {
        tracing::info!("port mapping deleted on the gateway");
    }
}

/// A UDP socket connected to the gateway's PCP/NAT-PMP port, and our address towards it.
async fn connect(gateway: Ipv4Addr) -> std::io::Result<(tokio::net::UdpSocket, Ipv4Addr)> {
    let socket = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    socket.connect((gateway, SERVER_PORT)).await?;
    match socket.local_addr()? {
        SocketAddr::V4(local) => Ok((socket, *local.ip())),
        SocketAddr::V6(_) => Err(std::io::Error::other("not an IPv4 socket")),
    }
}

async fn send_all(socket: &tokio::net::UdpSocket, mapper: &mut PortMapper) {
    while let Some(datagram) = mapper.poll_transmit() {
        // On a connected socket an ICMP error from the last request (nothing listens on the
        // gateway's port) fails the next send instead, which consumes it: send once more.
        let mut sent = socket.send(&datagram).await;
        if sent.is_err() {
            sent = socket.send(&datagram).await;
        }
        if let Err(e) = sent {
            tracing::debug!("port mapping: sending to the gateway: {e}");
        }
    }
}

/// The gateway of the IPv4 default route with the lowest metric, from `/proc/net/route`'s
/// text (addresses there are hexadecimal in host byte order).
pub fn default_gateway(table: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    let mut best: Option<(u32, Ipv4Addr)> = None;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, destination, gateway, flags, _, _, metric, mask, ..] = fields[..] else {
            continue;
        };
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (Some(destination), Some(gateway), Some(flags), Some(mask)) =
            (hex(destination), hex(gateway), hex(flags), hex(mask))
        else {
            continue;
        };
        let Ok(metric) = metric.parse::<u32>() else {
            continue;
        };
        if destination != 0 || mask != 0 || flags & (RTF_UP | RTF_GATEWAY) != RTF_UP | RTF_GATEWAY {
            continue;
        }
        let gateway = Ipv4Addr::from(gateway.to_ne_bytes());
        if best.is_none_or(|(m, _)| metric < m) {
            best = Some((metric, gateway));
        }
    }
    best.map(|(_, gateway)| gateway)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_gateway_is_read_from_the_route_table() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t006433C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            wlan0\t00000000\t0201A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
            eth0\t00000000\t016433C6\t0003\t0\t0\t100\t00000000\t0\t0\t0\n";
        assert_eq!(default_gateway(table), Some(Ipv4Addr::new(198, 51, 100, 1)));
    }

    #[test]
    fn no_default_route_or_garbage_is_no_gateway() {
        assert_eq!(default_gateway(""), None);
        let table = "Iface\tDestination\tGateway\n\
            eth0\t006433C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            eth0\tzz\t016433C6\t0003\t0\t0\t100\t00000000\n\
            eth0\t00000000\n\
            eth0\t00000000\t016433C6\t0001\t0\t0\t100\t00000000\t0\t0\t0\n";
        assert_eq!(
            default_gateway(table),
            None,
            "a default route without RTF_GATEWAY"
        );
    }
}
