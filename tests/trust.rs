//! Bilateral trust and names on the real kernel: nodes behind nftables NATs
//! (the NAT lab (`crates/pilot-lab`)), a real rendezvous, and the `pilotctl` verbs a user types. Needs root.

mod lab;

use std::fs;
use std::time::Duration;

use lab::{ctl, eventually, ns_exec, Lab, NodeHandle};

const RDV: &str = "203.0.113.10:7000";

/// A natlab topology with the rendezvous running; nodes are made but not started.
struct World {
    lab: Lab,
    name: String,
    rendezvous: String,
    rendezvous_index: usize,
    a: NodeHandle,
    b: NodeHandle,
}

fn world(nat1: &str, nat2: &str) -> World {
    let mut lab = Lab::new();
    let name = lab.natlab(nat1, nat2);
    let (rendezvous, rendezvous_index) = lab.rendezvous(&format!("{name}-rdv"), RDV);
    let a = lab.node(&format!("{name}-a"), "a", "");
    let b = lab.node(&format!("{name}-b"), "b", "");
    World {
        lab,
        name,
        rendezvous,
        rendezvous_index,
        a,
        b,
    }
}

impl World {
    fn start(&mut self, which: char, extra: &[&str]) {
        let mut flags = vec!["--rendezvous".to_owned(), self.rendezvous.clone()];
        flags.extend(extra.iter().map(|s| s.to_string()));
        let node = if which == 'a' {
            &mut self.a
        } else {
            &mut self.b
        };
        self.lab.start_with(node, &flags);
    }

    fn logs(&self) -> String {
        format!(
            "--- a\n{}\n--- b\n{}\n--- rendezvous\n{}",
            self.a.log_text(),
            self.b.log_text(),
            fs::read_to_string(self.lab.dir.join("rdv.log")).unwrap_or_default()
        )
    }

    /// Serves a page on b at port 8080 (started once).
    fn serve_on_b(&mut self) -> String {
        let www = self.lab.dir.join("www");
        fs::create_dir_all(&www).unwrap();
        fs::write(www.join("index.html"), "hello from b\n").unwrap();
        let ns = self.b.ns.clone();
        self.lab.spawn_in(
            &ns,
            &[
                "python3",
                "-m",
                "http.server",
                "--bind",
                "::",
                "--directory",
                www.to_str().unwrap(),
                "8080",
            ],
        );
        format!("http://[{}]:8080/index.html", self.b.address)
    }
}

