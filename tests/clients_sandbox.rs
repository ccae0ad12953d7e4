//! Real, unmodified clients through the gateway (issue 20's test list),
//! from inside real sandboxes of the `agent-clients` image against real
//! servers in a network namespace the test makes (tests/clients_world):
//! a gRPC call with @grpc/grpc-js through an inspected endpoint (TLS
//! terminated, h2 by ALPN), through HTTPS_PROXY and with no proxy variables;
//! a WebSocket (npm `ws`) on an inspected port 80; python's aiohttp with no
//! proxy variables; git clone and push over smart HTTP to a private CA
//! named by `upstream_ca`, and a push refused per request. Threat: rules
//! that hold for hand-made requests but break, or leak, with the clients
//! agents actually run (a gateway that relays a refused gRPC method, a
//! refusal a client cannot read). Needs
//! root, iproute2, node and npm on the host, the Debian mirror and the npm
//! registry (the image and the servers' packages).
#[path = "../supervisor/tests/gateway_common/mod.rs"]
mod gateway_common;

mod clients_world;

use clients_world::*;

const GRPC_RULES: &str = r#"
[[network.policy]]
name = "grpc-echo"
binaries = ["/usr/bin/node*"]
[[network.policy.endpoint]]
host = "grpc.test"
port = 50051
protocol = "rest"
rules = [{ allow = { method = "POST", path = "/moat.Echo/Say" } }]
allowed_ips = ["198.18.0.0/15"]
upstream_ca = "upstream-ca.pem"
"#;

/// A generic grpc-js client (no .proto: Buffers in and out): Say, then a
/// method the rule does not allow, then Say again on the same channel;
/// with no proxy variables also a host no rule lists. Prints `TAG_say=`,
/// `TAG_forbidden=`, `TAG_again=` (and `direct_unlisted=`): `ok REPLY` or
/// `error CODE DETAILS`.
const GRPC_CLIENT: &str = r#"
const grpc = require("@grpc/grpc-js");
const tag = process.argv[1];
const id = (b) => b;
const c = new grpc.Client("grpc.test:50051", grpc.credentials.createSsl());
const call = (m, arg, to = c) => new Promise((done) => {
  to.makeUnaryRequest("/moat.Echo/" + m, id, id, Buffer.from(arg), new grpc.Metadata(),
    { deadline: Date.now() + 20000 },
    (err, res) => done(err ? "error " + err.code + " " + err.details : "ok " + res.toString()));
});
(async () => {
  console.log(tag + "_say=" + await call("Say", "hello " + tag));
  console.log(tag + "_forbidden=" + await call("Forbidden", "x"));
  console.log(tag + "_again=" + await call("Say", "again " + tag));
  c.close();
  if (tag !== "direct") return;
  const u = new grpc.Client("unlisted.test:50051", grpc.credentials.createSsl());
  console.log("direct_unlisted=" + await call("Say", "x", u));
  u.close();
})();
"#;

