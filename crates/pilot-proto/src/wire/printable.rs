//! Text from the network, made safe to print or log.
//!
//! A trust request's justification, a rejection's reason, a message body: a peer chooses every
//! byte. Printed raw, a newline starts a forged row in `pilotctl pending` or a forged line in
//! the log, and an ESC sequence recolours, moves or hides what the terminal shows. Wherever such
//! text reaches a person it goes through [`printable`]: control characters (C0, DEL, C1) and the
//! invisible characters that reorder or break lines (bidi controls, line and paragraph
//! separators) are written as Rust escapes (`\n`, `\u{1b}`), everything else as it is.
//!
//! It formats in place (a `Display` wrapper), so a log field costs no allocation; `--json`
//! output needs none of this (JSON escapes control characters itself).

use std::fmt;

/// `text` with control and reordering characters escaped when displayed.
pub fn printable(text: &str) -> Printable<'_> {
    Printable(text)
}

/// See [`printable`].
#[derive(Debug, Clone, Copy)]
pub struct Printable<'a>(&'a str);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some((at, c)) = rest.char_indices().find(|&(_, c)| needs_escape(c)) {
            f.write_str(&rest[..at])?;
            write!(f, "{}", c.escape_default())?;
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// Characters that change what a terminal or log shows beyond themselves.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Left-to-right/right-to-left marks, embeddings, overrides and isolates.
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
            // Line and paragraph separators.
            | '\u{2028}' | '\u{2029}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(text: &str) -> String {
        printable(text).to_string()
    }

    #[test]
    fn plain_text_is_unchanged() {
        for text in [
            "",
            "let me in",
            "Zoë's laptop — bureau 3",
            "日本語",
            "a\\nb",
        ] {
            assert_eq!(shown(text), text);
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            shown("hi\nmallory  fd70::1  1s ago  \x1b[31mtrusted\x1b[0m"),
            "hi\\nmallory  fd70::1  1s ago  \\u{1b}[31mtrusted\\u{1b}[0m"
        );
        assert_eq!(
            shown("a\rb\tc\0d\x7fe\u{9b}f"),
            "a\\rb\\tc\\u{0}d\\u{7f}e\\u{9b}f"
        );
        let shown = shown("\u{202e}gnp.exe\u{2028}x");
        assert_eq!(shown, "\\u{202e}gnp.exe\\u{2028}x");
        assert!(!shown.chars().any(needs_escape));
    }
}
