//! The real `pilotd rendezvous` on 127.0.0.1 (random free ports, no root), spoken to over
//! UDP with hand-sealed envelopes and hand-signed trust statements.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pilot::addr::Hostname;
use pilot::identity::{Identity, NodeKey};
use pilot::wire::control::{write_relay, Found, Message, Query, RefusalCode, RELAY_FROM, RELAY_TO};
use pilot::wire::envelope::{open, seal};
use pilot::wire::trust::{Statement, TrustRecord, TrustRequest};
use pilot_lab::postgres::Cluster;

const PILOTD: &str = env!("CARGO_BIN_EXE_pilotd");
/// How long a silence must last to count as "no reply".
const QUIET: Duration = Duration::from_millis(300);

fn temp(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pilot-rdv-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A running `pilotd rendezvous` and what it said about itself at start.
struct Rendezvous {
    child: Child,
    key: NodeKey,
    main: SocketAddr,
    alt: SocketAddr,
    /// Where `--metrics` listens, if it was given.
    metrics: Option<SocketAddr>,
    /// Where `--tcp-listen` accepts TLS streams, if it was given.
    streams: Option<SocketAddr>,
    log: mpsc::Receiver<String>,
}

impl Rendezvous {
    fn start(dir: &Path, args: &[&str]) -> Rendezvous {
        Rendezvous::start_with_env(dir, args, &[])
    }

    fn start_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Rendezvous {
        let mut child = Command::new(PILOTD)
            .args(["--log-level", "info", "rendezvous", "--data-dir"])
            .arg(dir)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, log) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = wait_for(&log, "rendezvous listening", Duration::from_secs(20));
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name} in `{line}`"))
                .to_owned()
        };
        let port = |name: &str| -> u16 { field(name).parse().unwrap() };
        Rendezvous {
            key: field("public_key").parse().unwrap(),
            main: SocketAddr::from(([127, 0, 0, 1], port("main_port"))),
            alt: SocketAddr::from(([127, 0, 0, 1], port("alt_port"))),
            metrics: field("metrics").parse().ok(),
            streams: field("streams").parse().ok(),
            child,
            log,
        }
    }

    /// SIGTERM, then the counters it logs on the way out.
    fn stop(mut self) -> String {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let counters = wait_for(&self.log, "counters at exit:", Duration::from_secs(10));
        assert!(self.child.wait().unwrap().success());
        counters
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `message` signed by `identity`, dated now.
fn sealed(identity: &Identity, nonce: u64, message: &Message) -> Vec<u8> {
    let mut body = Vec::new();
    message.encode(&mut body);
    let mut buf = vec![0u8; 1500];
    let key = identity.signing_key();
    let n = seal(&mut buf, message.kind(), key, now_ms(), nonce, &body).unwrap();
    buf.truncate(n);
    buf
}

fn wait_for(log: &mpsc::Receiver<String>, needle: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no `{needle}` in the log:\n{}", seen.join("\n")),
        }
    }
}

/// A test node: one UDP socket on 127.0.0.1 and a key.
struct Client {
    sock: UdpSocket,
    identity: Identity,
    nonce: u64,
    /// The rendezvous' address cookie for this socket, once it challenged us.
    cookie: Option<[u8; 16]>,
}

impl Client {
    fn new(n: u8) -> Client {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        Client {
            sock,
            identity: Identity::from_secret_bytes(&[n; 32]),
            nonce: u64::from(std::process::id()) << 20 | u64::from(n) << 12,
            cookie: None,
        }
    }

    fn key(&self) -> NodeKey {
        self.identity.public_key()
    }

    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    fn sealed(&mut self, message: &Message) -> Vec<u8> {
        self.nonce += 1;
        sealed(&self.identity, self.nonce, message)
    }

    fn send(&self, datagram: &[u8], to: SocketAddr) {
        self.sock.send_to(datagram, to).unwrap();
    }

    fn recv(&self, wait: Duration) -> Option<(SocketAddr, Vec<u8>)> {
        self.sock.set_read_timeout(Some(wait)).unwrap();
        let mut buf = vec![0u8; 65535];
        let (n, from) = self.sock.recv_from(&mut buf).ok()?;
        buf.truncate(n);
        Some((from, buf))
    }

    /// The next signed message, checked to come from the rendezvous' key.
    fn expect(&self, rdv: &Rendezvous) -> (SocketAddr, Message) {
        let (from, datagram) = self.recv(Duration::from_secs(3)).expect("a reply");
        let opened = open(&datagram).expect("a signed reply");
        assert_eq!(opened.sender, rdv.key);
        (from, Message::decode(opened.kind, opened.body).unwrap())
    }

    fn assert_quiet(&self, what: &str) {
        if let Some((from, d)) = self.recv(QUIET) {
            panic!("{what}: unexpected datagram from {from}: {d:?}");
        }
    }

