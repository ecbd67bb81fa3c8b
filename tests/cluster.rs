//! Two `pilotd rendezvous` instances on one PostgreSQL database acting as one service, with
//! nodes behind NAT routers (crates/pilot-lab) on the real kernel: a trust request made at one
//! instance reaches a node registered at the other, a pair split across instances is
//! introduced and goes direct, a symmetric pair is relayed through both, and nodes fail over
//! when their instance is killed. Needs root and Debian's `postgresql`.

mod lab;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pilot_lab::postgres::Cluster;
use sha2::{Digest, Sha256};

use lab::{ctl, eventually, netcheck, ns_exec, path, pings, Lab, NodeHandle};

/// The two instances' addresses (the rendezvous namespace has both).
const ONE: &str = "203.0.113.10:7000";
const TWO: &str = "203.0.113.11:7000";

/// A NAT lab with two instances on one database, and nodes `a` and `b` (not started).
struct Service {
    lab: Lab,
    /// How nodes name each instance (`KEY@ADDRESS`), and its process.
    one: (String, usize),
    two: (String, usize),
    a: NodeHandle,
    b: NodeHandle,
    /// Dropped last: the instances stop before their database.
    db: Cluster,
}

fn service(test: &str, nat1: &str, nat2: &str) -> Option<Service> {
    if !lab::privileged(test) {
        return None;
    }
    let db = Cluster::for_test(test, "registry")?;
    let mut lab = Lab::new();
    let name = lab.natlab(nat1, nat2);
    let password = lab.dir.join("pgpassword");
    fs::write(&password, Cluster::PASSWORD).unwrap();
    fs::set_permissions(&password, fs::Permissions::from_mode(0o600)).unwrap();
    let url = db.url("registry");
    let store = [
        "--store",
        &url,
        "--store-password-file",
        password.to_str().unwrap(),
    ];
    let rdv = format!("{name}-rdv");
    let one = lab.rendezvous_named("one", &rdv, ONE, &store);
    let two = lab.rendezvous_named("two", &rdv, TWO, &store);
    let a = lab.node(&format!("{name}-a"), "a", "");
    let b = lab.node(&format!("{name}-b"), "b", "");
    let service = Service {
        lab,
        one,
        two,
        a,
        b,
        db,
    };
    service.wait_for_each_other();
    Some(service)
}

impl Service {
    /// Until each instance logged the other's arrival (the heartbeat table).
    fn wait_for_each_other(&self) {
        let met = eventually(Duration::from_secs(10), || {
            let both = ["one", "two"].iter().all(|n| {
                let log = fs::read_to_string(self.lab.dir.join(format!("{n}.log")));
                log.is_ok_and(|l| l.contains("another rendezvous shares the registry"))
            });
            both.then_some(())
        });
        assert!(met.is_some(), "the instances never met\n{}", self.logs());
    }

    /// Starts `node` with these instances, in this order.
    fn start(&mut self, which: Which, instances: &[&str]) {
        let flags: Vec<String> = instances
            .iter()
            .flat_map(|i| ["--rendezvous".to_owned(), (*i).to_owned()])
            .collect();
        let node = match which {
            Which::A => &mut self.a,
            Which::B => &mut self.b,
        };
        self.lab.start_with(node, &flags);
    }

    /// Starts `a` on instance one and `b` on instance two, each with only its own.
    fn split(&mut self) {
        let (one, two) = (self.one.0.clone(), self.two.0.clone());
        self.start(Which::A, &[&one]);
        self.start(Which::B, &[&two]);
    }

    fn logs(&self) -> String {
        let read = |n: &str| fs::read_to_string(self.lab.dir.join(n)).unwrap_or_default();
        format!(
            "--- a\n{}\n--- b\n{}\n--- one\n{}\n--- two\n{}",
            read("a.log"),
            read("b.log"),
            read("one.log"),
            read("two.log")
        )
    }
}

enum Which {
    A,
    B,
}

/// Pings until `from` reports `want` as its path to `to`; how long it took.
fn settle(s: &Service, from: &NodeHandle, to: &NodeHandle, want: &str) -> Duration {
    let started = Instant::now();
    let done = eventually(Duration::from_secs(20), || {
        let _ = pings(from, to);
        (path(from, to) == want).then_some(())
    });
    assert!(
        done.is_some(),
        "path {:?}, want {want}\n{}",
        path(from, to),
        s.logs()
    );
    started.elapsed()
}

#[test]
fn a_trust_request_crosses_instances_and_the_pair_is_introduced_direct() {
    let test = "a_trust_request_crosses_instances_and_the_pair_is_introduced_direct";
    let Some(mut s) = service(test, "prc", "sym") else {
        return;
    };
    s.split();
    // a asks at one; b, at two, sees the request and approves there; a learns it from one.
    s.lab.trust(&s.a, &s.b);
    // a's Connect at one introduces b at two: both punch, and the pair goes direct.
    let took = settle(&s, &s.a, &s.b, "direct");
    assert_eq!(path(&s.b, &s.a), "direct", "{}", s.logs());
    println!(
        "direct across instances {:.1} s after trust",
        took.as_secs_f64()
    );
    assert!(s.lab.dir.join("one.log").exists());
    let one_log = fs::read_to_string(s.lab.dir.join("one.log")).unwrap();
    assert!(
        one_log.contains("introduced through another server"),
        "{}",
        s.logs()
    );
}

