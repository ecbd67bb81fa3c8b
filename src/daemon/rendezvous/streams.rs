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
//! [`StreamLimits::per_address`] from one IP address (an IPv6 /56), new connections at most
//! [`ACCEPTS_PER_ADDRESS`] a second from one address and [`ACCEPTS_TOTAL`] from everyone (a
//! TLS handshake costs a signature: a flood of them must not take the CPU the UDP ports
//! need); beyond them a connection is closed at once. A TLS handshake must finish within
//! [`HANDSHAKE_TIMEOUT`], and a connection that carries nothing for [`IDLE_TIMEOUT`] (nodes
//! refresh their registration every keepalive) is closed. This
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

use crate::io::stream::{read_batch, write_queued};
use crate::rendezvous::Rate;

/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection silent this long is closed (nodes send at least every keepalive, 25 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// New connections a second from one address (an IPv6 /56), and the burst allowed (a NAT
/// with many UDP-blocked nodes behind it, all starting at once).
pub const ACCEPTS_PER_ADDRESS: Rate = Rate {
    per_sec: 4,
    burst: 64,
};
/// New connections a second from everyone, and the burst: about 5 % of a core in handshakes;
/// 10,000 nodes reconnecting after a restart are all back within a minute (they retry with
/// back-off).
pub const ACCEPTS_TOTAL: Rate = Rate {
    per_sec: 500,
    burst: 2_000,
};
/// Addresses whose accept rate is remembered; beyond it the oldest-refilled are forgotten.
const RATE_TABLE: usize = 65_536;
/// Frames queued for one connection's writer; more are dropped.
const WRITE_QUEUE: usize = 512;
/// A reader hands over what it has once this much is gathered.
const READ_BATCH: usize = 32 * 1024;
/// What a connection reads ahead: frames larger than it are read past it, smaller ones
/// that arrived together come out of it together. Allocated for every connection, idle or
/// not, so kept small.
const READ_BUFFER: usize = 4 * 1024;

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
    /// Connections closed at once: over the total or the per-address limit, or a rate.
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
    let mut accepts = AcceptRate::default();
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
        let ip = address_of(peer.ip());
        if !accepts.admit(ip, std::time::Instant::now()) {
            refusals
                .over_limit
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            continue;
        }
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

/// The address a connection counts against: IPv4 as it is, IPv6 by its /56 (one host has a
/// /64 or more to itself).
fn address_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[7..].fill(0);
            IpAddr::V6(octets.into())
        }
        v4 => v4,
    }
}

/// Token buckets for new connections: one per address (bounded) and one for everyone.
#[derive(Default)]
struct AcceptRate {
    per_address: HashMap<IpAddr, Bucket>,
    total: Bucket,
}

impl AcceptRate {
    fn admit(&mut self, ip: IpAddr, now: std::time::Instant) -> bool {
        if self.per_address.len() >= RATE_TABLE && !self.per_address.contains_key(&ip) {
            // Full buckets say nothing; forget those first, then whatever is left.
            self.per_address.retain(|_, b| {
                b.level(ACCEPTS_PER_ADDRESS, now) < ACCEPTS_PER_ADDRESS.burst as f64
            });
            if self.per_address.len() >= RATE_TABLE {
                self.per_address.clear();
            }
        }
        let mine = self.per_address.entry(ip).or_default();
        mine.take(ACCEPTS_PER_ADDRESS, now) && self.total.take(ACCEPTS_TOTAL, now)
    }
}

/// A token bucket; a new one is full.
#[derive(Default)]
struct Bucket {
    /// Tokens spent below the burst, and when they were counted (`None`: never spent).
    spent: f64,
    at: Option<std::time::Instant>,
}

impl Bucket {
    fn level(&self, rate: Rate, now: std::time::Instant) -> f64 {
        let refill = self.at.map_or(f64::INFINITY, |t| {
            now.saturating_duration_since(t).as_secs_f64() * rate.per_sec as f64
        });
        (rate.burst as f64 - (self.spent - refill).max(0.0)).max(0.0)
    }

    fn take(&mut self, rate: Rate, now: std::time::Instant) -> bool {
        let level = self.level(rate, now);
        if level < 1.0 {
            return false;
        }
        self.spent = rate.burst as f64 - level + 1.0;
        self.at = Some(now);
        true
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
    let mut reader = BufReader::with_capacity(READ_BUFFER, read);
    loop {
        let read = tokio::time::timeout(IDLE_TIMEOUT, read_batch(&mut reader, READ_BATCH));
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
    fn new_connections_are_rate_limited_per_address_and_in_all() {
        let t0 = std::time::Instant::now();
        let mut rate = AcceptRate::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let admitted = (0..100).filter(|_| rate.admit(a, t0)).count();
        assert_eq!(admitted, ACCEPTS_PER_ADDRESS.burst as usize);
        // A quarter second later: one more token at 4 a second.
        assert!(rate.admit(a, t0 + Duration::from_millis(260)));
        assert!(!rate.admit(a, t0 + Duration::from_millis(260)));
        // One IPv6 host's addresses are one address.
        let v6 = |s: &str| address_of(s.parse().unwrap());
        assert_eq!(v6("2001:db8:0:1::1"), v6("2001:db8:0:ff:1::7"));
        assert_ne!(v6("2001:db8:0:1::1"), v6("2001:db8:0:100::1"));
        // Many addresses together meet the total.
        let mut rate = AcceptRate::default();
        let many = (0..4_000u32)
            .filter(|i| rate.admit(IpAddr::from(i.to_be_bytes()), t0))
            .count();
        assert_eq!(many, ACCEPTS_TOTAL.burst as usize);
    }

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
