//! The control verbs on the data plane: what `pilotctl` asks of the running node (trust
//! verbs, resolve, ping, inbox, release-name) and what the services ask of it (the SOCKS5
//! proxy's streams, the message service's senders), answered between two batches of packets.
//! The packet loop itself is in `dataplane.rs`; nothing here runs per packet.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Instant;

use tokio::sync::oneshot;

use super::Core;
use crate::addr::{Hostname, NodeAddr};
use crate::api::socks5::{Reply, Target};
use crate::api::{ControlError, InboxReply, ReleasedName};
use crate::api::{HandshakeReply, PeerRef, PingReply, RequestInfo};
use crate::daemon::node::control::OpenedStream;
use crate::daemon::node::control::{Command, TrustVerb};
use crate::identity::NodeKey;
use crate::node::{HandshakeOutcome, ReleaseOutcome};
use crate::wire::control::Query;

impl Core {
    /// The trusted peer at `ip`, as the message service names senders.
    pub(super) fn sender_of(&self, ip: Ipv6Addr) -> Option<PeerRef> {
        let key = self.node.trusted_peer_at(NodeAddr::from_ipv6(ip)?)?;
        Some(self.peer_ref(key, None))
    }

    /// Userspace mode: a TCP connection to a trusted peer through the stack, for the SOCKS5
    /// proxy. The error carries the SOCKS5 reply that says why not.
    pub(super) fn open_stream(
        &mut self,
        target: Target,
    ) -> Result<OpenedStream, (Reply, ControlError)> {
        let (ip, port) = match target {
            Target::Ip(SocketAddr::V6(sa)) => (*sa.ip(), sa.port()),
            Target::Ip(SocketAddr::V4(sa)) => {
                return Err((
                    Reply::AddressTypeNotSupported,
                    ControlError::NotOverlayV4(sa),
                ))
            }
            Target::Name(name, port) => match self.resolve_local(&name) {
                Ok(Ok(key)) => (key.address().to_ipv6(), port),
                Ok(Err(_)) => {
                    return Err((Reply::HostUnreachable, ControlError::UnknownPeer(name)))
                }
                Err(e) => return Err((Reply::HostUnreachable, e)),
            },
        };
        let Some(addr) = NodeAddr::from_ipv6(ip) else {
            return Err((Reply::NetworkUnreachable, ControlError::NotOverlay(ip)));
        };
        if self.node.trusted_peer_at(addr).is_none() {
            return Err((Reply::NotAllowed, ControlError::NotTrusted(addr)));
        }
        let Some((stack, _)) = &mut self.out.stack else {
            return Err((Reply::GeneralFailure, ControlError::NotUserspace));
        };
        stack
            .connect(SocketAddrV6::new(ip, port, 0, 0), Instant::now())
            .map_err(|e| (Reply::GeneralFailure, e.into()))
    }

    /// Lists (and clears) the inbox off the loop: it reads files.
    pub(super) fn inbox(
        &self,
        clear: bool,
        reply: oneshot::Sender<Result<InboxReply, ControlError>>,
    ) {
        let inbox = self.inbox.clone();
        tokio::task::spawn_blocking(move || {
            let Ok(mut inbox) = inbox.lock() else {
                let _ = reply.send(Err(ControlError::InboxUnavailable));
                return;
            };
            let messages = inbox.list();
            let cleared = if clear {
                match inbox.clear() {
                    Ok(n) => Some(n),
                    Err(e) => {
                        let _ = reply.send(Err(ControlError::ClearInbox(e)));
                        return;
                    }
                }
            } else {
                None
            };
            let _ = reply.send(Ok(InboxReply { messages, cleared }));
        });
    }

    pub(super) fn on_command(&mut self, command: Command) {
        match command {
            Command::OpenStream { target, reply } => {
                let _ = reply.send(self.open_stream(target));
            }
            Command::SenderOf { ip, reply } => {
                let _ = reply.send(self.sender_of(ip));
            }
            Command::Inbox { clear, reply } => self.inbox(clear, reply),
            Command::ReleaseName(reply) => self.release_name(reply),
            Command::PortMapping { status, mapped } => {
                self.node.set_port_mapping(status, mapped, Instant::now())
            }
            Command::Info(reply) => {
                let _ = reply.send(self.info());
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.node.peers(Instant::now()).collect());
            }
            Command::Ping { peer, reply } => {
                let _ = reply.send(self.start_ping(&peer));
            }
            Command::NetCheck(reply) => {
                let _ = reply.send(self.node.net_status(Instant::now()));
            }
            Command::Resolve { name, reply } => self.resolve(name, reply),
            Command::Trust { verb, peer, reply } => {
                let _ = reply.send(self.trust_verb(verb, peer));
            }
            Command::TrustList(reply) => {
                let _ = reply.send(self.trust_list());
            }
            Command::Pending(reply) => {
                let now_ms = self.node.wall_ms(Instant::now());
                let pending = self
                    .node
                    .trust()
                    .incoming(now_ms)
                    .map(|i| RequestInfo {
                        peer: self.peer_ref(i.request.requester, i.from_name.clone()),
                        justification: i.request.justification.clone(),
                        issued_ms: i.request.issued_ms,
                        age_secs: Some(now_ms.saturating_sub(i.request.issued_ms) / 1000),
                        status: "pending".into(),
                        reason: None,
                    })
                    .collect();
                let _ = reply.send(pending);
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Metrics(reply) => {
                let _ = reply.send(self.metrics());
            }
        }
    }

