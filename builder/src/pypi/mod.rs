//! PyPI wheels as pinned inputs (docs/pypi.md): `resolve` (the only step
//! that asks the index anything: project pages, metadata, then every chosen
//! wheel checked against the index's sha256) writes a lock of file names,
//! URL paths and hashes; `materialize` builds the layer from that lock
//! alone, as `pip install --no-deps --require-hashes --only-binary :all:
//! --no-compile` lays it out. Threats: a hostile index (hashes, bounds),
//! package code at build time (wheels only: no sdist build ever runs),
//! native code for the wrong machine (tags from the blueprint), drift.
#![forbid(unsafe_code)]
pub(crate) mod image;
pub(crate) mod index;
pub(crate) mod install;
pub(crate) mod metadata;
pub(crate) mod resolve;
pub mod sbom;
pub(crate) mod target;
pub(crate) mod wheel;

use crate::downloads::Pin;
use crate::layer::tree::{Entry, Tree, TreeError};
use crate::Digest;
pub use image::ImagePackage;
use pep508_rs::{PackageName, Requirement, VersionOrUrl};
use std::path::Path;
use std::str::FromStr;
use toml::Spanned;

#[derive(Debug, thiserror::Error)]
pub enum PypiError {
    #[error("[pypi]: {0}")]
    Spec(String),
    #[error("fetching {url}: {msg}")]
    Http { url: String, msg: String },
    #[error("{url}: larger than {max} bytes; not read")]
    TooLarge { url: String, max: u64 },
    #[error("package {package}: {msg}")]
    Package { package: String, msg: String },
    #[error(
        "package {package}: wheel {file} does not match its pinned sha256 (expected {expected}, got {got}); refused"
    )]
    Integrity { package: String, file: String, expected: String, got: String },
    #[error("package {package}: only source distributions (sdists) fit (newest: {versions}); moat installs wheels only and builds nothing")]
    SdistOnly { package: String, versions: String },
    #[error(transparent)]
    Tree(#[from] TreeError),
}

fn default_python() -> Spanned<String> {
    Spanned::new(0..0, "/usr/bin/python3".into())
}
fn default_glibc() -> Spanned<String> {
    Spanned::new(0..0, "2.36".into())
}

/// The blueprint's `[pypi]` table.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PypiSpec {
    /// PEP 508 requirements without URLs: `name==1.0`, `name[extra]>=1,<2`.
    pub packages: Vec<Spanned<String>>,
    /// The image's interpreter version, `3.N` (or `3.N.M` for
    /// `python_full_version` markers): selects wheel tags and markers.
    pub python_version: Spanned<String>,
    /// The interpreter path in the image (the scripts' `#!`); never run.
    #[serde(default = "default_python")]
    pub python: Spanned<String>,
    /// `PREFIX/lib/python3.N/site-packages` or `dist-packages`; scripts go to `PREFIX/bin`.
    pub target: Spanned<String>,
    /// The image's glibc, `2.N`: the newest `manylinux_2_N` wheels accepted.
    #[serde(default = "default_glibc")]
    pub glibc: Spanned<String>,
    /// `target` is a virtual environment's: `.data/headers` go to
    /// `PREFIX/include/site/python3.N/NAME` (else `PREFIX/include/python3.N/NAME`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub venv: bool,
}

/// A `packages` entry parsed; an error says what is wrong with it.
pub fn parse_request(s: &str) -> Result<Requirement, String> {
    let r = Requirement::from_str(s.trim()).map_err(|e| format!("{s:?} is not a PEP 508 requirement: {e}"))?;
    if matches!(r.version_or_url, Some(VersionOrUrl::Url(_))) {
        return Err(format!("{s:?} names a URL; [pypi] installs index wheels only"));
    }
    Ok(r)
}

