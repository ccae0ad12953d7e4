//! Transparent egress (issue 20 part 1), attacked from inside real
//! sandboxes of the agent image with every proxy variable unset: Node's
//! `fetch` and `https.get` and python's urllib with proxies disabled reach
//! a listed host and get a readable refusal (with an approval id `moat
//! approvals` lists) for an unlisted one; a name resolves to the sandbox's
//! reserved range and no DNS query leaves (a resolver in the test's network
//! namespace sees none); a raw address outside the range is unreachable; a
//! TLS SNI or HTTP Host other than the name the address was given for is
//! refused; per-binary and method rules hold as for CONNECT; an address of
//! the range the DNS never gave out (dialled straight) is refused and
//! audited, and no upstream sees it. Needs root, iproute2 and the Debian
//! mirror (the agent image).
#[path = "../supervisor/tests/gateway_common/mod.rs"]
mod gateway_common;

mod gateway_world;

use gateway_world::*;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const RULES: &str = r#"
[[network.policy]]
name = "clients"
binaries = ["/usr/bin/python3*", "/usr/bin/node*"]
[[network.policy.endpoint]]
host = "other.test"
port = 443
protocol = "rest"
access = "read-only"
allowed_ips = ["198.18.0.0/15"]
[[network.policy.endpoint]]
host = "up.test"
port = 443
allowed_ips = ["198.18.0.0/15"]
[[network.policy.endpoint]]
host = "other.test"
port = 80
allowed_ips = ["198.18.0.0/15"]
"#;

/// Every proxy variable gone, so only transparent egress can work.
const NO_PROXY_VARS: &str =
    "unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy NO_PROXY no_proxy\n\
     echo proxy_vars=$(env | grep -ci proxy)\n";

const NODE: &str = r#"
const show = (t) => t.replace(/\s+/g, " ").trim().slice(0, 400);
const get = async (u) => {
  try { const r = await fetch(u); return r.status + " " + show(await r.text()); }
  catch (e) { return "fail " + (e.cause ? (e.cause.code || e.cause.message) : e.message); }
};
const hget = (u) => new Promise((done) => {
  require("https").get(u, (r) => { let b = ""; r.on("data", (d) => b += d); r.on("end", () => done(r.statusCode + " " + show(b))); })
    .on("error", (e) => done("fail " + (e.code || e.message)));
});
(async () => {
  console.log("node_fetch=" + await get("https://other.test/repo.git/HEAD"));
  console.log("node_https_get=" + await hget("https://other.test/repo.git/HEAD"));
  console.log("node_unlisted=" + await get("https://unlisted.test/x"));
})();
"#;

const PYTHON: &str = r#"
import urllib.request as u, urllib.error as e, socket, ssl, ipaddress, errno, struct, sys
up_ip = sys.argv[1]
o = u.build_opener(u.ProxyHandler({}))
def get(url, data=None):
    try: return "200 " + o.open(u.Request(url, data=data), timeout=10).read().decode().strip()
    except e.HTTPError as x: return "%d %s" % (x.code, x.read().decode().replace("\n", " ").strip())
    except Exception as x: return "fail %r" % (x,)
print("py_get=" + get("https://other.test/repo.git/HEAD"))
print("py_post=" + get("https://other.test/repo.git/HEAD", data=b"x").split(" ")[0])
print("py_plain=" + get("http://other.test/plain"))
rng = ipaddress.ip_network("198.18.0.0/15")
a = socket.getaddrinfo("anything.exfil.test", 443, socket.AF_INET)[0][4][0]
print("dns_in_range=%s" % (ipaddress.ip_address(a) in rng))
print("dns_stable=%s" % (socket.getaddrinfo("anything.exfil.test", 80, socket.AF_INET)[0][4][0] == a))
try: socket.getaddrinfo("anything.exfil.test", 443, socket.AF_INET6); print("aaaa=some")
except socket.gaierror: print("aaaa=none")
def query(name, qtype=1):
    q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    for l in name.split("."): q += bytes([len(l)]) + l.encode()
    return q + b"\0" + struct.pack(">HH", qtype, 1)
