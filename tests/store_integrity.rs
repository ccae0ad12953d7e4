//! The image store survives corruption and concurrency (issue 19, parts 1
//! and 2), provoked for real with the `moat` binary: a blob changed on disk is
//! never reused (a build replaces it and says so), `moat fsck` names every
//! corrupt and missing blob, and builds run beside a `moat gc` loop never
//! publish an image whose blobs are gone.
mod common;
use common::*;
use sha2::Digest as _;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const APP: &str = "name = \"app\"\n[[layer]]\nname = \"files\"\n[[layer.entry]]\npath = \"src\"\n";

fn project(tmp: &Path) -> PathBuf {
    let dir = tmp.join("proj");
    fs::create_dir_all(dir.join("blueprints/src/usr/bin")).unwrap();
    fs::write(dir.join("blueprints/src/usr/bin/app"), "#!/bin/sh\necho app\n").unwrap();
    fs::write(dir.join("blueprints/src/README"), "readme\n").unwrap();
    fs::write(dir.join("blueprints/app.toml"), APP).unwrap();
    dir
}

fn cmd(tmp: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut c = moat(&tmp.join("home"));
    c.current_dir(dir).args(args);
    c
}

/// The digests the lock pins: (layer digests, config, manifest), hex only.
fn pinned(dir: &Path, blueprint: &str) -> (Vec<String>, String, String) {
    let text = fs::read_to_string(dir.join("blueprints").join(format!("{blueprint}.lock"))).unwrap();
    let v: toml::Table = text.parse().unwrap();
    let hex = |s: &toml::Value| s.as_str().unwrap().trim_start_matches("sha256:").to_string();
    let layers = v["layer"].as_array().unwrap().iter().map(|l| hex(&l["digest"])).collect();
    (layers, hex(&v["image"]["config"]), hex(&v["image"]["manifest"]))
}

fn sha256_hex(p: &Path) -> String {
    hex::encode(sha2::Sha256::digest(fs::read(p).unwrap()))
}

/// Flips one byte in the middle of a blob (size and name unchanged).
fn corrupt(blob: &Path) {
    let mut bytes = fs::read(blob).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x01;
    fs::write(blob, bytes).unwrap();
}

#[test]
fn a_corrupt_layer_is_replaced_by_a_warm_cache_build() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path());
    ok(cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]));
    let (layers, _, _) = pinned(&dir, "app");
    let blob = dir.join("images/blobs/sha256").join(&layers[0]);
    corrupt(&blob);
    assert_ne!(sha256_hex(&blob), layers[0]);
    // The layer cache (warm: the lock just wrote it) points at the corrupt blob.
    let (code, out, err) = run(cmd(tmp.path(), &dir, &["build", "blueprints/app.toml"]));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(sha256_hex(&blob), layers[0], "the corrupt layer blob was left in place:\n{err}");
    assert!(err.contains("corrupt") && err.contains(&layers[0]), "no warning names the corrupt blob:\n{err}");
    ok(cmd(tmp.path(), &dir, &["fsck"]));
}

#[test]
fn a_corrupt_config_or_manifest_is_replaced_by_a_cold_build() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path());
    ok(cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]));
    let (_, config, manifest) = pinned(&dir, "app");
    for hex in [&config, &manifest] {
        let blob = dir.join("images/blobs/sha256").join(hex);
        corrupt(&blob);
        fs::remove_dir_all(tmp.path().join("home/cache/layers")).unwrap();
        let (code, out, err) = run(cmd(tmp.path(), &dir, &["build", "blueprints/app.toml"]));
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(&sha256_hex(&blob), hex, "the corrupt blob {hex} was left in place:\n{err}");
        assert!(err.contains("corrupt") && err.contains(hex.as_str()), "no warning names {hex}:\n{err}");
    }
    let out = ok(cmd(tmp.path(), &dir, &["inspect", "app"]));
    assert!(out.contains("name:     app"), "{out}");
}

