//! Issue 12, item 3, on the real kernel: a node whose system clock is wrong (libfaketime, as a
//! board without RTC before NTP) joins through a real NAT, connects, and says how far its
//! clock is off; a registration captured on the wire (tcpdump at the rendezvous) and sent
//! again is still refused. Needs root (see `lab::privileged`), tcpdump and libfaketime.

mod lab;

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use lab::{ctl, eventually, ns_exec, Lab};

const RDV: &str = "203.0.113.10:7000";
const METRICS: &str = "127.0.0.1:9188";
/// `Register`'s message type (`wire::control::REGISTER`).
const REGISTER: u8 = 0x50;

/// tcpdump writing what reaches the rendezvous' main port in `ns` to `file`.
fn capture(ns: &str, file: &std::path::Path) -> Child {
    let child = Command::new("ip")
        .args([
            "netns", "exec", ns, "tcpdump", "-i", "any", "-U", "-n", "-w",
        ])
        .arg(file)
        .args(["udp", "dst", "port", "7000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump (Debian package `tcpdump`)");
    // Until it writes the file's header, it is not capturing yet.
    let started = eventually(Duration::from_secs(5), || {
        fs::metadata(file).ok().filter(|m| m.len() >= 24)
    });
    assert!(started.is_some(), "tcpdump did not start");
    child
}

/// The UDP payloads of IPv4 packets in a pcap file (Linux cooked v1/v2, Ethernet or raw).
fn udp_payloads(pcap: &[u8]) -> Vec<Vec<u8>> {
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    assert_eq!(
        u32_at(pcap, 0),
        0xa1b2_c3d4,
        "not a little-endian pcap file"
    );
    let link_header = match u32_at(pcap, 20) {
        1 => 14,
        101 => 0,
        113 => 16,
        276 => 20,
        other => panic!("link type {other}"),
    };
    let mut payloads = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let len = u32_at(pcap, at + 8) as usize;
        let frame = &pcap[at + 16..(at + 16 + len).min(pcap.len())];
        at += 16 + len;
        let Some(ip) = frame.get(link_header..) else {
            continue;
        };
        if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
            continue;
        }
        let udp = &ip[usize::from(ip[0] & 0x0f) * 4..];
        if udp.len() >= 8 {
            payloads.push(udp[8..].to_vec());
        }
    }
    payloads
}

