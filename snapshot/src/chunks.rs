//! The chunk store of a snapshot repository: finding, reading and verifying
//! chunks, writing them in batches ([`ChunkWriter`]) and collecting the ones
//! no snapshot references. Addresses torn writes (packs are published only
//! after one syncfs has made them durable, so a name in the index always has
//! durable bytes behind it) and silent corruption (every chunk is checked
//! against its sha256 on every read). Chunks live in packs
//! ([`crate::pack`]); loose chunk files of v1 repositories are still read.
#![forbid(unsafe_code)]
use crate::format::{sha256_hex, MAX_CHUNK};
use crate::pack::{self, Building, Built, ChunkId, Entry, Index, Loc};
use crate::{io_err, sys, SnapshotError};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

const ZSTD_LEVEL: i32 = 1;
/// Open pack files kept for reading.
const MAX_READERS: usize = 256;

/// The chunk store of the repository at `root` (`packs/`, v1 `chunks/`,
/// `tmp/`), with its in-memory side: the merged pack index (loaded on first
/// use) and open pack files.
pub struct ChunkStore {
    root: PathBuf,
    index: RwLock<Option<Index>>,
    readers: Mutex<HashMap<u32, Arc<fs::File>>>,
    /// Whether `chunks/` (v1 loose chunk files) has anything in it.
    legacy: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a chunk is stored.
enum Place {
    Packed(ChunkId, Loc),
    Loose(PathBuf),
}

impl ChunkStore {
    /// The chunk store of the repository at `root` (whose directories exist).
    pub(crate) fn open(root: &Path) -> ChunkStore {
        let legacy = fs::read_dir(root.join("chunks")).is_ok_and(|mut d| d.next().is_some());
        ChunkStore { root: root.to_path_buf(), index: RwLock::new(None), readers: Mutex::new(HashMap::new()), legacy }
    }

    fn packs_dir(&self) -> PathBuf {
        self.root.join("packs")
    }

    fn loose_path(&self, id: &str) -> PathBuf {
        self.root.join("chunks").join(id)
    }

    /// Runs `f` on the index, loading it first if needed.
    fn with_index<R>(&self, f: impl FnOnce(&Index) -> R) -> Result<R, SnapshotError> {
        if let Some(ix) = self.index.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(f(ix));
        }
        let mut w = self.index.write().unwrap_or_else(|p| p.into_inner());
        if w.is_none() {
            *w = Some(Index::load(&self.packs_dir())?);
        }
        Ok(f(w.as_ref().unwrap_or(&Index::default())))
    }

    fn place(&self, id: &str) -> Result<Option<Place>, SnapshotError> {
        let Some(cid) = pack::parse_id(id) else { return Ok(None) };
        if let Some(loc) = self.with_index(|ix| ix.chunks.get(&cid).copied())? {
            return Ok(Some(Place::Packed(cid, loc)));
        }
        let loose = self.loose_path(id);
        Ok((self.legacy && loose.is_file()).then_some(Place::Loose(loose)))
    }

    /// The path of pack number `pack` of the loaded index.
    fn pack_path(&self, pack: u32) -> Result<PathBuf, SnapshotError> {
        let name = self.with_index(|ix| ix.packs.get(pack as usize).cloned())?.unwrap_or_default();
        Ok(pack::paths(&self.packs_dir(), &name).0)
    }

    pub fn has_chunk(&self, id: &str) -> bool {
        matches!(self.place(id), Ok(Some(_)))
    }

    /// The file holding a chunk, the offset of its stored bytes (codec byte
    /// and payload) and their length: for tools and tests that inspect or
    /// damage a repository on purpose.
    pub fn chunk_location(&self, id: &str) -> Option<(PathBuf, u64, u64)> {
        match self.place(id).ok()?? {
            Place::Packed(_, loc) => Some((self.pack_path(loc.pack).ok()?, loc.offset, loc.len as u64)),
            Place::Loose(p) => {
                let len = fs::metadata(&p).ok()?.len();
                Some((p, 0, len))
            }
        }
    }

