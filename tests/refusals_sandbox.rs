//! Refusals people can read (issue 20, part 4), client by client, from
//! inside a real sandbox of the agent image: each client the image ships is
//! refused an unlisted host through `HTTPS_PROXY` (proxy mode, the default)
//! and with every proxy variable unset (transparent mode), and what it
//! prints to its user, without verbose flags, must name the approval id
//! `moat approvals` lists for its binary. Threat: an operator who cannot
//! tell a refusal from a broken network, and an agent that retries blindly;
//! and a readable refusal that is not one (it must reach no upstream, make
//! one approval, and be audited as a deny).
//!
//! Clients: curl, `git clone`, `pip install --index-url`, `npm view` and
//! `npm install --registry`, python's urllib (the image has no python3-requests;
//! pip's vendored copy is pip's own), Node's fetch. Through the proxy, curl
//! and git (libcurl) printed only `CONNECT tunnel failed, response 403`
//! until the gateway answered their refused tunnels inside TLS
//! (supervisor/src/gateway/refused_tunnel.rs); the others print the
//! CONNECT's reason phrase.
//!
//! Left out, with why (docs/egress.md, "What a refusal shows, per client"):
//! pip in transparent mode. pip logs an index page's HTTP error only at
//! debug level (`pip -v`), and at its default level prints only its own
//! "Could not find a version that satisfies the requirement"; the only
//! server text it shows is a failed proxy tunnel's status line (its retry
//! warnings), which a connection made without a proxy does not have. No
//! answer the gateway can give a direct TLS connection changes that.
//! Needs root, iproute2 and the Debian mirror (the agent image).
#[path = "../supervisor/tests/gateway_common/mod.rs"]
mod gateway_common;

mod gateway_world;

use gateway_world::*;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Every proxy variable gone, so only transparent egress can carry anything.
const NO_PROXY_VARS: &str =
    "unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy NO_PROXY no_proxy\n";

/// Each client against `unlisted.test`, its stdout and stderr under a
/// `== NAME` line. pip installs for the user (Debian's python is
/// externally managed: PEP 668 refuses before any request otherwise).
const CLIENTS: &str = r#"
cd /sandbox
echo "== curl"; curl -sS https://unlisted.test/c 2>&1
echo "== git"; git clone https://unlisted.test/r.git /tmp/r-$$ 2>&1
[ "$MODE" = proxy ] && { echo "== pip"; PIP_BREAK_SYSTEM_PACKAGES=1 pip install --index-url https://unlisted.test/simple x 2>&1; }
echo "== npm_view"; npm view x --registry https://unlisted.test/ 2>&1
echo "== npm_install"; npm install x --registry https://unlisted.test/ 2>&1
echo "== urllib"; python3 -c "import urllib.request as u; u.urlopen('https://unlisted.test/u')" 2>&1 | tail -n 1
echo "== node_fetch"; node -e 'fetch("https://unlisted.test/f").then(r => console.log(r.status + " " + r.statusText), e => console.log(String(e)))' 2>&1
echo "== end"
"#;

/// (client, its connecting binary) checked in each mode.
const PROXY: &[(&str, &str)] = &[
    ("curl", "/usr/bin/curl"),
    ("git", "/usr/lib/git-core/git-remote-http"),
    ("pip", "/usr/bin/python3.11"),
    ("npm_view", "/usr/bin/node"),
    ("npm_install", "/usr/bin/node"),
    ("urllib", "/usr/bin/python3.11"),
    ("node_fetch", "/usr/bin/node"),
];
const TRANSPARENT: &[(&str, &str)] = &[
    ("curl", "/usr/bin/curl"),
    ("git", "/usr/lib/git-core/git-remote-http"),
    ("npm_view", "/usr/bin/node"),
    ("npm_install", "/usr/bin/node"),
    ("urllib", "/usr/bin/python3.11"),
    ("node_fetch", "/usr/bin/node"),
];

/// The "upstream" `unlisted.test` names (ports 443 and 80 in a network
/// namespace of this test), counting every connection that reaches it.
struct Counted {
    hosts: PathBuf,
    seen: Arc<AtomicUsize>,
}

fn counted() -> &'static Counted {
    static C: OnceLock<(Counted, UpNet)> = OnceLock::new();
    &C.get_or_init(|| {
        let net = UpNet::create(5);
        let seen = Arc::new(AtomicUsize::new(0));
        for port in [443, 80] {
            let l: TcpListener = net.listen(port);
            let s = seen.clone();
            std::thread::spawn(move || {
                for c in l.incoming() {
                    s.fetch_add(1, Ordering::SeqCst);
                    drop(c);
                }
            });
        }
        let dir = world().home.path().join("refusals-hosts");
        std::fs::create_dir_all(&dir).unwrap();
        let ip = net.ip.to_string();
        let hosts = gateway_common::hosts_file(&dir, &[(&ip, "unlisted.test")]);
        (Counted { hosts, seen }, net)
    })
    .0
}

