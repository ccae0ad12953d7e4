//! Enforces a policy's `[trust]` section before a sandbox starts from an
//! image (every front door goes through `sandbox::resolve`): the image's
//! manifest digest must carry a signature by a trusted key and, when asked,
//! SLSA provenance signed by a trusted key that names that digest. A pass is
//! remembered by (digest, trust section) in `cache/trust/`, so a start of an
//! already-checked image costs one stat. Guards against running an unsigned
//! image, one signed by an unknown key, or one whose provenance describes
//! another image. Does not guard against a trusted key that was stolen, or a
//! signer's pipeline that signs what it should not (docs/signing.md).
#![forbid(unsafe_code)]
use super::SandboxError;
use crate::policy::trust::Trust;
use moat_builder::digest::Digest;
use moat_builder::sign::{check, provenance::PREDICATE_SLSA};
use moat_builder::Store;
use std::path::PathBuf;

fn cache_entry(image: &Digest, trust: &Trust) -> PathBuf {
    let key = serde_json::to_vec(&(image.to_string(), trust)).unwrap_or_default();
    moat_builder::home::cache_dir().join("trust").join(Digest::of(&key).hex())
}

/// Checks `image` (a store reference) against `trust`; Ok when nothing is
/// required or everything required holds.
pub fn check(store: &Store, image: &str, trust: &Trust) -> Result<(), SandboxError> {
    if !trust.enforced() {
        return Ok(());
    }
    let digest = store.resolve(image)?.manifest.digest;
    let cached = cache_entry(&digest, trust);
    if cached.exists() {
        tracing::debug!(target: "moat::trust", image = %digest, decision = "allowed", via = "cache", "image trust");
        return Ok(());
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
    if let Some(dir) = cached.parent() {
        // A cache that cannot be written only costs the next start a check.
        let _ = std::fs::create_dir_all(dir).and_then(|()| moat_builder::fsio::write(&cached, b"ok\n", 0o644));
    }
    Ok(())
}
