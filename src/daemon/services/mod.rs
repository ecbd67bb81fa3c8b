//! The services a node runs on the overlay besides routing: the message service (both modes),
//! and in userspace mode the SOCKS5 proxy (local programs out to peers) and exposed ports (peers
//! in to local programs).
//!
//! Each connection is one task. In userspace mode the data plane's stack hands connections
//! over as [`Incoming`] (a duplex pipe and who opened it); in kernel mode the message service
//! listens on the node's fd70 address like any program would, and asks the data plane whether
//! the address that connected belongs to a trusted peer.

pub mod inbox;
pub mod messages;

use std::net::{Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::api::socks5::{self, Reply};
use crate::api::{ControlError, PeerRef};
use crate::clock::unix_ms_now;
use crate::daemon::node::control::{ask, Command};
use crate::io::stack::{Accepted, CONNECT_TIMEOUT};
use crate::wire::message::MESSAGE_PORT;
use inbox::Inbox;

/// How long a SOCKS5 client may take to say where it wants to go.
const SOCKS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Copy buffer per direction of a forwarded connection.
const COPY_BUFFER: usize = 64 * 1024;

/// A connection a peer opened to the userspace stack.
pub struct Incoming {
    pub accepted: Accepted,
    /// The trusted peer it came from; `None` if the address is not one.
    pub sender: Option<PeerRef>,
}

/// `--expose PORT[:LOCALPORT]`: peers connecting to this node's overlay PORT reach
/// 127.0.0.1:LOCALPORT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expose {
    pub port: u16,
    pub local_port: u16,
}

impl FromStr for Expose {
    type Err = String;

    fn from_str(s: &str) -> Result<Expose, String> {
        let parse = |p: &str| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!(
                "`{s}`: expected PORT or PORT:LOCALPORT with ports 1..65535"
            )),
            Ok(n) => Ok(n),
        };
        let (port, local_port) = match s.split_once(':') {
            Some((port, local)) => (parse(port)?, parse(local)?),
            None => (parse(s)?, parse(s)?),
        };
        if port == MESSAGE_PORT {
            return Err(format!(
                "`{s}`: overlay port {MESSAGE_PORT} is the message service's"
            ));
        }
        Ok(Expose { port, local_port })
    }
}

impl std::fmt::Display for Expose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.port, self.local_port)
    }
}

/// Serves connections peers open to the userspace stack: the message port, exposed ports.
pub async fn serve_incoming(
    mut incoming: mpsc::Receiver<Incoming>,
    expose: Vec<Expose>,
    inbox: Arc<Mutex<Inbox>>,
) {
    while let Some(Incoming { accepted, sender }) = incoming.recv().await {
        let Accepted {
            stream,
            remote,
            port,
            refusal,
        } = accepted;
        if port == MESSAGE_PORT {
            tokio::spawn(messages::serve(stream, sender, inbox.clone(), unix_ms_now));
            continue;
        }
        let Some(rule) = expose.iter().find(|e| e.port == port).copied() else {
            refusal.refuse();
            continue;
        };
        if sender.is_none() {
            // The gate lets only trusted peers' packets in; a stranger here means trust was
            // withdrawn while the connection was being set up.
            tracing::debug!(%remote, port, "connection from an untrusted address reset");
            refusal.refuse();
            continue;
        }
        tokio::spawn(async move {
            let local = SocketAddr::from(([127, 0, 0, 1], rule.local_port));
            match TcpStream::connect(local).await {
                Ok(local_stream) => {
                    let _ = local_stream.set_nodelay(true);
                    pipe(local_stream, stream).await;
                }
                Err(e) => {
                    // As a kernel answers a closed port: a reset, not a connection that opens
                    // and closes with nothing in it.
                    refusal.refuse();
                    tracing::warn!(
                        %remote,
                        "exposed port {}: cannot reach {local}: {e}; connection reset",
                        rule.port
                    );
                }
            }
        });
    }
}

