//! Recognises files that look like credentials so a backup can report them
//! or leave them out (`--exclude-secrets`). Addresses the threat of API keys
//! and tokens an agent wrote into its workspace spreading into backups and
//! exported snapshot files. Names: `.env*`, `*credentials*.json|yaml|yml`;
//! content: well-known token prefixes followed by a plausible token body, and
//! PEM private keys.
#![forbid(unsafe_code)]
use std::io::Read;

/// Token prefixes ending in `-` or `_` (found by searching for those bytes)
/// and the shortest body that makes a match plausible.
const PREFIXES: &[(&str, usize)] = &[
    ("sk-", 20),
    ("ghp_", 30),
    ("gho_", 30),
    ("ghs_", 30),
    ("github_pat_", 30),
    ("xoxb-", 20),
    ("xoxp-", 20),
    ("hf_", 30),
    ("glpat-", 20),
    ("nvapi-", 30),
];
/// AWS access key ids: searched for on their own (no `-` or `_`).
const AKIA: (&str, usize) = ("AKIA", 16);
const PEM_BEGIN: &[u8] = b"-----BEGIN ";

/// Why a file name looks like a secret, if it does.
pub(crate) fn by_name(file_name: &str) -> Option<String> {
    let lower = file_name.to_ascii_lowercase();
    if lower.starts_with(".env") {
        return Some("named .env*".into());
    }
    if lower.contains("credentials")
        && (lower.ends_with(".json") || lower.ends_with(".yaml") || lower.ends_with(".yml"))
    {
        return Some("credentials file".into());
    }
    None
}

fn token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// The first token-like string in `buf`, described without revealing it.
///
/// Every pattern but `AKIA` has a `-` or `_`: SIMD searches for those two
/// bytes (and for `AKIA`) find the candidates, which are then checked in
/// place. This runs over every byte a backup reads, so it must keep up with
/// the disk (an Aho-Corasick automaton over all bytes cost a fifth of a
/// backup's CPU).
pub(crate) fn in_bytes(buf: &[u8]) -> Option<String> {
    let mut first: Option<(usize, String)> = None;
    let mut found = |at: usize, why: String| {
        if first.as_ref().is_none_or(|(i, _)| at < *i) {
            first = Some((at, why));
        }
    };
    for i in memchr::memchr2_iter(b'-', b'_', buf) {
        if buf[i..].starts_with(PEM_BEGIN) && (i == 0 || buf[i - 1] != b'-') {
            let rest = &buf[i + PEM_BEGIN.len()..];
            let line = &rest[..rest.len().min(64)];
            let line = &line[..line.iter().position(|b| *b == b'\n').unwrap_or(line.len())];
            if line.windows(11).any(|w| w == b"PRIVATE KEY") {
                found(i, "PEM private key".into());
                break;
            }
            continue;
        }
        let hit = PREFIXES.iter().find(|(p, min)| {
            (i + 1)
                .checked_sub(p.len())
                .is_some_and(|start| &buf[start..=i] == p.as_bytes() && token_at(buf, start, i + 1, *min))
        });
        if let Some((p, _)) = hit {
            found(i + 1 - p.len(), format!("token with prefix {p}"));
            break;
        }
    }
    let (akia, akia_min) = AKIA;
    for i in memchr::memmem::find_iter(buf, akia.as_bytes()) {
        if token_at(buf, i, i + akia.len(), akia_min) {
            found(i, format!("token with prefix {akia}"));
            break;
        }
    }
    first.map(|(_, why)| why)
}

/// A token starts at a word boundary and has at least `min_body` token bytes after its prefix.
fn token_at(buf: &[u8], start: usize, body_start: usize, min_body: usize) -> bool {
    if start > 0 && token_byte(buf[start - 1]) {
        return false;
    }
    buf[body_start..].iter().take_while(|b| token_byte(**b)).count() >= min_body
}

/// Scans a whole stream (with overlap between reads so no token is split).
pub(crate) fn in_reader(mut r: impl Read) -> std::io::Result<Option<String>> {
    const OVERLAP: usize = 128;
    let mut buf = vec![0u8; 1 << 20];
    let mut keep = 0;
    loop {
        let n = r.read(&mut buf[keep..])?;
        if n == 0 {
            return Ok(if keep > 0 { in_bytes(&buf[..keep]) } else { None });
        }
        let end = keep + n;
        if let Some(why) = in_bytes(&buf[..end]) {
            return Ok(Some(why));
        }
        let k = OVERLAP.min(end);
        buf.copy_within(end - k..end, 0);
        keep = k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(by_name(".env").is_some());
        assert!(by_name(".env.local").is_some());
        assert!(by_name("gcp-credentials.json").is_some());
        assert!(by_name("credentials.yaml").is_some());
        assert!(by_name("main.rs").is_none());
        assert!(by_name("credentials.txt").is_none());
    }

    #[test]
    fn contents() {
        assert!(in_bytes(b"OPENAI_API_KEY=sk-abcdefghijklmnopqrstuvwx\n").is_some());
        assert!(in_bytes(b"token: ghp_0123456789abcdefghijklmnopqrstuvwxyz").is_some());
        assert!(in_bytes(b"AKIAIOSFODNN7EXAMPLE").is_some());
        assert!(in_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\n").is_some());
        assert!(in_bytes(b"risk-assessment and task-list and hf_ short").is_none());
        assert!(in_bytes(b"-----BEGIN CERTIFICATE-----\n").is_none());
    }

    #[test]
    fn stream_finds_a_token_split_across_reads() {
        let mut data = vec![b'.'; (1 << 20) - 10];
        data.extend_from_slice(b" sk-abcdefghijklmnopqrstuvwxyz0123 ");
        assert!(in_reader(&data[..]).unwrap().is_some());
    }
}
