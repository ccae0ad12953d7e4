//! Unit tests of the layer unpacker against hand-made hostile tars.
#![forbid(unsafe_code)]
use super::*;
use moat_builder::oci::MEDIA_LAYER_GZIP;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// A raw tar entry; the name is written into the header bytes directly so
/// hostile names (`..`, absolute) the tar crate would refuse can be made.
struct E<'a> {
    name: &'a str,
    kind: tar::EntryType,
    mode: u32,
    data: &'a [u8],
    link: &'a str,
}

fn e<'a>(name: &'a str, kind: tar::EntryType, data: &'a [u8], link: &'a str) -> E<'a> {
    let mode = if kind == tar::EntryType::Directory { 0o755 } else { 0o644 };
    E { name, kind, mode, data, link }
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for en in entries {
        let mut h = tar::Header::new_old();
        {
            let raw = h.as_old_mut();
            raw.name[..en.name.len()].copy_from_slice(en.name.as_bytes());
            raw.linkname[..en.link.len()].copy_from_slice(en.link.as_bytes());
        }
        h.set_entry_type(en.kind);
        h.set_mode(en.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(en.data.len() as u64);
        h.set_cksum();
        b.append(&h, en.data).unwrap();
    }
    b.into_inner().unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    cache: LayerCache,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let cache = LayerCache::new(dir.path().join("cache"));
    Fixture { _dir: dir, store, cache }
}

fn put(f: &Fixture, tar: &[u8]) -> (Descriptor, Digest) {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(tar).unwrap();
    let gz = gz.finish().unwrap();
    let d = f.store.put_blob(&gz).unwrap();
    (
        Descriptor {
            media_type: MEDIA_LAYER_GZIP.into(),
            digest: d,
            size: gz.len() as u64,
            annotations: Default::default(),
            platform: None,
        },
        Digest::of(tar),
    )
}

fn cache_is_clean(f: &Fixture) -> bool {
    fs::read_dir(f.cache.dir()).map(|rd| rd.count() == 0).unwrap_or(true)
}

use tar::EntryType as T;

#[test]
fn unpacks_files_links_and_whiteouts_once() {
    let f = fixture();
    let t = tar_of(&[
        e("etc/", T::Directory, b"", ""),
        e("etc/passwd", T::Regular, b"sandbox:x:1000:1000::/sandbox:/bin/sh\n", ""),
        e("etc/alias", T::Link, b"", "etc/passwd"),
        e("bin", T::Symlink, b"", "/usr/bin"),
        e("etc/.wh.shadow", T::Regular, b"", ""),
        e("opaque/", T::Directory, b"", ""),
        e("opaque/.wh..wh..opq", T::Regular, b"", ""),
        e("implicit/parent/file", T::Regular, b"x", ""),
    ]);
    let (desc, diff) = put(&f, &t);
    let dir = f.cache.ensure(&f.store, &desc, &diff).unwrap();
    assert_eq!(fs::read(dir.join("etc/passwd")).unwrap(), b"sandbox:x:1000:1000::/sandbox:/bin/sh\n");
    assert_eq!(fs::metadata(dir.join("etc/alias")).unwrap().ino(), fs::metadata(dir.join("etc/passwd")).unwrap().ino());
    assert_eq!(fs::read_link(dir.join("bin")).unwrap(), Path::new("/usr/bin"));
    let wh = fs::symlink_metadata(dir.join("etc/shadow")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "whiteout is a 0/0 char device");
    assert!(fs::symlink_metadata(dir.join("etc/.wh.shadow")).is_err());
    assert!(dir.join("implicit/parent/file").is_file());
    // A second call uses the cache (the marker file survives).
    fs::write(dir.join("marker"), b"").unwrap();
    let again = f.cache.ensure(&f.store, &desc, &diff).unwrap();
    assert!(again.join("marker").exists());
    // Reading through the image never follows its symlinks.
    assert!(read_no_follow(&dir, "bin/sh").is_err());
    assert_eq!(read_no_follow(&dir, "etc/passwd").unwrap().unwrap().len(), 38);
}

#[test]
fn hostile_entries_are_refused_and_leave_nothing() {
    let cases: Vec<(&str, Vec<E>)> = vec![
        ("absolute path", vec![e("/etc/passwd", T::Regular, b"x", "")]),
        ("`..`", vec![e("a/../../escape", T::Regular, b"x", "")]),
        ("symlink", vec![e("link", T::Symlink, b"", "/etc"), e("link/passwd", T::Regular, b"x", "")]),
        ("symlink", vec![e("rel", T::Symlink, b"", "../../.."), e("rel/x", T::Regular, b"x", "")]),
        ("not in this layer", vec![e("hl", T::Link, b"", "etc/shadow")]),
        ("`..`", vec![e("hl", T::Link, b"", "../outside")]),
        ("malformed whiteout", vec![e(".wh.", T::Regular, b"", "")]),
        ("malformed whiteout", vec![e("d/.wh..wh.other", T::Regular, b"", "")]),
        ("malformed whiteout", vec![e(".wh...", T::Regular, b"", "")]),
        ("not allowed", vec![e("dev/sda", T::Block, b"", "")]),
        ("not allowed", vec![e("fifo", T::Fifo, b"", "")]),
    ];
    for (want, entries) in cases {
        let f = fixture();
        let (desc, diff) = put(&f, &tar_of(&entries));
        let err = f.cache.ensure(&f.store, &desc, &diff).unwrap_err().to_string();
        assert!(err.contains(want), "expected {want:?} in: {err}");
        assert!(cache_is_clean(&f), "a refused layer left files in the cache ({want})");
    }
}

#[test]
fn digests_are_verified_while_unpacking() {
    let f = fixture();
    let t = tar_of(&[e("a", T::Regular, b"content", "")]);
    // Wrong diff_id: the uncompressed stream does not match the config.
    let (desc, _) = put(&f, &t);
    let err = f.cache.ensure(&f.store, &desc, &Digest::of(b"other")).unwrap_err();
    assert!(matches!(err, LayerError::DiffId { .. }), "{err}");
    assert!(cache_is_clean(&f));
    // Corrupt blob: the store's digest check fires at end of stream.
    let (desc, diff) = put(&f, &t);
    let mut bytes = fs::read(f.store.blob_path(&desc.digest)).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff; // the gzip trailer's size byte: decoding may pass, the digest cannot
    fs::write(f.store.blob_path(&desc.digest), &bytes).unwrap();
    assert!(f.cache.ensure(&f.store, &desc, &diff).is_err());
    assert!(cache_is_clean(&f));
}
