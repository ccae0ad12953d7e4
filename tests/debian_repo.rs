//! Hermetic Debian tests: a tiny repository built here (dpkg-deb packages,
//! InRelease signed by a throwaway gpg key) served on loopback; lock and
//! materialize against it. Covers alternatives + Provides, exclusion errors
//! with the chain, a tampered package, a bad signature, and a Packages index
//! that does not match the signed Release.
#[path = "common/debian.rs"]
mod debian_common;

use debian_common::{serve, Pkg, Repo};
use moat_builder::debian::{self, DebianError, DebianSpec, KeyringSpec};
use moat_builder::layer::tree::Kind;
use std::path::Path;
use std::sync::Mutex;

/// MOAT_DEBIAN_MIRROR and MOAT_HOME are process-wide: one test at a time.
static ENV: Mutex<()> = Mutex::new(());

fn file(path: &'static str, body: &str, mode: u32) -> (&'static str, Vec<u8>, u32) {
    (path, body.as_bytes().to_vec(), mode)
}

/// Builds and publishes the test repository under `dir`, returns it with the server URL.
fn repo(dir: &Path, suite: &str) -> (Repo, String) {
    let mut r = Repo::new(dir, suite);
    r.add(&Pkg {
        name: "app",
        version: "1.0",
        fields: "Depends: libfoo (>= 1.0), awk, usrmerge | usr-is-merged\n",
        files: vec![file("bin/app", "#!/bin/sh\necho app\n", 0o755)],
        symlinks: vec![],
    });
    r.add(&Pkg {
        name: "libfoo",
        version: "1.2",
        fields: "Multi-Arch: same\n",
        files: vec![file("lib/x86_64-linux-gnu/libfoo.so.1.2", "ELF", 0o644)],
        symlinks: vec![("lib/x86_64-linux-gnu/libfoo.so.1", "libfoo.so.1.2")],
    });
    r.add(&Pkg {
        name: "mawk",
        version: "1.3",
        fields: "Provides: awk\nPriority: required\n",
        files: vec![file("usr/bin/mawk", "mawk", 0o755)],
        symlinks: vec![],
    });
    r.add(&Pkg {
        name: "gawk",
        version: "5.2",
        fields: "Provides: awk\n",
        files: vec![file("usr/bin/gawk", "gawk", 0o755)],
        symlinks: vec![],
    });
    r.add(&Pkg {
        name: "usrmerge",
        version: "37",
        fields: "Depends: perl\n",
        files: vec![file("usr/lib/usrmerge/convert", "x", 0o755)],
        symlinks: vec![],
    });
    r.add(&Pkg {
        name: "usr-is-merged",
        version: "37",
        fields: "",
        files: vec![file("usr/share/doc/usr-is-merged/README", "merged", 0o644)],
        symlinks: vec![],
    });
    r.add(&Pkg {
        name: "perl",
        version: "5.36",
        fields: "",
        files: vec![file("usr/bin/perl", "perl", 0o755)],
        symlinks: vec![],
    });
    r.add(&Pkg {
        name: "tool",
        version: "1",
        fields: "Depends: helper\n",
        files: vec![file("usr/bin/tool", "t", 0o755)],
        symlinks: vec![],
    });
    r.add(&Pkg {
        name: "helper",
        version: "1",
        fields: "Depends: make (>= 4)\n",
        files: vec![file("usr/bin/helper", "h", 0o755)],
        symlinks: vec![],
    });
    r.add(&Pkg {
        name: "make",
        version: "4.3",
        fields: "",
        files: vec![file("usr/bin/make", "m", 0o755)],
        symlinks: vec![],
    });
    r.publish();
    let url = serve(&r.root);
    (r, url)
}

fn spec(r: &Repo, packages: &[&str]) -> DebianSpec {
    DebianSpec {
        suite: r.suite.clone(),
        suites: Some(vec![r.suite.clone()]),
        components: vec!["main".into()],
        architecture: "amd64".into(),
        packages: packages.iter().map(|s| s.to_string()).collect(),
        exclude: vec![],
        essential: true,
        keyring: Some(KeyringSpec { path: r.keyring.clone(), sha256: r.keyring_sha256() }),
        max_layers: None,
    }
}

fn setup(tmp: &Path, url: &str) {
    std::env::set_var("MOAT_DEBIAN_MIRROR", url);
    std::env::set_var("MOAT_HOME", tmp.join("home"));
    debian::clear_memo();
}

