//! `moat policy suggest` on a real sandbox's audit log: traffic refused or
//! relayed by an endpoint in audit mode becomes a policy file that `moat
//! policy check` accepts; once set, the same traffic passes and a
//! neighbouring path, another method and what was not suggested
//! (interpreters, shells, metadata, private addresses, each with its
//! reason) stay refused. Needs root, iproute2 and the Debian mirror (the
//! agent image is built once into a store under target/).
#[path = "../supervisor/tests/gateway_common/mod.rs"]
mod gateway_common;

mod gateway_world;

use gateway_world::*;

/// Curl may reach up.test only through an inspected endpoint in audit
/// mode whose one rule the traffic below never uses: everything it sends
/// there is relayed and recorded as `audit`.
const LEARN: &str = r#"
[[network.policy]]
name = "learn"
binaries = ["/usr/bin/curl"]
[[network.policy.endpoint]]
host = "up.test"
port = 443
protocol = "rest"
rules = [{ allow = { method = "GET", path = "/never" } }]
enforcement = "audit"
allowed_ips = ["198.18.0.0/15"]
"#;

/// `c KEY ARGS...` prints KEY=<HTTP status> (000: no response).
const C: &str = "c() { k=$1; shift; printf '%s=' \"$k\"; curl -s -o /dev/null -w '%{http_code}' \"$@\"; echo; }\n";

/// What the agent did: four requests to up.test (three siblings and a
/// POST), a plain request to other.test and a TLS tunnel to it.
const TRAFFIC: &str = r#"
c items1 https://up.test/api/items/1
c items2 https://up.test/api/items/2
c items3 https://up.test/api/items/3
c orders -X POST -d x https://up.test/api/orders
c status http://other.test/status
c tls -k https://other.test/tls
"#;

/// What must not be suggested: an interpreter, a shell, the metadata
/// service, a private address.
const NOT_SUGGESTED: &str = r#"
python3 -c "import urllib.request as u; u.urlopen('http://other.test/py')" 2>/dev/null; echo "py=$?"
bash -c 'exec 3<>/dev/tcp/127.0.0.1/3128; printf "GET http://other.test/sh HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n" >&3; read -r l <&3; echo "sh=${l%?}"' 
c meta http://169.254.169.254/latest/meta-data/
c private http://10.1.2.3/
"#;

/// Neighbours of what was seen.
const NEIGHBOURS: &str = r#"
c deeper https://up.test/api/items/1/x
c users https://up.test/api/users
c delete -X DELETE https://up.test/api/items/1
c get_orders https://up.test/api/orders
c post_status -X POST -d x http://other.test/status
c other_path http://other.test/other
"#;

/// Removes the sandbox however the test ends (a failed assertion must not
/// leave it running into the next run).
struct Removed(&'static str);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = moat(&["rm", "--force", self.0]);
    }
}

fn run(name: &str, script: &str) -> std::collections::BTreeMap<String, String> {
    kv(&ok(&["exec", name, "--", "sh", "-c", &format!("{C}{script}")]))
}

#[test]
fn suggested_policy_allows_what_was_recorded_and_no_more() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let name = "suggest";
    let _removed = Removed(name);
    let p = policy("learn", LEARN);
    ok(&["run", "-d", "--name", name, "--policy", p.to_str().unwrap(), "agent", "--", "sleep", "600"]);

    let first = run(name, &format!("{TRAFFIC}{NOT_SUGGESTED}"));
    let want = |r: &std::collections::BTreeMap<String, String>, k: &str, v: &str| {
        assert_eq!(r.get(k).map(String::as_str), Some(v), "{k}: {r:?}")
    };
    for k in ["items1", "items2", "items3", "orders"] {
        want(&first, k, "200"); // audit mode relays
    }
    want(&first, "status", "403");
    // curl (libcurl) gets its refused tunnel's 403 inside TLS (docs/egress.md).
    want(&first, "tls", "403");
    assert_ne!(first.get("py").map(String::as_str), Some("0"), "{first:?}");
    assert!(first["sh"].starts_with("HTTP/1.1 403 "), "bash is refused: {first:?}");
    want(&first, "meta", "403");
    want(&first, "private", "403");

    let file = world().home.path().join("suggested.toml");
    let o = moat(&["policy", "suggest", name, "--allowed-ip", "198.18.0.0/15", "--write", file.to_str().unwrap()]);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{out}\n{err}");
    let text = std::fs::read_to_string(&file).unwrap();
    // Each refusal that is not suggested is named with its reason, on
    // stderr and in the file's commented-out list.
    for (what, why) in [
        ("/usr/bin/python3", "is an interpreter or shell"),
        ("/usr/bin/bash -> other.test:80 GET /sh", "bash is an interpreter or shell"),
        ("169.254.169.254:80", "a cloud metadata service"),
        ("10.1.2.3:80", "a private address"),
    ] {
        let line = err.lines().find(|l| l.contains(what)).unwrap_or_else(|| panic!("{what} on stderr:\n{err}"));
        assert!(line.starts_with("moat: not suggested: ") && line.contains(why), "{line}");
        assert!(text.lines().any(|l| l.starts_with("#   ") && l.contains(what) && l.contains(why)), "{what}\n{text}");
    }
    assert!(
        text.contains("# suggested: 3 requests GET (3 paths: /api/items/1, /api/items/2, /api/items/3), first "),
        "{text}"
    );
    assert!(text.contains("# suggested: 1 tunnel (CONNECT), at "), "{text}");
    assert!(!text.contains("/usr/bin/python3\"") && !text.contains("10.1.2.3\""), "{text}");
    let check = ok(&["policy", "check", file.to_str().unwrap()]);
    assert!(check.contains("valid"), "{check}");
    ok(&["policy", "set", name, file.to_str().unwrap()]);

    // The same traffic again: nothing refused.
    let (earlier, earlier_plain) = (world().up.seen().len(), world().plain.seen().len());
    let again = run(name, &format!("{TRAFFIC}{NOT_SUGGESTED}{NEIGHBOURS}"));
    for k in ["items1", "items2", "items3", "orders", "status", "tls"] {
        want(&again, k, "200");
    }
    // What was not suggested, and the neighbours, stay refused.
    assert_ne!(again.get("py").map(String::as_str), Some("0"), "{again:?}");
    assert!(again["sh"].starts_with("HTTP/1.1 403 "), "bash is still refused: {again:?}");
    for k in ["meta", "private", "deeper", "users", "delete", "get_orders", "post_status", "other_path"] {
        want(&again, k, "403");
    }
    let mut seen = world().up.seen().split_off(earlier);
    seen.extend(world().plain.seen().split_off(earlier_plain));
    let reached: Vec<String> = seen.iter().map(|s| format!("{} {}", s.method, s.path)).collect();
    assert!(
        reached.iter().all(|r| ["GET /api/items/", "POST /api/orders", "GET /status", "GET /tls"]
            .iter()
            .any(|ok| r.starts_with(ok))
            && !r.ends_with("/x")),
        "only what was suggested reached an upstream: {reached:?}"
    );
}
