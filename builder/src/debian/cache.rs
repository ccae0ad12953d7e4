//! The download cache shared by all builds: `cache_dir()/debs/<sha256>`,
//! content-addressed, resumable (`.partial` + HTTP Range), and verified before
//! every use. A file whose hash does not match the lock is discarded, never
//! used: guards against a tampered mirror or a corrupted cache.
use super::mirror::{mirror_from_host, Fetcher};
use super::{DebianError, LockedPackage};
use sha2::{Digest as _, Sha256};
use std::fs;
use std::io::Write;
use std::path::PathBuf;

pub fn debs_dir() -> PathBuf {
    crate::home::cache_dir().join("debs")
}

fn check(p: &LockedPackage, bytes: &[u8]) -> Result<(), DebianError> {
    let got = hex::encode(Sha256::digest(bytes));
    if got != p.sha256 || bytes.len() as u64 != p.size {
        return Err(DebianError::HashMismatch {
            what: format!("{} {} ({})", p.name, p.version, p.path),
            expected: format!("sha256:{} ({} bytes)", p.sha256, p.size),
            got: format!("sha256:{got} ({} bytes)", bytes.len()),
        });
    }
    Ok(())
}

/// Returns the verified bytes of a locked package, downloading it into the
/// cache if needed (from the mirror of the package's suite).
pub fn load(p: &LockedPackage, fetcher: &mut Option<Fetcher>) -> Result<Vec<u8>, DebianError> {
    if p.sha256.len() != 64 || !p.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(DebianError::Spec(format!("lock entry {}: bad sha256 {:?}", p.name, p.sha256)));
    }
    let dir = debs_dir();
    let path = dir.join(&p.sha256);
    let io =
        |e: std::io::Error, what: &PathBuf| DebianError::Io { path: what.display().to_string(), msg: e.to_string() };
    if let Ok(b) = fs::read(&path) {
        match check(p, &b) {
            Ok(()) => return Ok(b),
            Err(e) => {
                tracing::warn!(event = "deb_cache_corrupt", package = %p.name, error = %e, "discarding a cached package that does not match the lock");
                let _ = fs::remove_file(&path);
            }
        }
    }
    fs::create_dir_all(&dir).map_err(|e| io(e, &dir))?;
    let mirror = mirror_from_host(&p.suite)?;
    let url = format!("{mirror}/{}", p.path);
    if fetcher.is_none() {
        *fetcher = Some(Fetcher::new()?);
    }
    let f = fetcher.as_ref().ok_or_else(|| DebianError::Spec("no fetcher".into()))?;
    let partial = dir.join(format!("{}.partial", p.sha256));
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&partial)
        .map_err(|e| io(e, &partial))?;
    // One downloader per file across threads and processes (the lock is held
    // until the rename); whoever waited may find the work done.
    fs2::FileExt::lock_exclusive(&file).map_err(|e| io(e, &partial))?;
    if let Ok(b) = fs::read(&path) {
        if check(p, &b).is_ok() {
            let _ = fs::remove_file(&partial);
            return Ok(b);
        }
    }
    let have = file.metadata().map(|m| m.len()).unwrap_or(0);
    let offset = if have < p.size { have } else { 0 };
    let n = f.get_into(&url, offset, &mut file)?;
    file.flush().map_err(|e| io(e, &partial))?;
    let bytes = fs::read(&partial).map_err(|e| io(e, &partial))?;
    if let Err(e) = check(p, &bytes) {
        let _ = fs::remove_file(&partial);
        tracing::warn!(event = "deb_download_refused", package = %p.name, url = %url, bytes = n, "downloaded package does not match the lock; discarded");
        return Err(e);
    }
    crate::fsio::rename(&file, &partial, &path).map_err(|e| io(e, &path))?;
    drop(file);
    Ok(bytes)
}
