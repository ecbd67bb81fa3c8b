//! Attacks from the network on real nodes in namespaces: what an attacker on the internet can
//! send costs the node little and keeps honest peers connected.

mod lab;

use std::time::Duration;

use lab::{ctl, eventually, run, Lab};

/// Sends WireGuard handshake initiations to a node at a steady rate: each with a valid mac1
/// (which needs nothing but the victim's public key) and random contents otherwise, as a
/// flood from a throwaway key would. The X25519 key is computed from the Ed25519 public key
/// (the birational map WireGuard keys use here), mac1 as the WireGuard paper defines it.
const FLOODER: &str = r#"
import hashlib, os, socket, struct, sys, time
ed_hex, target, port, pps, src = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
p = 2**255 - 19
y = int.from_bytes(bytes.fromhex(ed_hex), "little") & ((1 << 255) - 1)
u = (1 + y) * pow(1 - y, p - 2, p) % p
x25519 = u.to_bytes(32, "little")
mac1_key = hashlib.blake2s(b"mac1----" + x25519).digest()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
interval, sent, start = 1.0 / pps, 0, time.monotonic()
while True:
    body = struct.pack("<I", 1) + os.urandom(4 + 32 + 48 + 28)
    mac1 = hashlib.blake2s(body, key=mac1_key, digest_size=16).digest()
    s.sendto(body + mac1 + bytes(16), (target, port))
    sent += 1
    delay = start + sent * interval - time.monotonic()
    if delay > 0:
        time.sleep(delay)
"#;

#[test]
fn an_honest_handshake_completes_under_a_flood_of_1000_handshakes_per_second() {
    let test = "an_honest_handshake_completes_under_a_flood_of_1000_handshakes_per_second";
    if !lab::privileged(test) {
        return;
    }
    let mut lab = Lab::new();
    let (mut a, mut b) = lab.two_nodes();
    let na = a.ns.clone();
    lab.start(&mut b, &[&a]);

    // The flood comes from another address on A's LAN, at 1,000 handshakes a second, before
    // and during A's first handshake.
    let dev = format!("{}va", lab.tag);
    run(
        "ip",
        &["-n", &na, "addr", "add", "198.51.100.99/24", "dev", &dev],
    );
    let script = lab.dir.join("flood.py");
    std::fs::write(&script, FLOODER).unwrap();
    let port = lab::PORT.to_string();
    lab.spawn_in(
        &na,
        &[
            "python3",
            script.to_str().unwrap(),
            &b.key,
            "198.51.100.2",
            &port,
            "1000",
            "198.51.100.99",
        ],
    );
    let flooded = eventually(Duration::from_secs(10), || {
        (b.drops("under_load") > 100).then_some(())
    });
    assert!(flooded.is_some(), "the flood did not put B under load");

    // Count the cookie replies that reach A (WireGuard message type 3 from B's port).
    let rules = format!(
        "add table inet cookies\n\
         add chain inet cookies input {{ type filter hook input priority 0; }}\n\
         add rule inet cookies input ip saddr 198.51.100.2 udp sport {port} @th,64,8 3 counter\n"
    );
    let rules_file = lab.dir.join("cookies.nft");
    std::fs::write(&rules_file, rules).unwrap();
    assert!(
        lab::ns_exec(&na, &["nft", "-f", rules_file.to_str().unwrap()])
            .status
            .success()
    );
    lab.start(&mut a, &[&b]);
    let b_addr = b.address.clone();
    let pinged = eventually(Duration::from_secs(20), || {
        ctl(&a, &["ping", &b_addr, "-c", "1", "-W", "1"])
            .status
            .success()
            .then_some(())
    });
    let info = b.info();
    assert!(
        pinged.is_some(),
        "A never reached B under the flood; B: {}",
        info["drops"]
    );
    // B kept answering the flood with cookies, not handshakes, all along, and A got its own.
    assert!(b.drops("under_load") > 1000, "{}", info["drops"]);
    let counted = lab::ns_exec(&na, &["nft", "list", "chain", "inet", "cookies", "input"]);
    let counted = String::from_utf8_lossy(&counted.stdout);
    let packets: u64 = counted
        .split("packets ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {counted}"));
    assert!(packets >= 1, "no cookie reply reached A: {counted}");
}

/// Receives UDP on `[::]:PORT` and appends one line per datagram, `SOURCE PAYLOAD`, to FILE.
const LISTENER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", int(sys.argv[1])))
while True:
    data, src = s.recvfrom(2048)
    with open(sys.argv[2], "a") as f:
        f.write(f"{src[0]} {data.decode(errors='replace')}\n")