#[test]
fn a_symmetric_pair_across_instances_is_relayed_through_both_and_carries_20_mb() {
    let test = "a_symmetric_pair_across_instances_is_relayed_through_both_and_carries_20_mb";
    let Some(mut s) = service(test, "sym", "sym") else {
        return;
    };
    s.split();
    s.lab.trust(&s.a, &s.b);
    settle(&s, &s.a, &s.b, "relay");
    // 20 MB from b to a: a relays to one, one forwards to two, two relays to b, and back.
    let www = s.lab.dir.join("www");
    fs::create_dir(&www).unwrap();
    let mut data = vec![0u8; 20 * 1024 * 1024];
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    fs::write(www.join("blob"), &data).unwrap();
    let (a, b) = (&s.a, &s.b);
    let served = s
        .lab
        .serve_http(b, &www, a, "blob", Duration::from_secs(30));
    assert!(served, "HTTP across the relay never worked\n{}", s.logs());
    let fetched = s.lab.dir.join("fetched");
    let url = format!("http://[{}]:8080/blob", s.b.address);
    let started = Instant::now();
    let out = ns_exec(
        &s.a.ns,
        &[
            "curl",
            "-sS",
            "--fail",
            "-m",
            "120",
            "-o",
            fetched.to_str().unwrap(),
            &url,
        ],
    );
    assert!(out.status.success(), "{out:?}\n{}", s.logs());
    let got = fs::read(&fetched).unwrap();
    assert_eq!(got.len(), data.len());
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
    println!(
        "20 MB across two instances' relays in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(path(&s.a, &s.b), "relay");
    // It went through both: two forwarded the data to one (b is two's), one the
    // acknowledgements to two (their counters at exit).
    for (name, index) in [("one", s.one.1), ("two", s.two.1)] {
        s.lab.signal(index, Signal::SIGTERM);
        assert!(
            s.lab.wait(index, Duration::from_secs(20)),
            "{name} did not stop"
        );
    }
    let forwarded = |name: &str| -> u64 {
        let log = fs::read_to_string(s.lab.dir.join(format!("{name}.log"))).unwrap();
        let at_exit = log.lines().rev().find(|l| l.contains("counters at exit"));
        let field = (at_exit.unwrap_or_default().split_whitespace())
            .find_map(|w| w.strip_prefix("relay_forwarded_bytes="));
        field.and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    let (by_one, by_two) = (forwarded("one"), forwarded("two"));
    println!("forwarded between instances: one {by_one} bytes, two {by_two} bytes");
    assert!(
        by_two > 20_000_000,
        "two forwarded {by_two} bytes\n{}",
        s.logs()
    );
    assert!(by_one > 0, "{}", s.logs());
}

/// Both nodes use one, then two; one is killed with -9 while traffic flows. `want` is the
/// pair's path, which must come back (relay) or never go (direct).
fn failover(test: &str, nat1: &str, nat2: &str, want: &str) {
    let Some(mut s) = service(test, nat1, nat2) else {
        return;
    };
    let (one, two) = (s.one.0.clone(), s.two.0.clone());
    s.start(Which::A, &[&one, &two]);
    s.start(Which::B, &[&one, &two]);
    s.lab.trust(&s.a, &s.b);
    settle(&s, &s.a, &s.b, want);
    assert_eq!(netcheck(&s.a)["rendezvous"], ONE);
    let a_ns = s.a.ns.clone();
    let ping_log = s.lab.dir.join("ping.log");
    // Its stdout to the log (the lab logs stderr).
    let ping = format!("exec ping -i 0.1 -w 40 -D {} 1>&2", s.b.address);
    let traffic = s
        .lab
        .spawn_logged(&a_ns, &["sh", "-c", &ping], Some(&ping_log));
    std::thread::sleep(Duration::from_secs(2));
    s.lab.signal(s.one.1, Signal::SIGKILL);
    let killed = Instant::now();
    for node in [&s.a, &s.b] {
        let moved = eventually(Duration::from_secs(20), || {
            let n = netcheck(node);
            (n["rendezvous"] == TWO && n["registered"] == true).then_some(())
        });
        assert!(moved.is_some(), "never registered with two\n{}", s.logs());
    }
    let registered = killed.elapsed();
    let back = eventually(Duration::from_secs(20), || pings(&s.a, &s.b).then_some(()));
    assert!(
        back.is_some(),
        "no traffic after the failover\n{}",
        s.logs()
    );
    let resumed = killed.elapsed();
    println!(
        "{nat1}/{nat2}: instance one killed; both nodes registered with two after {:.1} s, \
         pinging after {:.1} s",
        registered.as_secs_f64(),
        resumed.as_secs_f64()
    );
    assert!(
        registered <= Duration::from_secs(10),
        "{registered:?}\n{}",
        s.logs()
    );
    assert!(
        resumed <= Duration::from_secs(10),
        "{resumed:?}\n{}",
        s.logs()
    );
    assert_eq!(path(&s.a, &s.b), want, "{}", s.logs());
    // SIGINT: ping flushes what it printed (its stdout is a file, fully buffered).
    s.lab.signal(traffic, Signal::SIGINT);
    let _ = s.lab.wait(traffic, Duration::from_secs(5));
    if want == "direct" {
        // The direct path never depended on the rendezvous: no ping went unanswered for
        // long (at 10 a second, a gap of 10 in the sequence is a second of silence).
        let log = fs::read_to_string(&ping_log).unwrap();
        let seqs: Vec<u64> = log
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("icmp_seq="))
            .filter_map(|n| n.parse().ok())
            .collect();
        let gap = seqs.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        assert!(seqs.len() > 20, "{log}");
        assert!(
            gap <= 10,
            "the direct path went silent ({gap} pings)\n{log}"
        );
    }
}

#[test]
fn a_relayed_pair_fails_over_to_the_other_instance_within_10_s() {
    failover(
        "a_relayed_pair_fails_over_to_the_other_instance_within_10_s",
        "sym",
        "sym",
        "relay",
    );
}

#[test]
fn a_direct_pair_keeps_its_path_while_its_instance_dies() {
    failover(
        "a_direct_pair_keeps_its_path_while_its_instance_dies",
        "cone",
        "prc",
        "direct",
    );
}

#[test]
fn a_hostname_held_at_one_instance_is_refused_at_the_other_and_resolves_there() {
    let test = "a_hostname_held_at_one_instance_is_refused_at_the_other_and_resolves_there";
    let Some(mut s) = service(test, "prc", "prc") else {
        return;
    };
    let (one, two) = (s.one.0.clone(), s.two.0.clone());
    let alice = ["--rendezvous", &one, "--hostname", "alice"].map(String::from);
    s.lab.start_with(&mut s.a, &alice);
    let registered = eventually(Duration::from_secs(10), || {
        (netcheck(&s.a)["registered"] == true).then_some(())
    });
    assert!(registered.is_some(), "{}", s.logs());
    // b claims the same name at the other instance: refused, and its daemon says why.
    let state = s.b.state_dir.display().to_string();
    let control = s.b.control.display().to_string();
    let out = ns_exec(
        &s.b.ns,
        &[
            "timeout",
            "30",
            lab::PILOTD,
            "up",
            "--state-dir",
            &state,
            "--control",
            &control,
            "--rendezvous",
            &two,
            "--hostname",
            "alice",
        ],
    );
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("hostname `alice` is already registered by another node"),
        "{said}\n{}",
        s.logs()
    );
    // As bob it registers at two, and finds alice (registered at one) by name.
    let bob = ["--rendezvous", &two, "--hostname", "bob"].map(String::from);
    s.lab.start_with(&mut s.b, &bob);
    let found = eventually(Duration::from_secs(10), || {
        let out = ctl(&s.b, &["resolve", "alice", "--json"]);
        let peer: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        peer["public_key"].as_str().map(str::to_owned)
    });
    assert_eq!(found.as_deref(), Some(s.a.key.as_str()), "{}", s.logs());
}

