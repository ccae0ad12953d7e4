//! The default agent image's Debian package set against the real mirror
//! (reachable from CI): the committed lock still resolves the same way, every
//! layer materializes from it, and the image has what agents need and no
//! toolchain. Needs the host's apt configuration (or MOAT_DEBIAN_MIRROR).
use moat_builder::debian::{self, DebianLock, DebianSpec};
use moat_builder::layer::tree::{Kind, Tree};
use std::collections::BTreeMap;
use std::path::Path;

fn agent_spec() -> (DebianSpec, std::path::PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("blueprints");
    let text = std::fs::read_to_string(dir.join("agent.toml")).expect("blueprints/agent.toml");
    let v: toml::Value = toml::from_str(&text).expect("agent.toml parses");
    let spec: DebianSpec = v.get("debian").expect("[debian]").clone().try_into().expect("[debian] is a DebianSpec");
    (spec, dir)
}

fn committed_lock() -> Option<DebianLock> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("blueprints/agent.lock");
    let text = std::fs::read_to_string(p).ok()?;
    let v: toml::Value = toml::from_str(&text).ok()?;
    v.get("debian")?.clone().try_into().ok()
}

/// Flattens layers (later layers win) into one view of the root filesystem.
fn flatten(trees: &[Tree]) -> BTreeMap<String, moat_builder::layer::tree::Entry> {
    let mut m = BTreeMap::new();
    for t in trees {
        for e in t.iter() {
            m.insert(e.path.clone(), e.clone());
        }
    }
    m
}

/// One download cache for every test of this file (and across runs):
/// MOAT_HOME if the caller set it, else a directory under target/.
fn moat_home() -> std::path::PathBuf {
    static HOME: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    HOME.get_or_init(|| {
        let h = std::env::var_os("MOAT_HOME")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian-mirror-home"));
        std::env::set_var("MOAT_HOME", &h);
        h
    })
    .clone()
}

#[test]
fn agent_lock_still_resolves_the_same_packages() {
    moat_home();
    let (spec, dir) = agent_spec();
    let fresh = debian::resolve(&spec, &dir).expect("resolve against the mirror");
    let names = |l: &DebianLock| l.packages.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    for bad in ["usrmerge", "gcc-12", "make", "cpp-12", "netcat-openbsd"] {
        assert!(!names(&fresh).contains(&bad.to_string()), "{bad} must not be installed");
    }
    for want in &spec.packages {
        assert!(names(&fresh).contains(want), "{want} missing from the resolved set");
    }
    // Point releases may add or drop a dependency: report drift, do not fail on it.
    let locked = committed_lock().expect("blueprints/agent.lock with a [debian] table is committed");
    if names(&fresh) != names(&locked) {
        eprintln!(
            "note: the mirror now resolves a different package set than blueprints/agent.lock (moat lock --update)"
        );
    }
}

