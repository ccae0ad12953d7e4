//! The builder's refusals and guarantees, each provoked for real: verify
//! catches a changed source, lint a mutable reference, audit a planted
//! compiler, the store a corrupted blob; bad input gets a located error;
//! a killed build leaves the store valid; a no-op rebuild does no archive work.
mod common;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn project(tmp: &Path, blueprint: &str) -> PathBuf {
    let dir = tmp.join("proj");
    fs::create_dir_all(dir.join("blueprints/src/usr/bin")).unwrap();
    fs::write(dir.join("blueprints/src/usr/bin/app"), "#!/bin/sh\necho app\n").unwrap();
    fs::write(dir.join("blueprints/src/README"), "readme\n").unwrap();
    fs::write(dir.join("blueprints/app.toml"), blueprint).unwrap();
    dir
}

const APP: &str = "name = \"app\"\n[[layer]]\nname = \"files\"\n[[layer.entry]]\npath = \"src\"\n";

fn cmd(tmp: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut c = moat(&tmp.join("home"));
    c.current_dir(dir).args(args);
    c
}

#[test]
fn verify_catches_a_changed_source_and_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), APP);
    ok(cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]));
    // The project's images/ is the default store.
    assert!(dir.join("images/index.json").is_file());
    let out = ok(cmd(tmp.path(), &dir, &["verify", "blueprints/app.toml"]));
    assert!(out.starts_with("ok "), "{out}");
    fs::write(dir.join("blueprints/src/README"), "tampered\n").unwrap();
    let (code, out, err) = run(cmd(tmp.path(), &dir, &["verify", "blueprints/app.toml"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("FAIL") && out.contains("input src"), "{out}");
    assert!(out.contains("first differing path: /README"), "{out}");
    // build refuses too, naming the input, and leaves the old image named.
    let (code, _, err) = run(cmd(tmp.path(), &dir, &["build", "blueprints/app.toml"]));
    assert_ne!(code, 0);
    assert!(err.contains("input src") && err.contains("changed"), "{err}");
}

#[test]
fn lint_catches_a_tag_only_reference_with_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let bp = "name = \"app\"\n\n[base]\nimage = \"docker.io/library/debian:bookworm\"\n";
    let dir = project(tmp.path(), bp);
    let (code, out, _) = run(cmd(tmp.path(), &dir, &["lint"]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("blueprints/app.toml:4:9: "), "{out}");
    assert!(out.contains("no @sha256"), "{out}");
    // A clean, locked project lints clean.
    let dir2 = tmp.path().join("clean");
    fs::create_dir_all(&dir2).unwrap();
    let clean = project(&dir2, APP);
    ok(cmd(tmp.path(), &clean, &["lock", "blueprints/app.toml"]));
    let (code, out, _) = run(cmd(tmp.path(), &clean, &["lint"]));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn lint_flags_a_blueprint_changed_since_its_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), APP);
    ok(cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]));
    let (code, out, _) = run(cmd(tmp.path(), &dir, &["lint"]));
    assert_eq!(code, 0, "{out}");
    // What it asks for now is not what the lock pins.
    fs::write(
        dir.join("blueprints/app.toml"),
        format!("{APP}[[layer.entry]]\npath = \"src/README\"\ndest = \"/README2\"\n"),
    )
    .unwrap();
    let (code, out, _) = run(cmd(tmp.path(), &dir, &["lint"]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("blueprints/app.toml:1:1: ") && out.contains("changed since it was locked"), "{out}");
}

#[test]
fn audit_catches_a_planted_compiler_and_setuid_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), "name = \"app\"\n[strip]\ntoolchain = false\n[[layer]]\n[[layer.entry]]\npath = \"src\"\n[[layer.entry]]\npath = \"gcc\"\ndest = \"/usr/bin/gcc\"\nmode = \"4755\"\n");
    fs::write(dir.join("blueprints/gcc"), "not really a compiler").unwrap();
    ok(cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]));
    let (code, out, _) = run(cmd(tmp.path(), &dir, &["audit", "app"]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("/usr/bin/gcc") && out.contains("C compiler"), "{out}");
    assert!(out.contains("4755 /usr/bin/gcc setuid"), "{out}");
    // With the default strip the same blueprint has no toolchain left.
    let bp =
        fs::read_to_string(dir.join("blueprints/app.toml")).unwrap().replace("toolchain = false", "toolchain = true");
    fs::write(dir.join("blueprints/app.toml"), bp).unwrap();
    ok(cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]));
    let (code, out, _) = run(cmd(tmp.path(), &dir, &["audit", "app", "--json"]));
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["toolchain"].as_array().unwrap().len(), 0);
}

