//! The image store: one OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`). Guards against torn writes (temp file + fsync + rename),
//! silent corruption (every blob read is checked against its digest, a blob is
//! reused only after its digest is checked, a corrupt one is written again),
//! concurrent index updates (an exclusive flock around read-modify-write),
//! gc racing a writer (the writer lease, `lease`) and an index entry naming
//! blobs that are gone (`set_ref` checks the image is whole before naming it).
//! `fsck` checks the whole store.
#![forbid(unsafe_code)]
mod fsck;
mod lease;
mod verified;

use crate::digest::{Digest, HashingWriter};
use crate::oci::{Descriptor, ImageConfig, Index, Manifest, ANNOTATION_REF_NAME, MEDIA_MANIFEST};
use crate::{cjson, fsio};
use fs2::FileExt;
pub use fsck::{FsckProblem, FsckReport};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0} is not an OCI image layout (no oci-layout file)")]
    NotALayout(PathBuf),
    #[error("blob {0} is missing from the store")]
    Missing(Digest),
    #[error("blob {expected} is corrupt: its content hashes to {actual}")]
    Corrupt { expected: Digest, actual: Digest },
    #[error("blob {digest} is invalid JSON")]
    BadJson { digest: Digest, source: serde_json::Error },
    #[error("index.json: {0}")]
    BadIndex(serde_json::Error),
    #[error("no image named {0:?} in the store (see `moat images`)")]
    UnknownImage(String),
    #[error("image reference {0:?} is ambiguous: several images match")]
    Ambiguous(String),
    #[error("written blob hashes to {actual}, expected {expected}")]
    Mismatch { expected: Digest, actual: Digest },
    #[error("image {name} is not whole: its {role} {digest} is missing from the store (removed by a concurrent gc?)")]
    Incomplete { name: String, role: String, digest: Digest },
    #[error("image {name}: its {role} {digest} is {size} bytes in the store, {expected} in the manifest")]
    WrongSize { name: String, role: String, digest: Digest, size: u64, expected: u64 },
    #[error("taking the store's writer lease {0}")]
    Lease(PathBuf, #[source] io::Error),
}

type Result<T> = std::result::Result<T, StoreError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// An image named in the store's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedImage {
    pub name: String,
    pub manifest: Descriptor,
}

/// What garbage collection removed.
#[derive(Debug, Default, Clone)]
pub struct GcReport {
    pub removed: Vec<Digest>,
    pub freed_bytes: u64,
    pub temp_files: usize,
}

/// An OCI image layout on disk. A handle that writes a blob, or decides to
/// reuse one, takes the store's shared writer lease and keeps it until its
/// last clone is dropped, so a concurrent `gc` waits for it (see `lease`).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    lease: Arc<lease::Lease>,
}

impl Store {
    /// Opens the layout at `root`, creating an empty one if it does not exist.
    pub fn open(root: &Path) -> Result<Store> {
        let store = Store { root: root.to_path_buf(), lease: Default::default() };
        fs::create_dir_all(store.blobs_dir()).map_err(io_err(root))?;
        fs::create_dir_all(store.tmp_dir()).map_err(io_err(root))?;
        let layout = root.join("oci-layout");
        if layout.exists() {
            return Ok(store);
        }
        // Under the index lock: a concurrent first open cannot replace an
        // index another process has just written, nor gc sweep the temp file.
        let _lock = store.lock()?;
        // index.json first: oci-layout marks a complete layout, so a process
        // killed in between leaves "not yet a layout", never a broken one.
        let index = root.join("index.json");
        if !index.exists() {
            let bytes = cjson::to_vec(&Index::default()).map_err(StoreError::BadIndex)?;
            store.write_file(&index, &bytes)?;
        }
        if !layout.exists() {
            store.write_file(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        Ok(store)
    }

    /// Opens an existing layout read-only (never creates anything).
    pub fn open_existing(root: &Path) -> Result<Store> {
        if !root.join("oci-layout").is_file() {
            return Err(StoreError::NotALayout(root.to_path_buf()));
        }
        Ok(Store { root: root.to_path_buf(), lease: Default::default() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }
    fn tmp_dir(&self) -> PathBuf {
        self.root.join(".moat").join("tmp")
    }
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blobs_dir().join(d.hex())
    }
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }
    pub fn blob_size(&self, d: &Digest) -> Result<u64> {
        let p = self.blob_path(d);
        match fs::metadata(&p) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::Missing(d.clone())),
            Err(e) => Err(StoreError::Io { path: p, source: e }),
        }
    }

