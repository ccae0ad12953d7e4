//! The builder's inputs against hostile archives and host hard links, each
//! provoked with bytes crafted here: tar sizes and gzip bombs past the cap,
//! truncated tars, `.deb`s with broken ar headers, symlink traversal inside
//! a tar, and hard-link layouts on the host that must not shape the image.
mod common;
use common::*;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

fn project(tmp: &Path, blueprint: &str) -> PathBuf {
    let dir = tmp.join("proj");
    fs::create_dir_all(dir.join("blueprints")).unwrap();
    fs::write(dir.join("blueprints/app.toml"), blueprint).unwrap();
    dir
}

fn cmd(tmp: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut c = moat(&tmp.join("home"));
    c.current_dir(dir).args(args);
    c
}

/// A blueprint with one layer holding one entry (`tar = "..."`, `deb = ...`).
fn one_entry(entry: &str) -> String {
    format!("name = \"app\"\n[[layer]]\nname = \"files\"\n[[layer.entry]]\n{entry}\n")
}

/// Runs `moat lock` and asserts a clean refusal (no panic, no abort) whose
/// message contains every one of `needles`; returns stderr.
fn refused(tmp: &Path, dir: &Path, args: &[&str], needles: &[&str]) -> String {
    let (code, out, err) = run(cmd(tmp, dir, args));
    assert!(matches!(code, 1 | 2), "{args:?} should be refused cleanly, got exit {code}:\n{out}\n{err}");
    assert!(!err.contains("panicked") && !err.contains("memory allocation"), "{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: error should mention {n:?}:\n{err}");
    }
    err
}

// ---- crafting archives ----

/// One ustar header block; `size` is the raw 12-byte size field.
fn header_raw(name: &str, typ: u8, size: [u8; 12], link: &str) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(&size);
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = typ;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn octal(size: u64) -> [u8; 12] {
    let mut f = [0u8; 12];
    f[..11].copy_from_slice(format!("{size:011o}").as_bytes());
    f
}

fn header(name: &str, typ: u8, size: u64, link: &str) -> [u8; 512] {
    header_raw(name, typ, octal(size), link)
}

/// A regular-file entry with its data, padded to a block.
fn file(name: &str, data: &[u8]) -> Vec<u8> {
    let mut v = header(name, b'0', data.len() as u64, "").to_vec();
    v.extend_from_slice(data);
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

fn end() -> Vec<u8> {
    vec![0u8; 1024]
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// An ar archive of `(name field, data)` members, names written verbatim.
fn ar(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut v = b"!<arch>\n".to_vec();
    for (name, data) in members {
        v.extend_from_slice(
            format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", 0, 0, 0, "100644", data.len()).as_bytes(),
        );
        v.extend_from_slice(data);
        if data.len() % 2 == 1 {
            v.push(b'\n');
        }
    }
    v
}

/// The entries of the first layer of the locked image: (path, tar type, bytes).
fn layer_entries(dir: &Path) -> Vec<(String, u8, Vec<u8>)> {
    let lock: toml::Value = fs::read_to_string(dir.join("blueprints/app.lock")).unwrap().parse().unwrap();
    let digest = lock["layer"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let blob = fs::read(dir.join("images/blobs/sha256").join(digest)).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&blob[..]));
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().trim_end_matches('/').to_string();
        let typ = e.header().entry_type().as_byte();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push((path, typ, data));
    }
    out
}

fn find<'a>(entries: &'a [(String, u8, Vec<u8>)], path: &str) -> &'a (String, u8, Vec<u8>) {
    entries.iter().find(|e| e.0 == path).unwrap_or_else(|| panic!("{path} missing from {entries:?}"))
}

// ---- hard links on the host ----

#[test]
fn a_hard_link_pair_whose_names_sort_unlike_the_walk_builds() {
    // Walk order visits d/a before d-b; byte order puts d-b ('-' < '/') first.
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &one_entry("path = \"src\""));
    fs::create_dir_all(dir.join("blueprints/src/d")).unwrap();
    fs::write(dir.join("blueprints/src/d/a"), "pair\n").unwrap();
    fs::hard_link(dir.join("blueprints/src/d/a"), dir.join("blueprints/src/d-b")).unwrap();
    ok(cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]));
    let entries = layer_entries(&dir);
    for p in ["d/a", "d-b"] {
        let e = find(&entries, p);
        assert_eq!((e.1, e.2.as_slice()), (b'0', &b"pair\n"[..]), "{p} should be a regular file: {entries:?}");
    }
}

