//! The node daemon (`pilotd up`): wires the sans-IO node to a real TUN, UDP socket, clock and
//! control socket, and cleans up on SIGINT/SIGTERM. The packet loop is `dataplane` (its verbs,
//! reports and watches in `dataplane/`); the control socket's server is `control`; the state
//! files it keeps beside the identity are `trust_file` and `pin`.

pub mod control;
mod dataplane;
pub(crate) mod pin;
pub(crate) mod trust_file;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use tokio::sync::mpsc;

use super::metrics::MetricsListener;
use super::services::inbox::Inbox;
use super::services::Expose;
use super::state_lock::{LockedDir, StateLock};
use super::{block_on, metrics, names, notify, portmap, services, shutdown_signal};
use crate::addr::{Hostname, OVERLAY_PREFIX_LEN};
use crate::clock::WallClock;
use crate::identity::Identity;
use crate::io::stack::{Limits, Stack};
use crate::io::{lan_guard, netlink, tun::TunDevice, udp::UdpSocket};
use crate::node::{Node, NodeConfig, PeerConfig, RendezvousConfig};
use crate::wire::control::MAX_LAN_ENDPOINTS;
use crate::wire::message::MESSAGE_PORT;
use control::ControlSocket;
use dataplane::{DataPlane, Facts, Local};

/// Default UDP port of the node.
pub const DEFAULT_LISTEN_PORT: u16 = 51870;
/// Default TUN MTU: a 1500-byte underlay minus outer IPv6 (40) and UDP (8) headers, WireGuard's
/// data overhead (32), and 40 bytes kept for a relay header.
pub const DEFAULT_MTU: u32 = 1380;
/// Default TUN interface name.
pub const DEFAULT_INTERFACE: &str = "pilot0";
/// TUN MTUs the node accepts (see `check_mtu`).
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 1280..=65535 - 80;

/// Everything `pilotd up` needs.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub state_dir: PathBuf,
    pub interface: String,
    pub mtu: u32,
    pub listen_port: u16,
    pub peers: Vec<PeerConfig>,
    pub control: PathBuf,
    /// WireGuard persistent keepalive, seconds (0 = off).
    pub keepalive: u16,
    /// The rendezvous to register with, if any (its key pinned when given).
    pub rendezvous: Option<RendezvousConfig>,
    /// More rendezvous, in order, to move to when the one in use stops answering (every one,
    /// and `rendezvous` then too, with a pinned key).
    pub standby_rendezvous: Vec<RendezvousConfig>,
    /// Those rendezvous are instances of one service on one registry (`--shared-registry`).
    pub shared_registry: bool,
    /// Hostname to claim at the rendezvous.
    pub hostname: Option<Hostname>,
    /// This node's public endpoint when the operator knows it (told to peers first).
    pub endpoint: Option<SocketAddr>,
    /// Approve incoming trust requests automatically.
    pub auto_approve: bool,
    /// Ask the default gateway (PCP, NAT-PMP) to map the UDP port (see `portmap`).
    pub port_mapping: bool,
    /// Hosts file to keep trusted peers' names in (opt-in).
    pub hosts_file: Option<PathBuf>,
    /// Where to serve Prometheus metrics (opt-in).
    pub metrics: Option<SocketAddr>,
    /// Userspace mode instead of a TUN, and its settings.
    pub userspace: Option<Userspace>,
}

/// `pilotd up --userspace`: no TUN, no root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Userspace {
    /// The local SOCKS5 proxy to peers (`None`: off).
    pub socks5: Option<SocketAddr>,
    /// Overlay ports forwarded to local ones.
    pub expose: Vec<Expose>,
}

/// Default address of the SOCKS5 proxy in userspace mode.
pub const DEFAULT_SOCKS5: &str = "127.0.0.1:1080";

/// Runs the node until SIGINT or SIGTERM. The TUN interface and control socket are gone when
/// this returns, whether it returns an error or not.
pub fn run_up(options: UpOptions) -> anyhow::Result<()> {
    block_on(up(options))
}

