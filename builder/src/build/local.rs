//! Local sources (a directory or file beside the blueprint): walked in
//! byte-wise order without following symlinks, hashed into one content
//! digest, normalized so host metadata (umask, owner, mtime, inode numbers,
//! hard links, creation order) cannot reach the image: every name of a
//! hard-linked file is its own regular file, as after `cp -r`, so copying the
//! tree without `-H` or touching one name on overlayfs changes nothing
//! (docs/builder-inputs.md). Refuses device files, FIFOs,
//! sockets and symlinks that escape the source tree. Small files are kept in
//! memory as they are hashed, so the layer holds exactly the bytes the
//! digest covers (and the tree is read once, on all cores).
#![forbid(unsafe_code)]
use crate::digest::Digest;
use crate::layer::tar_in::Overrides;
use crate::layer::tree::{self, Content, Entry, Kind, Tree, TreeError};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

/// Files up to this size are kept in memory after hashing...
const KEEP_FILE: u64 = 1 << 20;
/// ...while the bytes kept by one scan stay under this.
const KEEP_TOTAL: u64 = 512 << 20;
/// Files a hashing thread takes at once (neighbours share a directory).
const BATCH: usize = 16;

#[derive(Debug, thiserror::Error)]
pub(super) enum LocalError {
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {what} cannot go into an image")]
    Special { path: PathBuf, what: &'static str },
    #[error("{path}: symlink target {target:?} points outside the source tree")]
    Escape { path: PathBuf, target: String },
    #[error("{path}: file name is not valid UTF-8")]
    NotUtf8 { path: PathBuf },
    #[error(transparent)]
    Path(#[from] TreeError),
}

#[derive(Debug, Clone)]
enum ScanKind {
    Dir,
    /// `data`: the bytes that were hashed, when small enough to keep.
    File {
        host: PathBuf,
        size: u64,
        data: Option<Arc<Vec<u8>>>,
    },
    Symlink(String),
}

#[derive(Debug, Clone)]
struct ScanEntry {
    rel: String,
    kind: ScanKind,
    exec: bool,
}

/// A walked local source and its content digest.
#[derive(Debug, Clone)]
pub(super) struct Scanned {
    /// True when the source is a single file (not a directory).
    pub is_file: bool,
    pub digest: Digest,
    entries: Vec<ScanEntry>,
}

/// Walks and hashes `root` (a directory or a single file).
pub(super) fn scan(root: &Path) -> Result<Scanned, LocalError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LocalError::Io { path, source }
    };
    let meta = fs::symlink_metadata(root).map_err(io_err(root))?;
    let is_file = !meta.is_dir();
    let (mut entries, hashed) = walk_and_hash(|entries, on_file| {
        if is_file {
            let name =
                root.file_name().and_then(|n| n.to_str()).ok_or_else(|| LocalError::NotUtf8 { path: root.into() })?;
            entries.push(classify(root, name, &meta)?);
            on_file(root);
            Ok(())
        } else {
            walk(root, "", entries, on_file)
        }
    })?;
    let mut hashed = hashed.into_iter();
    let mut h = Sha256::new();
    let mut line = Vec::with_capacity(256);
    for e in &mut entries {
        let mut digest = None;
        if let ScanKind::File { size, data, .. } = &mut e.kind {
            // Each name is a file of its own: host hard links are not input.
            let f = hashed.next().ok_or_else(not_hashed)?;
            e.exec = f.exec;
            (*size, *data) = (f.size, f.data);
            digest = Some(f.digest);
        }
        let (tag, detail) = match &e.kind {
            ScanKind::Dir => (b'd', ""),
            ScanKind::File { .. } => (b'f', digest.as_ref().map_or("", |d| d.hex())),
            ScanKind::Symlink(t) => (b'l', t.as_str()),
        };
        // "{tag} {exec} {rel}\0{detail}\n", built in one reused buffer.
        line.clear();
        line.extend_from_slice(&[tag, b' ', b'0' + u8::from(e.exec), b' ']);
        line.extend_from_slice(e.rel.as_bytes());
        line.push(0);
        line.extend_from_slice(detail.as_bytes());
        line.push(b'\n');
        h.update(&line);
    }
    Ok(Scanned { is_file, digest: Digest::from_raw(h.finalize().into()), entries })
}

