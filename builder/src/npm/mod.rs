//! npm packages as pinned inputs (docs/npm.md): `resolve` (the only step
//! that asks the registry anything: packuments, then every tarball checked
//! against its sha512 integrity) writes a lock of install paths, tarball
//! paths and hashes; `materialize` builds the layer from that lock alone, as
//! `npm install --global --ignore-scripts --omit=dev` lays it out. Threats:
//! a hostile registry (integrity, bounds), package code at build time
//! (install scripts never run; packages that need a compiler are refused),
//! native code for the wrong machine (platform from the blueprint), drift.
#![forbid(unsafe_code)]
pub mod engines;
pub(crate) mod integrity;
pub(crate) mod layout;
pub(crate) mod parallel;
pub(crate) mod pick;
pub(crate) mod platform;
pub(crate) mod registry;
pub(crate) mod resolve;
pub mod sbom;
pub(crate) mod tarballs;

use crate::layer::tree::{clean_path, Entry, Tree, TreeError};
use crate::Digest;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use toml::Spanned;

#[derive(Debug, thiserror::Error)]
pub enum NpmError {
    #[error("[npm]: {0}")]
    Spec(String),
    #[error("fetching {url}: {msg}")]
    Http { url: String, msg: String },
    #[error("{url}: larger than {max} bytes; not read")]
    TooLarge { url: String, max: u64 },
    #[error("package {package}: {msg}")]
    Package { package: String, msg: String },
    #[error("package {package}: tarball does not match its pinned hash (expected {expected}, got {got}); refused")]
    Integrity { package: String, expected: String, got: String },
    #[error("package {package} has native code to compile (binding.gyp) and no prebuilt platform package for {arch}; moat runs no compiler")]
    NeedsCompiler { package: String, arch: String },
    #[error(transparent)]
    Tree(#[from] TreeError),
}

fn default_prefix() -> Spanned<String> {
    Spanned::new(0..0, "/usr/local".into())
}

/// The blueprint's `[npm]` table.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NpmSpec {
    /// `name@range` or `@scope/name@range` (a bare name means `latest`).
    pub packages: Vec<Spanned<String>>,
    /// Packages land in `PREFIX/lib/node_modules`, bins in `PREFIX/bin`.
    #[serde(default = "default_prefix")]
    pub prefix: Spanned<String>,
}

/// A package name npm's registry can hold (validate-npm-package-name,
/// including what old packages may have: capitals, `!~*'()`); never one
/// that could mean something else in a `node_modules` path.
pub(crate) fn valid_name(name: &str) -> bool {
    let ok_part = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && !p.starts_with('_')
            && p != "node_modules"
            && p != "favicon.ico"
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~!*'()".contains(&b))
    };
    name.len() <= 214
        && match name.strip_prefix('@') {
            Some(scoped) => scoped.split_once('/').is_some_and(|(sc, n)| ok_part(sc) && ok_part(n)),
            None => ok_part(name),
        }
}

/// Splits `name@spec` (`@scope/name@spec`); checks the name as npm does.
pub fn parse_request(s: &str) -> Result<(String, String), String> {
    let s = s.trim();
    let (name, spec) = match s.get(1..).and_then(|rest| rest.find('@')) {
        Some(i) => (&s[..i + 1], &s[i + 2..]),
        None => (s, "latest"),
    };
    let valid = valid_name(name);
    if !valid {
        return Err(format!("{name:?} is not a valid npm package name"));
    }
    pick::Want::parse(spec, None).or_else(|e| {
        if spec.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
            Ok(pick::Want::Exact(spec.into()))
        } else {
            Err(e)
        }
    })?;
    Ok((name.to_string(), spec.to_string()))
}

/// Every install path starts so.
const PREFIX_NM: &str = "node_modules/";

/// One pinned package.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LockedNpm {
    /// Install path below `PREFIX/lib` (`node_modules/a/node_modules/b`).
    pub path: String,
    pub name: String,
    pub version: String,
    /// Tarball path below the registry (or a full URL on another host).
    pub tarball: String,
    /// The registry's sha512 SRI, checked at lock and at build.
    pub integrity: String,
    /// sha256 of the tarball (the downloads cache's key).
    pub sha256: String,
    pub size: u64,
    /// Declares preinstall/install/postinstall (or a binding.gyp): never run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub install_script: bool,
    /// Bins from the registry's manifest (what npm links), name -> target.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bin: BTreeMap<String, String>,
    /// Man pages of a top-level package (linked into `PREFIX/share/man`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub man: Vec<String>,
    /// `engines.node` of the registry's manifest, checked against the
    /// image's Debian nodejs by `moat lock` and `moat lint` (engines.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engines_node: Option<String>,
    /// Packages its tarball ships in its own `node_modules` (bundled).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bundled: Vec<BundledNpm>,
}