    /// Takes this handle's shared writer lease now (it is taken anyway at the
    /// first blob write or reuse): from here until the last clone of the handle
    /// is dropped, `gc` waits. Writers call it before their first decision
    /// about what the store holds.
    pub fn hold_writer_lease(&self) -> Result<()> {
        self.lease.hold_shared(&self.root).map_err(|e| StoreError::Lease(self.root.join(".moat/gc.lock"), e))
    }

    /// Whether a writer may skip writing `d`: the blob is present and hashes
    /// to its name. A corrupt blob gives `false` with a warning; the caller's
    /// write then replaces it. Takes the writer lease (a reuse decision must
    /// hold until the blob is named in the index).
    pub fn reuse_blob(&self, d: &Digest) -> Result<bool> {
        self.hold_writer_lease()?;
        match self.check_for_reuse(d) {
            Ok(()) => Ok(true),
            Err(StoreError::Missing(_)) => Ok(false),
            Err(StoreError::Corrupt { expected, actual }) => {
                tracing::warn!(blob = %expected, hashes_to = %actual, "corrupt blob {expected} in the store; writing it again");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Re-hashes a blob on disk unless the verified-blob memo says its file
    /// is unchanged since it was last checked (see `verified`).
    fn check_for_reuse(&self, d: &Digest) -> Result<()> {
        let p = self.blob_path(d);
        let f = File::open(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::Missing(d.clone()),
            _ => StoreError::Io { path: p.clone(), source: e },
        })?;
        // The stamp is taken before hashing: a write during the hash changes
        // ctime, so the entry written below no longer matches.
        let meta = f.metadata().map_err(io_err(&p))?;
        if self.memo_knows(d, &meta) {
            return Ok(());
        }
        io::copy(&mut VerifyingReader::new(&f, d.clone()), &mut io::sink()).map_err(|e| unwrap_verify_error(e, &p))?;
        self.memo_remember(d, &meta);
        Ok(())
    }

    /// Starts a streamed blob write; nothing is visible until `commit`.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        self.hold_writer_lease()?;
        let dir = self.tmp_dir();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io_err(&dir))?;
        Ok(BlobWriter {
            store: self.clone(),
            inner: HashingWriter::new(BufWriter::with_capacity(1 << 20, tmp)),
            started: 0,
        })
    }

