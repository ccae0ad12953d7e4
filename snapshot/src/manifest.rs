//! The snapshot manifest: a canonical, sorted description of a workspace tree
//! (paths, kinds, modes, owners, sizes, symlink targets, hardlink groups and
//! chunk lists) whose sha256 names the snapshot. Times are deliberately not
//! part of it, so identical content always yields the identical digest.
//! Format v1 (`moat.snapshot.v1`) describes files as their chunks; v2 adds
//! the holes of sparse files and is used only by manifests that have one,
//! so a tree without holes keeps its v1 bytes and digest.
//! Guards against path tricks on restore: every path is checked to be
//! relative, normalised and free of `..` before it is used.
#![forbid(unsafe_code)]
use crate::SnapshotError;
use serde::{Deserialize, Serialize};

/// The format string of a manifest without holes (and of every older one).
pub(crate) const FORMAT: &str = "moat.snapshot.v1";
/// The format string of a manifest with at least one file with holes.
pub(crate) const FORMAT_SPARSE: &str = "moat.snapshot.v2";
/// How files were cut into chunks (recorded so a reader knows).
pub(crate) const CHUNKING: &str = "fastcdc-v2020 min=16384 avg=65536 max=262144; chunk id = sha256(plain bytes)";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// A hard link to the earlier (in path order) regular file `target`.
    Hardlink,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Relative path with `/` separators; "." is the workspace root itself.
    pub path: String,
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (no file-type bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub size: u64,
    /// Symlink target (verbatim) or, for a hardlink, the path it links to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// sha256 (hex) of each chunk of a regular file, in order: the bytes
    /// of the file outside its `holes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<String>,
    /// The holes of a sparse regular file, `[offset, length]`, sorted, apart
    /// and within `size` (format v2; absent for a file without holes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holes: Vec<[u64; 2]>,
}

impl Entry {
    /// Bytes of the file that are data (what its chunks hold).
    pub fn data_len(&self) -> u64 {
        self.size.saturating_sub(self.holes.iter().map(|[_, l]| l).sum())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub chunking: String,
    pub entries: Vec<Entry>,
}

impl Manifest {
    pub(crate) fn new(mut entries: Vec<Entry>) -> Manifest {
        entries.sort_by(|a, b| order(&a.path, &b.path));
        let format = if entries.iter().any(|e| !e.holes.is_empty()) { FORMAT_SPARSE } else { FORMAT };
        Manifest { format: format.into(), chunking: CHUNKING.into(), entries }
    }

    /// Canonical bytes (sorted keys, no whitespace): what the digest covers.
    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>, SnapshotError> {
        moat_builder::cjson::to_vec(self).map_err(|e| SnapshotError::Invalid(format!("manifest: {e}")))
    }

    /// Parses and checks a manifest (format, sorted unique safe paths,
    /// hardlinks pointing at earlier regular files, well-formed chunk ids).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Manifest, SnapshotError> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| SnapshotError::Invalid(format!("manifest: {e}")))?;
        let sparse = m.entries.iter().any(|e| !e.holes.is_empty());
        // Canonical: v2 exactly when some file has holes.
        let want = if sparse { FORMAT_SPARSE } else { FORMAT };
        if m.format != want {
            return Err(SnapshotError::Invalid(format!(
                "manifest format {:?}, expected {want:?} (this moat reads {FORMAT:?} and {FORMAT_SPARSE:?})",
                m.format
            )));
        }
        let mut files = std::collections::HashSet::new();
        let mut dirs = std::collections::HashSet::new();
        if m.entries.first().map(|e| e.path.as_str()) != Some(".") {
            return Err(SnapshotError::Invalid("manifest: no root entry \".\"".into()));
        }
        for (i, e) in m.entries.iter().enumerate() {
            check_path(&e.path)?;
            // Every parent is a directory of the snapshot: nothing is ever
            // created through a symlink or outside the tree.
            if e.path != "." {
                let parent = e.path.rsplit_once('/').map_or(".", |(p, _)| p);
                if !dirs.contains(parent) {
                    return Err(SnapshotError::Invalid(format!(
                        "manifest: parent of {:?} is not a directory of the snapshot",
                        e.path
                    )));
                }
            }
            if e.kind == Kind::Dir {
                dirs.insert(e.path.as_str());
            }
            if i > 0 && order(&m.entries[i - 1].path, &e.path) != std::cmp::Ordering::Less {
                return Err(SnapshotError::Invalid(format!("manifest: paths not sorted/unique at {:?}", e.path)));
            }
            if e.path == "." && e.kind != Kind::Dir {
                return Err(SnapshotError::Invalid("manifest: root is not a directory".into()));
            }
            if e.mode & !0o7777 != 0 {
                return Err(SnapshotError::Invalid(format!("manifest: {:?}: bad mode {:o}", e.path, e.mode)));
            }
            for c in &e.chunks {
                if c.len() != 64 || !c.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                    return Err(SnapshotError::Invalid(format!("manifest: {:?}: bad chunk id {c:?}", e.path)));
                }
            }
            if !e.holes.is_empty() {
                check_holes(e)?;
            }
            match e.kind {
                Kind::File => {
                    files.insert(e.path.as_str());
                }
                Kind::Hardlink => match e.target.as_deref() {
                    Some(t) if files.contains(t) => {}
                    _ => {
                        return Err(SnapshotError::Invalid(format!(
                            "manifest: hardlink {:?} does not point at an earlier file",
                            e.path
                        )))
                    }
                },
                Kind::Symlink if e.target.is_none() => {
                    return Err(SnapshotError::Invalid(format!("manifest: symlink {:?} has no target", e.path)))
                }
                _ => {}
            }
        }
        Ok(m)
    }

    /// Every chunk id the manifest references (with repeats removed).
    pub fn chunk_ids(&self) -> std::collections::BTreeSet<&str> {
        self.entries.iter().flat_map(|e| e.chunks.iter().map(String::as_str)).collect()
    }

    pub(crate) fn files(&self) -> u64 {
        self.entries.iter().filter(|e| matches!(e.kind, Kind::File | Kind::Hardlink)).count() as u64
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.entries.iter().filter(|e| e.kind == Kind::File).map(|e| e.size).sum()
    }
}

