//! Debian packages as pinned inputs: `resolve` (the only step that looks
//! anything up: signed InRelease -> checked Packages -> dependency closure)
//! writes a lock of pool paths and sha256s; `plan_layers` and `materialize`
//! build only from that lock. Threats: a hostile mirror (signature, hashes),
//! package code at build time (no maintainer scripts), drifting inputs.
#![forbid(unsafe_code)]
pub(crate) mod control;
pub(crate) mod extract;
pub(crate) mod fixups;
pub(crate) mod layers;
pub(crate) mod mirror;
pub(crate) mod release;
pub(crate) mod resolve;
pub mod sbom;

use crate::layer::tree::{Entry, Tree, TreeError};
use crate::Digest;
use extract::DebContents;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error("{0}")]
    Mirror(String),
    #[error("fetching {url}: {msg}")]
    Http { url: String, msg: String },
    #[error("InRelease signature check failed: {0}")]
    Signature(String),
    #[error("keyring: {0}")]
    Keyring(String),
    #[error("{url} does not match the signed Release: expected {expected}, got {got}")]
    IndexMismatch { url: String, expected: String, got: String },
    #[error("parsing {what}: {msg}")]
    Parse { what: String, msg: String },
    #[error("[debian]: {0}")]
    Spec(String),
    #[error("package {package} is excluded but required: {}", chain.join(" -> "))]
    Excluded { package: String, chain: Vec<String> },
    #[error("cannot satisfy dependency {dep:?}{}", if chain.is_empty() { String::new() } else { format!(" (needed by {})", chain.join(" -> ")) })]
    Unresolvable { dep: String, chain: Vec<String> },
    #[error("{what}: hash mismatch (expected {expected}, got {got}); the file was discarded")]
    HashMismatch { what: String, expected: String, got: String },
    #[error("package {package}: {msg}")]
    Deb { package: String, msg: String },
    #[error("{path}: {msg}")]
    Io { path: String, msg: String },
    #[error(transparent)]
    Tree(#[from] TreeError),
}

/// A pinned keyring file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyringSpec {
    /// Relative to the blueprint's directory, or absolute.
    pub path: PathBuf,
    /// sha256 (hex) of the keyring file.
    pub sha256: String,
}

fn default_components() -> Vec<String> {
    vec!["main".into()]
}
fn default_arch() -> String {
    "amd64".into()
}
fn yes() -> bool {
    true
}

/// The blueprint's `[debian]` table.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DebianSpec {
    /// Codename, e.g. `bookworm` (pin codenames, not `stable`).
    pub suite: String,
    /// Suites merged into one index (highest version wins). Default: SUITE,
    /// SUITE-updates and SUITE-security, the last two skipped when no mirror has them.
    #[serde(default)]
    pub suites: Option<Vec<String>>,
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    #[serde(default = "default_arch")]
    pub architecture: String,
    pub packages: Vec<String>,
    /// Name globs that must never be installed (toolchains always are).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Install the `Essential: yes` set (nobody declares a dependency on it).
    #[serde(default = "yes")]
    pub essential: bool,
    /// Default: the host's /usr/share/keyrings/debian-archive-keyring.gpg.
    #[serde(default)]
    pub keyring: Option<KeyringSpec>,
    /// Bound on the number of Debian layers, fix-up layer included.
    #[serde(default)]
    pub max_layers: Option<usize>,
}

/// One suite's signed Release, as seen at lock time.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LockedSuite {
    pub suite: String,
    /// sha256 of the verified InRelease file.
    pub inrelease_sha256: String,
}

/// One pinned package file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// The suite it was resolved from (selects the mirror at build time).
    pub suite: String,
    /// Pool path relative to the mirror root.
    pub path: String,
    pub sha256: String,
    pub size: u64,
    /// Installed-Size in KiB (layer grouping).
    #[serde(default)]
    pub installed_size: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub essential: bool,
    /// Locked packages this one depends on (layer grouping, SBOM).
    #[serde(default)]
    pub depends: Vec<String>,
}

/// The lock's `[debian]` table.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DebianLock {
    pub suites: Vec<LockedSuite>,
    /// Sorted by name.
    pub packages: Vec<LockedPackage>,
}

/// The default keyring when the blueprint names none.
pub const HOST_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

