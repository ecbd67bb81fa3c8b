//! The rendezvous daemon (`pilotd rendezvous`): feeds the sans-IO [`Server`] from two UDP
//! sockets (main and alternate port) and the clock, sends what it returns from the port it
//! names, and logs its counters.
//!
//! One task owns the server, so nothing is locked. The registry's writes run on a thread of
//! their own (`store_thread`): the loop hands them over and takes their results as events, so
//! a slow disk or database delays only the answers that wait for a write, never the loop. Each wake-up takes one recvmmsg batch from
//! a socket (`io::udp`, with GRO), writes each answer or relayed frame into a preallocated
//! buffer and queues it on the send batch of the port it leaves from; one sendmmsg (with GSO
//! for runs of frames to one node) sends them. No allocation per datagram. A send batch that
//! finds its socket full is dropped, as a congested router would: nodes retry control
//! messages and WireGuard copes with loss, and the relay never stalls the registry.
//!
//! Replies must leave from the address nodes sent to: a node's NAT lets in nothing else. The
//! sockets are bound to the exact `--listen` address, which does that by itself. Bound to a
//! wildcard (`0.0.0.0`, `[::]`) on a host with several addresses, they would answer from
//! whichever address the routing table prefers; so there the kernel reports each datagram's
//! destination (IP_PKTINFO / IPV6_RECVPKTINFO, in the same recvmmsg), the server names the
//! address to answer from in every `Transmit`, and the send carries it (IP_PKTINFO /
//! IPV6_PKTINFO, in the same sendmmsg).
//!
//! With `--tcp-listen`, nodes whose network blocks UDP reach the same server over TLS streams
//! (`streams`); their datagrams come to this loop as frames and go back the same way.

mod store_thread;
mod streams;

use crate::io::file::prepare_private_dir;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

use super::metrics::{self, MetricsListener, RendezvousMetrics};
use super::state_lock::{LockError, LockedDir, StateLock};
use crate::addr::Hostname;
use crate::clock::WallClock;
use crate::identity::NodeKey;
use crate::io::udp::{RecvBatch, SendBatch, UdpSocket, MAX_BATCH, MAX_DATAGRAM};
use crate::rendezvous::streams::{connection_of, stream_endpoint};
use crate::rendezvous::{Config, Port, Server, SqliteStore, Store, Transmit, DB_FILE};
use crate::store::postgres::{PostgresStore, Target};
use store_thread::StoreThread;
use streams::{StreamEvent, StreamLimits, StreamRefusals};

/// How often an instance on a shared database tells it it is alive.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// How long a clean stop waits for the registry's last writes.
const FINISH_STORE: Duration = Duration::from_secs(15);

/// A scrape waiting for the loop's snapshot.
type MetricsRequest = oneshot::Sender<RendezvousMetrics>;

/// Everything `pilotd rendezvous` needs.
#[derive(Debug, Clone)]
pub struct RendezvousOptions {
    pub listen: SocketAddr,
    pub alt_port: u16,
    pub data_dir: PathBuf,
    pub keepalive: Duration,
    pub expiry: Duration,
    /// A hostname whose key has not registered for this long is released.
    pub name_ttl: Duration,
    /// Relay rate per node, bytes per second (0: no relaying).
    pub relay_bytes_per_sec: u64,
    /// How often changed counters are logged.
    pub stats_interval: Duration,
    /// Where to serve Prometheus metrics (opt-in).
    pub metrics: Option<SocketAddr>,
    /// Where to accept TLS streams from nodes whose network blocks UDP (opt-in; 443 is the
    /// port such networks let out).
    pub tcp_listen: Option<SocketAddr>,
    /// Where the registry lives.
    pub store: RegistryStore,
}

/// Where the registry lives: SQLite in the data directory (the default: no set-up), or a
/// PostgreSQL database the operator runs.
#[derive(Debug, Clone)]
pub enum RegistryStore {
    Sqlite,
    Postgres(Box<Target>),
}

impl RegistryStore {
    /// Opens it; the store and its SQLite file, if it is one (for the metrics' size figure).
    fn open(&self, data_dir: &Path) -> anyhow::Result<(Box<dyn Store>, Option<PathBuf>)> {
        Ok(match self {
            RegistryStore::Sqlite => {
                let db = data_dir.join(DB_FILE);
                (Box::new(SqliteStore::open(&db)?), Some(db))
            }
            RegistryStore::Postgres(target) => {
                (Box::new(PostgresStore::open((**target).clone())?), None)
            }
        })
    }

