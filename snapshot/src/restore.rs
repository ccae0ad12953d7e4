//! Restore: rebuilds a snapshot's tree beside the destination, verifying every
//! chunk against its sha256, makes it durable (syncfs), then swaps it in
//! with one rename (renameat2
//! RENAME_EXCHANGE) after snapshotting what was there. Addresses data loss:
//! a missing or corrupt chunk fails the restore with the affected paths and
//! leaves the destination untouched, a crash at any point leaves either the
//! old or the new tree in place (never a mix), and the previous contents are
//! kept as a `pre-restore` snapshot so a restore can be undone.
#![forbid(unsafe_code)]
use crate::backup::{backup_dir, BackupOptions};
use crate::manifest::{Entry, Kind};
use crate::repo::Repo;
use crate::{io_err, sys, SnapshotError};
use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The tag of the snapshot taken of a destination just before a restore.
pub(crate) const UNDO_TAG: &str = "pre-restore";

#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub digest: String,
    pub files: u64,
    pub bytes: u64,
    /// Digest of the snapshot of what `dest` held before (restore it to undo).
    pub undo: Option<String>,
}

/// Restores snapshot `digest` to `dest`. If `dest` exists and `undo_as` is
/// given, its current contents are first backed up under that sandbox name
/// with tag `pre-restore`.
pub fn restore_dir(
    repo: &Repo,
    digest: &str,
    dest: &Path,
    undo_as: Option<&str>,
) -> Result<RestoreReport, SnapshotError> {
    let _lock = repo.lock(false)?;
    let manifest = repo.manifest(digest)?;
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| SnapshotError::Invalid(format!("{}: no parent directory", dest.display())))?;
    let name = dest
        .file_name()
        .ok_or_else(|| SnapshotError::Invalid(format!("{}: no file name", dest.display())))?
        .to_string_lossy()
        .into_owned();
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    remove_stale_staging(parent, &name);
    let staging = parent.join(format!(".{name}.moat-restore-{}", std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
    }
    fs::DirBuilder::new().mode(0o700).create(&staging).map_err(io_err(&staging))?;
    let built = build(repo, digest, &manifest.entries, &staging);
    if let Err(e) = built {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    let dest_exists = fs::symlink_metadata(dest).is_ok();
    let mut undo = None;
    if dest_exists {
        if let Some(sandbox) = undo_as {
            let opts = BackupOptions { sandbox: sandbox.into(), tag: Some(UNDO_TAG.into()), ..Default::default() };
            match backup_dir(repo, dest, &opts) {
                Ok(r) => undo = Some(r.digest),
                Err(e) => {
                    let _ = fs::remove_dir_all(&staging);
                    return Err(SnapshotError::UndoSnapshot { dest: dest.to_path_buf(), source: Box::new(e) });
                }
            }
        }
        sys::rename_exchange(&staging, dest).map_err(io_err(dest))?;
        // `staging` now holds the previous tree.
        if let Err(e) = fs::remove_dir_all(&staging) {
            tracing::warn!(event = "snapshot_old_tree_kept", path = %staging.display(), error = %e, "could not remove the previous tree");
        }
    } else {
        fs::rename(&staging, dest).map_err(io_err(dest))?;
    }
    sys::sync_dir(parent).map_err(io_err(parent))?;
    Ok(RestoreReport { digest: digest.into(), files: manifest.files(), bytes: manifest.bytes(), undo })
}

/// Removes staging trees left by restores whose process is gone (kill -9).
fn remove_stale_staging(parent: &Path, name: &str) {
    let prefix = format!(".{name}.moat-restore-");
    let Ok(rd) = fs::read_dir(parent) else { return };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = n.strip_prefix(&prefix).and_then(|p| p.parse::<i32>().ok()) else { continue };
        if pid != std::process::id() as i32 && Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = fs::remove_dir_all(e.path());
    }
}

