//! `pilotctl init`: prepares a node before its first start, as the seed's `init` does. Makes
//! the identity (as `pilotd identity` does) and records the settings given in the config file
//! `pilotctl daemon start` reads (and the systemd unit, for root), then says what to run next.
//!
//! The file is edited, not rewritten: a key already set is replaced on its line, a key shown
//! commented out (as in the shipped file) is set right below its example, anything else is
//! appended; comments and other settings stay. The result must parse as `pilotd up` would
//! read it before it replaces the file.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::config::{self, UpFile};
use super::up_flags::{default_config_path, UpFlags};
use crate::api::{self, ClientError, InfoReply, Request};
use crate::identity;
use crate::io::file::write_atomic;

/// A new config file starts as the one the package ships: every key, commented out.
const TEMPLATE: &str = include_str!("../../packaging/pilotd.toml");

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The config file to write [default: /etc/pilot/pilotd.toml for root,
    /// ~/.config/pilot/pilotd.toml otherwise]
    #[arg(long, env = "PILOT_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: UpFlags,
    /// Print what was done as JSON.
    #[arg(long)]
    json: bool,
}

/// What `init` did, as `--json` prints it.
#[derive(Debug, serde::Serialize)]
struct Done {
    config: PathBuf,
    /// Keys written, as `key = value`.
    set: Vec<String>,
    state_dir: PathBuf,
    identity_created: bool,
    public_key: String,
    address: String,
    node: String,
    /// What to run next.
    next: String,
}

