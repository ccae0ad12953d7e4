//! Reads archives (tar, compressed tar, the data member of a `.deb`) into a
//! `Tree`. Guards against hostile archives: `..` and absolute-path escapes,
//! hardlinks to files outside the archive, and device files, FIFOs and
//! sockets, which are refused rather than carried into an image.
#![forbid(unsafe_code)]
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

/// Reads an uncompressed tar stream into `tree` under `dest`.
pub(crate) fn read_tar_stream<R: Read>(tree: &mut Tree, r: R, dest: &str, ov: Overrides) -> Result<(), ArchiveError> {
    let mut ar = tar::Archive::new(r);
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
                let mut data = Vec::with_capacity(entry.size() as usize);
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

/// Returns the decompressed `data.tar` member of a `.deb`.
pub(crate) fn deb_data_tar(deb: &[u8]) -> Result<Vec<u8>, ArchiveError> {
    let mut ar = ar::Archive::new(deb);
    while let Some(member) = ar.next_entry() {
        let mut member = member.map_err(|e| ArchiveError::NotDeb(e.to_string()))?;
        let name = String::from_utf8_lossy(member.header().identifier()).into_owned();
        if name.starts_with("data.tar") {
            let mut raw = Vec::new();
            member.read_to_end(&mut raw)?;
            let mut out = Vec::new();
            decompress(&raw)?.read_to_end(&mut out)?;
            return Ok(out);
        }
    }
    Err(ArchiveError::NotDeb("no data.tar member".into()))
}

/// Makes hardlinks point at the first path of their group in sort order
/// (the contract in DESIGN.md), so the archive reads back on any tool.
pub(crate) fn normalize_hardlinks(tree: &mut Tree) {
    // Group every link by its ultimate regular-file target.
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in tree.iter() {
        if let Kind::Hardlink(t) = &e.kind {
            groups.entry(t.clone()).or_default().push(e.path.clone());
        }
    }
    for (target, mut links) in groups {
        let Some(original) = tree.get(&target).cloned() else { continue };
        if !matches!(original.kind, Kind::File { .. }) {
            continue;
        }
        links.push(target.clone());
        links.sort();
        let first = links[0].clone();
        if first == target {
            continue;
        }
        // The first path becomes the file; every other path links to it.
        if let Some(e) = tree.get_mut(&first) {
            e.kind = original.kind.clone();
        }
        for l in links.iter().skip(1) {
            if let Some(e) = tree.get_mut(l) {
                e.kind = Kind::Hardlink(first.clone());
            }
        }
    }
}
