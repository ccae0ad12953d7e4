//! Snapshots as OCI artifacts: `moat snapshot push` wraps one snapshot's
//! export file (see [`crate::archive`]) in an OCI image manifest with
//! `artifactType` `application/vnd.moat.snapshot.v1` (OCI image spec 1.1
//! artifact guidance: empty config, one layer) and pushes it with the
//! registry client; `moat snapshot pull` fetches such a manifest by digest and
//! imports its layer. Addresses tampering in transit and at the registry (the
//! pull is pinned by digest and every blob is verified by the registry client,
//! then every chunk again by the import), and being fed something else (any
//! manifest that is not a moat snapshot is refused, naming what it is).
#![forbid(unsafe_code)]
use crate::archive;
use crate::repo::{Record, Repo};
use crate::SnapshotError;
use moat_builder::build::rfc3339;
use moat_builder::cjson;
use moat_builder::oci::{Descriptor, Manifest, MEDIA_MANIFEST};
use moat_builder::registry::{self, Options, RegistryError};
use moat_builder::store::StoreError;
use moat_builder::{Digest, Store};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `artifactType` of a snapshot manifest.
pub(crate) const ARTIFACT_TYPE: &str = "application/vnd.moat.snapshot.v1";
/// Media type of its one layer: a file written by [`archive::export`].
pub(crate) const MEDIA_EXPORT: &str = "application/vnd.moat.snapshot.export.v1";
/// The OCI empty descriptor's media type (config of an artifact without one).
pub(crate) const MEDIA_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// Content of the empty config blob.
pub(crate) const EMPTY_CONFIG: &[u8] = b"{}";
/// Annotation on the manifest: `sha256:<snapshot digest>`.
pub(crate) const ANNOTATION_DIGEST: &str = "dev.moat.snapshot.digest";
/// Annotation on the manifest: the sandbox the snapshot was taken of.
pub(crate) const ANNOTATION_SANDBOX: &str = "dev.moat.snapshot.sandbox";
const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
/// Name of the artifact in the scratch OCI layout.
const REF: &str = "snapshot";

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{reference} is not a moat snapshot: {found}; refused, nothing was imported")]
    NotASnapshot { reference: String, found: String },
    #[error("{reference}: the manifest says snapshot {claimed}, its layer holds sha256:{actual}")]
    DigestMismatch { reference: String, claimed: String, actual: String },
    #[error("{path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("snapshot manifest")]
    Json(#[from] serde_json::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OciError + '_ {
    move |source| OciError::Io { path: path.to_path_buf(), source }
}

/// What a push did.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    /// `sha256:<snapshot digest>`.
    pub snapshot: String,
    /// `REGISTRY/REPO@sha256:<manifest digest>`.
    pub pinned: String,
    pub registry: registry::PushReport,
}

/// What a pull did.
#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    /// Snapshot digest (hex).
    pub digest: String,
    /// The record stored for it (its sandbox name is where it is listed).
    pub record: Record,
    pub registry: registry::PullReport,
}

/// The record as exported for a registry: without the facts that only
/// describe this repository (chunks/bytes the backup added), so the same
/// snapshot record always gives the same layer bytes. Import recomputes them.
fn portable(record: &Record) -> Record {
    Record { new_chunks: 0, new_bytes: 0, ..record.clone() }
}

/// The artifact manifest for `record` whose export file is `layer` (`size` bytes).
/// Depends only on its arguments: the same snapshot record gives the same digest.
pub(crate) fn snapshot_manifest(record: &Record, layer: Digest, size: u64) -> Manifest {
    let desc = |media_type: &str, digest: Digest, size: u64| Descriptor {
        media_type: media_type.into(),
        digest,
        size,
        annotations: BTreeMap::new(),
        platform: None,
    };
    let mut layer = desc(MEDIA_EXPORT, layer, size);
    let short = record.digest.get(..12).unwrap_or(&record.digest);
    layer.annotations.insert(ANNOTATION_TITLE.into(), format!("snapshot-{short}.moatsnap"));
    let annotations = BTreeMap::from([
        (ANNOTATION_DIGEST.to_string(), format!("sha256:{}", record.digest)),
        (ANNOTATION_SANDBOX.to_string(), record.sandbox.clone()),
        (ANNOTATION_CREATED.to_string(), rfc3339(u64::try_from(record.time_ns / 1_000_000_000).unwrap_or(0))),
    ]);
    Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_MANIFEST.into()),
        artifact_type: Some(ARTIFACT_TYPE.into()),
        config: desc(MEDIA_EMPTY, Digest::of(EMPTY_CONFIG), EMPTY_CONFIG.len() as u64),
        layers: vec![layer],
        annotations,
    }
}

