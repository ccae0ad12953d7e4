//! One request to `inference.local`: strip whatever credential the sandbox
//! sent, inject the host-held one in the provider's header style, rewrite
//! the model if configured, enforce the budget, and stream the response back
//! chunk by chunk while counting tokens. Guards against the key reaching the
//! sandbox (it is added after the request leaves the sandbox's hands, and
//! erased from every response's headers and body, whatever the status),
//! against the key being used for anything but model calls (`shapes`),
//! against a sandbox-supplied key being used (always stripped), and against
//! unbounded bodies.
#![forbid(unsafe_code)]
use super::request_body;
use super::usage::Tap;
use super::{Endpoint, Inference, Kind, Route};
use crate::gateway::events::{Decision, Event};
use crate::gateway::http1::BodyDecoder;
use crate::gateway::http1::{self, Framing, RequestHead};
use crate::gateway::identity::Proc;
use crate::gateway::Shared;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;

/// Largest response body relayed; past it the response is cut.
pub(crate) const MAX_RESPONSE_BODY: u64 = 256 << 20;
/// Time the provider may take to start answering: the gateway's limit for
/// any upstream.
pub(crate) const FIRST_BYTE_TIMEOUT: Duration = crate::gateway::upstream::RESPONSE_TIMEOUT;

/// Any upstream stream (plain or TLS).
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Upstream = BufReader<Box<dyn Io>>;

/// Idle upstream connections, per endpoint (a warm connection saves a
/// TLS handshake per completion).
#[derive(Default)]
pub struct Pool(std::sync::Mutex<Vec<Pooled>>);

struct Pooled {
    endpoint: String,
    up: Upstream,
    idle_since: Instant,
}

/// How long an idle connection is kept. Providers close idle keep-alive
/// connections after tens of seconds (some servers after 5); a connection
/// the provider already closed is also caught before reuse ([`closed`]).
const POOL_IDLE: Duration = Duration::from_secs(30);

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pool")
    }
}

const POOL_MAX: usize = 16;

fn error_body(status: u16, kind: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({"error": {"type": kind, "message": message}}).to_string();
    http1::typed_response(status, http1::reason(status), "application/json", &body, true)
}

/// Headers never forwarded to a provider.
fn dropped(name: &str) -> bool {
    const DROP: &[&str] = &[
        "authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "cookie",
        "host",
        "content-length",
        "transfer-encoding",
        "expect",
        "accept-encoding",
    ];
    let n = name.to_ascii_lowercase();
    DROP.contains(&n.as_str()) || n.starts_with("proxy-")
}

