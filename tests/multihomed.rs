//! A rendezvous on a host with two addresses, bound to the wildcard (issue 12, item 6): it
//! must answer from the address each node asked at, or the node's NAT, which only lets in
//! replies from the exact ip:port it sent to, drops the answer. Needs root.

mod lab;

use std::fs;
use std::time::Duration;

use lab::{ctl, eventually, ns_exec, Lab, NodeHandle};

/// the NAT lab (`crates/pilot-lab`) gives the rendezvous host these two addresses; the first is the one
/// the kernel prefers as a source towards the NAT routers.
const FIRST: &str = "203.0.113.10";
const SECOND: &str = "203.0.113.11";

/// `pilotctl netcheck --json` once it says `registered` with both ports' observations.
fn registered(node: &NodeHandle) -> Option<serde_json::Value> {
    let out = ctl(node, &["netcheck", "--json"]);
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let done = check["registered"] == true
        && check["mapped_main"].is_string()
        && check["mapped_alt"].is_string();
    done.then_some(check)
}

#[test]
fn a_rendezvous_on_0_0_0_0_answers_from_each_of_its_addresses() {
    wildcard_rendezvous(
        "a_rendezvous_on_0_0_0_0_answers_from_each_of_its_addresses",
        "0.0.0.0:7000",
    );
}

/// The dual-stack socket sees the IPv4 nodes as IPv4-mapped IPv6.
#[test]
fn a_dual_stack_rendezvous_answers_from_each_of_its_addresses() {
    wildcard_rendezvous(
        "a_dual_stack_rendezvous_answers_from_each_of_its_addresses",
        "[::]:7000",
    );
}

/// A rendezvous listening on the wildcard `listen` (port 7000, in a namespace of its own),
/// nodes behind NATs asking at either of its addresses: all register, probe both ports, learn
/// of each other's trust through it and get introduced.
fn wildcard_rendezvous(test: &str, listen: &str) {
    if !lab::privileged(test) {
        return;
    }
    let mut lab = Lab::new();
    // Port-restricted cone NATs (Linux masquerade) in front of both nodes: an answer from
    // another address than the one asked is dropped at the router, as in the field.
    let name = lab.natlab("prc", "prc");
    let (pinned, _) = lab.rendezvous(&format!("{name}-rdv"), listen);
    let key = pinned.split('@').next().unwrap().to_owned();
    let mut a = lab.node(&format!("{name}-a"), "a", "");
    let mut b = lab.node(&format!("{name}-b"), "b", "");
    let mut c = lab.node(&format!("{name}-a2"), "c", "");
    // a and b ask at the second address, c at the first (which worked before too).
    for (node, at) in [(&mut a, SECOND), (&mut b, SECOND), (&mut c, FIRST)] {
        let rendezvous = format!("{key}@{at}:7000");
        lab.start_with(node, &["--rendezvous".to_owned(), rendezvous]);
    }
    let logs = |lab: &Lab| {
        format!(
            "--- a\n{}\n--- b\n{}\n--- c\n{}\n--- rendezvous\n{}",
            a.log_text(),
            b.log_text(),
            c.log_text(),
            fs::read_to_string(lab.dir.join("rdv.log")).unwrap_or_default()
        )
    };
    // Registered (answers on the main port) with a NAT probe answered at each port.
    for node in [&a, &b, &c] {
        let Some(check) = eventually(Duration::from_secs(20), || registered(node)) else {
            let out = ctl(node, &["netcheck"]);
            panic!(
                "{} never registered with both ports answering:\n{}\n{}",
                node.ns,
                String::from_utf8_lossy(&out.stdout),
                logs(&lab)
            );
        };
        // Masquerade maps one socket to one public port, whichever port it sends to.
        assert_eq!(check["mapped_main"], check["mapped_alt"], "{check}");
        assert_eq!(check["nat"], "endpoint_independent", "{check}");
    }
    // What the rendezvous sends on its own, not as an answer: the trust request and
    // approval delivered to the other node, the Punch of an introduction. They leave from
    // the address each node registered at.
    lab.trust(&a, &b);
    let ping = ["ping", "-c", "1", "-W", "1", b.address.as_str()];
    let reached = eventually(Duration::from_secs(20), || {
        ns_exec(&a.ns, &ping).status.success().then_some(())
    });
    assert!(reached.is_some(), "a never reached b\n{}", logs(&lab));
}
