//! The inference gateway in process: `inference.local` requests (plain
//! HTTP through the proxy, and HTTPS through a tunnel the gateway
//! terminates) reach a recording OpenAI/Anthropic-shaped upstream with the
//! host-held key injected and the sandbox's own key stripped; streamed
//! answers arrive as produced; usage is counted; budgets answer 429; the
//! route switches live; a key the provider echoes in an error is erased.
mod gateway_common;

use gateway_common::engine::{self, read_head, Gw};
use moat_supervisor::gateway::control::Request;
use moat_supervisor::gateway::inference::{usage::Budget, Kind, Route};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const KEY: &str = "sk-proj-TESTKEY0123456789abcdefTESTKEY";

fn gateway(credential_value: &str) -> Gw {
    let g = Gw::start("");
    moat_supervisor::secrets::credentials::Store::at(g.dir.path().join("credentials"))
        .set("prov", credential_value.as_bytes())
        .unwrap();
    g
}

fn route(kind: Kind, endpoint: &str) -> Route {
    Route {
        name: format!("{kind:?}").to_lowercase(),
        provider: kind,
        endpoint: endpoint.into(),
        model: None,
        credential: Some("prov".into()),
        budget: Budget::default(),
    }
}

fn set(g: &Gw, r: Route) {
    g.control(&Request::InferenceSet { route: Box::new(r) }).unwrap();
}

