//! Helpers for the hermetic Debian tests: a tiny Debian-format repository
//! (packages built with dpkg-deb, InRelease signed with a throwaway gpg key)
//! served over HTTP on loopback by a small std-only server.
#![allow(dead_code)]
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn need(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "this test needs `{tool}` (install it with scripts/install-deps.sh)");
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A package to build: name, version, control fields, files (path, bytes, mode).
pub struct Pkg<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub fields: &'a str,
    pub files: Vec<(&'a str, Vec<u8>, u32)>,
    pub symlinks: Vec<(&'a str, &'a str)>,
}

/// A repository under `root` with suite `suite` (component main, amd64).
pub struct Repo {
    pub root: PathBuf,
    pub suite: String,
    pub gnupg: PathBuf,
    pub keyring: PathBuf,
    pub stanzas: String,
}

impl Repo {
    pub fn new(root: &Path, suite: &str) -> Repo {
        need("dpkg-deb");
        need("gpg");
        let gnupg = root.join("gnupg");
        std::fs::create_dir_all(&gnupg).unwrap();
        let mut perms = std::fs::metadata(&gnupg).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o700);
        std::fs::set_permissions(&gnupg, perms).unwrap();
        let gpg = |args: &[&str]| {
            run(Command::new("gpg")
                .env("GNUPGHOME", &gnupg)
                .args(["--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""])
                .args(args))
        };
        gpg(&["--quick-gen-key", "moat test archive <test@moat.invalid>", "ed25519", "sign", "1d"]);
        let keyring = root.join("keyring.gpg");
        std::fs::write(&keyring, gpg(&["--export"])).unwrap();
        let www = root.join("www");
        std::fs::create_dir_all(www.join("pool/main")).unwrap();
        Repo { root: www, suite: suite.into(), gnupg, keyring, stanzas: String::new() }
    }

    /// Builds a .deb with dpkg-deb and adds its stanza to the index.
    pub fn add(&mut self, p: &Pkg) -> PathBuf {
        let work = self.root.parent().unwrap().join(format!("build-{}", p.name));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(work.join("DEBIAN")).unwrap();
        let control = format!("Package: {}\nVersion: {}\nArchitecture: amd64\nMaintainer: Test <t@moat.invalid>\nDescription: test package {}\n{}", p.name, p.version, p.name, p.fields);
        std::fs::write(work.join("DEBIAN/control"), &control).unwrap();
        for (path, bytes, mode) in &p.files {
            let f = work.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, bytes).unwrap();
            let mut perms = std::fs::metadata(&f).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, *mode);
            std::fs::set_permissions(&f, perms).unwrap();
        }
        for (path, target) in &p.symlinks {
            let f = work.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, &f).unwrap();
        }
        let rel = format!("pool/main/{}_{}_amd64.deb", p.name, p.version);
        let deb = self.root.join(&rel);
        run(Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&work).arg(&deb));
        let bytes = std::fs::read(&deb).unwrap();
        let prio = if p.fields.contains("Priority:") { "" } else { "Priority: optional\n" };
        self.stanzas += &format!(
            "{control}Filename: {rel}\nSize: {}\nSHA256: {}\n{prio}\n",
            bytes.len(),
            hex::encode(Sha256::digest(&bytes))
        );
        deb
    }

    /// Writes Packages(.gz), Release and the signed InRelease.
    pub fn publish(&self) {
        let dists = self.root.join("dists").join(&self.suite);
        let bin = dists.join("main/binary-amd64");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("Packages"), &self.stanzas).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(self.stanzas.as_bytes()).unwrap();
        std::fs::write(bin.join("Packages.gz"), gz.finish().unwrap()).unwrap();
        let mut sums = String::new();
        for name in ["main/binary-amd64/Packages", "main/binary-amd64/Packages.gz"] {
            let b = std::fs::read(dists.join(name)).unwrap();
            sums += &format!(" {} {} {}\n", hex::encode(Sha256::digest(&b)), b.len(), name);
        }
        let release = format!("Origin: moat-test\nSuite: {s}\nCodename: {s}\nArchitectures: amd64\nComponents: main\nDate: Thu, 01 Jan 2026 00:00:00 UTC\nSHA256:\n{sums}", s = self.suite);
        std::fs::write(dists.join("Release"), &release).unwrap();
        let _ = std::fs::remove_file(dists.join("InRelease"));
        run(Command::new("gpg")
            .env("GNUPGHOME", &self.gnupg)
            .args(["--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", "", "--clearsign", "-o"])
            .arg(dists.join("InRelease"))
            .arg(dists.join("Release")));
    }

    pub fn keyring_sha256(&self) -> String {
        hex::encode(Sha256::digest(std::fs::read(&self.keyring).unwrap()))
    }
}

/// Serves `root` over HTTP/1.0 on 127.0.0.1 (GET only, 404 for missing files,
/// `..` refused). Returns the base URL; the server thread lives until exit.
pub fn serve(root: &Path) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let root = root.to_path_buf();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let root = root.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    return;
                }
                let mut h = String::new();
                while r.read_line(&mut h).map(|n| n > 2).unwrap_or(false) {
                    h.clear();
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let body = if path.contains("..") {
                    None
                } else {
                    std::fs::read(root.join(path.trim_start_matches('/'))).ok()
                };
                let _ = match body {
                    Some(b) => s
                        .write_all(format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", b.len()).as_bytes())
                        .and_then(|_| s.write_all(&b)),
                    None => s.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
                };
                let _ = s.read(&mut [0u8; 1]);
            });
        }
    });
    format!("http://{addr}")
}
