//! The unpacked-layer cache: each image layer from the store unpacked once per
//! digest into `$MOAT_HOME/cache/layers/<hex>/`, in the form overlayfs reads
//! as a lower directory. Guards against hostile layers: the blob digest and
//! the uncompressed diff_id are verified while unpacking, entries that would
//! leave the layer directory (absolute paths, `..`, paths through a symlink,
//! hardlinks out of the layer) and malformed whiteouts are refused, devices
//! are refused, and nothing appears in the cache until the whole layer has
//! unpacked and verified (temp dir + rename).
#![forbid(unsafe_code)]
use moat_builder::digest::{Digest, HashingWriter};
use moat_builder::oci::{layer_is_gzip, Descriptor, MEDIA_LAYER_TAR};
use moat_builder::Store;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Store(#[from] moat_builder::store::StoreError),
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    BadEntry { layer: Digest, entry: String, reason: String },
    #[error("layer {layer}: uncompressed content hashes to {actual}, the image config says {expected}")]
    DiffId { layer: Digest, expected: Digest, actual: Digest },
    #[error("layer {layer}: media type {media:?} is not supported (tar or tar+gzip)")]
    Media { layer: Digest, media: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayerError + '_ {
    move |source| LayerError::Io { path: path.to_path_buf(), source }
}

/// `$MOAT_HOME/cache/layers`.
#[derive(Debug, Clone)]
pub struct LayerCache {
    dir: PathBuf,
}

impl LayerCache {
    pub fn new(dir: PathBuf) -> LayerCache {
        LayerCache { dir }
    }
    pub fn default_location() -> LayerCache {
        LayerCache::new(moat_builder::home::cache_dir().join("layers"))
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Where the layer with blob digest `d` lives once unpacked.
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    /// Returns the unpacked directory of `layer`, unpacking it first if the
    /// cache does not hold it. `diff_id` is the image config's digest of the
    /// uncompressed tar.
    pub fn ensure(&self, store: &Store, layer: &Descriptor, diff_id: &Digest) -> Result<PathBuf, LayerError> {
        let dest = self.path(&layer.digest);
        if dest.is_dir() {
            return Ok(dest);
        }
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir).map_err(io_err(&self.dir))?;
        let tmp = tempfile::Builder::new().prefix(".tmp-").tempdir_in(&self.dir).map_err(io_err(&self.dir))?;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).map_err(io_err(tmp.path()))?;
        unpack(store, layer, diff_id, tmp.path())?;
        sync_fs(tmp.path());
        match fs::rename(tmp.path(), &dest) {
            Ok(()) => {
                // The temp dir is now `dest`; do not let its guard delete it.
                let _ = tmp.keep();
                Ok(dest)
            }
            // Another process unpacked the same layer first: keep theirs.
            Err(_) if dest.is_dir() => Ok(dest),
            Err(e) => Err(LayerError::Io { path: dest, source: e }),
        }
    }
}

/// Unpacks one layer blob into the empty directory `root`.
fn unpack(store: &Store, layer: &Descriptor, diff_id: &Digest, root: &Path) -> Result<(), LayerError> {
    let blob = store.open_blob(&layer.digest)?;
    let decoded: Box<dyn Read> = if layer_is_gzip(&layer.media_type) {
        Box::new(flate2::read::GzDecoder::new(blob))
    } else if layer.media_type == MEDIA_LAYER_TAR || layer.media_type == "application/vnd.docker.image.rootfs.diff.tar"
    {
        Box::new(blob)
    } else {
        return Err(LayerError::Media { layer: layer.digest.clone(), media: layer.media_type.clone() });
    };
    let mut hashing = HashingReader { inner: decoded, hasher: HashingWriter::new(io::sink()) };
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let entries = archive.entries().map_err(io_err(root))?;
        for entry in entries {
            let mut entry = entry.map_err(io_err(root))?;
            apply_entry(&mut entry, root).map_err(|e| match e {
                EntryError::Io(source) => LayerError::Io { path: root.to_path_buf(), source },
                EntryError::Bad(entry, reason) => LayerError::BadEntry { layer: layer.digest.clone(), entry, reason },
            })?;
        }
    }
    // Read to the end so both digests cover every byte (tar padding included);
    // the store's reader fails here if the blob does not match its digest.
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| match e.get_ref().map(|i| i.to_string()) {
        Some(msg) if e.kind() == io::ErrorKind::InvalidData => {
            LayerError::BadEntry { layer: layer.digest.clone(), entry: String::new(), reason: msg }
        }
        _ => LayerError::Io { path: store.blob_path(&layer.digest), source: e },
    })?;
    let (_, actual, _) = hashing.hasher.finish();
    if &actual != diff_id {
        return Err(LayerError::DiffId { layer: layer.digest.clone(), expected: diff_id.clone(), actual });
    }
    Ok(())
}

