//! `moat events` reads what the gateway wrote, the rotated-away part first,
//! also for a pod's container, whose `audit.log` is a link to the pod's
//! (the shim's pod sandboxes): the rotated part lives beside the pod's log,
//! not beside the link. Guards the operator's view of what a sandbox tried
//! against records that vanish from it once the log rotates. Records made
//! by hand in a test MOAT_HOME; no sandbox runs.
mod common;
#[path = "common/sandbox_record.rs"]
mod sandbox_record;

use common::*;

fn line(host: &str) -> String {
    format!("{{\"time\":\"2026-12-03T00:00:00Z\",\"decision\":\"deny\",\"binary\":\"/usr/bin/curl\",\"host\":\"{host}\",\"port\":443}}\n")
}

#[test]
fn a_pod_containers_events_include_the_pods_rotated_log() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    sandbox_record::sandbox(h, "pod", None);
    sandbox_record::sandbox(h, "pod.app", None);
    let pod = h.join("sandboxes/pod");
    std::fs::write(pod.join("audit.log.1"), line("older.test")).unwrap();
    std::fs::write(pod.join("audit.log"), line("newer.test")).unwrap();
    std::os::unix::fs::symlink(pod.join("audit.log"), h.join("sandboxes/pod.app/audit.log")).unwrap();
    for name in ["pod", "pod.app"] {
        let mut c = moat(h);
        c.args(["events", "--json", name]);
        let out = ok(c);
        let (older, newer) = (out.find("older.test"), out.find("newer.test"));
        assert!(older.is_some() && newer.is_some() && older < newer, "moat events {name}: {out}");
    }
}

#[test]
fn an_overlong_line_is_skipped_with_a_warning_and_the_rest_is_read() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    sandbox_record::sandbox(h, "big", None);
    let mut log = format!("{{\"host\":\"{}\"}}\n", "x".repeat(3 << 20));
    log.push_str(&line("after.test"));
    std::fs::write(h.join("sandboxes/big/audit.log"), log).unwrap();
    let mut c = moat(h);
    c.args(["events", "--json", "big"]);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("after.test") && out.len() < 4096, "{} bytes: {}", out.len(), &out[..out.len().min(200)]);
    assert!(err.contains("skipped an audit line longer than 1024 KiB"), "{err}");
}
