//! The tests' side of the lab for tests that need the real kernel: `pilotd` processes (nodes,
//! rendezvous) inside namespaces and NAT labs built by `pilot-lab` (crates/pilot-lab), and
//! cleanup that removes everything a test made, even when it fails.
//!
//! Needs root. Without it a test prints why and passes — except under `CI=true`, where a
//! missing prerequisite fails the test instead of hiding it.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[allow(unused_imports)] // each test binary uses some of them
pub use pilot_lab::{NatKind, NatLab, Netns, Options, Router, V6Kind};

pub const PILOTD: &str = env!("CARGO_BIN_EXE_pilotd");
pub const PILOTCTL: &str = env!("CARGO_BIN_EXE_pilotctl");
pub const PORT: u16 = 51870;
/// The user (and group) unprivileged daemons run as: `nobody`.
pub const UNPRIVILEGED: u32 = 65534;

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Debian's libfaketime (package `faketime`); panics naming the package when it is missing.
pub fn libfaketime() -> PathBuf {
    let found = fs::read_dir("/usr/lib").ok().and_then(|dirs| {
        dirs.flatten()
            .map(|d| d.path().join("faketime/libfaketime.so.1"))
            .find(|p| p.exists())
    });
    found.expect("libfaketime not found under /usr/lib/*/faketime: install the `faketime` package")
}

/// Whether root-only tests can run here. Under `CI=true` a missing prerequisite panics.
pub fn privileged(test: &str) -> bool {
    let tools = ["ip", "curl", "python3", "setpriv", "nft", "ping"];
    let mut missing = pilot_lab::prereq::missing(true, &tools);
    if !Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun".to_owned());
    }
    pilot_lab::prereq::can_run(test, &missing)
}

#[allow(unused_imports)] // some test binaries use it
pub use pilot_lab::sh::command_exists;

/// Namespaces, processes and a scratch directory, all removed on drop.
pub struct Lab {
    pub tag: String,
    pub dir: PathBuf,
    /// Namespaces this lab made (deleted on drop, after its processes are stopped).
    namespaces: Vec<Netns>,
    children: Vec<Child>,
    /// A NAT lab (crates/pilot-lab) this lab brought up (taken down on drop).
    natlab: Option<String>,
    /// `/etc/netns/NS` directories this lab made (removed on drop).
    etc_dirs: Vec<PathBuf>,
}

/// A node in a namespace.
pub struct NodeHandle {
    pub ns: String,
    pub state_dir: PathBuf,
    pub control: PathBuf,
    pub log: PathBuf,
    pub key: String,
    pub address: String,
    pub underlay: String,
    child: Option<usize>,
}

