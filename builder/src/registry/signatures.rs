//! Moving an image's signature artifacts (see `sign::artifacts`) between the
//! store and a registry: `push` sends the `.sig` and `.att` images under their
//! tags and every bundle referrer by digest, then merges the referrers tag
//! fallback (`sha256-HEX`, an index) with the one already there, because
//! registries without the OCI 1.1 referrers API (Debian's docker-registry)
//! keep nothing else. `fetch` brings them back. Guards against tampering in
//! transit as pulls do (every manifest fetched by digest hashes to it, every
//! blob is checked), and against unbounded input (manifests capped).
//! A tag's content is not trusted here: signatures are checked afterwards
//! (`sign::check`) against the keys the caller trusts.
#![forbid(unsafe_code)]
use super::client::{connect, runtime, Conn, Options};
use super::progress::Progress;
use super::pull::{fetch_manifest, pull_blob, MAX_MANIFEST};
use super::push::push_blob;
use super::reference::parse_reference;
use super::{RegistryError, Result};
use crate::digest::Digest;
use crate::oci::{Descriptor, Index, Manifest, MEDIA_INDEX, MEDIA_MANIFEST};
use crate::sign::artifacts::{att_tag, referrers_tag, sig_tag, MAX_ENTRIES};
use crate::sign::bundle::MEDIA_BUNDLE;
use crate::store::Store;
use bytes::Bytes;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE};
use oci_client::{Reference, RegistryOperation};
use reqwest::header::HeaderValue;
use std::collections::BTreeMap;

/// What moved: the store names (`sha256-HEX.sig`, `.att`, `sha256-HEX`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Moved {
    pub artifacts: Vec<String>,
}

fn not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| {
            matches!(x.code, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound)
        }),
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        _ => false,
    }
}

/// Pushes the signature artifacts of image `subject` to `target`'s repository.
pub fn push(store: &Store, subject: &Digest, target: &str, opts: &Options) -> Result<Moved> {
    let r = parse_reference(target)?;
    let mut moved = Moved::default();
    let progress = Progress::new(false);
    runtime()?.block_on(async {
        let conn = connect(&r, opts).await?;
        conn.retry("authenticate for push", || conn.client.auth(&r, &conn.auth, RegistryOperation::Push)).await?;
        for name in [sig_tag(subject), att_tag(subject)] {
            let Some(desc) = store.get_ref(&name)? else { continue };
            let mut bytes = store.read_blob(&desc.digest)?;
            // Add to what other signers put there, as cosign does; a tag
            // whose manifest does not read is replaced.
            if let Some(theirs) = get_tag(&conn, &r, &name).await? {
                match crate::sign::artifacts::merged_image(store, &bytes, &theirs) {
                    Ok(merged) => bytes = merged,
                    Err(e) => tracing::warn!(tag = %name, error = %crate::errors::chain(&e), "registry's signature image replaced"),
                }
            }
            push_manifest(&conn, store, &r, &bytes, MEDIA_MANIFEST, Some(&name), &progress).await?;
            moved.artifacts.push(name);
        }
        let name = referrers_tag(subject);
        if let Some(desc) = store.get_ref(&name)? {
            let local: Index = store.read_json(&desc.digest)?;
            for m in &local.manifests {
                let bytes = store.read_blob(&m.digest)?;
                push_manifest(&conn, store, &r, &bytes, MEDIA_MANIFEST, None, &progress).await?;
            }
            // Keep what other signers attached: the remote index, plus ours.
            let remote = get_tag(&conn, &r, &name).await?;
            let mut entries: Vec<serde_json::Value> = remote
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v.get("manifests").and_then(|m| m.as_array()).cloned())
                .unwrap_or_default();
            let ours: serde_json::Value = store.read_json(&desc.digest)?;
            for e in ours.get("manifests").and_then(|m| m.as_array()).cloned().unwrap_or_default() {
                if !entries.iter().any(|x| x["digest"] == e["digest"]) {
                    entries.push(e);
                }
            }
            entries.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
            let merged = serde_json::json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": entries});
            let bytes = crate::cjson::to_vec(&merged).map_err(|e| RegistryError::Unsupported(e.to_string()))?;
            push_manifest(&conn, store, &r, &bytes, MEDIA_INDEX, Some(&name), &progress).await?;
            moved.artifacts.push(name);
        }
        Ok(moved)
    })
}

/// Uploads the blobs a manifest names (skipping present ones), then the
/// manifest itself, by tag or by digest.
async fn push_manifest(
    conn: &Conn,
    store: &Store,
    r: &Reference,
    bytes: &[u8],
    media_type: &str,
    tag: Option<&str>,
    progress: &Progress,
) -> Result<()> {
    if media_type == MEDIA_MANIFEST {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| RegistryError::Unsupported(format!("signature manifest is not an image manifest: {e}")))?;
        let mut blobs: BTreeMap<Digest, u64> = BTreeMap::from([(m.config.digest, m.config.size)]);
        blobs.extend(m.layers.into_iter().map(|l| (l.digest, l.size)));
        for (d, size) in blobs {
            push_blob(conn, store, r, d, size, progress, &BTreeMap::new()).await?;
        }
    }
    let (reg, repo) = (r.registry().to_string(), r.repository().to_string());
    let target = match tag {
        Some(t) => Reference::with_tag(reg, repo, t.to_string()),
        None => Reference::with_digest(reg, repo, Digest::of(bytes).to_string()),
    };
    let ct = HeaderValue::from_str(media_type).map_err(|_| RegistryError::Unsupported(media_type.into()))?;
    let body = Bytes::copy_from_slice(bytes);
    conn.retry("push signature manifest", || conn.client.push_manifest_raw(&target, body.clone(), ct.clone())).await?;
    Ok(())
}