    pub(super) fn peer_ref(&self, key: NodeKey, hostname: Option<Hostname>) -> PeerRef {
        let hostname = hostname.or_else(|| self.node.trust().name_of(&key).cloned());
        PeerRef::new(key, hostname)
    }

    /// Starts releasing this node's hostname; `reply` is answered by [`Self::name_released`].
    pub(super) fn release_name(
        &mut self,
        reply: oneshot::Sender<Result<ReleasedName, ControlError>>,
    ) {
        match self.node.release_name(Instant::now()) {
            Ok(name) => {
                tracing::info!("releasing hostname {name} at the rendezvous");
                self.release_waiter = Some(reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    pub(super) fn name_released(&mut self, name: Hostname, outcome: ReleaseOutcome) {
        let answer = match outcome {
            ReleaseOutcome::Released => {
                tracing::info!("hostname {name} released: this node no longer claims it");
                self.update_hosts_file();
                Ok(ReleasedName {
                    hostname: name.to_string(),
                })
            }
            ReleaseOutcome::NotHeld => Err(ControlError::NameNotHeld(name.clone())),
            ReleaseOutcome::Unconfirmed => {
                let blame = self.rendezvous_blame(Instant::now());
                let why = blame.map_or_else(String::new, |b| format!(" ({b})"));
                Err(ControlError::ReleaseUnconfirmed {
                    name: name.clone(),
                    why,
                })
            }
        };
        if let Err(e) = &answer {
            tracing::warn!("release of hostname {name}: {e}");
        }
        if let Some(waiter) = self.release_waiter.take() {
            let _ = waiter.send(answer);
        }
    }

    /// A peer named by key, address or hostname: from what this node knows, else asked of
    /// the rendezvous (the answer arrives as `Event::LookupDone`).
    pub(super) fn resolve(
        &mut self,
        name: String,
        reply: oneshot::Sender<Result<PeerRef, ControlError>>,
    ) {
        let query = match self.resolve_local(&name) {
            Ok(Ok(key)) => {
                let _ = reply.send(Ok(self.peer_ref(key, None)));
                return;
            }
            Ok(Err(query)) => query,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        match self.node.lookup(query, Instant::now()) {
            Ok(id) => {
                self.resolve_waiters.retain(|_, (_, w)| !w.is_closed());
                self.resolve_waiters.insert(id, (name, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(ControlError::CannotAsk { name, source: e }));
            }
        }
    }

    /// `Ok(Ok(key))` when known here, `Ok(Err(query))` when the rendezvous must be asked.
    pub(super) fn resolve_local(&self, name: &str) -> Result<Result<NodeKey, Query>, ControlError> {
        if let Ok(key) = name.parse::<NodeKey>() {
            return Ok(Ok(key));
        }
        if let Ok(addr) = name.parse::<NodeAddr>() {
            return Ok(self
                .known_keys()
                .find(|k| k.address() == addr)
                .ok_or(Query::Address(addr)));
        }
        if let Ok(host) = Hostname::parse_user(name) {
            if self.node.hostname() == Some(&host) {
                return Ok(Ok(self.node.key()));
            }
            if let Some((holder, other)) = self.node.trust().contested(&host) {
                return Err(ControlError::Ambiguous {
                    name: host,
                    holder,
                    other,
                });
            }
            return Ok(self.node.trust().key_named(&host).ok_or(Query::Name(host)));
        }
        Err(ControlError::NotAPeerName(name.to_owned()))
    }

    /// Every key this node has heard of: peers, requests both ways, approvals, names.
    pub(super) fn known_keys(&self) -> impl Iterator<Item = NodeKey> + '_ {
        let trust = self.node.trust();
        let now_ms = self.node.wall_ms(Instant::now());
        self.node
            .peer_keys()
            .chain(trust.outgoing().map(|o| o.request.target))
            .chain(trust.incoming(now_ms).map(|i| i.request.requester))
            .chain(trust.approved())
            .chain(trust.names().map(|(k, _)| *k))
    }

    pub(super) fn trust_verb(
        &mut self,
        verb: TrustVerb,
        peer: NodeKey,
    ) -> Result<serde_json::Value, ControlError> {
        let now = Instant::now();
        let peer_ref = self.peer_ref(peer, None);
        let done = match verb {
            TrustVerb::Handshake(justification) => {
                let outcome = self.node.handshake(peer, &justification, now)?;
                let reply = HandshakeReply {
                    peer: peer_ref,
                    outcome,
                    already_trusted: outcome == HandshakeOutcome::AlreadyTrusted,
                };
                return Ok(serde_json::to_value(reply).expect("serializes"));
            }
            TrustVerb::Approve => self.node.approve(peer, now),
            TrustVerb::Reject(reason) => self.node.reject(peer, &reason, now),
            TrustVerb::Untrust => self.node.untrust(peer, now),
        };
        done?;
        Ok(serde_json::json!({ "peer": peer_ref }))
    }

    pub(super) fn start_ping(
        &mut self,
        peer: &str,
    ) -> Result<oneshot::Receiver<PingReply>, ControlError> {
        let addr = match self.resolve_local(peer)? {
            Ok(key) => key.address(),
            Err(Query::Address(addr)) => addr,
            Err(_) => return Err(ControlError::NotTrustedName(peer.to_owned())),
        };
        // Forget waiters whose pilotctl gave up.
        self.ping_waiters.retain(|_, w| !w.is_closed());
        self.ping_seq = self.ping_seq.wrapping_add(1);
        self.node.ping(addr, self.ping_seq, Instant::now())?;
        let (tx, rx) = oneshot::channel();
        self.ping_waiters.insert(self.ping_seq, tx);
        Ok(rx)
    }
}
