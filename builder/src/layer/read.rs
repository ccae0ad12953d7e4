//! Reads layers back out of the store (verified against their digest while
//! streaming): entry listings for audit and verify, and single files for
//! fix-ups that extend lower layers (/etc/passwd). Applies OCI whiteouts.
#![forbid(unsafe_code)]
use crate::digest::Digest;
use crate::oci::Descriptor;
use crate::store::{Store, StoreError};
use std::collections::BTreeMap;
use std::io::{self, Read};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("layer {digest}")]
    Io { digest: Digest, source: io::Error },
}

/// One entry of a layer, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    pub path: String,
    /// tar type flag: b'0' file, b'1' hardlink, b'2' symlink, b'5' dir.
    pub flag: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub link: Option<String>,
    /// sha256 of file content (regular files only).
    pub content: Option<Digest>,
    /// File bytes, when asked for by `want`.
    pub data: Option<Vec<u8>>,
}

/// Lists every entry of a layer blob; `want(path)` selects entries whose
/// bytes to keep. The whole blob is read so its digest is verified.
pub(crate) fn list_layer(
    store: &Store,
    layer: &Descriptor,
    want: &dyn Fn(&str) -> bool,
) -> Result<Vec<Listed>, ReadError> {
    let ioe = |source| ReadError::Io { digest: layer.digest.clone(), source };
    let mut blob = store.open_blob(&layer.digest)?;
    let reader: Box<dyn Read> = if crate::oci::layer_is_gzip(&layer.media_type) {
        Box::new(flate2::read::MultiGzDecoder::new(&mut blob))
    } else {
        Box::new(&mut blob)
    };
    let mut ar = tar::Archive::new(reader);
    let mut out = Vec::new();
    for e in ar.entries().map_err(ioe)? {
        let mut e = e.map_err(ioe)?;
        let path = String::from_utf8_lossy(&e.path_bytes())
            .trim_start_matches("./")
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_string();
        let h = e.header();
        let flag = h.entry_type().as_byte();
        let mode = h.mode().map_err(ioe)? & 0o7777;
        let uid = h.uid().map_err(ioe)?;
        let gid = h.gid().map_err(ioe)?;
        let size = h.size().map_err(ioe)?;
        let link = e.link_name_bytes().map(|l| String::from_utf8_lossy(&l).into_owned());
        let (content, data) = if (flag == b'0' || flag == 0) && want(&path) {
            let mut buf = Vec::new();
            e.read_to_end(&mut buf).map_err(ioe)?;
            (Some(Digest::of(&buf)), Some(buf))
        } else if flag == b'0' || flag == 0 {
            // Hashed as it streams: a file is never held whole unless asked for.
            let (d, _) = crate::digest::digest_reader(&mut e).map_err(ioe)?;
            (Some(d), None)
        } else {
            (None, None)
        };
        out.push(Listed { path, flag: if flag == 0 { b'0' } else { flag }, mode, uid, gid, size, link, content, data });
    }
    // Drain the rest (padding) so the digest check at EOF runs.
    let mut rest = ar.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(ioe)?;
    drop(rest);
    io::copy(&mut blob, &mut io::sink()).map_err(ioe)?;
    Ok(out)
}

/// The merged view of several layers (lower first): whiteouts applied.
pub(crate) fn merged(
    store: &Store,
    layers: &[Descriptor],
    want: &dyn Fn(&str) -> bool,
) -> Result<BTreeMap<String, Listed>, ReadError> {
    let mut view: BTreeMap<String, Listed> = BTreeMap::new();
    for l in layers {
        for e in list_layer(store, l, want)? {
            let (dir, base) = e.path.rsplit_once('/').unwrap_or(("", e.path.as_str()));
            if base == ".wh..wh..opq" {
                let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
                view.retain(|k, _| !(k.starts_with(&prefix) && k.len() > prefix.len()));
                continue;
            }
            if let Some(hidden) = base.strip_prefix(".wh.") {
                let target = if dir.is_empty() { hidden.to_string() } else { format!("{dir}/{hidden}") };
                let prefix = format!("{target}/");
                view.retain(|k, _| k != &target && !k.starts_with(&prefix));
                continue;
            }
            if e.flag != b'5' {
                // A non-directory replaces a whole subtree.
                let prefix = format!("{}/", e.path);
                view.retain(|k, _| !k.starts_with(&prefix));
            }
            view.insert(e.path.clone(), e);
        }
    }
    Ok(view)
}
