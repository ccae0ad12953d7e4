//! The npm packages of an image for `moat sbom` and the SBOM attestation:
//! the manifest the npm layer carries (`/var/lib/moat/npm-packages.json`,
//! written from the lock) and its SPDX entries with `pkg:npm` purls and the
//! tarballs' sha256 and sha512. Guards against an SBOM that drifts from
//! the image: it is read from the image itself, and written only from the lock.
#![forbid(unsafe_code)]
use super::NpmLock;
use base64::Engine as _;
use serde_json::{json, Value};

/// Where the npm layer records its packages.
pub const SBOM_DATA: &str = "var/lib/moat/npm-packages.json";

/// The manifest's bytes: one object per locked package, sorted by path.
pub(crate) fn manifest(lock: &NpmLock, prefix: &str) -> Vec<u8> {
    let mut list: Vec<Value> = Vec::new();
    for p in &lock.packages {
        list.push(json!({"ecosystem": "npm", "name": p.name, "version": p.version, "prefix": prefix, "path": p.path,
               "sha256": p.sha256, "integrity": p.integrity, "install_script": p.install_script}));
        // Bundled packages came inside p's tarball: no hashes of their own.
        for b in &p.bundled {
            list.push(json!({"ecosystem": "npm", "name": b.name, "version": b.version, "prefix": prefix,
                   "path": format!("{}/{}", p.path, b.path), "bundled_in": format!("{}@{}", p.name, p.version),
                   "install_script": b.install_script}));
        }
    }
    let mut bytes = serde_json::to_vec_pretty(&list).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The packages of a manifest (its bytes) that declare install scripts:
/// (install directory, why); unreadable data yields a finding saying so.
pub fn install_scripts(data: &[u8]) -> Vec<(String, String)> {
    let Ok(list) = serde_json::from_slice::<Vec<Value>>(data) else {
        return vec![(format!("/{SBOM_DATA}"), "unreadable npm package list".into())];
    };
    list.iter()
        .filter(|p| p["install_script"].as_bool() == Some(true))
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            let dir = format!("{}/lib/{}", s("prefix").trim_end_matches('/'), s("path"));
            (dir, format!("npm package {}@{} declares install scripts (not run)", s("name"), s("version")))
        })
        .collect()
}

/// Whether a manifest entry is an npm package.
pub fn is_npm(p: &Value) -> bool {
    p["ecosystem"].as_str() == Some("npm")
}

/// The package URL: `pkg:npm/%40scope/name@version` (purl-spec's npm type).
pub fn purl(name: &str, version: &str) -> String {
    let enc = |s: &str| s.replace('%', "%25").replace('@', "%40").replace('+', "%2B");
    let name = match name.split_once('/') {
        Some((scope, n)) => format!("{}/{}", enc(scope), enc(n)),
        None => enc(name),
    };
    format!("pkg:npm/{name}@{}", enc(version))
}

/// The SPDX package entry of a manifest entry, as element `i`.
pub fn spdx_package(i: usize, p: &Value) -> Value {
    let n = p["name"].as_str().unwrap_or("");
    let v = p["version"].as_str().unwrap_or("");
    let clean: String =
        n.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect();
    let mut sums = Vec::new();
    if let Some(sha256) = p["sha256"].as_str() {
        sums.push(json!({"algorithm": "SHA256", "checksumValue": sha256}));
    }
    let sha512 = p["integrity"].as_str().and_then(|s| s.strip_prefix("sha512-"));
    if let Some(raw) = sha512.and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok()) {
        sums.push(json!({"algorithm": "SHA512", "checksumValue": hex::encode(raw)}));
    }
    let mut o = json!({
        "SPDXID": format!("SPDXRef-npm-{i}-{clean}"),
        "name": n,
        "versionInfo": v,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "checksums": sums,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "supplier": "NOASSERTION",
        "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl(n, v)}],
    });
    if let Some(path) = p["path"].as_str() {
        o["comment"] = json!(format!("installed at lib/{path} below the [npm] prefix"));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn purls_as_purl_spec() {
        assert_eq!(purl("@fx/cli", "1.0.0"), "pkg:npm/%40fx/cli@1.0.0");
        assert_eq!(purl("left-pad", "1.3.0+build"), "pkg:npm/left-pad@1.3.0%2Bbuild");
        let p = json!({"ecosystem": "npm", "name": "@a/b", "version": "1.0.0", "sha256": "00",
                       "integrity": crate::npm::integrity::sri_sha512(b"x")});
        let s = spdx_package(3, &p);
        assert_eq!(s["SPDXID"], "SPDXRef-npm-3--a-b");
        assert_eq!(s["checksums"][1]["algorithm"], "SHA512");
        assert_eq!(s["checksums"][1]["checksumValue"].as_str().unwrap().len(), 128);
    }
}