#[test]
fn fsck_names_every_corrupt_and_missing_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path());
    ok(cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]));
    let out = ok(cmd(tmp.path(), &dir, &["fsck"]));
    assert!(out.contains("0 corrupt, 0 missing"), "{out}");
    let (layers, config, _) = pinned(&dir, "app");
    let blobs = dir.join("images/blobs/sha256");
    corrupt(&blobs.join(&layers[0]));
    fs::remove_file(blobs.join(&config)).unwrap();
    // An unreferenced blob is checked too.
    let junk = b"not referenced by anything";
    let junk_hex = hex::encode(sha2::Sha256::digest(junk));
    fs::write(blobs.join(&junk_hex), b"not referenced by anythinG").unwrap();
    let (code, out, err) = run(cmd(tmp.path(), &dir, &["fsck"]));
    assert_eq!(code, 1, "{out}{err}");
    let line = |what: &str, hex: &str| out.lines().any(|l| l.starts_with(what) && l.contains(hex));
    assert!(line("corrupt", &layers[0]), "the corrupt layer is not named:\n{out}");
    assert!(line("corrupt", &junk_hex), "the corrupt unreferenced blob is not named:\n{out}");
    assert!(line("missing", &config), "the missing config is not named:\n{out}");
    assert!(out.contains("2 corrupt, 1 missing"), "{out}");
    // fsck only reports: it repairs nothing (the corrupt blobs are still there).
    assert_ne!(sha256_hex(&blobs.join(&layers[0])), layers[0]);
    // `images` and `inspect` still refuse the damaged image.
    let (code, _, err) = run(cmd(tmp.path(), &dir, &["inspect", "app"]));
    assert_ne!(code, 0);
    assert!(err.contains(&config[..12]) || err.contains("missing"), "{err}");
}

/// A blob that is not a regular file (a FIFO no one writes, a symlink to a
/// device without end) is named unreadable, not opened and read: fsck hung
/// forever on either. The deadline is a hang guard, not a benchmark.
#[test]
fn fsck_names_a_blob_that_is_not_a_regular_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path());
    ok(cmd(tmp.path(), &dir, &["lock", "blueprints/app.toml"]));
    let (layers, _, _) = pinned(&dir, "app");
    let blobs = dir.join("images/blobs/sha256");
    // The layer blob becomes a FIFO; an unreferenced name links to /dev/zero.
    fs::remove_file(blobs.join(&layers[0])).unwrap();
    nix::unistd::mkfifo(&blobs.join(&layers[0]), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let zero = "0".repeat(64);
    std::os::unix::fs::symlink("/dev/zero", blobs.join(&zero)).unwrap();
    let mut c = cmd(tmp.path(), &dir, &["fsck"]);
    let mut child = c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("moat fsck still runs after 30 s on a FIFO and a symlink to /dev/zero");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    let line = |hex: &str| stdout.lines().find(|l| l.starts_with("unreadable") && l.contains(hex)).map(str::to_string);
    let fifo = line(&layers[0]).unwrap_or_else(|| panic!("the FIFO is not named unreadable:\n{stdout}"));
    assert!(fifo.contains("not a regular file") && fifo.contains("layer 0 of app"), "{fifo}");
    let link = line(&zero).unwrap_or_else(|| panic!("the symlink is not named unreadable:\n{stdout}"));
    assert!(link.contains("not a regular file"), "{link}");
}

/// 40 blueprints (the count of issue 19), each with its own incompressible 512 KiB file (fixed seed),
/// so every build writes blobs no other image references.
const RACE_BUILDS: usize = 40;

fn race_project(root: &Path) -> PathBuf {
    let dir = root.join("race");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..RACE_BUILDS {
        let src = dir.join(format!("blueprints/src{i}"));
        fs::create_dir_all(&src).unwrap();
        let mut data = vec![0u8; 512 << 10];
        for chunk in data.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        fs::write(src.join("data.bin"), &data).unwrap();
        fs::write(
            dir.join(format!("blueprints/b{i}.toml")),
            format!("name = \"img{i}\"\n[[layer]]\nname = \"data\"\n[[layer.entry]]\npath = \"src{i}\"\n"),
        )
        .unwrap();
    }
    dir
}

