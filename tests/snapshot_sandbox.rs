//! Snapshots of real sandboxes: `moat backup` of a running sandbox under a
//! write load (the launcher's cgroup is frozen and thawed), `moat restore`
//! refused while it runs, and `moat restore --to` giving a new sandbox the
//! workspace, seen from inside it. Needs root and busybox-static.
#[path = "sandbox_common/mod.rs"]
mod sandbox_common;

use sandbox_common::World;
use std::fs;

#[test]
fn backup_running_sandbox_then_restore_into_a_new_one() {
    let w = World::new();
    // A writer that rewrites /sandbox/data with one 64 KiB write(2) of all 'a'
    // or all 'b' (busybox dd), and keeps a small file beside it.
    let script = "echo hello > /sandbox/hello; \
        head -c 65536 /dev/zero | tr '\\0' a > /tmp/a; head -c 65536 /dev/zero | tr '\\0' b > /tmp/b; \
        while :; do dd if=/tmp/a of=/sandbox/data bs=65536 count=1 conv=notrunc 2>/dev/null; \
        dd if=/tmp/b of=/sandbox/data bs=65536 count=1 conv=notrunc 2>/dev/null; done";
    w.ok(&["run", "-d", "--name", "agent", &w.image, "--", "sh", "-c", script]);
    let ws = std::path::PathBuf::from(w.state("agent")["workspace"].as_str().unwrap());
    assert!(
        sandbox_common::wait_until(std::time::Duration::from_secs(10), || fs::metadata(ws.join("data"))
            .is_ok_and(|m| m.len() == 65536)),
        "the writer did not start"
    );
    let out = w.ok(&["backup", "agent", "--tag", "live"]);
    let digest = out.trim().strip_prefix("sha256:").expect("digest").to_string();
    let repo = moat_snapshot::Repo::open(&w.home().join("snapshots")).unwrap();
    let m = repo.manifest(&digest).unwrap();
    let data = m.entries.iter().find(|e| e.path == "data").expect("data in the snapshot");
    let bytes: Vec<u8> = data.chunks.iter().flat_map(|c| repo.chunks().read_chunk(c).unwrap()).collect();
    assert!(bytes.len() == 65536 && (bytes.iter().all(|b| *b == b'a') || bytes.iter().all(|b| *b == b'b')));
    // Thawed: the writer keeps going.
    let before = fs::metadata(ws.join("data")).unwrap().modified().unwrap();
    assert!(
        sandbox_common::wait_until(std::time::Duration::from_secs(5), || fs::metadata(ws.join("data"))
            .unwrap()
            .modified()
            .unwrap()
            != before),
        "the sandbox stayed frozen after the backup"
    );
    let refused = w.run(&["restore", "agent", "live"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is running"));

    w.ok(&["stop", "-t", "1", "agent"]);
    w.ok(&["restore", "agent", "live", "--to", "agent2"]);
    let seen = w.ok(&["run", "--rm", "--name", "agent2", &w.image, "--", "cat", "/sandbox/hello"]);
    assert_eq!(seen.trim(), "hello");
}
