//! `moat snapshot push|pull` end to end against a real Debian docker-registry
//! on loopback: a workspace (files, an executable, a symlink, an empty dir)
//! backed up, pushed as an OCI artifact (checked with skopeo), pulled into a
//! fresh MOAT_HOME and restored identically; a second push gives the same
//! digest and uploads nothing; an ordinary image and a tag-only reference are
//! refused.
#[path = "common/registry.rs"]
#[allow(dead_code)] // each test file uses part of the helpers
mod reg;
#[path = "common/sandbox_record.rs"]
mod sandbox_record;
#[path = "../snapshot/tests/common/mod.rs"]
mod snap;

use moat_builder::Store;
use reg::{make_image, moat, moat_err, moat_ok, Registry};
use sandbox_record::sandbox;
use snap::{chmod, data, describe};
use std::fs;
use std::path::Path;
use std::process::Command;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn home_arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `skopeo inspect --raw` of a plain-HTTP loopback reference, parsed.
fn skopeo_raw(reference: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{reference}")])
        .output()
        .expect("skopeo is not installed: run scripts/install-deps.sh");
    assert!(out.status.success(), "skopeo inspect {reference}: {}", String::from_utf8_lossy(&out.stderr));
    json(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn push_pull_restore_round_trip_is_deterministic_and_refuses_other_manifests() {
    let r = Registry::plain();
    let t = tempfile::tempdir().unwrap();
    let (home, home2) = (t.path().join("home"), t.path().join("home2"));
    let ws = sandbox(&home, "agent", None);
    fs::create_dir_all(ws.join("src/deep")).unwrap();
    fs::create_dir_all(ws.join("empty")).unwrap();
    fs::write(ws.join("src/main.rs"), b"fn main() {}\n").unwrap();
    fs::write(ws.join("src/deep/blob.bin"), data(7, 600 << 10)).unwrap();
    fs::write(ws.join("tool.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    chmod(&ws.join("tool.sh"), 0o755);
    fs::write(ws.join("private"), b"private notes\n").unwrap();
    chmod(&ws.join("private"), 0o600);
    std::os::unix::fs::symlink("src/main.rs", ws.join("link")).unwrap();
    let original = describe(&ws);

    let snap = moat_ok(&home, &["backup", "agent", "--tag", "first"]);
    let digest = snap.strip_prefix("sha256:").unwrap_or_else(|| panic!("backup printed {snap:?}")).to_string();

    // Push: plain output is exactly the pinned reference.
    let target = format!("{}/moat/snaps:v1", r.addr);
    let pinned = moat_ok(&home, &["-q", "snapshot", "push", "agent:first", &target]);
    let prefix = format!("{}/moat/snaps@sha256:", r.addr);
    assert!(pinned.starts_with(&prefix) && pinned.len() == prefix.len() + 64, "push printed {pinned:?}");

    // What the registry holds is an OCI 1.1 artifact (read by an independent client).
    let m = skopeo_raw(&pinned);
    assert_eq!(m["schemaVersion"], 2, "{m}");
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json", "{m}");
    assert_eq!(m["artifactType"], "application/vnd.moat.snapshot.v1", "{m}");
    assert_eq!(m["config"]["mediaType"], "application/vnd.oci.empty.v1+json", "{m}");
    assert_eq!(m["config"]["size"], 2, "{m}");
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{m}");
    assert_eq!(layers[0]["mediaType"], "application/vnd.moat.snapshot.export.v1", "{m}");
    assert_eq!(
        layers[0]["annotations"]["org.opencontainers.image.title"],
        format!("snapshot-{}.moatsnap", &digest[..12])
    );
    assert_eq!(m["annotations"]["dev.moat.snapshot.digest"], format!("sha256:{digest}"), "{m}");
    assert_eq!(m["annotations"]["dev.moat.snapshot.sandbox"], "agent", "{m}");
    assert!(m["annotations"]["org.opencontainers.image.created"].as_str().unwrap().ends_with('Z'), "{m}");
    // The tag names the same manifest.
    assert_eq!(moat_ok(&home, &["resolve", &target]), pinned);

    // A second push (by digest this time) gives the same manifest and uploads nothing.
    let again = json(&moat_ok(&home, &["snapshot", "push", &digest[..12], &target, "--json"]));
    assert_eq!(again["pinned"], pinned.as_str(), "{again}");
    assert_eq!(again["snapshot"], format!("sha256:{digest}"));
    assert_eq!(again["registry"]["uploaded"].as_array().unwrap().len(), 0, "second push uploaded: {again}");
    assert_eq!(again["registry"]["bytes_uploaded"], 0);
    assert_eq!(again["registry"]["skipped"].as_array().unwrap().len(), 2, "config and layer present: {again}");
    let out = moat(&home, &["snapshot", "push", "agent", &target], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), pinned);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("uploaded 0 blob(s) (0 bytes), 2 already present"), "{err}");

    // Pull into a fresh MOAT_HOME, listed under its sandbox name, restored identically.
    let out = moat(&home2, &["snapshot", "pull", &pinned], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("sha256:{digest}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("imported as a snapshot of agent") && err.contains("moat restore agent"), "{err}");
    let list = json(&moat_ok(&home2, &["snapshots", "agent", "--json"]));
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["digest"], digest.as_str());
    assert_eq!(list[0]["tag"], "first");
    moat_ok(&home2, &["restore", "agent", &digest, "--to", "moved"]);
    let restored = home2.join("sandboxes/moved/workspace");
    assert_eq!(describe(&restored), original);
    assert_eq!(fs::read_link(restored.join("link")).unwrap(), Path::new("src/main.rs"));
    assert_eq!(fs::read(restored.join("src/deep/blob.bin")).unwrap(), data(7, 600 << 10));
    // Pulling again changes nothing (no second record).
    moat_ok(&home2, &["-q", "snapshot", "pull", &pinned]);
    assert_eq!(json(&moat_ok(&home2, &["snapshots", "agent", "--json"])).as_array().unwrap().len(), 1);

    // An ordinary image is refused with what it is, and nothing is imported.
    let home3 = t.path().join("home3");
    let store_dir = t.path().join("store");
    make_image(&Store::open(&store_dir).unwrap(), "demo", 3, 4096, true);
    let image =
        moat_ok(&home3, &["-q", "--store", home_arg(&store_dir), "push", "demo", &format!("{}/moat/image", r.addr)]);
    let err = moat_err(&home3, &["snapshot", "pull", &image], None);
    assert!(
        err.contains("is not a moat snapshot")
            && err.contains("no artifactType")
            && err.contains("image.config.v1+json"),
        "{err}"
    );
    assert_eq!(moat_ok(&home3, &["snapshots", "agent", "--json"]), "[]");
    let refs = home3.join("snapshots/refs");
    assert_eq!(fs::read_dir(&refs).map(|d| d.count()).unwrap_or(0), 0, "something was recorded in {refs:?}");

    // A tag-only reference is refused before any transfer.
    let err = moat_err(&home3, &["snapshot", "pull", &target], None);
    assert!(err.contains("digest") && err.contains("moat resolve"), "{err}");

    // No scratch layouts are left behind by push or pull.
    for h in [&home, &home2, &home3] {
        let tmp = h.join("snapshots/tmp");
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "leftovers in {tmp:?}");
    }
}
