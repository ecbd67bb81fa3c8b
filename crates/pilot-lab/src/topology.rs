//! The NAT lab's topology as data: its hosts, their addresses, the routers' kinds and the
//! options of `natlab up`. Nothing here touches the system.
//!
//! ```text
//!                         NAME-rdv: eth0 203.0.113.10, and 203.0.113.11 (a second "host",
//!                                   used by `check` as an unrelated third party)
//!                                       |
//!   NAME-n1 (nat1) ---------------- NAME-inet ---------------- NAME-n2 (nat2)
//!   wan 203.0.113.1        "internet" router 203.0.113.254     wan 203.0.113.2
//!   br0 198.51.100.1/24    point-to-point /32 links n1, n2,    br0 192.0.2.1/24
//!    |                     rdv; no NAT, no default route        |
//!    +-- NAME-a   eth0 198.51.100.10/24                          +-- NAME-b eth0 192.0.2.10/24
//!    +-- NAME-a2  eth0 198.51.100.11/24
//! ```
//!
//! All addresses come from the documentation ranges. IPv6 (per LAN, off by default) adds
//! addresses from 2001:db8::/32 with no NAT: inet 2001:db8:f1::fe, f2::fe, f0::fe on its links
//! to n1, n2, rdv; nat1 wan 2001:db8:f1::1 and LAN1 2001:db8:1::/64 (gw ::1, a ::10, a2 ::11);
//! nat2 wan 2001:db8:f2::1 and LAN2 2001:db8:2::/64 (gw ::1, b ::10); rdv 2001:db8:f0::10
//! whenever either LAN has IPv6.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use anyhow::{bail, Context, Result};

/// The "internet" router's address on each of its point-to-point links.
pub const INET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
/// The rendezvous host's address, and a second one (`check`'s unrelated third party).
pub const RDV: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const RDV2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
pub const RDV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf0, 0, 0, 0, 0, 0x10);
pub const INET6_RDV: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf0, 0, 0, 0, 0, 0xfe);
/// The prefix length of both LANs.
pub const LAN_BITS: u8 = 24;

/// A host of the lab: each is a network namespace `NAME-<suffix>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    Inet,
    Rdv,
    Nat1,
    Nat2,
    A,
    A2,
    B,
}

impl Host {
    pub const ALL: [Host; 7] = [
        Host::Inet,
        Host::Rdv,
        Host::Nat1,
        Host::Nat2,
        Host::A,
        Host::A2,
        Host::B,
    ];

    /// The name people type: inet, rdv, nat1, nat2, a, a2, b.
    pub fn name(self) -> &'static str {
        match self {
            Host::Inet => "inet",
            Host::Rdv => "rdv",
            Host::Nat1 => "nat1",
            Host::Nat2 => "nat2",
            Host::A => "a",
            Host::A2 => "a2",
            Host::B => "b",
        }
    }

    /// The end of its namespace's name (kept short: namespace names stay within 15 bytes).
    pub fn suffix(self) -> &'static str {
        match self {
            Host::Nat1 => "n1",
            Host::Nat2 => "n2",
            other => other.name(),
        }
    }

    /// The NAT router in front of a LAN host.
    pub fn router(self) -> Option<Router> {
        match self {
            Host::A | Host::A2 => Some(Router::Nat1),
            Host::B => Some(Router::Nat2),
            _ => None,
        }
    }

    /// Its own address (a router's is its LAN side).
    pub fn addr(self) -> Ipv4Addr {
        match self {
            Host::Inet => INET,
            Host::Rdv => RDV,
            Host::Nat1 => Router::Nat1.gateway(),
            Host::Nat2 => Router::Nat2.gateway(),
            Host::A => Ipv4Addr::new(198, 51, 100, 10),
            Host::A2 => Ipv4Addr::new(198, 51, 100, 11),
            Host::B => Ipv4Addr::new(192, 0, 2, 10),
        }
    }

    /// Its IPv6 address on its LAN (LAN hosts only; used when the LAN has IPv6).
    pub fn addr6(self) -> Option<Ipv6Addr> {
        match self {
            Host::A => Some(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10)),
            Host::A2 => Some(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x11)),
            Host::B => Some(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10)),
            _ => None,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Host {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Host> {
        Host::ALL
            .into_iter()
            .find(|h| h.name() == s)
            .with_context(|| format!("unknown host '{s}' (one of: inet rdv nat1 nat2 a a2 b)"))
    }
}

/// One of the two NAT routers, each in front of a LAN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Router {
    Nat1,
    Nat2,
}

