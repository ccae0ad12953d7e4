//! The snapshot repository on disk: manifests named by their own sha256,
//! per-sandbox records, the stat cache, the lock and `gc` (chunks:
//! [`crate::chunks`], owned by the repository). Guards against torn or
//! corrupt data: every write is temp file + fsync + rename, every read is
//! verified against its name, and `gc` takes the lock exclusively so it never
//! races a backup.
#![forbid(unsafe_code)]
use crate::chunks::ChunkStore;
use crate::format::sha256_hex;
use crate::manifest::Manifest;
use crate::{io_err, pack, SnapshotError};
use moat_builder::home::check_sandbox_name;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const FORMAT_NOTE: &[u8] = b"{\"format\":\"moat.snapshots.v2\",\"packs\":\"packs/NAME.pack holds chunk records (32-byte sha256 of the plain bytes, u32 LE length, codec byte r = raw or z = zstd frame, payload); packs/NAME.idx lists them (see snapshot/src/pack.rs)\",\"chunks\":\"v1 loose chunk files, still read\",\"manifests\":\"moat.snapshot.v1, or moat.snapshot.v2 when a file has holes (entries carry holes: [[offset, length], ...] and their chunks hold the rest of the file); both are read\"}\n";

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

/// How far in the future a record's time may be (clocks of two machines
/// differ; a time beyond this would stay "latest" for good).
pub(crate) const MAX_CLOCK_SKEW_NS: u128 = 24 * 3600 * 1_000_000_000;
/// The longest tag, in bytes.
pub(crate) const MAX_TAG: usize = 128;

/// Nanoseconds since 1970 now (0 if the clock is before 1970).
pub(crate) fn now_ns() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// A tag is 1-128 bytes of text an operator's terminal shows as written: no
/// control characters (escape sequences, newlines) and no invisible or
/// direction-changing ones.
pub(crate) fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() || tag.len() > MAX_TAG {
        return Err(format!("a tag is 1 to {MAX_TAG} bytes"));
    }
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
    };
    if let Some(c) = tag.chars().find(|c| hidden(*c)) {
        return Err(format!(
            "tag \"{}\" holds the control or invisible character U+{:04X}",
            tag.escape_default(),
            c as u32
        ));
    }
    Ok(())
}

impl Record {
    /// Checks what a record says of itself against `now` (ns since 1970):
    /// its tag ([`check_tag`]) and a time no more than [`MAX_CLOCK_SKEW_NS`]
    /// ahead (time is unsigned, so never before 1970).
    pub fn check(&self, now: u128) -> Result<(), String> {
        if let Some(t) = &self.tag {
            check_tag(t)?;
        }
        if self.time_ns > now.saturating_add(MAX_CLOCK_SKEW_NS) {
            return Err(format!(
                "its time ({} ns since 1970) is more than a day in the future (now {now})",
                self.time_ns
            ));
        }
        Ok(())
    }
}

/// What [`Repo::add_record`] checks: the sandbox name, tag and time. An
/// import checks it before it stores anything.
pub(crate) fn check_record(r: &Record) -> Result<(), SnapshotError> {
    check_sandbox_name(&r.sandbox)?;
    r.check(now_ns())
        .map_err(|why| SnapshotError::Invalid(format!("the record of snapshot sha256:{} is refused: {why}", r.digest)))
}

/// One stat-cache line: a file as it was seen, and its chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CacheEntry {
    pub(crate) size: u64,
    pub(crate) mtime_ns: i128,
    pub(crate) ctime_ns: i128,
    pub(crate) ino: u64,
    pub(crate) dev: u64,
    pub(crate) chunks: Vec<String>,
    #[serde(default)]
    pub(crate) secret: Option<String>,
    /// The file's recorded holes; `None` in a line written before holes
    /// were recorded.
    #[serde(default)]
    pub(crate) holes: Option<Vec<[u64; 2]>>,
}
pub(crate) type StatCache = BTreeMap<String, CacheEntry>;

/// A snapshot repository: its root and its chunk store.
pub struct Repo {
    root: PathBuf,
    chunks: ChunkStore,
}

/// A held lock on the repository (released on drop).
pub(crate) struct RepoLock {
    _file: fs::File,
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
        Ok(Repo { root: root.to_path_buf(), chunks: ChunkStore::open(root) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The chunks: lookup, verified reads, writes.
    pub fn chunks(&self) -> &ChunkStore {
        &self.chunks
    }

    /// Shared lock (backups, restores) or exclusive (gc); blocks until granted.
    pub(crate) fn lock(&self, exclusive: bool) -> Result<RepoLock, SnapshotError> {
        let p = self.root.join("lock");
        let f = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&p).map_err(io_err(&p))?;
        let locked = if exclusive { fs2::FileExt::lock_exclusive(&f) } else { fs2::FileExt::lock_shared(&f) };
        locked.map_err(io_err(&p))?;
        Ok(RepoLock { _file: f })
    }

    /// Writes the manifest; returns its digest (sha256 hex of its canonical bytes).
    pub(crate) fn put_manifest(&self, m: &Manifest) -> Result<String, SnapshotError> {
        let bytes = m.to_bytes()?;
        let id = sha256_hex(&bytes);
        let p = self.manifest_path(&id);
        if !p.is_file() {
            write_atomic(&p, &bytes)?;
        }
        Ok(id)
    }

    pub(crate) fn manifest_path(&self, id: &str) -> PathBuf {
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

    /// Stores a record; every record passes here (backup, import, pull), so
    /// its name, tag and time are checked here.
    pub(crate) fn add_record(&self, r: &Record) -> Result<(), SnapshotError> {
        check_record(r)?;
        let dir = self.root.join("refs").join(&r.sandbox);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let bytes = serde_json::to_vec_pretty(r).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        write_atomic(&dir.join(format!("{:030}-{}.json", r.time_ns, &r.digest[..12])), &bytes)
    }

    /// A sandbox's records, oldest first.
    pub fn records(&self, sandbox: &str) -> Result<Vec<Record>, SnapshotError> {
        check_sandbox_name(sandbox)?;
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
                if check_sandbox_name(n).is_ok() {
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
    pub(crate) fn load_cache(&self, key: &str) -> StatCache {
        fs::read(self.cache_path(key)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    pub(crate) fn save_cache(&self, key: &str, c: &StatCache) -> Result<(), SnapshotError> {
        let bytes = serde_json::to_vec(c).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        write_atomic(&self.cache_path(key), &bytes)
    }

    /// Removes chunks no manifest references (see [`ChunkStore::sweep`])
    /// and abandoned temp files, holding the lock exclusively.
    /// Returns (chunks removed, bytes freed).
    pub fn gc(&self) -> Result<(u64, u64), SnapshotError> {
        let _lock = self.lock(true)?;
        let mut live = HashSet::new();
        for id in self.manifests()? {
            let m = self.manifest(&id)?;
            live.extend(m.chunk_ids().into_iter().filter_map(pack::parse_id));
        }
        let removed = self.chunks.sweep(&live)?;
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_err(&tmp))?.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = fs::remove_dir_all(e.path()); // a v1 backup worker's staging directory
            } else {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(removed)
    }
}

/// The repository's small files (manifests, records, the stat cache, the
/// format note), written with the workspace's contract: temp file, fsync,
/// rename, directory fsync. Private (0600): snapshots hold whole workspaces.
fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    moat_builder::fsio::write(dest, bytes, 0o600).map_err(io_err(dest))
}
