//! Agents ask, with a reason (issue 21 part 3): from inside a real sandbox
//! of the agent image, `http://moat.local/v1/requests` turns a JSON request
//! into a pending approval that carries the agent's reason, shown to the
//! operator escaped and marked as the agent's own words; the agent polls
//! `GET /v1/requests/ID` and its retry succeeds once approved. Guards
//! tested: a flood is rate-limited (429) and the pending list stays bounded,
//! malformed and oversized bodies are refused (400/413). Needs root,
//! iproute2 and the Debian mirror (the agent image).
#[path = "../supervisor/tests/gateway_common/mod.rs"]
mod gateway_common;

mod gateway_world;

use gateway_world::*;

/// `curl` inside the sandbox, printing `CODE BODY` on one line.
fn ask(name: &str, args: &[&str]) -> (String, String) {
    let mut argv = vec!["exec", name, "--", "curl", "-s", "-w", "\n%{http_code}"];
    argv.extend_from_slice(args);
    let out = ok(&argv);
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
    (code.trim().to_string(), body.trim_end().to_string())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

const URL: &str = "http://moat.local/v1/requests";

/// Removes the sandbox when the test ends, passed or failed, so a failed
/// run leaves nothing that makes the next one fail differently.
struct Gone(&'static str);

impl Drop for Gone {
    fn drop(&mut self) {
        let _ = moat(&["rm", "--force", self.0]);
    }
}

/// Starts a detached sandbox `name` under the baseline plus `rules`.
fn start(name: &'static str, rules: &str) -> Gone {
    let _ = moat(&["rm", "--force", name]);
    let p = policy(&format!("asks-{name}"), rules);
    ok(&["run", "-d", "--name", name, "--policy", p.to_str().unwrap(), "agent", "--", "sleep", "600"]);
    Gone(name)
}

#[test]
fn an_agent_asks_the_operator_approves_and_the_retry_succeeds() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _gone = start("asks", "");
    // Refused first, as any unlisted destination.
    let (code, _) = ask("asks", &["http://other.test/asked"]);
    assert_eq!(code, "403");
    // The reason carries a terminal escape: the operator must see it escaped.
    let body = r#"{"host":"other.test","port":80,"method":"GET","path":"/asked","reason":"fetch the report\u001b[2J for the user"}"#;
    let (code, answer) = ask("asks", &["-H", "Content-Type: application/json", "--data-binary", body, URL]);
    assert_eq!(code, "202", "{answer}");
    let a = json(&answer);
    assert_eq!(a["status"], "pending", "{answer}");
    let id = a["id"].as_str().expect("id").to_string();

    let list = ok(&["approvals", "asks"]);
    assert!(list.contains(&id) && list.contains("other.test:80"), "{list}");
    assert!(list.contains("the agent's own words"), "the reason is marked as the agent's: {list}");
    assert!(list.contains(r"fetch the report\u{1b}[2J for the user"), "{list}");
    assert!(list.contains("GET /asked"), "{list}");
    assert!(!list.contains('\x1b'), "an escape reached the operator's terminal: {list:?}");
    let j = ok(&["approvals", "asks", "--json"]);
    assert!(!j.contains('\x1b') && j.contains("fetch the report"), "{j}");

    // Polled through the proxy, and directly (/etc/hosts maps moat.local to the gateway).
    let (code, poll) = ask("asks", &[&format!("{URL}/{id}")]);
    assert_eq!((code.as_str(), json(&poll)["status"].as_str()), ("200", Some("pending")), "{poll}");
    let direct = format!("http://moat.local:3128/v1/requests/{id}");
    let (code, poll) = ask("asks", &["--noproxy", "*", &direct]);
    assert_eq!((code.as_str(), json(&poll)["status"].as_str()), ("200", Some("pending")), "{poll}");

    ok(&["approve", "asks", &id, "--allowed-ip", "198.18.0.0/15"]);
    let (code, poll) = ask("asks", &[&format!("{URL}/{id}")]);
    assert_eq!((code.as_str(), json(&poll)["status"].as_str()), ("200", Some("approved")), "{poll}");
    let (code, got) = ask("asks", &["http://other.test/asked"]);
    assert_eq!((code.as_str(), got.as_str()), ("200", "echo GET /asked 0"), "the agent's retry succeeds");
    // Asking for what is now allowed answers so at once.
    let again = r#"{"host":"other.test","port":80,"reason":"again"}"#;
    let (code, answer) = ask("asks", &["--data-binary", again, URL]);
    assert_eq!((code.as_str(), json(&answer)["status"].as_str()), ("200", Some("allowed")), "{answer}");

    // A denial is polled as such; an unknown id is 404.
    let other = r#"{"host":"up.test","port":443,"reason":"clone the repo"}"#;
    let (code, answer) = ask("asks", &["--data-binary", other, URL]);
    assert_eq!(code, "202", "{answer}");
    let id2 = json(&answer)["id"].as_str().expect("id").to_string();
    ok(&["deny", "asks", &id2]);
    let (code, poll) = ask("asks", &[&format!("{URL}/{id2}")]);
    assert_eq!((code.as_str(), json(&poll)["status"].as_str()), ("200", Some("denied")), "{poll}");
    let (code, _) = ask("asks", &[&format!("{URL}/00000000")]);
    assert_eq!(code, "404");
}

#[test]
fn malformed_and_oversized_requests_are_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _gone = start("badasks", "");
    let long = "x".repeat(1200);
    let cases: Vec<(&str, String)> = vec![
        ("400", "not json".into()),
        ("400", r#"{"host":"other.test","port":80}"#.into()),
        ("400", r#"{"host":"other.test","port":80,"reason":""}"#.into()),
        ("400", r#"{"host":"other.test","port":0,"reason":"r"}"#.into()),
        ("400", r#"{"host":"other.test","port":80,"reason":"r","binary":"/usr/bin/git"}"#.into()),
        ("400", r#"{"host":"a b\u0007.test","port":80,"reason":"r"}"#.into()),
        ("400", r#"{"host":"169.254.169.254","port":80,"reason":"r"}"#.into()),
        ("400", r#"{"host":"other.test","port":80,"path":"no-slash","reason":"r"}"#.into()),
        ("400", format!(r#"{{"host":"other.test","port":80,"reason":"{long}"}}"#)),
        ("413", format!(r#"{{"host":"other.test","port":80,"reason":"r","pad":"{}"}}"#, "y".repeat(8192))),
    ];
    for (want, body) in &cases {
        let (code, answer) = ask("badasks", &["--data-binary", body, URL]);
        assert_eq!(&code, want, "{body:.80}: {answer}");
    }
    // A chunked body past the bound is 413 too.
    let script = format!(
        "head -c 9000 /dev/zero | tr '\\0' a | curl -s -o /dev/null -w '%{{http_code}}' -H 'Transfer-Encoding: chunked' --data-binary @- {URL}"
    );
    assert_eq!(ok(&["exec", "badasks", "--", "sh", "-c", &script]), "413");
    let list = ok(&["approvals", "badasks", "--json"]);
    assert_eq!(json(&list).as_array().map(Vec::len), Some(0), "nothing refused became pending: {list}");
}

const FLOOD: &str = r#"
import socket, collections
codes = collections.Counter()
for i in range(1000):
    body = ('{"host":"h%d.flood.test","port":443,"reason":"please %d"}' % (i, i)).encode()
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(b"POST http://moat.local/v1/requests HTTP/1.1\r\nHost: moat.local\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    codes[data.split(b" ")[1].decode() if data else "closed"] += 1
for k, v in sorted(codes.items()):
    print("code_%s=%d" % (k, v))
"#;

#[test]
fn a_flood_of_requests_stays_bounded() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _gone = start("flood", "");
    let out = ok(&["exec", "flood", "--", "python3", "-c", FLOOD]);
    let r = kv(&out);
    let n = |k: &str| r.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    assert_eq!(n("code_202") + n("code_429"), 1000, "every request answered 202 or 429: {out}");
    assert!(n("code_429") >= 900, "most of a flood is refused: {out}");
    assert!(n("code_202") >= 1, "the first requests are taken: {out}");
    let list = ok(&["approvals", "flood", "--json"]);
    let pending = json(&list).as_array().map(Vec::len).unwrap_or(usize::MAX);
    assert!(pending <= 64 && pending as u64 == n("code_202").min(64), "{pending} pending: {out}");
    let text = ok(&["approvals", "flood"]);
    let limited = format!("{} agent requests were refused by the rate limit", n("code_429"));
    assert!(text.contains(&limited), "the operator sees the count: {text}");
}
