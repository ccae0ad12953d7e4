//! Enforces a policy's `[trust]` section before a sandbox starts from an
//! image (every front door goes through `sandbox::resolve`): the image's
//! manifest digest must carry a signature by a trusted key and, when asked,
//! SLSA provenance signed by a trusted key that names that digest. A pass is
//! remembered by (check version, digest, trust section) in `cache/trust/`
//! (0700), so a start of an
//! already-checked image costs one stat. Guards against running an unsigned
//! image, one signed by an unknown key, or one whose provenance describes
//! another image. Does not guard against a trusted key that was stolen, or a
//! signer's pipeline that signs what it should not (docs/signing.md).
#![forbid(unsafe_code)]
use super::SandboxError;
use crate::policy::trust::Trust;
use moat_builder::digest::Digest;
use moat_builder::sign::{check, provenance::PREDICATE_SLSA};
use moat_builder::store::NamedImage;
use moat_builder::Store;
use std::path::PathBuf;

/// Bumped whenever what a check proves changes: passes cached by an older
/// check are not reused.
const CHECK_VERSION: u32 = 1;

fn cache_entry(image: &Digest, trust: &Trust) -> Option<PathBuf> {
    let key = serde_json::to_vec(&(CHECK_VERSION, image.to_string(), trust)).ok()?;
    Some(moat_builder::home::cache_dir().join("trust").join(Digest::of(&key).hex()))
}

/// Resolves `image` (a store reference) once and checks that digest against
/// `trust`; returns the image resolved, for the start to prepare exactly it.
/// Ok when nothing is required or everything required holds.
pub fn check(store: &Store, image: &str, trust: &Trust) -> Result<NamedImage, SandboxError> {
    let checked = store.resolve(image)?;
    let digest = checked.manifest.digest.clone();
    if !trust.enforced() {
        return Ok(checked);
    }
    let cached = cache_entry(&digest, trust);
    if cached.as_ref().is_some_and(|c| c.exists()) {
        tracing::debug!(target: "moat::trust", image = %digest, decision = "allowed", via = "cache", "image trust");
        return Ok(checked);
    }
    let refuse = |what: &str, e: &dyn std::error::Error| {
        let msg = moat_builder::errors::chain(e);
        tracing::warn!(target: "moat::trust", image = %digest, decision = "refused", reason = %msg, "image trust");
        SandboxError::Refused(format!(
            "image {image} ({digest}) is refused by the policy's [trust] section: {what}: {msg}"
        ))
    };
    let keys = trust.verifying_keys().map_err(SandboxError::Refused)?;
    if trust.require_signature {
        check::signature(store, &digest, &keys).map_err(|e| refuse("signature", &e))?;
    }
    if trust.require_provenance {
        check::attestations(store, &digest, &keys, Some(PREDICATE_SLSA)).map_err(|e| refuse("provenance", &e))?;
    }
    tracing::info!(target: "moat::trust", image = %digest, decision = "allowed", via = "checked", "image trust");
    if let Some((dir, file)) = cached.as_ref().and_then(|c| c.parent().map(|d| (d, c))) {
        // A cache that cannot be written only costs the next start a check.
        use std::os::unix::fs::DirBuilderExt;
        let made = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir);
        let _ = made.and_then(|()| moat_builder::fsio::write(file, b"ok\n", 0o600));
    }
    Ok(checked)
}
