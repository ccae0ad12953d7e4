//! Attacks on the host's memory and CPU through work a sandbox causes
//! outside itself (issue 18), each performed from inside a real sandbox of
//! the agent image: many large request bodies sent slowly to
//! `inference.local` at once (the supervisor's memory), a body that never
//! ends (the supervisor's time), and a busy loop (the host's CPU). Needs
//! root, iproute2 and the Debian mirror.
#[path = "../supervisor/tests/gateway_common/mod.rs"]
mod gateway_common;
mod gateway_world;
use gateway_world::*;

/// Opens `n` connections to inference.local through the gateway and sends
/// each a `size`-byte body, 1 MiB per connection per round, so that every
/// body is in flight at once; prints one `status=` line per connection.
const SLOW_BODIES_PY: &str = r#"
import socket, sys, time
n, size = int(sys.argv[1]), int(sys.argv[2])
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(b"POST http://inference.local/v1/chat/completions HTTP/1.1\r\nHost: inference.local\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % size)
    socks.append(s)
piece = b"x" * (1 << 20)
sent = 0
while sent < size:
    k = min(len(piece), size - sent)
    for s in socks:
        s.sendall(piece[:k])
    sent += k
    time.sleep(0.05)
for s in socks:
    s.settimeout(60)
    head = b""
    while b"\r\n" not in head:
        b = s.recv(4096)
        if not b:
            break
        head += b
    print("status=" + (head.split(b" ")[1].decode() if b" " in head else "none"))
"#;

/// Sends request heads whose bodies break the rules: one longer than the
/// relay takes (declared, and chunked without a declared length) and one
/// that never finishes; prints `NAME=STATUS` for each.
const BAD_BODIES_PY: &str = r#"
import socket, time
def status(s):
    s.settimeout(30)
    head = b""
    try:
        while b"\r\n" not in head:
            b = s.recv(4096)
            if not b:
                break
            head += b
    except OSError:
        pass
    return head.split(b" ")[1].decode() if b" " in head else "none"
def start(extra):
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(b"POST http://inference.local/v1/chat/completions HTTP/1.1\r\nHost: inference.local\r\n" + extra + b"\r\n")
    return s
s = start(b"Content-Length: %d\r\n" % ((32 << 20) + 1))
print("declared=" + status(s))
s = start(b"Transfer-Encoding: chunked\r\n")
try:
    piece = b"x" * (1 << 20)
    for _ in range(40):
        s.sendall(b"100000\r\n" + piece + b"\r\n")
except OSError:
    pass
print("chunked=" + status(s))
s = start(b"Content-Length: 1000\r\n")
s.sendall(b"{")
t = time.time()
print("slow=" + status(s))
print("slow_secs=%d" % int(time.time() - t))
"#;

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')).map(str::trim)
}

/// The supervisor's pid from the sandbox's record.
fn supervisor_pid(name: &str) -> i64 {
    let rec = std::fs::read(world().home.path().join("home/sandboxes").join(name).join("state.json")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&rec).unwrap();
    v["supervisor"]["pid"].as_i64().expect("a running sandbox records its supervisor")
}

fn kib(status: &str, key: &str) -> u64 {
    field(status, key).and_then(|v| v.trim_end_matches(" kB").trim().parse().ok()).unwrap_or(0)
}

/// The baseline policy with one setting changed (`from` must be in it).
fn tuned(name: &str, from: &str, to: &str) -> std::path::PathBuf {
    let p = policy(name, "");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "the baseline has no {from:?}");
    std::fs::write(&p, text.replace(from, to)).unwrap();
    p
}

fn set_route() {
    ok(&["inference", "set", "--default", "--provider", "local", "--endpoint", "http://other.test:80"]);
}

fn clear_route() {
    let _ = std::fs::remove_file(world().home.path().join("home/inference.json"));
}