impl Router {
    pub const ALL: [Router; 2] = [Router::Nat1, Router::Nat2];

    pub fn host(self) -> Host {
        match self {
            Router::Nat1 => Host::Nat1,
            Router::Nat2 => Host::Nat2,
        }
    }

    /// 0 for nat1, 1 for nat2 (an index into [`Options`]' per-LAN settings).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The hosts on its LAN; the first one is a full cone's 1:1 host.
    pub fn lan_hosts(self) -> &'static [Host] {
        match self {
            Router::Nat1 => &[Host::A, Host::A2],
            Router::Nat2 => &[Host::B],
        }
    }

    /// Its public (wan) address.
    pub fn public(self) -> Ipv4Addr {
        match self {
            Router::Nat1 => Ipv4Addr::new(203, 0, 113, 1),
            Router::Nat2 => Ipv4Addr::new(203, 0, 113, 2),
        }
    }

    /// Its address on its LAN (the LAN hosts' gateway).
    pub fn gateway(self) -> Ipv4Addr {
        match self {
            Router::Nat1 => Ipv4Addr::new(198, 51, 100, 1),
            Router::Nat2 => Ipv4Addr::new(192, 0, 2, 1),
        }
    }

    /// Its LAN prefix, as `addr/bits`.
    pub fn lan(self) -> String {
        let [a, b, c, _] = self.gateway().octets();
        format!("{a}.{b}.{c}.0/{LAN_BITS}")
    }

    /// The name of inet's interface towards it.
    pub fn inet_link(self) -> &'static str {
        self.host().suffix()
    }

    /// IPv6: inet's address on the link to it, its wan address, its LAN and gateway.
    pub fn inet6(self) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0xf1 + self.index() as u16, 0, 0, 0, 0, 0xfe)
    }
    pub fn public6(self) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0xf1 + self.index() as u16, 0, 0, 0, 0, 1)
    }
    pub fn lan6(self) -> String {
        format!("2001:db8:{}::/64", 1 + self.index())
    }
    pub fn gateway6(self) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 1 + self.index() as u16, 0, 0, 0, 0, 1)
    }
}

impl fmt::Display for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.host().name())
    }
}

impl FromStr for Router {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Router> {
        match s {
            "nat1" => Ok(Router::Nat1),
            "nat2" => Ok(Router::Nat2),
            _ => bail!("'{s}': only nat1 or nat2 are NAT routers"),
        }
    }
}

/// How a router treats its LAN's IPv4 (nftables in its namespace, `files/nat-KIND.nft`).
/// Unsolicited packets are dropped silently (no ICMP errors); the router answers pings on its
/// public address; no hairpinning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatKind {
    /// Routed, no NAT and no filtering: inet routes the LAN prefix to the router, so the
    /// hosts' own addresses are public.
    None,
    /// Full cone (endpoint-independent mapping and filtering): a 1:1 snat+dnat of the
    /// router's public address to the LAN's first host (a, or b); ports kept while free. Only
    /// one host can own it: a2 behind a cone nat1 gets plain masquerade (it behaves as prc).
    Cone,
    /// Linux masquerade: endpoint-independent mapping (port kept when free), port-restricted
    /// filtering (only replies from the exact remote ip:port get in).
    Prc,
    /// Masquerade fully-random: a new random public port for every destination.
    Sym,
}

impl NatKind {
    pub const ALL: [NatKind; 4] = [NatKind::None, NatKind::Cone, NatKind::Prc, NatKind::Sym];

    pub fn name(self) -> &'static str {
        match self {
            NatKind::None => "none",
            NatKind::Cone => "cone",
            NatKind::Prc => "prc",
            NatKind::Sym => "sym",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            NatKind::None => "none (routed, no NAT)",
            NatKind::Cone => "cone (full cone: EIM + endpoint-independent filtering)",
            NatKind::Prc => "prc (masquerade: EIM, port-restricted filtering)",
            NatKind::Sym => "sym (masquerade fully-random: new port per destination)",
        }
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for NatKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<NatKind> {
        NatKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .with_context(|| format!("NAT kind '{s}': one of none cone prc sym"))
    }
}

/// IPv6 on a LAN (no NAT; routed from inet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V6Kind {
    /// No IPv6 on that LAN.
    Off,
    /// Routed, no filter.
    Open,
    /// A stateful firewall as home routers have: outbound and its replies pass, nothing
    /// unsolicited comes in (`files/fw6.nft`).
    Fw,
}

impl V6Kind {
    pub fn name(self) -> &'static str {
        match self {
            V6Kind::Off => "off",
            V6Kind::Open => "open",
            V6Kind::Fw => "fw",
        }
    }
}

