//! Issue 12, items 1 and 2, on the real kernel: state lost on one side comes back from the
//! other with nobody typing anything. Nodes behind nftables NATs (the NAT lab (`crates/pilot-lab`)), a real
//! rendezvous with its SQLite database. Needs root (see `lab::privileged`).

mod lab;

use std::fs;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use lab::{ctl, eventually, netcheck, path, pings, Lab, NodeHandle};

const RDV: &str = "203.0.113.10:7000";
/// Seconds between registrations, told to the nodes by the rendezvous (25 by default).
const KEEPALIVE: u64 = 5;

fn rendezvous(lab: &mut Lab, ns: &str) -> (String, usize) {
    let keepalive = KEEPALIVE.to_string();
    lab.rendezvous_with(ns, RDV, &["--keepalive", &keepalive])
}

/// A natlab with the rendezvous and two nodes that trust each other and ping across.
struct World {
    lab: Lab,
    rdv_ns: String,
    rendezvous: usize,
    a: NodeHandle,
    b: NodeHandle,
    flags: [String; 2],
}

fn world(nat1: &str, nat2: &str) -> World {
    let mut lab = Lab::new();
    let name = lab.natlab(nat1, nat2);
    let rdv_ns = format!("{name}-rdv");
    let (rdv, rendezvous) = rendezvous(&mut lab, &rdv_ns);
    let mut a = lab.node(&format!("{name}-a"), "a", "");
    let mut b = lab.node(&format!("{name}-b"), "b", "");
    let flags = ["--rendezvous".to_owned(), rdv];
    lab.start_with(&mut a, &flags);
    lab.start_with(&mut b, &flags);
    lab.trust(&a, &b);
    let up = eventually(Duration::from_secs(10), || pings(&a, &b).then_some(()));
    assert!(up.is_some(), "no ping\n{}", a.log_text());
    World {
        lab,
        rdv_ns,
        rendezvous,
        a,
        b,
        flags,
    }
}

impl World {
    fn rendezvous_log(&self) -> String {
        fs::read_to_string(self.lab.dir.join("rdv.log")).unwrap_or_default()
    }
}

#[test]
fn a_rendezvous_that_lost_its_database_relays_the_pair_again_within_a_keepalive() {
    // Relayed pairs stayed dead (relay drops `not_allowed`) until a node restarted: nodes
    // handed their trust records over only when they started.
    let test = "a_rendezvous_that_lost_its_database_relays_the_pair_again_within_a_keepalive";
    if !lab::privileged(test) {
        return;
    }
    // Two symmetric NATs: no direct path, the pair lives on the relay.
    let mut w = world("sym", "sym");
    assert_eq!(path(&w.a, &w.b), "relay");

    // The rendezvous dies and comes back on an empty database (the same key: identity.json
    // survived, rendezvous.db did not).
    w.lab.kill(w.rendezvous);
    for file in ["rendezvous.db", "rendezvous.db-wal", "rendezvous.db-shm"] {
        let _ = fs::remove_file(w.lab.dir.join("rdv").join(file));
    }
    let _ = rendezvous(&mut w.lab, &w.rdv_ns);
    let lost = Instant::now();
    let resumed = eventually(Duration::from_secs(3 * KEEPALIVE), || {
        pings(&w.a, &w.b).then(|| lost.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "the pair never came back\n--- a\n{}\n--- rendezvous\n{}",
            w.a.log_text(),
            w.rendezvous_log()
        )
    });
    // Within one keepalive (each node re-registers, is told the rendezvous holds nothing of
    // its own, and hands its records back), plus the ping's own second.
    eprintln!("relayed again {resumed:?} after the rendezvous came back without its database");
    assert!(
        resumed <= Duration::from_secs(KEEPALIVE + 2),
        "took {resumed:?}"
    );
    // No verb, no restart of a node: the nodes' logs say why they resubmitted.
    let log = w.a.log_text();
    assert!(
        log.contains("handing it our trust statements again"),
        "{log}"
    );
}

