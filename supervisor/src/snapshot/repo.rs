//! The snapshot repository on disk: chunks stored once by the sha256 of their
//! plain bytes, manifests named by their own sha256, per-sandbox records, the
//! stat cache and a lock. Guards against torn or corrupt data: every write is
//! temp file + fsync + rename, every read is verified against its name, and
//! `gc` takes the lock exclusively so it never races a backup.
use super::manifest::Manifest;
use super::{io_err, SnapshotError};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const FORMAT_NOTE: &[u8] = b"{\"format\":\"moat.snapshots.v1\",\"chunk_file\":\"1 codec byte (r = raw, z = zstd frame) then the payload; named by the sha256 of the plain bytes\"}\n";
const ZSTD_LEVEL: i32 = 1;

/// The undigested facts about one backup: when, of what, under which tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub digest: String,
    pub sandbox: String,
    #[serde(default)]
    pub tag: Option<String>,
    /// Unix time in nanoseconds.
    pub time_ns: u128,
    pub files: u64,
    pub bytes: u64,
    /// Chunks and (stored, compressed) bytes this backup added to the repository.
    pub new_chunks: u64,
    pub new_bytes: u64,
    /// Files left out (devices, FIFOs, sockets, unreadable names, secrets).
    #[serde(default)]
    pub skipped: Vec<String>,
    /// Files that look like secrets (included unless --exclude-secrets).
    #[serde(default)]
    pub secrets: Vec<String>,
}

/// One stat-cache line: a file as it was seen, and its chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
    pub dev: u64,
    pub chunks: Vec<String>,
    #[serde(default)]
    pub secret: Option<String>,
}
pub type StatCache = BTreeMap<String, CacheEntry>;

pub struct Repo {
    root: PathBuf,
}

/// A held lock on the repository (released on drop).
pub struct RepoLock {
    _file: fs::File,
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

impl Repo {
    /// `$MOAT_HOME/snapshots`.
    pub fn default_root() -> PathBuf {
        moat_builder::home::moat_home().join("snapshots")
    }

    /// Opens (creating if needed) the repository at `root`.
    pub fn open(root: &Path) -> Result<Repo, SnapshotError> {
        // Private: snapshots hold whole workspaces (not encrypted).
        use std::os::unix::fs::DirBuilderExt;
        for d in ["chunks", "snapshots", "refs", "cache", "tmp"] {
            let p = root.join(d);
            fs::DirBuilder::new().recursive(true).mode(0o700).create(&p).map_err(io_err(&p))?;
        }
        let note = root.join("format.json");
        if !note.exists() {
            write_atomic(&note, FORMAT_NOTE)?;
        }
        Ok(Repo { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Shared lock (backups, restores) or exclusive (gc).
    pub fn lock(&self, exclusive: bool) -> Result<RepoLock, SnapshotError> {
        let p = self.root.join("lock");
        let f = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&p).map_err(io_err(&p))?;
        let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
        // SAFETY: flock on a descriptor we own; blocks until granted.
        if unsafe { libc::flock(f.as_raw_fd(), op) } != 0 {
            return Err(io_err(&p)(io::Error::last_os_error()));
        }
        Ok(RepoLock { _file: f })
    }

    pub fn chunk_path(&self, id: &str) -> PathBuf {
        self.root.join("chunks").join(id)
    }

    pub fn has_chunk(&self, id: &str) -> bool {
        self.chunk_path(id).is_file()
    }

    /// Stores one chunk durably (a one-chunk [`ChunkWriter`]); returns the
    /// stored size if it was new.
    pub fn put_chunk(&self, id: &str, plain: &[u8]) -> Result<Option<u64>, SnapshotError> {
        let w = ChunkWriter::new(self);
        let n = w.put(id, plain)?;
        w.commit()?;
        Ok(n)
    }

    /// Reads a chunk and checks it against its id.
    pub fn read_chunk(&self, id: &str) -> Result<Vec<u8>, SnapshotError> {
        let p = self.chunk_path(id);
        let raw = fs::read(&p).map_err(io_err(&p))?;
        let plain = decode_chunk(&raw).map_err(|reason| SnapshotError::Corrupt { path: p.clone(), reason })?;
        if sha256_hex(&plain) != id {
            return Err(SnapshotError::Corrupt { path: p, reason: "content does not match its sha256".into() });
        }
        Ok(plain)
    }

    /// Writes the manifest; returns its digest (sha256 hex of its canonical bytes).
    pub fn put_manifest(&self, m: &Manifest) -> Result<String, SnapshotError> {
        let bytes = m.to_bytes()?;
        let id = sha256_hex(&bytes);
        let p = self.manifest_path(&id);
        if !p.is_file() {
            write_atomic(&p, &bytes)?;
        }
        Ok(id)
    }

    pub fn manifest_path(&self, id: &str) -> PathBuf {
        self.root.join("snapshots").join(format!("{id}.json"))
    }

    /// Loads and verifies a manifest.
    pub fn manifest(&self, id: &str) -> Result<Manifest, SnapshotError> {
        let p = self.manifest_path(id);
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SnapshotError::Unknown(id.into())),
            Err(e) => return Err(io_err(&p)(e)),
        };
        if sha256_hex(&bytes) != id {
            return Err(SnapshotError::Corrupt { path: p, reason: "manifest does not match its digest".into() });
        }
        Manifest::parse(&bytes)
    }

