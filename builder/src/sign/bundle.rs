//! Sigstore bundles (v0.3) signed with a key, not a certificate: the DSSE
//! envelope plus the key's hint, with no transparency-log entry (moat signs
//! offline). What `@sigstore/verify` and cosign's `--new-bundle-format` read.
//! Guards against a bundle whose envelope was swapped (the envelope is what
//! is verified) and oversized input (`MAX_BUNDLE`).
#![forbid(unsafe_code)]
use super::envelope::{Envelope, MAX_ENVELOPE};
use serde_json::{json, Value};

/// Media type (and OCI artifact type) of a v0.3 bundle.
pub const MEDIA_BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// Largest bundle read.
pub const MAX_BUNDLE: u64 = MAX_ENVELOPE + (64 << 10);

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a Sigstore bundle: {0}")]
    Malformed(String),
    #[error("bundle media type is {0:?}, not {MEDIA_BUNDLE}")]
    MediaType(String),
}

/// A key-signed bundle around `envelope`; `hint` names the key.
pub fn make(envelope: &Envelope, hint: &str) -> Vec<u8> {
    let v = json!({
        "mediaType": MEDIA_BUNDLE,
        "verificationMaterial": {
            "publicKey": {"hint": hint},
            "tlogEntries": [],
        },
        "dsseEnvelope": envelope,
    });
    crate::cjson::to_vec(&v).unwrap_or_default()
}

/// The envelope of a bundle and its key hint.
pub fn parse(bytes: &[u8]) -> Result<(Envelope, String), BundleError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| BundleError::Malformed(e.to_string()))?;
    let mt = v.get("mediaType").and_then(Value::as_str).unwrap_or_default();
    if mt != MEDIA_BUNDLE {
        return Err(BundleError::MediaType(mt.to_string()));
    }
    let env = v.get("dsseEnvelope").ok_or_else(|| BundleError::Malformed("no dsseEnvelope".into()))?;
    let env: Envelope =
        serde_json::from_value(env.clone()).map_err(|e| BundleError::Malformed(format!("dsseEnvelope: {e}")))?;
    let hint = v.pointer("/verificationMaterial/publicKey/hint").and_then(Value::as_str).unwrap_or_default();
    Ok((env, hint.to_string()))
}