/// A package that came inside another's tarball (`bundleDependencies`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BundledNpm {
    /// Path inside the package that ships it: `node_modules/a`.
    pub path: String,
    pub name: String,
    pub version: String,
    /// Declares install scripts (never run).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub install_script: bool,
    /// Its bins, linked into the `node_modules/.bin` beside it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bin: BTreeMap<String, String>,
}

/// The lock's `[npm]` table.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NpmLock {
    /// Sorted by path.
    pub packages: Vec<LockedNpm>,
}

/// (needs a compiler, declares install scripts) as npm's rebuild sees a
/// manifest: preinstall/install/postinstall scripts, and a `binding.gyp`
/// without install or preinstall script (unless `gypfile: false`) means
/// `node-gyp rebuild`, as does `gypfile: true`.
fn scripts_of(m: &Value, has_binding_gyp: bool) -> (bool, bool) {
    let s = |k: &str| m.pointer(&format!("/scripts/{k}")).and_then(Value::as_str).unwrap_or_default().to_string();
    let (pre, ins, post) = (s("preinstall"), s("install"), s("postinstall"));
    let gypfile = m.get("gypfile").and_then(Value::as_bool);
    let implicit = has_binding_gyp && gypfile != Some(false) && pre.is_empty() && ins.is_empty();
    let gyp = implicit || gypfile == Some(true) || [&pre, &ins].iter().any(|x| x.trim() == "node-gyp rebuild");
    (gyp, gyp || !(pre.is_empty() && ins.is_empty() && post.is_empty()))
}

/// Looks the spec up in the registry and returns the pinned tree; every
/// tarball is downloaded, checked and kept in the downloads cache.
pub fn resolve(spec: &NpmSpec, architecture: &str, cache: &Path) -> Result<NpmLock, NpmError> {
    let platform = platform::Platform::for_architecture(architecture)
        .ok_or_else(|| NpmError::Spec(format!("no npm platform for architecture {architecture:?}")))?;
    let requests: Vec<(String, String)> =
        spec.packages.iter().map(|p| parse_request(p.get_ref()).map_err(NpmError::Spec)).collect::<Result<_, _>>()?;
    if requests.is_empty() {
        return Err(NpmError::Spec("`packages` is empty".into()));
    }
    let mut client = registry::Client::new(registry::registry_base()?)?;
    let placed = resolve::resolve(&mut client, &requests, &platform)?;
    let client = &client;
    let packages = parallel::par_map(&placed, |p| {
        let id = format!("{}@{}", p.name, p.version);
        let url = p.manifest.pointer("/dist/tarball").and_then(Value::as_str).unwrap_or_default().to_string();
        let sri = p.manifest.pointer("/dist/integrity").and_then(Value::as_str).unwrap_or_default();
        let integrity = integrity::sha512_of(sri).ok_or_else(|| NpmError::Package {
            package: id.clone(),
            msg: "the registry gives no sha512 integrity for its tarball".into(),
        })?;
        let clean = !url.chars().any(|c| c.is_control() || c.is_whitespace());
        if !clean || !(url.starts_with("https://") || url.starts_with(&client.base)) {
            return Err(NpmError::Package {
                package: id,
                msg: format!("tarball URL {url:?} is not a clean https URL or a URL on the registry"),
            });
        }
        let bytes = tarballs::fetch_new(client, &id, &url, &integrity)?;
        let unpacked = layout::unpack(&id, &bytes)?;
        let (gyp, script) = scripts_of(&p.manifest, unpacked.files.contains_key("binding.gyp"));
        if gyp && !p.has_platform_optional {
            return Err(NpmError::NeedsCompiler { package: id, arch: architecture.into() });
        }
        let top = p.path.strip_prefix(PREFIX_NM).is_some_and(|rest| !rest.contains("/node_modules/"));
        let man = if top {
            let mans = layout::mans(&p.manifest).map_err(|msg| NpmError::Package { package: id.clone(), msg })?;
            mans.into_iter().map(|(_, rel)| rel).collect()
        } else {
            Vec::new()
        };
        let bundled = bundled_of(&id, &unpacked)?;
        let engines_node = p.manifest.pointer("/engines/node").and_then(Value::as_str).map(String::from);
        let sha256 = registry::remember(cache, &id, &bytes)?;
        Ok(LockedNpm {
            path: p.path.clone(),
            name: p.name.clone(),
            version: p.version.clone(),
            tarball: client.tarball_path(&url),
            integrity,
            sha256: sha256.hex().to_string(),
            size: bytes.len() as u64,
            install_script: script,
            bin: layout::bins(&p.name, &p.manifest),
            man,
            engines_node,
            bundled,
        })
    })?;
    Ok(NpmLock { packages })
}