    /// Digests of every manifest in the repository.
    pub fn manifests(&self) -> Result<Vec<String>, SnapshotError> {
        let dir = self.root.join("snapshots");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            if let Some(id) = e.file_name().to_str().and_then(|n| n.strip_suffix(".json")) {
                if id.len() == 64 {
                    out.push(id.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn add_record(&self, r: &Record) -> Result<(), SnapshotError> {
        crate::state::check_name(&r.sandbox).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        let dir = self.root.join("refs").join(&r.sandbox);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let bytes = serde_json::to_vec_pretty(r).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        write_atomic(&dir.join(format!("{:030}-{}.json", r.time_ns, &r.digest[..12])), &bytes)
    }

    /// A sandbox's records, oldest first.
    pub fn records(&self, sandbox: &str) -> Result<Vec<Record>, SnapshotError> {
        crate::state::check_name(sandbox).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        let dir = self.root.join("refs").join(sandbox);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut names: Vec<PathBuf> =
            rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
        names.sort();
        let mut out = Vec::new();
        for p in names {
            let b = fs::read(&p).map_err(io_err(&p))?;
            let r: Record = serde_json::from_slice(&b)
                .map_err(|e| SnapshotError::Corrupt { path: p.clone(), reason: e.to_string() })?;
            out.push(r);
        }
        Ok(out)
    }

    /// Finds a snapshot of `sandbox` by full digest (`sha256:` optional),
    /// unique digest prefix (>= 8 hex), tag (latest with it), or latest (None).
    pub fn resolve(&self, sandbox: &str, spec: Option<&str>) -> Result<Record, SnapshotError> {
        let recs = self.records(sandbox)?;
        let Some(spec) = spec else {
            return recs.into_iter().last().ok_or_else(|| SnapshotError::Unknown(format!("{sandbox}: no snapshots")));
        };
        if let Some(r) = recs.iter().rev().find(|r| r.tag.as_deref() == Some(spec)) {
            return Ok(r.clone());
        }
        let hexpart = spec.strip_prefix("sha256:").unwrap_or(spec);
        if hexpart.len() >= 8 && hexpart.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: BTreeSet<&str> =
                recs.iter().filter(|r| r.digest.starts_with(hexpart)).map(|r| r.digest.as_str()).collect();
            if hits.len() > 1 {
                return Err(SnapshotError::Invalid(format!("{spec:?} is ambiguous: {hits:?}")));
            }
            if let Some(r) = recs.iter().rev().find(|r| r.digest.starts_with(hexpart)) {
                return Ok(r.clone());
            }
        }
        Err(SnapshotError::Unknown(spec.into()))
    }

    /// Every record of every sandbox.
    pub fn all_records(&self) -> Result<Vec<Record>, SnapshotError> {
        let dir = self.root.join("refs");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            if let Some(n) = e.file_name().to_str() {
                if crate::state::check_name(n).is_ok() {
                    out.extend(self.records(n)?);
                }
            }
        }
        Ok(out)
    }

    fn cache_path(&self, key: &str) -> PathBuf {
        self.root.join("cache").join(format!("{}.json", &sha256_hex(key.as_bytes())[..32]))
    }

    /// The stat cache of one source (empty if absent or unreadable: it is only a hint).
    pub fn load_cache(&self, key: &str) -> StatCache {
        fs::read(self.cache_path(key)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    pub fn save_cache(&self, key: &str, c: &StatCache) -> Result<(), SnapshotError> {
        let bytes = serde_json::to_vec(c).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        write_atomic(&self.cache_path(key), &bytes)
    }

    /// Removes chunks no manifest references and abandoned temp files.
    /// Returns (chunks removed, bytes freed).
    pub fn gc(&self) -> Result<(u64, u64), SnapshotError> {
        let _lock = self.lock(true)?;
        let mut live = BTreeSet::new();
        for id in self.manifests()? {
            let m = self.manifest(&id)?;
            live.extend(m.chunk_ids().into_iter().map(str::to_string));
        }
        let (mut n, mut bytes) = (0, 0);
        let dir = self.root.join("chunks");
        for e in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) {
                bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
                n += 1;
            }
        }
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_err(&tmp))?.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = fs::remove_dir_all(e.path()); // a backup worker's staging directory
            } else {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok((n, bytes))
    }
}

/// A staging directory per backup thread under `tmp/`: threads creating
/// files in one directory serialise on its lock.
fn worker_tmp(root: &Path) -> Result<PathBuf, SnapshotError> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        /// The directory this thread made last (one statx saved per chunk).
        static MADE: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
    }
    let dir = root.join("tmp").join(format!("w{}-{}", std::process::id(), INDEX.with(|i| *i)));
    if MADE.with(|m| m.borrow().as_ref() != Some(&dir)) {
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        MADE.with(|m| *m.borrow_mut() = Some(dir.clone()));
    }
    Ok(dir)
}

