//! Snapshot engine scenarios on plain directories (no sandbox needed): round
//! trip of every file type, digest identity, incremental backups, chunk-level
//! deduplication, verification of corrupt/missing chunks, undo, export/import,
//! secrets and gc.
mod common;

use common::{as_restored, check_repo, data, describe, every_type, opts, setup};
use moat_snapshot::sha256_hex as sha;
use moat_snapshot::{archive, backup_dir, restore_dir, BackupOptions, ChunkWriter, Repo, SnapshotError};
use std::fs;
use std::path::Path;

/// Chunks stored, as a new process opening the repository sees them.
fn chunk_count(repo: &Repo) -> usize {
    Repo::open(repo.root()).unwrap().chunks().chunk_count().unwrap()
}

#[test]
fn round_trip_every_file_type() {
    let (t, repo) = setup();
    let src = t.path().join("ws");
    fs::create_dir(&src).unwrap();
    common::chmod(&src, 0o711);
    every_type(&src);
    let r = backup_dir(&repo, &src, &opts("rt")).unwrap();
    let skipped = r.record.skipped.join("\n");
    assert!(skipped.contains("pipe: FIFO, skipped"), "{skipped}");
    assert!(skipped.contains("sock: socket, skipped"), "{skipped}");

    let dest = t.path().join("restored");
    let rep = restore_dir(&repo, &r.digest, &dest, Some("rt")).unwrap();
    assert_eq!(rep.undo, None, "nothing was at the destination");
    // As it was, but for the setuid bit (dropped on restore).
    let (mut want, want_links) = as_restored(describe(&src));
    want.remove("pipe");
    want.remove("sock");
    let (got, got_links) = describe(&dest);
    assert_eq!(got, want);
    assert_eq!(got_links, want_links);
    assert_eq!(got_links.len(), 1, "the hardlink pair is one inode again");
    // The restored tree snapshots to the digest of the source without that bit.
    common::chmod(&src.join("suid"), 0o750);
    let without = backup_dir(&repo, &src, &opts("rt")).unwrap().digest;
    assert_ne!(without, r.digest);
    assert_eq!(backup_dir(&repo, &dest, &opts("rt2")).unwrap().digest, without);
}

#[test]
fn identical_content_gives_identical_digest() {
    let (t, repo) = setup();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    for d in [&a, &b] {
        fs::create_dir_all(d.join("x/y")).unwrap();
        fs::write(d.join("x/y/f"), data(7, 300_000)).unwrap();
        fs::write(d.join("g"), b"g").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20)); // different mtimes
    }
    let da = backup_dir(&repo, &a, &opts("a")).unwrap().digest;
    let db = backup_dir(&repo, &b, &opts("b")).unwrap().digest;
    assert_eq!(da, db);
    fs::write(b.join("g"), b"h").unwrap();
    assert_ne!(backup_dir(&repo, &b, &opts("b")).unwrap().digest, da);
}

#[test]
fn incremental_backup_reads_and_stores_only_changes() {
    let (t, repo) = setup();
    let src = t.path().join("ws");
    fs::create_dir(&src).unwrap();
    for i in 0..200 {
        fs::write(src.join(format!("f{i:03}")), data(i, 10_000 + i as usize * 20)).unwrap();
    }
    let first = backup_dir(&repo, &src, &opts("inc")).unwrap();
    assert_eq!(first.files_read, 200);
    assert_eq!(first.record.new_chunks, 200);
    let again = backup_dir(&repo, &src, &opts("inc")).unwrap();
    assert_eq!(again.files_read, 0, "stat cache answers for unchanged files");
    assert_eq!(again.record.new_chunks, 0);
    assert_eq!(again.digest, first.digest);
    fs::write(src.join("f010"), data(999, 5000)).unwrap();
    let third = backup_dir(&repo, &src, &opts("inc")).unwrap();
    assert_eq!(third.files_read, 1);
    assert_eq!(third.record.new_chunks, 1);
    assert_ne!(third.digest, first.digest);
    assert_eq!(chunk_count(&repo), 201);
}

