//! Where the PostgreSQL registry is and how to log in: the `--store postgres://…` URL, and the
//! password from where libpq users keep it (`PGPASSWORD`, a passfile), or from a file named
//! by `store_password_file`. Never from the URL: a flag shows in `ps` to every user, and a URL
//! is the kind of thing that ends up in a log line. [`Target`]'s `Display` never shows a
//! password.

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio_postgres::config::Host;
use tokio_postgres::Config;

/// A parsed `postgres://USER@HOST[:PORT]/DB` with its password resolved.
#[derive(Clone)]
pub struct Target {
    pub(super) config: Config,
    /// `user@host:port/db`, for messages.
    shown: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgres://{}", self.shown)
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({self})")
    }
}

/// Where a password may come from, besides the environment and the passfile.
#[derive(Debug, Clone, Default)]
pub struct PasswordSources {
    /// `store_password_file`: a file holding the password (its first line).
    pub password_file: Option<PathBuf>,
    /// `PGPASSWORD`.
    pub env_password: Option<String>,
    /// `PGPASSFILE`, else `~/.pgpass`.
    pub passfile: Option<PathBuf>,
}

impl PasswordSources {
    /// The sources libpq reads, from this process' environment.
    pub fn from_env(password_file: Option<PathBuf>) -> PasswordSources {
        let passfile = std::env::var_os("PGPASSFILE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass")));
        PasswordSources {
            password_file,
            env_password: std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()),
            passfile,
        }
    }
}

impl Target {
    /// Parses a `postgres://` (or `postgresql://`) URL and finds its password: from
    /// `store_password_file` if given (an error if it cannot be read), else `PGPASSWORD`, else a
    /// matching passfile line; none is fine when the server does not ask for one.
    pub fn parse(url: &str, sources: &PasswordSources) -> Result<Target, String> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("a PostgreSQL store is given as postgres://USER@HOST[:PORT]/DB".into());
        }
        let mut config = Config::from_str(url).map_err(|e| format!("bad store URL: {e}"))?;
        if config.get_password().is_some() {
            return Err(
                "the store URL holds a password, which `ps` and logs would show: put \
                        it in PGPASSWORD, a passfile (~/.pgpass, PGPASSFILE) or a file named by \
                        store_password_file instead"
                    .into(),
            );
        }
        let user = config
            .get_user()
            .ok_or("the store URL names no user (postgres://USER@HOST/DB)")?
            .to_owned();
        let dbname = config
            .get_dbname()
            .ok_or("the store URL names no database (postgres://USER@HOST/DB)")?
            .to_owned();
        let host = match config.get_hosts() {
            [Host::Tcp(h)] => h.clone(),
            [Host::Unix(p)] => p.display().to_string(),
            [] => return Err("the store URL names no host (postgres://USER@HOST/DB)".into()),
            _ => return Err("the store URL names several hosts; give one".into()),
        };
        let port = match config.get_ports() {
            [] => 5432,
            [p] => *p,
            _ => return Err("the store URL names several ports; give one".into()),
        };
        let password = match &sources.password_file {
            Some(path) => Some(read_password_file(path)?),
            None => sources.env_password.clone().or_else(|| {
                let file = sources.passfile.as_deref()?;
                passfile_lookup(file, &host, port, &dbname, &user)
            }),
        };
        if let Some(password) = password {
            config.password(password);
        }
        config.application_name("pilotd rendezvous");
        Ok(Target {
            config,
            shown: format!("{user}@{host}:{port}/{dbname}"),
        })
    }
}

fn read_password_file(path: &Path) -> Result<String, String> {
    let text = fs::read_to_string(path)
        .map_err(|e| format!("store_password_file {}: {e}", path.display()))?;
    warn_if_readable(path);
    let password = text.lines().next().unwrap_or("").to_owned();
    if password.is_empty() {
        return Err(format!("store_password_file {}: empty", path.display()));
    }
    Ok(password)
}

