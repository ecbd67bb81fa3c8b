//! How `pilotd up` and `pilotd rendezvous` merge flags, config file and defaults.

use std::path::Path;

use clap::{Arg, CommandFactory, FromArgMatches};

use super::*;
use crate::cli::config::{keys, parse};
use crate::cli::rendezvous;
use crate::identity::NodeKey;

/// `pilotd ARGS`, blind to `PILOT_*` variables so the test sees only what it gives.
fn cli(args: &[&str]) -> Cli {
    let no_env = |a: Arg| a.env(None);
    let command = Cli::command()
        .mut_arg("log_level", no_env)
        .mut_subcommand("up", |c| {
            c.mut_arg("state_dir", no_env).mut_arg("control", no_env)
        })
        .mut_subcommand("rendezvous", |c| c.mut_arg("data_dir", no_env));
    let matches = command
        .try_get_matches_from(std::iter::once("pilotd").chain(args.iter().copied()))
        .unwrap();
    Cli::from_arg_matches(&matches).unwrap()
}

fn up_args(args: &[&str]) -> UpArgs {
    match cli(&[&["up"], args].concat()).command {
        Command::Up(args) => *args,
        _ => unreachable!(),
    }
}

fn up_file(text: &str) -> UpFile {
    parse(Path::new("pilotd.toml"), text).unwrap()
}

fn key(seed: u8) -> NodeKey {
    identity::Identity::from_secret_bytes(&[seed; 32]).public_key()
}

/// Every flag can be set in the file too, so the two cannot drift apart; and every key but
/// `metrics` (whose flag comes with the metrics endpoint) is a flag.
#[test]
fn every_flag_has_a_config_key() {
    let mut command = Cli::command();
    command.build();
    for (name, keys) in [
        ("up", keys::<UpFile>()),
        ("rendezvous", keys::<RendezvousFile>()),
    ] {
        let sub = command.find_subcommand(name).unwrap();
        let flags: Vec<&str> = (sub.get_arguments())
            .map(|a| a.get_id().as_str())
            // `--public` is the seed's flag, meaningless without --endpoint: no key.
            .filter(|id| !["help", "version", "config", "public"].contains(id))
            .collect();
        assert!(flags.contains(&"log_level"), "{flags:?}");
        for flag in &flags {
            assert!(
                keys.contains(flag),
                "`pilotd {name}` flag {flag} has no config key"
            );
        }
        for key in keys.iter().filter(|&&k| k != "metrics") {
            assert!(
                flags.contains(key),
                "config key {key} is no `pilotd {name}` flag"
            );
        }
    }
}

#[test]
fn flags_override_the_file_which_overrides_the_defaults() {
    let (k1, k2, k3) = (key(1), key(2), key(3));
    let file = format!(
        r#"state_dir = "/srv/pilot"
interface = "pilot7"
mtu = 1400
listen_port = 4000
peers = ["{k1}@192.0.2.7:51870", "{k2}@192.0.2.8:51870"]
rendezvous = "{k1}@203.0.113.10:7000"
rendezvous_alt_port = 7100
hostname = "alice"
auto_approve = true
hosts_file = "/etc/hosts"
keepalive = 10
control = "/run/p.sock"
metrics = "127.0.0.1:9100"
"#
    );

    // The file alone.
    let o = up_options(up_args(&[]), up_file(&file)).unwrap();
    assert_eq!(o.state_dir, Path::new("/srv/pilot"));
    assert_eq!(
        (o.interface.as_str(), o.mtu, o.listen_port),
        ("pilot7", 1400, 4000)
    );
    assert_eq!(o.peers.iter().map(|p| p.key).collect::<Vec<_>>(), [k1, k2]);
    let r = o.rendezvous.unwrap();
    assert_eq!((r.key, r.addr.port(), r.alt_port), (Some(k1), 7000, 7100));
    assert_eq!(o.hostname.unwrap().as_str(), "alice");
    assert!(o.auto_approve);
    assert_eq!(o.hosts_file.as_deref(), Some(Path::new("/etc/hosts")));
    assert_eq!(
        (o.keepalive, o.control.as_path()),
        (10, Path::new("/run/p.sock"))
    );
    assert_eq!(o.metrics, Some("127.0.0.1:9100".parse().unwrap()));

    // Every flag given: the file counts for nothing but what has no flag.
    let peer = format!("{k3}@192.0.2.9:1");
    let rdv = format!("{k2}@198.51.100.1:8000");
    let args = up_args(&[
        "--state-dir",
        "/var/x",
        "--interface",
        "pilot9",
        "--mtu",
        "1300",
        "--listen-port",
        "0",
        "--peer",
        &peer,
        "--rendezvous",
        &rdv,
        "--rendezvous-alt-port",
        "9000",
        "--hostname",
        "bob",
        "--hosts-file",
        "/tmp/hosts",
        "--keepalive",
        "0",
        "--control",
        "/tmp/c.sock",
    ]);
    let o = up_options(args, up_file(&file)).unwrap();
    assert_eq!(o.state_dir, Path::new("/var/x"));
    assert_eq!(
        (o.interface.as_str(), o.mtu, o.listen_port),
        ("pilot9", 1300, 0)
    );
    assert_eq!(o.peers.iter().map(|p| p.key).collect::<Vec<_>>(), [k3]);
    let r = o.rendezvous.unwrap();
    assert_eq!((r.key, r.addr.port(), r.alt_port), (Some(k2), 8000, 9000));
    assert_eq!(o.hostname.unwrap().as_str(), "bob");
    assert_eq!(o.hosts_file.as_deref(), Some(Path::new("/tmp/hosts")));
    assert_eq!(
        (o.keepalive, o.control.as_path()),
        (0, Path::new("/tmp/c.sock"))
    );

    // No file: the defaults; nothing is joined.
    let o = up_options(up_args(&[]), UpFile::default()).unwrap();
    assert_eq!(o.state_dir, identity::default_state_dir());
    assert_eq!(
        (o.interface.as_str(), o.mtu),
        (DEFAULT_INTERFACE, DEFAULT_MTU)
    );
    assert_eq!((o.listen_port, o.keepalive), (DEFAULT_LISTEN_PORT, 25));
    assert!(o.peers.is_empty() && o.rendezvous.is_none() && o.hostname.is_none());
    assert!(!o.auto_approve && o.hosts_file.is_none() && o.metrics.is_none());
    assert_eq!(o.control, crate::api::default_socket_path());
}

