//! The egress gateway from inside real sandboxes of the default agent image
//! (Debian's curl, git, python3): the gateway's CA is trusted through the
//! environment, git may reach a host curl may not, a copy of git and a
//! replaced binary are refused, and the operator round trip (refusal with an
//! approval id, `moat approvals`, `moat approve`, `moat events`, live policy
//! changes) works through the CLI. Needs root, iproute2 and the Debian
//! mirror (to build the agent image once into a store under target/).
#[path = "../supervisor/tests/gateway_common/mod.rs"]
mod gateway_common;

mod gateway_world;

use gateway_world::*;

const GIT_AND_PY: &str = r#"
[[network.policy]]
name = "git"
# git and its https helper, the process that connects (named, not inherited).
binaries = ["/usr/bin/git", "/usr/lib/git-core/git-remote-http", "/usr/lib/git-core/git-remote-https"]
[[network.policy.endpoint]]
host = "up.test"
port = 443
protocol = "rest"
access = "read-only"
allowed_ips = ["198.18.0.0/15"]

[[network.policy]]
name = "py"
binaries = ["/usr/bin/python3*"]
[[network.policy.endpoint]]
host = "other.test"
port = 443
protocol = "rest"
rules = [{ allow = { method = "GET", path = "/ok/**" } }]
allowed_ips = ["198.18.0.0/15"]

[[network.policy]]
name = "tool"
binaries = ["/sandbox/bin/fetch"]
[[network.policy.endpoint]]
host = "other.test"
port = 80
allowed_ips = ["198.18.0.0/15"]
"#;

const SCRIPT: &str = r#"
env | grep -E '^(HTTPS_PROXY|ALL_PROXY|NO_PROXY|SSL_CERT_FILE)=' | sed 's/^/env_/'
git clone -q https://up.test/repo.git /sandbox/c1 2>/tmp/e && echo "git=$(cat /sandbox/c1/README)" || echo "git=fail $(cat /tmp/e)"
curl -s -o /dev/null -w 'curl_same_host=%{http_code}\n' https://up.test/repo.git/HEAD
mkdir -p /sandbox/gx && cp /usr/bin/git /usr/lib/git-core/git-remote-http /usr/lib/git-core/git-remote-https /sandbox/gx/
GIT_EXEC_PATH=/sandbox/gx /sandbox/gx/git clone -q https://up.test/repo.git /sandbox/c2 2>/dev/null && echo git_copy=ok || echo git_copy=refused
python3 -c "import urllib.request as u; print('py_get=' + u.urlopen('https://other.test/ok/a').read().decode().strip())"
python3 -c "
import urllib.request as u, urllib.error as e
try: u.urlopen(u.Request('https://other.test/ok/a', data=b'x')); print('py_post=allowed')
except e.HTTPError as x: print('py_post=%d' % x.code)"
mkdir -p /sandbox/bin && cp /usr/bin/curl /sandbox/bin/fetch
/sandbox/bin/fetch -sS http://other.test/t1; echo "tool_first=$?"
cp /usr/bin/curl /sandbox/bin/fetch.new && printf 'x' >> /sandbox/bin/fetch.new && mv /sandbox/bin/fetch.new /sandbox/bin/fetch
/sandbox/bin/fetch -s -o /dev/null -w '%{http_code}' http://other.test/t2 | sed 's/^/tool_replaced=/'; echo
"#;

