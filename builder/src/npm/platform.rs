//! The target platform of an npm install: `os`, `cpu` and `libc` fields
//! checked as npm-install-checks does, against the blueprint's
//! `architecture` (never the host's). Guards against native code built for
//! another machine entering the image.
#![forbid(unsafe_code)]
use serde_json::Value;

/// What packages are installed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Platform {
    pub(crate) os: &'static str,
    pub(crate) cpu: &'static str,
    pub(crate) libc: &'static str,
}

impl Platform {
    /// The npm platform of an OCI architecture (images are Linux, glibc).
    pub(crate) fn for_architecture(arch: &str) -> Option<Platform> {
        let cpu = match arch {
            "amd64" => "x64",
            "arm64" => "arm64",
            "arm" => "arm",
            "386" => "ia32",
            "ppc64le" => "ppc64",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            _ => return None,
        };
        Some(Platform { os: "linux", cpu, libc: "glibc" })
    }

    /// Whether a manifest's `os`, `cpu` and `libc` lists admit this platform.
    pub(crate) fn admits(&self, manifest: &Value) -> bool {
        allows(manifest.get("os"), self.os)
            && allows(manifest.get("cpu"), self.cpu)
            && allows(manifest.get("libc"), self.libc)
    }
}

/// npm-install-checks' `checkList`: a missing or empty list allows all; a
/// `!value` entry forbids; otherwise the value must be listed, unless every
/// entry is a negation. A single string counts as a one-entry list.
fn allows(list: Option<&Value>, value: &str) -> bool {
    let items: Vec<&str> = match list {
        None | Some(Value::Null) => return true,
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        Some(_) => return true,
    };
    if items.is_empty() || items == ["any"] {
        return true;
    }
    let mut matched = false;
    let mut negated = 0;
    for item in &items {
        if let Some(not) = item.strip_prefix('!') {
            if not == value {
                return false;
            }
            negated += 1;
        } else if *item == value {
            matched = true;
        }
    }
    matched || negated == items.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    #[test]
    fn lists_as_npm_reads_them() {
        let p = Platform::for_architecture("amd64").unwrap();
        assert!(p.admits(&json!({})));
        assert!(p.admits(&json!({"os": ["linux"], "cpu": ["x64"]})));
        assert!(!p.admits(&json!({"os": ["linux"], "cpu": ["arm64"]})));
        assert!(p.admits(&json!({"cpu": ["!arm64"]})));
        assert!(!p.admits(&json!({"os": ["!linux"]})));
        assert!(!p.admits(&json!({"libc": ["musl"]})));
        assert!(p.admits(&json!({"os": "linux"})));
        let a = Platform::for_architecture("arm64").unwrap();
        assert!(a.admits(&json!({"cpu": ["arm64"]})) && !a.admits(&json!({"cpu": ["x64"]})));
    }
}