#[test]
fn one_byte_change_in_a_20mb_file_stores_about_one_chunk() {
    let (t, repo) = setup();
    let src = t.path().join("ws");
    fs::create_dir(&src).unwrap();
    let mut big = data(3, 20 << 20);
    fs::write(src.join("big"), &big).unwrap();
    let first = backup_dir(&repo, &src, &opts("big")).unwrap();
    let n0 = first.record.new_chunks;
    assert!(n0 >= 80, "20 MiB at ~64 KiB average is many chunks, got {n0}");
    big[10 << 20] ^= 0xff;
    fs::write(src.join("big"), &big).unwrap();
    let second = backup_dir(&repo, &src, &opts("big")).unwrap();
    assert!(second.record.new_chunks <= 2, "1-byte change stored {} chunks", second.record.new_chunks);
    assert!(second.record.new_bytes <= 2 * 256 * 1024 + 2);
    // An insertion near the start does not re-store the rest (content-defined).
    big.insert(1000, b'!');
    fs::write(src.join("big"), &big).unwrap();
    let third = backup_dir(&repo, &src, &opts("big")).unwrap();
    assert!(third.record.new_chunks <= 3, "insert stored {} chunks", third.record.new_chunks);
    let dest = t.path().join("out");
    restore_dir(&repo, &third.digest, &dest, None).unwrap();
    assert!(fs::read(dest.join("big")).unwrap() == big);
}

fn corrupt_and_check(missing: bool) {
    let (t, repo) = setup();
    let src = t.path().join("ws");
    fs::create_dir_all(src.join("d")).unwrap();
    // Smaller than the minimum chunk: one chunk.
    fs::write(src.join("d/victim"), data(11, 16_000)).unwrap();
    // The victim alone first, so its chunk has a pack to itself; then the rest.
    backup_dir(&repo, &src, &opts("bad")).unwrap();
    fs::hard_link(src.join("d/victim"), src.join("victim-link")).unwrap();
    fs::write(src.join("ok"), data(12, 50_000)).unwrap();
    let r = backup_dir(&repo, &src, &opts("bad")).unwrap();
    let m = repo.manifest(&r.digest).unwrap();
    let victim = m.entries.iter().find(|e| e.path == "d/victim").unwrap().chunks[0].clone();
    let (p, offset, len) = repo.chunks().chunk_location(&victim).unwrap();
    let ok_chunks = &m.entries.iter().find(|e| e.path == "ok").unwrap().chunks;
    assert!(
        ok_chunks.iter().all(|c| repo.chunks().chunk_location(c).unwrap().0 != p),
        "victim's pack holds only the victim"
    );
    if missing {
        fs::remove_file(&p).unwrap();
    } else {
        let mut raw = fs::read(&p).unwrap();
        raw[(offset + len / 2) as usize] ^= 1;
        fs::write(&p, raw).unwrap();
    }
    // As a new process would see the repository.
    let repo = Repo::open(repo.root()).unwrap();
    // The destination holds other data, which must survive untouched.
    let dest = t.path().join("dest");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("precious"), b"keep me").unwrap();
    let before = describe(&dest);
    let err = restore_dir(&repo, &r.digest, &dest, Some("bad")).unwrap_err();
    match &err {
        SnapshotError::Damaged { chunks, paths, .. } => {
            assert_eq!(chunks, &vec![victim.clone()]);
            assert_eq!(paths, &vec!["d/victim".to_string(), "victim-link".to_string()]);
        }
        e => panic!("expected Damaged, got {e}"),
    }
    assert!(err.to_string().contains("d/victim"), "{err}");
    assert_eq!(describe(&dest), before, "destination untouched");
    let leftovers: Vec<_> = fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 3, "no staging tree left behind: {leftovers:?}");
    assert!(repo.records("bad").unwrap().iter().all(|r| r.tag.as_deref() != Some("pre-restore")));
}

#[test]
fn corrupt_chunk_fails_restore_with_paths_and_changes_nothing() {
    corrupt_and_check(false);
}