#[test]
fn binaries_are_told_apart_and_the_gateway_ca_is_trusted_inside() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The upstream is shared with the other tests of this file (the
    // inference tests POST to it): judge only what this test sent.
    let earlier = world().up.seen().len();
    let p = policy("git-and-py", GIT_AND_PY);
    let out = ok(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent", "--", "sh", "-c", SCRIPT]);
    let r = kv(&out);
    let want = |k: &str, v: &str| assert_eq!(r.get(k).map(String::as_str), Some(v), "{k}\n{out}");
    want("env_HTTPS_PROXY", "http://127.0.0.1:3128");
    want("env_ALL_PROXY", "http://127.0.0.1:3128");
    want("env_NO_PROXY", "localhost,127.0.0.1,::1");
    want("env_SSL_CERT_FILE", "/etc/moat/ca-bundle.pem");
    // git (its https helper, listed by name in the rule) clones
    // through the inspected tunnel; curl to the same host is refused.
    want("git", "through the gateway");
    // (curl runs libcurl: its refused tunnel is answered inside TLS, a 403.)
    want("curl_same_host", "403");
    want("git_copy", "refused");
    want("py_get", "echo GET /ok/a 0");
    want("py_post", "403");
    want("tool_first", "0");
    want("tool_replaced", "403");
    let seen = world().up.seen().split_off(earlier);
    assert!(seen.iter().any(|s| s.path.starts_with("/repo.git/info/refs")), "git's requests reached the upstream");
    assert!(seen.iter().all(|s| s.method == "GET" || s.method == "HEAD"), "nothing but reads went out: {seen:?}");
}

#[test]
fn operator_approves_a_refused_destination_and_changes_policy_live() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = policy("empty", "");
    ok(&["run", "-d", "--name", "ops", "--policy", p.to_str().unwrap(), "agent", "--", "sleep", "600"]);
    let refused = ok(&["exec", "ops", "--", "curl", "-s", "http://other.test/first"]);
    assert!(refused.contains("egress denied") && refused.contains("/usr/bin/curl"), "{refused}");
    let id = refused
        .split("approval id: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("approval id")
        .to_string();
    let list = ok(&["approvals", "ops"]);
    assert!(list.contains(&id) && list.contains("other.test:80"), "{list}");
    ok(&["approve", "ops", &id, "--allowed-ip", "198.18.0.0/15"]);
    let after = ok(&["exec", "ops", "--", "curl", "-s", "http://other.test/second"]);
    assert_eq!(after, "echo GET /second 0\n");
    let show = ok(&["policy", "show", "ops"]);
    assert!(show.contains("# revision 2") && show.contains(&format!("approved-{id}")), "{show}");

    // Live changes: a preset is added (revision 3); a process change is refused.
    ok(&["policy", "add-preset", "ops", "github"]);
    assert!(ok(&["policy", "show", "ops"]).contains("# revision 3"));
    let weaker = policy("weaker", "").to_str().unwrap().to_string();
    std::fs::write(
        &weaker,
        std::fs::read_to_string(&weaker).unwrap().replace("rlimit_nproc = 512", "rlimit_nproc = 600"),
    )
    .unwrap();
    let o = moat(&["policy", "set", "ops", &weaker]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot change on a live sandbox"));

    let events = ok(&["events", "ops", "--json"]);
    let ev: Vec<serde_json::Value> = events.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(ev.iter().any(|e| e["decision"] == "deny" && e["path"] == "/first" && e["binary"] == "/usr/bin/curl"));
    assert!(ev
        .iter()
        .any(|e| e["decision"] == "allow" && e["path"] == "/second" && e["rule"] == format!("approved-{id}")));
    let audit = world().home.path().join("home/sandboxes/ops/audit.log");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&audit).unwrap().permissions().mode() & 0o777, 0o600);
    let sock = world().home.path().join("run/sandboxes/ops/control.sock");
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
    ok(&["rm", "--force", "ops"]);
    assert!(!world().home.path().join("home/sandboxes/ops/network").exists(), "revisions go with the sandbox");
}

/// A refused client can tell why: the status line's reason phrase and an
/// `X-Moat-Denied` header name the binary, the destination and the approval
/// id (python's urllib prints the reason of a failed tunnel; curl -v shows
/// both), and a foreground `moat run` tells its terminal once per new
/// pending approval, with the exact command that allows it. A host name the
/// agent chose cannot put control characters on the operator's terminal.
#[test]
fn refusals_name_binary_destination_and_approval_and_reach_the_terminal() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = policy("empty-refusals", "");
    let script = r#"
