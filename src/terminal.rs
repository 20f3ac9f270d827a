//! Text from the model or from customer data, made safe to print: control characters (which could clear the screen,
//! ring the bell or move the cursor) and Unicode bidirectional and invisible format characters (which could reverse
//! or hide what a line says) are shown as visible `\u{…}` escapes. `audience` prints no colour codes of its own.

use std::borrow::Cow;

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
    fn json_stays_valid_and_equal() {
        let value = serde_json::json!({"answer": "x\u{1b}[2J\u{202e}y\u{85}z", "n": 1});
        let text = safe_json(&value).unwrap();
        assert!(!text.chars().any(unsafe_char), "{text}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), value);
    }
}
