//! A wheel's core metadata (`METADATA`, or the index's PEP 658 copy): the
//! RFC 822 header block read for Name, Version, Requires-Python and
//! Requires-Dist, whose requirements and markers `pep508_rs` parses. Guards
//! against metadata that lies about what it is (name and version must be
//! the file's) and against oversized input (bounded before it is read).
#![forbid(unsafe_code)]
use pep440_rs::{Version, VersionSpecifiers};
use pep508_rs::{PackageName, Requirement};
use std::str::FromStr;

/// Largest METADATA read (a long description included).
pub(crate) const MAX_METADATA: u64 = 8 << 20;

#[derive(Debug, Clone)]
pub(crate) struct Metadata {
    pub(crate) name: PackageName,
    pub(crate) version: Version,
    pub(crate) requires_python: Option<VersionSpecifiers>,
    pub(crate) requires_dist: Vec<Requirement>,
}

/// The header fields of `text` (name lowercased), continuation lines joined;
/// the body after the first empty line is not read.
fn headers(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    out
}

/// Parses core metadata; errors say which field is wrong.
pub(crate) fn parse(bytes: &[u8]) -> Result<Metadata, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "METADATA is not UTF-8".to_string())?;
    let h = headers(text);
    let one = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let name = one("name").ok_or("METADATA has no Name")?;
    let name = PackageName::from_str(name).map_err(|e| format!("METADATA Name {name:?}: {e}"))?;
    let version = one("version").ok_or("METADATA has no Version")?;
    let version = Version::from_str(version).map_err(|e| format!("METADATA Version {version:?}: {e}"))?;
    let requires_python = match one("requires-python") {
        Some(s) => Some(VersionSpecifiers::from_str(s).map_err(|e| format!("METADATA Requires-Python {s:?}: {e}"))?),
        None => None,
    };
    let requires_dist = h
        .iter()
        .filter(|(k, _)| k == "requires-dist")
        .map(|(_, v)| Requirement::from_str(v).map_err(|e| format!("METADATA Requires-Dist {v:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Metadata { name, version, requires_python, requires_dist })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn reads_the_header_block_only() {
        let m = parse(
            b"Metadata-Version: 2.1\r\nName: Fx_Cli\r\nVersion: 1.0\r\nRequires-Python: >=3.8\r\n\
              Requires-Dist: left>=1\r\nRequires-Dist: win ; sys_platform == \"win32\"\r\n\r\nRequires-Dist: body\r\n",
        )
        .unwrap();
        assert_eq!(m.name.as_ref(), "fx-cli");
        assert_eq!(m.version.to_string(), "1.0");
        assert_eq!(m.requires_dist.len(), 2);
        assert!(parse(b"Name: a\n").unwrap_err().contains("Version"));
        assert!(parse(b"Name: a\nVersion: 1\nRequires-Dist: ???\n").unwrap_err().contains("Requires-Dist"));
    }
}
