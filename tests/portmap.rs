//! Port mapping on a real router daemon: Debian's `miniupnpd` (nftables backend) on natlab's
//! symmetric NAT router nat1 maps node a's UDP port over PCP (or, configured without
//! NAT-PMP/PCP, over UPnP-IGD), and a pair behind two symmetric NATs — relayed without it
//! (`tests/nat.rs`, sym_sym) — goes direct. Needs root and
//! miniupnpd (package `miniupnpd-nftables`); under CI=true a missing one fails the test.
//!
//! miniupnpd 2.3 refuses to map when its external address is a reserved one (which every
//! documentation range is) unless STUN tells it that address is public and unfiltered: the
//! lab runs a small classic-STUN server (RFC 3489, answering from a changed address and port
//! on request) at the rendezvous host's two addresses, and nat1 lets those answers in.

mod lab;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use lab::{ctl, eventually, ns_exec, Lab, NodeHandle};

const RDV: &str = "203.0.113.10:7000";
const STUN_IPS: [&str; 2] = ["203.0.113.10", "203.0.113.11"];
const STUN_PORT: u16 = 3478;

/// A classic STUN binding server: answers from the address and port the request's
/// CHANGE-REQUEST names, with the MAPPED-ADDRESS it saw.
const STUN_SERVER: &str = r#"
import select, socket, struct, sys
ips, port = sys.argv[1:3], int(sys.argv[3])
socks = {}
for ip in ips:
    for p in (port, port + 1):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((ip, p))
        socks[(ip, p)] = s
while True:
    for s in select.select(list(socks.values()), [], [])[0]:
        data, (host, hport) = s.recvfrom(2048)
        if len(data) < 20 or data[0:2] != b"\x00\x01":
            continue
        change, at = 0, 20
        while at + 4 <= len(data):
            kind, length = struct.unpack("!HH", data[at:at + 4])
            if kind == 3 and length == 4:
                change = data[at + 7]
            at += 4 + length
        ip, p = s.getsockname()
        if change & 4:
            ip = ips[1] if ip == ips[0] else ips[0]
        if change & 2:
            p = port + 1 if p == port else port
        attr = struct.pack("!HHBBH4s", 1, 8, 0, 1, hport, socket.inet_aton(host))
        socks[(ip, p)].sendto(struct.pack("!HH", 0x0101, len(attr)) + data[4:20] + attr, (host, hport))
"#;

/// The chains miniupnpd's nftables backend fills (it creates none itself), in a table of its
/// own beside natlab's.
const ROUTER_NFT: &str = "table inet miniupnpd {
    chain forward {
        type filter hook forward priority filter; policy accept;
        jump forward_miniupnpd
    }
    chain forward_miniupnpd {
    }
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        jump prerouting_miniupnpd
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        jump postrouting_miniupnpd
    }
    chain prerouting_miniupnpd {
    }
    chain postrouting_miniupnpd {
    }
}
";

/// Which protocols the lab router speaks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Router {
    /// NAT-PMP and PCP (miniupnpd answers both on 5351).
    Pcp,
    /// UPnP-IGD alone: SSDP on the LAN and its HTTP/SOAP port 5000; nothing on 5351.
    Upnp,
}

fn miniupnpd_config(lab: &Path, router: Router) -> String {
    let (natpmp, upnp) = match router {
        Router::Pcp => ("yes", "no"),
        Router::Upnp => ("no", "yes"),
    };
    format!(
        "ext_ifname=wan
listening_ip=br0
http_port=5000
enable_natpmp={natpmp}
enable_upnp={upnp}
secure_mode=yes
system_uptime=no
ext_perform_stun=yes
ext_stun_host={stun}
ext_stun_port={STUN_PORT}
upnp_table_name=miniupnpd
upnp_nat_table_name=miniupnpd
upnp_forward_chain=forward_miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
lease_file={dir}/miniupnpd.leases
uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b
allow 1024-65535 198.51.100.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
",
        stun = STUN_IPS[0],
        dir = lab.display()
    )
}

fn miniupnpd() -> Option<&'static str> {
    ["/usr/sbin/miniupnpd", "/sbin/miniupnpd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// Whether this test can run: root, the lab's tools, and miniupnpd.
fn runnable(test: &str) -> bool {
    if !lab::privileged(test) {
        return false;
    }
    if miniupnpd().is_some() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{test}: CI=true but miniupnpd is missing: install the `miniupnpd-nftables` package"
        );
    }
    eprintln!("SKIP {test}: needs miniupnpd (package miniupnpd-nftables)");
    false
}