/// 16 bodies of 24 MiB in flight at once through inference.local: before,
/// the relay held each whole in the supervisor (outside the sandbox's
/// cgroup), which grew by their sum. Now the bodies stream through and the
/// supervisor's peak resident memory stays small; every request succeeds.
#[test]
fn slow_large_inference_bodies_do_not_grow_the_supervisor() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    set_route();
    let p = policy("exhaust-mem", "");
    ok(&["run", "-d", "--name", "exhaust-mem", "--policy", p.to_str().unwrap(), "agent", "--", "sleep", "600"]);
    let pid = supervisor_pid("exhaust-mem");
    let before = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let size = (24u64 << 20).to_string();
    let out = ok(&["exec", "exhaust-mem", "--", "python3", "-c", SLOW_BODIES_PY, "16", &size]);
    let after = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    ok(&["rm", "--force", "exhaust-mem"]);
    clear_route();
    let statuses: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("status=")).collect();
    assert_eq!(statuses.len(), 16, "{out}");
    assert!(statuses.iter().all(|s| *s == "200"), "every body reached the provider: {out}");
    let seen = world().plain.seen();
    let relayed = seen.iter().filter(|s| s.body_len == 24 << 20).count();
    assert!(relayed >= 16, "the provider saw {relayed} whole bodies");
    let (hwm, rss0) = (kib(&after, "VmHWM"), kib(&before, "VmRSS"));
    assert!(
        hwm < 64 * 1024,
        "the supervisor's peak resident memory reached {} MiB (it started at {} MiB): request bodies are held on the host",
        hwm / 1024,
        rss0 / 1024
    );
}

/// Bodies over the relay's limit get 413 (declared or not), and a body
/// that stops arriving gets 408 once the policy's deadline passes, instead
/// of holding the supervisor's memory and a connection for ever.
#[test]
fn oversized_and_stalled_inference_bodies_are_refused_clearly() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    set_route();
    let p = tuned("exhaust-bad", "request_body_timeout_secs = 120", "request_body_timeout_secs = 2");
    let o = moat(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent", "--", "python3", "-c", BAD_BODIES_PY]);
    clear_route();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    let r = kv(&out);
    assert_eq!(r.get("declared").map(String::as_str), Some("413"), "{out}");
    assert_eq!(r.get("chunked").map(String::as_str), Some("413"), "{out}");
    assert_eq!(r.get("slow").map(String::as_str), Some("408"), "{out}");
    let secs: u64 = r["slow_secs"].parse().unwrap();
    assert!((1..=10).contains(&secs), "the stalled body was cut after {secs} s, not after the policy's 2 s");
}

/// The supervisor (and with it the gateways and the launcher) runs in a
/// memory cgroup of its own, limited by the policy, so what it does for the
/// sandbox is charged to a bound of the sandbox's, not to the host.
#[test]
fn the_supervisor_is_charged_to_a_cgroup_of_its_own() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = tuned("exhaust-cg", "memory_max_mib = 256", "memory_max_mib = 96");
    ok(&["run", "-d", "--name", "exhaust-cg", "--policy", p.to_str().unwrap(), "agent", "--", "sleep", "600"]);
    let pid = supervisor_pid("exhaust-cg");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let memory = cgroups
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
            (ctl.split(',').any(|c| c == "memory")
                || (ctl.is_empty() && !std::path::Path::new("/sys/fs/cgroup/memory").exists()))
            .then(|| path.to_string())
        })
        .expect("the supervisor is in a memory cgroup");
    assert!(memory.ends_with("/exhaust-cg"), "the supervisor's memory cgroup is {memory}, not one of its own");
    let dir = if std::path::Path::new("/sys/fs/cgroup/memory").exists() {
        std::path::Path::new("/sys/fs/cgroup/memory").join(memory.trim_start_matches('/'))
    } else {
        std::path::Path::new("/sys/fs/cgroup").join(memory.trim_start_matches('/'))
    };
    let limit = ["memory.limit_in_bytes", "memory.max"]
        .iter()
        .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .unwrap_or_default();
    ok(&["rm", "--force", "exhaust-cg"]);
    assert_eq!(limit.trim(), (96u64 << 20).to_string(), "the supervisor's memory limit in {}", dir.display());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while dir.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!dir.exists(), "the supervisor's cgroup {} is left after rm", dir.display());
}

