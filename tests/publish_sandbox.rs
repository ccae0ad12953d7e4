//! Published ports (issue 21 part 4) with real sandboxes of the agent
//! image: `moat run -p` relays a host port to a python server inside the
//! sandbox; the sandbox's own ports are not on the host; Landlock lets the
//! agent bind the published port and no other; a port published with
//! `--publish-token` refuses a request without the bearer token (401) and
//! serves one with it, the header stripped; `moat ls` shows the ports, and
//! `moat rm` closes them. Needs root and the Debian mirror (agent image).
#[path = "../supervisor/tests/gateway_common/mod.rs"]
mod gateway_common;

mod gateway_world;

use gateway_world::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A TCP port free on the host now.
fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port()
}

/// One HTTP/1.0 request to 127.0.0.1:`port` with `headers`; the whole answer.
fn get(port: u16, path: &str, headers: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n{headers}\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Retries `get` until the server in the sandbox answers 200 (it is starting).
fn get_when_up(port: u16, path: &str, headers: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match get(port, path, headers) {
            Ok(a) if a.starts_with("HTTP/1.0 200") || a.starts_with("HTTP/1.1 200") => return a,
            other if Instant::now() > deadline => panic!("no 200 from 127.0.0.1:{port}{path}: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn closed(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_err()
}

#[test]
fn published_port_reaches_the_sandbox_and_nothing_else_does() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (host, inside, other) = (free_port(), free_port(), free_port());
    // The agent writes a page, tries to bind a port nobody published, then
    // serves on the published one.
    let script = format!(
        r#"echo hello-from-the-sandbox > /sandbox/hello.txt
python3 -c "
import socket
s = socket.socket()
try:
    s.bind(('127.0.0.1', {other})); print('bind_unpublished=ok')
except OSError as e:
    print('bind_unpublished=%d' % e.errno)" > /sandbox/probe.txt
exec python3 -m http.server {inside} --bind 127.0.0.1 --directory /sandbox"#
    );
    let spec = format!("127.0.0.1:{host}:{inside}");
    ok(&["run", "-d", "--name", "pub", "-p", &spec, "agent", "--", "sh", "-c", &script]);
    let page = get_when_up(host, "/hello.txt", "");
    assert!(page.ends_with("hello-from-the-sandbox\n"), "{page}");
    // The sandbox's own port is in its namespace, not on the host.
    assert!(closed(inside), "the sandbox's port {inside} is reachable on the host");
    // Landlock: the published port was bound (above); another one is refused (EACCES).
    let probe = get_when_up(host, "/probe.txt", "");
    assert!(probe.ends_with("bind_unpublished=13\n"), "{probe}");
    // moat ls shows the port, in both forms.
    let ls = ok(&["ls"]);
    let line = ls.lines().find(|l| l.starts_with("pub ")).unwrap_or_default();
    assert!(line.contains(&format!("127.0.0.1:{host}->{inside}")), "{ls}");
    let json: serde_json::Value = serde_json::from_str(&ok(&["ls", "--json"])).unwrap();
    let row = json.as_array().unwrap().iter().find(|r| r["name"] == "pub").unwrap().clone();
    assert_eq!(row["published"][0]["host"], format!("127.0.0.1:{host}"), "{row}");
    assert_eq!(row["published"][0]["sandbox_port"], inside, "{row}");
    assert_eq!(row["published"][0]["token"], false, "{row}");
    ok(&["rm", "--force", "pub"]);
    assert!(closed(host), "host port {host} still open after moat rm");
}

/// An echo of the request's headers, to see what reached the sandbox.
const ECHO: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ''.join('%s: %s\n' % kv for kv in self.headers.items()).encode()
        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
"#;

#[test]
fn token_protected_port_refuses_requests_without_the_token() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Not on loopback without a token: refused before anything starts.
    let o = moat(&["run", "--rm", "-p", "0.0.0.0:1:80", "agent", "--", "true"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--publish-token"), "{err}");

    let (host, inside) = (free_port(), free_port());
    let spec = format!("{host}:{inside}");
    let o = moat(&[
        "run",
        "-d",
        "--name",
        "pubt",
        "--publish-token",
        "-p",
        &spec,
        "agent",
        "--",
        "python3",
        "-c",
        ECHO,
        &inside.to_string(),
    ]);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{out}\n{err}");
    assert_eq!(out.trim(), "pubt");
    let token = err
        .lines()
        .find_map(|l| l.split("publish token: ").nth(1))
        .unwrap_or_else(|| panic!("no token printed: {err}"))
        .trim()
        .to_string();
    assert!(token.len() >= 32, "{token}");
    let bearer = format!("Authorization: Bearer {token}\r\n");
    let served = get_when_up(host, "/", &format!("X-Before: 1\r\n{bearer}X-After: 2\r\n"));
    assert!(served.contains("X-Before: 1") && served.contains("X-After: 2"), "{served}");
    assert!(!served.contains(&token) && !served.to_lowercase().contains("authorization"), "token relayed: {served}");
    for refused in ["", "Authorization: Bearer wrong\r\n", "Authorization: Basic eDp5\r\n"] {
        let a = get(host, "/", refused).unwrap();
        assert!(a.starts_with("HTTP/1.1 401 "), "{refused:?}: {a}");
        assert!(!a.contains("Host: x"), "a refused request reached the sandbox: {a}");
    }
    // Shown once: neither `moat ls` nor the record holds the token.
    let ls = ok(&["ls", "--json"]);
    assert!(ls.contains("\"token\": true") && !ls.contains(&token), "{ls}");
    let home = world().home.path().join("home/sandboxes/pubt");
    for f in std::fs::read_dir(&home).unwrap().flatten().filter(|f| f.path().is_file()) {
        let text = std::fs::read(f.path()).unwrap();
        assert!(!String::from_utf8_lossy(&text).contains(&token), "token in {}", f.path().display());
    }
    ok(&["rm", "--force", "pubt"]);
    assert!(closed(host));
}

/// `moat publish` on a running sandbox: a port exposed at run (`--expose`,
/// so Landlock lets the agent bind it) is unreachable until published, then
/// served; a port never exposed cannot be published (the agent could not
/// bind it anyway), nor a non-loopback address without the run's token;
/// `moat ls` lists the new port, and `moat rm` closes it.
#[test]
fn a_running_sandbox_publishes_an_exposed_port_on_demand() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _ = moat(&["rm", "--force", "publive"]);
    let (host, inside, other) = (free_port(), free_port(), free_port());
    let script = format!(
        "echo live > /sandbox/live.txt; exec python3 -m http.server {inside} --bind 127.0.0.1 --directory /sandbox"
    );
    ok(&["run", "-d", "--name", "publive", "--expose", &inside.to_string(), "agent", "--", "sh", "-c", &script]);
    // Nothing published yet: the host port is closed.
    std::thread::sleep(Duration::from_millis(500));
    assert!(closed(host), "host port {host} open before anything was published");

    let spec = format!("127.0.0.1:{host}:{inside}");
    let out = ok(&["publish", "publive", &spec]);
    assert!(out.contains("published"), "{out}");
    let page = get_when_up(host, "/live.txt", "");
    assert!(page.ends_with("live\n"), "{page}");
    let ls = ok(&["ls"]);
    assert!(
        ls.lines().any(|l| l.starts_with("publive ") && l.contains(&format!("127.0.0.1:{host}->{inside}"))),
        "{ls}"
    );

    // Not exposed at run: refused, naming the flag.
    let o = moat(&["publish", "publive", &format!("127.0.0.1:{}:{other}", free_port())]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(&format!("--expose {other}")), "{err}");
    // Off loopback without a token (the run had none): refused.
    let o = moat(&["publish", "publive", &format!("0.0.0.0:{}:{inside}", free_port())]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--publish-token"), "{err}");
    // The same host address twice: refused.
    let o = moat(&["publish", "publive", &spec]);
    assert!(!o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    ok(&["rm", "--force", "publive"]);
    assert!(closed(host), "host port {host} still open after moat rm");
}