    /// Where it is, for log lines and errors (never with a password).
    fn describe(&self, data_dir: &Path) -> String {
        match self {
            RegistryStore::Sqlite => data_dir.join(DB_FILE).display().to_string(),
            RegistryStore::Postgres(target) => target.to_string(),
        }
    }
}

/// The data directory when none is given: `/var/lib/pilot-rendezvous` for root,
/// `~/.pilot-rendezvous` otherwise.
pub fn default_data_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/pilot-rendezvous");
    }
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join(".pilot-rendezvous"),
        _ => PathBuf::from(".pilot-rendezvous"),
    }
}

/// Runs the rendezvous until SIGINT or SIGTERM.
pub fn run_rendezvous(options: RendezvousOptions) -> anyhow::Result<()> {
    super::block_on(serve(options))
}

/// `pilotd rendezvous free-name`: frees `name` in the registry of `data_dir` for any key to
/// claim; returns the key that held it.
///
/// A running server holds the registry in memory and would write its copy back, so this works
/// only while no server runs on the directory: it takes the directory's lock (the server holds
/// it for its whole life), and a running server makes it fail, saying what to do. With the
/// lock held no server can start meanwhile, so nothing races the change.
///
/// On PostgreSQL every instance on the database holds the registry in memory: stop them all
/// first (nothing here can tell whether one runs elsewhere).
pub fn free_name(
    data_dir: &Path,
    store: &RegistryStore,
    name: &Hostname,
) -> anyhow::Result<NodeKey> {
    if let RegistryStore::Postgres(target) = store {
        let mut store = PostgresStore::open((**target).clone())?;
        return match store.release_name(name)? {
            Some(key) => Ok(key),
            None => anyhow::bail!("no key holds the hostname `{name}` in {target}"),
        };
    }
    let db = data_dir.join(DB_FILE);
    if !db.exists() {
        anyhow::bail!(
            "no registry at {}: is the data directory right (--data-dir, or data_dir in the \
             config file)?",
            db.display()
        );
    }
    let _lock = match StateLock::acquire(data_dir, LockedDir::Data) {
        Ok(lock) => lock,
        Err(LockError::Held { pid, .. }) => anyhow::bail!(
            "the rendezvous is running on {}{} and holds the registry in memory: stop it \
             (`systemctl stop pilot-rendezvous`), run this again, then start it (nodes \
             re-register on their own within one keepalive interval)",
            data_dir.display(),
            pid.map_or_else(String::new, |pid| format!(" (pid {pid})"))
        ),
        Err(e) => return Err(e.into()),
    };
    let mut store = SqliteStore::open(&db)?;
    match store.release_name(name)? {
        Some(key) => Ok(key),
        None => anyhow::bail!("no key holds the hostname `{name}` in {}", db.display()),
    }
}