/// Checks a `[pypi]` table; an error names the key (its span) and what is wrong.
pub fn check(spec: &PypiSpec, architecture: &str) -> Result<(), (std::ops::Range<usize>, String)> {
    for p in &spec.packages {
        parse_request(p.get_ref()).map_err(|m| (p.span(), m))?;
    }
    let pv = &spec.python_version;
    let (py, _) = target::parse_python_version(pv.get_ref())
        .ok_or_else(|| (pv.span(), format!("python_version {:?} is not 3.N or 3.N.M", pv.get_ref())))?;
    let python = &spec.python;
    if !python.get_ref().starts_with('/') || crate::layer::tree::clean_path(python.get_ref()).is_err() {
        return Err((python.span(), format!("python {:?} must be a clean absolute path", python.get_ref())));
    }
    if python.get_ref().bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err((python.span(), "python must not contain spaces or control characters (it is a #! line)".into()));
    }
    target::prefix_of(spec.target.get_ref(), py).map_err(|m| (spec.target.span(), m))?;
    target::parse_glibc(spec.glibc.get_ref())
        .ok_or_else(|| (spec.glibc.span(), format!("glibc {:?} is not 2.N (N >= 17)", spec.glibc.get_ref())))?;
    if target::machine_of(architecture).is_none() {
        return Err((
            spec.packages.first().map(Spanned::span).unwrap_or(0..0),
            format!("no Python platform for architecture {architecture:?}"),
        ));
    }
    Ok(())
}

/// The target of `spec`, with the interpreter version and glibc the image
/// decided (`image::decide`, recorded in the lock) where it decided them.
fn target_of(
    spec: &PypiSpec,
    architecture: &str,
    python_version: Option<&str>,
    glibc: Option<&str>,
) -> Result<target::Target, PypiError> {
    target::Target::new(
        python_version.unwrap_or(spec.python_version.get_ref()),
        architecture,
        glibc.unwrap_or(spec.glibc.get_ref()),
        spec.python.get_ref(),
        spec.target.get_ref(),
        spec.venv,
    )
    .map_err(PypiError::Spec)
}

/// One pinned wheel.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LockedWheel {
    /// PEP 503-normalized.
    pub name: String,
    pub version: String,
    pub filename: String,
    /// Path on the index's host (or a full URL on another host).
    pub url: String,
    pub sha256: String,
    pub size: u64,
    /// Named by the blueprint (gets a REQUESTED file).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requested: bool,
}

/// The lock's `[pypi]` table.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PypiLock {
    /// The interpreter's full version as the image's Debian packages give
    /// it (absent: the blueprint's `python_version`, as written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python_version: Option<String>,
    /// The image's glibc (libc6) when the blueprint sets none (absent: the blueprint's `glibc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glibc: Option<String>,
    /// Sorted by name.
    pub packages: Vec<LockedWheel>,
}

/// The wheel's core metadata: the index's PEP 658 copy when it resolved
/// with one (it must equal the wheel's), else the wheel's own.
fn wheel_metadata(id: &str, bytes: &[u8], file: &str) -> Result<Vec<u8>, PypiError> {
    let err = |msg: String| PypiError::Package { package: id.into(), msg: format!("{file}: {msg}") };
    let names = wheel::names(bytes).map_err(err)?;
    let info = wheel::dist_info(names.iter().map(String::as_str)).map_err(err)?;
    wheel::member(bytes, &format!("{info}/METADATA"), metadata::MAX_METADATA)
        .map_err(err)?
        .ok_or_else(|| err(format!("{info}/METADATA is missing")))
}

/// A wheel as the index serves it now, checked against the index's sha256.
fn fetch_new(client: &index::Client, id: &str, f: &index::IndexFile) -> Result<Vec<u8>, PypiError> {
    let (bytes, _) = client.get(&f.url, wheel::MAX_WHEEL, "*/*")?;
    let got = index::sha256_hex(&bytes);
    let want = f.sha256.clone().unwrap_or_default();
    if got != want {
        return Err(PypiError::Integrity { package: id.into(), file: f.filename.clone(), expected: want, got });
    }
    Ok(bytes)
}

/// `f` over `items`, up to 8 at once on npm's workers (`npm::parallel`),
/// results in order; after a failure no new item starts, and the first
/// failure in order among the items that ran is returned.
pub(crate) fn par_map<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R, PypiError> + Sync,
) -> Result<Vec<R>, PypiError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let failed = AtomicBool::new(false);
    let got = crate::npm::parallel::par_map(items, |item| {
        if failed.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let r = f(item);
        if r.is_err() {
            failed.store(true, Ordering::SeqCst);
        }
        Ok(Some(r))
    })
    .map_err(|e| PypiError::Spec(crate::errors::chain(&e)))?;
    let mut out = Vec::with_capacity(got.len());
    let mut skipped = false;
    for r in got {
        match r {
            Some(Ok(v)) => out.push(v),
            Some(Err(e)) => return Err(e),
            None => skipped = true,
        }
    }
    // An item is skipped only after another failed, whose error came first or comes after.
    if skipped {
        return Err(PypiError::Spec("a download was skipped without a failure".into()));
    }
    Ok(out)
}

