//! `natlab check`: measures that a lab is what it says. The lab is closed (nothing leads out
//! of it), each NAT maps and filters as its kind says, a LAN's hosts reach each other directly,
//! a NATed LAN is unreachable from the internet and a routed one reachable, and the impairment
//! is as asked. Measured with `files/probe.py`: a STUN-like server in rdv (four sockets on two
//! addresses) and clients on the LAN hosts; takes about 5 s (longer with delay or loss).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::natlab::{NatLab, PROBE_PY};
use crate::sh;
use crate::topology::{Host, NatKind, Router, RDV, RDV2};

/// The outcome of `check`: how many properties held and how many did not.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub passed: u32,
    pub failed: u32,
}

/// Runs the checks; `report(passed, text)` is called once per property as it is measured.
pub fn check(lab: &NatLab, report: &mut dyn FnMut(bool, &str)) -> Result<Verdict> {
    sh::need(&["ip", "python3", "ping"])?;
    let probe = lab.helper("probe.py", PROBE_PY)?;
    let mut c = Checker {
        lab,
        probe,
        verdict: Verdict::default(),
        report,
        // Per attempt: a round trip crosses up to two impaired links each way.
        timeout: format!("{}", 0.25 + 4.0 * lab.options().delay.0 / 1000.0),
    };
    c.isolation()?;
    let server = c.server(Host::Rdv, &[RDV, RDV, RDV, RDV2])?;
    let [p1, p2, p3, q] = &server.endpoints[..] else {
        bail!("the probe server in rdv bound {:?}", server.endpoints);
    };
    for host in [Host::A, Host::A2, Host::B] {
        c.nat(host, p1, p2, p3, q)?;
    }
    drop(server);
    c.lan()?;
    c.lan_exposure()?;
    c.impairment()?;
    Ok(c.verdict)
}

struct Checker<'a> {
    lab: &'a NatLab,
    probe: String,
    verdict: Verdict,
    report: &'a mut dyn FnMut(bool, &str),
    timeout: String,
}

/// A probe server; stopped on drop.
struct Server {
    child: Child,
    endpoints: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Checker<'_> {
    fn expect(&mut self, ok: bool, text: &str) {
        if ok {
            self.verdict.passed += 1;
        } else {
            self.verdict.failed += 1;
        }
        (self.report)(ok, text);
    }

    /// Every interface of the lab's namespaces is lo, a bridge, a TUN or a veth paired inside
    /// the lab; inet has no default route and every other host routes through the lab.
    fn isolation(&mut self) -> Result<()> {
        let namespaces: Vec<String> = Host::ALL.iter().map(|h| self.lab.ns(*h)).collect();
        let mut args = vec![self.probe.as_str(), "isolation"];
        args.extend(namespaces.iter().map(String::as_str));
        let out = sh::output("python3", &args)?;
        let problems = String::from_utf8_lossy(&out.stdout)
            .trim()
            .replace('\n', "; ");
        if out.status.success() {
            let n = namespaces.len();
            self.expect(true, &format!("lab: every interface of the {n} namespaces is lo, a bridge, a TUN or a veth paired inside the lab (nothing reaches the uplink)"));
        } else {
            self.expect(
                false,
                &format!("lab: interfaces leading out of the lab: {problems}"),
            );
        }
        let mut bad = Vec::new();
        for host in Host::ALL {
            let routes = sh::ip(&self.lab.ns(host), &["-4", "route", "show", "default"])?;
            let ipv6_only = host
                .router()
                .is_some_and(|r| self.lab.options().no_v4[r.index()]);
            let want = !(host == Host::Inet || ipv6_only);
            if routes.trim().is_empty() == want {
                bad.push(format!(
                    "{host}: {}",
                    if want {
                        "no default route"
                    } else {
                        "has a default route"
                    }
                ));
            }
        }
        let text = format!(
            "lab: inet has no default route, every other namespace routes via the lab{}",
            if bad.is_empty() {
                String::new()
            } else {
                format!(" (problems: {})", bad.join(", "))
            }
        );
        self.expect(bad.is_empty(), &text);
        Ok(())
    }