/// Checks that `bytes` is a snapshot manifest; returns its layer and the
/// snapshot digest it claims. The error says what was found instead.
pub(crate) fn check_manifest(bytes: &[u8]) -> Result<(Descriptor, Option<String>), String> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("not an OCI image manifest ({e})"))?;
    match m.artifact_type.as_deref() {
        Some(ARTIFACT_TYPE) => {}
        Some(other) => return Err(format!("its artifactType is {other:?}, a snapshot's is {ARTIFACT_TYPE:?}")),
        None => {
            return Err(format!(
                "it has no artifactType (config media type {:?}, {} layer(s): an ordinary image?); a snapshot's is {ARTIFACT_TYPE:?}",
                m.config.media_type,
                m.layers.len()
            ))
        }
    }
    let [layer] = <[Descriptor; 1]>::try_from(m.layers)
        .map_err(|ls| format!("it has {} layers, a snapshot has exactly one", ls.len()))?;
    if layer.media_type != MEDIA_EXPORT {
        return Err(format!("its layer media type is {:?}, a snapshot's is {MEDIA_EXPORT:?}", layer.media_type));
    }
    Ok((layer, m.annotations.get(ANNOTATION_DIGEST).cloned()))
}

/// A private scratch directory beside the repository's chunks (same
/// filesystem, same 0700 parent), removed on drop.
fn scratch(repo: &Repo) -> Result<tempfile::TempDir, OciError> {
    let tmp = repo.root().join("tmp");
    tempfile::Builder::new().prefix(".oci-").tempdir_in(&tmp).map_err(io_err(&tmp))
}

/// Writes the artifact for `record` into `store` (export file as the layer,
/// empty config, manifest) and returns the manifest's descriptor.
fn stage(repo: &Repo, record: &Record, store: &Store) -> Result<Descriptor, OciError> {
    let mut w = store.blob_writer()?;
    archive::write_export(repo, &record.digest, Some(&portable(record)), &mut w)?;
    let (layer, size) = w.commit(None)?;
    store.put_blob(EMPTY_CONFIG)?;
    let bytes = cjson::to_vec(&snapshot_manifest(record, layer, size))?;
    let digest = store.put_blob(&bytes)?;
    Ok(Descriptor {
        media_type: MEDIA_MANIFEST.into(),
        digest,
        size: bytes.len() as u64,
        annotations: BTreeMap::new(),
        platform: None,
    })
}

/// Pushes the snapshot `record` names to `target` (`REGISTRY/REPO[:TAG]`).
pub fn push(repo: &Repo, record: &Record, target: &str, opts: &Options) -> Result<PushReport, OciError> {
    let dir = scratch(repo)?;
    let store = Store::open(&dir.path().join("layout"))?;
    let desc = stage(repo, record, &store)?;
    store.set_ref(REF, desc)?;
    let r = registry::push(&store, REF, target, opts)?;
    Ok(PushReport { snapshot: format!("sha256:{}", record.digest), pinned: r.pinned.clone(), registry: r })
}