/// Every image the index names, each checked whole: its manifest, config and
/// layers exist and hash to their names. Returns the names of whole images and
/// the problems found.
fn whole_images(store: &Path) -> (BTreeSet<String>, Vec<String>) {
    let blob = |hex: &str| store.join("blobs/sha256").join(hex);
    let check = |hex: &str| -> Result<Vec<u8>, String> {
        let bytes = fs::read(blob(hex)).map_err(|e| format!("{hex}: {e}"))?;
        match hex::encode(sha2::Sha256::digest(&bytes)) == hex {
            true => Ok(bytes),
            false => Err(format!("{hex}: corrupt")),
        }
    };
    let index: serde_json::Value = serde_json::from_slice(&fs::read(store.join("index.json")).unwrap()).unwrap();
    let (mut whole, mut problems) = (BTreeSet::new(), Vec::new());
    for m in index["manifests"].as_array().unwrap() {
        let name = m["annotations"]["org.opencontainers.image.ref.name"].as_str().unwrap().to_string();
        let hex = |v: &serde_json::Value| v["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
        let result = check(&hex(m)).and_then(|bytes| {
            let man: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            check(&hex(&man["config"]))?;
            for l in man["layers"].as_array().unwrap() {
                check(&hex(l))?;
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                whole.insert(name);
            }
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    (whole, problems)
}

#[test]
fn builds_beside_a_gc_loop_never_publish_an_incomplete_image() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = race_project(tmp.path());
    let home = tmp.path().join("home");
    // Locks are written against a store of their own, so every build below
    // writes blobs the raced store has never seen.
    for i in 0..RACE_BUILDS {
        let mut c = moat(&home);
        c.current_dir(&dir).args(["-q", "--store"]).arg(tmp.path().join("lockstore"));
        c.args(["lock", &format!("blueprints/b{i}.toml")]);
        ok(c);
    }
    let store = tmp.path().join("store");
    let gc_cmd = {
        let (home, store) = (home.clone(), store.clone());
        move || {
            let mut c = moat(&home);
            c.args(["-q", "--store"]).arg(&store).arg("gc");
            c
        }
    };
    ok(gc_cmd());
    let stop = Arc::new(AtomicBool::new(false));
    let gc_failures = Arc::new(Mutex::new(Vec::new()));
    let gc_runs = {
        let (stop, gc_failures) = (stop.clone(), gc_failures.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let (code, out, err) = run(gc_cmd());
                if code != 0 {
                    gc_failures.lock().unwrap().push(format!("{code}: {out}{err}"));
                }
                n += 1;
            }
            n
        })
    };
    // Two builders, so builds also overlap each other.
    let results = Arc::new(Mutex::new(Vec::new()));
    let builders: Vec<_> = (0..2)
        .map(|t| {
            let (dir, home, store, results) = (dir.clone(), home.clone(), store.clone(), results.clone());
            std::thread::spawn(move || {
                for i in (t..RACE_BUILDS).step_by(2) {
                    let mut c = moat(&home);
                    c.current_dir(&dir).args(["-q", "--store"]).arg(&store);
                    c.args(["build", &format!("blueprints/b{i}.toml")]);
                    let (code, out, err) = run(c);
                    results.lock().unwrap().push((i, code, out, err));
                }
            })
        })
        .collect();
    for b in builders {
        b.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let gc_runs = gc_runs.join().unwrap();
    let (whole, problems) = whole_images(&store);
    let results = results.lock().unwrap();
    let mut incomplete = Vec::new();
    let mut failed = Vec::new();
    for (i, code, out, err) in results.iter() {
        let name = format!("img{i}");
        match code {
            0 if whole.contains(&name) => {}
            0 => incomplete.push(format!("{name}: exit 0 but not whole in the index: {out}{err}")),
            // A clean failure: moat's own error exit with a message, no panic.
            2 if err.contains("moat: error:") => failed.push(format!("{name}: {err}")),
            _ => incomplete.push(format!("{name}: exit {code} is not a clean failure: {out}{err}")),
        }
    }
    assert!(gc_runs > 3, "the gc loop ran only {gc_runs} times beside the builds");
    assert!(incomplete.is_empty(), "{} of {RACE_BUILDS} builds:\n{}", incomplete.len(), incomplete.join("\n"));
    assert!(problems.is_empty(), "the index names damaged images: {problems:#?}");
    // The store lock also keeps builds from failing because of gc.
    assert!(failed.is_empty(), "{} builds failed beside gc:\n{}", failed.len(), failed.join("\n"));
    let gc_failures = gc_failures.lock().unwrap();
    assert!(gc_failures.is_empty(), "gc failed: {gc_failures:#?}");
    // The same check by moat: fsck of the raced store is clean.
    let mut c = moat(&home);
    c.args(["--store"]).arg(&store).arg("fsck");
    ok(c);
}