    /// Distinct chunks stored.
    pub fn chunk_count(&self) -> Result<usize, SnapshotError> {
        let mut loose = Vec::new();
        if self.legacy {
            let dir = self.root.join("chunks");
            for e in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
                loose.push(e.file_name().to_str().and_then(pack::parse_id));
            }
        }
        self.with_index(|ix| {
            let packed_too = |id: &Option<ChunkId>| id.is_some_and(|id| ix.chunks.contains_key(&id));
            ix.chunks.len() + loose.iter().filter(|id| !packed_too(id)).count()
        })
    }

    fn reader(&self, pack: u32) -> Result<Arc<fs::File>, SnapshotError> {
        let mut readers = lock(&self.readers);
        if let Some(f) = readers.get(&pack) {
            return Ok(f.clone());
        }
        let p = self.pack_path(pack)?;
        let f = Arc::new(fs::File::open(&p).map_err(io_err(&p))?);
        if readers.len() >= MAX_READERS {
            readers.clear();
        }
        readers.insert(pack, f.clone());
        Ok(f)
    }

    /// The stored bytes of a chunk (codec byte + payload), decoded and
    /// verified; returns (stored, plain).
    fn fetch(&self, id: &str) -> Result<(Vec<u8>, Vec<u8>), SnapshotError> {
        let (stored, path) = match self.place(id)? {
            Some(Place::Packed(cid, loc)) => {
                let path = self.pack_path(loc.pack)?;
                let f = self.reader(loc.pack)?;
                let raw = pack::read_record(&f, &cid, loc.offset, loc.len).map_err(|reason| {
                    SnapshotError::Corrupt { path: path.clone(), reason: format!("chunk {id}: {reason}") }
                })?;
                (raw, path)
            }
            Some(Place::Loose(p)) => (fs::read(&p).map_err(io_err(&p))?, p),
            None => {
                let p = self.loose_path(id);
                return Err(io_err(&p)(io::Error::new(io::ErrorKind::NotFound, format!("chunk {id} is not stored"))));
            }
        };
        let corrupt =
            |reason: String| SnapshotError::Corrupt { path: path.clone(), reason: format!("chunk {id}: {reason}") };
        let plain = decode_chunk(&stored).map_err(corrupt)?;
        if sha256_hex(&plain) != id {
            return Err(corrupt("content does not match its sha256".into()));
        }
        Ok((stored, plain))
    }

    /// Reads a chunk and checks it against its id.
    pub fn read_chunk(&self, id: &str) -> Result<Vec<u8>, SnapshotError> {
        Ok(self.fetch(id)?.1)
    }

    /// A chunk's stored bytes (codec byte + payload), verified first.
    pub(crate) fn read_stored(&self, id: &str) -> Result<Vec<u8>, SnapshotError> {
        Ok(self.fetch(id)?.0)
    }

    /// Stores one chunk durably (a one-chunk [`ChunkWriter`]); returns the
    /// stored size if it was new.
    pub fn put_chunk(&self, id: &str, plain: &[u8]) -> Result<Option<u64>, SnapshotError> {
        let w = ChunkWriter::new(self);
        let n = w.put(id, plain)?;
        w.commit()?;
        Ok(n)
    }

    /// Removes the chunks not in `live` (rewriting packs that hold both
    /// kinds, live ones first) and packs left without an index. The caller
    /// holds the repository's lock exclusively ([`crate::Repo::gc`]).
    /// Returns (chunks removed, bytes freed).
    pub(crate) fn sweep(&self, live: &HashSet<ChunkId>) -> Result<(u64, u64), SnapshotError> {
        let dir = self.packs_dir();
        let (mut removed, mut freed, mut added) = (0u64, 0u64, 0u64);
        let mut doomed = Vec::new();
        let writer = ChunkWriter::new(self);
        let mut kept = HashSet::new();
        let packs = pack::read_all(&dir)?;
        let indexed: HashSet<&str> = packs.iter().map(|(name, _)| name.as_str()).collect();
        // Packs whose index never landed (an interrupted commit).
        for e in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.strip_suffix(".pack").is_some_and(|stem| !indexed.contains(stem)) {
                freed += file_len(&e.path());
                fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
            }
        }
        for (name, entries) in &packs {
            let keep: Vec<&Entry> = entries.iter().filter(|(id, _, _)| live.contains(id) && kept.insert(*id)).collect();
            if keep.len() == entries.len() {
                continue;
            }
            removed += (entries.len() - keep.len()) as u64;
            if !keep.is_empty() {
                let (p, _) = pack::paths(&dir, name);
                let f = match fs::File::open(&p) {
                    Ok(f) => Some(f),
                    // A lost pack: its chunks are gone already (restores of the
                    // snapshots naming them report it); gc must still work.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(io_err(&p)(e)),
                };
                for (id, offset, len) in keep {
                    // Copied as stored, unverified: a damaged chunk is not gc's
                    // to judge. An unreadable one is left for another copy.
                    match f.as_ref().map(|f| pack::read_record(f, id, *offset, *len)) {
                        Some(Ok(raw)) => {
                            added += pack::RECORD_HEAD + raw.len() as u64;
                            writer.queue_stored(*id, &raw)?;
                        }
                        other => {
                            let reason = match other {
                                Some(Err(why)) => why,
                                _ => "the pack file is missing".into(),
                            };
                            tracing::warn!(event = "snapshot_gc_unreadable", pack = %p.display(), chunk = %hex::encode(id), %reason, "a referenced chunk could not be copied");
                            kept.remove(id);
                        }
                    }
                }
            }
            doomed.push(name.clone());
        }
        // The surviving chunks are published before their old packs go.
        writer.commit()?;
        for name in &doomed {
            let (p, i) = pack::paths(&dir, name);
            freed += file_len(&p) + file_len(&i);
            fs::remove_file(&i).map_err(io_err(&i))?;
            match fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&p)(e)),
                _ => {}
            }
        }
        sys::sync_dir(&dir).map_err(io_err(&dir))?;
        if self.legacy {
            let loose = self.root.join("chunks");
            for e in fs::read_dir(&loose).map_err(io_err(&loose))?.flatten() {
                let id = e.file_name().to_str().and_then(pack::parse_id);
                if !id.is_some_and(|id| live.contains(&id) && kept.insert(id)) {
                    freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                    fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
                    removed += 1;
                }
            }
        }
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = None;
        lock(&self.readers).clear();
        Ok((removed, freed.saturating_sub(added)))
    }
}

