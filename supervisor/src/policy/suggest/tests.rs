//! Unit tests of `policy suggest`: grouping per binary and host, merging
//! into the endpoint that refused, what is not suggested, bounds, and that
//! the suggested policy allows exactly what was recorded.
use super::*;
use crate::policy::matcher::{Compiled, Match, RequestVerdict};
use crate::policy::schema::NetPolicy;

const LEARN: &str = r#"
[[network.policy]]
name = "learn"
binaries = ["/usr/bin/curl"]
[[network.policy.endpoint]]
host = "up.test"
protocol = "rest"
rules = [{ allow = { method = "GET", path = "/never" } }]
enforcement = "audit"
"#;

fn policy(rules: &str) -> Policy {
    Policy::parse(&format!("{}\n{rules}", crate::policy::BASELINE_TOML), "test").unwrap()
}

#[allow(clippy::too_many_arguments)]
fn rec(
    decision: &str,
    binary: &str,
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    rule: &str,
    reason: &str,
) -> Record {
    Record {
        time: "2025-03-01T10:00:00.5Z".into(),
        binary: binary.into(),
        hash: "ab".repeat(32),
        host: host.into(),
        port,
        method: method.into(),
        path: path.into(),
        decision: decision.into(),
        rule: rule.into(),
        reason: reason.into(),
        count: 1,
    }
}

fn unlisted(binary: &str, host: &str, port: u16, method: &str, path: &str) -> Record {
    let why = format!("no policy lists {host}:{port}; pending approval 0123abcd");
    rec("deny", binary, host, port, method, path, "", &why)
}

fn suggest(p: &Policy, records: &[Record]) -> Suggestion {
    let mut c = Collector::new(&p.network, None, Limits::default()).unwrap();
    for r in records {
        c.add(r);
    }
    c.finish("sb", p, &[]).unwrap()
}

/// Whether `s` lets `binary` (hash "abab..") send `method path` to host:port.
fn allows(s: &Suggestion, binary: &str, host: &str, port: u16, request: Option<(&str, &str)>) -> bool {
    let c = Compiled::new(s.policy.network.effective().unwrap()).unwrap();
    let hash = "ab".repeat(32);
    match c.match_destination_pinned(binary, Some(&hash), host, port) {
        Match::Allowed { policy, endpoint, audit: false } => match request {
            Some((m, p)) if endpoint.inspected() => c.check_request(&policy, &endpoint, m, p) == RequestVerdict::Allow,
            _ => true,
        },
        _ => false,
    }
}

#[test]
fn grouped_per_binary_and_host_with_requests_inspected_and_tunnels_l4() {
    let p = policy("");
    let records = [
        unlisted("/usr/bin/curl", "a.example", 80, "GET", "/v1/x"),
        unlisted("/usr/bin/curl", "a.example", 80, "GET", "/v1/y"),
        unlisted("/usr/bin/curl", "b.example", 443, "CONNECT", ""),
        unlisted("/usr/bin/git", "b.example", 443, "CONNECT", ""),
    ];
    let s = suggest(&p, &records);
    let new: Vec<&NetPolicy> = s.policy.network.policies.iter().filter(|p| p.name.starts_with("suggested-")).collect();
    assert_eq!(new.len(), 2, "one rule set per binary: {}", s.text);
    let curl = new.iter().find(|p| p.binaries == ["/usr/bin/curl"]).unwrap();
    assert_eq!(curl.sha256, ["ab".repeat(32)], "pinned to the build seen");
    assert_eq!(curl.endpoints.len(), 2, "one endpoint per host and port");
    let a = &curl.endpoints[0];
    assert_eq!((a.host.as_str(), a.port, a.protocol), ("a.example", 80, Some(crate::policy::schema::Protocol::Rest)));
    let paths: Vec<&str> = a.rules.iter().map(|r| r.allow.path.as_str()).collect();
    assert_eq!(paths, ["/v1/x", "/v1/y"]);
    assert!(curl.endpoints[1].protocol.is_none() && curl.endpoints[1].rules.is_empty(), "a tunnel: L4");
    for r in &records {
        let req = (r.method != "CONNECT").then_some((r.method.as_str(), r.path.as_str()));
        assert!(allows(&s, &r.binary, &r.host, r.port, req), "{r:?}\n{}", s.text);
    }
    assert!(!allows(&s, "/usr/bin/curl", "a.example", 80, Some(("GET", "/v1/z"))), "a neighbour");
    assert!(!allows(&s, "/usr/bin/curl", "a.example", 80, Some(("POST", "/v1/x"))), "another method");
    assert!(!allows(&s, "/usr/bin/wget", "a.example", 80, Some(("GET", "/v1/x"))), "another binary");
    assert!(!allows(&s, "/usr/bin/git", "a.example", 80, Some(("GET", "/v1/x"))), "not what git did");
    assert!(s.text.contains("# suggested: 1 request GET, at 2025-03-01T10:00:00.5Z"), "{}", s.text);
    assert!(s.text.contains("1 tunnel (CONNECT)"), "{}", s.text);
    assert!(s.not_suggested.is_empty(), "{:?}", s.not_suggested);
}

