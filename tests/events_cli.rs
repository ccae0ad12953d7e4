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

/// A line that is not UTF-8 (a record torn by a full disk, a byte flipped)
/// and an overlong line whose 1 MiB cut falls inside a character are
/// read past (the overlong one skipped): `moat events` used to
/// stop there with `stream did not contain valid UTF-8`, hiding every
/// record after it from the operator.
#[test]
fn a_line_that_is_not_utf8_does_not_hide_the_records_after_it() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    sandbox_record::sandbox(h, "torn", None);
    let mut log = b"{\"host\":\"caf\xc3".to_vec(); // cut inside a character
    log.extend_from_slice(b"\n");
    // 9 bytes of prefix, then 2-byte characters: byte 1 MiB is inside one.
    log.extend_from_slice(format!("{{\"host\":\"{}\"}}\n", "\u{e9}".repeat(1 << 20)).as_bytes());
    // A whole record (the text form prints only those).
    log.extend_from_slice(
        b"{\"time\":\"2026-12-03T00:00:00Z\",\"binary\":\"/usr/bin/curl\",\"hash\":\"\",\"pid\":7,\
          \"host\":\"after.test\",\"port\":443,\"method\":\"CONNECT\",\"path\":\"\",\"decision\":\"deny\",\
          \"rule\":\"\",\"reason\":\"no rule\"}\n",
    );
    std::fs::write(h.join("sandboxes/torn/audit.log"), log).unwrap();
    for json in [true, false] {
        let mut c = moat(h);
        c.arg("events");
        if json {
            c.arg("--json");
        }
        c.arg("torn");
        let (code, out, err) = run(c);
        assert_eq!(code, 0, "json={json}: {err}");
        assert!(out.contains("after.test"), "json={json}: {}", &out[..out.len().min(300)]);
        assert!(err.contains("skipped an audit line longer than 1024 KiB"), "json={json}: {err}");
    }
}