fn curl(node: &NodeHandle, url: &str, secs: u32) -> Option<String> {
    let out = ns_exec(
        &node.ns,
        &["curl", "-sS", "--fail", "-m", &secs.to_string(), url],
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ping(from: &NodeHandle, to: &NodeHandle) -> bool {
    ctl(from, &["ping", "-c", "1", "-W", "1", &to.key])
        .status
        .success()
}

/// The kernel's count of packets pilotd wrote into the node's TUN.
fn tun_rx_packets(node: &NodeHandle) -> u64 {
    let out = ns_exec(&node.ns, &["ip", "-s", "-j", "link", "show", "pilot0"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
}

fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    eventually(Duration::from_secs(secs), || f().then_some(())).is_some()
}

#[test]
fn handshake_pending_approve_then_untrust_across_two_nats() {
    if !lab::privileged("handshake_pending_approve_then_untrust_across_two_nats") {
        return;
    }
    let mut w = world("prc", "sym");
    w.start('a', &[]);
    w.start('b', &[]);
    let url = w.serve_on_b();

    // Before anything: nothing passes, either way.
    assert!(curl(&w.a, &url, 2).is_none());
    assert!(!ping(&w.a, &w.b) && !ping(&w.b, &w.a));

    let out = ctl(&w.a, &["handshake", &w.b.key, "nightly sync"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(10, || !w.b.pending().is_empty()),
        "no pending request on b\n{}",
        w.logs()
    );
    let pending = w.b.pending();
    assert_eq!(pending[0]["public_key"], w.a.key.as_str());
    assert_eq!(pending[0]["justification"], "nightly sync");
    // Asked but not approved: still nothing passes, and the rendezvous introduced nobody.
    assert!(curl(&w.a, &url, 2).is_none());
    assert!(!ping(&w.b, &w.a));

    // Approving something nobody asked for says so and fails.
    let out = ctl(&w.a, &["approve", &w.b.key]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no pending trust request"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = ctl(&w.b, &["approve", &w.a.key]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(10, || curl(&w.a, &url, 2).as_deref()
            == Some("hello from b\n")),
        "no HTTP after approval\n{}",
        w.logs()
    );
    assert!(w.a.trusts(&w.b) && w.b.trusts(&w.a));

    // Either side can end it; both stop within seconds.
    let out = ctl(&w.b, &["untrust", &w.a.key]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(5, || !w.a.trusts(&w.b)),
        "a never learned of the revocation\n{}",
        w.logs()
    );
    assert!(
        curl(&w.a, &url, 2).is_none(),
        "HTTP still works after untrust"
    );
    assert!(!ping(&w.a, &w.b) && !ping(&w.b, &w.a));
}

#[test]
fn a_third_node_that_knows_addresses_and_endpoints_gets_nothing_delivered() {
    if !lab::privileged("a_third_node_that_knows_addresses_and_endpoints_gets_nothing_delivered") {
        return;
    }
    // Cone NATs: anyone can send to a mapped endpoint, so c's packets do reach b's node.
    let mut w = world("cone", "cone");
    w.start('a', &[]);
    w.start('b', &[]);
    w.lab.trust(&w.a, &w.b);
    let b_public = w.b.info()["endpoint"].as_str().unwrap().to_owned();
    // c sits on a's LAN, knows a's LAN endpoint and b's public one, and configures both as
    // static peers; it also registers with the rendezvous and asks both for trust.
    let mut c = w.lab.node(&format!("{}-a2", w.name), "c", "");
    let flags: Vec<String> = [
        "--rendezvous",
        &w.rendezvous,
        "--listen-port",
        "51871",
        "--peer",
        &format!("{}@198.51.100.10:51870", w.a.key),
        "--peer",
        &format!("{}@{b_public}", w.b.key),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    w.lab.start_with(&mut c, &flags);
    ctl(&c, &["handshake", &w.a.key, "let me in"]);
    let (rx_a, rx_b) = (tun_rx_packets(&w.a), tun_rx_packets(&w.b));
    for target in [&w.a, &w.b] {
        let url = format!("http://[{}]:8080/", target.address);
        assert!(curl(&c, &url, 2).is_none());
        ns_exec(
            &c.ns,
            &["ping", "-c", "3", "-i", "0.2", "-W", "1", &target.address],
        );
    }
    // c's handshakes reached both nodes and were refused; nothing reached either kernel.
    assert!(
        w.a.drops("unknown_peer") > 0 && w.b.drops("unknown_peer") > 0,
        "{}",
        w.logs()
    );
    assert_eq!(tun_rx_packets(&w.a), rx_a, "a's TUN received packets");
    assert_eq!(tun_rx_packets(&w.b), rx_b, "b's TUN received packets");
    // And a and b still talk.
    assert!(ping(&w.a, &w.b), "{}", w.logs());
}

#[test]
fn a_request_to_a_node_that_is_down_is_delivered_when_it_starts() {
    if !lab::privileged("a_request_to_a_node_that_is_down_is_delivered_when_it_starts") {
        return;
    }
    let mut w = world("cone", "prc");
    w.start('a', &[]);
    // b has never run: the rendezvous does not even know it yet.
    let out = ctl(&w.a, &["handshake", &w.b.key, "while you were out"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Let the rendezvous store it, then start b.
    std::thread::sleep(Duration::from_millis(500));
    w.start('b', &[]);
    assert!(
        wait_until(10, || w
            .b
            .pending()
            .iter()
            .any(|p| p["justification"] == "while you were out")),
        "request not delivered after b started\n{}",
        w.logs()
    );
    let out = ctl(&w.b, &["approve", &w.a.key]);
    assert!(out.status.success());
    assert!(wait_until(10, || ping(&w.a, &w.b)), "{}", w.logs());
}

#[test]
fn trust_survives_restarts_of_both_nodes_and_the_rendezvous() {
    if !lab::privileged("trust_survives_restarts_of_both_nodes_and_the_rendezvous") {
        return;
    }
    let mut w = world("prc", "prc");
    w.start('a', &[]);
    w.start('b', &[]);
    w.lab.trust(&w.a, &w.b);
    assert!(wait_until(10, || ping(&w.a, &w.b)), "{}", w.logs());
    let mode = |node: &NodeHandle| {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(node.state_dir.join("trust.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!((mode(&w.a), mode(&w.b)), (0o600, 0o600));

    // Everything goes down: the rendezvous hard, the nodes cleanly.
    w.lab.kill(w.rendezvous_index);
    assert!(w.lab.stop(&mut w.a, nix::sys::signal::Signal::SIGTERM));
    assert!(w.lab.stop(&mut w.b, nix::sys::signal::Signal::SIGTERM));
    let (_, index) = w.lab.rendezvous(&format!("{}-rdv", w.name), RDV);
    w.rendezvous_index = index;
    w.start('b', &[]);
    w.start('a', &[]);
    assert!(w.a.trusts(&w.b) && w.b.trusts(&w.a));
    assert!(
        wait_until(15, || ping(&w.a, &w.b)),
        "no traffic after restarts\n{}",
        w.logs()
    );
}

#[test]
fn names_resolve_for_unmodified_programs() {
    if !lab::privileged("names_resolve_for_unmodified_programs") {
        return;
    }
    let mut w = world("cone", "sym");
    let hosts = w.lab.dir.join("hosts");
    fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    w.start(
        'a',
        &[
            "--hostname",
            "alice",
            "--hosts-file",
            hosts.to_str().unwrap(),
        ],
    );
    w.start('b', &["--hostname", "bob"]);
    // a's programs ask the daemon's DNS stub; the resolver file is the namespace's own.
    let ns = w.a.ns.clone();
    w.lab
        .resolver(&ns, "nameserver fd70::53\noptions timeout:2 attempts:2\n");
    w.serve_on_b();

    // By name, before any trust: the handshake finds bob through the rendezvous.
    let out = ctl(&w.a, &["resolve", "bob"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), w.b.address);
    let out = ctl(&w.a, &["handshake", "bob", "by name"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_until(10, || !w.b.pending().is_empty()), "{}", w.logs());
    assert_eq!(w.b.pending()[0]["hostname"], "alice");
    let out = ctl(&w.b, &["approve", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_until(10, || w.a.trusts(&w.b)), "{}", w.logs());

    // curl by NAME.pilot through the system resolver (glibc → fd70::53 → pilotd).
    assert!(
        wait_until(10, || curl(&w.a, "http://bob.pilot:8080/index.html", 3)
            .as_deref()
            == Some("hello from b\n")),
        "curl by name failed\n{}",
        w.logs()
    );
    let out = ns_exec(&w.a.ns, &["getent", "ahosts", "nobody-here.pilot"]);
    assert!(!out.status.success(), "an unknown name resolved");
    // The opt-in hosts block lists the trusted peer, and goes away with the daemon.
    let text = fs::read_to_string(&hosts).unwrap();
    assert!(text.starts_with("127.0.0.1 localhost\n"), "{text}");
    assert!(
        text.contains(&format!("{} bob.pilot", w.b.address)),
        "{text}"
    );
    assert!(w.lab.stop(&mut w.a, nix::sys::signal::Signal::SIGTERM));
    assert_eq!(fs::read_to_string(&hosts).unwrap(), "127.0.0.1 localhost\n");

    // A second node claiming "bob" is refused with a clear error.
    let c = w.lab.node(&format!("{}-a2", w.name), "c", "");
    let out = ns_exec(
        &c.ns,
        &[
            "timeout",
            "20",
            lab::PILOTD,
            "up",
            "--state-dir",
            c.state_dir.to_str().unwrap(),
            "--control",
            c.control.to_str().unwrap(),
            "--rendezvous",
            &w.rendezvous,
            "--hostname",
            "bob",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hostname `bob` is already registered"),
        "{err}"
    );
    // A bad name is refused before anything starts.
    let out = ns_exec(
        &c.ns,
        &[
            lab::PILOTD,
            "up",
            "--rendezvous",
            &w.rendezvous,
            "--hostname",
            "Bob_1",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid hostname"));
}
