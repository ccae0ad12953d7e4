//! Escape probes from inside a `moat run` sandbox: identity, capabilities,
//! no_new_privs, seccomp, rlimits, read-only image, Landlock (files and TCP),
//! network (lo only), process isolation, setuid, fork bomb.
mod sandbox_common;
use sandbox_common::*;
use std::time::Duration;

fn probe_all(w: &World, extra: &[&str]) -> std::collections::BTreeMap<String, String> {
    let mut cmd = w.moat();
    cmd.arg("run").arg("--rm").args(extra).arg(&w.image).arg("--").args([
        "/usr/local/bin/moat-probe",
        "all",
        &GATEWAY_PORT.to_string(),
    ]);
    // The test process (the supervisor's parent) is the host pid the probe
    // tries to signal; the lifecycle tests aim at the supervisor itself via exec.
    let out = cmd.arg(std::process::id().to_string()).stdin(std::process::Stdio::null()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "probe run failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    parse(&stdout)
}

#[test]
fn probe_finds_every_guard_in_place() {
    let w = World::new();
    let r = probe_all(&w, &[]);
    assert_process_guards(&r);
    // Landlock: modes allow these, Landlock refuses them.
    assert_eq!(r["landlock_read_srv"], "EACCES", "a 0644 file outside the policy's paths");
    assert_eq!(r["connect_gateway"], "ok", "the gateway's socket is reachable");
    assert_eq!(r["connect_other_port"], "EACCES", "Landlock allows TCP connect to the gateway port only");
    assert_eq!(r["connect_port_22"], "EACCES");
    assert_eq!(r["rlimit_nofile"], "8192");
}

#[test]
fn landlock_refuses_writes_where_modes_allow_them() {
    let w = World::new();
    // Same policy minus the /tmp rule: /tmp is a 1777 tmpfs, so only Landlock can refuse.
    let text = moat_supervisor::policy::BASELINE_TOML
        .replace("  { path = \"/tmp\", why = \"scratch space (tmpfs, size-limited)\" },\n", "");
    assert_ne!(text, moat_supervisor::policy::BASELINE_TOML, "the baseline's /tmp rule moved: update this test");
    let pol = w.dir.path().join("no-tmp.toml");
    std::fs::write(&pol, text).unwrap();
    let r = probe_all(&w, &["--policy", pol.to_str().unwrap()]);
    assert_eq!(r["write_tmp"], "EACCES");
    assert_eq!(r["write_sandbox"], "ok");
}

#[test]
fn ulimit_in_a_shell_and_environment() {
    let w = World::new();
    let out = w.ok(&[
        "run",
        "--rm",
        "-e",
        "FOO=bar",
        &w.image,
        "--",
        "sh",
        "-c",
        "ulimit -u; echo $FOO; echo $PATH; echo $PROBE_IMAGE; id -u; pwd",
    ]);
    let mut lines: Vec<&str> = out.lines().collect();
    // A host uid of the sandbox's own, from moat's range (sandbox/host_uid.rs).
    let uid = lines.get(4).and_then(|u| u.parse::<u32>().ok());
    assert!(uid.is_some_and(|u| u >= 0x6d00_0000), "{out}");
    lines.remove(4);
    assert_eq!(lines, ["512", "bar", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "1", "/sandbox"]);
    let o = w.run(&["run", "--rm", "-e", "PATH=/tmp", &w.image, "--", "true"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("PATH is fixed"));
}

#[test]
fn fork_bomb_stops_at_the_limit_and_the_host_stays_usable() {
    let w = World::new();
    let out = w.ok(&["run", "--rm", &w.image, "--", "/usr/local/bin/moat-probe", "forkbomb"]);
    let r = parse(&out);
    let n: usize = r["fork_count"].parse().unwrap();
    assert!(n < 512 && n > 100, "forks before the limit: {n}");
    assert_eq!(r["fork_error"], "EAGAIN");
    // A real shell fork bomb, left running while the host does work.
    let name = "bomb";
    w.ok(&["run", "-d", "--name", name, &w.image, "--", "sh", "-c", "b() { b | b & }; b; sleep 1000"]);
    std::thread::sleep(Duration::from_secs(2));
    let t = std::time::Instant::now();
    let host = std::process::Command::new("true").status().expect("the host can still start processes");
    assert!(host.success());
    assert!(t.elapsed() < Duration::from_secs(30));
    let init = w.state(name)["init"]["pid"].as_i64().unwrap();
    let ns = std::fs::read_link(format!("/proc/{init}/ns/pid")).expect("the sandbox's pid namespace");
    let before = pids_in(&ns);
    assert!(before > 100, "the bomb filled the sandbox: {before} processes");
    w.ok(&["rm", "--force", name]);
    assert_eq!(pids_in(&ns), 0, "processes of the sandbox survive rm");
}

/// How many processes (host view) are in the pid namespace `ns`.
fn pids_in(ns: &std::path::Path) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter(|e| std::fs::read_link(e.path().join("ns/pid")).is_ok_and(|l| l == ns))
        .count()
}

#[test]
fn every_unconditionally_denied_syscall_fails_as_the_data_says() {
    let w = World::new();
    let list = moat_supervisor::launch::seccomp::DenyList::builtin().unwrap();
    let mut want = std::collections::BTreeMap::new();
    let mut args = vec![
        "run".to_string(),
        "--rm".into(),
        w.image.clone(),
        "--".into(),
        "/usr/local/bin/moat-probe".into(),
        "calls".into(),
    ];
    for d in list.entries.iter().filter(|d| d.args.is_empty()) {
        if let Some(nr) = moat_supervisor::launch::seccomp::syscall_number(&d.syscall) {
            args.push(format!("{}:{nr}", d.syscall));
            want.insert(d.syscall.clone(), format!("{:?}", d.errno));
        }
    }
    assert!(want.len() >= 40, "the deny list shrank? {} unconditional entries", want.len());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let got = parse(&w.ok(&argv));
    assert_eq!(got, want, "every call the data denies fails with the data's errno");
}
