//! Export and import of one snapshot as a single tar file (manifest, record
//! and the chunks it references, as stored). Addresses tampering and
//! corruption in transit: import verifies the manifest against its digest and
//! every chunk against its sha256 before anything becomes visible, and
//! refuses unknown or unsafe member names.
#![forbid(unsafe_code)]
use crate::chunks::{decode_chunk, ChunkWriter};
use crate::format::sha256_hex;
use crate::manifest::Manifest;
use crate::repo::{Record, Repo};
use crate::{io_err, SnapshotError};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Writes snapshot `digest` (and its record, if given) to `out` atomically.
pub fn export(repo: &Repo, digest: &str, record: Option<&Record>, out: &Path) -> Result<u64, SnapshotError> {
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    let mut w = std::io::BufWriter::new(tmp.as_file());
    let n = write_export(repo, digest, record, &mut w).map_err(|e| match e {
        SnapshotError::Io { source, .. } => io_err(out)(source),
        e => e,
    })?;
    w.into_inner().map_err(|e| io_err(out)(e.into_error()))?.sync_all().map_err(io_err(out))?;
    tmp.persist(out).map_err(|e| io_err(out)(e.error))?;
    Ok(n)
}

/// Writes the export of snapshot `digest` (and its record, if given) to
/// `w`; returns the number of chunks written.
pub(crate) fn write_export(
    repo: &Repo,
    digest: &str,
    record: Option<&Record>,
    w: impl Write,
) -> Result<u64, SnapshotError> {
    let _lock = repo.lock(false)?;
    let m = repo.manifest(digest)?;
    let here = Path::new("export");
    let mut tar = tar::Builder::new(w);
    let mut add = |name: &str, data: &[u8]| -> Result<(), SnapshotError> {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, name, data).map_err(io_err(here))
    };
    // The stored bytes: canonical, so they are what the manifest serialises to.
    add("manifest.json", &m.to_bytes()?)?;
    if let Some(r) = record {
        add("record.json", &serde_json::to_vec_pretty(r).map_err(|e| SnapshotError::Invalid(e.to_string()))?)?;
    }
    let mut n = 0;
    for id in m.chunk_ids() {
        // Verified on the way out too: never export a damaged snapshot silently.
        let raw = repo.chunks().read_stored(id)?;
        add(&format!("chunks/{id}"), &raw)?;
        n += 1;
    }
    tar.into_inner().and_then(|mut w| w.flush()).map_err(io_err(here))?;
    Ok(n)
}

/// A verified export file, read but not yet stored.
pub(crate) struct Imported {
    /// The snapshot digest (sha256 hex of its manifest).
    pub(crate) digest: String,
    manifest: Manifest,
    record: Option<Record>,
    /// Chunk id, stored bytes (codec byte + payload), plain length.
    chunks: Vec<(String, Vec<u8>, u64)>,
    file: PathBuf,
}

/// Imports a file written by [`export`]; returns the snapshot digest and the
/// record stored for it (sandbox name from the file, else `imported`).
pub fn import(repo: &Repo, file: &Path) -> Result<(String, Record), SnapshotError> {
    store(repo, read(file)?)
}

/// Reads and verifies an export file: the manifest against its digest, the
/// record against the manifest, every chunk against its sha256.
pub(crate) fn read(file: &Path) -> Result<Imported, SnapshotError> {
    let f = fs::File::open(file).map_err(io_err(file))?;
    let mut ar = tar::Archive::new(std::io::BufReader::new(f));
    let (mut manifest, mut record) = (None, None);
    let mut chunks = Vec::new();
    let bad = |reason: String| SnapshotError::Corrupt { path: file.to_path_buf(), reason };
    for ent in ar.entries().map_err(io_err(file))? {
        let mut ent = ent.map_err(io_err(file))?;
        let name = ent.path().map_err(io_err(file))?.to_string_lossy().into_owned();
        if ent.size() > 64 << 20 {
            return Err(bad(format!("member {name:?} is too large")));
        }
        let mut data = Vec::new();
        ent.read_to_end(&mut data).map_err(io_err(file))?;
        match name.as_str() {
            "manifest.json" => manifest = Some(data),
            "record.json" => {
                record = Some(serde_json::from_slice::<Record>(&data).map_err(|e| bad(format!("record.json: {e}")))?)
            }
            n => {
                let Some(id) = n.strip_prefix("chunks/") else {
                    return Err(bad(format!("unexpected member {n:?}")));
                };
                let plain = decode_chunk(&data).map_err(|e| bad(format!("chunk {id}: {e}")))?;
                if sha256_hex(&plain) != id {
                    return Err(bad(format!("chunk {id}: content does not match its sha256")));
                }
                chunks.push((id.to_string(), data, plain.len() as u64));
            }
        }
    }
    let bytes = manifest.ok_or_else(|| bad("no manifest.json".into()))?;
    let digest = sha256_hex(&bytes);
    let manifest = Manifest::parse(&bytes)?;
    if let Some(r) = &record {
        if r.digest != digest {
            return Err(bad(format!("record names {}, manifest is {digest}", r.digest)));
        }
    }
    Ok(Imported { digest, manifest, record, chunks, file: file.to_path_buf() })
}

/// Stores what [`read`] verified; returns the snapshot digest and its record.
pub(crate) fn store(repo: &Repo, imp: Imported) -> Result<(String, Record), SnapshotError> {
    let Imported { digest, manifest: m, record, chunks, file } = imp;
    let bad = |reason: String| SnapshotError::Corrupt { path: file.clone(), reason };
    let mut rec = record.unwrap_or(Record {
        digest: digest.clone(),
        sandbox: "imported".into(),
        tag: None,
        time_ns: 0,
        files: m.files(),
        bytes: m.bytes(),
        new_chunks: 0,
        new_bytes: 0,
        skipped: vec![],
        secrets: vec![],
    });
    if rec.time_ns == 0 {
        rec.time_ns =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    }
    rec.new_chunks = chunks.len() as u64;
    rec.new_bytes = chunks.iter().map(|(_, _, plain)| plain).sum();
    // A record that would be refused stores nothing (no orphan manifest or chunks).
    crate::repo::check_record(&rec)?;
    let _lock = repo.lock(false)?;
    let have: std::collections::BTreeSet<&str> = chunks.iter().map(|(id, _, _)| id.as_str()).collect();
    let missing: Vec<&str> =
        m.chunk_ids().into_iter().filter(|id| !have.contains(id) && !repo.chunks().has_chunk(id)).collect();
    if !missing.is_empty() {
        return Err(bad(format!("{} chunk(s) missing: {}", missing.len(), missing.join(", "))));
    }
    let w = ChunkWriter::new(repo.chunks());
    for (id, stored, _) in &chunks {
        // Stored as they came (verified above): no second compression.
        w.put_stored(id, stored)?;
    }
    w.commit()?;
    if repo.put_manifest(&m)? != digest {
        return Err(bad("manifest is not in canonical form".into()));
    }
    let existing = repo.records(&rec.sandbox)?;
    if !existing.iter().any(|r| r.digest == rec.digest && r.time_ns == rec.time_ns) {
        repo.add_record(&rec)?;
    }
    Ok((digest, rec))
}
