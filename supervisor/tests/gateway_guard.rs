//! Adversarial tests of the egress gateway's guards, in process: the SSRF
//! guard (loopback, metadata, private, IPv4-mapped, odd spellings and mixed
//! answers, each refused even though a policy lists the destination),
//! request smuggling and malformed heads on the forward path and inside an
//! inspected TLS tunnel, a thousand concurrent clients, slowloris heads, a
//! caller outside the listed binary's ancestry, and a connection shared with
//! a process running another program. Each test tries to break a guard and
//! checks the refusal, and that nothing reached the upstream (or a loopback
//! canary).
mod gateway_common;

use gateway_common::engine::{self, me, read_response, tls, Gw};
use moat_supervisor::gateway::Limits;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The load tests (a thousand clients, slowloris) run one at a time so that
/// neither's CPU use decides the other's outcome.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Plain HTTP to up.test through the forward path, for this test binary only.
const FWD_UP: &str = r#"
[[policy]]
name = "guard-fwd"
binaries = ["{me}"]
[[policy.endpoint]]
host = "up.test"
port = 80
allowed_ips = ["198.18.0.0/15"]
"#;

/// FWD_UP whose rule passes its access to the programs this test starts.
const FWD_UP_CHILDREN: &str = r#"
[[policy]]
name = "guard-fwd"
binaries = ["{me}"]
children = true
[[policy.endpoint]]
host = "up.test"
port = 80
allowed_ips = ["198.18.0.0/15"]
"#;

/// An inspected tunnel to up.test that allows GET and POST below /guard-smuggle only.
const L7_UP: &str = r#"
[[policy]]
name = "guard-l7"
binaries = ["{me}"]
[[policy.endpoint]]
host = "up.test"
port = 443
protocol = "rest"
rules = [
  { allow = { method = "GET", path = "/guard-smuggle/**" } },
  { allow = { method = "POST", path = "/guard-smuggle/**" } },
]
allowed_ips = ["198.18.0.0/15"]
"#;

/// Reads until EOF, an error or the read timeout; returns the text and
/// whether the peer closed (EOF or reset, not a timeout).
fn read_all(r: &mut impl Read) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match r.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => break !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// One raw exchange on a fresh connection. Write errors are ignored: the
/// gateway may refuse and close before it has read everything.
fn exchange(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(req);
    read_all(&mut s).0
}

/// The same through a fresh inspected tunnel to up.test:443.
fn in_tunnel(g: &Gw, req: &[u8]) -> String {
    let (s, status, head) = g.tunnel("up.test:443");
    assert_eq!(status, 200, "tunnel refused: {head}");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut t = tls(s, "up.test", g.client_tls());
    let _ = t.write_all(req).and_then(|_| t.flush());
    read_all(&mut t).0
}

fn status(resp: &str) -> u16 {
    resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Paths both upstreams (HTTP and HTTPS) saw that start with `prefix`.
fn seen_under(prefix: &str) -> Vec<String> {
    let u = engine::ups();
    u.http.seen().into_iter().chain(u.https.seen()).map(|s| s.path).filter(|p| p.starts_with(prefix)).collect()
}

/// The gateway's deny event for `host:port` and `method`.
fn denial(g: &Gw, host: &str, port: u16, method: &str) -> serde_json::Value {
    let ev = g.events();
    ev.iter()
        .rev()
        .find(|e| e["host"] == host && e["port"] == port && e["method"] == method && e["decision"] == "deny")
        .cloned()
        .unwrap_or_else(|| panic!("no deny event for {method} {host}:{port} in {ev:#?}"))
}

fn raise_nofile() {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to our own struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        l.rlim_cur = l.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
    }
    assert!(l.rlim_cur >= 4500, "RLIMIT_NOFILE hard limit {} is too low for 1000 relayed clients", l.rlim_max);
}