/// A manifest by tag, or None when the registry has no such tag.
async fn get_tag(conn: &Conn, r: &Reference, tag: &str) -> Result<Option<Vec<u8>>> {
    let by_tag = Reference::with_tag(r.registry().to_string(), r.repository().to_string(), tag.to_string());
    let accept = [OCI_IMAGE_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE];
    match conn.client.pull_manifest_raw(&by_tag, &conn.auth, &accept).await {
        Ok((b, _)) if b.len() > MAX_MANIFEST => {
            Err(RegistryError::Unsupported(format!("{tag}: {} bytes is over the {MAX_MANIFEST}-byte limit", b.len())))
        }
        Ok((b, _)) => Ok(Some(b.to_vec())),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(conn.error(tag, e)),
    }
}

/// Fetches the signature artifacts of `reference` (`REGISTRY/REPO@sha256:...`)
/// into `store` under their names; what the registry lacks is skipped.
pub fn fetch(reference: &str, store: &Store, opts: &Options) -> Result<Moved> {
    let r = parse_reference(reference)?;
    let subject = r.digest().ok_or_else(|| RegistryError::TagOnly { reference: reference.into() })?;
    let subject = Digest::parse(subject)
        .map_err(|e| RegistryError::BadReference { reference: reference.into(), reason: e.to_string() })?;
    let progress = Progress::new(false);
    let mut moved = Moved::default();
    runtime()?.block_on(async {
        let conn = connect(&r, opts).await?;
        conn.retry("authenticate for pull", || conn.client.auth(&r, &conn.auth, RegistryOperation::Pull)).await?;
        for name in [sig_tag(&subject), att_tag(&subject)] {
            let Some(bytes) = get_tag(&conn, &r, &name).await? else { continue };
            if let Err(e) = fetch_blobs(&conn, store, &r, &bytes, &progress).await {
                tracing::warn!(artifact = %name, error = %crate::errors::chain(&e), "signature artifact not fetched");
                continue;
            }
            let d = store.put_blob(&bytes)?;
            store.set_ref(&name, Descriptor::new(MEDIA_MANIFEST, d, bytes.len() as u64))?;
            moved.artifacts.push(name);
        }
        let name = referrers_tag(&subject);
        if let Some(bytes) = get_tag(&conn, &r, &name).await? {
            let idx: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| RegistryError::Unsupported(format!("{name} is not an image index: {e}")))?;
            // Only Sigstore bundles, at most MAX_ENTRIES; one that cannot be
            // fetched is left out, not fatal (anyone who can push can add one).
            let mut kept = Vec::new();
            let entries = idx.get("manifests").and_then(|m| m.as_array()).cloned().unwrap_or_default();
            for e in entries.into_iter().filter(|e| e["artifactType"] == MEDIA_BUNDLE).take(MAX_ENTRIES) {
                let Some(d) = e["digest"].as_str().and_then(|d| Digest::parse(d).ok()) else { continue };
                let got = async {
                    let (_, child) = fetch_manifest(&conn, &r, &d, "referrer manifest").await?;
                    fetch_blobs(&conn, store, &r, &child, &progress).await?;
                    store.put_blob(&child)?;
                    Ok::<(), RegistryError>(())
                }
                .await;
                match got {
                    Ok(()) => kept.push(e),
                    Err(err) => {
                        tracing::warn!(referrer = %d, error = %crate::errors::chain(&err), "referrer not fetched")
                    }
                }
            }
            if !kept.is_empty() {
                let index = serde_json::json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": kept});
                let bytes = crate::cjson::to_vec(&index).map_err(|e| RegistryError::Unsupported(e.to_string()))?;
                let d = store.put_blob(&bytes)?;
                store.set_ref(&name, Descriptor::new(MEDIA_INDEX, d, bytes.len() as u64))?;
                moved.artifacts.push(name);
            }
        }
        Ok(moved)
    })
}

async fn fetch_blobs(conn: &Conn, store: &Store, r: &Reference, manifest: &[u8], progress: &Progress) -> Result<()> {
    let m: Manifest = serde_json::from_slice(manifest)
        .map_err(|e| RegistryError::Unsupported(format!("signature manifest is not an image manifest: {e}")))?;
    if m.layers.len() > MAX_ENTRIES {
        return Err(RegistryError::Unsupported(format!(
            "a signature manifest with {} layers (moat reads {MAX_ENTRIES})",
            m.layers.len()
        )));
    }
    for l in std::iter::once(m.config).chain(m.layers) {
        if l.size > crate::sign::bundle::MAX_BUNDLE {
            return Err(RegistryError::Unsupported(format!(
                "signature blob {} is {} bytes: too large",
                l.digest, l.size
            )));
        }
        pull_blob(conn, store, r, l.digest, l.size, progress).await?;
    }
    Ok(())
}
