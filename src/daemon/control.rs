//! The control socket: a Unix stream socket, owner-only, speaking newline-delimited JSON.
//!
//! Each request is one JSON object on one line, `{"cmd": "...", ...}`; each answer is one line,
//! `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`. A connection may carry any
//! number of requests in turn. The protocol is documented in README.md ("Control protocol").

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::node::{NetStatus, PeerStatus};
use crate::wire::control::NatKind;
use crate::wire::message::MessageKind;

/// Longest request line accepted; anything longer is refused and the connection closed.
const MAX_REQUEST: usize = 64 * 1024;
/// Longest a single ping may wait for its reply.
const MAX_PING_TIMEOUT: Duration = Duration::from_secs(30);

/// A request from `pilotctl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    // Empty struct variants rather than unit ones: serde enforces deny_unknown_fields only on
    // variants with a body.
    Info {},
    Peers {},
    /// Public endpoint and NAT behaviour as measured against the rendezvous.
    Netcheck {},
    /// One ICMPv6 echo across the tunnel. `peer`: hostname, text address, fd70 address or
    /// public key.
    Ping {
        peer: String,
        timeout_ms: u64,
    },
    /// Who a hostname (or address, or key) is.
    Resolve {
        name: String,
    },
    /// Ask `peer` for trust (or approve its request if it asked first).
    Handshake {
        peer: String,
        #[serde(default)]
        justification: String,
    },
    Approve {
        peer: String,
    },
    Reject {
        peer: String,
        #[serde(default)]
        reason: String,
    },
    Untrust {
        peer: String,
    },
    /// Trusted peers, our requests and approvals in flight.
    Trust {},
    /// Requests waiting for our approval.
    Pending {},
    /// A one-screen health summary: info, peers by path, trust counts, drops, uptime.
    Status {},
    /// Messages received from peers (`clear`: remove them after listing).
    Inbox {
        #[serde(default)]
        clear: bool,
    },
    /// Give up this node's hostname: stop claiming it and have the rendezvous free it.
    ReleaseName {},
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `info`'s result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InfoReply {
    pub address: String,
    pub node: String,
    pub public_key: String,
    pub hostname: Option<String>,
    /// The TUN's name; empty in userspace mode.
    pub interface: String,
    /// `kernel` (a TUN) or `userspace` (a smoltcp stack, SOCKS5 and exposed ports).
    #[serde(default)]
    pub mode: String,
    /// Userspace mode: the SOCKS5 proxy's address, if it runs.
    #[serde(default)]
    pub socks5: Option<String>,
    /// Userspace mode: exposed ports as `PORT:LOCALPORT`.
    #[serde(default)]
    pub expose: Vec<String>,
    pub mtu: u32,
    pub listen_port: u16,
    /// The public endpoint peers are told first: configured (`--endpoint`) or as the
    /// rendezvous sees it.
    pub endpoint: Option<String>,
    /// `endpoint` comes from `--endpoint`.
    #[serde(default)]
    pub endpoint_configured: bool,
    /// This node's endpoint as the rendezvous sees it.
    #[serde(default)]
    pub observed: Option<String>,
    /// NAT mapping behaviour, when a rendezvous is configured.
    pub nat: Option<NatKind>,
    pub peers: usize,
    /// Whether incoming trust requests are approved automatically.
    pub auto_approve: bool,
    /// Peers with a valid mutual trust record.
    pub trusted: usize,
    /// Trust requests waiting for approval.
    pub pending: usize,
    pub drops: serde_json::Map<String, serde_json::Value>,
    pub version: String,
    /// The daemon's process id (for `pilotctl daemon stop`).
    pub pid: u32,
}

