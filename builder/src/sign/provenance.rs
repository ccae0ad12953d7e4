//! SLSA provenance v1 of an image, derived from its blueprint's lock alone:
//! every pinned input (base image, Debian suite and package, local tree, URL
//! tarball) is a resolved dependency, the build type names moat's layer
//! format, and nothing about the host (time, mirror, paths) is in it. So a
//! rebuild regenerates the same bytes, which is how `moat verify` catches an
//! attested statement that does not describe what the lock builds.
//! Guards against provenance that claims inputs the build did not use.
#![forbid(unsafe_code)]
use super::envelope::Statement;
use crate::digest::Digest;
use crate::lock::{self, Lock};
use serde_json::{json, Value};

/// SLSA provenance v1 predicate type.
pub const PREDICATE_SLSA: &str = "https://slsa.dev/provenance/v1";
/// SPDX document predicate type (what `moat sbom` writes).
pub const PREDICATE_SPDX: &str = "https://spdx.dev/Document";
/// The signature statement of a bundle (cosign's).
pub const PREDICATE_COSIGN_SIGN: &str = "https://sigstore.dev/cosign/sign/v1";

/// The build type: a moat blueprint built with this layer byte format.
pub fn build_type() -> String {
    format!("https://moat.dev/buildtypes/blueprint/v1?layer-format={}", lock::FORMAT)
}

/// The builder's id: moat at this version (part of the determinism contract).
pub fn builder_id() -> String {
    format!("https://moat.dev/moat@{}", env!("CARGO_PKG_VERSION"))
}

/// The provenance statement of the image `lock` pins. `lock_bytes` is the
/// lock file as committed; `blueprint` the blueprint's path relative to its
/// project (what a reader finds in the repository).
/// Err when the lock's `[debian]` table does not read as a package set (a
/// statement without those dependencies would understate the inputs).
pub fn statement(lock: &Lock, lock_bytes: &[u8], blueprint: &str) -> Result<Statement, String> {
    let mut deps: Vec<Value> = Vec::new();
    if let Some(b) = &lock.base {
        deps.push(json!({"name": "base", "uri": format!("oci://{}", b.image), "digest": {"sha256": b.manifest.hex()}}));
    }
    for i in &lock.inputs {
        deps.push(json!({
            "name": i.at,
            "uri": i.source,
            "digest": {"sha256": i.sha256.hex()},
            "annotations": {"kind": i.kind},
        }));
    }
    let debian = lock
        .debian
        .as_ref()
        .map(|v| v.clone().try_into::<crate::debian::DebianLock>())
        .transpose()
        .map_err(|e| format!("its [debian] table is not a package set: {e}"))?;
    if let Some(deb) = debian {
        for s in &deb.suites {
            deps.push(json!({
                "name": format!("debian/{}/InRelease", s.suite),
                "uri": format!("pkg:deb/debian/InRelease?suite={}", s.suite),
                "digest": {"sha256": s.inrelease_sha256},
            }));
        }
        for p in &deb.packages {
            deps.push(json!({
                "name": p.path,
                "uri": format!("pkg:deb/debian/{}@{}?arch={}", p.name, p.version, p.architecture),
                "digest": {"sha256": p.sha256},
                "annotations": {"suite": p.suite},
            }));
        }
    }
    let predicate = json!({
        "buildDefinition": {
            "buildType": build_type(),
            "externalParameters": {
                "blueprint": {"path": blueprint, "digest": {"sha256": lock.blueprint.hex()}},
                "lock": {"digest": {"sha256": Digest::of(lock_bytes).hex()}},
            },
            "internalParameters": {"layerFormat": lock.format, "lockVersion": lock.version},
            "resolvedDependencies": deps,
        },
        "runDetails": {
            "builder": {"id": builder_id()},
            "metadata": {},
            "byproducts": lock.layers.iter().map(|l| json!({
                "name": format!("layer {}", l.name),
                "digest": {"sha256": l.digest.hex()},
            })).collect::<Vec<_>>(),
        },
    });
    Ok(Statement::about(&lock.name, &lock.image.manifest, PREDICATE_SLSA, predicate))
}

/// The first JSON pointer at which two statements differ (for messages).
pub fn first_difference(a: &Value, b: &Value) -> Option<String> {
    fn walk(a: &Value, b: &Value, at: String) -> Option<String> {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: std::collections::BTreeSet<_> = x.keys().chain(y.keys()).collect();
                keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => walk(p, q, format!("{at}/{k}")),
                    _ => Some(format!("{at}/{k}")),
                })
            }
            (Value::Array(x), Value::Array(y)) => {
                if x.len() != y.len() {
                    return Some(format!("{at} ({} entries, not {})", x.len(), y.len()));
                }
                x.iter().zip(y).enumerate().find_map(|(i, (p, q))| walk(p, q, format!("{at}/{i}")))
            }
            _ => (a != b).then(|| if at.is_empty() { "/".into() } else { at }),
        }
    }
    walk(a, b, String::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{LockedBase, LockedImage, LockedInput, LockedLayer};

    fn lock() -> Lock {
        Lock {
            version: 1,
            format: lock::FORMAT,
            name: "agent".into(),
            blueprint: Digest::of(b"bp"),
            base: Some(LockedBase { image: "registry.example/debian@sha256:00".into(), manifest: Digest::of(b"base") }),
            inputs: vec![LockedInput {
                at: "layer[0].entry[0]".into(),
                source: "files/etc".into(),
                kind: "tree".into(),
                sha256: Digest::of(b"tree"),
            }],
            debian_spec: None,
            debian: None,
            npm_spec: None,
            npm: None,
            pypi_spec: None,
            pypi: None,
            layers: vec![LockedLayer {
                name: "files".into(),
                diff_id: Digest::of(b"d"),
                digest: Digest::of(b"l"),
                size: 1,
            }],
            image: LockedImage { config: Digest::of(b"c"), manifest: Digest::of(b"m"), manifest_size: 2 },
        }
    }

    #[test]
    fn every_pinned_input_is_a_dependency_and_the_bytes_are_stable() {
        let a = statement(&lock(), b"lock text", "blueprints/agent.toml").unwrap();
        assert!(a.names(&Digest::of(b"m")));
        let deps = a.predicate.pointer("/buildDefinition/resolvedDependencies").unwrap().as_array().unwrap();
        assert_eq!(deps.len(), 2);
        assert_eq!(deps[1]["digest"]["sha256"], Digest::of(b"tree").hex());
        assert!(a.predicate["buildDefinition"]["buildType"].as_str().unwrap().ends_with("layer-format=2"));
        assert_eq!(a.to_bytes(), statement(&lock(), b"lock text", "blueprints/agent.toml").unwrap().to_bytes());
        let b = statement(&lock(), b"other lock", "blueprints/agent.toml").unwrap();
        let mut bad = lock();
        bad.debian = Some(toml::Value::String("not a table".into()));
        assert!(statement(&bad, b"x", "b").unwrap_err().contains("[debian]"));
        let (va, vb) = (serde_json::to_value(&a).unwrap(), serde_json::to_value(&b).unwrap());
        assert_eq!(
            first_difference(&va, &vb).as_deref(),
            Some("/predicate/buildDefinition/externalParameters/lock/digest/sha256")
        );
    }
}
