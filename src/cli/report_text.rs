//! `pilotctl status`, `info` and `netcheck`: the daemon's reports, for people (and as JSON).

use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use super::control_call::{call, parse, print_json};
use crate::api::{ClientError, InfoReply, Request, StatusReply};
use crate::clock::describe_offset;
use crate::wire::printable::printable;

/// A clock further off than this from the rendezvous' would have its messages refused.
const MAX_SKEW_MS: u64 = crate::wire::envelope::MAX_SKEW.as_millis() as u64;

pub(super) fn status(socket: &Path, json: bool) -> Result<ExitCode, ClientError> {
    let value = call(socket, &Request::Status {})?;
    if json {
        print_json(&value);
        return Ok(ExitCode::SUCCESS);
    }
    let status: StatusReply = parse(value)?;
    print!("{}", status_text(&status));
    Ok(ExitCode::SUCCESS)
}

/// `pilotctl status` for people: one line per concern, then what needs attention.
fn status_text(s: &StatusReply) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    let mut attention = Vec::new();
    let name = s.hostname.as_deref().unwrap_or("(no hostname)");
    let _ = writeln!(text, "pilotd {} up {}", s.version, duration(s.uptime_secs));
    let _ = writeln!(text, "node        {name}  {}  {}", s.node, s.address);
    let _ = writeln!(
        text,
        "interface   {}, UDP port {}",
        s.interface, s.listen_port
    );
    match &s.rendezvous {
        Some(rendezvous) => {
            let nat = s
                .nat
                .and_then(|n| serde_json::to_value(n).ok())
                .and_then(|v| v.as_str().map(str::to_owned));
            let registered = if s.registered {
                "registered"
            } else {
                attention.push(format!("not registered with the rendezvous {rendezvous}"));
                "NOT registered"
            };
            let _ = writeln!(
                text,
                "rendezvous  {rendezvous} ({registered}), endpoint {}{}, NAT {}",
                s.endpoint.as_deref().unwrap_or("-"),
                if s.endpoint_configured {
                    " (configured)"
                } else {
                    ""
                },
                nat.as_deref().unwrap_or("-")
            );
        }
        None => text.push_str("rendezvous  none (static peers only)\n"),
    }
    let p = s.peers;
    let _ = writeln!(
        text,
        "peers       {} direct, {} relay, {} without a path",
        p.direct, p.relay, p.none
    );
    if p.none > 0 {
        attention.push(format!(
            "{} peer(s) have no working path (see `pilotctl peers`)",
            p.none
        ));
    }
    if let (Some(rendezvous), Some(problem)) = (&s.rendezvous, &s.rendezvous_problem) {
        attention.push(format!("rendezvous {rendezvous}: {problem}"));
    }
    if let (Some(rendezvous), Some(tls)) = (&s.rendezvous, &s.rendezvous_stream) {
        attention.push(format!(
            "rendezvous {rendezvous}: UDP to it gets no answer, so it is reached over TLS at \
             {tls} and peers only through its relay (UDP is tried again every 30 s)"
        ));
    }
    if let (Some(rendezvous), Some(first)) = (&s.rendezvous, &s.rendezvous_preferred) {
        attention.push(format!(
            "rendezvous: using the standby {rendezvous}; the first, {first}, stopped answering \
             (asked every 30 s whether it is back)"
        ));
    }
    for peer in &s.unreachable {
        attention.push(format!("unreachable: {}", printable(peer)));
    }
    // Pilot works on with the rendezvous' time, but what else on this box keeps time
    // (certificates, logs, schedules) does not.
    if let Some(offset) = s.clock_offset_ms.filter(|o| o.unsigned_abs() > MAX_SKEW_MS) {
        attention.push(format!(
            "clock: this system's clock is {} the rendezvous' (Pilot signs with the \
             rendezvous' time; set the clock, or enable NTP)",
            describe_offset(offset)
        ));
    }
    let t = s.trust;
    let auto = if t.auto_approve {
        ", auto-approve ON"
    } else {
        ""
    };
    let _ = writeln!(
        text,
        "trust       {} trusted, {} configured, {} pending{auto}",
        t.trusted, t.configured, t.pending
    );
    if t.pending > 0 {
        attention.push(format!(
            "{} trust request(s) wait for approval (see `pilotctl pending`)",
            t.pending
        ));
    }
    let _ = writeln!(
        text,
        "traffic     {} WireGuard session(s) established, {} packets dropped (by reason: \
         `pilotctl info`)",
        s.handshakes, s.drops_total
    );
    if let Some(metrics) = &s.metrics {
        let _ = writeln!(text, "metrics     http://{metrics}/metrics");
    }
    if let Some(why) = &s.trust_save_error {
        attention.push(format!(
            "trust.json cannot be saved ({} failed attempts, retrying): {why}",
            s.trust_save_failures
        ));
    }
    if let Some(why) = &s.lan_guard_missing {
        attention.push(format!(
            "LAN guard not installed ({why}): a LAN neighbour can send this host packets with \
             overlay addresses"
        ));
    }
    if attention.is_empty() {
        text.push_str("health      ok\n");
    }
    for a in attention {
        let _ = writeln!(text, "attention   {a}");
    }
    text
}