/// The packages a tarball bundles, with their bins and install scripts; one
/// that needs a compiler and brings no optional (prebuilt) dependency is
/// refused as any other.
fn bundled_of(id: &str, u: &layout::Unpacked) -> Result<Vec<BundledNpm>, NpmError> {
    let mut out = Vec::new();
    for b in layout::bundled_packages(u) {
        let version = b.manifest.get("version").and_then(Value::as_str).unwrap_or_default().to_string();
        let (gyp, script) = scripts_of(&b.manifest, u.files.contains_key(&format!("{}/binding.gyp", b.path)));
        let prebuilt = b.manifest.get("optionalDependencies").and_then(Value::as_object).is_some_and(|o| !o.is_empty());
        if gyp && !prebuilt {
            let package = format!("{}@{} (bundled in {id})", b.name, version.escape_debug());
            return Err(NpmError::NeedsCompiler { package, arch: "any architecture".into() });
        }
        out.push(BundledNpm {
            bin: layout::bins(&b.name, &b.manifest),
            path: b.path,
            name: b.name,
            version,
            install_script: script,
        });
    }
    Ok(out)
}

/// The digest that keys the npm layer (every input and the layout code).
pub fn layer_key(spec: &NpmSpec, lock: &NpmLock) -> Digest {
    let v = serde_json::json!({"layout": LAYOUT_VERSION, "prefix": spec.prefix.get_ref(), "lock": lock});
    Digest::of(&crate::cjson::to_vec(&v).unwrap_or_default())
}

/// Bumped whenever `materialize` would lay the same lock out differently.
pub const LAYOUT_VERSION: u32 = 5;

/// Builds the npm layer's tree from the lock alone (downloading into the
/// cache as needed, every tarball checked against sha256 and sha512).
pub fn materialize(spec: &NpmSpec, lock: &NpmLock, cache: &Path) -> Result<Tree, NpmError> {
    let prefix = clean_path(spec.prefix.get_ref())?;
    let lib = if prefix.is_empty() { "lib".to_string() } else { format!("{prefix}/lib") };
    let bin = if prefix.is_empty() { "bin".to_string() } else { format!("{prefix}/bin") };
    let client = registry::Client::new(registry::registry_base()?)?;
    let mut tree = Tree::new();
    let mut taken = BTreeSet::new();
    tree.insert(Entry::dir(&format!("{lib}/node_modules"), 0o755, 0, 0))?;
    let unpacked = parallel::par_map(&lock.packages, |p| {
        let id = format!("{}@{}", p.name, p.version);
        check_locked(p, &id)?;
        tarballs::fetch_locked(&client, cache, &id, p)
    })?;
    for (p, unpacked) in lock.packages.iter().zip(&unpacked) {
        let id = format!("{}@{}", p.name, p.version);
        let rel = &p.path;
        let top = *rel == format!("node_modules/{}", p.name);
        let links = if top {
            layout::Links { bin_dir: bin.clone(), man_dir: Some(format!("{}share/man", with_slash(&prefix))) }
        } else {
            let parent_nm = &rel[..rel.len() - p.name.len() - 1];
            layout::Links { bin_dir: format!("{lib}/{parent_nm}/.bin"), man_dir: None }
        };
        let mans = p
            .man
            .iter()
            .map(|m| layout::mans(&serde_json::json!({ "man": [m] })).map(|v| v.into_iter().next()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|msg| NpmError::Package { package: id.clone(), msg: format!("lock: {msg}") })?;
        let mans: Vec<(String, String)> = mans.into_iter().flatten().collect();
        let bundled: Vec<(&str, &BTreeMap<String, String>)> =
            p.bundled.iter().map(|b| (b.path.as_str(), &b.bin)).collect();
        layout::place(&mut tree, &format!("{lib}/{rel}"), unpacked, &p.bin, &bundled, &mans, &links, &mut taken)?;
    }
    tree.insert(Entry::file(sbom::SBOM_DATA, sbom::manifest(lock, spec.prefix.get_ref()), 0o644))?;
    tree.add_parents();
    Ok(tree)
}

/// A locked package's name and install path, checked before anything is
/// fetched: a valid name, at a clean `node_modules/.../NAME` path.
fn check_locked(p: &LockedNpm, id: &str) -> Result<(), NpmError> {
    if !valid_name(&p.name) {
        return Err(NpmError::Package { package: id.into(), msg: "lock: not a valid npm package name".into() });
    }
    let rel = clean_path(&p.path)?;
    let ok_path = rel.starts_with(PREFIX_NM) && rel.ends_with(&format!("node_modules/{}", p.name));
    if !ok_path || rel != p.path {
        return Err(NpmError::Package {
            package: id.into(),
            msg: format!("lock: install path {:?} is not node_modules/.../{}", p.path, p.name),
        });
    }
    for b in &p.bundled {
        let ok = valid_name(&b.name)
            && clean_path(&b.path).is_ok_and(|c| c == b.path)
            && b.path.starts_with(PREFIX_NM)
            && b.path.ends_with(&format!("node_modules/{}", b.name));
        if !ok {
            return Err(NpmError::Package {
                package: id.into(),
                msg: format!("lock: bundled path {:?} is not node_modules/.../{:?}", b.path, b.name),
            });
        }
    }
    Ok(())
}

fn with_slash(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    }
}