/// zstd at `ZSTD_LEVEL` with one compression context per thread (creating
/// a context per chunk cost as much as compressing small chunks).
fn compress(plain: &[u8]) -> io::Result<Vec<u8>> {
    thread_local! {
        static CTX: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
    }
    CTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL)?);
        }
        match slot.as_mut() {
            Some(c) => c.compress(plain),
            None => Err(io::Error::other("zstd context")),
        }
    })
}

/// The codec byte and the payload in one write (one syscall per chunk).
fn write_chunk_file(f: &mut fs::File, codec: u8, payload: &[u8]) -> io::Result<()> {
    let head = [codec];
    let n = f.write_vectored(&[io::IoSlice::new(&head), io::IoSlice::new(payload)])?;
    match n {
        0 => f.write_all(&head).and_then(|_| f.write_all(payload)),
        n => f.write_all(&payload[n - 1..]),
    }
}

/// The inverse, with one decompression context per thread.
fn decompress(z: &[u8]) -> io::Result<Vec<u8>> {
    thread_local! {
        static CTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
    }
    CTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        match slot.as_mut() {
            Some(d) => d.decompress(z, super::backup::MAX_CHUNK as usize),
            None => Err(io::Error::other("zstd context")),
        }
    })
}

/// Writes a batch of chunks: each goes to `tmp/` first; `commit` makes them
/// all durable with one syncfs, then renames them into `chunks/`. So a name
/// in `chunks/` always has durable content behind it (a later backup trusts
/// an existing name), and a crash leaves only temp files for `gc`.
pub struct ChunkWriter<'a> {
    repo: &'a Repo,
    pending: std::sync::Mutex<BTreeMap<String, Option<tempfile::TempPath>>>,
}