#[test]
fn port_mapping_is_on_unless_the_flag_or_the_file_turns_it_off() {
    assert!(
        up_options(up_args(&[]), UpFile::default())
            .unwrap()
            .port_mapping
    );
    let off = up_options(up_args(&["--no-port-mapping"]), UpFile::default()).unwrap();
    assert!(!off.port_mapping);
    let file_off = up_options(up_args(&[]), up_file("port_mapping = false\n")).unwrap();
    assert!(!file_off.port_mapping);
    let file_on = up_file("port_mapping = true\n");
    assert!(up_options(up_args(&[]), file_on).unwrap().port_mapping);
    let both = up_options(
        up_args(&["--no-port-mapping"]),
        up_file("port_mapping = true\n"),
    );
    assert!(!both.unwrap().port_mapping, "the flag wins");
}

#[test]
fn a_hostname_needs_a_rendezvous_from_either_source() {
    let rdv = "rendezvous = \"203.0.113.10:7000\"";
    let o = up_options(up_args(&["--hostname", "bob"]), up_file(rdv)).unwrap();
    let r = o.rendezvous.unwrap();
    assert_eq!((o.hostname.unwrap().as_str(), r.alt_port), ("bob", 7001));
    let o = up_options(
        up_args(&["--rendezvous", "203.0.113.10:7000"]),
        up_file("hostname = \"bob\"\nrendezvous_alt_port = 7010"),
    )
    .unwrap();
    assert_eq!(o.rendezvous.unwrap().alt_port, 7010);
    // TLS: port 443 of the rendezvous' host unless told otherwise; 0 never.
    assert_eq!(
        up_options(up_args(&["--rendezvous", "203.0.113.10:7000"]), up_file(""))
            .unwrap()
            .rendezvous
            .unwrap()
            .stream,
        Some("203.0.113.10:443".parse().unwrap())
    );
    for (args, file, want) in [
        (
            &["--rendezvous-tls-port", "8443"][..],
            "",
            Some("203.0.113.10:8443"),
        ),
        (&[][..], "rendezvous_tls_port = 0", None),
        (
            &["--rendezvous-tls-port", "0"][..],
            "rendezvous_tls_port = 8443",
            None,
        ),
    ] {
        let mut args = args.to_vec();
        args.extend(["--rendezvous", "203.0.113.10:7000"]);
        let o = up_options(up_args(&args), up_file(file)).unwrap();
        let want = want.map(|w| w.parse().unwrap());
        assert_eq!(o.rendezvous.unwrap().stream, want, "{args:?} {file}");
    }
    for (args, file) in [
        (&["--hostname", "bob"][..], ""),
        (&[], "hostname = \"bob\""),
        (&["--rendezvous-alt-port", "7001"], ""),
    ] {
        let err = up_options(up_args(args), up_file(file)).unwrap_err();
        assert!(err.to_string().contains("needs a rendezvous"), "{err}");
    }
}