fn file_len(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

type Slot<C> = std::cell::RefCell<Option<C>>;

/// Runs `f` on this thread's context in `key`, made by `make` on first use
/// (creating a zstd context per chunk cost as much as compressing a small one).
fn with_context<C: 'static, R>(
    key: &'static std::thread::LocalKey<Slot<C>>,
    make: impl FnOnce() -> io::Result<C>,
    f: impl FnOnce(&mut C) -> io::Result<R>,
) -> io::Result<R> {
    key.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(make()?);
        }
        slot.as_mut().map_or_else(|| Err(io::Error::other("zstd context")), f)
    })
}

thread_local! {
    static COMPRESSOR: Slot<zstd::bulk::Compressor<'static>> = const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: Slot<zstd::bulk::Decompressor<'static>> = const { std::cell::RefCell::new(None) };
}

/// zstd at `ZSTD_LEVEL`, one context per thread.
fn compress(plain: &[u8]) -> io::Result<Vec<u8>> {
    with_context(&COMPRESSOR, || zstd::bulk::Compressor::new(ZSTD_LEVEL), |c| c.compress(plain))
}

/// The inverse, one context per thread.
fn decompress(z: &[u8]) -> io::Result<Vec<u8>> {
    with_context(&DECOMPRESSOR, zstd::bulk::Decompressor::new, |d| d.decompress(z, MAX_CHUNK as usize))
}

/// Plain bytes from stored bytes (codec byte + payload).
pub(crate) fn decode_chunk(raw: &[u8]) -> Result<Vec<u8>, String> {
    match raw.split_first() {
        Some((b'r', rest)) => Ok(rest.to_vec()),
        Some((b'z', rest)) => decompress(rest).map_err(|e| format!("zstd: {e}")),
        Some((c, _)) => Err(format!("unknown codec byte {c:#x}")),
        None => Err("empty chunk".into()),
    }
}