#[test]
fn a_node_that_lost_its_trust_file_is_trusted_again_with_no_verb() {
    // trust.json lost (disk full while saving, an old image restored): the peer still sent,
    // the node refused, `handshake` waited forever and the peer's answered "already trusted".
    let test = "a_node_that_lost_its_trust_file_is_trusted_again_with_no_verb";
    if !lab::privileged(test) {
        return;
    }
    let mut w = world("cone", "prc");

    // a stops, loses trust.json, starts again: it trusts nobody.
    assert!(w.lab.stop(&mut w.a, Signal::SIGTERM));
    fs::remove_file(w.a.state_dir.join("trust.json")).unwrap();
    w.lab.start_with(&mut w.a, &w.flags);
    let started = Instant::now();
    // Nobody types anything: a's registration carries the digest of an empty ledger, the
    // rendezvous sends the record signed by both back, and traffic flows both ways again.
    let back = eventually(Duration::from_secs(15), || {
        (w.a.trusts(&w.b) && pings(&w.a, &w.b) && pings(&w.b, &w.a)).then(|| started.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "trust never came back\n--- a\n{}\n--- rendezvous\n{}",
            w.a.log_text(),
            w.rendezvous_log()
        )
    });
    eprintln!("trusted and pinging both ways {back:?} after the restart without trust.json");
    assert!(back <= Duration::from_secs(10), "took {back:?}");
    // And it is on disk again.
    let saved = eventually(Duration::from_secs(5), || {
        let text = fs::read_to_string(w.a.state_dir.join("trust.json")).ok()?;
        let state: serde_json::Value = serde_json::from_str(&text).ok()?;
        state["ledger"]
            .as_array()
            .filter(|l| l.len() == 1)
            .map(drop)
    });
    assert!(saved.is_some(), "trust.json not written back");
}

#[test]
fn a_relayed_pair_moves_to_the_second_rendezvous_when_the_first_dies() {
    // Issue 14's node side: `--rendezvous` given twice. The first is killed with -9 while
    // traffic flows; both nodes of the relayed (symmetric/symmetric) pair must be registered
    // with the second within 10 s, and the pair relayed again through it, with nothing typed.
    if !lab::privileged("a_relayed_pair_moves_to_the_second_rendezvous_when_the_first_dies") {
        return;
    }
    let mut lab = Lab::new();
    let name = lab.natlab("sym", "sym");
    let rdv_ns = format!("{name}-rdv");
    // The rdv namespace has a second address, 203.0.113.11: the second instance's host.
    let (first, first_index) = lab.rendezvous_named("rdv1", &rdv_ns, RDV, &[]);
    let (second, _) = lab.rendezvous_named("rdv2", &rdv_ns, "203.0.113.11:7000", &[]);
    let mut a = lab.node(&format!("{name}-a"), "a", "");
    let mut b = lab.node(&format!("{name}-b"), "b", "");
    let flags = [
        "--rendezvous".to_owned(),
        first,
        "--rendezvous".to_owned(),
        second,
    ];
    lab.start_with(&mut a, &flags);
    lab.start_with(&mut b, &flags);
    lab.trust(&a, &b);
    let up = eventually(Duration::from_secs(10), || pings(&a, &b).then_some(()));
    assert!(up.is_some(), "no ping\n{}", a.log_text());
    assert_eq!(path(&a, &b), "relay");
    assert_eq!(netcheck(&a)["rendezvous"], RDV);
    assert_eq!(netcheck(&a)["standby"][0], "203.0.113.11:7000");

    // Traffic flows through the relay (an idle node would notice at its next refresh, up to
    // a keepalive later; one relaying traffic refreshes every 3 s).
    let a_ns = a.ns.clone();
    let traffic = lab.spawn_in(&a_ns, &["ping", "-q", "-i", "0.2", "-w", "60", &b.address]);
    std::thread::sleep(Duration::from_secs(1));
    lab.signal(first_index, Signal::SIGKILL);
    let killed = Instant::now();
    let logs = |a: &NodeHandle, b: &NodeHandle| {
        format!("--- a\n{}\n--- b\n{}", a.log_text(), b.log_text())
    };
    for node in [&a, &b] {
        let moved = eventually(Duration::from_secs(20), || {
            let n = netcheck(node);
            (n["rendezvous"] == "203.0.113.11:7000" && n["registered"] == true).then_some(())
        });
        assert!(
            moved.is_some(),
            "never registered with the second\n{}",
            logs(&a, &b)
        );
    }
    let registered = killed.elapsed();
    let back = eventually(Duration::from_secs(20), || pings(&a, &b).then_some(()));
    assert!(back.is_some(), "not relayed again\n{}", logs(&a, &b));
    let relayed = killed.elapsed();
    println!(
        "first rendezvous killed: both registered with the second after {:.1} s, pinging \
         through it after {:.1} s",
        registered.as_secs_f64(),
        relayed.as_secs_f64()
    );
    assert!(
        registered <= Duration::from_secs(11),
        "registered with the second only after {registered:?}\n{}",
        logs(&a, &b)
    );
    assert_eq!(path(&a, &b), "relay");
    assert_eq!(path(&b, &a), "relay");
    assert!(a.log_text().contains("registering with another rendezvous"));
    let status = String::from_utf8_lossy(&ctl(&a, &["status"]).stdout).into_owned();
    assert!(
        status.contains("using the standby 203.0.113.11:7000; the first, 203.0.113.10:7000"),
        "{status}"
    );
    lab.kill(traffic);
}