/// A real gRPC call (grpc-js client and server, HTTP/2 over TLS the
/// gateway terminates) reaches its method through an inspected endpoint,
/// both through HTTPS_PROXY (grpc-js's own CONNECT) and with no proxy
/// variables (transparent egress); a method the rule does not allow is
/// refused on its stream only, never reaches the server, and grpc-js
/// reports PERMISSION_DENIED naming the refusal; the audit log has both
/// paths. With no proxy variables, a host no rule lists is PERMISSION_DENIED
/// naming the approval id `moat approvals` lists (through the proxy grpc-js
/// reads no refusal: it logs only the CONNECT status).
#[test]
fn a_grpc_call_through_an_inspected_endpoint() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = policy("grpc", GRPC_RULES);
    let sb = Sandbox::start("cgrpc", &p);
    let before = world().seen().len();
    let client = quote(GRPC_CLIENT);
    let script = format!(
        "GRPC_TRACE=proxy GRPC_VERBOSITY=DEBUG node -e {client} proxy 2>/tmp/trace\n\
         echo proxy_used=$(grep -c 'Using proxy' /tmp/trace)\n\
         {NO_PROXY_VARS}node -e {client} direct\n"
    );
    let out = ok(&["exec", sb.0, "--", "sh", "-c", &script]);
    let r = kv(&out);
    let get = |k: &str| r.get(k).map(String::as_str).unwrap_or("");
    assert_ne!(get("proxy_used"), "0", "grpc-js used HTTPS_PROXY in the first run: {out}");
    assert_eq!(get("proxy_vars"), "0", "{out}");
    for tag in ["proxy", "direct"] {
        assert_eq!(get(&format!("{tag}_say")), format!("ok echo:hello {tag}"), "{tag}: the unary reply: {out}");
        assert_eq!(get(&format!("{tag}_again")), format!("ok echo:again {tag}"), "{tag}: after a refusal: {out}");
        let refused = get(&format!("{tag}_forbidden"));
        // 7 is PERMISSION_DENIED; the details name the gateway's refusal.
        assert!(refused.starts_with("error 7 "), "{tag}: a refused method is PERMISSION_DENIED: {out}");
        assert!(
            refused.contains("moat denied") && refused.contains("/moat.Echo/Forbidden"),
            "{tag}: grpc-js's status names the refusal: {out}"
        );
    }
    let unlisted = get("direct_unlisted");
    assert!(unlisted.starts_with("error 7 moat denied /usr/bin/node"), "{out}");
    assert!(unlisted.contains("unlisted.test:50051"), "{out}");
    let id = unlisted
        .split("(approval ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or_else(|| panic!("an approval id in grpc-js's status: {out}"))
        .to_string();
    let list = ok(&["approvals", sb.0]);
    assert!(list.contains(&id) && list.contains("unlisted.test:50051"), "{list}");
    let seen: Vec<String> = world().seen().split_off(before);
    assert_eq!(seen.iter().filter(|l| *l == "grpc /moat.Echo/Say").count(), 4, "{seen:?}\n{out}");
    assert!(!seen.iter().any(|l| l.contains("Forbidden")), "a refused method reached the server: {seen:?}");
    let ev = events(sb.0);
    let count = |decision: &str, path: &str| {
        ev.iter().filter(|e| e["decision"] == decision && e["host"] == "grpc.test" && e["path"] == path).count()
    };
    assert_eq!(count("allow", "/moat.Echo/Say"), 4, "each call is audited: {ev:#?}");
    // Repeated refusals within 5 s are folded into one later record (docs/egress.md).
    assert!(count("deny", "/moat.Echo/Forbidden") >= 1, "the refusal is audited: {ev:#?}");
}

const WS_RULES: &str = r#"
[[network.policy]]
name = "chat"
binaries = ["/usr/bin/node*"]
[[network.policy.endpoint]]
host = "ws.test"
port = 80
protocol = "rest"
rules = [{ allow = { method = "GET", path = "/chat" } }]
upgrade = true
allowed_ips = ["198.18.0.0/15"]
"#;

/// npm's `ws` opens `ws://ws.test/PATH` (it reads no proxy variable: the
/// connection goes through transparent egress), sends two messages and
/// waits for both echoes. Prints `ws_TAG=ok ECHO,ECHO` or `ws_TAG=STATUS
/// REASON | BODY` for a refused handshake.
const WS_CLIENT: &str = r#"
const WebSocket = require("ws");
const show = (t) => String(t).replace(/\s+/g, " ").trim().slice(0, 400);
const open = (tag, path) => new Promise((done) => {
  const ws = new WebSocket("ws://ws.test" + path);
  const got = [];
  ws.on("open", () => { ws.send(tag + "-1"); ws.send(tag + "-2"); });
  ws.on("message", (d) => { got.push(String(d)); if (got.length === 2) { ws.close(); done("ok " + got.join(",")); } });
  ws.on("unexpected-response", (req, res) => {
    let b = "";
    res.on("data", (d) => { b += d; });
    res.on("end", () => done(res.statusCode + " " + show(res.statusMessage) + " | " + show(b)));
  });
  ws.on("error", (e) => done("fail " + (e.code || e.message)));
});
(async () => {
  console.log("ws_chat=" + await open("chat", "/chat"));
  console.log("ws_admin=" + await open("admin", "/admin"));
})();
"#;