curl -sS -v -o /dev/null https://unlisted.test/x 2>&1 | grep -i -E '^< (HTTP|X-Moat-Denied)' | tr -d '\r' | sed 's/^< /curl: /'
curl -sS -o /dev/null https://unlisted.test/again 2>/dev/null
python3 -c "
import urllib.request as u
try: u.urlopen('https://py-unlisted.test/y')
except Exception as x: print('py=' + str(x))"
python3 -c "
import socket
s = socket.create_connection(('127.0.0.1', 3128))
s.sendall(b'CONNECT evil\x1b[2J.test:443 HTTP/1.1\r\nHost: x\r\n\r\n')
print('esc=' + s.recv(300).split(b'\r\n')[0].decode('latin-1'))"
"#;
    let o = moat(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent", "--", "sh", "-c", script]);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let line = |prefix: &str| out.lines().find(|l| l.starts_with(prefix)).unwrap_or_default().to_string();
    let status = line("curl: HTTP/1.1 403 ");
    assert!(status.contains("moat denied /usr/bin/curl -> unlisted.test:443 (approval "), "{out}\n{err}");
    let id = status.rsplit("(approval ").next().unwrap().trim_end_matches(')').to_string();
    assert!(
        line("curl: x-moat-denied:").to_lowercase().contains(&id) || line("curl: X-Moat-Denied:").contains(&id),
        "{out}"
    );
    let py = line("py=");
    assert!(py.contains("moat denied /usr/bin/python3") && py.contains("py-unlisted.test:443 (approval "), "{out}");
    // The terminal: one line per new approval (curl's second refusal adds none), with the command.
    let told: Vec<&str> = err.lines().filter(|l| l.contains("moat approve ")).collect();
    assert_eq!(told.iter().filter(|l| l.contains("unlisted.test:443") && !l.contains("py-")).count(), 1, "{err}");
    assert!(told.iter().any(|l| l.contains("/usr/bin/curl") && l.contains(&format!(" {id}"))), "{err}");
    assert!(told.iter().any(|l| l.contains("py-unlisted.test:443")), "{err}");
    assert!(!err.contains('\x1b') && !out.contains('\x1b'), "an escape reached the terminal: {err:?}");
}

/// Approvals do what the operator meant (issue 20, part 5): a destination
/// whose address the SSRF guard refuses is not approved without
/// `--allowed-ip` (the command says so and the entry stays pending, instead
/// of a success after which every retry is refused), and approving a binary
/// for a host an inspected rule covers gives it that rule's inspection, not
/// L4: curl approved for python's read-only host may GET, not POST.
#[test]
fn approvals_check_the_address_and_inherit_inspection() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = policy("inspected-py", GIT_AND_PY);
    ok(&["run", "-d", "--name", "meant", "--policy", p.to_str().unwrap(), "agent", "--", "sleep", "600"]);
    // The refusal names its approval in the X-Moat-Denied header (curl -v).
    let refused_id = |url: &str| {
        let script = format!("curl -sv {url} 2>&1 | grep -i '^< x-moat-denied'; true");
        let out = ok(&["exec", "meant", "--", "sh", "-c", &script]);
        out.split("(approval ").nth(1).and_then(|s| s.split(')').next()).expect("approval id").to_string()
    };
    // other.test:443 is inspected for python (GET /ok/** only); curl is refused.
    let id = refused_id("https://other.test/ok/a");
    ok(&["approve", "meant", &id]);
    let get = ok(&["exec", "meant", "--", "curl", "-s", "https://other.test/ok/b"]);
    assert_eq!(get, "echo GET /ok/b 0\n", "curl may read what the rule allows");
    let post = ok(&[
        "exec",
        "meant",
        "--",
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-d",
        "x",
        "https://other.test/ok/b",
    ]);
    assert_eq!(post, "403", "the approval took the inspection: a POST is refused");
    // A private destination no rule covers: refused without --allowed-ip, still pending.
    let id = refused_id("http://up.test:8080/x");
    let o = moat(&["approve", "meant", &id]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--allowed-ip"), "approved a private address silently: {err}");
    assert!(ok(&["approvals", "meant"]).contains(&id), "the refused approval is still pending");
    ok(&["approve", "meant", &id, "--allowed-ip", "198.18.0.0/15"]);
    ok(&["rm", "--force", "meant"]);
}

