//! Unit tests of the store: corruption found on read and replaced on reuse,
//! whole-image naming, gc of what nothing reaches, gc waiting for writers.
use super::*;

#[test]
fn put_read_and_detect_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let d = s.put_blob(b"hello").unwrap();
    assert_eq!(s.read_blob(&d).unwrap(), b"hello");
    fs::write(s.blob_path(&d), b"hellO").unwrap();
    assert!(matches!(s.read_blob(&d), Err(StoreError::Corrupt { .. })));
    assert!(matches!(s.read_blob(&Digest::of(b"x")), Err(StoreError::Missing(_))));
}

#[test]
fn writer_refuses_wrong_digest_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let mut w = s.blob_writer().unwrap();
    w.write_all(b"abc").unwrap();
    let wrong = Digest::of(b"abd");
    assert!(w.commit(Some(&wrong)).is_err());
    assert!(!s.has_blob(&Digest::of(b"abc")));
    assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
}

#[test]
fn refs_resolve_and_gc_keeps_reachable() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let layer = s.put_blob(b"layer").unwrap();
    let config = s.put_blob(b"{}").unwrap();
    let junk = s.put_blob(b"junk").unwrap();
    let desc = |d: &Digest, n| Descriptor {
        media_type: "x".into(),
        digest: d.clone(),
        size: n,
        annotations: Default::default(),
        platform: None,
    };
    let m = Manifest {
        schema_version: 2,
        artifact_type: None,
        media_type: Some(MEDIA_MANIFEST.into()),
        config: desc(&config, 2),
        layers: vec![desc(&layer, 5)],
        annotations: Default::default(),
    };
    let mbytes = cjson::to_vec(&m).unwrap();
    let md = s.put_blob(&mbytes).unwrap();
    s.set_ref("demo", desc(&md, mbytes.len() as u64)).unwrap();
    assert_eq!(s.resolve("demo").unwrap().manifest.digest, md);
    assert_eq!(s.resolve(&format!("demo@{md}")).unwrap().name, "demo");
    assert!(s.resolve("nope").is_err());
    let r = s.gc().unwrap();
    assert_eq!(r.removed, vec![junk.clone()]);
    assert!(s.has_blob(&layer) && s.has_blob(&config) && s.has_blob(&md) && !s.has_blob(&junk));
}

fn image(s: &Store, layer: &[u8]) -> Descriptor {
    let desc = |d: Digest, n: usize| Descriptor {
        media_type: "x".into(),
        digest: d,
        size: n as u64,
        annotations: Default::default(),
        platform: None,
    };
    let m = Manifest {
        schema_version: 2,
        artifact_type: None,
        media_type: Some(MEDIA_MANIFEST.into()),
        config: desc(s.put_blob(b"{}").unwrap(), 2),
        layers: vec![desc(s.put_blob(layer).unwrap(), layer.len())],
        annotations: Default::default(),
    };
    let mbytes = cjson::to_vec(&m).unwrap();
    desc(s.put_blob(&mbytes).unwrap(), mbytes.len())
}

#[test]
fn put_blob_replaces_a_corrupt_blob() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let d = s.put_blob(b"hello").unwrap();
    fs::write(s.blob_path(&d), b"hellO").unwrap();
    assert!(!s.reuse_blob(&d).unwrap());
    assert_eq!(s.put_blob(b"hello").unwrap(), d);
    assert_eq!(fs::read(s.blob_path(&d)).unwrap(), b"hello");
    assert!(s.reuse_blob(&d).unwrap());
}

#[test]
fn set_ref_refuses_an_image_that_is_not_whole() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let m = image(&s, b"layer bytes");
    let layer = s.manifest(&m.digest).unwrap().layers[0].digest.clone();
    fs::remove_file(s.blob_path(&layer)).unwrap();
    let e = s.set_ref("demo", m.clone()).unwrap_err();
    assert!(matches!(&e, StoreError::Incomplete { digest, .. } if digest == &layer), "{e}");
    fs::write(s.blob_path(&layer), b"layer byte").unwrap();
    assert!(matches!(s.set_ref("demo", m), Err(StoreError::WrongSize { .. })));
    assert!(s.images().unwrap().is_empty());
}

#[test]
fn an_image_index_is_named_whole_and_kept_by_gc() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let (a, b) = (image(&s, b"amd64 layer"), image(&s, b"arm64 layer"));
    let idx = Index { manifests: vec![a.clone(), b.clone()], ..Index::default() };
    let bytes = cjson::to_vec(&idx).unwrap();
    let d = s.put_blob(&bytes).unwrap();
    let desc = Descriptor { digest: d, size: bytes.len() as u64, ..a.clone() };
    s.set_ref("multi", desc.clone()).unwrap();
    assert_eq!(s.gc().unwrap().removed, vec![]);
    assert_eq!(s.fsck().unwrap().problems, vec![]);
    let layer = s.manifest(&b.digest).unwrap().layers[0].digest.clone();
    fs::remove_file(s.blob_path(&layer)).unwrap();
    assert!(matches!(s.set_ref("again", desc), Err(StoreError::Incomplete { .. })));
    let report = s.fsck().unwrap();
    assert!(
        matches!(&report.problems[..], [FsckProblem::Missing { digest, used_by }]
            if digest == &layer && used_by == &["layer 0 of manifest 1 of multi".to_string()]),
        "{report:?}"
    );
}

/// A writer's handle holds gc off from its first blob until it is dropped:
/// blobs it wrote and then names survive a gc started in between.
#[test]
fn gc_waits_for_a_writer_handle() {
    let dir = tempfile::tempdir().unwrap();
    let writer = Store::open(dir.path()).unwrap();
    let m = image(&writer, b"fresh layer");
    let (tx, rx) = std::sync::mpsc::channel();
    let root = dir.path().to_path_buf();
    let gc = std::thread::spawn(move || {
        let collector = Store::open(&root).unwrap();
        tx.send(()).unwrap();
        collector.gc().unwrap()
    });
    rx.recv().unwrap();
    // gc has had time to delete the unnamed blobs if it were not held off.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!gc.is_finished(), "gc ran while a writer held the lease");
    writer.set_ref("demo", m.clone()).unwrap();
    drop(writer);
    let report = gc.join().unwrap();
    assert!(report.removed.is_empty(), "{:?}", report.removed);
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.resolve("demo").unwrap().manifest.digest, m.digest);
    assert_eq!(s.fsck().unwrap().problems, vec![]);
}
