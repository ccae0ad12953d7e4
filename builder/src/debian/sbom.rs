//! SPDX 2.3 JSON for the Debian packages of an image, from the package
//! manifest the fix-up layer writes (name, version, sha256 of the .deb,
//! license from machine-readable copyright files). Deterministic: the same
//! image gives the same document.
#![forbid(unsafe_code)]
use serde_json::{json, Value};

/// Debian short license names -> SPDX identifiers (only unambiguous ones).
fn spdx_id(debian: &str) -> Option<&'static str> {
    Some(match debian.trim() {
        "GPL-2" => "GPL-2.0-only",
        "GPL-2+" | "GPL-2.0+" => "GPL-2.0-or-later",
        "GPL-3" => "GPL-3.0-only",
        "GPL-3+" | "GPL-3.0+" => "GPL-3.0-or-later",
        "LGPL-2" => "LGPL-2.0-only",
        "LGPL-2+" => "LGPL-2.0-or-later",
        "LGPL-2.1" => "LGPL-2.1-only",
        "LGPL-2.1+" => "LGPL-2.1-or-later",
        "LGPL-3" => "LGPL-3.0-only",
        "LGPL-3+" => "LGPL-3.0-or-later",
        "Expat" | "MIT" => "MIT",
        "BSD-2-clause" | "BSD-2-Clause" => "BSD-2-Clause",
        "BSD-3-clause" | "BSD-3-Clause" => "BSD-3-Clause",
        "BSD-4-clause" => "BSD-4-Clause",
        "ISC" => "ISC",
        "Zlib" | "zlib" => "Zlib",
        "Apache-2.0" | "Apache-2" => "Apache-2.0",
        "Artistic" | "Artistic-1.0" => "Artistic-1.0",
        "Artistic-2.0" => "Artistic-2.0",
        "MPL-2.0" => "MPL-2.0",
        "PSF-2" | "Python" | "PSF-2.0" => "Python-2.0",
        "curl" => "curl",
        "OpenSSL" => "OpenSSL",
        "public-domain" => return None,
        _ => return None,
    })
}

/// Converts a Debian `License:` expression (`GPL-2+ or Artistic`) to SPDX,
/// or `None` when any part has no SPDX identifier.
pub fn to_spdx(expr: &str) -> Option<String> {
    let mut out = Vec::new();
    for tok in expr.split_whitespace() {
        match tok.to_ascii_lowercase().as_str() {
            "or" | "|" => out.push("OR".to_string()),
            "and" | "&" => out.push("AND".to_string()),
            _ => out.push(spdx_id(tok.trim_matches(|c| c == ',' || c == '(' || c == ')'))?.to_string()),
        }
    }
    (!out.is_empty()).then(|| out.join(" "))
}

fn spdx_ref(i: usize, name: &str) -> String {
    let clean: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect();
    format!("SPDXRef-deb-{i}-{clean}")
}

/// The SPDX document for `packages` (the JSON array moat writes to
/// `/var/lib/dpkg/moat-packages.json`) of image `name` with manifest `digest`.
pub fn spdx(name: &str, digest: &str, packages: &[Value]) -> Value {
    let mut pkgs = Vec::new();
    let mut rels = Vec::new();
    let mut ids = std::collections::BTreeMap::new();
    let foreign = |p: &Value| crate::npm::sbom::is_npm(p) || crate::pypi::sbom::is_pypi(p);
    for (i, p) in packages.iter().enumerate().filter(|(_, p)| !foreign(p)) {
        let n = p["name"].as_str().unwrap_or("");
        ids.insert(n.to_string(), spdx_ref(i, n));
    }
    for (i, p) in packages.iter().enumerate() {
        if foreign(p) {
            let o = if crate::npm::sbom::is_npm(p) {
                crate::npm::sbom::spdx_package(i, p)
            } else {
                crate::pypi::sbom::spdx_package(i, p)
            };
            rels.push(json!({"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": o["SPDXID"]}));
            pkgs.push(o);
            continue;
        }
        let n = p["name"].as_str().unwrap_or("");
        let v = p["version"].as_str().unwrap_or("");
        let arch = p["architecture"].as_str().unwrap_or("");
        let id = ids.get(n).cloned().unwrap_or_default();
        let license = p["license"].as_str();
        let declared = license.and_then(to_spdx).unwrap_or_else(|| "NOASSERTION".into());
        let mut o = json!({
            "SPDXID": id,
            "name": n,
            "versionInfo": v,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "checksums": [{"algorithm": "SHA256", "checksumValue": p["sha256"]}],
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": declared,
            "supplier": p["maintainer"].as_str().map(|m| format!("Organization: {m}")).unwrap_or_else(|| "NOASSERTION".into()),
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                "referenceLocator": format!("pkg:deb/debian/{}@{}?arch={}", n, v.replace(':', "%3A").replace('+', "%2B"), arch)}],
        });
        if let Some(l) = license {
            o["licenseComments"] = json!(format!("Debian copyright file: License: {l}"));
        }
        if let Some(h) = p["homepage"].as_str() {
            o["homepage"] = json!(h);
        }
        if let Some(src) = p["source"].as_str().filter(|s| *s != n) {
            o["sourceInfo"] = json!(format!("built from Debian source package {src}"));
        }
        pkgs.push(o);
        rels.push(
            json!({"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": id}),
        );
        for d in p["depends"].as_array().into_iter().flatten() {
            if let Some(did) = d.as_str().and_then(|d| ids.get(d)) {
                rels.push(json!({"spdxElementId": id, "relationshipType": "DEPENDS_ON", "relatedSpdxElement": did}));
            }
        }
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": format!("https://moat.invalid/spdx/{}/{}", name, digest.trim_start_matches("sha256:")),
        "creationInfo": {"created": "1970-01-01T00:00:00Z", "creators": [format!("Tool: moat-{}", env!("CARGO_PKG_VERSION"))]},
        "packages": pkgs,
        "relationships": rels,
    })
}