/// libpq's passfile: `host:port:db:user:password` lines, `*` matching anything, `\:` and `\\`
/// escaped; the first matching line wins. For a Unix socket, the host field matches
/// `localhost` or the socket directory. Like libpq, a file others can read is ignored.
fn passfile_lookup(path: &Path, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let meta = fs::metadata(path).ok()?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "ignoring passfile {}: group or others can read it (chmod 600 it)",
            path.display()
        );
        return None;
    }
    let text = fs::read_to_string(path).ok()?;
    let port = port.to_string();
    let socket = host.starts_with('/');
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(split_passfile_line)
        .find(|f| {
            let is = |field: &str, value: &str| field == "*" || field == value;
            (is(&f[0], host) || (socket && f[0] == "localhost"))
                && is(&f[1], &port)
                && is(&f[2], db)
                && is(&f[3], user)
        })
        .map(|f| f[4].clone())
}

/// Splits one passfile line into its five fields, unescaping `\:` and `\\`.
fn split_passfile_line(line: &str) -> Option<[String; 5]> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut()?.push(chars.next().unwrap_or('\\')),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut()?.push(c),
        }
    }
    fields.try_into().ok()
}

fn warn_if_readable(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "{} is readable by group or others; run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> PasswordSources {
        PasswordSources::default()
    }

    #[test]
    fn a_url_names_user_host_and_database_and_never_shows_a_password() {
        let mut s = sources();
        s.env_password = Some("hunter2".into());
        let t = Target::parse("postgres://pilot@db.example:6543/registry", &s).unwrap();
        assert_eq!(t.to_string(), "postgres://pilot@db.example:6543/registry");
        assert!(!format!("{t:?}").contains("hunter2"));
        assert_eq!(t.config.get_password(), Some(&b"hunter2"[..]));
        let unix = Target::parse("postgres://nobody@%2Ftmp%2Fpg/reg", &sources()).unwrap();
        assert_eq!(unix.to_string(), "postgres://nobody@/tmp/pg:5432/reg");
    }

    #[test]
    fn a_password_in_the_url_is_refused() {
        let e = Target::parse("postgres://pilot:secret@db/registry", &sources()).unwrap_err();
        assert!(e.contains("PGPASSWORD") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn incomplete_urls_say_what_is_missing() {
        for (url, says) in [
            ("sqlite:///x", "postgres://USER@HOST"),
            ("postgres://db/registry", "no user"),
            ("postgres://pilot@db", "no database"),
            ("postgres://pilot@a,b/registry", "several hosts"),
        ] {
            let e = Target::parse(url, &sources()).unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
        }
    }

    #[test]
    fn the_passfile_is_read_as_libpq_reads_it() {
        let dir = std::env::temp_dir().join(format!("pilot-pgpass-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pgpass");
        fs::write(
            &file,
            "# comment\nother:5432:registry:pilot:wrong\n\
             db:*:registry:pilot:pa\\:ss\\\\word\nlocalhost:5432:*:*:socket\n",
        )
        .unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        let mut s = sources();
        s.passfile = Some(file.clone());
        let t = Target::parse("postgres://pilot@db:7000/registry", &s).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"pa:ss\\word"[..]));
        let unix = Target::parse("postgres://x@%2Frun%2Fpg/y", &s).unwrap();
        assert_eq!(unix.config.get_password(), Some(&b"socket"[..]));
        // PGPASSWORD comes before the passfile; store_password_file before both.
        s.env_password = Some("from-env".into());
        let t = Target::parse("postgres://pilot@db/registry", &s).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"from-env"[..]));
        let pw = dir.join("pw");
        fs::write(&pw, "from-file\n").unwrap();
        s.password_file = Some(pw);
        let t = Target::parse("postgres://pilot@db/registry", &s).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"from-file"[..]));
        s.password_file = Some(dir.join("missing"));
        assert!(Target::parse("postgres://pilot@db/registry", &s).is_err());
        // A passfile others can read is ignored, as libpq does.
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let mut s = sources();
        s.passfile = Some(file);
        let t = Target::parse("postgres://pilot@db/registry", &s).unwrap();
        assert_eq!(t.config.get_password(), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
