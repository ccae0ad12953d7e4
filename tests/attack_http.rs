//! Attacks on what an inspected HTTP rule means, performed from inside real
//! sandboxes of the agent image (issue 17, items 4 and 5): encoded path
//! separators and path parameters an upstream reads differently from the
//! rule, a client's Host header on the forward path, WebSocket upgrades and
//! method-override headers on a read-only rule, and inference.local used as
//! a general proxy carrying the operator's key (admin, files, fine-tuning,
//! dot segments, the key echoed back in a 2xx). Needs root, iproute2 and the
//! Debian mirror (the agent image is built once into a store under target/).
#[path = "../supervisor/tests/gateway_common/mod.rs"]
mod gateway_common;
mod gateway_world;
use gateway_world::*;

const PATHS: &str = r#"
[[network.policy]]
name = "curl-public"
binaries = ["/usr/bin/curl"]
[[network.policy.endpoint]]
host = "up.test"
port = 443
protocol = "rest"
rules = [
  { allow = { method = "GET", path = "/public/**" } },
  { allow = { method = "GET", path = "/users/*/profile" } },
  { allow = { method = "GET", path = "/files/*.txt" } },
]
allowed_ips = ["198.18.0.0/15"]
"#;

/// Each request names a marker (`pa-N-`) so the upstream's log tells which
/// ones got through; `ok` is the control the rule allows.
const PATH_SCRIPT: &str = r#"
get() { printf '%s=' "$1"; curl -s -o /dev/null -w '%{http_code}' --path-as-is "https://up.test$2"; echo; }
get ok /public/pa-0-ok
get slash_lower '/public/..%2fprivate/pa-1-secret'
get slash_upper '/public/..%2Fprivate/pa-2-secret'
get backslash '/public/..%5cprivate/pa-3-secret'
get backslash_upper '/public/..%5Cprivate/pa-4-secret'
get encoded_dots '/public/%2e%2e/private/pa-5-secret'
get literal_dots '/public/../private/pa-6-secret'
get dotdot_param '/public/..;/private/pa-7-secret'
get dotdot_param_value '/public/..;jsessionid=x/private/pa-8-secret'
get empty_segment '/users//profile?pa-9-'
get param_suffix '/files/pa-10-secret.db;.txt'
get lone_separator '/public/pa-11-a%2fb'
"#;

#[test]
fn encoded_separators_and_path_parameters_cannot_slip_past_a_path_rule() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = policy("paths", PATHS);
    let out = ok(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent", "--", "sh", "-c", PATH_SCRIPT]);
    let r = kv(&out);
    assert_eq!(r.get("ok").map(String::as_str), Some("200"), "the rule allows its own paths: {out}");
    for k in [
        "slash_lower",
        "slash_upper",
        "backslash",
        "backslash_upper",
        "encoded_dots",
        "literal_dots",
        "dotdot_param",
        "dotdot_param_value",
        "empty_segment",
        "param_suffix",
        "lone_separator",
    ] {
        assert_eq!(r.get(k).map(String::as_str), Some("400"), "{k} is refused as a path shape: {out}");
    }
    let seen = world().up.seen();
    assert!(seen.iter().any(|s| s.path.contains("pa-0-")), "the control reached the upstream: {seen:?}");
    let through: Vec<_> = seen.iter().filter(|s| s.path.contains("pa-") && !s.path.contains("pa-0-")).collect();
    assert!(through.is_empty(), "refused paths reached the upstream: {through:?}");
}

const PLAIN: &str = r#"
[[network.policy]]
name = "curl-plain"
binaries = ["/usr/bin/curl"]
[[network.policy.endpoint]]
host = "up.test"
port = 80
allowed_ips = ["198.18.0.0/15"]

[[network.policy]]
name = "curl-plain-inspected"
binaries = ["/usr/bin/curl"]
[[network.policy.endpoint]]
host = "other.test"
port = 80
protocol = "rest"
access = "read-only"
allowed_ips = ["198.18.0.0/15"]
"#;

#[test]
fn the_forward_path_sends_the_host_it_decided_on() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = policy("plain", PLAIN);
    // curl sends `GET http://up.test/vh-1` to the proxy with the client's
    // own Host: the decision was made for up.test, the vhost is another.
    let script = "curl -s -H 'Host: internal-vhost.example' http://up.test/vh-1; echo; \
                  curl -s -H 'Host: internal-vhost.example:8080' http://other.test/vh-2; echo";
    let out = ok(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent", "--", "sh", "-c", script]);
    let seen = world().plain.seen();
    for (marker, host) in [("/vh-1", "up.test"), ("/vh-2", "other.test")] {
        let s = seen.iter().find(|s| s.path == marker).unwrap_or_else(|| panic!("{marker} relayed: {out}"));
        let got: Vec<_> = s.headers.iter().filter(|(k, _)| k == "host").map(|(_, v)| v.as_str()).collect();
        assert_eq!(got, [host], "{marker}: the upstream reads the Host the rule was decided for");
    }
}

