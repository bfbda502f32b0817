//! Text the CLI prints from records, containers and the agent: a hostile name (a comm set
//! with `prctl(PR_SET_NAME)`, a container name) must not drive the terminal. Control
//! characters are shown as visible escapes; cutting to a width never splits an escape.

use std::fmt::Write as _;

/// How `c` is shown: itself, or a visible escape for a control or bidi-override character.
fn shown(c: char, out: &mut String) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\\' => out.push_str("\\\\"),
        c if (c as u32) < 0x20 || c == '\x7f' => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        // C1 controls (U+0080..U+009F; U+009B is a one-character CSI on some terminals) and the
        // bidi overrides that reorder what follows on screen.
        c if ('\u{80}'..='\u{9f}').contains(&c)
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c) =>
        {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// `s` with every control character escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        shown(c, &mut out);
    }
    out
}

/// `s` escaped and cut to at most `width` bytes (plus `…` when cut), at a whole character or
/// escape.
pub fn escape_cut(s: &str, width: usize) -> String {
    let (mut out, cut) = escaped_prefix(s, width);
    if cut {
        out.push('…');
    }
    out
}

/// The first `width` bytes of `s` escaped (an id column), at a whole character or escape.
pub fn escape_prefix(s: &str, width: usize) -> String {
    escaped_prefix(s, width).0
}

/// `s` escaped up to `width` bytes; true when something was left out.
fn escaped_prefix(s: &str, width: usize) -> (String, bool) {
    let mut out = String::with_capacity(s.len().min(width + 4));
    let mut one = String::new();
    for c in s.chars() {
        one.clear();
        shown(c, &mut one);
        if out.len() + one.len() > width {
            return (out, true);
        }
        out.push_str(&one);
    }
    (out, false)
}

/// A JSON text with the characters JSON leaves raw but a terminal obeys (DEL, C1 controls,
/// bidi overrides) written as `\u` escapes; still the same JSON value. Control characters below
/// U+0020 cannot appear raw in valid JSON.
pub fn json_safe(json: &str) -> String {
    let risky = |c: char| {
        c == '\x7f'
            || ('\u{80}'..='\u{9f}').contains(&c)
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
            || (c as u32) < 0x20 && c != '\n' && c != '\t' && c != '\r' && c != ' '
    };
    if !json.chars().any(risky) {
        return json.to_string();
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if risky(c) {
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
    fn control_characters_become_visible_escapes() {
        assert_eq!(escape("\x1b[2J"), "\\x1b[2J");
        assert_eq!(escape("x\r\nFAKE"), "x\\r\\nFAKE");
        assert_eq!(escape("\x1b]0;title\x07"), "\\x1b]0;title\\x07");
        assert_eq!(escape("a\u{9b}b\u{202e}c"), "a\\u{9b}b\\u{202e}c");
        assert_eq!(escape("plain – ünïcode"), "plain – ünïcode");
        assert_eq!(escape("back\\slash"), "back\\\\slash");
    }

    #[test]
    fn a_cut_never_splits_an_escape_or_a_character() {
        // "ab" + "\x1b" (4 bytes): a width of 4 keeps "ab" only.
        assert_eq!(escape_cut("ab\x1bcd", 4), "ab…");
        assert_eq!(escape_cut("ab\x1bcd", 6), "ab\\x1b…");
        assert_eq!(escape_cut("ab\x1bcd", 8), "ab\\x1bcd");
        assert_eq!(escape_cut("éé", 3), "é…");
        assert_eq!(escape_prefix("0123456789abcdef", 12), "0123456789ab");
        assert_eq!(escape_prefix("ab\x1b", 4), "ab");
        for width in 0..20 {
            let cut = escape_cut("x\r\n\x1b[2J\u{9b}", width);
            let kept = cut.trim_end_matches('…');
            assert!(!kept.contains('\x1b') && !kept.contains('\r'), "{cut:?}");
            // Whatever is kept is a prefix of the whole escape, made of whole escapes.
            let whole = escape("x\r\n\x1b[2J\u{9b}");
            assert!(whole.starts_with(kept), "{cut:?}");
            assert!(
                kept.is_empty() || !kept.ends_with('\\') || kept.ends_with("\\\\"),
                "{cut:?}"
            );
        }
    }

    #[test]
    fn json_stays_the_same_value() {
        let raw = "{\"comm\":\"a\u{9b}b\u{7f}\",\"n\":1}";
        let safe = json_safe(raw);
        assert!(
            !safe.contains('\u{9b}') && !safe.contains('\u{7f}'),
            "{safe}"
        );
        let a: serde_json::Value = serde_json::from_str(raw).unwrap();
        let b: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(a, b);
        assert_eq!(json_safe("{\"a\":1}"), "{\"a\":1}");
    }
}
