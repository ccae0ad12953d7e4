//! `moat push`: uploads an image from the store to a registry. Every blob is
//! checked with HEAD first and skipped if present; missing ones stream from
//! the store in one PUT each (size known; memory bounded by one chunk) and are
//! re-hashed on the way out, so a blob corrupted on disk never leaves; the
//! manifest goes up with its exact stored bytes, so the digest stays the lock's.
#![forbid(unsafe_code)]
use super::client::{connect, runtime, Conn, Options};
use super::progress::Progress;
use super::reference::{parse_reference, repo_name};
use super::{RegistryError, Result};
use crate::digest::Digest;
use crate::oci::{Manifest, MEDIA_MANIFEST};
use crate::store::Store;
use bytes::{Bytes, BytesMut};
use futures_util::{stream, Stream, StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use oci_client::errors::OciDistributionError;
use oci_client::{Reference, RegistryOperation};
use reqwest::header::HeaderValue;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tokio::io::AsyncReadExt;

/// Bytes read from the store per request-body chunk.
const CHUNK: usize = 1 << 20;
/// Blobs uploaded at once.
const PARALLEL: usize = 3;

/// What a push did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PushReport {
    /// `REGISTRY/REPO@sha256:...`: what lock files and deployments should name.
    pub pinned: String,
    pub digest: Digest,
    pub tag: Option<String>,
    pub uploaded: Vec<Digest>,
    pub skipped: Vec<Digest>,
    /// Blobs the registry linked from another repository (cross-repository mount).
    pub mounted: Vec<Digest>,
    pub bytes_uploaded: u64,
}

/// Pushes `image` (a store reference: NAME, NAME@sha256:..., sha256:...) to `target`.
pub fn push(store: &Store, image: &str, target: &str, opts: &Options) -> Result<PushReport> {
    let named = store.resolve(image)?;
    let digest = named.manifest.digest.clone();
    let bytes = store.read_blob(&digest)?;
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        RegistryError::Unsupported(format!("image {image}: manifest {digest} is not an image manifest: {e}"))
    })?;
    let target_ref = parse_reference(target)?;
    if let Some(d) = target_ref.digest() {
        if d != digest.to_string() {
            return Err(RegistryError::BadReference {
                reference: target.into(),
                reason: format!("names digest {d} but image {image} is {digest}"),
            });
        }
    }
    let media_type = manifest.media_type.clone().unwrap_or_else(|| named.manifest.media_type.clone());
    let media_type = if media_type.is_empty() { MEDIA_MANIFEST.to_string() } else { media_type };
    let mut blobs = vec![(manifest.config.digest.clone(), manifest.config.size)];
    for l in &manifest.layers {
        if !blobs.iter().any(|(d, _)| d == &l.digest) {
            blobs.push((l.digest.clone(), l.size));
        }
    }
    let progress = Progress::new(opts.progress);
    let sources = mount_sources(store, &target_ref);
    runtime()?.block_on(async {
        let conn = connect(&target_ref, opts).await?;
        conn.retry("authenticate for push", || conn.client.auth(&target_ref, &conn.auth, RegistryOperation::Push))
            .await?;
        let results: Vec<(Digest, Sent)> = stream::iter(blobs)
            .map(|(d, size)| push_blob(&conn, store, &target_ref, d, size, &progress, &sources))
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        let mut report = PushReport {
            pinned: format!("{}@{}", repo_name(&target_ref), digest),
            digest: digest.clone(),
            tag: target_ref.tag().map(str::to_string),
            uploaded: Vec::new(),
            skipped: Vec::new(),
            mounted: Vec::new(),
            bytes_uploaded: 0,
        };
        for (d, how) in results {
            match how {
                Sent::Uploaded(n) => {
                    report.bytes_uploaded += n;
                    report.uploaded.push(d);
                }
                Sent::Mounted => report.mounted.push(d),
                Sent::Present => report.skipped.push(d),
            }
        }
        let (reg, repo) = (target_ref.registry().to_string(), target_ref.repository().to_string());
        let manifest_ref = match target_ref.tag() {
            Some(tag) => Reference::with_tag(reg, repo, tag.to_string()),
            None => Reference::with_digest(reg, repo, digest.to_string()),
        };
        let ct = HeaderValue::from_str(&media_type).map_err(|_| {
            RegistryError::Unsupported(format!("manifest media type {media_type:?} is not a valid header"))
        })?;
        let body = Bytes::from(bytes);
        conn.retry("push manifest", || conn.client.push_manifest_raw(&manifest_ref, body.clone(), ct.clone())).await?;
        Ok(report)
    })
}