/// A WebSocket upgrade through the proxy (`tls`: through a CONNECT tunnel
/// to port 443, else the plain forward path); prints `ws_TAG=STATUS ECHO`.
const WS_PY: &str = r#"
import socket, ssl, sys
tag, host, tls = sys.argv[1], sys.argv[2], sys.argv[3] == "tls"
def head(s):
    r = b""
    while b"\r\n\r\n" not in r:
        c = s.recv(4096)
        if not c:
            break
        r += c
    return r.split(b" ")[1].decode() if r else "closed"
s = socket.create_connection(("127.0.0.1", 3128))
target = "/ws"
if tls:
    s.sendall(("CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n\r\n" % (host, host)).encode())
    code = head(s)
    if code != "200":
        print("ws_%s=connect-%s" % (tag, code)); sys.exit()
    s = ssl.create_default_context(cafile="/etc/moat/ca-bundle.pem").wrap_socket(s, server_hostname=host)
else:
    target = "http://%s/ws" % host
s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" % (target, host)).encode())
code, echo = head(s), ""
if code == "101":
    s.sendall(b"uninspected-bytes")
    echo = s.recv(100).decode()
print("ws_%s=%s %s" % (tag, code, echo))
"#;

const UPGRADES: &str = r#"
[[network.policy]]
name = "py-read-only"
binaries = ["/usr/bin/python3*"]
[[network.policy.endpoint]]
host = "other.test"
port = 443
protocol = "rest"
access = "read-only"
allowed_ips = ["198.18.0.0/15"]
[[network.policy.endpoint]]
host = "other.test"
port = 80
protocol = "rest"
access = "read-only"
allowed_ips = ["198.18.0.0/15"]

[[network.policy]]
name = "py-sockets"
binaries = ["/usr/bin/python3*"]
[[network.policy.endpoint]]
host = "up.test"
port = 443
protocol = "rest"
rules = [{ allow = { method = "GET", path = "/ws" } }]
upgrade = true
allowed_ips = ["198.18.0.0/15"]
"#;

#[test]
fn an_upgrade_needs_a_rule_that_allows_it() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = policy("upgrades", UPGRADES);
    let script = format!(
        "cat > /tmp/ws.py <<'EOF'\n{WS_PY}\nEOF\n\
         python3 /tmp/ws.py ro_tls other.test tls\n\
         python3 /tmp/ws.py ro_plain other.test plain\n\
         python3 /tmp/ws.py allowed up.test tls\n"
    );
    let out = ok(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent", "--", "sh", "-c", &script]);
    let r = kv(&out);
    // A read-only rule must not become a byte pipe after a 101.
    assert_eq!(r.get("ws_ro_tls").map(String::as_str), Some("403"), "{out}");
    assert_eq!(r.get("ws_ro_plain").map(String::as_str), Some("403"), "{out}");
    // The rule that says `upgrade = true` keeps WebSockets working.
    assert_eq!(r.get("ws_allowed").map(String::as_str), Some("101 uninspected-bytes"), "{out}");
}

const OVERRIDES: &str = r#"
[[network.policy]]
name = "curl-read-only"
binaries = ["/usr/bin/curl"]
[[network.policy.endpoint]]
host = "other.test"
port = 443
protocol = "rest"
access = "read-only"
allowed_ips = ["198.18.0.0/15"]
"#;

#[test]
fn method_override_headers_are_checked_as_the_method() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = policy("overrides", OVERRIDES);
    let script = r#"
get() { printf '%s=' "$1"; curl -s -o /dev/null -w '%{http_code}' -H "$2" "https://other.test/$3"; echo; }
get plain 'X-Plain: 1' mo-0
get override 'X-HTTP-Method-Override: DELETE' mo-1
get method 'X-HTTP-Method: PUT' mo-2
get method_override 'X-Method-Override: POST' mo-3
get lower 'x-http-method-override: delete' mo-4
get listed 'X-HTTP-Method-Override: GET, DELETE' mo-5
get harmless 'X-HTTP-Method-Override: HEAD' mo-6
get rewrite 'X-Original-URL: /admin/delete-everything' mo-7
"#;
    let out = ok(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent", "--", "sh", "-c", script]);
    let r = kv(&out);
    let want = |k: &str, v: &str| assert_eq!(r.get(k).map(String::as_str), Some(v), "{k}\n{out}");
    want("plain", "200");
    want("override", "403");
    want("method", "403");
    want("method_override", "403");
    want("lower", "403");
    want("listed", "400");
    want("harmless", "200");
    want("rewrite", "200");
    let seen = world().up.seen();
    let through: Vec<_> =
        seen.iter().filter(|s| ["/mo-1", "/mo-2", "/mo-3", "/mo-4", "/mo-5"].contains(&s.path.as_str())).collect();
    assert!(through.is_empty(), "overridden writes reached the upstream: {through:?}");
    let rewrite = seen.iter().find(|s| s.path == "/mo-7").expect("the plain request went through");
    assert!(
        !rewrite.headers.iter().any(|(k, _)| k == "x-original-url"),
        "a routing header that replaces the checked path reached the upstream: {rewrite:?}"
    );
}

