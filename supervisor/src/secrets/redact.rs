//! The one secret redactor every line moat prints, logs or records goes through
//! (CLI errors, tracing output, panic messages, `moat logs`, `moat events`, the
//! gateway audit log). Guards against credentials leaking into terminals, log
//! files, CI output and bug reports.
//!
//! Rules (pinned by the golden corpus `tests/fixtures/redact-corpus.txt`):
//! - Mask: a secret value keeps its first 4 characters and the rest becomes a
//!   fixed `********` (8 stars). Fixed, not same-length: the length of a secret
//!   is a hint to its kind and strength, and a fixed mask makes redaction
//!   idempotent (`redact(redact(x)) == redact(x)`). Values shorter than 12
//!   characters are masked whole (keeping 4 of 8 would reveal half a password).
//! - Known key prefixes (`nvapi-`, `nvcf-`, `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_`,
//!   `github_pat_`, `sk-` (also `sk-proj-`, `sk-ant-`), `xoxb-`/`xoxp-`/`xoxa-`/
//!   `xoxr-`, `hf_`, `glpat-`, `gsk_`, `pypi-`), case-sensitive, at a token
//!   start (not after a letter, digit, `_` or `-`: `task-sk-runner` is not a
//!   key), the token running over `[A-Za-z0-9_-]`, with >= 16 characters after
//!   the prefix that look random (a digit, or both upper and lower case):
//!   `sk-learn-model-selection` and `risk-assessment` are left alone.
//! - `AKIA`/`ASIA` followed by exactly 16 upper-case letters or digits (the
//!   AWS access key id format), at a token start.
//! - `Bearer VALUE` (any case, one or more spaces): VALUE over
//!   `[A-Za-z0-9._~+/=-]`, >= 8 characters with at least one non-letter
//!   (so the prose "Bearer authentication" is left alone).
//! - `NAME=VALUE` where NAME is exactly one of the secret words (`key`,
//!   `secret`, `token`, `password`, `passwd`, `pwd`, `passphrase`,
//!   `credential(s)`, `apikey`, `signature`, `sig`, `auth`, `authorization`)
//!   or ends with `_WORD`, `-WORD` or `.WORD` for WORD among `key`, `secret`,
//!   `token`, `password`, `passwd`, `passphrase`, `credential(s)`, `apikey`,
//!   `signature` (case-insensitive: `GITHUB_TOKEN`, `db_password`,
//!   `--api-key`, `X-Amz-Signature`; `MONKEY=banana` is left alone). This one
//!   rule covers env-style assignments, flags and URL query parameters.
//!   Unquoted VALUE runs to whitespace or one of `"'&,;<>\)]}`; empty values
//!   and `null`/`true`/`false` are left alone.
//! - `NAME: VALUE` (and spaced `NAME = "VALUE"`) when NAME or VALUE is quoted:
//!   JSON (`"api_key": "v"`), Rust Debug output (`password: "v"`), TOML.
//!   Quoted values run to the closing quote (or the end of the line).
//!   `Authorization: SCHEME VALUE` headers mask VALUE.
//! - URL passwords: `scheme://user:PASSWORD@host` masks PASSWORD.
//!
//! ANSI colour sequences (tracing's `name=value` field formatting) between a
//! name, its separator and its value are skipped. Known over-redaction: names
//! such as `sort_key=`, `primary_key=` lose their values too.
#![forbid(unsafe_code)]
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use std::borrow::Cow;
use std::io::Write;
use std::sync::OnceLock;

/// What replaces the hidden part of a secret.
pub const MASK: &str = "********";
/// Characters of a secret kept visible (to tell which key leaked).
const KEEP: usize = 4;
/// Values shorter than this are masked whole.
const KEEP_MIN_CHARS: usize = 12;
/// Characters a prefixed key needs after its prefix.
const MIN_KEY_REST: usize = 16;

/// Key prefixes; `AKIA`/`ASIA` are checked by the AWS access key id format.
const PREFIXES: &[&str] = &[
    "nvapi-",
    "nvcf-",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "sk-",
    "sk-proj-",
    "sk-ant-",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "xoxr-",
    "hf_",
    "glpat-",
    "gsk_",
    "pypi-",
    "AKIA",
    "ASIA",
];
/// Names that are secrets on their own (lower case).
const EXACT_NAMES: &[&str] = &[
    "key",
    "secret",
    "token",
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "credential",
    "credentials",
    "apikey",
    "signature",
    "sig",
    "auth",
    "authorization",
    "proxy-authorization",
];
/// Words that make a secret name as the last `_`/`-`/`.`-separated part.
const SUFFIX_WORDS: &[&str] =
    &["key", "secret", "token", "password", "passwd", "passphrase", "credential", "credentials", "apikey", "signature"];

