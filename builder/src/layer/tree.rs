//! The in-memory file tree of one layer before it is archived: normalized,
//! root-relative paths sorted byte-wise. Guards against path traversal (`..`,
//! absolute paths, entries below a symlink of the same layer), entries that
//! escape the root, and host-dependent order.
#![forbid(unsafe_code)]
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("path {0:?} escapes the image root or is not a clean path")]
    BadPath(String),
    #[error("hardlink {path:?} points at {target:?}, which is not a regular file in this layer")]
    BadHardlink { path: String, target: String },
    #[error("{path:?} lies under {link:?}, a symlink in the same layer: unpacking it would write through the link")]
    UnderSymlink { path: String, link: String },
}

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Read from this host path when the layer is written.
    Path(PathBuf),
    /// Held in memory (extracted from an archive or generated).
    Bytes(Arc<Vec<u8>>),
}

impl Content {
    pub fn bytes(b: impl Into<Vec<u8>>) -> Content {
        Content::Bytes(Arc::new(b.into()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File {
        content: Content,
        size: u64,
    },
    Symlink(String),
    /// A hard link to another regular file of the same layer (root-relative path).
    Hardlink(String),
}

/// One archive entry. `path` is root-relative without a leading `/` or a
/// trailing `/` (for example `usr/bin/env`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Extended attributes (PAX `SCHILY.xattr.*`); only allowed names.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl Entry {
    pub fn dir(path: &str, mode: u32, uid: u32, gid: u32) -> Entry {
        Entry { path: path.into(), kind: Kind::Dir, mode, uid, gid, xattrs: BTreeMap::new() }
    }
    pub fn file(path: &str, bytes: impl Into<Vec<u8>>, mode: u32) -> Entry {
        let bytes: Vec<u8> = bytes.into();
        let size = bytes.len() as u64;
        Entry {
            path: path.into(),
            kind: Kind::File { content: Content::bytes(bytes), size },
            mode,
            uid: 0,
            gid: 0,
            xattrs: BTreeMap::new(),
        }
    }
    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::Symlink(target.into()),
            mode: 0o777,
            uid: 0,
            gid: 0,
            xattrs: BTreeMap::new(),
        }
    }
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir)
    }
}

