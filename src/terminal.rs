//! Text from the model or from customer data, made safe to print: control characters (which could clear the screen,
//! ring the bell or move the cursor) and Unicode bidirectional and invisible format characters (which could reverse
//! or hide what a line says) are shown as visible `\u{…}` escapes. `audience` prints no colour codes of its own,
//! and its log lines carry colour only on a terminal without `NO_COLOR` ([`colour_stderr`]).
//!
//! A command's result goes to stdout through [`outln!`](crate::outln), which returns the write's error instead of
//! panicking as `println!` does: a reader that closed the pipe (`audience … | head -1`) ends the command quietly
//! ([`StdoutClosed`]), as ripgrep does.

use std::borrow::Cow;
use std::fmt;
use std::io::{IsTerminal, Write};

/// True for characters that change how a terminal shows text instead of showing a glyph; line breaks and tabs are
/// layout.
fn unsafe_char(c: char) -> bool {
    !matches!(c, '\n' | '\t') && audience_tools::observe::is_hidden_control(c)
}

/// `text` with every unsafe character written as `\u{hex}`; borrowed when there is none.
pub fn safe(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| if unsafe_char(c) { format!("\\u{{{:x}}}", u32::from(c)) } else { c.to_string() })
            .collect(),
    )
}

/// Pretty JSON with the same characters escaped as JSON `\uXXXX` escapes: the document keeps its value, and a
/// terminal shows it as written. Such characters can only occur inside JSON strings, so the escape stays valid.
pub fn safe_json(value: &impl serde::Serialize) -> serde_json::Result<String> {
    // Line breaks and tabs inside strings are already escaped by serde_json; the ones left are layout.
    Ok(audience_tools::observe::escape_in_json(&serde_json::to_string_pretty(value)?, unsafe_char))
}

/// The reader of stdout went away (a closed pipe): the result is no longer wanted, which is not a failure of the
/// command. `main` ends such a run with exit 0 and no message.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed by its reader")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes one line of a command's result to stdout. A closed pipe is [`StdoutClosed`]; any other write error is
/// returned with what failed.
pub fn write_line(line: fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").map_err(|error| match error.kind() {
        std::io::ErrorKind::BrokenPipe => anyhow::Error::new(StdoutClosed),
        _ => anyhow::Error::new(error).context("cannot write to stdout"),
    })
}

/// `println!` for a command's result: formats the same way and returns [`write_line`]'s result.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::terminal::write_line(format_args!($($arg)*))
    };
}

/// Whether log lines on stderr may carry colour: only on a terminal, and never when `NO_COLOR` is set to anything
/// but the empty string (no-color.org). Logs written to a file or a pipe stay plain text.
pub fn colour_stderr() -> bool {
    colour_allowed(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR"))
}

fn colour_allowed(is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    is_terminal && no_color.is_none_or(|value| value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_would_control_the_terminal() {
        assert_eq!(safe("plain text\nline two\tcol"), "plain text\nline two\tcol");
        assert_eq!(safe("a\u{1b}[2Jb\u{7}c"), "a\\u{1b}[2Jb\\u{7}c");
        assert_eq!(safe("\u{202e}gnp.exe"), "\\u{202e}gnp.exe");
        assert_eq!(safe("ok \u{9b}31m"), "ok \\u{9b}31m");
        assert!(matches!(safe("nothing to do"), Cow::Borrowed(_)));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_allowed(true, None));
        assert!(colour_allowed(true, Some("".into())));
        assert!(!colour_allowed(true, Some("1".into())));
        assert!(!colour_allowed(false, None));
    }

    #[test]
    fn json_stays_valid_and_equal() {
        let value = serde_json::json!({"answer": "x\u{1b}[2J\u{202e}y\u{85}z", "n": 1});
        let text = safe_json(&value).unwrap();
        assert!(!text.chars().any(unsafe_char), "{text}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), value);
    }
}
