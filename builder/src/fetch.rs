//! Downloads of pinned remote inputs (tar and .deb URLs) into the shared
//! downloads cache (`<cache>/downloads`). Guards against tampered or
//! truncated downloads: a file enters the cache only after its sha256
//! matches the pin, and is verified again on every use.
#![forbid(unsafe_code)]
use crate::digest::Digest;
use crate::downloads::{Downloads, Failure, Pin};
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {msg}")]
    Http { url: String, msg: String },
    #[error("{url}: downloaded content hashes to {actual}, the pin is {expected}; the file was discarded")]
    Mismatch { url: String, expected: Digest, actual: Digest },
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
}

/// The cache of URL inputs under `cache`.
fn downloads(cache: &Path) -> Downloads {
    Downloads::new(cache.join("downloads"))
}

/// Returns the cached file for `expected`, downloading `url` if needed.
pub(crate) fn fetch(cache: &Path, url: &str, expected: &Digest) -> Result<PathBuf, FetchError> {
    let http = |msg: String| FetchError::Http { url: url.into(), msg };
    let get = |file: &mut std::fs::File, _offset: u64| {
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
        resp.copy_to(file).map(drop).map_err(|e| http(e.to_string()))
    };
    let pin = Pin { sha256: expected.clone(), size: None };
    downloads(cache).file(&pin, get).map_err(|e| match e {
        Failure::Fetch(e) => e,
        Failure::Io { path, source } => FetchError::Io { path, source },
        Failure::Mismatch { actual, .. } => {
            FetchError::Mismatch { url: url.into(), expected: expected.clone(), actual }
        }
    })
}
