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

use lab::{ns_exec, Lab, PILOTCTL, PILOTD, UNPRIVILEGED};

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

/// A node as its unit runs it (`User=`, `AmbientCapabilities=CAP_NET_ADMIN`,
/// `CapabilityBoundingSet=`, `NoNewPrivileges=`, `StateDirectory=`, `RuntimeDirectory=`), in a
/// namespace of its own and a private mount namespace where /dev/net/tun is a device node the
/// test made itself with `mode`, so the machine's own device is never touched.
struct ServiceNode {
    lab: Lab,
    ns: String,
    state: std::path::PathBuf,
    control: std::path::PathBuf,
    device: std::path::PathBuf,
}

impl ServiceNode {
    fn new(mode: u32) -> ServiceNode {
        let mut lab = Lab::new();
        let ns = lab.netns("s");
        fs::set_permissions(&lab.dir, fs::Permissions::from_mode(0o755)).unwrap();
        let (state, run) = (lab.dir.join("state"), lab.dir.join("run"));
        for dir in [&state, &run] {
            fs::create_dir(dir).unwrap();
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
            nix::unistd::chown(
                dir,
                Some(nix::unistd::Uid::from_raw(UNPRIVILEGED)),
                Some(nix::unistd::Gid::from_raw(UNPRIVILEGED)),
            )
            .unwrap();
        }
        // The TUN clone device is character device 10:200, owned by root.
        let device = lab.dir.join("tun");
        nix::sys::stat::mknod(
            &device,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(mode),
            nix::sys::stat::makedev(10, 200),
        )
        .unwrap();
        fs::set_permissions(&device, fs::Permissions::from_mode(mode)).unwrap();
        let control = run.join("pilotd.sock");
        ServiceNode {
            lab,
            ns,
            state,
            control,
            device,
        }
    }

    /// The command line: our device over /dev/net/tun, then pilotd under the unit's
    /// credentials, with `env` (e.g. NOTIFY_SOCKET=...) set.
    fn command(&self, env: &[String]) -> Vec<String> {
        let mut cmd: Vec<String> = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount --bind \"$0\" /dev/net/tun && exec \"$@\"",
            self.device.to_str().unwrap(),
            "env",
        ]
        .map(String::from)
        .into();
        cmd.extend(env.iter().cloned());
        cmd.extend(
            [
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
                self.state.to_str().unwrap(),
                "--control",
                self.control.to_str().unwrap(),
            ]
            .map(String::from),
        );
        cmd
    }

    /// Starts the node with a notify socket and checks what systemd would see: READY=1 once
    /// the interface carries its address and the control socket answers, STOPPING=1 on
    /// SIGTERM, and nothing left behind.
    fn ready_and_stops(&mut self) {
        let notify_path = self.lab.dir.join("notify");
        let _ = fs::remove_file(&notify_path);
        let notify = notify_socket(&notify_path);
        let log = self.lab.dir.join("node.log");
        let env = [format!("NOTIFY_SOCKET={}", notify_path.display())];
        let cmd = self.command(&env);
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let node = self.lab.spawn_logged(&self.ns, &cmd, Some(&log));

        let ready = next_notice(&notify, &log);
        assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
        // At READY=1 the interface carries its address and the control socket answers.
        let link = ns_exec(&self.ns, &["ip", "-6", "addr", "show", "dev", "pilot0"]);
        let link = String::from_utf8_lossy(&link.stdout);
        assert!(link.contains("inet6 fd70::"), "{link}");
        assert!(link.contains(",UP"), "{link}");
        let info = Command::new(PILOTCTL)
            .args([
                "--control",
                self.control.to_str().unwrap(),
                "info",
                "--json",
            ])
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

        self.lab.signal(node, Signal::SIGTERM);
        let stopping = next_notice(&notify, &log);
        assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping}");
        assert!(self.lab.wait(node, Duration::from_secs(10)));
        assert!(!ns_exec(&self.ns, &["ip", "link", "show", "pilot0"])
            .status
            .success());
        assert!(!self.control.exists(), "control socket left behind");
    }
}

#[test]
fn node_as_an_unprivileged_user_with_cap_net_admin_is_ready_once_the_interface_is_up() {
    let test = "node_as_an_unprivileged_user_with_cap_net_admin_is_ready_once_the_interface_is_up";
    if !lab::privileged(test) {
        return;
    }
    // Debian's udev rule makes the device 0666; opening it grants nothing without
    // CAP_NET_ADMIN, which the unit gives.
    ServiceNode::new(0o666).ready_and_stops();
}

#[test]
fn node_under_its_unit_with_a_0600_device_names_the_cause_then_works_with_the_packages_acl() {
    let test =
        "node_under_its_unit_with_a_0600_device_names_the_cause_then_works_with_the_packages_acl";
    if !lab::privileged(test) {
        return;
    }
    assert!(
        lab::command_exists("systemd-tmpfiles") || std::env::var("CI").as_deref() != Ok("true"),
        "{test}: CI=true but systemd-tmpfiles is missing"
    );
    let mut node = ServiceNode::new(0o600);

    // Without the package's grant: refused, naming the device's mode and owner, the user,
    // the capability it does hold, and the fix. Nothing is left behind.
    let cmd = node.command(&[]);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let out = ns_exec(&node.ns, &cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for part in [
        "/dev/net/tun: permission denied",
        "the device is crw------- root:root",
        "runs as user nobody (uid 65534)",
        "holds CAP_NET_ADMIN",
        "setfacl -m u:nobody:rw /dev/net/tun",
        "chmod 0666 /dev/net/tun",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    assert!(!err.contains("lacks CAP_NET_ADMIN"), "{err}");
    assert!(!ns_exec(&node.ns, &["ip", "link", "show", "pilot0"])
        .status
        .success());

    // The package's rule (systemd/pilot.tmpfiles, applied at boot, install and every start),
    // with this test's device for /dev/net/tun and `nobody` for `pilot`, applied by the real
    // systemd-tmpfiles: the same node then comes up.
    if !lab::command_exists("systemd-tmpfiles") {
        eprintln!("SKIP the ACL half of {test}: needs systemd-tmpfiles");
        return;
    }
    let rules = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/pilot.tmpfiles"
    ))
    .unwrap();
    let rule = rules
        .lines()
        .find(|l| l.starts_with("a+ /dev/net/tun "))
        .expect("pilot.tmpfiles grants /dev/net/tun");
    let rule = rule
        .replace("/dev/net/tun", node.device.to_str().unwrap())
        .replace("u:pilot:", "u:nobody:");
    let conf = node.lab.dir.join("tun-acl.conf");
    fs::write(&conf, format!("{rule}\n")).unwrap();
    lab::run("systemd-tmpfiles", &["--create", conf.to_str().unwrap()]);
    let mode = fs::metadata(&node.device).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o007,
        0,
        "the grant must not open the device to others"
    );
    node.ready_and_stops();
}