# DNS over TCP to the sandbox's resolver: an A record in the range.
t = socket.create_connection(("127.0.0.53", 53), timeout=5)
q = query("tcp.exfil.test"); t.sendall(struct.pack(">H", len(q)) + q)
n = struct.unpack(">H", t.recv(2))[0]; r = b""
while len(r) < n: r += t.recv(n - len(r))
print("dns_tcp=%s" % (ipaddress.ip_address(r[-4:]) in rng and struct.unpack(">H", r[6:8])[0] == 1))
# Queries sent straight to resolvers outside: a public one has no route;
# the test namespace's (its address is in the range, local here) gets none.
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try: s.sendto(query("direct.exfil.test"), ("8.8.8.8", 53)); print("udp_out=sent")
except OSError as x: print("udp_out=" + errno.errorcode.get(x.errno, str(x.errno)))
try: s.sendto(query("direct.exfil.test"), (up_ip, 53))
except OSError: pass
c = socket.socket(); c.settimeout(5)
try: c.connect(("93.184.216.34", 443)); print("raw_ip=connected")
except OSError as x: print("raw_ip=" + (errno.errorcode.get(x.errno, str(x.errno)) if x.errno else type(x).__name__))
def tls(sni):
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    addr = socket.getaddrinfo("up.test", 443, socket.AF_INET)[0][4][0]
    try:
        with socket.create_connection((addr, 443), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=sni) as t:
                t.sendall(("GET /repo.git/HEAD HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % sni).encode())
                d = t.recv(100)
                return d.decode(errors="replace").split("\r\n")[0] if d else "closed"
    except Exception as x: return "refused " + type(x).__name__
print("sni_same=" + tls("up.test"))
print("sni_other=" + tls("unlisted.test"))
def plain(host):
    addr = socket.getaddrinfo("other.test", 80, socket.AF_INET)[0][4][0]
    try:
        with socket.create_connection((addr, 80), timeout=10) as t:
            t.sendall(("GET /hosted HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host).encode())
            d = t.recv(100)
            return d.decode(errors="replace").split("\r\n")[0] if d else "closed"
    except Exception as x: return "refused " + type(x).__name__
print("host_same=" + plain("other.test"))
print("host_other=" + plain("unlisted.test"))
"#;

/// A DNS server in the test's network namespace (UDP 53 on the upstream's
/// address): counts every datagram that reaches it.
fn resolver_in_test_namespace() -> Arc<AtomicUsize> {
    let name = world().net.name.clone();
    let sock = std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/var/run/netns/{name}")).expect("open netns");
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        std::net::UdpSocket::bind(("0.0.0.0", 53)).expect("bind udp 53 in the test namespace")
    })
    .join()
    .expect("netns thread");
    assert!(sock.as_raw_fd() >= 0);
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while sock.recv_from(&mut buf).is_ok() {
            s.fetch_add(1, Ordering::SeqCst);
        }
    });
    seen
}

