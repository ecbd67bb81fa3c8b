//! The lab measured by its own `check`, through the `natlab` command people type: every NAT
//! kind maps and filters as named, loss and delay are as asked, a lab is removed whole, and
//! bad input changes nothing. Needs root; without it a test prints why and passes, except
//! under `CI=true`, where a missing prerequisite fails it.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

const NATLAB: &str = env!("CARGO_BIN_EXE_natlab");

static NEXT: AtomicU32 = AtomicU32::new(0);

fn privileged(test: &str) -> bool {
    let missing = pilot_lab::prereq::missing(
        true,
        &["ip", "nft", "python3", "ping", "iptables", "sysctl"],
    );
    pilot_lab::prereq::can_run(test, &missing)
}

/// A lab name no other test (or parallel run) uses: 6 characters.
fn unique_name() -> String {
    let n = std::process::id() * 16 + NEXT.fetch_add(1, Ordering::Relaxed);
    format!("t{:05x}", n % 0x10_0000)
}

fn natlab(args: &[&str]) -> Output {
    Command::new(NATLAB).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A lab brought up by the command; removed on drop, whatever the test did.
struct Up(String);

impl Up {
    fn new(args: &[&str]) -> Up {
        let name = unique_name();
        let mut all = vec!["up", &name];
        all.extend_from_slice(args);
        let out = natlab(&all);
        assert!(out.status.success(), "natlab {all:?}: {}", text(&out));
        Up(name)
    }

    fn check(&self) -> String {
        let out = natlab(&["check", &self.0]);
        let said = text(&out);
        assert!(out.status.success(), "natlab check {}:\n{said}", self.0);
        assert!(!said.contains("FAIL"), "{said}");
        said
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = natlab(&["down", &self.0]);
    }
}

fn namespaces_of(name: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|ns| ns.starts_with(&format!("{name}-")))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_full_cone_and_a_symmetric_nat_behave_as_named() {
    if !privileged("a_full_cone_and_a_symmetric_nat_behave_as_named") {
        return;
    }
    let lab = Up::new(&["--nat1", "cone", "--nat2", "sym"]);
    let said = lab.check();
    for property in [
        "a (nat1=cone): filtering: unsolicited from another host",
        "a2 (nat1=cone, a2 gets prc): filtering: unsolicited from another host",
        "b (nat2=sym): endpoint-dependent mapping",
        "LAN1: a reaches a2 directly",
        "lab: every interface of the 7 namespaces",
        "lab: inet has no default route",
    ] {
        assert!(
            said.contains(&format!("PASS {property}")),
            "{property}:\n{said}"
        );
    }
}

#[test]
fn a_routed_lan_and_a_home_router_with_loss_and_delay_behave_as_named() {
    if !privileged("a_routed_lan_and_a_home_router_with_loss_and_delay_behave_as_named") {
        return;
    }
    let lab = Up::new(&[
        "--nat1", "none", "--nat2", "prc", "--loss", "5", "--delay", "10",
    ]);
    let said = lab.check();
    for property in [
        "a (nat1=none): no translation",
        "b (nat2=prc): endpoint-independent mapping",
        "b (nat2=prc): public address is nat2's",
        "LAN2 (nat2=prc): from the internet, b's own address",
        "delay: RTT a<->rdv",
        "loss:",
    ] {
        assert!(
            said.contains(&format!("PASS {property}")),
            "{property}:\n{said}"
        );
    }
    let status = text(&natlab(&["status", &lab.0]));
    assert!(status.contains("(delayer running)"), "{status}");
}

#[test]
fn ipv6_lans_route_out_and_a_firewall_keeps_unsolicited_traffic_out() {
    if !privileged("ipv6_lans_route_out_and_a_firewall_keeps_unsolicited_traffic_out") {
        return;
    }
    let lab = Up::new(&["--v6-1", "fw", "--v6-2", "open", "--no-v4", "2"]);
    lab.check();
    let ping = |from: &str, to: &str| {
        natlab(&[
            "exec", &lab.0, from, "ping", "-6", "-n", "-c", "1", "-W", "1", to,
        ])
        .status
        .success()
    };
    assert!(ping("a", "2001:db8:2::10"), "a to b: LAN2 is open");
    assert!(
        !ping("b", "2001:db8:1::10"),
        "b to a: LAN1's firewall drops it"
    );
    assert!(ping("b", "2001:db8:f0::10"), "b reaches rdv over IPv6");
    let v4 = natlab(&[
        "exec",
        &lab.0,
        "b",
        "ping",
        "-n",
        "-c",
        "1",
        "-W",
        "1",
        "203.0.113.10",
    ]);
    assert!(!v4.status.success(), "b is IPv6-only");
}

#[test]
fn down_removes_every_namespace_and_process_and_the_state() {
    if !privileged("down_removes_every_namespace_and_process_and_the_state") {
        return;
    }
    let lab = Up::new(&["--delay", "5"]);
    assert_eq!(namespaces_of(&lab.0).len(), 7);
    // Something a user started in the lab and forgot.
    let mut sleeper = Command::new(NATLAB)
        .args(["exec", &lab.0, "b", "sleep", "600"])
        .spawn()
        .unwrap();
    let flushed = text(&natlab(&["flush", &lab.0, "nat1"]));
    assert!(flushed.contains("flushed"), "{flushed}");
    let out = natlab(&["down", &lab.0]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        sleeper.wait().unwrap().code().is_none(),
        "stopped by a signal"
    );
    assert!(namespaces_of(&lab.0).is_empty());
    assert!(!Path::new("/run/natlab").join(&lab.0).exists());
    let again = text(&natlab(&["down", &lab.0]));
    assert!(again.contains("nothing to remove"), "{again}");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    if !privileged("bad_input_is_refused_and_changes_nothing") {
        return;
    }
    let name = unique_name();
    for args in [
        vec!["up", &name, "--nat1", "bogus"],
        vec!["up", &name, "--loss", "100.5"],
        vec!["up", &name, "--delay", "-3"],
        vec!["up", &name, "--no-v4", "3"],
        vec!["up", "has-dash"],
        vec!["up", "seven77"],
    ] {
        let out = natlab(&args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(!text(&out).is_empty(), "{args:?}: says why");
    }
    assert!(namespaces_of(&name).is_empty());
    let lab = Up::new(&[]);
    let twice = natlab(&["up", &lab.0]);
    assert!(!twice.status.success());
    assert!(text(&twice).contains("already exists"), "{}", text(&twice));
    lab.check(); // the lab that was up is untouched
    let missing = natlab(&["status", &name]);
    assert!(!missing.status.success());
    assert!(text(&missing).contains("no lab"), "{}", text(&missing));
}