#[test]
fn missing_chunk_fails_restore_with_paths_and_changes_nothing() {
    corrupt_and_check(true);
}

#[test]
fn restore_keeps_the_previous_tree_as_a_snapshot_and_can_be_undone() {
    let (t, repo) = setup();
    let ws = t.path().join("ws");
    fs::create_dir(&ws).unwrap();
    fs::write(ws.join("v"), b"one").unwrap();
    let one = backup_dir(&repo, &ws, &opts("u")).unwrap().digest;
    fs::write(ws.join("v"), b"two").unwrap();
    fs::write(ws.join("added"), b"only in two").unwrap();
    let two_desc = describe(&ws);
    let rep = restore_dir(&repo, &one, &ws, Some("u")).unwrap();
    assert_eq!(fs::read(ws.join("v")).unwrap(), b"one");
    assert!(!ws.join("added").exists());
    let undo = rep.undo.expect("pre-restore snapshot");
    assert_eq!(repo.resolve("u", Some("pre-restore")).unwrap().digest, undo);
    restore_dir(&repo, &undo, &ws, Some("u")).unwrap();
    assert_eq!(describe(&ws), two_desc);
    let names: Vec<_> = fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "old trees removed after the swap: {names:?}");
}

#[test]
fn export_import_round_trip_into_a_fresh_repository() {
    let (t, repo) = setup();
    let ws = t.path().join("ws");
    fs::create_dir(&ws).unwrap();
    every_type(&ws);
    let r = backup_dir(&repo, &ws, &BackupOptions { tag: Some("t1".into()), ..opts("ex") }).unwrap();
    let file = t.path().join("snap.tar");
    archive::export(&repo, &r.digest, Some(&r.record), &file).unwrap();
    let other = Repo::open(&t.path().join("repo2")).unwrap();
    let (digest, rec) = archive::import(&other, &file).unwrap();
    assert_eq!(digest, r.digest);
    assert_eq!(rec.tag.as_deref(), Some("t1"));
    assert_eq!(other.resolve("ex", Some("t1")).unwrap().digest, digest);
    check_repo(&other);
    let dest = t.path().join("out");
    restore_dir(&other, &digest, &dest, None).unwrap();
    let (mut want, wl) = as_restored(describe(&ws));
    want.remove("pipe");
    want.remove("sock");
    assert_eq!(describe(&dest), (want, wl));

    // A tampered export is refused and adds nothing.
    let mut bytes = fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    let bad = t.path().join("bad.tar");
    fs::write(&bad, &bytes).unwrap();
    let third = Repo::open(&t.path().join("repo3")).unwrap();
    assert!(archive::import(&third, &bad).is_err());
    assert!(third.manifests().unwrap().is_empty());
}

#[test]
fn secrets_are_reported_and_excluded_on_request() {
    let (t, repo) = setup();
    let ws = t.path().join("ws");
    fs::create_dir(&ws).unwrap();
    fs::write(ws.join(".env"), b"X=1\n").unwrap();
    fs::write(ws.join("gcp-credentials.json"), b"{}").unwrap();
    fs::write(ws.join("notes.txt"), b"key: ghp_0123456789abcdefghijklmnopqrstuvwxyz\n").unwrap();
    fs::write(ws.join("code.py"), b"print('hello')\n").unwrap();
    let kept = backup_dir(&repo, &ws, &opts("s")).unwrap();
    let listed = kept.record.secrets.join("\n");
    for f in [".env", "gcp-credentials.json", "notes.txt"] {
        assert!(listed.contains(f), "{f} not reported: {listed}");
    }
    assert!(!listed.contains("code.py"));
    assert_eq!(kept.record.files, 4);
    let ex = backup_dir(&repo, &ws, &BackupOptions { exclude_secrets: true, ..opts("s") }).unwrap();
    assert_eq!(ex.record.files, 1);
    let skipped = ex.record.skipped.join("\n");
    for f in [".env", "gcp-credentials.json", "notes.txt"] {
        assert!(skipped.contains(f), "{f} not listed as excluded: {skipped}");
    }
    let m = repo.manifest(&ex.digest).unwrap();
    assert_eq!(m.entries.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), vec![".", "code.py"]);
}