#[test]
fn registry_is_the_seeds_word_for_rendezvous() {
    let o = up_options(
        up_args(&["--registry", "203.0.113.10:7000"]),
        UpFile::default(),
    )
    .unwrap();
    assert_eq!(
        o.rendezvous.unwrap().addr,
        "203.0.113.10:7000".parse().unwrap()
    );
}

#[test]
fn an_endpoint_comes_from_flag_or_file_needs_a_rendezvous_and_public_needs_it() {
    let rdv = ["--rendezvous", "203.0.113.10:7000"];
    let o = up_options(
        up_args(&[&rdv[..], &["--endpoint", "198.51.100.7:40000", "--public"]].concat()),
        UpFile::default(),
    )
    .unwrap();
    assert_eq!(o.endpoint, Some("198.51.100.7:40000".parse().unwrap()));
    let o = up_options(
        up_args(&[&rdv[..], &["--public"]].concat()),
        up_file("endpoint = \"[2001:db8::7]:51870\""),
    )
    .unwrap();
    assert_eq!(o.endpoint, Some("[2001:db8::7]:51870".parse().unwrap()));
    assert_eq!(
        up_options(up_args(&rdv), UpFile::default())
            .unwrap()
            .endpoint,
        None
    );

    let err = up_options(
        up_args(&[&rdv[..], &["--public"]].concat()),
        UpFile::default(),
    );
    let err = err.unwrap_err().to_string();
    assert!(err.contains("`--endpoint IP:PORT --public`"), "{err}");
    assert!(err.contains("--auto-approve"), "{err}");
    let err = up_options(
        up_args(&["--endpoint", "198.51.100.7:1"]),
        UpFile::default(),
    );
    let err = err.unwrap_err().to_string();
    assert!(err.contains("give --rendezvous"), "{err}");
    for bad in ["0.0.0.0:51870", "198.51.100.7:0", "[ff02::1]:1", "host:1"] {
        assert!(parse_endpoint(bad).is_err(), "{bad}");
    }
}

#[test]
fn userspace_mode_settings_come_from_flags_or_file_and_need_the_mode() {
    let o = up_options(up_args(&["--userspace"]), UpFile::default()).unwrap();
    let u = o.userspace.unwrap();
    assert_eq!(u.socks5, Some(DEFAULT_SOCKS5.parse().unwrap()));
    assert!(u.expose.is_empty());
    let o = up_options(
        up_args(&["--socks5", "off", "--expose", "80:8080"]),
        up_file("userspace = true\nsocks5 = \"127.0.0.1:1090\"\nexpose = [\"22\"]"),
    )
    .unwrap();
    let u = o.userspace.unwrap();
    assert_eq!(u.socks5, None, "the flag wins over the file");
    assert_eq!(u.expose, vec!["80:8080".parse().unwrap()]);
    let o = up_options(up_args(&[]), up_file("userspace = true\nexpose = [\"22\"]")).unwrap();
    assert_eq!(o.userspace.unwrap().expose, vec!["22".parse().unwrap()]);
    assert!(up_options(up_args(&[]), UpFile::default())
        .unwrap()
        .userspace
        .is_none());
    for (args, file) in [
        (&["--socks5", "127.0.0.1:1090"][..], ""),
        (&["--expose", "8080"], ""),
        (&[], "expose = [\"8080\"]"),
    ] {
        let err = up_options(up_args(args), up_file(file)).unwrap_err();
        assert!(
            err.to_string().contains("are for --userspace mode"),
            "{err}"
        );
    }
    let bad = Cli::command().try_get_matches_from(["pilotd", "up", "--expose", "http"]);
    assert!(bad
        .unwrap_err()
        .to_string()
        .contains("PORT or PORT:LOCALPORT"));
    let bad = parse::<UpFile>(Path::new("p.toml"), "socks5 = \"nowhere\"").unwrap_err();
    assert!(
        format!("{bad:#}").contains("IP:PORT (IPv6 in brackets) or off"),
        "{bad:#}"
    );
}

#[test]
fn an_mtu_flag_is_checked_as_before() {
    let err = up_options(up_args(&["--mtu", "1000"]), UpFile::default()).unwrap_err();
    assert!(
        err.to_string().contains("--mtu 1000 is out of range"),
        "{err}"
    );
}

