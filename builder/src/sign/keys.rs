//! cosign's key formats: its password-encrypted private key file
//! (`ENCRYPTED SIGSTORE PRIVATE KEY`, scrypt + NaCl secretbox around PKCS#8)
//! and the PEM `PUBLIC KEY` beside it, for ECDSA P-256. Threats addressed: a
//! stolen key file is useless without its password (scrypt makes each guess
//! cost ~100 ms and 32 MiB); a malformed or hostile file cannot exhaust
//! memory or time (the file, every field and the scrypt parameters are
//! bounded before anything is allocated or derived) nor make moat panic; no
//! error message carries the password or key material.
//!
//! The format is go-securesystemslib's `encrypted` package as cosign uses it:
//! the PEM body is JSON `{"kdf":{"name":"scrypt","params":{"N","r","p"},
//! "salt"},"cipher":{"name":"nacl/secretbox","nonce"},"ciphertext"}` (byte
//! strings in standard base64), the box key is scrypt(password, salt, N, r,
//! p) with 32 bytes out, and the box holds the key's PKCS#8 DER.
#![forbid(unsafe_code)]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use crypto_secretbox::aead::Aead;
use crypto_secretbox::{KeyInit, XSalsa20Poly1305};
use p256::elliptic_curve::zeroize::Zeroizing;
use p256::pkcs8::der::asn1::ObjectIdentifier;
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, PrivateKeyInfo};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

pub use p256::ecdsa::{SigningKey, VerifyingKey};

/// The PEM type cosign writes today.
pub const SIGSTORE_PRIVATE_LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
/// The PEM type older cosign wrote; still read.
pub const COSIGN_PRIVATE_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";
/// A SubjectPublicKeyInfo, as cosign and openssl write public keys.
pub const PUBLIC_LABEL: &str = "PUBLIC KEY";

/// Largest key file (or PEM text) read. A P-256 key file is under 1 KiB.
pub const MAX_KEY_FILE: u64 = 64 * 1024;
/// Largest ciphertext accepted: a P-256 PKCS#8 key is ~140 bytes, plus a
/// 16-byte tag; this leaves room for any encoding of it, not for other keys.
const MAX_CIPHERTEXT: usize = 1024;
/// Largest salt accepted (cosign writes 32 bytes).
const MAX_SALT: usize = 1024;
const SALT_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// scrypt parameters moat writes: go-securesystemslib's "legacy" set, the
/// one every cosign version reads (newer ones also read N=2^16 and 2^17).
const WRITE_LOG_N: u8 = 15;
const WRITE_R: u32 = 8;
const WRITE_P: u32 = 1;
/// Bounds on the scrypt parameters read from a file: N a power of two up to
/// 2^20, r up to 32, p up to 16, memory (128·N·r bytes) at most 1 GiB, and
/// work (N·r·p) at most 2^24, about 16 times cosign's own default. Values
/// cosign writes (N 2^15..2^17, r 8, p 1) are well inside.
const MAX_LOG_N: u32 = 20;
const MAX_R: u64 = 32;
const MAX_P: u64 = 16;
const MAX_SCRYPT_MEMORY: u64 = 1 << 30;
const MAX_SCRYPT_WORK: u64 = 1 << 24;

const KDF_SCRYPT: &str = "scrypt";
const CIPHER_SECRETBOX: &str = "nacl/secretbox";