#[test]
fn clients_without_proxy_variables_go_through_the_gateway() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dns_seen = resolver_in_test_namespace();
    let p = policy("transparent", RULES);
    let _ = moat(&["rm", "--force", "tp"]);
    ok(&["run", "-d", "--name", "tp", "--policy", p.to_str().unwrap(), "agent", "--", "sleep", "600"]);
    let up_ip = world().net.ip.to_string();
    let script = format!(
        "{NO_PROXY_VARS}node -e '{}'\npython3 -c '{}' {up_ip}\n\
         curl -s --noproxy '*' -o /dev/null -w 'curl_listed_for_others=%{{http_code}}\\n' https://other.test/repo.git/HEAD\n",
        NODE.replace('\'', "'\\''"),
        PYTHON.replace('\'', "'\\''"),
    );
    let out = ok(&["exec", "tp", "--", "sh", "-c", &script]);
    let r = kv(&out);
    let get = |k: &str| r.get(k).map(String::as_str).unwrap_or("");
    let want = |k: &str, v: &str| assert_eq!(get(k), v, "{k}\n{out}");
    want("proxy_vars", "0");
    want("node_fetch", "200 ref: refs/heads/main");
    want("node_https_get", "200 ref: refs/heads/main");
    let unlisted = get("node_unlisted");
    assert!(unlisted.starts_with("403 ") && unlisted.contains("unlisted.test:443"), "{out}");
    let id = unlisted
        .split("approval id: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("an approval id in node's refusal: {out}"))
        .to_string();
    let list = ok(&["approvals", "tp"]);
    assert!(list.contains(&id) && list.contains("unlisted.test:443"), "{list}");
    want("py_get", "200 ref: refs/heads/main");
    want("py_post", "403");
    want("py_plain", "200 echo GET /plain 0");
    want("dns_in_range", "True");
    want("dns_stable", "True");
    want("aaaa", "none");
    want("dns_tcp", "True");
    want("udp_out", "ENETUNREACH");
    assert!(get("raw_ip").starts_with("EN") || get("raw_ip") == "EACCES", "{out}");
    assert_ne!(get("raw_ip"), "connected");
    want("sni_same", "HTTP/1.1 200 OK");
    assert!(get("sni_other").starts_with("refused") || get("sni_other") == "closed", "{out}");
    want("host_same", "HTTP/1.1 200 OK");
    assert!(!get("host_other").contains("200"), "{out}");
    // curl is listed for nothing: refused though DNS answered it.
    want("curl_listed_for_others", "403");
    assert_eq!(dns_seen.load(Ordering::SeqCst), 0, "a DNS query reached the test namespace's resolver");
    let events = ok(&["events", "tp", "--json"]);
    let ev: Vec<serde_json::Value> = events.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let denied = |why: &str| {
        ev.iter().any(|e| {
            e["decision"] == "deny" && e["host"] == "up.test" && e["reason"].as_str().unwrap_or("").contains(why)
        })
    };
    assert!(denied("TLS server name unlisted.test"), "the SNI refusal is audited: {events}");
    assert!(
        ev.iter().any(|e| e["decision"] == "deny"
            && e["host"] == "other.test"
            && e["reason"].as_str().unwrap_or("").contains("Host unlisted.test")),
        "the Host refusal is audited: {events}"
    );
    ok(&["rm", "--force", "tp"]);
}

/// A process that skips the sandbox's DNS and dials an address of the
/// reserved range that DNS never gave out: one far from any handed out
/// (198.19.255.7) and the upstream's own address (inside the range, so
/// local in the sandbox). It names listed hosts (SNI up.test, Host
/// other.test), so a gateway that trusted them would relay.
const UNISSUED: &str = r#"
import socket, ssl, sys
def tls(addr, port):
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((addr, port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="up.test") as t:
                t.sendall(b"GET /unissued-tls HTTP/1.1\r\nHost: up.test\r\nConnection: close\r\n\r\n")
                d = t.recv(100)
                return d.decode(errors="replace").split("\r\n")[0] if d else "closed"
    except Exception as x: return "refused " + type(x).__name__
def plain(addr, port):
    try:
        with socket.create_connection((addr, port), timeout=10) as t:
            t.sendall(b"GET /unissued-plain HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n")
            d = t.recv(100)
            return d.decode(errors="replace").split("\r\n")[0] if d else "closed"
    except Exception as x: return "refused " + type(x).__name__
for tag, addr in (("far", "198.19.255.7"), ("up", sys.argv[1])):
    print("%s_443=%s" % (tag, tls(addr, 443)))
    print("%s_80=%s" % (tag, plain(addr, 80)))
"#;

#[test]
fn an_address_the_dns_never_gave_out_is_refused_and_audited() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = policy("transparent-unissued", RULES);
    let _ = moat(&["rm", "--force", "tpu"]);
    ok(&["run", "-d", "--name", "tpu", "--policy", p.to_str().unwrap(), "agent", "--", "sleep", "600"]);
    let up_ip = world().net.ip.to_string();
    let seen_before = world().up.seen().len() + world().plain.seen().len();
    let script = format!("{NO_PROXY_VARS}python3 -c '{}' {up_ip}\n", UNISSUED.replace('\'', "'\\''"));
    let out = ok(&["exec", "tpu", "--", "sh", "-c", &script]);
    let r = kv(&out);
    for k in ["far_443", "far_80", "up_443", "up_80"] {
        let v = r.get(k).map(String::as_str).unwrap_or_else(|| panic!("{k} in the output: {out}"));
        let refused = v == "closed"
            || v.starts_with("refused ")
            || v.starts_with("HTTP/1.1 403")
            || v.starts_with("HTTP/1.1 421");
        assert!(refused, "{k}: a connection to an address DNS never gave out must be refused, got {v:?}\n{out}");
    }
    let seen: Vec<_> = world().up.seen().into_iter().chain(world().plain.seen()).collect();
    assert!(
        !seen.iter().any(|s| s.path.starts_with("/unissued")),
        "an upstream saw a request sent to an unissued address: {seen:?}"
    );
    assert_eq!(seen.len(), seen_before, "the upstreams saw requests: {seen:?}");
    let events = ok(&["events", "tpu", "--json"]);
    let ev: Vec<serde_json::Value> = events.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    for (addr, port) in [("198.19.255.7", 443), ("198.19.255.7", 80), (up_ip.as_str(), 443), (up_ip.as_str(), 80)] {
        assert!(
            ev.iter().any(|e| e["decision"] == "deny"
                && e["host"] == addr
                && e["port"] == port
                && e["reason"].as_str().unwrap_or("").contains("did not give out")),
            "the refusal of {addr}:{port} is audited: {events}"
        );
    }
    // The operator's view (not JSON) names the refused address too.
    let plain = ok(&["events", "tpu"]);
    assert!(plain.contains("198.19.255.7") && plain.contains(&up_ip), "{plain}");
    ok(&["rm", "--force", "tpu"]);
}