#[test]
fn rendezvous_flags_override_its_file() {
    let rendezvous_args = |args: &[&str]| match cli(&[&["rendezvous"], args].concat()).command {
        Command::Rendezvous(c) => c.serve,
        _ => unreachable!(),
    };
    let file = || -> RendezvousFile {
        let text = "listen = \"192.0.2.1:7000\"\nkeepalive = 20\nrelay_rate = 0\n\
                    data_dir = \"/srv/rdv\"\nmetrics = \"127.0.0.1:9101\"\nname_ttl = \"7d\"";
        parse(Path::new("rendezvous.toml"), text).unwrap()
    };
    let o = rendezvous::options(rendezvous_args(&[]), file()).unwrap();
    assert_eq!((o.listen.port(), o.alt_port), (7000, 7001));
    assert_eq!((o.keepalive.as_secs(), o.expiry.as_secs()), (20, 65));
    assert_eq!((o.relay_bytes_per_sec, o.stats_interval.as_secs()), (0, 60));
    assert_eq!(o.data_dir, Path::new("/srv/rdv"));
    assert_eq!(o.metrics, Some("127.0.0.1:9101".parse().unwrap()));
    assert_eq!(o.name_ttl.as_secs(), 7 * 86400);

    let args = rendezvous_args(&[
        "--listen",
        "[::]:0",
        "--keepalive",
        "30",
        "--data-dir",
        "/d",
        "--name-ttl",
        "2h",
    ]);
    let o = rendezvous::options(args, file()).unwrap();
    assert_eq!(o.name_ttl.as_secs(), 7200);
    assert_eq!((o.listen, o.alt_port), ("[::]:0".parse().unwrap(), 0));
    assert_eq!((o.keepalive.as_secs(), o.expiry.as_secs()), (30, 95));
    assert_eq!(
        (o.relay_bytes_per_sec, o.data_dir.as_path()),
        (0, Path::new("/d"))
    );

    let err = rendezvous::options(rendezvous_args(&[]), RendezvousFile::default()).unwrap_err();
    assert!(err.to_string().contains("give --listen"), "{err}");
}

#[test]
fn rendezvous_free_name_parses_under_pilotd() {
    let Command::Rendezvous(c) =
        cli(&["rendezvous", "free-name", "edge-7", "--data-dir", "/d"]).command
    else {
        unreachable!()
    };
    let Some(crate::cli::rendezvous::RendezvousAction::FreeName(args)) = c.action else {
        panic!("not free-name")
    };
    assert_eq!(args.name.as_str(), "edge-7");
    assert_eq!(args.data_dir(&RendezvousFile::default()), Path::new("/d"));
}

#[test]
fn several_rendezvous_come_from_the_flag_or_the_file_in_order_each_pinned() {
    let k1 = "1111111111111111111111111111111111111111111111111111111111111111";
    let k2 = "2222222222222222222222222222222222222222222222222222222222222222";
    let (a, b) = (
        format!("{k1}@203.0.113.10:7000"),
        format!("{k2}@203.0.113.20:7000"),
    );
    let o = up_options(
        up_args(&["--rendezvous", &a, "--rendezvous", &b]),
        UpFile::default(),
    )
    .unwrap();
    let first = o.rendezvous.unwrap();
    assert_eq!(first.addr.to_string(), "203.0.113.10:7000");
    assert_eq!(o.standby_rendezvous.len(), 1);
    assert_eq!(
        o.standby_rendezvous[0].addr.to_string(),
        "203.0.113.20:7000"
    );
    assert_eq!(o.standby_rendezvous[0].alt_port, 7001);

    let file = up_file(&format!("rendezvous = [\"{a}\", \"{b}\"]\n"));
    let o = up_options(up_args(&[]), file).unwrap();
    assert_eq!(o.rendezvous.unwrap().addr.to_string(), "203.0.113.10:7000");
    assert_eq!(o.standby_rendezvous.len(), 1);
    // The flag wins over the file, as for every setting.
    let file = up_file(&format!("rendezvous = [\"{a}\", \"{b}\"]\n"));
    let o = up_options(up_args(&["--rendezvous", &b]), file).unwrap();
    assert_eq!(o.rendezvous.unwrap().addr.to_string(), "203.0.113.20:7000");
    assert!(o.standby_rendezvous.is_empty());

    let refused = [
        (
            vec!["--rendezvous", &a, "--rendezvous", "203.0.113.20:7000"],
            "has no key",
        ),
        (vec!["--rendezvous", &a, "--rendezvous", &a], "given twice"),
        (
            vec![
                "--rendezvous",
                &a,
                "--rendezvous",
                &b,
                "--rendezvous-alt-port",
                "9",
            ],
            "for a single rendezvous",
        ),
    ];
    for (args, why) in refused {
        let err = up_options(up_args(&args), UpFile::default()).unwrap_err();
        assert!(err.to_string().contains(why), "{args:?}: {err}");
    }
}
