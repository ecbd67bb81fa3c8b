//! `pilotctl daemon start|stop|status`: the local node daemon as a service. Where the systemd
//! unit is installed and systemd runs, these are `systemctl start|stop pilotd`; elsewhere
//! `start` runs `pilotd up` in the background (detached, logging to a file next to its state)
//! and `stop` sends it SIGTERM, found through the pid its control socket reports.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use super::readiness::{self, Registration, Starting};
use super::up_flags::{default_config_path, UpFlags};
use crate::api::{self, ClientError, InfoReply, Request};

/// How long `stop` waits for the daemon to exit.
const WAIT: Duration = Duration::from_secs(15);
/// The unit `start`/`stop` hand over to when it is installed.
const UNIT: &str = "pilotd.service";
/// The config file the unit runs pilotd with.
const SYSTEM_CONFIG: &str = "/etc/pilot/pilotd.toml";
const UNIT_DIRS: [&str; 3] = [
    "/etc/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
];

/// Exit status of `status` when the daemon is not running (as `systemctl status` does).
const NOT_RUNNING: u8 = 3;

#[derive(Debug, clap::Subcommand)]
pub enum DaemonCommand {
    /// Start pilotd: through systemd when its unit is installed, else `pilotd up` in the
    /// background. Returns once the daemon answers on its control socket and has registered
    /// with its rendezvous, if it has one; fails with the daemon's own error if it exits.
    Start {
        /// Config file for `pilotd up --config` (background mode) [default: the one `pilotctl
        /// init` writes, /etc/pilot/pilotd.toml for root, ~/.config/pilot/pilotd.toml
        /// otherwise, if it exists]
        #[arg(long, env = "PILOT_CONFIG")]
        config: Option<PathBuf>,
        /// Log file of the background daemon [default: pilotd.log next to the control socket]
        #[arg(long)]
        log: Option<PathBuf>,
        /// Run `pilotd up` directly even if the systemd unit is installed.
        #[arg(long)]
        no_systemd: bool,
        #[command(flatten)]
        flags: UpFlags,
        /// Any other `pilotd up` flags, after `--`.
        #[arg(last = true)]
        up_args: Vec<String>,
    },
    /// Stop pilotd cleanly (SIGTERM, or `systemctl stop`); waits until it has exited.
    Stop {
        /// Signal the daemon directly even if the systemd unit is installed.
        #[arg(long)]
        no_systemd: bool,
    },
    /// Whether pilotd runs, and its address. Exit status 3 when it does not.
    Status {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(socket: &Path, command: DaemonCommand) -> Result<ExitCode, String> {
    match command {
        DaemonCommand::Start {
            config,
            log,
            no_systemd,
            flags,
            up_args,
        } => start(socket, config, log, no_systemd, &flags, &up_args),
        DaemonCommand::Stop { no_systemd } => stop(socket, no_systemd),
        DaemonCommand::Status { json } => status(socket, json),
    }
}

fn info(socket: &Path) -> Result<InfoReply, ClientError> {
    let value = api::request(socket, &Request::Info {}, Duration::from_secs(5))?;
    serde_json::from_value(value).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// The unit is installed and systemd is the running init.
fn systemd_unit() -> bool {
    Path::new("/run/systemd/system").is_dir()
        && UNIT_DIRS.iter().any(|d| Path::new(d).join(UNIT).exists())
}

fn systemctl(verb: &str) -> Result<(), String> {
    let status = Command::new("systemctl")
        .args([verb, UNIT])
        .status()
        .map_err(|e| format!("running systemctl: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "systemctl {verb} {UNIT} failed ({status}); see `journalctl -u pilotd`"
        ))
    }
}

fn start(
    socket: &Path,
    config: Option<PathBuf>,
    log: Option<PathBuf>,
    no_systemd: bool,
    flags: &UpFlags,
    up_args: &[String],
) -> Result<ExitCode, String> {
    let systemd = !no_systemd && systemd_unit();
    // The file `pilotctl init` wrote (the unit's, under systemd), when none is named.
    let named = config.is_some();
    let config = config.or_else(|| Some(default_config_path()).filter(|p| p.exists()));
    flags.check(config.as_deref())?;
    let running = info(socket);
    if let Err(e @ ClientError::PermissionDenied { .. }) = running {
        // It runs, as someone else: starting another could only fail on the same socket.
        return Err(e.to_string());
    }
    if let Ok(info) = running {
        println!("pilotd already runs (pid {}, {})", info.pid, info.address);
        if !flags.is_empty() || !up_args.is_empty() {
            println!("the settings given apply from its next start: `pilotctl daemon stop` first");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut starting = if systemd {
        if named || !up_args.is_empty() || !flags.is_empty() {
            return Err(systemd_refusal(flags, up_args));
        }
        systemctl("start")?;
        Starting::Systemd
    } else {
        if let Some(config) = &config {
            println!("settings from {}", config.display());
        }
        let mut args = flags.up_args();
        args.extend(up_args.iter().map(OsString::from));
        spawn(socket, config, log, &args)?
    };
    let ready = readiness::wait(socket, &mut starting)?;
    let info = &ready.info;
    let started = format!(
        "pilotd started (pid {}): {} ({})",
        info.pid, info.address, info.node
    );
    match ready.registration {
        Registration::None => println!("{started}"),
        Registration::Registered { rendezvous } => {
            let name =
                (info.hostname.as_deref()).map_or_else(String::new, |n| format!(" as {n}.pilot"));
            println!("{started}, registered with the rendezvous {rendezvous}{name}");
        }
        Registration::Pending { rendezvous, waited } => {
            println!("{started}");
            eprintln!(
                "pilotctl: warning: not registered with the rendezvous {rendezvous} after {}s \
                 (no answer from it); pilotd keeps trying — `pilotctl status` shows when it is",
                waited.as_secs()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Why `start` with settings cannot go through systemd, and what to type instead.
fn systemd_refusal(flags: &UpFlags, up_args: &[String]) -> String {
    let mut all = flags.command_line();
    for arg in up_args {
        all = format!("{all} {arg}");
    }
    let all = all.trim();
    let mut text = format!(
        "{UNIT} is installed: systemd starts pilotd with the settings in {SYSTEM_CONFIG}, and \
         systemctl cannot pass flags on."
    );
    if !flags.is_empty() {
        let keys: Vec<String> = (flags.settings().iter())
            .map(|(key, value)| format!("{key} = {value}"))
            .collect();
        text += &format!(
            " Record them there with `sudo pilotctl init {}` (or edit the file: {}), then \
             `pilotctl daemon start`;",
            flags.command_line(),
            keys.join(", ")
        );
    } else {
        text += &format!(" Edit {SYSTEM_CONFIG}, then `pilotctl daemon start`;");
    }
    let all = if all.is_empty() {
        String::new()
    } else {
        format!(" {all}")
    };
    text + &format!(" or run pilotd outside systemd: `pilotctl daemon start --no-systemd{all}`")
}

/// Runs `pilotd up` detached from this terminal (its own session, stdin closed, output
/// appended to `log`).
fn spawn(
    socket: &Path,
    config: Option<PathBuf>,
    log: Option<PathBuf>,
    up_args: &[OsString],
) -> Result<Starting, String> {
    let log = log.unwrap_or_else(|| socket.with_file_name("pilotd.log"));
    if let Some(dir) = log.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    // 0600: the daemon's log names peers, endpoints and trust requests.
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log)
        .map_err(|e| format!("opening {}: {e}", log.display()))?;
    // What this start writes begins here: earlier starts' errors are not this one's.
    let offset = file.metadata().map_or(0, |m| m.len());
    let err = file.try_clone().map_err(|e| e.to_string())?;
    let mut command = Command::new(pilotd_binary());
    command.arg("up").arg("--control").arg(socket);
    if let Some(config) = &config {
        command.arg("--config").arg(config);
    }
    command
        .args(up_args)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err);
    // SAFETY: setsid is async-signal-safe and touches no memory of this process.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let child = command
        .spawn()
        .map_err(|e| format!("starting pilotd: {e}"))?;
    Ok(Starting::Spawned { child, log, offset })
}

/// `pilotd` next to this `pilotctl`, else the one on PATH.
fn pilotd_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("pilotd")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("pilotd"))
}

fn stop(socket: &Path, no_systemd: bool) -> Result<ExitCode, String> {
    if !no_systemd && systemd_unit() {
        systemctl("stop")?;
        println!("pilotd stopped");
        return Ok(ExitCode::SUCCESS);
    }
    let info = match info(socket) {
        Ok(info) => info,
        Err(ClientError::NotRunning { .. }) => {
            println!("pilotd is not running");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.to_string()),
    };
    let pid = nix::unistd::Pid::from_raw(info.pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
        .map_err(|e| format!("signalling pilotd (pid {}): {e}", info.pid))?;
    let deadline = Instant::now() + WAIT;
    // Gone when the pid no longer exists (kill with no signal fails with ESRCH).
    while nix::sys::signal::kill(pid, None).is_ok() {
        if Instant::now() >= deadline {
            return Err(format!(
                "pilotd (pid {}) did not exit within {WAIT:?}",
                info.pid
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("pilotd stopped (pid {})", info.pid);
    Ok(ExitCode::SUCCESS)
}

fn status(socket: &Path, json: bool) -> Result<ExitCode, String> {
    match info(socket) {
        Ok(info) => {
            if json {
                let value = serde_json::json!({
                    "running": true,
                    "pid": info.pid,
                    "address": info.address,
                    "node": info.node,
                    "hostname": info.hostname,
                    "peers": info.peers,
                    "trusted": info.trusted,
                    "pending": info.pending,
                    "managed_by_systemd": systemd_unit(),
                });
                println!("{}", serde_json::to_string_pretty(&value).expect("json"));
            } else {
                let name = info.hostname.as_deref().unwrap_or("-");
                println!(
                    "pilotd is running (pid {}): {} ({}), hostname {name}, {} peers, {} trusted, {} pending",
                    info.pid, info.address, info.node, info.peers, info.trusted, info.pending
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(ClientError::NotRunning { .. }) => {
            if json {
                println!("{}", serde_json::json!({ "running": false }));
            } else {
                println!("pilotd is not running (no answer on {})", socket.display());
            }
            Ok(ExitCode::from(NOT_RUNNING))
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_under_systemd_are_refused_naming_the_file_init_and_no_systemd() {
        let flags = UpFlags {
            hostname: Some("my-agent".into()),
            ..UpFlags::default()
        };
        assert_eq!(
            systemd_refusal(&flags, &[]),
            "pilotd.service is installed: systemd starts pilotd with the settings in \
             /etc/pilot/pilotd.toml, and systemctl cannot pass flags on. Record them there with \
             `sudo pilotctl init --hostname my-agent` (or edit the file: hostname = \"my-agent\"), \
             then `pilotctl daemon start`; or run pilotd outside systemd: `pilotctl daemon start \
             --no-systemd --hostname my-agent`"
        );
        let text = systemd_refusal(&UpFlags::default(), &["--mtu".into(), "1400".into()]);
        assert!(
            text.contains("Edit /etc/pilot/pilotd.toml, then `pilotctl daemon start`")
                && text.ends_with("`pilotctl daemon start --no-systemd --mtu 1400`"),
            "{text}"
        );
    }
}
