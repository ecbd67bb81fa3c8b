use super::*;
use crate::identity::{Identity, NodeKey};

const PILOTD_TOML: &str = include_str!("../../packaging/pilotd.toml");
const RENDEZVOUS_TOML: &str = include_str!("../../packaging/rendezvous.toml");

fn key(seed: u8) -> NodeKey {
    Identity::from_secret_bytes(&[seed; 32]).public_key()
}

fn up(text: &str) -> Result<UpFile, String> {
    parse(Path::new("/etc/pilot/pilotd.toml"), text).map_err(|e| e.to_string())
}

fn rdv(text: &str) -> Result<RendezvousFile, String> {
    parse(Path::new("/etc/pilot/rendezvous.toml"), text).map_err(|e| e.to_string())
}

/// Every key of `keys` is set on a line of its own in `text`.
fn sets_every_key(text: &str, keys: &[&str]) {
    for key in keys {
        let set = text.lines().any(|l| l.starts_with(&format!("{key} = ")));
        assert!(set, "`{key}` is not set in\n{text}");
    }
}

#[test]
fn a_file_with_every_up_key_sets_every_setting() {
    let (k1, k2) = (key(1), key(2));
    let text = format!(
        r#"# a comment
state_dir = "/srv/pilot"
interface = "pilot7"
mtu = 1400
listen_port = 4000
peers = [
    "{k1}@192.0.2.7:51870",
    "{k2}@[2001:db8::1]:9",
]
rendezvous = "{k1}@203.0.113.10:7000"
rendezvous_alt_port = 7100
rendezvous_tls_port = 8443
shared_registry = true
hostname = "alice"
endpoint = "198.51.100.7:40000"
auto_approve = true
port_mapping = false
hosts_file = "/etc/hosts"
keepalive = 10
control = "/run/p.sock"
log_level = "pilot=debug"
metrics = "127.0.0.1:9100"
userspace = true
socks5 = "127.0.0.1:1081"
expose = ["8080", "80:8081"]
"#
    );
    sets_every_key(&text, keys::<UpFile>());
    let file = up(&text).unwrap();
    let expected = UpFile {
        state_dir: Some("/srv/pilot".into()),
        interface: Some("pilot7".into()),
        mtu: Some(1400),
        listen_port: Some(4000),
        peers: Some(vec![
            PeerConfig {
                key: k1,
                endpoint: Some("192.0.2.7:51870".parse().unwrap()),
            },
            PeerConfig {
                key: k2,
                endpoint: Some("[2001:db8::1]:9".parse().unwrap()),
            },
        ]),
        rendezvous: Some(vec![RendezvousConfig {
            addr: "203.0.113.10:7000".parse().unwrap(),
            alt_port: 7001,
            key: Some(k1),
            stream: Some("203.0.113.10:443".parse().unwrap()),
        }]),
        rendezvous_alt_port: Some(7100),
        rendezvous_tls_port: Some(8443),
        shared_registry: Some(true),
        hostname: Some("alice".parse().unwrap()),
        endpoint: Some("198.51.100.7:40000".parse().unwrap()),
        auto_approve: Some(true),
        port_mapping: Some(false),
        hosts_file: Some("/etc/hosts".into()),
        keepalive: Some(10),
        control: Some("/run/p.sock".into()),
        log_level: Some("pilot=debug".into()),
        metrics: Some("127.0.0.1:9100".parse().unwrap()),
        userspace: Some(true),
        socks5: Some(crate::cli::values::Socks5Addr(Some(
            "127.0.0.1:1081".parse().unwrap(),
        ))),
        expose: Some(vec!["8080".parse().unwrap(), "80:8081".parse().unwrap()]),
    };
    assert_eq!(file, expected);
}