#[test]
fn host_hard_links_do_not_shape_the_input_a_cp_r_copy_locks_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let bp = one_entry("path = \"src\"");
    let linked = project(&tmp.path().join("a"), &bp);
    let src = linked.join("blueprints/src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("x"), "shared bytes\n").unwrap();
    fs::hard_link(src.join("x"), src.join("y")).unwrap();
    fs::hard_link(src.join("x"), src.join("sub/z")).unwrap();
    fs::write(src.join("w"), "alone\n").unwrap();
    // The same tree copied without -H: three independent files.
    let copied = project(&tmp.path().join("b"), &bp);
    let st = Command::new("cp").arg("-r").arg(&src).arg(copied.join("blueprints/src")).status().unwrap();
    assert!(st.success());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(copied.join("blueprints/src/y")).unwrap().nlink(), 1, "cp -r kept a link");
    ok(cmd(tmp.path(), &linked, &["lock", "blueprints/app.toml"]));
    ok(cmd(tmp.path(), &copied, &["lock", "blueprints/app.toml"]));
    let lock_a = fs::read_to_string(linked.join("blueprints/app.lock")).unwrap();
    let lock_b = fs::read_to_string(copied.join("blueprints/app.lock")).unwrap();
    assert_eq!(lock_a, lock_b, "the linked tree and its cp -r copy must lock to the same input, layers and image");
    // The documented result: every name is a regular file with its bytes.
    let entries = layer_entries(&linked);
    for p in ["x", "y", "sub/z"] {
        let e = find(&entries, p);
        assert_eq!((e.1, e.2.as_slice()), (b'0', &b"shared bytes\n"[..]), "{p}: {entries:?}");
    }
}

#[test]
fn stripping_the_file_of_a_hard_link_pair_keeps_the_other_name() {
    let tmp = tempfile::tempdir().unwrap();
    let bp = format!("{}[strip]\npaths = [\"a/x\"]\n", one_entry("tar = \"pair.tar\""));
    let dir = project(tmp.path(), &bp);
    let mut t = file("a/x", b"kept\n");
    t.extend_from_slice(&header("b/y", b'1', 0, "a/x"));
    t.extend_from_slice(&header("c/z", b'1', 0, "a/x"));
    t.extend(end());
    fs::write(dir.join("blueprints/pair.tar"), t).unwrap();
    ok(cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]));
    let entries = layer_entries(&dir);
    assert!(entries.iter().all(|e| e.0 != "a/x"), "a/x was stripped: {entries:?}");
    let y = find(&entries, "b/y");
    assert_eq!((y.1, y.2.as_slice()), (b'0', &b"kept\n"[..]), "the first surviving name is the file: {entries:?}");
    let z = find(&entries, "c/z");
    assert_eq!(z.1, b'1', "{entries:?}");
}

// ---- hostile tars ----

#[test]
fn a_tar_size_of_2_pow_62_is_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &one_entry("tar = \"huge.tar\""));
    let mut size = [0u8; 12];
    size[0] = 0x80; // base-256
    size[4..].copy_from_slice(&(1u64 << 62).to_be_bytes());
    let mut t = header_raw("huge", b'0', size, "").to_vec();
    t.extend_from_slice(&[0u8; 4096]);
    fs::write(dir.join("blueprints/huge.tar"), t).unwrap();
    refused(tmp.path(), &dir, &["lock", "blueprints/app.toml"], &["huge.tar", "huge", "4611686018427387904", "cap"]);
}

#[test]
fn a_gzip_bomb_past_the_cap_is_refused_naming_input_and_cap() {
    // 2049 MiB of zeros in one entry, ~2 MB compressed: one gzip member for
    // the header, then the same member of 1 MiB of zeros again and again.
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &one_entry("tar = \"bomb.tar.gz\""));
    let mib = gzip(&vec![0u8; 1 << 20]);
    let mut gz = gzip(&header("bomb", b'0', 2049 << 20, ""));
    for _ in 0..2049 {
        gz.extend_from_slice(&mib);
    }
    gz.extend(gzip(&end()));
    assert!(gz.len() < 8 << 20, "{}", gz.len());
    fs::write(dir.join("blueprints/bomb.tar.gz"), gz).unwrap();
    refused(tmp.path(), &dir, &["lock", "blueprints/app.toml"], &["bomb.tar.gz", "bomb", "cap of 2147483648 bytes"]);
}

