//! The workspace handled safely on the host (issue 18, parts 4 and 6), on
//! plain directories: sparse files stay sparse through a backup and a
//! restore (and the backup does not read their holes), trees deeper than
//! PATH_MAX back up, restore and are replaced, a restore that could not keep
//! what it replaces refuses (naming the path) unless forced, and setuid and
//! setgid bits are dropped on restore. Also that a snapshot without holes
//! has the very digest it had before sparse files were recorded.
mod common;

use common::{chmod, data, deep_tree, describe, fd_path, opts, setup};
use moat_snapshot::{backup_dir, restore_dir, restore_with, RestoreOptions};
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// A tree without holes has the digest it had in format v1: old snapshots
/// and new ones of the same content stay one snapshot.
#[test]
fn a_tree_without_holes_keeps_its_v1_digest() {
    let (t, repo) = setup();
    let src = t.path().join("ws");
    fs::create_dir_all(src.join("d/e")).unwrap();
    fs::write(src.join("a"), b"hello\n").unwrap();
    fs::write(src.join("d/big"), data(3, 700_000)).unwrap();
    fs::write(src.join("d/e/empty"), b"").unwrap();
    std::os::unix::fs::symlink("../a", src.join("d/link")).unwrap();
    for (p, m) in [(".", 0o755), ("d", 0o750), ("d/e", 0o700), ("a", 0o644), ("d/big", 0o600), ("d/e/empty", 0o444)] {
        let p = src.join(p);
        std::os::unix::fs::lchown(&p, Some(0), Some(0)).unwrap();
        chmod(&p, m);
    }
    std::os::unix::fs::lchown(src.join("d/link"), Some(0), Some(0)).unwrap();
    let r = backup_dir(&repo, &src, &opts("v1")).unwrap();
    assert_eq!(r.digest, "2c7676d12fb3a645856b3a0c63a25bed38cb09e0fb5f5d892fe5fe41b7b4d1bc");
}

/// The data extents of a file as the kernel reports them (SEEK_DATA/SEEK_HOLE).
fn extents(f: &fs::File) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let size = f.metadata().unwrap().len() as i64;
    let (mut out, mut pos) = (Vec::new(), 0i64);
    while pos < size {
        // SAFETY: lseek on a descriptor `f` keeps open; no memory is passed.
        let start = unsafe { libc::lseek(f.as_raw_fd(), pos, libc::SEEK_DATA) };
        if start < 0 {
            break; // ENXIO: only a hole is left
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(f.as_raw_fd(), start, libc::SEEK_HOLE) };
        assert!(end > start);
        out.push((start as u64, (end - start) as u64));
        pos = end;
    }
    out
}

