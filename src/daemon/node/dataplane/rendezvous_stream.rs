//! The node's end of the TLS stream to the rendezvous, while UDP to it gets no answer (the
//! node decides: `node::stream`, [`Node::rendezvous_stream`]).
//!
//! One task holds the connection and reconnects (1 s, doubling to 30 s) when it fails. The
//! loop hands it datagrams for the rendezvous with `try_send` on a bounded queue: when the
//! stream falls behind they are dropped, as a congested UDP path would drop them (WireGuard
//! and the control messages retry), and the packet loop never waits for TCP. What the stream
//! brings comes back to the loop as batches of frames, handed to the node as datagrams from
//! the rendezvous' address. This path allocates per frame sent and per batch read: it carries
//! only a UDP-blocked node's traffic.
//!
//! [`Node::rendezvous_stream`]: crate::node::Node::rendezvous_stream

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

use crate::io::stream::{
    client_config, push_frame, read_batch, server_name, write_queued, FRAME_HEADER,
};
use crate::node::StreamTarget;

/// How long a TCP connect and a TLS handshake may take, each.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Datagrams queued for the stream; more are dropped.
const QUEUE: usize = 1024;
/// A batch of frames read is handed over once this large (or when nothing more is buffered).
const READ_BATCH: usize = 32 * 1024;
/// What the stream reads ahead (one TLS record's plaintext).
const READ_BUFFER: usize = 16 * 1024;
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the stream tells the loop.
pub(super) enum StreamIn {
    /// A connection was made (again): the rendezvous knows it as a new endpoint.
    Connected,
    /// Frames read, back to back.
    Frames(Vec<u8>),
}

/// The stream the loop holds, and where its datagrams go.
pub(super) struct RendezvousStream {
    pub target: StreamTarget,
    queue: mpsc::Sender<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
    /// Datagrams dropped: the queue was full (the stream fell behind, or is reconnecting).
    pub dropped: u64,
}

impl RendezvousStream {
    /// Starts connecting to `target`; frames read go to `incoming`.
    pub fn open(target: StreamTarget, incoming: mpsc::Sender<StreamIn>) -> RendezvousStream {
        let (queue, outgoing) = mpsc::channel(QUEUE);
        let task = tokio::spawn(hold(target, outgoing, incoming));
        RendezvousStream {
            target,
            queue,
            task,
            dropped: 0,
        }
    }

    /// Whether a datagram to `to` goes down this stream.
    pub fn carries(&self, to: SocketAddr) -> bool {
        to == self.target.rendezvous
    }

    pub fn send(&mut self, datagram: &[u8]) {
        let mut frame = Vec::with_capacity(FRAME_HEADER + datagram.len());
        if !push_frame(&mut frame, datagram) || self.queue.try_send(frame).is_err() {
            self.dropped += 1;
        }
    }
}

impl Drop for RendezvousStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects, carries frames until the connection fails, and connects again.
async fn hold(
    target: StreamTarget,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    incoming: mpsc::Sender<StreamIn>,
) {
    let config = match client_config(target.key.map(|k| k.0)) {
        Ok(config) => config,
        Err(e) => {
            tracing::warn!("TLS to the rendezvous: {e}");
            return;
        }
    };
    let connector = TlsConnector::from(config);
    let mut retry = RETRY_FIRST;
    loop {
        match connect(&connector, target.tls).await {
            Ok(tls) => {
                tracing::info!(tls = %target.tls, "connected to the rendezvous over TLS");
                retry = RETRY_FIRST;
                if incoming.send(StreamIn::Connected).await.is_err() {
                    return;
                }
                let why = carry(tls, &mut outgoing, &incoming).await;
                if incoming.is_closed() {
                    return;
                }
                tracing::info!(tls = %target.tls, "TLS stream to the rendezvous ended: {why}");
            }
            Err(e) => {
                tracing::info!(tls = %target.tls, "cannot reach the rendezvous over TLS: {e}");
            }
        }
        // What was queued meanwhile is stale (the node retries what matters).
        while outgoing.try_recv().is_ok() {}
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_MAX);
    }
}

async fn connect(
    connector: &TlsConnector,
    to: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to))
        .await
        .map_err(|_| timed_out())??;
    let _ = tcp.set_nodelay(true);
    tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(server_name(), tcp))
        .await
        .map_err(|_| timed_out())?
}

/// Carries frames both ways until either side fails; returns why it stopped.
async fn carry(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    outgoing: &mut mpsc::Receiver<Vec<u8>>,
    incoming: &mpsc::Sender<StreamIn>,
) -> String {
    let (read, mut write) = tokio::io::split(tls);
    let reading = async {
        let mut reader = BufReader::with_capacity(READ_BUFFER, read);
        loop {
            match read_batch(&mut reader, READ_BATCH).await {
                Ok(Some(frames)) => {
                    if incoming.send(StreamIn::Frames(frames)).await.is_err() {
                        return "the data plane stopped".to_owned();
                    }
                }
                Ok(None) => return "closed by the rendezvous".to_owned(),
                Err(e) => return e.to_string(),
            }
        }
    };
    // Whichever ends first ends the connection.
    tokio::select! {
        why = reading => why,
        written = write_queued(&mut write, outgoing, READ_BATCH) => match written {
            Ok(()) => "the data plane stopped".to_owned(),
            Err(e) => e.to_string(),
        },
    }
}

impl super::Core {
    /// Opens, moves or closes the stream as the node wants it now.
    pub(super) fn hold_rendezvous_stream(&mut self) {
        let wanted = self.node.rendezvous_stream();
        // A key learned on first contact (over this stream) is no reason to reconnect.
        let same = match (&self.out.rdv_stream, wanted) {
            (Some(s), Some(w)) => {
                (s.target.tls, s.target.rendezvous) == (w.tls, w.rendezvous)
                    && (s.target.key.is_none() || s.target.key == w.key)
            }
            (held, wanted) => held.is_none() && wanted.is_none(),
        };
        if same {
            return;
        }
        if let Some(old) = self.out.rdv_stream.take() {
            tracing::info!(tls = %old.target.tls, dropped = old.dropped, "TLS stream to the rendezvous closed");
        }
        self.out.rdv_stream =
            wanted.map(|target| RendezvousStream::open(target, self.stream_frames.clone()));
    }
}
