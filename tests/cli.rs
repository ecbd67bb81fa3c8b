//! The binaries as a user runs them, without root.

use std::process::Command;

const PILOTD: &str = env!("CARGO_BIN_EXE_pilotd");
const PILOTCTL: &str = env!("CARGO_BIN_EXE_pilotctl");

fn temp(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pilot-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn pilotctl_without_a_daemon_names_the_socket_in_one_line() {
    let sock = temp("nodaemon").join("pilotd.sock");
    for args in [
        &["info"][..],
        &["peers", "--json"],
        &["ping", "a1b2.c3d4.e5f6", "-c", "1"],
    ] {
        let out = Command::new(PILOTCTL)
            .arg("--control")
            .arg(&sock)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("not running") && err.contains(sock.to_str().unwrap()),
            "{err}"
        );
    }
    // The environment variable works like the flag.
    let out = Command::new(PILOTCTL)
        .env("PILOT_CONTROL", &sock)
        .arg("info")
        .output()
        .unwrap();
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains(sock.to_str().unwrap()));
}

#[test]
fn identity_is_made_once_and_printed() {
    let dir = temp("identity");
    let show = || {
        let out = Command::new(PILOTD)
            .args(["identity", "--json"])
            .env("PILOT_STATE_DIR", &dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = show();
    assert_eq!(first, show());
    let address = first["address"].as_str().unwrap();
    assert!(address.starts_with("fd70::"), "{address}");
    let node = first["node"].as_str().unwrap();
    assert_eq!(node.split('.').count(), 3);
    assert_eq!(first["public_key"].as_str().unwrap().len(), 64);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_arguments_are_refused_before_anything_starts() {
    let dir = temp("badargs");
    let cases: [(&[&str], &str); 3] = [
        (&["up", "--mtu", "1000"], "--mtu 1000 is out of range"),
        (&["up", "--peer", "nothex@192.0.2.1:1"], "not a public key"),
        (&["up", "--peer", "192.0.2.1:1"], "KEY@HOST:PORT"),
    ];
    for (args, expected) in cases {
        let out = Command::new(PILOTD)
            .args(args)
            .env("PILOT_STATE_DIR", &dir)
            .output()
            .unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            !out.status.success() && err.contains(expected),
            "{args:?}: {err}"
        );
    }
    assert!(!dir.exists(), "a refused start must not create state");
}