/// Pulls the snapshot artifact `reference` (`REGISTRY/REPO@sha256:...`) and
/// imports it into `repo`.
pub fn pull(repo: &Repo, reference: &str, opts: &Options) -> Result<PullReport, OciError> {
    let dir = scratch(repo)?;
    let store = Store::open(&dir.path().join("layout"))?;
    let opts = Options { name: Some(REF.into()), ..opts.clone() };
    let r = registry::pull(reference, &store, &opts)?;
    let bytes = store.read_blob(&r.manifest.digest)?;
    let (layer, claimed) =
        check_manifest(&bytes).map_err(|found| OciError::NotASnapshot { reference: reference.into(), found })?;
    let imported = archive::read(&store.blob_path(&layer.digest))?;
    // Checked before anything is stored: a mislabelled artifact imports nothing.
    if let Some(claimed) = claimed {
        if claimed.strip_prefix("sha256:") != Some(imported.digest.as_str()) {
            return Err(OciError::DigestMismatch { reference: reference.into(), claimed, actual: imported.digest });
        }
    }
    let (digest, record) = archive::store(repo, imported)?;
    Ok(PullReport { digest, record, registry: r })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            digest: "ab".repeat(32),
            sandbox: "agent".into(),
            tag: Some("t".into()),
            time_ns: 1_700_000_000_123_456_789,
            files: 3,
            bytes: 10,
            new_chunks: 2,
            new_bytes: 9,
            skipped: vec![],
            secrets: vec![],
        }
    }

    #[test]
    fn manifest_is_canonical_deterministic_and_passes_its_own_check() {
        let layer = Digest::of(b"layer");
        let m = snapshot_manifest(&record(), layer.clone(), 5);
        let a = cjson::to_vec(&m).unwrap();
        assert_eq!(a, cjson::to_vec(&snapshot_manifest(&record(), layer.clone(), 5)).unwrap());
        let s = String::from_utf8(a.clone()).unwrap();
        assert!(s.starts_with(r#"{"annotations":{"dev.moat.snapshot.digest":"sha256:abab"#), "{s}");
        assert!(s.contains(r#""org.opencontainers.image.created":"2023-11-14T22:13:20Z""#), "{s}");
        assert!(s.contains(r#""artifactType":"application/vnd.moat.snapshot.v1""#), "{s}");
        assert!(s.contains(&format!(
            r#""config":{{"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","mediaType":"{MEDIA_EMPTY}","size":2}}"#
        )));
        assert!(s.contains(r#""org.opencontainers.image.title":"snapshot-abababababab.moatsnap""#), "{s}");
        let (l, claimed) = check_manifest(&a).unwrap();
        assert_eq!((l.digest, l.size), (layer, 5));
        assert_eq!(claimed, Some(format!("sha256:{}", "ab".repeat(32))));
        // Repository-local counts never reach the layer.
        assert_eq!(portable(&record()).new_chunks, 0);
        assert_eq!(Record { new_chunks: 2, new_bytes: 9, ..portable(&record()) }, record());
    }

    #[test]
    fn other_manifests_are_refused_naming_what_they_are() {
        let mut m = snapshot_manifest(&record(), Digest::of(b"l"), 1);
        m.artifact_type = None;
        m.config.media_type = "application/vnd.oci.image.config.v1+json".into();
        let e = check_manifest(&cjson::to_vec(&m).unwrap()).unwrap_err();
        assert!(e.contains("no artifactType") && e.contains("image.config.v1+json"), "{e}");
        m.artifact_type = Some("application/x-other".into());
        let e = check_manifest(&cjson::to_vec(&m).unwrap()).unwrap_err();
        assert!(e.contains("application/x-other"), "{e}");
        m.artifact_type = Some(ARTIFACT_TYPE.into());
        m.layers[0].media_type = "application/vnd.oci.image.layer.v1.tar".into();
        let e = check_manifest(&cjson::to_vec(&m).unwrap()).unwrap_err();
        assert!(e.contains("layer media type") && e.contains("layer.v1.tar"), "{e}");
        m.layers.push(m.layers[0].clone());
        assert!(check_manifest(&cjson::to_vec(&m).unwrap()).unwrap_err().contains("2 layers"));
        assert!(check_manifest(br#"{"manifests":[]}"#).unwrap_err().contains("not an OCI image manifest"));
    }
}
