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

/// A log level tracing would read as a target name (and so log nothing) is refused when the
/// command line is parsed, from the flag or the environment, listing the accepted values.
#[test]
fn an_unknown_log_level_is_refused_with_the_accepted_values() {
    let dir = temp("loglevel");
    for (flag, env) in [(Some("verbose"), None), (None, Some("warning"))] {
        let mut cmd = Command::new(PILOTD);
        cmd.env_remove("PILOT_LOG");
        if let Some(level) = flag {
            cmd.args(["--log-level", level]);
        }
        if let Some(level) = env {
            cmd.env("PILOT_LOG", level);
        }
        let out = cmd
            .arg("identity")
            .env("PILOT_STATE_DIR", &dir)
            .output()
            .unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("is not a log level: use one of error, warn, info, debug, trace, off"),
            "{err}"
        );
    }
    assert!(!dir.exists(), "a refused command must not create state");
}

/// Writes `text` as `NAME` in a fresh directory and returns the file's path.
fn config_file(tag: &str, name: &str, text: &str) -> std::path::PathBuf {
    let dir = temp(tag);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn up_with_a_bad_config_file_stops_before_touching_anything() {
    let state = temp("cfgstate");
    let state_line = format!("state_dir = {:?}\n", state.to_str().unwrap());
    let cases = [
        (
            format!("# pilotd\n{state_line}interface = \"pilotcfg0\"\nmtu = \"big\"\n"),
            ":4:7: mtu: expected an integer 1280..65455, found \"big\"",
        ),
        (
            format!("{state_line}interface = \"pilotcfg0\"\n\nrendevous = \"192.0.2.1:7000\"\n"),
            ":4:1: unknown key `rendevous`; expected one of: state_dir,",
        ),
        (
            format!("{state_line}interface = \"pilotcfg0\"\npeers = [\"192.0.2.1:1\"]\n"),
            ":3:9: peers: `192.0.2.1:1`: expected KEY@HOST:PORT",
        ),
    ];
    for (text, expected) in cases {
        let file = config_file("cfgup", "pilotd.toml", &text);
        let out = Command::new(PILOTD)
            .arg("up")
            .arg("--config")
            .arg(&file)
            .env_remove("PILOT_STATE_DIR")
            .env("PILOT_CONTROL", state.join("pilotd.sock"))
            .output()
            .unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        let expected = format!("pilotd: {}{expected}", file.display());
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.starts_with(&expected), "{err}\nexpected {expected}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!state.exists(), "a refused start must not create state");
        assert!(
            !std::path::Path::new("/sys/class/net/pilotcfg0").exists(),
            "a refused start must not create the interface"
        );
        std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
    }
}

#[test]
fn rendezvous_with_a_bad_config_file_stops_before_touching_anything() {
    let data = temp("cfgrdvdata");
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nkeepalive = 0\n",
        data.to_str().unwrap()
    );
    let file = config_file("cfgrdv", "rendezvous.toml", &text);
    let out = Command::new(PILOTD)
        .args(["rendezvous", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    let expected = format!(
        "pilotd: {}:3:13: keepalive: expected seconds 1..65535, found 0",
        file.display()
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with(&expected), "{err}\nexpected {expected}");
    assert!(
        !data.exists(),
        "a refused start must not create the data directory"
    );
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

/// The config file's `log_level` is the one logging starts with, and `--log-level` beats it.
#[test]
fn config_file_log_level_takes_effect_and_the_flag_overrides_it() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::Duration;

    // Runs the rendezvous until it logs at INFO that it listens, then, with `probe`, until it
    // logs at TRACE that it refused a datagram.
    let run = |tag: &str, log_level: &str, flags: &[&str], probe: bool| {
        let data = temp(&format!("{tag}data"));
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nlog_level = \"{log_level}\"\n",
            data.to_str().unwrap()
        );
        let file = config_file(tag, "rendezvous.toml", &text);
        let mut child = Command::new(PILOTD)
            .args(flags)
            .args(["rendezvous", "--config"])
            .arg(&file)
            .env_remove("PILOT_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let wait_for = |needle: &str| -> String {
            loop {
                match lines.recv_timeout(Duration::from_secs(20)) {
                    Ok(line) if line.contains(needle) => return line,
                    Ok(_) => {}
                    Err(e) => panic!("no `{needle}` in the rendezvous' log: {e}"),
                }
            }
        };
        let listening = wait_for("rendezvous listening");
        let port: u16 = (listening.split_whitespace())
            .find_map(|w| w.strip_prefix("main_port="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no main_port in `{listening}`"));
        if probe {
            // Not a control message: refused, and the refusal is logged at TRACE.
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.send_to(b"\x50junk", ("127.0.0.1", port)).unwrap();
            wait_for("control message refused");
        }
        child.kill().unwrap();
        child.wait().unwrap();
        std::fs::remove_dir_all(&data).unwrap();
        std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
    };
    // Above the default (info): only the file can have asked for TRACE.
    run("cfglog", "trace", &[], true);
    // The file says `error`, which would hide the INFO line; the flag wins.
    run("cfglogflag", "error", &["--log-level", "info"], false);
}

/// The seed's habits that are refused before any daemon is asked, each naming what to type.
#[test]
fn seed_habits_refused_without_a_daemon_say_what_to_type() {
    let dir = temp("seed");
    let sock = dir.join("pilotd.sock");
    let cases: [(&str, &[&str], &str); 5] = [
        (
            PILOTCTL,
            &["approve", "0:0000.0000.002A"],
            "`0:0000.0000.002A` looks like a Pilot Protocol node id; pilot names a node by a \
             hostname, a node address (xxxx.xxxx.xxxx), an fd70:: address or a public key: \
             `pilotctl pending` lists requesters in those forms",
        ),
        (
            PILOTCTL,
            &["daemon", "start", "--public"],
            "`--endpoint IP:PORT --public`",
        ),
        (PILOTD, &["up", "--public"], "`--endpoint IP:PORT --public`"),
        (
            PILOTD,
            &["up", "--endpoint", "198.51.100.7:51870"],
            "give --rendezvous [KEY@]HOST:PORT too",
        ),
        (
            PILOTCTL,
            &["init", "--endpoint", "0.0.0.0:51870"],
            "not a wildcard, multicast address or port 0",
        ),
    ];
    for (bin, args, expected) in cases {
        let out = Command::new(bin)
            .args(args)
            .env("PILOT_CONTROL", &sock)
            .env("PILOT_STATE_DIR", dir.join("state"))
            .env("PILOT_CONFIG", dir.join("pilotd.toml"))
            .output()
            .unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    assert!(!dir.exists(), "nothing was created");
}
