//! Interop: what moat writes is read by the ecosystem's own tools — skopeo
//! (inspect, copy keeps the digest), umoci (unpack gives the expected tree)
//! and oci-image-tool (validates the image).
mod common;
use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

const GOLDEN_MANIFEST: &str = "sha256:c587416ab2da0bcb5863c0f240246eff9e8a293456820d58648608b614fd639d";

fn golden_store(tmp: &std::path::Path) -> std::path::PathBuf {
    let work = tmp.join("golden");
    copy_tree(&repo().join("tests/fixtures/golden"), &work);
    let store = tmp.join("images");
    let mut c = moat(&tmp.join("home"));
    c.current_dir(&work).args(["build", "golden.toml", "--store"]).arg(&store);
    ok(c);
    store
}

#[test]
fn skopeo_inspects_and_copies_keeping_the_digest() {
    require_tool("skopeo");
    let tmp = tempfile::tempdir().unwrap();
    let store = golden_store(tmp.path());
    let mut c = Command::new("skopeo");
    c.arg("inspect").arg(format!("oci:{}:golden", store.display()));
    let out = ok(c);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Digest"], GOLDEN_MANIFEST);
    assert_eq!(v["Created"], "2023-11-14T22:13:20Z");
    let policy = tmp.path().join("policy.json");
    fs::write(&policy, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();
    let copy = tmp.path().join("copy");
    let mut c = Command::new("skopeo");
    c.arg("--policy")
        .arg(&policy)
        .arg("copy")
        .arg(format!("oci:{}:golden", store.display()))
        .arg(format!("oci:{}:golden", copy.display()));
    ok(c);
    let idx = fs::read_to_string(copy.join("index.json")).unwrap();
    assert!(idx.contains(GOLDEN_MANIFEST), "skopeo copy changed the digest: {idx}");
    // And moat reads the copy back.
    let mut c = moat(&tmp.path().join("home"));
    c.args(["inspect", "golden", "--store"]).arg(&copy);
    assert!(ok(c).contains(GOLDEN_MANIFEST));
}

#[test]
fn umoci_unpacks_the_expected_tree() {
    require_tool("umoci");
    let tmp = tempfile::tempdir().unwrap();
    let store = golden_store(tmp.path());
    let bundle = tmp.path().join("bundle");
    let mut c = Command::new("umoci");
    c.arg("unpack").arg("--image").arg(format!("{}:golden", store.display())).arg(&bundle);
    ok(c);
    let root = bundle.join("rootfs");
    let hello = root.join("usr/local/bin/hello");
    assert_eq!(fs::read_to_string(&hello).unwrap(), "#!/bin/sh\necho hello from moat\n");
    let m = fs::metadata(&hello).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755);
    assert_eq!((m.uid(), m.gid()), (0, 0));
    assert_eq!(m.mtime(), 1_700_000_000);
    assert_eq!(fs::read_link(root.join("usr/local/bin/hi")).unwrap().to_str(), Some("hello"));
    assert_eq!(fs::metadata(root.join("usr/local/etc/app/config.toml")).unwrap().mode() & 0o7777, 0o644);
    assert_eq!(fs::metadata(root.join("opt/tool/data.txt")).unwrap().mode() & 0o7777, 0o600);
    assert!(!root.join("usr/local/share/doc/README").exists(), "[strip] paths were not stripped");
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.contains("sandbox:x:1000:1000:sandbox:/sandbox:/bin/sh"), "{passwd}");
    assert!(passwd.contains("gateway:x:1001:1001:"), "{passwd}");
    assert_eq!(fs::metadata(root.join("sandbox")).unwrap().uid(), 1000);
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["process"]["user"]["uid"], 1000, "umoci resolved the image user");
}

#[test]
fn oci_image_tool_validates_the_image() {
    require_tool("oci-image-tool");
    let tmp = tempfile::tempdir().unwrap();
    let store = golden_store(tmp.path());
    let mut c = Command::new("oci-image-tool");
    c.args(["validate", "--type", "image"]).arg(&store);
    let out = ok(c);
    assert!(out.contains("Validation succeeded"), "{out}");
}
