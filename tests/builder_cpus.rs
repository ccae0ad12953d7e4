//! Layer bytes do not depend on the CPU that builds them. The pinned deflate
//! (zlib-rs) picks vector code paths at run time (SSE2, AVX2, AVX-512); a
//! lock written on this machine must be reproduced, digest for digest, by
//! `moat build` running on emulated CPUs without AVX-512 and without AVX2
//! (qemu-user). `moat build` itself refuses any layer that differs from the
//! lock, so a passing build is the proof; the manifest is compared as well.
mod common;
use common::*;
use std::fs;
use std::path::Path;
use std::process::Command;

/// A few MiB of text-like files (long matches, short matches, literals) and
/// incompressible tails: every deflate path gets work.
fn make_tree(root: &Path) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let words: Vec<Vec<u8>> =
        (0..800).map(|_| (0..3 + next() % 8).map(|_| b'a' + (next() % 26) as u8).collect()).collect();
    for i in 0..300 {
        let dir = root.join(format!("pkg{:02}", i % 12));
        fs::create_dir_all(&dir).unwrap();
        let len = 2_000 + (next() % 14_000) as usize;
        let mut data = Vec::with_capacity(len + 600);
        while data.len() < len {
            data.extend_from_slice(&words[(next() % words.len() as u64) as usize]);
            data.push(if next() % 10 == 0 { b'\n' } else { b' ' });
        }
        if i % 5 == 0 {
            data.extend((0..500).map(|_| next() as u8));
        }
        fs::write(dir.join(format!("f{i:04}.txt")), data).unwrap();
    }
}

const BLUEPRINT: &str = r#"
name = "cpus"
[[layer]]
name = "tree"
[[layer.entry]]
path = "tree"
dest = "/app"
"#;

#[test]
fn emulated_cpus_without_avx_reproduce_the_lock() {
    require_tool("qemu-x86_64");
    let dir = tempfile::tempdir().unwrap();
    let proj = dir.path().join("proj");
    make_tree(&proj.join("tree"));
    fs::write(proj.join("cpus.toml"), BLUEPRINT).unwrap();
    let mut lock = moat(&dir.path().join("home-native"));
    lock.current_dir(&proj).args(["-q", "lock", "cpus.toml", "--store"]).arg(dir.path().join("store-native"));
    let native = ok(lock).trim().to_string();
    assert!(native.starts_with("cpus@sha256:"), "{native}");

    // qemu64: SSE2 only. Haswell: AVX2, no AVX-512 (this host has AVX-512).
    for cpu in ["qemu64", "Haswell"] {
        let mut c = Command::new("qemu-x86_64");
        c.current_dir(&proj)
            .args(["-cpu", cpu])
            .arg(moat_bin())
            .args(["-q", "build", "cpus.toml", "--store"])
            .arg(dir.path().join(format!("store-{cpu}")))
            .env("MOAT_HOME", dir.path().join(format!("home-{cpu}")))
            .env_remove("MOAT_STORE")
            .env_remove("RUST_LOG");
        let built = ok(c).trim().to_string();
        assert_eq!(built, native, "a build on the emulated {cpu} CPU made other bytes");
    }
}