/// Resolves the spec against the index and returns the pinned set; every
/// chosen wheel is downloaded, checked and kept in the downloads cache
/// (pages, metadata and wheels several at once).
/// The interpreter version and glibc come from the image's locked Debian
/// packages where they say anything (`image::decide`; a contradiction is an error).
pub fn resolve(
    spec: &PypiSpec,
    architecture: &str,
    cache: &Path,
    debian: &[ImagePackage],
) -> Result<PypiLock, PypiError> {
    let img = image::decide(spec, debian).map_err(PypiError::Spec)?;
    let t = target_of(spec, architecture, img.python_version.as_deref(), img.glibc.as_deref())?;
    let requests: Vec<Requirement> =
        spec.packages.iter().map(|p| parse_request(p.get_ref()).map_err(PypiError::Spec)).collect::<Result<_, _>>()?;
    if requests.is_empty() {
        return Err(PypiError::Spec("`packages` is empty".into()));
    }
    let client = index::Client::new(index::index_base()?)?;
    let fetched = std::sync::Mutex::new(std::collections::HashMap::<String, Vec<u8>>::new());
    let meta = |c: &index::Client, name: &str, f: &index::IndexFile| {
        if let Some((bytes, m)) = resolve::index_metadata(c, name, f)? {
            return Ok((Some(bytes), m));
        }
        let id = format!("{name} ({})", f.filename);
        let bytes = fetch_new(c, &id, f)?;
        let raw = wheel_metadata(&id, &bytes, &f.filename)?;
        let m = metadata::parse(&raw).map_err(|msg| PypiError::Package { package: id.clone(), msg })?;
        if let Ok(mut got) = fetched.lock() {
            got.insert(f.url.clone(), bytes);
        }
        Ok((None, m))
    };
    let chosen = resolve::resolve(&client, &t, &requests, &meta)?;
    par_map(&chosen, |c| {
        let id = format!("{}=={}", c.name, c.version);
        let have = fetched.lock().ok().and_then(|mut got| got.remove(&c.file.url));
        let bytes = match have {
            Some(b) => b,
            None => fetch_new(&client, &id, &c.file)?,
        };
        if let Some(from_index) = &c.metadata_bytes {
            if wheel_metadata(&id, &bytes, &c.file.filename)? != *from_index {
                return Err(PypiError::Package {
                    package: id,
                    msg: format!(
                        "the index's metadata for {} differs from the wheel's METADATA; refused",
                        c.file.filename
                    ),
                });
            }
        }
        // The wheel must install: checked now, not first at build.
        let members = wheel::members(&bytes).map_err(|msg| PypiError::Package { package: id.clone(), msg })?;
        install::install(&mut Tree::new(), &t, &id, &members, c.requested)?;
        let d = remember(cache, &id, &bytes)?;
        Ok(LockedWheel {
            name: c.name.to_string(),
            version: c.version.to_string(),
            filename: c.file.filename.clone(),
            url: client.url_path(&c.file.url),
            sha256: d.hex().to_string(),
            size: bytes.len() as u64,
            requested: c.requested,
        })
    })
    .map(|packages| PypiLock { python_version: img.python_version, glibc: img.glibc, packages })
}

/// Whether a previous lock's set still fits the image (`moat lock` without
/// `--update` keeps it then): the image decides what it decided then. A
/// lock from before moat read the image (neither recorded) is kept when
/// the blueprint's settings agree with the image. A contradiction is an error.
pub fn keeps(spec: &PypiSpec, lock: &PypiLock, debian: &[ImagePackage]) -> Result<bool, PypiError> {
    let img = image::decide(spec, debian).map_err(PypiError::Spec)?;
    if lock.python_version == img.python_version && lock.glibc == img.glibc {
        return Ok(true);
    }
    let legacy = lock.python_version.is_none() && lock.glibc.is_none();
    Ok(legacy && img.glibc.as_ref().is_none_or(|g| g == spec.glibc.get_ref()))
}

