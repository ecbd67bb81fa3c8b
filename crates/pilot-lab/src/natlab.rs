//! Bringing a NAT lab up and down, and the verbs that work on one that is up.
//!
//! Nothing is created in the root namespace: every veth is created inside a lab namespace with
//! its peer in another one, and no namespace has a route or link to the machine's uplink. A
//! lab's state (its options, the namespaces it created, the helper programs and rulesets it
//! runs, logs) lives in `$NATLAB_RUN_DIR/NAME` (default `/run/natlab/NAME`) and nowhere else,
//! so any process can find a lab by its name and labs with different names run side by side.

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::sh::{self, ip, sysctls};
use crate::topology::{Host, NatKind, Options, Router, V6Kind, INET, INET6_RDV, RDV, RDV2, RDV6};

/// Set by the `natlab` binary's SIGINT/SIGTERM handler: `up` stops between two steps and
/// removes what it made.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The NFQUEUE number of the delayer (queues are per namespace).
const QUEUE: &str = "0";

/// The helper programs and rulesets, written into a lab's state dir when it needs them.
pub(crate) const PROBE_PY: &str = include_str!("../files/probe.py");
const DELAY_PY: &str = include_str!("../files/delay.py");
const FW6_NFT: &str = include_str!("../files/fw6.nft");
const LOSS_NFT: &str = include_str!("../files/loss.nft");

fn nat_ruleset(kind: NatKind) -> Option<(&'static str, &'static str)> {
    match kind {
        NatKind::None => None,
        NatKind::Cone => Some(("nat-cone.nft", include_str!("../files/nat-cone.nft"))),
        NatKind::Prc => Some(("nat-prc.nft", include_str!("../files/nat-prc.nft"))),
        NatKind::Sym => Some(("nat-sym.nft", include_str!("../files/nat-sym.nft"))),
    }
}

/// Where labs keep their state: `$NATLAB_RUN_DIR`, else `/run/natlab`.
pub fn run_dir() -> PathBuf {
    std::env::var_os("NATLAB_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/natlab"))
}

/// A NAT lab that is up.
#[derive(Debug)]
pub struct NatLab {
    name: String,
    dir: PathBuf,
    options: Options,
}

fn check_name(name: &str) -> Result<()> {
    let ok = (1..=6).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        bail!(
            "lab name '{name}': use 1-6 characters from [A-Za-z0-9_] (namespace names stay <= 15)"
        );
    }
    Ok(())
}

fn need_root(verb: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("{verb} needs root (network namespaces, nftables); try: sudo natlab {verb} …");
    }
    Ok(())
}

fn step() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Writes a file atomically (another command of the same lab may be running the old one).
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension(format!("new.{}", std::process::id()));
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

impl NatLab {
    /// Builds lab `name`. On any failure (or an interrupt, see [`INTERRUPTED`]) it removes
    /// what it made before returning the error. Refuses a name whose lab or namespaces exist.
    pub fn up(name: &str, options: &Options) -> Result<NatLab> {
        check_name(name)?;
        need_root("up")?;
        sh::need(&["ip", "nft", "sysctl", "python3"])?;
        if options.delay.0 > 0.0 {
            sh::need(&["iptables"])?;
        }
        let lab = NatLab {
            name: name.to_owned(),
            dir: run_dir().join(name),
            options: options.clone(),
        };
        for host in Host::ALL {
            let ns = lab.ns(host);
            if sh::netns_exists(&ns) {
                bail!("network namespace {ns} already exists (lab '{name}' up already? run: natlab down {name})");
            }
        }
        fs::create_dir_all(run_dir())
            .with_context(|| format!("creating {}", run_dir().display()))?;
        // create_dir (not _all) claims the name atomically: two `up NAME` cannot both succeed.
        fs::create_dir(&lab.dir).with_context(|| {
            format!(
                "lab '{name}' exists ({}); run: natlab down {name}",
                lab.dir.display()
            )
        })?;
        fs::write(lab.dir.join("namespaces"), "")?;
        if let Err(error) = lab.build() {
            let undo = teardown(&lab.dir);
            let note = match undo {
                Ok(()) => "removed what was created".to_owned(),
                Err(e) => format!("and removing what was created failed too: {e:#}"),
            };
            return Err(error.context(format!("setting up lab {name} failed; {note}")));
        }
        write_atomic(&lab.dir.join("config"), &options.to_config())?;
        Ok(lab)
    }

