//! Reads archives (tar, compressed tar, the data member of a `.deb`) into a
//! `Tree`. Guards against hostile archives: `..` and absolute-path escapes,
//! hardlinks to files outside the archive, device files, FIFOs and sockets
//! (refused rather than carried into an image), and, through
//! `bounds`, sizes, counts and decompressed bytes past the input limits.
#![forbid(unsafe_code)]
use crate::layer::bounds::{self, BoundsError, TarGuard};
use crate::layer::tree::{self, Content, Entry, Kind, Tree, TreeError};
use std::collections::BTreeMap;
use std::io::{self, Read};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ArchiveError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Path(#[from] TreeError),
    #[error("{path}: {what} entries are not allowed in images")]
    Special { path: String, what: &'static str },
    #[error("not a Debian package: {0}")]
    NotDeb(String),
    #[error("not a usable Debian package")]
    Deb(#[source] BoundsError),
}

/// Ownership/mode overrides applied to every entry read.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Overrides {
    pub mode: Option<u32>,
    pub dir_mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// Wraps `bytes` in the decompressor its magic number asks for.
pub(crate) fn decompress(bytes: &[u8]) -> io::Result<Box<dyn Read + '_>> {
    Ok(match bytes {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(bytes)),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Box::new(liblzma::read::XzDecoder::new_multi_decoder(bytes)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(zstd::stream::read::Decoder::new(bytes)?),
        _ => Box::new(bytes),
    })
}

/// Reads a (possibly compressed) tar from `bytes` into `tree` under `dest`.
pub(crate) fn read_tar_into(tree: &mut Tree, bytes: &[u8], dest: &str, ov: Overrides) -> Result<(), ArchiveError> {
    read_tar_stream(tree, decompress(bytes)?, dest, ov)
}

/// Reads an uncompressed tar stream into `tree` under `dest`, within
/// `bounds::LIMITS` (every header is checked before the tar crate acts on it).
pub(crate) fn read_tar_stream<R: Read>(tree: &mut Tree, r: R, dest: &str, ov: Overrides) -> Result<(), ArchiveError> {
    let mut ar = tar::Archive::new(TarGuard::new(r, bounds::LIMITS));
    for entry in ar.entries()? {
        let mut entry = entry?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = tree::join(dest, &raw)?;
        if path.is_empty() {
            continue;
        }
        let h = entry.header();
        let mode = h.mode()? & 0o7777;
        let uid = h.uid()? as u32;
        let gid = h.gid()? as u32;
        let etype = h.entry_type();
        let mut xattrs = BTreeMap::new();
        if let Some(exts) = entry.pax_extensions()? {
            for ext in exts.flatten() {
                if let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                    if name.starts_with("user.") {
                        xattrs.insert(name.to_string(), ext.value_bytes().to_vec());
                    }
                }
            }
        }
        let kind = match etype {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                // No capacity from the header: the guard bounded the size,
                // and the bytes that really arrive decide the length.
                let mut data = Vec::new();
                entry.read_to_end(&mut data)?;
                Kind::File { size: data.len() as u64, content: Content::bytes(data) }
            }
            tar::EntryType::Symlink => Kind::Symlink(link_name(&entry)?),
            tar::EntryType::Link => Kind::Hardlink(tree::join(dest, &link_name(&entry)?)?),
            tar::EntryType::Char => return Err(ArchiveError::Special { path, what: "character device" }),
            tar::EntryType::Block => return Err(ArchiveError::Special { path, what: "block device" }),
            tar::EntryType::Fifo => return Err(ArchiveError::Special { path, what: "FIFO" }),
            tar::EntryType::GNUSparse => return Err(ArchiveError::Special { path, what: "sparse file" }),
            _ => continue, // PAX/GNU metadata records are consumed by the reader
        };
        let (mode, uid, gid) = match &kind {
            Kind::Dir => (ov.dir_mode.unwrap_or(mode), ov.uid.unwrap_or(uid), ov.gid.unwrap_or(gid)),
            Kind::Symlink(_) => (0o777, ov.uid.unwrap_or(uid), ov.gid.unwrap_or(gid)),
            _ => (ov.mode.unwrap_or(mode), ov.uid.unwrap_or(uid), ov.gid.unwrap_or(gid)),
        };
        tree.insert(Entry { path, kind, mode, uid, gid, xattrs })?;
    }
    Ok(())
}