/// Normalizes a path inside the image: strips leading `/` and `./`, collapses
/// `//` and `.`, and refuses `..` and NUL. The root itself is `""`.
pub fn clean_path(p: &str) -> Result<String, TreeError> {
    if p.contains('\0') {
        return Err(TreeError::BadPath(p.into()));
    }
    let mut parts = Vec::new();
    for comp in p.split('/') {
        match comp {
            "" | "." => {}
            ".." => return Err(TreeError::BadPath(p.into())),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// Joins a root-relative `base` and a relative `rel`, refusing escapes.
pub fn join(base: &str, rel: &str) -> Result<String, TreeError> {
    clean_path(&format!("{base}/{rel}"))
}

/// A layer's entries, sorted by path bytes. Later inserts replace earlier ones.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }
    /// Inserts (or replaces) an entry after cleaning its path. Inserting a
    /// directory over an existing directory keeps the newer metadata.
    pub fn insert(&mut self, mut e: Entry) -> Result<(), TreeError> {
        e.path = clean_path(&e.path)?;
        if e.path.is_empty() {
            return Ok(()); // the root itself is never an entry
        }
        if let Kind::Hardlink(t) = &e.kind {
            let t = clean_path(t)?;
            e.kind = Kind::Hardlink(t);
        }
        self.entries.insert(e.path.clone(), e);
        Ok(())
    }
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }
    pub fn get_mut(&mut self, path: &str) -> Option<&mut Entry> {
        self.entries.get_mut(path)
    }
    pub fn remove(&mut self, path: &str) -> Option<Entry> {
        self.entries.remove(path)
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }
    pub fn paths(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }
    /// Removes every entry for which `drop` is true, and everything below a
    /// dropped directory. Returns the removed paths. A removed file whose
    /// hard links survive passes its bytes and metadata to the first
    /// surviving link in byte order; the other links point at that one.
    pub fn retain_not(&mut self, mut drop: impl FnMut(&Entry) -> bool) -> Vec<String> {
        let doomed: Vec<String> = self.entries.values().filter(|e| drop(e)).map(|e| e.path.clone()).collect();
        let mut removed = Vec::new();
        let mut files: BTreeMap<String, Entry> = BTreeMap::new();
        for d in doomed {
            let prefix = format!("{d}/");
            let below: Vec<String> = self
                .entries
                .range(d.clone()..)
                .map(|(k, _)| k.clone())
                .take_while(|k| k == &d || k.starts_with(&prefix))
                .collect();
            for k in below {
                if let Some(e) = self.entries.remove(&k) {
                    if matches!(e.kind, Kind::File { .. }) {
                        files.insert(k.clone(), e);
                    }
                }
                removed.push(k);
            }
        }
        if !files.is_empty() {
            self.promote_links(&files);
        }
        removed
    }
    /// For each removed file in `files`, makes its first surviving hard link
    /// (in byte order, which `entries` iterates in) the file.
    fn promote_links(&mut self, files: &BTreeMap<String, Entry>) {
        let mut new_target: BTreeMap<String, String> = BTreeMap::new();
        let paths: Vec<String> = self
            .entries
            .values()
            .filter(|e| matches!(&e.kind, Kind::Hardlink(t) if files.contains_key(t)))
            .map(|e| e.path.clone())
            .collect();
        for p in paths {
            let Some(Kind::Hardlink(t)) = self.entries.get(&p).map(|e| e.kind.clone()) else { continue };
            match new_target.get(&t) {
                Some(first) => {
                    if let Some(e) = self.entries.get_mut(&p) {
                        e.kind = Kind::Hardlink(first.clone());
                    }
                }
                None => {
                    if let (Some(e), Some(file)) = (self.entries.get_mut(&p), files.get(&t)) {
                        *e = Entry { path: p.clone(), ..file.clone() };
                    }
                    new_target.insert(t, p);
                }
            }
        }
    }
    /// Adds every missing parent directory (0755 root:root) so the archive
    /// never relies on a tool creating them implicitly.
    pub fn add_parents(&mut self) {
        let mut missing = Vec::new();
        for path in self.entries.keys() {
            let mut p = path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                if !self.entries.contains_key(parent) {
                    missing.push(parent.to_string());
                }
                p = parent;
            }
        }
        for m in missing {
            self.entries.entry(m.clone()).or_insert_with(|| Entry::dir(&m, 0o755, 0, 0));
        }
    }
    /// Checks that every hardlink targets a regular file of this tree that
    /// sorts before it (archive readers need the target first).
    pub fn check_hardlinks(&self) -> Result<(), TreeError> {
        for e in self.entries.values() {
            if let Kind::Hardlink(t) = &e.kind {
                let ok = t < &e.path && matches!(self.entries.get(t).map(|x| &x.kind), Some(Kind::File { .. }));
                if !ok {
                    return Err(TreeError::BadHardlink { path: e.path.clone(), target: t.clone() });
                }
            }
        }
        Ok(())
    }
    /// Checks that no entry lies below a symlink of this tree: such a layer
    /// would make whoever unpacks it write through the link (to wherever it
    /// points), so it is refused here, naming the entry and the link.
    pub fn check_symlink_parents(&self) -> Result<(), TreeError> {
        // Byte order puts every ancestor before its descendants.
        let mut links: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
        for e in self.entries.values() {
            let mut p = e.path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                if links.contains(parent) {
                    return Err(TreeError::UnderSymlink { path: e.path.clone(), link: parent.to_string() });
                }
                p = parent;
            }
            if matches!(e.kind, Kind::Symlink(_)) {
                links.insert(e.path.as_str());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn clean_paths() {
        assert_eq!(clean_path("/usr//bin/./env").unwrap(), "usr/bin/env");
        assert_eq!(clean_path("./").unwrap(), "");
        assert!(clean_path("usr/../../etc").is_err());
        assert!(join("usr", "../etc").is_err());
    }
    #[test]
    fn parents_and_retain() {
        let mut t = Tree::new();
        t.insert(Entry::file("a/b/c.txt", "x", 0o644)).unwrap();
        t.insert(Entry::file("a/d.txt", "y", 0o644)).unwrap();
        t.insert(Entry::file("ab", "z", 0o644)).unwrap();
        t.add_parents();
        assert_eq!(t.paths().cloned().collect::<Vec<_>>(), ["a", "a/b", "a/b/c.txt", "a/d.txt", "ab"]);
        let removed = t.retain_not(|e| e.path == "a/b");
        assert_eq!(removed, ["a/b", "a/b/c.txt"]);
        assert_eq!(t.len(), 3);
    }
    #[test]
    fn stripping_a_linked_file_keeps_the_first_surviving_name() {
        let mut t = Tree::new();
        let link = |p: &str, to: &str| Entry { kind: Kind::Hardlink(to.into()), ..Entry::file(p, "", 0o644) };
        t.insert(Entry::file("a", "bytes", 0o755)).unwrap();
        t.insert(link("c", "a")).unwrap();
        t.insert(link("b", "a")).unwrap();
        t.retain_not(|e| e.path == "a");
        let b = t.get("b").unwrap();
        assert_eq!((&b.kind, b.mode), (&Kind::File { content: Content::bytes("bytes"), size: 5 }, 0o755));
        assert_eq!(t.get("c").unwrap().kind, Kind::Hardlink("b".into()));
        t.check_hardlinks().unwrap();
    }
    #[test]
    fn entries_below_a_symlink_are_refused() {
        let mut t = Tree::new();
        t.insert(Entry::symlink("l", "/etc")).unwrap();
        t.insert(Entry::file("l-x", "", 0o644)).unwrap(); // sorts between l and l/...
        t.insert(Entry::file("m/l/x", "", 0o644)).unwrap(); // an l deeper down is not l
        t.check_symlink_parents().unwrap();
        t.insert(Entry::file("l/sub/passwd", "", 0o644)).unwrap();
        let e = t.check_symlink_parents().unwrap_err();
        assert!(matches!(&e, TreeError::UnderSymlink { path, link } if path == "l/sub/passwd" && link == "l"), "{e}");
    }
}