/// `3d 4h`, `2h 05m`, `7m 12s`, `42s`.
fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s:02}s"),
        (0, _, _) => format!("{h}h {m:02}m"),
        _ => format!("{d}d {h}h"),
    }
}

pub(super) fn info(socket: &Path, json: bool) -> Result<ExitCode, ClientError> {
    let value = call(socket, &Request::Info {})?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value).expect("json"));
        return Ok(ExitCode::SUCCESS);
    }
    let info: InfoReply = parse(value)?;
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("address      {}", info.address);
    println!("node         {}", info.node);
    println!("public_key   {}", info.public_key);
    println!("hostname     {}", or_dash(&info.hostname));
    if info.mode == "userspace" {
        let socks5 = info.socks5.as_deref().unwrap_or("off");
        let expose = if info.expose.is_empty() {
            "none".to_owned()
        } else {
            info.expose.join(" ")
        };
        println!(
            "mode         userspace (mtu {}): SOCKS5 {socks5}, exposed {expose}",
            info.mtu
        );
    } else {
        println!("interface    {} (mtu {})", info.interface, info.mtu);
    }
    println!("listen_port  {}", info.listen_port);
    if info.endpoint_configured {
        println!(
            "endpoint     {} (configured with --endpoint; the rendezvous sees {})",
            or_dash(&info.endpoint),
            or_dash(&info.observed)
        );
    } else {
        println!("endpoint     {}", or_dash(&info.endpoint));
    }
    let nat = info
        .nat
        .and_then(|n| serde_json::to_value(n).ok())
        .and_then(|v| v.as_str().map(str::to_owned));
    println!("nat          {}", or_dash(&nat));
    println!("peers        {}", info.peers);
    println!(
        "trust        {} trusted, {} pending{}",
        info.trusted,
        info.pending,
        if info.auto_approve {
            ", auto-approve ON (every request is approved)"
        } else {
            ""
        }
    );
    let drops: Vec<String> = info
        .drops
        .iter()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    println!(
        "drops        {}",
        if drops.is_empty() {
            "none".into()
        } else {
            drops.join(" ")
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn netcheck(socket: &Path, json: bool) -> Result<ExitCode, ClientError> {
    let value = call(socket, &Request::Netcheck {})?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value).expect("json"));
        return Ok(ExitCode::SUCCESS);
    }
    let text = |key: &str| match &value[key] {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let router = format!(
        "router          {}",
        port_mapping_text(&value["port_mapping"])
    );
    if value["rendezvous"].is_null() {
        println!("no rendezvous configured (start pilotd with --rendezvous HOST:PORT)");
        println!("{router}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "rendezvous      {} (registered: {})",
        text("rendezvous"),
        text("registered")
    );
    if let Some(standby) = value["standby"].as_array().filter(|s| !s.is_empty()) {
        let standby: Vec<&str> = standby.iter().filter_map(Value::as_str).collect();
        println!(
            "standby         {} (used in this order if it stops answering)",
            standby.join(", ")
        );
    }
    if let Value::String(tls) = &value["stream"] {
        println!("over TLS        {tls}: UDP to the rendezvous gets no answer (tried every 30 s)");
    }
    if let Value::String(first) = &value["preferred"] {
        println!("first           {first} stopped answering; back to it once it answers");
    }
    if let Value::String(problem) = &value["problem"] {
        println!("problem         {problem}");
    }
    if let Some(offset) = value["clock_offset_ms"].as_i64() {
        let correction = value["clock_correction_ms"].as_i64().unwrap_or(0);
        let how = if correction == 0 {
            "signing with this system's time".to_owned()
        } else {
            format!(
                "signing with the rendezvous' time (corrected by {} ms)",
                correction
            )
        };
        let off = if offset.unsigned_abs() < 1_000 {
            "agrees with the rendezvous' (within 1 s)".to_owned()
        } else {
            format!("{} the rendezvous'", describe_offset(offset))
        };
        println!("clock           {off}; {how}");
    }
    if value["endpoint_configured"] == true {
        // Told, not discovered: what the rendezvous sees is shown for comparison.
        println!(
            "endpoint        {} (configured with --endpoint)",
            text("endpoint")
        );
        println!("observed        {}", text("observed"));
        println!(
            "nat             {} (not measured: the endpoint is configured)",
            text("nat")
        );
        println!("{router}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("endpoint        {}", text("endpoint"));
    println!("nat             {}", text("nat"));
    println!("port_preserved  {}", text("port_preserved"));
    println!(
        "mapped          main {} / alt {}",
        text("mapped_main"),
        text("mapped_alt")
    );
    println!("{router}");
    Ok(ExitCode::SUCCESS)
}

/// What the router offered for port mapping (netcheck's `router` line), from the daemon's
/// `port_mapping` report.
fn port_mapping_text(report: &Value) -> String {
    let field = |key: &str| report[key].as_str();
    let gateway = field("gateway").map_or_else(String::new, |g| format!(" (gateway {g})"));
    let protocol = match field("protocol") {
        Some("pcp") => "PCP",
        Some("nat-pmp") => "NAT-PMP",
        Some("upnp-igd") => "UPnP-IGD",
        _ => "?",
    };
    match field("state").unwrap_or("off") {
        "mapped" => format!(
            "{} mapped with {protocol}{gateway}, lifetime {} s, renewed at half",
            field("external").unwrap_or("?"),
            report["lifetime_secs"].as_u64().unwrap_or(0)
        ),
        "asking" => format!("asking for a port mapping with {protocol}{gateway}"),
        "no-answer" => {
            format!("no port mapping offered{gateway}: no answer to PCP, NAT-PMP or UPnP-IGD")
        }
        "refused" => format!(
            "no port mapping offered{gateway}: {protocol} refused it (result code {})",
            report["result_code"].as_u64().unwrap_or(0)
        ),
        "no-gateway" => "no port mapping offered: no IPv4 default gateway".to_owned(),
        _ => "port mapping off (port_mapping = false or --no-port-mapping)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netcheck_says_what_the_router_offered() {
        let report = |status: crate::portmap::PortMapStatus| {
            port_mapping_text(&serde_json::to_value(status).unwrap())
        };
        use crate::portmap::{MapState, PortMapStatus, Protocol};
        let mapped = PortMapStatus {
            state: MapState::Mapped,
            gateway: Some("198.51.100.1:5351".into()),
            protocol: Some(Protocol::Pcp),
            external: Some("203.0.113.1:40000".into()),
            lifetime_secs: Some(7200),
            result_code: None,
        };
        assert_eq!(
            report(mapped),
            "203.0.113.1:40000 mapped with PCP (gateway 198.51.100.1:5351), lifetime 7200 s, \
             renewed at half"
        );
        let silent = PortMapStatus {
            state: MapState::NoAnswer,
            gateway: Some("198.51.100.1:5351".into()),
            ..PortMapStatus::default()
        };
        assert_eq!(
            report(silent),
            "no port mapping offered (gateway 198.51.100.1:5351): no answer to PCP, NAT-PMP or \
             UPnP-IGD"
        );
        assert_eq!(
            report(PortMapStatus::off()),
            "port mapping off (port_mapping = false or --no-port-mapping)"
        );
        assert_eq!(
            port_mapping_text(&Value::Null),
            "port mapping off (port_mapping = false or --no-port-mapping)",
            "an older daemon says nothing"
        );
    }
    use crate::api::{PathCounts, TrustCounts};
    use crate::wire::control::NatKind;

    #[test]
    fn status_fits_one_screen_and_says_what_needs_attention() {
        let mut s = StatusReply {
            version: "0.1.0".into(),
            uptime_secs: 7_500,
            address: "fd70::a1b2:c3d4:e5f6".into(),
            node: "a1b2.c3d4.e5f6".into(),
            hostname: Some("alice".into()),
            interface: "pilot0".into(),
            listen_port: 51870,
            rendezvous: Some("203.0.113.10:7000".into()),
            registered: true,
            endpoint: Some("198.51.100.7:51870".into()),
            endpoint_configured: false,
            nat: Some(NatKind::EndpointIndependent),
            peers: PathCounts {
                direct: 2,
                relay: 1,
                none: 0,
            },
            trust: TrustCounts {
                trusted: 3,
                configured: 0,
                pending: 0,
                auto_approve: false,
            },
            drops_total: 12,
            handshakes: 5,
            metrics: Some("127.0.0.1:9187".into()),
            lan_guard_missing: None,
            trust_save_error: None,
            trust_save_failures: 0,
            unreachable: Vec::new(),
            rendezvous_problem: None,
            rendezvous_preferred: None,
            rendezvous_stream: None,
            clock_offset_ms: Some(-1_500),
        };
        assert_eq!(
            status_text(&s),
            "pilotd 0.1.0 up 2h 05m\n\
             node        alice  a1b2.c3d4.e5f6  fd70::a1b2:c3d4:e5f6\n\
             interface   pilot0, UDP port 51870\n\
             rendezvous  203.0.113.10:7000 (registered), endpoint 198.51.100.7:51870, NAT \
             endpoint_independent\n\
             peers       2 direct, 1 relay, 0 without a path\n\
             trust       3 trusted, 0 configured, 0 pending\n\
             traffic     5 WireGuard session(s) established, 12 packets dropped (by reason: \
             `pilotctl info`)\n\
             metrics     http://127.0.0.1:9187/metrics\n\
             health      ok\n"
        );
        s.registered = false;
        s.trust.pending = 2;
        s.peers.none = 1;
        s.lan_guard_missing = Some("nft is not installed".into());
        s.unreachable = vec!["bob (a1b2.c3d4.e5f6), last heard 41 s ago".into()];
        let text = status_text(&s);
        assert!(!text.contains("health      ok"), "{text}");
        for line in [
            "attention   not registered with the rendezvous 203.0.113.10:7000",
            "attention   2 trust request(s) wait for approval (see `pilotctl pending`)",
            "attention   1 peer(s) have no working path (see `pilotctl peers`)",
            "attention   unreachable: bob (a1b2.c3d4.e5f6), last heard 41 s ago",
            "attention   LAN guard not installed (nft is not installed): a LAN neighbour can \
             send this host packets with overlay addresses",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        assert!(text.lines().count() <= 24, "one screen");
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(432), "7m 12s");
        assert_eq!(duration(7_500), "2h 05m");
        assert_eq!(duration(3 * 86_400 + 4 * 3600 + 59), "3d 4h");
    }
}
