//! The Nix flake parses (Debian's nix-bin; no Nix store can be fetched here)
//! and the CI recipe works: `check` passes on a locked project and fails on
//! drift; `release` builds, pushes to a real loopback registry and proves the
//! pushed digest (and the tag's) equals the lock's.
#[path = "common/registry.rs"]
#[allow(dead_code)] // each test file uses part of the helpers
mod reg;

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn flake_parses_with_nix_instantiate() {
    let out =
        Command::new("nix-instantiate").arg("--parse").arg(root().join("flake.nix")).output().unwrap_or_else(|e| {
            panic!("nix-instantiate is missing ({e}): run scripts/install-deps.sh (package nix-bin)")
        });
    assert!(out.status.success(), "flake.nix does not parse: {}", String::from_utf8_lossy(&out.stderr));
    let ast = String::from_utf8_lossy(&out.stdout);
    for want in ["buildRustPackage", "Cargo.lock", "devShells", "skopeo"] {
        assert!(ast.contains(want), "flake.nix lacks {want}");
    }
}

#[test]
fn ci_script_is_valid_and_extracts_the_lock_digest() {
    let script = root().join("examples/ci/moat-ci.sh");
    let st = Command::new("bash").arg("-n").arg(&script).status().unwrap();
    assert!(st.success(), "bash -n {} failed", script.display());
    // Run its lock_digest function on a lock with a base manifest too: only [image] counts.
    let tmp = tempfile::tempdir().unwrap();
    let lock = tmp.path().join("x.lock");
    let img = format!("sha256:{}", "b".repeat(64));
    std::fs::write(
        &lock,
        format!("version = 1\n[base]\nimage = \"r/x@sha256:{a}\"\nmanifest = \"sha256:{a}\"\n\n[image]\nconfig = \"sha256:{c}\"\nmanifest = \"{img}\"\nmanifest_size = 10\n", a = "a".repeat(64), c = "c".repeat(64)),
    )
    .unwrap();
    let src = std::fs::read_to_string(&script).unwrap();
    let func = &src[src.find("lock_digest() {").unwrap()..];
    let func = &func[..func.find("\n}\n").unwrap() + 3];
    let out =
        Command::new("bash").arg("-c").arg(format!("{func}\nlock_digest \"$1\"")).arg("_").arg(&lock).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), img);
}

