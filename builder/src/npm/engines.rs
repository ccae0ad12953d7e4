//! `engines.node` of locked npm packages against the node the image runs:
//! the blueprint's Debian `nodejs`, read from the lock (no network). npm
//! only warns (EBADENGINE) when the range excludes the running node, and so
//! do `moat lock` and `moat lint`. Threat: an agent CLI that cannot start on
//! the image's node, found only at run time. Without Debian's nodejs in the
//! lock nothing is said (the node may come from the base image, unknown here).
#![forbid(unsafe_code)]
use super::NpmLock;
use nodejs_semver::{Range, Version};

/// The node version of a Debian `nodejs` version: epoch and Debian revision
/// dropped, `18.19.0+dfsg-6~deb12u2` -> `18.19.0`.
pub(crate) fn node_of_debian(v: &str) -> Option<Version> {
    let upstream = v.split_once(':').map_or(v, |(_, rest)| rest);
    let end = upstream.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(upstream.len());
    Version::parse(upstream[..end].trim_end_matches('.')).ok()
}

/// The Debian `nodejs` (its Debian version) that a lock's `[debian]` table pins.
fn debian_nodejs(debian: Option<&toml::Value>) -> Option<String> {
    let packages = debian?.get("packages")?.as_array()?;
    let p = packages.iter().find(|p| p.get("name").and_then(toml::Value::as_str) == Some("nodejs"))?;
    p.get("version").and_then(toml::Value::as_str).map(String::from)
}

/// Whether node `v` satisfies `range` as npm-install-checks asks it (an
/// unreadable range admits nothing: npm warns for it too).
fn admits(range: &str, v: &Version) -> bool {
    Range::parse(range.trim()).is_ok_and(|r| v.satisfies(&r))
}

/// One warning per locked package whose `engines.node` excludes the Debian
/// nodejs of the same lock; none when the lock pins no Debian nodejs.
pub fn lock_warnings(npm: &NpmLock, debian: Option<&toml::Value>) -> Vec<String> {
    let Some(deb) = debian_nodejs(debian) else { return Vec::new() };
    let Some(node) = node_of_debian(&deb) else {
        return vec![format!("Debian nodejs {deb:?}: no node version read from it; npm engines not checked")];
    };
    npm.packages
        .iter()
        .filter_map(|p| {
            let range = p.engines_node.as_deref()?;
            if admits(range, &node) {
                return None;
            }
            let unread = if Range::parse(range.trim()).is_err() { " (not a semver range)" } else { "" };
            Some(format!(
                "npm package {}@{} ({}): engines.node {range:?}{unread} excludes the image's nodejs {node} (Debian {deb}); npm would warn EBADENGINE",
                p.name, p.version, p.path
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn debian_versions_and_ranges() {
        let v = |s: &str| node_of_debian(s).map(|v| v.to_string());
        assert_eq!(v("18.19.0+dfsg-6~deb12u2").as_deref(), Some("18.19.0"));
        assert_eq!(v("1:20.19.2+dfsg-1").as_deref(), Some("20.19.2"));
        assert_eq!(v("12.22.12~dfsg-1~deb11u4").as_deref(), Some("12.22.12"));
        assert_eq!(v("dfsg"), None);
        let n = Version::parse("18.19.0").unwrap();
        assert!(admits(">=16", &n) && admits("^18 || ^20", &n) && admits("*", &n));
        assert!(!admits(">=20", &n) && !admits("^18.20.0", &n) && !admits("eighteen", &n));
    }
}
