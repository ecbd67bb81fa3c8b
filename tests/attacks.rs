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
    let (na, nb) = lab.two_hosts();
    let mut a = lab.node(&na, "a", "198.51.100.1");
    let mut b = lab.node(&nb, "b", "198.51.100.2");
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
