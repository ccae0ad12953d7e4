//! DSSE envelopes around in-toto v1 statements: the pre-authentication
//! encoding (PAE), signing with RFC 6979 nonces (the same key and statement
//! give the same bytes) and checking. Guards against a signature over one
//! payload type being replayed as another (PAE binds the type), against a
//! statement about one image being accepted for another (`Statement::names`)
//! and against oversized or malformed envelopes (bounded, typed errors).
#![forbid(unsafe_code)]
use super::keys::{SigningKey, VerifyingKey};
use crate::digest::Digest;
use base64::Engine as _;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::Signature;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The DSSE payload type of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// Largest envelope read (an SPDX statement of a large image is a few MiB).
pub const MAX_ENVELOPE: u64 = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a DSSE envelope: {0}")]
    Malformed(String),
    #[error("payload type is {0:?}, not {PAYLOAD_TYPE}")]
    PayloadType(String),
    #[error("the envelope has no signature")]
    Unsigned,
    #[error("no signature in the envelope verifies with any of the {0} trusted key(s)")]
    NoTrustedSignature(usize),
    #[error("the statement is not an in-toto v1 statement: {0}")]
    BadStatement(String),
}

type Result<T> = std::result::Result<T, EnvelopeError>;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A DSSE envelope (JSON form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Standard base64 of the payload bytes.
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    #[serde(default)]
    pub keyid: String,
    /// Standard base64 of the ASN.1 DER ECDSA signature over the PAE.
    pub sig: String,
}

/// An in-toto v1 statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub type_: String,
    pub subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub predicate: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub name: String,
    pub digest: BTreeMap<String, String>,
}

impl Statement {
    /// A statement about one image manifest.
    pub fn about(name: &str, digest: &Digest, predicate_type: &str, predicate: Value) -> Statement {
        Statement {
            type_: STATEMENT_TYPE.into(),
            subject: vec![Subject {
                name: name.into(),
                digest: BTreeMap::from([("sha256".into(), digest.hex().into())]),
            }],
            predicate_type: predicate_type.into(),
            predicate,
        }
    }

    /// Whether one of the subjects is `digest`.
    pub fn names(&self, digest: &Digest) -> bool {
        self.subject.iter().any(|s| s.digest.get("sha256").is_some_and(|h| h.eq_ignore_ascii_case(digest.hex())))
    }

    /// Canonical JSON bytes (sorted keys): what is signed.
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::cjson::to_vec(self).unwrap_or_default()
    }

    pub fn parse(bytes: &[u8]) -> Result<Statement> {
        let s: Statement = serde_json::from_slice(bytes).map_err(|e| EnvelopeError::BadStatement(e.to_string()))?;
        if s.type_ != STATEMENT_TYPE {
            return Err(EnvelopeError::BadStatement(format!("_type is {:?}, not {STATEMENT_TYPE}", s.type_)));
        }
        Ok(s)
    }
}

/// DSSE v1 pre-authentication encoding of `payload` of type `payload_type`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Signs `payload` (an in-toto statement) into an envelope.
pub fn sign(key: &SigningKey, payload: &[u8]) -> Envelope {
    let sig: Signature = key.sign(&pae(PAYLOAD_TYPE, payload));
    Envelope {
        payload_type: PAYLOAD_TYPE.into(),
        payload: b64().encode(payload),
        signatures: vec![EnvelopeSignature { keyid: String::new(), sig: b64().encode(sig.to_der().as_bytes()) }],
    }
}

/// An ECDSA P-256 signature as DER (what cosign and openssl write) or as the
/// fixed 64-byte form.
pub fn parse_signature(raw: &[u8]) -> Option<Signature> {
    Signature::from_der(raw).ok().or_else(|| Signature::from_slice(raw).ok())
}

/// Whether `sig` over `message` verifies with `key`.
pub fn verifies(key: &VerifyingKey, message: &[u8], sig: &[u8]) -> bool {
    parse_signature(sig).is_some_and(|s| key.verify(message, &s).is_ok())
}

impl Envelope {
    pub fn parse(bytes: &[u8]) -> Result<Envelope> {
        serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        crate::cjson::to_vec(self).unwrap_or_default()
    }

    /// The payload bytes, after checking that one signature verifies with one
    /// of `keys`; returns them with the index of the key that verified.
    pub fn open(&self, keys: &[VerifyingKey]) -> Result<(Vec<u8>, usize)> {
        if self.payload_type != PAYLOAD_TYPE {
            return Err(EnvelopeError::PayloadType(self.payload_type.clone()));
        }
        if self.signatures.is_empty() {
            return Err(EnvelopeError::Unsigned);
        }
        let payload = b64().decode(&self.payload).map_err(|e| EnvelopeError::Malformed(format!("payload: {e}")))?;
        let message = pae(&self.payload_type, &payload);
        for s in &self.signatures {
            let Ok(raw) = b64().decode(&s.sig) else { continue };
            if let Some(i) = keys.iter().position(|k| verifies(k, &message, &raw)) {
                return Ok((payload, i));
            }
        }
        Err(EnvelopeError::NoTrustedSignature(keys.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_slice(&[seed; 32]).unwrap()
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // The example of the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn signing_is_deterministic_and_verifies() {
        let st = Statement::about("img", &Digest::of(b"m"), "https://example/p", serde_json::json!({"a": 1}));
        let (a, b) = (sign(&key(1), &st.to_bytes()), sign(&key(1), &st.to_bytes()));
        assert_eq!(a.to_bytes(), b.to_bytes());
        let (payload, which) = a.open(&[*key(2).verifying_key(), *key(1).verifying_key()]).unwrap();
        assert_eq!(which, 1);
        let back = Statement::parse(&payload).unwrap();
        assert!(back.names(&Digest::of(b"m")));
        assert!(!back.names(&Digest::of(b"other")));
    }

    #[test]
    fn a_changed_payload_or_type_is_refused() {
        let mut e = sign(&key(1), b"{}");
        let keys = [*key(1).verifying_key()];
        e.payload = b64().encode(b"{ }");
        assert!(matches!(e.open(&keys), Err(EnvelopeError::NoTrustedSignature(1))));
        let mut e = sign(&key(1), b"{}");
        e.payload_type = "text/plain".into();
        assert!(matches!(e.open(&keys), Err(EnvelopeError::PayloadType(_))));
        assert!(matches!(
            sign(&key(1), b"{}").open(&[*key(3).verifying_key()]),
            Err(EnvelopeError::NoTrustedSignature(1))
        ));
    }
}