#[test]
fn requests_an_endpoint_refused_or_audited_are_added_to_it_and_audit_ends() {
    let p = policy(LEARN);
    let audited = |path: &str, method: &str| {
        rec("audit", "/usr/bin/curl", "up.test", 443, method, path, "learn", &format!("no rule allows {method} {path}"))
    };
    let mut records: Vec<Record> = ["/api/items/1", "/api/items/2", "/api/items/3"].map(|p| audited(p, "GET")).into();
    records.push(audited("/api/orders", "POST"));
    records.push(rec("allow", "/usr/bin/curl", "up.test", 443, "GET", "/never", "learn", ""));
    let s = suggest(&p, &records);
    let learn = s.policy.network.policies.iter().find(|p| p.name == "learn").unwrap();
    assert_eq!(s.policy.network.policies.len(), p.network.policies.len(), "no new rule set: {}", s.text);
    let e = &learn.endpoints[0];
    assert_eq!(e.enforcement, Enforcement::Enforce, "audit mode ends");
    let rules: Vec<(&str, &str)> = e.rules.iter().map(|r| (r.allow.method.as_str(), r.allow.path.as_str())).collect();
    assert_eq!(rules, [("GET", "/never"), ("GET", "/api/items/*"), ("POST", "/api/orders")]);
    for r in &records {
        assert!(allows(&s, &r.binary, &r.host, r.port, Some((&r.method, &r.path))), "{r:?}");
    }
    assert!(allows(&s, "/usr/bin/curl", "up.test", 443, Some(("GET", "/api/items/4"))), "the sibling rule");
    assert!(!allows(&s, "/usr/bin/curl", "up.test", 443, Some(("GET", "/api/items/1/x"))));
    assert!(!allows(&s, "/usr/bin/curl", "up.test", 443, Some(("DELETE", "/api/items/1"))));
    assert!(!allows(&s, "/usr/bin/curl", "up.test", 443, Some(("GET", "/api/orders"))));
    assert!(s.text.contains("3 requests GET (3 paths: /api/items/1, /api/items/2, /api/items/3)"), "{}", s.text);
    assert!(s.text.contains("was enforcement = \"audit\""), "{}", s.text);
}

#[test]
fn an_access_level_becomes_rules_before_requests_are_added() {
    let p = policy(
        &LEARN.replace("rules = [{ allow = { method = \"GET\", path = \"/never\" } }]", "access = \"read-only\""),
    );
    let r = rec(
        "audit",
        "/usr/bin/curl",
        "up.test",
        443,
        "POST",
        "/x",
        "learn",
        "method POST is not allowed by access = read-only",
    );
    let s = suggest(&p, std::slice::from_ref(&r));
    let e = &s.policy.network.policies.iter().find(|p| p.name == "learn").unwrap().endpoints[0];
    assert!(e.access.is_none() && e.rules.len() == 4, "{e:?}");
    assert!(allows(&s, "/usr/bin/curl", "up.test", 443, Some(("GET", "/any/thing"))), "read-only still holds");
    assert!(allows(&s, "/usr/bin/curl", "up.test", 443, Some(("POST", "/x"))));
    assert!(!allows(&s, "/usr/bin/curl", "up.test", 443, Some(("POST", "/y"))));
}