/// The gateway closes a kept-alive connection only after the policy's
/// `supervisor.keepalive_idle_secs` (default 300 s: longer than the idle
/// limits clients keep themselves, so the client closes first; it was 90 s,
/// Go's own default, and the two raced). Measured from inside a sandbox on
/// an inspected tunnel: closed after about 2 s under a 2 s limit, still open
/// after 4 s under a 6 s one.
#[test]
fn kept_alive_connections_live_as_long_as_the_policy_says() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let script = r#"python3 -c "
import http.client, ssl, select, time, os
c = http.client.HTTPSConnection('127.0.0.1', 3128, context=ssl.create_default_context(cafile=os.environ['SSL_CERT_FILE']))
c.set_tunnel('other.test', 443)
c.request('GET', '/ok/a'); r = c.getresponse(); r.read()
t = time.time()
rd, _, _ = select.select([c.sock], [], [], 4)
print('idle_close=%.0f' % (time.time() - t) if rd else 'idle_close=none')"
"#;
    let mut seen = Vec::new();
    for secs in [2, 6] {
        let p = policy(&format!("idle-{secs}"), GIT_AND_PY);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("keepalive_idle_secs = 300"), "the baseline's default is 300 s");
        std::fs::write(&p, text.replace("keepalive_idle_secs = 300", &format!("keepalive_idle_secs = {secs}")))
            .unwrap();
        let out = ok(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent", "--", "sh", "-c", script]);
        seen.push(kv(&out).get("idle_close").cloned().unwrap_or_else(|| out.clone()));
    }
    assert!(matches!(seen[0].as_str(), "2" | "3"), "closed after the 2 s limit: {seen:?}");
    assert_eq!(seen[1], "none", "still open 4 s into a 6 s limit: {seen:?}");
}

/// An inspected endpoint on a plain-HTTP port is inspected when the client
/// tunnels plain HTTP through CONNECT (curl -p, WebSocket clients that
/// always tunnel): it used to expect TLS there, and every such client got
/// `Received HTTP/0.9`. The rules still hold inside: an allowed path is
/// relayed, another is refused with the rule's reason.
#[test]
fn plain_http_in_a_tunnel_to_an_inspected_port_is_inspected() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rules = r#"
[[network.policy]]
name = "plain80"
binaries = ["/usr/bin/curl"]
[[network.policy.endpoint]]
host = "other.test"
port = 80
protocol = "rest"
rules = [{ allow = { method = "GET", path = "/ok/**" } }]
allowed_ips = ["198.18.0.0/15"]
"#;
    let p = policy("plain-tunnel", rules);
    let script = r#"
echo "allowed=$(curl -s -p http://other.test/ok/a)"
echo "refused=$(curl -s -p -o /dev/null -w '%{http_code}' http://other.test/no/b)"
echo "post=$(curl -s -p -o /dev/null -w '%{http_code}' -d x http://other.test/ok/a)"
"#;
    let out = ok(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent", "--", "sh", "-c", script]);
    let r = kv(&out);
    assert_eq!(r.get("allowed").map(String::as_str), Some("echo GET /ok/a 0"), "{out}");
    assert_eq!(r.get("refused").map(String::as_str), Some("403"), "{out}");
    assert_eq!(r.get("post").map(String::as_str), Some("403"), "{out}");
}

const SECRET: &str = "sk-proj-SANDBOXNEVERSEES0123456789abcdef";

#[test]
fn the_sandbox_reaches_its_model_but_never_sees_the_key() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let o = moat_stdin(&["credentials", "set", "openai-test"], SECRET);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ok(&[
        "inference",
        "set",
        "--default",
        "--provider",
        "openai",
        "--endpoint",
        "https://up.test",
        "--credential",
        "openai-test",
    ]);
    let script = r#"