/// Patterns after the prefixes in the automaton.
const BEARER: usize = PREFIXES.len();
const URL: usize = PREFIXES.len() + 1;
const EQUALS: usize = PREFIXES.len() + 2;
const COLON: usize = PREFIXES.len() + 3;

fn automaton() -> &'static AhoCorasick {
    static AC: OnceLock<AhoCorasick> = OnceLock::new();
    AC.get_or_init(|| {
        let mut pats: Vec<&str> = PREFIXES.to_vec();
        pats.extend(["bearer", "://", "=", ":"]);
        AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(pats)
            .expect("a fixed, small pattern set always builds")
    })
}

/// A byte range of the input whose content is a secret value.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
}

/// Returns `s` with every secret masked; borrows `s` when there is none.
pub fn redact(s: &str) -> Cow<'_, str> {
    let b = s.as_bytes();
    let mut spans: Vec<Span> = Vec::new();
    for m in automaton().find_overlapping_iter(s) {
        let (i, p) = (m.start(), m.pattern().as_usize());
        let span = match p {
            BEARER => bearer(b, i),
            URL => url_password(b, i),
            EQUALS | COLON => name_value(b, i),
            _ if &b[i..m.end()] == PREFIXES[p].as_bytes() => prefixed(b, i, m.end()),
            _ => None,
        };
        spans.extend(span.filter(|sp| sp.end > sp.start));
    }
    if spans.is_empty() {
        return Cow::Borrowed(s);
    }
    spans.sort_by_key(|sp| (sp.start, sp.end));
    let mut out = String::with_capacity(s.len());
    let mut pos = 0;
    let mut i = 0;
    while i < spans.len() {
        let (start, mut end) = (spans[i].start.max(pos), spans[i].end);
        i += 1;
        while i < spans.len() && spans[i].start < end {
            end = end.max(spans[i].end);
            i += 1;
        }
        if end <= start {
            continue;
        }
        out.push_str(&s[pos..start]);
        out.push_str(&mask(&s[start..end]));
        pos = end;
    }
    out.push_str(&s[pos..]);
    if out == s {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(out)
    }
}

/// The masked form of one secret value.
fn mask(v: &str) -> String {
    if v.chars().count() < KEEP_MIN_CHARS {
        return MASK.to_string();
    }
    let cut = v.char_indices().nth(KEEP).map_or(v.len(), |(i, _)| i);
    format!("{}{MASK}", &v[..cut])
}

fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

fn is_name_char(c: u8) -> bool {
    is_key_char(c) || c == b'.'
}

/// Not inside a word: `task-sk-runner` has no key at `sk-`.
fn at_token_start(b: &[u8], i: usize) -> bool {
    i == 0 || !is_key_char(b[i - 1])
}

fn looks_random(t: &[u8]) -> bool {
    t.iter().any(u8::is_ascii_digit) || (t.iter().any(u8::is_ascii_uppercase) && t.iter().any(u8::is_ascii_lowercase))
}

fn run(b: &[u8], from: usize, ok: impl Fn(u8) -> bool) -> usize {
    from + b[from..].iter().take_while(|c| ok(**c)).count()
}

fn prefixed(b: &[u8], start: usize, pend: usize) -> Option<Span> {
    if !at_token_start(b, start) {
        return None;
    }
    if &b[start..pend] == b"AKIA" || &b[start..pend] == b"ASIA" {
        let end = run(b, pend, |c| c.is_ascii_alphanumeric());
        let id = &b[pend..end];
        let ok = id.len() == 16 && id.iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        return ok.then_some(Span { start, end });
    }
    let end = run(b, pend, is_key_char);
    let rest = &b[pend..end];
    (rest.len() >= MIN_KEY_REST && looks_random(rest)).then_some(Span { start, end })
}

fn bearer(b: &[u8], i: usize) -> Option<Span> {
    if i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_') {
        return None;
    }
    let after = i + "bearer".len();
    let start = run(b, after, |c| c == b' ' || c == b'\t');
    if start == after {
        return None;
    }
    let end = run(b, start, |c| c.is_ascii_alphanumeric() || b"._~+/=-".contains(&c));
    let v = &b[start..end];
    (v.len() >= 8 && v.iter().any(|c| !c.is_ascii_alphabetic())).then_some(Span { start, end })
}

fn url_password(b: &[u8], i: usize) -> Option<Span> {
    let a = i + 3;
    let end = run(b, a, |c| !c.is_ascii_whitespace() && !b"/?#\"'<>\\".contains(&c));
    let at = a + b[a..end].iter().rposition(|c| *c == b'@')?;
    let colon = a + b[a..at].iter().position(|c| *c == b':')?;
    Some(Span { start: colon + 1, end: at })
}