/// Packages of a lock that declare install scripts (never run), as
/// `name@version (install path)`, bundled ones included.
pub fn with_install_scripts(lock: &NpmLock) -> Vec<String> {
    install_script_packages(lock).into_iter().map(|(id, path)| format!("{id} ({path})")).collect()
}

/// (`name@version`, install path below `PREFIX/lib`) of every locked or
/// bundled package that declares install scripts.
pub fn install_script_packages(lock: &NpmLock) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in &lock.packages {
        if p.install_script {
            out.push((format!("{}@{}", p.name, p.version), p.path.clone()));
        }
        for b in p.bundled.iter().filter(|b| b.install_script) {
            out.push((format!("{}@{}", b.name, b.version), format!("{}/{}", p.path, b.path)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn install_scripts_as_npm_rebuild_sees_them() {
        use serde_json::json;
        assert_eq!(scripts_of(&json!({}), false), (false, false));
        assert_eq!(scripts_of(&json!({}), true), (true, true), "binding.gyp alone: node-gyp rebuild");
        assert_eq!(scripts_of(&json!({"gypfile": false}), true), (false, false));
        assert_eq!(scripts_of(&json!({"scripts": {"install": "node-gyp-build"}}), true), (false, true));
        assert_eq!(scripts_of(&json!({"scripts": {"postinstall": "x"}}), true), (true, true));
        assert_eq!(scripts_of(&json!({"scripts": {"install": "node-gyp rebuild"}}), false), (true, true));
        assert_eq!(scripts_of(&json!({"scripts": {"prepare": "x", "test": "y"}}), false), (false, false));
    }
    #[test]
    fn requests_parse_like_npm() {
        assert_eq!(parse_request("@s/n@^1.2").unwrap(), ("@s/n".into(), "^1.2".into()));
        assert_eq!(parse_request("left-pad@1.3.0").unwrap(), ("left-pad".into(), "1.3.0".into()));
        assert_eq!(parse_request("left-pad").unwrap(), ("left-pad".into(), "latest".into()));
        assert_eq!(parse_request("@s/n").unwrap(), ("@s/n".into(), "latest".into()));
        assert_eq!(parse_request("JSONStream@1").unwrap().0, "JSONStream", "old packages have capitals");
        for bad in [
            "@s",
            "../x@1",
            "node_modules",
            "@s/.bin",
            "a/b",
            "a b",
            "x@git+https://h/r",
            "x@file:../y",
            "@s/n@npm:z@1",
        ] {
            assert!(parse_request(bad).is_err(), "{bad}");
        }
    }
}