pub fn run(socket: &Path, args: InitArgs) -> Result<ExitCode, ClientError> {
    let fail = |e: String| ClientError::Daemon(e);
    let path = args.config.unwrap_or_else(default_config_path);
    args.flags.check(Some(&path)).map_err(fail)?;
    let (old, mode) = match fs::read_to_string(&path) {
        Ok(text) => (
            Some(text),
            fs::metadata(&path).map_or(0o644, |m| m.permissions().mode()),
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (None, 0o644),
        Err(e) => return Err(fail(format!("reading {}: {e}", path.display()))),
    };
    let mut text = old.clone().unwrap_or_else(|| TEMPLATE.to_owned());
    let mut set = Vec::new();
    for (key, value) in args.flags.settings() {
        text = set_key(&text, key, &value.to_string());
        set.push(format!("{key} = {value}"));
    }
    // Refused here rather than at the next start: the file must read as pilotd reads it.
    let file: UpFile = config::parse(&path, &text).map_err(|e| fail(e.to_string()))?;
    if old.as_deref() != Some(text.as_str()) {
        write_config(&path, &text, mode).map_err(fail)?;
    }

    let state_dir = (file.state_dir.clone()).unwrap_or_else(identity::default_state_dir);
    let identity_created = !state_dir.join("identity.json").exists();
    let id = crate::identity::load_or_create(&state_dir).map_err(|e| fail(e.to_string()))?;
    let running = api::request(socket, &Request::Info {}, std::time::Duration::from_secs(2))
        .ok()
        .and_then(|v| serde_json::from_value::<InfoReply>(v).ok());
    let done = Done {
        next: next_step(&file, running.as_ref()),
        config: path,
        set,
        state_dir,
        identity_created,
        public_key: id.public_key().to_string(),
        address: id.address().to_ipv6().to_string(),
        node: id.address().to_string(),
    };
    if args.json {
        super::control_call::print_json(&serde_json::to_value(&done).expect("serializes"));
    } else {
        print!("{}", report(&done));
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the config file, making its directory if needed; keeps the mode of a file that was
/// there.
pub(super) fn write_config(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    write_atomic(path, text.as_bytes(), mode & 0o7777).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::PermissionDenied {
            " (run it as root, or name a file of yours with --config)"
        } else {
            ""
        };
        format!("writing {}: {e}{hint}", path.display())
    })
}

/// The command to run next, given the file as written and the daemon if it runs.
fn next_step(file: &UpFile, running: Option<&InfoReply>) -> String {
    let needs_rendezvous = file.hostname.is_some() || file.endpoint.is_some();
    if needs_rendezvous && file.rendezvous.is_none() {
        return "set the rendezvous the hostname (or endpoint) is told to: `pilotctl init \
                --rendezvous HOST:PORT`, then `pilotctl daemon start`"
            .into();
    }
    match running {
        Some(info) => format!(
            "pilotd runs already (pid {}): restart it to apply, `pilotctl daemon stop && \
             pilotctl daemon start`",
            info.pid
        ),
        None => "`pilotctl daemon start`".into(),
    }
}

fn report(done: &Done) -> String {
    let created = if done.identity_created {
        "created"
    } else {
        "exists"
    };
    let set = if done.set.is_empty() {
        "nothing new".to_owned()
    } else {
        done.set.join(", ")
    };
    format!(
        "identity    {} ({created})\n\
         address     {}\n\
         node        {}\n\
         public_key  {}\n\
         config      {}: {set}\n\
         next        {}\n",
        done.state_dir.join("identity.json").display(),
        done.address,
        done.node,
        done.public_key,
        done.config.display(),
        done.next
    )
}

/// `text` with top-level `key` set to the TOML `value`: on the line that sets it, else right
/// below its commented-out example (`# key = …`), else at the end.
fn set_key(text: &str, key: &str, value: &str) -> String {
    let sets = |line: &str| {
        line.strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    };
    let shows = |line: &str| line.strip_prefix('#').is_some_and(|l| sets(l.trim_start()));
    let line = format!("{key} = {value}");
    let mut lines: Vec<&str> = text.lines().collect();
    if let Some(i) = lines.iter().position(|l| sets(l)) {
        lines[i] = &line;
    } else if let Some(i) = lines.iter().position(|l| shows(l)) {
        lines.insert(i + 1, &line);
    } else {
        lines.push(&line);
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_set_in_place_below_their_example_or_at_the_end() {
        let text = "# hostname = \"alice\"\n# rendezvous = \"x\"\nrendezvous_alt_port = 7001\n";
        let t = set_key(text, "hostname", "\"my-agent\"");
        assert_eq!(
            t,
            "# hostname = \"alice\"\nhostname = \"my-agent\"\n# rendezvous = \"x\"\n\
             rendezvous_alt_port = 7001\n"
        );
        let t = set_key(&t, "hostname", "\"other\"");
        assert!(
            t.contains("\nhostname = \"other\"\n") && !t.contains("my-agent"),
            "{t}"
        );
        // `rendezvous` is not `rendezvous_alt_port`.
        let t = set_key(&t, "rendezvous", "\"203.0.113.10:7000\"");
        assert!(t.contains("# rendezvous = \"x\"\nrendezvous = \"203.0.113.10:7000\"\nrendezvous_alt_port = 7001\n"), "{t}");
        assert_eq!(set_key("", "listen_port", "4000"), "listen_port = 4000\n");
    }

    #[test]
    fn the_shipped_file_takes_every_setting_and_keeps_its_comments() {
        let flags = UpFlags {
            hostname: Some("my-agent".into()),
            rendezvous: Some("203.0.113.10:7000".into()),
            endpoint: Some("198.51.100.7:51870".into()),
            listen_port: Some(4000),
            state_dir: Some("/srv/pilot".into()),
            public: true,
        };
        let mut text = TEMPLATE.to_owned();
        for (key, value) in flags.settings() {
            text = set_key(&text, key, &value.to_string());
        }
        let file: UpFile = config::parse(Path::new("pilotd.toml"), &text).unwrap();
        assert_eq!(file.hostname.unwrap().as_str(), "my-agent");
        assert_eq!(
            file.rendezvous.unwrap()[0].addr.to_string(),
            "203.0.113.10:7000"
        );
        assert_eq!(file.endpoint, Some("198.51.100.7:51870".parse().unwrap()));
        assert_eq!(file.listen_port, Some(4000));
        assert_eq!(file.state_dir, Some("/srv/pilot".into()));
        assert_eq!(text.lines().count(), TEMPLATE.lines().count() + 5);
        assert!(text.contains("# hostname = \"alice\"\nhostname = \"my-agent\"\n"));
    }

    #[test]
    fn the_next_step_says_what_is_missing_or_to_restart() {
        let parse = |t: &str| -> UpFile { config::parse(Path::new("p.toml"), t).unwrap() };
        let next = next_step(&parse("hostname = \"a\""), None);
        assert!(
            next.contains("pilotctl init --rendezvous HOST:PORT"),
            "{next}"
        );
        let ready = parse("hostname = \"a\"\nrendezvous = \"203.0.113.10:7000\"");
        assert_eq!(next_step(&ready, None), "`pilotctl daemon start`");
    }
}