/// Makes natlab's nat1 a router running miniupnpd on its LAN side with `router`'s protocols;
/// returns once it listens.
fn start_miniupnpd(lab: &mut Lab, name: &str, router: Router) {
    let (n1, rdv) = (format!("{name}-n1"), format!("{name}-rdv"));
    let stun = lab.dir.join("stun.py");
    fs::write(&stun, STUN_SERVER).unwrap();
    let port = STUN_PORT.to_string();
    lab.spawn_in(
        &rdv,
        &[
            "python3",
            stun.to_str().unwrap(),
            STUN_IPS[0],
            STUN_IPS[1],
            &port,
        ],
    );
    let listening = eventually(Duration::from_secs(5), || {
        let out = ns_exec(&rdv, &["ss", "-lun"]);
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("{}:{}", STUN_IPS[1], STUN_PORT + 1))
            .then_some(())
    });
    assert!(listening.is_some(), "the STUN server did not start");

    let nft = lab.dir.join("miniupnpd.nft");
    fs::write(&nft, ROUTER_NFT).unwrap();
    let nft = nft.to_str().unwrap();
    // The router's own rules: STUN answers from the changed address and port reach
    // miniupnpd, and what it forwards passes natlab's forward chain (which drops new
    // connections from the WAN).
    for rule in [
        vec!["nft", "-f", nft],
        vec![
            "nft",
            "insert",
            "rule",
            "ip",
            "natlab",
            "input",
            "iifname",
            "wan",
            "ip",
            "saddr",
            "{ 203.0.113.10, 203.0.113.11 }",
            "udp",
            "sport",
            "{ 3478, 3479 }",
            "accept",
        ],
        vec![
            "nft", "add", "rule", "ip", "natlab", "forward", "iifname", "wan", "oifname", "br0",
            "ct", "status", "dnat", "accept",
        ],
    ] {
        let out = ns_exec(&n1, &rule);
        assert!(
            out.status.success(),
            "{rule:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let conf = lab.dir.join("miniupnpd.conf");
    fs::write(&conf, miniupnpd_config(&lab.dir, router)).unwrap();
    let log = lab.dir.join("miniupnpd.log");
    let pid = lab.dir.join("miniupnpd.pid");
    let cmd = [
        miniupnpd().unwrap(),
        "-d",
        "-f",
        conf.to_str().unwrap(),
        "-P",
        pid.to_str().unwrap(),
    ];
    lab.spawn_logged(&n1, &cmd, Some(&log));
    let up = eventually(Duration::from_secs(20), || {
        let text = fs::read_to_string(&log).unwrap_or_default();
        assert!(!text.contains("Port forwarding is now disabled"), "{text}");
        let ready = match router {
            Router::Pcp => "Listening for NAT-PMP/PCP traffic",
            Router::Upnp => "HTTP listening on port 5000",
        };
        text.contains(ready).then_some(())
    });
    assert!(
        up.is_some(),
        "miniupnpd did not start:\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
}

/// nat1's port-forwarding rules, as miniupnpd keeps them.
fn forwards(name: &str) -> String {
    let out = ns_exec(
        &format!("{name}-n1"),
        &[
            "nft",
            "list",
            "chain",
            "inet",
            "miniupnpd",
            "prerouting_miniupnpd",
        ],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn netcheck(node: &NodeHandle) -> serde_json::Value {
    let out = ctl(node, &["netcheck", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// The path and endpoint `from` reports for `to` once the path is `want` (or the last seen).
fn wait_path(from: &NodeHandle, to: &NodeHandle, want: &str, secs: u64) -> (String, String) {
    let mut last = (String::new(), String::new());
    eventually(Duration::from_secs(secs), || {
        let out = ctl(from, &["peers", "--json"]);
        let peers: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let peer = peers
            .as_array()?
            .iter()
            .find(|p| p["public_key"] == to.key.as_str())?
            .clone();
        last = (
            peer["path"].as_str().unwrap_or_default().to_owned(),
            peer["endpoint"].as_str().unwrap_or_default().to_owned(),
        );
        (last.0 == want).then_some(())
    });
    last
}

#[test]
fn sym_sym_go_direct_when_one_router_maps_the_port_with_pcp() {
    sym_sym_direct(Router::Pcp);
}

/// A router that speaks only UPnP-IGD: PCP and NAT-PMP go unanswered for 7.5 s first.
#[test]
fn sym_sym_go_direct_when_one_router_maps_the_port_with_upnp_igd() {
    sym_sym_direct(Router::Upnp);
}

fn sym_sym_direct(router: Router) {
    if !runnable(&format!("portmap sym/sym with miniupnpd ({router:?})")) {
        return;
    }
    let mut lab = Lab::new();
    let name = lab.natlab("sym", "sym");
    start_miniupnpd(&mut lab, &name, router);
    let (pinned, _) = lab.rendezvous(&format!("{name}-rdv"), RDV);
    let mut a = lab.node(&format!("{name}-a"), "a", "");
    let mut b = lab.node(&format!("{name}-b"), "b", "");
    let started = Instant::now();
    for node in [&mut a, &mut b] {
        lab.start_with(node, &["--rendezvous".to_owned(), pinned.clone()]);
    }
    let miniupnpd_log = lab.dir.join("miniupnpd.log");
    let logs = |a: &NodeHandle, b: &NodeHandle| {
        format!(
            "--- a\n{}\n--- b\n{}\n--- miniupnpd\n{}",
            a.log_text(),
            b.log_text(),
            fs::read_to_string(&miniupnpd_log).unwrap_or_default()
        )
    };

    // a's router maps its port over PCP; b's router has no mapping daemon.
    let mapped = eventually(Duration::from_secs(20), || {
        let pm = netcheck(&a)["port_mapping"].clone();
        (pm["state"] == "mapped").then(|| pm["external"].as_str().unwrap().to_owned())
    });
    let mapped = mapped.unwrap_or_else(|| panic!("no mapping\n{}", logs(&a, &b)));
    eprintln!("mapped {mapped} after {:?}", started.elapsed());
    assert!(mapped.starts_with("203.0.113.1:"), "{mapped}");
    let a_status = netcheck(&a)["port_mapping"].clone();
    let (protocol, gateway, text_protocol) = match router {
        Router::Pcp => ("pcp", "198.51.100.1:5351", "PCP"),
        Router::Upnp => ("upnp-igd", "198.51.100.1:5000", "UPnP-IGD"),
    };
    assert_eq!(a_status["protocol"], protocol);
    assert_eq!(a_status["gateway"], gateway);
    let external_port = mapped.rsplit(':').next().unwrap().to_owned();
    assert!(
        forwards(&name).contains(&format!(
            "dport {external_port} dnat ip to 198.51.100.10:51870"
        )),
        "nat1 forwards {external_port} to a's port:\n{}",
        forwards(&name)
    );
    let text = String::from_utf8_lossy(&ctl(&a, &["netcheck"]).stdout).into_owned();
    assert!(
        text.contains(&format!(
            "router          {mapped} mapped with {text_protocol}"
        )),
        "{text}"
    );
    let silent = eventually(Duration::from_secs(15), || {
        (netcheck(&b)["port_mapping"]["state"] == "no-answer").then_some(())
    });
    assert!(silent.is_some(), "b: {}", netcheck(&b));
    let text = String::from_utf8_lossy(&ctl(&b, &["netcheck"]).stdout).into_owned();
    assert!(text.contains("no port mapping offered"), "{text}");

    // Both symmetric, so only the mapping can make a direct path: b's probes reach a through
    // it, and a answers through the same forward.
    lab.trust(&a, &b);
    let www = lab.dir.join("www");
    fs::create_dir(&www).unwrap();
    let page = "through the router's mapping\n";
    fs::write(www.join("index.html"), page).unwrap();
    assert!(
        lab.serve_http(&b, &www, &a, "index.html", Duration::from_secs(20)),
        "HTTP across the overlay never worked\n{}",
        logs(&a, &b)
    );
    ns_exec(&a.ns, &["ping", "-c", "5", "-i", "0.2", "-q", &b.address]);
    let seen_by_b = wait_path(&b, &a, "direct", 15);
    let seen_by_a = wait_path(&a, &b, "direct", 5);
    assert_eq!(
        (seen_by_a.0.as_str(), seen_by_b.0.as_str()),
        ("direct", "direct"),
        "{}",
        logs(&a, &b)
    );
    assert_eq!(seen_by_b.1, mapped, "b reaches a at the mapped endpoint");
    let url = format!("http://[{}]:8080/index.html", b.address);
    let out = ns_exec(&a.ns, &["curl", "-sS", "--fail", "-m", "5", &url]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), page);
    let out = ns_exec(&b.ns, &["ping", "-c", "3", "-i", "0.2", "-q", &a.address]);
    assert!(out.status.success(), "ping b -> a");
    assert_eq!(wait_path(&b, &a, "direct", 1).0, "direct");

    // Stopping a deletes the mapping on the router.
    let stopping = Instant::now();
    assert!(lab.stop(&mut a, nix::sys::signal::Signal::SIGTERM));
    eprintln!("a stopped in {:?}", stopping.elapsed());
    assert!(
        !forwards(&name).contains(&format!("dport {external_port} ")),
        "the mapping outlived the node:\n{}",
        forwards(&name)
    );
    assert!(a.log_text().contains("port mapping deleted on the gateway"));
}

#[test]
fn a_silent_router_costs_nothing_and_port_mapping_off_sends_nothing() {
    if !lab::privileged("portmap off / silent router") {
        return;
    }
    let mut lab = Lab::new();
    let name = lab.natlab("prc", "prc");
    let n1 = format!("{name}-n1");
    // Count what a (198.51.100.10, port mapping off) and a2 (.11, on) send to nat1's
    // PCP/NAT-PMP port; nothing listens there.
    for host in ["198.51.100.10", "198.51.100.11"] {
        let rule = [
            "nft", "insert", "rule", "ip", "natlab", "input", "iifname", "br0", "ip", "saddr",
            host, "udp", "dport", "5351", "counter",
        ];
        assert!(ns_exec(&n1, &rule).status.success());
    }
    let (pinned, _) = lab.rendezvous(&format!("{name}-rdv"), RDV);
    let mut a = lab.node(&format!("{name}-a"), "a", "");
    let mut a2 = lab.node(&format!("{name}-a2"), "a2", "");
    let rendezvous = ["--rendezvous".to_owned(), pinned.clone()];
    lab.start_with(
        &mut a,
        &[&rendezvous[..], &["--no-port-mapping".to_owned()]].concat(),
    );
    let started = Instant::now();
    lab.start_with(&mut a2, &rendezvous);
    // The silent router delays nothing: a2 registers as fast as a.
    for node in [&a, &a2] {
        let registered = eventually(Duration::from_secs(10), || {
            (netcheck(node)["registered"] == true).then_some(())
        });
        assert!(registered.is_some(), "{}", node.log_text());
    }
    eprintln!("both registered after {:?}", started.elapsed());
    let given_up = eventually(Duration::from_secs(15), || {
        (netcheck(&a2)["port_mapping"]["state"] == "no-answer").then_some(())
    });
    assert!(given_up.is_some(), "{}", netcheck(&a2));
    eprintln!(
        "a2 gave up asking (PCP, NAT-PMP, SSDP) after {:?}",
        started.elapsed()
    );
    let counters = String::from_utf8_lossy(
        &ns_exec(&n1, &["nft", "list", "chain", "ip", "natlab", "input"]).stdout,
    )
    .into_owned();
    let packets = |host: &str| -> u64 {
        let line = counters.lines().find(|l| l.contains(host)).unwrap();
        let at = line.find("packets ").unwrap() + "packets ".len();
        line[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        packets("198.51.100.10"),
        0,
        "port mapping off: nothing sent\n{counters}"
    );
    assert_eq!(
        packets("198.51.100.11"),
        12,
        "4 PCP requests, 4 NAT-PMP pairs\n{counters}"
    );
    assert_eq!(netcheck(&a)["port_mapping"]["state"], "off");
    assert_eq!(
        netcheck(&a2)["port_mapping"]["gateway"],
        "198.51.100.1:5351"
    );
    let text = String::from_utf8_lossy(&ctl(&a, &["netcheck"]).stdout).into_owned();
    assert!(text.contains("router          port mapping off"), "{text}");
    // And nothing more for the next ten minutes (REDISCOVER): the count stays.
    std::thread::sleep(Duration::from_secs(2));
    let again = String::from_utf8_lossy(
        &ns_exec(&n1, &["nft", "list", "chain", "ip", "natlab", "input"]).stdout,
    )
    .into_owned();
    assert_eq!(counters, again);
}