/// Skips ANSI SGR sequences (`ESC [ digits/; m`) forwards from `i`.
fn skip_sgr_fwd(b: &[u8], mut i: usize) -> usize {
    while b.get(i) == Some(&0x1b) && b.get(i + 1) == Some(&b'[') {
        let j = run(b, i + 2, |c| c.is_ascii_digit() || c == b';');
        if b.get(j) != Some(&b'm') {
            break;
        }
        i = j + 1;
    }
    i
}

/// Skips ANSI SGR sequences backwards: returns the start of those ending at `i`.
fn skip_sgr_back(b: &[u8], mut i: usize) -> usize {
    while i > 0 && b[i - 1] == b'm' {
        let mut j = i - 1;
        while j > 0 && (b[j - 1].is_ascii_digit() || b[j - 1] == b';') {
            j -= 1;
        }
        if j >= 2 && b[j - 1] == b'[' && b[j - 2] == 0x1b {
            i = j - 2;
        } else {
            break;
        }
    }
    i
}

fn is_secret_name(name: &[u8]) -> bool {
    let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
    let lower = lower.trim_start_matches('-');
    EXACT_NAMES.contains(&lower) || SUFFIX_WORDS.iter().any(|w| secret_suffix(lower, w))
}

fn secret_suffix(name: &str, word: &str) -> bool {
    name.len() > word.len()
        && name.ends_with(word)
        && matches!(name.as_bytes()[name.len() - word.len() - 1], b'_' | b'-' | b'.')
}

