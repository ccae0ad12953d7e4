//! Registry scenarios against a real Debian docker-registry on loopback over
//! plain HTTP: push/pull round trip by digest, skopeo interop both ways, a
//! second push uploading nothing, tag-only pulls refused, a corrupted blob at
//! the registry caught, a large layer in bounded memory, and kill -9 mid-pull.
#[path = "common/registry.rs"]
#[allow(dead_code)] // each test file uses part of the helpers
mod reg;

use moat_builder::digest::Digest;
use moat_builder::Store;
use reg::{make_image, moat_err, moat_ok, Registry};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn store_arg(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Every blob of the image `name` in `a` exists byte-identical in `b`.
fn same_blobs(a: &Store, b: &Store, manifest: &Digest) {
    let m = a.manifest(manifest).unwrap();
    let mut all = vec![manifest.clone(), m.config.digest.clone()];
    all.extend(m.layers.iter().map(|l| l.digest.clone()));
    for d in all {
        assert_eq!(
            std::fs::read(a.blob_path(&d)).unwrap(),
            std::fs::read(b.blob_path(&d)).unwrap(),
            "blob {d} differs"
        );
        b.verify_blob(&d).unwrap();
    }
}

#[test]
fn push_pull_round_trip_second_push_uploads_nothing_and_tags_are_refused() {
    let r = Registry::plain();
    let tmp = tempfile::tempdir().unwrap();
    let (home, src, dst) = (tmp.path().join("home"), tmp.path().join("src"), tmp.path().join("dst"));
    let s = Store::open(&src).unwrap();
    let img = make_image(&s, "demo", 1, 3 << 20, true);
    let target = format!("{}/moat/demo:v1", r.addr);

    let out = json(&moat_ok(&home, &["--store", &store_arg(&src), "push", "demo", &target, "--json"]));
    let pinned = format!("{}/moat/demo@{}", r.addr, img.digest);
    assert_eq!(out["pinned"], pinned.as_str());
    assert_eq!(out["uploaded"].as_array().unwrap().len(), 2, "config and layer uploaded: {out}");

    let again = json(&moat_ok(&home, &["--store", &store_arg(&src), "push", "demo", &target, "--json"]));
    assert_eq!(again["uploaded"].as_array().unwrap().len(), 0, "second push uploaded something: {again}");
    assert_eq!(again["bytes_uploaded"], 0);
    assert_eq!(again["skipped"].as_array().unwrap().len(), 2);

    // Plain output is exactly the pinned reference.
    assert_eq!(moat_ok(&home, &["-q", "--store", &store_arg(&src), "push", "demo", &target]), pinned);

    let resolved = moat_ok(&home, &["resolve", &target]);
    assert_eq!(resolved, pinned);

    let err = moat_err(&home, &["--store", &store_arg(&dst), "pull", &target], None);
    assert!(err.contains("moat resolve") && err.contains("digest"), "tag-only pull message: {err}");

    let pulled = json(&moat_ok(&home, &["--store", &store_arg(&dst), "pull", &pinned, "--json"]));
    assert_eq!(pulled["name"], "demo");
    assert_eq!(pulled["manifest"]["digest"], img.digest.to_string());
    let d = Store::open_existing(&dst).unwrap();
    same_blobs(&s, &d, &img.digest);
    assert_eq!(d.resolve("demo").unwrap().manifest.digest, img.digest);

    // The pulled image remembers its source: pushing it to another repository
    // of the same registry mounts the blobs instead of uploading them.
    let copy = json(&moat_ok(
        &home,
        &["--store", &store_arg(&dst), "push", "demo", &format!("{}/moat/copy", r.addr), "--json"],
    ));
    assert_eq!(copy["mounted"].as_array().unwrap().len(), 2, "cross-repository mount: {copy}");
    assert_eq!(copy["bytes_uploaded"], 0);
    assert_eq!(copy["pinned"], format!("{}/moat/copy@{}", r.addr, img.digest).as_str());

    let again = json(&moat_ok(&home, &["--store", &store_arg(&dst), "pull", &pinned, "--json", "--name", "other"]));
    assert_eq!(again["downloaded"].as_array().unwrap().len(), 0, "second pull downloaded: {again}");
    assert_eq!(d.resolve("other").unwrap().manifest.digest, img.digest);
}

#[test]
fn skopeo_reads_what_moat_pushed_and_moat_pulls_what_skopeo_pushed() {
    let r = Registry::plain();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let policy = reg::skopeo_policy(tmp.path());
    let policy = policy.to_str().unwrap();
    let src = tmp.path().join("src");
    let s = Store::open(&src).unwrap();
    let img = make_image(&s, "demo", 2, 1 << 20, true);

    // moat -> registry -> skopeo
    let pinned = moat_ok(&home, &["-q", "--store", &store_arg(&src), "push", "demo", &format!("{}/moat/a", r.addr)]);
    let out = tmp.path().join("skopeo-out");
    reg::skopeo(&[
        "--policy",
        policy,
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{pinned}"),
        &format!("oci:{}:got", out.display()),
    ]);
    let sk = Store::open_existing(&out).unwrap();
    assert_eq!(sk.resolve("got").unwrap().manifest.digest, img.digest, "skopeo stored another manifest");
    same_blobs(&s, &sk, &img.digest);

    // skopeo -> registry -> moat
    let img2 = make_image(&s, "second", 3, 1 << 20, true);
    let tag = format!("{}/skopeo/b:t1", r.addr);
    reg::skopeo(&[
        "--policy",
        policy,
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:second", src.display()),
        &format!("docker://{tag}"),
    ]);
    let pinned = moat_ok(&home, &["resolve", &tag]);
    let dst = tmp.path().join("dst");
    let name = moat_ok(&home, &["-q", "--store", &store_arg(&dst), "pull", &pinned]);
    let digest = Digest::parse(pinned.rsplit('@').next().unwrap()).unwrap();
    assert_eq!(name, format!("b@{digest}"));
    let d = Store::open_existing(&dst).unwrap();
    // skopeo keeps the OCI manifest as is; the layer bytes must match either way.
    let m = d.manifest(&digest).unwrap();
    let orig = s.manifest(&img2.digest).unwrap();
    assert_eq!(m.layers[0].digest, orig.layers[0].digest);
    same_blobs(&d, &d, &digest);

    // A Docker schema 2 manifest (skopeo --format v2s2) pulls the same way.
    let tag2 = format!("{}/skopeo/b:docker", r.addr);
    reg::skopeo(&[
        "--policy",
        policy,
        "copy",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        &format!("oci:{}:second", src.display()),
        &format!("docker://{tag2}"),
    ]);
    let pinned2 = moat_ok(&home, &["resolve", &tag2]);
    let pulled = json(&moat_ok(&home, &["--store", &store_arg(&dst), "pull", &pinned2, "--name", "docker", "--json"]));
    assert_eq!(pulled["manifest"]["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
    let d2 = Digest::parse(pulled["manifest"]["digest"].as_str().unwrap()).unwrap();
    assert_ne!(d2, digest, "v2s2 should be a different manifest");
    assert_eq!(d.manifest(&d2).unwrap().layers[0].digest, orig.layers[0].digest);
    // Same config and layer blobs under Docker media types: nothing moves again.
    assert_eq!(pulled["downloaded"].as_array().unwrap().len(), 0, "{pulled}");
    assert_eq!(pulled["present"].as_array().unwrap().len(), 2, "{pulled}");
}

#[test]
fn corrupted_blob_at_the_registry_is_refused_and_nothing_enters_the_store() {
    let r = Registry::plain();
    let tmp = tempfile::tempdir().unwrap();
    let (home, src, dst) = (tmp.path().join("home"), tmp.path().join("src"), tmp.path().join("dst"));
    let s = Store::open(&src).unwrap();
    let img = make_image(&s, "demo", 4, 2 << 20, true);
    let pinned = moat_ok(&home, &["-q", "--store", &store_arg(&src), "push", "demo", &format!("{}/moat/c", r.addr)]);
    let layer = s.manifest(&img.digest).unwrap().layers[0].digest.clone();
    let f = r.blob_file(&layer);
    let mut bytes = std::fs::read(&f).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&f, &bytes).unwrap();

    let err = moat_err(&home, &["--store", &store_arg(&dst), "pull", &pinned], None);
    assert!(
        err.contains(&r.addr) && err.contains("hashes to") && err.contains(&layer.to_string()),
        "corruption message: {err}"
    );
    let d = Store::open_existing(&dst).unwrap();
    assert!(!d.has_blob(&layer), "corrupt layer entered the store");
    assert!(d.images().unwrap().is_empty(), "image named despite a corrupt blob");
    let leftovers = std::fs::read_dir(dst.join(".moat/tmp")).map(|rd| rd.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "temp files left behind");
}

/// Runs moat and returns (success, peak RSS in KiB) of that very process (wait4).
// The child is reaped by wait4 below, which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run_measured(home: &Path, args: &[&str]) -> (bool, i64, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(args)
        .env("MOAT_HOME", home)
        .env("HOME", home)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
        s
    });
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter for wait4.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own un-waited child; pointers are to live locals.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(rc, pid);
    (libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, ru.ru_maxrss, err.join().unwrap())
}

