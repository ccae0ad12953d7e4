//! Atomic, durable file writes: the one place that puts a file at its name.
//! Addresses torn and lost writes after a crash: bytes go to a temp file on
//! the same filesystem with its final mode, are fsynced, renamed over the
//! name (readers see the old bytes or the new, never a mix), and the
//! directory is fsynced so the rename itself survives a power cut. Public so
//! the supervisor and snapshot crates can use the same contract.
#![forbid(unsafe_code)]
use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tempfile::NamedTempFile;

/// Writes `bytes` to `dest` atomically, as a file of `mode`: temp file in
/// `dest`'s directory, fsync, rename, fsync of the directory.
pub fn write(dest: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_via(parent(dest), dest, bytes, mode)
}

/// [`write`] with the temp file in `tmp_dir` (created if missing; it must be
/// on `dest`'s filesystem), for trees that sweep their own stale temp files.
pub fn write_via(tmp_dir: &Path, dest: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    fs::create_dir_all(tmp_dir)?;
    let mut tmp = NamedTempFile::new_in(tmp_dir)?;
    // The mode is set before any byte is written: a secret never sits in a
    // looser file, not even briefly.
    tmp.as_file().set_permissions(Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    persist(tmp, dest)
}

/// Makes a fully written temp file durable and puts it at `dest`: fsync,
/// rename, fsync of `dest`'s directory.
pub fn persist(tmp: NamedTempFile, dest: &Path) -> io::Result<()> {
    tmp.as_file().sync_all()?;
    tmp.persist(dest).map_err(|e| e.error)?;
    sync_dir(parent(dest));
    Ok(())
}

/// [`persist`] for a file written under a name of its own (a resumable
/// `.partial` download): fsync `file`, rename `from` to `to`, fsync the directory.
pub fn rename(file: &File, from: &Path, to: &Path) -> io::Result<()> {
    file.sync_all()?;
    fs::rename(from, to)?;
    sync_dir(parent(to));
    Ok(())
}

/// fsyncs a directory, making renames in it durable. Best effort: a
/// directory that cannot be opened for reading (odd filesystems, a write-only
/// directory) does not make the data that was written wrong.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// [`write`] without the fsyncs: atomic (readers see old or new bytes) but
/// not durable. For files that mean nothing after a crash (runtime files on
/// /run) or whose content is already durable elsewhere, on a start-up path
/// where an fsync would be measured latency.
pub fn replace(dest: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp = NamedTempFile::new_in(parent(dest))?;
    tmp.as_file().set_permissions(Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    tmp.persist(dest).map_err(|e| e.error)?;
    Ok(())
}

/// The directory `path` is named in (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_whole_files_with_the_mode_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write(&p, b"one", 0o600).unwrap();
        write(&p, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file is left behind");
    }

    #[test]
    fn write_via_leaves_nothing_in_the_temp_dir() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        write_via(&tmp, &dir.path().join("f"), b"x", 0o600).unwrap();
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
        assert_eq!(fs::metadata(dir.path().join("f")).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
