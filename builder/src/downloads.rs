//! The downloads cache, shared by every build and every kind of download
//! (pinned tar/.deb URLs, Debian packages): one file per content, named by
//! its sha256, verified against the pin on every read and committed only
//! after the download matches (resumable `.partial` under an exclusive lock,
//! then fsync + rename + directory fsync). Guards against a tampered source
//! or a damaged cache: bytes that do not match the pin are discarded, never used.
#![forbid(unsafe_code)]
use crate::digest::{digest_reader, Digest};
use crate::fsio;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// What a download must be.
#[derive(Debug, Clone)]
pub(crate) struct Pin {
    pub sha256: Digest,
    /// Size in bytes, when the pin states it (then a partial download resumes).
    pub size: Option<u64>,
}

/// Why [`Downloads::file`] or [`Downloads::bytes`] failed; callers turn it
/// into their own error, naming what was downloaded.
#[derive(Debug)]
pub(crate) enum Failure<E> {
    /// The download itself failed.
    Fetch(E),
    /// Reading or writing the cache failed.
    Io { path: PathBuf, source: io::Error },
    /// The downloaded bytes do not match the pin; they were discarded.
    Mismatch { actual: Digest, size: u64 },
}

/// One cache directory: `<dir>/<sha256 hex>`.
#[derive(Debug, Clone)]
pub(crate) struct Downloads {
    dir: PathBuf,
}

impl Downloads {
    pub(crate) fn new(dir: PathBuf) -> Downloads {
        Downloads { dir }
    }

    /// Where the content `d` is kept.
    pub(crate) fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    /// The verified cached file for `pin`, downloaded with `fetch` if needed
    /// (see [`Downloads::bytes`] for `fetch`'s contract).
    pub(crate) fn file<E>(
        &self,
        pin: &Pin,
        fetch: impl FnOnce(&mut File, u64) -> Result<(), E>,
    ) -> Result<PathBuf, Failure<E>> {
        self.get(pin, false, fetch).map(|(path, _)| path)
    }

    /// The verified bytes for `pin`, from the cache or downloaded with
    /// `fetch`, which writes the content from the given offset on into the
    /// file it is handed (positioned there, nothing after it). The offset is
    /// non-zero only to resume a partial download of a pin with a size.
    pub(crate) fn bytes<E>(
        &self,
        pin: &Pin,
        fetch: impl FnOnce(&mut File, u64) -> Result<(), E>,
    ) -> Result<Vec<u8>, Failure<E>> {
        self.get(pin, true, fetch).map(|(_, bytes)| bytes.unwrap_or_default())
    }

    fn get<E>(
        &self,
        pin: &Pin,
        keep: bool,
        fetch: impl FnOnce(&mut File, u64) -> Result<(), E>,
    ) -> Result<(PathBuf, Option<Vec<u8>>), Failure<E>> {
        let path = self.path(&pin.sha256);
        if let Some(bytes) = self.cached(pin, &path, keep) {
            return Ok((path, bytes));
        }
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let partial = self.dir.join(format!("{}.partial", pin.sha256.hex()));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&partial)
            .map_err(io(&partial))?;
        // One downloader per file across threads and processes (the lock is
        // held until the rename); whoever waited may find the work done.
        fs2::FileExt::lock_exclusive(&file).map_err(io(&partial))?;
        if let Some(bytes) = self.cached(pin, &path, keep) {
            let _ = fs::remove_file(&partial);
            return Ok((path, bytes));
        }
        let have = file.metadata().map(|m| m.len()).unwrap_or(0);
        let offset = match pin.size {
            Some(size) if have < size => have,
            _ => 0,
        };
        file.set_len(offset).map_err(io(&partial))?;
        file.seek(SeekFrom::Start(offset)).map_err(io(&partial))?;
        fetch(&mut file, offset).map_err(Failure::Fetch)?;
        file.seek(SeekFrom::Start(0)).map_err(io(&partial))?;
        let (actual, size, bytes) = read_back(&mut file, keep).map_err(io(&partial))?;
        if !matches(pin, &actual, size) {
            let _ = fs::remove_file(&partial);
            tracing::warn!(event = "download_refused", expected = %pin.sha256, actual = %actual, bytes = size, "downloaded content does not match its pin; discarded");
            return Err(Failure::Mismatch { actual, size });
        }
        fsio::rename(&file, &partial, &path).map_err(io(&path))?;
        Ok((path, bytes))
    }

    /// The cached content of `pin` if present and intact (its bytes when
    /// `keep`); a damaged file is removed.
    fn cached(&self, pin: &Pin, path: &Path, keep: bool) -> Option<Option<Vec<u8>>> {
        let mut f = File::open(path).ok()?;
        // Verify on every use: the cache is shared and could be damaged.
        match read_back(&mut f, keep) {
            Ok((actual, size, bytes)) if matches(pin, &actual, size) => return Some(bytes),
            Ok((actual, ..)) => {
                tracing::warn!(event = "download_cache_corrupt", path = %path.display(), expected = %pin.sha256, actual = %actual, "discarding a cached download that does not match its pin");
            }
            Err(e) => {
                tracing::warn!(event = "download_cache_corrupt", path = %path.display(), error = %e, "discarding a cached download that cannot be read")
            }
        }
        let _ = fs::remove_file(path);
        None
    }
}

