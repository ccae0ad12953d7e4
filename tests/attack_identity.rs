//! Attacks on the gateway's idea of who is calling, each performed from
//! inside a real sandbox of the agent image (issue 17): the agent's own code
//! injected into an allowed binary (LD_PRELOAD, LD_AUDIT, an OpenSSL config
//! that loads an engine), a descriptor taken from another process
//! (pidfd_getfd), and rights inherited from an allowed parent (a git alias
//! that runs python). Each must be refused; the control requests beside them
//! must still work. The injected library is built on the host with the
//! system compiler (tests/probe/attacks/evil.c). Needs root, iproute2, cc
//! and the Debian mirror.
#[path = "../supervisor/tests/gateway_common/mod.rs"]
mod gateway_common;
mod gateway_world;

use gateway_world::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// curl, and python without anonymous executable memory (`jit = false`),
/// may reach other.test over plain HTTP; git (and its https helper, named
/// explicitly) may read up.test. Nothing else is allowed.
const RULES: &str = r#"
[[network.policy]]
name = "curl"
binaries = ["/usr/bin/curl"]
[[network.policy.endpoint]]
host = "other.test"
port = 80
allowed_ips = ["198.18.0.0/15"]

[[network.policy]]
name = "py"
binaries = ["/usr/bin/python3*"]
jit = false
[[network.policy.endpoint]]
host = "other.test"
port = 80
allowed_ips = ["198.18.0.0/15"]

[[network.policy]]
name = "git"
binaries = ["/usr/bin/git", "/usr/lib/git-core/git-remote-http", "/usr/lib/git-core/git-remote-https"]
[[network.policy.endpoint]]
host = "up.test"
port = 443
protocol = "rest"
access = "read-only"
allowed_ips = ["198.18.0.0/15"]
"#;

/// A workspace the sandbox user owns, holding the attack's files.
fn workspace(name: &str) -> PathBuf {
    let dir = world().home.path().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let so = dir.join("evil.so");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probe/attacks/evil.c");
    let o = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&so)
        .arg(&src)
        .output()
        .expect("run cc (install gcc)");
    assert!(o.status.success(), "cc: {}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(dir.join("alias.py"), ALIAS_PY).unwrap();
    std::fs::write(dir.join("steal.py"), STEAL_PY).unwrap();
    std::fs::write(dir.join("jit.py"), JIT_PY).unwrap();
    std::fs::write(dir.join("tfo.py"), TFO_PY).unwrap();
    std::fs::write(dir.join("engine.cnf"), ENGINE_CNF.replace("SO", "/sandbox/evil.so")).unwrap();
    for p in [
        dir.clone(),
        so,
        dir.join("alias.py"),
        dir.join("steal.py"),
        dir.join("jit.py"),
        dir.join("tfo.py"),
        dir.join("engine.cnf"),
    ] {
        std::os::unix::fs::chown(&p, Some(1000), Some(1000)).unwrap();
    }
    dir
}

/// Run as a git alias: python started by git, asking for a host only git may reach.
const ALIAS_PY: &str = r#"
import urllib.request as u, urllib.error as e
try:
    print("alias_py=%d" % u.urlopen("https://up.test/repo.git/HEAD").status)
except e.HTTPError as x:
    print("alias_py=%d" % x.code)
except Exception as x:
    print("alias_py=refused" if "403" in str(x) else "alias_py=error %s" % x)
"#;

/// Takes a descriptor out of another process of the sandbox.
const STEAL_PY: &str = r#"
import ctypes, errno, os, subprocess
p = subprocess.Popen(["sleep", "30"])
try:
    pidfd = os.pidfd_open(p.pid)
    print("pidfd_open=ok")
except OSError as x:
    print("pidfd_open=%s" % errno.errorcode.get(x.errno, x.errno))
    pidfd = -1
libc = ctypes.CDLL(None, use_errno=True)
SYS_pidfd_getfd = 438
fd = libc.syscall(SYS_pidfd_getfd, pidfd, 0, 0) if pidfd >= 0 else -1
if fd >= 0:
    print("pidfd_getfd=stolen")
else:
    # Without a pidfd, ask for one of the sandbox's init (pid 1) anyway.
    fd = libc.syscall(SYS_pidfd_getfd, 3, 0, 0)
    print("pidfd_getfd=%s" % errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno()))
p.kill()
"#;

/// python asks for other.test, once as it is and once holding anonymous
/// executable memory (where code loaded from anywhere could have been put).
const JIT_PY: &str = r#"
import mmap, sys, urllib.request as u, urllib.error as e
if sys.argv[1] == "jit":
    m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    m.write(b"\xc3")
try:
    print("%s=%d" % (sys.argv[1], u.urlopen("http://other.test/" + sys.argv[1]).status))
except e.HTTPError as x:
    print("%s=%d" % (sys.argv[1], x.code))
"#;

/// TCP Fast Open connects a socket without connect(2), so the connect
/// notification would not see who connected it: the sandbox may not use it.
const TFO_PY: &str = r#"
import errno, os, socket, urllib.parse
proxy = urllib.parse.urlsplit(os.environ["http_proxy"])
s = socket.socket()
try:
    s.sendto(b"GET http://other.test/tfo HTTP/1.1\r\nHost: other.test\r\n\r\n", socket.MSG_FASTOPEN, (proxy.hostname, proxy.port))
    print("tfo=sent")
except OSError as x:
    print("tfo=%s" % errno.errorcode.get(x.errno, x.errno))
