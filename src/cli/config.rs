//! Config files: `pilotd up --config FILE` (e.g. `/etc/pilot/pilotd.toml`) and
//! `pilotd rendezvous --config FILE` (e.g. `/etc/pilot/rendezvous.toml`).
//!
//! A file is TOML holding the settings of one command, each optional and named like its flag
//! (`--listen-port` → `listen_port`, `--peer` → `peers`). Values go through the flags' own
//! parsers and checks, so a file can say nothing a command line could not. Flags given on the
//! command line (or their environment variables) override the file, and the file overrides the
//! defaults: the merge is in `pilotd::up_options` and `rendezvous::options`, which apply the
//! defaults only after it, so a default never hides a file's value.
//!
//! Any fault stops start-up with `FILE:LINE:COLUMN: KEY: what was expected`, before anything
//! is created.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use toml::Value;

use super::values;
use crate::addr::Hostname;
use crate::daemon::services::Expose;
use crate::daemon::{self, MTU_RANGE};
use crate::node::{PeerConfig, RendezvousConfig};

/// The settings of `pilotd up` a config file holds.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpFile {
    #[serde(default, deserialize_with = "path")]
    pub state_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "string")]
    pub interface: Option<String>,
    #[serde(default, deserialize_with = "mtu")]
    pub mtu: Option<u32>,
    #[serde(default, deserialize_with = "port")]
    pub listen_port: Option<u16>,
    #[serde(default, deserialize_with = "peers")]
    pub peers: Option<Vec<PeerConfig>>,
    #[serde(default, deserialize_with = "rendezvous")]
    pub rendezvous: Option<Vec<RendezvousConfig>>,
    #[serde(default, deserialize_with = "port")]
    pub rendezvous_alt_port: Option<u16>,
    #[serde(default, deserialize_with = "port")]
    pub rendezvous_tls_port: Option<u16>,
    #[serde(default, deserialize_with = "boolean")]
    pub shared_registry: Option<bool>,
    #[serde(default, deserialize_with = "hostname")]
    pub hostname: Option<Hostname>,
    #[serde(default, deserialize_with = "endpoint")]
    pub endpoint: Option<SocketAddr>,
    #[serde(default, deserialize_with = "boolean")]
    pub auto_approve: Option<bool>,
    #[serde(default, deserialize_with = "boolean")]
    pub port_mapping: Option<bool>,
    #[serde(default, deserialize_with = "path")]
    pub hosts_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "seconds_u16")]
    pub keepalive: Option<u16>,
    #[serde(default, deserialize_with = "path")]
    pub control: Option<PathBuf>,
    #[serde(default, deserialize_with = "log_level")]
    pub log_level: Option<String>,
    #[serde(default, deserialize_with = "socket_addr")]
    pub metrics: Option<SocketAddr>,
    #[serde(default, deserialize_with = "boolean")]
    pub userspace: Option<bool>,
    #[serde(default, deserialize_with = "socks5")]
    pub socks5: Option<values::Socks5Addr>,
    #[serde(default, deserialize_with = "expose")]
    pub expose: Option<Vec<Expose>>,
}

/// The settings of `pilotd rendezvous` a config file holds.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RendezvousFile {
    #[serde(default, deserialize_with = "socket_addr")]
    pub listen: Option<SocketAddr>,
    #[serde(default, deserialize_with = "port")]
    pub alt_port: Option<u16>,
    #[serde(default, deserialize_with = "path")]
    pub data_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "period_u16")]
    pub keepalive: Option<u16>,
    #[serde(default, deserialize_with = "seconds_u32")]
    pub expiry: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    pub name_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "relay_rate")]
    pub relay_rate: Option<u64>,
    #[serde(default, deserialize_with = "period_u32")]
    pub stats_interval: Option<u32>,
    #[serde(default, deserialize_with = "log_level")]
    pub log_level: Option<String>,
    #[serde(default, deserialize_with = "socket_addr")]
    pub metrics: Option<SocketAddr>,
    #[serde(default, deserialize_with = "socket_addr")]
    pub tcp_listen: Option<SocketAddr>,
    #[serde(default, deserialize_with = "string")]
    pub store: Option<String>,
    #[serde(default, deserialize_with = "path")]
    pub store_password_file: Option<PathBuf>,
}

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// `line` and `column` count from 1; the column in characters.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