/// `status`'s result: what an operator checks first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReply {
    pub version: String,
    pub uptime_secs: u64,
    pub address: String,
    pub node: String,
    pub hostname: Option<String>,
    pub interface: String,
    pub listen_port: u16,
    /// The rendezvous configured, if any, and whether this node is registered with it now.
    pub rendezvous: Option<String>,
    pub registered: bool,
    /// Public endpoint (configured, or as the rendezvous sees it) and NAT behaviour.
    pub endpoint: Option<String>,
    /// `endpoint` comes from `--endpoint`.
    #[serde(default)]
    pub endpoint_configured: bool,
    pub nat: Option<NatKind>,
    /// Peers packets may pass with, by how they are reached now.
    pub peers: PathCounts,
    pub trust: TrustCounts,
    /// Every drop since start, all reasons together (`pilotctl info` has them by reason).
    pub drops_total: u64,
    /// WireGuard sessions established since start.
    pub handshakes: u64,
    /// Where the Prometheus endpoint listens (`--metrics`), if it does.
    pub metrics: Option<String>,
    /// Kernel mode: why the LAN guard (overlay addresses only through the TUN) is missing.
    #[serde(default)]
    pub lan_guard_missing: Option<String>,
    /// Why `trust.json` cannot be written, while it cannot, and failed writes since start.
    #[serde(default)]
    pub trust_save_error: Option<String>,
    #[serde(default)]
    pub trust_save_failures: u64,
    /// Why the rendezvous does not register this node, while it does not.
    #[serde(default)]
    pub rendezvous_problem: Option<String>,
    /// The first rendezvous, while the node uses a standby one because it stopped answering.
    #[serde(default)]
    pub rendezvous_preferred: Option<String>,
    /// Peers that no longer answer, as `NAME (NODE), last heard N s ago`.
    #[serde(default)]
    pub unreachable: Vec<String>,
    /// How far this system's clock is from the rendezvous' (ms to add), once measured.
    #[serde(default)]
    pub clock_offset_ms: Option<i64>,
}

/// Peers by path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathCounts {
    pub direct: usize,
    pub relay: usize,
    pub none: usize,
}

/// Trust in numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustCounts {
    /// Peers with a valid mutual trust record.
    pub trusted: usize,
    /// Peers configured with `--peer`.
    pub configured: usize,
    /// Requests waiting for `pilotctl approve`.
    pub pending: usize,
    pub auto_approve: bool,
}

/// A peer as the trust verbs name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRef {
    pub address: String,
    pub node: String,
    pub hostname: Option<String>,
    pub public_key: String,
}

/// `handshake`'s result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandshakeReply {
    pub peer: PeerRef,
    pub outcome: crate::node::HandshakeOutcome,
    /// Trust held already and nothing was sent (`outcome` is `already_trusted`): for scripts
    /// that call `handshake` idempotently.
    #[serde(default)]
    pub already_trusted: bool,
}

/// `trust`'s result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrustReply {
    pub trusted: Vec<TrustedPeer>,
    /// Our requests: pending, or rejected (with the reason given).
    pub requested: Vec<RequestInfo>,
    /// Requests we approved whose requester has not countersigned yet.
    pub approved: Vec<PeerRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustedPeer {
    #[serde(flatten)]
    pub peer: PeerRef,
    /// When the record was signed (UNIX ms); `None` for a configured (`--peer`) peer.
    pub since_ms: Option<u64>,
    /// How long ago that was by the node's clock (corrected from the rendezvous' time when
    /// this system's clock is off, unlike the reader's).
    #[serde(default)]
    pub since_secs: Option<u64>,
    pub configured: bool,
}

/// A trust request, ours or a peer's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestInfo {
    #[serde(flatten)]
    pub peer: PeerRef,
    pub justification: String,
    pub issued_ms: u64,
    /// How long ago it was made, by the node's clock (see [`TrustedPeer::since_secs`]).
    #[serde(default)]
    pub age_secs: Option<u64>,
    /// `pending` or `rejected`.
    pub status: String,
    pub reason: Option<String>,
}

/// `ping`'s result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PingReply {
    pub address: String,
    pub node: String,
    pub seq: u16,
    pub rtt_ms: f64,
    pub path: String,
}