curl -sS -H 'Authorization: Bearer sk-sandbox-guess-0000000000' -H 'Content-Type: application/json' \
  -d '{"model":"m","messages":[],"marker":"from-sandbox"}' http://inference.local/v1/chat/completions; echo
curl -sS --cacert /etc/moat/ca.pem https://inference.local/v1/models; echo
# The pattern is assembled at run time so this script's own cmdline does not match.
pat=SANDBOXNEVER; pat="${pat}SEES"
env | grep -c "$pat" || true
grep -rls "$pat" /etc /sandbox /tmp /app /proc/[0-9]*/environ 2>/dev/null | head -5 | sed 's/^/leak=/'
for f in /proc/[0-9]*/cmdline; do
  case "$(tr '\0' ' ' < "$f" 2>/dev/null)" in *"$pat"*) echo "leak=$f";; esac
done
echo done
"#;
    let p = policy("inference-only", "");
    let out = ok(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent", "--", "sh", "-c", script]);
    assert!(out.contains("chat.completion"), "the completion came back: {out}");
    assert!(out.contains("test-model"), "models over https://inference.local: {out}");
    assert!(!out.contains("SANDBOXNEVERSEES"), "the key leaked into the sandbox: {out}");
    assert!(!out.contains("leak="), "{out}");
    assert!(out.trim_end().ends_with("done"), "{out}");
    let seen = world().up.seen();
    let s = seen.iter().rev().find(|s| s.body.contains("from-sandbox")).expect("upstream saw the completion");
    assert!(s.headers.iter().any(|(k, v)| k == "authorization" && v == &format!("Bearer {SECRET}")));
    let usage = ok(&["credentials", "ls"]);
    assert!(usage.contains("openai-test") && !usage.contains("SANDBOXNEVERSEES"), "{usage}");
    std::fs::remove_file(world().home.path().join("home/inference.json")).unwrap();
}

#[test]
fn routes_switch_live_from_the_cli_and_secrets_are_masked_in_logs() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let o = moat_stdin(&["credentials", "set", "live-test"], SECRET);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p = policy("live", "");
    // The sandbox prints a token-looking string: `moat logs` must mask it.
    let token = ["ghp_", "R3dact", "MeNow0123456789abcdefXYZ"].concat();
    let script = format!("echo token={token}; sleep 600");
    ok(&["run", "-d", "--name", "live", "--policy", p.to_str().unwrap(), "agent", "--", "sh", "-c", &script]);
    ok(&[
        "inference",
        "set",
        "live",
        "--provider",
        "openai",
        "--endpoint",
        "https://up.test",
        "--credential",
        "live-test",
    ]);
    let body = r#"{"model":"m","marker":"live-1"}"#;
    let curl = |marker: &str| {
        let b = body.replace("live-1", marker);
        ok(&[
            "exec",
            "live",
            "--",
            "curl",
            "-s",
            "-H",
            "Content-Type: application/json",
            "-d",
            &b,
            "http://inference.local/v1/chat/completions",
        ])
    };
    assert!(curl("live-1").contains("chat.completion"));
    // Switch to a keyless local server (the plain upstream) without a restart.
    ok(&["inference", "set", "live", "--provider", "local", "--endpoint", "http://other.test:80", "--model", "small"]);
    let out = curl("live-2");
    assert!(out.contains("\"model\":\"small\""), "{out}");
    let show = ok(&["inference", "show", "live"]);
    assert!(show.contains("Local") && show.contains("other.test"), "{show}");
    let usage = ok(&["inference", "usage", "live", "--json"]);
    let u: serde_json::Value = serde_json::from_str(&usage).unwrap();
    assert_eq!(u["providers"]["openai"]["requests"], 1, "{usage}");
    assert_eq!(u["providers"]["local"]["requests"], 1, "{usage}");
    let logs = ok(&["logs", "live"]);
    assert!(logs.contains("token=ghp_") && !logs.contains("MeNow0123456789"), "the token is masked: {logs}");
    ok(&["rm", "--force", "live"]);
}