/// id-ecPublicKey (RFC 5480).
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp256r1 / prime256v1 / P-256.
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// What failed while reading, decrypting or writing a key. Display names the
/// failure (and the file, where there is one), never a secret.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("key file {path} is {size} bytes; a key file is at most {MAX_KEY_FILE} bytes")]
    FileTooLarge { path: PathBuf, size: u64 },
    #[error("key text is {len} bytes; a key is at most {MAX_KEY_FILE} bytes")]
    TooLarge { len: usize },
    #[error("not a PEM key: {0}")]
    Pem(&'static str),
    #[error("PEM type is {found:?}, expected {expected}")]
    WrongType { found: String, expected: &'static str },
    #[error("malformed encrypted key: {0}")]
    Malformed(&'static str),
    #[error("unsupported encrypted key: {what} {name:?} (cosign's keys use scrypt and nacl/secretbox)")]
    Unsupported { what: &'static str, name: String },
    #[error(
        "encrypted key's scrypt parameters N={n} r={r} p={p} are refused: N must be a power of two \
         at most 2^{MAX_LOG_N}, r at most {MAX_R}, p at most {MAX_P}, memory 128*N*r at most 1 GiB \
         and work N*r*p at most 2^24"
    )]
    ScryptBounds { n: u64, r: u64, p: u64 },
    #[error("wrong password or corrupt key")]
    WrongPassword,
    #[error("decrypted key is not a PKCS#8 private key (cosign writes PKCS#8)")]
    Pkcs8,
    #[error("key is {0}, not ECDSA P-256: moat signs and verifies with ECDSA P-256 only")]
    NotP256(String),
    #[error("not a valid public key (SubjectPublicKeyInfo)")]
    Spki,
    #[error("cannot encode the key")]
    Encode,
    #[error("the operating system gave no random bytes")]
    Random(#[source] rand_core::Error),
}

/// A new key pair in cosign's formats: (encrypted private key PEM, public key PEM).
pub fn generate(password: &[u8]) -> Result<(String, String), KeyError> {
    let key = random_key()?;
    let der = key.to_pkcs8_der().map_err(|_| KeyError::Encode)?;
    let private = encrypted_pem(der.as_bytes(), password)?;
    let public = public_pem(key.verifying_key())?;
    Ok((private, public))
}

/// Parses cosign's encrypted private key file (PEM types "ENCRYPTED SIGSTORE
/// PRIVATE KEY" and the older "ENCRYPTED COSIGN PRIVATE KEY"), decrypting
/// with the password.
pub fn load_private(pem: &[u8], password: &[u8]) -> Result<SigningKey, KeyError> {
    let (label, body) = pem_block(pem)?;
    if label != SIGSTORE_PRIVATE_LABEL && label != COSIGN_PRIVATE_LABEL {
        return Err(KeyError::WrongType { found: shown(&label), expected: SIGSTORE_PRIVATE_LABEL });
    }
    let der = open(&body, password)?;
    signing_key_from_pkcs8(&der)
}

/// Parses a PEM "PUBLIC KEY" (SubjectPublicKeyInfo, P-256), as cosign and
/// openssl write it.
pub fn load_public(pem: &[u8]) -> Result<VerifyingKey, KeyError> {
    let (label, der) = pem_block(pem)?;
    if label != PUBLIC_LABEL {
        return Err(KeyError::WrongType { found: shown(&label), expected: PUBLIC_LABEL });
    }
    let spki = p256::pkcs8::spki::SubjectPublicKeyInfoRef::try_from(der.as_slice()).map_err(|_| KeyError::Spki)?;
    check_p256(spki.algorithm.oid, spki.algorithm.parameters_oid().ok())?;
    VerifyingKey::from_public_key_der(&der).map_err(|_| KeyError::Spki)
}

/// The public key's PEM ("PUBLIC KEY", SubjectPublicKeyInfo, uncompressed
/// point), byte for byte what cosign writes as cosign.pub.
pub fn public_pem(key: &VerifyingKey) -> Result<String, KeyError> {
    p256::pkcs8::der::pem::encode_string(PUBLIC_LABEL, p256::pkcs8::LineEnding::LF, &spki_der(key))
        .map_err(|_| KeyError::Encode)
}

/// The key's id: standard base64 of SHA-256 over its SubjectPublicKeyInfo
/// DER (what cosign puts in a bundle's publicKey hint).
pub fn key_id(key: &VerifyingKey) -> String {
    STANDARD.encode(Sha256::digest(spki_der(key)))
}

/// Reads a key file with a size bound (a file over [`MAX_KEY_FILE`] is
/// refused before it is read whole), naming the path in the error. Refuses
/// what is not a regular file (a FIFO would block, a device never end).
pub fn read_key_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    let read_err = |source| KeyError::Read { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(KeyError::NotAFile { path: path.to_path_buf() });
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(KeyError::FileTooLarge { path: path.to_path_buf(), size: meta.len() });
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    // The file may grow between fstat and read: read one byte past the bound to notice.
    file.take(MAX_KEY_FILE + 1).read_to_end(&mut buf).map_err(read_err)?;
    if buf.len() as u64 > MAX_KEY_FILE {
        return Err(KeyError::FileTooLarge { path: path.to_path_buf(), size: buf.len() as u64 });
    }
    Ok(buf)
}

/// A random P-256 signing key from the operating system's generator (an
/// error, not a panic, if it has none).
fn random_key() -> Result<SigningKey, KeyError> {
    loop {
        let mut bytes = Zeroizing::new([0u8; 32]);
        OsRng.try_fill_bytes(bytes.as_mut()).map_err(KeyError::Random)?;
        // Fails only for zero or values >= the group order (chance ~2^-32).
        if let Ok(key) = SigningKey::from_slice(bytes.as_ref()) {
            return Ok(key);
        }
    }
}

fn random<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut b = [0u8; N];
    OsRng.try_fill_bytes(&mut b).map_err(KeyError::Random)?;
    Ok(b)
}

/// The SubjectPublicKeyInfo DER of a P-256 key: the fixed algorithm header
/// (id-ecPublicKey, prime256v1) then the 65-byte uncompressed point.
fn spki_der(key: &VerifyingKey) -> Vec<u8> {
    const HEADER: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
        0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let point = key.to_encoded_point(false);
    let mut der = Vec::with_capacity(HEADER.len() + point.len());
    der.extend_from_slice(&HEADER);
    der.extend_from_slice(point.as_bytes());
    der
}

/// Refuses every key but ECDSA on P-256, naming what it is instead.
fn check_p256(algorithm: ObjectIdentifier, curve: Option<ObjectIdentifier>) -> Result<(), KeyError> {
    if algorithm != OID_EC_PUBLIC_KEY {
        return Err(KeyError::NotP256(algorithm_name(algorithm)));
    }
    match curve {
        Some(c) if c == OID_P256 => Ok(()),
        Some(c) => Err(KeyError::NotP256(format!("ECDSA on {}", curve_name(c)))),
        None => Err(KeyError::NotP256("ECDSA without a named curve".to_string())),
    }
}

fn algorithm_name(oid: ObjectIdentifier) -> String {
    match oid.to_string().as_str() {
        "1.2.840.113549.1.1.1" => "an RSA key".to_string(),
        "1.3.101.112" => "an Ed25519 key".to_string(),
        "1.3.101.113" => "an Ed448 key".to_string(),
        other => format!("a key of algorithm {other}"),
    }
}

fn curve_name(oid: ObjectIdentifier) -> String {
    match oid.to_string().as_str() {
        "1.3.132.0.34" => "P-384".to_string(),
        "1.3.132.0.35" => "P-521".to_string(),
        "1.3.132.0.10" => "secp256k1".to_string(),
        other => format!("curve {other}"),
    }
}

/// The signing key in a decrypted PKCS#8 document, refused unless it is
/// ECDSA P-256.
fn signing_key_from_pkcs8(der: &[u8]) -> Result<SigningKey, KeyError> {
    let info = PrivateKeyInfo::try_from(der).map_err(|_| KeyError::Pkcs8)?;
    check_p256(info.algorithm.oid, info.algorithm.parameters_oid().ok())?;
    SigningKey::from_pkcs8_der(der).map_err(|_| KeyError::Pkcs8)
}

/// A PEM label as shown in an error: at most 64 characters.
fn shown(label: &str) -> String {
    label.chars().take(64).collect()
}

/// The first PEM block in `input`: its type and decoded body. Like Go's
/// `pem.Decode` (which cosign uses), text before the block and after its end
/// line is ignored and line width is free; headers are refused (no cosign
/// or public key file has them).
fn pem_block(input: &[u8]) -> Result<(String, Vec<u8>), KeyError> {
    if input.len() as u64 > MAX_KEY_FILE {
        return Err(KeyError::TooLarge { len: input.len() });
    }
    let text = std::str::from_utf8(input).map_err(|_| KeyError::Pem("the text is not UTF-8"))?;
    const BEGIN: &str = "-----BEGIN ";
    let start = text.find(BEGIN).ok_or(KeyError::Pem("no -----BEGIN line"))?;
    let rest = &text[start + BEGIN.len()..];
    let (label, rest) = rest.split_once("-----").ok_or(KeyError::Pem("the BEGIN line does not end in -----"))?;
    if label.contains('\n') {
        return Err(KeyError::Pem("the BEGIN line does not end in -----"));
    }
    let end_line = format!("-----END {label}-----");
    let end = rest.find(&end_line).ok_or(KeyError::Pem("no -----END line for its type (truncated?)"))?;
    let body = &rest[..end];
    if body.contains(':') {
        return Err(KeyError::Pem("PEM headers are not supported"));
    }
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = STANDARD.decode(b64).map_err(|_| KeyError::Pem("the body is not base64"))?;
    if der.is_empty() {
        return Err(KeyError::Pem("the body is empty"));
    }
    Ok((label.to_string(), der))
}

/// The JSON inside an encrypted key's PEM. Unknown fields are ignored, as
/// go-securesystemslib ignores them.
#[derive(Serialize, Deserialize)]
struct Envelope {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    salt: String,
}

#[derive(Serialize, Deserialize)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u64,
    p: u64,
}