async fn up(options: UpOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    crate::io::file::prepare_private_dir(&options.state_dir, "state directory")?;
    // Before anything else exists: a second daemon on this directory stops here, with nothing
    // to undo. Held until this function returns.
    let _lock = StateLock::acquire(&options.state_dir, LockedDir::State)?;
    let identity = crate::identity::load_or_create(&options.state_dir)?;
    let mut rendezvous = options.rendezvous.clone();
    let pin = rendezvous
        .as_ref()
        .map(|r| pin::RendezvousPin::new(&options.state_dir, &r.addr.to_string()));
    if let (Some(r), Some(pin)) = (&mut rendezvous, &pin) {
        match (r.key, pin.load()?) {
            (Some(given), Some(pinned)) if given != pinned => {
                tracing::warn!(%pinned, %given, "--rendezvous names a different key than the one pinned; using the one given");
            }
            (None, pinned) => r.key = pinned,
            _ => {}
        }
    }
    let trust_file = trust_file::TrustFile::new(&options.state_dir);
    let trust = trust_file.load()?;
    let inbox_dir = options.state_dir.join("inbox");
    let inbox = Inbox::open(&inbox_dir)
        .with_context(|| format!("opening the inbox {}", inbox_dir.display()))?;
    // Before the interface exists: a busy address stops the start with nothing to undo.
    let metrics = match options.metrics {
        Some(addr) => Some(MetricsListener::bind(addr).await?),
        None => None,
    };
    let start = Start {
        started,
        identity,
        rendezvous,
        pin,
        trust_file,
        trust,
        inbox: Arc::new(Mutex::new(inbox)),
        metrics,
    };
    match options.userspace.clone() {
        Some(userspace) => up_userspace(options, start, userspace).await,
        None => up_kernel(options, start).await,
    }
}

/// What both modes have ready before their local side exists.
struct Start {
    started: Instant,
    identity: Identity,
    rendezvous: Option<RendezvousConfig>,
    pin: Option<pin::RendezvousPin>,
    trust_file: trust_file::TrustFile,
    trust: crate::node::TrustState,
    inbox: Arc<Mutex<Inbox>>,
    metrics: Option<MetricsListener>,
}

/// Kernel mode: a TUN interface holds the node's address; programs use it directly.
async fn up_kernel(options: UpOptions, start: Start) -> anyhow::Result<()> {
    let address = start.identity.address();
    let tun = TunDevice::create_with_offload(&options.interface)?;
    let interface = tun.name().to_owned();
    // From here on the interface exists: every exit path must remove it.
    let result = async {
        netlink::configure_interface(
            &interface,
            address.to_ipv6(),
            OVERLAY_PREFIX_LEN,
            options.mtu,
        )
        .await
        .with_context(|| format!("configuring interface {interface}"))?;
        // Overlay addresses from any other interface are dropped before the kernel sees them.
        let lan_guard_missing = match lan_guard::install(&interface) {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(
                    "LAN guard not installed ({e}): a LAN neighbour can send this host packets \
                     with overlay (fd70::) addresses"
                );
                Some(e.to_string())
            }
        };
        // The address is usable at once (no duplicate address detection on it).
        let messages = SocketAddr::from((address.to_ipv6(), MESSAGE_PORT));
        let messages = tokio::net::TcpListener::bind(messages)
            .await
            .with_context(|| format!("binding the message service to {messages}"))?;
        // NAME.pilot for every program: resolved sends `~pilot` lookups to the stub on this link.
        if names::resolved_running() {
            match names::register_with_resolved(&interface, crate::wire::dns::DNS_ADDR) {
                Ok(()) => {
                    tracing::info!("systemd-resolved: .pilot names resolve through {interface}")
                }
                Err(e) => tracing::warn!(
                    "cannot register the .pilot DNS stub with systemd-resolved: {e:#}"
                ),
            }
        }
        let inbox = start.inbox.clone();
        let local = LocalSide {
            local: Local::Tun(tun),
            interface: interface.clone(),
            socks5: None,
            expose: Vec::new(),
            lan_guard_missing,
        };
        serve(&options, start, local, move |commands| {
            vec![tokio::spawn(services::serve_messages(
                messages, commands, inbox,
            ))]
        })
        .await
    }
    .await;
    if names::resolved_running() {
        names::revert_resolved(&interface);
    }
    if let Err(e) = lan_guard::remove(&interface) {
        tracing::debug!("removing the LAN guard: {e}");
    }
    // The TUN fd is closed (dropped with the data plane); the kernel removes the interface.
    // Deleting explicitly as well covers an interface someone made persistent meanwhile.
    if let Err(e) = netlink::delete_interface(&interface).await {
        tracing::warn!("removing interface {interface}: {e}");
    }
    if result.is_ok() {
        tracing::info!("pilotd stopped; interface {interface} removed");
    }
    result
}

