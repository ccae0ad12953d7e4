//! `moat.local`, the gateway's own API for agents: `POST /v1/requests`
//! turns a JSON request for a destination, with a free-text reason, into a
//! pending approval for the calling binary; `GET /v1/requests/ID` tells the
//! agent what became of it. Guards against the agent flooding the operator
//! or the supervisor (bodies and fields bounded before parsing, a token
//! bucket per sandbox answering 429 with a count the operator sees, the
//! approvals list's own cap), against the agent's words passing for the
//! operator's or moat's (stored apart, shown escaped and marked as the
//! agent's), and against one program asking on behalf of another (the
//! approval is for the identified caller, never for a binary the body names).
#![forbid(unsafe_code)]
use super::decide::Identified;
use super::http1::{self, BodyDecoder, Framing, RequestHead};
use super::revisions::AgentRequest;
use super::Shared;
use crate::policy::matcher::Match;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// The name agents reach this API by (through the proxy, or directly:
/// the sandbox's /etc/hosts points it at the gateway).
pub const MOAT_HOST: &str = "moat.local";
/// Largest request body (413 beyond).
pub const MAX_BODY: usize = 4096;
/// Longest reason, in characters.
pub const MAX_REASON: usize = 1000;
/// Longest path an agent may name.
const MAX_PATH: usize = 1024;
/// Requests taken at once before the rate applies ...
pub const BURST: u32 = 10;
/// ... then one more per this interval.
pub const REFILL: Duration = Duration::from_secs(6);
/// Bytes of an unread body drained after a refusal, so the client reads the
/// answer instead of a reset.
const DRAIN: u64 = 64 * 1024;

/// Is `authority` (a host, or a Host header's `host[:port]`) moat.local?
pub fn is_moat_host(authority: &str) -> bool {
    let v = authority.trim();
    let host = match v.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => v,
    };
    host.trim_end_matches('.').eq_ignore_ascii_case(MOAT_HOST)
}

/// The per-sandbox rate limit of agents' requests.
#[derive(Debug)]
pub struct Asks {
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: u32,
    last: Instant,
    /// Requests answered 429 since the sandbox started.
    refused: u64,
}

impl Default for Asks {
    fn default() -> Self {
        Asks { bucket: Mutex::new(Bucket { tokens: BURST, last: Instant::now(), refused: 0 }) }
    }
}

impl Asks {
    /// Takes a token; false (counted) when there is none.
    fn admit(&self) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let refills = (b.last.elapsed().as_secs_f64() / REFILL.as_secs_f64()) as u32;
        if refills > 0 {
            b.tokens = b.tokens.saturating_add(refills).min(BURST);
            b.last = Instant::now();
        }
        if b.tokens == 0 {
            b.refused += 1;
            if b.refused.is_power_of_two() {
                tracing::warn!(
                    event = "agent_requests_limited",
                    refused = b.refused,
                    "agent requests over the rate limit"
                );
            }
            return false;
        }
        b.tokens -= 1;
        true
    }

    /// Requests refused by the rate limit since the sandbox started.
    pub fn refused(&self) -> u64 {
        self.bucket.lock().unwrap_or_else(|p| p.into_inner()).refused
    }
}

/// The body of `POST /v1/requests`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ask {
    host: String,
    port: u16,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    reason: String,
}

/// Parses and checks a request body: (host lower-cased, port, the request).
fn parse(body: &[u8]) -> Result<(String, u16, AgentRequest), String> {
    let a: Ask = serde_json::from_slice(body).map_err(|e| format!("the body is not a request: {e}"))?;
    let host = a.host.trim_end_matches('.').to_ascii_lowercase();
    let name_ok = |h: &str| {
        !h.is_empty()
            && h.len() <= 253
            && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
            && h.split('.').all(|l| !l.is_empty() && l.len() <= 63)
    };
    if !name_ok(&host) {
        return Err("host: a DNS name or an IP address (letters, digits, '-', '.', ':')".into());
    }
    if is_moat_host(&host) || super::inference::is_inference_host(&host) {
        return Err(format!("host: {host} is served by the gateway itself"));
    }
    if super::ssrf::is_metadata_host(&host) {
        return Err("host: cloud metadata endpoints are never reachable".into());
    }
    if a.port == 0 {
        return Err("port: 1 to 65535".into());
    }
    if let Some(m) = &a.method {
        if m.is_empty() || m.len() > 16 || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err("method: one HTTP method (letters only)".into());
        }
    }
    if let Some(p) = &a.path {
        if !p.starts_with('/') || p.len() > MAX_PATH || !p.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("path: starts with '/', printable ASCII, at most {MAX_PATH} bytes"));
        }
    }
    let reason = a.reason.trim();
    if reason.is_empty() {
        return Err("reason: say why the destination is needed".into());
    }
    if reason.chars().count() > MAX_REASON {
        return Err(format!("reason: at most {MAX_REASON} characters"));
    }
    let asked =
        AgentRequest { reason: reason.to_string(), method: a.method.map(|m| m.to_ascii_uppercase()), path: a.path };
    Ok((host, a.port, asked))
}

fn answer(status: u16, v: &Value) -> Vec<u8> {
    http1::typed_response(status, http1::reason(status), "application/json", &format!("{v}\n"), true)
}

fn error(status: u16, message: &str) -> Vec<u8> {
    answer(status, &json!({"error": message}))
}

