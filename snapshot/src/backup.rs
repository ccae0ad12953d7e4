//! Backup: walks a directory through descriptors (never following symlinks,
//! at any depth), cuts the data of regular files into content-defined chunks
//! (the holes of sparse files are recorded, not read), stores each new chunk
//! once and writes the canonical manifest. Incremental through the stat
//! cache (a file whose size/mtime/ctime/inode are unchanged is not read
//! again). Addresses torn or partial backups (the manifest is written only
//! after every chunk it names is durable), secret leakage (credential-like
//! files are reported and, on request, left out), workspaces a path cannot
//! reach (deeper than PATH_MAX) and sparse files that would cost their full
//! size to read.
#![forbid(unsafe_code)]
use crate::chunks::ChunkWriter;
use crate::format::{sha256_hex, AVG_CHUNK, MAX_CHUNK, MIN_CHUNK, MIN_HOLE};
use crate::manifest::{data_ranges, Entry, Kind, Manifest};
use crate::repo::{CacheEntry, Record, Repo, StatCache};
use crate::tree::{self, Descend};
use crate::{io_err, secrets, sys, SnapshotError};
use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Bytes a backup thread reads at once to cut chunks from.
const WINDOW: usize = 4 << 20;

#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Whose snapshot this is (a sandbox name; records are kept per name).
    pub sandbox: String,
    pub tag: Option<String>,
    /// Globs matched against the relative path and the file name.
    pub exclude: Vec<String>,
    pub exclude_secrets: bool,
}

#[derive(Debug, Clone)]
pub struct BackupReport {
    pub digest: String,
    pub record: Record,
    /// Files actually read (not answered by the stat cache).
    pub files_read: u64,
    /// What the snapshot could not hold although it has content (names or
    /// symlink targets that are not UTF-8, files that vanished): the subset
    /// of `record.skipped` a restore replacing this tree would lose.
    pub unkept: Vec<String>,
}

/// What the walk saw of one entry (an `lstat`, and a symlink's target).
struct Found {
    rel: String,
    st: Stat,
    link: Option<std::ffi::OsString>,
}

