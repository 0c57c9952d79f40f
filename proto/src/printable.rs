//! Strings from a peer, made safe to print on a terminal or write to a log.
//!
//! A client name, a refusal reason, a request path — anything another party chose — may carry
//! escape sequences that clear the operator's screen, move the cursor or recolour text, newlines
//! that forge whole log lines or table rows, and invisible or reordering characters (bidi
//! overrides, zero-width spaces) that make one text look like another. [`printable`] shows every
//! such character as an escape instead; everything else passes unchanged.

use std::borrow::Cow;

/// `s` with every control character and every character Rust's `escape_debug` would not print
/// as itself (format characters such as bidi overrides and zero-width spaces, unassigned code
/// points, lone combining marks, line and paragraph separators) written as `\n`, `\r`, `\t` or
/// `\u{…}`, and a backslash doubled, so no escape is ambiguous. Quotes are left alone, unlike
/// `escape_debug`: nothing here is a literal. Borrows `s` when nothing needs escaping.
pub fn printable(s: &str) -> Cow<'_, str> {
    match s.find(needs_escape) {
        None => Cow::Borrowed(s),
        Some(first) => {
            let mut out = String::with_capacity(s.len() + 8);
            out.push_str(&s[..first]);
            for c in s[first..].chars() {
                if needs_escape(c) {
                    out.extend(c.escape_debug());
                } else {
                    out.push(c);
                }
            }
            Cow::Owned(out)
        }
    }
}

fn needs_escape(c: char) -> bool {
    match c {
        // The common case first: printable ASCII needs nothing but the backslash doubled.
        ' '..='~' => c == '\\',
        _ => c.is_control() || c.escape_debug().nth(1).is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::printable;
    use std::borrow::Cow;

    #[test]
    fn ordinary_text_passes_unchanged_and_unallocated() {
        for s in [
            "alice's laptop",
            "Zoë \"dev\" Müller",
            "GET /a?b=c 200",
            "日本語",
            "",
        ] {
            assert!(matches!(printable(s), Cow::Borrowed(t) if t == s), "{s}");
        }
    }

    #[test]
    fn terminal_escapes_and_newlines_are_shown_not_obeyed() {
        assert_eq!(
            printable("\x1b[2J\x1b[Hok\nk3yx9q  root  active\r\t\x07\x7f"),
            "\\u{1b}[2J\\u{1b}[Hok\\nk3yx9q  root  active\\r\\t\\u{7}\\u{7f}"
        );
        // C1 controls (a single-byte CSI on some terminals) too.
        assert_eq!(printable("a\u{9b}2Jb"), "a\\u{9b}2Jb");
    }

    #[test]
    fn invisible_and_reordering_characters_are_shown() {
        assert_eq!(printable("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(
            printable("a\u{200b}b\u{2028}c\u{feff}"),
            "a\\u{200b}b\\u{2028}c\\u{feff}"
        );
    }

    #[test]
    fn a_backslash_is_doubled_so_an_escape_cannot_be_faked() {
        assert_eq!(printable("\\u{1b}"), "\\\\u{1b}");
        assert_ne!(printable("\\u{1b}"), printable("\x1b"));
    }
}
