//! The snapshot repository on disk: manifests named by their own sha256,
//! per-sandbox records, the stat cache and a lock (chunks: [`crate::chunks`]).
//! Guards against torn or corrupt data: every write is temp file + fsync +
//! rename, every read is verified against its name, and `gc` takes the lock
//! exclusively so it never races a backup.
use crate::manifest::Manifest;
use crate::{io_err, SnapshotError};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const FORMAT_NOTE: &[u8] = b"{\"format\":\"moat.snapshots.v2\",\"packs\":\"packs/NAME.pack holds chunk records (32-byte sha256 of the plain bytes, u32 LE length, codec byte r = raw or z = zstd frame, payload); packs/NAME.idx lists them (see supervisor/src/snapshot/pack.rs)\",\"chunks\":\"v1 loose chunk files, still read\"}\n";

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
    pub(super) root: PathBuf,
    pub(super) store: crate::chunks::ChunkStore,
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
        for d in ["packs", "snapshots", "refs", "cache", "tmp"] {
            let p = root.join(d);
            fs::DirBuilder::new().recursive(true).mode(0o700).create(&p).map_err(io_err(&p))?;
        }
        let note = root.join("format.json");
        if fs::read(&note).ok().as_deref() != Some(FORMAT_NOTE) {
            write_atomic(&note, FORMAT_NOTE)?;
        }
        Ok(Repo { root: root.to_path_buf(), store: crate::chunks::ChunkStore::new(root) })
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
        moat_builder::home::check_sandbox_name(&r.sandbox)?;
        let dir = self.root.join("refs").join(&r.sandbox);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let bytes = serde_json::to_vec_pretty(r).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        write_atomic(&dir.join(format!("{:030}-{}.json", r.time_ns, &r.digest[..12])), &bytes)
    }

    /// A sandbox's records, oldest first.
    pub fn records(&self, sandbox: &str) -> Result<Vec<Record>, SnapshotError> {
        moat_builder::home::check_sandbox_name(sandbox)?;
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
                if moat_builder::home::check_sandbox_name(n).is_ok() {
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