/// Handles one request; returns whether the client connection stays open.
pub(crate) async fn handle<C: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    client: &mut BufReader<C>,
    mut head: RequestHead,
    path: &str,
    caller: Option<&Proc>,
) -> bool {
    let inf: &Inference = &shared.inference;
    let started = Instant::now();
    let method = head.method.clone();
    let fail = |status: u16, kind: &str, msg: &str| {
        shared.events.record(&Event::new(
            caller,
            super::INFERENCE_HOST,
            0,
            &method,
            path,
            Decision::Deny,
            "inference",
            msg,
        ));
        error_body(status, kind, msg)
    };
    let Some((route, ep)) = inf.route() else {
        let b = fail(503, "moat_no_route", "no inference route is configured: an operator runs `moat inference set`");
        return refuse(client, &b).await;
    };
    if let Err(r) = super::shapes::check(route.provider, &method, path) {
        let kind = if r.status == 400 { "moat_bad_path" } else { "moat_not_inference" };
        return refuse(client, &fail(r.status, kind, &r.message)).await;
    }
    if head.version == 1 && head.header("expect").is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue")) {
        // The client holds the body back until told to go on (curl waits a
        // second otherwise); the expectation itself never reaches the provider.
        if client.get_mut().write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
            return false;
        }
    }
    let framing = match http1::request_framing(&head) {
        Ok(f) => f,
        Err(e) => {
            let b = fail(400, "moat_bad_request", &moat_builder::errors::chain(&e));
            return refuse(client, &b).await;
        }
    };
    if let Err(r) = request_body::check_declared(framing) {
        return refuse(client, &fail(r.status, r.kind, &r.message)).await;
    }
    let admitted = inf.meter.lock().unwrap_or_else(|p| p.into_inner()).admit(&route.budget, Instant::now());
    if let Err(over) = admitted {
        let b = fail(429, "moat_budget_exceeded", &over.0);
        return refuse(client, &b).await;
    }
    let key = match &route.credential {
        Some(c) => match inf.credential(c) {
            Ok(k) => Some(k),
            Err(e) => {
                let b = fail(503, "moat_no_credential", &moat_builder::errors::chain(&e));
                return refuse(client, &b).await;
            }
        },
        None => None,
    };
    let deadline_secs = shared.limits.body_timeout.as_secs();
    let deadline = tokio::time::Instant::now() + shared.limits.body_timeout;
    // Only a body whose model is rewritten is read whole (under the
    // sandbox's budget); every other body streams to the provider.
    let held = match route.model.as_deref() {
        Some(model) => {
            let budget = inf.held.get_or_init(|| Semaphore::new(shared.limits.body_buffer));
            match request_body::hold(framing, client, budget, deadline, deadline_secs).await {
                Ok(mut h) => {
                    h.body = rewrite_model(std::mem::take(&mut h.body), Some(model));
                    Some(h)
                }
                Err(r) => return refuse(client, &fail(r.status, r.kind, &r.message)).await,
            }
        }
        None => None,
    };
    let client_close = http1::wants_close_request(&head);
    head.headers.retain(|(n, _)| !dropped(n));
    http1::strip_hop_by_hop(&mut head.headers);
    head.headers.push(("Host".into(), host_header(&ep).into_bytes()));
    head.headers.push(match &held {
        Some(h) => ("Content-Length".into(), h.body.len().to_string().into_bytes()),
        None => request_body::streamed_framing_header(framing),
    });
    inject_credential(&mut head, route.provider, key.as_deref());
    let target = format!("{}{}", ep.base, path);

    let request = http1::write_request_head(&head, &target);
    let streamed = held.is_none();
    let body: &[u8] = held.as_ref().map(|h| &h.body[..]).unwrap_or_default();
    let (mut up, mut reused) = match checkout(inf, &route) {
        Some(u) => (u, true),
        None => match connect(shared, &ep).await {
            Ok(u) => (u, false),
            Err(e) => {
                let b = fail(502, "moat_upstream", &format!("cannot reach the provider at {}: {e}", route.endpoint));
                return refuse(client, &b).await;
            }
        },
    };
    loop {
        let sent = async {
            up.get_mut().write_all(&request).await?;
            up.get_mut().write_all(body).await?;
            up.get_mut().flush().await
        };
        let Err(e) = sent.await else { break };
        if reused {
            // The provider closed the pooled connection while it sat idle:
            // the request did not reach it, so one fresh connection is tried.
            tracing::debug!(error = %moat_builder::errors::chain(&e), "pooled provider connection refused the request; reconnecting");
            if let Ok(fresh) = connect(shared, &ep).await {
                (up, reused) = (fresh, false);
                continue;
            }
        }
        let b = fail(502, "moat_upstream", &format!("sending to the provider: {e}"));
        return refuse(client, &b).await;
    }
    drop(held);
    if streamed && framing != Framing::None {
        if let Err(r) = request_body::stream(framing, client, up.get_mut(), deadline, deadline_secs).await {
            return refuse(client, &fail(r.status, r.kind, &r.message)).await;
        }
    }
    let resp = loop {
        match tokio::time::timeout(FIRST_BYTE_TIMEOUT, http1::read_response_head(&mut up, shared.limits.max_head)).await
        {
            Ok(Ok(Some(r))) if (100..200).contains(&r.status) => continue,
            Ok(Ok(Some(r))) => break r,
            Ok(Ok(None)) | Ok(Err(_)) => {
                let b = fail(502, "moat_upstream", "the provider closed the connection or answered malformed HTTP");
                return refuse(client, &b).await;
            }
            Err(_) => {
                let b = fail(504, "moat_timeout", "the provider did not answer in time");
                return refuse(client, &b).await;
            }
        }
    };
    let Ok(framing) = http1::response_framing(&head.method, &resp) else {
        let b = fail(502, "moat_upstream", "the provider's response framing is ambiguous");
        return refuse(client, &b).await;
    };
    if let Framing::Length(n) = framing {
        if n > MAX_RESPONSE_BODY {
            let msg = format!("the provider's response is {n} bytes, over the {} MiB limit", MAX_RESPONSE_BODY >> 20);
            let b = fail(502, "moat_response_too_large", &msg);
            let _ = client.get_mut().write_all(&b).await;
            return false;
        }
    }
    let content_type = resp.header("content-type").map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
    let upstream_close = http1::wants_close_response(&resp) || framing == Framing::UntilClose;
    let mut out = resp.clone();
    http1::strip_hop_by_hop(&mut out.headers);
    if let Some(k) = key.as_deref() {
        // Headers and the reason phrase too: a provider may echo what it got.
        out.reason = String::from_utf8_lossy(&scrub_all(k, out.reason.as_bytes())).into_owned();
        for (_, v) in out.headers.iter_mut() {
            *v = scrub_all(k, v);
        }
    }
    out.headers
        .retain(|(n, _)| !n.eq_ignore_ascii_case("content-length") && !n.eq_ignore_ascii_case("transfer-encoding"));
    let has_body = framing != Framing::None;
    if has_body {
        out.headers.push(("Transfer-Encoding".into(), b"chunked".to_vec()));
    } else {
        out.headers.push(("Content-Length".into(), b"0".to_vec()));
    }
    if client_close {
        out.headers.push(("Connection".into(), b"close".to_vec()));
    }
    if client.get_mut().write_all(&http1::write_response_head(&out)).await.is_err() {
        return false;
    }
    let mut tap = Tap::new(&content_type);
    // Every body, 2xx included: a provider or a local server may echo the request.
    let mut scrub = key.as_deref().map(Scrubber::new);
    let mut reader = BodyDecoder::new(framing);
    let mut total = 0u64;
    let mut complete = !has_body;
    while has_body && !complete {
        match reader.next(&mut up).await {
            Ok(Some(mut piece)) => {
                total += piece.len() as u64;
                if total > MAX_RESPONSE_BODY {
                    break;
                }
                tap.feed(&piece);
                if let Some(s) = scrub.as_mut() {
                    piece = s.feed(&piece);
                }
                if !write_chunk(client, &piece).await {
                    return false;
                }
            }
            Ok(None) => {
                complete = true;
                break;
            }
            Err(_) => break,
        }
    }
    if has_body && complete {
        let tail = scrub.map(Scrubber::finish).unwrap_or_default();
        if !write_chunk(client, &tail).await || client.get_mut().write_all(b"0\r\n\r\n").await.is_err() {
            return false;
        }
    }
    let _ = client.get_mut().flush().await;
    tap.finish();
    inf.meter.lock().unwrap_or_else(|p| p.into_inner()).record(&route.name, tap.input, tap.output);
    inf.save_usage();
    let reason = format!(
        "{} {:?} status {} tokens in {} out {} in {} ms",
        route.name,
        route.provider,
        resp.status,
        tap.input,
        tap.output,
        started.elapsed().as_millis()
    );
    shared.events.record(&Event::new(
        caller,
        super::INFERENCE_HOST,
        0,
        &head.method,
        path,
        Decision::Allow,
        "inference",
        &reason,
    ));
    if complete && !upstream_close {
        checkin(inf, &route, up);
    }
    complete && !client_close
}