    /// Sends a signed message to the main port and returns the answer.
    fn ask(&mut self, rdv: &Rendezvous, message: &Message) -> Message {
        let d = self.sealed(message);
        self.send(&d, rdv.main);
        let (from, reply) = self.expect(rdv);
        assert_eq!(from, rdv.main);
        reply
    }

    /// A first contact claiming `name`, which another key holds: refused `NameTaken`.
    fn is_refused_the_name(&mut self, rdv: &Rendezvous, name: &str) {
        let Message::Challenge { cookie, .. } = self.ask(rdv, &self.register_message(&[], None))
        else {
            panic!("a first contact is challenged")
        };
        self.cookie = Some(cookie);
        let taken = self.ask(rdv, &self.register_message(&[], Some(name)));
        assert!(
            matches!(
                taken,
                Message::Refused {
                    code: RefusalCode::NameTaken,
                    ..
                }
            ),
            "{taken:?}"
        );
    }

    /// A registration as a node sends it: with the cookie, once challenged.
    fn register_message(&self, lan: &[&str], hostname: Option<&str>) -> Message {
        Message::Register {
            lan: lan.iter().map(|s| s.parse().unwrap()).collect(),
            hostname: hostname.map(|h| h.parse().unwrap()),
            cookie: self.cookie,
            trust_digest: 0,
        }
    }

    /// Registers, answering a first `Challenge` (a new endpoint) with its cookie as a node
    /// does.
    fn register(&mut self, rdv: &Rendezvous, lan: &[&str], hostname: Option<&str>) {
        let mut reply = self.ask(rdv, &self.register_message(lan, hostname));
        if let Message::Challenge { cookie, .. } = reply {
            self.cookie = Some(cookie);
            reply = self.ask(rdv, &self.register_message(lan, hostname));
        }
        assert!(
            matches!(
                reply,
                Message::Registered { echo, observed, keepalive_secs: 25, .. }
                    if echo == self.nonce && observed == self.addr()
            ),
            "{reply:?}"
        );
    }

    /// Submits a statement and checks it was stored.
    fn submit(&mut self, rdv: &Rendezvous, statement: &Statement) {
        let msg = Message::Submit {
            statement: statement.clone(),
        };
        let reply = self.ask(rdv, &msg);
        assert_eq!(reply, Message::Stored { echo: self.nonce });
    }

