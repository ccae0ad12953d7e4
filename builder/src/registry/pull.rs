//! `moat pull` and the library call the blueprint builder uses for a registry
//! `[base]`: fetches an image by digest into the store. Addresses a lying or
//! corrupted registry: the manifest must hash to the pinned digest, every blob
//! streams through `Store::blob_writer()` and is committed only if it hashes to
//! its descriptor's digest and size, so nothing unverified enters the store.
//! A transfer cut mid-blob resumes from the bytes already written (HTTP Range);
//! blobs already committed are skipped, so a killed pull restarts cleanly.
#![forbid(unsafe_code)]
use super::client::{connect, runtime, Conn, Options};
use super::progress::Progress;
use super::reference::{parse_reference, repo_name};
use super::{RegistryError, Result};
use crate::digest::Digest;
use crate::oci::{Descriptor, Index, Manifest, MEDIA_INDEX, MEDIA_MANIFEST};
use crate::store::{Store, StoreError};
use futures_util::{stream, StreamExt, TryStreamExt};
use oci_client::client::BlobResponse;
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::{Reference, RegistryOperation};
use std::io::Write;
use std::time::Duration;

/// Blobs downloaded at once.
const PARALLEL: usize = 3;
/// Attempts per blob when the transfer breaks mid-stream.
const BLOB_ATTEMPTS: u32 = 5;
/// Largest manifest or index accepted (the distribution spec suggests 4 MiB).
pub(crate) const MAX_MANIFEST: usize = 4 << 20;

/// What a pull did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PullReport {
    /// Name given in the store's index.json.
    pub name: String,
    /// `REGISTRY/REPO@sha256:...` of the image manifest stored.
    pub pinned: String,
    pub manifest: Descriptor,
    pub downloaded: Vec<Digest>,
    pub present: Vec<Digest>,
    pub bytes_downloaded: u64,
}

/// Pulls `reference` (must carry `@sha256:`) into `store`; returns the stored
/// image manifest's descriptor (for an index, the linux manifest for this CPU).
pub fn pull_image(reference: &str, store: &Store, opts: &Options) -> Result<Descriptor> {
    pull(reference, store, opts).map(|r| r.manifest)
}

/// `pull_image` with the full report.
pub fn pull(reference: &str, store: &Store, opts: &Options) -> Result<PullReport> {
    let r = parse_reference(reference)?;
    let Some(pinned) = r.digest() else {
        return Err(RegistryError::TagOnly { reference: reference.to_string() });
    };
    let pinned = Digest::parse(pinned)
        .map_err(|e| RegistryError::BadReference { reference: reference.into(), reason: e.to_string() })?;
    let name = opts.name.clone().unwrap_or_else(|| r.repository().rsplit('/').next().unwrap_or("image").to_string());
    let progress = Progress::new(opts.progress);
    runtime()?.block_on(async {
        let conn = connect(&r, opts).await?;
        conn.retry("authenticate for pull", || conn.client.auth(&r, &conn.auth, RegistryOperation::Pull)).await?;
        let (mut digest, mut bytes) = fetch_manifest(&conn, &r, &pinned, "manifest").await?;
        let mut media_type = media_type_of(&bytes);
        let mut index = None;
        if media_type == MEDIA_INDEX || media_type == IMAGE_MANIFEST_LIST_MEDIA_TYPE {
            index = Some(bytes.clone());
            let child = pick_platform(&conn, &bytes, &digest, opts.architecture.as_deref())?;
            (digest, bytes) = fetch_manifest(&conn, &r, &child, "platform manifest").await?;
            media_type = media_type_of(&bytes);
        }
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Registry {
            registry: conn.registry.clone(),
            what: format!("manifest {digest}"),
            detail: format!("not an image manifest: {e}"),
        })?;
        let mut blobs = vec![(manifest.config.digest.clone(), manifest.config.size)];
        for l in &manifest.layers {
            if !blobs.iter().any(|(d, _)| d == &l.digest) {
                blobs.push((l.digest.clone(), l.size));
            }
        }
        let results: Vec<(Digest, Option<u64>)> = stream::iter(blobs)
            .map(|(d, size)| pull_blob(&conn, store, &r, d, size, &progress))
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        // Blobs first, manifest (then index) last: their presence means the image is whole.
        store.put_blob(&bytes)?;
        if let Some(idx) = &index {
            store.put_blob(idx)?;
        }
        let media_type = if media_type.is_empty() { MEDIA_MANIFEST.to_string() } else { media_type };
        let desc = Descriptor {
            media_type,
            digest: digest.clone(),
            size: bytes.len() as u64,
            annotations: Default::default(),
            platform: None,
        };
        // Remember where the image came from, so a later push to another
        // repository of the same registry can mount its blobs instead of uploading.
        let mut named = desc.clone();
        named.annotations.insert(super::ANNOTATION_SOURCE.into(), repo_name(&r));
        store.set_ref(&name, named)?;
        let mut report = PullReport {
            name,
            pinned: format!("{}@{}", repo_name(&r), digest),
            manifest: desc,
            downloaded: Vec::new(),
            present: Vec::new(),
            bytes_downloaded: 0,
        };
        for (d, got) in results {
            match got {
                Some(n) => {
                    report.bytes_downloaded += n;
                    report.downloaded.push(d);
                }
                None => report.present.push(d),
            }
        }
        Ok(report)
    })
}

