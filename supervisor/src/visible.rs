//! Text as an operator's terminal will show it: every character a terminal
//! acts on instead of printing (C0 and C1 controls, DEL, backspace, ESC
//! sequences, CR, bidi overrides and other Unicode format characters,
//! separators and unassigned code points) is written as a visible escape.
//! The one escaper every operator-facing output that can carry
//! sandbox-controlled text goes through (`moat approvals`, `events`, `ls`,
//! `logs`, `policy show`, error lines). Guards against an agent deceiving
//! the operator: a binary at `/tmp/\b\b\b\b\b/usr/bin/git` must not render
//! as `/usr/bin/git`. A leaf: it imports nothing of the crate.
#![forbid(unsafe_code)]
use std::borrow::Cow;
use std::io::Write;

/// How much of the text's layout survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One field: newlines and tabs are escaped too, and `\` is doubled, so
    /// the escaped form cannot be forged by text that looks like an escape.
    Field,
    /// Lines of text (logs, TOML, error messages): `\n` and `\t` stay, `\`
    /// stays as it is.
    Lines,
    /// JSON text: what is not plain becomes `\uXXXX` (valid JSON with the
    /// same meaning); serde_json has already escaped the ASCII controls.
    Json,
}

/// Shown as it is: printable, not a format character, not a combining mark
/// (which would draw over the character before it).
fn plain(c: char) -> bool {
    if c.is_ascii() {
        return !c.is_ascii_control();
    }
    let mut e = c.escape_debug();
    e.next() == Some(c) && e.next().is_none()
}

fn keep(c: char, mode: Mode) -> bool {
    match mode {
        Mode::Field => c != '\\' && plain(c),
        Mode::Lines => c == '\n' || c == '\t' || plain(c),
        // Outside strings JSON has only ASCII; inside, serde_json escaped
        // the C0 controls, quotes and backslashes already.
        Mode::Json => (c.is_ascii() && c != '\x7f') || plain(c),
    }
}

fn escape(s: &str, mode: Mode) -> Cow<'_, str> {
    if s.chars().all(|c| keep(c, mode)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if keep(c, mode) {
            out.push(c);
        } else if mode == Mode::Json {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            // `\t`, `\r`, `\n`, `\0` or `\u{…}`: Rust's spelling, unambiguous.
            out.extend(c.escape_debug());
        }
    }
    Cow::Owned(out)
}

/// One value in a table or a line (a binary path, a host, a reason).
pub fn field(s: &str) -> Cow<'_, str> {
    escape(s, Mode::Field)
}

/// Text of several lines whose layout is kept (error messages, `policy show`).
pub fn lines(s: &str) -> Cow<'_, str> {
    escape(s, Mode::Lines)
}

/// JSON text (one document or one JSON line) with nothing a terminal acts on.
pub fn json(s: &str) -> Cow<'_, str> {
    escape(s, Mode::Json)
}

/// A writer that escapes what passes through as [`lines`] does; bytes that
/// are not UTF-8 are written `\xNN`. For output that is bytes, such as a
/// sandbox's log. A character split across two writes is held back until
/// its end arrives (or until `flush`).
pub struct Writer<W: Write> {
    inner: W,
    held: Vec<u8>,
}

impl<W: Write> Writer<W> {
    pub fn new(inner: W) -> Writer<W> {
        Writer { inner, held: Vec::new() }
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Escapes `held`; with `all`, an incomplete character at the end too.
    fn drain(&mut self, all: bool) -> std::io::Result<()> {
        let mut out = String::new();
        let mut rest: &[u8] = &self.held;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(&lines(s));
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(&lines(std::str::from_utf8(good).unwrap_or_default()));
                    match e.error_len() {
                        Some(n) => {
                            for b in &bad[..n] {
                                out.push_str(&format!("\\x{b:02x}"));
                            }
                            rest = &bad[n..];
                        }
                        None if all => {
                            for b in bad {
                                out.push_str(&format!("\\x{b:02x}"));
                            }
                            rest = &[];
                            break;
                        }
                        None => {
                            rest = bad;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.to_vec();
        self.inner.write_all(out.as_bytes())?;
        self.held = keep;
        Ok(())
    }
}

impl<W: Write> Write for Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.held.extend_from_slice(buf);
        self.drain(false)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.drain(true)?;
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_terminal_would_act_on_is_escaped() {
        assert_eq!(field("/tmp/\x08\x08/usr/bin/git"), r"/tmp/\u{8}\u{8}/usr/bin/git");
        assert_eq!(field("a\x1b[2Kb"), r"a\u{1b}[2Kb");
        assert_eq!(field("x\ry\nz\tw"), r"x\ry\nz\tw");
        assert_eq!(field("evil\u{202e}txt.exe"), r"evil\u{202e}txt.exe");
        assert_eq!(field("zero\u{200b}width"), r"zero\u{200b}width");
        assert_eq!(field("c1\u{9b}31m del\x7f"), r"c1\u{9b}31m del\u{7f}");
        assert_eq!(field("e\u{301}"), r"e\u{301}", "a combining mark is escaped");
        assert_eq!(field(r"C:\x08"), r"C:\\x08", "text looking like an escape cannot pass for one");
        assert!(matches!(field("/usr/bin/git café ünïcode \"q\" 'q'"), Cow::Borrowed(_)));
    }

    #[test]
    fn lines_keep_their_layout() {
        assert_eq!(lines("a\tb\nc\x08\\d\u{2066}"), "a\tb\nc\\u{8}\\d\\u{2066}");
        assert!(matches!(lines("ok\n\tline\n"), Cow::Borrowed(_)));
    }

    #[test]
    fn json_stays_json_with_the_same_meaning() {
        let v = serde_json::json!({"binary": "/tmp/\u{8}\u{202e}\u{7f}\u{9b}/git", "e": "é"});
        let text = serde_json::to_string(&v).unwrap();
        let shown = json(&text);
        assert!(shown.chars().all(|c| c == '\n' || plain(c)), "{shown}");
        assert!(shown.contains(r"\u202e") && shown.contains(r"\u007f") && shown.contains('é'), "{shown}");
        let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(back, v);
        let astral = json("\"\u{e0001}\"");
        assert_eq!(astral, r#""\udb40\udc01""#);
        assert_eq!(serde_json::from_str::<String>(&astral).unwrap(), "\u{e0001}");
    }

    #[test]
    fn the_writer_escapes_bytes_and_characters_split_across_writes() {
        let mut w = Writer::new(Vec::new());
        let text = "ok é\x1b[31m\n".as_bytes();
        let (a, b) = text.split_at(4); // inside the two bytes of é
        w.write_all(a).unwrap();
        w.write_all(b).unwrap();
        w.write_all(b"\xff\xfe end\n").unwrap();
        w.write_all(b"\xc3").unwrap();
        w.flush().unwrap();
        assert_eq!(String::from_utf8(w.inner).unwrap(), "ok é\\u{1b}[31m\n\\xff\\xfe end\n\\xc3");
    }
}