#[test]
fn excludes_and_gc() {
    let (t, repo) = setup();
    let ws = t.path().join("ws");
    fs::create_dir_all(ws.join("target/debug")).unwrap();
    fs::write(ws.join("target/debug/huge"), data(5, 100_000)).unwrap();
    fs::write(ws.join("keep.rs"), b"fn f() {}").unwrap();
    fs::write(ws.join("x.log"), b"log").unwrap();
    let o = BackupOptions { exclude: vec!["target".into(), "*.log".into()], ..opts("g") };
    let r = backup_dir(&repo, &ws, &o).unwrap();
    let m = repo.manifest(&r.digest).unwrap();
    assert_eq!(m.entries.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), vec![".", "keep.rs"]);
    // An orphan chunk (e.g. from an interrupted backup) is collected; live ones stay.
    let orphan = data(77, 1000);
    let id = sha(&orphan);
    repo.chunks().put_chunk(&id, &orphan).unwrap();
    fs::write(repo.root().join("tmp/.tmpABC"), b"half").unwrap();
    let (n, _) = repo.gc().unwrap();
    assert_eq!(n, 1);
    assert!(!repo.chunks().has_chunk(&id));
    assert_eq!(fs::read_dir(repo.root().join("tmp")).unwrap().count(), 0);
    check_repo(&repo);
    let dest = t.path().join("out");
    restore_dir(&repo, &r.digest, &dest, None).unwrap();
    assert_eq!(fs::read(dest.join("keep.rs")).unwrap(), b"fn f() {}");
    let _ = Path::new("");
}

/// Stores `chunks` with one writer on one thread: all in one pack.
fn one_pack(repo: &Repo, chunks: &[&[u8]]) {
    let w = ChunkWriter::new(repo.chunks());
    for c in chunks {
        w.put(&sha(c), c).unwrap();
    }
    w.commit().unwrap();
}

