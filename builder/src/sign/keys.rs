//! TEMPORARY (replaced by the keys branch): the key API the sign room uses.
#![forbid(unsafe_code)]
use base64::Engine as _;
pub use p256::ecdsa::{SigningKey, VerifyingKey};
use p256::pkcs8::EncodePublicKey;
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Bad(String),
}

pub fn load_private(pem: &[u8], _password: &[u8]) -> Result<SigningKey, KeyError> {
    use p256::pkcs8::DecodePrivateKey;
    let s = std::str::from_utf8(pem).map_err(|e| KeyError::Bad(e.to_string()))?;
    SigningKey::from_pkcs8_pem(s).map_err(|e| KeyError::Bad(e.to_string()))
}
pub fn load_public(pem: &[u8]) -> Result<VerifyingKey, KeyError> {
    use p256::pkcs8::DecodePublicKey;
    let s = std::str::from_utf8(pem).map_err(|e| KeyError::Bad(e.to_string()))?;
    VerifyingKey::from_public_key_pem(s).map_err(|e| KeyError::Bad(e.to_string()))
}
pub fn key_id(key: &VerifyingKey) -> String {
    let der = key.to_public_key_der().map(|d| d.as_bytes().to_vec()).unwrap_or_default();
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(der))
}
pub fn read_key_file(path: &std::path::Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|e| KeyError::Bad(format!("{}: {e}", path.display())))
}
