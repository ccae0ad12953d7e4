//! Pack files: the snapshot repository stores chunks appended to packs of
//! about 16 MiB, each pack beside an index of where its chunks lie. Addresses
//! the cost and the crash windows of one file per chunk (tens of thousands of
//! inodes created, renamed and opened per backup and restore) and corruption:
//! every record repeats its chunk id and length, every index carries its own
//! sha256 (a damaged index is rebuilt from its pack), and every chunk is still
//! verified against its id when it is read.
//!
//! Pack record: 32-byte chunk id, u32 LE length of what follows, then the
//! codec byte (`r` raw, `z` zstd frame) and the payload. Index: `moatidx1`,
//! then per chunk its 32-byte id, u64 LE offset of the codec byte and u32 LE
//! length, then the sha256 of everything before it. A pack is named by the
//! sha256 of its index's bytes, so equal names mean equal contents.
#![forbid(unsafe_code)]
use crate::{io_err, SnapshotError};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A pack is closed once it holds this many bytes.
pub(crate) const PACK_TARGET: u64 = 16 << 20;
const IDX_MAGIC: &[u8; 8] = b"moatidx1";
/// Bytes before a record's codec byte: chunk id and length.
pub(crate) const RECORD_HEAD: u64 = 36;
const IDX_ENTRY: usize = 44;

pub(crate) type ChunkId = [u8; 32];

/// Parses a chunk id (64 lowercase hex digits).
pub(crate) fn parse_id(id: &str) -> Option<ChunkId> {
    let mut out = [0u8; 32];
    (id.len() == 64 && !id.bytes().any(|b| b.is_ascii_uppercase()) && hex::decode_to_slice(id, &mut out).is_ok())
        .then_some(out)
}

/// Where one chunk's stored bytes (codec byte + payload) lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub pack: u32,
    pub offset: u64,
    pub len: u32,
}

/// One index entry: chunk id, offset of its codec byte, stored length.
pub(crate) type Entry = (ChunkId, u64, u32);

/// Every pack's index, merged (the first pack to hold a chunk wins).
#[derive(Default)]
pub(crate) struct Index {
    pub packs: Vec<String>,
    pub chunks: HashMap<ChunkId, Loc>,
}

impl Index {
    /// Reads every `*.idx` under `dir`; a damaged index is rebuilt from its pack.
    pub(crate) fn load(dir: &Path) -> Result<Index, SnapshotError> {
        let mut ix = Index::default();
        for (name, entries) in read_all(dir)? {
            ix.add(name, &entries);
        }
        Ok(ix)
    }

    pub(crate) fn add(&mut self, name: String, entries: &[Entry]) {
        let pack = self.packs.len() as u32;
        self.packs.push(name);
        for (id, offset, len) in entries {
            self.chunks.entry(*id).or_insert(Loc { pack, offset: *offset, len: *len });
        }
    }
}

/// Every pack under `dir` with its entries, sorted by name. Packs without an
/// index are left out (an interrupted commit; `gc` removes them).
pub(crate) fn read_all(dir: &Path) -> Result<Vec<(String, Vec<Entry>)>, SnapshotError> {
    let mut names = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        if let Some(n) = e.file_name().to_str().and_then(|n| n.strip_suffix(".idx")) {
            names.push(n.to_string());
        }
    }
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let idx = dir.join(format!("{name}.idx"));
        let bytes = fs::read(&idx).map_err(io_err(&idx))?;
        let entries = match decode_index(&bytes) {
            Ok(entries) => entries,
            Err(why) => {
                let pack = dir.join(format!("{name}.pack"));
                tracing::warn!(index = %idx.display(), reason = %why, "damaged pack index; rebuilding it from the pack");
                scan_pack(&pack).map_err(io_err(&pack))?
            }
        };
        out.push((name, entries));
    }
    Ok(out)
}

