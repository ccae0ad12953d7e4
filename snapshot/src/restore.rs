//! Restore: rebuilds a snapshot's tree beside the destination, verifying every
//! chunk against its sha256, makes it durable (syncfs), then swaps it in
//! with one rename (renameat2 RENAME_EXCHANGE) after snapshotting what was
//! there. Addresses data loss: a missing or corrupt chunk fails the restore
//! with the affected paths and leaves the destination untouched, a crash at
//! any point leaves either the old or the new tree in place (never a mix),
//! the previous contents are kept as a `pre-restore` snapshot so a restore
//! can be undone, and a tree that snapshot cannot hold whole is not replaced
//! unless forced. Also the host's disk and privileges: holes of sparse files
//! are restored as holes, setuid and setgid bits of files are dropped, and
//! trees are built and removed through directory descriptors (any depth).
#![forbid(unsafe_code)]
use crate::backup::{backup_dir, BackupOptions};
use crate::manifest::{data_ranges, Entry, Kind};
use crate::repo::Repo;
use crate::tree::{self, split, Cursor};
use crate::{io_err, sys, SnapshotError};
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
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
    /// What a forced restore replaced without keeping it in the undo
    /// snapshot (paths, or why there is no undo snapshot at all).
    pub lost: Vec<String>,
}

/// How [`restore_with`] treats what is at the destination.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions<'a> {
    /// Snapshot what `dest` holds first, under this sandbox name (tag `pre-restore`).
    pub undo_as: Option<&'a str>,
    /// Replace `dest` even when that snapshot cannot hold all of it.
    pub force: bool,
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
    restore_with(repo, digest, dest, &RestoreOptions { undo_as, force: false })
}

/// Restores snapshot `digest` to `dest` as `opts` says (see [`restore_dir`]).
pub fn restore_with(
    repo: &Repo,
    digest: &str,
    dest: &Path,
    opts: &RestoreOptions<'_>,
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
    let parent_fd: OwnedFd = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(parent)
        .map(OwnedFd::from)
        .map_err(io_err(parent))?;
    let dir = parent_fd.as_fd();
    remove_stale_staging(dir, &name);
    let staging_name = format!(".{name}.moat-restore-{}", std::process::id());
    let staging_name = OsStr::new(&staging_name);
    let staging = parent.join(staging_name);
    if sys::stat_at(dir, staging_name).is_ok() {
        tree::remove_tree(dir, staging_name).map_err(io_err(&staging))?;
    }
    sys::mkdir_at(dir, staging_name, 0o700).map_err(io_err(&staging))?;
    let discard = || {
        if let Err(e) = tree::remove_tree(dir, staging_name) {
            tracing::warn!(event = "snapshot_staging_kept", path = %staging.display(), error = %e, "could not remove the staging tree");
        }
    };
    let built = sys::open_dir_at(dir, staging_name)
        .map_err(io_err(&staging))
        .and_then(|root| build(repo, digest, &manifest.entries, root.as_fd(), &staging));
    if let Err(e) = built {
        discard();
        return Err(e);
    }
    let dest_exists = fs::symlink_metadata(dest).is_ok();
    let (mut undo, mut lost) = (None, Vec::new());
    if dest_exists {
        if let Some(sandbox) = opts.undo_as {
            let undo_opts = BackupOptions { sandbox: sandbox.into(), tag: Some(UNDO_TAG.into()), ..Default::default() };
            match backup_dir(repo, dest, &undo_opts) {
                Ok(r) if r.unkept.is_empty() || opts.force => {
                    undo = Some(r.digest);
                    lost = r.unkept;
                }
                Ok(r) => {
                    discard();
                    let paths = r.unkept.iter().map(|p| p.escape_debug().to_string()).collect();
                    return Err(SnapshotError::CannotKeep { dest: dest.to_path_buf(), paths });
                }
                Err(e) if opts.force => {
                    lost.push(format!(
                        "all of it: no snapshot of it could be taken ({})",
                        moat_builder::errors::chain(&e)
                    ));
                }
                Err(e) => {
                    discard();
                    return Err(SnapshotError::UndoSnapshot { dest: dest.to_path_buf(), source: Box::new(e) });
                }
            }
        }
        sys::rename_exchange(&staging, dest).map_err(io_err(dest))?;
        // `staging` now holds the previous tree.
        if let Err(e) = tree::remove_tree(dir, staging_name) {
            tracing::warn!(event = "snapshot_old_tree_kept", path = %staging.display(), error = %e, "could not remove the previous tree");
        }
    } else {
        fs::rename(&staging, dest).map_err(io_err(dest))?;
    }
    sys::sync_dir(parent).map_err(io_err(parent))?;
    Ok(RestoreReport { digest: digest.into(), files: manifest.files(), bytes: manifest.bytes(), undo, lost })
}