    /// An existing lab, by name.
    pub fn open(name: &str) -> Result<NatLab> {
        check_name(name)?;
        let dir = run_dir().join(name);
        let text = fs::read_to_string(dir.join("config")).with_context(|| {
            format!(
                "no lab '{name}' (nothing in {}; run: natlab up {name})",
                dir.display()
            )
        })?;
        let options = Options::from_config(&text)
            .with_context(|| format!("lab '{name}': {}", dir.join("config").display()))?;
        Ok(NatLab {
            name: name.to_owned(),
            dir,
            options,
        })
    }

    /// Removes lab `name`: stops every process still running inside its namespaces (TERM,
    /// KILL after 3 s; only in namespaces it created, never a PID from a file), deletes them
    /// and its state dir. Idempotent: `Ok(false)` when there was nothing to remove.
    pub fn down(name: &str) -> Result<bool> {
        check_name(name)?;
        need_root("down")?;
        let dir = run_dir().join(name);
        if !dir.is_dir() {
            return Ok(false);
        }
        teardown(&dir)?;
        Ok(true)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The namespace of a host: `NAME-<suffix>`.
    pub fn ns(&self, host: Host) -> String {
        format!("{}-{}", self.name, host.suffix())
    }

    /// Flushes a router's conntrack table (every NAT mapping); says how many entries went.
    pub fn flush(&self, router: Router) -> Result<String> {
        let probe = self.helper("probe.py", PROBE_PY)?;
        let said = sh::in_ns(&self.ns(router.host()), "python3", &[&probe, "ctflush"])?;
        Ok(said.trim().to_owned())
    }

    /// Writes a helper program into the state dir; its path.
    pub(crate) fn helper(&self, file: &str, text: &str) -> Result<String> {
        let path = self.dir.join(file);
        write_atomic(&path, text)?;
        Ok(path.to_string_lossy().into_owned())
    }

    /// What `natlab status` prints.
    pub fn status(&self) -> String {
        let o = &self.options;
        let mut s = format!("lab {} (state in {})\n", self.name, self.dir.display());
        for router in Router::ALL {
            s += &format!(
                "  {router}: {}, public {}, LAN {}\n",
                o.kind(router).describe(),
                router.public(),
                router.lan()
            );
            if o.kind(router) == NatKind::Cone && router.lan_hosts().len() > 1 {
                s += "        cone (1:1) host: a; a2 gets masquerade (prc)\n";
            }
        }
        s += &format!("  rdv:  {RDV} (second address {RDV2}); internet router {INET}\n");
        s += &format!(
            "  impairment on each NAT public link, each direction: loss {}%, delay {} ms",
            o.loss, o.delay
        );
        if o.delay.0 > 0.0 {
            s += if self.delayer_running() {
                " (delayer running)"
            } else {
                " (DELAYER NOT RUNNING)"
            };
        }
        s += &format!(
            "\n  ipv6: LAN1 {}, LAN2 {}\n",
            o.v6[0].name(),
            o.v6[1].name()
        );
        s += &format!(
            "  {:<5} {:<14} {:<16} ADDRESSES\n",
            "HOST", "NAMESPACE", "PUBLIC"
        );
        for host in Host::ALL {
            let ns = self.ns(host);
            let addrs = if sh::netns_exists(&ns) {
                ip(&ns, &["-o", "addr", "show"])
                    .map(|text| addresses(&text))
                    .unwrap_or_else(|e| format!("({e})"))
            } else {
                "(namespace missing)".to_owned()
            };
            s += &format!(
                "  {:<5} {ns:<14} {:<16} {addrs}\n",
                host.name(),
                o.public(host).to_string()
            );
        }
        s
    }

    fn delayer_running(&self) -> bool {
        let script = self.dir.join("delay.py");
        let script = script.to_string_lossy();
        sh::netns_pids(&self.ns(Host::Inet)).into_iter().any(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(script.as_ref()))
                .unwrap_or(false)
        })
    }

    // ----------------------------------------------------------------------------------------
    // Building

    fn build(&self) -> Result<()> {
        for host in Host::ALL {
            step()?;
            self.add_netns(&self.ns(host))?;
        }
        step()?;
        for router in Router::ALL {
            self.p2p(router.host(), router.inet_link(), "wan", router.public())?;
        }
        self.p2p(Host::Rdv, "rdv", "eth0", RDV)?;
        for router in Router::ALL {
            self.lan(router)?;
        }
        step()?;
        self.sysctls_and_up()?;
        step()?;
        self.routes()?;
        step()?;
        self.ipv6()?;
        self.no_v4()?;
        step()?;
        for router in Router::ALL {
            self.nat(router)?;
        }
        step()?;
        self.impair()?;
        step()
    }

    /// Creates one namespace, recording it first so that `down` (or the rollback) finds it
    /// even if we are stopped right after `ip netns add`.
    fn add_netns(&self, ns: &str) -> Result<()> {
        if sh::netns_exists(ns) {
            bail!("network namespace {ns} already exists (not this lab's; leaving it alone)");
        }
        let mut list = fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("namespaces"))?;
        writeln!(list, "{ns}")?;
        list.sync_all()?;
        sh::run("ip", &["netns", "add", ns])?;
        ip(ns, &["link", "set", "lo", "up"]).map(drop)
    }

    /// A point-to-point link between inet (interface `inet_if`, 203.0.113.254/32) and `other`
    /// (interface `other_if`, `addr`/32).
    fn p2p(
        &self,
        other: Host,
        inet_if: &str,
        other_if: &str,
        addr: std::net::Ipv4Addr,
    ) -> Result<()> {
        let (inet, ons) = (self.ns(Host::Inet), self.ns(other));
        let (inet_addr, other_addr) = (format!("{INET}/32"), format!("{addr}/32"));
        ip(
            &inet,
            &[
                "link", "add", "name", inet_if, "type", "veth", "peer", "name", other_if, "netns",
                &ons,
            ],
        )?;
        ip(
            &inet,
            &[
                "addr",
                "add",
                &inet_addr,
                "peer",
                &other_addr,
                "dev",
                inet_if,
            ],
        )?;
        ip(
            &ons,
            &[
                "addr",
                "add",
                &other_addr,
                "peer",
                &inet_addr,
                "dev",
                other_if,
            ],
        )
        .map(drop)
    }

    /// A router's LAN: bridge br0 with the gateway address, one veth per host (`to-HOST` on the
    /// bridge, `eth0` in the host).
    fn lan(&self, router: Router) -> Result<()> {
        let rns = self.ns(router.host());
        ip(
            &rns,
            &[
                "link",
                "add",
                "name",
                "br0",
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
                "mcast_snooping",
                "0",
            ],
        )?;
        let gw = format!("{}/{}", router.gateway(), crate::topology::LAN_BITS);
        ip(&rns, &["addr", "add", &gw, "dev", "br0"])?;
        for &host in router.lan_hosts() {
            let (hns, port) = (self.ns(host), format!("to-{}", host.name()));
            ip(
                &rns,
                &[
                    "link", "add", "name", &port, "type", "veth", "peer", "name", "eth0", "netns",
                    &hns,
                ],
            )?;
            ip(&rns, &["link", "set", &port, "master", "br0"])?;
            let addr = format!("{}/{}", host.addr(), crate::topology::LAN_BITS);
            ip(&hns, &["addr", "add", &addr, "dev", "eth0"])?;
        }
        Ok(())
    }

    /// Per-namespace sysctls, then every link up. IPv6 is off on the lab's links (not on lo,
    /// nor on interfaces made later such as pilot's TUN) until [`NatLab::ipv6`] turns it on
    /// where asked: the lab is quiet.
    fn sysctls_and_up(&self) -> Result<()> {
        for host in Host::ALL {
            let ns = self.ns(host);
            let links = sh::links(&ns)?;
            let mut settings: Vec<String> = links
                .iter()
                .map(|dev| format!("net.ipv6.conf.{dev}.disable_ipv6=1"))
                .collect();
            match host {
                Host::Inet => settings.push("net.ipv4.ip_forward=1".into()),
                // The LAN bridge lives here: keep bridged LAN traffic out of this router's
                // netfilter (br_netfilter, where loaded, is on in every namespace; where it is
                // not, these keys do not exist, which -e allows).
                Host::Nat1 | Host::Nat2 => settings.extend(
                    [
                        "net.ipv4.ip_forward=1",
                        "net.bridge.bridge-nf-call-iptables=0",
                        "net.bridge.bridge-nf-call-ip6tables=0",
                        "net.bridge.bridge-nf-call-arptables=0",
                    ]
                    .map(String::from),
                ),
                _ => {}
            }
            sysctls(&ns, &settings)?;
            for dev in &links {
                ip(&ns, &["link", "set", dev, "up"])?;
            }
        }
        Ok(())
    }

    fn routes(&self) -> Result<()> {
        let inet = INET.to_string();
        for host in [Host::Nat1, Host::Nat2, Host::Rdv] {
            ip(&self.ns(host), &["route", "add", "default", "via", &inet])?;
        }
        for router in Router::ALL {
            let gw = router.gateway().to_string();
            for &host in router.lan_hosts() {
                ip(&self.ns(host), &["route", "add", "default", "via", &gw])?;
            }
        }
        let rdv2 = format!("{RDV2}/32");
        ip(&self.ns(Host::Rdv), &["addr", "add", &rdv2, "dev", "eth0"])?;
        let inet_ns = self.ns(Host::Inet);
        ip(
            &inet_ns,
            &["route", "add", &rdv2, "via", &RDV.to_string(), "dev", "rdv"],
        )?;
        // Routed (kind none) LANs are reachable from the internet; NATed LANs are not.
        for router in Router::ALL {
            if self.options.kind(router) == NatKind::None {
                let via = router.public().to_string();
                ip(
                    &inet_ns,
                    &[
                        "route",
                        "add",
                        &router.lan(),
                        "via",
                        &via,
                        "dev",
                        router.inet_link(),
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// IPv6 back on for these links of a namespace, with no autoconfiguration and no duplicate
    /// address detection (addresses usable at once).
    fn v6_on(&self, ns: &str, devs: &[&str]) -> Result<()> {
        let mut settings: Vec<String> = vec![
            "net.ipv6.conf.all.accept_dad=0".into(),
            "net.ipv6.conf.default.accept_dad=0".into(),
        ];
        for dev in devs {
            for (key, value) in [
                ("disable_ipv6", 0),
                ("accept_dad", 0),
                ("accept_ra", 0),
                ("autoconf", 0),
            ] {
                settings.push(format!("net.ipv6.conf.{dev}.{key}={value}"));
            }
        }
        sysctls(ns, &settings)
    }

    /// IPv6 on the link from inet to `other` (a /64), and `other`'s default route over it.
    fn v6_link(
        &self,
        other: Host,
        inet_if: &str,
        other_if: &str,
        inet_addr: std::net::Ipv6Addr,
        other_addr: std::net::Ipv6Addr,
    ) -> Result<()> {
        let (inet, ons) = (self.ns(Host::Inet), self.ns(other));
        self.v6_on(&inet, &[inet_if])?;
        self.v6_on(&ons, &[other_if])?;
        ip(
            &inet,
            &[
                "-6",
                "addr",
                "add",
                &format!("{inet_addr}/64"),
                "dev",
                inet_if,
                "nodad",
            ],
        )?;
        ip(
            &ons,
            &[
                "-6",
                "addr",
                "add",
                &format!("{other_addr}/64"),
                "dev",
                other_if,
                "nodad",
            ],
        )?;
        ip(
            &ons,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &inet_addr.to_string(),
                "dev",
                other_if,
            ],
        )
        .map(drop)
    }

    fn ipv6(&self) -> Result<()> {
        if !self.options.any_v6() {
            return Ok(());
        }
        let inet = self.ns(Host::Inet);
        sysctls(&inet, &["net.ipv6.conf.all.forwarding=1".into()])?;
        self.v6_link(Host::Rdv, "rdv", "eth0", INET6_RDV, RDV6)?;
        for router in Router::ALL {
            let kind = self.options.v6[router.index()];
            if kind == V6Kind::Off {
                continue;
            }
            self.v6_link(
                router.host(),
                router.inet_link(),
                "wan",
                router.inet6(),
                router.public6(),
            )?;
            let rns = self.ns(router.host());
            self.v6_on(&rns, &["br0"])?;
            sysctls(&rns, &["net.ipv6.conf.all.forwarding=1".into()])?;
            let gw = router.gateway6();
            ip(
                &rns,
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{gw}/64"),
                    "dev",
                    "br0",
                    "nodad",
                ],
            )?;
            for &host in router.lan_hosts() {
                let hns = self.ns(host);
                let addr = host.addr6().expect("LAN hosts have IPv6 addresses");
                self.v6_on(&hns, &["eth0"])?;
                ip(
                    &hns,
                    &[
                        "-6",
                        "addr",
                        "add",
                        &format!("{addr}/64"),
                        "dev",
                        "eth0",
                        "nodad",
                    ],
                )?;
                ip(
                    &hns,
                    &[
                        "-6",
                        "route",
                        "add",
                        "default",
                        "via",
                        &gw.to_string(),
                        "dev",
                        "eth0",
                    ],
                )?;
            }
            ip(
                &inet,
                &[
                    "-6",
                    "route",
                    "add",
                    &router.lan6(),
                    "via",
                    &router.public6().to_string(),
                ],
            )?;
            if kind == V6Kind::Fw {
                let rules = self.helper("fw6.nft", FW6_NFT)?;
                sh::in_ns(&rns, "nft", &["-f", &rules])?;
            }
        }
        Ok(())
    }

    /// IPv6-only LANs: their hosts lose the IPv4 default route.
    fn no_v4(&self) -> Result<()> {
        for router in Router::ALL {
            if self.options.no_v4[router.index()] {
                for &host in router.lan_hosts() {
                    ip(&self.ns(host), &["route", "del", "default"])?;
                }
            }
        }
        Ok(())
    }

    /// The router's nftables ruleset for its kind (none: a plain router, no conntrack).
    fn nat(&self, router: Router) -> Result<()> {
        let Some((file, text)) = nat_ruleset(self.options.kind(router)) else {
            return Ok(());
        };
        let rules = self.helper(file, text)?;
        let lan = format!("lan={}", router.lan());
        let mut args = vec!["-D", &lan];
        let (public, host) = (
            format!("pub={}", router.public()),
            format!("host={}", router.lan_hosts()[0].addr()),
        );
        if self.options.kind(router) == NatKind::Cone {
            args.extend(["-D", &public, "-D", &host]);
        }
        args.extend(["-f", &rules]);
        sh::in_ns(&self.ns(router.host()), "nft", &args).map(drop)
    }

    /// Loss and delay on both NAT routers' public links (inet's n1 and n2), both ways. Loss is
    /// decided first (prerouting -300, postrouting -200), so the delayer (mangle, -150) never
    /// holds a packet that is then dropped.
    fn impair(&self) -> Result<()> {
        let inet = self.ns(Host::Inet);
        let o = &self.options;
        if o.loss.0 > 0 {
            let rules = self.helper("loss.nft", LOSS_NFT)?;
            let per10k = format!("per10k={}", o.loss.0);
            sh::in_ns(&inet, "nft", &["-D", &per10k, "-f", &rules])?;
        }
        if o.delay.0 > 0.0 {
            self.start_delayer(&inet)?;
            for router in Router::ALL {
                for (chain, dir) in [("PREROUTING", "-i"), ("POSTROUTING", "-o")] {
                    let dev = router.inet_link();
                    sh::in_ns(
                        &inet,
                        "iptables",
                        &[
                            "-w",
                            "-t",
                            "mangle",
                            "-A",
                            chain,
                            dir,
                            dev,
                            "-j",
                            "NFQUEUE",
                            "--queue-num",
                            QUEUE,
                        ],
                    )?;
                }
            }
        }
        Ok(())
    }

    /// The delayer in inet: in a process group of its own with no inherited descriptors, so a
    /// caller that reads our output (or stops our process group) neither waits for nor stops
    /// it. `down` stops it with everything else in the lab's namespaces.
    fn start_delayer(&self, inet: &str) -> Result<()> {
        let script = self.helper("delay.py", DELAY_PY)?;
        let log_path = self.dir.join("delay.log");
        let log = fs::File::create(&log_path)?;
        let delay = self.options.delay.to_string();
        let mut child = Command::new("ip")
            .args(["netns", "exec", inet, "python3", &script, QUEUE, &delay])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting the delayer")?;
        let started = Instant::now();
        loop {
            let said = fs::read_to_string(&log_path).unwrap_or_default();
            if said.lines().any(|l| l.starts_with("ready")) {
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                bail!("the delayer exited ({status}): {}", said.trim());
            }
            if started.elapsed() > Duration::from_secs(5) {
                bail!("the delayer did not start within 5 s: {}", said.trim());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `ip -o addr show` as "eth0 198.51.100.10/24, wan 203.0.113.1/32 peer 203.0.113.254/32".
fn addresses(text: &str) -> String {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dev, family, addr) = (f.get(1)?, f.get(2)?, f.get(3)?);
            if *dev == "lo" || *family != "inet" {
                return None;
            }
            Some(match (f.get(4), f.get(5)) {
                (Some(&"peer"), Some(peer)) => format!("{dev} {addr} peer {peer}"),
                _ => format!("{dev} {addr}"),
            })
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Stops every process inside the lab's recorded namespaces (TERM, KILL after 3 s), deletes
/// the namespaces, then the state dir (kept if a namespace could not be deleted, so a second
/// `down` can finish).
fn teardown(dir: &Path) -> Result<()> {
    let recorded = fs::read_to_string(dir.join("namespaces")).unwrap_or_default();
    let namespaces: Vec<&str> = recorded
        .lines()
        .filter(|ns| !ns.is_empty() && sh::netns_exists(ns))
        .collect();
    for round in 0..40 {
        let pids: Vec<i32> = namespaces
            .iter()
            .flat_map(|ns| sh::netns_pids(ns))
            .collect();
        if pids.is_empty() {
            break;
        }
        let signal = match round {
            0 => Some(Signal::SIGTERM),
            30.. => Some(Signal::SIGKILL),
            _ => None,
        };
        for pid in pids.iter().filter(|_| signal.is_some()) {
            let _ = kill(Pid::from_raw(*pid), signal);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut failed = Vec::new();
    for ns in &namespaces {
        if let Err(e) = sh::run("ip", &["netns", "del", ns]) {
            failed.push(format!("{e:#}"));
        }
    }
    if !failed.is_empty() {
        bail!("could not delete: {}", failed.join("; "));
    }
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_plain() {
        for good in ["a", "n1ab2", "lab_01"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "toolong1", "a-b", "a/b", "..", "é"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_are_read_from_ip_o_addr() {
        let text = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                    2: wan    inet 203.0.113.1/32 peer 203.0.113.254/32 scope global wan\n\
                    3: br0    inet 198.51.100.1/24 scope global br0\n\
                    3: br0    inet6 fe80::1/64 scope link\n";
        assert_eq!(
            addresses(text),
            "wan 203.0.113.1/32 peer 203.0.113.254/32, br0 198.51.100.1/24"
        );
    }
}
