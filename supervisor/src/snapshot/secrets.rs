//! Recognises files that look like credentials so a backup can report them
//! or leave them out (`--exclude-secrets`). Addresses the threat of API keys
//! and tokens an agent wrote into its workspace spreading into backups and
//! exported snapshot files. Names: `.env*`, `*credentials*.json|yaml|yml`;
//! content: well-known token prefixes followed by a plausible token body, and
//! PEM private keys.
use std::io::Read;

/// Token prefixes and the shortest body that makes a match plausible.
const PREFIXES: &[(&str, usize)] = &[
    ("sk-", 20),
    ("ghp_", 30),
    ("gho_", 30),
    ("ghs_", 30),
    ("github_pat_", 30),
    ("xoxb-", 20),
    ("xoxp-", 20),
    ("AKIA", 16),
    ("hf_", 30),
    ("glpat-", 20),
    ("nvapi-", 30),
    ("-----BEGIN ", 0),
];

/// Why a file name looks like a secret, if it does.
pub fn by_name(file_name: &str) -> Option<String> {
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

fn matcher() -> &'static aho_corasick::AhoCorasick {
    static M: std::sync::OnceLock<aho_corasick::AhoCorasick> = std::sync::OnceLock::new();
    M.get_or_init(|| aho_corasick::AhoCorasick::new(PREFIXES.iter().map(|(p, _)| p)).expect("fixed prefix list builds"))
}

/// The first token-like string in `buf`, described without revealing it.
pub fn in_bytes(buf: &[u8]) -> Option<String> {
    for m in matcher().find_iter(buf) {
        let (i, (p, min_body)) = (m.start(), PREFIXES[m.pattern().as_usize()]);
        // A token starts at a word boundary.
        if i > 0 && token_byte(buf[i - 1]) {
            continue;
        }
        let rest = &buf[m.end()..];
        if p == "-----BEGIN " {
            let line = &rest[..rest.len().min(64)];
            let line = &line[..line.iter().position(|b| *b == b'\n').unwrap_or(line.len())];
            if line.windows(11).any(|w| w == b"PRIVATE KEY") {
                return Some("PEM private key".into());
            }
            continue;
        }
        let body = rest.iter().take_while(|b| token_byte(**b)).count();
        if body >= min_body {
            return Some(format!("token with prefix {p}"));
        }
    }
    None
}

/// Scans a whole stream (with overlap between reads so no token is split).
pub fn in_reader(mut r: impl Read) -> std::io::Result<Option<String>> {
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