    /// Writes a whole blob and returns its digest (a present blob is kept
    /// only if it hashes right, see `reuse_blob`).
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::of(bytes);
        if !self.reuse_blob(&d)? {
            let mut w = self.blob_writer()?;
            w.write_all(bytes).map_err(io_err(&self.root))?;
            w.commit(Some(&d))?;
        }
        Ok(d)
    }

    /// Reads a whole blob, verifying its digest.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let mut r = self.open_blob(d)?;
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).map_err(|e| unwrap_verify_error(e, &self.blob_path(d)))?;
        Ok(buf)
    }

    /// Opens a blob for streaming; the reader fails at end of stream if the
    /// content does not hash to `d` (callers must read to the end).
    pub fn open_blob(&self, d: &Digest) -> Result<VerifyingReader<File>> {
        let p = self.blob_path(d);
        let f = File::open(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::Missing(d.clone()),
            _ => StoreError::Io { path: p.clone(), source: e },
        })?;
        Ok(VerifyingReader::new(f, d.clone()))
    }

    /// Re-hashes a blob on disk.
    pub fn verify_blob(&self, d: &Digest) -> Result<()> {
        let mut r = self.open_blob(d)?;
        io::copy(&mut r, &mut io::sink()).map_err(|e| unwrap_verify_error(e, &self.blob_path(d)))?;
        Ok(())
    }

    pub fn read_json<T: serde::de::DeserializeOwned>(&self, d: &Digest) -> Result<T> {
        let bytes = self.read_blob(d)?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::BadJson { digest: d.clone(), source })
    }
    pub fn manifest(&self, d: &Digest) -> Result<Manifest> {
        self.read_json(d)
    }
    pub fn config(&self, m: &Manifest) -> Result<ImageConfig> {
        self.read_json(&m.config.digest)
    }

    pub fn index(&self) -> Result<Index> {
        let p = self.root.join("index.json");
        let bytes = fs::read(&p).map_err(io_err(&p))?;
        serde_json::from_slice(&bytes).map_err(StoreError::BadIndex)
    }

    /// Every named image, in index order.
    pub fn images(&self) -> Result<Vec<NamedImage>> {
        Ok(self
            .index()?
            .manifests
            .into_iter()
            .map(|m| NamedImage {
                name: m.annotations.get(ANNOTATION_REF_NAME).cloned().unwrap_or_default(),
                manifest: m,
            })
            .collect())
    }

    /// The index entry named exactly `name`, if any (no digest matching).
    pub fn get_ref(&self, name: &str) -> Result<Option<Descriptor>> {
        Ok(self
            .index()?
            .manifests
            .into_iter()
            .find(|m| m.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(name)))
    }

    /// Finds an image by `NAME`, `NAME@sha256:…`, `sha256:…` or a unique hex prefix.
    pub fn resolve(&self, reference: &str) -> Result<NamedImage> {
        let images = self.images()?;
        let (name, digest) = match reference.split_once('@') {
            Some((n, d)) => (Some(n), Some(d)),
            None if reference.starts_with("sha256:") => (None, Some(reference)),
            None => (Some(reference), None),
        };
        let hits: Vec<_> = images
            .into_iter()
            .filter(|i| name.is_none_or(|n| i.name == n))
            .filter(|i| digest.is_none_or(|d| i.manifest.digest.to_string().starts_with(d)))
            .collect();
        match hits.len() {
            0 => Err(StoreError::UnknownImage(reference.into())),
            1 => Ok(hits.into_iter().next().expect("one hit")),
            _ => Err(StoreError::Ambiguous(reference.into())),
        }
    }

    /// Names `manifest` as `name` in index.json (replacing an older image of
    /// that name). Refuses an image that is not whole: under the index lock,
    /// which `gc` holds too, the manifest must read verified and its config
    /// and layers be present at their sizes.
    pub fn set_ref(&self, name: &str, mut manifest: Descriptor) -> Result<()> {
        manifest.annotations.insert(ANNOTATION_REF_NAME.into(), name.into());
        if manifest.media_type.is_empty() {
            manifest.media_type = MEDIA_MANIFEST.into();
        }
        // The lease before the index lock: gc takes them in this order too.
        self.hold_writer_lease()?;
        self.update_index(|idx| {
            self.check_whole(name, &manifest)?;
            idx.manifests.retain(|m| m.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) != Some(name));
            idx.manifests.push(manifest);
            idx.manifests
                .sort_by(|a, b| a.annotations.get(ANNOTATION_REF_NAME).cmp(&b.annotations.get(ANNOTATION_REF_NAME)));
            Ok(())
        })
    }

    /// What a manifest or an image index names: (role, descriptor, whether
    /// it is itself a manifest or index). Read verified.
    pub(crate) fn named_by(&self, d: &Digest) -> Result<Vec<(String, Descriptor, bool)>> {
        let v: serde_json::Value = self.read_json(d)?;
        let bad = |source| StoreError::BadJson { digest: d.clone(), source };
        if v.get("manifests").is_some() {
            let idx: Index = serde_json::from_value(v).map_err(bad)?;
            return Ok(idx
                .manifests
                .into_iter()
                .enumerate()
                .map(|(i, m)| (format!("manifest {i}"), m, true))
                .collect());
        }
        let m: Manifest = serde_json::from_value(v).map_err(bad)?;
        let mut out = vec![("config".to_string(), m.config, false)];
        out.extend(m.layers.into_iter().enumerate().map(|(i, l)| (format!("layer {i}"), l, false)));
        Ok(out)
    }

    /// The manifest (or index) `desc` names and every blob it reaches are in
    /// the store at their sizes.
    fn check_whole(&self, name: &str, desc: &Descriptor) -> Result<()> {
        let present = |role: &str, d: &Descriptor| match self.blob_size(&d.digest) {
            Ok(size) if size == d.size => Ok(()),
            Ok(size) => Err(StoreError::WrongSize {
                name: name.into(),
                role: role.into(),
                digest: d.digest.clone(),
                size,
                expected: d.size,
            }),
            Err(StoreError::Missing(digest)) => {
                Err(StoreError::Incomplete { name: name.into(), role: role.into(), digest })
            }
            Err(e) => Err(e),
        };
        present("manifest", desc)?;
        let mut todo = vec![(desc.digest.clone(), 0)];
        while let Some((d, depth)) = todo.pop() {
            for (role, child, nested) in self.named_by(&d)? {
                present(&role, &child)?;
                if nested && depth < MAX_NESTING {
                    todo.push((child.digest, depth + 1));
                }
            }
        }
        Ok(())
    }

    /// Removes the name from index.json; blobs stay until `gc`.
    pub fn remove_ref(&self, name: &str) -> Result<bool> {
        let mut found = false;
        self.update_index(|idx| {
            let before = idx.manifests.len();
            idx.manifests.retain(|m| m.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) != Some(name));
            found = idx.manifests.len() != before;
            Ok(())
        })?;
        Ok(found)
    }

    fn update_index(&self, f: impl FnOnce(&mut Index) -> Result<()>) -> Result<()> {
        let _lock = self.lock()?;
        let mut idx = self.index()?;
        f(&mut idx)?;
        let bytes = cjson::to_vec(&idx).map_err(StoreError::BadIndex)?;
        self.write_file(&self.root.join("index.json"), &bytes)
    }

    /// Writes one of the layout's own files atomically (world-readable, like
    /// blobs), through the store's temp directory so `gc` sweeps what a crash
    /// leaves behind.
    fn write_file(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        fsio::write_via(&self.tmp_dir(), dest, bytes, 0o644).map_err(io_err(dest))
    }

    /// An exclusive lock on the store, held until dropped.
    pub fn lock(&self) -> Result<File> {
        let p = self.root.join(".moat").join("lock");
        let f = OpenOptions::new().create(true).truncate(false).write(true).open(&p).map_err(io_err(&p))?;
        f.lock_exclusive().map_err(io_err(&p))?;
        Ok(f)
    }

    /// Every blob an index entry reaches (image indexes, manifests, configs,
    /// layers). A manifest or index the store lacks is skipped: there is
    /// nothing of it to keep (`fsck` reports it).
    pub fn reachable(&self) -> Result<BTreeSet<Digest>> {
        let mut live = BTreeSet::new();
        let mut todo: Vec<_> = self.index()?.manifests.into_iter().map(|m| (m.digest, 0)).collect();
        while let Some((d, depth)) = todo.pop() {
            if !live.insert(d.clone()) || !self.has_blob(&d) {
                continue;
            }
            for (_, child, nested) in self.named_by(&d)? {
                if nested && depth < MAX_NESTING {
                    todo.push((child.digest, depth + 1));
                } else {
                    live.insert(child.digest);
                }
            }
        }
        Ok(live)
    }

    /// Removes blobs no index entry reaches, and stale temp files. Holds the
    /// writer lease exclusively (no build, lock or pull is between its first
    /// blob and its `set_ref`, so every temp file is stale and every blob a
    /// writer will name is already named) and the index lock.
    pub fn gc(&self) -> Result<GcReport> {
        let lease_path = self.root.join(".moat/gc.lock");
        self.lease.exclusively(&self.root, || self.gc_locked()).map_err(|e| StoreError::Lease(lease_path, e))?
    }

    fn gc_locked(&self) -> Result<GcReport> {
        let _lock = self.lock()?;
        let live = self.reachable()?;
        let mut report = GcReport::default();
        let dir = self.blobs_dir();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(d) = Digest::parse_hex(name) else { continue };
            if !live.contains(&d) {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
                report.freed_bytes += size;
                report.removed.push(d);
            }
        }
        let tmp = self.tmp_dir();
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                if fs::remove_file(e.path()).is_ok() {
                    report.temp_files += 1;
                }
            }
        }
        self.memo_prune();
        Ok(report)
    }
}

