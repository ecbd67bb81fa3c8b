//! Running the system's network tools (iproute2, nftables, sysctl) with clear errors, and
//! reading what is in a namespace.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// Runs a program to completion; its stdout on success, an error naming the command and its
/// stderr on failure.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = output(program, args)?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a program to completion, whatever its exit status.
pub fn output(program: &str, args: &[&str]) -> Result<Output> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run {program} ({})", package_hint(program)))
}

/// `ip -n NS ARGS…`.
pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// `ip netns exec NS PROGRAM ARGS…`.
pub fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Sets sysctls inside a namespace (`-e`: keys this kernel lacks are not an error).
pub fn sysctls(ns: &str, settings: &[String]) -> Result<()> {
    let mut args = vec!["-qew"];
    args.extend(settings.iter().map(String::as_str));
    in_ns(ns, "sysctl", &args).map(drop)
}

pub fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// The interfaces of a namespace other than lo.
pub fn links(ns: &str) -> Result<Vec<String>> {
    let text = ip(ns, &["-o", "link", "show"])?;
    Ok(text
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .filter(|name| name != "lo")
        .collect())
}

/// The processes running inside a namespace.
pub fn netns_pids(ns: &str) -> Vec<i32> {
    output("ip", &["netns", "pids", ns])
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a program is on PATH.
pub fn command_exists(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
        .unwrap_or(false)
}

/// Fails naming the Debian packages of the programs that are missing.
pub fn need(programs: &[&str]) -> Result<()> {
    let missing: Vec<_> = programs
        .iter()
        .filter(|p| !command_exists(p))
        .map(|p| format!("{p} (apt-get install {})", package_hint(p)))
        .collect();
    if !missing.is_empty() {
        bail!("missing commands: {}", missing.join(", "));
    }
    Ok(())
}

fn package_hint(program: &str) -> &str {
    match program {
        "ip" => "iproute2",
        "nft" => "nftables",
        "ping" => "iputils-ping",
        "sysctl" => "procps",
        other => other,
    }
}
