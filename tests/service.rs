//! The daemons as systemd runs them (`systemd/*.service`, `Type=notify`): readiness and
//! shutdown notices arrive on `NOTIFY_SOCKET`, and only once the daemon really serves. The
//! node runs as an unprivileged user holding nothing but CAP_NET_ADMIN, as its unit grants.

mod lab;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use lab::{ns_exec, Lab, PILOTCTL, PILOTD};

/// A notification socket as systemd's: one datagram per notice.
fn notify_socket(path: &Path) -> UnixDatagram {
    let socket = UnixDatagram::bind(path).unwrap();
    // The daemon may run as another user; systemd's socket is writable by all, too.
    fs::set_permissions(path, fs::Permissions::from_mode(0o777)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    socket
}

fn next_notice(socket: &UnixDatagram, log: &Path) -> String {
    let mut buf = [0u8; 4096];
    match socket.recv(&mut buf) {
        Ok(n) => String::from_utf8(buf[..n].to_vec()).unwrap(),
        Err(e) => panic!(
            "no notice ({e}); daemon log:\n{}",
            fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

/// The value of `KEY=` in a notice.
fn field<'a>(notice: &'a str, key: &str) -> Option<&'a str> {
    notice
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn rendezvous_is_ready_once_both_ports_are_bound_and_says_when_it_stops() {
    let dir = std::env::temp_dir().join(format!("pilot-service-rdv-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let notify = notify_socket(&dir.join("notify"));
    let log = dir.join("rdv.log");
    let mut child = Command::new(PILOTD)
        .args(["rendezvous", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .env("NOTIFY_SOCKET", dir.join("notify"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();

    let ready = next_notice(&notify, &log);
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    let status = field(&ready, "STATUS").unwrap();
    // "serving 127.0.0.1 ports MAIN and ALT, N registrations": both are taken already.
    let ports: Vec<u16> = status
        .split([' ', ','])
        .filter_map(|w| w.parse().ok())
        .take(2)
        .collect();
    assert_eq!(ports.len(), 2, "{status}");
    for port in ports {
        let taken = std::net::UdpSocket::bind(("127.0.0.1", port));
        assert!(taken.is_err(), "port {port} was not bound at READY=1");
    }

    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    let stopping = next_notice(&notify, &log);
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping}");
    assert!(child.wait().unwrap().success());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn node_as_an_unprivileged_user_with_cap_net_admin_is_ready_once_the_interface_is_up() {
    let test = "node_as_an_unprivileged_user_with_cap_net_admin_is_ready_once_the_interface_is_up";
    if !lab::privileged(test) {
        return;
    }
    let mut lab = Lab::new();
    let ns = lab.netns("s");
    fs::set_permissions(&lab.dir, fs::Permissions::from_mode(0o755)).unwrap();
    // What StateDirectory= and RuntimeDirectory= make: directories owned by the service user.
    let (state, run) = (lab.dir.join("state"), lab.dir.join("run"));
    for dir in [&state, &run] {
        fs::create_dir(dir).unwrap();
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
        nix::unistd::chown(
            dir,
            Some(nix::unistd::Uid::from_raw(65534)),
            Some(nix::unistd::Gid::from_raw(65534)),
        )
        .unwrap();
    }
    let control = run.join("pilotd.sock");
    let notify_path = lab.dir.join("notify");
    let notify = notify_socket(&notify_path);
    let log = lab.dir.join("node.log");
    let env_notify = format!("NOTIFY_SOCKET={}", notify_path.display());
    // The unit's User=, AmbientCapabilities=, CapabilityBoundingSet= and NoNewPrivileges=.
    let node = lab.spawn_logged(
        &ns,
        &[
            "env",
            &env_notify,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all,+net_admin",
            "--ambient-caps=+net_admin",
            "--bounding-set=-all,+net_admin",
            "--no-new-privs",
            PILOTD,
            "up",
            "--listen-port",
            "0",
            "--state-dir",
            state.to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
        ],
        Some(&log),
    );

    let ready = next_notice(&notify, &log);
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    // At READY=1 the interface carries its address and the control socket answers.
    let link = ns_exec(&ns, &["ip", "-6", "addr", "show", "dev", "pilot0"]);
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains("inet6 fd70::"), "{link}");
    assert!(link.contains(",UP"), "{link}");
    let info = Command::new(PILOTCTL)
        .args(["--control", control.to_str().unwrap(), "info", "--json"])
        .output()
        .unwrap();
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let address = info["address"].as_str().unwrap();
    assert!(
        field(&ready, "STATUS").unwrap().contains(address),
        "{ready}"
    );
    assert!(link.contains(address), "{link}");

    lab.signal(node, Signal::SIGTERM);
    let stopping = next_notice(&notify, &log);
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping}");
    assert!(lab.wait(node, Duration::from_secs(10)));
    assert!(!ns_exec(&ns, &["ip", "link", "show", "pilot0"])
        .status
        .success());
    assert!(!control.exists(), "control socket left behind");
}