#[test]
fn interpreters_metadata_private_and_other_refusals_are_listed_with_why() {
    let p = policy("");
    let records = [
        unlisted("/usr/bin/python3.11", "a.example", 443, "CONNECT", ""),
        unlisted("/bin/sh", "a.example", 80, "GET", "/"),
        rec(
            "deny",
            "/usr/bin/curl",
            "169.254.169.254",
            80,
            "GET",
            "/latest",
            "",
            "cloud metadata endpoints are never reachable",
        ),
        unlisted("/usr/bin/curl", "10.1.2.3", 80, "GET", "/"),
        unlisted("/usr/bin/curl", "localhost", 8080, "GET", "/"),
        rec("deny", "", "a.example", 443, "CONNECT", "", "", "caller not identified: no socket"),
        rec(
            "deny",
            "/usr/bin/curl",
            "a.example",
            443,
            "CONNECT",
            "",
            "p",
            "a.example resolves to 10.0.0.1: private (10.0.0.0/8) and outside allowed_ips",
        ),
        rec("deny", "*", "*", 0, "*", "*", "*", "490 refusals to 12 destinations beyond the 50 recorded one by one"),
    ];
    let s = suggest(&p, &records);
    assert_eq!(s.policy.network.policies, p.network.policies, "nothing suggested: {}", s.text);
    let all = s.not_suggested.join("\n");
    for want in [
        "python3.11 is an interpreter or shell",
        "/bin/sh -> a.example:80 GET / (1 time, at 2025-03-01T10:00:00.5Z): sh is an interpreter or shell",
        "169.254.169.254:80 GET /latest (1 time, at 2025-03-01T10:00:00.5Z): a cloud metadata service",
        "10.1.2.3:80 GET / (1 time, at 2025-03-01T10:00:00.5Z): a private address",
        "localhost:8080 GET / (1 time, at 2025-03-01T10:00:00.5Z): a loopback address",
        "the caller was not identified",
        "opening it takes allowed_ips",
        "a rate-limit summary",
    ] {
        assert!(all.contains(want), "{want}\n{all}");
    }
    assert!(s.text.contains("\n# Not suggested, and why:\n"), "{}", s.text);
    assert!(s.text.contains("\n#   /bin/sh -> a.example:80 GET / (1 time"), "{}", s.text);
}

#[test]
fn already_allowed_records_folded_counts_and_since() {
    let p = policy(LEARN);
    let mut folded = unlisted("/usr/bin/curl", "a.example", 80, "GET", "/last");
    folded.count = 7;
    let mut old = unlisted("/usr/bin/curl", "old.example", 80, "GET", "/");
    old.time = "2025-02-01T00:00:00Z".into();
    let ok = rec("audit", "/usr/bin/curl", "up.test", 443, "GET", "/never", "learn", "binary not listed (audit mode)");
    let mut c =
        Collector::new(&p.network, Some(since("2025-02-15T00:00:00+01:00", 0).unwrap()), Limits::default()).unwrap();
    for r in [&folded, &old, &ok] {
        c.add(r);
    }
    assert_eq!(c.stats().before_since, 1);
    let s = c.finish("sb", &p, &["198.18.0.0/15".into()]).unwrap();
    let new = s.policy.network.policies.iter().find(|p| p.name == "suggested-curl").expect("curl's rule set");
    assert_eq!(new.endpoints.len(), 1, "old.example is before --since: {}", s.text);
    assert_eq!(new.endpoints[0].allowed_ips, ["198.18.0.0/15"], "the operator's opt-in");
    assert!(s.text.contains("# suggested: 7 requests GET"), "{}", s.text);
    assert!(s.text.contains("only the last path was recorded"), "{}", s.text);
    assert!(s.text.contains("1 record allowed now by learn"), "{}", s.text);
}

