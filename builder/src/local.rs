//! Local sources (a directory or file beside the blueprint): walked in
//! byte-wise order without following symlinks, hashed into one content
//! digest, normalized so host metadata (umask, owner, mtime, inode numbers,
//! creation order) cannot reach the image. Refuses device files, FIFOs,
//! sockets and symlinks that escape the source tree.
use crate::digest::Digest;
use crate::tar_in::Overrides;
use crate::tree::{self, Content, Entry, Kind, Tree, TreeError};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {what} cannot go into an image")]
    Special { path: PathBuf, what: &'static str },
    #[error("{path}: symlink target {target:?} points outside the source tree")]
    Escape { path: PathBuf, target: String },
    #[error("{path}: file name is not valid UTF-8")]
    NotUtf8 { path: PathBuf },
    #[error("{0}")]
    Path(#[from] TreeError),
}

#[derive(Debug, Clone)]
enum ScanKind {
    Dir,
    File { host: PathBuf, size: u64 },
    Symlink(String),
    Hardlink(String),
}

#[derive(Debug, Clone)]
struct ScanEntry {
    rel: String,
    kind: ScanKind,
    exec: bool,
}

/// A walked local source and its content digest.
#[derive(Debug, Clone)]
pub struct Scanned {
    /// True when the source is a single file (not a directory).
    pub is_file: bool,
    pub digest: Digest,
    entries: Vec<ScanEntry>,
}

/// Walks and hashes `root` (a directory or a single file).
pub fn scan(root: &Path) -> Result<Scanned, LocalError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LocalError::Io { path, source }
    };
    let meta = fs::symlink_metadata(root).map_err(io_err(root))?;
    let mut entries = Vec::new();
    let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let is_file = !meta.is_dir();
    if is_file {
        let name =
            root.file_name().and_then(|n| n.to_str()).ok_or_else(|| LocalError::NotUtf8 { path: root.into() })?;
        entries.push(classify(root, name, &meta, &mut inodes)?);
    } else {
        walk(root, "", &mut entries, &mut inodes)?;
    }
    let mut h = Sha256::new();
    for e in &entries {
        let (tag, detail) = match &e.kind {
            ScanKind::Dir => ("d", String::new()),
            ScanKind::File { host, .. } => ("f", hash_file(host)?.hex().to_string()),
            ScanKind::Symlink(t) => ("l", t.clone()),
            ScanKind::Hardlink(t) => ("h", t.clone()),
        };
        h.update(format!("{tag} {} {}\0{detail}\n", u8::from(e.exec), e.rel).as_bytes());
    }
    Ok(Scanned { is_file, digest: Digest::from_raw(h.finalize().into()), entries })
}

fn walk(
    dir: &Path,
    rel: &str,
    out: &mut Vec<ScanEntry>,
    inodes: &mut BTreeMap<(u64, u64), String>,
) -> Result<(), LocalError> {
    let rd = fs::read_dir(dir).map_err(|source| LocalError::Io { path: dir.into(), source })?;
    let mut names = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|source| LocalError::Io { path: dir.into(), source })?;
        let name = ent.file_name().into_string().map_err(|_| LocalError::NotUtf8 { path: ent.path() })?;
        names.push(name);
    }
    names.sort(); // byte-wise: creation order and directory hashing cannot matter
    for name in names {
        let host = dir.join(&name);
        let child_rel = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
        let meta = fs::symlink_metadata(&host).map_err(|source| LocalError::Io { path: host.clone(), source })?;
        let e = classify(&host, &child_rel, &meta, inodes)?;
        if let ScanKind::Symlink(t) = &e.kind {
            check_link(&host, &child_rel, t)?;
        }
        let is_dir = matches!(e.kind, ScanKind::Dir);
        out.push(e);
        if is_dir {
            walk(&host, &child_rel, out, inodes)?;
        }
    }
    Ok(())
}

fn classify(
    host: &Path,
    rel: &str,
    meta: &fs::Metadata,
    inodes: &mut BTreeMap<(u64, u64), String>,
) -> Result<ScanEntry, LocalError> {
    let ft = meta.file_type();
    let exec = meta.mode() & 0o111 != 0;
    let kind = if ft.is_dir() {
        ScanKind::Dir
    } else if ft.is_symlink() {
        let t = fs::read_link(host).map_err(|source| LocalError::Io { path: host.into(), source })?;
        ScanKind::Symlink(t.to_str().ok_or_else(|| LocalError::NotUtf8 { path: host.into() })?.to_string())
    } else if ft.is_file() {
        if meta.nlink() > 1 {
            // Walk order is sorted, so the first path seen is first in sort order.
            match inodes.get(&(meta.dev(), meta.ino())) {
                Some(first) => ScanKind::Hardlink(first.clone()),
                None => {
                    inodes.insert((meta.dev(), meta.ino()), rel.to_string());
                    ScanKind::File { host: host.into(), size: meta.len() }
                }
            }
        } else {
            ScanKind::File { host: host.into(), size: meta.len() }
        }
    } else {
        let what = if ft.is_block_device() || ft.is_char_device() {
            "a device file"
        } else if ft.is_fifo() {
            "a FIFO"
        } else {
            "a socket"
        };
        return Err(LocalError::Special { path: host.into(), what });
    };
    Ok(ScanEntry { rel: rel.into(), kind, exec: exec && !matches!(ft, t if t.is_symlink()) })
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

fn hash_file(p: &Path) -> Result<Digest, LocalError> {
    let f = fs::File::open(p).map_err(|source| LocalError::Io { path: p.into(), source })?;
    crate::digest::digest_reader(f).map(|(d, _)| d).map_err(|source| LocalError::Io { path: p.into(), source })
}

impl Scanned {
    /// Adds the scanned entries to `tree` under `dest`. A single-file source
    /// lands at `dest` itself unless `dest_is_dir`, then inside it.
    pub fn add_to(&self, tree: &mut Tree, dest: &str, dest_is_dir: bool, ov: Overrides) -> Result<(), LocalError> {
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
                ScanKind::File { host, size } => {
                    (Kind::File { content: Content::Path(host.clone()), size: *size }, file_mode)
                }
                ScanKind::Symlink(t) => (Kind::Symlink(t.clone()), 0o777),
                ScanKind::Hardlink(t) => (Kind::Hardlink(tree::join(dest, t)?), file_mode),
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
    fn escaping_symlink_refused() {
        let a = tempfile::tempdir().unwrap();
        fs::create_dir(a.path().join("d")).unwrap();
        symlink("../x", a.path().join("d/ok")).unwrap();
        assert!(scan(a.path()).is_ok());
        symlink("../../etc/passwd", a.path().join("d/bad")).unwrap();
        assert!(matches!(scan(a.path()), Err(LocalError::Escape { .. })));
    }
}
