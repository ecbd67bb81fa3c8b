//! Throwaway PostgreSQL clusters for tests: Debian's `postgresql` binaries (`initdb`, `pg_ctl`)
//! on a data directory in a temp dir, listening only on a Unix socket in that directory, so
//! any number run side by side with no port and no system-wide server. As root, the server
//! runs as `nobody` (PostgreSQL refuses to run as root). Stopped and deleted on drop.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The superuser every cluster has; its password is [`Cluster::PASSWORD`].
pub const USER: &str = "pilot";

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    running: bool,
}

/// A connected psql session ([`Cluster::session`]); disconnected on drop (a transaction it
/// holds open is rolled back).
pub struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Session {
    /// Runs SQL and waits until psql has run it; its output. An error stops the session.
    pub fn run(&mut self, sql: &str) -> Result<String> {
        const DONE: &str = "-- pilot-lab: done --";
        writeln!(self.stdin, "{sql};\n\\echo '{DONE}'").context("writing to psql")?;
        self.stdin.flush().context("writing to psql")?;
        let mut out = String::new();
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line).context("reading psql")? == 0 {
                bail!("psql stopped running {sql:?} (its error is above)");
            }
            if line.trim_end() == DONE {
                return Ok(out.trim().to_owned());
            }
            out.push_str(&line);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The directory of the newest installed PostgreSQL's server programs.
pub fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

impl Cluster {
    /// The superuser's password (clusters ask for it: SCRAM on the socket).
    pub const PASSWORD: &'static str = "lab-only-password";

    /// For a test: a started cluster with database `db`; `None` (after saying why) where
    /// Debian's postgresql is not installed, except under `CI=true`, where that panics.
    pub fn for_test(test: &str, db: &str) -> Option<Cluster> {
        if bin_dir().is_none() {
            let why = "PostgreSQL's server programs (apt-get install postgresql)".to_owned();
            crate::prereq::can_run(test, &[why]);
            return None;
        }
        let cluster = Cluster::start().unwrap_or_else(|e| panic!("{test}: {e:#}"));
        cluster
            .create_db(db)
            .unwrap_or_else(|e| panic!("{test}: {e:#}"));
        Some(cluster)
    }

    /// Creates and starts a cluster.
    pub fn start() -> Result<Cluster> {
        let bin = bin_dir().context(
            "no PostgreSQL server programs under /usr/lib/postgresql/*/bin (apt-get install postgresql)",
        )?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pilot-pg-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir)?;
        let mut cluster = Cluster {
            dir,
            bin,
            running: false,
        };
        cluster.init()?;
        cluster.start_server()?;
        Ok(cluster)
    }

    fn init(&self) -> Result<()> {
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))?;
        let pwfile = self.dir.join("pwfile");
        fs::write(&pwfile, format!("{}\n", Cluster::PASSWORD))?;
        if nix::unistd::geteuid().is_root() {
            let nobody = Some(nix::unistd::Uid::from_raw(65534));
            let nogroup = Some(nix::unistd::Gid::from_raw(65534));
            nix::unistd::chown(&self.dir, nobody, nogroup)?;
            nix::unistd::chown(&pwfile, nobody, nogroup)?;
        }
        let data = self.data();
        let pw = format!("--pwfile={}", pwfile.display());
        self.server_tool(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                USER,
                "--auth=scram-sha-256",
                &pw,
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        Ok(())
    }

    fn start_server(&mut self) -> Result<()> {
        let (data, log) = (self.data(), self.dir.join("server.log"));
        let options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c fsync=on",
            self.dir.display()
        );
        let log = log.to_string_lossy().into_owned();
        self.server_tool(
            "pg_ctl",
            &[
                "start", "-w", "-t", "30", "-D", &data, "-l", &log, "-o", &options,
            ],
        )?;
        self.running = true;
        Ok(())
    }

    /// Stops the server (fast shutdown: clients are disconnected, nothing committed is lost).
    pub fn stop(&mut self) -> Result<()> {
        let data = self.data();
        self.server_tool(
            "pg_ctl",
            &["stop", "-w", "-t", "30", "-D", &data, "-m", "fast"],
        )?;
        self.running = false;
        Ok(())
    }

    /// Starts a stopped server again on the same data.
    pub fn restart(&mut self) -> Result<()> {
        self.start_server()
    }

    /// The URL of database `db` (the socket directory percent-encoded as the host).
    pub fn url(&self, db: &str) -> String {
        let socket = self.dir.to_string_lossy().replace('/', "%2F");
        format!("postgres://{USER}@{socket}/{db}")
    }

    /// Runs SQL through psql as the superuser, in database `db`; its output.
    pub fn sql(&self, db: &str, sql: &str) -> Result<String> {
        let out = self
            .psql(db)
            .args(["-c", sql])
            .output()
            .context("running psql")?;
        check(&out, "psql")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// A psql session that stays connected between statements, e.g. to hold a transaction
    /// open while something else runs.
    pub fn session(&self, db: &str) -> Result<Session> {
        let mut child = self
            .psql(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("running psql")?;
        let stdin = child.stdin.take().context("psql's stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("psql's stdout")?);
        Ok(Session {
            child,
            stdin,
            stdout,
        })
    }

    fn psql(&self, db: &str) -> Command {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args(["-U", USER, "-d", db])
            .env("PGPASSWORD", Cluster::PASSWORD);
        cmd
    }

    /// Creates a database.
    pub fn create_db(&self, db: &str) -> Result<()> {
        self.sql("postgres", &format!("CREATE DATABASE \"{db}\""))
            .map(drop)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's (postmaster's) process id, from its pid file.
    pub fn server_pid(&self) -> Result<u32> {
        let file = self.dir.join("data").join("postmaster.pid");
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let first = text.lines().next().unwrap_or_default().trim();
        first
            .parse()
            .with_context(|| format!("{}: no pid", file.display()))
    }

    fn data(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    /// Runs a server program, as `nobody` when we are root.
    fn server_tool(&self, tool: &str, args: &[&str]) -> Result<()> {
        let program = self.bin.join(tool);
        let mut cmd = if nix::unistd::geteuid().is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(&program);
            c
        } else {
            Command::new(&program)
        };
        // Its own cwd: the server programs must be able to read the directory they start in.
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .output()
            .with_context(|| format!("running {tool}"))?;
        check(&out, tool)
    }
}

fn check(out: &Output, what: &str) -> Result<()> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let data = self.data();
            let _ = self.server_tool("pg_ctl", &["stop", "-w", "-D", &data, "-m", "immediate"]);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