const SECRET: &str = "sk-proj-ATTACKNEVERSEES0123456789abcdef";

/// Sets the default inference route (openai kind, `endpoint`) with SECRET as its key.
fn route_to(endpoint: &str) {
    let o = moat_stdin(&["credentials", "set", "attack-key"], SECRET);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ok(&[
        "inference",
        "set",
        "--default",
        "--provider",
        "openai",
        "--endpoint",
        endpoint,
        "--credential",
        "attack-key",
    ]);
}

#[test]
fn inference_local_relays_only_inference_api_shapes() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    route_to("https://up.test");
    let script = r#"
req() { printf '%s=' "$1"; shift; curl -s -o /dev/null -w '%{http_code}' --path-as-is "$@"; echo; }
req models http://inference.local/v1/models
req chat -H 'Content-Type: application/json' -d '{"model":"m","messages":[]}' http://inference.local/v1/chat/completions
req delete_file -X DELETE http://inference.local/v1/files/file-inf-1
req fine_tune -H 'Content-Type: application/json' -d '{"training_file":"inf-2"}' http://inference.local/v1/fine_tuning/jobs
req admin_keys 'http://inference.local/v1/organization/admin_api_keys?inf-3'
req dot_segment http://inference.local/v1/models/../files/inf-4
req encoded_dots http://inference.local/v1/models/%2e%2e/files/inf-5
req encoded_slash 'http://inference.local/v1/models/..%2ffiles%2finf-6'
req tls_delete --cacert /etc/moat/ca.pem -X DELETE https://inference.local/v1/files/file-inf-7
req wrong_method -X DELETE http://inference.local/v1/chat/completions
"#;
    let p = policy("inference-shapes", "");
    let out = ok(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent", "--", "sh", "-c", script]);
    std::fs::remove_file(world().home.path().join("home/inference.json")).expect("remove the default route");
    let r = kv(&out);
    let want = |k: &str, v: &str| assert_eq!(r.get(k).map(String::as_str), Some(v), "{k}\n{out}");
    want("models", "200");
    want("chat", "200");
    for k in ["delete_file", "fine_tune", "admin_keys", "tls_delete", "wrong_method"] {
        want(k, "403");
    }
    for k in ["dot_segment", "encoded_dots", "encoded_slash"] {
        want(k, "400");
    }
    let seen = world().up.seen();
    let through: Vec<_> = seen
        .iter()
        .filter(|s| s.path.contains("inf-") || s.path.contains("fine_tuning") || s.method == "DELETE")
        .collect();
    assert!(through.is_empty(), "non-inference calls reached the provider with the key: {through:?}");
}

/// A provider-like server (plain HTTP on `up.test:8081`) that answers every
/// request 200 and echoes the credential it received in a response header
/// and in the body, the body in two writes that split the key.
fn echoing_provider() -> &'static str {
    static STARTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    STARTED.get_or_init(|| {
        let l = world().net.listen(8081);
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || echo_once(s));
            }
        });
    });
    "http://up.test:8081"
}

fn echo_once(mut s: std::net::TcpStream) {
    use std::io::{Read, Write};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let field = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let len: usize = field("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while buf.len() < head_end + len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let auth = field("authorization").unwrap_or_default();
    let body = format!("{{\"object\":\"chat.completion\",\"you_sent\":\"{auth}\"}}");
    let cut = body.find("ATTACK").map_or(body.len() / 2, |i| i + 3);
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Echo-Authorization: {auth}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(&body.as_bytes()[..cut]);
    let _ = s.flush();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let _ = s.write_all(&body.as_bytes()[cut..]);
}

#[test]
fn the_provider_key_is_scrubbed_from_every_inference_response() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    route_to(echoing_provider());
    let script = r#"
curl -sS -D - -H 'Content-Type: application/json' -d '{"model":"m","messages":[]}' http://inference.local/v1/chat/completions
echo
curl -sS -D - --cacert /etc/moat/ca.pem -H 'Content-Type: application/json' -d '{"model":"m","input":"x"}' https://inference.local/v1/embeddings
echo
echo done
"#;
    let p = policy("inference-echo", "");
    let out = ok(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent", "--", "sh", "-c", script]);
    std::fs::remove_file(world().home.path().join("home/inference.json")).expect("remove the default route");
    assert!(out.contains("200 OK") && out.contains("you_sent"), "the provider answered: {out}");
    assert!(out.trim_end().ends_with("done"), "{out}");
    assert!(!out.contains("ATTACKNEVERSEES"), "the key came back to the sandbox in a 2xx: {out}");
    assert!(out.to_ascii_lowercase().contains("x-echo-authorization: bearer [redacted]"), "{out}");
    assert!(out.contains("\"you_sent\":\"Bearer [redacted]\""), "{out}");
}
