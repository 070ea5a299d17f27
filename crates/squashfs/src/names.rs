//! Names for a terminal: file names in an image are bytes chosen by whoever made the image, so
//! every name printed for a person goes through here first.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Text for a terminal with every control character escaped, so that a file name holding a
/// newline cannot forge a line of output and one holding ESC cannot drive the terminal:
/// `\n`, `\t`, `\r`, `\\` for a backslash, `\xNN` for other C0 controls and DEL,
/// `\u{NNNN}` for C1 controls and the bidirectional overrides (as Rust's `escape_debug` and
/// GNU `ls -b` do). Machine-readable output (`--format json`, the change report) is exact.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

/// A name that may not be UTF-8, for a terminal: as [`escape_controls`], with each byte that
/// is not UTF-8 as `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_escaped(&mut out, c);
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        c if needs_escape(c) && (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if needs_escape(c) => {
            let _ = write!(out, "\\u{{{:04x}}}", c as u32);
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_plain_text_is_borrowed() {
        assert_eq!(escape_controls("plain /path/é"), "plain /path/é");
        assert!(matches!(escape_controls("plain"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("a\nb\tc\rd\u{1b}[31m\u{7f}\\e\u{85}\u{202e}"),
            "a\\nb\\tc\\rd\\x1b[31m\\x7f\\\\e\\u{0085}\\u{202e}"
        );
        assert_eq!(escape_bytes(b"ok\xff\xfe/\n"), "ok\\xff\\xfe/\\n");
    }
}