/// A real WebSocket client and server through an inspected endpoint on
/// port 80 (plain HTTP, the upgrade allowed by the rule): the echo round
/// trip works; a path the rule does not allow is refused with the
/// readable 403 and never reaches the server.
#[test]
fn a_websocket_on_an_inspected_port_80() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = policy("ws", WS_RULES);
    let before = world().seen().len();
    let script = format!("node -e {}\n", quote(WS_CLIENT));
    let out = ok(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent-clients", "--", "sh", "-c", &script]);
    let r = kv(&out);
    let get = |k: &str| r.get(k).map(String::as_str).unwrap_or("");
    assert_eq!(get("ws_chat"), "ok echo:chat-1,echo:chat-2", "{out}");
    let refused = get("ws_admin");
    assert!(refused.starts_with("403 moat denied "), "the reason phrase names the refusal: {out}");
    assert!(refused.contains("GET ws.test/admin") && refused.contains("policy chat"), "{out}");
    let seen: Vec<String> = world().seen().split_off(before);
    assert!(seen.contains(&"ws /chat".to_string()), "{seen:?}");
    assert!(!seen.iter().any(|l| l.contains("/admin")), "a refused path reached the server: {seen:?}");
}

const WEB_RULES: &str = r#"
[[network.policy]]
name = "web"
binaries = ["/usr/bin/python3*"]
[[network.policy.endpoint]]
host = "web.test"
port = 443
protocol = "rest"
access = "read-only"
allowed_ips = ["198.18.0.0/15"]
upstream_ca = "upstream-ca.pem"
"#;

/// aiohttp as written in its documentation: a ClientSession without
/// `trust_env`, so it never reads a proxy variable.
const AIOHTTP: &str = r#"
import asyncio, aiohttp
async def get(s, url):
    try:
        async with s.get(url, timeout=aiohttp.ClientTimeout(total=20)) as r:
            return "%d %s | %s" % (r.status, r.reason, " ".join((await r.text()).split()))
    except Exception as e:
        return "fail %r" % (e,)
async def main():
    async with aiohttp.ClientSession() as s:
        print("aio_listed=" + await get(s, "https://web.test/hello"))
        print("aio_unlisted=" + await get(s, "https://unlisted.test/x"))
asyncio.run(main())
"#;

/// python's aiohttp with no proxy variables reaches a listed host (an
/// inspected endpoint) and gets the readable refusal, with an approval id
/// `moat approvals` lists, for an unlisted one.
#[test]
fn aiohttp_without_proxy_variables() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = policy("web", WEB_RULES);
    let sb = Sandbox::start("caio", &p);
    let before = world().seen().len();
    let script = format!("{NO_PROXY_VARS}python3 -c {}\n", quote(AIOHTTP));
    let out = ok(&["exec", sb.0, "--", "sh", "-c", &script]);
    let r = kv(&out);
    let get = |k: &str| r.get(k).map(String::as_str).unwrap_or("");
    assert_eq!(get("proxy_vars"), "0", "{out}");
    assert_eq!(get("aio_listed"), "200 OK | hello GET /hello", "{out}");
    let refused = get("aio_unlisted");
    assert!(refused.starts_with("403 moat denied /usr/bin/python3"), "the reason phrase names the refusal: {out}");
    assert!(refused.contains("unlisted.test:443"), "{out}");
    let id = refused
        .split("approval id: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("an approval id in aiohttp's refusal: {out}"))
        .to_string();
    assert!(refused.contains(&format!("(approval {id})")), "the reason phrase names approval {id}: {out}");
    let list = ok(&["approvals", sb.0]);
    assert!(list.contains(&id) && list.contains("unlisted.test:443"), "{list}");
    let seen: Vec<String> = world().seen().split_off(before);
    assert_eq!(seen, ["https /hello"], "{out}");
}