fn keyring(spec: &DebianSpec, dir: &Path) -> Result<Vec<sequoia_openpgp::Cert>, DebianError> {
    let (path, want) = match &spec.keyring {
        Some(k) => (dir.join(&k.path), Some(k.sha256.to_ascii_lowercase())),
        None => (PathBuf::from(HOST_KEYRING), None),
    };
    let bytes = std::fs::read(&path).map_err(|e| {
        DebianError::Keyring(format!(
            "{}: {e} (set [debian] keyring = {{ path, sha256 }} or install debian-archive-keyring)",
            path.display()
        ))
    })?;
    if let Some(w) = want {
        let got = hex::encode(Sha256::digest(&bytes));
        if got != w {
            return Err(DebianError::Keyring(format!(
                "{}: sha256 {got} does not match the pinned {w}",
                path.display()
            )));
        }
    }
    release::load_keyring(&bytes)
}

/// Looks up `spec` on the mirror(s) and returns the pinned closure.
pub fn resolve(spec: &DebianSpec, blueprint_dir: &Path) -> Result<DebianLock, DebianError> {
    if spec.packages.is_empty() {
        return Err(DebianError::Spec("`packages` is empty".into()));
    }
    let certs = keyring(spec, blueprint_dir)?;
    let (suites, optional): (Vec<String>, bool) = match &spec.suites {
        Some(s) => (s.clone(), false),
        None => (vec![spec.suite.clone(), format!("{}-updates", spec.suite), format!("{}-security", spec.suite)], true),
    };
    let f = mirror::Fetcher::new()?;
    let mut index = resolve::Index::default();
    let mut locked_suites = Vec::new();
    for (i, suite) in suites.iter().enumerate() {
        let extra = optional && i > 0;
        let m = match mirror::mirror_from_host(suite) {
            Ok(m) => m,
            Err(_) if extra => {
                tracing::warn!(event = "debian_suite_skipped", suite = %suite, reason = "no mirror configured", "skipping suite");
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some((rel, sha)) = release::fetch_release(&f, &m, suite, &certs)? else {
            if extra {
                tracing::warn!(event = "debian_suite_skipped", suite = %suite, mirror = %m, reason = "no InRelease", "skipping suite");
                continue;
            }
            return Err(DebianError::Http {
                url: format!("{m}/dists/{suite}/InRelease"),
                msg: "not found (404)".into(),
            });
        };
        for c in &spec.components {
            let bytes = release::fetch_packages(&f, &m, suite, &rel, c, &spec.architecture)?;
            let text = String::from_utf8(bytes)
                .map_err(|_| DebianError::Parse { what: format!("{suite}/{c} Packages"), msg: "not UTF-8".into() })?;
            index.add(&text, suite, &spec.architecture, &format!("{suite}/{c} Packages"))?;
        }
        locked_suites.push(LockedSuite { suite: suite.clone(), inrelease_sha256: sha });
    }
    index.finish();
    let ex = resolve::Excluder::new(&spec.exclude)?;
    let packages = resolve::resolve(&index, &spec.packages, spec.essential, &ex)?;
    Ok(DebianLock { suites: locked_suites, packages })
}

/// One Debian layer of the image.
#[derive(Debug, Clone, PartialEq)]
pub struct DebLayer {
    pub name: String,
    /// Covers every input (package sha256s, fix-up code version).
    pub key: Digest,
    /// Package names in this layer (all of them for the fix-up layer).
    pub packages: Vec<String>,
    /// The last layer: dpkg database, CA bundle, alternatives, users.
    pub fixups: bool,
}

fn layer_key(name: &str, fixups: bool, pkgs: &[&LockedPackage]) -> Digest {
    let list: Vec<_> = pkgs.iter().map(|p| serde_json::json!([p.name, p.version, p.architecture, p.sha256])).collect();
    let v = serde_json::json!({"code": fixups::FIXUP_VERSION, "name": name, "fixups": fixups, "packages": list});
    Digest::of(&crate::cjson::to_vec(&v).unwrap_or_default())
}

/// Groups the lock into layers (cheap: reads only the lock).
pub fn plan_layers(spec: &DebianSpec, lock: &DebianLock) -> Result<Vec<DebLayer>, DebianError> {
    let by: HashMap<&str, &LockedPackage> = lock.packages.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut out = Vec::new();
    for g in layers::group(lock, spec.max_layers.unwrap_or(layers::DEFAULT_MAX_LAYERS)) {
        let pkgs: Vec<&LockedPackage> = g.packages.iter().filter_map(|n| by.get(n.as_str()).copied()).collect();
        out.push(DebLayer { key: layer_key(&g.name, false, &pkgs), name: g.name, packages: g.packages, fixups: false });
    }
    let all: Vec<&LockedPackage> = lock.packages.iter().collect();
    out.push(DebLayer {
        key: layer_key("debian-fixups", true, &all),
        name: "debian-fixups".into(),
        packages: lock.packages.iter().map(|p| p.name.clone()).collect(),
        fixups: true,
    });
    Ok(out)
}

fn memo() -> &'static Mutex<HashMap<String, Arc<DebContents>>> {
    static M: OnceLock<Mutex<HashMap<String, Arc<DebContents>>>> = OnceLock::new();
    M.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Drops the in-memory extraction cache (kept between layers of one build).
pub fn clear_memo() {
    if let Ok(mut m) = memo().lock() {
        m.clear();
    }
}

/// Fetches (through the cache), verifies and unpacks packages, two at a time.
fn contents(pkgs: &[&LockedPackage]) -> Result<Vec<Arc<DebContents>>, DebianError> {
    let todo: Vec<&LockedPackage> = {
        let m = memo().lock().map_err(|_| DebianError::Spec("extraction cache poisoned".into()))?;
        pkgs.iter().filter(|p| !m.contains_key(&p.sha256)).copied().collect()
    };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let first_err: Mutex<Option<DebianError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut fetcher = None;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(p) = todo.get(i) else { break };
                    let r = mirror::load(p, &mut fetcher).and_then(|b| extract::extract(&p.name, &b));
                    match r {
                        Ok(c) => {
                            if let Ok(mut m) = memo().lock() {
                                m.insert(p.sha256.clone(), Arc::new(c));
                            }
                        }
                        Err(e) => {
                            if let Ok(mut fe) = first_err.lock() {
                                fe.get_or_insert(e);
                            }
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().ok().flatten() {
        return Err(e);
    }
    let m = memo().lock().map_err(|_| DebianError::Spec("extraction cache poisoned".into()))?;
    pkgs.iter()
        .map(|p| m.get(&p.sha256).cloned().ok_or_else(|| DebianError::Spec(format!("{} was not extracted", p.name))))
        .collect()
}

struct DirsOf<'a>(&'a [Arc<DebContents>]);
impl fixups::DirMeta for DirsOf<'_> {
    fn dir_meta(&self, path: &str) -> Option<(u32, u32, u32)> {
        self.0.iter().find_map(|c| c.entries.get(path).filter(|e| e.is_dir()).map(|e| (e.mode, e.uid, e.gid)))
    }
}

/// Builds one layer's tree from the lock (downloading into the cache as needed).
pub fn materialize(layer: &DebLayer, lock: &DebianLock) -> Result<Tree, DebianError> {
    let by: HashMap<&str, &LockedPackage> = lock.packages.iter().map(|p| (p.name.as_str(), p)).collect();
    let pkgs: Vec<&LockedPackage> = layer
        .packages
        .iter()
        .map(|n| {
            by.get(n.as_str()).copied().ok_or_else(|| {
                DebianError::Spec(format!("layer {} names {n}, which the lock does not hold", layer.name))
            })
        })
        .collect::<Result<_, _>>()?;
    if layer.fixups {
        let all: Vec<&LockedPackage> = lock.packages.iter().collect();
        let cs = contents(&all)?;
        let pairs: Vec<(&LockedPackage, &DebContents)> =
            all.iter().copied().zip(cs.iter().map(|c| c.as_ref())).collect();
        return fixups::fixup_tree(&pairs);
    }
    let cs = contents(&pkgs)?;
    let mut t = Tree::new();
    let mut roots = std::collections::BTreeSet::new();
    for c in &cs {
        for e in c.entries.values() {
            t.insert(e.clone())?;
        }
        roots.extend(c.merged_roots.iter().cloned());
    }
    for (link, target) in extract::ROOT_LINKS {
        if roots.contains(*link) {
            t.insert(Entry::symlink(link, target))?;
        }
    }
    fixups::add_parents_from(&mut t, &DirsOf(&cs));
    t.check_hardlinks()?;
    Ok(t)
}

pub use extract::unpack_check;
/// The package manifest inside an image, for `moat sbom`.
pub use fixups::SBOM_DATA;