/// What the control server asks of the data plane, with where to send the answer.
pub enum Command {
    Info(oneshot::Sender<InfoReply>),
    Peers(oneshot::Sender<Vec<PeerStatus>>),
    Ping {
        peer: String,
        reply: oneshot::Sender<Result<oneshot::Receiver<PingReply>, String>>,
    },
    NetCheck(oneshot::Sender<NetStatus>),
    /// Finds the key behind a hostname, address or key (locally, else at the rendezvous).
    Resolve {
        name: String,
        reply: oneshot::Sender<Result<PeerRef, String>>,
    },
    /// A trust verb on a resolved peer.
    Trust {
        verb: TrustVerb,
        peer: crate::identity::NodeKey,
        reply: oneshot::Sender<Result<serde_json::Value, String>>,
    },
    TrustList(oneshot::Sender<TrustReply>),
    Pending(oneshot::Sender<Vec<RequestInfo>>),
    Status(oneshot::Sender<StatusReply>),
    /// A snapshot for the metrics endpoint.
    Metrics(oneshot::Sender<super::metrics::NodeMetrics>),
    /// Userspace mode: a TCP connection to a peer through the stack (SOCKS5 CONNECT).
    OpenStream {
        target: super::services::socks5::Target,
        reply: oneshot::Sender<Result<OpenedStream, (super::services::socks5::Reply, String)>>,
    },
    /// The trusted peer at an overlay address (`None` if there is none), for the message
    /// service in kernel mode.
    SenderOf {
        ip: std::net::Ipv6Addr,
        reply: oneshot::Sender<Option<PeerRef>>,
    },
    /// Received messages, cleared after listing if asked.
    Inbox {
        clear: bool,
        reply: oneshot::Sender<Result<InboxReply, String>>,
    },
    /// Releases this node's hostname; answered once the rendezvous has (within seconds).
    ReleaseName(oneshot::Sender<Result<ReleasedName, String>>),
    /// From the port-mapping task: what the gateway offered, and the endpoint it mapped.
    PortMapping {
        status: crate::portmap::PortMapStatus,
        mapped: Option<std::net::SocketAddr>,
    },
}

/// `release_name`'s result: the hostname the rendezvous freed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedName {
    pub hostname: String,
}

/// A stack connection being opened: the stream, and whether it was established.
pub type OpenedStream = (
    tokio::io::DuplexStream,
    oneshot::Receiver<Result<(), crate::io::stack::ConnectError>>,
);

/// `inbox`'s result.
/// One message as `pilotctl inbox --json` shows it. Exactly one of `data` (text: a JSON
/// string; json: the document itself) and `data_base64` (binary: standard base64) is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub id: String,
    /// Who sent it, as the control socket names peers.
    pub from: PeerRef,
    pub kind: MessageKind,
    pub received_ms: u64,
    /// Payload bytes.
    pub size: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct InboxReply {
    pub messages: Vec<StoredMessage>,
    /// How many were removed, when clearing was asked.
    pub cleared: Option<usize>,
}

/// What to do to a peer's trust.
#[derive(Debug, Clone)]
pub enum TrustVerb {
    Handshake(String),
    Approve,
    Reject(String),
    Untrust,
}

/// Where the control socket lives when `--control`/`PILOT_CONTROL` do not say:
/// `/run/pilot/pilotd.sock` for root, `$XDG_RUNTIME_DIR/pilot/pilotd.sock` otherwise.
pub fn default_socket_path() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/pilot/pilotd.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("pilot/pilotd.sock"),
        _ => crate::identity::default_state_dir().join("pilotd.sock"),
    }
}