/// git and its https helper (which makes the requests), reaching git.test
/// inspected with the test CA named by `upstream_ca`; `extra` lines in the
/// endpoint (its access and rules).
fn git_rules(extra: &str) -> String {
    format!(
        r#"
[[network.policy]]
name = "git"
binaries = ["/usr/bin/git", "/usr/lib/git-core/git-remote-http*"]
[[network.policy.endpoint]]
host = "git.test"
port = 443
protocol = "rest"
allowed_ips = ["198.18.0.0/15"]
upstream_ca = "upstream-ca.pem"
{extra}
"#
    )
}

/// No CA variable inside: git trusts the gateway through the system bundle,
/// and the upstream's private CA only through the rule's `upstream_ca`.
const NO_CA_VARS: &str = "unset SSL_CERT_FILE REQUESTS_CA_BUNDLE CURL_CA_BUNDLE GIT_SSL_CAINFO NODE_EXTRA_CA_CERTS\n\
     export GIT_AUTHOR_NAME=agent GIT_AUTHOR_EMAIL=agent@sandbox GIT_COMMITTER_NAME=agent GIT_COMMITTER_EMAIL=agent@sandbox\n";

/// `clone_push TAG REPO`: clones https://git.test/REPO.git, commits TAG.txt
/// and pushes `main`. Prints `TAG_clone=` (the README, or `fail ERRORS`)
/// and `TAG_push=` (`ok` or `fail ERRORS`, git's stderr on one line).
const CLONE_PUSH: &str = r#"
clone_push() {
  rm -rf "/tmp/$1"
  if ! git clone -q "https://git.test/$2.git" "/tmp/$1" 2>/tmp/err; then
    echo "$1_clone=fail $(tr '\n' ' ' </tmp/err)"; return
  fi
  echo "$1_clone=$(cat "/tmp/$1/README")"
  (cd "/tmp/$1" && echo "from $1" >"$1.txt" && git add "$1.txt" && git commit -qm "pushed $1" &&
    git push -q origin main 2>/tmp/err) && echo "$1_push=ok" || echo "$1_push=fail $(tr '\n' ' ' </tmp/err)"
}
"#;

/// The host's bare repository's `main`, one subject a line, newest first.
fn host_log(repo: &std::path::Path) -> String {
    host_sh("git --git-dir \"$1\" log --format=%s main", &[repo.to_str().unwrap()])
}

/// `git clone` and `git push` over smart HTTP (the host's `git
/// http-backend`) to a server whose certificate only the private CA named
/// by the endpoint's `upstream_ca` verifies, with no CA variable inside the
/// sandbox: through HTTPS_PROXY and with no proxy variables (transparent
/// egress). Both pushes land in the host's bare repository.
#[test]
fn git_clone_and_push_to_a_private_ca() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let w = world();
    let repo = w.bare_repo("push");
    let p = policy("git-full", &git_rules("access = \"full\""));
    let before = w.seen().len();
    let script = format!(
        "{NO_CA_VARS}echo https_proxy=$https_proxy\n{CLONE_PUSH}clone_push proxy push\n\
         {NO_PROXY_VARS}clone_push direct push\n"
    );
    let out = ok(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent-clients", "--", "sh", "-c", &script]);
    let r = kv(&out);
    let get = |k: &str| r.get(k).map(String::as_str).unwrap_or("");
    assert!(get("https_proxy").starts_with("http://"), "the first push goes through the proxy: {out}");
    assert_eq!(get("proxy_vars"), "0", "{out}");
    for tag in ["proxy", "direct"] {
        assert_eq!(get(&format!("{tag}_clone")), "hello from the host", "{tag}: {out}");
        assert_eq!(get(&format!("{tag}_push")), "ok", "{tag}: {out}");
    }
    assert_eq!(host_log(&repo), "pushed direct\npushed proxy\nfrom the host", "{out}");
    let seen: Vec<String> = w.seen().split_off(before);
    let pushes = seen.iter().filter(|l| *l == "git POST /push.git/git-receive-pack").count();
    assert_eq!(pushes, 2, "{seen:?}");
}