/// POSTs `body` to http://inference.local`path` through the proxy; returns (status, head, body).
fn post(g: &Gw, path: &str, extra: &str, body: &str) -> (u16, String, String) {
    let req = format!(
        "POST http://inference.local{path} HTTP/1.1\r\nHost: inference.local\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let resp = g.raw(req.as_bytes());
    let (head, rest) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.to_string() };
    (status, head.to_string(), body)
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { return s.to_string() };
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

fn seen_with(marker: &str) -> gateway_common::Seen {
    engine::ups()
        .https
        .seen()
        .into_iter()
        .rev()
        .find(|s| s.body.contains(marker))
        .expect("the upstream saw the request")
}

#[test]
fn the_host_key_is_injected_and_the_sandbox_key_stripped() {
    let g = gateway(KEY);
    set(&g, route(Kind::Openai, "https://up.test"));
    let body = r#"{"model":"m","messages":[],"marker":"inject-1"}"#;
    let (status, head, resp) = post(
        &g,
        "/v1/chat/completions",
        "Authorization: Bearer sk-sandbox-own-key-1234567890\r\nx-api-key: also-mine\r\n",
        body,
    );
    assert_eq!(status, 200, "{head}\n{resp}");
    assert!(resp.contains("chat.completion"), "{resp}");
    let seen = seen_with("inject-1");
    let auth: Vec<&str> = seen.headers.iter().filter(|(k, _)| k == "authorization").map(|(_, v)| v.as_str()).collect();
    assert_eq!(auth, vec![format!("Bearer {KEY}").as_str()], "exactly the host's key reaches the provider");
    assert!(!seen.headers.iter().any(|(k, _)| k == "x-api-key"), "the sandbox's x-api-key is stripped");
    assert!(!head.contains(KEY) && !resp.contains(KEY), "the key never comes back");
    let usage = g.control(&Request::InferenceShow).unwrap();
    assert_eq!(usage["usage"]["providers"]["openai"]["input_tokens"], 11);
    assert_eq!(usage["usage"]["providers"]["openai"]["output_tokens"], 7);
}

#[test]
fn anthropic_gets_its_header_style_and_streams_arrive_as_produced() {
    let g = gateway(KEY);
    set(&g, route(Kind::Anthropic, "https://up.test"));
    // Over HTTPS to inference.local: the gateway terminates TLS for the name.
    let (s, status, _) = g.tunnel("inference.local:443");
    assert_eq!(status, 200);
    let mut t = engine::tls(s, "inference.local", g.client_tls());
    let body = r#"{"model":"claude","stream":true,"messages":[],"marker":"stream-1"}"#;
    write!(t, "POST /v1/messages HTTP/1.1\r\nHost: inference.local\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let start = Instant::now();
    let (code, head) = read_head(&mut t);
    assert_eq!(code, 200, "{head}");
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(&got).contains("message_start") {
        let n = t.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let first = start.elapsed();
    assert!(!String::from_utf8_lossy(&got).contains("message_delta"), "events were buffered");
    assert!(first < Duration::from_millis(500), "first event after {first:?}; the upstream takes 600 ms in all");
    while !String::from_utf8_lossy(&got).contains("\r\n0\r\n\r\n") {
        let n = t.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let seen = seen_with("stream-1");
    let h = |n: &str| seen.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    assert_eq!(h("x-api-key").as_deref(), Some(KEY));
    assert_eq!(h("anthropic-version").as_deref(), Some("2023-06-01"));
    assert!(h("authorization").is_none());
    let usage = g.control(&Request::InferenceShow).unwrap();
    assert_eq!(usage["usage"]["providers"]["anthropic"]["input_tokens"], 20);
    assert_eq!(usage["usage"]["providers"]["anthropic"]["output_tokens"], 9);
}

#[test]
fn the_route_switches_live_and_rewrites_the_model() {
    let g = gateway(KEY);
    set(&g, route(Kind::Openai, "https://up.test"));
    assert_eq!(post(&g, "/v1/chat/completions", "", r#"{"model":"a","marker":"switch-1"}"#).0, 200);
    let mut local = route(Kind::Local, "http://other.test:80");
    local.credential = None;
    local.model = Some("llama3".into());
    set(&g, local);
    let (status, _, resp) = post(&g, "/v1/chat/completions", "", r#"{"model":"a","marker":"switch-2"}"#);
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains("\"model\":\"llama3\""), "the model was rewritten: {resp}");
    let plain = engine::ups().http.seen();
    let s = plain.iter().rev().find(|s| s.body.contains("switch-2")).expect("the new route's upstream saw it");
    assert!(!s.headers.iter().any(|(k, _)| k == "authorization"), "no credential for a keyless local route");
}

#[test]
fn budgets_answer_429_before_the_provider_is_reached() {
    let g = gateway(KEY);
    let mut r = route(Kind::Openai, "https://up.test");
    r.budget.max_requests_per_minute = Some(2);
    set(&g, r.clone());
    for i in 0..2 {
        assert_eq!(post(&g, "/v1/chat/completions", "", &format!(r#"{{"marker":"rate-{i}"}}"#)).0, 200);
    }
    let (status, _, body) = post(&g, "/v1/chat/completions", "", r#"{"marker":"rate-refused"}"#);
    assert_eq!(status, 429);
    assert!(body.contains("moat_budget_exceeded") && body.contains("per minute"), "{body}");
    assert!(!engine::ups().https.seen().iter().any(|s| s.body.contains("rate-refused")));

    r.budget = Budget { max_tokens_per_day: Some(30), max_requests_per_minute: None };
    set(&g, r);
    // 36 tokens are used already (2 x 18): the day's budget of 30 is spent.
    let (status, _, body) = post(&g, "/v1/chat/completions", "", r#"{"marker":"tokens-refused"}"#);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("daily token budget"), "{body}");
}

#[test]
fn a_key_echoed_in_an_error_body_is_erased() {
    let g = gateway("sk-live-1234567890-bad-key");
    set(&g, route(Kind::Openai, "https://up.test"));
    let (status, _, body) = post(&g, "/v1/chat/completions", "", r#"{"marker":"echo"}"#);
    assert_eq!(status, 401);
    assert!(body.contains("[redacted]") && !body.contains("1234567890"), "{body}");
}

#[test]
fn a_key_echoed_in_two_pieces_is_erased() {
    let g = gateway("sk-live-1234567890-split-key");
    set(&g, route(Kind::Openai, "https://up.test"));
    let (status, _, body) = post(&g, "/v1/chat/completions", "", r#"{"marker":"echo-split"}"#);
    assert_eq!(status, 401);
    assert!(body.contains("[redacted]"), "{body}");
    assert!(!body.contains("12345") && !body.contains("67890"), "no piece of the key reaches the sandbox: {body}");
}

#[test]
fn no_route_and_missing_credentials_are_clear_errors() {
    let g = gateway(KEY);
    let (status, _, body) = post(&g, "/v1/models", "", "");
    assert_eq!(status, 503);
    assert!(body.contains("moat inference set"), "{body}");
    let mut r = route(Kind::Openai, "https://up.test");
    r.credential = Some("absent".into());
    assert!(g.control(&Request::InferenceSet { route: Box::new(r) }).is_err());
}

/// A provider on the host's loopback that closes every keep-alive
/// connection 100 ms after answering (an idle timeout) and counts the
/// connections it accepted.
fn closing_provider() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // One request: its head, then Content-Length bytes of body.
                let body_end = loop {
                    let Ok(n) = conn.read(&mut chunk) else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                            .unwrap_or(0usize);
                        break end + 4 + len;
                    }
                };
                while buf.len() < body_end {
                    let Ok(n) = conn.read(&mut chunk) else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = r#"{"object":"chat.completion","usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes());
                std::thread::sleep(Duration::from_millis(100));
                // Dropped: the idle connection is closed under the pool.
            });
        }
    });
    (port, accepted)
}

#[test]
fn a_connection_the_provider_closed_while_idle_is_not_reused() {
    let g = gateway(KEY);
    let (port, accepted) = closing_provider();
    set(&g, route(Kind::Local, &format!("http://127.0.0.1:{port}")));
    for i in 0..3 {
        let (status, head, body) = post(&g, "/v1/chat/completions", "", r#"{"model":"m","messages":[]}"#);
        assert_eq!(status, 200, "request {i}: {head}\n{body}");
        assert!(body.contains("chat.completion"), "request {i}: {body}");
        std::thread::sleep(Duration::from_millis(400));
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3, "each request needed a new connection");
}

#[test]
fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let g = gateway(KEY);
    set(&g, route(Kind::Openai, "https://up.test"));
    let body = r#"{"model":"m","messages":[],"marker":"expect-1"}"#;
    let mut s = g.connect();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST http://inference.local/v1/chat/completions HTTP/1.1\r\nHost: inference.local\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    let asked = Instant::now();
    let (status, head) = read_head(&mut s);
    assert_eq!(status, 100, "the gateway must tell the client to send its body: {head:?}");
    assert!(asked.elapsed() < Duration::from_secs(2), "100 Continue took {:?}", asked.elapsed());
    s.write_all(body.as_bytes()).unwrap();
    let (status, head) = read_head(&mut s);
    assert_eq!(status, 200, "{head}");
    let seen = seen_with("expect-1");
    assert!(!seen.headers.iter().any(|(k, _)| k == "expect"), "the expectation is the gateway's, not the provider's");
}