fn is_blank(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// `NAME=VALUE`, `"NAME": VALUE`, `NAME: "VALUE"` around the separator at `p`.
fn name_value(b: &[u8], p: usize) -> Option<Span> {
    let colon = b[p] == b':';
    if colon && b.get(p + 1) == Some(&b'/') && b.get(p + 2) == Some(&b'/') {
        return None; // a URL scheme: `url_password` looks at it.
    }
    // The name, backwards: colour codes, blanks, a closing quote.
    let mut j = skip_sgr_back(b, p);
    let spaced_before = j > 0 && is_blank(b[j - 1]);
    while j > 0 && is_blank(b[j - 1]) {
        j -= 1;
    }
    j = skip_sgr_back(b, j);
    let name_quoted = j > 0 && (b[j - 1] == b'"' || b[j - 1] == b'\'');
    if name_quoted {
        j -= 1;
        if j > 0 && b[j - 1] == b'\\' {
            j -= 1;
        }
    }
    let name_end = j;
    while j > 0 && is_name_char(b[j - 1]) {
        j -= 1;
    }
    let name = &b[j..name_end];
    if name.is_empty() || !is_secret_name(name) {
        return None;
    }
    // The value, forwards.
    let mut k = skip_sgr_fwd(b, p + 1);
    let spaced_after = k < b.len() && is_blank(b[k]);
    k = run(b, k, is_blank);
    let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
    if lower.ends_with("authorization") {
        // `Authorization: Basic dXNl...`: the credential after the scheme.
        let word = run(b, k, |c| c.is_ascii_alphabetic());
        let sp = run(b, word, is_blank);
        if word > k && sp > word {
            k = sp;
        }
        let end = run(b, k, |c| !c.is_ascii_whitespace() && !b"\"'&,;<>\\".contains(&c));
        return Some(Span { start: k, end });
    }
    if let Some(span) = quoted(b, k) {
        return Some(span);
    }
    let unquoted_ok = if colon { name_quoted } else { !spaced_before && !spaced_after };
    if !unquoted_ok {
        return None;
    }
    let end = run(b, k, |c| !c.is_ascii_whitespace() && !b"\"'&,;<>\\)]}".contains(&c));
    let v = &b[k..end];
    if v == b"null" || v == b"true" || v == b"false" {
        return None;
    }
    Some(Span { start: k, end })
}

/// A value in `"..."`, `'...'` or JSON-escaped `\"...\"` starting at `k`:
/// its inside, up to the closing quote or the end of the line.
fn quoted(b: &[u8], k: usize) -> Option<Span> {
    let (start, close): (usize, &[u8]) = match (b.get(k), b.get(k + 1)) {
        (Some(b'\\'), Some(b'"')) => (k + 2, b"\\\""),
        (Some(b'"'), _) => (k + 1, b"\""),
        (Some(b'\''), _) => (k + 1, b"'"),
        _ => return None,
    };
    let mut i = start;
    while i < b.len() && b[i] != b'\n' {
        if b[i..].starts_with(close) {
            break;
        }
        if close == b"\"" && b[i] == b'\\' {
            i += 1;
        }
        i += 1;
    }
    Some(Span { start, end: i.min(b.len()) })
}

/// Bytes past which a line without a newline is redacted and written anyway.
const MAX_PENDING: usize = 64 * 1024;

/// A writer that redacts what passes through it, line by line: it holds a
/// partial line until its newline, `flush()` or drop.
pub struct RedactingWriter<W: Write> {
    inner: W,
    pending: Vec<u8>,
}

impl<W: Write> RedactingWriter<W> {
    pub fn new(inner: W) -> RedactingWriter<W> {
        RedactingWriter { inner, pending: Vec::new() }
    }

    /// The wrapped writer (flushing it writes out complete lines only).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    fn emit(&mut self, upto: usize) -> std::io::Result<()> {
        let rest = self.pending.split_off(upto);
        let done = std::mem::replace(&mut self.pending, rest);
        let text = String::from_utf8_lossy(&done);
        self.inner.write_all(redact(&text).as_bytes())
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if let Some(nl) = self.pending.iter().rposition(|c| *c == b'\n') {
            self.emit(nl + 1)?;
        } else if self.pending.len() > MAX_PENDING {
            self.emit(self.pending.len())?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            self.emit(self.pending.len())?;
        }
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Replaces the panic hook with one printing the thread, location, message
/// and (with `RUST_BACKTRACE`) backtrace through `redact`.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("Box<dyn Any>");
        let thread = std::thread::current();
        let loc = info.location().map(|l| l.to_string()).unwrap_or_default();
        let mut text = format!("thread '{}' panicked at {loc}:\n{msg}\n", thread.name().unwrap_or("<unnamed>"));
        let bt = std::backtrace::Backtrace::capture();
        if bt.status() == std::backtrace::BacktraceStatus::Captured {
            text.push_str(&format!("stack backtrace:\n{bt}"));
        } else {
            text.push_str("note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n");
        }
        let _ = std::io::stderr().lock().write_all(redact(&text).as_bytes());
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    const CORPUS: &str = include_str!("../../../tests/fixtures/redact-corpus.txt");

    fn cases() -> Vec<(usize, &'static str, &'static str)> {
        CORPUS
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .map(|(n, l)| {
                let (i, e) = l.split_once('\t').unwrap_or_else(|| panic!("corpus line {}: no tab", n + 1));
                (n + 1, i, e)
            })
            .collect()
    }

    #[test]
    fn golden_corpus() {
        let cases = cases();
        let alike = cases.iter().filter(|(_, i, e)| i == e).count();
        assert!(cases.len() >= 40, "corpus has {} cases", cases.len());
        assert!(alike >= 15, "corpus has {alike} look-alikes");
        let mut bad = Vec::new();
        for (n, input, expected) in &cases {
            let got = redact(input);
            if got != *expected {
                bad.push(format!("line {n}:\n  input    {input}\n  expected {expected}\n  got      {got}"));
            }
            if input == expected && matches!(got, Cow::Owned(_)) {
                bad.push(format!("line {n}: unchanged input not borrowed"));
            }
        }
        assert!(bad.is_empty(), "{} corpus mismatches:\n{}", bad.len(), bad.join("\n"));
    }

    #[test]
    fn idempotent_over_corpus() {
        for (n, input, _) in cases() {
            let once = redact(input).into_owned();
            assert_eq!(redact(&once), once, "line {n}");
        }
    }

    #[test]
    fn mask_keeps_four_of_long_values_only() {
        assert_eq!(mask("abcdefghijkl"), "abcd********");
        assert_eq!(mask("abcdefghijk"), "********");
        assert_eq!(mask("ééééééééééééé"), "éééé********");
    }

    #[test]
    fn tracing_colour_codes_between_name_and_value() {
        let line = "\x1b[3mapi_token\x1b[0m\x1b[2m=\x1b[0mabcdef0123456789 done";
        assert_eq!(redact(line), "\x1b[3mapi_token\x1b[0m\x1b[2m=\x1b[0mabcd******** done");
    }

    #[test]
    fn writer_redacts_lines_split_across_writes() {
        let mut out = Vec::new();
        {
            let mut w = RedactingWriter::new(&mut out);
            w.write_all(b"one ghp_0123456789abcdef").unwrap();
            w.write_all(b"ABCDEF0123456789abcd\ntwo GITHUB_TOKEN=").unwrap();
            w.write_all(b"abcdef0123456789").unwrap();
        }
        assert_eq!(String::from_utf8(out).unwrap(), "one ghp_********\ntwo GITHUB_TOKEN=abcd********");
    }

    #[test]
    fn writer_flush_writes_partial_line() {
        let mut w = RedactingWriter::new(Vec::new());
        w.write_all(b"no newline password=hunter22").unwrap();
        assert!(w.get_mut().is_empty());
        w.flush().unwrap();
        assert_eq!(w.get_mut().as_slice(), b"no newline password=********");
    }
}
