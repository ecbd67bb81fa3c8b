//! The `pilotd up` settings `pilotctl daemon start` and `pilotctl init` take directly, as the
//! seed's users type them (`pilotctl daemon start --hostname my-agent --registry HOST:PORT`).
//! Each is checked by pilotd's own parser when typed, then handed on as `pilotd up` flags or
//! written as config keys of the same names.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::config::{self, UpFile};
use super::{pilotd, values};

/// Where `pilotctl init` writes and `pilotctl daemon start` reads `pilotd up` settings when
/// `--config`/`PILOT_CONFIG` do not say: `/etc/pilot/pilotd.toml` for root (the file the
/// systemd unit reads), `$XDG_CONFIG_HOME/pilot/pilotd.toml` (or `~/.config/…`) otherwise.
pub fn default_config_path() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/etc/pilot/pilotd.toml");
    }
    let base = match (
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    ) {
        (Some(dir), _) if !dir.is_empty() => PathBuf::from(dir),
        (_, Some(home)) if !home.is_empty() => PathBuf::from(home).join(".config"),
        _ => PathBuf::from(".config"),
    };
    base.join("pilot/pilotd.toml")
}

#[derive(Debug, Default, Clone, PartialEq, Eq, clap::Args)]
pub struct UpFlags {
    /// Hostname to claim at the rendezvous; peers reach this node as NAME.pilot.
    #[arg(long, value_name = "NAME", value_parser = checked(values::parse_hostname))]
    pub hostname: Option<String>,
    /// Rendezvous server, [KEY@]HOST:PORT (`--registry` is accepted too, the seed's word).
    #[arg(long, alias = "registry", value_name = "[KEY@]HOST:PORT",
          value_parser = checked(values::parse_rendezvous))]
    pub rendezvous: Option<String>,
    /// This node's public endpoint, when known (a fixed public address or a port forward):
    /// told to peers first.
    #[arg(long, value_name = "IP:PORT", value_parser = checked(values::parse_endpoint))]
    pub endpoint: Option<String>,
    /// Says that --endpoint is public (implied by it; refused alone).
    #[arg(long)]
    pub public: bool,
    /// State directory holding the identity [default: /var/lib/pilot for root, ~/.pilot otherwise]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The UDP port for all tunnel traffic (0 = any free port) [default: 51870]
    #[arg(long, value_name = "PORT")]
    pub listen_port: Option<u16>,
}

/// A value parser that checks with `parse` and keeps the text as typed.
fn checked<T: 'static>(
    parse: fn(&str) -> Result<T, String>,
) -> impl Fn(&str) -> Result<String, String> + Clone + Send + Sync + 'static {
    move |text| parse(text).map(|_| text.to_owned())
}

impl UpFlags {
    pub fn is_empty(&self) -> bool {
        *self == UpFlags::default()
    }

    /// Refuses `--public` without an endpoint, from these flags or the config file `file`.
    pub fn check(&self, file: Option<&Path>) -> Result<(), String> {
        if !self.public || self.endpoint.is_some() {
            return Ok(());
        }
        let in_file = match file {
            Some(path) if path.exists() => config::load::<UpFile>(Some(path))
                .map_err(|e| e.to_string())?
                .endpoint
                .is_some(),
            _ => false,
        };
        if in_file {
            Ok(())
        } else {
            Err(pilotd::PUBLIC_ALONE.to_owned())
        }
    }

    /// The `pilotd up` flags these settings are.
    pub fn up_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        for (key, value) in self.settings() {
            args.push(format!("--{}", key.replace('_', "-")).into());
            args.push(match value {
                toml::Value::String(s) => s.into(),
                other => other.to_string().into(),
            });
        }
        if self.public {
            args.push("--public".into());
        }
        args
    }

    /// The same as a command line, for messages: `--hostname my-agent --public`.
    pub fn command_line(&self) -> String {
        let args: Vec<String> = self
            .up_args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        args.join(" ")
    }

    /// The settings as config keys and values (`--public` has no key: it only marks the
    /// endpoint).
    pub fn settings(&self) -> Vec<(&'static str, toml::Value)> {
        let text = |v: &Option<String>| v.clone().map(toml::Value::String);
        [
            ("hostname", text(&self.hostname)),
            ("rendezvous", text(&self.rendezvous)),
            ("endpoint", text(&self.endpoint)),
            (
                "state_dir",
                self.state_dir
                    .as_ref()
                    .map(|d| toml::Value::String(d.display().to_string())),
            ),
            (
                "listen_port",
                self.listen_port.map(|p| toml::Value::Integer(p.into())),
            ),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key, value?)))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        flags: UpFlags,
    }

    fn flags(args: &[&str]) -> Result<UpFlags, String> {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .map(|c| c.flags)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_seed_flags_become_pilotd_up_flags_and_config_keys() {
        let f = flags(&[
            "--hostname",
            "my-agent",
            "--registry",
            "203.0.113.10:7000",
            "--endpoint",
            "198.51.100.7:51870",
            "--public",
            "--listen-port",
            "4000",
        ])
        .unwrap();
        assert_eq!(f.rendezvous.as_deref(), Some("203.0.113.10:7000"));
        assert_eq!(
            f.command_line(),
            "--hostname my-agent --rendezvous 203.0.113.10:7000 --endpoint 198.51.100.7:51870 \
             --listen-port 4000 --public"
        );
        let keys: Vec<String> = (f.settings().iter())
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        assert_eq!(
            keys,
            [
                "hostname = \"my-agent\"",
                "rendezvous = \"203.0.113.10:7000\"",
                "endpoint = \"198.51.100.7:51870\"",
                "listen_port = 4000"
            ]
        );
        assert!(f.check(None).is_ok() && !f.is_empty());
        assert!(flags(&[]).unwrap().is_empty());
    }

    #[test]
    fn bad_values_are_refused_when_typed_and_public_needs_an_endpoint() {
        for (args, expected) in [
            (&["--hostname", "My_Agent"][..], "not a valid hostname"),
            (&["--endpoint", "0.0.0.0:1"], "not a wildcard"),
            (&["--registry", "nowhere"], "HOST:PORT"),
        ] {
            let err = flags(args).unwrap_err();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
        let public = flags(&["--public"]).unwrap();
        let err = public.check(None).unwrap_err();
        assert!(err.contains("--endpoint IP:PORT --public"), "{err}");
        // An endpoint in the config file is one.
        let dir = std::env::temp_dir().join(format!("pilot-upflags-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pilotd.toml");
        std::fs::write(&file, "endpoint = \"198.51.100.7:51870\"\n").unwrap();
        assert!(public.check(Some(&file)).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