#[test]
fn since_reads_times_and_ages() {
    let t = instant("2025-03-01T10:00:00Z").unwrap();
    assert_eq!(instant("2025-03-01T11:00:00+01:00"), Some(t));
    assert_eq!(instant("2025-03-01T10:00:00.25Z"), Some(t + 250_000_000));
    assert_eq!(since("2h", t).unwrap(), t - 7200 * 1_000_000_000);
    assert_eq!(since("7d", t).unwrap(), t - 7 * 86400 * 1_000_000_000);
    for bad in ["yesterday", "2h30m", "-1h", "2025-13-01T00:00:00Z", "2025-03-01", ""] {
        assert!(since(bad, t).is_err(), "{bad}");
    }
}

#[test]
fn reading_is_bounded_per_line_and_in_records_and_groups() {
    let p = policy("");
    let limits = Limits { max_line: 400, max_records: 5, max_destinations: 2, max_paths: 2, max_skipped: 1 };
    let mut c = Collector::new(&p.network, None, limits).unwrap();
    let line = |host: &str, path: &str| {
        serde_json::to_string(&serde_json::json!({
            "time": "2025-03-01T10:00:00Z", "binary": "/usr/bin/curl", "hash": "", "pid": 1, "host": host,
            "port": 80, "method": "GET", "path": path, "decision": "deny", "rule": "",
            "reason": format!("no policy lists {host}:80"), "count": 1
        }))
        .unwrap()
    };
    let text = [
        line("a.example", &"/x".repeat(400)), // too long: skipped whole
        "not json".into(),
        line("a.example", "/1"),
        line("a.example", "/2"),
        line("a.example", "/3"), // over the paths cap
        line("b.example", "/"),
        line("c.example", "/"), // over the destination cap (and the record cap after it)
        line("d.example", "/"),
    ]
    .join("\n");
    c.read(std::io::Cursor::new(text)).unwrap();
    assert_eq!((c.stats().too_long, c.stats().unreadable, c.stats().records), (1, 1, 5));
    assert!(c.stats().truncated);
    let s = c.finish("sb", &p, &[]).unwrap();
    let curl = s.policy.network.policies.iter().find(|p| p.name == "suggested-curl").unwrap();
    assert_eq!(curl.endpoints.len(), 2, "{}", s.text);
    assert!(curl.sha256.is_empty(), "no hash recorded: not pinned");
    assert!(s.text.contains("1 request with paths beyond the 2 distinct ones kept"), "{}", s.text);
    assert!(s.not_suggested.iter().any(|l| l.contains("c.example") && l.contains("distinct destinations")));
    assert!(s.text.contains("the rest of the log not read"), "{}", s.text);
}

#[test]
fn recorded_text_cannot_break_out_of_a_comment() {
    let p = policy("");
    let r = unlisted("/usr/bin/py\n[[network.policy]]\nname = \"x\"", "a.example", 80, "GET", "/\n[x]");
    let s = suggest(&p, &[r]);
    assert_eq!(s.policy.network.policies, p.network.policies, "{}", s.text);
    assert!(!s.text.lines().any(|l| l.starts_with("name = \"x\"") || l.starts_with("[x]")), "{}", s.text);
    assert!(s.text.contains("#   /usr/bin/py\\n[[network.policy]]\\nname"), "{}", s.text);
    assert!(s.not_suggested[0].contains("control characters"), "{:?}", s.not_suggested);
}

#[test]
fn a_recorded_host_is_never_read_as_a_pattern() {
    let p = policy("");
    let hosts = ["*.example.com", "**.example.com", "+.example.com", "{registry}"];
    let records: Vec<Record> = hosts.iter().map(|h| unlisted("/usr/bin/curl", h, 443, "CONNECT", "")).collect();
    let s = suggest(&p, &records);
    assert_eq!(s.policy.network.policies, p.network.policies, "{}", s.text);
    assert_eq!(s.not_suggested.len(), hosts.len(), "{:?}", s.not_suggested);
    assert!(s.not_suggested.iter().all(|l| l.contains("not a host name or address")), "{:?}", s.not_suggested);
}