#[test]
fn a_tar_truncated_on_a_block_boundary_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &one_entry("tar = \"cut.tar\""));
    let mut t = file("a", b"first\n");
    t.extend(file("b", b"second\n"));
    // No end-of-archive blocks: the tar stops where a header should be.
    fs::write(dir.join("blueprints/cut.tar"), &t).unwrap();
    refused(tmp.path(), &dir, &["lock", "blueprints/app.toml"], &["cut.tar", "truncated"]);
    // Cut inside an entry's data, on a block boundary: also refused.
    let mut t = file("cutfile", &[7u8; 2048]);
    t.truncate(1024);
    fs::write(dir.join("blueprints/cut.tar"), &t).unwrap();
    refused(tmp.path(), &dir, &["lock", "blueprints/app.toml"], &["cut.tar", "truncated", "cutfile"]);
}

#[test]
fn a_file_through_a_symlink_in_a_tar_is_refused_at_lock_and_build() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &one_entry("tar = \"walk.tar\""));
    let tar_path = dir.join("blueprints/walk.tar");
    let mut hostile = header("l", b'2', 0, "/etc").to_vec();
    hostile.extend(file("l/passwd", b"root::0:0::/:/bin/sh\n"));
    hostile.extend(end());
    fs::write(&tar_path, &hostile).unwrap();
    refused(tmp.path(), &dir, &["lock", "blueprints/app.toml"], &["walk.tar", "l/passwd", "symlink"]);
    // The other order (file first, then the symlink replacing its directory).
    let mut t = file("l/passwd", b"x\n");
    t.extend_from_slice(&header("l", b'2', 0, "/etc"));
    t.extend(end());
    fs::write(&tar_path, &t).unwrap();
    refused(tmp.path(), &dir, &["lock", "blueprints/app.toml"], &["walk.tar", "l/passwd", "symlink"]);
    // build: lock a harmless tar, then swap in the hostile one and pin it in
    // the lock (as a lock written by an older moat would): build refuses it
    // while reading the input, naming the entry.
    let mut benign = file("l/passwd", b"fine\n");
    benign.extend(end());
    fs::write(&tar_path, &benign).unwrap();
    ok(cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]));
    let lock_path = dir.join("blueprints/app.lock");
    let lock = fs::read_to_string(&lock_path).unwrap();
    fs::write(&tar_path, &hostile).unwrap();
    let sha = |b: &[u8]| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b))
    };
    let lock = lock.replace(&sha(&benign), &sha(&hostile));
    assert!(lock.contains(&sha(&hostile)));
    fs::write(&lock_path, lock).unwrap();
    refused(tmp.path(), &dir, &["build", "blueprints/app.toml"], &["walk.tar", "l/passwd", "symlink"]);
}

// ---- hostile .debs ----

fn tiny_data_tar_gz() -> Vec<u8> {
    let mut t = file("usr/share/x", b"x\n");
    t.extend(end());
    gzip(&t)
}

#[test]
fn a_deb_with_an_out_of_range_gnu_name_offset_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &one_entry("deb = \"bad.deb\""));
    let data = tiny_data_tar_gz();
    let deb = ar(&[("debian-binary", b"2.0\n"), ("/9999", b"xx"), ("data.tar.gz", &data)]);
    fs::write(dir.join("blueprints/bad.deb"), deb).unwrap();
    refused(tmp.path(), &dir, &["lock", "blueprints/app.toml"], &["bad.deb", "/9999"]);
    // A size larger than the file is refused too (it is never allocated).
    let mut deb = ar(&[("debian-binary", b"2.0\n")]);
    deb.extend_from_slice(
        format!("{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", "data.tar.gz", 0, 0, 0, 100644, 9999999999u64).as_bytes(),
    );
    deb.extend_from_slice(&data);
    fs::write(dir.join("blueprints/bad.deb"), deb).unwrap();
    refused(tmp.path(), &dir, &["lock", "blueprints/app.toml"], &["bad.deb", "data.tar.gz", "9999999999"]);
}

#[test]
fn a_zero_size_ar_member_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &one_entry("deb = \"empty.deb\""));
    let deb = ar(&[("debian-binary", b"2.0\n"), ("control.tar.gz", b""), ("data.tar.gz", b"")]);
    fs::write(dir.join("blueprints/empty.deb"), deb).unwrap();
    refused(tmp.path(), &dir, &["lock", "blueprints/app.toml"], &["empty.deb", "control.tar.gz", "empty"]);
    // A well-formed one locks (the check refuses only what is wrong).
    let ctl = gzip(&{
        let mut t = file("control", b"Package: x\n");
        t.extend(end());
        t
    });
    let deb = ar(&[("debian-binary", b"2.0\n"), ("control.tar.gz", &ctl), ("data.tar.gz", &tiny_data_tar_gz())]);
    fs::write(dir.join("blueprints/empty.deb"), deb).unwrap();
    ok(cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]));
    assert_eq!(find(&layer_entries(&dir), "usr/share/x").2, b"x\n");
}