/// How deep image indexes may nest below an index.json entry.
const MAX_NESTING: usize = 4;

fn unwrap_verify_error(e: io::Error, path: &Path) -> StoreError {
    if e.get_ref().is_some_and(|i| i.is::<CorruptBlob>()) {
        if let Some(c) = e.into_inner().and_then(|i| i.downcast::<CorruptBlob>().ok()) {
            return StoreError::Corrupt { expected: c.expected, actual: c.actual };
        }
        unreachable!("checked is::<CorruptBlob> above")
    }
    StoreError::Io { path: path.to_path_buf(), source: e }
}

/// A streamed blob being written to a temp file in the store.
pub struct BlobWriter {
    store: Store,
    inner: HashingWriter<BufWriter<tempfile::NamedTempFile>>,
    /// Bytes whose writeback has been started.
    started: u64,
}

/// Writeback of a large blob starts every this many bytes, so the disk works
/// while the blob is still being made and the final fsync waits for little.
const WRITEBACK_STEP: u64 = 4 << 20;

impl BlobWriter {
    fn start_writeback(&mut self) -> io::Result<()> {
        let end = self.inner.count();
        let buffered = self.inner.get_mut();
        buffered.flush()?;
        crate::sys::start_writeback(buffered.get_ref().as_file(), self.started, end - self.started);
        self.started = end;
        Ok(())
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if self.inner.count() - self.started >= WRITEBACK_STEP {
            self.start_writeback()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl BlobWriter {
    /// Fsyncs and renames the blob into place; refuses it if it does not hash
    /// to `expected`. Returns its digest and size.
    pub fn commit(self, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let (buf, digest, size) = self.inner.finish();
        let root = self.store.root.clone();
        if let Some(exp) = expected {
            if exp != &digest {
                return Err(StoreError::Mismatch { expected: exp.clone(), actual: digest });
            }
        }
        let tmp = buf.into_inner().map_err(|e| StoreError::Io { path: root.clone(), source: e.into_error() })?;
        // Blobs are content, not secrets: readable by other tools and users.
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(io_err(&root))?;
        let dest = self.store.blob_path(&digest);
        fsio::persist(tmp, &dest).map_err(io_err(&dest))?;
        if let Ok(meta) = fs::metadata(&dest) {
            self.store.memo_remember(&digest, &meta);
        }
        Ok((digest, size))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("content hashes to {actual}, expected {expected}")]
struct CorruptBlob {
    expected: Digest,
    actual: Digest,
}

/// A reader that checks the digest of everything read when it reaches EOF.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    expected: Digest,
    done: bool,
}
impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: Digest) -> Self {
        VerifyingReader { inner, hasher: Sha256::new(), expected, done: false }
    }
}
impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && !self.done {
            self.done = true;
            let actual = Digest::from_raw(self.hasher.clone().finalize().into());
            if actual != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    CorruptBlob { expected: self.expected.clone(), actual },
                ));
            }
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