impl Lab {
    pub fn new() -> Lab {
        // Short and unique across parallel tests and parallel runs: namespace names and the
        // interface names made from them stay within 15 bytes.
        let tag = format!(
            "p{:x}{}",
            std::process::id() % 0xfffff,
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("pilot-lab-{tag}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Lab {
            tag,
            dir,
            namespaces: Vec::new(),
            children: Vec::new(),
            natlab: None,
            etc_dirs: Vec::new(),
        }
    }

    /// Brings up a NAT lab (crates/pilot-lab) with the given router kinds; returns its name
    /// (namespaces are `NAME-a`, `NAME-a2`, `NAME-b`, `NAME-rdv`, …).
    pub fn natlab(&mut self, nat1: &str, nat2: &str) -> String {
        self.natlab_with(Options::new(nat1.parse().unwrap(), nat2.parse().unwrap()))
    }

    /// [`Lab::natlab`] with more options (IPv6 LANs, IPv6-only hosts, loss, delay).
    pub fn natlab_with(&mut self, options: Options) -> String {
        // natlab names are at most 6 characters.
        let unique = std::process::id() * 64 + NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let name = format!("n{:x}", unique % 0xf_ffff);
        self.natlab = Some(name.clone());
        if let Err(e) = NatLab::up(&name, &options) {
            panic!("natlab up {name}: {e:#}");
        }
        name
    }

    /// Flushes a NAT router's conntrack table (every mapping): `router` is nat1 or nat2.
    pub fn flush(&self, router: &str) {
        let name = self.natlab.as_deref().expect("a natlab is up");
        let lab = NatLab::open(name).unwrap();
        lab.flush(router.parse().unwrap())
            .unwrap_or_else(|e| panic!("natlab flush {name} {router}: {e:#}"));
    }

    /// A namespace with loopback up.
    pub fn netns(&mut self, suffix: &str) -> String {
        let name = format!("{}{}", self.tag, suffix);
        let ns = Netns::add(&name).unwrap_or_else(|e| panic!("{e:#}"));
        self.namespaces.push(ns);
        name
    }

    /// Two namespaces on one virtual LAN, 198.51.100.1 and .2 (documentation range).
    pub fn two_hosts(&mut self) -> (String, String) {
        let (a, b) = (self.netns("a"), self.netns("b"));
        let (va, vb) = (format!("{}va", self.tag), format!("{}vb", self.tag));
        let [na, nb] = [
            &self.namespaces[self.namespaces.len() - 2],
            &self.namespaces[self.namespaces.len() - 1],
        ];
        na.veth(&va, "198.51.100.1/24", nb, &vb, "198.51.100.2/24")
            .unwrap_or_else(|e| panic!("{e:#}"));
        (a, b)
    }

    /// [`Lab::two_hosts`] with a node on each, `a` at .1 and `b` at .2 (not started).
    pub fn two_nodes(&mut self) -> (NodeHandle, NodeHandle) {
        let (na, nb) = self.two_hosts();
        (
            self.node(&na, "a", "198.51.100.1"),
            self.node(&nb, "b", "198.51.100.2"),
        )
    }

    /// Makes (or reuses) the identity of a node that will live in `ns`.
    pub fn node(&self, ns: &str, name: &str, underlay: &str) -> NodeHandle {
        let state_dir = self.dir.join(name);
        let out = run(
            PILOTD,
            &[
                "identity",
                "--json",
                "--state-dir",
                state_dir.to_str().unwrap(),
            ],
        );
        let id: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        NodeHandle {
            ns: ns.to_owned(),
            control: state_dir.join("pilotd.sock"),
            log: self.dir.join(format!("{name}.log")),
            state_dir,
            key: id["public_key"].as_str().unwrap().to_owned(),
            address: id["address"].as_str().unwrap().to_owned(),
            underlay: underlay.to_owned(),
            child: None,
        }
    }

    /// Starts `pilotd up` for `node` with `peers` as static peers and waits until it answers.
    pub fn start(&mut self, node: &mut NodeHandle, peers: &[&NodeHandle]) {
        let extra: Vec<String> = peers
            .iter()
            .flat_map(|p| {
                [
                    "--peer".to_owned(),
                    format!("{}@{}:{PORT}", p.key, p.underlay),
                ]
            })
            .collect();
        self.start_with(node, &extra);
    }

    /// Starts `pilotd up` for `node` with extra flags and waits until it answers.
    pub fn start_with(&mut self, node: &mut NodeHandle, extra: &[String]) {
        self.start_as(node, &[PILOTD], extra);
    }

    /// Starts `pilotd up` for `node` with its system clock off by `offset` (libfaketime's
    /// relative form: `-365d`, `+1h`): the wall clock only, as on a board without RTC —
    /// the monotonic clock is left alone.
    pub fn start_with_clock(&mut self, node: &mut NodeHandle, offset: &str, extra: &[String]) {
        let faketime = format!("FAKETIME={offset}");
        let preload = format!("LD_PRELOAD={}", libfaketime().display());
        let program = [
            "env",
            &preload,
            &faketime,
            "FAKETIME_DONT_FAKE_MONOTONIC=1",
            PILOTD,
        ];
        self.start_as(node, &program, extra);
    }

    /// Starts `pilotd up --userspace` for `node` as an unprivileged user (uid and gid
    /// [`UNPRIVILEGED`], no capabilities at all), with extra flags, and waits until it answers.
    /// The state directory is handed to that user, and pilotd runs from a copy in the lab
    /// directory: the build directory may be out of that user's reach.
    pub fn start_userspace(&mut self, node: &mut NodeHandle, extra: &[String]) {
        let bin = self.dir.join("pilotd");
        if !bin.exists() {
            fs::copy(PILOTD, &bin).unwrap();
        }
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755)).unwrap();
        let owner = format!("{UNPRIVILEGED}:{UNPRIVILEGED}");
        fs::create_dir_all(&node.state_dir).unwrap();
        run("chown", &["-R", &owner, node.state_dir.to_str().unwrap()]);
        let uid = format!("--reuid={UNPRIVILEGED}");
        let gid = format!("--regid={UNPRIVILEGED}");
        let setpriv = [
            "setpriv",
            &uid,
            &gid,
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            bin.to_str().unwrap(),
        ];
        let mut extra = extra.to_vec();
        extra.insert(0, "--userspace".into());
        self.start_as(node, &setpriv, &extra);
    }

    /// The uid, gid and effective capabilities of a node's daemon, from /proc.
    pub fn credentials(&self, node: &NodeHandle) -> (u32, u32, u64) {
        let pid = self.children[node.child.expect("node was started")].id();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            line.split_whitespace().nth(1).unwrap().to_owned()
        };
        let cap = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
        (
            field("Uid:").parse().unwrap(),
            field("Gid:").parse().unwrap(),
            cap,
        )
    }

    /// Starts `PROGRAM… up` (the program: pilotd, or a command that ends by running it) and
    /// waits until the daemon answers.
    fn start_as(&mut self, node: &mut NodeHandle, program: &[&str], extra: &[String]) {
        let state = node.state_dir.display().to_string();
        let control = node.control.display().to_string();
        let mut cmd = program.to_vec();
        cmd.extend(["up", "--log-level", "debug"]);
        cmd.extend(["--state-dir", &state, "--control", &control]);
        cmd.extend(extra.iter().map(String::as_str));
        let (ns, log) = (node.ns.clone(), node.log.clone());
        node.child = Some(self.spawn_logged(&ns, &cmd, Some(&log)));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ctl(node, &["info"]).status.success() {
            if let Some(status) = self.children[node.child.unwrap()].try_wait().unwrap() {
                panic!(
                    "pilotd exited ({status}) during start:\n{}",
                    fs::read_to_string(&node.log).unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "pilotd did not come up:\n{}",
                node.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` to a node's daemon and waits for it to exit; returns whether it exited 0.
    pub fn stop(&mut self, node: &mut NodeHandle, signal: nix::sys::signal::Signal) -> bool {
        let index = node.child.take().expect("node was started");
        let child = &mut self.children[index];
        // `ip netns exec` execs pilotd in place, so the child's pid is pilotd's.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            assert!(Instant::now() < deadline, "pilotd ignored {signal}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `pilotd rendezvous` in `ns` listening on `listen` (its data in the lab directory,
    /// log in `rdv.log`); returns how nodes name it, `KEY@listen`, and its process index.
    /// Starting it again later reuses the same data directory and key.
    pub fn rendezvous(&mut self, ns: &str, listen: &str) -> (String, usize) {
        self.rendezvous_with(ns, listen, &[])
    }

    /// [`Lab::rendezvous`] with extra `pilotd rendezvous` flags.
    pub fn rendezvous_with(&mut self, ns: &str, listen: &str, extra: &[&str]) -> (String, usize) {
        self.rendezvous_named("rdv", ns, listen, extra)
    }

    /// [`Lab::rendezvous_with`] keeping its data in `NAME/` and its log in `NAME.log` of the
    /// lab's directory, for a second rendezvous beside the first.
    pub fn rendezvous_named(
        &mut self,
        name: &str,
        ns: &str,
        listen: &str,
        extra: &[&str],
    ) -> (String, usize) {
        let dir = self.dir.join(name);
        let out = run(
            PILOTD,
            &["identity", "--json", "--state-dir", dir.to_str().unwrap()],
        );
        let id: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let log = self.dir.join(format!("{name}.log"));
        let dir = dir.to_str().unwrap();
        let mut cmd = vec![
            PILOTD,
            "rendezvous",
            "--listen",
            listen,
            "--data-dir",
            dir,
            "--log-level",
            "debug",
        ];
        cmd.extend(extra);
        let index = self.spawn_logged(ns, &cmd, Some(&log));
        let key = id["public_key"].as_str().unwrap();
        (format!("{key}@{listen}"), index)
    }

    /// The handshake a user does: `a` asks `b`, `b` sees the request and approves; returns once
    /// both list each other as trusted.
    pub fn trust(&self, a: &NodeHandle, b: &NodeHandle) {
        let out = ctl(a, &["handshake", &b.key, "lab test"]);
        assert!(
            out.status.success(),
            "handshake: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            a.log_text()
        );
        let asked = eventually(Duration::from_secs(10), || {
            b.pending()
                .iter()
                .any(|p| p["public_key"] == a.key.as_str())
                .then_some(())
        });
        assert!(asked.is_some(), "request never arrived\n{}", b.log_text());
        let out = ctl(b, &["approve", &a.key]);
        assert!(
            out.status.success(),
            "approve: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (x, y) in [(a, b), (b, a)] {
            let trusted = eventually(Duration::from_secs(10), || x.trusts(y).then_some(()));
            assert!(
                trusted.is_some(),
                "{} never trusted {}\n{}",
                x.ns,
                y.ns,
                x.log_text()
            );
        }
    }

    /// Gives programs started with `ip netns exec NS` their own resolver configuration:
    /// `ip netns exec` bind-mounts each file of `/etc/netns/NS/` over the one in `/etc`.
    /// Writes `resolv.conf` (and an empty `hosts`, so the host's entries do not leak in).
    pub fn resolver(&mut self, ns: &str, resolv_conf: &str) -> PathBuf {
        let dir = PathBuf::from("/etc/netns").join(ns);
        fs::create_dir_all(&dir).unwrap();
        self.etc_dirs.push(dir.clone());
        fs::write(dir.join("resolv.conf"), resolv_conf).unwrap();
        fs::write(dir.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        dir
    }

    /// Runs a long-lived helper process in `ns` (an HTTP server, a listener); killed on drop.
    /// Returns its index for [`Lab::kill`] and [`Lab::wait`].
    pub fn spawn_in(&mut self, ns: &str, cmd: &[&str]) -> usize {
        self.spawn_logged(ns, cmd, None)
    }

    /// Like [`Lab::spawn_in`], with stderr written to `log`.
    /// The log is appended to, so a process started again keeps its earlier output.
    pub fn spawn_logged(&mut self, ns: &str, cmd: &[&str], log: Option<&Path>) -> usize {
        let append = |l: &Path| {
            let file = fs::OpenOptions::new().create(true).append(true).open(l);
            Stdio::from(file.unwrap())
        };
        let stderr = log.map_or_else(Stdio::null, append);
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        self.children.push(child);
        self.children.len() - 1
    }

    /// Sends `signal` to a process started by this lab (by its PID, nothing else).
    pub fn signal(&mut self, index: usize, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.children[index].id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
    }

    /// SIGKILLs a process started by this lab.
    pub fn kill(&mut self, index: usize) {
        let child = &mut self.children[index];
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits for a process started by this lab; returns whether it exited 0.
    pub fn wait(&mut self, index: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.children[index].try_wait().unwrap() {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "process did not finish in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether one overlay ping from `from` to `to` is answered (`pilotctl ping`, 1 s).
pub fn pings(from: &NodeHandle, to: &NodeHandle) -> bool {
    ctl(from, &["ping", &to.address, "-c", "1", "-W", "1"])
        .status
        .success()
}

/// The path `from` uses to `to`, from `pilotctl peers --json` (empty when it has none).
pub fn path(from: &NodeHandle, to: &NodeHandle) -> String {
    let out = ctl(from, &["peers", "--json"]);
    let peers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let peer = peers.as_array().and_then(|p| {
        p.iter()
            .find(|p| p["public_key"] == to.key.as_str())
            .cloned()
    });
    peer.map(|p| p["path"].as_str().unwrap_or("-").to_owned())
        .unwrap_or_default()
}

/// `pilotctl netcheck --json` of a node (null when it does not answer).
pub fn netcheck(node: &NodeHandle) -> serde_json::Value {
    let out = ctl(node, &["netcheck", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// A TCP server answering `echo:` + everything it read, once the client has finished sending.
const ECHO_SERVER: &str = r#"
import socket, sys, threading
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port)); s.listen()
def serve(c):
    data = b""
    while True:
        chunk = c.recv(65536)
        if not chunk: break
        data += chunk
    c.sendall(b"echo:" + data); c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,)).start()
"#;

impl Lab {
    /// Runs an echo server (see [`ECHO_SERVER`]) on `host:port` in `ns`; killed on drop.
    pub fn serve_echo(&mut self, ns: &str, host: &str, port: u16) -> usize {
        let script = self.dir.join("echo.py");
        if !script.exists() {
            fs::write(&script, ECHO_SERVER).unwrap();
        }
        let port = port.to_string();
        self.spawn_in(ns, &["python3", script.to_str().unwrap(), host, &port])
    }

    /// Serves `dir` over HTTP on port 8080 of every address of `server`'s namespace, and
    /// returns whether `client` could fetch `probe` from it across the overlay within
    /// `timeout` (retried: the first request may wait for a handshake or a punch).
    pub fn serve_http(
        &mut self,
        server: &NodeHandle,
        dir: &Path,
        client: &NodeHandle,
        probe: &str,
        timeout: Duration,
    ) -> bool {
        let dir = dir.to_str().unwrap();
        self.spawn_in(
            &server.ns,
            &[
                "python3",
                "-m",
                "http.server",
                "--bind",
                "::",
                "8080",
                "--directory",
                dir,
            ],
        );
        let url = format!("http://[{}]:8080/{probe}", server.address);
        let get = ["curl", "-sS", "--fail", "-m", "3", "-o", "/dev/null", &url];
        eventually(timeout, || {
            ns_exec(&client.ns, &get).status.success().then_some(())
        })
        .is_some()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.namespaces.clear();
        if let Some(name) = &self.natlab {
            if let Err(e) = NatLab::down(name) {
                eprintln!("natlab down {name}: {e:#}");
            }
        }
        for dir in &self.etc_dirs {
            let _ = fs::remove_dir_all(dir);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl NodeHandle {
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn info(&self) -> serde_json::Value {
        let out = ctl(self, &["info", "--json"]);
        assert!(
            out.status.success(),
            "info failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn drops(&self, reason: &str) -> u64 {
        self.info()["drops"][reason].as_u64().unwrap()
    }

    /// `pilotctl pending --json`.
    pub fn pending(&self) -> Vec<serde_json::Value> {
        let out = ctl(self, &["pending", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// Whether this node lists `other` as trusted.
    pub fn trusts(&self, other: &NodeHandle) -> bool {
        let out = ctl(self, &["trust", "--json"]);
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return false;
        };
        v["trusted"]
            .as_array()
            .is_some_and(|t| t.iter().any(|p| p["public_key"] == other.key.as_str()))
    }
}

/// `pilotctl --control <node's socket> args…`
pub fn ctl(node: &NodeHandle, args: &[&str]) -> Output {
    Command::new(PILOTCTL)
        .arg("--control")
        .arg(&node.control)
        .args(args)
        .output()
        .unwrap()
}

/// `pilotctl --control <node's socket> args…` run inside the node's namespace (so a stream it
/// opens in kernel mode goes through the node's interface), with `input` on its stdin.
pub fn ctl_in(node: &NodeHandle, args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.ns, PILOTCTL, "--control"])
        .arg(&node.control)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    out
}

/// Runs a command in a namespace and returns its output (not checked).
pub fn ns_exec(ns: &str, cmd: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .unwrap()
}

/// Runs a command that must succeed.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Daemons `pilotctl daemon start` left running, detached from the test: killed by the pid
/// they reported, on drop, so none outlives a failing test. Only pids this test's own starts
/// reported.
#[derive(Default)]
pub struct Detached(Vec<u32>);

impl Drop for Detached {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Detached {
    /// The daemons stopped by the test itself: nothing left to kill.
    pub fn forget_all(&mut self) {
        self.0.clear();
    }

    /// Notes the daemon answering on `node`'s socket, if one does.
    pub fn note(&mut self, node: &NodeHandle) {
        let out = ctl(node, &["info", "--json"]);
        let Ok(info) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return;
        };
        if let Some(pid) = info["pid"].as_u64() {
            self.0.push(pid as u32);
        }
    }
}