/// Walks `dir` in byte-wise order. Regular files (known from the directory
/// entry's type) are handed to `on_file` in entry order and stat'ed by the
/// threads that hash them.
fn walk(dir: &Path, rel: &str, out: &mut Vec<ScanEntry>, on_file: &mut dyn FnMut(&Path)) -> Result<(), LocalError> {
    let rd = fs::read_dir(dir).map_err(|source| LocalError::Io { path: dir.into(), source })?;
    let mut names = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|source| LocalError::Io { path: dir.into(), source })?;
        let name = ent.file_name().into_string().map_err(|_| LocalError::NotUtf8 { path: ent.path() })?;
        let regular = ent.file_type().is_ok_and(|t| t.is_file());
        names.push((name, regular));
    }
    names.sort(); // byte-wise: creation order and directory hashing cannot matter
    for (name, regular) in names {
        let host = dir.join(&name);
        let child_rel = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
        if regular {
            on_file(&host);
            let kind = ScanKind::File { host, size: 0, data: None };
            out.push(ScanEntry { rel: child_rel, kind, exec: false });
            continue;
        }
        let meta = fs::symlink_metadata(&host).map_err(|source| LocalError::Io { path: host.clone(), source })?;
        let e = classify(&host, &child_rel, &meta)?;
        match &e.kind {
            ScanKind::Symlink(t) => check_link(&host, &child_rel, t)?,
            // A regular file the directory entry did not call one (replaced
            // since readdir): it is hashed like the others.
            ScanKind::File { .. } => on_file(&host),
            _ => {}
        }
        let is_dir = matches!(e.kind, ScanKind::Dir);
        out.push(e);
        if is_dir {
            walk(&host, &child_rel, out, on_file)?;
        }
    }
    Ok(())
}

fn classify(host: &Path, rel: &str, meta: &fs::Metadata) -> Result<ScanEntry, LocalError> {
    let ft = meta.file_type();
    let exec = meta.mode() & 0o111 != 0;
    let kind = if ft.is_dir() {
        ScanKind::Dir
    } else if ft.is_symlink() {
        let t = fs::read_link(host).map_err(|source| LocalError::Io { path: host.into(), source })?;
        ScanKind::Symlink(t.to_str().ok_or_else(|| LocalError::NotUtf8 { path: host.into() })?.to_string())
    } else if ft.is_file() {
        ScanKind::File { host: host.into(), size: meta.len(), data: None }
    } else {
        return Err(special(host, ft));
    };
    Ok(ScanEntry { rel: rel.into(), kind, exec: exec && !matches!(ft, t if t.is_symlink()) })
}

fn special(host: &Path, ft: fs::FileType) -> LocalError {
    let what = if ft.is_block_device() || ft.is_char_device() {
        "a device file"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file any more"
    };
    LocalError::Special { path: host.into(), what }
}

/// Relative link targets must stay inside the source tree. Absolute targets
/// name paths of the image (they are never followed on the host).
fn check_link(host: &Path, rel: &str, target: &str) -> Result<(), LocalError> {
    if target.starts_with('/') {
        return Ok(());
    }
    let parent = rel.rsplit_once('/').map_or("", |(p, _)| p);
    let mut depth: i64 = parent.split('/').filter(|s| !s.is_empty()).count() as i64;
    for comp in target.split('/') {
        match comp {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        if depth < 0 {
            return Err(LocalError::Escape { path: host.into(), target: target.into() });
        }
    }
    Ok(())
}

/// What hashing learnt about one file (from its open descriptor).
struct Hashed {
    digest: Digest,
    /// The bytes that were hashed, when small enough to keep, and their count.
    data: Option<Arc<Vec<u8>>>,
    size: u64,
    exec: bool,
}

/// Runs `produce` (the walk) while threads stat and hash the files it
/// reports, so hashing starts with the first file instead of after the last
/// directory. Returns the entries and one result per reported file, in the
/// order reported.
fn walk_and_hash(
    produce: impl FnOnce(&mut Vec<ScanEntry>, &mut dyn FnMut(&Path)) -> Result<(), LocalError>,
) -> Result<(Vec<ScanEntry>, Vec<Hashed>), LocalError> {
    let budget = AtomicU64::new(KEEP_TOTAL);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let (tx, rx) = mpsc::channel::<Vec<(usize, PathBuf)>>();
    let rx = Mutex::new(rx);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let batch = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return out,
                        };
                        let Ok(batch) = batch else { return out };
                        for (i, host) in batch {
                            out.push((i, hash_one(&host, &budget)));
                        }
                    }
                })
            })
            .collect();
        let mut entries = Vec::new();
        let (mut batch, mut files) = (Vec::with_capacity(BATCH), 0);
        let walked = produce(&mut entries, &mut |host: &Path| {
            batch.push((files, host.to_path_buf()));
            files += 1;
            if batch.len() == BATCH {
                let _ = tx.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
            }
        });
        if !batch.is_empty() {
            let _ = tx.send(batch);
        }
        drop(tx);
        let mut done: Vec<(usize, Result<Hashed, LocalError>)> =
            workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect();
        walked?;
        if done.len() != files {
            return Err(not_hashed());
        }
        done.sort_by_key(|(i, _)| *i);
        let hashed = done.into_iter().map(|(_, r)| r).collect::<Result<Vec<_>, _>>()?;
        Ok((entries, hashed))
    })
}