/// The SPDX document of an image in `store` (`NAME`, `NAME@sha256:...` or
/// `sha256:...`), from the package manifest its Debian fix-up layer wrote.
pub fn image_sbom(store: &crate::Store, reference: &str) -> Result<Value, super::DebianError> {
    let (name, digest, packages) = image_packages(store, reference)?;
    let pkgs = packages.ok_or_else(|| {
        super::DebianError::Spec(format!(
            "sbom of {reference}: the image has none of /{}, /{} and /{} (it was built from no [debian], [npm] or [pypi] table)",
            super::SBOM_DATA,
            crate::npm::sbom::SBOM_DATA,
            crate::pypi::sbom::SBOM_DATA
        ))
    })?;
    Ok(spdx(&name, &digest, &pkgs))
}

/// An image's name, manifest digest and the Debian packages its fix-up layer
/// recorded, then the npm packages its npm layer recorded (`"ecosystem":
/// "npm"`); `None` when it was built from neither table.
pub fn image_packages(
    store: &crate::Store,
    reference: &str,
) -> Result<(String, String, Option<Vec<Value>>), super::DebianError> {
    let err = |msg: String| super::DebianError::Spec(format!("sbom of {reference}: {msg}"));
    let img = store.resolve(reference).map_err(|e| err(crate::errors::chain(&e)))?;
    let m = store.manifest(&img.manifest.digest).map_err(|e| err(crate::errors::chain(&e)))?;
    let npm = crate::npm::sbom::SBOM_DATA;
    let pypi = crate::pypi::sbom::SBOM_DATA;
    let want = |p: &str| p == super::SBOM_DATA || p == npm || p == pypi;
    let view = crate::layer::read::merged(store, &m.layers, &want).map_err(|e| err(crate::errors::chain(&e)))?;
    let digest = img.manifest.digest.to_string();
    let mut found = None;
    for file in [super::SBOM_DATA, npm, pypi] {
        if let Some(data) = view.get(file).and_then(|e| e.data.clone()) {
            let pkgs: Vec<Value> = serde_json::from_slice(&data).map_err(|e| err(format!("/{file}: {e}")))?;
            found.get_or_insert_with(Vec::new).extend(pkgs);
        }
    }
    Ok((img.name, digest, found))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn licenses_map() {
        assert_eq!(to_spdx("GPL-2+ or Artistic").as_deref(), Some("GPL-2.0-or-later OR Artistic-1.0"));
        assert_eq!(to_spdx("Expat").as_deref(), Some("MIT"));
        assert_eq!(to_spdx("custom-thing"), None);
    }
    #[test]
    fn document_shape() {
        let p = vec![
            json!({"name": "libstdc++6", "version": "1:2", "architecture": "amd64", "sha256": "ab", "license": "GPL-3+", "depends": ["libc6"]}),
            json!({"name": "libc6", "version": "2", "architecture": "amd64", "sha256": "cd", "depends": []}),
        ];
        let d = spdx("img", "sha256:00", &p);
        assert_eq!(d["packages"][0]["SPDXID"], "SPDXRef-deb-0-libstdc--6");
        assert_eq!(d["packages"][0]["licenseDeclared"], "GPL-3.0-or-later");
        assert_eq!(d["packages"][1]["licenseDeclared"], "NOASSERTION");
        assert_eq!(d["relationships"].as_array().unwrap().len(), 3);
    }
}