/// Userspace mode: a smoltcp stack holds the node's address; programs reach peers through the
/// SOCKS5 proxy, and peers reach local programs through exposed ports. Needs no privilege.
async fn up_userspace(
    options: UpOptions,
    start: Start,
    userspace: Userspace,
) -> anyhow::Result<()> {
    let socks5 = match userspace.socks5 {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("binding the SOCKS5 proxy to {addr} (in use? choose another with --socks5)")
        })?),
        None => None,
    };
    let socks5_addr = socks5.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(warning) = socks5_addr.and_then(crate::api::socks5::exposure_warning) {
        tracing::warn!("{warning}");
    }
    let mut stack = Stack::new(
        start.identity.address().to_ipv6(),
        OVERLAY_PREFIX_LEN,
        options.mtu as usize,
        Limits::default(),
        rand_core::RngCore::next_u64(&mut rand_core::OsRng),
    );
    stack.listen(MESSAGE_PORT);
    for rule in &userspace.expose {
        stack.listen(rule.port);
    }
    let (incoming_tx, incoming_rx) = mpsc::channel(64);
    let inbox = start.inbox.clone();
    let local = LocalSide {
        local: Local::Stack(Box::new(stack), incoming_tx),
        interface: String::new(),
        socks5: socks5_addr,
        expose: userspace.expose.clone(),
        lan_guard_missing: None,
    };
    let expose = userspace.expose;
    let result = serve(&options, start, local, move |commands| {
        let mut tasks = vec![tokio::spawn(services::serve_incoming(
            incoming_rx,
            expose,
            inbox,
        ))];
        if let Some(listener) = socks5 {
            tasks.push(tokio::spawn(services::serve_socks5(listener, commands)));
        }
        tasks
    })
    .await;
    if result.is_ok() {
        tracing::info!("pilotd stopped");
    }
    result
}

/// The local side of either mode, as the data plane and `info` see it.
struct LocalSide {
    local: Local,
    /// The TUN's name; empty in userspace mode.
    interface: String,
    socks5: Option<SocketAddr>,
    expose: Vec<Expose>,
    /// Kernel mode: why the LAN guard is missing, if it is (see `io::lan_guard`).
    lan_guard_missing: Option<String>,
}

