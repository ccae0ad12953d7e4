//! The one way moat reads a text input (blueprint, lock, policy, preset,
//! imported YAML) and places an error in it. Guards against inputs that
//! exhaust memory (a size bound before allocation) and against errors that
//! do not say where: invalid UTF-8 and every TOML error come out as
//! `file:line:column: the parser's reason`.
#![forbid(unsafe_code)]
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest text input moat reads (blueprints, locks and policies are
/// kilobytes; a lock with a large Debian package set is well under 1 MiB).
pub const MAX_TEXT: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// The file could not be opened or read (the cause is the source).
    #[error("{}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: larger than {max} bytes; not read", path.display())]
    TooLarge { path: PathBuf, max: u64 },
    /// A located error: `origin:line:column: message`.
    #[error("{0}")]
    At(At),
}

/// A message placed in a text input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    pub origin: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}
impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.origin, self.line, self.column, self.message)
    }
}
impl std::error::Error for At {}

impl At {
    /// `message` at byte `offset` of `text`.
    pub fn new(text: &str, offset: usize, origin: &str, message: impl Into<String>) -> At {
        let (line, column) = line_col(text, offset);
        At { origin: origin.into(), line, column, message: message.into() }
    }
}

/// Converts a byte offset in `text` to a 1-based line and column (columns
/// count characters). An offset inside a character counts as that character.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Places many offsets of one text, each as [`line_col`] would, in time
/// linear in the text when the offsets come in order (a parser's events do):
/// it counts on from the last offset placed instead of from the start. An
/// offset before the last one is counted from the start again.
pub struct LineCols<'a> {
    text: &'a str,
    at: usize,
    line: usize,
    column: usize,
}

impl<'a> LineCols<'a> {
    pub fn new(text: &'a str) -> LineCols<'a> {
        LineCols { text, at: 0, line: 1, column: 1 }
    }

    /// Line and column of byte `offset`, as [`line_col`] gives them.
    pub fn place(&mut self, offset: usize) -> (usize, usize) {
        let mut end = offset.min(self.text.len());
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        if end < self.at {
            (self.at, self.line, self.column) = (0, 1, 1);
        }
        let passed = &self.text[self.at..end];
        match passed.rfind('\n') {
            Some(last) => {
                self.line += passed.matches('\n').count();
                self.column = passed[last + 1..].chars().count() + 1;
            }
            None => self.column += passed.chars().count(),
        }
        self.at = end;
        (self.line, self.column)
    }
}

/// Reads `path` as UTF-8 text of at most `max` bytes.
pub fn read(path: &Path, max: u64) -> Result<String, TextError> {
    let f = std::fs::File::open(path).map_err(|source| TextError::Read { path: path.into(), source })?;
    let mut bytes = Vec::new();
    f.take(max + 1).read_to_end(&mut bytes).map_err(|source| TextError::Read { path: path.into(), source })?;
    if bytes.len() as u64 > max {
        return Err(TextError::TooLarge { path: path.into(), max });
    }
    decode(bytes, &path.display().to_string()).map_err(TextError::At)
}

/// Decodes `bytes` as UTF-8; the first invalid byte is named with its line,
/// column and byte offset.
pub fn decode(bytes: Vec<u8>, origin: &str) -> Result<String, At> {
    String::from_utf8(bytes).map_err(|e| {
        let err = e.utf8_error();
        let good = err.valid_up_to();
        let bytes = e.into_bytes();
        // The prefix before the first bad byte is valid by definition.
        let prefix = std::str::from_utf8(&bytes[..good]).unwrap_or_default();
        let what = match bytes.get(good) {
            Some(b) if err.error_len().is_some() => format!("byte 0x{b:02x}"),
            _ => "a truncated character at the end".into(),
        };
        At::new(prefix, good, origin, format!("invalid UTF-8: {what} at byte offset {good}"))
    })
}

/// Places a TOML error: its span's start (1:1 only when the parser gives no
/// span) and the parser's own reason.
pub fn toml_at(text: &str, origin: &str, e: &toml::de::Error) -> At {
    let offset = e.span().map_or(0, |s| s.start);
    At::new(text, offset, origin, e.message().trim_end())
}

/// Parses TOML text into `T`; an error is placed with [`toml_at`].
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T, At> {
    toml::from_str(text).map_err(|e| toml_at(text, origin, &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn invalid_utf8_is_placed() {
        let e = decode(b"name = \"x\"\nab\xffc\n".to_vec(), "f.toml").unwrap_err();
        assert_eq!((e.line, e.column), (2, 3), "{e}");
        assert!(e.to_string().starts_with("f.toml:2:3: invalid UTF-8: byte 0xff at byte offset 13"), "{e}");
        let e = decode("é\n\u{e9}".as_bytes()[..4].to_vec(), "t").unwrap_err();
        assert_eq!((e.line, e.column), (2, 1), "{e}");
        assert!(e.message.contains("truncated"), "{e}");
    }
    #[test]
    fn offsets_inside_a_character_do_not_panic() {
        assert_eq!(line_col("aé\nb", 2), (1, 2));
        assert_eq!(line_col("aé\nb", 99), (2, 2));
    }
    #[test]
    fn line_cols_agrees_with_line_col_in_and_out_of_order() {
        let text = "ab\n\u{e9}c\n\n  x\u{1f600}y\nlast";
        let mut forward = LineCols::new(text);
        for offset in 0..text.len() + 3 {
            assert_eq!(forward.place(offset), line_col(text, offset), "offset {offset}");
        }
        let mut jumping = LineCols::new(text);
        for offset in [9, 3, 15, 15, 0, 20, 4, 99, 1] {
            assert_eq!(jumping.place(offset), line_col(text, offset), "offset {offset}");
        }
    }
    #[test]
    fn toml_errors_keep_the_reason_and_place() {
        let e = parse_toml::<toml::Table>("a = 1\n\n[b]\nc = [1,\n", "p.toml").unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        assert!(e.message.contains("invalid array"), "{e}");
    }
}