/// The fields of an `lstat` a backup uses.
#[derive(Clone, Copy)]
struct Stat {
    fmt: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    blocks: u64,
    nlink: u64,
    dev: u64,
    ino: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stat {
    fn of(s: &libc::stat) -> Stat {
        Stat {
            fmt: s.st_mode & libc::S_IFMT,
            mode: s.st_mode & 0o7777,
            uid: s.st_uid,
            gid: s.st_gid,
            size: s.st_size.max(0) as u64,
            blocks: s.st_blocks.max(0) as u64,
            nlink: s.st_nlink,
            dev: s.st_dev,
            ino: s.st_ino,
            mtime_ns: s.st_mtime as i128 * 1_000_000_000 + s.st_mtime_nsec as i128,
            ctime_ns: s.st_ctime as i128 * 1_000_000_000 + s.st_ctime_nsec as i128,
        }
    }

    /// Fewer blocks than bytes: the file may have holes worth looking for.
    fn maybe_sparse(&self) -> bool {
        self.blocks.saturating_mul(512) < self.size
    }
}

/// Backs up `src` into `repo`; records it under `opts.sandbox`.
pub fn backup_dir(repo: &Repo, src: &Path, opts: &BackupOptions) -> Result<BackupReport, SnapshotError> {
    moat_builder::home::check_sandbox_name(&opts.sandbox)?;
    if let Some(t) = &opts.tag {
        crate::repo::check_tag(t).map_err(SnapshotError::Invalid)?;
    }
    let _lock = repo.lock(false)?;
    let excludes = build_globs(&opts.exclude)?;
    let root_meta = fs::symlink_metadata(src).map_err(io_err(src))?;
    if !root_meta.is_dir() {
        return Err(SnapshotError::Invalid(format!("{}: not a directory", src.display())));
    }
    let root = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(src)
        .map(OwnedFd::from)
        .map_err(io_err(src))?;
    let root_st = sys::stat_fd(root.as_fd()).map_err(io_err(src))?;
    let mut found = vec![Found { rel: ".".into(), st: Stat::of(&root_st), link: None }];
    let mut skipped = Vec::new();
    let mut unkept = Vec::new();
    walk(root.as_fd(), src, &excludes, &mut found, &mut skipped, &mut unkept)?;
    found.sort_by(|a, b| a.rel.cmp(&b.rel));

    let cache_key = format!("{}\0{}", opts.sandbox, fs::canonicalize(src).map_err(io_err(src))?.display());
    let old_cache = repo.load_cache(&cache_key);
    let mut secrets_seen = Vec::new();

    // Classify; decide which regular files must be read.
    let mut entries: Vec<Option<Entry>> = Vec::with_capacity(found.len());
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    let mut to_read: Vec<usize> = Vec::new();
    let mut new_cache = StatCache::new();
    for (i, f) in found.iter().enumerate() {
        let m = &f.st;
        let mut e = Entry {
            path: f.rel.clone(),
            kind: Kind::Dir,
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            size: 0,
            target: None,
            chunks: vec![],
            holes: vec![],
        };
        if m.fmt == libc::S_IFDIR {
        } else if m.fmt == libc::S_IFLNK {
            let Some(t) = f.link.as_ref().and_then(|t| t.to_str()) else {
                let why = format!("{}: symlink target is not UTF-8", f.rel);
                skipped.push(why.clone());
                unkept.push(why);
                entries.push(None);
                continue;
            };
            e.kind = Kind::Symlink;
            e.target = Some(t.into());
        } else if m.fmt == libc::S_IFREG {
            let name = f.rel.rsplit('/').next().unwrap_or(&f.rel);
            if let Some(why) = secrets::by_name(name) {
                if opts.exclude_secrets {
                    skipped.push(format!("{}: secret ({why}), excluded", f.rel));
                    entries.push(None);
                    continue;
                }
                secrets_seen.push(format!("{}: {why}", f.rel));
            }
            if m.nlink > 1 {
                if let Some(leader) = links.get(&(m.dev, m.ino)) {
                    e.kind = Kind::Hardlink;
                    e.target = Some(leader.clone());
                    entries.push(Some(e));
                    continue;
                }
                links.insert((m.dev, m.ino), f.rel.clone());
            }
            e.kind = Kind::File;
            match old_cache.get(&f.rel) {
                Some(c) if cache_matches(c, m) && c.chunks.iter().all(|id| repo.chunks().has_chunk(id)) => {
                    if let Some(why) = &c.secret {
                        if opts.exclude_secrets {
                            skipped.push(format!("{}: secret ({why}), excluded", f.rel));
                            entries.push(None);
                            continue;
                        }
                        secrets_seen.push(format!("{}: {why}", f.rel));
                    }
                    e.size = c.size;
                    e.chunks = c.chunks.clone();
                    e.holes = c.holes.clone().unwrap_or_default();
                    new_cache.insert(f.rel.clone(), c.clone());
                }
                _ => to_read.push(i),
            }
        } else {
            let what = match m.fmt {
                libc::S_IFIFO => "FIFO",
                libc::S_IFSOCK => "socket",
                libc::S_IFCHR => "character device",
                _ => "block device",
            };
            skipped.push(format!("{}: {what}, skipped", f.rel));
            entries.push(None);
            continue;
        }
        entries.push(Some(e));
    }

    // Read, chunk, hash, compress and store the changed files in parallel.
    let writer = ChunkWriter::new(repo.chunks());
    let results = read_files(&writer, root.as_fd(), src, &found, &to_read, opts.exclude_secrets)?;
    let (mut new_chunks, mut new_bytes) = (0, 0);
    let mut dropped_leaders = Vec::new();
    for (i, r) in to_read.iter().zip(results) {
        let f = &found[*i];
        new_chunks += r.new_chunks;
        new_bytes += r.new_bytes;
        match r.outcome {
            Outcome::Vanished => {
                let why = format!("{}: vanished during the backup", f.rel);
                skipped.push(why.clone());
                unkept.push(why);
                entries[*i] = None;
                dropped_leaders.push(f.rel.clone());
            }
            Outcome::Secret(why) => {
                skipped.push(format!("{}: secret ({why}), excluded", f.rel));
                entries[*i] = None;
                dropped_leaders.push(f.rel.clone());
            }
            Outcome::Stored { size, chunks, holes, secret, stable } => {
                if let Some(why) = &secret {
                    secrets_seen.push(format!("{}: {why}", f.rel));
                }
                if stable {
                    let m = &f.st;
                    new_cache.insert(
                        f.rel.clone(),
                        CacheEntry {
                            size,
                            mtime_ns: m.mtime_ns,
                            ctime_ns: m.ctime_ns,
                            ino: m.ino,
                            dev: m.dev,
                            chunks: chunks.clone(),
                            secret,
                            holes: Some(holes.clone()),
                        },
                    );
                }
                if let Some(e) = entries[*i].as_mut() {
                    e.size = size;
                    e.chunks = chunks;
                    e.holes = holes;
                }
            }
        }
    }
    // A hardlink whose leader was dropped becomes the leader's stand-in:
    // simplest correct answer is to drop it too, and say so.
    let mut final_entries = Vec::new();
    for e in entries.into_iter().flatten() {
        if e.kind == Kind::Hardlink && e.target.as_ref().is_some_and(|t| dropped_leaders.contains(t)) {
            skipped.push(format!("{}: hard link to excluded {}, skipped", e.path, e.target.as_deref().unwrap_or("")));
            continue;
        }
        final_entries.push(e);
    }
    let manifest = Manifest::new(final_entries);
    // Every chunk is durable (syncfs, rename, fsync dir) before the manifest names it.
    writer.commit()?;
    let digest = repo.put_manifest(&manifest)?;
    let time_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    skipped.sort();
    secrets_seen.sort();
    let record = Record {
        digest: digest.clone(),
        sandbox: opts.sandbox.clone(),
        tag: opts.tag.clone(),
        time_ns,
        files: manifest.files(),
        bytes: manifest.bytes(),
        new_chunks,
        new_bytes,
        skipped,
        secrets: secrets_seen,
    };
    repo.add_record(&record)?;
    repo.save_cache(&cache_key, &new_cache)?;
    unkept.sort();
    Ok(BackupReport { digest, record, files_read: to_read.len() as u64, unkept })
}

/// The file is as the cache saw it. A cache line written before holes were
/// recorded (`holes: None`) answers only for a file without room for holes.
fn cache_matches(c: &CacheEntry, m: &Stat) -> bool {
    c.size == m.size
        && c.ino == m.ino
        && c.dev == m.dev
        && c.mtime_ns == m.mtime_ns
        && c.ctime_ns == m.ctime_ns
        && (c.holes.is_some() || !m.maybe_sparse())
}

fn build_globs(pats: &[String]) -> Result<globset::GlobSet, SnapshotError> {
    let mut b = globset::GlobSetBuilder::new();
    for p in pats {
        let g = globset::GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .map_err(|e| SnapshotError::Invalid(format!("--exclude {p:?}: {e}")))?;
        b.add(g);
    }
    b.build().map_err(|e| SnapshotError::Invalid(format!("--exclude: {e}")))
}

/// Lists the tree under `root` (through descriptors: any depth) into `out`,
/// leaving out what `ex` matches and saying what it cannot hold.
fn walk(
    root: BorrowedFd<'_>,
    src: &Path,
    ex: &globset::GlobSet,
    out: &mut Vec<Found>,
    skipped: &mut Vec<String>,
    unkept: &mut Vec<String>,
) -> Result<(), SnapshotError> {
    let mut visit = |dir: BorrowedFd<'_>, parent: &str, name: &std::ffi::OsStr, st: &libc::stat| {
        let Some(name) = name.to_str() else {
            let shown = if parent == "." {
                name.to_string_lossy().into_owned()
            } else {
                format!("{parent}/{}", name.to_string_lossy())
            };
            let why = format!("{shown}: name is not UTF-8, skipped");
            skipped.push(why.clone());
            unkept.push(why);
            return Ok(Descend::Skip);
        };
        let rel = if parent == "." { name.to_string() } else { format!("{parent}/{name}") };
        if ex.is_match(&rel) || ex.is_match(name) {
            return Ok(Descend::Skip);
        }
        let st = Stat::of(st);
        let link = if st.fmt == libc::S_IFLNK {
            match sys::readlink_at(dir, std::ffi::OsStr::new(name)) {
                Ok(t) => Some(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Descend::Skip),
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        out.push(Found { rel: rel.clone(), st, link });
        Ok(if st.fmt == libc::S_IFDIR { Descend::Into(rel) } else { Descend::Skip })
    };
    tree::walk(root, &mut visit).map_err(io_err(src))
}

enum Outcome {
    Stored { size: u64, chunks: Vec<String>, holes: Vec<[u64; 2]>, secret: Option<String>, stable: bool },
    Secret(String),
    Vanished,
}
struct FileResult {
    outcome: Outcome,
    new_chunks: u64,
    new_bytes: u64,
}

fn read_files(
    writer: &ChunkWriter,
    root: BorrowedFd<'_>,
    src: &Path,
    found: &[Found],
    idx: &[usize],
    exclude_secrets: bool,
) -> Result<Vec<FileResult>, SnapshotError> {
    let next = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<Result<FileResult, SnapshotError>>>> =
        Mutex::new((0..idx.len()).map(|_| None).collect());
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(idx.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            // One window per thread, reused for every file: allocating (and
            // zeroing) 4 MiB per file cost a fifth of a backup's CPU.
            s.spawn(|| {
                let mut window = vec![0u8; WINDOW];
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= idx.len() {
                        break;
                    }
                    let r = store_file(writer, root, src, &found[idx[k]], exclude_secrets, &mut window);
                    let failed = r.is_err();
                    if let Ok(mut g) = slots.lock() {
                        g[k] = Some(r);
                    }
                    if failed {
                        next.store(idx.len(), Ordering::Relaxed);
                        break;
                    }
                }
            });
        }
    });
    let slots = slots.into_inner().map_err(|_| SnapshotError::Invalid("a backup worker panicked".into()))?;
    let mut out = Vec::with_capacity(idx.len());
    for r in slots.into_iter().flatten() {
        out.push(r?);
    }
    if out.len() != idx.len() {
        return Err(SnapshotError::Invalid("a backup worker stopped early".into()));
    }
    Ok(out)
}