    /// The next message, which must be a delivery: its id, sender's name and statement.
    fn delivery(&self, rdv: &Rendezvous) -> (u64, Option<Hostname>, Statement) {
        match self.expect(rdv) {
            (
                _,
                Message::Deliver {
                    id,
                    from_name,
                    statement,
                },
            ) => (id, from_name, statement),
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    fn ack(&mut self, rdv: &Rendezvous, id: u64) {
        let d = self.sealed(&Message::Ack { id });
        self.send(&d, rdv.main);
    }

    fn relay_to(&self, rdv: &Rendezvous, dst: &NodeKey, datagram: &[u8]) {
        let mut frame = vec![0u8; 1500];
        let n = write_relay(&mut frame, RELAY_TO, dst, datagram).unwrap();
        self.send(&frame[..n], rdv.main);
    }
}

#[test]
fn serves_registration_nat_probes_punches_and_relay_and_survives_kill_9() {
    let dir = temp("main");
    let rdv = Rendezvous::start(&dir, &["--listen", "127.0.0.1:0"]);
    let (mut a, mut b, mut c) = (Client::new(1), Client::new(2), Client::new(3));
    a.register(&rdv, &["192.0.2.1:51870"], Some("alice"));
    b.register(&rdv, &["192.0.2.2:51870", "[2001:db8::2]:51870"], None);
    c.register(&rdv, &[], None);

    // a and b trust each other: b approves, a countersigns, each delivery is acknowledged.
    let half = TrustRecord::approve(b.identity.signing_key(), a.key(), now_ms()).unwrap();
    b.submit(&rdv, &Statement::Record(half.clone()));
    let (id, from_name, delivered) = a.delivery(&rdv);
    assert_eq!(delivered, Statement::Record(half.clone()));
    assert_eq!(from_name, None, "b has no hostname");
    a.ack(&rdv, id);
    let complete = half
        .countersign(a.identity.signing_key(), now_ms())
        .unwrap();
    a.submit(&rdv, &Statement::Record(complete.clone()));
    let (id, from_name, delivered) = b.delivery(&rdv);
    assert_eq!(delivered, Statement::Record(complete));
    assert_eq!(from_name, Some("alice".parse().unwrap()));
    b.ack(&rdv, id);

    // Both ports answer NAT probes from themselves, naming their own port.
    for to in [rdv.main, rdv.alt] {
        let d = a.sealed(&Message::NatProbe);
        a.send(&d, to);
        let (from, reply) = a.expect(&rdv);
        assert_eq!(from, to);
        assert_eq!(
            reply,
            Message::NatProbeReply {
                echo: a.nonce,
                observed: a.addr(),
                port: to.port()
            }
        );
    }

    // Relay between a trusting pair, and not between a and c (no record).
    a.relay_to(&rdv, &b.key(), b"\x04wireguard");
    let (from, frame) = b.recv(Duration::from_secs(3)).expect("relayed frame");
    assert_eq!(from, rdv.main);
    assert_eq!(frame[0], RELAY_FROM);
    assert_eq!(&frame[1..33], &a.key().0);
    assert_eq!(&frame[33..], b"\x04wireguard");
    a.relay_to(&rdv, &c.key(), b"\x04not for c");
    c.relay_to(&rdv, &a.key(), b"\x04not for a");
    c.assert_quiet("relay to c");
    a.assert_quiet("relay to a");

    // kill -9, then a restart on the same directory and ports: the same key, and a and b are
    // still registered (nobody registers again).
    let (main, alt) = (rdv.main.port().to_string(), rdv.alt.port().to_string());
    let key = rdv.key;
    drop(rdv);
    let rdv = Rendezvous::start(
        &dir,
        &["--listen", &format!("127.0.0.1:{main}"), "--alt-port", &alt],
    );
    assert_eq!(rdv.key, key, "identity kept");
    let d = a.sealed(&Message::Connect { target: b.key() });
    a.send(&d, rdv.main);
    let (_, to_a) = a.expect(&rdv);
    let expected_b: Vec<SocketAddr> = [
        b.addr(),
        "192.0.2.2:51870".parse().unwrap(),
        "[2001:db8::2]:51870".parse().unwrap(),
    ]
    .to_vec();
    assert!(
        matches!(&to_a, Message::Punch { peer, candidates, .. } if *peer == b.key() && *candidates == expected_b),
        "{to_a:?}"
    );
    let (from, to_b) = b.expect(&rdv);
    assert_eq!(from, rdv.main);
    let expected_a = vec![a.addr(), "192.0.2.1:51870".parse().unwrap()];
    assert!(
        matches!(&to_b, Message::Punch { peer, candidates, .. } if *peer == a.key() && *candidates == expected_a),
        "{to_b:?}"
    );
    // Relaying works from the restored registrations too.
    b.relay_to(&rdv, &a.key(), b"\x04again");
    assert_eq!(
        a.recv(Duration::from_secs(3)).unwrap().1[33..],
        *b"\x04again"
    );

    // A replayed registration and a forged one get no answer, and are counted.
    let d = c.sealed(&c.register_message(&[], None));
    c.send(&d, rdv.main);
    c.expect(&rdv);
    c.send(&d, rdv.main);
    c.assert_quiet("replayed registration");
    let mut forged = c.sealed(&c.register_message(&[], Some("carol")));
    *forged.last_mut().unwrap() ^= 1;
    c.send(&forged, rdv.main);
    c.assert_quiet("forged registration");
    a.relay_to(&rdv, &c.key(), b"\x04still not for c");
    c.assert_quiet("relay to c after restart");
    // No record, no introduction.
    let reply = c.ask(&rdv, &Message::Connect { target: a.key() });
    assert!(
        matches!(
            reply,
            Message::Refused {
                code: RefusalCode::NotAllowed,
                ..
            }
        ),
        "{reply:?}"
    );
    a.assert_quiet("no punch for a");

    let counters = rdv.stop();
    for expected in [
        "registrations=1 ",
        "punches=1 ",
        "relay_frames=1 ",
        "refused_replay=1",
        "refused_bad_signature=1",
        "relay_dropped_not_allowed=1",
        "refused_not_allowed=1",
    ] {
        assert!(counters.contains(expected), "{expected} in {counters}");
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("rendezvous.db")), 0o600);
    assert_eq!(mode(&dir.join("identity.json")), 0o600);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_request_reaches_an_absent_node_after_a_restart_and_names_are_kept() {
    let dir = temp("deliver");
    let start = || Rendezvous::start(&dir, &["--listen", "127.0.0.1:0"]);
    a_request_reaches_an_absent_node_after_a_kill_9(start);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn on_postgres_a_request_reaches_an_absent_node_after_a_restart_and_names_are_kept() {
    let test = "on_postgres_a_request_reaches_an_absent_node_after_a_restart_and_names_are_kept";
    let Some(cluster) = Cluster::for_test(test, "registry") else {
        return;
    };
    let dir = temp("deliver-pg");
    let url = cluster.url("registry");
    let start = || {
        let args = ["--listen", "127.0.0.1:0", "--store", &url];
        Rendezvous::start_with_env(&dir, &args, &[("PGPASSWORD", Cluster::PASSWORD)])
    };
    a_request_reaches_an_absent_node_after_a_kill_9(start);
    // It is all in the database (and nothing in the data directory but the identity).
    assert_eq!(
        cluster
            .sql("registry", "SELECT count(*) FROM names")
            .unwrap(),
        "2"
    );
    assert!(!dir.join("rendezvous.db").exists());
    // free-name works on the database too.
    let out = Command::new(PILOTD)
        .args(["rendezvous", "free-name", "alice", "--store", &url])
        .env("PGPASSWORD", Cluster::PASSWORD)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("freed `alice`"),
        "{out:?}"
    );
    assert_eq!(
        cluster.sql("registry", "SELECT name FROM names").unwrap(),
        "bob"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn two_instances_on_one_database_act_as_one_registry() {
    let test = "two_instances_on_one_database_act_as_one_registry";
    let Some(cluster) = Cluster::for_test(test, "registry") else {
        return;
    };
    let url = cluster.url("registry");
    let (dir1, dir2) = (temp("two-pg-1"), temp("two-pg-2"));
    let args = ["--listen", "127.0.0.1:0", "--store", &url];
    let env = [("PGPASSWORD", Cluster::PASSWORD)];
    let with_metrics = [&args[..], &["--metrics", "127.0.0.1:0"]].concat();
    let one = Rendezvous::start_with_env(&dir1, &with_metrics, &env);
    let two = Rendezvous::start_with_env(&dir2, &args, &env);
    // They find each other through the database's heartbeat table.
    let metrics = one.metrics.unwrap();
    let started = Instant::now();
    let instances = loop {
        let (_, _, page) = scrape(metrics, "/metrics");
        let n = samples(&page).get("pilot_rendezvous_instances").copied();
        if n == Some(2.0) || started.elapsed() > Duration::from_secs(8) {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(instances, Some(2.0));
    let (mut a, mut b) = (Client::new(6), Client::new(7));
    a.register(&one, &[], Some("alice"));
    // b registers at the other instance claiming the same name: refused, as at one instance.
    b.is_refused_the_name(&two, "alice");
    b.register(&two, &[], Some("bob"));
    assert_eq!(names_in(&cluster), "alice,bob");
    // b finds alice, who registered at the other instance, as `pilotctl resolve` asks.
    let query = Query::Name("alice".parse().unwrap());
    let found = b.ask(&two, &Message::Lookup { query });
    assert!(
        matches!(&found, Message::LookupReply { found: Some(f), .. } if f.key == a.key()),
        "{found:?}"
    );
    // Trust across instances: a asks at one, b (registered at two) gets it from two, b's
    // approval at two reaches a at one, and the record a completes at one reaches b.
    let signer = |c: &Client| c.identity.signing_key().clone();
    let ask = TrustRequest::sign(&signer(&a), b.key(), now_ms(), 1, "backups").unwrap();
    a.submit(&one, &Statement::Request(ask.clone()));
    let (id, _, delivered) = b.delivery(&two);
    assert_eq!(delivered, Statement::Request(ask));
    b.ack(&two, id);
    let half = TrustRecord::approve(&signer(&b), a.key(), now_ms()).unwrap();
    b.submit(&two, &Statement::Record(half.clone()));
    let (id, _, delivered) = a.delivery(&one);
    assert_eq!(delivered, Statement::Record(half.clone()));
    a.ack(&one, id);
    let record = Statement::Record(half.countersign(&signer(&a), now_ms()).unwrap());
    a.submit(&one, &record);
    let (id, _, delivered) = b.delivery(&two);
    assert_eq!(delivered, record);
    b.ack(&two, id);
    // a asks one for b, registered at two: one answers a, and two sends b the other half.
    let punch = a.ask(&one, &Message::Connect { target: b.key() });
    assert!(
        matches!(&punch, Message::Punch { peer, candidates, .. }
            if *peer == b.key() && candidates.first() == Some(&b.addr())),
        "{punch:?}"
    );
    let (from, punch) = b.expect(&two);
    assert_eq!(from, two.main);
    assert!(
        matches!(&punch, Message::Punch { peer, candidates, .. }
            if *peer == a.key() && candidates.first() == Some(&a.addr())),
        "{punch:?}"
    );
    // Relay across instances: a relays to one, which forwards to two, which relays to b;
    // b's answer goes back the same way. (The first frame waits for one to read where b is.)
    let relayed_from = |to: &Client, rdv: &Rendezvous, sender: &Client| {
        let (from, frame) = to.recv(Duration::from_secs(1))?;
        assert_eq!(from, rdv.main);
        assert_eq!((frame[0], &frame[1..33]), (RELAY_FROM, &sender.key().0[..]));
        Some(frame[33..].to_vec())
    };
    let got = (0..5).find_map(|_| {
        a.relay_to(&one, &b.key(), b"\x04across");
        relayed_from(&b, &two, &a)
    });
    assert_eq!(got.as_deref(), Some(&b"\x04across"[..]));
    b.relay_to(&two, &a.key(), b"\x04back");
    assert_eq!(
        relayed_from(&a, &one, &b).as_deref(),
        Some(&b"\x04back"[..])
    );
    let counters = two.stop();
    assert!(counters.contains("refused_name_taken=1"), "{counters}");
    assert!(counters.contains("relay_forwarded_bytes="), "{counters}");
    assert!(!counters.contains("relay_forwarded_bytes=0 "), "{counters}");
    // The request, the record and its delivery to b.
    assert!(counters.contains("statements_shared=3"), "{counters}");
    drop(one);
    std::fs::remove_dir_all(&dir1).unwrap();
    std::fs::remove_dir_all(&dir2).unwrap();
}

#[test]
fn with_its_database_stopped_an_instance_serves_what_it_holds_and_catches_up_after() {
    let test = "with_its_database_stopped_an_instance_serves_what_it_holds_and_catches_up_after";
    let Some(mut cluster) = Cluster::for_test(test, "registry") else {
        return;
    };
    let url = cluster.url("registry");
    let dir = temp("pg-down");
    let args = ["--listen", "127.0.0.1:0", "--store", &url];
    let rdv = Rendezvous::start_with_env(&dir, &args, &[("PGPASSWORD", Cluster::PASSWORD)]);
    let (mut a, mut b) = (Client::new(8), Client::new(9));
    a.register(&rdv, &[], Some("alice"));
    cluster.stop().unwrap();
    // A known node's refresh changes nothing stored (its time is written lazily): answered.
    a.register(&rdv, &[], Some("alice"));
    let found = a.ask(
        &rdv,
        &Message::Lookup {
            query: Query::Name("alice".parse().unwrap()),
        },
    );
    assert!(
        matches!(found, Message::LookupReply { found: Some(_), .. }),
        "{found:?}"
    );
    // A new node needs a write: no answer (nodes retry), and the refusal is counted.
    let Message::Challenge { cookie, .. } = b.ask(&rdv, &b.register_message(&[], None)) else {
        panic!("a first contact is challenged")
    };
    b.cookie = Some(cookie);
    let d = b.sealed(&b.register_message(&[], Some("bob")));
    b.send(&d, rdv.main);
    b.assert_quiet("a registration that could not be written");
    // The database is back: the next try is written and answered.
    cluster.restart().unwrap();
    b.register(&rdv, &[], Some("bob"));
    assert_eq!(names_in(&cluster), "alice,bob");
    let counters = rdv.stop();
    assert!(counters.contains("refused_store_failed=1"), "{counters}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The hostnames in the cluster's registry, in order, comma-separated.
fn names_in(cluster: &Cluster) -> String {
    let sql = "SELECT string_agg(name, ',' ORDER BY name) FROM names";
    cluster.sql("registry", sql).unwrap()
}

/// A node submits a trust request for one that is not registered; the rendezvous is killed
/// with -9 right after answering `Stored` and started again on the same registry; the other
/// node registers and gets the request, and the first keeps its name.
fn a_request_reaches_an_absent_node_after_a_kill_9(start: impl Fn() -> Rendezvous) {
    let rdv = start();
    let (mut a, mut b) = (Client::new(4), Client::new(5));
    a.register(&rdv, &[], Some("alice"));
    let ask =
        TrustRequest::sign(a.identity.signing_key(), b.key(), now_ms(), 1, "backups").unwrap();
    a.submit(&rdv, &Statement::Request(ask.clone()));

    // kill -9 and a restart on the same registry.
    drop(rdv);
    let rdv = start();
    b.is_refused_the_name(&rdv, "alice");
    b.register(&rdv, &[], Some("bob"));
    let (id, from_name, statement) = b.delivery(&rdv);
    assert_eq!(statement, Statement::Request(ask));
    assert_eq!(from_name, Some("alice".parse().unwrap()));
    // Not acknowledged: it comes again about two seconds later, from the timer.
    let started = Instant::now();
    assert_eq!(b.delivery(&rdv).0, id);
    assert!(
        started.elapsed() > Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    b.ack(&rdv, id);
    b.assert_quiet("acknowledged");
    std::thread::sleep(Duration::from_millis(2500));
    b.assert_quiet("acknowledged");

    let reply = b.ask(
        &rdv,
        &Message::Lookup {
            query: Query::Name("alice".parse().unwrap()),
        },
    );
    assert_eq!(
        reply,
        Message::LookupReply {
            echo: b.nonce,
            found: Some(Found {
                key: a.key(),
                hostname: Some("alice".parse().unwrap())
            })
        }
    );
    let counters = rdv.stop();
    for expected in [
        "deliveries=2 ",
        "acks=1 ",
        "lookups=1 ",
        "refused_name_taken=1",
    ] {
        assert!(counters.contains(expected), "{expected} in {counters}");
    }
}

#[test]
fn an_unreadable_registry_stops_the_start_and_is_kept() {
    let dir = temp("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let db = dir.join("rendezvous.db");
    let junk = b"not a database at all ".repeat(50);
    std::fs::write(&db, &junk).unwrap();
    let out = Command::new(PILOTD)
        .args(["rendezvous", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rendezvous.db") && err.contains("corrupt"),
        "{err}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), junk, "never wiped");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `GET path` on the metrics endpoint: the status line, the headers, the body.
fn scrape(addr: SocketAddr, path: &str) -> (String, Vec<String>, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    let mut lines = head.split("\r\n").map(str::to_owned);
    let status = lines.next().unwrap();
    (status, lines.collect(), body.to_owned())
}

/// The samples of a metrics page: `name{labels}` → value.
fn samples(page: &str) -> std::collections::BTreeMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

#[test]
fn the_metrics_endpoint_counts_registrations_and_refusals() {
    let dir = temp("metrics");
    // --log-level after the subcommand overrides the one before it.
    let rdv = Rendezvous::start(
        &dir,
        &[
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--log-level",
            "debug",
        ],
    );
    let addr = rdv
        .metrics
        .expect("the start line names the metrics address");
    let mut a = Client::new(6);
    a.register(&rdv, &[], Some("metrics-a"));
    let line = wait_for(&rdv.log, "registered node=", Duration::from_secs(5));
    assert!(line.contains("DEBUG"), "{line}");
    assert!(
        !line.contains('\x1b'),
        "no colours without a terminal: {line:?}"
    );
    // A replay: refused and counted by reason.
    let d = a.sealed(&Message::NatProbe);
    a.send(&d, rdv.main);
    a.expect(&rdv);
    a.send(&d, rdv.main);
    a.assert_quiet("replayed probe");

    let (status, headers, body) = scrape(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers
            .iter()
            .any(|h| h == "Content-Type: text/plain; version=0.0.4"),
        "{headers:?}"
    );
    let m = samples(&body);
    let get = |series: &str| {
        *m.get(series)
            .unwrap_or_else(|| panic!("no {series} in\n{body}"))
    };
    assert!(get("pilot_rendezvous_registrations_total") >= 1.0);
    assert_eq!(get("pilot_rendezvous_registered_nodes"), 1.0);
    assert_eq!(get("pilot_rendezvous_nat_probes_total"), 1.0);
    assert_eq!(
        get(r#"pilot_rendezvous_refusals_total{reason="replay"}"#),
        1.0
    );
    assert_eq!(
        get(r#"pilot_rendezvous_relay_drops_total{reason="not_allowed"}"#),
        0.0
    );
    assert!(
        get("pilot_rendezvous_store_bytes") > 0.0,
        "the database has a size"
    );
    assert!(get("pilot_rendezvous_uptime_seconds") > 0.0);
    assert_eq!(
        get(&format!(
            r#"pilot_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert_eq!(scrape(addr, "/").0, "HTTP/1.1 404 Not Found");

    // A second rendezvous cannot have the same metrics address: it says so and stops.
    let other = temp("metrics-busy");
    let out = Command::new(PILOTD)
        .args(["rendezvous", "--listen", "127.0.0.1:0", "--metrics"])
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&addr.to_string()) && err.contains("--metrics"),
        "{err}"
    );

    rdv.stop();
    let _ = std::fs::remove_dir_all(&other);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A node whose UDP is blocked: one TLS stream to the rendezvous, frames both ways.
struct StreamClient {
    tls: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    identity: Identity,
    nonce: u64,
    cookie: Option<[u8; 16]>,
}

impl StreamClient {
    /// Connects and completes TLS, accepting only the rendezvous key `pinned`.
    fn connect(to: SocketAddr, pinned: NodeKey, n: u8) -> std::io::Result<StreamClient> {
        use std::io::Write;
        let config = pilot::io::stream::client_config(Some(pinned.0)).unwrap();
        let conn = rustls::ClientConnection::new(config, pilot::io::stream::server_name()).unwrap();
        let tcp = std::net::TcpStream::connect(to)?;
        tcp.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // The handshake runs on first use.
        tls.flush()?;
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(StreamClient {
            tls,
            identity: Identity::from_secret_bytes(&[n; 32]),
            nonce: u64::from(std::process::id()) << 20 | u64::from(n) << 12,
            cookie: None,
        })
    }

    fn key(&self) -> NodeKey {
        self.identity.public_key()
    }

    fn send_frame(&mut self, datagram: &[u8]) {
        use std::io::Write;
        let mut frame = Vec::new();
        assert!(pilot::io::stream::push_frame(&mut frame, datagram));
        self.tls.write_all(&frame).unwrap();
        self.tls.flush().unwrap();
    }

    fn recv_frame(&mut self) -> Vec<u8> {
        use std::io::Read;
        let mut header = [0u8; 2];
        self.tls.read_exact(&mut header).expect("a frame");
        let mut datagram = vec![0u8; usize::from(u16::from_be_bytes(header))];
        self.tls
            .read_exact(&mut datagram)
            .expect("the frame's bytes");
        datagram
    }

    /// Sends a signed message down the stream (no answer awaited).
    fn tell(&mut self, message: &Message) {
        self.nonce += 1;
        let datagram = sealed(&self.identity, self.nonce, message);
        self.send_frame(&datagram);
    }

    fn ask(&mut self, rdv: &Rendezvous, message: &Message) -> Message {
        self.tell(message);
        self.expect(rdv)
    }

    fn expect(&mut self, rdv: &Rendezvous) -> Message {
        let datagram = self.recv_frame();
        let opened = open(&datagram).expect("a signed reply");
        assert_eq!(opened.sender, rdv.key);
        Message::decode(opened.kind, opened.body).unwrap()
    }

    fn register(&mut self, rdv: &Rendezvous) -> SocketAddr {
        for _ in 0..2 {
            let msg = Message::Register {
                lan: vec![],
                hostname: None,
                cookie: self.cookie,
                trust_digest: 0,
            };
            match self.ask(rdv, &msg) {
                Message::Challenge { cookie, .. } => self.cookie = Some(cookie),
                Message::Registered { observed, .. } => return observed,
                other => panic!("{other:?}"),
            }
        }
        panic!("challenged twice")
    }
}

#[test]
fn a_node_whose_udp_is_blocked_registers_trusts_and_is_relayed_over_tls() {
    let dir = temp("streams");
    let rdv = Rendezvous::start(
        &dir,
        &["--listen", "127.0.0.1:0", "--tcp-listen", "127.0.0.1:0"],
    );
    let streams = rdv.streams.expect("streams listening");

    // A TLS server with another key is not the rendezvous: the handshake fails.
    let impostor = Identity::from_secret_bytes(&[0x66; 32]).public_key();
    assert!(StreamClient::connect(streams, impostor, 9).is_err());

    let mut b = StreamClient::connect(streams, rdv.key, 2).unwrap();
    let observed = b.register(&rdv);
    assert!(
        observed.to_string().starts_with("[100::"),
        "a stream's endpoint: {observed}"
    );
    let mut a = Client::new(1);
    a.register(&rdv, &[], None);

    // Trust over both transports: b approves over its stream, a countersigns over UDP.
    let half = TrustRecord::approve(b.identity.signing_key(), a.key(), now_ms()).unwrap();
    let stored = b.ask(
        &rdv,
        &Message::Submit {
            statement: Statement::Record(half.clone()),
        },
    );
    assert_eq!(stored, Message::Stored { echo: b.nonce });
    let (id, _, _) = a.delivery(&rdv);
    a.ack(&rdv, id);
    let complete = half
        .countersign(a.identity.signing_key(), now_ms())
        .unwrap();
    a.submit(&rdv, &Statement::Record(complete));
    let Message::Deliver { id, .. } = b.expect(&rdv) else {
        panic!("b gets the record down its stream")
    };
    b.tell(&Message::Ack { id });

    // Relayed both ways: UDP in, down the stream; up the stream, out over UDP.
    a.relay_to(&rdv, &b.key(), b"\x04to b");
    let frame = b.recv_frame();
    assert_eq!(
        (frame[0], &frame[1..33], &frame[33..]),
        (RELAY_FROM, &a.key().0[..], &b"\x04to b"[..])
    );
    let mut frame = vec![0u8; 64];
    let n = write_relay(&mut frame, RELAY_TO, &a.key(), b"\x04to a").unwrap();
    b.send_frame(&frame[..n]);
    let (from, frame) = a.recv(Duration::from_secs(3)).expect("relayed over UDP");
    assert_eq!(from, rdv.main);
    assert_eq!(
        (frame[0], &frame[1..33], &frame[33..]),
        (RELAY_FROM, &b.key().0[..], &b"\x04to a"[..])
    );

    // A frame from an endpoint nobody registered goes nowhere. (That UDP cannot pose as a
    // stream's endpoint, 100::/64, is the server's unit tests': loopback cannot send from it.)
    let spoof = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut frame = vec![0u8; 64];
    let n = write_relay(&mut frame, RELAY_TO, &a.key(), b"\x04spoofed").unwrap();
    spoof.send_to(&frame[..n], rdv.main).unwrap();
    a.assert_quiet("a frame from an unregistered UDP endpoint");

    let counters = rdv.stop();
    assert!(counters.contains("stream_drops=0"), "{counters}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `cargo test --release --test rendezvous memory_per_stream -- --ignored --nocapture`:
/// the rendezvous' RSS with this many idle TLS stream connections open (from 250 loopback
/// addresses, within the per-address limits).
#[test]
#[ignore = "a measurement: run it by name"]
fn memory_per_stream_connection() {
    const CONNECTIONS: usize = 2_000;
    let dir = temp("stream-memory");
    let rdv = Rendezvous::start(
        &dir,
        &["--listen", "127.0.0.1:0", "--tcp-listen", "127.0.0.1:0"],
    );
    let to = rdv.streams.unwrap();
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", rdv.child.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap()
            .to_owned();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let before = rss();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = pilot::io::stream::client_config(Some(rdv.key.0)).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut held = Vec::new();
    let started = Instant::now();
    for i in 0..CONNECTIONS {
        // 8 per address: within the per-address burst and connection limit.
        let local = std::net::Ipv4Addr::new(127, 1, (i / 8 / 250) as u8, (i / 8 % 250 + 1) as u8);
        let tls = rt.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::from((local, 0))).unwrap();
            let tcp = socket.connect(to).await.unwrap();
            connector
                .connect(pilot::io::stream::server_name(), tcp)
                .await
                .expect("the handshake")
        });
        held.push(tls);
    }
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let after = rss();
    println!(
        "{CONNECTIONS} idle TLS streams in {:.1} s: rendezvous RSS {before} -> {after} KiB, \
         {:.1} KiB per connection",
        elapsed.as_secs_f64(),
        (after - before) as f64 / CONNECTIONS as f64
    );
    drop(held);
    rdv.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_instance_started_on_an_older_database_migrates_it_and_serves_what_it_held() {
    let test = "an_instance_started_on_an_older_database_migrates_it_and_serves_what_it_held";
    let Some(cluster) = Cluster::for_test(test, "registry") else {
        return;
    };
    // The database as the last release left it (schema 2), holding a node with a name.
    let old = Client::new(9);
    let key = old
        .key()
        .0
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let seen = now_ms();
    let v2 = [
        "CREATE TABLE pilot_schema (version integer NOT NULL)".to_owned(),
        "INSERT INTO pilot_schema VALUES (2)".to_owned(),
        "CREATE TABLE registrations (key bytea PRIMARY KEY CHECK (length(key) = 32), \
         observed text NOT NULL, lan text NOT NULL, nat text NOT NULL, \
         first_seen_ms bigint NOT NULL, last_seen_ms bigint NOT NULL)"
            .to_owned(),
        "CREATE TABLE names (name text PRIMARY KEY, key bytea NOT NULL UNIQUE \
         CHECK (length(key) = 32))"
            .to_owned(),
        "CREATE TABLE ledger (low bytea NOT NULL, high bytea NOT NULL, statement bytea NOT NULL, \
         PRIMARY KEY (low, high))"
            .to_owned(),
        "CREATE TABLE outbox (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         target bytea NOT NULL, statement bytea NOT NULL, stored_ms bigint NOT NULL)"
            .to_owned(),
        "CREATE TABLE instances (key bytea PRIMARY KEY, main text NOT NULL, \
         alt_port integer NOT NULL, incarnation bigint NOT NULL, beat_ms bigint NOT NULL)"
            .to_owned(),
        format!(
            "INSERT INTO registrations VALUES (decode('{key}', 'hex'), '192.0.2.9:4000', '', \
             'none', {seen}, {seen})"
        ),
        format!("INSERT INTO names VALUES ('old-timer', decode('{key}', 'hex'))"),
    ];
    for sql in &v2 {
        cluster.sql("registry", sql).unwrap();
    }
    let dir = temp("migrate-pg");
    let url = cluster.url("registry");
    let env = [("PGPASSWORD", Cluster::PASSWORD)];
    let rdv = Rendezvous::start_with_env(&dir, &["--listen", "127.0.0.1:0", "--store", &url], &env);
    assert_eq!(
        cluster
            .sql("registry", "SELECT version FROM pilot_schema")
            .unwrap(),
        "3"
    );
    // What it held is served: the name resolves, and is still taken.
    let mut asker = Client::new(10);
    asker.register(&rdv, &[], None);
    let query = Query::Name("old-timer".parse().unwrap());
    let found = asker.ask(&rdv, &Message::Lookup { query });
    assert!(
        matches!(&found, Message::LookupReply { found: Some(f), .. } if f.key == old.key()),
        "{found:?}"
    );
    let mut squatter = Client::new(11);
    squatter.is_refused_the_name(&rdv, "old-timer");
    drop(rdv);
    std::fs::remove_dir_all(&dir).unwrap();
}