#[test]
fn lock_and_build_with_alternatives_and_provides() {
    let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let (r, url) = repo(tmp.path(), "moat-test");
    setup(tmp.path(), &url);
    let s = spec(&r, &["app"]);
    let lock = debian::resolve(&s, Path::new("/")).expect("resolve");
    let names: Vec<&str> = lock.packages.iter().map(|p| p.name.as_str()).collect();
    // awk -> mawk (Priority: required beats gawk); usrmerge | usr-is-merged -> usr-is-merged (needs nothing).
    assert_eq!(names, ["app", "libfoo", "mawk", "usr-is-merged"]);
    assert_eq!(lock.packages[0].depends, ["libfoo", "mawk", "usr-is-merged"]);
    assert_eq!(lock.packages[1].path, "pool/main/libfoo_1.2_amd64.deb");
    assert_eq!(lock.suites.len(), 1);
    // Resolution is deterministic.
    assert_eq!(debian::resolve(&s, Path::new("/")).unwrap(), lock);

    let layers = debian::plan_layers(&s, &lock).unwrap();
    let mut all = std::collections::BTreeMap::new();
    for l in &layers {
        for e in debian::materialize(l, &lock).expect("materialize").iter() {
            all.insert(e.path.clone(), e.clone());
        }
    }
    assert!(matches!(all["usr/bin/app"].kind, Kind::File { .. }), "bin/app is rewritten to usr/bin/app");
    assert_eq!(all["usr/bin/app"].mode, 0o755);
    assert_eq!(all["bin"].kind, Kind::Symlink("usr/bin".into()));
    assert_eq!(all["usr/lib/x86_64-linux-gnu/libfoo.so.1"].kind, Kind::Symlink("libfoo.so.1.2".into()));
    assert_eq!(all["usr/bin/awk"].kind, Kind::Symlink("/etc/alternatives/awk".into()));
    assert_eq!(all["etc/alternatives/awk"].kind, Kind::Symlink("/usr/bin/mawk".into()));
    assert!(all.contains_key("var/lib/dpkg/info/libfoo:amd64.list"), "Multi-Arch: same gets the :amd64 suffix");
    match &all["var/lib/dpkg/status"].kind {
        Kind::File { content: moat_builder::layer::tree::Content::Bytes(b), .. } => {
            let s = String::from_utf8_lossy(b);
            assert_eq!(s.matches("Status: install ok installed").count(), 4);
        }
        k => panic!("status is {k:?}"),
    }
    // The cache holds each package under its sha256.
    for p in &lock.packages {
        assert!(tmp.path().join("home/cache/debs").join(&p.sha256).is_file());
    }
}

#[test]
fn excluded_dependency_shows_the_chain() {
    let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let (r, url) = repo(tmp.path(), "moat-test");
    setup(tmp.path(), &url);
    let err = debian::resolve(&spec(&r, &["tool"]), Path::new("/")).unwrap_err();
    assert!(matches!(err, DebianError::Excluded { .. }), "{err:?}");
    assert_eq!(err.to_string(), "package make is excluded but required: tool -> helper -> make");
    let mut s = spec(&r, &["app"]);
    s.exclude = vec!["mawk".into()];
    let lock = debian::resolve(&s, Path::new("/")).unwrap();
    assert!(lock.packages.iter().any(|p| p.name == "gawk"), "with mawk excluded, awk falls back to gawk");
    s.exclude = vec!["*awk".into()];
    let err = debian::resolve(&s, Path::new("/")).unwrap_err().to_string();
    assert!(err.contains("excluded but required: app -> "), "{err}");
}

#[test]
fn tampered_package_is_refused_and_discarded() {
    let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let (r, url) = repo(tmp.path(), "moat-test");
    setup(tmp.path(), &url);
    let s = spec(&r, &["app"]);
    let lock = debian::resolve(&s, Path::new("/")).unwrap();
    let libfoo = lock.packages.iter().find(|p| p.name == "libfoo").unwrap();
    // The mirror now serves different bytes (same size) for libfoo.
    let pool = r.root.join(&libfoo.path);
    let mut b = std::fs::read(&pool).unwrap();
    let n = b.len();
    b[n - 1] ^= 0xff;
    std::fs::write(&pool, &b).unwrap();
    let layers = debian::plan_layers(&s, &lock).unwrap();
    let err =
        layers.iter().find_map(|l| debian::materialize(l, &lock).err()).expect("a tampered package must be refused");
    assert!(matches!(err, DebianError::HashMismatch { .. }), "{err:?}");
    let debs = tmp.path().join("home/cache/debs");
    assert!(!debs.join(&libfoo.sha256).exists(), "the bad file must not enter the cache");
    assert!(!debs.join(format!("{}.partial", libfoo.sha256)).exists(), "the bad download is discarded");
    // A corrupted cache entry is discarded and fetched again from an honest mirror.
    b[n - 1] ^= 0xff;
    std::fs::write(&pool, &b).unwrap();
    std::fs::write(debs.join(&libfoo.sha256), b"garbage").unwrap();
    debian::clear_memo();
    for l in &layers {
        debian::materialize(l, &lock).expect("honest mirror");
    }
    assert_eq!(std::fs::read(debs.join(&libfoo.sha256)).unwrap(), b);
}