/// Cuts a stream into FastCDC chunks through `buf` (the slice API of the
/// fastcdc crate, compiled optimised; the last cut of a window is only final
/// at end of file, so the cut points equal those of the whole file).
fn chunk_stream(
    buf: &mut [u8],
    mut r: impl std::io::Read,
    path: &Path,
    on_chunk: &mut dyn FnMut(&[u8]) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    let window = buf.len();
    let mut have = 0;
    let mut eof = false;
    loop {
        while !eof && have < window {
            match r.read(&mut buf[have..]) {
                Ok(0) => eof = true,
                Ok(n) => have += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(path)(e)),
            }
        }
        if have == 0 {
            return Ok(());
        }
        let mut done = 0;
        for c in fastcdc::v2020::FastCDC::new(&buf[..have], MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
            let end = c.offset + c.length;
            if end == have && !eof {
                break; // may grow with more data: cut again next window
            }
            on_chunk(&buf[c.offset..end])?;
            done = end;
        }
        if eof && done == have {
            return Ok(());
        }
        buf.copy_within(done..have, 0);
        have -= done;
    }
}

/// Opens the regular file `rel` under `root` for reading (no symlink is
/// followed on the way, at any depth).
fn open_beneath(root: BorrowedFd<'_>, rel: &str) -> std::io::Result<fs::File> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_RDONLY | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
    sys::open_beneath(root, rel, flags, 0).map(fs::File::from)
}