/// Answers one request to moat.local (`path`: its origin-form target).
/// The connection closes after it.
pub(crate) async fn handle<C: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    client: &mut BufReader<C>,
    head: RequestHead,
    path: &str,
    caller: &Identified,
) {
    let path = path.split('?').next().unwrap_or_default();
    let resp = match (head.method.as_str(), path.strip_prefix("/v1/requests")) {
        ("POST", Some("" | "/")) => post(shared, client, &head, caller).await,
        ("GET", Some(rest)) if rest.len() > 1 && rest.starts_with('/') => poll(shared, &rest[1..]),
        (_, Some(_)) => error(405, "use POST /v1/requests or GET /v1/requests/ID"),
        _ => error(404, "moat.local serves /v1/requests (see docs/egress.md)"),
    };
    let _ = client.get_mut().write_all(&resp).await;
    let _ = client.get_mut().flush().await;
    drain(client).await;
}

fn poll(shared: &Shared, id: &str) -> Vec<u8> {
    let well_formed = id.len() <= 16 && !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit());
    match shared.approval_status(id).filter(|_| well_formed) {
        Some(o) => answer(200, &json!({"id": id, "status": o.as_str()})),
        None => error(404, "no such request (unknown, or decided long ago): ask again"),
    }
}

async fn post<C: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    client: &mut BufReader<C>,
    head: &RequestHead,
    caller: &Identified,
) -> Vec<u8> {
    let Ok(caller) = caller else {
        return error(403, "the calling program could not be identified");
    };
    let body = match read_body(shared, client, head).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let (host, port, asked) = match parse(&body) {
        Ok(p) => p,
        Err(e) => return error(400, &e),
    };
    let cur = shared.current();
    if let Match::Allowed { audit: false, .. } = super::decide::match_caller(&cur.compiled, caller, &host, port) {
        return answer(200, &json!({"status": "allowed"}));
    }
    if !shared.asks.admit() {
        let msg = format!(
            "too many requests: {BURST} at once, then one every {} s; poll the ones you made",
            REFILL.as_secs()
        );
        let body = format!("{}\n", json!({"error": msg}));
        let retry = REFILL.as_secs().to_string();
        return http1::response_with(
            429,
            http1::reason(429),
            &[("Retry-After", &retry)],
            "application/json",
            &body,
            true,
        );
    }
    let (id, new) = shared.ask_approval(caller, &host, port, asked);
    tracing::info!(
        event = "agent_request",
        sandbox = %shared.sandbox,
        binary = %crate::visible::field(&caller.process.exe),
        host = %host,
        port,
        id = %id,
        new,
        "an agent asked for a destination"
    );
    answer(202, &json!({"id": id, "status": "pending"}))
}

/// The body, at most `MAX_BODY` bytes, within the head deadline; Err is
/// the response (400, 408, 413).
async fn read_body<C: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    client: &mut BufReader<C>,
    head: &RequestHead,
) -> Result<Vec<u8>, Vec<u8>> {
    let framing = http1::request_framing(head).map_err(|e| error(400, &moat_builder::errors::chain(&e)))?;
    let too_large = || error(413, &format!("the body is larger than {MAX_BODY} bytes"));
    match framing {
        Framing::Length(n) if n > MAX_BODY as u64 => return Err(too_large()),
        Framing::None | Framing::Length(0) => return Err(error(400, "a JSON body is needed")),
        _ => {}
    }
    if head.version == 1 && head.header("expect").is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue")) {
        client.get_mut().write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.map_err(|_| Vec::new())?;
    }
    let read = async {
        let mut body = Vec::new();
        let mut d = BodyDecoder::new(framing);
        while let Some(piece) = d.next(client).await.map_err(|e| error(400, &moat_builder::errors::chain(&e)))? {
            if body.len() + piece.len() > MAX_BODY {
                return Err(too_large());
            }
            body.extend_from_slice(&piece);
        }
        Ok(body)
    };
    match tokio::time::timeout(shared.limits.head_timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(error(408, "the body was not received in time")),
    }
}

/// Reads and drops what the client still sends (bounded in bytes and time)
/// before closing, so a refused body does not turn the answer into a reset.
async fn drain<C: AsyncRead + AsyncWrite + Unpin>(client: &mut BufReader<C>) {
    let _ = client.get_mut().shutdown().await;
    let mut sink = [0u8; 4096];
    let mut left = DRAIN;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n as u64),
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_bodies() {
        assert!(is_moat_host("moat.local") && is_moat_host("MOAT.local:3128") && is_moat_host("moat.local."));
        assert!(!is_moat_host("moat.local.evil") && !is_moat_host("xmoat.local"));
        let (h, p, a) = parse(br#"{"host":"Up.Test.","port":443,"method":"get","path":"/x","reason":" r "}"#).unwrap();
        assert_eq!((h.as_str(), p, a.reason.as_str(), a.method.as_deref()), ("up.test", 443, "r", Some("GET")));
        for bad in [
            &br#"{"host":"up.test","port":443}"#[..],
            br#"{"host":"up.test","port":443,"reason":"r","binary":"/usr/bin/git"}"#,
            br#"{"host":"up test","port":443,"reason":"r"}"#,
            br#"{"host":"metadata.google.internal","port":80,"reason":"r"}"#,
            br#"{"host":"moat.local","port":80,"reason":"r"}"#,
            br#"{"host":"up.test","port":70000,"reason":"r"}"#,
            br#"{"host":"up.test","port":443,"method":"G T","reason":"r"}"#,
            br#"{"host":"up.test","port":443,"reason":" \t "}"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_bucket_refuses_past_the_burst_and_counts() {
        let a = Asks::default();
        let taken = (0..100).filter(|_| a.admit()).count();
        assert_eq!((taken, a.refused()), (BURST as usize, 100 - u64::from(BURST)));
    }
}