async fn serve(options: RendezvousOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    prepare_private_dir(&options.data_dir, "data directory")?;
    // One rendezvous per data directory (they would share the registry), held until return.
    let _lock = StateLock::acquire(&options.data_dir, LockedDir::Data)?;
    let identity = crate::identity::load_or_create(&options.data_dir)?;
    let key = identity.public_key();
    let main = bind(options.listen)?;
    let alt = bind(SocketAddr::new(options.listen.ip(), options.alt_port))?;
    for socket in [&main, &alt] {
        socket
            .report_destinations()
            .context("asking for the destination address of datagrams (IP_PKTINFO)")?;
    }
    let (main_port, alt_port) = (main.local_addr()?.port(), alt.local_addr()?.port());
    let tcp = match options.tcp_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("binding TCP {addr} for streams (--tcp-listen; ports below 1024 need root or CAP_NET_BIND_SERVICE)")
        })?),
        None => None,
    };
    let tcp_addr = tcp.as_ref().map(|l| l.local_addr()).transpose()?;
    let acceptor = match &tcp {
        Some(_) => Some(tokio_rustls::TlsAcceptor::from(
            crate::io::stream::server_config(identity.signing_key())
                .context("TLS for --tcp-listen")?,
        )),
        None => None,
    };
    let metrics = match options.metrics {
        Some(addr) => Some(MetricsListener::bind(addr).await?),
        None => None,
    };
    let metrics_addr = metrics.as_ref().map(MetricsListener::local_addr);
    // SAFETY: io::udp::UdpSocket owns its descriptor, keeps it open for its whole lifetime
    // and always returns the same one from as_raw_fd.
    let (main, alt) = unsafe {
        (
            AsyncFd::register(main).map_err(io::Error::from)?,
            AsyncFd::register(alt).map_err(io::Error::from)?,
        )
    };
    let registry = options.store.describe(&options.data_dir);
    let (mut store, db) = options.store.open(&options.data_dir)?;
    let mut config = Config::new(identity, main_port, alt_port);
    config.keepalive = options.keepalive;
    config.expiry = options.expiry;
    config.name_ttl = options.name_ttl;
    config.relay_bytes_per_sec = options.relay_bytes_per_sec;
    config.listen = Some(options.listen.ip());
    if matches!(options.store, RegistryStore::Postgres(_)) {
        // Several instances may share the database: each beats, and learns of the others.
        config.heartbeat = Some(HEARTBEAT);
    }
    let seed = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
    let snapshot =
        (store.load()).with_context(|| format!("loading registrations from {registry}"))?;
    // Registrations this instance writes are filed as its nodes (where others introduce and
    // relay to them).
    store.set_home(key);
    if config.heartbeat.is_some() && options.listen.ip().is_unspecified() {
        tracing::warn!(
            "listening on {}: the other instances sharing the registry cannot reach this one \
             to introduce or relay to its nodes; listen on the address they reach it at",
            options.listen.ip()
        );
    }
    let server =
        Server::with_queued_store(config, snapshot, seed, WallClock::system(), Instant::now());
    // From here on the store is its thread's: the loop never waits for a write.
    let store = StoreThread::spawn(store).context("starting the registry store's thread")?;
    tracing::info!(
        public_key = %key,
        address = %options.listen.ip(),
        main_port,
        alt_port,
        registrations = server.registered(),
        data_dir = %options.data_dir.display(),
        %registry,
        metrics = %metrics_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        streams = %tcp_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        "rendezvous listening"
    );
    // Handlers first: a SIGTERM right after READY=1 must still flush the registry.
    let shutdown = super::shutdown_signal()?;
    // Both ports are bound and the registry is loaded.
    super::notify::ready(&format!(
        "serving {} ports {main_port} and {alt_port}, {} registrations",
        options.listen.ip(),
        server.registered()
    ));
    let (metrics_tx, metrics_rx) = mpsc::channel(4);
    let metrics_server =
        metrics.map(|listener| tokio::spawn(serve_metrics(listener, metrics_tx, db.clone())));
    let refusals = Arc::new(StreamRefusals::default());
    let (stream_tx, stream_rx) = mpsc::channel(1024);
    let listener = match (tcp, acceptor) {
        (Some(tcp), Some(acceptor)) => Some(tokio::spawn(streams::listen(
            tcp,
            acceptor,
            StreamLimits::default(),
            stream_tx,
            Arc::clone(&refusals),
        ))),
        _ => None,
    };
    let stream_rx = listener.is_some().then_some(stream_rx);
    let sockets = Sockets { main, alt };
    let mut core = Core {
        server,
        recv: RecvBatch::new(MAX_BATCH, MAX_DATAGRAM),
        tx: Senders {
            udp: [
                SendBatch::new(MAX_BATCH, MAX_DATAGRAM),
                SendBatch::new(MAX_BATCH, MAX_DATAGRAM),
            ],
            udp_errors: 0,
            streams: StreamTable {
                salt: rand_core::RngCore::next_u32(&mut rand_core::OsRng),
                conns: HashMap::new(),
                dropped: 0,
                refusals,
            },
        },
        out: vec![0; MAX_DATAGRAM].into_boxed_slice(),
        commits: metrics::CommitStats::default(),
        calls: metrics::StoreCalls::default(),
        started,
        store,
    };
    let metrics_rx = metrics_server.is_some().then_some(metrics_rx);
    let outcome = core
        .run(
            &sockets,
            shutdown,
            options.stats_interval,
            metrics_rx,
            stream_rx,
        )
        .await;
    for task in [metrics_server, listener].into_iter().flatten() {
        task.abort();
    }
    outcome
}

