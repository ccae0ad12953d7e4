//! Tarballs by their pins: at lock, each is downloaded, checked against
//! the registry's sha512 and looked into; at build, each is taken by its
//! pins (sha256 and sha512) from the cache or the registry and unpacked.
//! Guards against a tarball that is not what was locked (refused, naming
//! the package).
#![forbid(unsafe_code)]
use super::registry::{self, Client};
use super::{integrity, layout, NpmError};
use crate::downloads::Pin;
use crate::Digest;
use std::path::Path;

/// A tarball as the registry serves it now, checked against its sha512 `sri`
/// (lock time): its bytes.
pub(crate) fn fetch_new(client: &Client, id: &str, url: &str, sri: &str) -> Result<Vec<u8>, NpmError> {
    let bytes = client.get(url, registry::MAX_TARBALL, "*/*")?;
    if !integrity::matches(sri, &bytes) {
        return Err(NpmError::Integrity {
            package: id.into(),
            expected: sri.into(),
            got: integrity::sri_sha512(&bytes),
        });
    }
    Ok(bytes)
}

/// A locked tarball by its pins (build time), unpacked.
pub(crate) fn fetch_locked(
    client: &Client,
    cache: &Path,
    id: &str,
    p: &super::LockedNpm,
) -> Result<layout::Unpacked, NpmError> {
    let sha = Digest::parse_hex(&p.sha256)
        .map_err(|_| NpmError::Package { package: id.into(), msg: "lock: sha256 is not 64 hex characters".into() })?;
    let pin = Pin { sha256: sha, size: Some(p.size) };
    let bytes = registry::tarball(client, cache, id, &p.tarball, &pin)?;
    if !integrity::matches(&p.integrity, &bytes) {
        return Err(NpmError::Integrity {
            package: id.into(),
            expected: p.integrity.clone(),
            got: integrity::sri_sha512(&bytes),
        });
    }
    layout::unpack(id, &bytes)
}
