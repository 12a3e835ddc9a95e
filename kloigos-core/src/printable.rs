//! Text from users that ends up on a terminal or in a log: which characters
//! may be stored, and how the others are shown when a file still holds them.
//!
//! A control character in a note or a name could clear the screen, retitle
//! the window, move the cursor or reorder a line (bidi overrides) for
//! whoever prints it: C0, DEL, C1 and the bidi controls are refused at
//! input and escaped at output.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must never reach a terminal raw: C0 (tab and newline
/// included), DEL, C1, and the Unicode bidi controls.
pub fn is_control(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{61c}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}')
}

/// `text` with every [`is_control`] character written as a visible
/// escape (`\u{1b}`), so it prints on one line and changes nothing on the
/// terminal. Borrowed when there is nothing to escape.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_control(c) {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// JSON text with the [`is_control`] characters serde_json leaves raw
/// (DEL, C1, bidi) written as `\uXXXX` escapes. Such characters can only
/// stand inside JSON strings, where the escape means the same character,
/// so the document parses to the same value.
pub fn escape_json(json: String) -> String {
    if !json.chars().any(is_control) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        // C0 characters in strings are already escaped by serde_json; the
        // newlines and indentation of pretty output are structure.
        if is_control(c) && c as u32 >= 0x7f {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_plain_text_is_borrowed() {
        assert!(matches!(escape("héllo wörld ✓"), Cow::Borrowed(_)));
        let attack = "x\u{1b}]0;title\u{7}\u{1b}[2J\r\nvm:99 secalice\u{9b}\u{202e}";
        let shown = escape(attack);
        assert!(!shown.chars().any(is_control), "{shown}");
        assert_eq!(
            shown,
            "x\\u{1b}]0;title\\u{7}\\u{1b}[2J\\u{d}\\u{a}vm:99 secalice\\u{9b}\\u{202e}"
        );
    }

    #[test]
    fn json_escapes_what_serde_json_leaves_raw_and_still_parses_the_same() {
        let v = serde_json::json!({"note": "a\u{7f}b\u{85}c\u{2067}d\u{1b}e"});
        let raw = serde_json::to_string_pretty(&v).unwrap();
        assert!(raw.contains('\u{85}'));
        let safe = escape_json(raw);
        assert!(
            !safe.chars().any(|c| is_control(c) && c != '\n'),
            "{safe:?}"
        );
        assert_eq!(serde_json::from_str::<serde_json::Value>(&safe).unwrap(), v);
    }
}