"#;

/// An OpenSSL config whose engine section loads the agent's library.
const ENGINE_CNF: &str = r#"
openssl_conf = conf
[conf]
engines = engines
[engines]
evil = evil
[evil]
dynamic_path = SO
init = 1
"#;

const SCRIPT: &str = r#"
code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
ran() { test -s /tmp/injected && echo yes || echo no; rm -f /tmp/injected; }
echo "plain=$(code http://other.test/plain)"
echo "preload=$(LD_PRELOAD=/sandbox/evil.so code http://other.test/preload)"
echo "preload_ran=$(ran)"
echo "audit=$(LD_AUDIT=/sandbox/evil.so code http://other.test/audit)"
echo "audit_ran=$(ran)"
echo "engine=$(OPENSSL_CONF=/sandbox/engine.cnf code http://other.test/engine)"
echo "engine_ran=$(ran)"
git clone -q https://up.test/repo.git /tmp/c 2>/tmp/e && echo "git=$(cat /tmp/c/README)" || echo "git=fail $(cat /tmp/e)"
git -c alias.x='!python3 /sandbox/alias.py' x
python3 /sandbox/steal.py
python3 /sandbox/jit.py py_plain
python3 /sandbox/jit.py jit
python3 /sandbox/tfo.py
"#;

/// Runs `script` with sh in a fresh agent sandbox under `policy`, with `ws`
/// as its workspace; its output.
fn run_script(policy: &Path, ws: &Path, script: &str) -> String {
    ok(&[
        "run",
        "--rm",
        "--policy",
        policy.to_str().unwrap(),
        "--workspace",
        ws.to_str().unwrap(),
        "agent",
        "--",
        "sh",
        "-c",
        script,
    ])
}

#[test]
fn borrowed_rights_are_refused_from_inside_a_sandbox() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ws = workspace("identity-ws");
    let p = policy("identity", RULES);
    let out = run_script(&p, &ws, SCRIPT);
    let r = kv(&out);
    let want = |k: &str, v: &str| assert_eq!(r.get(k).map(String::as_str), Some(v), "{k}\n{out}");
    // Controls: the allowed binaries, unaltered, work.
    want("plain", "200");
    want("git", "through the gateway");
    // Code injected into curl: it ran (the marker), and the gateway refused curl.
    want("preload_ran", "yes");
    want("preload", "403");
    want("audit_ran", "yes");
    want("audit", "403");
    want("engine_ran", "yes");
    want("engine", "403");
    // python started by git does not inherit git's rule.
    want("alias_py", "refused");
    // A rule with jit = false refuses a caller holding anonymous executable memory.
    want("py_plain", "200");
    want("jit", "403");
    // No descriptor leaves another process.
    assert_ne!(r.get("pidfd_getfd").map(String::as_str), Some("stolen"), "{out}");
    want("pidfd_getfd", "EPERM");
    // No connection without connect(2): TCP Fast Open is refused.
    want("tfo", "EPERM");
    let seen = world().up.seen();
    for path in ["/preload", "/audit", "/engine"] {
        assert!(!seen.iter().any(|s| s.path == path), "{path} reached the upstream: {seen:?}");
    }
}

/// Only curl may reach other.test: python has no rule of its own.
const CURL_ONLY: &str = r#"
[[network.policy]]
name = "curl"
binaries = ["/usr/bin/curl"]
[[network.policy.endpoint]]
host = "other.test"
port = 80
allowed_ips = ["198.18.0.0/15"]
"#;

/// python lends its gateway connection to an idle curl and parks its own
/// descriptor in flight (SCM_RIGHTS to itself), so curl's is the only fd
/// table holding the socket while the gateway looks; then takes it back
/// and asks for a host only curl may reach (tests/probe/attacks/borrow_socket.py).
#[test]
fn a_socket_lent_to_an_allowed_binary_is_refused_from_inside_a_sandbox() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ws = world().home.path().join("borrow-ws");
    let _ = std::fs::remove_dir_all(&ws);
    std::fs::create_dir_all(&ws).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probe/attacks/borrow_socket.py");
    std::fs::copy(&src, ws.join("borrow_socket.py")).unwrap();
    for p in [ws.clone(), ws.join("borrow_socket.py")] {
        std::os::unix::fs::chown(&p, Some(1000), Some(1000)).unwrap();
    }
    let p = policy("borrow", CURL_ONLY);
    let script = "echo \"curl=$(curl -s -o /dev/null -w '%{http_code}' http://other.test/curl)\"\n\
                  python3 /sandbox/borrow_socket.py other.test";
    let out = run_script(&p, &ws, script);
    let r = kv(&out);
    let want = |k: &str, v: &str| assert_eq!(r.get(k).map(String::as_str), Some(v), "{k}\n{out}");
    // Controls: curl is allowed, python on its own socket is not.
    want("curl", "200");
    want("direct", "403");
    // Through the borrowed socket python is still python: a refusal or a
    // closed connection, never the upstream's answer.
    for k in ["late", "corked", "again"] {
        let v = r.get(k).map(String::as_str);
        assert!(matches!(v, Some("403") | Some("closed")), "{k}={v:?}: python got through as curl\n{out}");
    }
    let seen = world().plain.seen();
    for path in ["/direct", "/late", "/corked", "/again"] {
        assert!(!seen.iter().any(|s| s.path == path), "{path} reached the upstream: {seen:?}");
    }
}