#[derive(Serialize, Deserialize)]
struct Cipher {
    name: String,
    nonce: String,
}

/// Checks scrypt parameters read from a file against moat's bounds; returns
/// them as the scrypt crate takes them. Nothing is allocated before this.
fn scrypt_params(p: &ScryptParams) -> Result<scrypt::Params, KeyError> {
    let refused = || KeyError::ScryptBounds { n: p.n, r: p.r, p: p.p };
    if p.n < 2 || !p.n.is_power_of_two() || p.n.trailing_zeros() > MAX_LOG_N {
        return Err(refused());
    }
    if p.r == 0 || p.r > MAX_R || p.p == 0 || p.p > MAX_P {
        return Err(refused());
    }
    // Each factor is bounded above, so none of these products overflows.
    if 128 * p.n * p.r > MAX_SCRYPT_MEMORY || p.n * p.r * p.p > MAX_SCRYPT_WORK {
        return Err(refused());
    }
    let log_n = u8::try_from(p.n.trailing_zeros()).map_err(|_| refused())?;
    let (r, pp) = (u32::try_from(p.r).map_err(|_| refused())?, u32::try_from(p.p).map_err(|_| refused())?);
    scrypt::Params::new(log_n, r, pp, 32).map_err(|_| refused())
}

/// The 32-byte secretbox key scrypt derives from the password.
fn box_key(password: &[u8], salt: &[u8], params: &scrypt::Params) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let mut key = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(password, salt, params, key.as_mut()).map_err(|_| KeyError::Encode)?;
    Ok(key)
}

