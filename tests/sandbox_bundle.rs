//! `moat bundle` writes an OCI bundle that runc runs with the same probe
//! results as `moat run`, except what runc cannot apply (Landlock) and what
//! only moat's supervisor provides (the gateway socket).
mod sandbox_common;
use sandbox_common::*;
use std::process::Command;

/// Probe keys that differ under runc, with the value runc must give.
const RUNC_DIFFERS: &[(&str, &str)] = &[
    // runc has no Landlock: the file modes decide.
    ("landlock_read_srv", "ok"),
    // No gateway listens in runc's network namespace; without Landlock the
    // kernel answers "refused" instead of EACCES.
    ("connect_gateway", "ECONNREFUSED"),
    ("connect_other_port", "ECONNREFUSED"),
    ("connect_port_22", "ECONNREFUSED"),
    // runc runs as the image's uid; moat as a host uid of the sandbox's own
    // (docs/sandbox.md), checked by assert_process_guards for both.
    ("uid", "1000"),
    ("euid", "1000"),
    ("setuid_binary", "uid=1000 euid=1000"),
];

#[test]
fn bundle_runs_under_runc_with_the_same_probe_results() {
    let w = World::new();
    assert!(
        Command::new("runc").arg("--version").output().is_ok_and(|o| o.status.success()),
        "runc is missing: install it (scripts/install-deps.sh)"
    );
    let bundle = w.dir.path().join("bundle");
    let me = std::process::id().to_string();
    let port = GATEWAY_PORT.to_string();
    w.ok(&["bundle", &w.image, bundle.to_str().unwrap(), "--", "/usr/local/bin/moat-probe", "all", &port, &me]);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["root"]["path"], "rootfs");
    assert_eq!(config["process"]["user"]["uid"], 1000);
    assert!(config["linux"]["seccomp"]["syscalls"].as_array().unwrap().len() >= 40);
    assert!(bundle.join("rootfs/usr/local/bin/moat-probe").is_file());
    assert!(!bundle.join("rootfs/etc/removed-by-layer2").exists(), "whiteouts applied in the copy");

    let runc = Command::new("runc")
        .args([
            "--root",
            w.run_dir().join("runc").to_str().unwrap(),
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            "moat-bundle-test",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let runc_out = String::from_utf8_lossy(&runc.stdout).into_owned();
    assert!(runc.status.success(), "runc run failed: {}\n{runc_out}", String::from_utf8_lossy(&runc.stderr));
    let under_runc = parse(&runc_out);
    assert_process_guards(&under_runc);

    let moat_out = w.ok(&["run", "--rm", &w.image, "--", "/usr/local/bin/moat-probe", "all", &port, &me]);
    let under_moat = parse(&moat_out);
    assert_eq!(under_moat.keys().collect::<Vec<_>>(), under_runc.keys().collect::<Vec<_>>());
    for (k, v) in &under_moat {
        match RUNC_DIFFERS.iter().find(|(dk, _)| dk == k) {
            Some((_, runc_value)) => assert_eq!(&under_runc[k], runc_value, "runc {k}"),
            None => assert_eq!(&under_runc[k], v, "probe {k}: moat {v}, runc {}", under_runc[k]),
        }
    }
}

#[test]
fn bundle_refuses_a_non_empty_directory() {
    let w = World::new();
    let dir = w.dir.path().join("full");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("x"), b"").unwrap();
    let o = w.run(&["bundle", &w.image, dir.to_str().unwrap()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not empty"));
}
