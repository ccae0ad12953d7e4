//! Base images: a blueprint built on an OCI layout or on a registry image
//! pinned by digest. The base's toolchain is removed with whiteouts, its
//! config is inherited, and the lock pins the base manifest.
mod common;
#[path = "common/registry.rs"]
#[allow(dead_code)]
mod reg;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds a "base" image holding a planted compiler into `store`; returns its manifest digest.
fn base_image(tmp: &Path, store: &Path) -> String {
    let dir = tmp.join("base");
    fs::create_dir_all(dir.join("root/usr/bin")).unwrap();
    fs::write(dir.join("root/usr/bin/gcc"), "planted compiler").unwrap();
    fs::write(dir.join("root/usr/bin/tool"), "tool").unwrap();
    fs::write(dir.join("base.toml"), "name = \"base\"\n[strip]\ntoolchain = false\n[[layer]]\n[[layer.entry]]\npath = \"root\"\n[config]\nenv = { FROM_BASE = \"1\" }\ncmd = [\"/usr/bin/tool\"]\n").unwrap();
    let mut c = moat(&tmp.join("home"));
    c.current_dir(&dir).args(["lock", "base.toml", "--store"]).arg(store);
    let out = ok(c);
    out.trim().split_once('@').unwrap().1.to_string()
}

fn derived(tmp: &Path, base_ref: &str) -> PathBuf {
    let dir = tmp.join("derived");
    fs::create_dir_all(dir.join("files")).unwrap();
    fs::write(dir.join("files/app"), "app").unwrap();
    fs::write(dir.join("app.toml"), format!("name = \"app\"\n[base]\nimage = \"{base_ref}\"\n[[layer]]\n[[layer.entry]]\npath = \"files\"\ndest = \"/opt/\"\n")).unwrap();
    dir
}

fn unpack(tmp: &Path, store: &Path, name: &str) -> PathBuf {
    require_tool("umoci");
    let bundle = tmp.join(format!("bundle-{name}"));
    let mut c = Command::new("umoci");
    c.arg("unpack").arg("--image").arg(format!("{}:{name}", store.display())).arg(&bundle);
    ok(c);
    bundle.join("rootfs")
}

#[test]
fn layout_base_is_inherited_and_its_toolchain_whited_out() {
    let tmp = tempfile::tempdir().unwrap();
    let base_store = tmp.path().join("base-store");
    let digest = base_image(tmp.path(), &base_store);
    let dir = derived(tmp.path(), &format!("oci:{}@{digest}", base_store.display()));
    let store = tmp.path().join("store");
    let mut c = moat(&tmp.path().join("home"));
    c.current_dir(&dir).args(["lock", "app.toml", "--store"]).arg(&store);
    ok(c);
    let lock = fs::read_to_string(dir.join("app.lock")).unwrap();
    assert!(lock.contains(&format!("manifest = \"{digest}\"")), "base not pinned: {lock}");
    assert!(lock.contains("name = \"strip\""), "no whiteout layer: {lock}");
    let mut c = moat(&tmp.path().join("home"));
    c.current_dir(&dir).args(["audit", "app", "--store"]).arg(&store);
    ok(c); // exit 0: no toolchain in the final image
    let root = unpack(tmp.path(), &store, "app");
    assert!(!root.join("usr/bin/gcc").exists(), "base compiler survived");
    assert_eq!(fs::read_to_string(root.join("usr/bin/tool")).unwrap(), "tool");
    assert_eq!(fs::read_to_string(root.join("opt/app")).unwrap(), "app");
    let mut c = moat(&tmp.path().join("home"));
    c.current_dir(&dir).args(["inspect", "app", "--json", "--store"]).arg(&store);
    let v: serde_json::Value = serde_json::from_str(&ok(c)).unwrap();
    let env = v["config"]["config"]["Env"].to_string();
    assert!(env.contains("FROM_BASE=1") && env.contains("PATH=/usr/local/sbin"), "{env}");
    assert_eq!(v["config"]["config"]["Cmd"][0], "/usr/bin/tool");
    // verify rebuilds it from the lock alone.
    let mut c = moat(&tmp.path().join("home2"));
    c.current_dir(&dir).args(["verify", "app.toml", "--store"]).arg(&store);
    assert!(ok(c).starts_with("ok "));
}

#[test]
fn registry_base_is_pulled_by_digest() {
    let registry = reg::Registry::plain();
    let tmp = tempfile::tempdir().unwrap();
    let base_store = tmp.path().join("base-store");
    let digest = base_image(tmp.path(), &base_store);
    let target = format!("{}/moat/base:v1", registry.addr);
    let mut c = moat(&tmp.path().join("home"));
    c.args(["push", "base", &target, "--store"]).arg(&base_store);
    let pushed = ok(c);
    assert!(pushed.contains(&format!("{}/moat/base@{digest}", registry.addr)), "{pushed}");
    let dir = derived(tmp.path(), &format!("{}/moat/base@{digest}", registry.addr));
    let store = tmp.path().join("store");
    let mut c = moat(&tmp.path().join("home"));
    c.current_dir(&dir).args(["lock", "app.toml", "--store"]).arg(&store);
    ok(c);
    let root = unpack(tmp.path(), &store, "app");
    assert_eq!(fs::read_to_string(root.join("usr/bin/tool")).unwrap(), "tool");
    assert!(!root.join("usr/bin/gcc").exists());
    // A tag-only base is refused with a located error.
    let bad = derived(&tmp.path().join("bad"), &target);
    let mut c = moat(&tmp.path().join("home"));
    c.current_dir(&bad).args(["lock", "app.toml", "--store"]).arg(&store);
    let (code, _, err) = run(c);
    assert_eq!(code, 2);
    assert!(err.contains("app.toml:3:9") && err.contains("no @sha256"), "{err}");
}