/// The listening control socket; the file is removed when this is dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path` with mode 0600, creating its directory (0700) if needed. A stale socket
    /// left by a crashed daemon is replaced; a live one means another daemon runs: error.
    pub fn bind(path: &Path) -> io::Result<ControlSocket> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use: another pilotd is running", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        // Bind with a restrictive umask-equivalent: chmod right after, before anyone can use it.
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(ControlSocket {
            listener,
            path: path.to_owned(),
        })
    }

    /// Accepts connections forever, one task each, forwarding requests to the data plane.
    pub async fn serve(self, commands: mpsc::Sender<Command>) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, commands.clone()));
                }
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve_connection(stream: UnixStream, commands: mpsc::Sender<Command>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let n = match (&mut reader)
            .take(MAX_REQUEST as u64 + 1)
            .read_line(&mut line)
            .await
        {
            Ok(n) => n,
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        let response = if line.len() > MAX_REQUEST {
            failure(format!("request longer than {MAX_REQUEST} bytes"))
        } else {
            match serde_json::from_str::<Request>(&line) {
                Ok(request) => handle(request, &commands).await,
                Err(e) => failure(format!("bad request: {e}")),
            }
        };
        let mut text = serde_json::to_string(&response).expect("response serializes");
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() || line.len() > MAX_REQUEST {
            return;
        }
    }
}

async fn handle(request: Request, commands: &mpsc::Sender<Command>) -> Response {
    let stopped = || failure("the daemon is shutting down".into());
    match request {
        Request::Info {} => ask(commands, Command::Info)
            .await
            .map_or_else(stopped, success),
        Request::Peers {} => ask(commands, Command::Peers)
            .await
            .map_or_else(stopped, success),
        Request::Netcheck {} => ask(commands, Command::NetCheck)
            .await
            .map_or_else(stopped, success),
        Request::Resolve { name } => resolve(commands, name).await.map_or_else(failure, success),
        Request::Handshake {
            peer,
            justification,
        } => trust_verb(commands, peer, TrustVerb::Handshake(justification)).await,
        Request::Approve { peer } => trust_verb(commands, peer, TrustVerb::Approve).await,
        Request::Reject { peer, reason } => {
            trust_verb(commands, peer, TrustVerb::Reject(reason)).await
        }
        Request::Untrust { peer } => trust_verb(commands, peer, TrustVerb::Untrust).await,
        Request::Trust {} => ask(commands, Command::TrustList)
            .await
            .map_or_else(stopped, success),
        Request::Pending {} => ask(commands, Command::Pending)
            .await
            .map_or_else(stopped, success),
        Request::Status {} => ask(commands, Command::Status)
            .await
            .map_or_else(stopped, success),
        Request::Inbox { clear } => {
            match ask(commands, |reply| Command::Inbox { clear, reply }).await {
                Some(Ok(reply)) => success(reply),
                Some(Err(e)) => failure(e),
                None => stopped(),
            }
        }
        Request::ReleaseName {} => match ask(commands, Command::ReleaseName).await {
            Some(Ok(released)) => success(released),
            Some(Err(e)) => failure(e),
            None => stopped(),
        },
        Request::Ping { peer, timeout_ms } => {
            let waiter = match ask(commands, |reply| Command::Ping { peer, reply }).await {
                Some(Ok(waiter)) => waiter,
                Some(Err(e)) => return failure(e),
                None => return stopped(),
            };
            let timeout = Duration::from_millis(timeout_ms).min(MAX_PING_TIMEOUT);
            match tokio::time::timeout(timeout, waiter).await {
                Ok(Ok(reply)) => success(reply),
                Ok(Err(_)) => stopped(),
                Err(_) => failure(format!("no reply within {} ms", timeout.as_millis())),
            }
        }
    }
}

/// Resolves a peer name to its key (waiting for the rendezvous if it must be asked).
async fn resolve(commands: &mpsc::Sender<Command>, name: String) -> Result<PeerRef, String> {
    let answer = ask(commands, |reply| Command::Resolve { name, reply }).await;
    answer.unwrap_or_else(|| Err("the daemon is shutting down".into()))
}