/// The rendezvous' refusals counted for `reason`.
fn refusals(ns: &str, reason: &str) -> u64 {
    let out = ns_exec(ns, &["curl", "-sf", &format!("http://{METRICS}/metrics")]);
    let page = String::from_utf8_lossy(&out.stdout).into_owned();
    let name = format!("pilot_rendezvous_refusals_total{{reason=\"{reason}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&name))
        .unwrap_or_else(|| panic!("no {name} in\n{page}"))
        .parse()
        .unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_node_whose_clock_is_an_hour_a_day_or_a_year_off_joins_connects_and_says_so() {
    let test = "a_node_whose_clock_is_an_hour_a_day_or_a_year_off_joins_connects_and_says_so";
    if !lab::privileged(test) {
        return;
    }
    lab::libfaketime();
    for (offset, words) in [
        ("-1h", "1 h 0 min behind"),
        ("+1d", "24 h 0 min ahead"),
        ("-365d", "365 days 0 h behind"),
    ] {
        let mut lab = Lab::new();
        let name = lab.natlab("cone", "prc");
        let rdv_ns = format!("{name}-rdv");
        let (rdv, _) = lab.rendezvous_with(&rdv_ns, RDV, &["--metrics", METRICS]);
        let pcap = lab.dir.join("rdv.pcap");
        let mut tcpdump = capture(&rdv_ns, &pcap);
        let mut a = lab.node(&format!("{name}-a"), "a", "");
        let mut b = lab.node(&format!("{name}-b"), "b", "");
        let flags = ["--rendezvous".to_owned(), rdv.clone()];
        lab.start_with_clock(&mut a, offset, &flags);
        lab.start_with(&mut b, &flags);

        // Registered, and the offset named, in netcheck and status.
        let netcheck = eventually(Duration::from_secs(15), || {
            let out = ctl(&a, &["netcheck"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("(registered: true)").then_some(text)
        })
        .unwrap_or_else(|| panic!("{offset}: never registered\n{}", a.log_text()));
        assert!(
            netcheck.contains(&format!(
                "clock           {words} the rendezvous'; signing with the rendezvous' time"
            )),
            "{offset}: {netcheck}"
        );
        let status = String::from_utf8_lossy(&ctl(&a, &["status"]).stdout).into_owned();
        assert!(
            status.contains(&format!("clock: this system's clock is {words}")),
            "{offset}: {status}"
        );
        // b's clock is right: nothing to say.
        let b_check = String::from_utf8_lossy(&ctl(&b, &["netcheck"]).stdout).into_owned();
        assert!(
            b_check.contains(
                "agrees with the rendezvous' (within 1 s); signing with this system's time"
            ),
            "{b_check}"
        );
        // Said once in the log, not per registration.
        let log = a.log_text();
        assert_eq!(
            log.matches("this system's clock is").count(),
            1,
            "{offset}: {log}"
        );

        // Trust (signed statements dated by the corrected clock) and traffic.
        lab.trust(&a, &b);
        // Ages are told by the node's clock, not this system's: the record is seconds old.
        let out = ctl(&a, &["trust", "--json"]);
        let trust: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let since = trust["trusted"][0]["since_secs"].as_u64();
        assert!(since.is_some_and(|s| s < 60), "{offset}: {trust}");
        let pinged = eventually(Duration::from_secs(10), || {
            ctl(&a, &["ping", &b.address, "-c", "1", "-W", "1"])
                .status
                .success()
                .then_some(())
        });
        assert!(pinged.is_some(), "{offset}: no ping\n{}", a.log_text());

        // Captured registrations of a, sent again from elsewhere: refused, whether still
        // inside the window (replay) or not (stale).
        let registrations = || -> Vec<Vec<u8>> {
            udp_payloads(&fs::read(&pcap).unwrap())
                .into_iter()
                .filter(|p| p.len() > 34 && p[0] == REGISTER && hex(&p[2..34]) == a.key)
                .collect()
        };
        // The first (dated by the wrong clock, refused as stale), the corrected one, and the
        // one with the rendezvous' cookie that registered it.
        let captured = eventually(Duration::from_secs(5), || {
            Some(registrations()).filter(|c| c.len() >= 3)
        })
        .unwrap_or_else(|| panic!("{offset}: {} captured", registrations().len()));
        kill(Pid::from_raw(tcpdump.id() as i32), Signal::SIGTERM).unwrap();
        tcpdump.wait().unwrap();
        let before = refusals(&rdv_ns, "replay") + refusals(&rdv_ns, "stale");
        // The one dated by the wrong clock, and the last (the one that registered the node).
        let replays = [hex(&captured[0]), hex(&captured[captured.len() - 1])];
        let send = "import socket, sys\n\
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                    for h in sys.argv[2:]:\n    \
                    s.sendto(bytes.fromhex(h), (sys.argv[1], 7000))\n";
        let mut cmd = vec!["python3", "-c", send, "203.0.113.10"];
        cmd.extend(replays.iter().map(String::as_str));
        // From the internet router: an eavesdropper elsewhere on the path.
        assert!(ns_exec(&format!("{name}-inet"), &cmd).status.success());
        let refused = eventually(Duration::from_secs(5), || {
            let now = refusals(&rdv_ns, "replay") + refusals(&rdv_ns, "stale");
            (now >= before + 2).then_some(now - before)
        });
        assert_eq!(
            refused,
            Some(2),
            "{offset}: replayed registrations accepted"
        );
    }
}