    /// A probe server in a host, one socket per address (ephemeral ports).
    fn server(&self, host: Host, addrs: &[Ipv4Addr]) -> Result<Server> {
        let binds: Vec<String> = addrs.iter().map(|a| format!("{a}:0")).collect();
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.lab.ns(host),
                "python3",
                &self.probe,
                "server",
            ])
            .args(&binds)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the probe server")?;
        let mut first = String::new();
        let stdout = child.stdout.take().expect("piped");
        BufReader::new(stdout).read_line(&mut first)?;
        // {"bound": ["203.0.113.10:41234", …]}
        let endpoints: Vec<String> = first
            .split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(list, _)| {
                list.split(',')
                    .map(|e| e.trim().trim_matches('"').to_owned())
                    .collect()
            })
            .unwrap_or_default();
        let server = Server { child, endpoints };
        if server.endpoints.len() != addrs.len() {
            bail!(
                "the probe server in {host} did not start (said: {})",
                first.trim()
            );
        }
        Ok(server)
    }

    /// Runs the probe client in a host; its "key value" lines (value "-": no answer).
    fn client(&self, host: Host, args: &[&str]) -> Result<HashMap<String, String>> {
        let mut all = vec![self.probe.as_str(), "client"];
        all.extend_from_slice(args);
        let text = sh::in_ns(&self.lab.ns(host), "python3", &all)
            .with_context(|| format!("the probe client in {host} failed"))?;
        let r: HashMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        if !r.contains_key("port") {
            bail!("the probe client in {host} said: {text}");
        }
        Ok(r)
    }

    /// Mapping and filtering of a host's NAT, against the server's endpoints p1, p2
    /// (contacted), p3 (same host, never contacted) and q (another host).
    fn nat(&mut self, host: Host, p1: &str, p2: &str, p3: &str, q: &str) -> Result<()> {
        let o = self.lab.options();
        let router = host.router().expect("a LAN host");
        let (kind, router_kind) = (o.effective_kind(host).expect("a LAN host"), o.kind(router));
        let mut label = format!("{host} ({router}={router_kind}");
        if kind != router_kind {
            label += &format!(", {host} gets {kind}");
        }
        label += ")";
        if o.no_v4[router.index()] {
            self.expect(
                true,
                &format!("{label}: IPv6-only (no IPv4 route out): NAT not measured"),
            );
            return Ok(());
        }
        let r = self.client(
            host,
            &[
                "--timeout",
                &self.timeout,
                "--echo",
                p1,
                "--echo",
                p2,
                "--poke-via",
                p1,
                "--poke-from",
                p1,
                "--poke-from",
                p3,
                "--poke-from",
                q,
            ],
        )?;
        let get = |k: &str| r.get(k).map(String::as_str).unwrap_or("-");
        let (port, s1, s2, ack) = (get("port"), get("echo0"), get("echo1"), get("ack"));
        if s1 == "-" || s2 == "-" || ack != "yes" {
            self.expect(false, &format!("{label}: no answer from rdv (seen by {p1}: {s1}, by {p2}: {s2}, poke request acked: {ack})"));
            return Ok(());
        }
        let (own, public) = (host.addr(), router.public().to_string());
        let addr_of = |s: &str| {
            s.rsplit_once(':')
                .map(|(a, _)| a.to_owned())
                .unwrap_or_default()
        };
        let port_of = |s: &str| {
            s.rsplit_once(':')
                .map(|(_, p)| p.to_owned())
                .unwrap_or_default()
        };
        match kind {
            NatKind::None => {
                let mine = format!("{own}:{port}");
                self.expect(s1 == mine && s2 == mine, &format!("{label}: no translation: rdv sees the host's own {mine} on both ports (seen {s1}, {s2})"));
            }
            NatKind::Cone | NatKind::Prc => {
                self.expect(s1 == s2 && addr_of(s1) == public, &format!("{label}: endpoint-independent mapping: one public endpoint for both destinations ({p1} saw {s1}, {p2} saw {s2})"));
                self.expect(s1 == format!("{public}:{port}"), &format!("{label}: public address is {router}'s {public} and the free local port {port} is preserved (seen {s1})"));
            }
            NatKind::Sym => {
                let ok =
                    addr_of(s1) == public && addr_of(s2) == public && port_of(s1) != port_of(s2);
                self.expect(ok, &format!("{label}: endpoint-dependent mapping: a different public port per destination ({p1} saw {s1}, {p2} saw {s2})"));
            }
        }
        let (got_p1, got_p3, got_q) = (
            get("poke0") != "-",
            get("poke1") != "-",
            get("poke2") != "-",
        );
        self.expect(
            got_p1,
            &format!("{label}: a packet from the contacted endpoint {p1} gets in"),
        );
        let open = matches!(kind, NatKind::None | NatKind::Cone);
        let verb = if open { "gets in" } else { "is blocked" };
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        self.expect(got_p3 == open, &format!("{label}: filtering: unsolicited from another port of rdv ({p3}) {verb} (arrived: {})", yes_no(got_p3)));
        self.expect(
            got_q == open,
            &format!(
                "{label}: filtering: unsolicited from another host ({q}) {verb} (arrived: {})",
                yes_no(got_q)
            ),
        );
        Ok(())
    }

    /// a reaches a2 directly over LAN1.
    fn lan(&mut self) -> Result<()> {
        let server = self.server(Host::A2, &[Host::A2.addr()])?;
        let ep = server.endpoints[0].clone();
        let r = self.client(Host::A, &["--timeout", "0.3", "--echo", &ep])?;
        let (seen, port) = (&r["echo0"], &r["port"]);
        let want = format!("{}:{port}", Host::A.addr());
        self.expect(*seen == want, &format!("LAN1: a reaches a2 directly over the LAN (a2 at {ep} sees a as {seen}, expected {want})"));
        Ok(())
    }

    /// From the internet, a NATed LAN is unreachable (inet has no route to it) and a routed one
    /// (kind none) is reachable: rdv sends to a probe server on b's own address.
    fn lan_exposure(&mut self) -> Result<()> {
        let kind = self.lab.options().kind(Router::Nat2);
        let server = self.server(Host::B, &[Host::B.addr()])?;
        let ep = server.endpoints[0].clone();
        let r = self.client(
            Host::Rdv,
            &["--timeout", &self.timeout, "--tries", "3", "--echo", &ep],
        )?;
        let got = r["echo0"] != "-";
        let want = kind == NatKind::None;
        let verb = if want {
            "is reachable"
        } else {
            "is not reachable"
        };
        self.expect(got == want, &format!("LAN2 (nat2={kind}): from the internet, b's own address {ep} {verb} (rdv got an answer: {})", if got { "yes" } else { "no" }));
        Ok(())
    }

    fn impairment(&mut self) -> Result<()> {
        let (a, rdv) = (self.lab.ns(Host::A), RDV.to_string());
        let o = self.lab.options().clone();
        if o.delay.0 > 0.0 {
            let out = sh::in_ns(
                &a,
                "ping",
                &["-q", "-n", "-c", "10", "-i", "0.05", "-W", "5", &rdv],
            )?;
            // rtt min/avg/max/mdev = 40.1/40.5/41.0/0.3 ms
            let stats: Vec<f64> = out
                .lines()
                .find(|l| l.starts_with("rtt"))
                .and_then(|l| l.split(" = ").nth(1))
                .map(|v| v.split(['/', ' ']).filter_map(|x| x.parse().ok()).collect())
                .unwrap_or_default();
            let (min, avg) = (
                stats.first().copied().unwrap_or(0.0),
                stats.get(1).copied().unwrap_or(0.0),
            );
            let want = 2.0 * o.delay.0;
            self.expect(min >= want && avg <= want * 1.1 + 15.0, &format!("delay: RTT a<->rdv min {min} ms avg {avg} ms, expected {want} ms (2 x {} ms, one impaired link)", o.delay));
        }
        if o.loss.0 > 0 {
            let n = 500.0;
            let out = sh::output(
                "ip",
                &[
                    "netns", "exec", &a, "ping", "-q", "-n", "-c", "500", "-i", "0.002", "-W", "2",
                    &rdv,
                ],
            )?;
            let text = String::from_utf8_lossy(&out.stdout);
            // "500 packets transmitted, 473 received, 5.4% packet loss, time 1234ms"
            let received: f64 = text
                .lines()
                .find(|l| l.contains("received"))
                .and_then(|l| l.split(", ").find(|f| f.ends_with("received")))
                .and_then(|f| f.split_whitespace().next())
                .and_then(|r| r.parse().ok())
                .unwrap_or(0.0);
            let p = f64::from(o.loss.0) / 10_000.0;
            let expected = 1.0 - (1.0 - p) * (1.0 - p);
            let got = 1.0 - received / n;
            let tolerance = 4.0 * (expected * (1.0 - expected) / n).sqrt() + 0.01;
            self.expect((got - expected).abs() <= tolerance, &format!("loss: {:.1}% of {n} pings a<->rdv lost, expected about {:.1}% (two crossings of one impaired link)", 100.0 * got, 100.0 * expected));
        }
        Ok(())
    }
}
