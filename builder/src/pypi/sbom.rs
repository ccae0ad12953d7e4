//! The PyPI packages of an image for `moat sbom` and the SBOM attestation:
//! the manifest the pypi layer carries (`/var/lib/moat/pypi-packages.json`,
//! written from the lock) and its SPDX entries with `pkg:pypi` purls and the
//! wheels' sha256. Guards against an SBOM that drifts from the image: it is
//! read from the image itself, and written only from the lock.
#![forbid(unsafe_code)]
use super::PypiLock;
use serde_json::{json, Value};

/// Where the pypi layer records its packages.
pub const SBOM_DATA: &str = "var/lib/moat/pypi-packages.json";

/// The manifest's bytes: one object per locked wheel, sorted by name.
pub(crate) fn manifest(lock: &PypiLock, target: &str) -> Vec<u8> {
    let list: Vec<Value> = lock
        .packages
        .iter()
        .map(|p| {
            json!({"ecosystem": "pypi", "name": p.name, "version": p.version, "target": target,
                   "filename": p.filename, "sha256": p.sha256})
        })
        .collect();
    let mut bytes = serde_json::to_vec_pretty(&list).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Whether a manifest entry is a PyPI package.
pub fn is_pypi(p: &Value) -> bool {
    p["ecosystem"].as_str() == Some("pypi")
}

/// The package URL: `pkg:pypi/name@version`, the name lowercased with `_`
/// as `-` (purl-spec's pypi type).
pub fn purl(name: &str, version: &str) -> String {
    let enc = |s: &str| s.replace('%', "%25").replace('+', "%2B").replace('!', "%21");
    format!("pkg:pypi/{}@{}", enc(&name.to_ascii_lowercase().replace('_', "-")), enc(version))
}

/// The SPDX package entry of a manifest entry, as element `i`.
pub fn spdx_package(i: usize, p: &Value) -> Value {
    let n = p["name"].as_str().unwrap_or("");
    let v = p["version"].as_str().unwrap_or("");
    let clean: String =
        n.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect();
    json!({
        "SPDXID": format!("SPDXRef-pypi-{i}-{clean}"),
        "name": n,
        "versionInfo": v,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "checksums": [{"algorithm": "SHA256", "checksumValue": p["sha256"]}],
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "supplier": "NOASSERTION",
        "comment": format!("wheel {} installed into {}", p["filename"].as_str().unwrap_or(""), p["target"].as_str().unwrap_or("")),
        "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl(n, v)}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn purls_as_purl_spec() {
        assert_eq!(purl("Fx_Cli", "1.0+local"), "pkg:pypi/fx-cli@1.0%2Blocal");
        let s = spdx_package(2, &json!({"ecosystem": "pypi", "name": "fx-cli", "version": "1.0", "sha256": "ab"}));
        assert_eq!(s["SPDXID"], "SPDXRef-pypi-2-fx-cli");
        assert_eq!(s["checksums"][0]["checksumValue"], "ab");
    }
}