/// Under `access = "read-only"` git cannot even clone over smart HTTP
/// (its fetch is a POST to git-upload-pack): `moat policy check` says so
/// and names rules that allow fetching. With those rules in place of the
/// access, clone works and push is refused per request (the POST to
/// git-receive-pack, never reaching the server), and git's output names
/// the refusal, through the proxy and with no proxy variables; the plain
/// read-only clone is refused with the refusal named too.
#[test]
fn git_push_is_refused_where_the_rule_allows_fetching_only() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let w = world();
    let repo = w.bare_repo("ro");
    let read_only = policy("git-read-only", &git_rules("access = \"read-only\""));
    let check = moat(&["policy", "check", read_only.to_str().unwrap()]);
    let said = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    let warning = said
        .lines()
        .find(|l| l.contains("/usr/bin/git cannot work with read-only access to git.test:443"))
        .unwrap_or_else(|| panic!("policy check warns about git under read-only: {said}"));
    assert!(warning.contains("git-upload-pack"), "{warning}");
    // The rules the warning names, as the endpoint's rules.
    let rules = warning
        .find("rules = [")
        .and_then(|i| warning[i..].find("}]").map(|j| &warning[i..i + j + 2]))
        .unwrap_or_else(|| panic!("the warning names rules: {warning}"));
    let fetch_only = policy("git-fetch-only", &git_rules(rules));

    let before = w.seen().len();
    let script = format!("{NO_CA_VARS}{CLONE_PUSH}clone_push proxy ro\n{NO_PROXY_VARS}clone_push direct ro\n");
    let out =
        ok(&["run", "--rm", "--policy", fetch_only.to_str().unwrap(), "agent-clients", "--", "sh", "-c", &script]);
    let r = kv(&out);
    let get = |k: &str| r.get(k).map(String::as_str).unwrap_or("");
    assert_eq!(get("proxy_vars"), "0", "{out}");
    for tag in ["proxy", "direct"] {
        assert_eq!(get(&format!("{tag}_clone")), "hello from the host", "{tag}: clone with {rules}: {out}");
        let push = get(&format!("{tag}_push"));
        assert!(push.starts_with("fail "), "{tag}: {out}");
        assert!(
            push.contains("remote: moat: request denied: POST /ro.git/git-receive-pack on git.test: ")
                && push.contains("(policy git)"),
            "{tag}: git's output names the refusal: {out}"
        );
    }
    assert_eq!(host_log(&repo), "from the host", "a refused push changed the repository: {out}");
    let seen: Vec<String> = w.seen().split_off(before);
    assert!(seen.contains(&"git POST /ro.git/git-upload-pack".to_string()), "{seen:?}");
    assert!(!seen.iter().any(|l| l.contains("git-receive-pack") && l.starts_with("git POST")), "{seen:?}");

    let script = format!("{NO_CA_VARS}{CLONE_PUSH}clone_push plain ro\n");
    let out = ok(&["run", "--rm", "--policy", read_only.to_str().unwrap(), "agent-clients", "--", "sh", "-c", &script]);
    let clone = kv(&out).get("plain_clone").cloned().unwrap_or_default();
    assert!(
        clone.starts_with("fail ")
            && clone.contains("moat: request denied: POST /ro.git/git-upload-pack on git.test: ")
            && clone.contains("(policy git)"),
        "git's output names the refused fetch: {out}"
    );
}
