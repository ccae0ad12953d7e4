//! cosign's classic signature payload ("simple signing"): the JSON that names
//! an image manifest digest, signed with ECDSA P-256 over its SHA-256.
//! Guards against a signature for one image being taken for another: the
//! digest it names is checked against the image's, not only the signature.
#![forbid(unsafe_code)]
use crate::digest::Digest;
use serde_json::{json, Value};

/// Media type of the payload layer of a `.sig` image.
pub const MEDIA_SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Layer annotation holding the standard-base64 DER signature.
pub const ANNOTATION_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
/// `critical.type` of a cosign image signature.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";
/// Largest payload read (cosign's are a few hundred bytes plus annotations).
pub const MAX_PAYLOAD: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("not a simple-signing payload: {0}")]
    Malformed(String),
}

/// What a payload says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub docker_reference: String,
    pub digest: Digest,
}

/// The payload for `digest`, naming `docker_reference` (canonical JSON, so
/// the same image and name give the same bytes).
pub fn make(docker_reference: &str, digest: &Digest) -> Vec<u8> {
    let v = json!({
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest.to_string()},
            "type": SIGNATURE_TYPE,
        },
        "optional": null,
    });
    crate::cjson::to_vec(&v).unwrap_or_default()
}

/// Reads a payload: its type must be cosign's and it must name a digest.
pub fn parse(bytes: &[u8]) -> Result<Claim, PayloadError> {
    let bad = |m: &str| PayloadError::Malformed(m.to_string());
    let v: Value = serde_json::from_slice(bytes).map_err(|e| PayloadError::Malformed(e.to_string()))?;
    let critical = v.get("critical").ok_or_else(|| bad("no \"critical\" object"))?;
    let ty = critical.get("type").and_then(Value::as_str).unwrap_or_default();
    if ty != SIGNATURE_TYPE {
        return Err(PayloadError::Malformed(format!("critical.type is {ty:?}, not {SIGNATURE_TYPE:?}")));
    }
    let digest = critical
        .pointer("/image/docker-manifest-digest")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no critical.image.docker-manifest-digest"))?;
    let digest = Digest::parse(digest).map_err(|e| PayloadError::Malformed(format!("docker-manifest-digest: {e}")))?;
    let docker_reference =
        critical.pointer("/identity/docker-reference").and_then(Value::as_str).unwrap_or_default().to_string();
    Ok(Claim { docker_reference, digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_cosign_shape() {
        let d = Digest::of(b"manifest");
        let p = make("registry.example/agent", &d);
        let text = String::from_utf8(p.clone()).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"registry.example/agent\"}},\"image\":{{\"docker-manifest-digest\":\"{d}\"}},\"type\":\"cosign container image signature\"}},\"optional\":null}}"
            )
        );
        assert_eq!(parse(&p).unwrap(), Claim { docker_reference: "registry.example/agent".into(), digest: d });
    }

    #[test]
    fn other_types_and_missing_digests_are_refused() {
        assert!(parse(br#"{"critical":{"type":"x","image":{"docker-manifest-digest":"sha256:00"}}}"#).is_err());
        assert!(parse(br#"{"critical":{"type":"cosign container image signature","image":{}}}"#).is_err());
        assert!(parse(b"not json").is_err());
    }
}