#[test]
fn ci_recipe_release_pushes_the_locked_digest_and_check_fails_on_drift() {
    let r = reg::Registry::plain();
    let tmp = tempfile::tempdir().unwrap();
    let proj = tmp.path().join("proj");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(proj.join("blueprints/rootfs")).unwrap();
    std::fs::write(proj.join("blueprints/rootfs/hello.txt"), "hello\n").unwrap();
    std::fs::write(
        proj.join("blueprints/probe.toml"),
        "name = \"probe\"\nepoch = 0\n[base]\nimage = \"scratch\"\n[[layer]]\nname = \"files\"\n[[layer.entry]]\npath = \"rootfs\"\n",
    )
    .unwrap();
    let moat = env!("CARGO_BIN_EXE_moat");
    let run = |args: &[&str], tag: Option<&str>| {
        let mut c = Command::new(root().join("examples/ci/moat-ci.sh"));
        c.args(args).current_dir(&proj).env("MOAT", moat).env("MOAT_HOME", &home).env_remove("MOAT_STORE");
        if let Some(t) = tag {
            c.env("TAG", t);
        }
        c.output().unwrap()
    };
    let lock = Command::new(moat)
        .args(["lock", "blueprints/probe.toml"])
        .current_dir(&proj)
        .env("MOAT_HOME", &home)
        .output()
        .unwrap();
    assert!(lock.status.success(), "moat lock: {}", String::from_utf8_lossy(&lock.stderr));
    let text = std::fs::read_to_string(proj.join("blueprints/probe.lock")).unwrap();
    let want = text
        .lines()
        .skip_while(|l| *l != "[image]")
        .find_map(|l| l.strip_prefix("manifest = "))
        .unwrap()
        .trim_matches('"')
        .to_string();

    let out = run(&["release", &format!("{}/ci", r.addr)], Some("v1"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "release failed: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("released {}/ci/probe@{want}", r.addr)), "release output: {stdout}");
    // Ask the registry independently of the script.
    let resolved = reg::moat_ok(&home, &["resolve", &format!("{}/ci/probe:v1", r.addr)]);
    assert_eq!(resolved, format!("{}/ci/probe@{want}", r.addr));

    let ok = run(&["check"], None);
    assert!(ok.status.success(), "check failed on a clean project: {}", String::from_utf8_lossy(&ok.stderr));
    std::fs::write(proj.join("blueprints/rootfs/hello.txt"), "drifted\n").unwrap();
    let drift = run(&["check"], None);
    assert!(!drift.status.success(), "check passed despite drift");
}

/// The signed chain of the recipe (issue 23): `release` with a signing key
/// signs and attests before pushing; `deploy` pulls nothing that a wrong key
/// did not sign, and with the right key pulls, checks signature and
/// provenance, and runs the image under a policy that requires both.
#[test]
fn ci_recipe_signs_on_release_and_deploy_runs_only_what_the_key_signed() {
    let r = reg::Registry::plain();
    let tmp = tempfile::tempdir().unwrap();
    let proj = tmp.path().join("proj");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(proj.join("blueprints/rootfs/bin")).unwrap();
    std::fs::create_dir_all(proj.join("policies")).unwrap();
    std::fs::copy("/bin/busybox", proj.join("blueprints/rootfs/bin/busybox"))
        .expect("/bin/busybox (busybox-static, scripts/install-deps.sh)");
    std::fs::write(
        proj.join("blueprints/signed.toml"),
        "name = \"signed\"\nepoch = 0\n[base]\nimage = \"scratch\"\n[[layer]]\nname = \"files\"\n[[layer.entry]]\npath = \"rootfs\"\n[users]\nsandbox = { uid = 1000 }\n",
    )
    .unwrap();
    std::fs::write(proj.join("policies/baseline.toml"), include_str!("../policies/baseline.toml")).unwrap();
    let moat = env!("CARGO_BIN_EXE_moat");
    let cmd = |args: &[&str]| {
        let mut c = Command::new(moat);
        c.args(args).current_dir(&proj).env("MOAT_HOME", &home).env("MOAT_KEY_PASSWORD", "ci-pass");
        c.output().unwrap()
    };
    for args in [
        &["key", "generate", "--out", "keys"][..],
        &["key", "generate", "--out", "other"],
        &["lock", "blueprints/signed.toml"],
    ] {
        let o = cmd(args);
        assert!(o.status.success(), "moat {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let recipe = |args: &[&str]| {
        Command::new(root().join("examples/ci/moat-ci.sh"))
            .args(args)
            .current_dir(&proj)
            .env("MOAT", moat)
            .env("MOAT_HOME", &home)
            .env("MOAT_KEY_PASSWORD", "ci-pass")
            .env("MOAT_SIGNING_KEY", proj.join("keys/cosign.key"))
            .env_remove("MOAT_STORE")
            .output()
            .unwrap()
    };
    let out = recipe(&["release", &format!("{}/ci", r.addr)]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "release failed: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    let pushed = stdout.lines().find_map(|l| l.strip_prefix("released ")).expect("a released line").to_string();
    let digest = pushed.rsplit_once('@').unwrap().1.to_string();
    // The registry holds the signature under cosign's tag, independently of moat.
    let tag = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
    let curl = Command::new("curl")
        .args(["-sf", "-H", "Accept: application/vnd.oci.image.manifest.v1+json"])
        .arg(format!("http://{}/v2/ci/signed/manifests/{tag}", r.addr))
        .output()
        .expect("curl (scripts/install-deps.sh)");
    assert!(curl.status.success(), "the registry has no {tag}");
    assert!(String::from_utf8_lossy(&curl.stdout).contains("dev.cosignproject.cosign/signature"));

    // A fresh host: nothing pulled under the wrong key.
    let host = tmp.path().join("host");
    let deploy = |key: &str| {
        Command::new(root().join("examples/ci/moat-ci.sh"))
            .args(["deploy", &pushed, key, "--", "/bin/busybox", "echo", "deployed"])
            .current_dir(&proj)
            .env("MOAT", moat)
            .env("MOAT_HOME", &host)
            .env("MOAT_STORE", host.join("store"))
            .output()
            .unwrap()
    };
    let wrong = deploy("other/cosign.pub");
    assert!(!wrong.status.success(), "deploy ran an image the key did not sign");
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(err.contains("nothing was pulled") && err.contains("no valid signature"), "{err}");
    let index = std::fs::read_to_string(host.join("store/index.json")).unwrap_or_default();
    assert!(!index.contains("\"signed\""), "a refused pull named the image: {index}");
    let right = deploy("keys/cosign.pub");
    let (so, se) = (String::from_utf8_lossy(&right.stdout), String::from_utf8_lossy(&right.stderr));
    assert!(right.status.success(), "deploy failed:\n{so}\n{se}");
    assert!(so.contains("ok ") && so.contains("deployed"), "deploy output: {so}\n{se}");
}