"#;

/// Sends one datagram from SOURCE (bound; "" for any) to DEST%SCOPE port PORT.
const SENDER: &str = r#"
import socket, sys
src, dst, port, scope, payload = sys.argv[1:6]
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
if src:
    s.bind((src, 0))
s.sendto(payload.encode(), (dst, int(port), 0, int(scope)))
"#;

#[test]
fn a_lan_neighbour_cannot_inject_overlay_addresses() {
    let test = "a_lan_neighbour_cannot_inject_overlay_addresses";
    if !lab::privileged(test) {
        return;
    }
    let mut lab = Lab::new();
    let (na, nb) = lab.two_hosts();
    let mut a = lab.node(&na, "a", "198.51.100.1");
    lab.start(&mut a, &[]);
    let (va, vb) = (format!("{}va", lab.tag), format!("{}vb", lab.tag));
    // The link-local address of `dev`, once duplicate address detection is done with it.
    let link_local = |ns: &str, dev: &str| -> Option<String> {
        let out = lab::ns_exec(
            ns,
            &[
                "ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "link",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("tentative") {
            return None;
        }
        let addr = text.split_whitespace().skip_while(|w| *w != "inet6").nth(1);
        addr.and_then(|a| a.split('/').next()).map(str::to_owned)
    };
    let a_ll = eventually(Duration::from_secs(10), || link_local(&na, &va))
        .expect("a link-local address on A's LAN interface");
    eventually(Duration::from_secs(10), || link_local(&nb, &vb))
        .expect("a link-local address on B's LAN interface");
    // B poses as a trusted peer: it takes an overlay address and routes the overlay to A.
    let forged = "fd70::1234:5678:9abc";
    run(
        "ip",
        &[
            "-n",
            &nb,
            "addr",
            "add",
            &format!("{forged}/128"),
            "dev",
            &vb,
            "nodad",
        ],
    );
    run(
        "ip",
        &[
            "-n",
            &nb,
            "-6",
            "route",
            "add",
            "fd70::/80",
            "via",
            &a_ll,
            "dev",
            &vb,
        ],
    );
    let b_scope = String::from_utf8_lossy(
        &lab::ns_exec(&nb, &["cat", &format!("/sys/class/net/{vb}/ifindex")]).stdout,
    )
    .trim()
    .to_owned();

    let received = lab.dir.join("received");
    let (listener, sender) = (lab.dir.join("listen.py"), lab.dir.join("send.py"));
    std::fs::write(&listener, LISTENER).unwrap();
    std::fs::write(&sender, SENDER).unwrap();
    lab.spawn_in(
        &na,
        &[
            "python3",
            listener.to_str().unwrap(),
            "9999",
            received.to_str().unwrap(),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let send = |src: &str, dst: &str, scope: &str, payload: &str| {
        let out = lab::ns_exec(
            &nb,
            &[
                "python3",
                sender.to_str().unwrap(),
                src,
                dst,
                "9999",
                scope,
                payload,
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The control: to A's own LAN address, which is no overlay address, it arrives.
    send("", &a_ll, &b_scope, "lan");
    // A forged overlay source, and B's own address to A's overlay address: dropped.
    send(forged, &a.address, "0", "forged-source");
    send("", &a.address, "0", "lan-to-overlay");
    let got = eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(&received)
            .ok()
            .filter(|t| t.contains(" lan\n"))
    })
    .unwrap_or_else(|| {
        panic!(
            "the control datagram did not arrive: {:?}",
            std::fs::read_to_string(&received)
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let got = std::fs::read_to_string(&received).unwrap_or(got);
    assert!(!got.contains("forged-source"), "{got}");
    assert!(!got.contains("lan-to-overlay"), "{got}");
    // The guard counted them, and pilotctl status does not warn about it.
    let status = ctl(&a, &["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(!status.contains("LAN guard"), "{status}");
    let rules = lab::ns_exec(&na, &["nft", "list", "table", "inet", "pilot-pilot0"]);
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(rules.contains("packets 2"), "{rules}");
    // Stopping the node removes the guard.
    lab.stop(&mut a, nix::sys::signal::Signal::SIGTERM);
    assert!(
        !lab::ns_exec(&na, &["nft", "list", "table", "inet", "pilot-pilot0"])
            .status
            .success()
    );
}