pub(crate) fn encode_index(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + entries.len() * IDX_ENTRY + 32);
    out.extend_from_slice(IDX_MAGIC);
    for (id, offset, len) in entries {
        out.extend_from_slice(id);
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

pub(crate) fn decode_index(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let body_len = bytes.len().checked_sub(32).ok_or("too short")?;
    let (body, sum) = bytes.split_at(body_len);
    if Sha256::digest(body).as_slice() != sum {
        return Err("checksum mismatch".into());
    }
    let rest = body.strip_prefix(IDX_MAGIC).ok_or("not a moat pack index")?;
    if rest.len() % IDX_ENTRY != 0 {
        return Err("truncated entry".into());
    }
    Ok(rest
        .chunks_exact(IDX_ENTRY)
        .map(|e| {
            let mut id = [0u8; 32];
            id.copy_from_slice(&e[..32]);
            let offset = u64::from_le_bytes(e[32..40].try_into().unwrap_or_default());
            let len = u32::from_le_bytes(e[40..44].try_into().unwrap_or_default());
            (id, offset, len)
        })
        .collect())
}

/// Rebuilds a pack's entries from its record headers; stops at the first
/// truncated record (what came before it is still found).
pub(crate) fn scan_pack(path: &Path) -> io::Result<Vec<Entry>> {
    let mut r = BufReader::new(fs::File::open(path)?);
    let mut out = Vec::new();
    let mut at = 0u64;
    let mut head = [0u8; RECORD_HEAD as usize];
    loop {
        match r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(out),
            Err(e) => return Err(e),
        }
        let (id, len) = split_head(&head);
        let skipped = io::copy(&mut (&mut r).take(len as u64), &mut io::sink())?;
        if skipped != len as u64 {
            return Ok(out);
        }
        out.push((id, at + RECORD_HEAD, len));
        at += RECORD_HEAD + len as u64;
    }
}

fn split_head(head: &[u8; RECORD_HEAD as usize]) -> (ChunkId, u32) {
    let mut id = [0u8; 32];
    id.copy_from_slice(&head[..32]);
    let mut len = [0u8; 4];
    len.copy_from_slice(&head[32..]);
    (id, u32::from_le_bytes(len))
}

/// Reads the stored bytes at `loc` in `file` and checks the record header
/// names `id` with the same length.
pub(crate) fn read_record(file: &fs::File, id: &ChunkId, offset: u64, len: u32) -> Result<Vec<u8>, String> {
    let start = offset.checked_sub(RECORD_HEAD).ok_or("offset inside the pack header")?;
    let mut buf = vec![0u8; RECORD_HEAD as usize + len as usize];
    file.read_exact_at(&mut buf, start).map_err(|e| format!("reading {len} bytes at {offset}: {e}"))?;
    let mut head = [0u8; RECORD_HEAD as usize];
    head.copy_from_slice(&buf[..RECORD_HEAD as usize]);
    let (got_id, got_len) = split_head(&head);
    if &got_id != id || got_len != len {
        return Err(format!("record at {offset} does not hold this chunk"));
    }
    buf.drain(..RECORD_HEAD as usize);
    Ok(buf)
}

/// A pack being written in the repository's `tmp/`.
pub(crate) struct Building {
    file: tempfile::NamedTempFile,
    entries: Vec<Entry>,
    size: u64,
}

/// A closed pack and its index, both still temp files.
pub(crate) struct Built {
    pub name: String,
    pub entries: Vec<Entry>,
    pack: tempfile::TempPath,
    index: tempfile::TempPath,
}

impl Building {
    pub(crate) fn new(tmp: &Path) -> Result<Building, SnapshotError> {
        let file = tempfile::Builder::new().prefix("pack-").tempfile_in(tmp).map_err(io_err(tmp))?;
        Ok(Building { file, entries: Vec::new(), size: 0 })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.size >= PACK_TARGET
    }

    /// Appends one record: id, length, codec byte, payload.
    pub(crate) fn append(&mut self, id: ChunkId, codec: u8, payload: &[u8]) -> io::Result<()> {
        let len = u32::try_from(payload.len() + 1).map_err(|_| io::Error::other("chunk too large"))?;
        let mut head = [0u8; RECORD_HEAD as usize + 1];
        head[..32].copy_from_slice(&id);
        head[32..36].copy_from_slice(&len.to_le_bytes());
        head[36] = codec;
        write_both(self.file.as_file_mut(), &head, payload)?;
        self.entries.push((id, self.size + RECORD_HEAD, len));
        self.size += RECORD_HEAD + len as u64;
        Ok(())
    }

