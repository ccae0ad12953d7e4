//! Downloads of pinned remote inputs (tar and .deb URLs) into the shared,
//! content-addressed download cache. Guards against tampered or truncated
//! downloads: a file enters the cache only after its sha256 matches the pin.
use crate::digest::{Digest, HashingWriter};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {msg}")]
    Http { url: String, msg: String },
    #[error("{url}: downloaded content hashes to {actual}, the pin is {expected}; the file was discarded")]
    Mismatch { url: String, expected: Digest, actual: Digest },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Path of a cached download.
pub fn cached(cache: &Path, d: &Digest) -> PathBuf {
    cache.join("downloads").join(d.hex())
}

/// Returns the cached file for `expected`, downloading `url` if needed.
pub fn fetch(cache: &Path, url: &str, expected: &Digest) -> Result<PathBuf, FetchError> {
    let dest = cached(cache, expected);
    if dest.is_file() {
        // Verify on every use: the cache is shared and could be damaged.
        let f = fs::File::open(&dest).map_err(|source| FetchError::Io { path: dest.clone(), source })?;
        let (actual, _) =
            crate::digest::digest_reader(f).map_err(|source| FetchError::Io { path: dest.clone(), source })?;
        if &actual == expected {
            return Ok(dest);
        }
        let _ = fs::remove_file(&dest);
    }
    let dir = cache.join("downloads");
    fs::create_dir_all(&dir).map_err(|source| FetchError::Io { path: dir.clone(), source })?;
    let http = |msg: String| FetchError::Http { url: url.into(), msg };
    // ring is the one rustls provider compiled in (shared with the registry
    // client); installing it twice is a harmless error.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::builder()
        .user_agent(concat!("moat/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| http(e.to_string()))?;
    let mut resp = client.get(url).send().map_err(|e| http(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(http(format!("HTTP {}", resp.status())));
    }
    let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|source| FetchError::Io { path: dir.clone(), source })?;
    let mut w = HashingWriter::new(tmp);
    resp.copy_to(&mut w).map_err(|e| http(e.to_string()))?;
    w.flush().map_err(|source| FetchError::Io { path: dir.clone(), source })?;
    let (tmp, actual, _) = w.finish();
    if &actual != expected {
        return Err(FetchError::Mismatch { url: url.into(), expected: expected.clone(), actual });
    }
    crate::fsio::persist(tmp, &dest).map_err(|source| FetchError::Io { path: dest.clone(), source })?;
    Ok(dest)
}