/// Kernel mode: the message service on `[addr]:MESSAGE_PORT`, senders checked with the data
/// plane.
pub async fn serve_messages(
    listener: TcpListener,
    commands: mpsc::Sender<Command>,
    inbox: Arc<Mutex<Inbox>>,
) {
    accept_each(listener, "message service", |stream, from| {
        let commands = commands.clone();
        let inbox = inbox.clone();
        async move {
            let ip = match from.ip() {
                std::net::IpAddr::V6(ip) => ip,
                std::net::IpAddr::V4(_) => Ipv6Addr::UNSPECIFIED,
            };
            let sender = ask(&commands, |reply| Command::SenderOf { ip, reply })
                .await
                .flatten();
            messages::serve(stream, sender, inbox, unix_ms_now).await;
        }
    })
    .await;
}

/// Userspace mode: the local SOCKS5 proxy to peers.
pub async fn serve_socks5(listener: TcpListener, commands: mpsc::Sender<Command>) {
    accept_each(listener, "SOCKS5 proxy", |stream, from| {
        let commands = commands.clone();
        async move {
            if let Err(e) = socks5_connection(stream, &commands).await {
                tracing::debug!(%from, "SOCKS5: {e}");
            }
        }
    })
    .await;
}

/// Accepts connections for ever, serving each in its own task; a failed accept (out of file
/// descriptors, say) is logged and retried shortly after.
async fn accept_each<F, Fut>(listener: TcpListener, what: &str, mut serve: F)
where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                tokio::spawn(serve(stream, from));
            }
            Err(e) => {
                tracing::warn!("{what}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn socks5_connection(
    mut local: TcpStream,
    commands: &mpsc::Sender<Command>,
) -> Result<(), String> {
    let _ = local.set_nodelay(true);
    let target = tokio::time::timeout(SOCKS_HANDSHAKE_TIMEOUT, socks5::accept(&mut local))
        .await
        .map_err(|_| "no request within 10 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let opened = ask(commands, |reply| Command::OpenStream {
        target: target.clone(),
        reply,
    })
    .await
    .unwrap_or(Err((Reply::GeneralFailure, ControlError::ShuttingDown)));
    let (stream, established) = match opened {
        Ok(opened) => opened,
        Err((code, why)) => {
            tracing::info!(%target, "SOCKS5 connect refused: {why}");
            let _ = socks5::reply(&mut local, code, unspecified).await;
            return Err(why.to_string());
        }
    };
    let outcome = tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), established).await;
    let code = match outcome {
        Ok(Ok(Ok(()))) => Reply::Succeeded,
        Ok(Ok(Err(crate::io::stack::ConnectError::Refused))) => Reply::ConnectionRefused,
        Ok(Ok(Err(crate::io::stack::ConnectError::TimedOut))) | Err(_) => Reply::TtlExpired,
        Ok(Ok(Err(crate::io::stack::ConnectError::Limit(_)))) | Ok(Err(_)) => Reply::GeneralFailure,
    };
    socks5::reply(&mut local, code, unspecified)
        .await
        .map_err(|e| e.to_string())?;
    if code != Reply::Succeeded {
        return Err(format!("{target}: {code}"));
    }
    pipe(local, stream).await;
    Ok(())
}

/// Copies both ways until both sides are done.
async fn pipe(
    mut a: impl AsyncRead + AsyncWrite + Unpin,
    mut b: impl AsyncRead + AsyncWrite + Unpin,
) {
    let _ =
        tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, COPY_BUFFER, COPY_BUFFER).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expose_rules_parse_and_refuse_clearly() {
        assert_eq!(
            "8080".parse::<Expose>().unwrap(),
            Expose {
                port: 8080,
                local_port: 8080
            }
        );
        assert_eq!(
            "80:8080".parse::<Expose>().unwrap(),
            Expose {
                port: 80,
                local_port: 8080
            }
        );
        for bad in ["", "0", "80:", ":80", "80:0", "65536", "http", "80:81:82"] {
            let e = bad.parse::<Expose>().unwrap_err();
            assert!(e.contains("PORT"), "{bad}: {e}");
        }
        assert!("7001"
            .parse::<Expose>()
            .unwrap_err()
            .contains("message service"));
    }
}