/// The pack format's own guarantees: gc rewrites a pack that holds live and
/// dead chunks (keeping every live one), removes a pack whose index never
/// landed, a damaged index is rebuilt from its pack, and v1 loose chunk
/// files are still read and collected.
#[test]
fn packs_survive_gc_damaged_indexes_and_v1_chunks() {
    let (t, repo) = setup();
    let (live, dead) = (data(21, 30_000), data(22, 30_000));
    one_pack(&repo, &[&live, &dead]);
    let packs = || -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(repo.root().join("packs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(packs().len(), 2, "{:?}", packs());
    let first_pack = repo.chunks().chunk_location(&sha(&live)).unwrap().0;
    assert_eq!(repo.chunks().chunk_location(&sha(&dead)).unwrap().0, first_pack);

    // A v1 repository's loose chunk (codec byte + payload), one live, one dead.
    let (old_live, old_dead) = (data(23, 5000), data(24, 5000));
    fs::create_dir_all(repo.root().join("chunks")).unwrap();
    for b in [&old_live, &old_dead] {
        fs::write(repo.root().join("chunks").join(sha(b)), [&b"r"[..], b].concat()).unwrap();
    }
    let repo = Repo::open(repo.root()).unwrap();
    assert_eq!(repo.chunks().read_chunk(&sha(&old_live)).unwrap(), old_live);

    let ws = t.path().join("ws");
    fs::create_dir(&ws).unwrap();
    fs::write(ws.join("live"), &live).unwrap();
    fs::write(ws.join("old"), &old_live).unwrap();
    let r = backup_dir(&repo, &ws, &opts("p")).unwrap();
    assert_eq!(r.record.new_chunks, 0, "both chunks were already stored");

    // An interrupted commit's pack (no index) and a damaged index elsewhere.
    fs::write(repo.root().join("packs").join(format!("{}.pack", "ab".repeat(32))), b"half a pack").unwrap();
    let (n, freed) = repo.gc().unwrap();
    assert_eq!(n, 2, "the dead packed chunk and the dead loose one");
    assert!(freed > 30_000, "freed {freed}");
    assert!(!repo.chunks().has_chunk(&sha(&dead)) && !repo.chunks().has_chunk(&sha(&old_dead)));
    assert!(!first_pack.exists(), "the mixed pack was rewritten");
    assert_eq!(packs().len(), 2, "one pack and its index: {:?}", packs());
    check_repo(&repo);

    let idx = repo.root().join("packs").join(packs().into_iter().find(|n| n.ends_with(".idx")).unwrap());
    let mut raw = fs::read(&idx).unwrap();
    raw[10] ^= 0xff;
    fs::write(&idx, raw).unwrap();
    let repo = Repo::open(repo.root()).unwrap();
    assert_eq!(repo.chunks().read_chunk(&sha(&live)).unwrap(), live, "rebuilt from the pack's records");
    assert_eq!(repo.chunks().read_chunk(&sha(&old_live)).unwrap(), old_live);
    let dest = t.path().join("out");
    restore_dir(&repo, &r.digest, &dest, None).unwrap();
    assert_eq!(fs::read(dest.join("live")).unwrap(), live);
    assert_eq!(fs::read(dest.join("old")).unwrap(), old_live);
}

/// A lost pack file does not stop gc: its index goes, the snapshots that
/// named its chunks still report exactly those as missing, others restore.
#[test]
fn gc_survives_a_lost_pack() {
    let (t, repo) = setup();
    let (live, dead) = (data(31, 9000), data(32, 9000));
    one_pack(&repo, &[&live, &dead]);
    let ws = t.path().join("ws");
    fs::create_dir(&ws).unwrap();
    fs::write(ws.join("lost"), &live).unwrap();
    let hit = backup_dir(&repo, &ws, &opts("l")).unwrap();
    let ws2 = t.path().join("ws2");
    fs::create_dir(&ws2).unwrap();
    fs::write(ws2.join("fine"), data(33, 9000)).unwrap();
    let fine = backup_dir(&repo, &ws2, &opts("l")).unwrap();
    fs::remove_file(repo.chunks().chunk_location(&sha(&live)).unwrap().0).unwrap();
    let repo = Repo::open(repo.root()).unwrap();
    let (n, _) = repo.gc().unwrap();
    assert_eq!(n, 1, "the dead chunk");
    assert!(!repo.chunks().has_chunk(&sha(&live)));
    match restore_dir(&repo, &hit.digest, &t.path().join("out1"), None).unwrap_err() {
        SnapshotError::Damaged { chunks, paths, .. } => {
            assert_eq!(chunks, vec![sha(&live)]);
            assert_eq!(paths, vec!["lost".to_string()]);
        }
        e => panic!("expected Damaged, got {e}"),
    }
    restore_dir(&repo, &fine.digest, &t.path().join("out2"), None).unwrap();
    assert_eq!(fs::read(t.path().join("out2/fine")).unwrap(), data(33, 9000));
}

/// Display shows one level; the chain (what `moat` prints) names each cause once.
#[test]
fn errors_name_their_cause_once_and_bad_names_are_their_own_variant() {
    let (t, repo) = setup();
    let e = backup_dir(&repo, &t.path().join("absent"), &opts("x")).unwrap_err();
    let mut chain = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        chain.push_str(&format!(": {c}"));
        cause = c.source();
    }
    assert!(chain.contains("absent"), "{chain}");
    assert_eq!(chain.matches("No such file or directory").count(), 1, "{chain}");
    for bad in ["../x", "a/b", ".hidden", ""] {
        let e = backup_dir(&repo, t.path(), &opts(bad)).unwrap_err();
        assert!(matches!(e, SnapshotError::BadName(_)), "{bad:?}: {e:?}");
        assert!(matches!(repo.records(bad), Err(SnapshotError::BadName(_))), "{bad:?}");
    }
}
