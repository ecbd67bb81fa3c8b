//! The message service: the receiving end of [`crate::wire::message`] on overlay TCP port
//! [`MESSAGE_PORT`](crate::wire::message::MESSAGE_PORT), over any byte stream (kernel TCP or
//! the userspace stack).
//!
//! One call to [`serve`] handles one connection. The caller has already mapped the
//! connecting overlay address to a trusted peer, or to `None`: an untrusted connection gets
//! one `NotTrusted` answer and is closed without its request being read. A trusted peer may
//! send requests in turn, each answered once the message is on disk (`Stored` + id) or
//! refused. Framing errors (bad header, declared length over the limit) close the
//! connection, since the stream can no longer be trusted to be in step; a payload that is
//! only invalid for its kind is answered `Malformed` and the connection stays open. Each
//! request must arrive whole within [`IDLE_TIMEOUT`] of the previous answer (or of the
//! connection opening), so a silent or slow peer cannot hold a connection forever.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use crate::api::PeerRef;
use crate::daemon::services::inbox::{Inbox, InboxError};
use crate::io::message::{
    read_request, validate, write_response, MessageError, MessageKind, Status, MAX_MESSAGE_BYTES,
};

/// How long a connection may take to deliver its next request, or to take an answer.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to a peer this node does not trust.
pub const NOT_TRUSTED: &str = "this node does not trust you; ask with `pilotctl handshake`";

/// Serves one message connection until the peer closes it, goes idle, or breaks the
/// framing. `sender` is the trusted peer behind the connection, `None` if the address is
/// not one; `clock` gives the time in UNIX milliseconds. Never panics on any input.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    sender: Option<PeerRef>,
    inbox: Arc<Mutex<Inbox>>,
    clock: impl Fn() -> u64,
) {
    serve_with_timeout(stream, sender, inbox, clock, IDLE_TIMEOUT).await;
}

async fn serve_with_timeout<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    sender: Option<PeerRef>,
    inbox: Arc<Mutex<Inbox>>,
    clock: impl Fn() -> u64,
    idle: Duration,
) {
    let Some(sender) = sender else {
        tracing::debug!("message connection from an untrusted address: refused");
        refuse(stream, Status::NotTrusted, NOT_TRUSTED, idle).await;
        return;
    };
    let from = sender.addr;
    loop {
        let (kind, payload) = match timeout(idle, read_request(&mut stream)).await {
            Ok(Ok(Some(request))) => request,
            Ok(Ok(None)) => break,
            Err(_) => {
                tracing::debug!(%from, "message connection idle for {idle:?}: closed");
                break;
            }
            Ok(Err(e @ (MessageError::Closed(_) | MessageError::Io(_)))) => {
                tracing::debug!(%from, "message connection lost: {e}");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(%from, "message refused, connection closed: {e}");
                let status = match e {
                    MessageError::TooLarge { .. } => Status::TooLarge,
                    _ => Status::Malformed,
                };
                refuse(stream, status, &e.to_string(), idle).await;
                return;
            }
        };
        let (status, detail) = match validate(kind, &payload) {
            Ok(()) => store(&inbox, &sender, kind, payload, clock()).await,
            Err(e) => {
                tracing::debug!(%from, kind = kind.as_str(), "message refused: {e}");
                (Status::Malformed, e.to_string())
            }
        };
        if !respond(&mut stream, status, &detail, idle).await {
            return;
        }
    }
    let _ = timeout(idle, stream.shutdown()).await;
}

/// Stores one validated message on a blocking thread (the write fsyncs) and says how to
/// answer.
async fn store(
    inbox: &Arc<Mutex<Inbox>>,
    sender: &PeerRef,
    kind: MessageKind,
    payload: Vec<u8>,
    received_ms: u64,
) -> (Status, String) {
    let size = payload.len();
    let (inbox, from) = (Arc::clone(inbox), sender.clone());
    let stored = tokio::task::spawn_blocking(move || {
        // A panic elsewhere while holding the lock leaves no half-made state behind: every
        // change to the inbox is one file written atomically.
        let mut inbox = inbox.lock().unwrap_or_else(PoisonError::into_inner);
        inbox.store(&from, kind, &payload, received_ms)
    })
    .await;
    let from = sender.addr;
    let hostname = sender.hostname.as_ref().map_or("-", |h| h.as_str());
    match stored {
        Ok(Ok(id)) => {
            tracing::info!(%from, hostname, kind = kind.as_str(), size, %id, "message stored");
            (Status::Stored, id)
        }
        Ok(Err(e @ InboxError::Full { .. })) => {
            tracing::debug!(%from, "message refused: {e}");
            (Status::InboxFull, e.to_string())
        }
        Ok(Err(InboxError::Invalid(e))) => (Status::Malformed, e.to_string()),
        Ok(Err(InboxError::Io(e))) => {
            tracing::warn!(%from, "cannot store a message: {e}");
            let detail = format!("the receiver could not store the message: {e}");
            (Status::StoreFailed, detail)
        }
        Err(e) => {
            tracing::warn!(%from, "storing a message failed: {e}");
            let detail = "the receiver could not store the message".to_owned();
            (Status::StoreFailed, detail)
        }
    }
}

/// Writes one answer; false if the peer is gone or does not take it in time.
async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: Status,
    detail: &str,
    idle: Duration,
) -> bool {
    matches!(
        timeout(idle, write_response(stream, status, detail)).await,
        Ok(Ok(()))
    )
}

/// How long, and how many bytes, [`refuse`] discards before closing.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: u64 = MAX_MESSAGE_BYTES as u64 + 64;

/// Answers and closes the connection without reading the rest of the request. Closing a
/// TCP socket with unread bytes makes the kernel reset the connection, which can destroy
/// the answer before the peer reads it; so half-close first, then discard (never parse or
/// keep) what the peer still sends, for a bounded time and amount.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    status: Status,
    detail: &str,
    idle: Duration,
) {
    if !respond(&mut stream, status, detail, idle).await {
        return;
    }
    let _ = timeout(LINGER, async {
        stream.shutdown().await?;
        let mut rest = (&mut stream).take(LINGER_BYTES);
        tokio::io::copy(&mut rest, &mut tokio::io::sink()).await
    })
    .await;
}

#[cfg(test)]
mod tests;
