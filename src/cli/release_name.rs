//! `pilotctl release-name`: gives up this node's hostname. The daemon stops claiming it and
//! has the rendezvous free it at once (any node may claim it then); once that is confirmed,
//! the `hostname` line of the config file pilotd reads is commented out, so a restart does not
//! claim the name again. A `--hostname` flag on pilotd's command line cannot be edited from
//! here: the output says to remove it.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::control_call::{call, parse, print_json};
use super::init::write_config;
use super::up_flags::default_config_path;
use crate::api::{ClientError, ReleasedName, Request};

#[derive(Debug, clap::Args)]
pub struct ReleaseNameArgs {
    /// The config file pilotd reads, whose `hostname` is commented out once the name is
    /// released [default: /etc/pilot/pilotd.toml for root, ~/.config/pilot/pilotd.toml
    /// otherwise]
    #[arg(long, env = "PILOT_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// What became of the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ConfigEdit {
    /// Its `hostname` line is commented out.
    Removed,
    /// It does not set this hostname (absent, or another name).
    NotSet,
    /// It sets it but could not be rewritten.
    Failed(String),
}

pub fn run(socket: &Path, args: ReleaseNameArgs) -> Result<ExitCode, ClientError> {
    let released: ReleasedName = parse(call(socket, &Request::ReleaseName {})?)?;
    let name = released.hostname;
    let path = args.config.unwrap_or_else(default_config_path);
    let edit = forget_hostname(&path, &name);
    if args.json {
        let (config, error) = match &edit {
            ConfigEdit::Removed => ("removed", None),
            ConfigEdit::NotSet => ("not_set", None),
            ConfigEdit::Failed(e) => ("failed", Some(e.clone())),
        };
        print_json(&serde_json::json!({
            "hostname": name,
            "config": path,
            "config_hostname": config,
            "config_error": error,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "released `{name}`: the rendezvous freed it (any node may claim it now) and this node \
         no longer claims it"
    );
    let path = path.display();
    match edit {
        ConfigEdit::Removed => println!("commented out `hostname` in {path}"),
        ConfigEdit::NotSet => println!(
            "{path} does not set hostname = \"{name}\": if pilotd was started with --hostname \
             {name}, remove that flag, or the node claims `{name}` again at its next start"
        ),
        ConfigEdit::Failed(e) => eprintln!(
            "pilotctl: could not remove `hostname` from {path}: {e}; remove it yourself, or the \
             node claims `{name}` again at its next start"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Comments out the config file's `hostname` if it is `name`.
fn forget_hostname(path: &Path, name: &str) -> ConfigEdit {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return ConfigEdit::NotSet,
        Err(e) => return ConfigEdit::Failed(format!("reading it: {e}")),
    };
    let Some(edited) = unset_hostname(&text, name) else {
        return ConfigEdit::NotSet;
    };
    let mode = fs::metadata(path).map_or(0o644, |m| m.permissions().mode());
    match write_config(path, &edited, mode) {
        Ok(()) => ConfigEdit::Removed,
        Err(e) => ConfigEdit::Failed(e),
    }
}

/// `text` with the line that sets `hostname = "name"` commented out; `None` when no line sets
/// it to `name`. Everything else stays as it was.
fn unset_hostname(text: &str, name: &str) -> Option<String> {
    let sets_it = |line: &str| {
        let table: toml::Table = toml::from_str(line).ok()?;
        (table.len() == 1 && table.get("hostname")?.as_str()? == name).then_some(())
    };
    let mut found = false;
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        if !found && sets_it(line).is_some() {
            found = true;
            lines.push(format!("# {line}  (released with `pilotctl release-name`)"));
        } else {
            lines.push(line.to_owned());
        }
    }
    if !found {
        return None;
    }
    let mut out = lines.join("\n");
    out.push('\n');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_line_setting_the_released_name_is_commented_out() {
        let text = "# hostname = \"alice\"\nhostname = \"edge-7\" # the lab box\nlisten_port = 1\n";
        let edited = unset_hostname(text, "edge-7").unwrap();
        assert_eq!(
            edited,
            "# hostname = \"alice\"\n# hostname = \"edge-7\" # the lab box  (released with \
             `pilotctl release-name`)\nlisten_port = 1\n"
        );
        // The file still parses as pilotd reads it, now without a hostname.
        let file: super::super::config::UpFile =
            super::super::config::parse(Path::new("pilotd.toml"), &edited).unwrap();
        assert_eq!(file.hostname, None);
        assert_eq!(unset_hostname(text, "other"), None);
        assert_eq!(unset_hostname("listen_port = 1\n", "edge-7"), None);
        assert_eq!(unset_hostname("# hostname = \"edge-7\"\n", "edge-7"), None);
    }

    #[test]
    fn the_config_file_is_edited_in_place_or_left_alone() {
        let dir = std::env::temp_dir().join(format!("pilot-release-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pilotd.toml");
        assert_eq!(forget_hostname(&path, "a"), ConfigEdit::NotSet);
        fs::write(&path, "hostname = \"a\"\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(forget_hostname(&path, "a"), ConfigEdit::Removed);
        assert!(fs::read_to_string(&path)
            .unwrap()
            .starts_with("# hostname = \"a\""));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(forget_hostname(&path, "a"), ConfigEdit::NotSet);
        fs::remove_dir_all(&dir).unwrap();
    }
}