/// Serves the metrics page: a snapshot from the loop per scrape, and the database's size
/// read here (two `stat`s), off the loop.
async fn serve_metrics(
    listener: MetricsListener,
    loop_: mpsc::Sender<MetricsRequest>,
    db: Option<PathBuf>,
) {
    listener
        .serve(move || {
            let (loop_, db) = (loop_.clone(), db.clone());
            async move {
                let (tx, rx) = oneshot::channel();
                loop_.send(tx).await.ok()?;
                let mut snapshot = rx.await.ok()?;
                snapshot.store_bytes = db.as_deref().and_then(store_bytes);
                Some(metrics::render_rendezvous(&snapshot))
            }
        })
        .await;
}

/// The database file's size plus its write-ahead log's (absent between checkpoints).
fn store_bytes(db: &Path) -> Option<u64> {
    let file = fs::metadata(db).ok()?.len();
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    Some(file + fs::metadata(wal).map_or(0, |m| m.len()))
}

/// The two sockets, kept apart from the state so that waiting on them borrows nothing the
/// handlers change.
struct Sockets {
    main: AsyncFd<UdpSocket>,
    alt: AsyncFd<UdpSocket>,
}

struct Core {
    server: Server,
    recv: RecvBatch,
    tx: Senders,
    out: Box<[u8]>,
    started: Instant,
    /// How the writes of registrations went, for the metrics page.
    commits: metrics::CommitStats,
    /// Every store call's time and outcome, for the metrics page.
    calls: metrics::StoreCalls,
    /// Runs the server's writes (see `store_thread`).
    store: StoreThread,
}

impl Sockets {
    fn get(&self, port: Port) -> &UdpSocket {
        match port {
            // A stream's datagrams never reach a socket (`queue` hands them to the stream).
            Port::Main | Port::Stream => self.main.get_ref(),
            Port::Alt => self.alt.get_ref(),
        }
    }
}

impl Core {
    async fn run(
        &mut self,
        sockets: &Sockets,
        shutdown: impl std::future::Future<Output = ()>,
        stats_interval: Duration,
        mut metrics: Option<mpsc::Receiver<MetricsRequest>>,
        mut streams: Option<mpsc::Receiver<StreamEvent>>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        // The first tick one interval from now, not at once.
        let first = tokio::time::Instant::now() + stats_interval;
        let mut stats = tokio::time::interval_at(first, stats_interval);
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut logged = self.server.counters().clone();
        // Deliveries waiting for nodes restored from the store start at once.
        self.tick(sockets);
        loop {
            // Whatever the last event asked of the store goes to its thread.
            self.pump_store()?;
            let wake = self
                .server
                .poll_timeout()
                .map_or_else(|| Instant::now() + stats_interval, |(t, _)| t);
            tokio::select! {
                () = &mut shutdown => break,
                guard = sockets.main.readable() => {
                    let mut guard = guard?;
                    if self.drain(sockets, Port::Main) {
                        guard.clear_ready();
                    }
                }
                guard = sockets.alt.readable() => {
                    let mut guard = guard?;
                    if self.drain(sockets, Port::Alt) {
                        guard.clear_ready();
                    }
                }
                event = next_event(&mut streams) => match event {
                    Some(event) => self.stream_event(sockets, event),
                    None => streams = None,
                },
                () = tokio::time::sleep_until(wake.into()) => self.tick(sockets),
                finished = self.store.done.recv() => match finished {
                    Some(finished) => self.store_done(sockets, finished),
                    None => anyhow::bail!("the registry store's thread stopped"),
                },
                request = next_request(&mut metrics) => match request {
                    Some(reply) => {
                        let _ = reply.send(self.metrics());
                    }
                    // The endpoint is gone: stop asking.
                    None => metrics = None,
                },
                _ = stats.tick() => {
                    if *self.server.counters() != logged {
                        logged = self.server.counters().clone();
                        tracing::info!(
                            send_errors = self.tx.udp_errors,
                            stream_drops = self.tx.streams.dropped,
                            "counters: {logged}"
                        );
                    }
                }
            }
        }
        self.finish_store(sockets).await?;
        tracing::info!(
            send_errors = self.tx.udp_errors,
            stream_drops = self.tx.streams.dropped,
            "counters at exit: {}",
            self.server.counters()
        );
        tracing::info!("rendezvous stopped");
        Ok(())
    }