/// The data ranges of a file of `size` bytes with `holes`: (offset, length)
/// of everything outside them, in order.
pub(crate) fn data_ranges(size: u64, holes: &[[u64; 2]]) -> Vec<(u64, u64)> {
    let (mut out, mut pos) = (Vec::new(), 0u64);
    for [off, len] in holes {
        if *off > pos {
            out.push((pos, off - pos));
        }
        pos = off.saturating_add(*len);
    }
    if size > pos {
        out.push((pos, size - pos));
    }
    out
}

/// Holes of a regular file: non-empty, sorted, apart (not even touching)
/// and inside the file.
fn check_holes(e: &Entry) -> Result<(), SnapshotError> {
    let bad = |why: &str| Err(SnapshotError::Invalid(format!("manifest: {:?}: holes {why}", e.path)));
    if e.kind != Kind::File {
        return bad("on something that is not a regular file");
    }
    let mut end = None::<u64>;
    for [off, len] in &e.holes {
        if *len == 0 {
            return bad("of length 0");
        }
        if end.is_some_and(|prev| *off <= prev) {
            return bad("not sorted and apart");
        }
        match off.checked_add(*len) {
            Some(x) if x <= e.size => end = Some(x),
            _ => return bad("past the end of the file"),
        }
    }
    Ok(())
}

/// Manifest order: the root "." first, then paths by bytes.
pub(crate) fn order(a: &str, b: &str) -> std::cmp::Ordering {
    (a != ".", a).cmp(&(b != ".", b))
}

/// A relative path: "." or components that are not empty, "." or "..".
pub(crate) fn check_path(p: &str) -> Result<(), SnapshotError> {
    let ok = p == "."
        || (!p.starts_with('/') && !p.contains('\0') && p.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
    if ok {
        Ok(())
    } else {
        Err(SnapshotError::Invalid(format!("manifest: unsafe path {p:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, kind: Kind) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            target: None,
            chunks: vec![],
            holes: vec![],
        }
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for bad in ["/etc", "../x", "a/../b", "a//b", "", "a/./b"] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        for ok in [".", "a", "a/b", ".env", "..a"] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn canonical_bytes_round_trip_and_are_order_independent() {
        let a = Manifest::new(vec![e("b", Kind::File), e("a", Kind::File), e(".", Kind::Dir)]);
        let b = Manifest::new(vec![e(".", Kind::Dir), e("a", Kind::File), e("b", Kind::File)]);
        assert_eq!(a.to_bytes().unwrap(), b.to_bytes().unwrap());
        assert_eq!(Manifest::parse(&a.to_bytes().unwrap()).unwrap(), a);
    }

    #[test]
    fn dangling_hardlink_is_refused() {
        let mut h = e("b", Kind::Hardlink);
        h.target = Some("z".into());
        let m = Manifest::new(vec![e(".", Kind::Dir), e("a", Kind::File), h]);
        assert!(Manifest::parse(&m.to_bytes().unwrap()).is_err());
    }

    #[test]
    fn entries_under_a_symlink_are_refused() {
        let mut l = e("lnk", Kind::Symlink);
        l.target = Some("/etc".into());
        let mut h = e("lnk/evil", Kind::Hardlink);
        h.target = Some("a".into());
        let m = Manifest::new(vec![e(".", Kind::Dir), e("a", Kind::File), l, h]);
        let err = Manifest::parse(&m.to_bytes().unwrap()).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        let ok = Manifest::new(vec![e("-x", Kind::File), e(".", Kind::Dir), e("d", Kind::Dir), e("d/f", Kind::File)]);
        assert_eq!(ok.entries[0].path, ".");
        assert!(Manifest::parse(&ok.to_bytes().unwrap()).is_ok());
    }

    #[test]
    fn holes_make_format_v2_and_are_checked() {
        let mut f = e("f", Kind::File);
        f.size = 1 << 20;
        f.holes = vec![[0, 4096], [65536, 65536]];
        let m = Manifest::new(vec![e(".", Kind::Dir), f.clone()]);
        assert_eq!(m.format, FORMAT_SPARSE);
        assert_eq!(Manifest::parse(&m.to_bytes().unwrap()).unwrap(), m);
        assert_eq!(m.entries[1].data_len(), (1 << 20) - 4096 - 65536);
        for bad in
            [vec![[0, 0]], vec![[10, 10], [5, 1]], vec![[0, 10], [10, 10]], vec![[1 << 20, 1]], vec![[u64::MAX, 2]]]
        {
            let mut g = f.clone();
            g.holes = bad.clone();
            let m = Manifest::new(vec![e(".", Kind::Dir), g]);
            assert!(Manifest::parse(&m.to_bytes().unwrap()).is_err(), "{bad:?}");
        }
        // Not canonical: v2 without holes, v1 with them.
        let mut m = Manifest::new(vec![e(".", Kind::Dir), e("a", Kind::File)]);
        m.format = FORMAT_SPARSE.into();
        assert!(Manifest::parse(&m.to_bytes().unwrap()).is_err());
        let mut m = Manifest::new(vec![e(".", Kind::Dir), f]);
        m.format = FORMAT.into();
        assert!(Manifest::parse(&m.to_bytes().unwrap()).is_err());
    }
}