#[test]
fn large_layer_bounded_memory_registry_restarts_and_kill_9_mid_pull() {
    const MB: u64 = 1 << 20;
    let size: u64 = std::env::var("MOAT_TEST_LARGE_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(300) * MB;
    // Peak RSS allowed for moving `size` bytes: far below the layer size.
    const RSS_LIMIT_KIB: i64 = 100 * 1024;
    let r = Registry::plain();
    let tmp = tempfile::tempdir().unwrap();
    let (home, src, dst) = (tmp.path().join("home"), tmp.path().join("src"), tmp.path().join("dst"));
    let s = Store::open(&src).unwrap();
    let img = make_image(&s, "big", 5, size, false);
    let layer = s.manifest(&img.digest).unwrap().layers[0].digest.clone();
    let target = format!("{}/moat/big", r.addr);

    // Push; kill -9 and restart the registry once 4 MiB of the upload reached
    // its storage: the push must retry (new upload session) and succeed.
    let uploads = r.dir.path().join("storage/docker/registry/v2/repositories/moat/big/_uploads");
    let (ok, rss, err) = std::thread::scope(|sc| {
        let restarter = sc.spawn(|| {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) {
                let big = std::fs::read_dir(&uploads)
                    .map(|rd| {
                        rd.flatten().filter_map(|e| e.path().join("data").metadata().ok()).any(|m| m.len() >= 4 * MB)
                    })
                    .unwrap_or(false);
                if big {
                    r.restart();
                    return true;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            false
        });
        let res = run_measured(&home, &["--store", &store_arg(&src), "push", "big", &target]);
        assert!(restarter.join().unwrap(), "registry restart during push never happened");
        res
    });
    assert!(ok, "push with a registry restart failed: {err}");
    assert!(err.contains("retrying"), "no retry reported: {err}");
    eprintln!("push of a {} MB layer: peak RSS {} MiB", size / MB, rss / 1024);
    assert!(rss < RSS_LIMIT_KIB, "push peak RSS {rss} KiB for a {size}-byte layer");
    let pinned = format!("{target}@{}", img.digest);

    // Start a pull, kill -9 once part of the layer is on disk.
    let mut child = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["-q", "--store", &store_arg(&dst), "pull", &pinned])
        .env("MOAT_HOME", &home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tmpdir = dst.join(".moat/tmp");
    let start = Instant::now();
    let mut killed_at = 0;
    while killed_at == 0 {
        let partial = std::fs::read_dir(&tmpdir)
            .map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).max().unwrap_or(0))
            .unwrap_or(0);
        if partial >= 4 * MB {
            child.kill().unwrap(); // SIGKILL
            killed_at = partial;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "pull finished before it could be killed; raise MOAT_TEST_LARGE_MB"
        );
        assert!(start.elapsed() < Duration::from_secs(60), "pull made no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.wait().unwrap();
    let d = Store::open_existing(&dst).unwrap();
    assert!(!d.has_blob(&layer), "a partial layer entered the store");
    assert!(d.images().unwrap().is_empty());
    eprintln!("killed the pull with {} MiB of the layer written", killed_at / MB);

    // Pull again; while it runs, kill -9 and restart the registry once part of
    // the layer is written: the pull must retry and resume with a Range request.
    let stale: Vec<_> = std::fs::read_dir(&tmpdir).unwrap().flatten().map(|e| e.file_name()).collect();
    let (ok, rss, err) = std::thread::scope(|sc| {
        let restarter = sc.spawn(|| {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) {
                let fresh = std::fs::read_dir(&tmpdir)
                    .map(|rd| {
                        rd.flatten()
                            .filter(|e| !stale.contains(&e.file_name()))
                            .filter_map(|e| e.metadata().ok())
                            .any(|m| m.len() >= 4 * MB)
                    })
                    .unwrap_or(false);
                if fresh {
                    r.restart();
                    return true;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            false
        });
        let res = run_measured(&home, &["--store", &store_arg(&dst), "pull", &pinned]);
        assert!(restarter.join().unwrap(), "registry restart never happened");
        res
    });
    assert!(ok, "pull after kill -9 (with a registry restart) failed: {err}");
    assert!(err.contains("resuming"), "no resumed transfer reported: {err}");
    eprintln!("{}", err.lines().find(|l| l.contains("resuming")).unwrap_or_default());
    eprintln!("pull of a {} MB layer: peak RSS {} MiB", size / MB, rss / 1024);
    assert!(rss < RSS_LIMIT_KIB, "pull peak RSS {rss} KiB for a {size}-byte layer");
    assert_eq!(d.resolve("big").unwrap().manifest.digest, img.digest);
    d.verify_blob(&layer).unwrap();
    assert_eq!(d.blob_size(&layer).unwrap(), s.blob_size(&layer).unwrap());
    // The killed pull's temp file is garbage that gc removes; the image stays whole.
    let rep = d.gc().unwrap();
    assert!(rep.temp_files >= 1, "no stale temp file from the killed pull?");
    d.verify_blob(&layer).unwrap();
}

#[test]
fn index_pinned_by_digest_pulls_the_manifest_for_the_platform() {
    use moat_builder::oci::{Index, Platform, MEDIA_INDEX};
    let r = Registry::plain();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let policy = reg::skopeo_policy(tmp.path());
    let src = tmp.path().join("src");
    let s = Store::open(&src).unwrap();
    let amd = make_image(&s, "amd", 21, 1 << 16, true);
    let arm = make_image(&s, "arm", 22, 1 << 16, true);
    let plat = |arch: &str| Some(Platform { architecture: arch.into(), os: "linux".into() });
    let idx = Index {
        manifests: vec![
            moat_builder::oci::Descriptor { platform: plat("amd64"), ..amd.clone() },
            moat_builder::oci::Descriptor { platform: plat("arm64"), ..arm.clone() },
        ],
        ..Index::default()
    };
    let bytes = moat_builder::cjson::to_vec(&idx).unwrap();
    let idx_digest = s.put_blob(&bytes).unwrap();
    let desc = moat_builder::oci::Descriptor {
        media_type: MEDIA_INDEX.into(),
        digest: idx_digest.clone(),
        size: bytes.len() as u64,
        annotations: Default::default(),
        platform: None,
    };
    s.set_ref("multi", desc).unwrap();
    let tag = format!("{}/moat/multi:t", r.addr);
    reg::skopeo(&[
        "--policy",
        policy.to_str().unwrap(),
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", src.display()),
        &format!("docker://{tag}"),
    ]);
    let pinned = moat_ok(&home, &["resolve", &tag]);
    assert_eq!(pinned, format!("{}/moat/multi@{idx_digest}", r.addr), "skopeo rewrote the index");

    let dst = tmp.path().join("dst");
    let out = json(&moat_ok(&home, &["--store", &store_arg(&dst), "pull", &pinned, "--arch", "arm64", "--json"]));
    assert_eq!(out["manifest"]["digest"], arm.digest.to_string());
    let d = Store::open_existing(&dst).unwrap();
    assert!(d.has_blob(&idx_digest), "the verified index is kept next to its manifest");
    assert!(!d.has_blob(&amd.digest), "the other platform was fetched");
    let out = json(&moat_ok(&home, &["--store", &store_arg(&dst), "pull", &pinned, "--arch", "amd64", "--json"]));
    assert_eq!(out["manifest"]["digest"], amd.digest.to_string());
    let err = moat_err(&home, &["--store", &store_arg(&dst), "pull", &pinned, "--arch", "s390x"], None);
    assert!(err.contains("no linux/s390x manifest"), "{err}");
}
