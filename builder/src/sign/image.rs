//! Signing and attesting one image of the store: `moat sign` writes a
//! classic cosign signature and a Sigstore bundle; `moat attest` writes the
//! SLSA provenance (from the lock that pins the image) and the SPDX SBOM,
//! each as a DSSE envelope in the `.att` image and as a bundle referrer.
//! Signatures use RFC 6979 nonces, so the same key and image give the same
//! bytes. Guards against attesting an image with a lock that does not pin
//! it (the subject would lie).
#![forbid(unsafe_code)]
use super::artifacts::{self, ArtifactError};
use super::envelope::{self, Statement};
use super::keys::{self, SigningKey};
use super::provenance::{self, PREDICATE_COSIGN_SIGN, PREDICATE_SPDX};
use super::{bundle, payload};
use crate::digest::Digest;
use crate::lock::Lock;
use crate::oci::Descriptor;
use crate::store::{Store, StoreError};
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::Signature;

#[derive(Debug, thiserror::Error)]
pub enum SignImageError {
    #[error("image store")]
    Store(#[from] StoreError),
    #[error("writing the signature artifacts")]
    Artifact(#[from] ArtifactError),
    #[error("image {image} is {actual}, but the lock pins {locked}: attest the image that lock builds")]
    NotLocked { image: String, actual: Digest, locked: Digest },
    #[error("SBOM of {0}")]
    Sbom(String, #[source] crate::debian::DebianError),
    #[error("the lock: {0}")]
    Lock(String),
}

/// What `sign` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Signed {
    pub image: String,
    pub digest: Digest,
    /// Store name of the classic signature image (`sha256-HEX.sig`).
    pub signature: String,
    /// The bundle referrer's manifest digest.
    pub bundle: Digest,
    pub key: String,
}

/// One attestation `attest` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attested {
    pub predicate_type: String,
    /// Digest of the DSSE envelope blob in the `.att` image.
    pub envelope: Digest,
    pub bundle: Digest,
}

/// The descriptor a referrer's `subject` names (no store annotations).
fn subject(d: &Descriptor) -> Descriptor {
    Descriptor::new(&d.media_type, d.digest.clone(), d.size)
}

/// Signs `reference` (a store image) with `key`; `identity` is the
/// `docker-reference` the payload names (default: the image's name).
pub fn sign(
    store: &Store,
    reference: &str,
    key: &SigningKey,
    identity: Option<&str>,
) -> Result<Signed, SignImageError> {
    let img = store.resolve(reference)?;
    let digest = img.manifest.digest.clone();
    let body = payload::make(identity.unwrap_or(&img.name), &digest);
    let sig: Signature = key.sign(&body);
    let sig = base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes());
    artifacts::add_signature(store, &digest, &body, &sig)?;
    let statement = Statement::about(&img.name, &digest, PREDICATE_COSIGN_SIGN, serde_json::json!({}));
    let hint = keys::key_id(key.verifying_key());
    let b = bundle::make(&envelope::sign(key, &statement.to_bytes()), &hint);
    let referrer = artifacts::add_bundle(store, &subject(&img.manifest), &b, PREDICATE_COSIGN_SIGN)?;
    Ok(Signed { image: img.name, signature: artifacts::sig_tag(&digest), digest, bundle: referrer.digest, key: hint })
}

/// Attests `reference` with the provenance its `lock` gives (`lock_bytes` is
/// the file as committed, `blueprint` its path in the project) and, when the
/// image has Debian packages, its SPDX SBOM.
pub fn attest(
    store: &Store,
    reference: &str,
    key: &SigningKey,
    lock: &Lock,
    lock_bytes: &[u8],
    blueprint: &str,
) -> Result<Vec<Attested>, SignImageError> {
    let img = store.resolve(reference)?;
    let digest = img.manifest.digest.clone();
    if digest != lock.image.manifest {
        return Err(SignImageError::NotLocked { image: img.name, actual: digest, locked: lock.image.manifest.clone() });
    }
    let provenance = provenance::statement(lock, lock_bytes, blueprint).map_err(SignImageError::Lock)?;
    let mut statements = vec![provenance];
    // The digest just checked, not the name again (it could have moved).
    let pinned = if img.name.is_empty() { digest.to_string() } else { format!("{}@{digest}", img.name) };
    let (_, _, packages) = crate::debian::sbom::image_packages(store, &pinned)
        .map_err(|e| SignImageError::Sbom(reference.to_string(), e))?;
    let doc = crate::debian::sbom::spdx(&img.name, &digest.to_string(), &packages.unwrap_or_default());
    statements.push(Statement::about(&img.name, &digest, PREDICATE_SPDX, doc));
    let hint = keys::key_id(key.verifying_key());
    let mut out = Vec::new();
    for st in statements {
        let env = envelope::sign(key, &st.to_bytes());
        let env_bytes = env.to_bytes();
        artifacts::add_attestation(store, &digest, &env_bytes, &st.predicate_type)?;
        let referrer =
            artifacts::add_bundle(store, &subject(&img.manifest), &bundle::make(&env, &hint), &st.predicate_type)?;
        out.push(Attested {
            predicate_type: st.predicate_type,
            envelope: Digest::of(&env_bytes),
            bundle: referrer.digest,
        });
    }
    Ok(out)
}
