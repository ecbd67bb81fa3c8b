//! The command lines users of the seed (the Go "Pilot Protocol") type, against real daemons in
//! network namespaces: each works, or fails saying exactly what to type instead. Needs root
//! (see `lab::privileged`).

mod lab;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use lab::{ctl, ctl_in, eventually, ns_exec, Detached, Lab, NodeHandle, PILOTCTL};

/// `pilotctl --control <node's socket> ARGS` inside the node's namespace with `env` set (e.g.
/// `PILOT_CONFIG`), as a user types it there.
fn pilotctl(node: &NodeHandle, env: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.ns, "env"]);
    for (key, value) in env {
        cmd.arg(format!("{key}={}", value.display()));
    }
    cmd.arg(PILOTCTL)
        .arg("--control")
        .arg(&node.control)
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails with exit status 1, and returns stderr.
fn refused(out: Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `daemon start` as the seed's users type it; `--no-systemd` only where the unit would take
/// over (the test must not start the host's service).
fn daemon_start(extra: &[&str]) -> Vec<String> {
    let mut args = vec!["daemon".to_owned(), "start".to_owned()];
    if Path::new("/run/systemd/system").is_dir() {
        args.push("--no-systemd".into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn the_seeds_command_lines_work_or_say_what_to_type() {
    if !lab::privileged("the_seeds_command_lines_work_or_say_what_to_type") {
        return;
    }
    let mut lab = Lab::new();
    let (na, nb) = lab.two_hosts();
    // The seed's users give the registry as HOST:PORT: its key is pinned on first contact.
    let (pinned, _) = lab.rendezvous(&na, "198.51.100.1:7000");
    let registry = pinned.split_once('@').unwrap().1.to_owned();
    let alpha = lab.node(&na, "alpha", "198.51.100.1");
    let beta = lab.node(&nb, "beta", "198.51.100.2");
    let mut detached = Detached::default();
    let alpha_config = lab.dir.join("alpha.toml");
    let beta_config = lab.dir.join("beta.toml");
    fs::write(&beta_config, "").unwrap();

    // `pilotctl init --hostname NAME`: the identity, the hostname in the config file, and the
    // next step (a rendezvous is missing still).
    let env = [("PILOT_CONFIG", alpha_config.as_path())];
    let state = alpha.state_dir.to_str().unwrap();
    let out = ok(pilotctl(
        &alpha,
        &env,
        &["init", "--hostname", "agent-alpha", "--state-dir", state],
    ));
    assert!(out.contains(&alpha.address), "{out}");
    assert!(
        out.contains("pilotctl init --rendezvous HOST:PORT"),
        "{out}"
    );
    let out = ok(pilotctl(&alpha, &env, &["init", "--registry", &registry]));
    assert!(out.contains("next        `pilotctl daemon start`"), "{out}");
    let written = fs::read_to_string(&alpha_config).unwrap();
    for line in [
        "hostname = \"agent-alpha\"",
        &format!("rendezvous = \"{registry}\""),
    ] {
        assert!(written.lines().any(|l| l == line), "{written}");
    }

    // `pilotctl daemon start` reads what init wrote.
    let log = alpha.log.to_str().unwrap();
    let out = pilotctl(&alpha, &env, &strs(&daemon_start(&["--log", log])));
    detached.note(&alpha);
    let out = ok(out);
    assert!(out.contains(&alpha_config.display().to_string()), "{out}");
    assert_eq!(alpha.info()["hostname"], "agent-alpha");

    // `pilotctl daemon start --hostname my-agent --registry HOST:PORT`, flags straight on it.
    let env_b = [("PILOT_CONFIG", beta_config.as_path())];
    let (state_b, log_b) = (beta.state_dir.to_str().unwrap(), beta.log.to_str().unwrap());
    let start_b = daemon_start(&[
        "--hostname",
        "agent-beta",
        "--registry",
        &registry,
        "--state-dir",
        state_b,
        "--log",
        log_b,
    ]);
    // `--public` alone is refused, naming what to type.
    let err = refused(pilotctl(&beta, &env_b, &strs(&daemon_start(&["--public"]))));
    assert!(err.contains("`--endpoint IP:PORT --public`"), "{err}");
    let out = pilotctl(&beta, &env_b, &strs(&start_b));
    detached.note(&beta);
    ok(out);
    assert_eq!(beta.info()["hostname"], "agent-beta");
    let registered = eventually(Duration::from_secs(10), || {
        let net: serde_json::Value =
            serde_json::from_slice(&ctl(&beta, &["netcheck", "--json"]).stdout).ok()?;
        (net["registered"] == true).then_some(())
    });
    assert!(registered.is_some(), "{}", beta.log_text());
    assert!(
        beta.state_dir.join("rendezvous.json").exists(),
        "the registry's key is pinned"
    );

    // Trust, by hostname; the seed's numeric ids are refused with what we accept instead.
    let found = eventually(Duration::from_secs(10), || {
        ctl(&beta, &["resolve", "agent-alpha"])
            .status
            .success()
            .then_some(())
    });
    assert!(found.is_some(), "{}", alpha.log_text());
    ok(ctl(&beta, &["handshake", "agent-alpha", "seed test"]));
    let asked = eventually(Duration::from_secs(10), || {
        (!alpha.pending().is_empty()).then_some(())
    });
    assert!(asked.is_some(), "{}", alpha.log_text());
    for seed_id in ["42", "0:0000.0000.002A"] {
        let err = refused(ctl(&alpha, &["approve", seed_id]));
        assert!(
            err.contains(&format!("`{seed_id}` looks like a Pilot Protocol node id"))
                && err.contains("a hostname, a node address (xxxx.xxxx.xxxx), an fd70:: address or a public key")
                && err.contains("`pilotctl pending` lists requesters"),
            "{err}"
        );
    }
    ok(ctl(&alpha, &["approve", "agent-beta"]));
    let both = eventually(Duration::from_secs(10), || {
        (alpha.trusts(&beta) && beta.trusts(&alpha)).then_some(())
    });
    assert!(both.is_some(), "{}\n{}", alpha.log_text(), beta.log_text());

    // `pilotctl handshake PEER` again: a success that says so, in text and JSON.
    let out = ok(ctl(&beta, &["handshake", "agent-alpha"]));
    assert!(out.contains("already trusted"), "{out}");
    let out = ok(ctl(&beta, &["handshake", "agent-alpha", "--json"]));
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["already_trusted"], true, "{out}");
    assert_eq!(reply["outcome"], "already_trusted", "{out}");

    // `pilotctl ping NAME --count 4`.
    let out = ok(ctl(&beta, &["ping", "agent-alpha", "--count", "4"]));
    assert!(out.contains("4 sent, 4 received"), "{out}");

    // `echo '{"a":1}' | pilotctl connect agent-alpha 1000`, and with the port left out.
    lab.serve_echo(&na, "::", 1000);
    let out = eventually(Duration::from_secs(10), || {
        let out = ctl_in(&beta, &["connect", "agent-alpha", "1000"], b"{\"a\":1}\n");
        out.status.success().then_some(out)
    })
    .expect("connect to port 1000 never worked");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "echo:{\"a\":1}\n");
    let out = ok(ctl_in(
        &beta,
        &["connect", "agent-alpha", "--message", "hello"],
        b"",
    ));
    assert_eq!(out, "echo:hello");
    // Nothing listens on beta's port 1000: the error says so and how to give a port.
    let err = refused(ctl_in(
        &alpha,
        &["connect", "agent-beta", "--message", "hi"],
        b"",
    ));
    assert!(
        err.contains("nothing listens on port 1000 (the default when no port is given)")
            && err.contains("`pilotctl connect agent-beta PORT`"),
        "{err}"
    );

    // `pilotctl send-message NAME --data '{"task":"analyze"}' --type json`.
    let args = [
        "send-message",
        "agent-alpha",
        "--data",
        r#"{"task":"analyze"}"#,
        "--type",
        "json",
    ];
    let out = ok(ctl_in(&beta, &args, b""));
    assert!(out.starts_with("delivered to agent-alpha"), "{out}");
    let inbox: serde_json::Value =
        serde_json::from_str(&ok(ctl(&alpha, &["inbox", "--json"]))).unwrap();
    let message = &inbox["messages"][0];
    assert_eq!(message["kind"], "json");
    assert_eq!(message["data"]["task"], "analyze");
    assert_eq!(message["from"]["hostname"], "agent-beta");

    // Both stop cleanly.
    for node in [&alpha, &beta] {
        ok(pilotctl(node, &[], &["daemon", "stop", "--no-systemd"]));
    }
    detached.forget_all();
    assert!(!ns_exec(&na, &["ip", "link", "show", "pilot0"])
        .status
        .success());
}

/// `pilotctl daemon start --endpoint IP:PORT --public` on a node behind a symmetric NAT whose
/// router forwards a public port to it. Between two symmetric NATs punching fails (the pair
/// stays on the relay, see tests/nat.rs); told the forwarded endpoint, the peer reaches the
/// node there directly, and what the rendezvous observes is something else.
#[test]
fn a_configured_endpoint_through_a_port_forward_is_where_the_peer_reaches_the_node() {
    if !lab::privileged(
        "a_configured_endpoint_through_a_port_forward_is_where_the_peer_reaches_the_node",
    ) {
        return;
    }
    const FORWARD: &str = "203.0.113.1:40000";
    let mut lab = Lab::new();
    let name = lab.natlab("sym", "sym");
    let router = format!("{name}-n1");
    for rule in [
        "add rule ip natlab prerouting iifname \"wan\" udp dport 40000 dnat to 198.51.100.10:51870",
        "add rule ip natlab forward iifname \"wan\" oifname \"br0\" ct status dnat accept",
    ] {
        let out = ns_exec(&router, &["nft", rule]);
        assert!(out.status.success(), "nft {rule}: {}", text(&out));
    }
    let (rendezvous, _) = lab.rendezvous(&format!("{name}-rdv"), "203.0.113.10:7000");
    let a = lab.node(&format!("{name}-a"), "a", "");
    let mut b = lab.node(&format!("{name}-b"), "b", "");
    let mut detached = Detached::default();
    let empty = lab.dir.join("empty.toml");
    fs::write(&empty, "").unwrap();
    let start = daemon_start(&[
        "--endpoint",
        FORWARD,
        "--public",
        "--registry",
        &rendezvous,
        "--state-dir",
        a.state_dir.to_str().unwrap(),
        "--log",
        a.log.to_str().unwrap(),
    ]);
    let out = pilotctl(&a, &[("PILOT_CONFIG", empty.as_path())], &strs(&start));
    detached.note(&a);
    ok(out);
    lab.start_with(&mut b, &["--rendezvous".to_owned(), rendezvous.clone()]);
    lab.trust(&a, &b);

    // a says what it was told and what the rendezvous sees.
    let net: serde_json::Value =
        serde_json::from_str(&ok(ctl(&a, &["netcheck", "--json"]))).unwrap();
    assert_eq!(net["endpoint"], FORWARD, "{net}");
    assert_eq!(net["endpoint_configured"], true, "{net}");
    assert_ne!(net["observed"], FORWARD, "the NAT's own mapping: {net}");
    let out = ok(ctl(&a, &["netcheck"]));
    assert!(
        out.contains(&format!(
            "endpoint        {FORWARD} (configured with --endpoint)"
        )),
        "{out}"
    );
    let out = ok(ctl(&a, &["info"]));
    assert!(
        out.contains(&format!(
            "endpoint     {FORWARD} (configured with --endpoint"
        )),
        "{out}"
    );

    // b reaches a directly at the forwarded endpoint.
    let direct = eventually(Duration::from_secs(20), || {
        ns_exec(&b.ns, &["ping", "-c", "3", "-i", "0.2", "-q", &a.address]);
        let peers: serde_json::Value =
            serde_json::from_slice(&ctl(&b, &["peers", "--json"]).stdout).ok()?;
        let peer = peers
            .as_array()?
            .iter()
            .find(|p| p["public_key"] == a.key.as_str())?;
        (peer["path"] == "direct" && peer["endpoint"] == FORWARD).then_some(())
    });
    assert!(
        direct.is_some(),
        "b never went direct to {FORWARD}: {}\n--- a\n{}\n--- b\n{}",
        String::from_utf8_lossy(&ctl(&b, &["peers"]).stdout),
        a.log_text(),
        b.log_text()
    );
    let out = ok(ctl(&b, &["ping", "-c", "2", &a.key]));
    assert!(out.contains("path=direct"), "{out}");

    ok(pilotctl(&a, &[], &["daemon", "stop", "--no-systemd"]));
    detached.forget_all();
}
