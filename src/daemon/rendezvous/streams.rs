//! The rendezvous' TLS listener (`--tcp-listen`) for nodes whose network blocks UDP: accepts
//! TCP, completes TLS (`io::stream`), and moves frames between each connection and the loop
//! that owns the server.
//!
//! Each connection is two tasks: a reader that hands the loop the frames it reads (several at
//! once when they arrive together, in one buffer) and a writer that sends what the loop queued
//! for it. The loop knows a connection by the endpoint `rendezvous::streams` gives it and
//! queues with `try_send` on a bounded channel: a node that does not read its stream loses
//! datagrams, as a congested UDP path would, and never stalls the loop or other nodes. Frames
//! read wait for the loop on one bounded channel, so a flood from the streams slows the
//! readers (TCP pushes back on the senders), not the UDP ports.
//!
//! Limits: at most [`StreamLimits::connections`] connections in all and
//! [`StreamLimits::per_address`] from one IP address (beyond them a connection is closed at
//! once), a TLS handshake within [`HANDSHAKE_TIMEOUT`], and a connection that carries nothing
//! for [`IDLE_TIMEOUT`] (nodes refresh their registration every keepalive) is closed. This
//! path allocates a buffer per batch of frames read and per frame sent: it carries only what
//! UDP-blocked nodes exchange.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::TlsAcceptor;

pub use crate::io::stream::frames;
use crate::io::stream::{read_batch, write_queued, MAX_FRAME};

/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection silent this long is closed (nodes send at least every keepalive, 25 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Frames queued for one connection's writer; more are dropped.
const WRITE_QUEUE: usize = 512;
/// A reader hands over what it has once this much is gathered.
const READ_BATCH: usize = 32 * 1024;

/// How many stream connections the listener holds.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    pub connections: usize,
    pub per_address: usize,
}

impl Default for StreamLimits {
    fn default() -> StreamLimits {
        StreamLimits {
            connections: 10_000,
            per_address: 64,
        }
    }
}

/// What the connections tell the loop.
pub enum StreamEvent {
    /// A connection completed its TLS handshake; what the loop sends it goes to `out`, as
    /// whole frames.
    Opened {
        conn: u32,
        peer: SocketAddr,
        out: mpsc::Sender<Vec<u8>>,
    },
    /// Frames read from `conn`, back to back (each its two length bytes and its datagram).
    Frames {
        conn: u32,
        frames: Vec<u8>,
    },
    Closed {
        conn: u32,
    },
}

/// Counts of what the listener refused, shared with the loop for the metrics page.
#[derive(Debug, Default)]
pub struct StreamRefusals {
    /// Connections closed at once: over the total or the per-address limit.
    pub over_limit: std::sync::atomic::AtomicU64,
    /// TLS handshakes that failed or took too long.
    pub handshakes_failed: std::sync::atomic::AtomicU64,
}

/// Accepts connections until the process ends.
pub async fn listen(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: StreamLimits,
    events: mpsc::Sender<StreamEvent>,
    refusals: Arc<StreamRefusals>,
) {
    let slots = Arc::new(Semaphore::new(limits.connections));
    let per_address: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let mut next: u32 = 0;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: pause rather than spin.
                tracing::warn!("stream listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ip = peer.ip().to_canonical();
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            refusals
                .over_limit
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            continue;
        };
        let Some(address) = AddressSlot::take(&per_address, ip, limits.per_address) else {
            refusals
                .over_limit
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            continue;
        };
        next = next.wrapping_add(1);
        let conn = next;
        let (acceptor, events, refusals) = (acceptor.clone(), events.clone(), refusals.clone());
        tokio::spawn(async move {
            serve(tcp, peer, conn, acceptor, events, refusals).await;
            drop((slot, address));
        });
    }
}

/// One connection's place in the per-address count, given back when it ends.
struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl AddressSlot {
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, max: usize) -> Option<Self> {
        let mut map = counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            counts: Arc::clone(counts),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    conn: u32,
    acceptor: TlsAcceptor,
    events: mpsc::Sender<StreamEvent>,
    refusals: Arc<StreamRefusals>,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            refusals
                .handshakes_failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(%peer, "stream: TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            refusals
                .handshakes_failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(%peer, "stream: no TLS handshake within {HANDSHAKE_TIMEOUT:?}");
            return;
        }
    };
    let (read, mut write) = tokio::io::split(tls);
    let (out, mut queued) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    if events
        .send(StreamEvent::Opened { conn, peer, out })
        .await
        .is_err()
    {
        return;
    }
    tracing::debug!(%peer, conn, "stream connection opened");
    let writer = tokio::spawn(async move {
        let _ = write_queued(&mut write, &mut queued, READ_BATCH).await;
    });
    let mut reader = BufReader::with_capacity(READ_BATCH, read);
    let mut frame = vec![0u8; MAX_FRAME];
    loop {
        let read = tokio::time::timeout(
            IDLE_TIMEOUT,
            read_batch(&mut reader, &mut frame, READ_BATCH),
        );
        let frames = match read.await {
            Ok(Ok(Some(frames))) => frames,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                tracing::debug!(%peer, conn, "stream closed: {e}");
                break;
            }
            Err(_) => {
                tracing::debug!(%peer, conn, "stream idle for {IDLE_TIMEOUT:?}: closed");
                break;
            }
        };
        if events
            .send(StreamEvent::Frames { conn, frames })
            .await
            .is_err()
        {
            break;
        }
    }
    writer.abort();
    let _ = events.send(StreamEvent::Closed { conn }).await;
    tracing::debug!(%peer, conn, "stream connection closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_holds_at_most_its_share_and_gets_it_back() {
        let counts = Arc::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = AddressSlot::take(&counts, ip, 2).unwrap();
        let _b = AddressSlot::take(&counts, ip, 2).unwrap();
        assert!(AddressSlot::take(&counts, ip, 2).is_none());
        assert!(AddressSlot::take(&counts, "192.0.2.2".parse().unwrap(), 2).is_some());
        drop(a);
        assert!(AddressSlot::take(&counts, ip, 2).is_some());
    }
}
