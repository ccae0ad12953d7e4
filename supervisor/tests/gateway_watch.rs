//! The console's feed (`{"op":"watch"}` on the control socket), in process:
//! it starts with the policy, the pending list and the newest records, then
//! carries each record, each approvals change and each new revision (with
//! the one before, for the diff) as they happen; a watcher that never reads
//! does not slow the gateway down, and one that comes later still gets the
//! newest records. The caller is this test binary, as in gateway_engine.rs.
mod gateway_common;

use gateway_common::engine::{me, request, tls, Gw};
use moat_supervisor::gateway::control::Request;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Inspected: every request is one audit record.
const L7_UP: &str = r#"
[[policy]]
name = "up-l7"
binaries = ["{me}"]
[[policy.endpoint]]
host = "up.test"
port = 443
protocol = "rest"
access = "full"
allowed_ips = ["198.18.0.0/15"]
"#;

struct Watcher(BufReader<UnixStream>);

impl Watcher {
    fn open(g: &Gw) -> Watcher {
        let mut s = UnixStream::connect(g.dir.path().join("control.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"{\"op\":\"watch\"}\n").unwrap();
        Watcher(BufReader::new(s))
    }

    fn next(&mut self) -> Value {
        let mut line = String::new();
        self.0.read_line(&mut line).expect("a feed line within 20 s");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    /// Reads until a line matching each of `a` and `b` has come, in either
    /// order: records, approvals and policy travel on separate channels.
    fn both(&mut self, a: (&str, fn(&Value) -> bool), b: (&str, fn(&Value) -> bool)) -> (Value, Value) {
        let (mut first, mut second) = (Value::Null, Value::Null);
        while first.is_null() || second.is_null() {
            let v = self.next();
            if first.is_null() && v["kind"] == a.0 && a.1(&v) {
                first = v;
            } else if second.is_null() && v["kind"] == b.0 && b.1(&v) {
                second = v;
            }
        }
        (first, second)
    }

    /// Reads until a line of `kind` that satisfies `ok`.
    fn until(&mut self, kind: &str, ok: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.next();
            if v["kind"] == kind && ok(&v) {
                return v;
            }
        }
    }
}

#[test]
fn the_feed_carries_policy_approvals_and_records_as_they_happen() {
    let g = Gw::start("");
    let mut w = Watcher::open(&g);
    let first = w.next();
    assert_eq!((first["kind"].as_str(), first["revision"].as_u64()), (Some("policy"), Some(1)), "{first}");
    assert!(first["previous"].is_null() && first["text"].as_str().unwrap().contains("gateway_port"), "{first}");
    let second = w.next();
    assert_eq!(second["kind"], "approvals");
    assert_eq!(second["pending"].as_array().map(Vec::len), Some(0));

    let (_s, status, _) = g.tunnel("up.test:443");
    assert_eq!(status, 403);
    let (e, a) = w.both(("event", |_| true), ("approvals", |v| v["pending"].as_array().is_some_and(|p| !p.is_empty())));
    assert_eq!((e["event"]["decision"].as_str(), e["event"]["host"].as_str()), (Some("deny"), Some("up.test")));
    assert_eq!(e["event"]["binary"], me().as_str());
    let id = a["pending"][0]["id"].as_str().unwrap().to_string();

    let scope = moat_supervisor::gateway::scope::Scope::Exact;
    g.control(&Request::Approve { id, allowed_ips: vec!["198.18.0.0/15".into()], scope }).unwrap();
    let (p, _) = w.both(("policy", |_| true), ("approvals", |v| v["pending"].as_array().is_some_and(Vec::is_empty)));
    assert_eq!(p["revision"], 2);
    let (prev, text) = (p["previous"].as_str().unwrap(), p["text"].as_str().unwrap());
    assert!(!prev.contains("approved-") && text.contains("approved-"), "the two revisions, for the diff: {p}");
    let (_s, status, _) = g.tunnel("up.test:443");
    assert_eq!(status, 200);
    let e = w.until("event", |v| v["event"]["decision"] == "allow");
    assert_eq!(e["event"]["port"], 443);
}

#[test]
fn a_watcher_that_never_reads_does_not_hold_the_gateway_back() {
    let g = Gw::start(L7_UP);
    // Connected and asked for the feed, then never read.
    let mut stalled = Watcher::open(&g);
    // More records than the feed holds for one watcher: a gateway that
    // waited for its watchers would stop here.
    let n = moat_supervisor::gateway::events::FEED_CAPACITY + 300;
    let t = Instant::now();
    let (s, status, _) = g.tunnel("up.test:443");
    assert_eq!(status, 200);
    // `request` writes a head in pieces: without this, Nagle and delayed
    // ACKs make each request wait 40 ms.
    s.set_nodelay(true).unwrap();
    let mut s = tls(s, "up.test", g.client_tls());
    for i in 0..n {
        assert_eq!(request(&mut s, "GET", "up.test", &format!("/r{i}"), b"").0, 200);
    }
    let took = t.elapsed();
    // Behaviour, not timing: every tunnel was answered (a blocked gateway
    // answers none); the time is printed for the record.
    eprintln!("{n} inspected requests with a stalled watcher: {took:?}");
    let mut late = Watcher::open(&g);
    late.until("approvals", |_| true);
    let mut hosts = 0;
    while hosts < n.min(moat_supervisor::gateway::events::RECENT) {
        let v = late.next();
        assert_eq!(v["kind"], "event", "{v}");
        hosts += 1;
    }
    assert_eq!(g.events().len(), n, "every record is in the audit log");
    // The stalled watcher, read at last, is told it missed some.
    let lag = stalled.until("lagged", |_| true);
    assert!(lag["missed"].as_u64().is_some_and(|m| m > 0), "{lag}");
}
