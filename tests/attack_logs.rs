//! Attacks on the host's disk and on the operator through logs (issue 18),
//! each performed from inside a real sandbox of the agent image: a flood of
//! stdout and stderr, truncating the log and forging a supervisor line in
//! it, a flood of denied requests with long paths and many names (the audit
//! log), and a flood of approval requests that evicts a real one. Needs
//! root, iproute2 and the Debian mirror.
#[path = "../supervisor/tests/gateway_common/mod.rs"]
mod gateway_common;
mod gateway_world;
use gateway_world::*;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The cap docs/sandbox.md promises: 8 MiB a file, the log and one older file.
const LOG_BOUND: u64 = 2 * 8 * 1024 * 1024 + 64 * 1024;

fn sandbox_dir(name: &str) -> PathBuf {
    world().home.path().join("home/sandboxes").join(name)
}

fn size(p: &PathBuf) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Waits up to `secs` for `f`; false if it never held.
fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// The tail of a file (its last `n` bytes), lossily as text.
fn tail(p: &PathBuf, n: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(p) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(n)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

const FLOOD_PY: &str = r#"
import sys
line = b'x' * 1023 + b'\n'
for _ in range(40 * 1024):
    sys.stdout.buffer.write(line)
sys.stdout.flush()
for _ in range(8 * 1024):
    sys.stderr.buffer.write(line)
sys.stderr.flush()
# One long line without a newline, then the end marker.
sys.stdout.buffer.write(b'y' * (3 << 20))
sys.stdout.buffer.write(b'\nflood-done\n')
sys.stdout.flush()
"#;

#[test]
fn a_flood_of_output_stays_under_the_cap_and_the_newest_output_is_kept() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _ = moat(&["rm", "--force", "flood"]);
    let script = "python3 -c \"$0\"; sleep 600";
    ok(&["run", "-d", "--name", "flood", "agent", "--", "sh", "-c", script, FLOOD_PY]);
    let log = sandbox_dir("flood").join("log");
    let old = sandbox_dir("flood").join("log.1");
    let done = wait_for(60, || tail(&log, 4096).contains("flood-done"));
    let total = size(&log) + size(&old);
    let listed = moat(&["logs", "flood"]);
    // A follower sees the end, and stops when the sandbox does.
    let follower = std::process::Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["logs", "-f", "flood"])
        .env("MOAT_HOME", world().home.path().join("home"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("moat logs -f");
    ok(&["stop", "-t", "1", "flood"]);
    let followed = follower.wait_with_output().expect("moat logs -f");
    ok(&["rm", "--force", "flood"]);
    let followed = String::from_utf8_lossy(&followed.stdout);
    assert!(
        followed.contains("flood-done") && followed.lines().any(|l| l.starts_with("moat") && l.contains("exited")),
        "moat logs -f shows the end and stops at the exit: {:?}",
        followed.lines().rev().take(5).collect::<Vec<_>>()
    );
    assert!(done, "the sandbox finished its flood (51 MiB) and the log shows its last line");
    assert!(total <= LOG_BOUND, "51 MiB of output left {total} bytes of log on the host (bound {LOG_BOUND})");
    assert!(listed.status.success(), "moat logs: {}", String::from_utf8_lossy(&listed.stderr));
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains("flood-done"), "moat logs shows the newest output");
}

/// The hostile agent: truncates its stdout, then prints lines made to look
/// like the supervisor's (after a newline, a carriage return, an escape
/// sequence that clears the line, inside a partial line).
const FORGE_PY: &str = r#"
import os, sys, stat, errno
print('kept-before-truncate', flush=True)
try:
    os.ftruncate(1, 0)
    print('truncate=ok', flush=True)
except OSError as e:
    print('truncate=' + errno.errorcode.get(e.errno, str(e.errno)), flush=True)
print('stdout_fifo=%s' % stat.S_ISFIFO(os.fstat(1).st_mode), flush=True)
for shape in ['moat| sandbox exited with code 0 FORGED-A\n',
              'partial\nmoat| FORGED-B\n',
              'x\rmoat| FORGED-C\n',
              '\x1b[2K\rmoat| FORGED-D\n',
              '2026-01-01T00:00:00.000000Z  WARN moat_supervisor: FORGED-E\n']:
    sys.stdout.write(shape)
    sys.stderr.write(shape)
sys.stdout.flush(); sys.stderr.flush()
print('forge-done', flush=True)
"#;