fn join(root: &Path, rel: &str) -> PathBuf {
    if rel == "." {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

/// Files a restore thread takes at once.
const BATCH: usize = 32;

/// Builds the tree under `root` (an empty directory), verifying every chunk.
fn build(repo: &Repo, digest: &str, entries: &[Entry], root: &Path) -> Result<(), SnapshotError> {
    for e in entries.iter().filter(|e| e.kind == Kind::Dir && e.path != ".") {
        let p = root.join(&e.path);
        fs::DirBuilder::new().mode(0o700).create(&p).map_err(io_err(&p))?;
    }
    let files: Vec<&Entry> = entries.iter().filter(|e| e.kind == Kind::File).collect();
    let damage = Mutex::new((BTreeSet::<String>::new(), BTreeSet::<String>::new()));
    let first_err: Mutex<Option<SnapshotError>> = Mutex::new(None);
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(files.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            // Runs of consecutive files (mostly one directory) per take: two
            // threads creating files in one directory serialise on its lock.
            s.spawn(|| 'work: loop {
                let start = next.fetch_add(BATCH, Ordering::Relaxed);
                if start >= files.len() {
                    break;
                }
                for e in &files[start..(start + BATCH).min(files.len())] {
                    match write_file(repo, e, &root.join(&e.path)) {
                        Ok(bad) if bad.is_empty() => {}
                        Ok(bad) => {
                            if let Ok(mut d) = damage.lock() {
                                d.0.extend(bad);
                                d.1.insert(e.path.clone());
                            }
                        }
                        Err(err) => {
                            if let Ok(mut f) = first_err.lock() {
                                f.get_or_insert(err);
                            }
                            next.store(files.len(), Ordering::Relaxed);
                            break 'work;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().ok().flatten() {
        return Err(e);
    }
    let (bad_chunks, mut bad_paths) = damage.into_inner().unwrap_or_default();
    if !bad_chunks.is_empty() {
        // Hard links to a damaged file are damaged too.
        for e in entries.iter().filter(|e| e.kind == Kind::Hardlink) {
            if e.target.as_ref().is_some_and(|t| bad_paths.contains(t)) {
                bad_paths.insert(e.path.clone());
            }
        }
        return Err(SnapshotError::Damaged {
            digest: digest.into(),
            chunks: bad_chunks.into_iter().collect(),
            paths: bad_paths.into_iter().collect(),
        });
    }
    for e in entries {
        let p = join(root, &e.path);
        match e.kind {
            Kind::Symlink => std::os::unix::fs::symlink(e.target.as_deref().unwrap_or(""), &p).map_err(io_err(&p))?,
            Kind::Hardlink => {
                let t = root.join(e.target.as_deref().unwrap_or(""));
                fs::hard_link(&t, &p).map_err(io_err(&p))?
            }
            _ => {}
        }
    }
    // Owners, then modes (chown clears setuid bits), deepest first; files
    // had theirs set by the thread that wrote them.
    for e in entries.iter().rev().filter(|e| !matches!(e.kind, Kind::Hardlink | Kind::File)) {
        let p = join(root, &e.path);
        std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid)).map_err(io_err(&p))?;
        if e.kind != Kind::Symlink {
            fs::set_permissions(&p, fs::Permissions::from_mode(e.mode)).map_err(io_err(&p))?;
        }
    }
    // One syncfs makes the whole tree durable before it is swapped in.
    let f = fs::File::open(root).map_err(io_err(root))?;
    sys::syncfs(&f).map_err(io_err(root))?;
    Ok(())
}

/// Writes one file from its chunks; returns the ids of missing/corrupt chunks.
fn write_file(repo: &Repo, e: &Entry, p: &Path) -> Result<Vec<String>, SnapshotError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)
        .map_err(io_err(p))?;
    let mut bad = Vec::new();
    let mut written = 0u64;
    for id in &e.chunks {
        match repo.chunks().read_chunk(id) {
            Ok(data) => {
                if bad.is_empty() {
                    f.write_all(&data).map_err(io_err(p))?;
                }
                written += data.len() as u64;
            }
            Err(SnapshotError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                bad.push(id.clone())
            }
            Err(SnapshotError::Corrupt { .. }) => bad.push(id.clone()),
            Err(err) => return Err(err),
        }
    }
    if !bad.is_empty() {
        return Ok(bad);
    }
    if written != e.size {
        return Err(SnapshotError::Invalid(format!(
            "{}: size {} in the manifest, chunks hold {written}",
            e.path, e.size
        )));
    }
    // Owner, then mode (chown clears setuid bits), through the open descriptor.
    std::os::unix::fs::fchown(&f, Some(e.uid), Some(e.gid)).map_err(io_err(p))?;
    f.set_permissions(fs::Permissions::from_mode(e.mode)).map_err(io_err(p))?;
    // Start writing the file back now, so the syncfs before the swap waits
    // for less (the disk works while later files are still being restored).
    sys::start_writeback(&f);
    Ok(bad)
}
