//! Checking an image's signatures and attestations against trusted keys:
//! what `verify-signature`, `verify-attestation`, `pull --verify-key` and a
//! policy's `[trust]` section rely on. A signature counts only if it verifies
//! with a trusted key AND what it signed names this image's manifest digest;
//! an attestation only if its DSSE signature verifies, its statement names
//! the digest and its predicate type is the one asked for. Guards against an
//! unsigned or re-pointed image, a signature by an unknown key, a tampered
//! payload or statement, and provenance copied from another image. Every
//! refusal lists what was tried and why each failed.
#![forbid(unsafe_code)]
use super::artifacts::{self, ArtifactError, Blob};
use super::envelope::{self, Envelope, Statement};
use super::keys::VerifyingKey;
use super::provenance::{PREDICATE_COSIGN_SIGN, PREDICATE_SLSA, PREDICATE_SPDX};
use super::{bundle, payload};
use crate::digest::Digest;
use crate::store::Store;
use base64::Engine as _;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("reading the signature artifacts")]
    Artifact(#[from] ArtifactError),
    #[error("{image} is not signed: the store has no {sig} and no signature bundle refers to it")]
    Unsigned { image: Digest, sig: String },
    #[error("no valid signature of {image} by a trusted key ({n} trusted): {}", .reasons.join("; "))]
    NoValidSignature { image: Digest, n: usize, reasons: Vec<String> },
    #[error("{image} has no {kind} attestation")]
    NoAttestation { image: Digest, kind: String },
    #[error("no valid {kind} attestation of {image} by a trusted key ({n} trusted): {}", .reasons.join("; "))]
    NoValidAttestation { image: Digest, kind: String, n: usize, reasons: Vec<String> },
    #[error("unknown attestation type {0:?} (slsaprovenance, spdx, or a predicate type URI)")]
    UnknownType(String),
}

type Result<T> = std::result::Result<T, CheckError>;

/// A signature that held.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GoodSignature {
    /// Where it was found (`sha256-HEX.sig layer N` or `referrer sha256:...`).
    pub via: String,
    /// Index of the key (in the list given) that verified it.
    pub key: usize,
    /// The `docker-reference` a classic payload names (empty for bundles).
    pub identity: String,
}

/// An attestation that held.
#[derive(Debug, Clone)]
pub struct GoodAttestation {
    pub via: String,
    pub key: usize,
    pub statement: Statement,
    /// The exact statement bytes that were signed.
    pub payload: Vec<u8>,
}

/// Maps `--type` names to predicate types.
pub fn predicate_type(name: &str) -> Result<String> {
    Ok(match name {
        "slsaprovenance" | "slsaprovenance1" | "provenance" => PREDICATE_SLSA.into(),
        "spdx" | "spdxjson" => PREDICATE_SPDX.into(),
        s if s.starts_with("https://") => s.into(),
        other => return Err(CheckError::UnknownType(other.into())),
    })
}

/// Checks that `image` carries a signature by one of `keys`; the first that
/// holds is returned. Classic signatures are tried first, then bundles.
pub fn signature(store: &Store, image: &Digest, keys: &[VerifyingKey]) -> Result<GoodSignature> {
    let classic = artifacts::signatures(store, image)?;
    let mut reasons = Vec::new();
    for s in &classic {
        let via = format!("{} layer {}", artifacts::sig_tag(image), s.layer);
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(s.signature.trim()) else {
            reasons.push(format!("{via}: the signature annotation is not base64"));
            continue;
        };
        let Some(key) = keys.iter().position(|k| envelope::verifies(k, &s.payload, &raw)) else {
            reasons.push(format!("{via}: the signature does not verify with a trusted key (payload or signature changed, or another key)"));
            continue;
        };
        match payload::parse(&s.payload) {
            Ok(c) if &c.digest == image => {
                return Ok(GoodSignature { via, key, identity: c.docker_reference });
            }
            Ok(c) => reasons.push(format!("{via}: the signed payload names {}, not this image", c.digest)),
            Err(e) => reasons.push(format!("{via}: {e}")),
        }
    }
    // Bundles are read only when no classic signature held. The referrer's
    // annotation is unsigned: it only sorts; the signed statement's type
    // decides (a bundle without the annotation is tried).
    let (bundles, foreign) = artifacts::bundles(store, image)?;
    let bundles: Vec<Blob> = bundles
        .into_iter()
        .filter(|b| b.predicate_type.is_empty() || b.predicate_type == PREDICATE_COSIGN_SIGN)
        .collect();
    if classic.is_empty() && bundles.is_empty() && foreign.is_empty() {
        return Err(CheckError::Unsigned { image: image.clone(), sig: artifacts::sig_tag(image) });
    }
    reasons.extend(foreign);
    for b in &bundles {
        match open_bundle(b, image, &|t: &str| t == PREDICATE_COSIGN_SIGN, keys) {
            Ok((key, _, _)) => return Ok(GoodSignature { via: b.what.clone(), key, identity: String::new() }),
            Err(r) => reasons.push(r),
        }
    }
    Err(CheckError::NoValidSignature { image: image.clone(), n: keys.len(), reasons })
}

