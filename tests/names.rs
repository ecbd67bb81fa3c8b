//! Issue 12 item 8, hostnames can be given back, on the real kernel: a node releases its name
//! (`pilotctl release-name`) and another takes it; an operator frees one on the rendezvous
//! (`pilotd rendezvous free-name`, refused while the server runs); the name of a node that
//! stopped registering expires after the name TTL. Needs root (see `lab::privileged`).

mod lab;

use std::process::Output;
use std::time::Duration;

use nix::sys::signal::Signal;

use lab::{ctl, eventually, ns_exec, Lab, NodeHandle, PILOTD};

const RDV: &str = "198.51.100.1:7000";

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn status(node: &NodeHandle) -> serde_json::Value {
    let out = ctl(node, &["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Waits until `node` is registered (with its hostname, if it claims one: a refused name
/// stops the daemon).
fn wait_registered(node: &NodeHandle) {
    let up = eventually(Duration::from_secs(10), || {
        (status(node)["registered"] == true).then_some(())
    });
    assert!(up.is_some(), "not registered:\n{}", node.log_text());
}

/// The public key `pilotctl resolve NAME` on `node` finds, or its error.
fn resolve(node: &NodeHandle, name: &str) -> Result<String, String> {
    let out = ctl(node, &["resolve", name, "--json"]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let peer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Ok(peer["public_key"].as_str().unwrap().to_owned())
}

#[test]
fn a_released_name_goes_to_another_node_and_an_operator_frees_one() {
    if !lab::privileged("a_released_name_goes_to_another_node_and_an_operator_frees_one") {
        return;
    }
    let mut lab = Lab::new();
    let (na, nb) = lab.two_hosts();
    let (rdv, server) = lab.rendezvous(&na, RDV);
    // The holder's hostname is in its config file, as `pilotctl init --hostname` puts it.
    let config = lab.dir.join("first.toml");
    std::fs::write(&config, "hostname = \"nsrel\"\n").unwrap();
    let config_arg = config.to_str().unwrap().to_owned();
    let mut first = lab.node(&na, "first", "198.51.100.1");
    let first_flags = ["--config", &config_arg, "--rendezvous", &rdv].map(String::from);
    lab.start_with(&mut first, &first_flags);
    wait_registered(&first);
    assert_eq!(status(&first)["hostname"], "nsrel");

    // Released: the rendezvous frees it, the node stops claiming it, the config loses it.
    let out = ctl(&first, &["release-name", "--config", &config_arg]);
    assert!(out.status.success(), "{}\n{}", text(&out), first.log_text());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("released `nsrel`"),
        "{}",
        text(&out)
    );
    assert!(status(&first)["hostname"].is_null());
    let file = std::fs::read_to_string(&config).unwrap();
    assert!(file.starts_with("# hostname = \"nsrel\""), "{file}");
    let err = resolve(&first, "nsrel").unwrap_err();
    assert!(err.contains("no node `nsrel` is registered"), "{err}");
    // Nothing left to release: a clear error.
    let out = ctl(&first, &["release-name", "--config", &config_arg]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no hostname"),
        "{}",
        text(&out)
    );

    // Another node takes the name (a taken one would stop its daemon).
    let mut second = lab.node(&nb, "second", "198.51.100.2");
    let second_flags = ["--rendezvous", &rdv, "--hostname", "nsrel"].map(String::from);
    lab.start_with(&mut second, &second_flags);
    wait_registered(&second);
    assert_eq!(resolve(&first, "nsrel"), Ok(second.key.clone()));
    // The first node restarts from its edited config without claiming the name again.
    assert!(lab.stop(&mut first, Signal::SIGTERM));
    lab.start_with(&mut first, &first_flags);
    wait_registered(&first);
    assert!(status(&first)["hostname"].is_null());

    // The operator frees the name. Not while the server runs: it holds the registry in memory.
    assert!(lab.stop(&mut second, Signal::SIGTERM));
    let data_dir = lab.dir.join("rdv");
    let data_dir = data_dir.to_str().unwrap();
    let free = || {
        ns_exec(
            &na,
            &[
                PILOTD,
                "rendezvous",
                "free-name",
                "nsrel",
                "--data-dir",
                data_dir,
            ],
        )
    };
    let out = free();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the rendezvous is running"),
        "{}",
        text(&out)
    );
    lab.signal(server, Signal::SIGTERM);
    assert!(lab.wait(server, Duration::from_secs(10)));
    let out = free();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&second.key),
        "{}",
        text(&out)
    );
    let out = free();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no key holds the hostname `nsrel`"),
        "{}",
        text(&out)
    );
    // Back up, the server does not hand it to its old holder: the first node may claim it.
    lab.rendezvous(&na, RDV);
    assert!(lab.stop(&mut first, Signal::SIGTERM));
    let claim = ["--rendezvous", &rdv, "--hostname", "nsrel"].map(String::from);
    lab.start_with(&mut first, &claim);
    wait_registered(&first);
    assert_eq!(status(&first)["hostname"], "nsrel");
}