/// How a blob reached the registry.
pub(crate) enum Sent {
    Present,
    Mounted,
    Uploaded(u64),
}

/// For each blob, another repository of the target registry known to hold it:
/// images in the store pulled from there carry `ANNOTATION_SOURCE`.
fn mount_sources(store: &Store, target: &Reference) -> BTreeMap<Digest, String> {
    let mut out = BTreeMap::new();
    for img in store.images().unwrap_or_default() {
        let Some(src) = img.manifest.annotations.get(super::ANNOTATION_SOURCE) else { continue };
        let Some((reg, repo)) = src.split_once('/') else { continue };
        if reg != target.registry() || repo == target.repository() {
            continue;
        }
        let Ok(m) = store.manifest(&img.manifest.digest) else { continue };
        for d in std::iter::once(m.config.digest).chain(m.layers.into_iter().map(|l| l.digest)) {
            out.entry(d).or_insert_with(|| repo.to_string());
        }
    }
    out
}

/// Gets one blob into the target repository: skipped if present, mounted
/// from another repository if one is known to hold it, else uploaded.
pub(crate) async fn push_blob(
    conn: &Conn,
    store: &Store,
    r: &Reference,
    d: Digest,
    size: u64,
    progress: &Progress,
    sources: &BTreeMap<Digest, String>,
) -> Result<(Digest, Sent)> {
    let ds = d.to_string();
    if conn.retry("check blob", || conn.client.blob_exists(r, &ds)).await? {
        tracing::debug!(blob = %d, "registry has blob; skipped");
        return Ok((d, Sent::Present));
    }
    if let Some(repo) = sources.get(&d) {
        let from = Reference::with_digest(r.registry().to_string(), repo.clone(), ds.clone());
        // A refused mount (no pull right on the source, registry without
        // mount support) is not an error: the blob is uploaded instead.
        match conn.client.mount_blob(r, &from, &ds).await {
            Ok(()) => return Ok((d, Sent::Mounted)),
            Err(e) => tracing::debug!(blob = %d, from = %repo, error = %e, "cross-repository mount refused; uploading"),
        }
    }
    let on_disk = store.blob_size(&d)?;
    if on_disk != size {
        return Err(RegistryError::Unsupported(format!("blob {d}: manifest says {size} bytes, store holds {on_disk}")));
    }
    let bar = progress.bar(format!("push {}", d.short()), size);
    let path = store.blob_path(&d);
    conn.retry("upload blob", || {
        conn.client.push_blob_stream(r, file_stream(path.clone(), d.clone(), bar.clone()), &ds, Some(size))
    })
    .await?;
    bar.finish();
    Ok((d, Sent::Uploaded(size)))
}

/// Streams a store blob in `CHUNK`s, re-hashing it; the stream fails at the
/// end if the file no longer hashes to `expected` (so the upload is aborted).
fn file_stream(
    path: PathBuf,
    expected: Digest,
    bar: ProgressBar,
) -> impl Stream<Item = std::result::Result<Bytes, OciDistributionError>> + Send + 'static {
    bar.set_position(0);
    struct St {
        file: Option<tokio::fs::File>,
        path: PathBuf,
        hasher: Sha256,
        expected: Digest,
        bar: ProgressBar,
    }
    let st = St { file: None, path, hasher: Sha256::new(), expected, bar };
    stream::try_unfold(st, |mut st| async move {
        if st.file.is_none() {
            st.file = Some(tokio::fs::File::open(&st.path).await?);
        }
        let Some(file) = st.file.as_mut() else { return Ok(None) };
        let mut buf = BytesMut::with_capacity(CHUNK);
        while buf.len() < CHUNK {
            if file.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        if buf.is_empty() {
            let actual = Digest::from_raw(st.hasher.clone().finalize().into());
            if actual != st.expected {
                let msg = format!("store blob {} now hashes to {actual}: refusing to upload it", st.expected);
                return Err(OciDistributionError::IoError(std::io::Error::new(std::io::ErrorKind::InvalidData, msg)));
            }
            return Ok(None);
        }
        st.hasher.update(&buf);
        st.bar.inc(buf.len() as u64);
        Ok(Some((buf.freeze(), st)))
    })
}
