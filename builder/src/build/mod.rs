//! The build pipeline: blueprint (+ lock) -> layers -> config -> manifest ->
//! store. Guards the determinism contract: only the blueprint, the lock and
//! the moat format reach the output bytes; inputs that differ from the lock
//! are refused before any archive work, outputs that differ are never named.
//! This file runs the stages in order and decides what is refused; the
//! stages live beside it (`inputs`, `base`, `fixups`, `image`).
#![forbid(unsafe_code)]
mod base;
mod fixups;
mod image;
mod inputs;
mod local;
mod progress;

pub use base::copy_blob;
pub use image::rfc3339;

use crate::blueprint::Loaded;
use crate::digest::Digest;
use crate::layer::cache::LayerCache;
use crate::layer::tree::Tree;
use crate::lock::{self, Difference, Lock, LockedImage, LockedInput, LockedLayer};
use crate::oci::Descriptor;
use crate::store::{Store, StoreError};
use crate::{cjson, fetch, strip};
use inputs::Input;
use progress::Progress;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{at}: {msg}")]
    Input { at: String, msg: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error(transparent)]
    Read(#[from] crate::layer::read::ReadError),
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
    #[error(transparent)]
    Strip(#[from] strip::StripError),
    #[error(transparent)]
    Users(#[from] fixups::FixupError),
    #[error("layer {layer}: {msg}")]
    Layer { layer: String, msg: String },
    #[error(transparent)]
    Write(#[from] crate::layer::write::WriteError),
    #[error("{diff}")]
    Differs { diff: Difference },
    #[error("base image: {0}")]
    Base(String),
}

/// How to build.
pub struct Options {
    pub store: Store,
    /// Layer cache directory (`None`: always archive, as `verify` does).
    pub layer_cache: Option<PathBuf>,
    /// Download cache for URL inputs.
    pub download_cache: PathBuf,
    pub progress: bool,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    pub lock: Lock,
    pub manifest: Descriptor,
}

/// A layer in the image being assembled.
#[derive(Debug, Clone)]
struct Layer {
    name: String,
    desc: Descriptor,
    diff_id: Digest,
    created_by: String,
}

/// What a build is for.
#[derive(Clone, Copy)]
pub enum Mode<'a> {
    /// `moat lock`: resolve what the blueprint names (Debian packages are kept
    /// from `previous` unless `update`), build, and return a fresh lock.
    Lock { previous: Option<&'a Lock>, update: bool },
    /// `moat build`: use only what the lock pins; refuse inputs that differ
    /// before any archive work and outputs that differ before naming the image.
    Build(&'a Lock),
    /// `moat verify`: use only what the lock pins, build, and return the result
    /// for comparison (never refuses on a difference, never names the image).
    Verify(&'a Lock),
}

/// Builds `l` as `mode` says. See [`Mode`].
pub fn build(l: &Loaded, opts: &Options, mode: Mode) -> Result<Built, BuildError> {
    crate::malloc::tune_for_build();
    let result = build_inner(l, opts, mode);
    crate::debian::clear_memo();
    result
}

fn build_inner(l: &Loaded, opts: &Options, mode: Mode) -> Result<Built, BuildError> {
    // Before the first look at what the store holds: from here until the
    // image is named (and until `opts.store` is dropped, which covers
    // `moat lock` naming it after this returns) a gc waits.
    opts.store.hold_writer_lease()?;
    let progress = Progress::new(opts.progress, &l.bp.name.get_ref().clone());
    let expect = match mode {
        Mode::Build(lock) => Some(lock),
        _ => None,
    };
    if let Some(exp) = expect {
        if exp.format != lock::FORMAT {
            return Err(BuildError::Differs { diff: Difference::Format { locked: exp.format, ours: lock::FORMAT } });
        }
        if exp.blueprint != l.digest() {
            return Err(BuildError::Differs { diff: Difference::Blueprint });
        }
    }
    let epoch = l.bp.epoch;
    progress.step("base image");
    let (base_layers, base_config, locked_base) = base::base(l, &opts.store, opts.progress)?;
    progress.step("hashing inputs");
    let inputs = inputs::resolve_inputs(l, opts)?;
    if let Some(exp) = expect {
        let locked: Vec<LockedInput> = inputs.iter().map(|i| i.locked.clone()).collect();
        if let Some(diff) = lock::input_difference(exp, &locked) {
            return Err(BuildError::Differs { diff });
        }
    }
    let strip_paths: Vec<String> = l.bp.strip.paths.iter().map(|p| p.get_ref().clone()).collect();
    let stripper = strip::Stripper::new(&strip_paths, l.bp.strip.toolchain)?;
    let strip_key = serde_json::json!({"paths": &strip_paths, "toolchain": l.bp.strip.toolchain});
    let mut asm = Assembler {
        cache: LayerCache::new(opts.layer_cache.clone(), &opts.store),
        progress: &progress,
        epoch,
        layers: base_layers.clone(),
    };
    let debian_lock = debian_set(l, mode)?;
    if let (Some(spec), Some(dl)) = (&l.bp.debian, &debian_lock) {
        let deb_err =
            |e: crate::debian::DebianError| BuildError::Input { at: l.at(spec.span()).to_string(), msg: e.to_string() };
        for dl_layer in crate::debian::plan_layers(spec.get_ref(), dl).map_err(deb_err)? {
            let name = dl_layer.name.clone();
            let what = serde_json::json!({"debian": dl_layer.key, "strip": strip_key});
            asm.add(&name, format!("moat: debian {name}"), what, || {
                let mut tree = crate::debian::materialize(&dl_layer, dl).map_err(deb_err)?;
                tree.retain_not(|e| stripper.matches(&e.path));
                Ok(Some(tree))
            })?;
        }
    }
    let npm_lock = npm_set(l, mode, opts)?;
    if let (Some(spec), Some(nl)) = (&l.bp.npm, &npm_lock) {
        let npm_err =
            |e: crate::npm::NpmError| BuildError::Input { at: l.at(spec.span()).to_string(), msg: e.to_string() };
        let what = serde_json::json!({"npm": crate::npm::layer_key(spec.get_ref(), nl), "strip": strip_key});
        asm.add("npm", "moat: npm packages".into(), what, || {
            let mut tree = crate::npm::materialize(spec.get_ref(), nl, &opts.download_cache).map_err(npm_err)?;
            tree.retain_not(|e| stripper.matches(&e.path));
            Ok(Some(tree))
        })?;
    }
    let pypi_lock = pypi_set(l, mode, opts, debian_lock.as_ref())?;
    if let (Some(spec), Some(pl)) = (&l.bp.pypi, &pypi_lock) {
        let arch = &l.bp.architecture;
        let pypi_err =
            |e: crate::pypi::PypiError| BuildError::Input { at: l.at(spec.span()).to_string(), msg: e.to_string() };
        let what = serde_json::json!({"pypi": crate::pypi::layer_key(spec.get_ref(), pl, arch), "strip": strip_key});
        asm.add("pypi", "moat: PyPI packages".into(), what, || {
            let mut tree =
                crate::pypi::materialize(spec.get_ref(), pl, arch, &opts.download_cache).map_err(pypi_err)?;
            tree.retain_not(|e| stripper.matches(&e.path));
            Ok(Some(tree))
        })?;
    }
    let mut input_iter = inputs.iter();
    for (i, layer) in l.bp.layers.iter().enumerate() {
        let spec = layer.get_ref();
        let name = spec.name.clone().unwrap_or_else(|| format!("layer-{i}"));
        let mine: Vec<&Input> = input_iter.by_ref().take(spec.entries.len()).collect();
        let entries: Vec<_> = spec
            .entries
            .iter()
            .zip(&mine)
            .map(|(e, inp)| serde_json::json!({"spec": e.get_ref(), "input": inp.locked.sha256}))
            .collect();
        let what = serde_json::json!({"entries": entries, "strip": strip_key});
        asm.add(&name, format!("moat: layer {name}"), what, || {
            let mut tree = Tree::new();
            for (e, inp) in spec.entries.iter().zip(&mine) {
                inputs::add_entry(&mut tree, e.get_ref(), inp).map_err(|msg| BuildError::Layer {
                    layer: name.clone(),
                    msg: format!("{}: {msg}", inp.locked.source),
                })?;
            }
            tree.retain_not(|e| stripper.matches(&e.path));
            Ok(Some(tree))
        })?;
    }
    if !l.bp.users.is_empty() {
        let lower: Vec<Descriptor> = asm.layers.iter().map(|x| x.desc.clone()).collect();
        let what =
            serde_json::json!({"users": &l.bp.users, "lower": lower.iter().map(|d| &d.digest).collect::<Vec<_>>()});
        asm.add("users", "moat: users and groups".into(), what, || {
            Ok(Some(fixups::users_tree(&opts.store, &lower, &l.bp.users)?))
        })?;
    }
    if !base_layers.is_empty() && (l.bp.strip.toolchain || !strip_paths.is_empty()) {
        let lower: Vec<Descriptor> = base_layers.iter().map(|x| x.desc.clone()).collect();
        let what =
            serde_json::json!({"strip": strip_key, "lower": lower.iter().map(|d| &d.digest).collect::<Vec<_>>()});
        asm.add("strip", "moat: strip toolchain and [strip] paths from the base".into(), what, || {
            Ok(fixups::whiteouts(&opts.store, &lower, &stripper)?)
        })?;
    }
    let layers = asm.layers;
    progress.step("config and manifest");
    let (config_desc, manifest_desc) = image::write_image(l, &opts.store, &layers, base_config, locked_base.as_ref())?;
    let lock = Lock {
        version: lock::LOCK_VERSION,
        format: lock::FORMAT,
        name: l.bp.name.get_ref().clone(),
        blueprint: l.digest(),
        base: locked_base,
        inputs: inputs.iter().map(|i| i.locked.clone()).collect(),
        debian_spec: l.bp.debian.as_ref().map(|s| lock::debian_spec_digest(s.get_ref())),
        debian: debian_lock
            .as_ref()
            .map(|d| toml::Value::try_from(d).map_err(|e| BuildError::Base(e.to_string())))
            .transpose()?,
        npm_spec: l.bp.npm.as_ref().map(|s| lock::npm_spec_digest(s.get_ref(), &l.bp.architecture)),
        npm: npm_lock
            .as_ref()
            .map(|d| toml::Value::try_from(d).map_err(|e| BuildError::Base(e.to_string())))
            .transpose()?,
        pypi_spec: l.bp.pypi.as_ref().map(|s| lock::pypi_spec_digest(s.get_ref(), &l.bp.architecture)),
        pypi: pypi_lock
            .as_ref()
            .map(|d| toml::Value::try_from(d).map_err(|e| BuildError::Base(e.to_string())))
            .transpose()?,
        layers: layers
            .iter()
            .map(|x| LockedLayer {
                name: x.name.clone(),
                diff_id: x.diff_id.clone(),
                digest: x.desc.digest.clone(),
                size: x.desc.size,
            })
            .collect(),
        image: LockedImage {
            config: config_desc.digest.clone(),
            manifest: manifest_desc.digest.clone(),
            manifest_size: manifest_desc.size,
        },
    };
    if let Some(exp) = expect {
        if let Some(diff) = lock::first_difference(exp, &lock) {
            return Err(BuildError::Differs { diff });
        }
        opts.store.set_ref(&lock.name, manifest_desc.clone())?;
    }
    crate::malloc::drop_later(inputs);
    progress.done();
    Ok(Built { lock, manifest: manifest_desc })
}

/// Appends layers to the image being assembled, through the layer cache.
struct Assembler<'a> {
    cache: LayerCache<'a>,
    progress: &'a Progress,
    epoch: u64,
    layers: Vec<Layer>,
}

impl Assembler<'_> {
    /// Adds the layer whose inputs `what` describes, made by `make` unless
    /// the cache already has it; an empty result (`None`) adds nothing.
    fn add(
        &mut self,
        name: &str,
        created_by: String,
        what: serde_json::Value,
        make: impl FnOnce() -> Result<Option<Tree>, BuildError>,
    ) -> Result<(), BuildError> {
        let key = layer_key(self.epoch, name, &what);
        self.progress.step(&format!("layer {name}"));
        if let Some((desc, diff_id)) = self.cache.get_or_build(&key, make, self.epoch, name)? {
            self.layers.push(Layer { name: name.into(), desc, diff_id, created_by });
        }
        Ok(())
    }
}

/// The pinned Debian package set: resolved only by `moat lock` (and kept from
/// the previous lock unless `--update`); `build` and `verify` take the lock's.
fn debian_set(l: &Loaded, mode: Mode) -> Result<Option<crate::debian::DebianLock>, BuildError> {
    let Some(spec) = &l.bp.debian else { return Ok(None) };
    let at = || l.at(spec.span()).to_string();
    let from_lock = |lock: &Lock| -> Result<Option<crate::debian::DebianLock>, BuildError> {
        let v = lock.debian.clone().ok_or_else(|| BuildError::Input {
            at: at(),
            msg: "the lock has no [debian] package set: run `moat lock`".into(),
        })?;
        v.try_into()
            .map(Some)
            .map_err(|e: toml::de::Error| BuildError::Input { at: at(), msg: format!("lock [debian]: {e}") })
    };
    match mode {
        Mode::Build(lock) | Mode::Verify(lock) => from_lock(lock),
        Mode::Lock { previous: Some(prev), update: false }
            if prev.debian.is_some() && prev.blueprint_debian_matches(spec.get_ref()) =>
        {
            from_lock(prev)
        }
        Mode::Lock { .. } => crate::debian::resolve(spec.get_ref(), &l.dir)
            .map(Some)
            .map_err(|e| BuildError::Input { at: at(), msg: e.to_string() }),
    }
}

/// The pinned npm tree: resolved only by `moat lock` (kept from the previous
/// lock unless `--update` or the `[npm]` table changed); `build` and
/// `verify` take the lock's.
fn npm_set(l: &Loaded, mode: Mode, opts: &Options) -> Result<Option<crate::npm::NpmLock>, BuildError> {
    let Some(spec) = &l.bp.npm else { return Ok(None) };
    let at = || l.at(spec.span()).to_string();
    let from_lock = |lock: &Lock| -> Result<Option<crate::npm::NpmLock>, BuildError> {
        let v = lock.npm.clone().ok_or_else(|| BuildError::Input {
            at: at(),
            msg: "the lock has no [npm] package tree: run `moat lock`".into(),
        })?;
        v.try_into()
            .map(Some)
            .map_err(|e: toml::de::Error| BuildError::Input { at: at(), msg: format!("lock [npm]: {e}") })
    };
    match mode {
        Mode::Build(lock) | Mode::Verify(lock) => from_lock(lock),
        Mode::Lock { previous: Some(prev), update: false }
            if prev.npm.is_some()
                && prev.npm_spec == Some(lock::npm_spec_digest(spec.get_ref(), &l.bp.architecture)) =>
        {
            from_lock(prev)
        }
        Mode::Lock { .. } => crate::npm::resolve(spec.get_ref(), &l.bp.architecture, &opts.download_cache)
            .map(Some)
            .map_err(|e| BuildError::Input { at: at(), msg: e.to_string() }),
    }
}

/// The pinned PyPI set: resolved only by `moat lock` (kept from the previous
/// lock unless `--update`, the `[pypi]` table or architecture changed, or
/// the image's Debian Python or glibc did); `build` and `verify` take the lock's.
fn pypi_set(
    l: &Loaded,
    mode: Mode,
    opts: &Options,
    debian: Option<&crate::debian::DebianLock>,
) -> Result<Option<crate::pypi::PypiLock>, BuildError> {
    let Some(spec) = &l.bp.pypi else { return Ok(None) };
    let at = || l.at(spec.span()).to_string();
    let pypi_err = |e: crate::pypi::PypiError| BuildError::Input { at: at(), msg: e.to_string() };
    let image: Vec<crate::pypi::ImagePackage> = debian
        .map(|d| d.packages.iter())
        .into_iter()
        .flatten()
        .map(|p| crate::pypi::ImagePackage { name: &p.name, version: &p.version, depends: &p.depends })
        .collect();
    let resolve = || crate::pypi::resolve(spec.get_ref(), &l.bp.architecture, &opts.download_cache, &image);
    let from_lock = |lock: &Lock| -> Result<Option<crate::pypi::PypiLock>, BuildError> {
        let v = lock.pypi.clone().ok_or_else(|| BuildError::Input {
            at: at(),
            msg: "the lock has no [pypi] wheel set: run `moat lock`".into(),
        })?;
        v.try_into()
            .map(Some)
            .map_err(|e: toml::de::Error| BuildError::Input { at: at(), msg: format!("lock [pypi]: {e}") })
    };
    match mode {
        Mode::Build(lock) | Mode::Verify(lock) => from_lock(lock),
        Mode::Lock { previous: Some(prev), update: false }
            if prev.pypi.is_some()
                && prev.pypi_spec == Some(lock::pypi_spec_digest(spec.get_ref(), &l.bp.architecture)) =>
        {
            match from_lock(prev)? {
                Some(kept) if crate::pypi::keeps(spec.get_ref(), &kept, &image).map_err(pypi_err)? => Ok(Some(kept)),
                _ => resolve().map(Some).map_err(pypi_err),
            }
        }
        Mode::Lock { .. } => resolve().map(Some).map_err(pypi_err),
    }
}

fn layer_key(epoch: u64, name: &str, what: &serde_json::Value) -> Digest {
    let v = serde_json::json!({"format": lock::FORMAT, "epoch": epoch, "name": name, "what": what});
    Digest::of(&cjson::to_vec(&v).unwrap_or_default())
}