/// Reads the data of a file, skipping its holes: the bytes of `[0, size)`
/// outside `holes`, in order. Stops early if the file shrinks; `reached`
/// is then the offset it got to.
struct DataReader<'a> {
    file: &'a fs::File,
    ranges: Vec<(u64, u64)>,
    at: usize,
    done_in_range: u64,
    reached: u64,
}

impl<'a> DataReader<'a> {
    fn new(file: &'a fs::File, size: u64, holes: &[[u64; 2]]) -> DataReader<'a> {
        DataReader { file, ranges: data_ranges(size, holes), at: 0, done_in_range: 0, reached: 0 }
    }
}

impl std::io::Read for DataReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(&(off, len)) = self.ranges.get(self.at) {
            let left = len - self.done_in_range;
            if left == 0 {
                self.at += 1;
                self.done_in_range = 0;
                continue;
            }
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = self.file.read_at(&mut buf[..want], off + self.done_in_range)?;
            if n == 0 {
                self.at = self.ranges.len(); // shrank: nothing more to read
                return Ok(0);
            }
            self.done_in_range += n as u64;
            self.reached = off + self.done_in_range;
            return Ok(n);
        }
        Ok(0)
    }
}

/// The holes of `file` worth recording: at least [`MIN_HOLE`] long (shorter
/// ones are read as the zeros they hold, so a manifest stays small).
fn holes_of(file: &fs::File, st: &Stat) -> std::io::Result<Vec<[u64; 2]>> {
    if !st.maybe_sparse() {
        return Ok(Vec::new());
    }
    Ok(sys::holes(file, st.size)?.into_iter().filter(|(_, len)| *len >= MIN_HOLE).map(|(o, l)| [o, l]).collect())
}

