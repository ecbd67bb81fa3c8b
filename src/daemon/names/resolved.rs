//! Per-link DNS with systemd-resolved: the stub becomes the DNS server of the Pilot interface
//! for `~pilot` only. Run at start and stop, never per packet.

use std::ffi::{OsStr, OsString};
use std::net::Ipv6Addr;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

use crate::addr::NAME_ZONE;

const RESOLVECTL: &str = "resolvectl";
const RUN_DIR: &str = "/run/systemd/resolve";

/// Whether systemd-resolved manages this host's DNS: its varlink socket exists, or its
/// generated `resolv.conf` does and `resolvectl` is at hand to talk to it.
pub fn resolved_running() -> bool {
    running_in(Path::new(RUN_DIR), std::env::var_os("PATH").as_deref())
}

/// Makes `dns` the DNS server of `interface` for names under `pilot.` and nothing else. In the
/// order systemd's VPN guide gives: routing domain and `default-route` first, server last, so
/// resolved never briefly sends other lookups to the stub.
pub fn register_with_resolved(interface: &str, dns: Ipv6Addr) -> anyhow::Result<()> {
    register(OsStr::new(RESOLVECTL), interface, dns)
}

/// Drops the interface's DNS settings on a clean stop. Failure is only logged: the settings
/// go away with the interface anyway.
pub fn revert_resolved(interface: &str) {
    revert(OsStr::new(RESOLVECTL), interface);
}

fn running_in(run_dir: &Path, path_var: Option<&OsStr>) -> bool {
    run_dir.join("io.systemd.Resolve").exists()
        || (run_dir.join("resolv.conf").exists() && on_path(RESOLVECTL, path_var))
}

fn on_path(program: &str, path_var: Option<&OsStr>) -> bool {
    path_var.is_some_and(|dirs| std::env::split_paths(dirs).any(|d| d.join(program).is_file()))
}

fn register(program: &OsStr, interface: &str, dns: Ipv6Addr) -> anyhow::Result<()> {
    let domain = format!("~{NAME_ZONE}");
    run(program, &["domain", interface, &domain])?;
    run(program, &["default-route", interface, "false"])?;
    run(program, &["dns", interface, &dns.to_string()])?;
    Ok(())
}

fn revert(program: &OsStr, interface: &str) {
    if let Err(e) = run(program, &["revert", interface]) {
        tracing::warn!("{e:#}");
    }
}

/// Runs `program args…`; a failure carries the command line and what it printed on stderr.
fn run(program: &OsStr, args: &[&str]) -> anyhow::Result<()> {
    let line = || {
        let mut line = OsString::from(program);
        for arg in args {
            line.push(" ");
            line.push(arg);
        }
        line.to_string_lossy().into_owned()
    };
    let output = Command::new(program).args(args).output().with_context(|| {
        format!(
            "running `{}` (is systemd-resolved's resolvectl installed? otherwise point \
                 resolv.conf at the DNS stub)",
            line()
        )
    })?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            line(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// A directory of its own under the system temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("pilot-resolved-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A stand-in `resolvectl` that appends its arguments to `calls` and fails when its first
    /// argument is `fail_on`.
    fn fake_resolvectl(dir: &Path, fail_on: &str) -> PathBuf {
        let script = dir.join("resolvectl");
        let calls = dir.join("calls");
        fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$*\" >> '{}'\n[ \"$1\" = '{fail_on}' ] && {{ echo \"Failed to set $1: no such link\" >&2; exit 1; }}\nexit 0\n",
                calls.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    fn calls(dir: &Path) -> String {
        fs::read_to_string(dir.join("calls")).unwrap_or_default()
    }

    #[test]
    fn register_sets_routing_domain_default_route_and_server_in_order() {
        let dir = Scratch::new("register");
        let program = fake_resolvectl(&dir.0, "none");
        let dns: Ipv6Addr = "fd70::53".parse().unwrap();
        register(program.as_os_str(), "pilot0", dns).unwrap();
        assert_eq!(
            calls(&dir.0),
            "domain pilot0 ~pilot\ndefault-route pilot0 false\ndns pilot0 fd70::53\n"
        );
        revert(program.as_os_str(), "pilot0");
        assert!(calls(&dir.0).ends_with("revert pilot0\n"));
    }

    #[test]
    fn failures_carry_the_command_and_its_stderr() {
        let dir = Scratch::new("fail");
        let program = fake_resolvectl(&dir.0, "default-route");
        let err = register(program.as_os_str(), "pilot0", "fd70::53".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("default-route pilot0 false"), "{err}");
        assert!(
            err.contains("Failed to set default-route: no such link"),
            "{err}"
        );
        assert_eq!(
            calls(&dir.0).lines().count(),
            2,
            "stops at the first failure"
        );

        let missing = dir.0.join("no-such-resolvectl");
        let err = register(missing.as_os_str(), "pilot0", "fd70::53".parse().unwrap()).unwrap_err();
        assert!(format!("{err:#}").contains("resolv.conf"), "{err:#}");
        // Reverting never fails, whatever happens.
        revert(missing.as_os_str(), "pilot0");
    }

    #[test]
    fn running_is_detected_from_the_socket_or_resolv_conf_and_resolvectl() {
        let dir = Scratch::new("running");
        let run = dir.0.join("run");
        let bin = dir.0.join("bin");
        fs::create_dir_all(&run).unwrap();
        fs::create_dir_all(&bin).unwrap();
        let path = bin.clone().into_os_string();
        assert!(!running_in(&run, Some(&path)));
        fs::write(run.join("resolv.conf"), "nameserver 127.0.0.53\n").unwrap();
        assert!(!running_in(&run, Some(&path)), "no resolvectl on PATH");
        fake_resolvectl(&bin, "none");
        assert!(running_in(&run, Some(&path)));
        assert!(!running_in(&run, None));
        fs::remove_file(run.join("resolv.conf")).unwrap();
        fs::write(run.join("io.systemd.Resolve"), "").unwrap();
        assert!(running_in(&run, None));
    }
}