#[test]
fn corrupted_blob_is_detected_on_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), APP);
    let out = ok(cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]));
    assert!(out.starts_with("app@sha256:"));
    let lock = fs::read_to_string(dir.join("blueprints/app.lock")).unwrap();
    let layer = lock
        .lines()
        .find(|l| l.starts_with("digest = "))
        .unwrap()
        .split('"')
        .nth(1)
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let blob = dir.join("images/blobs/sha256").join(&layer);
    let mut bytes = fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    fs::write(&blob, bytes).unwrap();
    let (code, out, err) = run(cmd(tmp.path(), &dir, &["audit", "app"]));
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("corrupt") || err.contains(&layer[..12]), "{err}");
}

#[test]
fn bad_input_gets_a_located_error_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("name = \"app\"\nbogus = 1\n", "app.toml:2:1"),
        ("name = \"app\"\n[[layer]]\n[[layer.entry]]\npath = \"src\"\ndest = \"/../../etc\"\n", "app.toml:5:8"),
        ("name = \"app\"\n[[layer]]\n[[layer.entry]]\ndeb = \"https://example.invalid/x.deb\"\n", "app.toml:4:7"),
        ("name = \"App!\"\n", "app.toml:1:8"),
    ];
    for (bp, at) in cases {
        let dir = tmp.path().join(format!("c{}", at.replace([':', '.'], "_")));
        fs::create_dir_all(&dir).unwrap();
        let dir = project(&dir, bp);
        let (code, _, err) = run(cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]));
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(at), "expected {at} in: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!dir.join("blueprints/app.lock").exists(), "a lock was written for bad input");
    }
}

#[test]
fn each_cause_is_named_once() {
    let tmp = tempfile::tempdir().unwrap();
    let once = |err: &str, what: &str| {
        assert_eq!(err.matches("No such file or directory").count(), 1, "the cause once, in {what}: {err}");
    };
    // A missing blueprint: the path, then the cause.
    let (code, _, err) = run(cmd(tmp.path(), tmp.path(), &["build", "/nonexistent/x.toml"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/x.toml: No such file or directory"), "{err}");
    once(&err, "a missing blueprint");
    // A missing local source, reported through the build's located error.
    let bp = "name = \"app\"\n[[layer]]\n[[layer.entry]]\npath = \"gone\"\n";
    let dir = project(tmp.path(), bp);
    let (code, _, err) = run(cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("gone"), "{err}");
    once(&err, "a missing source");
}

#[test]
fn special_files_and_escaping_symlinks_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), APP);
    let fifo = dir.join("blueprints/src/fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let (code, _, err) = run(cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]));
    assert_eq!(code, 2);
    assert!(err.contains("FIFO") && err.contains("app.toml:5:8"), "{err}");
    fs::remove_file(&fifo).unwrap();
    std::os::unix::fs::symlink("../../../etc/shadow", dir.join("blueprints/src/usr/shadow")).unwrap();
    let (code, _, err) = run(cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]));
    assert_eq!(code, 2);
    assert!(err.contains("points outside the source tree"), "{err}");
}

#[test]
fn deb_and_tar_entries_are_extracted_without_scripts() {
    require_tool("dpkg-deb");
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("pkg");
    fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    fs::create_dir_all(pkg.join("usr/share/hello")).unwrap();
    fs::write(
        pkg.join("DEBIAN/control"),
        "Package: hello-moat\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.invalid>\nDescription: test\n",
    )
    .unwrap();
    fs::write(pkg.join("DEBIAN/postinst"), "#!/bin/sh\ntouch /tmp/postinst-ran\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(pkg.join("DEBIAN/postinst"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(pkg.join("usr/share/hello/greeting"), "hi\n").unwrap();
    let dir = project(tmp.path(), "name = \"app\"\n[[layer]]\n[[layer.entry]]\ndeb = \"hello.deb\"\n");
    let st = Command::new("dpkg-deb")
        .args(["-Zxz", "--root-owner-group", "--build"])
        .arg(&pkg)
        .arg(dir.join("blueprints/hello.deb"))
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    ok(cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]));
    let bundle = tmp.path().join("bundle");
    require_tool("umoci");
    let mut c = Command::new("umoci");
    c.arg("unpack").arg("--image").arg(format!("{}:app", dir.join("images").display())).arg(&bundle);
    ok(c);
    assert_eq!(fs::read_to_string(bundle.join("rootfs/usr/share/hello/greeting")).unwrap(), "hi\n");
    assert!(!bundle.join("rootfs/DEBIAN").exists() && !bundle.join("rootfs/tmp/postinst-ran").exists());
    let lock = fs::read_to_string(dir.join("blueprints/app.lock")).unwrap();
    assert!(lock.contains("kind = \"deb\""), "{lock}");
}