#[test]
fn ssrf_guard_refuses_internal_destinations_even_when_a_policy_lists_them() {
    // A loopback service the sandbox must never reach: every loopback case
    // below aims at its port, and it must see no connection at all.
    let canary = TcpListener::bind("127.0.0.1:0").unwrap();
    let p = canary.local_addr().unwrap().port();
    let endpoints: &[(&str, u16, &str)] = &[
        ("up.test", 443, r#"["198.18.0.0/15"]"#),
        ("up.test", 80, r#"["198.18.0.0/15"]"#),
        ("loop.test", p, r#"["127.0.0.0/8"]"#),
        ("private.test", 443, "[]"),
        ("private.test", 80, "[]"),
        ("169.254.169.254", 80, r#"["169.254.0.0/16"]"#),
        ("metadata.google.internal", 80, r#"["169.254.0.0/16"]"#),
        ("meta.test", 80, r#"["169.254.0.0/16"]"#),
        ("::ffff:127.0.0.1", p, r#"["127.0.0.0/8", "::ffff:0:0/96"]"#),
        ("mapped.test", p, r#"["127.0.0.0/8", "::ffff:0:0/96"]"#),
        ("mixed.test", 443, r#"["198.18.0.0/15"]"#),
        ("10.0.0.1", 80, "[]"),
        ("0x7f.1", p, r#"["127.0.0.0/8"]"#),
        ("2130706433", p, r#"["127.0.0.0/8"]"#),
        ("0.0.0.0", p, r#"["0.0.0.0/8"]"#),
        ("zero.test", p, r#"["0.0.0.0/8"]"#),
        ("::1", p, r#"["::1/128"]"#),
        ("v6loop.test", p, r#"["::1/128"]"#),
        ("nat64loop.test", p, r#"["64:ff9b::/96", "127.0.0.0/8"]"#),
    ];
    let mut rules = String::from("[[policy]]\nname = \"ssrf\"\nbinaries = [\"{me}\"]\n");
    for (host, port, ips) in endpoints {
        rules += &format!("[[policy.endpoint]]\nhost = \"{host}\"\nport = {port}\nallowed_ips = {ips}\n");
    }
    let g = Gw::start(&rules);

    // Positive controls: the same gateway reaches a listed, opted-in upstream.
    let (_s, code, head) = g.tunnel("up.test:443");
    assert_eq!(code, 200, "{head}");
    let ok =
        exchange(g.addr, b"GET http://up.test/guard-ssrf/ok HTTP/1.1\r\nHost: up.test\r\nConnection: close\r\n\r\n");
    assert!(ok.starts_with("HTTP/1.1 200") && ok.contains("echo GET /guard-ssrf/ok"), "{ok}");

    // (CONNECT authority, host as decided, port, what the reason must name)
    let tunnels: Vec<(String, &str, u16, &str)> = vec![
        (format!("loop.test:{p}"), "loop.test", p, "127.0.0.1 is loopback"),
        ("private.test:443".into(), "private.test", 443, "10.1.2.3 is private"),
        ("169.254.169.254:80".into(), "169.254.169.254", 80, "metadata"),
        ("metadata.google.internal:80".into(), "metadata.google.internal", 80, "metadata"),
        ("meta.test:80".into(), "meta.test", 80, "169.254.169.254 is a cloud metadata address"),
        (format!("[::ffff:127.0.0.1]:{p}"), "::ffff:127.0.0.1", p, "::ffff:127.0.0.1 is loopback"),
        (format!("mapped.test:{p}"), "mapped.test", p, "::ffff:127.0.0.1 is loopback"),
        ("mixed.test:443".into(), "mixed.test", 443, "10.0.0.1 is private"),
        (format!("0x7f.1:{p}"), "0x7f.1", p, "127.0.0.1 is loopback"),
        (format!("2130706433:{p}"), "2130706433", p, "127.0.0.1 is loopback"),
        (format!("0.0.0.0:{p}"), "0.0.0.0", p, "0.0.0.0 is unspecified"),
        (format!("zero.test:{p}"), "zero.test", p, "0.0.0.0 is unspecified"),
        (format!("[::1]:{p}"), "::1", p, "::1 is loopback"),
        (format!("v6loop.test:{p}"), "v6loop.test", p, "::1 is loopback"),
        (format!("nat64loop.test:{p}"), "nat64loop.test", p, "64:ff9b::7f00:1 is an IPv6 form of a loopback"),
    ];
    for (authority, host, port, why) in &tunnels {
        let (_s, code, head) = g.tunnel(authority);
        assert_eq!(code, 403, "CONNECT {authority}: {head}");
        let e = denial(&g, host, *port, "CONNECT");
        assert_eq!(e["binary"], me(), "{e}");
        assert!(e["reason"].as_str().unwrap().contains(why), "CONNECT {authority}: reason should name {why:?}: {e}");
    }

    // The plain-HTTP forward path goes through the same guard.
    let forwards: Vec<(String, &str, u16, &str)> = vec![
        ("http://10.0.0.1/guard-ssrf/a".into(), "10.0.0.1", 80, "10.0.0.1 is private"),
        ("http://169.254.169.254/latest/meta-data/".into(), "169.254.169.254", 80, "metadata"),
        (format!("http://loop.test:{p}/guard-ssrf/b"), "loop.test", p, "127.0.0.1 is loopback"),
        (format!("http://0x7f.1:{p}/guard-ssrf/c"), "0x7f.1", p, "127.0.0.1 is loopback"),
    ];
    for (url, host, port, why) in &forwards {
        let authority = url.trim_start_matches("http://").split('/').next().unwrap();
        let resp = exchange(g.addr, format!("GET {url} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes());
        assert_eq!(status(&resp), 403, "GET {url}: {resp}");
        let e = denial(&g, host, *port, "GET");
        assert!(e["reason"].as_str().unwrap().contains(why), "GET {url}: reason should name {why:?}: {e}");
    }

    // A kept-alive forward connection re-decides when the destination changes.
    let mut s = g.connect();
    write!(s, "GET http://up.test/guard-ssrf/keep HTTP/1.1\r\nHost: up.test\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s).0, 200);
    write!(s, "GET http://private.test/guard-ssrf/pivot HTTP/1.1\r\nHost: private.test\r\n\r\n").unwrap();
    let (code, body) = read_response(&mut s);
    assert_eq!(code, 403, "{body}");
    assert!(denial(&g, "private.test", 80, "GET")["reason"].as_str().unwrap().contains("10.1.2.3"));

    canary.set_nonblocking(true).unwrap();
    match canary.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the loopback canary was reached: {other:?}"),
    }
}

/// Requests that try to desynchronise the gateway's framing from the
/// upstream's, or that no strict parser accepts: (name, bytes, status).
/// `target(name)` gives the request target for a case (absolute-form on the
/// forward path, origin-form in a tunnel).
fn hostile_requests(target: &dyn Fn(&str) -> String) -> Vec<(&'static str, Vec<u8>, u16)> {
    let hidden = "0\r\n\r\nDELETE /smuggled HTTP/1.1\r\nHost: up.test\r\n\r\n";
    let t = target;
    let head = |name: &str, extra: &str| format!("POST {} HTTP/1.1\r\nHost: up.test\r\n{extra}\r\n", t(name));
    let mut many = String::new();
    for i in 0..101 {
        many += &format!("X-H{i}: v\r\n");
    }
    let cases: Vec<(&str, String, u16)> = vec![
        ("cl-te", head("cl-te", &format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", hidden.len())), 400),
        ("te-cl", head("te-cl", "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n"), 400),
        ("two-cl", head("two-cl", "Content-Length: 5\r\nContent-Length: 6\r\n") + "hello!", 400),
        ("cl-list", head("cl-list", "Content-Length: 5, 6\r\n") + "hello!", 400),
        ("cl-sign", head("cl-sign", "Content-Length: +5\r\n") + "hello", 400),
        ("te-chunked-identity", head("te-chunked-identity", "Transfer-Encoding: chunked, identity\r\n"), 400),
        ("te-two-fields", head("te-two-fields", "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n"), 400),
        ("te-space-colon", head("te-space-colon", "Transfer-Encoding : chunked\r\n"), 400),
        (
            "te-http10",
            format!("POST {} HTTP/1.0\r\nHost: up.test\r\nTransfer-Encoding: chunked\r\n\r\n", t("te-http10")),
            400,
        ),
        ("obs-fold", head("obs-fold", "X-A: a\r\n b\r\n"), 400),
        ("no-colon", head("no-colon", "NoColonHere\r\n"), 400),
        ("nul-in-value", head("nul-in-value", "X-A: a\0b\r\n"), 400),
        ("bare-cr", head("bare-cr", "X-A: a\rb\r\n"), 400),
        ("bare-lf", format!("GET {} HTTP/1.1\nHost: up.test\n\n", t("bare-lf")), 400),
        ("two-hosts", head("two-hosts", "Host: private.test\r\n"), 400),
        ("oversized", head("oversized", &format!("X-Big: {}\r\n", "a".repeat(40 * 1024))), 431),
        ("too-many-fields", head("too-many-fields", &many), 431),
        ("garbage-line", "GARBAGE\r\n\r\n".into(), 400),
        ("double-space", format!("GET  {} HTTP/1.1\r\nHost: up.test\r\n\r\n", t("double-space")), 400),
        ("bad-version", format!("GET {} HTTP/9.9\r\nHost: up.test\r\n\r\n", t("bad-version")), 400),
        ("http09", format!("GET {}\r\n\r\n", t("http09")), 400),
        ("h2-preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".into(), 400),
    ];
    cases
        .into_iter()
        .map(|(name, mut text, code)| {
            if name == "cl-te" || name == "te-cl" {
                text += hidden;
            }
            (name, text.into_bytes(), code)
        })
        .collect()
}

#[test]
fn forward_path_refuses_smuggling_and_malformed_heads() {
    let g = Gw::start(FWD_UP);
    for (name, req, want) in hostile_requests(&|n| format!("http://up.test/guard-smuggle/fwd-{n}")) {
        let resp = exchange(g.addr, &req);
        assert_eq!(status(&resp), want, "{name}: {resp}");
        assert!(resp.contains("moat:"), "{name}: the refusal must come from the gateway: {resp}");
    }
    // Control: a well-formed request on the same gateway reaches the upstream.
    let ok = exchange(
        g.addr,
        b"POST http://up.test/guard-smuggle/fwd-control HTTP/1.1\r\nHost: up.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(seen_under("/guard-smuggle/fwd-"), vec!["/guard-smuggle/fwd-control".to_string()]);
    assert!(seen_under("/smuggled").is_empty(), "a hidden request reached the upstream");
}

#[test]
fn inspected_tunnel_refuses_smuggling_and_malformed_heads() {
    let g = Gw::start(L7_UP);
    for (name, req, want) in hostile_requests(&|n| format!("/guard-smuggle/tun-{n}")) {
        let resp = in_tunnel(&g, &req);
        assert_eq!(status(&resp), want, "{name}: {resp}");
        assert!(resp.contains("moat:"), "{name}: the refusal must come from the gateway: {resp}");
    }
    // A tunnel is no way to pivot: absolute-form targets are refused inside it.
    let resp = in_tunnel(&g, b"GET http://10.0.0.1/guard-smuggle/tun-pivot HTTP/1.1\r\nHost: up.test\r\n\r\n");
    assert_eq!(status(&resp), 400, "{resp}");

    // Pipelined requests are each checked: the second is refused by the rules.
    let (s, code, _) = g.tunnel("up.test:443");
    assert_eq!(code, 200);
    let mut t = tls(s, "up.test", g.client_tls());
    t.write_all(
        b"GET /guard-smuggle/tun-pipelined HTTP/1.1\r\nHost: up.test\r\n\r\nDELETE /smuggled-pipelined HTTP/1.1\r\nHost: up.test\r\n\r\n",
    )
    .unwrap();
    t.flush().unwrap();
    // Both answers may arrive in one read: take everything until the close.
    let (text, _) = read_all(&mut t);
    let second = text.find("HTTP/1.1 403").unwrap_or_else(|| panic!("no 403 for the pipelined DELETE: {text}"));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text[second..].contains("no rule allows DELETE"), "{text}");

    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(seen_under("/guard-smuggle/tun-"), vec!["/guard-smuggle/tun-pipelined".to_string()]);
    assert!(seen_under("/smuggled").is_empty(), "a hidden request reached the upstream: {:?}", seen_under("/smuggled"));
}

#[test]
fn inspected_tunnel_refuses_dot_segments_that_leave_an_allowed_prefix() {
    // The rules allow /guard-smuggle/** only; an origin server that removes
    // dot segments (RFC 3986 5.2.4; most do, many after decoding %2E) would
    // serve /guard-escape/... for each of these.
    let g = Gw::start(L7_UP);
    let mut relayed = Vec::new();
    for path in [
        "/guard-smuggle/../guard-escape/dot",
        "/guard-smuggle/./../guard-escape/dot-dot",
        "/guard-smuggle/%2e%2e/guard-escape/pct",
        "/guard-smuggle/%2E%2E/guard-escape/pct-upper",
        "/guard-smuggle/.%2e/guard-escape/mixed",
    ] {
        let resp =
            in_tunnel(&g, format!("GET {path} HTTP/1.1\r\nHost: up.test\r\nConnection: close\r\n\r\n").as_bytes());
        if !matches!(status(&resp), 400 | 403) {
            relayed.push(format!("{path} -> {}", resp.lines().next().unwrap_or("")));
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let seen: Vec<String> = seen_under("/guard-smuggle/").into_iter().filter(|p| p.contains("guard-escape")).collect();
    assert!(
        relayed.is_empty() && seen.is_empty(),
        "paths left the allowed prefix: {relayed:#?}; upstream saw {seen:?}"
    );
}

#[test]
fn a_thousand_concurrent_clients_are_all_served() {
    let _heavy = heavy();
    raise_nofile();
    let g = Gw::start(FWD_UP);
    const N: usize = 1000;
    // One request first: the gateway hashes this (large, debug) test binary
    // on first contact; the burst below then measures relaying, not hashing.
    let warm =
        exchange(g.addr, b"GET http://up.test/guard-c/warm HTTP/1.1\r\nHost: up.test\r\nConnection: close\r\n\r\n");
    assert!(warm.starts_with("HTTP/1.1 200"), "{warm}");
    let t0 = Instant::now();
    let mut conns: Vec<TcpStream> = (0..N)
        .map(|_| {
            let s = TcpStream::connect(g.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
            s
        })
        .collect();
    let connected = t0.elapsed();
    for (i, s) in conns.iter_mut().enumerate() {
        write!(s, "GET http://up.test/guard-c/{i} HTTP/1.1\r\nHost: up.test\r\n\r\n").unwrap();
    }
    let sent = t0.elapsed();
    let mut first = None;
    for (i, s) in conns.iter_mut().enumerate() {
        let (code, body) = read_response(s);
        assert_eq!((code, body.as_str()), (200, format!("echo GET /guard-c/{i} 0\n").as_str()), "client {i}");
        first.get_or_insert(t0.elapsed());
    }
    let answered = t0.elapsed();
    // All are still open (kept alive): one more request on the first and last.
    for i in [0, N - 1] {
        write!(conns[i], "GET http://up.test/guard-c/again-{i} HTTP/1.1\r\nHost: up.test\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut conns[i]).0, 200);
    }
    println!(
        "{N} clients: connected in {connected:?}, requests sent by {sent:?}, first answer read at {:?}, all answered by {answered:?} ({:.1} ms per client)",
        first.unwrap_or_default(),
        answered.as_secs_f64() * 1000.0 / N as f64
    );
    let seen = seen_under("/guard-c/");
    assert_eq!(seen.len(), N + 3, "each request reached the upstream once");
    assert!(g.events().iter().filter(|e| e["decision"] == "allow").count() >= N);
}

#[test]
fn slowloris_heads_time_out_while_other_clients_are_served() {
    let _heavy = heavy();
    let limits = Limits { head_timeout: Duration::from_secs(2), ..Default::default() };
    let g = Gw::start_in(tempfile::tempdir().unwrap(), FWD_UP, limits);
    const N: usize = 100;
    let head = b"GET http://up.test/guard-slow/trickled HTTP/1.1\r\nHost: up.test\r\n\r\n";
    let mut slow: Vec<TcpStream> = (0..N).map(|_| TcpStream::connect(g.addr).unwrap()).collect();
    let start = Instant::now();
    for s in &slow {
        s.set_nonblocking(true).unwrap();
    }
    let addr = g.addr;
    let normal = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        let began = Instant::now();
        let resp = exchange(
            addr,
            b"GET http://up.test/guard-slow/normal HTTP/1.1\r\nHost: up.test\r\nConnection: close\r\n\r\n",
        );
        (start.elapsed(), began.elapsed(), resp)
    });
    // One byte every 500 ms to each slow client until the gateway answers it.
    let mut sent = [0usize; N];
    let mut answered: [Option<Duration>; N] = [None; N];
    let mut one = [0u8; 1];
    while answered.iter().any(Option::is_none) && start.elapsed() < Duration::from_secs(15) {
        for i in 0..N {
            if answered[i].is_some() {
                continue;
            }
            match slow[i].peek(&mut one) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if slow[i].write(&head[sent[i]..=sent[i]]).is_ok() {
                        sent[i] += 1;
                    }
                }
                _ => answered[i] = Some(start.elapsed()),
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (normal_done, normal_took, resp) = normal.join().unwrap();
    assert!(resp.starts_with("HTTP/1.1 200") && resp.contains("echo GET /guard-slow/normal"), "{resp}");
    assert!(normal_took < Duration::from_secs(5), "a normal client waited {normal_took:?} behind slowloris clients");
    let first_408 = answered.iter().flatten().min().copied().unwrap_or_default();
    assert!(normal_done < first_408, "the normal client ({normal_done:?}) was not served while slow clients trickled");
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(answered[i].is_some(), "slow client {i} got no answer in 15 s");
        assert!(sent[i] < head.len(), "slow client {i} completed its head");
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (resp, closed) = read_all(s);
        assert!(resp.starts_with("HTTP/1.1 408"), "slow client {i}: {resp}");
        assert!(closed, "slow client {i} was answered but not closed");
    }
    println!(
        "normal client served in {normal_took:?}; slow clients answered 408 between {first_408:?} and {:?}",
        answered.iter().flatten().max().unwrap()
    );
    assert!(seen_under("/guard-slow/trickled").is_empty());
}

/// Sends `head` one byte per 500 ms (the stream's read timeout must be
/// 500 ms) until the gateway answers or `limit` passes; returns the answer.
fn trickle(s: &mut (impl Read + Write), head: &[u8], limit: Duration) -> String {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    for b in head.iter().cycle() {
        if start.elapsed() > limit {
            return String::new();
        }
        let _ = s.write_all(&[*b]).and_then(|_| s.flush());
        match s.read(&mut buf) {
            Ok(n) => {
                let mut out = buf[..n].to_vec();
                let mut rest = [0u8; 1024];
                while let Ok(m @ 1..) = s.read(&mut rest) {
                    out.extend_from_slice(&rest[..m]);
                }
                return String::from_utf8_lossy(&out).into_owned();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return format!("error: {e}"),
        }
    }
    String::new()
}

#[test]
fn every_request_head_has_the_head_deadline_not_only_the_first() {
    let limits = Limits { head_timeout: Duration::from_secs(2), ..Default::default() };
    let g = Gw::start_in(tempfile::tempdir().unwrap(), &format!("{FWD_UP}\n{L7_UP}"), limits);
    let head = b"GET http://up.test/guard-slow/again HTTP/1.1\r\nHost: up.test\r\n\r\n";
    // Control: the first head on a connection is cut off (the helper sees a 408).
    let mut f = g.connect();
    f.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let first = trickle(&mut f, head, Duration::from_secs(8));
    assert!(first.starts_with("HTTP/1.1 408"), "control: {first:?}");
    // The second head on a kept-alive forward connection.
    let mut s = g.connect();
    write!(s, "GET http://up.test/guard-slow/first HTTP/1.1\r\nHost: up.test\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s).0, 200);
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let kept_alive = trickle(&mut s, head, Duration::from_secs(8));
    // The first head inside an inspected tunnel (its TLS handshake is done).
    let (s, code, _) = g.tunnel("up.test:443");
    assert_eq!(code, 200);
    let mut t = tls(s, "up.test", g.client_tls());
    assert_eq!(engine::request(&mut t, "GET", "up.test", "/guard-smuggle/deadline-slow", b"").0, 200);
    t.sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let tunnelled =
        trickle(&mut t, b"GET /guard-smuggle/deadline-slow HTTP/1.1\r\nHost: up.test\r\n\r\n", Duration::from_secs(8));
    assert!(
        kept_alive.starts_with("HTTP/1.1 408") && tunnelled.starts_with("HTTP/1.1 408"),
        "a trickled head was not cut off within 8 s (head_timeout 2 s): kept-alive {kept_alive:?}, tunnel {tunnelled:?}"
    );
}

#[test]
fn connections_beyond_the_cap_are_answered_503_and_a_freed_slot_is_reused() {
    let limits = Limits { max_connections: 8, ..Default::default() };
    let g = Gw::start_in(tempfile::tempdir().unwrap(), FWD_UP, limits);
    // Eight idle clients hold every slot (each waits in its head deadline).
    let mut idle: Vec<TcpStream> = (0..8).map(|_| g.connect()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let req = b"GET http://up.test/guard-cap/x HTTP/1.1\r\nHost: up.test\r\nConnection: close\r\n\r\n";
    let resp = exchange(g.addr, req);
    assert!(resp.starts_with("HTTP/1.1 503") && resp.contains("too many connections"), "{resp}");
    // Closing one idle client frees its slot.
    drop(idle.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    let resp = loop {
        let resp = exchange(g.addr, req);
        if !resp.starts_with("HTTP/1.1 503") || Instant::now() > deadline {
            break resp;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(seen_under("/guard-cap/"), vec!["/guard-cap/x".to_string()]);
}

const BUSYBOX: &str = "/bin/busybox";

fn busybox() -> String {
    assert!(std::path::Path::new(BUSYBOX).is_file(), "{BUSYBOX} is missing (install busybox-static)");
    std::fs::canonicalize(BUSYBOX).unwrap().to_string_lossy().into_owned()
}

#[test]
fn a_binary_outside_the_listed_ones_ancestry_is_refused() {
    let exe = busybox();
    // Without `children = true`, a program the listed binary starts gets nothing.
    let plain = Gw::start(FWD_UP);
    let out = std::process::Command::new(BUSYBOX)
        .args(["wget", "-S", "-O", "-", "http://up.test/guard-ident/no-children"])
        .env("http_proxy", format!("http://{}", plain.addr))
        .env_remove("no_proxy")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("403"), "a child without children = true: {err}");
    drop(plain);
    let g = Gw::start(FWD_UP_CHILDREN);
    let proxy = format!("http://{}", g.addr);
    // Control: busybox wget started by this test binary inherits its rule
    // (the rule says children = true).
    let out = std::process::Command::new(BUSYBOX)
        .args(["wget", "-S", "-O", "-", "http://up.test/guard-ident/child"])
        .env("http_proxy", &proxy)
        .env_remove("no_proxy")
        .output()
        .unwrap();
    assert!(out.status.success(), "wget as a child of the listed binary: {}", String::from_utf8_lossy(&out.stderr));

    // The same wget detached from this test (its shell exits first, so it is
    // reparented): neither it nor any ancestor is the listed binary.
    let dir = tempfile::tempdir().unwrap();
    let script = r#"( while [ ! -e "$1/go" ]; do sleep 0.02; done
exec /bin/busybox wget -S -O - http://up.test/guard-ident/orphan >"$1/out" 2>"$1/err" ) </dev/null >/dev/null 2>&1 &
echo $!"#;
    let out = std::process::Command::new(BUSYBOX)
        .args(["sh", "-c", script, "sh"])
        .arg(dir.path())
        .env("http_proxy", &proxy)
        .env_remove("no_proxy")
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid: u32 = stat[stat.rfind(')').unwrap() + 2..].split(' ').nth(1).unwrap().parse().unwrap();
    assert_ne!(ppid, std::process::id(), "wget is still this test's child");
    std::fs::write(dir.path().join("go"), "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = std::fs::read_to_string(dir.path().join("err")).unwrap_or_default();
    assert!(err.contains("403"), "the detached wget was not refused with 403: {err}");
    let ev = g.events();
    let e = ev.iter().find(|e| e["path"] == "/guard-ident/orphan").unwrap_or_else(|| panic!("no event: {ev:#?}"));
    assert_eq!(e["decision"], "deny", "{e}");
    assert_eq!(e["binary"], exe.as_str(), "the event names the real binary: {e}");
    assert_eq!(e["pid"], pid, "{e}");
    assert!(e["reason"].as_str().unwrap().contains("only for other binaries"), "{e}");
    let child = ev.iter().find(|e| e["path"] == "/guard-ident/child").unwrap();
    assert_eq!((child["decision"].as_str(), child["binary"].as_str()), (Some("allow"), Some(exe.as_str())));
    assert_eq!(seen_under("/guard-ident/"), vec!["/guard-ident/child".to_string()]);
}

#[test]
fn a_connection_shared_with_a_process_running_another_program_is_refused() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    busybox();
    let g = Gw::start(FWD_UP);
    let mut s = g.connect();
    let fd = s.as_raw_fd();
    let mut cmd = std::process::Command::new(BUSYBOX);
    cmd.args(["sleep", "30"]);
    // SAFETY: only fcntl (async-signal-safe) on a descriptor this process
    // owns, in the child between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    // The child holds the socket once it has exec'd busybox.
    let want = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let holds = || {
        std::fs::read_link(format!("/proc/{}/exe", child.id())).is_ok_and(|e| e.ends_with("busybox"))
            && std::fs::read_link(format!("/proc/{}/fd/{fd}", child.id())).is_ok_and(|l| l == want)
    };
    while !holds() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(holds(), "busybox did not inherit the socket");
    write!(s, "GET http://up.test/guard-ident/shared HTTP/1.1\r\nHost: up.test\r\nConnection: close\r\n\r\n").unwrap();
    let (resp, _) = read_all(&mut s);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status(&resp), 403, "{resp}");
    let e = denial(&g, "up.test", 80, "GET");
    assert!(e["reason"].as_str().unwrap().contains("shared by processes running different programs"), "{e}");
    assert!(seen_under("/guard-ident/shared").is_empty());
}