#[test]
fn a_file_with_every_rendezvous_key_sets_every_setting() {
    let text = r#"listen = "[::]:7000"
alt_port = 7100
data_dir = "/srv/rdv"
keepalive = 20
expiry = 70
name_ttl = "30d"
relay_rate = 0
stats_interval = 5
log_level = "warn"
metrics = "[::1]:9101"
tcp_listen = "[::]:443"
store = "postgres://pilot@db/pilot"
store_password_file = "/etc/pilot/db.password"
"#;
    sets_every_key(text, keys::<RendezvousFile>());
    let expected = RendezvousFile {
        listen: Some("[::]:7000".parse().unwrap()),
        alt_port: Some(7100),
        data_dir: Some("/srv/rdv".into()),
        keepalive: Some(20),
        expiry: Some(70),
        name_ttl: Some(std::time::Duration::from_secs(30 * 24 * 3600)),
        relay_rate: Some(0),
        stats_interval: Some(5),
        log_level: Some("warn".into()),
        metrics: Some("[::1]:9101".parse().unwrap()),
        tcp_listen: Some("[::]:443".parse().unwrap()),
        store: Some("postgres://pilot@db/pilot".into()),
        store_password_file: Some("/etc/pilot/db.password".into()),
    };
    assert_eq!(rdv(text).unwrap(), expected);
}

#[test]
fn empty_and_missing_files() {
    assert_eq!(up("").unwrap(), UpFile::default());
    assert_eq!(up("\n# nothing here\n\n").unwrap(), UpFile::default());
    assert_eq!(rdv("").unwrap(), RendezvousFile::default());
    assert_eq!(load::<UpFile>(None).unwrap(), UpFile::default());
    let err = load::<UpFile>(Some(Path::new("/nonexistent/pilotd.toml"))).unwrap_err();
    assert!(
        err.to_string().starts_with("/nonexistent/pilotd.toml: "),
        "{err}"
    );
}

#[test]
fn an_unknown_key_names_its_place_and_every_known_key() {
    let err = up("hostname = \"alice\"\n\n\n\n\n\nrendevous = \"192.0.2.1:7000\"\n").unwrap_err();
    assert_eq!(
        err,
        "/etc/pilot/pilotd.toml:7:1: unknown key `rendevous`; expected one of: state_dir, \
         interface, mtu, listen_port, peers, rendezvous, rendezvous_alt_port, \
         rendezvous_tls_port, shared_registry, hostname, \
         endpoint, auto_approve, port_mapping, hosts_file, keepalive, control, log_level, metrics, userspace, socks5, \
         expose"
    );
    // The seed's name for the rendezvous is told apart.
    let err = up("registry = \"192.0.2.1:7000\"\n").unwrap_err();
    assert_eq!(
        err,
        "/etc/pilot/pilotd.toml:1:1: unknown key `registry`: it is called `rendezvous` here \
         (rendezvous = \"[KEY@]HOST:PORT\")"
    );
    // A table is a key too: the file is flat.
    let err = up("[up]\nmtu = 1400\n").unwrap_err();
    assert!(
        err.starts_with("/etc/pilot/pilotd.toml:1:2: unknown key `up`;"),
        "{err}"
    );
    let err = rdv("listen = \"0.0.0.0:7000\"\nlisten_port = 1\n").unwrap_err();
    assert!(
        err.starts_with("/etc/pilot/rendezvous.toml:2:1: unknown key `listen_port`; expected one of: listen, alt_port,"),
        "{err}"
    );
}

