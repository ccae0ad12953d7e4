//! Subresource-integrity strings (`sha512-<base64>`) as the npm registry
//! publishes them for every tarball. Guards against a tampered or swapped
//! tarball: only a sha512 hash is accepted (sha1 `shasum`s are not checked
//! or trusted), and bytes that do not hash to it are refused.
#![forbid(unsafe_code)]
use base64::Engine as _;
use sha2::{Digest as _, Sha512};

/// The sha512 SRI string of `bytes`.
pub(crate) fn sri_sha512(bytes: &[u8]) -> String {
    format!("sha512-{}", base64::engine::general_purpose::STANDARD.encode(Sha512::digest(bytes)))
}

/// The sha512 member of an SRI string (several hashes may be listed, space
/// separated; options after `?` are ignored), normalized; `None` when it
/// holds no well-formed sha512 hash.
pub(crate) fn sha512_of(sri: &str) -> Option<String> {
    sri.split_ascii_whitespace().find_map(|h| {
        let b64 = h.strip_prefix("sha512-")?;
        let b64 = b64.split('?').next().unwrap_or_default();
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        (raw.len() == 64).then(|| format!("sha512-{}", base64::engine::general_purpose::STANDARD.encode(raw)))
    })
}

/// Whether `bytes` hash to the sha512 of `sri`.
pub(crate) fn matches(sri: &str, bytes: &[u8]) -> bool {
    sha512_of(sri).is_some_and(|want| want == sri_sha512(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sha512_is_required_and_checked() {
        let good = sri_sha512(b"tarball");
        assert!(matches(&good, b"tarball"));
        assert!(!matches(&good, b"tarbalL"));
        assert!(matches(&format!("sha1-AAAA {good}"), b"tarball"));
        assert!(!matches("sha1-2jmj7l5rSw0yVb/vlWAYkK/YBwk=", b""));
        assert_eq!(sha512_of("sha512-notbase64!"), None);
    }
}