impl<'a> ChunkWriter<'a> {
    pub fn new(repo: &'a Repo) -> ChunkWriter<'a> {
        ChunkWriter { repo, pending: std::sync::Mutex::new(BTreeMap::new()) }
    }

    fn claim(&self, id: &str) -> bool {
        match self.pending.lock() {
            Ok(mut p) if !p.contains_key(id) => {
                p.insert(id.to_string(), None);
                true
            }
            _ => false,
        }
    }

    /// Queues a chunk unless it is stored or queued; returns its stored size if new.
    pub fn put(&self, id: &str, plain: &[u8]) -> Result<Option<u64>, SnapshotError> {
        if self.repo.has_chunk(id) || !self.claim(id) {
            return Ok(None);
        }
        let dest = self.repo.chunk_path(id);
        let z = compress(plain).map_err(io_err(&dest))?;
        let (codec, payload): (u8, &[u8]) = if z.len() < plain.len() { (b'z', &z) } else { (b'r', plain) };
        let tmpdir = worker_tmp(&self.repo.root)?;
        let mut tmp = match tempfile::NamedTempFile::new_in(&tmpdir) {
            // Removed by an earlier commit of this process: make it again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&tmpdir).map_err(io_err(&tmpdir))?;
                tempfile::NamedTempFile::new_in(&tmpdir)
            }
            other => other,
        }
        .map_err(io_err(&tmpdir))?;
        write_chunk_file(tmp.as_file_mut(), codec, payload).map_err(io_err(&dest))?;
        let path = tmp.into_temp_path();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id.to_string(), Some(path));
        }
        Ok(Some(payload.len() as u64 + 1))
    }

    /// One syncfs (far cheaper than an fdatasync per chunk: one journal
    /// commit instead of thousands), then rename every queued chunk into
    /// place, then fsync `chunks/`.
    pub fn commit(self) -> Result<(), SnapshotError> {
        let pending = self.pending.into_inner().map_err(|_| SnapshotError::Invalid("chunk writer poisoned".into()))?;
        let tmpdir = self.repo.root.join("tmp");
        let f = fs::File::open(&tmpdir).map_err(io_err(&tmpdir))?;
        // SAFETY: syncfs on a descriptor we own.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(io_err(&tmpdir)(io::Error::last_os_error()));
        }
        for (id, tmp) in pending {
            if let Some(tmp) = tmp {
                let dest = self.repo.chunk_path(&id);
                tmp.persist(&dest).map_err(|e| io_err(&dest)(e.error))?;
            }
        }
        // This process's staging directories are empty now.
        let mine = format!("w{}-", std::process::id());
        for e in fs::read_dir(&tmpdir).map_err(io_err(&tmpdir))?.flatten() {
            if e.file_name().to_string_lossy().starts_with(&mine) {
                let _ = fs::remove_dir(e.path());
            }
        }
        sync_dir(&self.repo.root.join("chunks"))
    }
}

pub fn decode_chunk(raw: &[u8]) -> Result<Vec<u8>, String> {
    match raw.split_first() {
        Some((b'r', rest)) => Ok(rest.to_vec()),
        Some((b'z', rest)) => decompress(rest).map_err(|e| format!("zstd: {e}")),
        Some((c, _)) => Err(format!("unknown codec byte {c:#x}")),
        None => Err("empty chunk file".into()),
    }
}

/// Temp file + fsync + rename in the destination's directory.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    tmp.write_all(bytes).map_err(io_err(dest))?;
    tmp.as_file().sync_all().map_err(io_err(dest))?;
    tmp.persist(dest).map_err(|e| io_err(dest)(e.error))?;
    Ok(())
}

/// fsyncs a directory (makes renames in it durable).
pub fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io_err(dir))
}
