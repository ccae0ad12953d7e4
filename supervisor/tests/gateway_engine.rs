//! The egress gateway's decisions end to end, in process: default deny,
//! approvals and their persistence across a restart, L4 relay, L7 rules
//! through TLS termination, access levels, audit mode, the plain-HTTP
//! forward path, WebSocket upgrades, and hot reload. The caller is this test
//! binary, identified by the gateway through /proc like any sandbox program.
mod gateway_common;

use gateway_common::engine::{self, me, read_head, request, tls, Gw};
use moat_supervisor::gateway::control::Request;
use moat_supervisor::gateway::Limits;
use std::io::{Read, Write};

const L4_UP: &str = r#"
[[policy]]
name = "up-l4"
binaries = ["{me}"]
[[policy.endpoint]]
host = "up.test"
port = 443
allowed_ips = ["198.18.0.0/15"]
"#;

#[test]
fn unlisted_destination_is_refused_then_approved_and_the_approval_survives_a_restart() {
    let g = Gw::start("");
    let (_s, status, head) = g.tunnel("up.test:443");
    assert_eq!(status, 403, "{head}");
    let body = g.raw(b"CONNECT up.test:443 HTTP/1.1\r\nHost: up.test:443\r\n\r\n");
    assert!(body.contains(&me()) && body.contains("up.test:443"), "the refusal names binary and destination: {body}");
    let pending = g.control(&Request::Approvals).unwrap();
    let list = pending["pending"].as_array().unwrap();
    assert_eq!(list.len(), 1, "deduplicated: {list:?}");
    assert_eq!(list[0]["count"], 2);
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert!(body.contains(&id), "the refusal carries the approval id");
    // Private (198.18/15) upstreams need allowed_ips: approving without
    // them is refused at approve time, naming the flag, and stays pending
    // (it used to succeed, and every retry was then refused).
    let refused = g
        .control(&Request::Approve { id: id.clone(), allowed_ips: vec![], scope: Default::default() })
        .unwrap_err()
        .to_string();
    assert!(refused.contains("--allowed-ip") && refused.contains("198.18"), "{refused}");
    let pending = g.control(&Request::Approvals).unwrap();
    assert_eq!(pending["pending"][0]["id"], id.as_str(), "still pending");
    let v = g
        .control(&Request::Approve {
            id: id.clone(),
            allowed_ips: vec!["198.18.0.0/15".into()],
            scope: Default::default(),
        })
        .unwrap();
    assert_eq!(v["revision"], 2);
    let (_s, status, head) = g.tunnel("up.test:443");
    assert_eq!(status, 200, "{head}");
    assert!(
        g.control(&Request::Approve { id, allowed_ips: vec![], scope: Default::default() }).is_err(),
        "an id is used once"
    );

    // Restart on the same state: revision 2 (with the approval) is in force.
    let dir = g.dir;
    let g2 = Gw::start_in(dir, "", Limits::default());
    let v = g2.control(&Request::Status).unwrap();
    assert_eq!(v["revision"], 2);
    assert!(v["network"]["policy"][0]["name"].as_str().unwrap().starts_with("approved-"));
    assert!(g2.dir.path().join("network/000002.toml").is_file());
}

#[test]
fn l4_tunnel_relays_verified_tls_to_the_upstream() {
    let g = Gw::start(L4_UP);
    let (s, status, head) = g.tunnel("up.test:443");
    assert_eq!(status, 200, "{head}");
    // End-to-end TLS with the upstream's own certificate: not inspected.
    let mut t =
        tls(s, "up.test", engine::client_tls_for(&std::fs::read_to_string(&engine::ups().ca.pem_file).unwrap()));
    let (code, body) = request(&mut t, "POST", "up.test", "/anything/goes", b"hello");
    assert_eq!(code, 200);
    assert_eq!(body, "echo POST /anything/goes 5\n");
    let ev = g.events();
    let e = ev.last().unwrap();
    assert_eq!(e["decision"], "allow");
    assert_eq!(e["binary"], me());
    assert_eq!(e["host"], "up.test");
    assert_eq!(e["method"], "CONNECT");
    assert_eq!(e["rule"], "up-l4");
    assert_eq!(e["hash"].as_str().unwrap().len(), 64);
    assert_eq!(e["pid"], std::process::id());
}

