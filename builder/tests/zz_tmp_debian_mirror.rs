//! The default agent image's Debian package set against the real mirror
//! (reachable from CI): the committed lock still resolves the same way, every
//! layer materializes from it, and the image has what agents need and no
//! toolchain. Needs the host's apt configuration (or MOAT_DEBIAN_MIRROR).
use moat_builder::debian::{self, DebianLock, DebianSpec};
use moat_builder::tree::{Kind, Tree};
use std::collections::BTreeMap;
use std::path::Path;

fn agent_spec() -> (DebianSpec, std::path::PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("blueprints");
    let text = std::fs::read_to_string(dir.join("agent.toml")).expect("blueprints/agent.toml");
    let v: toml::Value = toml::from_str(&text).expect("agent.toml parses");
    let spec: DebianSpec = v.get("debian").expect("[debian]").clone().try_into().expect("[debian] is a DebianSpec");
    (spec, dir)
}

fn committed_lock() -> Option<DebianLock> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("blueprints/agent.lock");
    let text = std::fs::read_to_string(p).ok()?;
    let v: toml::Value = toml::from_str(&text).ok()?;
    v.get("debian")?.clone().try_into().ok()
}

/// Flattens layers (later layers win) into one view of the root filesystem.
fn flatten(trees: &[Tree]) -> BTreeMap<String, moat_builder::tree::Entry> {
    let mut m = BTreeMap::new();
    for t in trees {
        for e in t.iter() {
            m.insert(e.path.clone(), e.clone());
        }
    }
    m
}

#[test]
fn agent_packages_resolve_and_materialize() {
    let tmp = tempfile::tempdir().unwrap();
    // Share the download cache between runs when MOAT_HOME is set by the caller.
    if std::env::var_os("MOAT_HOME").is_none() {
        std::env::set_var("MOAT_HOME", tmp.path());
    }
    let (spec, dir) = agent_spec();
    let lock = match committed_lock() {
        Some(l) => l,
        None => debian::resolve(&spec, &dir).expect("resolve against the mirror"),
    };
    let names: Vec<&str> = lock.packages.iter().map(|p| p.name.as_str()).collect();
    for want in ["bash", "coreutils", "python3", "nodejs", "git", "curl", "ca-certificates", "mawk", "usr-is-merged", "base-passwd", "dash"] {
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
        Some(Kind::File { content: moat_builder::tree::Content::Bytes(b), .. }) => b.to_vec(),
        other => panic!("{p}: expected a file, got {other:?}"),
    };
    for exe in ["usr/bin/bash", "usr/bin/python3.11", "usr/bin/node", "usr/bin/git", "usr/bin/curl", "usr/bin/mawk", "usr/bin/tini", "usr/bin/ps"] {
        assert!(fs.contains_key(exe), "{exe} missing");
    }
    assert_eq!(fs["bin"].kind, Kind::Symlink("usr/bin".into()));
    assert_eq!(fs["usr/bin/awk"].kind, Kind::Symlink("/etc/alternatives/awk".into()));
    assert_eq!(fs["etc/alternatives/awk"].kind, Kind::Symlink("/usr/bin/mawk".into()));
    assert!(!fs.keys().any(|p| p.starts_with("bin/") || p.starts_with("lib/") || p.starts_with("sbin/")), "a path below a merged-/usr symlink");
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
}