/// Removes staging trees left by restores whose process is gone (kill -9).
fn remove_stale_staging(parent: BorrowedFd<'_>, name: &str) {
    let prefix = format!(".{name}.moat-restore-");
    let Ok(names) = sys::read_names(parent) else { return };
    for n in names {
        let Some(pid) = n.to_str().and_then(|n| n.strip_prefix(&prefix)).and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid != std::process::id() as i32 && Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = tree::remove_tree(parent, &n);
    }
}

/// Files a restore thread takes at once.
const BATCH: usize = 32;

/// Builds the tree under `root` (an empty directory, shown as `root_path`),
/// verifying every chunk. Every path is reached through directory
/// descriptors beneath `root`, never through a whole path (any depth).
fn build(
    repo: &Repo,
    digest: &str,
    entries: &[Entry],
    root: BorrowedFd<'_>,
    root_path: &Path,
) -> Result<(), SnapshotError> {
    let at = |rel: &str| if rel == "." { root_path.to_path_buf() } else { root_path.join(rel) };
    let mut cur = Cursor::new(root);
    for e in entries.iter().filter(|e| e.kind == Kind::Dir && e.path != ".") {
        let (p, n) = split(&e.path);
        let d = cur.dir(p).map_err(io_err(&at(p)))?;
        sys::mkdir_at(d, n, 0o700).map_err(io_err(&at(&e.path)))?;
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
            s.spawn(|| {
                let mut cur = Cursor::new(root);
                'work: loop {
                    let start = next.fetch_add(BATCH, Ordering::Relaxed);
                    if start >= files.len() {
                        break;
                    }
                    for e in &files[start..(start + BATCH).min(files.len())] {
                        let (p, n) = split(&e.path);
                        let written =
                            cur.dir(p).map_err(io_err(&at(p))).and_then(|d| write_file(repo, e, d, n, &at(&e.path)));
                        match written {
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
    let mut targets = Cursor::new(root);
    for e in entries {
        let (p, n) = split(&e.path);
        match e.kind {
            Kind::Symlink => {
                let d = cur.dir(p).map_err(io_err(&at(p)))?;
                sys::symlink_at(OsStr::new(e.target.as_deref().unwrap_or("")), d, n).map_err(io_err(&at(&e.path)))?
            }
            Kind::Hardlink => {
                let t = e.target.as_deref().unwrap_or("");
                let (tp, tn) = split(t);
                let td = targets.dir(tp).map_err(io_err(&at(tp)))?;
                let d = cur.dir(p).map_err(io_err(&at(p)))?;
                sys::link_at(td, tn, d, n).map_err(io_err(&at(&e.path)))?
            }
            _ => {}
        }
    }
    // Owners, then modes (chown clears setuid bits), deepest first; files
    // had theirs set by the thread that wrote them.
    for e in entries.iter().rev().filter(|e| !matches!(e.kind, Kind::Hardlink | Kind::File)) {
        if e.path == "." {
            let p = root_path;
            nix::unistd::fchown(
                std::os::fd::AsRawFd::as_raw_fd(&root),
                Some(nix::unistd::Uid::from_raw(e.uid)),
                Some(nix::unistd::Gid::from_raw(e.gid)),
            )
            .map_err(|err| io_err(p)(err.into()))?;
            nix::sys::stat::fchmod(
                std::os::fd::AsRawFd::as_raw_fd(&root),
                nix::sys::stat::Mode::from_bits_truncate(e.mode),
            )
            .map_err(|err| io_err(p)(err.into()))?;
            continue;
        }
        let (p, n) = split(&e.path);
        let d = cur.dir(p).map_err(io_err(&at(p)))?;
        sys::chown_at(d, n, e.uid, e.gid).map_err(io_err(&at(&e.path)))?;
        if e.kind != Kind::Symlink {
            sys::chmod_dir_at(d, n, e.mode).map_err(io_err(&at(&e.path)))?;
        }
    }
    // One syncfs makes the whole tree durable before it is swapped in.
    let f = root.try_clone_to_owned().map(fs::File::from).map_err(io_err(root_path))?;
    sys::syncfs(&f).map_err(io_err(root_path))?;
    Ok(())
}

/// The permission bits a restored regular file gets: the snapshot's,
/// without setuid and setgid (a restore never hands out privileges).
pub(crate) fn file_mode(mode: u32) -> u32 {
    mode & !(libc::S_ISUID | libc::S_ISGID)
}

/// Writes one file (`name` in `dir`, shown as `p`) from its chunks, holes
/// as holes; returns the ids of missing/corrupt chunks.
fn write_file(
    repo: &Repo,
    e: &Entry,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    p: &Path,
) -> Result<Vec<String>, SnapshotError> {
    let mut f = sys::create_file_at(dir, name, 0o600).map_err(io_err(p))?;
    let sparse = !e.holes.is_empty();
    let ranges = if sparse { data_ranges(e.size, &e.holes) } else { Vec::new() };
    if sparse {
        // The whole length first: what is not written below stays a hole.
        f.set_len(e.size).map_err(io_err(p))?;
    }
    let (mut range, mut in_range) = (0usize, 0u64);
    let mut bad = Vec::new();
    let mut written = 0u64;
    for id in &e.chunks {
        match repo.chunks().read_chunk(id) {
            Ok(data) => {
                if bad.is_empty() && !sparse {
                    f.write_all(&data).map_err(io_err(p))?;
                } else if bad.is_empty() {
                    let mut d = &data[..];
                    while !d.is_empty() {
                        let Some(&(off, len)) = ranges.get(range) else {
                            return Err(SnapshotError::Invalid(format!(
                                "{}: the chunks hold more than the {} bytes of data the manifest gives the file",
                                e.path,
                                e.data_len()
                            )));
                        };
                        if in_range == len {
                            (range, in_range) = (range + 1, 0);
                            continue;
                        }
                        let n = d.len().min(usize::try_from(len - in_range).unwrap_or(usize::MAX));
                        f.write_all_at(&d[..n], off + in_range).map_err(io_err(p))?;
                        in_range += n as u64;
                        d = &d[n..];
                    }
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
    if written != e.data_len() {
        return Err(SnapshotError::Invalid(format!(
            "{}: {} bytes of data in the manifest, chunks hold {written}",
            e.path,
            e.data_len()
        )));
    }
    // Owner, then mode (chown clears setuid bits), through the open descriptor.
    std::os::unix::fs::fchown(&f, Some(e.uid), Some(e.gid)).map_err(io_err(p))?;
    f.set_permissions(fs::Permissions::from_mode(file_mode(e.mode))).map_err(io_err(p))?;
    // Start writing the file back now, so the syncfs before the swap waits
    // for less (the disk works while later files are still being restored).
    sys::start_writeback(&f);
    Ok(bad)
}