fn link_name<R: Read>(e: &tar::Entry<R>) -> Result<String, ArchiveError> {
    let l = e.link_name_bytes().ok_or_else(|| io::Error::other("link entry without a target"))?;
    Ok(String::from_utf8_lossy(&l).into_owned())
}

/// Returns the `data.tar` member of a `.deb`, still compressed (read it with
/// `read_tar_into`, which decompresses within the limits). Every ar header
/// is checked first (`bounds::check_deb_ar`), so the ar crate never sees an
/// extended name, a size past the file or an empty member.
pub(crate) fn deb_data_tar(deb: &[u8]) -> Result<Vec<u8>, ArchiveError> {
    bounds::check_deb_ar(deb).map_err(ArchiveError::Deb)?;
    let mut ar = ar::Archive::new(deb);
    while let Some(member) = ar.next_entry() {
        let mut member = member.map_err(|e| ArchiveError::NotDeb(e.to_string()))?;
        let name = String::from_utf8_lossy(member.header().identifier()).into_owned();
        if name.starts_with("data.tar") {
            let mut raw = Vec::new();
            member.read_to_end(&mut raw)?; // at most the .deb's own size (checked)
            return Ok(raw);
        }
    }
    Err(ArchiveError::NotDeb("no data.tar member".into()))
}

/// Reads one archive input of a blueprint into a fresh tree, as `moat build`
/// does for a `tar` entry (compressed or not) or, with `deb`, a `deb` entry
/// (its data member): the same bounds, hard-link normalisation and
/// symlink-parent check. The archive parser's public entry point (used by
/// `fuzz/`); an error comes back as its whole chain of causes.
pub fn read_archive_input(bytes: &[u8], deb: bool) -> Result<Tree, String> {
    use crate::errors::chain;
    let data;
    let tar = if deb {
        data = deb_data_tar(bytes).map_err(|e| chain(&e))?;
        &data[..]
    } else {
        bytes
    };
    let mut tree = Tree::new();
    read_tar_into(&mut tree, tar, "", Overrides::default()).map_err(|e| chain(&e))?;
    normalize_hardlinks(&mut tree);
    tree.check_symlink_parents().map_err(|e| chain(&e))?;
    Ok(tree)
}

/// Makes hardlinks point at the first path of their group in byte-wise
/// sort order (the contract in DESIGN.md), so the archive reads back on any
/// tool: that path becomes the file (with the file's metadata), every other
/// name of the group links to it. Chains (a link to a link) are followed to
/// their file; a link to anything else is left for `check_hardlinks` to name.
pub(crate) fn normalize_hardlinks(tree: &mut Tree) {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in tree.iter() {
        if let Kind::Hardlink(t) = &e.kind {
            if let Some(file) = link_file(tree, t) {
                groups.entry(file).or_default().push(e.path.clone());
            }
        }
    }
    for (target, mut links) in groups {
        let Some(original) = tree.get(&target).cloned() else { continue };
        links.push(target.clone());
        links.sort();
        links.dedup();
        let first = links[0].clone();
        if let Some(e) = tree.get_mut(&first) {
            let path = std::mem::take(&mut e.path);
            *e = Entry { path, ..original };
        }
        for l in links.iter().skip(1) {
            if let Some(e) = tree.get_mut(l) {
                e.kind = Kind::Hardlink(first.clone());
            }
        }
    }
}