/// Checks `image`'s attestations of `predicate_type` (all types when
/// `None`) and returns every one that holds, or an error naming why each failed.
pub fn attestations(
    store: &Store,
    image: &Digest,
    keys: &[VerifyingKey],
    predicate_type: Option<&str>,
) -> Result<Vec<GoodAttestation>> {
    let kind = predicate_type.unwrap_or("any").to_string();
    let wanted = |t: &str| t != PREDICATE_COSIGN_SIGN && predicate_type.is_none_or(|p| p == t);
    let mut candidates: Vec<(Blob, bool)> = Vec::new();
    candidates.extend(artifacts::attestations(store, image)?.into_iter().map(|b| (b, false)));
    let (bundles, foreign) = artifacts::bundles(store, image)?;
    candidates.extend(bundles.into_iter().map(|b| (b, true)));
    // Annotations are unsigned: they only pre-sort (an unannotated one is
    // tried); the signed statement's own type is what is checked.
    candidates.retain(|(b, _)| b.predicate_type.is_empty() || wanted(&b.predicate_type));
    if candidates.is_empty() && foreign.is_empty() {
        return Err(CheckError::NoAttestation { image: image.clone(), kind });
    }
    let (mut good, mut reasons) = (Vec::new(), foreign);
    for (b, is_bundle) in &candidates {
        let opened = if *is_bundle {
            open_bundle(b, image, &wanted, keys)
        } else {
            Envelope::parse(&b.bytes)
                .map_err(|e| format!("{}: {e}", b.what))
                .and_then(|env| open_envelope(&env, &b.what, image, &wanted, keys))
        };
        match opened {
            Ok((key, statement, payload)) => {
                good.push(GoodAttestation { via: b.what.clone(), key, statement, payload })
            }
            Err(r) => reasons.push(r),
        }
    }
    if good.is_empty() {
        return Err(CheckError::NoValidAttestation { image: image.clone(), kind, n: keys.len(), reasons });
    }
    Ok(good)
}

fn open_bundle(
    b: &Blob,
    image: &Digest,
    want: &dyn Fn(&str) -> bool,
    keys: &[VerifyingKey],
) -> std::result::Result<(usize, Statement, Vec<u8>), String> {
    let (env, _hint) = bundle::parse(&b.bytes).map_err(|e| format!("{}: {e}", b.what))?;
    open_envelope(&env, &b.what, image, want, keys)
}

/// Opens an envelope with the trusted keys and checks its statement: the
/// predicate type the annotation claimed, and this image as a subject.
fn open_envelope(
    env: &Envelope,
    what: &str,
    image: &Digest,
    want: &dyn Fn(&str) -> bool,
    keys: &[VerifyingKey],
) -> std::result::Result<(usize, Statement, Vec<u8>), String> {
    let (payload, key) = env.open(keys).map_err(|e| format!("{what}: {e}"))?;
    let st = Statement::parse(&payload).map_err(|e| format!("{what}: {e}"))?;
    if !want(&st.predicate_type) {
        return Err(format!("{what}: the signed statement is a {}, not the type asked for", st.predicate_type));
    }
    if !st.names(image) {
        let named: Vec<String> = st
            .subject
            .iter()
            .map(|s| s.digest.get("sha256").map(|h| format!("sha256:{h}")).unwrap_or_default())
            .collect();
        return Err(format!("{what}: the signed statement is about {}, not this image", named.join(", ")));
    }
    Ok((key, st, payload))
}

/// The SLSA provenance statements attested for `image` as they were signed,
/// without checking who signed them (`moat verify` compares their content
/// with a rebuild; `attestations` checks the signatures). Returns (where,
/// statement bytes) for every envelope or bundle whose statement is SLSA
/// provenance about `image` (the statement decides, not the annotation).
pub fn attested_provenance(store: &Store, image: &Digest) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let envs = artifacts::attestations(store, image)?.into_iter().map(|b| (b.what, Envelope::parse(&b.bytes).ok()));
    let bundles =
        artifacts::bundles(store, image)?.0.into_iter().map(|b| (b.what, bundle::parse(&b.bytes).ok().map(|(e, _)| e)));
    for (what, env) in envs.chain(bundles) {
        let Some(payload) = env.and_then(|e| base64::engine::general_purpose::STANDARD.decode(e.payload).ok()) else {
            continue;
        };
        let is_provenance =
            Statement::parse(&payload).is_ok_and(|st| st.predicate_type == PREDICATE_SLSA && st.names(image));
        if is_provenance {
            out.push((what, payload));
        }
    }
    Ok(out)
}