/// Reads the settings in `path`; without a path, none (every setting at its default).
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_owned(),
        error,
    })?;
    parse(path, &text)
}

/// Parses the settings in `text`, read from `path` (named in errors).
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let invalid = |offset: usize, message: String| {
        let (line, column) = position(text, offset);
        ConfigError::Invalid {
            path: path.to_owned(),
            line,
            column,
            message,
        }
    };
    let root = toml::de::DeTable::parse(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        invalid(offset, e.message().trim_end().replace('\n', "; "))
    })?;
    // Where each key and its value are, in the order of the file: to refuse unknown keys
    // before any value is looked at, and to name the key a value's error is about.
    let mut entries: Vec<Entry> = (root.get_ref().iter())
        .map(|(key, value)| Entry {
            key: key.get_ref().to_string(),
            key_at: key.span().start,
            value: value.span(),
        })
        .collect();
    entries.sort_by_key(|e| e.key_at);
    let known = keys::<T>();
    if let Some(e) = entries.iter().find(|e| !known.contains(&e.key.as_str())) {
        let message = if e.key == "registry" && known.contains(&"rendezvous") {
            // The seed's word (Pilot Protocol's config) for the same thing.
            "unknown key `registry`: it is called `rendezvous` here \
             (rendezvous = \"[KEY@]HOST:PORT\")"
                .to_owned()
        } else {
            let expected = known.join(", ");
            format!("unknown key `{}`; expected one of: {expected}", e.key)
        };
        return Err(invalid(e.key_at, message));
    }
    T::deserialize(toml::de::Deserializer::from(root)).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let message = match entries.iter().find(|entry| entry.value.contains(&offset)) {
            Some(entry) => format!("{}: {}", entry.key, e.message()),
            None => e.message().to_owned(),
        };
        invalid(offset, message)
    })
}

/// The keys a settings struct accepts: its field names, as serde's derive lists them. The
/// single source for the unknown-key message and for the test that flags and keys agree.
pub fn keys<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    // The derive hands its field list to `deserialize_struct`; the error is expected.
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// A top-level key of a file and where it is.
struct Entry {
    key: String,
    key_at: usize,
    value: std::ops::Range<usize>,
}

/// Line and column (from 1, the column in characters) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// A deserializer that only records the fields a struct asks for.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(Self::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(Self::Error::custom("only the field names were wanted"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

// Values. Each reads a `toml::Value` and checks it with the same function as its flag; a
// refusal says what was expected and what was found. The key and position are added by
// `parse`.

fn mismatch<E: serde::de::Error>(expected: &str, found: &Value) -> E {
    E::custom(format!("expected {expected}, found {found}"))
}

/// A string value, converted by `parse` (a flag's value parser).
fn parsed<'de, D, T, E>(
    d: D,
    expected: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    E: Display,
{
    let value = Value::deserialize(d)?;
    let Value::String(text) = &value else {
        return Err(mismatch(expected, &value));
    };
    parse(text).map(Some).map_err(D::Error::custom)
}

/// An integer of type `T` that `valid` accepts.
fn integer<'de, D, T>(
    d: D,
    expected: &str,
    valid: impl Fn(T) -> bool,
) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + Copy,
{
    let value = Value::deserialize(d)?;
    let number = match value {
        Value::Integer(n) => T::try_from(n).ok().filter(|&n| valid(n)),
        _ => None,
    };
    number.map(Some).ok_or_else(|| mismatch(expected, &value))
}

fn string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    parsed(d, "a string", |s| Ok::<_, String>(s.to_owned()))
}

fn path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    parsed(d, "a path (a string)", |s| match s {
        "" => Err("expected a path, found an empty string"),
        _ => Ok(PathBuf::from(s)),
    })
}

fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Value::deserialize(d)? {
        Value::Boolean(b) => Ok(Some(b)),
        other => Err(mismatch("true or false", &other)),
    }
}

fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    parsed(d, "\"IP:PORT\"", |s| {
        s.parse::<SocketAddr>()
            .map_err(|_| format!("`{s}`: expected IP:PORT (IPv6 in brackets)"))
    })
}

fn port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    integer(d, "a port 0..65535", |_: u16| true)
}

fn seconds_u16<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    integer(d, "seconds 0..65535", |_: u16| true)
}

fn seconds_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    integer(d, "seconds 0..4294967295", |_: u32| true)
}

fn period_u16<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    integer(d, "seconds 1..65535", |s: u16| {
        values::check_period(s.into()).is_ok()
    })
}

fn period_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    integer(d, "seconds 1..4294967295", |s: u32| {
        values::check_period(s.into()).is_ok()
    })
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    parsed(
        d,
        "a duration such as \"30d\" (a string)",
        values::parse_duration,
    )
}

fn relay_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    integer(d, "a rate in Mbit/s (an integer from 0)", |rate: u64| {
        values::relay_bytes_per_sec(rate).is_ok()
    })
}

fn mtu<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let expected = format!("an integer {}..{}", MTU_RANGE.start(), MTU_RANGE.end());
    integer(d, &expected, |mtu| daemon::check_mtu(mtu).is_ok())
}

fn peers<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<PeerConfig>>, D::Error> {
    const EXPECTED: &str = "an array of \"KEY@HOST:PORT\" strings";
    let value = Value::deserialize(d)?;
    let Value::Array(items) = &value else {
        return Err(mismatch(EXPECTED, &value));
    };
    let peers = items.iter().map(|item| match item {
        Value::String(text) => values::parse_peer(text).map_err(D::Error::custom),
        _ => Err(mismatch(EXPECTED, &value)),
    });
    peers.collect::<Result<_, _>>().map(Some)
}

fn expose<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Expose>>, D::Error> {
    const EXPECTED: &str = "an array of \"PORT[:LOCALPORT]\" strings";
    let value = Value::deserialize(d)?;
    let Value::Array(items) = &value else {
        return Err(mismatch(EXPECTED, &value));
    };
    let rules = items.iter().map(|item| match item {
        Value::String(text) => text.parse::<Expose>().map_err(D::Error::custom),
        _ => Err(mismatch(EXPECTED, &value)),
    });
    rules.collect::<Result<_, _>>().map(Some)
}

fn socks5<'de, D: Deserializer<'de>>(d: D) -> Result<Option<values::Socks5Addr>, D::Error> {
    parsed(d, "\"IP:PORT\" or \"off\"", |s| {
        s.parse::<values::Socks5Addr>()
    })
}

/// One rendezvous, or several in order of preference (the node moves on when one stops
/// answering).
fn rendezvous<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<RendezvousConfig>>, D::Error> {
    const EXPECTED: &str = "\"[KEY@]HOST:PORT\" or an array of \"KEY@HOST:PORT\" strings";
    let value = Value::deserialize(d)?;
    let items = match &value {
        Value::String(_) => std::slice::from_ref(&value),
        Value::Array(items) if !items.is_empty() => items.as_slice(),
        _ => return Err(mismatch(EXPECTED, &value)),
    };
    let list = items.iter().map(|item| match item {
        Value::String(text) => values::parse_rendezvous(text).map_err(D::Error::custom),
        _ => Err(mismatch(EXPECTED, &value)),
    });
    list.collect::<Result<_, _>>().map(Some)
}

fn endpoint<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    parsed(d, "\"IP:PORT\"", values::parse_endpoint)
}

fn hostname<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Hostname>, D::Error> {
    parsed(d, "a hostname (a string)", values::parse_hostname)
}

fn log_level<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    parsed(d, "a log filter (a string)", |s| {
        values::log_filter(s).map(|_| s.to_owned())
    })
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