    /// Writes the index beside the pack (in `tmp/`) and names both.
    pub(crate) fn finish(self, tmp: &Path) -> Result<Built, SnapshotError> {
        let bytes = encode_index(&self.entries);
        let name = hex::encode(Sha256::digest(&bytes));
        let mut idx = tempfile::Builder::new().prefix("idx-").tempfile_in(tmp).map_err(io_err(tmp))?;
        idx.write_all(&bytes).map_err(io_err(tmp))?;
        Ok(Built { name, entries: self.entries, pack: self.file.into_temp_path(), index: idx.into_temp_path() })
    }
}

impl Built {
    /// Renames the pack, then its index, into `dir` (call after the data is
    /// durable; an index is only ever visible beside a complete pack).
    pub(crate) fn publish(self, dir: &Path) -> Result<(String, Vec<Entry>), SnapshotError> {
        let pack = dir.join(format!("{}.pack", self.name));
        self.pack.persist(&pack).map_err(|e| io_err(&pack)(e.error))?;
        let idx = dir.join(format!("{}.idx", self.name));
        self.index.persist(&idx).map_err(|e| io_err(&idx)(e.error))?;
        Ok((self.name, self.entries))
    }
}

/// `head` then `payload`, in as few writes as the kernel allows (usually one).
fn write_both(f: &mut fs::File, head: &[u8], payload: &[u8]) -> io::Result<()> {
    let n = f.write_vectored(&[io::IoSlice::new(head), io::IoSlice::new(payload)])?;
    if n < head.len() {
        f.write_all(&head[n..])?;
        f.write_all(payload)
    } else {
        f.write_all(&payload[n - head.len()..])
    }
}

/// Paths of a pack and its index in `dir`.
pub(crate) fn paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{name}.pack")), dir.join(format!("{name}.idx")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        [n; 32]
    }

    #[test]
    fn index_round_trips_and_detects_damage() {
        let entries = vec![(id(1), 37, 10), (id(2), 83, 4000)];
        let bytes = encode_index(&entries);
        assert_eq!(decode_index(&bytes).unwrap(), entries);
        let mut bad = bytes.clone();
        bad[12] ^= 1;
        assert_eq!(decode_index(&bad).unwrap_err(), "checksum mismatch");
        assert!(decode_index(&bytes[..20]).is_err());
        assert!(decode_index(b"").is_err());
    }

    #[test]
    fn records_are_found_by_index_and_by_scan() {
        let t = tempfile::tempdir().unwrap();
        let mut b = Building::new(t.path()).unwrap();
        b.append(id(7), b'r', b"hello").unwrap();
        b.append(id(8), b'z', &[9u8; 1000]).unwrap();
        let built = b.finish(t.path()).unwrap();
        let (name, entries) = built.publish(t.path()).unwrap();
        let (pack, _) = paths(t.path(), &name);
        assert_eq!(scan_pack(&pack).unwrap(), entries);
        let f = fs::File::open(&pack).unwrap();
        let (i, off, len) = entries[0];
        assert_eq!(read_record(&f, &i, off, len).unwrap(), b"rhello");
        let (i2, off2, len2) = entries[1];
        assert!(read_record(&f, &i, off2, len2).unwrap_err().contains("does not hold"));
        assert_eq!(read_record(&f, &i2, off2, len2).unwrap().len(), 1001);
        // A truncated pack still yields the complete records before the cut.
        let raw = fs::read(&pack).unwrap();
        fs::write(&pack, &raw[..raw.len() - 10]).unwrap();
        assert_eq!(scan_pack(&pack).unwrap(), entries[..1]);
        let ix = Index::load(t.path()).unwrap();
        assert_eq!(ix.chunks.len(), 2);
    }

    #[test]
    fn ids_parse_only_as_lowercase_hex() {
        let hexid = "ab".repeat(32);
        assert_eq!(parse_id(&hexid), Some([0xab; 32]));
        assert_eq!(parse_id(&hexid.to_uppercase()), None);
        assert_eq!(parse_id("ab"), None);
        assert_eq!(parse_id(&"zz".repeat(32)), None);
    }
}