/// Decodes one base64 field, refusing (before decoding) one longer than
/// `max` bytes would need.
fn field(b64: &str, max: usize, what: &'static str) -> Result<Vec<u8>, KeyError> {
    if b64.len() > max.div_ceil(3) * 4 {
        return Err(KeyError::Malformed(what));
    }
    STANDARD.decode(b64).map_err(|_| KeyError::Malformed(what))
}

/// Encrypts `plaintext` with the password: go-securesystemslib's JSON
/// envelope, with the parameters every cosign reads.
fn seal(plaintext: &[u8], password: &[u8]) -> Result<String, KeyError> {
    let params = scrypt::Params::new(WRITE_LOG_N, WRITE_R, WRITE_P, 32).map_err(|_| KeyError::Encode)?;
    let salt = random::<SALT_LEN>()?;
    let nonce = random::<NONCE_LEN>()?;
    let key = box_key(password, &salt, &params)?;
    let sealed = XSalsa20Poly1305::new(crypto_secretbox::Key::from_slice(&key[..]))
        .encrypt(&nonce.into(), plaintext)
        .map_err(|_| KeyError::Encode)?;
    let envelope = Envelope {
        kdf: Kdf {
            name: KDF_SCRYPT.to_string(),
            params: ScryptParams { n: 1 << WRITE_LOG_N, r: WRITE_R.into(), p: WRITE_P.into() },
            salt: STANDARD.encode(salt),
        },
        cipher: Cipher { name: CIPHER_SECRETBOX.to_string(), nonce: STANDARD.encode(nonce) },
        ciphertext: STANDARD.encode(sealed),
    };
    serde_json::to_string(&envelope).map_err(|_| KeyError::Encode)
}

/// Decrypts an envelope [`seal`] (or cosign) wrote. Every field is checked
/// and bounded before scrypt runs; a failed box open is "wrong password or
/// corrupt key" (the two cannot be told apart, by design).
fn open(envelope: &[u8], password: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let e: Envelope = serde_json::from_slice(envelope)
        .map_err(|_| KeyError::Malformed("the PEM body is not the JSON of an encrypted key"))?;
    if e.kdf.name != KDF_SCRYPT {
        return Err(KeyError::Unsupported { what: "key derivation", name: shown(&e.kdf.name) });
    }
    if e.cipher.name != CIPHER_SECRETBOX {
        return Err(KeyError::Unsupported { what: "cipher", name: shown(&e.cipher.name) });
    }
    let params = scrypt_params(&e.kdf.params)?;
    let salt = field(&e.kdf.salt, MAX_SALT, "salt is not base64 of at most 1024 bytes")?;
    let nonce: [u8; NONCE_LEN] = field(&e.cipher.nonce, NONCE_LEN, "nonce is not base64 of 24 bytes")?
        .try_into()
        .map_err(|_| KeyError::Malformed("nonce is not base64 of 24 bytes"))?;
    let sealed = field(&e.ciphertext, MAX_CIPHERTEXT, "ciphertext is not base64 of at most 1024 bytes")?;
    if sealed.len() <= TAG_LEN {
        return Err(KeyError::Malformed("ciphertext is shorter than its authentication tag"));
    }
    let key = box_key(password, &salt, &params)?;
    let plain = XSalsa20Poly1305::new(crypto_secretbox::Key::from_slice(&key[..]))
        .decrypt(&nonce.into(), sealed.as_slice())
        .map_err(|_| KeyError::WrongPassword)?;
    Ok(Zeroizing::new(plain))
}

/// An encrypted private key PEM around PKCS#8 DER.
fn encrypted_pem(pkcs8_der: &[u8], password: &[u8]) -> Result<String, KeyError> {
    let json = seal(pkcs8_der, password)?;
    p256::pkcs8::der::pem::encode_string(SIGSTORE_PRIVATE_LABEL, p256::pkcs8::LineEnding::LF, json.as_bytes())
        .map_err(|_| KeyError::Encode)
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