    /// Answers one receive batch from the socket of `port` and sends the answers. Returns
    /// true when the socket had nothing more to read.
    fn drain(&mut self, sockets: &Sockets, port: Port) -> bool {
        let count = match self.recv.recv(sockets.get(port)) {
            Ok(count) => count,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            // ICMP errors for earlier sends (ECONNREFUSED and the like) surface here; the
            // next read gets on with the datagrams.
            Err(e) if is_transient(&e) => return false,
            // Nothing else is expected from a bound UDP socket; one bad read must not take
            // the registry down.
            Err(e) => {
                tracing::debug!("udp receive: {e}");
                return true;
            }
        };
        let now = Instant::now();
        for i in 0..count {
            let (from, datagram) = self.recv.get(i);
            let local_ip = self.recv.destination(i);
            if let Some(t) =
                self.server
                    .handle_datagram(port, local_ip, from, datagram, now, &mut self.out)
            {
                self.tx.queue(sockets, t);
            }
            // What the answer set off (the second Punch of an introduction, deliveries to a
            // node that registered or was just sent a statement) leaves right behind it.
            while let Some(t) = self.server.poll_transmit(&mut self.out) {
                self.tx.queue(sockets, t);
            }
        }
        self.commit(now);
        self.tx.flush(sockets);
        false
    }

    /// A stream connection opened, brought frames, or closed.
    fn stream_event(&mut self, sockets: &Sockets, event: StreamEvent) {
        let salt = self.tx.streams.salt;
        match event {
            StreamEvent::Opened { conn, peer, out } => {
                self.server
                    .stream_opened(stream_endpoint(salt, conn), peer.ip());
                self.tx.streams.conns.insert(conn, out);
            }
            StreamEvent::Closed { conn } => {
                self.server.stream_closed(&stream_endpoint(salt, conn));
                self.tx.streams.conns.remove(&conn);
            }
            StreamEvent::Frames { conn, frames } => {
                let from = stream_endpoint(salt, conn);
                let now = Instant::now();
                for datagram in crate::io::stream::frames(&frames) {
                    if let Some(t) = self.server.handle_datagram(
                        Port::Stream,
                        None,
                        from,
                        datagram,
                        now,
                        &mut self.out,
                    ) {
                        self.tx.queue(sockets, t);
                    }
                    while let Some(t) = self.server.poll_transmit(&mut self.out) {
                        self.tx.queue(sockets, t);
                    }
                }
                self.commit(now);
                self.tx.flush(sockets);
            }
        }
    }

    /// The batch's new and changed registrations: one write, queued for the store's thread;
    /// they are answered when it is done (`store_done`).
    fn commit(&mut self, now: Instant) {
        self.server.commit(now);
    }

    /// Hands the writes the server asked for to the store's thread.
    fn pump_store(&mut self) -> anyhow::Result<()> {
        while let Some((ticket, op)) = self.server.poll_store() {
            if !self.store.send(ticket, op) {
                anyhow::bail!("the registry store's thread stopped");
            }
        }
        Ok(())
    }

    /// A write is done: what waited for it takes effect, and its answers leave.
    fn store_done(&mut self, sockets: &Sockets, finished: store_thread::Finished) {
        if finished.registrations > 0 && finished.result.is_ok() {
            (self.commits).record(finished.registrations, finished.took);
        }
        (self.calls).record(finished.op, finished.took, finished.result.is_err());
        (self.server).handle_store(finished.ticket, finished.result, Instant::now());
        while let Some(t) = self.server.poll_transmit(&mut self.out) {
            self.tx.queue(sockets, t);
        }
        self.tx.flush(sockets);
    }

    /// At exit: writes what is kept lazily and waits (up to [`FINISH_STORE`]) for every write
    /// asked for, so nothing acknowledged or lazily kept is lost to a clean stop.
    async fn finish_store(&mut self, sockets: &Sockets) -> anyhow::Result<()> {
        let _ = self.server.flush(Instant::now());
        let deadline = tokio::time::Instant::now() + FINISH_STORE;
        while self.server.store_pending() > 0 {
            self.pump_store()?;
            match tokio::time::timeout_at(deadline, self.store.done.recv()).await {
                Ok(Some(finished)) => self.store_done(sockets, finished),
                Ok(None) => anyhow::bail!("the registry store's thread stopped"),
                Err(_) => {
                    tracing::warn!(
                        pending = self.server.store_pending(),
                        "registry writes still unfinished after {} s at exit",
                        FINISH_STORE.as_secs()
                    );
                    break;
                }
            }
        }
        Ok(())
    }