#[test]
fn bad_values_name_line_column_key_and_expectation() {
    let k = key(1);
    let cases = [
        (
            "\n\nmtu = \"big\"".to_owned(),
            "3:7: mtu: expected an integer 1280..65455, found \"big\"",
        ),
        (
            "mtu = 1000".into(),
            "1:7: mtu: expected an integer 1280..65455, found 1000",
        ),
        (
            "mtu = 1400.0".into(),
            "1:7: mtu: expected an integer 1280..65455, found 1400.0",
        ),
        (
            "listen_port = 70000".into(),
            "1:15: listen_port: expected a port 0..65535, found 70000",
        ),
        (
            "keepalive = -1".into(),
            "1:13: keepalive: expected seconds 0..65535, found -1",
        ),
        (
            "auto_approve = \"yes\"".into(),
            "1:16: auto_approve: expected true or false, found \"yes\"",
        ),
        (
            "state_dir = \"\"".into(),
            "1:13: state_dir: expected a path, found an empty string",
        ),
        (
            "interface = 0".into(),
            "1:13: interface: expected a string, found 0",
        ),
        (
            format!("peers = \"{k}@192.0.2.1:1\""),
            "1:9: peers: expected an array of \"KEY@HOST:PORT\" strings, found \"",
        ),
        (
            "peers = [\n  \"192.0.2.1:1\",\n]".into(),
            "1:9: peers: `192.0.2.1:1`: expected KEY@HOST:PORT",
        ),
        (
            "peers = [\"nothex@192.0.2.1:1\"]".into(),
            "1:9: peers: `nothex` is not a public key",
        ),
        (
            format!("peers = [\"{k}@192.0.2.1\"]"),
            "1:9: peers: `192.0.2.1`: expected HOST:PORT",
        ),
        (
            "rendezvous = \"nothex@192.0.2.1:7000\"".into(),
            "1:14: rendezvous: `nothex` is not a public key",
        ),
        (
            "rendezvous = \"192.0.2.1:65535\"".into(),
            "1:14: rendezvous: `192.0.2.1:65535`: port 65535 leaves no room",
        ),
        (
            "rendezvous = 7000".into(),
            "1:14: rendezvous: expected \"[KEY@]HOST:PORT\" or an array of \"KEY@HOST:PORT\" strings, found 7000",
        ),
        (
            "hostname = \"Bob\"".into(),
            "1:12: hostname: `Bob` is not a valid hostname: use 1-63 lowercase letters",
        ),
        (
            "log_level = \"pilot=lots\"".into(),
            "1:13: log_level: `pilot=lots` is not a log filter",
        ),
        (
            "metrics = \"localhost\"".into(),
            "1:11: metrics: `localhost`: expected IP:PORT",
        ),
        ("mtu = 1400\nmtu = 1500".into(), "2:1: duplicate key"),
        // Not TOML at all: the parser's own message, still with the place.
        (
            "mtu = \nkeepalive = 1".into(),
            "1:7: string values must be quoted",
        ),
    ];
    for (text, expected) in cases {
        let err = up(&text).unwrap_err();
        let expected = format!("/etc/pilot/pilotd.toml:{expected}");
        assert!(
            err.starts_with(&expected),
            "{text}:\n{err}\nexpected {expected}"
        );
    }
}

#[test]
fn bad_rendezvous_values_name_line_column_key_and_expectation() {
    let cases = [
        (
            "listen = \"0.0.0.0\"",
            "1:10: listen: `0.0.0.0`: expected IP:PORT",
        ),
        (
            "keepalive = 0",
            "1:13: keepalive: expected seconds 1..65535, found 0",
        ),
        (
            "stats_interval = 0",
            "1:18: stats_interval: expected seconds 1..4294967295, found 0",
        ),
        (
            "relay_rate = 9223372036854775807",
            "1:14: relay_rate: expected a rate in Mbit/s",
        ),
        (
            "expiry = true",
            "1:10: expiry: expected seconds 0..4294967295, found true",
        ),
        (
            "name_ttl = 30",
            "1:12: name_ttl: expected a duration such as \"30d\" (a string), found 30",
        ),
        (
            "name_ttl = \"a month\"",
            "1:12: name_ttl: `a month`: expected a duration such as 30d",
        ),
    ];
    for (text, expected) in cases {
        let err = rdv(text).unwrap_err();
        let expected = format!("/etc/pilot/rendezvous.toml:{expected}");
        assert!(
            err.starts_with(&expected),
            "{text}:\n{err}\nexpected {expected}"
        );
    }
}

#[test]
fn columns_count_characters_and_lines_count_from_one() {
    assert_eq!(position("", 0), (1, 1));
    assert_eq!(position("aé\nxyz", 4), (2, 1));
    assert_eq!(position("aé = 1", 4), (1, 4));
    assert_eq!(position("ab", 99), (1, 3));
}

/// The files a package installs set nothing, and show every key with a value that parses.
#[test]
fn shipped_files_are_all_defaults_and_show_every_key() {
    assert_eq!(up(PILOTD_TOML).unwrap(), UpFile::default());
    assert_eq!(rdv(RENDEZVOUS_TOML).unwrap(), RendezvousFile::default());
    let uncomment = |text: &str| -> String {
        let lines = text.lines().filter_map(|l| l.strip_prefix("# "));
        let settings = lines.filter(|l| {
            let key = l.split_once(" = ").map_or("", |(key, _)| key);
            !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        });
        settings.map(|l| format!("{l}\n")).collect()
    };
    let up_all = uncomment(PILOTD_TOML);
    sets_every_key(&up_all, keys::<UpFile>());
    up(&up_all).unwrap();
    let rdv_all = uncomment(RENDEZVOUS_TOML);
    sets_every_key(&rdv_all, keys::<RendezvousFile>());
    rdv(&rdv_all).unwrap();
}