fn not_hashed() -> LocalError {
    LocalError::Io { path: PathBuf::new(), source: io::Error::other("a hashing thread stopped early") }
}

fn hash_one(host: &Path, budget: &AtomicU64) -> Result<Hashed, LocalError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| LocalError::Io { path: host.into(), source };
    // Never follow a symlink swapped in since the walk, never block on a FIFO.
    let mut f =
        fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(host).map_err(err)?;
    let meta = f.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(special(host, meta.file_type()));
    }
    let mut size = meta.len();
    let keep = size <= KEEP_FILE
        && budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(size)).is_ok();
    let (digest, data) = if keep {
        // One read normally: a regular file returns fewer bytes than asked
        // only at its end, so asking for one byte more than its size proves
        // the end without a second call; a file that grew is read on.
        let mut bytes = vec![0u8; size as usize + 1];
        let n = io::Read::read(&mut f, &mut bytes).map_err(err)?;
        bytes.truncate(n);
        if n > size as usize {
            io::Read::read_to_end(&mut f, &mut bytes).map_err(err)?;
        }
        size = bytes.len() as u64;
        (Digest::of(&bytes), Some(Arc::new(bytes)))
    } else {
        (crate::digest::digest_reader(f).map(|(d, _)| d).map_err(err)?, None)
    };
    Ok(Hashed { digest, data, size, exec: meta.mode() & 0o111 != 0 })
}

impl Scanned {
    /// Adds the scanned entries to `tree` under `dest`. A single-file source
    /// lands at `dest` itself unless `dest_is_dir`, then inside it.
    pub(super) fn add_to(
        &self,
        tree: &mut Tree,
        dest: &str,
        dest_is_dir: bool,
        ov: Overrides,
    ) -> Result<(), LocalError> {
        for e in &self.entries {
            let path = if self.is_file && !dest_is_dir && !dest.is_empty() {
                dest.to_string()
            } else {
                tree::join(dest, &e.rel)?
            };
            let uid = ov.uid.unwrap_or(0);
            let gid = ov.gid.unwrap_or(0);
            let file_mode = ov.mode.unwrap_or(if e.exec { 0o755 } else { 0o644 });
            let (kind, mode) = match &e.kind {
                ScanKind::Dir => (Kind::Dir, ov.dir_mode.unwrap_or(0o755)),
                ScanKind::File { host, size, data } => {
                    let content = match data {
                        Some(b) => Content::Bytes(b.clone()),
                        None => Content::Path(host.clone()),
                    };
                    (Kind::File { content, size: *size }, file_mode)
                }
                ScanKind::Symlink(t) => (Kind::Symlink(t.clone()), 0o777),
            };
            tree.insert(Entry { path, kind, mode, uid, gid, xattrs: BTreeMap::new() })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    #[test]
    fn digest_ignores_host_metadata_but_not_content() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        fs::create_dir(a.path().join("d")).unwrap();
        fs::write(a.path().join("d/x"), "1").unwrap();
        fs::write(a.path().join("y"), "2").unwrap();
        // b: created in the other order with other permissions (umask-like)
        fs::write(b.path().join("y"), "2").unwrap();
        fs::create_dir(b.path().join("d")).unwrap();
        fs::write(b.path().join("d/x"), "1").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(b.path().join("y"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(scan(a.path()).unwrap().digest, scan(b.path()).unwrap().digest);
        fs::write(b.path().join("d/x"), "3").unwrap();
        assert_ne!(scan(a.path()).unwrap().digest, scan(b.path()).unwrap().digest);
    }
    #[test]
    fn host_hard_links_are_not_input() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        fs::create_dir(a.path().join("d")).unwrap();
        fs::write(a.path().join("d/a"), "same").unwrap();
        fs::hard_link(a.path().join("d/a"), a.path().join("d-b")).unwrap();
        fs::create_dir(b.path().join("d")).unwrap();
        fs::write(b.path().join("d/a"), "same").unwrap();
        fs::write(b.path().join("d-b"), "same").unwrap();
        let (sa, sb) = (scan(a.path()).unwrap(), scan(b.path()).unwrap());
        assert_eq!(sa.digest, sb.digest);
        let mut t = Tree::new();
        sa.add_to(&mut t, "", false, Overrides::default()).unwrap();
        for p in ["d/a", "d-b"] {
            assert!(matches!(t.get(p).unwrap().kind, Kind::File { size: 4, .. }), "{p}");
        }
    }
    #[test]
    fn escaping_symlink_refused() {
        let a = tempfile::tempdir().unwrap();
        fs::create_dir(a.path().join("d")).unwrap();
        symlink("../x", a.path().join("d/ok")).unwrap();
        assert!(scan(a.path()).is_ok());
        symlink("../../etc/passwd", a.path().join("d/bad")).unwrap();
        assert!(matches!(scan(a.path()), Err(LocalError::Escape { .. })));
    }
}