    /// A copy of the counters and sizes for the metrics page (the store's size is read by
    /// the endpoint).
    fn metrics(&self) -> RendezvousMetrics {
        RendezvousMetrics {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime: self.started.elapsed(),
            counters: self.server.counters().clone(),
            registered: self.server.registered(),
            ledger: self.server.ledger().len(),
            outbox: self.server.outbox_len(),
            send_errors: self.tx.udp_errors,
            store_bytes: None,
            commits: self.commits,
            calls: self.calls.clone(),
            instances: self.server.instances().len(),
            streams: self.tx.streams.stats(),
        }
    }

    /// Runs the server's timers and sends what they queued (resent deliveries).
    fn tick(&mut self, sockets: &Sockets) {
        self.server.handle_timeout(Instant::now());
        while let Some(t) = self.server.poll_transmit(&mut self.out) {
            self.tx.queue(sockets, t);
        }
        self.tx.flush(sockets);
    }
}

/// The next scrape's request; never resolves without an endpoint.
async fn next_request(
    metrics: &mut Option<mpsc::Receiver<MetricsRequest>>,
) -> Option<MetricsRequest> {
    match metrics {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Where answers go: the UDP send batches (main, alternate port) and the streams.
struct Senders {
    udp: [SendBatch; 2],
    /// Datagrams the kernel refused or that found the send buffer full (dropped: nodes
    /// retry control messages, and WireGuard copes with loss).
    udp_errors: u64,
    streams: StreamTable,
}

impl Senders {
    /// Queues `t` on the send batch of its port (flushing that batch first if it is full), or
    /// hands it to its stream.
    fn queue(&mut self, sockets: &Sockets, t: Transmit<'_>) {
        let batch = match t.port {
            Port::Stream => return self.streams.send(&t.to, t.payload),
            Port::Main => 0,
            Port::Alt => 1,
        };
        if self.udp[batch].is_full() {
            self.flush_port(sockets, t.port, batch);
        }
        self.udp[batch].push_from(t.payload, t.src_ip, t.to);
    }

    fn flush(&mut self, sockets: &Sockets) {
        self.flush_port(sockets, Port::Main, 0);
        self.flush_port(sockets, Port::Alt, 1);
    }

    /// Sends what the batch of `port` holds, now or never: whatever finds the socket full is
    /// dropped, as a congested router would drop it.
    fn flush_port(&mut self, sockets: &Sockets, port: Port, index: usize) {
        let batch = &mut self.udp[index];
        let refused_before = batch.send_errors();
        if let Err(e) = batch.flush(sockets.get(port)) {
            tracing::trace!("send: {e}");
            self.udp_errors += batch.clear() as u64;
        }
        self.udp_errors += batch.send_errors() - refused_before;
    }
}

/// The open stream connections, by the number their endpoint carries.
struct StreamTable {
    /// This process' part of every stream endpoint.
    salt: u32,
    conns: HashMap<u32, mpsc::Sender<Vec<u8>>>,
    /// Datagrams for a stream that was gone or not reading (its queue full).
    dropped: u64,
    refusals: Arc<StreamRefusals>,
}

impl StreamTable {
    fn stats(&self) -> metrics::StreamStats {
        use std::sync::atomic::Ordering::Relaxed;
        metrics::StreamStats {
            open: self.conns.len(),
            dropped: self.dropped,
            over_limit: self.refusals.over_limit.load(Relaxed),
            handshakes_failed: self.refusals.handshakes_failed.load(Relaxed),
        }
    }

    fn send(&mut self, to: &SocketAddr, payload: &[u8]) {
        let conn = connection_of(to, self.salt).and_then(|c| self.conns.get(&c));
        let Some(conn) = conn else {
            self.dropped += 1;
            return;
        };
        let mut frame = Vec::with_capacity(payload.len() + crate::io::stream::FRAME_HEADER);
        if !crate::io::stream::push_frame(&mut frame, payload) || conn.try_send(frame).is_err() {
            self.dropped += 1;
        }
    }
}

/// The streams' next event; never resolves without a listener.
async fn next_event(streams: &mut Option<mpsc::Receiver<StreamEvent>>) -> Option<StreamEvent> {
    match streams {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A non-blocking UDP socket bound to exactly `addr` (the IPv6 wildcard serves IPv4 too).
fn bind(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    UdpSocket::bind_addr(addr).with_context(|| {
        format!(
            "binding UDP {addr} (is another rendezvous running? choose other ports with --listen \
             and --alt-port)"
        )
    })
}

/// Receive errors that report on an earlier datagram, not on the socket.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EINTR)
    )
}