#[test]
fn with_the_database_stopped_a_pair_relayed_across_instances_carries_on() {
    let test = "with_the_database_stopped_a_pair_relayed_across_instances_carries_on";
    let Some(mut s) = service(test, "sym", "sym") else {
        return;
    };
    s.split();
    s.lab.trust(&s.a, &s.b);
    settle(&s, &s.a, &s.b, "relay");
    // The database stops for 15 s (longer than any cached answer lives): the instances
    // relay what they know, with nothing to read or write.
    s.db.stop().unwrap();
    let down = Instant::now();
    let mut answered = 0;
    while down.elapsed() < Duration::from_secs(15) {
        answered += usize::from(pings(&s.a, &s.b));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        answered >= 12,
        "{answered} pings answered while the database was down\n{}",
        s.logs()
    );
    // It comes back: the instances reconnect, still know each other, and the pair is relayed.
    s.db.restart().unwrap();
    let back = eventually(Duration::from_secs(15), || {
        let log = fs::read_to_string(s.lab.dir.join("one.log")).ok()?;
        log.contains("registry store works again").then_some(())
    });
    assert!(back.is_some(), "{}", s.logs());
    assert!(pings(&s.a, &s.b), "{}", s.logs());
    assert_eq!(path(&s.a, &s.b), "relay");
    let one_log = fs::read_to_string(s.lab.dir.join("one.log")).unwrap();
    assert!(!one_log.contains("stopped beating"), "{}", s.logs());
}