/// Writes a batch of chunks from any number of threads: each thread appends
/// to a pack of its own in `tmp/`; `commit` makes them all durable with one
/// syncfs, then publishes each pack and its index into `packs/`. A crash
/// leaves only temp files (and at worst a pack without an index) for `gc`.
pub struct ChunkWriter<'a> {
    store: &'a ChunkStore,
    claimed: Mutex<HashSet<ChunkId>>,
    open: Mutex<Vec<Building>>,
    built: Mutex<Vec<Built>>,
}

impl<'a> ChunkWriter<'a> {
    pub fn new(store: &'a ChunkStore) -> ChunkWriter<'a> {
        ChunkWriter { store, claimed: Mutex::default(), open: Mutex::default(), built: Mutex::default() }
    }

    /// Queues a chunk unless it is stored or queued; returns its stored size if new.
    pub fn put(&self, id: &str, plain: &[u8]) -> Result<Option<u64>, SnapshotError> {
        let cid =
            pack::parse_id(id).ok_or_else(|| SnapshotError::Invalid(format!("chunk id {id:?} is not a sha256")))?;
        if self.store.has_chunk(id) || !lock(&self.claimed).insert(cid) {
            return Ok(None);
        }
        let z = compress(plain).map_err(io_err(&self.store.root))?;
        let (codec, payload): (u8, &[u8]) = if z.len() < plain.len() { (b'z', &z) } else { (b'r', plain) };
        self.append(cid, codec, payload)?;
        Ok(Some(payload.len() as u64 + 1))
    }

    /// Queues a chunk in its stored form (codec byte + payload, verified by
    /// the caller) unless it is stored or queued.
    pub(crate) fn put_stored(&self, id: &str, stored: &[u8]) -> Result<(), SnapshotError> {
        let cid =
            pack::parse_id(id).ok_or_else(|| SnapshotError::Invalid(format!("chunk id {id:?} is not a sha256")))?;
        if self.store.has_chunk(id) {
            return Ok(());
        }
        self.queue_stored(cid, stored)
    }

    /// Queues stored bytes as they are, even if the chunk is stored already
    /// (gc moving it to a new pack).
    fn queue_stored(&self, id: ChunkId, stored: &[u8]) -> Result<(), SnapshotError> {
        let Some((codec, payload)) = stored.split_first() else {
            return Err(SnapshotError::Invalid("empty stored chunk".into()));
        };
        if lock(&self.claimed).insert(id) {
            self.append(id, *codec, payload)?;
        }
        Ok(())
    }

    fn append(&self, id: ChunkId, codec: u8, payload: &[u8]) -> Result<(), SnapshotError> {
        let tmp = self.store.root.join("tmp");
        let taken = lock(&self.open).pop();
        let mut b = match taken {
            Some(b) => b,
            None => Building::new(&tmp)?,
        };
        b.append(id, codec, payload).map_err(io_err(&tmp))?;
        if b.is_full() {
            let built = b.finish(&tmp)?;
            lock(&self.built).push(built);
        } else {
            lock(&self.open).push(b);
        }
        Ok(())
    }

    /// One syncfs (far cheaper than an fdatasync per pack or chunk), then
    /// each pack and its index renamed into `packs/`, then fsync `packs/`.
    pub fn commit(self) -> Result<(), SnapshotError> {
        let tmp = self.store.root.join("tmp");
        let mut built = self.built.into_inner().unwrap_or_else(|p| p.into_inner());
        for b in self.open.into_inner().unwrap_or_else(|p| p.into_inner()) {
            if !b.is_empty() {
                built.push(b.finish(&tmp)?);
            }
        }
        if built.is_empty() {
            return Ok(());
        }
        let f = fs::File::open(&tmp).map_err(io_err(&tmp))?;
        sys::syncfs(&f).map_err(io_err(&tmp))?;
        let dir = self.store.packs_dir();
        let mut published = Vec::with_capacity(built.len());
        for b in built {
            published.push(b.publish(&dir)?);
        }
        sys::sync_dir(&dir).map_err(io_err(&dir))?;
        if let Some(ix) = self.store.index.write().unwrap_or_else(|p| p.into_inner()).as_mut() {
            for (name, entries) in published {
                ix.add(name, &entries);
            }
        }
        Ok(())
    }
}
