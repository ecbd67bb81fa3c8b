//! The Prometheus text exposition format, version 0.0.4, written by hand: a family is a
//! `# HELP` and a `# TYPE` line followed by its samples, one per line, `name{label="value"} N`.
//! Help text and label values are escaped as the format requires; names are ours and fixed.

use std::fmt::Write;

/// The `Content-Type` of what [`Exposition`] writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// What a family measures: a count that only grows, a level that goes up and down, or a
/// distribution (cumulative `_bucket{le}` counts, `_sum` and `_count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A sample's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Int(n)
    }
}

impl From<usize> for Value {
    fn from(n: usize) -> Value {
        Value::Int(n as u64)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Int(u64::from(b))
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Value {
        Value::Float(x)
    }
}

/// A metrics page being written.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

/// The family whose samples are being written.
pub struct Family<'a> {
    text: &'a mut String,
    name: &'static str,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines. Its samples follow.
    pub fn family(&mut self, name: &'static str, kind: Kind, help: &str) -> Family<'_> {
        debug_assert!(is_name(name), "bad metric name {name}");
        debug_assert!(
            kind != Kind::Counter || name.ends_with("_total"),
            "counter {name} must end in _total"
        );
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        self.text.push_str("# HELP ");
        self.text.push_str(name);
        self.text.push(' ');
        for c in help.chars() {
            match c {
                '\\' => self.text.push_str("\\\\"),
                '\n' => self.text.push_str("\\n"),
                c => self.text.push(c),
            }
        }
        let _ = writeln!(self.text, "\n# TYPE {name} {kind}");
        Family {
            text: &mut self.text,
            name,
        }
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &'static str, kind: Kind, help: &str, value: impl Into<Value>) {
        self.family(name, kind, help).sample(&[], value);
    }

    /// The page.
    /// What every pilotd page starts with: `pilot_build_info{version}` and the process' uptime
    /// as the gauge `uptime`: (name, help).
    pub fn process(
        &mut self,
        version: &str,
        (uptime_name, uptime_help): (&'static str, &str),
        uptime: std::time::Duration,
    ) {
        self.family(
            "pilot_build_info",
            Kind::Gauge,
            "The running pilotd's version; always 1.",
        )
        .sample(&[("version", version)], 1u64);
        self.single(uptime_name, Kind::Gauge, uptime_help, uptime.as_secs_f64());
    }

    pub fn finish(self) -> String {
        self.text
    }
}

impl Family<'_> {
    /// One sample of the family, with these labels.
    pub fn sample(&mut self, labels: &[(&'static str, &str)], value: impl Into<Value>) {
        self.sample_of("", labels, value);
    }

    /// One histogram's samples: `bounds` are the buckets' upper bounds, `counts` how many
    /// observations fell at or below each (cumulative), then `+Inf` (`count`), `_sum`, `_count`.
    pub fn histogram(
        &mut self,
        labels: &[(&'static str, &str)],
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
        count: u64,
    ) {
        for (bound, n) in bounds.iter().zip(counts) {
            let le = bound.to_string();
            let mut with_le: Vec<(&'static str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            self.sample_of("_bucket", &with_le, *n);
        }
        let mut with_le: Vec<(&'static str, &str)> = labels.to_vec();
        with_le.push(("le", "+Inf"));
        self.sample_of("_bucket", &with_le, count);
        self.sample_of("_sum", labels, sum);
        self.sample_of("_count", labels, count);
    }

    fn sample_of(
        &mut self,
        suffix: &str,
        labels: &[(&'static str, &str)],
        value: impl Into<Value>,
    ) {
        self.text.push_str(self.name);
        self.text.push_str(suffix);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                debug_assert!(is_name(name), "bad label name {name}");
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(name);
                self.text.push_str("=\"");
                escape_label_value(self.text, value);
                self.text.push('"');
            }
            self.text.push('}');
        }
        self.text.push(' ');
        match value.into() {
            Value::Int(n) => {
                let _ = write!(self.text, "{n}");
            }
            Value::Float(x) if x.is_nan() => self.text.push_str("NaN"),
            Value::Float(x) if x.is_infinite() => {
                self.text.push_str(if x > 0.0 { "+Inf" } else { "-Inf" })
            }
            Value::Float(x) => {
                let _ = write!(self.text, "{x}");
            }
        }
        self.text.push('\n');
    }
}

/// Label values may hold anything: backslash, double quote and newline are escaped.
fn escape_label_value(text: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => text.push_str("\\\\"),
            '"' => text.push_str("\\\""),
            '\n' => text.push_str("\\n"),
            c => text.push(c),
        }
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, for metric and label names.
fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaping() {
        let mut page = Exposition::new();
        page.single(
            "up_total",
            Kind::Counter,
            "A help\\text\nover two lines",
            7u64,
        );
        let mut f = page.family("level", Kind::Gauge, "Levels.");
        f.sample(&[("a", "plain"), ("b", "q\"uote\\back\nline")], 1.5);
        f.sample(&[("a", "ünïcode")], true);
        f.sample(&[], f64::INFINITY);
        f.sample(&[], f64::NEG_INFINITY);
        f.sample(&[], f64::NAN);
        f.sample(&[], 0.1 + 0.2);
        assert_eq!(
            page.finish(),
            "# HELP up_total A help\\\\text\\nover two lines\n\
             # TYPE up_total counter\n\
             up_total 7\n\
             # HELP level Levels.\n\
             # TYPE level gauge\n\
             level{a=\"plain\",b=\"q\\\"uote\\\\back\\nline\"} 1.5\n\
             level{a=\"ünïcode\"} 1\n\
             level +Inf\n\
             level -Inf\n\
             level NaN\n\
             level 0.30000000000000004\n"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(is_name("pilot_drops_total") && is_name("_x:y9"));
        assert!(!is_name("") && !is_name("9lives") && !is_name("a-b") && !is_name("a b"));
    }
}
