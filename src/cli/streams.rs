//! `pilotctl connect`, `send-message` and `inbox`: streams and messages to peers, in either mode.
//!
//! The daemon names the peer (`resolve`) and says how its node is reached (`info`): in kernel
//! mode this process connects to the peer's fd70 address itself, through pilot0; in userspace
//! mode it goes through the daemon's SOCKS5 proxy. Either way the bytes are this process's,
//! and the daemon's trust gate decides whether they pass.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::control_call::{call, parse, print_json};
use super::peer_table::who;
use crate::api::socks5::{self, Reply, Target};
use crate::api::StoredMessage;
use crate::api::{ClientError, InfoReply, PeerRef, Request};
use crate::io::message::{self, MessageKind, MESSAGE_PORT};
use crate::wire::printable::printable;

/// Where a stream to a peer goes, and how.
struct Route {
    peer: PeerRef,
    to: SocketAddr,
    /// The SOCKS5 proxy to go through (userspace mode).
    proxy: Option<SocketAddr>,
}

/// Where a stream to the peer the user named `typed` goes; refused, saying why, when the peer
/// is not trusted.
fn route(socket: &Path, typed: &str, port: u16) -> Result<Route, ClientError> {
    let peer: PeerRef = parse(call(
        socket,
        &Request::Resolve {
            name: typed.to_owned(),
        },
    )?)?;
    let info: InfoReply = parse(call(socket, &Request::Info {})?)?;
    let me = info.hostname.as_deref().unwrap_or(&info.node);
    super::trust_gate::check(socket, typed, &peer, me)?;
    let ip = IpAddr::V6(peer.addr.to_ipv6());
    let proxy = match (info.mode.as_str(), &info.socks5) {
        ("userspace", Some(proxy)) => Some(
            proxy
                .parse()
                .map_err(|_| ClientError::Protocol(format!("bad SOCKS5 address {proxy}")))?,
        ),
        ("userspace", None) => {
            return Err(ClientError::Daemon(
                "pilotd runs in userspace mode with its SOCKS5 proxy off (--socks5 off); \
                 streams to peers need it"
                    .into(),
            ))
        }
        _ => None,
    };
    Ok(Route {
        peer,
        to: SocketAddr::new(ip, port),
        proxy,
    })
}

/// Why a stream could not be opened.
enum OpenError {
    /// The peer answered that nothing listens on the port (a TCP reset, or the SOCKS5
    /// proxy's "connection refused").
    Refused,
    Other(String),
}

async fn open(route: &Route) -> Result<TcpStream, OpenError> {
    let Some(proxy) = route.proxy else {
        return TcpStream::connect(route.to)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => OpenError::Refused,
                _ => OpenError::Other(format!("connecting to {}: {e}", route.to)),
            });
    };
    let mut stream = TcpStream::connect(proxy).await.map_err(|e| {
        OpenError::Other(format!(
            "connecting to pilotd's SOCKS5 proxy at {proxy}: {e}"
        ))
    })?;
    match socks5::connect(&mut stream, &Target::Ip(route.to)).await {
        Ok(()) => Ok(stream),
        Err(socks5::Socks5Error::Rejected(code)) if code == Reply::ConnectionRefused as u8 => {
            Err(OpenError::Refused)
        }
        Err(e) => Err(OpenError::Other(format!("connecting to {}: {e}", route.to))),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ClientError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClientError::Io)
}

/// The port `pilotctl connect` uses when none is given: the seed's stdio port.
pub const DEFAULT_CONNECT_PORT: u16 = 1000;

/// `pilotctl connect PEER [PORT] [--message M] [--timeout T]`.
pub fn connect(
    socket: &Path,
    peer: &str,
    port: Option<u16>,
    message: Option<String>,
    timeout: f64,
) -> Result<ExitCode, ClientError> {
    let timeout = seconds(timeout)?;
    let route = route(socket, peer, port.unwrap_or(DEFAULT_CONNECT_PORT))?;
    let runtime = runtime()?;
    let result = runtime.block_on(async {
        let stream = tokio::time::timeout(timeout, open(&route))
            .await
            .map_err(|_| {
                ClientError::Daemon(format!(
                    "no connection to {} within {}s",
                    route.to,
                    timeout.as_secs_f64()
                ))
            })?
            .map_err(|e| match e {
                OpenError::Refused => refused(peer, &route, port.is_none()),
                OpenError::Other(e) => ClientError::Daemon(e),
            })?;
        let _ = stream.set_nodelay(true);
        match message {
            Some(message) => exchange(stream, message.as_bytes(), timeout).await,
            None => pipe_stdio(stream).await,
        }
    });
    // A read of stdin may still be blocked in a thread: do not wait for it.
    runtime.shutdown_background();
    result
}

/// Nothing listens where `route` goes; `defaulted` when the user gave no port.
fn refused(peer: &str, route: &Route, defaulted: bool) -> ClientError {
    let port = route.to.port();
    let which = if defaulted {
        format!("port {port} (the default when no port is given)")
    } else {
        format!("port {port}")
    };
    ClientError::Daemon(format!(
        "nothing listens on {which} of {} (connection refused); give the port a service \
         listens on: `pilotctl connect {peer} PORT`",
        who(&route.peer)
    ))
}

