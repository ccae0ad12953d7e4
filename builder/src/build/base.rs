//! The base stage: the `[base]` image (scratch, a local OCI layout or a
//! registry image pinned by digest) copied into the store, its layers and
//! config taken as the start of the image. Guards against a substituted
//! base: every manifest and blob is read verified against its digest.
#![forbid(unsafe_code)]
use super::{BuildError, Layer};
use crate::blueprint::{BaseRef, Loaded};
use crate::digest::Digest;
use crate::errors::chain;
use crate::lock::LockedBase;
use crate::oci::{self, ImageConfig, Manifest};
use crate::store::Store;
use std::io;
use std::path::{Path, PathBuf};

pub(super) type BaseParts = (Vec<Layer>, Option<ImageConfig>, Option<LockedBase>);

pub(super) fn base(l: &Loaded, store: &Store, progress: bool) -> Result<BaseParts, BuildError> {
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
                    .map_err(|e| BuildError::Base(format!("{}: {}", l.at(l.bp.base.image.span()), chain(&e))))?;
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
    if dst.reuse_blob(d)? {
        return Ok(());
    }
    let mut r = src.open_blob(d)?;
    let mut w = dst.blob_writer()?;
    io::copy(&mut r, &mut w).map_err(|e| BuildError::Base(format!("copying {d}: {e}")))?;
    w.commit(Some(d))?;
    Ok(())
}