#[test]
fn the_name_of_a_node_that_stopped_registering_expires_after_the_name_ttl() {
    if !lab::privileged("the_name_of_a_node_that_stopped_registering_expires_after_the_name_ttl") {
        return;
    }
    let mut lab = Lab::new();
    let (na, nb) = lab.two_hosts();
    let (rdv, _) = lab.rendezvous_with(&na, RDV, &["--keepalive", "1", "--name-ttl", "3s"]);
    let mut holder = lab.node(&na, "holder", "198.51.100.1");
    let claim = ["--rendezvous", &rdv, "--hostname", "nsexp"].map(String::from);
    lab.start_with(&mut holder, &claim);
    wait_registered(&holder);
    // Held while its node registers (every second here), well past the TTL. (A node that
    // looked a name up remembers the answer, so the asking is left to one that is not used
    // again.)
    std::thread::sleep(Duration::from_secs(5));
    let mut probe = lab.node(&nb, "probe", "198.51.100.2");
    let flags = ["--rendezvous", &rdv, "--listen-port", "51871"].map(String::from);
    lab.start_with(&mut probe, &flags);
    wait_registered(&probe);
    assert_eq!(resolve(&probe, "nsexp"), Ok(holder.key.clone()));
    assert!(lab.stop(&mut probe, Signal::SIGTERM));

    // The holder dies (a box about to be reinstalled): 3 s after its last registration the
    // name is free.
    lab.stop(&mut holder, Signal::SIGKILL);
    std::thread::sleep(Duration::from_secs(4));
    let mut other = lab.node(&nb, "other", "198.51.100.2");
    lab.start_with(&mut other, &["--rendezvous".to_owned(), rdv.clone()]);
    wait_registered(&other);
    let err = resolve(&other, "nsexp").unwrap_err();
    assert!(err.contains("no node `nsexp` is registered"), "{err}");
    assert!(lab.stop(&mut other, Signal::SIGTERM));
    lab.start_with(&mut other, &claim);
    wait_registered(&other);
    assert_eq!(status(&other)["hostname"], "nsexp");
    let rdv_log = std::fs::read_to_string(lab.dir.join("rdv.log")).unwrap();
    assert!(
        rdv_log.contains("hostname nsexp released: its key has not registered"),
        "{rdv_log}"
    );
}

#[test]
fn a_trusted_peers_name_taken_by_another_key_is_refused_as_ambiguous_by_the_verbs() {
    // Issue 15, A8: after bob's registration lapsed anyone could claim `bob`; `untrust bob`
    // then hit the impostor while the real bob stayed trusted. The trusted key keeps the name
    // here, and a verb given the name refuses it, showing both keys.
    let test = "a_trusted_peers_name_taken_by_another_key_is_refused_as_ambiguous_by_the_verbs";
    if !lab::privileged(test) {
        return;
    }
    let mut lab = Lab::new();
    let (na, nb) = lab.two_hosts();
    let (rdv, _) = lab.rendezvous_with(&na, RDV, &["--keepalive", "1", "--name-ttl", "3s"]);
    let mut alice = lab.node(&na, "alice", "198.51.100.1");
    let mut bob = lab.node(&nb, "bob", "198.51.100.2");
    lab.start_with(&mut alice, &["--rendezvous".to_owned(), rdv.clone()]);
    let claim = ["--rendezvous", &rdv, "--hostname", "nsamb"].map(String::from);
    lab.start_with(&mut bob, &claim);
    wait_registered(&bob);
    lab.trust(&alice, &bob);
    assert_eq!(resolve(&alice, "nsamb"), Ok(bob.key.clone()));

    // bob's box dies; its name expires at the rendezvous, and another key claims it and asks
    // alice for trust under it.
    lab.stop(&mut bob, Signal::SIGKILL);
    std::thread::sleep(Duration::from_secs(4));
    let mut impostor = lab.node(&nb, "impostor", "198.51.100.2");
    let flags = [&claim[..], &["--listen-port".into(), "51871".into()]].concat();
    lab.start_with(&mut impostor, &flags);
    wait_registered(&impostor);
    let out = ctl(&impostor, &["handshake", &alice.key, "it's me, bob"]);
    assert!(out.status.success(), "{}", text(&out));
    let asked = eventually(Duration::from_secs(10), || {
        (!alice.pending().is_empty()).then_some(())
    });
    assert!(asked.is_some(), "no request\n{}", alice.log_text());

    for verb in [
        &["untrust", "nsamb"][..],
        &["resolve", "nsamb"],
        &["ping", "nsamb"],
    ] {
        let out = ctl(&alice, verb);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{verb:?}: {}", text(&out));
        assert!(err.contains("`nsamb` is ambiguous"), "{verb:?}: {err}");
        assert!(
            err.contains(&bob.key) && err.contains(&impostor.key),
            "{err}"
        );
    }
    // Nothing changed: bob is still trusted, by key every verb works.
    assert!(alice.trusts(&bob));
    assert_eq!(resolve(&alice, &impostor.key), Ok(impostor.key.clone()));
}