/// Answers with `response` and closes the connection; returns false (the
/// connection does not stay open). What the client was still sending is
/// read and dropped for a moment first: closing a socket with unread bytes
/// resets it, and the reset would destroy the answer before the client
/// reads it.
async fn refuse<C: AsyncRead + AsyncWrite + Unpin>(client: &mut BufReader<C>, response: &[u8]) -> bool {
    if client.get_mut().write_all(response).await.is_err() || client.get_mut().shutdown().await.is_err() {
        return false;
    }
    let drain = async {
        let mut sink = [0u8; 16 * 1024];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
    false
}

/// How long, and how much, a refused client's unread bytes are drained.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 << 20;

/// Sends one chunk of the relayed body (nothing for an empty piece: an
/// empty chunk would end the body). False when the client is gone.
async fn write_chunk<C: AsyncRead + AsyncWrite + Unpin>(client: &mut BufReader<C>, piece: &[u8]) -> bool {
    if piece.is_empty() {
        return true;
    }
    let frame = [format!("{:x}\r\n", piece.len()).as_bytes(), piece, b"\r\n"].concat();
    client.get_mut().write_all(&frame).await.is_ok() && client.get_mut().flush().await.is_ok()
}

fn host_header(ep: &Endpoint) -> String {
    let host = if ep.host.contains(':') { format!("[{}]", ep.host) } else { ep.host.clone() };
    if (ep.tls && ep.port == 443) || (!ep.tls && ep.port == 80) {
        host
    } else {
        format!("{host}:{}", ep.port)
    }
}

fn inject_credential(head: &mut RequestHead, kind: Kind, key: Option<&str>) {
    match (kind, key) {
        (Kind::Anthropic, Some(k)) => head.headers.push(("x-api-key".into(), k.as_bytes().to_vec())),
        (_, Some(k)) => head.headers.push(("Authorization".into(), format!("Bearer {k}").into_bytes())),
        (_, None) => {}
    }
    if kind == Kind::Anthropic && head.header("anthropic-version").is_none() {
        head.headers.push(("anthropic-version".into(), b"2023-06-01".to_vec()));
    }
}

fn rewrite_model(body: Vec<u8>, model: Option<&str>) -> Vec<u8> {
    let Some(model) = model else { return body };
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&body) else { return body };
    let Some(obj) = v.as_object_mut() else { return body };
    if !obj.contains_key("model") {
        return body;
    }
    obj.insert("model".into(), serde_json::Value::String(model.to_string()));
    serde_json::to_vec(&v).unwrap_or(body)
}