#[test]
fn a_binary_not_listed_is_refused_even_for_an_allowed_host() {
    let g = Gw::start(&L4_UP.replace("{me}", "/usr/bin/git"));
    let (_s, status, _) = g.tunnel("up.test:443");
    assert_eq!(status, 403);
    let e = g.events().pop().unwrap();
    assert_eq!(e["decision"], "deny");
    assert!(e["reason"].as_str().unwrap().contains("only for other binaries"), "{e}");
}

const L7_RULES: &str = r#"
[[policy]]
name = "api"
binaries = ["{me}"]
[[policy.endpoint]]
host = "up.test"
port = 443
protocol = "rest"
rules = [
  { allow = { method = "GET", path = "/repos/*/issues" } },
  { allow = { method = "POST", path = "/upload/**" } },
  { allow = { method = "GET", path = "/stream" } },
  { allow = { method = "GET", path = "/ws" } },
]
upgrade = true
allowed_ips = ["198.18.0.0/15"]
"#;

#[test]
fn inspected_tunnel_checks_each_request_over_keep_alive() {
    let g = Gw::start(L7_RULES);
    let (s, status, _) = g.tunnel("up.test:443");
    assert_eq!(status, 200);
    let mut t = tls(s, "up.test", g.client_tls());
    assert_eq!(request(&mut t, "GET", "up.test", "/repos/moat/issues?token=abc", b"").0, 200);
    assert_eq!(request(&mut t, "POST", "up.test", "/upload/a/b/c", &vec![b'z'; 100_000]).0, 200);
    // Chunked request body through the inspector.
    write!(t, "POST /upload/chunked HTTP/1.1\r\nHost: up.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").unwrap();
    let (code, body) = engine::read_response(&mut t);
    assert_eq!((code, body.as_str()), (200, "echo POST /upload/chunked 11\n"));
    // A refused request closes the tunnel after the 403.
    let (code, body) = request(&mut t, "DELETE", "up.test", "/repos/moat/issues", b"");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("no rule allows DELETE"), "{body}");
    let seen = engine::ups().https.seen();
    assert!(seen.iter().any(|s| s.path == "/repos/moat/issues?token=abc"));
    assert!(
        !seen.iter().any(|s| s.method == "DELETE" && s.path == "/repos/moat/issues"),
        "refused requests never reach the upstream"
    );
    assert!(seen.iter().any(|s| s.path == "/upload/a/b/c" && s.body_len == 100_000));
    let ev = g.events();
    assert!(ev.iter().any(|e| e["decision"] == "deny" && e["method"] == "DELETE" && e["path"] == "/repos/moat/issues"));
    assert!(ev.iter().all(|e| !e["path"].as_str().unwrap_or("").contains("token")), "queries are not logged");
}

#[test]
fn inspected_tunnel_refuses_paths_outside_the_rules_and_a_foreign_host_header() {
    let g = Gw::start(L7_RULES);
    for (path, host) in [("/repos/a/b/issues", "up.test"), ("/repos/moat/issues", "other.test")] {
        let (s, status, _) = g.tunnel("up.test:443");
        assert_eq!(status, 200);
        let mut t = tls(s, "up.test", g.client_tls());
        let (code, body) = request(&mut t, "GET", host, path, b"");
        assert!(code == 403 || code == 421, "{path} {host}: {code} {body}");
    }
}

#[test]
fn streamed_responses_arrive_as_produced() {
    let g = Gw::start(L7_RULES);
    let (s, _, _) = g.tunnel("up.test:443");
    let mut t = tls(s, "up.test", g.client_tls());
    write!(t, "GET /stream HTTP/1.1\r\nHost: up.test\r\n\r\n").unwrap();
    let start = std::time::Instant::now();
    let (status, _) = read_head(&mut t);
    assert_eq!(status, 200);
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains("chunk 0") {
        let n = t.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early");
        got.extend_from_slice(&buf[..n]);
    }
    let first_at = start.elapsed();
    assert!(!String::from_utf8_lossy(&got).contains("chunk 4"), "all chunks arrived together");
    // The upstream needs 800 ms for all five chunks; the first must not wait for them.
    assert!(first_at < std::time::Duration::from_millis(700), "first chunk after {first_at:?}");
}