impl fmt::Display for V6Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for V6Kind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<V6Kind> {
        [V6Kind::Off, V6Kind::Open, V6Kind::Fw]
            .into_iter()
            .find(|k| k.name() == s)
            .with_context(|| format!("IPv6 kind '{s}': one of off open fw"))
    }
}

/// Random loss on each NAT router's public link, each direction, in hundredths of a percent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loss(pub u32);

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, hundredths) = (self.0 / 100, self.0 % 100);
        match hundredths {
            0 => write!(f, "{whole}"),
            h if h % 10 == 0 => write!(f, "{whole}.{}", h / 10),
            h => write!(f, "{whole}.{h:02}"),
        }
    }
}

impl FromStr for Loss {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Loss> {
        let bad = || anyhow::anyhow!("loss '{s}': a percentage 0-100 (up to two decimals)");
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || (s.contains('.') && (!digits(frac) || frac.len() > 2)) {
            return Err(bad());
        }
        let whole: u32 = whole.parse().map_err(|_| bad())?;
        let frac: u32 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
        let hundredths = whole.checked_mul(100).ok_or_else(bad)? + frac;
        if hundredths > 10_000 {
            return Err(bad());
        }
        Ok(Loss(hundredths))
    }
}

/// A one-way delay on each NAT router's public link, in milliseconds (0 to 10,000).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Delay(pub f64);

impl fmt::Display for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Delay {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Delay> {
        let ok = !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && !s.starts_with('.')
            && !s.ends_with('.');
        match s.parse::<f64>() {
            Ok(ms) if ok && (0.0..=10_000.0).contains(&ms) => Ok(Delay(ms)),
            _ => bail!("delay '{s}': milliseconds, 0-10000"),
        }
    }
}

/// What `natlab up` builds: the routers' kinds, impairment and IPv6.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// The NAT kind of nat1 and nat2 (`--nat1`, `--nat2`; default prc).
    pub nat: [NatKind; 2],
    /// Loss on each NAT router's public link, each direction. Applied in inet, so a packet
    /// from a to rdv crosses one impaired link and a packet from a to b two: the round-trip
    /// loss a<->rdv is 1-(1-p)^2. nftables `numgen random`.
    pub loss: Loss,
    /// Delay on each NAT router's public link, each direction: the RTT a<->rdv gains 2x, a<->b
    /// 4x. The kernel has no sch_netem, so it is a userspace delayer (`files/delay.py`,
    /// nfnetlink_queue, fed by iptables NFQUEUE rules): keeps order, holds at most 50,000
    /// packets, costs CPU (TCP a to b ran at 300 Mbit/s through it here).
    pub delay: Delay,
    /// IPv6 on LAN1 and LAN2.
    pub v6: [V6Kind; 2],
    /// IPv6-only LANs: their hosts lose the IPv4 default route (their LAN addresses stay).
    pub no_v4: [bool; 2],
}

impl Default for Options {
    fn default() -> Options {
        Options::new(NatKind::Prc, NatKind::Prc)
    }
}

impl Options {
    pub fn new(nat1: NatKind, nat2: NatKind) -> Options {
        Options {
            nat: [nat1, nat2],
            loss: Loss(0),
            delay: Delay(0.0),
            v6: [V6Kind::Off; 2],
            no_v4: [false; 2],
        }
    }

    /// IPv6 on a router's LAN.
    pub fn v6(mut self, router: Router, kind: V6Kind) -> Options {
        self.v6[router.index()] = kind;
        self
    }

    /// A router's LAN without IPv4 beyond the LAN itself.
    pub fn no_v4(mut self, router: Router) -> Options {
        self.no_v4[router.index()] = true;
        self
    }

    pub fn kind(&self, router: Router) -> NatKind {
        self.nat[router.index()]
    }

    /// The kind a LAN host actually gets: its router's, except a2 behind a cone (only one host
    /// owns the 1:1 address), which gets masquerade.
    pub fn effective_kind(&self, host: Host) -> Option<NatKind> {
        let kind = self.kind(host.router()?);
        Some(if host == Host::A2 && kind == NatKind::Cone {
            NatKind::Prc
        } else {
            kind
        })
    }

    /// The address the internet sees for a host: a NAT router's public address for the
    /// router and its hosts (their own under kind none), everyone else's own.
    pub fn public(&self, host: Host) -> Ipv4Addr {
        match (host, host.router()) {
            (Host::Nat1, _) => Router::Nat1.public(),
            (Host::Nat2, _) => Router::Nat2.public(),
            (_, Some(router)) if self.kind(router) != NatKind::None => router.public(),
            _ => host.addr(),
        }
    }