/// Sends `message`, ends the sending side, and prints what comes back until the peer closes
/// or `timeout` passes.
async fn exchange(
    mut stream: TcpStream,
    message: &[u8],
    timeout: Duration,
) -> Result<ExitCode, ClientError> {
    let io = |e: std::io::Error| ClientError::Daemon(format!("stream: {e}"));
    stream.write_all(message).await.map_err(io)?;
    stream.shutdown().await.map_err(io)?;
    let mut reply = Vec::new();
    let read = tokio::time::timeout(timeout, stream.read_to_end(&mut reply)).await;
    let mut stdout = tokio::io::stdout();
    stdout.write_all(&reply).await.map_err(io)?;
    stdout.flush().await.map_err(io)?;
    match read {
        Ok(Ok(_)) => Ok(ExitCode::SUCCESS),
        Ok(Err(e)) => Err(io(e)),
        // A peer that keeps the connection open after answering: what it said is the reply.
        Err(_) if !reply.is_empty() => Ok(ExitCode::SUCCESS),
        Err(_) => Err(ClientError::Daemon(format!(
            "no reply within {}s",
            timeout.as_secs_f64()
        ))),
    }
}

/// stdin to the peer, the peer to stdout, until the peer closes.
async fn pipe_stdio(stream: TcpStream) -> Result<ExitCode, ClientError> {
    let (mut from_peer, mut to_peer) = stream.into_split();
    let upload = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let _ = tokio::io::copy(&mut stdin, &mut to_peer).await;
        let _ = to_peer.shutdown().await;
    });
    let mut stdout = tokio::io::stdout();
    let result = tokio::io::copy(&mut from_peer, &mut stdout).await;
    let _ = stdout.flush().await;
    upload.abort();
    result
        .map(|_| ExitCode::SUCCESS)
        .map_err(|e| ClientError::Daemon(format!("stream: {e}")))
}

/// `pilotctl send-message PEER --data D [--type text|json|binary]`; `--data -` reads stdin.
pub fn send_message(
    socket: &Path,
    peer: &str,
    data: &str,
    kind: MessageKind,
    json: bool,
) -> Result<ExitCode, ClientError> {
    let payload = if data == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .take(message::MAX_MESSAGE_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(ClientError::Io)?;
        buf
    } else {
        data.as_bytes().to_vec()
    };
    // Refused here, before anything is sent: too large, not UTF-8 text, not JSON.
    message::validate(kind, &payload).map_err(|e| ClientError::Daemon(e.to_string()))?;
    let route = route(socket, peer, MESSAGE_PORT)?;
    let timeout = Duration::from_secs(15);
    let id = runtime()?.block_on(async {
        let exchange = async {
            let mut stream = open(&route).await.map_err(|e| match e {
                OpenError::Refused => format!(
                    "nothing listens on its message port {MESSAGE_PORT} (connection refused)"
                ),
                OpenError::Other(e) => e,
            })?;
            message::send(&mut stream, kind, &payload)
                .await
                .map_err(|e| e.to_string())
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", timeout.as_secs())))
            .map_err(|e| ClientError::Daemon(format!("message to {}: {e}", who(&route.peer))))
    })?;
    if json {
        print_json(&serde_json::json!({
            "peer": route.peer,
            "id": id,
            "type": kind,
            "size": payload.len(),
        }));
    } else {
        println!(
            "delivered to {} ({} bytes, {}), id {id}",
            who(&route.peer),
            payload.len(),
            kind.as_str()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `pilotctl inbox [--json] [--clear]`.
pub fn inbox(socket: &Path, json: bool, clear: bool) -> Result<ExitCode, ClientError> {
    let value = call(socket, &Request::Inbox { clear })?;
    if json {
        print_json(&value);
        return Ok(ExitCode::SUCCESS);
    }
    let messages: Vec<StoredMessage> = parse(value["messages"].clone())?;
    if messages.is_empty() {
        println!("no messages");
    }
    for m in &messages {
        let from = printable(&m.from.name()).to_string();
        println!(
            "{}  from {from} ({})  {}  {} bytes  {}",
            m.id,
            m.from.addr.to_ipv6(),
            m.kind.as_str(),
            m.size,
            super::peer_table::age(m.received_ms, None)
        );
        match (&m.data, &m.data_base64) {
            // A peer wrote it: each line indented (no forged headers), controls escaped.
            (Some(serde_json::Value::String(text)), _) => {
                for line in text.split('\n') {
                    println!("  {}", printable(line));
                }
            }
            (Some(value), _) => println!("  {value}"),
            (None, Some(b64)) => println!("  base64:{b64}"),
            (None, None) => {}
        }
    }
    if let Some(n) = value["cleared"].as_u64() {
        println!("cleared {n} message{}", if n == 1 { "" } else { "s" });
    }
    Ok(ExitCode::SUCCESS)
}

fn seconds(s: f64) -> Result<Duration, ClientError> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            ClientError::Daemon(format!(
                "--timeout {s}: expected a positive number of seconds"
            ))
        })
}