struct HashingReader<R> {
    inner: R,
    hasher: HashingWriter<io::Sink>,
}
impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        io::Write::write_all(&mut self.hasher, &buf[..n])?;
        Ok(n)
    }
}

enum EntryError {
    Io(io::Error),
    Bad(String, String),
}
impl From<io::Error> for EntryError {
    fn from(e: io::Error) -> Self {
        EntryError::Io(e)
    }
}

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// A layer path made safe to join under the layer root: relative, no `..`.
fn clean_path(raw: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err("absolute path".into()),
            Component::ParentDir => return Err("path contains `..`".into()),
        }
    }
    Ok(out)
}

/// Makes sure every ancestor of `rel` under `root` is a real directory (never
/// a symlink), creating missing ones; nothing written later can leave `root`.
fn ensure_parents(root: &Path, rel: &Path) -> Result<(), EntryError> {
    let mut cur = root.to_path_buf();
    let parents: Vec<_> = rel.parent().map(|p| p.components().collect()).unwrap_or_default();
    for c in parents {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(EntryError::Bad(
                    rel.display().to_string(),
                    format!("goes through the symlink {}", cur.strip_prefix(root).unwrap_or(&cur).display()),
                ))
            }
            Ok(_) => return Err(EntryError::Bad(rel.display().to_string(), "a parent is not a directory".into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new().mode(0o755).create(&cur)?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Removes whatever non-directory is at `p` (a later tar entry replaces an earlier one).
fn clear_slot(p: &Path, name: &str, want_dir: bool) -> Result<(), EntryError> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() && want_dir => Ok(()),
        Ok(m) if m.is_dir() => Err(EntryError::Bad(name.into(), "replaces a directory with a non-directory".into())),
        Ok(_) => Ok(fs::remove_file(p)?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn apply_entry<R: Read>(entry: &mut tar::Entry<'_, R>, root: &Path) -> Result<(), EntryError> {
    let raw = entry.path()?.into_owned();
    let name = raw.display().to_string();
    let rel = clean_path(&raw).map_err(|r| EntryError::Bad(name.clone(), r))?;
    if rel.as_os_str().is_empty() {
        return Ok(()); // the layer root itself ("./")
    }
    ensure_parents(root, &rel)?;
    let target = root.join(&rel);
    let base = rel.file_name().map(OsStr::as_bytes).unwrap_or_default();
    let header = entry.header().clone();
    let (uid, gid) = (header.uid()? as u32, header.gid()? as u32);
    let mode = header.mode()? & 0o7777;

    if base.starts_with(WHITEOUT.as_bytes()) {
        let parent = target.parent().unwrap_or(root);
        if base == OPAQUE.as_bytes() {
            return set_opaque(parent).map_err(EntryError::Io);
        }
        let hidden = &base[WHITEOUT.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.starts_with(WHITEOUT.as_bytes()) {
            return Err(EntryError::Bad(name, "malformed whiteout".into()));
        }
        let wpath = parent.join(OsStr::from_bytes(hidden));
        if fs::symlink_metadata(&wpath).is_ok() {
            return Err(EntryError::Bad(name, "whiteout of a path the same layer creates".into()));
        }
        return mknod_whiteout(&wpath).map_err(EntryError::Io);
    }
    use tar::EntryType as T;
    match header.entry_type() {
        T::Directory => {
            clear_slot(&target, &name, true)?;
            if fs::symlink_metadata(&target).is_err() {
                fs::DirBuilder::new().mode(0o700).create(&target)?;
            }
            lchown(&target, uid, gid)?;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
        }
        T::Regular | T::Continuous => {
            clear_slot(&target, &name, false)?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&target)?;
            io::copy(entry, &mut f)?;
            drop(f);
            // chown before chmod: chown clears setuid/setgid bits.
            lchown(&target, uid, gid)?;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
        }
        T::Symlink => {
            let link =
                header.link_name()?.ok_or_else(|| EntryError::Bad(name.clone(), "symlink without target".into()))?;
            if link.as_os_str().is_empty() {
                return Err(EntryError::Bad(name, "empty symlink target".into()));
            }
            // The target is stored as is: absolute targets resolve inside the
            // sandbox's root at run time; the unpacker never follows links.
            clear_slot(&target, &name, false)?;
            symlink(&link, &target)?;
            lchown(&target, uid, gid)?;
        }
        T::Link => {
            let link =
                header.link_name()?.ok_or_else(|| EntryError::Bad(name.clone(), "hardlink without target".into()))?;
            let lrel = clean_path(&link).map_err(|r| EntryError::Bad(name.clone(), format!("hardlink target: {r}")))?;
            ensure_parents(root, &lrel)
                .map_err(|_| EntryError::Bad(name.clone(), "hardlink target goes through a symlink".into()))?;
            let src = root.join(&lrel);
            match fs::symlink_metadata(&src) {
                Ok(m) if m.is_dir() => return Err(EntryError::Bad(name, "hardlink to a directory".into())),
                Ok(_) => {}
                Err(_) => {
                    return Err(EntryError::Bad(
                        name,
                        format!("hardlink target {} is not in this layer", lrel.display()),
                    ))
                }
            }
            clear_slot(&target, &name, false)?;
            fs::hard_link(&src, &target)?;
        }
        T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
        other => {
            return Err(EntryError::Bad(
                name,
                format!("entry type {other:?} is not allowed in a layer (devices, FIFOs, sparse files)"),
            ))
        }
    }
    Ok(())
}

fn lchown(p: &Path, uid: u32, gid: u32) -> io::Result<()> {
    // Does not follow symlinks.
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
}

/// An overlayfs whiteout: a 0/0 character device.
fn mknod_whiteout(p: &Path) -> io::Result<()> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    Ok(mknod(p, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))?)
}

/// Marks a directory opaque for overlayfs (hides the lower layers' content).
fn set_opaque(dir: &Path) -> io::Result<()> {
    crate::sys::set_xattr_no_follow(dir, c"trusted.overlay.opaque", b"y")
}

/// Flushes the filesystem holding `p` so a renamed cache entry is complete on disk.
fn sync_fs(p: &Path) {
    if let Ok(f) = fs::File::open(p) {
        use std::os::fd::AsRawFd;
        let _ = nix::unistd::syncfs(f.as_raw_fd());
    }
}

/// Reads a small file from an unpacked layer without following any symlink
/// (a hostile layer's `etc/passwd -> /etc/shadow` must not read the host's).
pub(crate) fn read_no_follow(root: &Path, rel: &str) -> io::Result<Option<Vec<u8>>> {
    let mut cur = root.to_path_buf();
    let comps: Vec<_> = Path::new(rel).components().filter(|c| matches!(c, Component::Normal(_))).collect();
    for (i, c) in comps.iter().enumerate() {
        cur.push(c);
        let m = match fs::symlink_metadata(&cur) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if m.file_type().is_symlink() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is a symlink in the image; refusing to follow it", cur.display()),
            ));
        }
        if i + 1 == comps.len() && !m.is_file() {
            return Ok(None);
        }
    }
    let mut f = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&cur)?;
    let mut v = Vec::new();
    f.by_ref().take(1 << 20).read_to_end(&mut v)?;
    Ok(Some(v))
}

#[cfg(test)]
mod tests;