    pub fn any_v6(&self) -> bool {
        self.v6.iter().any(|k| *k != V6Kind::Off)
    }

    /// The state file's text: `key=value` lines.
    pub(crate) fn to_config(&self) -> String {
        let no_v4: String = Router::ALL
            .iter()
            .filter(|r| self.no_v4[r.index()])
            .map(|r| (b'1' + r.index() as u8) as char)
            .collect();
        format!(
            "nat1={}\nnat2={}\nloss={}\ndelay={}\nv6_1={}\nv6_2={}\nno_v4={no_v4}\n",
            self.nat[0], self.nat[1], self.loss, self.delay, self.v6[0], self.v6[1]
        )
    }

    pub(crate) fn from_config(text: &str) -> Result<Options> {
        let mut o = Options::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = line
                .split_once('=')
                .with_context(|| format!("config line '{line}': not key=value"))?;
            match key {
                "nat1" => o.nat[0] = value.parse()?,
                "nat2" => o.nat[1] = value.parse()?,
                "loss" => o.loss = value.parse()?,
                "delay" => o.delay = value.parse()?,
                "v6_1" => o.v6[0] = value.parse()?,
                "v6_2" => o.v6[1] = value.parse()?,
                "no_v4" => o.no_v4 = [value.contains('1'), value.contains('2')],
                _ => {} // written by a newer natlab: not ours to judge
            }
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_reads_and_prints_percentages_with_two_decimals() {
        for (text, hundredths, shown) in [
            ("0", 0, "0"),
            ("5", 500, "5"),
            ("1.5", 150, "1.5"),
            ("1.05", 105, "1.05"),
            ("100", 10_000, "100"),
            ("0.01", 1, "0.01"),
        ] {
            let loss: Loss = text.parse().unwrap();
            assert_eq!(loss, Loss(hundredths), "{text}");
            assert_eq!(loss.to_string(), shown);
        }
        for bad in [
            "",
            "-1",
            "100.01",
            "1.234",
            ".5",
            "5.",
            "1e2",
            "abc",
            "99999999999",
        ] {
            assert!(bad.parse::<Loss>().is_err(), "{bad}");
        }
    }

    #[test]
    fn delay_takes_milliseconds_up_to_ten_seconds() {
        assert_eq!("20".parse::<Delay>().unwrap(), Delay(20.0));
        assert_eq!("2.5".parse::<Delay>().unwrap().to_string(), "2.5");
        for bad in ["", "-5", "10001", "1e3", "inf", "NaN", ".5"] {
            assert!(bad.parse::<Delay>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_config_file_round_trips() {
        let mut o = Options::new(NatKind::Cone, NatKind::Sym)
            .v6(Router::Nat2, V6Kind::Fw)
            .no_v4(Router::Nat2);
        o.loss = Loss(250);
        o.delay = Delay(15.0);
        assert_eq!(Options::from_config(&o.to_config()).unwrap(), o);
        assert!(Options::from_config("nat1=bogus\n").is_err());
    }

    #[test]
    fn public_addresses_follow_the_nat_kind() {
        let o = Options::new(NatKind::None, NatKind::Sym);
        assert_eq!(o.public(Host::A), Host::A.addr());
        assert_eq!(o.public(Host::B), Router::Nat2.public());
        assert_eq!(o.public(Host::Nat1), Router::Nat1.public());
        assert_eq!(o.public(Host::Rdv), RDV);
        let cone = Options::new(NatKind::Cone, NatKind::Prc);
        assert_eq!(cone.effective_kind(Host::A), Some(NatKind::Cone));
        assert_eq!(cone.effective_kind(Host::A2), Some(NatKind::Prc));
        assert_eq!(cone.effective_kind(Host::Rdv), None);
    }

    #[test]
    fn addresses_match_the_drawing() {
        assert_eq!(Router::Nat1.lan(), "198.51.100.0/24");
        assert_eq!(Router::Nat2.lan(), "192.0.2.0/24");
        assert_eq!(Router::Nat2.inet6().to_string(), "2001:db8:f2::fe");
        assert_eq!(Router::Nat1.public6().to_string(), "2001:db8:f1::1");
        assert_eq!(Router::Nat2.lan6(), "2001:db8:2::/64");
        assert_eq!(Router::Nat1.gateway6().to_string(), "2001:db8:1::1");
        assert_eq!(Host::A2.addr6().unwrap().to_string(), "2001:db8:1::11");
        assert_eq!(Router::Nat1.inet_link(), "n1");
    }
}