#[test]
fn noop_rebuild_reuses_cached_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), APP);
    ok(cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]));
    let mut c = cmd(tmp.path(), &dir, &["build", "blueprints/app.toml"]);
    c.env("RUST_LOG", "moat_builder=debug");
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("layer cache hit"), "no cache hit on a no-op rebuild: {err}");
    assert!(!err.contains("archiving layer"), "{err}");
}

#[test]
fn killed_build_leaves_the_store_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), APP);
    // A big incompressible file keeps the layer write busy long enough to kill it.
    let mut data = vec![0u8; 96 << 20];
    let mut x: u64 = 7;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    fs::write(dir.join("blueprints/src/big.bin"), &data).unwrap();
    let store = dir.join("images");
    let mut c = cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]);
    let mut child = c.spawn().unwrap();
    // Kill while the layer is being written: wait for a temp blob to appear.
    let tmpdir = store.join(".moat/tmp");
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(20) {
        let layout_ready = store.join("oci-layout").is_file();
        if layout_ready && fs::read_dir(&tmpdir).map(|mut r| r.next().is_some()).unwrap_or(false) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!dir.join("blueprints/app.lock").exists(), "a lock was written by a killed build");
    // Every blob present is whole (named by its content), the index parses.
    for e in fs::read_dir(store.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let bytes = fs::read(e.path()).unwrap();
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            e.file_name().to_str().unwrap(),
            "torn blob in the store"
        );
    }
    let _: serde_json::Value = serde_json::from_str(&fs::read_to_string(store.join("index.json")).unwrap()).unwrap();
    // gc removes the leftover temp file; the build then completes.
    ok(cmd(tmp.path(), &dir, &["gc"]));
    assert_eq!(fs::read_dir(&tmpdir).unwrap().count(), 0);
    let out = ok(cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]));
    assert!(out.starts_with("app@sha256:"));
}

#[test]
fn lint_checks_policies_for_unknown_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), APP);
    ok(cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]));
    fs::create_dir_all(dir.join("policies")).unwrap();
    let baseline = fs::read_to_string(repo().join("policies/baseline.toml")).unwrap();
    fs::write(dir.join("policies/baseline.toml"), &baseline).unwrap();
    let (code, out, _) = run(cmd(tmp.path(), &dir, &["lint"]));
    assert_eq!(code, 0, "the shipped baseline must lint clean: {out}");
    fs::write(dir.join("policies/baseline.toml"), format!("{baseline}\nallow_everything = true\n")).unwrap();
    let (code, out, _) = run(cmd(tmp.path(), &dir, &["lint"]));
    assert_eq!(code, 1, "{out}");
    let line = baseline.lines().count() + 2;
    assert!(out.contains(&format!("policies/baseline.toml:{line}:1")) && out.contains("allow_everything"), "{out}");
}

#[test]
fn building_needs_no_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test drops from root to nobody; run the suite as root");
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), APP);
    let st = Command::new("chown").args(["-R", "65534:65534"]).arg(tmp.path()).status().unwrap();
    assert!(st.success());
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(moat_bin())
        .args(["lock", "blueprints/app.toml"])
        .current_dir(&dir)
        .env("HOME", tmp.path())
        .env_remove("MOAT_HOME")
        .env_remove("MOAT_STORE");
    let out = ok(c);
    assert!(out.starts_with("app@sha256:"), "{out}");
    assert!(dir.join("images/index.json").is_file());
    assert!(tmp.path().join(".local/state/moat/cache/layers").is_dir(), "non-root MOAT_HOME is under XDG state");
}