fn store_file(
    writer: &ChunkWriter,
    root: BorrowedFd<'_>,
    src: &Path,
    f: &Found,
    exclude_secrets: bool,
    window: &mut [u8],
) -> Result<FileResult, SnapshotError> {
    let vanished = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let nothing = FileResult { outcome: Outcome::Vanished, new_chunks: 0, new_bytes: 0 };
    let abs = src.join(&f.rel);
    let file = match open_beneath(root, &f.rel) {
        Ok(file) => file,
        Err(e) if vanished(&e) => return Ok(nothing),
        Err(e) => return Err(io_err(&abs)(e)),
    };
    let before = sys::stat_fd(file.as_fd()).map(|s| Stat::of(&s)).map_err(io_err(&abs))?;
    if before.fmt != libc::S_IFREG || before.ino != f.st.ino {
        return Ok(nothing); // replaced by something else since the walk
    }
    let mut holes = holes_of(&file, &before).map_err(io_err(&abs))?;
    if exclude_secrets {
        match secrets::in_reader(DataReader::new(&file, before.size, &holes)) {
            Ok(Some(why)) => return Ok(FileResult { outcome: Outcome::Secret(why), ..nothing }),
            Ok(None) => {}
            Err(e) => return Err(io_err(&abs)(e)),
        }
    }
    let (mut data_len, mut chunks, mut new_chunks, mut new_bytes) = (0u64, Vec::new(), 0, 0);
    let mut secret = None;
    let mut prev_tail: Vec<u8> = Vec::new();
    let mut on_chunk = |data: &[u8]| -> Result<(), SnapshotError> {
        if secret.is_none() {
            // Also look across the boundary with the previous chunk.
            prev_tail.extend_from_slice(&data[..data.len().min(128)]);
            secret = secrets::in_bytes(&prev_tail).or_else(|| secrets::in_bytes(data));
            prev_tail.clear();
            prev_tail.extend_from_slice(&data[data.len().saturating_sub(128)..]);
        }
        let id = sha256_hex(data);
        if let Some(n) = writer.put(&id, data)? {
            new_chunks += 1;
            new_bytes += n;
        }
        data_len += data.len() as u64;
        chunks.push(id);
        Ok(())
    };
    let mut reader = DataReader::new(&file, before.size, &holes);
    chunk_stream(window, &mut reader, &abs, &mut on_chunk)?;
    let hole_bytes: u64 = holes.iter().map(|[_, l]| l).sum();
    let mut size = before.size;
    if data_len != size - hole_bytes {
        // Shrank while read: the file ends where reading stopped, with the
        // holes before that point.
        size = reader.reached;
        holes.retain(|[o, l]| o + l <= size);
    }
    let after = sys::stat_fd(file.as_fd()).map(|s| Stat::of(&s)).map_err(io_err(&abs))?;
    let stable = after.mtime_ns == f.st.mtime_ns && after.size == size && f.st.size == size;
    Ok(FileResult { outcome: Outcome::Stored { size, chunks, holes, secret, stable }, new_chunks, new_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windowed_chunking_cuts_where_whole_file_chunking_does() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let data: Vec<u8> = (0..(11 << 20) + 12345)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &data).unwrap();
        std::io::Seek::rewind(&mut f).unwrap();
        let mut got = Vec::new();
        chunk_stream(&mut vec![0u8; WINDOW], &f, Path::new("t"), &mut |c: &[u8]| {
            got.push(c.len());
            Ok(())
        })
        .unwrap();
        let want: Vec<usize> =
            fastcdc::v2020::FastCDC::new(&data, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK).map(|c| c.length).collect();
        assert_eq!(got, want);
        assert!(want.len() > 100);
    }
}