/// `v` with every occurrence of `key` erased (one whole value: a header).
fn scrub_all(key: &str, v: &[u8]) -> Vec<u8> {
    let mut s = Scrubber::new(key);
    [s.feed(v), s.finish()].concat()
}

/// Erases the key from a body that arrives in pieces: an occurrence split
/// across pieces (or reads) is caught because the bytes that could begin
/// one are held back until the next piece, or the end, decides.
struct Scrubber {
    key: Vec<u8>,
    held: Vec<u8>,
}

impl Scrubber {
    fn new(key: &str) -> Scrubber {
        Scrubber { key: key.as_bytes().to_vec(), held: Vec::new() }
    }

    /// What may be sent of everything seen so far.
    fn feed(&mut self, piece: &[u8]) -> Vec<u8> {
        let k = self.key.len();
        if k < 4 {
            return piece.to_vec(); // too short to be a credential worth erasing
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(piece);
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        while i + k <= buf.len() {
            if buf[i..i + k] == self.key[..] {
                out.extend_from_slice(b"[redacted]");
                i += k;
            } else {
                out.push(buf[i]);
                i += 1;
            }
        }
        // Fewer than k bytes are left: they may be the start of the key.
        self.held = buf[i..].to_vec();
        out
    }

    /// The held-back tail once the body has ended (it cannot hold the key).
    fn finish(self) -> Vec<u8> {
        self.held
    }
}

/// A pooled connection to the route's endpoint that is still fresh and
/// still open; stale and closed ones are dropped on the way.
fn checkout(inf: &Inference, route: &Route) -> Option<Upstream> {
    let mut pool = inf.pool.0.lock().unwrap_or_else(|p| p.into_inner());
    pool.retain(|p| p.idle_since.elapsed() < POOL_IDLE);
    while let Some(i) = pool.iter().position(|p| p.endpoint == route.endpoint) {
        let mut up = pool.swap_remove(i).up;
        if !closed(&mut up) {
            return Some(up);
        }
    }
    None
}

/// True when an idle connection can no longer carry a request: the
/// provider closed it (end of stream or a TLS close), reset it, or sent
/// bytes nobody asked for. Polls once without waiting.
fn closed(up: &mut Upstream) -> bool {
    use tokio::io::AsyncBufRead;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    std::pin::Pin::new(up).poll_fill_buf(&mut cx).is_ready()
}

async fn connect(shared: &Shared, ep: &Endpoint) -> std::io::Result<Upstream> {
    // The route is the operator's (it may name a server on the host's
    // loopback, e.g. Ollama): resolved, but not subject to the egress SSRF guard.
    let addrs = shared
        .resolver
        .resolve(&ep.host, ep.port)
        .await
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string()))?;
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for a in addrs {
        match tokio::time::timeout(shared.limits.connect_timeout, tokio::net::TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                if !ep.tls {
                    return Ok(BufReader::new(Box::new(s)));
                }
                let name = crate::gateway::ca::server_name(&ep.host)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
                let config = shared.upstream_tls()?;
                let tls = tokio_rustls::TlsConnector::from(config).connect(name, s).await?;
                return Ok(BufReader::new(Box::new(tls)));
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {a} timed out")),
        }
    }
    Err(last)
}

