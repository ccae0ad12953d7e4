//! Hostile double build: the same blueprint built from two copies of its
//! sources that differ in everything the host could leak (directory, file
//! creation order, mtimes, permission bits from umask, TZ, locale, MOAT_HOME,
//! store) must give identical digests for every layer, config and manifest.
mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// (path, content, executable)
fn files() -> Vec<(String, Vec<u8>, bool)> {
    let mut v = Vec::new();
    for i in 0..60 {
        v.push((
            format!("d{}/sub{}/file{i:03}.txt", i % 5, i % 3),
            format!("content {i}\n").repeat(i + 1).into_bytes(),
            i % 4 == 0,
        ));
    }
    v.push((format!("long/{}/{}", "x".repeat(90), "y".repeat(80)), b"long path (ustar prefix split)".to_vec(), false));
    v.push((format!("long/{}", "z".repeat(240)), b"very long name (PAX)".to_vec(), false));
    v.push(("bin/tool".into(), b"#!/bin/sh\necho tool\n".to_vec(), true));
    v
}

fn make_tree(root: &Path, reverse: bool, seed: u64, private_perms: bool) {
    let mut list = files();
    if reverse {
        list.reverse();
    }
    let mut x = seed;
    for (p, data, exec) in &list {
        let full = root.join(p);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(&full, data).unwrap();
        let mode = match (exec, private_perms) {
            (true, false) => 0o755,
            (true, true) => 0o700,
            (false, false) => 0o644,
            (false, true) => 0o600,
        };
        fs::set_permissions(&full, fs::Permissions::from_mode(mode)).unwrap();
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000 + (x >> 33) % 500_000_000);
        fs::File::options().write(true).open(&full).unwrap().set_modified(t).unwrap();
    }
    symlink("../bin/tool", root.join("d0/tool-link")).unwrap_or_else(|_| panic!("symlink"));
    fs::create_dir_all(root.join("empty/dir")).unwrap();
    fs::hard_link(root.join("bin/tool"), root.join("bin/tool-hardlink")).unwrap();
    if private_perms {
        fs::set_permissions(root.join("d1"), fs::Permissions::from_mode(0o700)).unwrap();
    }
}

const BLUEPRINT: &str = r#"
name = "hostile"
epoch = 1234
[[layer]]
name = "tree"
[[layer.entry]]
path = "src"
dest = "/app"
[users]
sandbox = { uid = 1000 }
[config]
cmd = ["/app/bin/tool"]
"#;

fn build_in(dir: &Path, umask: &str, tz: &str, lang: &str) -> (String, Vec<String>) {
    fs::write(dir.join("bp.toml"), BLUEPRINT).unwrap();
    let home = dir.join("home");
    let store = dir.join("store");
    let mut c = std::process::Command::new("sh");
    c.current_dir(dir)
        .env("MOAT_HOME", &home)
        .env("TZ", tz)
        .env("LANG", lang)
        .env("LC_ALL", lang)
        .arg("-c")
        .arg(format!("umask {umask}; exec \"$0\" lock bp.toml --store \"$1\""))
        .arg(moat_bin())
        .arg(&store);
    let out = ok(c);
    let lock = fs::read_to_string(dir.join("bp.lock")).unwrap();
    let mut blobs: Vec<String> = fs::read_dir(store.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    blobs.sort();
    assert!(out.starts_with("hostile@sha256:"), "{out}");
    (lock, blobs)
}

#[test]
fn two_hostile_hosts_make_identical_bytes() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let b_deep = b.path().join("some/other/deeper/place");
    fs::create_dir_all(&b_deep).unwrap();
    make_tree(&a.path().join("src"), false, 1, false);
    make_tree(&b_deep.join("src"), true, 99, true);
    let (lock_a, blobs_a) = build_in(a.path(), "022", "UTC", "C");
    let (lock_b, blobs_b) = build_in(&b_deep, "077", "Pacific/Chatham", "C.UTF-8");
    assert_eq!(lock_a, lock_b, "locks differ between the two hosts");
    assert_eq!(blobs_a, blobs_b, "stores hold different blobs");
    // Every digest class is present in the lock that was compared.
    for key in ["diff_id", "digest", "config", "manifest"] {
        assert!(lock_a.contains(&format!("{key} = \"sha256:")), "lock lacks {key}");
    }
    // A second lock in the same place (warm cache) changes nothing either.
    let (lock_a2, _) = build_in(a.path(), "000", "Asia/Kolkata", "C");
    assert_eq!(lock_a, lock_a2);
}