/// The regular file a hardlink at `target` ends at, following links to links.
fn link_file<'a>(tree: &'a Tree, mut target: &'a str) -> Option<String> {
    for _ in 0..=tree.len() {
        match &tree.get(target)?.kind {
            Kind::File { .. } => return Some(target.to_string()),
            Kind::Hardlink(next) => target = next,
            _ => return None,
        }
    }
    None // a cycle
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn hardlinks_point_at_the_first_name_in_byte_order() {
        let mut t = Tree::new();
        t.insert(Entry::file("d/a", "x", 0o600)).unwrap();
        let link = |p: &str, to: &str| Entry { kind: Kind::Hardlink(to.into()), ..Entry::file(p, "", 0o644) };
        t.insert(link("d-b", "d/a")).unwrap();
        t.insert(link("e", "d-b")).unwrap(); // a chain
        normalize_hardlinks(&mut t);
        assert!(matches!(t.get("d-b").unwrap().kind, Kind::File { .. }));
        assert_eq!(t.get("d-b").unwrap().mode, 0o600, "the file's metadata moves with it");
        assert_eq!(t.get("d/a").unwrap().kind, Kind::Hardlink("d-b".into()));
        assert_eq!(t.get("e").unwrap().kind, Kind::Hardlink("d-b".into()));
        t.check_hardlinks().unwrap();
    }

    /// A fixed-seed xorshift: the same mutations on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    fn sample_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let add = |b: &mut tar::Builder<Vec<u8>>, path: &str, typ: tar::EntryType, data: &[u8], link: Option<&str>| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(typ);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match link {
                Some(l) => b.append_link(&mut h, path, l).unwrap(),
                None => b.append_data(&mut h, path, data).unwrap(),
            }
        };
        add(&mut b, "d/", tar::EntryType::Directory, b"", None);
        add(&mut b, &format!("d/{}", "n".repeat(150)), tar::EntryType::Regular, &[b'x'; 700], None);
        add(&mut b, "d/a", tar::EntryType::Regular, b"file", None);
        add(&mut b, "d-b", tar::EntryType::Link, b"", Some("d/a"));
        add(&mut b, "s", tar::EntryType::Symlink, b"", Some(&"t".repeat(120)));
        b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..]), ("size", &b"3"[..])]).unwrap();
        add(&mut b, "p", tar::EntryType::Regular, b"pax", None);
        b.into_inner().unwrap()
    }

    #[test]
    fn mutated_tars_are_refused_or_read_never_panic() {
        let base = sample_tar();
        let mut t = Tree::new();
        read_tar_into(&mut t, &base, "", Overrides::default()).unwrap();
        normalize_hardlinks(&mut t);
        t.check_hardlinks().unwrap();
        assert_eq!(t.get("p").map(|e| &e.kind), Some(&Kind::File { content: Content::bytes("pax"), size: 3 }));
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20000 {
            let mut m = base.clone();
            let headers: Vec<usize> =
                (0..m.len() / 512).map(|b| b * 512).filter(|o| &m[o + 257..o + 262] == b"ustar").collect();
            match rng.next(4) {
                0 => m.truncate(rng.next(m.len())),
                1 => {
                    // A header's size: base-256 or octal, from 0 to 2^64-1, checksum fixed.
                    let o = headers[rng.next(headers.len())];
                    let v = (rng.next(usize::MAX) as u64) >> rng.next(64);
                    let f = &mut m[o + 124..o + 136];
                    if rng.next(2) == 0 {
                        f.fill(0);
                        f[0] = 0x80;
                        f[4..].copy_from_slice(&v.to_be_bytes());
                    } else {
                        f.copy_from_slice(format!("{:011o}\0", v & 0o77_777_777_777).as_bytes());
                    }
                    let h = &mut m[o..o + 512];
                    h[148..156].fill(b' ');
                    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
                    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
                }
                _ => {
                    for _ in 0..=rng.next(3) {
                        // Mostly header fields (sizes, types, checksums), where the tricks are.
                        let span = if rng.next(2) == 0 { 160 } else { 512 };
                        let block = rng.next(m.len() / 512) * 512;
                        let i = (block + rng.next(span)).min(m.len() - 1);
                        m[i] = [0, 0x80, 0xff, b'7', b'0', b' ', b'L', b'x', b'S', b'1', b'2'][rng.next(11)]
                            ^ (rng.next(2) as u8);
                        // Usually keep the checksum right, so the crate gets past it.
                        if rng.next(4) != 0 && block + 512 <= m.len() {
                            let h = &mut m[block..block + 512];
                            h[148..156].fill(b' ');
                            let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
                            h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
                        }
                    }
                }
            }
            let mut t = Tree::new();
            if read_tar_into(&mut t, &m, "", Overrides::default()).is_ok() {
                normalize_hardlinks(&mut t);
                let _ = t.check_hardlinks();
                let _ = t.check_symlink_parents();
            }
        }
    }
}
