//! The daemons, a room for what each part holds: `node` (`pilotd up`: the packet loop, the
//! control socket, the trust file and the rendezvous pin), `rendezvous` (`pilotd rendezvous`),
//! `services` (the message service, the SOCKS5 proxy, exposed ports, the inbox), `names`
//! (the hosts file, systemd-resolved), `portmap` (the port-mapping task), `metrics` (the
//! Prometheus endpoint); what both daemons share: the state directory's lock (`state_lock`),
//! telling systemd how they are (`notify`), the runtime and the shutdown signal.

pub mod metrics;
pub mod names;
pub mod node;
mod notify;
pub mod portmap;
pub mod rendezvous;
pub mod services;
pub mod state_lock;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

pub use node::{
    check_mtu, run_up, UpOptions, Userspace, DEFAULT_INTERFACE, DEFAULT_LISTEN_PORT, DEFAULT_MTU,
    DEFAULT_SOCKS5, MTU_RANGE,
};

/// Runs a daemon's top-level future on a single-threaded runtime: each daemon is one event
/// loop, and its state machines are owned by one task.
pub(crate) fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(
    future: F,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(future)
}

/// Resolves on the first SIGINT or SIGTERM, having told systemd the daemon is stopping.
pub(crate) fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    Ok(async move {
        let name = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        tracing::info!("{name}: shutting down");
        notify::stopping(&format!("{name}: shutting down"));
    })
}