/// Node's `http2.connect` offers only h2 in ALPN; the refused stream's
/// status, `x-moat-denied` header and body.
const NODE_H2: &str = r#"
const http2 = require("http2"), fs = require("fs");
const show = (t) => t.replace(/\s+/g, " ").trim().slice(0, 400);
const c = http2.connect("https://unlisted.test", { ca: fs.readFileSync("/etc/moat/ca.pem") });
c.on("error", (e) => console.log("h2_error=" + (e.code || e.message)));
const r = c.request({ ":path": "/refused-h2" });
let status = 0, denied = "", body = "";
r.on("response", (h) => { status = h[":status"]; denied = h["x-moat-denied"] || ""; });
r.on("data", (d) => { body += d; });
r.on("error", (e) => console.log("h2_stream_error=" + (e.code || e.message)));
r.on("end", () => {
  console.log("h2_status=" + status);
  console.log("h2_denied=" + show(denied));
  console.log("h2_body=" + show(body));
  c.close();
});
r.end();
"#;

/// An HTTP/2-only client (Node's `http2`, no proxy variables) refused in
/// transparent mode reads the refusal: a 403 on its stream with the same
/// body and `X-Moat-Denied` header as HTTP/1 clients get, naming the
/// approval id `moat approvals` lists (not a failed TLS handshake).
#[test]
fn an_http2_only_client_reads_its_refusal() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = policy("transparent-h2", RULES);
    let _ = moat(&["rm", "--force", "tph2"]);
    ok(&["run", "-d", "--name", "tph2", "--policy", p.to_str().unwrap(), "agent", "--", "sleep", "600"]);
    let script = format!("{NO_PROXY_VARS}node -e '{}'\n", NODE_H2.replace('\'', "'\\''"));
    let out = ok(&["exec", "tph2", "--", "sh", "-c", &script]);
    let r = kv(&out);
    let get = |k: &str| r.get(k).map(String::as_str).unwrap_or("");
    assert_eq!(get("proxy_vars"), "0", "{out}");
    assert_eq!(get("h2_status"), "403", "an h2-only client gets a 403 on its stream: {out}");
    let body = get("h2_body");
    assert!(body.contains("unlisted.test:443"), "{out}");
    let id = body
        .split("approval id: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("an approval id in the h2 refusal's body: {out}"))
        .to_string();
    let denied = get("h2_denied");
    assert!(
        denied.starts_with("moat denied") && denied.contains("unlisted.test:443") && denied.contains(&id),
        "the x-moat-denied header names the destination and approval {id}: {out}"
    );
    let list = ok(&["approvals", "tph2"]);
    assert!(list.contains(&id) && list.contains("unlisted.test:443"), "{list}");
    ok(&["rm", "--force", "tph2"]);
}
