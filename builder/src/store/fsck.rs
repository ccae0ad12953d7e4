//! `moat fsck`: hashes every blob of the store and follows every index entry
//! to its manifest, config and layers. Addresses silent corruption and lost
//! blobs in the real store (`moat verify` rebuilds in a fresh one and never
//! looks here): each corrupt, unreadable or missing blob is named with the
//! images that need it. Reports only; a rebuild or pull repairs.
#![forbid(unsafe_code)]
use super::{Result, Store, StoreError};
use crate::digest::{digest_reader, Digest};
use crate::oci::ANNOTATION_REF_NAME;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::Path;

/// One thing wrong with the store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FsckProblem {
    /// The blob's content hashes to `actual`, not to its name.
    Corrupt { digest: Digest, actual: Digest, used_by: Vec<String> },
    /// The blob could not be read (I/O error) or parsed (a manifest).
    Unreadable { digest: Digest, error: String, used_by: Vec<String> },
    /// An index entry or manifest names the blob, the store lacks it.
    Missing { digest: Digest, used_by: Vec<String> },
}

/// What `fsck` found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct FsckReport {
    /// Blobs hashed.
    pub blobs: usize,
    pub bytes: u64,
    pub problems: Vec<FsckProblem>,
    /// Files in `blobs/sha256/` whose name is not a digest (not checked).
    pub stray: Vec<String>,
}

impl FsckReport {
    pub fn corrupt(&self) -> usize {
        self.problems.iter().filter(|p| !matches!(p, FsckProblem::Missing { .. })).count()
    }
    pub fn missing(&self) -> usize {
        self.problems.iter().filter(|p| matches!(p, FsckProblem::Missing { .. })).count()
    }
}

impl Store {
    /// Hashes every blob and checks that every blob the index reaches is
    /// present. Holds the writer lease, so a concurrent gc cannot make a
    /// referenced blob look missing (builds may run beside it).
    pub fn fsck(&self) -> Result<FsckReport> {
        self.hold_writer_lease()?;
        let mut report = FsckReport::default();
        // Every blob on disk, hashed (no shortcut: this is the check of record).
        let mut bad: BTreeMap<Digest, FsckProblem> = BTreeMap::new();
        let mut present = std::collections::BTreeSet::new();
        let dir = self.blobs_dir();
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(super::io_err(&dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .map_err(super::io_err(&dir))?;
        names.sort();
        for name in names {
            let Some(d) = name.to_str().and_then(|n| Digest::parse_hex(n).ok()) else {
                report.stray.push(name.to_string_lossy().into_owned());
                continue;
            };
            present.insert(d.clone());
            let hashed = open_regular(&self.blob_path(&d)).and_then(digest_reader);
            report.blobs += 1;
            match hashed {
                Ok((actual, size)) => {
                    report.bytes += size;
                    if actual != d {
                        bad.insert(d.clone(), FsckProblem::Corrupt { digest: d, actual, used_by: Vec::new() });
                    }
                }
                Err(e) => {
                    let error = e.to_string();
                    bad.insert(d.clone(), FsckProblem::Unreadable { digest: d, error, used_by: Vec::new() });
                }
            }
        }
        // Every blob the index reaches, with who needs it.
        let mut used: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
        let mut todo = Vec::new();
        for m in self.index()?.manifests {
            let name = m.annotations.get(ANNOTATION_REF_NAME).cloned().unwrap_or_else(|| m.digest.to_string());
            used.entry(m.digest.clone()).or_default().push(format!("manifest of {name}"));
            todo.push((m.digest, name, 0));
        }
        while let Some((d, of, depth)) = todo.pop() {
            if !present.contains(&d) || bad.contains_key(&d) {
                continue; // its children cannot be known
            }
            match self.named_by(&d) {
                Ok(children) => {
                    for (role, child, nested) in children {
                        used.entry(child.digest.clone()).or_default().push(format!("{role} of {of}"));
                        if nested && depth < super::MAX_NESTING {
                            todo.push((child.digest, format!("{role} of {of}"), depth + 1));
                        }
                    }
                }
                Err(StoreError::BadJson { source, .. }) => {
                    let error = format!("not an image manifest or index: {source}");
                    bad.insert(d.clone(), FsckProblem::Unreadable { digest: d, error, used_by: Vec::new() });
                }
                Err(e) => return Err(e),
            }
        }
        for (d, who) in used {
            if !present.contains(&d) {
                report.problems.push(FsckProblem::Missing { digest: d, used_by: who });
            } else if let Some(
                FsckProblem::Corrupt { used_by, .. }
                | FsckProblem::Unreadable { used_by, .. }
                | FsckProblem::Missing { used_by, .. },
            ) = bad.get_mut(&d)
            {
                *used_by = who;
            }
        }
        report.problems.extend(bad.into_values());
        Ok(report)
    }
}

/// Opens a blob for hashing only if it is a regular file: opening a FIFO
/// blocks until someone writes it, and a symlink may lead to a device that
/// never ends (`/dev/zero`). Checked on the open file too (no race with a
/// rename between the look and the open).
fn open_regular(p: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let kind = |t: fs::FileType| {
        if t.is_symlink() {
            "a symlink"
        } else if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else {
            "a device"
        }
    };
    let not_regular = |t: fs::FileType| std::io::Error::other(format!("not a regular file ({})", kind(t)));
    let t = fs::symlink_metadata(p)?.file_type();
    if !t.is_file() {
        return Err(not_regular(t));
    }
    let f = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(p)?;
    let t = f.metadata()?.file_type();
    if !t.is_file() {
        return Err(not_regular(t));
    }
    Ok(f)
}