fn checkin(inf: &Inference, route: &Route, up: Upstream) {
    if !up.buffer().is_empty() {
        return; // stray bytes: not reusable
    }
    let mut pool = inf.pool.0.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() < POOL_MAX {
        pool.push(Pooled { endpoint: route.endpoint.clone(), up, idle_since: Instant::now() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_split_across_pieces_is_still_erased() {
        let key = "sk-live-0123456789abcdef";
        let body = format!("{{\"error\":\"bad key {key} given, {key}\"}}");
        let want = body.replace(key, "[redacted]");
        // Every split point, and one byte per piece.
        for cut in 0..=body.len() {
            let mut s = Scrubber::new(key);
            let out = [s.feed(&body.as_bytes()[..cut]), s.feed(&body.as_bytes()[cut..]), s.finish()].concat();
            assert_eq!(String::from_utf8(out).unwrap(), want, "cut at {cut}");
        }
        let mut s = Scrubber::new(key);
        let mut out: Vec<u8> = body.bytes().flat_map(|b| s.feed(&[b])).collect();
        out.extend(s.finish());
        assert_eq!(String::from_utf8(out).unwrap(), want);
        // A prefix of the key at the very end is sent as it is.
        let mut s = Scrubber::new(key);
        let out = [s.feed(b"tail sk-live-01"), s.finish()].concat();
        assert_eq!(out, b"tail sk-live-01");
    }

    #[test]
    fn credentials_are_stripped_injected_and_scrubbed() {
        for h in ["Authorization", "x-api-key", "X-Api-Key", "Proxy-Authorization", "Cookie", "Accept-Encoding"] {
            assert!(dropped(h), "{h}");
        }
        assert!(!dropped("content-type"));
        let mut head =
            RequestHead { method: "POST".into(), target: "/v1/messages".into(), version: 1, headers: vec![] };
        inject_credential(&mut head, Kind::Anthropic, Some("sk-ant-secret"));
        assert_eq!(head.header("x-api-key"), Some(&b"sk-ant-secret"[..]));
        assert_eq!(head.header("anthropic-version"), Some(&b"2023-06-01"[..]));
        assert!(head.header("authorization").is_none());
        let mut s = Scrubber::new("sk-ant-secret");
        let out = [s.feed(b"bad key sk-ant-secret given"), s.finish()].concat();
        assert_eq!(out, b"bad key [redacted] given");
        assert_eq!(
            scrub_all("sk-ant-secret", b"Bearer sk-ant-secret, sk-ant-secret"),
            b"Bearer [redacted], [redacted]"
        );
        assert_eq!(scrub_all("sk-ant-secret", b"sk-ant-secre"), b"sk-ant-secre");
        let body = rewrite_model(br#"{"model":"gpt-x","messages":[]}"#.to_vec(), Some("llama3"));
        assert!(String::from_utf8(body).unwrap().contains("\"model\":\"llama3\""));
    }
}
