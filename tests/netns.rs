//! Two real nodes in two network namespaces: real TUN devices, real kernel TCP, real UDP.
//! Needs root (see `lab::privileged`).

mod lab;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};

use lab::{ctl, eventually, ns_exec, Lab, NodeHandle};

/// Two namespaces on one LAN with a node in each, peered statically.
fn two_nodes(lab: &mut Lab) -> (NodeHandle, NodeHandle) {
    let (na, nb) = lab.two_hosts();
    let mut a = lab.node(&na, "a", "198.51.100.1");
    let mut b = lab.node(&nb, "b", "198.51.100.2");
    lab.start(&mut a, &[&b]);
    lab.start(&mut b, &[&a]);
    (a, b)
}

/// Serves `dir` on `node` and waits until `from` can fetch `probe` across the overlay.
fn serve(lab: &mut Lab, node: &NodeHandle, dir: &std::path::Path, from: &NodeHandle, probe: &str) {
    let ok = lab.serve_http(node, dir, from, probe, Duration::from_secs(10));
    assert!(
        ok,
        "HTTP across the overlay never worked\nA:\n{}\nB:\n{}",
        from.log_text(),
        node.log_text()
    );
}

#[test]
fn curl_across_the_overlay_returns_exact_content() {
    if !lab::privileged("curl_across_the_overlay_returns_exact_content") {
        return;
    }
    let mut lab = Lab::new();
    let (a, b) = two_nodes(&mut lab);
    let www = lab.dir.join("www");
    fs::create_dir(&www).unwrap();
    let page = format!("<h1>hello from {}</h1>\n", b.address);
    fs::write(www.join("index.html"), &page).unwrap();
    // 20 MB of deterministic pseudo-random bytes: incompressible, and any corruption shows.
    let mut big = vec![0u8; 20 * 1024 * 1024];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in big.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    fs::write(www.join("big.bin"), &big).unwrap();
    serve(&mut lab, &b, &www, &a, "index.html");

    let out = ns_exec(
        &a.ns,
        &[
            "curl",
            "-sS",
            "--fail",
            "-m",
            "10",
            &format!("http://[{}]:8080/index.html", b.address),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), page);

    let fetched = lab.dir.join("fetched.bin");
    let out = ns_exec(
        &a.ns,
        &[
            "curl",
            "-sS",
            "--fail",
            "-m",
            "60",
            "-o",
            fetched.to_str().unwrap(),
            &format!("http://[{}]:8080/big.bin", b.address),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = fs::read(&fetched).unwrap();
    assert_eq!(got.len(), big.len());
    assert_eq!(
        Sha256::digest(&got),
        Sha256::digest(&big),
        "20 MB transfer corrupted"
    );

    // Both sides account the traffic and see a direct path.
    let peers: serde_json::Value =
        serde_json::from_slice(&ctl(&a, &["peers", "--json"]).stdout).unwrap();
    let peer = &peers[0];
    assert_eq!(peer["address"], b.address.as_str());
    assert_eq!(peer["path"], "direct");
    assert_eq!(peer["endpoint"], "198.51.100.2:51870");
    assert!(peer["rx_bytes"].as_u64().unwrap() >= big.len() as u64);

    // pilotctl ping reports each reply with its path, and the peer may be named by key.
    let out = ctl(&a, &["ping", &b.key, "-c", "2", "-i", "0.1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("path=direct").count(), 2, "{text}");

    // An overlay address nobody owns: the sender's kernel hears "unreachable" at once.
    let before = a.drops("no_peer");
    let out = ns_exec(&a.ns, &["ping", "-c", "1", "-W", "2", "fd70::dead:beef:1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("Destination unreachable"), "{text}");
    assert_eq!(a.drops("no_peer"), before + 1);
}

/// The samples of a metrics page: `name{labels}` → value. Comments must be HELP or TYPE.
fn samples(page: &str) -> std::collections::BTreeMap<String, f64> {
    let mut samples = std::collections::BTreeMap::new();
    for line in page.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                comment.starts_with("HELP ") || comment.starts_with("TYPE "),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "twice: {line}"
        );
    }
    samples
}

#[test]
fn metrics_endpoint_reports_traffic_paths_and_drops() {
    if !lab::privileged("metrics_endpoint_reports_traffic_paths_and_drops") {
        return;
    }
    let mut lab = Lab::new();
    let (na, nb) = lab.two_hosts();
    let mut a = lab.node(&na, "a", "198.51.100.1");
    let mut b = lab.node(&nb, "b", "198.51.100.2");
    // Port 0: the daemon picks a free port and `pilotctl status` says which.
    let peer_b = format!("{}@{}:{}", b.key, b.underlay, lab::PORT);
    let extra = ["--peer", &peer_b, "--metrics", "127.0.0.1:0"].map(String::from);
    lab.start_with(&mut a, &extra);
    lab.start(&mut b, &[&a]);

    let pinged = eventually(Duration::from_secs(10), || {
        let out = ns_exec(
            &a.ns,
            &["ping", "-c", "3", "-i", "0.2", "-W", "2", &b.address],
        );
        out.status.success().then_some(())
    });
    assert!(
        pinged.is_some(),
        "no ping across the overlay\n{}",
        a.log_text()
    );
    // An overlay address nobody owns: a drop with a reason.
    ns_exec(&a.ns, &["ping", "-c", "1", "-W", "1", "fd70::dead:beef:1"]);

    let out = ctl(&a, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["peers"]["direct"], 1, "{status}");
    assert_eq!(status["trust"]["configured"], 1, "{status}");
    assert!(status["handshakes"].as_u64().unwrap() >= 1, "{status}");
    assert!(status["drops_total"].as_u64().unwrap() >= 1, "{status}");
    let addr = status["metrics"]
        .as_str()
        .expect("metrics address")
        .to_owned();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    let text = String::from_utf8(ctl(&a, &["status"]).stdout).unwrap();
    assert!(
        text.contains("1 direct, 0 relay, 0 without a path"),
        "{text}"
    );
    assert!(text.contains(&format!("http://{addr}/metrics")), "{text}");

    let url = format!("http://{addr}/metrics");
    let out = ns_exec(&a.ns, &["curl", "-sS", "--fail", "-D", "-", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer = String::from_utf8(out.stdout).unwrap();
    let (head, page) = answer
        .split_once("\r\n\r\n")
        .expect("headers, then the page");
    assert!(
        head.lines()
            .any(|h| h == "Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let m = samples(page);
    let get = |series: &str| {
        *m.get(series)
            .unwrap_or_else(|| panic!("no {series} in\n{page}"))
    };
    assert!(get("pilot_rx_bytes_total") > 0.0, "{page}");
    assert!(get("pilot_tx_bytes_total") > 0.0, "{page}");
    assert_eq!(get(r#"pilot_peers{path="direct"}"#), 1.0);
    assert_eq!(get(r#"pilot_peers{path="relay"}"#), 0.0);
    let peers: serde_json::Value =
        serde_json::from_slice(&ctl(&a, &["peers", "--json"]).stdout).unwrap();
    let node_b = peers[0]["node"].as_str().unwrap();
    assert!(get(&format!(r#"pilot_peer_rx_bytes_total{{peer="{node_b}"}}"#)) > 0.0);
    assert!(get(&format!(r#"pilot_peer_tx_bytes_total{{peer="{node_b}"}}"#)) > 0.0);
    assert!(get("pilot_handshakes_total") >= 1.0);
    let drops = m
        .keys()
        .filter(|k| k.starts_with("pilot_drops_total{reason=\""))
        .count();
    assert!(drops >= 18, "every drop reason has a line: {drops}\n{page}");
    assert!(get(r#"pilot_drops_total{reason="no_peer"}"#) >= 1.0);
    assert_eq!(get(r#"pilot_drops_total{reason="spoofed_source"}"#), 0.0);
    assert_eq!(get("pilot_configured_peers"), 1.0);
    assert_eq!(get("pilot_registered"), 0.0, "no rendezvous");
    assert_eq!(get(r#"pilot_nat_info{nat="unknown"}"#), 1.0);
    assert_eq!(
        get(&format!(
            r#"pilot_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    let out = ns_exec(
        &a.ns,
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{addr}/"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");

    // A second daemon asking for the same address stops before making an interface.
    let state = lab.dir.join("second");
    let out = ns_exec(
        &a.ns,
        &[
            lab::PILOTD,
            "up",
            "--state-dir",
            state.to_str().unwrap(),
            "--control",
            state.join("sock").to_str().unwrap(),
            "--interface",
            "pilot9",
            "--listen-port",
            "0",
            "--metrics",
            &addr,
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&addr) && err.contains("--metrics"), "{err}");
    assert!(!ns_exec(&a.ns, &["ip", "link", "show", "pilot9"])
        .status
        .success());
}

#[test]
fn forged_inner_source_is_not_delivered() {
    if !lab::privileged("forged_inner_source_is_not_delivered") {
        return;
    }
    let mut lab = Lab::new();
    let (a, b) = two_nodes(&mut lab);
    // A UDP listener on B that records every datagram it gets.
    let received = lab.dir.join("received");
    fs::write(&received, "").unwrap();
    fs::set_permissions(&lab.dir, fs::Permissions::from_mode(0o755)).unwrap();
    let listener = format!(
        "import socket\ns=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\ns.bind(('::',9999))\n\
         while True:\n d,_=s.recvfrom(4096)\n f=open('{}','ab'); f.write(d+b'\\n'); f.close()",
        received.display()
    );
    lab.spawn_in(&b.ns, &["python3", "-c", &listener]);
    let send_from = |src: &str, msg: &str| {
        let code = format!(
            "import socket\ns=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\ns.bind(('{src}',0))\n\
             s.sendto(b'{msg}',('{}',9999))",
            b.address
        );
        let out = ns_exec(&a.ns, &["python3", "-c", &code]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // A genuine datagram arrives (retried while the listener starts and the handshake runs).
    let genuine = eventually(Duration::from_secs(10), || {
        send_from(&a.address, "genuine");
        fs::read_to_string(&received)
            .unwrap()
            .contains("genuine")
            .then_some(())
    });
    assert!(
        genuine.is_some(),
        "the control datagram never arrived:\n{}",
        b.log_text()
    );

    // A's kernel now owns a second overlay address that belongs to nobody's key, and sends
    // from it. The packet is encrypted by A's node and decrypted by B's, which must drop it.
    let forged = "fd70::1234:5678:9abc";
    lab::run(
        "ip",
        &[
            "-n",
            &a.ns,
            "addr",
            "add",
            &format!("{forged}/128"),
            "dev",
            "pilot0",
            "nodad",
        ],
    );
    let before = b.drops("spoofed_source");
    for _ in 0..5 {
        send_from(forged, "forged");
    }
    let counted = eventually(Duration::from_secs(5), || {
        (b.drops("spoofed_source") >= before + 5).then_some(())
    });
    assert!(
        counted.is_some(),
        "B did not count the forged packets: {}",
        b.info()
    );
    send_from(&a.address, "after");
    assert!(
        eventually(Duration::from_secs(5), || fs::read_to_string(&received)
            .unwrap()
            .contains("after")
            .then_some(()))
        .is_some()
    );
    let text = fs::read_to_string(&received).unwrap();
    assert!(
        !text.contains("forged"),
        "a forged packet reached B's kernel: {text:?}"
    );
}

#[test]
fn restart_keeps_the_address_and_shutdown_removes_the_interface() {
    if !lab::privileged("restart_keeps_the_address_and_shutdown_removes_the_interface") {
        return;
    }
    let mut lab = Lab::new();
    let ns = lab.netns("r");
    let mut node = lab.node(&ns, "r", "198.51.100.9");
    lab.start(&mut node, &[]);
    let first = node.info();
    assert_eq!(first["address"], node.address.as_str());
    assert_eq!(first["interface"], "pilot0");
    let addr_show = ns_exec(&ns, &["ip", "-6", "addr", "show", "dev", "pilot0"]);
    let shown = String::from_utf8_lossy(&addr_show.stdout);
    assert!(shown.contains(&format!("{}/80", node.address)), "{shown}");
    assert!(
        !shown.contains("fe80"),
        "link-local autoconfiguration must be off: {shown}"
    );
    let mode = fs::metadata(node.state_dir.join("identity.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        fs::metadata(&node.control).unwrap().permissions().mode() & 0o777,
        0o600
    );

    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        assert!(
            lab.stop(&mut node, signal),
            "pilotd did not exit cleanly on {signal}:\n{}",
            node.log_text()
        );
        let link = ns_exec(&ns, &["ip", "link", "show", "pilot0"]);
        assert!(!link.status.success(), "pilot0 still exists after {signal}");
        assert!(
            !node.control.exists(),
            "control socket left behind after {signal}"
        );
        let out = ctl(&node, &["info"]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not running") && err.contains(node.control.to_str().unwrap()),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");

        lab.start(&mut node, &[]);
        assert_eq!(
            node.info()["address"],
            first["address"],
            "restart changed the address"
        );
        assert_eq!(node.info()["public_key"], first["public_key"]);
    }
}

#[test]
fn non_root_start_fails_with_the_documented_message() {
    if !lab::privileged("non_root_start_fails_with_the_documented_message") {
        return;
    }
    let mut lab = Lab::new();
    let ns = lab.netns("u");
    // A state dir the unprivileged user can create its identity in.
    let home = lab.dir.join("nobody");
    fs::create_dir(&home).unwrap();
    fs::set_permissions(&lab.dir, fs::Permissions::from_mode(0o755)).unwrap();
    nix::unistd::chown(
        &home,
        Some(nix::unistd::Uid::from_raw(65534)),
        Some(nix::unistd::Gid::from_raw(65534)),
    )
    .unwrap();
    let state = home.join("state");
    let out = ns_exec(
        &ns,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            lab::PILOTD,
            "up",
            "--state-dir",
            state.to_str().unwrap(),
            "--control",
            home.join("sock").to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("permission denied") && err.contains("CAP_NET_ADMIN"),
        "{err}"
    );
    assert!(!ns_exec(&ns, &["ip", "link", "show", "pilot0"])
        .status
        .success());
}

#[test]
fn pilotctl_daemon_start_status_stop_round_trip() {
    if !lab::privileged("pilotctl_daemon_start_status_stop_round_trip") {
        return;
    }
    let mut lab = Lab::new();
    let ns = lab.netns("d");
    let node = lab.node(&ns, "d", "");
    let sock = node.control.to_str().unwrap().to_owned();
    let state = node.state_dir.to_str().unwrap().to_owned();
    let pilotctl = |args: &[&str]| {
        let mut cmd = vec![lab::PILOTCTL, "--control", &sock, "daemon"];
        cmd.extend_from_slice(args);
        ns_exec(&ns, &cmd)
    };
    let out = pilotctl(&["status"]);
    assert_eq!(out.status.code(), Some(3), "not running yet");
    assert!(String::from_utf8_lossy(&out.stdout).contains("not running"));

    let out = pilotctl(&["start", "--no-systemd", "--", "--state-dir", &state]);
    let running_pid = || node.info()["pid"].as_u64();
    // Whatever happens next, the daemon started here must not outlive the test.
    struct Kill(Option<u64>);
    impl Drop for Kill {
        fn drop(&mut self) {
            if let Some(pid) = self.0 {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
    let mut guard = Kill(None);
    assert!(
        out.status.success(),
        "start: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    guard.0 = running_pid();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains(&node.address), "{text}");
    // pilotctl has returned; the daemon runs on, detached from it.
    let out = pilotctl(&["status", "--json"]);
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["running"], true);
    assert_eq!(status["address"], node.address.as_str());
    assert_eq!(status["pid"].as_u64(), guard.0);
    // Starting again is harmless.
    assert!(
        pilotctl(&["start", "--no-systemd", "--", "--state-dir", &state])
            .status
            .success()
    );

    let out = pilotctl(&["stop", "--no-systemd"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    guard.0 = None;
    assert_eq!(pilotctl(&["status"]).status.code(), Some(3));
    // A clean stop: the interface is gone and nothing is listening on the socket.
    let links = ns_exec(&ns, &["ip", "-o", "link"]);
    assert!(!String::from_utf8_lossy(&links.stdout).contains("pilot0"));
    assert!(!node.control.exists());
}