fn disk_bytes(p: &Path) -> u64 {
    fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn a_sparse_file_stays_sparse_and_its_holes_are_not_read() {
    let (t, repo) = setup();
    let src = t.path().join("ws");
    fs::create_dir(&src).unwrap();
    let size = 4u64 << 30;
    let f = fs::File::create(src.join("sparse")).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(&data(11, 4096), 0).unwrap();
    f.write_all_at(&data(12, 5000), 1 << 30).unwrap();
    f.write_all_at(&data(13, 100), size - 100).unwrap();
    drop(f);
    fs::write(src.join("dense"), data(14, 300_000)).unwrap();
    assert!(disk_bytes(&src.join("sparse")) <= 64 << 10, "the test's file system does not keep files sparse");

    let r = backup_dir(&repo, &src, &opts("sp")).unwrap();
    let m = repo.manifest(&r.digest).unwrap();
    let e = m.entries.iter().find(|e| e.path == "sparse").unwrap();
    assert_eq!(e.size, size);
    assert!(e.chunks.len() <= 3, "the backup read the holes: {} chunks", e.chunks.len());
    let stored: usize = e.chunks.iter().map(|c| repo.chunks().read_chunk(c).unwrap().len()).sum();
    assert!(stored <= 5 * 4096, "{stored} bytes of chunks for ~9 KiB of data");

    let dest = t.path().join("out");
    restore_dir(&repo, &r.digest, &dest, None).unwrap();
    let (a, b) = (fs::File::open(src.join("sparse")).unwrap(), fs::File::open(dest.join("sparse")).unwrap());
    assert_eq!(b.metadata().unwrap().len(), size);
    assert!(
        disk_bytes(&dest.join("sparse")) <= 64 << 10,
        "restored: {} bytes on disk",
        disk_bytes(&dest.join("sparse"))
    );
    // Same data extents with the same bytes; everything else is a hole (zeros).
    let (xa, xb) = (extents(&a), extents(&b));
    assert_eq!(xa, xb);
    for (off, len) in xa {
        let (mut da, mut db) = (vec![0; len as usize], vec![1; len as usize]);
        a.read_exact_at(&mut da, off).unwrap();
        b.read_exact_at(&mut db, off).unwrap();
        assert!(da == db, "data at {off} differs");
    }
    assert_eq!(fs::read(dest.join("dense")).unwrap(), data(14, 300_000));
    // The restored tree is the same snapshot; the stat cache keeps the holes.
    assert_eq!(backup_dir(&repo, &dest, &opts("sp2")).unwrap().digest, r.digest);
    let again = backup_dir(&repo, &src, &opts("sp")).unwrap();
    assert_eq!((again.files_read, again.digest), (0, r.digest));
}

#[test]
fn a_tree_deeper_than_path_max_backs_up_restores_and_is_replaced() {
    let (t, repo) = setup();
    let src = t.path().join("ws");
    fs::create_dir(&src).unwrap();
    let name = "n".repeat(40);
    let inner = deep_tree(&src, 300, &name); // 300 * 41 bytes: > 12 KiB of path
    let base = fd_path(&inner);
    fs::write(base.join("bottom"), data(5, 200_000)).unwrap();
    fs::hard_link(base.join("bottom"), base.join("bottom-link")).unwrap();
    std::os::unix::fs::symlink("../f", base.join("up")).unwrap();
    chmod(&base.join("bottom"), 0o640);
    drop(inner);
    let want = describe(&src);
    assert!(want.0.keys().any(|k| k.len() > 12_000), "the tree is not deeper than PATH_MAX");

    let deep = backup_dir(&repo, &src, &opts("deep")).unwrap();
    let dest = t.path().join("out");
    restore_dir(&repo, &deep.digest, &dest, None).unwrap();
    assert_eq!(describe(&dest), want);

    // Replacing the deep tree: it is kept whole in the undo snapshot and removed.
    let small = t.path().join("small");
    fs::create_dir(&small).unwrap();
    fs::write(small.join("x"), b"x").unwrap();
    let s = backup_dir(&repo, &small, &opts("small")).unwrap();
    let rep = restore_dir(&repo, &s.digest, &dest, Some("deep")).unwrap();
    assert_eq!(rep.undo.as_deref(), Some(deep.digest.as_str()), "the undo snapshot holds the whole deep tree");
    assert_eq!(describe(&dest), describe(&small));
    let left: Vec<String> =
        fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert!(left.iter().all(|n| !n.contains("moat-restore")), "the old deep tree was left: {left:?}");
    restore_dir(&repo, &deep.digest, &dest, Some("deep")).unwrap();
    assert_eq!(describe(&dest), want);
}

#[test]
fn a_restore_that_could_not_keep_the_old_tree_refuses_unless_forced() {
    use std::os::unix::ffi::OsStrExt;
    let (t, repo) = setup();
    let src = t.path().join("ws");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("new"), b"new\n").unwrap();
    let r = backup_dir(&repo, &src, &opts("f")).unwrap();

    let dest = t.path().join("dest");
    fs::create_dir_all(dest.join("sub")).unwrap();
    fs::write(dest.join("keep"), b"old\n").unwrap();
    let odd = dest.join("sub").join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    fs::write(&odd, b"work that a snapshot cannot name\n").unwrap();
    let before = describe(&dest);
    let no = RestoreOptions { undo_as: Some("f"), force: false };
    let err = restore_with(&repo, &r.digest, &dest, &no).unwrap_err().to_string();
    assert!(err.contains("sub/caf") && err.contains("not UTF-8"), "the refusal names the path: {err}");
    assert!(err.contains("force"), "the refusal says how to go on: {err}");
    assert_eq!(describe(&dest), before, "the old tree is untouched");
    assert!(fs::symlink_metadata(&odd).is_ok());
    let names: Vec<String> =
        fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert!(names.iter().all(|n| !n.contains("moat-restore")), "staging left: {names:?}");

    let rep = restore_with(&repo, &r.digest, &dest, &RestoreOptions { force: true, ..no }).unwrap();
    assert!(rep.lost.iter().any(|l| l.contains("sub/caf")), "{:?}", rep.lost);
    assert!(rep.undo.is_some(), "the rest of the old tree is still kept");
    assert_eq!(describe(&dest), describe(&src));
}

#[test]
fn setuid_and_setgid_bits_are_dropped_on_restore() {
    let (t, repo) = setup();
    let src = t.path().join("ws");
    fs::create_dir_all(src.join("shared")).unwrap();
    fs::create_dir_all(src.join("tmp")).unwrap();
    for (f, mode) in [("suid", 0o4755), ("sgid", 0o2755), ("both", 0o6711), ("plain", 0o755)] {
        fs::write(src.join(f), b"#!/bin/sh\nid\n").unwrap();
        std::os::unix::fs::chown(src.join(f), Some(1234), Some(5678)).unwrap();
        chmod(&src.join(f), mode);
    }
    fs::hard_link(src.join("suid"), src.join("suid-link")).unwrap();
    chmod(&src.join("shared"), 0o2775);
    chmod(&src.join("tmp"), 0o1777);
    let r = backup_dir(&repo, &src, &opts("s")).unwrap();
    let m = repo.manifest(&r.digest).unwrap();
    assert_eq!(m.entries.iter().find(|e| e.path == "suid").unwrap().mode, 0o4755, "the snapshot records the bits");

    let dest = t.path().join("out");
    restore_dir(&repo, &r.digest, &dest, None).unwrap();
    let mode = |p: &str| fs::symlink_metadata(dest.join(p)).unwrap().mode() & 0o7777;
    let got = ["suid", "suid-link", "sgid", "both", "plain"].map(|p| format!("{p} {:o}", mode(p)));
    assert_eq!(got, ["suid 755", "suid-link 755", "sgid 755", "both 711", "plain 755"]);
    assert_eq!(fs::metadata(dest.join("suid")).unwrap().uid(), 1234, "owners are kept");
    assert_eq!(
        [mode("shared"), mode("tmp")].map(|m| format!("{m:o}")),
        ["2775", "1777"],
        "directories keep setgid and sticky"
    );
}