/// Everything after the local side exists, the same in both modes: the UDP socket, the node,
/// the control socket, the services `spawn` starts, and the data plane until a signal.
async fn serve(
    options: &UpOptions,
    start: Start,
    local: LocalSide,
    spawn: impl FnOnce(mpsc::Sender<control::Command>) -> Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    let address = start.identity.address();
    let udp = UdpSocket::bind(options.listen_port).with_context(|| {
        format!(
            "binding UDP port {} (is another pilotd running? choose another with --listen-port)",
            options.listen_port
        )
    })?;
    let listen_port = udp.local_port();
    let node = Node::new(NodeConfig {
        identity: start.identity,
        peers: options.peers.clone(),
        trust: start.trust,
        hostname: options.hostname.clone(),
        auto_approve: options.auto_approve,
        keepalive: (options.keepalive > 0).then_some(options.keepalive),
        seed: rand_core::RngCore::next_u64(&mut rand_core::OsRng),
        rendezvous: start.rendezvous,
        standby_rendezvous: options.standby_rendezvous.clone(),
        shared_registry: options.shared_registry,
        mtu: u16::try_from(options.mtu).unwrap_or(u16::MAX),
        lan: lan_endpoints(&local.interface, listen_port),
        endpoint: options.endpoint,
        local_port: listen_port,
        clock: WallClock::system(),
    })
    .context("invalid --peer")?;
    let control = ControlSocket::bind(&options.control)
        .with_context(|| format!("control socket {}", options.control.display()))?;
    let hosts_file = options.hosts_file.as_ref().map(names::HostsFile::new);
    let metrics_addr = start.metrics.as_ref().map(MetricsListener::local_addr);
    let facts = Facts {
        interface: local.interface.clone(),
        socks5: local.socks5,
        expose: local.expose.iter().map(ToString::to_string).collect(),
        mtu: options.mtu,
        listen_port,
        rendezvous_pin: start.pin,
        trust_file: start.trust_file,
        hosts_file,
        started: start.started,
        metrics: metrics_addr,
        lan_guard_missing: local.lan_guard_missing.clone(),
    };
    let mode = local.local.mode();
    let plane = DataPlane::new(node, local.local, udp, facts, start.inbox)
        .context("registering I/O with the runtime")?;

    let (commands_tx, commands_rx) = mpsc::channel(64);
    let mut tasks = spawn(commands_tx.clone());
    if let Some(listener) = start.metrics {
        tasks.push(tokio::spawn(serve_metrics(listener, commands_tx.clone())));
    }
    // Beside the packet loop: a gateway that does not answer delays nothing.
    let port_mapping = options
        .port_mapping
        .then(|| portmap::PortMapping::start(listen_port, commands_tx.clone()));
    let server = tokio::spawn(control.serve(commands_tx));
    let where_ = if local.interface.is_empty() {
        "userspace stack".to_owned()
    } else {
        local.interface.clone()
    };
    tracing::info!(
        address = %address.to_ipv6(),
        node = %address,
        mode,
        interface = %where_,
        socks5 = %local.socks5.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        listen_port,
        peers = options.peers.len(),
        control = %options.control.display(),
        metrics = %metrics_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        "pilotd up"
    );
    // Handlers first: a SIGTERM right after READY=1 must still clean up.
    let shutdown = shutdown_signal()?;
    // The address is in place and the control socket accepts: `pilotctl` and units ordered
    // after pilotd.service can start now.
    notify::ready(&format!(
        "{where_} up as {}, UDP port {listen_port}",
        address.to_ipv6()
    ));
    let outcome = plane.run(commands_rx, shutdown).await;
    if let Some(port_mapping) = port_mapping {
        port_mapping.stop().await;
    }
    for task in tasks {
        task.abort();
    }
    server.abort();
    // Wait for the server task to go so the control socket file is removed now.
    let _ = server.await;
    outcome
}

/// Serves the metrics page, asking the data plane for a snapshot per scrape.
async fn serve_metrics(listener: MetricsListener, commands: mpsc::Sender<control::Command>) {
    listener
        .serve(move || {
            let commands = commands.clone();
            async move {
                let snapshot = control::ask(&commands, control::Command::Metrics).await?;
                Some(metrics::render_node(&snapshot))
            }
        })
        .await;
}

/// This host's own endpoints for the node's port: every global or private address on its
/// interfaces except loopback, link-local, and the overlay itself. Peers on the same LAN
/// reach each other through these without going through the NAT.
pub(crate) fn lan_endpoints(tun: &str, port: u16) -> Vec<std::net::SocketAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut endpoints = Vec::new();
    for ifaddr in addrs {
        if ifaddr.interface_name == tun {
            continue;
        }
        let Some(addr) = ifaddr.address else { continue };
        let ip: std::net::IpAddr = if let Some(v4) = addr.as_sockaddr_in() {
            v4.ip().into()
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            v6.ip().into()
        } else {
            continue;
        };
        let usable = match ip {
            std::net::IpAddr::V4(v4) => {
                !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified()
            }
            std::net::IpAddr::V6(v6) => {
                !v6.is_loopback()
                    && !v6.is_unicast_link_local()
                    && !v6.is_unspecified()
                    && crate::addr::NodeAddr::from_ipv6(v6).is_none()
            }
        };
        let endpoint = std::net::SocketAddr::new(ip, port);
        if usable && !endpoints.contains(&endpoint) && endpoints.len() < MAX_LAN_ENDPOINTS {
            endpoints.push(endpoint);
        }
    }
    endpoints
}

/// Checks `--mtu` against what IPv6 and the tunnel allow.
pub fn check_mtu(mtu: u32) -> anyhow::Result<()> {
    if !MTU_RANGE.contains(&mtu) {
        bail!("--mtu {mtu} is out of range: IPv6 needs at least 1280, and datagrams are at most 65455 bytes of payload");
    }
    Ok(())
}
