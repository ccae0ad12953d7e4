//! What a snapshot record may say of itself, provoked through the public
//! API: a tag holding an escape sequence or a newline is refused at backup,
//! and an export whose record claims a time far in the future (2^127 ns: it
//! would stay "latest" for good and print as a year before Christ) or a
//! hostile tag is refused at import, nothing stored (no record, manifest or
//! chunk).
use moat_snapshot::{archive, backup_dir, BackupOptions, Repo};
use std::fs;
use std::io::Read;
use std::path::Path;

fn setup() -> (tempfile::TempDir, Repo) {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::open(&t.path().join("repo")).unwrap();
    fs::create_dir_all(t.path().join("src")).unwrap();
    fs::write(t.path().join("src/a"), b"hello\n").unwrap();
    (t, repo)
}

fn backup(repo: &Repo, src: &Path, tag: Option<&str>) -> Result<String, String> {
    let opts = BackupOptions { sandbox: "box".into(), tag: tag.map(str::to_string), ..Default::default() };
    backup_dir(repo, src, &opts).map(|r| r.digest).map_err(|e| e.to_string())
}

#[test]
fn tags_with_control_characters_are_refused_at_backup() {
    let (t, repo) = setup();
    for tag in ["\x1b[2J\x1b[31mpwned", "two\nlines", "bell\x07", "rtl\u{202e}gnp.exe", ""] {
        let e = backup(&repo, &t.path().join("src"), Some(tag)).expect_err(&format!("{tag:?}"));
        assert!(e.contains("tag"), "{tag:?}: {e}");
        assert!(!e.contains('\x1b') && !e.contains('\u{202e}'), "the refusal itself is printable: {e:?}");
    }
    assert!(repo.records("box").unwrap().is_empty(), "a refused backup left a record");
    backup(&repo, &t.path().join("src"), Some("release-1.2 (ok: ünïcode)")).unwrap();
    assert_eq!(repo.records("box").unwrap().len(), 1);
}

/// Rewrites the `record.json` of export `file` with `edit`, keeping every
/// other member as it was.
/// A value `"__NUMBER__"` is written as the bare number text in `number`
/// (serde_json's Value holds no 128-bit integers).
fn edit_record(file: &Path, out: &Path, number: &str, edit: impl Fn(&mut serde_json::Value)) {
    let mut members = Vec::new();
    let mut a = tar::Archive::new(fs::File::open(file).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        if name == "record.json" {
            let mut v: serde_json::Value = serde_json::from_slice(&data).unwrap();
            edit(&mut v);
            data = serde_json::to_string(&v).unwrap().replace("\"__NUMBER__\"", number).into_bytes();
        }
        members.push((name, data));
    }
    let mut b = tar::Builder::new(fs::File::create(out).unwrap());
    for (name, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, &name, &data[..]).unwrap();
    }
    b.finish().unwrap();
}

#[test]
fn imported_records_from_the_far_future_or_with_hostile_tags_are_refused() {
    let (t, repo) = setup();
    let digest = backup(&repo, &t.path().join("src"), Some("v1")).unwrap();
    let rec = repo.records("box").unwrap().pop().unwrap();
    let file = t.path().join("snap.tar");
    archive::export(&repo, &digest, Some(&rec), &file).unwrap();
    let other = Repo::open(&t.path().join("other")).unwrap();
    let day_ns: u128 = 24 * 3600 * 1_000_000_000;
    // The one chunk of the snapshot: src/a's bytes.
    let hello = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"hello\n"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let n = |x: u128| (serde_json::json!("__NUMBER__"), x.to_string());
    let cases = [
        ("2^127", "time_ns", n(1u128 << 127)),
        ("two days ahead", "time_ns", n(now + 2 * day_ns)),
        ("escape tag", "tag", (serde_json::json!("\u{1b}]0;owned\u{7}x"), String::new())),
    ];
    for (what, key, (value, number)) in cases {
        let bad = t.path().join("bad.tar");
        edit_record(&file, &bad, &number, |v| v[key] = value.clone());
        let e = archive::import(&other, &bad).expect_err(what).to_string();
        assert!(e.contains("refused"), "{what}: {e}");
        assert!(!e.contains('\x1b'), "{what}: the refusal is printable: {e:?}");
        assert!(other.records("box").unwrap().is_empty(), "{what}: a record was stored");
        assert!(other.manifests().unwrap().is_empty(), "{what}: the refused snapshot's manifest was stored");
        assert!(!other.chunks().has_chunk(&hello), "{what}: the refused snapshot's chunk was stored");
    }
    // Within the day of skew two clocks may have, and the original, import.
    let near = t.path().join("near.tar");
    edit_record(&file, &near, &(now + day_ns / 2).to_string(), |v| v["time_ns"] = "__NUMBER__".into());
    archive::import(&other, &near).unwrap();
    archive::import(&other, &file).unwrap();
    assert_eq!(other.records("box").unwrap().len(), 2);
}
