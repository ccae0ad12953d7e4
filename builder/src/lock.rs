//! The lock file (`BLUEPRINT.lock`): every input's sha256 and every output
//! digest, in a canonical, diff-friendly TOML. Guards against silent drift:
//! `build` refuses inputs that differ from it, `verify` proves outputs match it.
#![forbid(unsafe_code)]
use crate::digest::Digest;
use crate::textfile::{self, TextError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Version of the lock file format.
pub const LOCK_VERSION: u32 = 1;
/// Version of the layer/config byte format. Bumped whenever moat would write
/// different bytes for the same inputs (the moat-version part of determinism).
pub const FORMAT: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    /// A located error: `file:line:column: reason`.
    #[error("{0}")]
    At(textfile::At),
    #[error("{0}: no lock file; run `moat lock {1}` first")]
    Missing(PathBuf, PathBuf),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub version: u32,
    /// Layer byte format (see [`FORMAT`]).
    pub format: u32,
    pub name: String,
    /// Digest of the blueprint's parsed content (comments do not count).
    pub blueprint: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<LockedBase>,
    #[serde(default, rename = "input", skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<LockedInput>,
    /// Digest of the `[debian]` table the package set was resolved for; a
    /// changed table is re-resolved by `moat lock` even without `--update`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debian_spec: Option<Digest>,
    /// Pinned Debian package set (present when the blueprint has `[debian]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debian: Option<toml::Value>,
    /// Digest of the `[npm]` table and architecture the tree was resolved for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub npm_spec: Option<Digest>,
    /// Pinned npm tree (present when the blueprint has `[npm]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub npm: Option<toml::Value>,
    /// Digest of the `[pypi]` table and architecture the set was resolved for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pypi_spec: Option<Digest>,
    /// Pinned PyPI wheels (present when the blueprint has `[pypi]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pypi: Option<toml::Value>,
    #[serde(default, rename = "layer")]
    pub layers: Vec<LockedLayer>,
    pub image: LockedImage,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedBase {
    pub image: String,
    pub manifest: Digest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedInput {
    /// `layer[i].entry[j]` in the blueprint.
    pub at: String,
    pub source: String,
    pub kind: String,
    pub sha256: Digest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedLayer {
    pub name: String,
    pub diff_id: Digest,
    pub digest: Digest,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedImage {
    pub config: Digest,
    pub manifest: Digest,
    pub manifest_size: u64,
}

/// Digest of a `[debian]` table's content.
pub fn debian_spec_digest(spec: &crate::debian::DebianSpec) -> Digest {
    Digest::of(&crate::cjson::to_vec(spec).unwrap_or_default())
}

/// Digest of what an npm tree is resolved for: the `[npm]` table and the
/// blueprint's architecture (which selects platform packages).
pub fn npm_spec_digest(spec: &crate::npm::NpmSpec, architecture: &str) -> Digest {
    let v = serde_json::json!({"npm": spec, "architecture": architecture});
    Digest::of(&crate::cjson::to_vec(&v).unwrap_or_default())
}

/// Digest of what a PyPI set is resolved for: the `[pypi]` table and the
/// blueprint's architecture (which selects platform wheels).
pub fn pypi_spec_digest(spec: &crate::pypi::PypiSpec, architecture: &str) -> Digest {
    let v = serde_json::json!({"pypi": spec, "architecture": architecture});
    Digest::of(&crate::cjson::to_vec(&v).unwrap_or_default())
}

impl Lock {
    /// Whether this lock's Debian package set was resolved for `spec`.
    pub fn blueprint_debian_matches(&self, spec: &crate::debian::DebianSpec) -> bool {
        self.debian_spec.as_ref() == Some(&debian_spec_digest(spec))
    }

    pub fn read(path: &Path, blueprint: &Path) -> Result<Lock, LockError> {
        let text = match textfile::read(path, textfile::MAX_TEXT) {
            Ok(t) => t,
            Err(TextError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(LockError::Missing(path.into(), blueprint.into()))
            }
            Err(TextError::Read { source, .. }) => return Err(LockError::Io { path: path.into(), source }),
            Err(TextError::TooLarge { max, .. }) => {
                return Err(LockError::Parse { path: path.into(), msg: format!("larger than {max} bytes; not read") })
            }
            Err(TextError::At(at)) => return Err(LockError::At(at)),
        };
        let lock: Lock = textfile::parse_toml(&text, &path.display().to_string()).map_err(LockError::At)?;
        if lock.version != LOCK_VERSION {
            return Err(LockError::Parse {
                path: path.into(),
                msg: format!("lock version {} is not supported (this moat writes {LOCK_VERSION})", lock.version),
            });
        }
        Ok(lock)
    }

    /// Canonical text: fixed field order, a header comment, trailing newline.
    pub fn to_text(&self) -> String {
        let body = toml::to_string_pretty(self).unwrap_or_default();
        format!("# Written by `moat lock`. Do not edit: every digest here is checked by `moat build` and `moat verify`.\n{body}")
    }

    /// Writes the lock atomically beside the blueprint.
    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        // 0600: the mode lock files have always been written with (a temp
        // file's); git records 0644 whatever the mode on disk.
        crate::fsio::write(path, self.to_text().as_bytes(), 0o600)
            .map_err(|source| LockError::Io { path: path.into(), source })
    }
}

/// The first way `actual` departs from `expected`, for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    Blueprint,
    Format {
        locked: u32,
        ours: u32,
    },
    Base {
        locked: Option<Digest>,
        now: Option<Digest>,
    },
    Input {
        at: String,
        source: String,
        locked: Option<Digest>,
        now: Option<Digest>,
    },
    Debian,
    Npm,
    Pypi,
    LayerCount {
        locked: usize,
        now: usize,
    },
    Layer {
        index: usize,
        name: String,
        locked: Digest,
        now: Digest,
    },
    /// Same uncompressed content (diff_id), different gzip bytes.
    Compression {
        index: usize,
        name: String,
        locked: Digest,
        now: Digest,
    },
    Config {
        locked: Digest,
        now: Digest,
    },
    Manifest {
        locked: Digest,
        now: Digest,
    },
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::Blueprint => write!(f, "the blueprint changed since it was locked (run `moat lock`)"),
            Difference::Format { locked, ours } => write!(
                f,
                "the lock was written for layer format {locked}; this moat writes format {ours} (run `moat lock`)"
            ),
            Difference::Base { locked, now } => write!(f, "base image differs: locked {locked:?}, now {now:?}"),
            Difference::Input { at, source, locked, now } => match (locked, now) {
                (Some(l), Some(n)) => write!(f, "input {source} ({at}) changed: locked {l}, now {n}"),
                (None, _) => write!(f, "input {source} ({at}) is not in the lock (run `moat lock`)"),
                (_, None) => write!(f, "input {source} ({at}) is in the lock but not in the blueprint"),
            },
            Difference::Debian => write!(f, "the Debian package set differs from the lock"),
            Difference::Npm => write!(f, "the npm package tree differs from the lock"),
            Difference::Pypi => write!(f, "the PyPI wheel set differs from the lock"),
            Difference::LayerCount { locked, now } => write!(f, "layer count differs: locked {locked}, built {now}"),
            Difference::Layer { index, name, locked, now } => {
                write!(f, "layer {index} ({name}) differs: locked diff_id {locked}, built {now}")
            }
            Difference::Compression { index, name, locked, now } => write!(
                f,
                "layer {index} ({name}) has the locked content but compresses to other bytes: locked {locked}, \
                 built {now} (the gzip backend differs from the one that wrote the lock)"
            ),
            Difference::Config { locked, now } => write!(f, "config differs: locked {locked}, built {now}"),
            Difference::Manifest { locked, now } => write!(f, "manifest differs: locked {locked}, built {now}"),
        }
    }
}