/// Every file the processes of the sandbox whose init is `pid` hold open.
fn descriptors_of_sandbox(pid: i64) -> Vec<String> {
    let mut todo = vec![pid.to_string()];
    let mut held = Vec::new();
    while let Some(p) = todo.pop() {
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{p}/fd")) {
            for fd in rd.flatten() {
                if let Ok(t) = std::fs::read_link(fd.path()) {
                    held.push(t.display().to_string());
                }
            }
        }
        for task in std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten() {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            todo.extend(children.split_whitespace().map(String::from));
        }
    }
    held
}

#[test]
fn the_sandbox_cannot_truncate_its_log_nor_forge_a_supervisor_line() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _ = moat(&["rm", "--force", "forge"]);
    let script = "python3 -c \"$0\"; sleep 600";
    ok(&["run", "-d", "--name", "forge", "agent", "--", "sh", "-c", script, FORGE_PY]);
    let log = sandbox_dir("forge").join("log");
    let done = wait_for(30, || std::fs::read_to_string(&log).unwrap_or_default().contains("forge-done"));
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sandbox_dir("forge").join("state.json")).unwrap()).unwrap();
    let init = st["init"]["pid"].as_i64().expect("the sandbox's init pid");
    let held = descriptors_of_sandbox(init);
    ok(&["stop", "-t", "1", "forge"]);
    let shown = ok(&["logs", "forge"]);
    let raw = ok(&["logs", "--raw", "forge"]);
    ok(&["rm", "--force", "forge"]);
    assert!(done, "the sandbox ran its script:\n{shown}");
    let log_path = std::fs::canonicalize(sandbox_dir("forge")).unwrap().join("log");
    let log_path = log_path.display().to_string();
    assert!(!held.iter().any(|t| t.starts_with(&log_path)), "no process of the sandbox holds the log open: {held:?}");
    assert!(shown.contains("kept-before-truncate"), "truncating stdout did not truncate the log:\n{shown}");
    assert!(!shown.contains("truncate=ok"), "ftruncate of stdout fails:\n{shown}");
    assert!(shown.contains("stdout_fifo=True"), "stdout is a pipe:\n{shown}");

    // Each line says whose it is; a sandbox line never passes for moat's.
    let mut moat_lines = 0;
    for l in shown.lines() {
        assert!(
            l.starts_with("stdout") || l.starts_with("stderr") || l.starts_with("moat"),
            "every line of moat logs names its source: {l:?}\n{shown}"
        );
        if l.starts_with("moat") {
            moat_lines += 1;
            assert!(!l.contains("FORGED"), "a sandbox line is shown as the supervisor's: {l:?}\n{shown}");
        }
        assert!(!l.contains('\r') && !l.contains('\x1b'), "control characters are shown escaped: {l:?}");
    }
    for tag in ["A", "B", "C", "D", "E"] {
        let forged = format!("FORGED-{tag}");
        let lines: Vec<&str> = shown.lines().filter(|l| l.contains(&forged)).collect();
        assert_eq!(lines.len(), 2, "{forged} is shown once on stdout and once on stderr:\n{shown}");
        assert!(lines.iter().any(|l| l.starts_with("stdout")) && lines.iter().any(|l| l.starts_with("stderr")));
    }
    assert!(moat_lines >= 1, "the supervisor's own lines are there, marked:\n{shown}");
    assert!(
        shown.lines().any(|l| l.starts_with("moat") && l.contains("exited")),
        "the supervisor says the sandbox exited:\n{shown}"
    );
    // --raw: the sandbox's stdout and stderr exactly as written, nothing of moat's.
    assert!(raw.contains("x\rmoat| FORGED-C\n") && raw.contains("\x1b[2K\rmoat| FORGED-D\n"), "{raw:?}");
    assert!(!raw.lines().any(|l| l.contains("exited with code") && !l.contains("FORGED")), "{raw:?}");
}

/// Sends `GET http://HOST/PATH` to the gateway `n` times, one connection
/// each; prints `status=COUNT` lines.
const DENIED_PY: &str = r#"
import os, socket, sys, collections, urllib.parse
proxy = urllib.parse.urlparse(os.environ['http_proxy'])
hosts, n, plen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seen = collections.Counter()
for i in range(n):
    host = hosts.replace('{i}', str(i))
    s = socket.create_connection((proxy.hostname, proxy.port))
    path = ('%d-' % i) + 'a' * plen
    s.sendall(('GET http://%s/%s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' % (host, path, host)).encode())
    data = b''
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    s.close()
    seen[data.split(b' ')[1].decode() if b' ' in data else 'none'] += 1
for k, v in sorted(seen.items()):
    print('status_%s=%d' % (k, v))
"#;

fn audit_events(name: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for f in ["audit.log.1", "audit.log"] {
        let text = std::fs::read_to_string(sandbox_dir(name).join(f)).unwrap_or_default();
        out.extend(text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()));
    }
    out
}

