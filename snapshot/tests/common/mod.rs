//! Helpers for the snapshot tests (this crate's and the `moat` scenario
//! tests in the root `tests/`, which include this file by path):
//! deterministic data, a tree with every file type, a description of a tree
//! (kinds, modes, owners, contents, symlink targets, hardlink groups) to
//! compare a restore with its source, and a check of a whole repository.
//! Guards the tests against trusting what they check: comparisons are of
//! what is on disk, never of what the engine reports.
#![allow(dead_code)]
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

/// Backup options for sandbox `name`, the rest default.
pub fn opts(name: &str) -> moat_snapshot::BackupOptions {
    moat_snapshot::BackupOptions { sandbox: name.into(), ..Default::default() }
}

/// A scratch directory with an empty repository at `repo/` in it.
pub fn setup() -> (tempfile::TempDir, moat_snapshot::Repo) {
    let t = tempfile::tempdir().unwrap();
    let repo = moat_snapshot::Repo::open(&t.path().join("repo")).unwrap();
    (t, repo)
}

/// Deterministic pseudo-random bytes (xorshift64*), incompressible.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A workspace with every file type: dirs (one empty, odd modes), regular
/// files (empty, small, 1 MiB, setuid, odd owner), symlinks (relative,
/// absolute, dangling, to a dir), a hardlink pair, a FIFO and a socket.
pub fn every_type(root: &Path) {
    fs::create_dir_all(root.join("src/deep/er")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    chmod(&root.join("empty"), 0o750);
    fs::write(root.join("src/main.rs"), b"fn main() {}\n").unwrap();
    fs::write(root.join("src/deep/er/blob.bin"), data(1, 1 << 20)).unwrap();
    fs::write(root.join("zero"), b"").unwrap();
    fs::write(root.join("tool.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    chmod(&root.join("tool.sh"), 0o755);
    fs::write(root.join("suid"), b"x").unwrap();
    std::os::unix::fs::chown(root.join("suid"), Some(1234), Some(5678)).unwrap();
    chmod(&root.join("suid"), 0o4750);
    fs::write(root.join("private"), b"secret-free but private").unwrap();
    chmod(&root.join("private"), 0o600);
    std::os::unix::fs::chown(root.join("src/deep"), Some(1000), Some(1000)).unwrap();
    symlink("src/main.rs", root.join("link-rel")).unwrap();
    symlink("/etc/passwd", root.join("link-abs")).unwrap();
    symlink("nowhere/at/all", root.join("link-dangling")).unwrap();
    symlink("src", root.join("link-dir")).unwrap();
    std::os::unix::fs::lchown(root.join("link-rel"), Some(42), Some(43)).unwrap();
    fs::write(root.join("hard-a"), b"shared inode\n").unwrap();
    fs::hard_link(root.join("hard-a"), root.join("src/hard-b")).unwrap();
    let fifo = std::ffi::CString::new(root.join("pipe").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
}

/// path -> description; plus the hardlink groups (sets of paths sharing an inode).
/// Works at any depth: every directory is reached through its open
/// descriptor (`/proc/self/fd/N/name`), never through a path longer than
/// PATH_MAX.
pub fn describe(root: &Path) -> (BTreeMap<String, String>, BTreeSet<Vec<String>>) {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    fn walk(dir: &fs::File, rel: &str, out: &mut BTreeMap<String, String>, inodes: &mut BTreeMap<u64, Vec<String>>) {
        let base = fd_path(dir);
        let mut names: Vec<_> = fs::read_dir(&base).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for n in names {
            let p = base.join(&n);
            let n = n.to_string_lossy();
            let rel = if rel.is_empty() { n.into_owned() } else { format!("{rel}/{n}") };
            let m = fs::symlink_metadata(&p).unwrap();
            let own = format!("{:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid());
            let ft = m.file_type();
            let d = if ft.is_dir() {
                walk(&open_dir(&p), &rel, out, inodes);
                format!("dir {own}")
            } else if ft.is_symlink() {
                format!("symlink -> {} {}:{}", fs::read_link(&p).unwrap().display(), m.uid(), m.gid())
            } else if ft.is_file() {
                if m.nlink() > 1 {
                    inodes.entry(m.ino()).or_default().push(rel.clone());
                }
                format!("file {own} {}", hex::encode(Sha256::digest(fs::read(&p).unwrap())))
            } else {
                "special".to_string()
            };
            out.insert(rel, d);
        }
    }
    let rm = fs::metadata(root).unwrap();
    out.insert(".".into(), format!("dir {:o} {}:{}", rm.mode() & 0o7777, rm.uid(), rm.gid()));
    walk(&open_dir(root), "", &mut out, &mut inodes);
    let groups = inodes.into_values().filter(|v| v.len() > 1).collect();
    (out, groups)
}

/// What a restore makes of a description: regular files lose their setuid
/// and setgid bits (directories keep theirs).
pub fn as_restored(
    d: (BTreeMap<String, String>, BTreeSet<Vec<String>>),
) -> (BTreeMap<String, String>, BTreeSet<Vec<String>>) {
    let (mut m, l) = d;
    for v in m.values_mut() {
        if let Some(rest) = v.strip_prefix("file ") {
            let (mode, tail) = rest.split_once(' ').unwrap();
            let mode = u32::from_str_radix(mode, 8).unwrap() & !0o6000;
            *v = format!("file {mode:o} {tail}");
        }
    }
    (m, l)
}

/// A short path naming the open directory `dir` (however deep it is).
pub fn fd_path(dir: &fs::File) -> std::path::PathBuf {
    use std::os::fd::AsRawFd;
    std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

/// Opens a directory without following a symlink at its last component.
pub fn open_dir(p: &Path) -> fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Builds `depth` nested directories named `name` (a long name makes the
/// path pass PATH_MAX) under `root`, each holding a small file `f` (its
/// content names its depth), and returns the innermost directory, open.
pub fn deep_tree(root: &Path, depth: usize, name: &str) -> fs::File {
    let mut dir = open_dir(root);
    for i in 0..depth {
        let base = fd_path(&dir);
        fs::create_dir(base.join(name)).unwrap();
        fs::write(base.join("f"), format!("depth {i}\n")).unwrap();
        dir = open_dir(&base.join(name));
    }
    dir
}

/// Every manifest in the repository parses and every chunk it names verifies.
pub fn check_repo(repo: &moat_snapshot::Repo) {
    for id in repo.manifests().unwrap() {
        let m = repo.manifest(&id).unwrap();
        for c in m.chunk_ids() {
            repo.chunks().read_chunk(c).unwrap_or_else(|e| panic!("manifest {id}: chunk {c}: {e}"));
        }
    }
}