/// Fetches a manifest or index by digest and checks its bytes hash to it.
pub(crate) async fn fetch_manifest(
    conn: &Conn,
    r: &Reference,
    digest: &Digest,
    what: &str,
) -> Result<(Digest, Vec<u8>)> {
    let by_digest = Reference::with_digest(r.registry().to_string(), r.repository().to_string(), digest.to_string());
    let accept =
        [OCI_IMAGE_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, IMAGE_MANIFEST_LIST_MEDIA_TYPE];
    let (bytes, _) = conn.retry(what, || conn.client.pull_manifest_raw(&by_digest, &conn.auth, &accept)).await?;
    if bytes.len() > MAX_MANIFEST {
        return Err(conn.error(
            what,
            oci_client::errors::OciDistributionError::GenericError(Some(format!(
                "{} bytes is over the {MAX_MANIFEST}-byte limit",
                bytes.len()
            ))),
        ));
    }
    let actual = Digest::of(&bytes);
    if &actual != digest {
        return Err(RegistryError::DigestMismatch {
            registry: conn.registry.clone(),
            what: what.into(),
            expected: digest.clone(),
            actual,
        });
    }
    Ok((actual, bytes.to_vec()))
}

fn media_type_of(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: String,
    }
    serde_json::from_slice::<Probe>(bytes).map(|p| p.media_type).unwrap_or_default()
}

/// The linux manifest for `arch` (default: this CPU) in an index.
fn pick_platform(conn: &Conn, bytes: &[u8], digest: &Digest, arch: Option<&str>) -> Result<Digest> {
    let arch = arch.unwrap_or(match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    });
    let idx: Index = serde_json::from_slice(bytes).map_err(|e| RegistryError::Registry {
        registry: conn.registry.clone(),
        what: format!("index {digest}"),
        detail: format!("not an image index: {e}"),
    })?;
    idx.manifests
        .iter()
        .find(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch))
        .map(|m| m.digest.clone())
        .ok_or_else(|| RegistryError::Unsupported(format!("index {digest} has no linux/{arch} manifest")))
}

/// Downloads one blob unless the store has it; returns the bytes fetched, or None.
pub(crate) async fn pull_blob(
    conn: &Conn,
    store: &Store,
    r: &Reference,
    d: Digest,
    size: u64,
    progress: &Progress,
) -> Result<(Digest, Option<u64>)> {
    if store.reuse_blob(&d)? {
        return Ok((d, None));
    }
    let what = format!("blob {d}");
    let ds = d.to_string();
    let bar = progress.bar(format!("pull {}", d.short()), size);
    let mut w = store.blob_writer()?;
    let mut written: u64 = 0;
    let mut attempt = 1;
    let mut delay = Duration::from_millis(200);
    loop {
        let res = async {
            let resp = conn.client.pull_blob_stream_partial(r, ds.as_str(), written, None).await?;
            let mut s = match resp {
                BlobResponse::Partial(s) => s,
                BlobResponse::Full(s) => {
                    if written > 0 {
                        // The registry ignored the Range: start this blob over.
                        w = store.blob_writer().map_err(std::io::Error::other)?;
                        written = 0;
                        bar.set_position(0);
                    }
                    s
                }
            };
            while let Some(chunk) = s.stream.next().await {
                let chunk = chunk?;
                if written + chunk.len() as u64 > size {
                    return Err(oci_client::errors::OciDistributionError::GenericError(Some(format!(
                        "more than the {size} bytes its descriptor says"
                    ))));
                }
                w.write_all(&chunk)?;
                written += chunk.len() as u64;
                bar.inc(chunk.len() as u64);
            }
            Ok(())
        }
        .await;
        match res {
            Ok(()) => break,
            Err(e) if attempt < BLOB_ATTEMPTS && super::client::is_transient(&e) => {
                tracing::warn!(registry = %conn.registry, blob = %d, attempt, resume_at = written, error = %crate::errors::chain(&e), "blob transfer broke; resuming");
                tokio::time::sleep(delay).await;
                delay *= 3;
                attempt += 1;
            }
            Err(e) => return Err(conn.error(&what, e)),
        }
    }
    if written != size {
        return Err(RegistryError::SizeMismatch {
            registry: conn.registry.clone(),
            what: "blob".into(),
            digest: d,
            got: written,
            want: size,
        });
    }
    match w.commit(Some(&d)) {
        Ok(_) => {}
        Err(StoreError::Mismatch { expected, actual }) => {
            return Err(RegistryError::DigestMismatch {
                registry: conn.registry.clone(),
                what: "blob".into(),
                expected,
                actual,
            });
        }
        Err(e) => return Err(e.into()),
    }
    bar.finish();
    Ok((d, Some(size)))
}