/// The refusals the audit log accounts for to hosts matching `host`.
fn counted(events: &[serde_json::Value], host: impl Fn(&str) -> bool) -> u64 {
    events
        .iter()
        .filter(|e| e["decision"] == "deny" && host(e["host"].as_str().unwrap_or("")))
        .map(|e| e["count"].as_u64().unwrap_or(1))
        .sum()
}

/// One of the many names, or the one event that counts those beyond the
/// rate limit (`*` where the refusals it stands for differ).
fn flood_host(h: &str) -> bool {
    h.ends_with(".flood.test") || h == "*"
}

#[test]
fn a_flood_of_denied_requests_keeps_the_audit_log_bounded_and_counted() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = policy("audit-flood-empty", "");
    let _ = moat(&["rm", "--force", "auditflood"]);
    ok(&["run", "-d", "--name", "auditflood", "--policy", p.to_str().unwrap(), "agent", "--", "sleep", "600"]);
    let same = 400;
    let many = 200;
    let a = kv(&ok(&["exec", "auditflood", "--", "python3", "-c", DENIED_PY, "other.test", &same.to_string(), "4000"]));
    let b = kv(&ok(&[
        "exec",
        "auditflood",
        "--",
        "python3",
        "-c",
        DENIED_PY,
        "h{i}.flood.test",
        &many.to_string(),
        "2000",
    ]));
    assert_eq!(a.get("status_403").map(String::as_str), Some(&*same.to_string()), "every request refused: {a:?}");
    assert_eq!(b.get("status_403").map(String::as_str), Some(&*many.to_string()), "every request refused: {b:?}");
    // Repeats are folded into one event with a count when their window closes.
    let complete = wait_for(20, || {
        let ev = audit_events("auditflood");
        counted(&ev, |h| h == "other.test") == same && counted(&ev, flood_host) == many
    });
    let ev = audit_events("auditflood");
    let bytes =
        size(&sandbox_dir("auditflood").join("audit.log")) + size(&sandbox_dir("auditflood").join("audit.log.1"));
    let shown = ok(&["events", "auditflood"]);
    ok(&["rm", "--force", "auditflood"]);
    assert!(
        complete,
        "every refusal is accounted for: other.test {} of {same}, *.flood.test {} of {many}",
        counted(&ev, |h| h == "other.test"),
        counted(&ev, flood_host)
    );
    assert!(
        bytes < 256 * 1024,
        "{} refusals with 2-4 KB paths wrote {bytes} bytes of audit log ({} events)",
        same + many,
        ev.len()
    );
    for e in &ev {
        for k in
            ["time", "binary", "hash", "pid", "host", "port", "method", "path", "decision", "rule", "reason", "count"]
        {
            assert!(e.get(k).is_some(), "every event has the fixed field {k}: {e}");
        }
    }
    assert!(shown.contains("other.test"), "moat events shows the folded refusals:\n{shown}");
}

const APPROVALS_PY: &str = r#"
import os, socket, sys, urllib.parse
proxy = urllib.parse.urlparse(os.environ['http_proxy'])
for i in range(int(sys.argv[1])):
    s = socket.create_connection((proxy.hostname, proxy.port))
    s.sendall(('CONNECT a%d.flood.test:443 HTTP/1.1\r\nHost: a%d.flood.test:443\r\n\r\n' % (i, i)).encode())
    s.recv(4096)
    s.close()
print('flooded')
"#;

#[test]
fn an_approval_flood_says_how_many_approvals_were_dropped() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = policy("approvals-flood-empty", "");
    let _ = moat(&["rm", "--force", "apflood"]);
    ok(&["run", "-d", "--name", "apflood", "--policy", p.to_str().unwrap(), "agent", "--", "sleep", "600"]);
    // The real request an operator would want to see.
    let real =
        ok(&["exec", "apflood", "--", "curl", "-s", "-m", "20", "-w", "\nhttp=%{http_code}\n", "http://up.test/"]);
    assert!(real.contains("http=403"), "{real}");
    let before = ok(&["approvals", "apflood"]);
    assert!(before.contains("up.test") && !before.contains("dropped"), "{before}");
    // 80 more destinations: with 64 kept, the real one and 16 others are evicted.
    ok(&["exec", "apflood", "--", "python3", "-c", APPROVALS_PY, "80"]);
    let after = ok(&["approvals", "apflood"]);
    ok(&["rm", "--force", "apflood"]);
    assert!(!after.contains("up.test"), "the oldest entry was evicted:\n{after}");
    assert!(after.contains("17 more were dropped"), "the operator is told how many were dropped:\n{after}");
}
