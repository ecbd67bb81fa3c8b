//! Userspace mode against kernel mode, for real: a kernel node (TUN, root) and a userspace node
//! running as `nobody` with no capabilities, in two namespaces with a rendezvous, trusting each
//! other through `pilotctl handshake`/`approve`. HTTP both ways (the kernel node's curl to an
//! exposed port, the userspace node's curl through the SOCKS5 proxy by NAME.pilot), 20 MB with
//! matching SHA-256, `pilotctl connect` and messages from both sides, messages surviving a
//! restart of the receiver, and oversize and malformed messages refused without harm.
//! Needs root (see `lab::privileged`).

mod lab;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};

use lab::{ctl, ctl_in, eventually, ns_exec, Lab, NodeHandle, UNPRIVILEGED};

const RDV: &str = "198.51.100.1:7000";

fn userspace_flags(rdv: &str) -> Vec<String> {
    [
        "--rendezvous",
        rdv,
        "--hostname",
        "user",
        "--expose",
        "8080:18080",
        "--expose",
        "7:18007",
    ]
    .map(String::from)
    .to_vec()
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    data
}

fn text(out: &std::process::Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn inbox(node: &NodeHandle) -> Vec<serde_json::Value> {
    let out = ctl(node, &["inbox", "--json"]);
    assert!(out.status.success(), "inbox: {}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["messages"].as_array().unwrap().clone()
}

/// Fetches `url` in `ns` (curl with `extra` options) into `into` until it works.
fn fetch(ns: &str, extra: &[&str], url: &str, into: &Path) -> bool {
    let into = into.to_str().unwrap();
    let mut cmd = vec!["curl", "-sS", "--fail", "-m", "60", "-o", into];
    cmd.extend(extra);
    cmd.push(url);
    eventually(Duration::from_secs(20), || {
        ns_exec(ns, &cmd).status.success().then_some(())
    })
    .is_some()
}

#[test]
fn a_userspace_node_without_privileges_and_a_kernel_node_serve_each_other() {
    if !lab::privileged("a_userspace_node_without_privileges_and_a_kernel_node_serve_each_other") {
        return;
    }
    let mut lab = Lab::new();
    let (na, nb) = lab.two_hosts();
    let (rdv, _) = lab.rendezvous(&na, RDV);
    let mut kern = lab.node(&na, "kern", "198.51.100.1");
    let mut user = lab.node(&nb, "user", "198.51.100.2");
    lab.start_with(
        &mut kern,
        &["--rendezvous", &rdv, "--hostname", "kern"].map(String::from),
    );
    lab.start_userspace(&mut user, &userspace_flags(&rdv));
    let (uid, gid, caps) = lab.credentials(&user);
    assert_eq!((uid, gid, caps), (UNPRIVILEGED, UNPRIVILEGED, 0));
    assert_eq!(user.info()["mode"], "userspace");
    assert_eq!(user.info()["socks5"], "127.0.0.1:1080");
    lab.trust(&kern, &user);

    // The same 20 MB on both sides, served by an HTTP server on each.
    let www = lab.dir.join("www");
    fs::create_dir(&www).unwrap();
    fs::set_permissions(&www, fs::Permissions::from_mode(0o755)).unwrap();
    let big = pseudo_random(20 * 1024 * 1024);
    let expected = Sha256::digest(&big);
    fs::write(www.join("big.bin"), &big).unwrap();
    let www = www.to_str().unwrap();
    let http = ["python3", "-m", "http.server", "--directory", www, "--bind"];
    lab.spawn_in(&na, &[&http[..], &["::", "8080"]].concat());
    lab.spawn_in(&nb, &[&http[..], &["127.0.0.1", "18080"]].concat());
    lab.serve_echo(&na, "::", 7);
    lab.serve_echo(&nb, "127.0.0.1", 18007);

    // Kernel node → userspace node: plain curl to the exposed port of its fd70 address.
    let got = lab.dir.join("from-user.bin");
    let url = format!("http://[{}]:8080/big.bin", user.address);
    assert!(
        fetch(&na, &[], &url, &got),
        "kernel → userspace HTTP never worked\n{}",
        user.log_text()
    );
    assert_eq!(Sha256::digest(fs::read(&got).unwrap()), expected);
    // Userspace node → kernel node: through the SOCKS5 proxy, the name resolved by pilotd.
    let got = lab.dir.join("from-kern.bin");
    let proxy = ["--socks5-hostname", "127.0.0.1:1080"];
    assert!(
        fetch(&nb, &proxy, "http://kern.pilot:8080/big.bin", &got),
        "userspace → kernel HTTP never worked\n{}",
        user.log_text()
    );
    assert_eq!(Sha256::digest(fs::read(&got).unwrap()), expected);
    // A name that is no trusted peer is refused by the proxy, not left hanging.
    let out = ns_exec(
        &nb,
        &[
            "curl",
            "-sS",
            "-m",
            "10",
            proxy[0],
            proxy[1],
            "http://nobody.pilot/",
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));

    // `pilotctl connect` from each side, with --message and with stdin.
    for (from, to, name) in [(&kern, &user, "user"), (&user, &kern, "kern")] {
        let message = format!("hello {name}");
        let out = ctl_in(from, &["connect", name, "7", "--message", &message], b"");
        assert!(out.status.success(), "connect {name}: {}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("echo:{message}")
        );
        let out = ctl_in(from, &["connect", &to.address, "7"], b"piped");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "echo:piped",
            "{}",
            text(&out)
        );
    }

    // Messages both ways, acknowledged once stored.
    let out = ctl_in(
        &kern,
        &["send-message", "user", "--data", "hello user"],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = ctl_in(
        &user,
        &[
            "send-message",
            "kern",
            "--data",
            r#"{"n": 1}"#,
            "--type",
            "json",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out));
    let got = inbox(&user);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["data"], "hello user");
    assert_eq!(got[0]["from"]["hostname"], "kern");
    assert_eq!(got[0]["from"]["public_key"], kern.key.as_str());
    let got = inbox(&kern);
    assert_eq!(got[0]["data"], serde_json::json!({"n": 1}));
    assert_eq!(got[0]["from"]["hostname"], "user");

    // Refused before sending: too large, not JSON.
    let huge = "a".repeat(70_000);
    let out = ctl_in(&kern, &["send-message", "user", "--data", &huge], b"");
    assert!(!out.status.success());
    assert!(text(&out).contains("the limit is 65536"), "{}", text(&out));
    let out = ctl_in(
        &kern,
        &["send-message", "user", "--data", "{oops", "--type", "json"],
        b"",
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("does not parse"), "{}", text(&out));
    // Refused by the receiver: garbage, and a header announcing 1 MB (never read).
    let out = ctl_in(
        &kern,
        &["connect", "user", "7001"],
        b"GET / HTTP/1.1\r\n\r\n",
    );
    assert!(out.stdout.starts_with(b"PACK\x01\x02"), "{}", text(&out));
    let mut oversize = b"PMSG\x01\x01".to_vec();
    oversize.extend(1_000_000u32.to_be_bytes());
    oversize.extend([b'x'; 4096]);
    let out = ctl_in(&kern, &["connect", "user", "7001"], &oversize);
    assert!(out.stdout.starts_with(b"PACK\x01\x01"), "{}", text(&out));
    // Nothing stored, nothing broken: a binary message from stdin still goes through.
    assert_eq!(inbox(&user).len(), 1);
    let out = ctl_in(
        &kern,
        &["send-message", "user", "--data", "-", "--type", "binary"],
        &[0, 1, 2, 255],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(inbox(&user)[1]["data_base64"], "AAEC/w==");

    // The inbox is the user's, private, and survives a restart of the receiver.
    let dir = fs::metadata(user.state_dir.join("inbox")).unwrap();
    assert_eq!((dir.uid(), dir.mode() & 0o777), (UNPRIVILEGED, 0o700));
    assert!(lab.stop(&mut user, Signal::SIGTERM), "{}", user.log_text());
    lab.start_userspace(&mut user, &userspace_flags(&rdv));
    let got = inbox(&user);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["data"], "hello user");
    // The kernel node still holds the old session: its first packets are stale, and the
    // restarted node starts a new handshake at once rather than after WireGuard's 15 s.
    let sent = eventually(Duration::from_secs(5), || {
        let out = ctl_in(&kern, &["send-message", "user", "--data", "again"], b"");
        out.status.success().then_some(())
    });
    assert!(sent.is_some(), "{}", user.log_text());
    let out = ctl(&user, &["inbox", "--clear"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cleared 3 messages"),
        "{}",
        text(&out)
    );
    assert!(inbox(&user).is_empty());
    assert!(lab.stop(&mut user, Signal::SIGTERM), "{}", user.log_text());
}
