//! The trust root of a Debian lock: `InRelease` verified with OpenPGP
//! (sequoia, standard policy: bindings, expiry, revocation, key flags) against
//! a pinned keyring, then every `Packages` index checked against the sha256
//! and size the signed Release lists. Guards against a hostile or stale mirror.
#![forbid(unsafe_code)]
use super::mirror::Fetcher;
use super::DebianError;
use openpgp::cert::{Cert, CertParser};
use openpgp::parse::stream::{MessageLayer, MessageStructure, VerificationHelper, VerifierBuilder};
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use sequoia_openpgp as openpgp;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::Read;

/// Loads every certificate of a keyring file (binary or armored).
pub(crate) fn load_keyring(bytes: &[u8]) -> Result<Vec<Cert>, DebianError> {
    let parser = CertParser::from_bytes(bytes).map_err(|e| DebianError::Keyring(e.to_string()))?;
    let certs: Vec<Cert> = parser.filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(DebianError::Keyring("the keyring holds no OpenPGP certificate".into()));
    }
    Ok(certs)
}

struct Helper<'a> {
    certs: &'a [Cert],
}

impl VerificationHelper for Helper<'_> {
    fn get_certs(&mut self, _ids: &[openpgp::KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(self.certs.to_vec())
    }
    fn check(&mut self, structure: MessageStructure) -> openpgp::Result<()> {
        let mut good = 0;
        let mut errors = Vec::new();
        for layer in structure.into_iter() {
            match layer {
                MessageLayer::SignatureGroup { results } => {
                    for r in results {
                        match r {
                            Ok(_) => good += 1,
                            Err(e) => errors.push(e.to_string()),
                        }
                    }
                }
                _ => return Err(anyhow_like("unexpected compression or encryption layer")),
            }
        }
        if good == 0 {
            let why = if errors.is_empty() { "no signature".to_string() } else { errors.join("; ") };
            return Err(anyhow_like(&format!("no good signature from the keyring ({why})")));
        }
        Ok(())
    }
}

fn anyhow_like(msg: &str) -> openpgp::anyhow::Error {
    openpgp::Error::BadSignature(msg.to_string()).into()
}

/// Verifies a cleartext-signed `InRelease` and returns the signed text only
/// (never the unverified bytes). At least one signature must be good.
pub(crate) fn verify_inrelease(signed: &[u8], certs: &[Cert]) -> Result<String, DebianError> {
    let policy = StandardPolicy::new();
    let sig = |e: openpgp::anyhow::Error| DebianError::Signature(format!("{e:#}"));
    let mut v =
        VerifierBuilder::from_bytes(signed).map_err(sig)?.with_policy(&policy, None, Helper { certs }).map_err(sig)?;
    let mut out = Vec::new();
    v.read_to_end(&mut out).map_err(|e| DebianError::Signature(e.to_string()))?;
    if !v.message_processed() {
        return Err(DebianError::Signature("the signed message was not fully processed".into()));
    }
    String::from_utf8(out).map_err(|_| DebianError::Signature("the signed Release text is not UTF-8".into()))
}

/// The parts of a verified Release file moat uses.
#[derive(Debug, Clone)]
pub(crate) struct Release {
    pub acquire_by_hash: bool,
    /// index path (relative to dists/SUITE) -> (sha256 hex, size)
    pub sha256: BTreeMap<String, (String, u64)>,
}

pub(crate) fn parse_release(text: &str) -> Result<Release, DebianError> {
    let paras = super::control::paragraphs(text).map_err(|e| DebianError::Parse { what: "Release".into(), msg: e })?;
    let p = paras.first().ok_or_else(|| DebianError::Parse { what: "Release".into(), msg: "empty".into() })?;
    let mut sha256 = BTreeMap::new();
    for line in p.get("SHA256").unwrap_or("").lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() != 3 {
            continue;
        }
        let size = w[1]
            .parse()
            .map_err(|_| DebianError::Parse { what: "Release".into(), msg: format!("bad size in {line:?}") })?;
        sha256.insert(w[2].to_string(), (w[0].to_ascii_lowercase(), size));
    }
    if sha256.is_empty() {
        return Err(DebianError::Parse { what: "Release".into(), msg: "no SHA256 entries".into() });
    }
    Ok(Release { acquire_by_hash: p.get("Acquire-By-Hash").is_some_and(|v| v.eq_ignore_ascii_case("yes")), sha256 })
}

/// Fetches and verifies `dists/SUITE/InRelease`. Returns the Release and the
/// sha256 of the signed file. `Ok(None)` when the mirror has no such suite.
pub(crate) fn fetch_release(
    f: &Fetcher,
    mirror: &str,
    suite: &str,
    certs: &[Cert],
) -> Result<Option<(Release, String)>, DebianError> {
    let url = format!("{mirror}/dists/{suite}/InRelease");
    let Some(bytes) = f.get(&url)? else { return Ok(None) };
    let text = verify_inrelease(&bytes, certs).map_err(|e| match e {
        DebianError::Signature(m) => DebianError::Signature(format!("{url}: {m}")),
        e => e,
    })?;
    Ok(Some((parse_release(&text)?, hex::encode(Sha256::digest(&bytes)))))
}

/// Fetches `COMPONENT/binary-ARCH/Packages` (xz, gz or plain, whichever the
/// Release lists first in that order), by hash when the mirror supports it,
/// and checks size and sha256 against the Release before decompressing.
pub(crate) fn fetch_packages(
    f: &Fetcher,
    mirror: &str,
    suite: &str,
    rel: &Release,
    component: &str,
    arch: &str,
) -> Result<Vec<u8>, DebianError> {
    let dir = format!("{component}/binary-{arch}");
    for ext in [".xz", ".gz", ""] {
        let name = format!("{dir}/Packages{ext}");
        let Some((hash, size)) = rel.sha256.get(&name) else { continue };
        let url = if rel.acquire_by_hash {
            format!("{mirror}/dists/{suite}/{dir}/by-hash/SHA256/{hash}")
        } else {
            format!("{mirror}/dists/{suite}/{name}")
        };
        let bytes =
            f.get(&url)?.ok_or_else(|| DebianError::Http { url: url.clone(), msg: "not found (404)".into() })?;
        let got = hex::encode(Sha256::digest(&bytes));
        if &got != hash || bytes.len() as u64 != *size {
            return Err(DebianError::IndexMismatch {
                url,
                expected: format!("sha256:{hash} ({size} bytes)"),
                got: format!("sha256:{got} ({} bytes)", bytes.len()),
            });
        }
        let mut out = Vec::new();
        let res = match ext {
            ".xz" => liblzma::read::XzDecoder::new(&bytes[..]).read_to_end(&mut out),
            ".gz" => flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut out),
            _ => {
                out = bytes;
                Ok(0)
            }
        };
        res.map_err(|e| DebianError::Parse { what: url.clone(), msg: e.to_string() })?;
        return Ok(out);
    }
    Err(DebianError::Parse {
        what: format!("{mirror}/dists/{suite}/Release"),
        msg: format!("lists no {dir}/Packages index"),
    })
}