/// Compares inputs only (what `build` checks before doing archive work).
pub fn input_difference(expected: &Lock, actual_inputs: &[LockedInput]) -> Option<Difference> {
    let n = expected.inputs.len().max(actual_inputs.len());
    for i in 0..n {
        let (l, a) = (expected.inputs.get(i), actual_inputs.get(i));
        if l.map(|x| (&x.at, &x.sha256)) != a.map(|x| (&x.at, &x.sha256)) {
            let pick = a.or(l).expect("one side exists");
            return Some(Difference::Input {
                at: pick.at.clone(),
                source: pick.source.clone(),
                locked: l.map(|x| x.sha256.clone()),
                now: a.map(|x| x.sha256.clone()),
            });
        }
    }
    None
}

/// The first difference between a lock and a fresh build's lock.
pub fn first_difference(expected: &Lock, actual: &Lock) -> Option<Difference> {
    if expected.format != actual.format {
        return Some(Difference::Format { locked: expected.format, ours: actual.format });
    }
    if expected.blueprint != actual.blueprint {
        return Some(Difference::Blueprint);
    }
    let bm = |b: &Option<LockedBase>| b.as_ref().map(|b| b.manifest.clone());
    if bm(&expected.base) != bm(&actual.base) {
        return Some(Difference::Base { locked: bm(&expected.base), now: bm(&actual.base) });
    }
    if let Some(d) = input_difference(expected, &actual.inputs) {
        return Some(d);
    }
    if expected.debian != actual.debian {
        return Some(Difference::Debian);
    }
    if expected.npm != actual.npm {
        return Some(Difference::Npm);
    }
    if expected.pypi != actual.pypi {
        return Some(Difference::Pypi);
    }
    for (i, (l, a)) in expected.layers.iter().zip(&actual.layers).enumerate() {
        if l.diff_id != a.diff_id {
            return Some(Difference::Layer {
                index: i,
                name: a.name.clone(),
                locked: l.diff_id.clone(),
                now: a.diff_id.clone(),
            });
        }
        if l.digest != a.digest {
            return Some(Difference::Compression {
                index: i,
                name: a.name.clone(),
                locked: l.digest.clone(),
                now: a.digest.clone(),
            });
        }
    }
    if expected.layers.len() != actual.layers.len() {
        return Some(Difference::LayerCount { locked: expected.layers.len(), now: actual.layers.len() });
    }
    if expected.image.config != actual.image.config {
        return Some(Difference::Config { locked: expected.image.config.clone(), now: actual.image.config.clone() });
    }
    if expected.image.manifest != actual.image.manifest {
        return Some(Difference::Manifest {
            locked: expected.image.manifest.clone(),
            now: actual.image.manifest.clone(),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock_with(diff_id: &[u8], digest: &[u8]) -> Lock {
        Lock {
            version: LOCK_VERSION,
            format: FORMAT,
            name: "x".into(),
            blueprint: Digest::of(b"bp"),
            base: None,
            inputs: Vec::new(),
            debian_spec: None,
            debian: None,
            npm_spec: None,
            npm: None,
            pypi_spec: None,
            pypi: None,
            layers: vec![LockedLayer {
                name: "app".into(),
                diff_id: Digest::of(diff_id),
                digest: Digest::of(digest),
                size: 1,
            }],
            image: LockedImage { config: Digest::of(b"c"), manifest: Digest::of(b"m"), manifest_size: 1 },
        }
    }

    #[test]
    fn content_and_compression_differences_are_told_apart() {
        let locked = lock_with(b"tar", b"gz");
        assert_eq!(first_difference(&locked, &lock_with(b"tar", b"gz")), None);
        let d = first_difference(&locked, &lock_with(b"tar", b"other gz")).unwrap();
        assert!(matches!(d, Difference::Compression { index: 0, .. }), "{d:?}");
        assert!(d.to_string().contains("gzip backend"), "{d}");
        let d = first_difference(&locked, &lock_with(b"other tar", b"other gz")).unwrap();
        assert!(matches!(d, Difference::Layer { index: 0, .. }), "{d:?}");
    }
}