/// A busy loop in four processes, for two seconds: with `cpu_max = 0.5`
/// the sandbox gets half a core, not the host's every core.
#[test]
fn a_busy_sandbox_gets_only_its_cpu_share() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = tuned("exhaust-cpu", "cpu_max = 2", "cpu_max = 0.5");
    let script = r#"
import os, time
t0 = time.time()
kids = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        end = time.time() + 2
        while time.time() < end:
            pass
        os._exit(0)
    kids.append(pid)
for k in kids:
    os.waitpid(k, 0)
t = os.times()
print("cpu=%.2f" % (t.children_user + t.children_system))
print("wall=%.2f" % (time.time() - t0))
"#;
    let o = moat(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent", "--", "python3", "-c", script]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    let r = kv(&out);
    let cpu: f64 = r["cpu"].parse().unwrap();
    let wall: f64 = r["wall"].parse().unwrap();
    // Half a core for ~2 s is ~1 s of CPU; unbounded it is up to 2 s per core.
    assert!(cpu <= wall * 0.5 + 0.4, "the sandbox used {cpu:.2} s of CPU in {wall:.2} s with cpu_max = 0.5");
}

fn status_field(pid: i64, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    field(&s, key).unwrap_or_default().split_whitespace().next().unwrap_or_default().to_string()
}

fn init_pid(name: &str) -> i64 {
    let rec = std::fs::read(world().home.path().join("home/sandboxes").join(name).join("state.json")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&rec).unwrap();
    v["init"]["pid"].as_i64().expect("a running sandbox records its init")
}

/// One sandbox fills its process limit (RLIMIT_NPROC counts per host uid);
/// another sandbox must still be able to fork. Before, every sandbox ran as
/// host uid 1000 (often a real account), so the first one's processes
/// counted against the second. Each sandbox now runs as a host uid of its
/// own, while the files it writes in its workspace stay the image user's.
#[test]
fn one_sandbox_filling_its_process_limit_does_not_stop_another() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = tuned("exhaust-nproc", "rlimit_nproc = 512", "rlimit_nproc = 48");
    // Forks until the limit refuses, keeps every child, then says how many.
    let hog = "import os, time\nn = 0\ntry:\n    for i in range(80):\n        if os.fork() == 0:\n            time.sleep(600)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nopen('/sandbox/owned', 'w').write(str(n))\ntime.sleep(600)\n";
    ok(&["run", "-d", "--name", "nproc-hog", "--policy", p.to_str().unwrap(), "agent", "--", "python3", "-c", hog]);
    let ws = world().home.path().join("home/sandboxes/nproc-hog/workspace/owned");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !ws.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let hog_uid = status_field(init_pid("nproc-hog"), "Uid");
    let victim = "for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; wait && echo forked=ok; echo uid=$(id -u); \
                  touch /sandbox/mine; stat -c owner=%u /sandbox/mine";
    let o = moat(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent", "--", "sh", "-c", victim]);
    let owner = std::fs::metadata(&ws).map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    let held = std::fs::read_to_string(&ws).unwrap_or_default();
    ok(&["rm", "--force", "nproc-hog"]);
    let out = String::from_utf8_lossy(&o.stdout);
    let r = kv(&out);
    assert_eq!(
        r.get("forked").map(String::as_str),
        Some("ok"),
        "a second sandbox could not fork while the first held its process limit:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(held.parse::<u32>().is_ok_and(|n| n >= 40), "the first sandbox held {held:?} processes, not its limit");
    assert_ne!(hog_uid, "1000", "the sandbox runs as host uid 1000");
    assert_ne!(r.get("uid").map(String::as_str), Some(hog_uid.as_str()), "two sandboxes share host uid {hog_uid}");
    assert_eq!(r.get("owner"), r.get("uid"), "inside, the sandbox owns what it writes in its workspace: {out}");
    assert_eq!(owner.ok(), Some(1000), "on the host, the workspace's files stay the image user's (uid 1000)");
}