/// An HTTP/2-only client is served HTTP/2 on an inspected endpoint, each
/// request checked: Node's `http2` (which offers only h2 in ALPN, as gRPC
/// clients do) GETs through the (HTTP/1.1) upstream and is refused a POST
/// on a read-only rule and a Host field naming another virtual host than
/// `:authority` (the fronting attack); curl offering both keeps HTTP/1.1.
#[test]
fn an_http2_only_client_is_served_h2_and_checked_per_request() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rules = "[[network.policy]]\nname = \"h2-clients\"\nbinaries = [\"/usr/bin/curl\", \"/usr/bin/node*\"]\n\
                 [[network.policy.endpoint]]\nhost = \"up.test\"\nport = 443\nprotocol = \"rest\"\n\
                 access = \"read-only\"\nallowed_ips = [\"198.18.0.0/15\"]\n";
    let p = policy("h2-only", rules);
    // Node ignores the proxy variables: the tunnel is opened by hand, then
    // TLS offering h2 alone, then HTTP/2 over it.
    let node = r#"
const net = require('net'), tls = require('tls'), http2 = require('http2'), fs = require('fs');
const ca = fs.readFileSync('/etc/moat/ca.pem');
function tunnel() {
  return new Promise((ok, bad) => {
    const s = net.connect(3128, '127.0.0.1', () => s.write('CONNECT up.test:443 HTTP/1.1\r\nHost: up.test:443\r\n\r\n'));
    s.once('data', d => d.toString().startsWith('HTTP/1.1 200') ? ok(s) : bad(new Error(d.toString())));
    s.on('error', bad);
  });
}
function req(client, method, path, extra) {
  return new Promise(ok => {
    const r = client.request(Object.assign({ ':method': method, ':path': path }, extra || {}));
    let body = '', status = 0;
    r.on('response', h => { status = h[':status']; });
    r.on('data', d => { body += d; });
    r.on('end', () => ok(status + ' ' + body.trim()));
    if (method === 'POST') r.end('x'); else r.end();
  });
}
(async () => {
  const sock = await tunnel();
  const t = tls.connect({ socket: sock, servername: 'up.test', ALPNProtocols: ['h2'], ca });
  await new Promise((ok, bad) => { t.once('secureConnect', ok); t.once('error', bad); });
  console.log('alpn=' + t.alpnProtocol);
  const client = http2.connect('https://up.test', { createConnection: () => t });
  console.log('get=' + await req(client, 'GET', '/h2get'));
  console.log('post=' + (await req(client, 'POST', '/h2post')).split(' ')[0]);
  // Fronting: :authority names the tunnel's host, Host another one.
  console.log('fronted=' + (await req(client, 'GET', '/fronted', { ':authority': 'up.test', host: 'other.test' })).split(' ')[0]);
  client.close();
})().catch(e => { console.log('error=' + e.message); });
"#;
    let script = "node -e \"$NODE\"\ncurl -sS --http2 -o /dev/null -w 'both=%{http_version}\\n' https://up.test/both\n";
    let out = ok(&[
        "run",
        "--rm",
        "--policy",
        p.to_str().unwrap(),
        "-e",
        &format!("NODE={node}"),
        "agent",
        "--",
        "sh",
        "-c",
        script,
    ]);
    let r = kv(&out);
    assert_eq!(r.get("alpn").map(String::as_str), Some("h2"), "{out}");
    assert_eq!(r.get("get").map(String::as_str), Some("200 echo GET /h2get 0"), "{out}");
    assert_eq!(r.get("post").map(String::as_str), Some("403"), "{out}");
    assert_eq!(r.get("fronted").map(String::as_str), Some("421"), "a Host beside :authority: {out}");
    assert_eq!(r.get("both").map(String::as_str), Some("1.1"), "{out}");
}