async fn trust_verb(commands: &mpsc::Sender<Command>, peer: String, verb: TrustVerb) -> Response {
    let peer = match resolve(commands, peer).await {
        Ok(peer) => peer,
        Err(e) => return failure(e),
    };
    let Ok(key) = peer.public_key.parse() else {
        return failure(format!("bad key {}", peer.public_key));
    };
    match ask(commands, |reply| Command::Trust {
        verb,
        peer: key,
        reply,
    })
    .await
    {
        Some(Ok(result)) => success(result),
        Some(Err(e)) => failure(e),
        None => failure("the daemon is shutting down".into()),
    }
}

/// Sends the data plane the command `make` builds around a reply channel and waits for the
/// answer; `None` when the data plane has stopped.
pub(super) async fn ask<T>(
    commands: &mpsc::Sender<Command>,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    commands.send(make(tx)).await.ok()?;
    rx.await.ok()
}

fn success<T: Serialize>(value: T) -> Response {
    Response {
        ok: true,
        result: Some(serde_json::to_value(value).expect("serializes")),
        error: None,
    }
}

fn failure(error: String) -> Response {
    Response {
        ok: false,
        result: None,
        error: Some(error),
    }
}

/// Client side, for `pilotctl`: sends one request and waits for its answer.
pub fn request(
    path: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<serde_json::Value, ClientError> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|source| {
        // EACCES: the socket (or its directory) is another user's. The daemon runs.
        if source.kind() == io::ErrorKind::PermissionDenied {
            return ClientError::PermissionDenied {
                path: path.to_owned(),
                owner: owner_of(path),
            };
        }
        ClientError::NotRunning {
            path: path.to_owned(),
            source,
        }
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(ClientError::Io)?;
    let mut text = serde_json::to_string(request).expect("request serializes");
    text.push('\n');
    stream.write_all(text.as_bytes()).map_err(ClientError::Io)?;
    let mut line = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut line)
        .map_err(ClientError::Io)?;
    let response: Response =
        serde_json::from_str(&line).map_err(|e| ClientError::Protocol(format!("{e}: {line:?}")))?;
    match (response.ok, response.result, response.error) {
        (true, Some(result), _) => Ok(result),
        (_, _, Some(error)) => Err(ClientError::Daemon(error)),
        _ => Err(ClientError::Protocol(line)),
    }
}

/// Who owns the control socket, or the nearest directory above it this user can see: the user
/// the daemon runs as. `None` when even that cannot be found out.
fn owner_of(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = path
        .ancestors()
        .find_map(|p| std::fs::metadata(p).ok())?
        .uid();
    let user = nix::unistd::User::from_uid(uid.into()).ok().flatten();
    Some(user.map_or_else(|| format!("uid {uid}"), |u| u.name))
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("pilotd is not running (cannot connect to {}: {source}); start it with `sudo pilotd up`", .path.display())]
    NotRunning { path: PathBuf, source: io::Error },
    /// The daemon runs, as another user, and its socket is that user's alone (mode 0600).
    #[error(
        "permission denied on the control socket {}: pilotd runs as {}, and only that user may \
         use it; run pilotctl with sudo",
        .path.display(),
        .owner.as_deref().unwrap_or("another user")
    )]
    PermissionDenied {
        path: PathBuf,
        owner: Option<String>,
    },
    #[error("{0}")]
    Daemon(String),
    #[error("control socket: {0}")]
    Io(#[source] io::Error),
    #[error("unexpected answer from pilotd: {0}")]
    Protocol(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let ping = Request::Ping {
            peer: "a1b2.c3d4.e5f6".into(),
            timeout_ms: 1000,
        };
        let text = serde_json::to_string(&ping).unwrap();
        assert_eq!(
            text,
            r#"{"cmd":"ping","peer":"a1b2.c3d4.e5f6","timeout_ms":1000}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), ping);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"info"}"#).unwrap(),
            Request::Info {}
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"status"}"#).unwrap(),
            Request::Status {}
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"info","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
    }
}