#[test]
fn websocket_upgrade_is_relayed_both_ways() {
    let g = Gw::start(L7_RULES);
    let (s, _, _) = g.tunnel("up.test:443");
    let mut t = tls(s, "up.test", g.client_tls());
    write!(t, "GET /ws HTTP/1.1\r\nHost: up.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
    t.flush().unwrap();
    let (status, head) = read_head(&mut t);
    assert_eq!(status, 101, "{head}");
    t.write_all(b"ping-through-upgrade").unwrap();
    t.flush().unwrap();
    let mut buf = [0u8; 20];
    t.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping-through-upgrade");
}

#[test]
fn access_levels_allow_exactly_their_methods() {
    for (access, ok, refused) in [
        ("read-only", &["GET", "HEAD", "OPTIONS"][..], &["POST", "PUT", "PATCH", "DELETE"][..]),
        ("read-write", &["GET", "POST", "PUT", "PATCH"][..], &["DELETE"][..]),
        ("full", &["GET", "POST", "DELETE"][..], &[][..]),
    ] {
        let rules = format!(
            "[[policy]]\nname = \"a\"\nbinaries = [\"{{me}}\"]\n[[policy.endpoint]]\nhost = \"up.test\"\nport = 80\nprotocol = \"rest\"\naccess = \"{access}\"\nallowed_ips = [\"198.18.0.0/15\"]\n"
        );
        let g = Gw::start(&rules);
        // The plain-HTTP forward path shares the decision pipeline.
        for m in ok {
            let resp = g
                .raw(format!("{m} http://up.test/x HTTP/1.1\r\nHost: up.test\r\nConnection: close\r\n\r\n").as_bytes());
            assert!(resp.starts_with("HTTP/1.1 200"), "{access} {m}: {resp}");
        }
        for m in refused {
            let resp = g
                .raw(format!("{m} http://up.test/x HTTP/1.1\r\nHost: up.test\r\nConnection: close\r\n\r\n").as_bytes());
            assert!(resp.starts_with("HTTP/1.1 403"), "{access} {m}: {resp}");
        }
    }
}

#[test]
fn audit_mode_relays_what_it_would_refuse_and_logs_it() {
    let rules = L7_RULES.replace("allowed_ips", "enforcement = \"audit\"\nallowed_ips");
    let g = Gw::start(&rules);
    let (s, _, _) = g.tunnel("up.test:443");
    let mut t = tls(s, "up.test", g.client_tls());
    let (code, _) = request(&mut t, "DELETE", "up.test", "/everything", b"");
    assert_eq!(code, 200);
    let e = g.events().pop().unwrap();
    assert_eq!(e["decision"], "audit");
    assert_eq!(e["method"], "DELETE");
}

#[test]
fn hot_reload_revokes_only_what_the_new_policy_drops() {
    let two = format!("{L4_UP}\n{}", L4_UP.replace("up-l4", "alt").replace("port = 443", "port = 8443"));
    let g = Gw::start(&two);
    let up_ca = engine::client_tls_for(&std::fs::read_to_string(&engine::ups().ca.pem_file).unwrap());
    let (a, sa, _) = g.tunnel("up.test:443");
    let (b, sb, _) = g.tunnel("up.test:8443");
    assert_eq!((sa, sb), (200, 200));
    let mut a = tls(a, "up.test", up_ca.clone());
    let mut b = tls(b, "up.test", up_ca);
    assert_eq!(request(&mut a, "GET", "up.test", "/1", b"").0, 200);
    assert_eq!(request(&mut b, "GET", "up.test", "/1", b"").0, 200);

    // An invalid policy is refused and the old one stays.
    let mut bad = engine::network(L4_UP);
    bad.policies[0].binaries = vec!["relative/path".into()];
    assert!(g.control(&Request::SetNetwork { network: Box::new(bad), why: "bad".into() }).is_err());
    assert_eq!(g.control(&Request::Status).unwrap()["revision"], 1);

    let v =
        g.control(&Request::SetNetwork { network: Box::new(engine::network(L4_UP)), why: "drop alt".into() }).unwrap();
    assert_eq!(v["revision"], 2);
    // The unrelated tunnel keeps working; the dropped one is closed.
    assert_eq!(request(&mut a, "GET", "up.test", "/2", b"").0, 200);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let _ = write!(b, "GET /2 HTTP/1.1\r\nHost: up.test\r\n\r\n");
    let mut buf = [0u8; 16];
    assert!(!matches!(b.read(&mut buf), Ok(n) if n > 0), "the revoked tunnel must be closed");
    assert!(g.events().iter().any(|e| e["decision"] == "revoke" && e["port"] == 8443));
}
