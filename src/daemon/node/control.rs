//! The daemon's side of the control socket: it listens (owner-only), reads each request of
//! the control API (`crate::api`), asks the data plane through a [`Command`] and writes the
//! answer.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::api::{
    ControlError, InboxReply, InfoReply, NetStatus, PeerRef, PeerStatus, PingReply, ReleasedName,
    Request, RequestInfo, Response, StatusReply, TrustReply,
};

/// Longest request line accepted; anything longer is refused and the connection closed.
const MAX_REQUEST: usize = 64 * 1024;
/// Longest a single ping may wait for its reply.
const MAX_PING_TIMEOUT: Duration = Duration::from_secs(30);

/// What the control server asks of the data plane, with where to send the answer.
pub enum Command {
    Info(oneshot::Sender<InfoReply>),
    Peers(oneshot::Sender<Vec<PeerStatus>>),
    Ping {
        peer: String,
        reply: oneshot::Sender<Result<oneshot::Receiver<PingReply>, ControlError>>,
    },
    NetCheck(oneshot::Sender<NetStatus>),
    /// Finds the key behind a hostname, address or key (locally, else at the rendezvous).
    Resolve {
        name: String,
        reply: oneshot::Sender<Result<PeerRef, ControlError>>,
    },
    /// A trust verb on a resolved peer.
    Trust {
        verb: TrustVerb,
        peer: crate::identity::NodeKey,
        reply: oneshot::Sender<Result<serde_json::Value, ControlError>>,
    },
    TrustList(oneshot::Sender<TrustReply>),
    Pending(oneshot::Sender<Vec<RequestInfo>>),
    Status(oneshot::Sender<StatusReply>),
    /// A snapshot for the metrics endpoint.
    Metrics(oneshot::Sender<crate::daemon::metrics::NodeMetrics>),
    /// Userspace mode: a TCP connection to a peer through the stack (SOCKS5 CONNECT).
    OpenStream {
        target: crate::api::socks5::Target,
        reply: oneshot::Sender<Result<OpenedStream, (crate::api::socks5::Reply, ControlError)>>,
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
        reply: oneshot::Sender<Result<InboxReply, ControlError>>,
    },
    /// Releases this node's hostname; answered once the rendezvous has (within seconds).
    ReleaseName(oneshot::Sender<Result<ReleasedName, ControlError>>),
    /// From the port-mapping task: what the gateway offered, and the endpoint it mapped.
    PortMapping {
        status: crate::portmap::PortMapStatus,
        mapped: Option<std::net::SocketAddr>,
    },
}

/// A stack connection being opened: the stream, and whether it was established.
pub type OpenedStream = (
    tokio::io::DuplexStream,
    oneshot::Receiver<Result<(), crate::io::stack::ConnectError>>,
);

/// What to do to a peer's trust.
#[derive(Debug, Clone)]
pub enum TrustVerb {
    Handshake(String),
    Approve,
    Reject(String),
    Untrust,
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
        let answer = if line.len() > MAX_REQUEST {
            Err(ControlError::RequestTooLong(MAX_REQUEST))
        } else {
            match serde_json::from_str::<Request>(&line) {
                Ok(request) => handle(request, &commands).await,
                Err(e) => Err(ControlError::BadRequest(e.to_string())),
            }
        };
        let response = match answer {
            Ok(result) => Response {
                ok: true,
                result: Some(result),
                error: None,
            },
            Err(e) => Response {
                ok: false,
                result: None,
                error: Some(e.to_string()),
            },
        };
        let mut text = serde_json::to_string(&response).expect("response serializes");
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() || line.len() > MAX_REQUEST {
            return;
        }
    }
}

async fn handle(
    request: Request,
    commands: &mpsc::Sender<Command>,
) -> Result<serde_json::Value, ControlError> {
    match request {
        Request::Info {} => value(answered(ask(commands, Command::Info).await)?),
        Request::Peers {} => value(answered(ask(commands, Command::Peers).await)?),
        Request::Netcheck {} => value(answered(ask(commands, Command::NetCheck).await)?),
        Request::Resolve { name } => value(resolve(commands, name).await?),
        Request::Handshake {
            peer,
            justification,
        } => trust_verb(commands, peer, TrustVerb::Handshake(justification)).await,
        Request::Approve { peer } => trust_verb(commands, peer, TrustVerb::Approve).await,
        Request::Reject { peer, reason } => {
            trust_verb(commands, peer, TrustVerb::Reject(reason)).await
        }
        Request::Untrust { peer } => trust_verb(commands, peer, TrustVerb::Untrust).await,
        Request::Trust {} => value(answered(ask(commands, Command::TrustList).await)?),
        Request::Pending {} => value(answered(ask(commands, Command::Pending).await)?),
        Request::Status {} => value(answered(ask(commands, Command::Status).await)?),
        Request::Inbox { clear } => {
            let inbox = ask(commands, |reply| Command::Inbox { clear, reply }).await;
            value(answered(inbox)??)
        }
        Request::ReleaseName {} => value(answered(ask(commands, Command::ReleaseName).await)??),
        Request::Ping { peer, timeout_ms } => {
            let waiter = answered(ask(commands, |reply| Command::Ping { peer, reply }).await)??;
            let timeout = Duration::from_millis(timeout_ms).min(MAX_PING_TIMEOUT);
            match tokio::time::timeout(timeout, waiter).await {
                Ok(reply) => value(reply.map_err(|_| ControlError::ShuttingDown)?),
                Err(_) => Err(ControlError::NoReply(timeout.as_millis())),
            }
        }
    }
}

/// Resolves a peer name to its key (waiting for the rendezvous if it must be asked).
async fn resolve(commands: &mpsc::Sender<Command>, name: String) -> Result<PeerRef, ControlError> {
    answered(ask(commands, |reply| Command::Resolve { name, reply }).await)?
}

async fn trust_verb(
    commands: &mpsc::Sender<Command>,
    peer: String,
    verb: TrustVerb,
) -> Result<serde_json::Value, ControlError> {
    let peer = resolve(commands, peer).await?;
    let done = ask(commands, |reply| Command::Trust {
        verb,
        peer: peer.key,
        reply,
    })
    .await;
    answered(done)?
}

/// The data plane's answer; `ShuttingDown` when it stopped before giving one.
fn answered<T>(answer: Option<T>) -> Result<T, ControlError> {
    answer.ok_or(ControlError::ShuttingDown)
}

fn value<T: Serialize>(result: T) -> Result<serde_json::Value, ControlError> {
    Ok(serde_json::to_value(result).expect("replies serialize"))
}

/// Sends the data plane the command `make` builds around a reply channel and waits for the
/// answer; `None` when the data plane has stopped.
pub(in crate::daemon) async fn ask<T>(
    commands: &mpsc::Sender<Command>,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    commands.send(make(tx)).await.ok()?;
    rx.await.ok()
}