/// Puts bytes already checked into the downloads cache under their sha256.
fn remember(cache: &Path, package: &str, bytes: &[u8]) -> Result<Digest, PypiError> {
    use std::io::Write;
    let d = Digest::of(bytes);
    let pin = Pin { sha256: d.clone(), size: Some(bytes.len() as u64) };
    index::downloads(cache)
        .file(&pin, |f, off| {
            let rest = bytes.get(off as usize..).unwrap_or_default();
            f.write_all(rest)
                .map_err(|e| PypiError::Package { package: package.into(), msg: format!("download cache: {e}") })
        })
        .map_err(|e| match e {
            crate::downloads::Failure::Fetch(e) => e,
            crate::downloads::Failure::Io { path, source } => PypiError::Package {
                package: package.into(),
                msg: format!("download cache {}: {source}", path.display()),
            },
            crate::downloads::Failure::Mismatch { actual, .. } => {
                PypiError::Package { package: package.into(), msg: format!("download cache: wrote {actual}, not {d}") }
            }
        })?;
    Ok(d)
}

/// The digest that keys the pypi layer (every input and the layout code).
pub fn layer_key(spec: &PypiSpec, lock: &PypiLock, architecture: &str) -> Digest {
    let v = serde_json::json!({"layout": LAYOUT_VERSION, "spec": spec, "architecture": architecture, "lock": lock});
    Digest::of(&crate::cjson::to_vec(&v).unwrap_or_default())
}

/// Bumped whenever `materialize` would lay the same lock out differently.
pub const LAYOUT_VERSION: u32 = 1;

/// Builds the pypi layer's tree from the lock alone (downloading into the
/// cache as needed, every wheel checked against its sha256).
pub fn materialize(spec: &PypiSpec, lock: &PypiLock, architecture: &str, cache: &Path) -> Result<Tree, PypiError> {
    let t = target_of(spec, architecture, lock.python_version.as_deref(), lock.glibc.as_deref())
        .map_err(|e| PypiError::Spec(format!("lock: {e}")))?;
    let client = index::Client::new(index::index_base()?)?;
    let mut pins = Vec::with_capacity(lock.packages.len());
    for p in &lock.packages {
        let id = format!("{}=={}", p.name, p.version);
        let bad = |msg: String| PypiError::Package { package: id.clone(), msg: format!("lock: {msg}") };
        let wn = target::WheelName::parse(&p.filename)
            .ok_or_else(|| bad(format!("{:?} is not a wheel file name", p.filename)))?;
        let named = PackageName::from_str(&wn.name).map(|n| n.to_string() == p.name).unwrap_or(false);
        if !named || t.rank(&wn).is_none() {
            return Err(bad(format!("{} is not a wheel of {} for this target", p.filename, p.name)));
        }
        let sha = Digest::parse_hex(&p.sha256).map_err(|_| bad("sha256 is not 64 hex characters".into()))?;
        pins.push((id, p, Pin { sha256: sha, size: Some(p.size) }));
    }
    // Fetched (or read from the cache) and unzipped several at once; laid out in lock order.
    let unpacked = par_map(&pins, |(id, p, pin)| {
        let bytes = index::wheel(&client, cache, id, &p.url, pin)?;
        wheel::members(&bytes).map_err(|msg| PypiError::Package { package: id.clone(), msg })
    })?;
    let mut tree = Tree::new();
    for ((id, p, _), members) in pins.iter().zip(unpacked) {
        install::install(&mut tree, &t, id, &members, p.requested)?;
    }
    tree.insert(Entry::file(sbom::SBOM_DATA, sbom::manifest(lock, spec.target.get_ref()), 0o644))?;
    tree.add_parents();
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn par_map_keeps_order_and_reports_the_first_failure() {
        let items: Vec<u32> = (0..40).collect();
        assert_eq!(par_map(&items, |i| Ok(i + 1)).unwrap(), (1..41).collect::<Vec<_>>());
        let e = par_map(&items, |i| {
            if *i == 5 || *i == 30 {
                Err(PypiError::Package { package: format!("p{i}==1.0"), msg: "broken".into() })
            } else {
                Ok(*i)
            }
        })
        .unwrap_err()
        .to_string();
        assert_eq!(e, "package p5==1.0: broken");
    }
}