fn io<E>(path: &Path) -> impl FnOnce(io::Error) -> Failure<E> + '_ {
    move |source| Failure::Io { path: path.to_path_buf(), source }
}

fn matches(pin: &Pin, actual: &Digest, size: u64) -> bool {
    actual == &pin.sha256 && pin.size.is_none_or(|s| s == size)
}

/// Hashes `f` from where it stands to its end; its bytes too when `keep`.
fn read_back(f: &mut File, keep: bool) -> io::Result<(Digest, u64, Option<Vec<u8>>)> {
    if keep {
        let mut bytes = Vec::new();
        io::Read::read_to_end(f, &mut bytes)?;
        Ok((Digest::of(&bytes), bytes.len() as u64, Some(bytes)))
    } else {
        let (d, n) = digest_reader(f)?;
        Ok((d, n, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pin(bytes: &[u8], sized: bool) -> Pin {
        Pin { sha256: Digest::of(bytes), size: sized.then_some(bytes.len() as u64) }
    }

    #[test]
    fn downloads_once_then_reads_verified() {
        let dir = tempfile::tempdir().unwrap();
        let c = Downloads::new(dir.path().join("d"));
        let p = pin(b"content", false);
        let got = c.bytes(&p, |f, _| f.write_all(b"content")).unwrap();
        assert_eq!(got, b"content");
        let path = c.file(&p, |_, _| -> io::Result<()> { panic!("cached: no second download") }).unwrap();
        assert_eq!(fs::read(path).unwrap(), b"content");
    }

    #[test]
    fn a_mismatch_is_discarded_and_a_damaged_entry_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let c = Downloads::new(dir.path().to_path_buf());
        let p = pin(b"good", true);
        let r = c.file(&p, |f, _| f.write_all(b"evil"));
        assert!(matches!(r, Err(Failure::Mismatch { size: 4, .. })), "{r:?}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "nothing of the bad download is kept");
        c.file(&p, |f, _| f.write_all(b"good")).unwrap();
        fs::write(c.path(&p.sha256), b"gooD").unwrap();
        assert_eq!(c.bytes(&p, |f, _| f.write_all(b"good")).unwrap(), b"good");
    }

    #[test]
    fn a_sized_pin_resumes_a_partial_download() {
        let dir = tempfile::tempdir().unwrap();
        let c = Downloads::new(dir.path().to_path_buf());
        let p = pin(b"0123456789", true);
        fs::write(dir.path().join(format!("{}.partial", p.sha256.hex())), b"0123").unwrap();
        let got = c.bytes(&p, |f, offset| f.write_all(&b"0123456789"[offset as usize..])).unwrap();
        assert_eq!(got, b"0123456789");
    }
}