#[test]
fn bad_signature_is_refused() {
    let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let (r, url) = repo(tmp.path(), "moat-test");
    setup(tmp.path(), &url);
    let inrel = r.root.join("dists/moat-test/InRelease");
    let good = std::fs::read_to_string(&inrel).unwrap();
    // A modified signed text.
    std::fs::write(&inrel, good.replace("Origin: moat-test", "Origin: moat-evil")).unwrap();
    let err = debian::resolve(&spec(&r, &["app"]), Path::new("/")).unwrap_err();
    assert!(matches!(err, DebianError::Signature(_)), "{err:?}");
    // A valid signature by a key that is not in the keyring.
    std::fs::write(&inrel, &good).unwrap();
    let other = Repo::new(&tmp.path().join("other"), "moat-test");
    let mut s = spec(&r, &["app"]);
    s.keyring = Some(KeyringSpec { path: other.keyring.clone(), sha256: other.keyring_sha256() });
    let err = debian::resolve(&s, Path::new("/")).unwrap_err();
    assert!(matches!(err, DebianError::Signature(_)), "{err:?}");
    // A keyring that does not match its pinned sha256.
    s.keyring = Some(KeyringSpec { path: r.keyring.clone(), sha256: "0".repeat(64) });
    assert!(matches!(debian::resolve(&s, Path::new("/")).unwrap_err(), DebianError::Keyring(_)));
    // And the honest setup still works.
    debian::resolve(&spec(&r, &["app"]), Path::new("/")).expect("good signature");
}

#[test]
fn packages_not_matching_release_is_refused() {
    let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let (r, url) = repo(tmp.path(), "moat-test");
    setup(tmp.path(), &url);
    let gz = r.root.join("dists/moat-test/main/binary-amd64/Packages.gz");
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(
        &mut e,
        format!(
            "{}Package: evil\nVersion: 1\nArchitecture: amd64\nFilename: pool/evil.deb\nSize: 1\nSHA256: {}\n\n",
            r.stanzas,
            "0".repeat(64)
        )
        .as_bytes(),
    )
    .unwrap();
    std::fs::write(&gz, e.finish().unwrap()).unwrap();
    let err = debian::resolve(&spec(&r, &["app"]), Path::new("/")).unwrap_err();
    assert!(matches!(err, DebianError::IndexMismatch { .. }), "{err:?}");
}

/// The `moat` binary end to end against the loopback repository: lock, build
/// (twice, same digest), sbom, and a tampered mirror refused by a cold build.
#[test]
fn moat_lock_build_sbom_against_loopback_repo() {
    let tmp = tempfile::tempdir().unwrap();
    let (r, url) = repo(tmp.path(), "moat-test");
    let proj = tmp.path().join("proj");
    std::fs::create_dir_all(proj.join("blueprints")).unwrap();
    std::fs::copy(&r.keyring, proj.join("blueprints/keyring.gpg")).unwrap();
    let bp = proj.join("blueprints/deb.toml");
    std::fs::write(
        &bp,
        format!(
            "name = \"debtest\"\nepoch = 0\n[base]\nimage = \"scratch\"\n[debian]\nsuite = \"moat-test\"\nsuites = [\"moat-test\"]\npackages = [\"app\"]\nessential = false\nkeyring = {{ path = \"keyring.gpg\", sha256 = \"{}\" }}\n[config]\nentrypoint = [\"/usr/bin/app\"]\n",
            r.keyring_sha256()
        ),
    )
    .unwrap();
    let moat = |home: &str, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_moat"))
            .args(args)
            .arg("--store")
            .arg(tmp.path().join("store"))
            .env("MOAT_DEBIAN_MIRROR", &url)
            .env("MOAT_HOME", tmp.path().join(home))
            .current_dir(&proj)
            .output()
            .unwrap()
    };
    let out = moat("h1", &["-q", "lock", "blueprints/deb.toml"]);
    assert!(out.status.success(), "moat lock: {}", String::from_utf8_lossy(&out.stderr));
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(digest.starts_with("debtest@sha256:"), "{digest}");
    let lock = std::fs::read_to_string(proj.join("blueprints/deb.lock")).unwrap();
    assert!(
        lock.contains("pool/main/libfoo_1.2_amd64.deb") && !lock.contains("127.0.0.1"),
        "the lock pins pool paths, never a host"
    );
    let out = moat("h2", &["-q", "build", "blueprints/deb.toml"]);
    assert!(out.status.success(), "moat build: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), digest, "a cold rebuild gives the same digest");
    let out = moat("h2", &["sbom", "debtest", "-o", "sbom.json"]);
    assert!(out.status.success(), "moat sbom: {}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(proj.join("sbom.json")).unwrap()).unwrap();
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    let mut names: Vec<&str> =
        doc["packages"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["app", "libfoo", "mawk", "usr-is-merged"]);
    // A mirror serving a different file for a locked package: a cold build refuses it.
    let pool = r.root.join("pool/main/libfoo_1.2_amd64.deb");
    let mut b = std::fs::read(&pool).unwrap();
    b[100] ^= 1;
    std::fs::write(&pool, &b).unwrap();
    let out = moat("h3", &["-q", "build", "blueprints/deb.toml"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("libfoo") && err.contains("hash mismatch"), "{err}");
}