/// `moat ARGS` with the gateway resolving `unlisted.test` to the counter.
fn moat_here(args: &[&str]) -> String {
    let o = moat_command(args).env("MOAT_GATEWAY_HOSTS", &counted().hosts).output().expect("run moat");
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "moat {args:?}: {out}\n{err}");
    out.into_owned()
}

/// The `== NAME` sections of a run of [`CLIENTS`].
fn sections(out: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut cur: Option<String> = None;
    for line in out.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            cur = Some(name.to_string());
            m.insert(name.to_string(), String::new());
        } else if let Some(c) = &cur {
            let s = m.get_mut(c).unwrap();
            s.push_str(line);
            s.push('\n');
        }
    }
    m
}

/// Removes the sandbox however the test ends.
struct Removed(&'static str);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = moat_command(&["rm", "--force", self.0]).output();
    }
}

#[test]
fn every_client_shows_the_approval_id_of_its_refusal() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let name = "refusals";
    let p = policy("refusals-empty", "");
    let _ = moat_command(&["rm", "--force", name]).output();
    let _removed = Removed(name);
    moat_here(&["run", "-d", "--name", name, "--policy", p.to_str().unwrap(), "agent", "--", "sleep", "900"]);
    let run = |mode: &str, pre: &str| {
        let script = format!("MODE={mode}\n{pre}{CLIENTS}");
        sections(&moat_here(&["exec", name, "--", "sh", "-c", &script]))
    };
    let proxy = run("proxy", "");
    let transparent = run("transparent", NO_PROXY_VARS);
    // What each client printed (shown with --nocapture).
    for (mode, seen) in [("proxy", &proxy), ("transparent", &transparent)] {
        for (client, text) in seen.iter() {
            println!("--- {mode} {client}\n{text}");
        }
    }

    // One approval per binary for unlisted.test:443, whatever the mode and
    // however many times each client retried.
    let list: serde_json::Value = serde_json::from_str(&moat_here(&["approvals", name, "--json"])).unwrap();
    let pending = list.as_array().expect("approvals --json is a list");
    let mut ids = BTreeMap::new();
    for bin in PROXY.iter().map(|(_, b)| *b) {
        let mine: Vec<&serde_json::Value> =
            pending.iter().filter(|p| p["binary"] == bin && p["host"] == "unlisted.test").collect();
        assert_eq!(mine.len(), 1, "one approval for {bin}: {list:#}");
        assert_eq!(mine[0]["port"], 443, "{list:#}");
        ids.insert(bin, mine[0]["id"].as_str().expect("an id").to_string());
    }

    let mut unreadable = Vec::new();
    for (mode, seen, clients) in [("proxy", &proxy, PROXY), ("transparent", &transparent, TRANSPARENT)] {
        assert!(seen.contains_key("end"), "the {mode} script ran to its end: {seen:#?}");
        for (client, bin) in clients {
            let text = seen.get(*client).map(String::as_str).unwrap_or("(no output)");
            if !text.contains(&ids[bin]) {
                unreadable.push(format!("{mode} {client} (approval {} for {bin}) printed:\n{text}", ids[bin]));
            }
        }
    }
    assert!(unreadable.is_empty(), "refusals without their approval id:\n{}", unreadable.join("\n"));

    // Still refusals: nothing reached the upstream, and the audit says deny.
    assert_eq!(counted().seen.load(Ordering::SeqCst), 0, "a refused connection reached unlisted.test");
    let events = moat_here(&["events", name, "--json"]);
    let ev: Vec<serde_json::Value> = events.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let about: Vec<&serde_json::Value> = ev.iter().filter(|e| e["host"] == "unlisted.test").collect();
    assert!(about.iter().all(|e| e["decision"] == "deny"), "{events}");
    for bin in ids.keys() {
        assert!(about.iter().any(|e| e["binary"] == *bin), "{bin}'s refusal is audited: {events}");
    }
    // The counter counts: once approved, curl's connection reaches it.
    moat_here(&["approve", name, &ids["/usr/bin/curl"], "--allowed-ip", "198.18.0.0/15"]);
    moat_here(&["exec", name, "--", "sh", "-c", "curl -s https://unlisted.test/after; true"]);
    assert!(counted().seen.load(Ordering::SeqCst) > 0, "an approved connection reaches the counting upstream");
}
