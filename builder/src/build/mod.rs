//! The build pipeline: blueprint (+ lock) -> layers -> config -> manifest ->
//! store. Guards the determinism contract: only the blueprint, the lock and
//! the moat format reach the output bytes; inputs that differ from the lock
//! are refused before any archive work, outputs that differ are never named.
use crate::blueprint::{BaseRef, Loaded, SourceKind, FIXED_PATH};
use crate::digest::Digest;
use crate::lock::{self, Difference, Lock, LockedBase, LockedImage, LockedInput, LockedLayer};
use crate::oci::{self, Descriptor, History, ImageConfig, Manifest, RootFs};
use crate::store::{Store, StoreError};
use crate::tar_in::{self, Overrides};
use crate::tree::Tree;
use crate::{cjson, fetch, fixups, layer_cache, local, strip};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{at}: {msg}")]
    Input { at: String, msg: String },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Lock(#[from] lock::LockError),
    #[error("{0}")]
    Read(#[from] crate::layer_read::ReadError),
    #[error("{0}")]
    Fetch(#[from] fetch::FetchError),
    #[error("{0}")]
    Strip(#[from] strip::StripError),
    #[error("{0}")]
    Users(#[from] fixups::FixupError),
    #[error("layer {layer}: {source}")]
    Archive { layer: String, source: tar_in::ArchiveError },
    #[error("layer {layer}: {msg}")]
    Layer { layer: String, msg: String },
    #[error(transparent)]
    Write(#[from] crate::layer_write::WriteError),
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

/// A resolved input of one blueprint entry.
enum Resolved {
    Local(local::Scanned),
    Archive(PathBuf),
}

struct Input {
    locked: LockedInput,
    resolved: Resolved,
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
    let (base_layers, base_config, locked_base) = base(l, &opts.store, opts.progress)?;
    progress.step("hashing inputs");
    let inputs = resolve_inputs(l, opts)?;
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
        cache: layer_cache::LayerCache::new(opts.layer_cache.clone(), &opts.store),
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
                add_entry(&mut tree, e.get_ref(), inp).map_err(|msg| BuildError::Layer {
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
    let (config_desc, manifest_desc) = write_image(l, &opts.store, &layers, base_config, locked_base.as_ref())?;
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
    cache: layer_cache::LayerCache<'a>,
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

fn layer_key(epoch: u64, name: &str, what: &serde_json::Value) -> Digest {
    let v = serde_json::json!({"format": lock::FORMAT, "epoch": epoch, "name": name, "what": what});
    Digest::of(&cjson::to_vec(&v).unwrap_or_default())
}

fn resolve_inputs(l: &Loaded, opts: &Options) -> Result<Vec<Input>, BuildError> {
    let mut out = Vec::new();
    for (i, layer) in l.bp.layers.iter().enumerate() {
        for (j, e) in layer.get_ref().entries.iter().enumerate() {
            let spec = e.get_ref();
            let Some((kind, src)) = spec.source() else { continue };
            let at = format!("{} (layer[{i}].entry[{j}])", l.at(src.span()));
            let fail = |msg: String| BuildError::Input { at: at.clone(), msg };
            let pin = spec
                .sha256
                .as_ref()
                .map(|h| Digest::parse_hex(h.get_ref().trim_start_matches("sha256:")).map_err(|e| fail(e.to_string())))
                .transpose()?;
            let s = src.get_ref();
            let (digest, resolved) = match kind {
                SourceKind::Path => {
                    let scanned = local::scan(&l.source_path(s)).map_err(|e| fail(e.to_string()))?;
                    (scanned.digest.clone(), Resolved::Local(scanned))
                }
                SourceKind::Tar | SourceKind::Deb if crate::blueprint::is_url(s) => {
                    let pin = pin.clone().ok_or_else(|| fail("URL sources need sha256".into()))?;
                    let p = fetch::fetch(&opts.download_cache, s, &pin)?;
                    (pin, Resolved::Archive(p))
                }
                SourceKind::Tar | SourceKind::Deb => {
                    let p = l.source_path(s);
                    let f = std::fs::File::open(&p).map_err(|e| fail(format!("{}: {e}", p.display())))?;
                    let (d, _) = crate::digest::digest_reader(f).map_err(|e| fail(format!("{}: {e}", p.display())))?;
                    if let Some(pin) = &pin {
                        if pin != &d {
                            return Err(fail(format!(
                                "{s} hashes to {d}, but the blueprint pins sha256 {}",
                                pin.hex()
                            )));
                        }
                    }
                    (d, Resolved::Archive(p))
                }
            };
            let kind_s = match kind {
                SourceKind::Path => {
                    if matches!(&resolved, Resolved::Local(sc) if sc.is_file) {
                        "file"
                    } else {
                        "dir"
                    }
                }
                SourceKind::Tar => "tar",
                SourceKind::Deb => "deb",
            };
            out.push(Input {
                locked: LockedInput {
                    at: format!("layer[{i}].entry[{j}]"),
                    source: s.clone(),
                    kind: kind_s.into(),
                    sha256: digest,
                },
                resolved,
            });
        }
    }
    Ok(out)
}

fn add_entry(tree: &mut Tree, spec: &crate::blueprint::EntrySpec, inp: &Input) -> Result<(), String> {
    let ov = Overrides {
        mode: spec.mode.as_ref().map(|m| m.get_ref().0),
        dir_mode: spec.dir_mode.as_ref().map(|m| m.get_ref().0),
        uid: spec.uid,
        gid: spec.gid,
    };
    let dest = spec.dest();
    match &inp.resolved {
        Resolved::Local(sc) => sc.add_to(tree, &dest, spec.dest_is_dir(), ov).map_err(|e| e.to_string()),
        Resolved::Archive(p) => {
            let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            // Verify again after reading: the file could have changed since hashing.
            if Digest::of(&bytes) != inp.locked.sha256 {
                return Err("source changed while building".into());
            }
            if inp.locked.kind == "deb" {
                let data = tar_in::deb_data_tar(&bytes).map_err(|e| e.to_string())?;
                tar_in::read_tar_stream(tree, &data[..], &dest, ov).map_err(|e| e.to_string())?;
            } else {
                tar_in::read_tar_into(tree, &bytes, &dest, ov).map_err(|e| e.to_string())?;
            }
            tar_in::normalize_hardlinks(tree);
            Ok(())
        }
    }
}

type BaseParts = (Vec<Layer>, Option<ImageConfig>, Option<LockedBase>);

fn base(l: &Loaded, store: &Store, progress: bool) -> Result<BaseParts, BuildError> {
    let (src, digest) = match &l.base {
        BaseRef::Scratch => return Ok((Vec::new(), None, None)),
        BaseRef::Layout { dir, digest } => {
            let p = if Path::new(dir).is_absolute() { PathBuf::from(dir) } else { l.dir.join(dir) };
            (Store::open_existing(&p)?, digest.clone())
        }
        BaseRef::Registry { .. } => {
            let reference = l.bp.base.image.get_ref();
            let digest = match &l.base {
                BaseRef::Registry { digest, .. } => digest.clone(),
                _ => unreachable!("matched Registry above"),
            };
            // Pinned by digest, so fetching it is like downloading a pinned
            // URL: skipped when the store already holds the verified manifest.
            if !store.has_blob(&digest) {
                let opts = crate::registry::Options {
                    progress,
                    architecture: Some(l.bp.architecture.clone()),
                    ..Default::default()
                };
                crate::registry::pull_image(reference, store, &opts)
                    .map_err(|e| BuildError::Base(format!("{}: {e}", l.at(l.bp.base.image.span()))))?;
            }
            (store.clone(), digest)
        }
    };
    let manifest = platform_manifest(&src, &digest, &l.bp.architecture)?;
    let config: ImageConfig = src.read_json(&manifest.config.digest)?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(BuildError::Base(format!(
            "{digest}: config lists {} diff_ids for {} layers",
            config.rootfs.diff_ids.len(),
            manifest.layers.len()
        )));
    }
    let mut layers = Vec::new();
    for (i, (desc, diff_id)) in manifest.layers.iter().zip(&config.rootfs.diff_ids).enumerate() {
        copy_blob(&src, store, &desc.digest)?;
        let mut desc = desc.clone();
        if desc.media_type == oci::MEDIA_DOCKER_LAYER_GZIP {
            desc.media_type = oci::MEDIA_LAYER_GZIP.into();
        }
        layers.push(Layer { name: format!("base-{i}"), desc, diff_id: diff_id.clone(), created_by: String::new() });
    }
    Ok((layers, Some(config), Some(LockedBase { image: l.bp.base.image.get_ref().clone(), manifest: digest })))
}

/// The image manifest `digest` names: itself, or for an index the linux
/// manifest of the blueprint's architecture.
fn platform_manifest(src: &Store, digest: &Digest, arch: &str) -> Result<Manifest, BuildError> {
    let v: serde_json::Value = src.read_json(digest)?;
    if v.get("manifests").is_none() {
        return serde_json::from_value(v)
            .map_err(|e| BuildError::Base(format!("{digest}: not an image manifest: {e}")));
    }
    let index: oci::Index =
        serde_json::from_value(v).map_err(|e| BuildError::Base(format!("{digest}: bad index: {e}")))?;
    let pick = index
        .manifests
        .iter()
        .find(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch))
        .ok_or_else(|| BuildError::Base(format!("{digest}: the index has no linux/{arch} manifest")))?;
    src.read_json(&pick.digest).map_err(BuildError::from)
}

/// Copies a verified blob from another layout into the store.
pub fn copy_blob(src: &Store, dst: &Store, d: &Digest) -> Result<(), BuildError> {
    if dst.has_blob(d) {
        return Ok(());
    }
    let mut r = src.open_blob(d)?;
    let mut w = dst.blob_writer()?;
    io::copy(&mut r, &mut w).map_err(|e| BuildError::Base(format!("copying {d}: {e}")))?;
    w.commit(Some(d))?;
    Ok(())
}

fn write_image(
    l: &Loaded,
    store: &Store,
    layers: &[Layer],
    base: Option<ImageConfig>,
    locked_base: Option<&LockedBase>,
) -> Result<(Descriptor, Descriptor), BuildError> {
    let bp = &l.bp;
    let created = rfc3339(bp.epoch);
    let mut cfg = base.unwrap_or_else(|| ImageConfig {
        architecture: bp.architecture.clone(),
        os: "linux".into(),
        ..Default::default()
    });
    cfg.created = Some(created.clone());
    cfg.architecture = bp.architecture.clone();
    let rc = &mut cfg.config;
    let mut env: BTreeMap<String, String> =
        rc.env.iter().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    for (k, v) in &bp.config.env {
        env.insert(k.clone(), v.get_ref().clone());
    }
    env.remove("PATH");
    rc.env = std::iter::once(format!("PATH={FIXED_PATH}")).chain(env.iter().map(|(k, v)| format!("{k}={v}"))).collect();
    if let Some(ep) = &bp.config.entrypoint {
        rc.entrypoint = Some(ep.clone());
        rc.cmd = bp.config.cmd.clone();
    } else if let Some(cmd) = &bp.config.cmd {
        rc.cmd = Some(cmd.clone());
    }
    rc.working_dir = Some(bp.config.workdir.clone().unwrap_or_else(|| "/sandbox".into()));
    if let Some(u) = &bp.config.user {
        rc.user = Some(u.clone());
    } else if bp.users.contains_key("sandbox") {
        rc.user = Some("sandbox".into());
    }
    rc.labels.extend(bp.config.labels.clone());
    if let Some(s) = &bp.config.stop_signal {
        rc.stop_signal = Some(s.clone());
    }
    let base_count = cfg.rootfs.diff_ids.len();
    cfg.rootfs = RootFs { kind: "layers".into(), diff_ids: layers.iter().map(|x| x.diff_id.clone()).collect() };
    for x in &layers[base_count.min(layers.len())..] {
        cfg.history.push(History {
            created: Some(created.clone()),
            created_by: Some(x.created_by.clone()),
            comment: None,
            empty_layer: false,
        });
    }
    let config_bytes = cjson::to_vec(&cfg).map_err(|e| BuildError::Base(e.to_string()))?;
    let config_digest = store.put_blob(&config_bytes)?;
    let config_desc = Descriptor {
        media_type: oci::MEDIA_CONFIG.into(),
        digest: config_digest,
        size: config_bytes.len() as u64,
        annotations: BTreeMap::new(),
        platform: None,
    };
    let mut annotations = bp.annotations.clone();
    if let Some(b) = locked_base {
        annotations.insert("org.opencontainers.image.base.digest".into(), b.manifest.to_string());
    }
    let manifest = Manifest {
        schema_version: 2,
        artifact_type: None,
        media_type: Some(oci::MEDIA_MANIFEST.into()),
        config: config_desc.clone(),
        layers: layers.iter().map(|x| x.desc.clone()).collect(),
        annotations,
    };
    let mbytes = cjson::to_vec(&manifest).map_err(|e| BuildError::Base(e.to_string()))?;
    let mdigest = store.put_blob(&mbytes)?;
    let platform = Some(oci::Platform { architecture: cfg.architecture.clone(), os: cfg.os.clone() });
    Ok((
        config_desc,
        Descriptor {
            media_type: oci::MEDIA_MANIFEST.into(),
            digest: mdigest,
            size: mbytes.len() as u64,
            annotations: BTreeMap::new(),
            platform,
        },
    ))
}

/// RFC 3339 UTC time of a Unix epoch second.
pub fn rfc3339(epoch: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(epoch as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Progress on stderr while building (only when asked and stderr is a terminal).
struct Progress(Option<indicatif::ProgressBar>);
impl Progress {
    fn new(enabled: bool, name: &str) -> Progress {
        use std::io::IsTerminal;
        if !enabled || !io::stderr().is_terminal() {
            return Progress(None);
        }
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_prefix(name.to_string());
        pb.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {prefix}: {msg} [{elapsed}]")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
        Progress(Some(pb))
    }
    fn step(&self, msg: &str) {
        if let Some(pb) = &self.0 {
            pb.set_message(msg.to_string());
        }
    }
    fn done(&self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}