/// `moat verify` rebuilds the default image from its committed lock in a
/// fresh store and compares digests; `moat audit` finds no toolchain in it.
#[test]
fn moat_verify_and_audit_agent() {
    let home = moat_home();
    let tmp = tempfile::tempdir().unwrap();
    let moat = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_moat"))
            .args(args)
            .arg("--store")
            .arg(tmp.path().join("store"))
            .env("MOAT_HOME", &home)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap()
    };
    let out = moat(&["-q", "verify", "blueprints/agent.toml"]);
    assert!(
        out.status.success(),
        "moat verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = moat(&["-q", "build", "blueprints/agent.toml"]);
    assert!(out.status.success(), "moat build: {}", String::from_utf8_lossy(&out.stderr));
    let first = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = moat(&["-q", "build", "blueprints/agent.toml"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), first, "two builds give the same digest");
    let out = moat(&["audit", "agent"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("toolchain binaries: 0"), "moat audit: {text}{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn agent_packages_materialize_and_run() {
    moat_home();
    let tmp = tempfile::tempdir().unwrap();
    let (spec, _dir) = agent_spec();
    let lock = committed_lock().expect("blueprints/agent.lock with a [debian] table is committed");
    let names: Vec<&str> = lock.packages.iter().map(|p| p.name.as_str()).collect();
    for want in [
        "bash",
        "coreutils",
        "python3",
        "nodejs",
        "git",
        "curl",
        "ca-certificates",
        "mawk",
        "usr-is-merged",
        "base-passwd",
        "dash",
    ] {
        assert!(names.contains(&want), "{want} missing from the resolved set");
    }
    for bad in ["usrmerge", "gcc", "gcc-12", "make", "cpp", "cpp-12", "netcat-openbsd", "netcat-traditional", "ncat"] {
        assert!(!names.contains(&bad), "{bad} must not be installed");
    }
    let layers = debian::plan_layers(&spec, &lock).unwrap();
    assert!(layers.len() <= 10 && layers.last().unwrap().fixups);
    let trees: Vec<Tree> = layers.iter().map(|l| debian::materialize(l, &lock).expect("materialize")).collect();
    let fs = flatten(&trees);
    let file = |p: &str| match fs.get(p).map(|e| &e.kind) {
        Some(Kind::File { content: moat_builder::layer::tree::Content::Bytes(b), .. }) => b.to_vec(),
        other => panic!("{p}: expected a file, got {other:?}"),
    };
    for exe in [
        "usr/bin/bash",
        "usr/bin/python3.11",
        "usr/bin/node",
        "usr/bin/git",
        "usr/bin/curl",
        "usr/bin/mawk",
        "usr/bin/tini",
        "usr/bin/ps",
    ] {
        assert!(fs.contains_key(exe), "{exe} missing");
    }
    assert_eq!(fs["bin"].kind, Kind::Symlink("usr/bin".into()));
    assert_eq!(fs["usr/bin/awk"].kind, Kind::Symlink("/etc/alternatives/awk".into()));
    assert_eq!(fs["etc/alternatives/awk"].kind, Kind::Symlink("/usr/bin/mawk".into()));
    assert!(
        !fs.keys().any(|p| p.starts_with("bin/") || p.starts_with("lib/") || p.starts_with("sbin/")),
        "a path below a merged-/usr symlink"
    );
    let ca = String::from_utf8(file("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(ca.matches("BEGIN CERTIFICATE").count() > 100);
    let status = String::from_utf8(file("var/lib/dpkg/status")).unwrap();
    assert_eq!(status.matches("Status: install ok installed").count(), lock.packages.len());
    assert!(String::from_utf8(file("etc/passwd")).unwrap().starts_with("root:x:0:0:"));
    assert!(String::from_utf8(file("etc/shells")).unwrap().contains("/usr/bin/bash\n"));
    assert_eq!(fs["tmp"].mode, 0o1777);
    assert_eq!(fs["usr/bin/su"].mode & 0o4000, 0o4000);
    assert!(fs.contains_key("var/lib/dpkg/info/libc6:amd64.list"));
    // Layer keys depend only on the lock: planning twice gives the same keys.
    assert_eq!(debian::plan_layers(&spec, &lock).unwrap(), layers);

    // Unpack and run the tools the agent image promises (chroot needs root, as in CI).
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test runs the unpacked image with chroot: run it as root (CI does)"
    );
    let root = tmp.path().join("rootfs");
    unpack(&fs, &root);
    // The runtime provides /dev/null (git needs it); stand in for it here.
    let st = std::process::Command::new("mknod")
        .args(["-m", "666"])
        .arg(root.join("dev/null"))
        .args(["c", "1", "3"])
        .status()
        .expect("mknod");
    assert!(st.success());
    for cmd in [
        &["python3", "-c", "import ssl, json; ssl.create_default_context()"][..],
        &["node", "-e", "1"],
        &["git", "--version"],
        &["curl", "--version"],
        &["bash", "-c", "awk 'BEGIN{exit 0}' && whoami && test -x /usr/bin/ps && which ls"],
        &["dpkg", "--verify"],
        &["dpkg", "--audit"],
    ] {
        let out = std::process::Command::new("/usr/sbin/chroot")
            .arg(&root)
            .args(cmd)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .output()
            .expect("chroot");
        assert!(
            out.status.success() && out.stdout.len() + out.stderr.len() < 20000,
            "{cmd:?} in the image: {:?}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if cmd[0] == "dpkg" {
            assert!(out.stdout.is_empty(), "{cmd:?} reported: {}", String::from_utf8_lossy(&out.stdout));
        }
    }
    let out = std::process::Command::new("/usr/sbin/chroot")
        .arg(&root)
        .args(["dpkg-query", "-W", "-f", "${Package}\\n"])
        .output()
        .expect("dpkg-query");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), lock.packages.len());
}

/// Writes a flattened tree to `dir` (as root: owners and modes kept).
fn unpack(fs: &BTreeMap<String, moat_builder::layer::tree::Entry>, dir: &Path) {
    use std::os::unix::fs::{chown, symlink, PermissionsExt};
    std::fs::create_dir_all(dir).unwrap();
    for e in fs.values() {
        let p = dir.join(&e.path);
        match &e.kind {
            Kind::Dir => std::fs::create_dir_all(&p).unwrap(),
            Kind::File { content: moat_builder::layer::tree::Content::Bytes(b), .. } => {
                std::fs::write(&p, &b[..]).unwrap()
            }
            Kind::File { .. } => panic!("{}: unexpected host-path content", e.path),
            Kind::Symlink(t) => symlink(t, &p).unwrap(),
            Kind::Hardlink(t) => std::fs::hard_link(dir.join(t), &p).unwrap(),
        }
        if !matches!(e.kind, Kind::Symlink(_)) {
            chown(&p, Some(e.uid), Some(e.gid)).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode)).unwrap();
        }
    }
}
