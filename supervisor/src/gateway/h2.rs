//! HTTP/2 on an inspected tunnel, for clients that offer only h2 in ALPN
//! (gRPC, HTTP/2-only libraries); a client that offers HTTP/1.1 too keeps
//! the HTTP/1 inspector. The client's connection is served with hyper's
//! HTTP/2 server; each stream is one request, checked as the HTTP/1 path
//! checks it (the same `decide::request`: method, path shape, method
//! overrides, the rule's access; one audit record each), its `:authority`
//! held to the tunnel's host, and relayed over the upstream's HTTP/2 (or
//! HTTP/1.1, if that is all the upstream speaks) with bodies and trailers
//! streamed. Guards against HTTP/2 as a way around the rules: no stream is
//! relayed unchecked, extended CONNECT (WebSocket over h2) is refused, a
//! `Host` field must name the same host as `:authority` (and is not sent
//! on), a policy change re-checks the tunnel at the next stream and a
//! revocation or the idle limit without a stream ends the connection
//! (GOAWAY), and header lists, streams (per
//! connection and per sandbox), send buffers, flow-control windows and the
//! wait for a response are bounded.
#![forbid(unsafe_code)]
use super::decide::{self, Relay};
use super::events::{Decision, Event};
use super::http1::RequestHead;
use super::identity::Caller;
use super::Shared;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};

/// Streams one client connection may have open at once.
const MAX_STREAMS: u32 = 16;
/// Streams being checked or relayed at once across the whole sandbox: with
/// the head bound, what HTTP/2 heads can hold in the supervisor (8 MiB).
pub(crate) const MAX_SANDBOX_STREAMS: usize = 256;
/// Bytes queued for a client that stops reading, per stream.
const MAX_SEND_BUF: usize = 64 << 10;
/// Flow-control windows offered to the client and to the upstream.
const STREAM_WINDOW: u32 = 256 << 10;
const CONNECTION_WINDOW: u32 = 1 << 20;

type Body = BoxBody<Bytes, hyper::Error>;

/// How requests reach the upstream.
enum Upstream {
    H2(hyper::client::conn::http2::SendRequest<Incoming>),
    /// HTTP/1.1 carries one request at a time: streams take turns.
    H1(tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Incoming>>),
}

/// What every stream of one tunnel shares.
struct Tunnel {
    shared: Arc<Shared>,
    caller: Caller,
    relay: Mutex<Relay>,
    host: String,
    port: u16,
    upstream: Upstream,
    /// Ends the connection (GOAWAY) once the policy no longer allows it.
    revoked: tokio::sync::Notify,
    /// When the last stream began: a connection with none for the idle
    /// limit is ended (GOAWAY), as an idle HTTP/1 connection is closed.
    last_stream: Mutex<tokio::time::Instant>,
}

/// Serves the client's HTTP/2 connection `client` (TLS accepted with h2)
/// over `upstream` (TLS connected; `upstream_h2` if it chose h2).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve<C, U>(
    shared: &Arc<Shared>,
    caller: &Caller,
    relay: Relay,
    host: &str,
    port: u16,
    client: C,
    upstream: U,
    upstream_h2: bool,
) where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let up = if upstream_h2 {
        let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buf_size(MAX_SEND_BUF)
            .handshake(TokioIo::new(upstream));
        match handshake.await {
            Ok((send, conn)) => {
                tokio::spawn(conn);
                Upstream::H2(send)
            }
            Err(e) => {
                return tracing::info!(event = "gateway_h2_upstream", error = %e, "upstream HTTP/2 handshake failed")
            }
        }
    } else {
        match hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await {
            Ok((send, conn)) => {
                tokio::spawn(conn);
                Upstream::H1(tokio::sync::Mutex::new(send))
            }
            Err(e) => {
                return tracing::info!(event = "gateway_h2_upstream", error = %e, "upstream HTTP/1.1 handshake failed")
            }
        }
    };
    let t = Arc::new(Tunnel {
        shared: shared.clone(),
        caller: caller.clone(),
        relay: Mutex::new(relay),
        host: host.to_string(),
        port,
        upstream: up,
        revoked: tokio::sync::Notify::new(),
        last_stream: Mutex::new(tokio::time::Instant::now()),
    });
    let tunnel = t.clone();
    let service = hyper::service::service_fn(move |req| {
        let t = tunnel.clone();
        async move { Ok::<_, std::convert::Infallible>(stream(&t, req).await) }
    });
    let max_head = u32::try_from(shared.limits.max_head).unwrap_or(u32::MAX);
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(max_head)
        .max_send_buf_size(MAX_SEND_BUF)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .serve_connection(TokioIo::new(client), service);
    tokio::pin!(conn);
    let idle = shared.limits.idle_timeout;
    let idle_for = || t.last_stream.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
    let served = loop {
        let check = tokio::time::sleep(idle.saturating_sub(idle_for()).max(std::time::Duration::from_millis(100)));
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = t.revoked.notified() => {}
            _ = check => {
                if idle_for() < idle {
                    continue;
                }
            }
        }
        // Revoked or idle: streams in flight finish; no new one is taken.
        conn.as_mut().graceful_shutdown();
        break conn.await;
    };
    if let Err(e) = served {
        tracing::debug!(event = "gateway_h2_closed", error = %e, "HTTP/2 connection ended");
    }
}

/// What the gateway itself answered (never an upstream's response): the
/// text a gRPC client gets as its status message.
#[derive(Clone)]
struct OwnAnswer(String);

fn text(status: u16, body: String, summary: Option<&str>) -> Response<Body> {
    let message = summary.map_or_else(|| body.trim().to_string(), str::to_string);
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
    if let Some(v) = summary.and_then(|s| hyper::header::HeaderValue::from_str(s).ok()) {
        r.headers_mut().insert("x-moat-denied", v);
    }
    r.extensions_mut().insert(OwnAnswer(message));
    r
}

/// Whether a request is gRPC (`content-type: application/grpc`, `+proto`, ...).
pub(crate) fn is_grpc(headers: &hyper::HeaderMap) -> bool {
    headers.get(hyper::header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// The gateway's own answer to a gRPC request, as gRPC reads it: gRPC
/// clients read the status only from `grpc-status` and `grpc-message`
/// (grpc-js turns a bare 403 into "Received HTTP status code 403", and
/// grpc-go ignores `grpc-message` beside a status other than 200), so the
/// answer becomes a Trailers-Only response (`:status` 200, no body), as
/// Envoy answers gRPC requests it refuses itself: the HTTP status mapped
/// as gRPC's own table maps it (403 -> 7 PERMISSION_DENIED), `message`
/// percent-encoded; `x-moat-denied` stays.
pub(crate) fn grpc_answer<B>(mut r: Response<B>, message: &str, empty: B) -> Response<B> {
    let code = match r.status().as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    };
    // At most 1 KiB, cut at a character: the message is UTF-8 once decoded.
    let mut end = message.len().min(1024);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut encoded = String::new();
    for b in message[..end].bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", hyper::header::HeaderValue::from(code));
    if let Ok(v) = hyper::header::HeaderValue::from_str(&encoded) {
        h.insert("grpc-message", v);
    }
    r.map(|_| empty)
}

/// One stream: checked, then relayed; a gRPC request gets the gateway's
/// own answers as gRPC status.
async fn stream(t: &Tunnel, req: Request<Incoming>) -> Response<Body> {
    let grpc = is_grpc(req.headers());
    let r = check_and_relay(t, req).await;
    match r.extensions().get::<OwnAnswer>().cloned() {
        Some(OwnAnswer(message)) if grpc => {
            let empty = Full::new(Bytes::new()).map_err(|never| match never {}).boxed();
            grpc_answer(r, &message, empty)
        }
        _ => r,
    }
}

async fn check_and_relay(t: &Tunnel, mut req: Request<Incoming>) -> Response<Body> {
    let (shared, caller, host, port) = (&t.shared, &t.caller, t.host.as_str(), t.port);
    *t.last_stream.lock().unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now();
    let Ok(_slot) = shared.h2_streams.try_acquire() else {
        return text(503, "moat: too many HTTP/2 streams in this sandbox; retry\n".into(), None);
    };
    let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let method = req.method().as_str().to_string();
    // A new policy revision re-checks the tunnel, as on HTTP/1.
    let relay = {
        let mut held = t.relay.lock().unwrap_or_else(|p| p.into_inner());
        match decide::recheck(shared, caller, &held, host, port) {
            Ok(r) => {
                *held = r.clone();
                r
            }
            Err(reason) => {
                let e = Event::new(
                    Some(&caller.process),
                    host,
                    port,
                    &method,
                    &path,
                    Decision::Revoke,
                    &held.policy,
                    &reason,
                );
                shared.events.record(&e);
                t.revoked.notify_one();
                return text(403, format!("moat: {reason}; reconnect\n"), None);
            }
        }
    };
    let refuse = |status: u16, reason: String| {
        let e = Event::new(Some(&caller.process), host, port, &method, &path, Decision::Deny, &relay.policy, &reason);
        shared.events.record(&e);
        text(status, format!("moat: {reason}\n"), None)
    };
    if req.method() == hyper::Method::CONNECT {
        return refuse(
            403,
            "CONNECT inside an inspected HTTP/2 tunnel (extended CONNECT, WebSocket over h2) is not relayed".into(),
        );
    }
    if !path.starts_with('/') {
        return refuse(400, "requests in a tunnel use origin-form paths".into());
    }
    if !authority_matches(&req, host, port) {
        return refuse(421, format!("the request's authority and Host must be {host} in a tunnel to {host}"));
    }
    // The same check as HTTP/1, on the same head form.
    let head = RequestHead {
        method: method.clone(),
        target: path.clone(),
        version: 1,
        headers: req.headers().iter().map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec())).collect(),
    };
    if let Err(r) = decide::request(shared, caller, &relay, host, port, &head, &path) {
        return text(r.status, r.body, r.summary.as_deref());
    }
    // Headers some frameworks route by instead of the path the rule checked;
    // the proxy's own fields; a Host beside :authority (checked equal above).
    for name in ["x-original-url", "x-rewrite-url", "proxy-authorization", "proxy-connection", "trailer"] {
        req.headers_mut().remove(name);
    }
    req.headers_mut().remove(hyper::header::HOST);
    let authority = super::upstream::authority(host, port, 443);
    let sent = match &t.upstream {
        Upstream::H2(send) => {
            match hyper::Uri::builder().scheme("https").authority(authority).path_and_query(path.as_str()).build() {
                Ok(uri) => *req.uri_mut() = uri,
                Err(e) => return refuse(400, format!("request target: {e}")),
            }
            let mut send = send.clone();
            within(send.send_request(req)).await
        }
        Upstream::H1(send) => {
            match (hyper::header::HeaderValue::from_str(&authority), path.parse::<hyper::Uri>()) {
                (Ok(h), Ok(uri)) => {
                    req.headers_mut().insert(hyper::header::HOST, h);
                    *req.uri_mut() = uri;
                    *req.version_mut() = hyper::Version::HTTP_11;
                    // `te: trailers` belongs to HTTP/2; HTTP/1.1 reads TE as hop-by-hop.
                    req.headers_mut().remove(hyper::header::TE);
                }
                _ => return refuse(400, "request target or host".into()),
            }
            let mut send = send.lock().await;
            within(async {
                send.ready().await?;
                send.send_request(req).await
            })
            .await
        }
    };
    match sent {
        Ok(Ok(resp)) => resp.map(|b| b.boxed()),
        Ok(Err(e)) => text(502, format!("moat: the upstream failed: {e}\n"), None),
        Err(_) => text(504, "moat: the upstream did not answer in time\n".into(), None),
    }
}

/// The upstream's response head, within the wait HTTP/1 allows too.
async fn within<F: std::future::Future>(f: F) -> Result<F::Output, tokio::time::error::Elapsed> {
    tokio::time::timeout(super::upstream::RESPONSE_TIMEOUT, f).await
}

/// Whether the stream's `:authority` and its Host field (each when
/// present, at least one) name the tunnel's host and port: an upstream
/// that routes by Host must not be led to another virtual host.
fn authority_matches(req: &Request<Incoming>, host: &str, port: u16) -> bool {
    let names_tunnel = |named: &str| {
        let (h, p) = match super::upstream::split_authority(named) {
            Some((h, p)) => (h, p),
            None => (named.trim_start_matches('[').trim_end_matches(']').to_string(), 443),
        };
        h.eq_ignore_ascii_case(host) && p == port
    };
    let authority = req.uri().authority().map(|a| a.as_str());
    let hosts = req.headers().get_all(hyper::header::HOST);
    if authority.is_none() && hosts.iter().next().is_none() {
        return false;
    }
    authority.is_none_or(names_tunnel) && hosts.iter().all(|v| v.to_str().is_ok_and(names_tunnel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_is_told_by_its_content_type() {
        let with = |v: &'static str| {
            let mut h = hyper::HeaderMap::new();
            h.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(v));
            is_grpc(&h)
        };
        for v in ["application/grpc", "application/grpc+proto", "Application/GRPC;charset=x"] {
            assert!(with(v), "{v}");
        }
        for v in ["application/grpc-web", "application/grpcx", "application/json", "text/plain"] {
            assert!(!with(v), "{v}");
        }
        assert!(!is_grpc(&hyper::HeaderMap::new()));
    }

    #[test]
    fn a_refusal_becomes_a_trailers_only_grpc_status() {
        let r = Response::builder().status(403).header("x-moat-denied", "moat denied x").body("text").unwrap();
        let g = grpc_answer(r, "moat denied a -> b:1 (100% \"no\")\nnext", "");
        assert_eq!(g.status(), StatusCode::OK);
        assert_eq!(g.headers()["content-type"], "application/grpc");
        assert_eq!(g.headers()["grpc-status"], "7");
        assert_eq!(g.headers()["grpc-message"], "moat denied a -> b:1 (100%25 \"no\")%0Anext");
        assert_eq!(g.headers()["x-moat-denied"], "moat denied x");
        assert_eq!(*g.body(), "");
        let code = |status: u16| {
            let r = Response::builder().status(status).body(()).unwrap();
            grpc_answer(r, "", ()).headers()["grpc-status"].to_str().unwrap().to_string()
        };
        let got: Vec<String> = [400, 401, 404, 421, 429, 502, 503, 504].into_iter().map(code).collect();
        assert_eq!(got, ["13", "16", "12", "2", "14", "14", "14", "14"]);
    }

    /// gRPC's grpc-message is percent-encoded UTF-8: the 1 KiB bound cuts at
    /// a character, never inside one (a binary named in the summary may be
    /// any text the sandbox chose).
    #[test]
    fn a_long_grpc_message_is_cut_at_a_character() {
        let r = Response::builder().status(403).body(()).unwrap();
        let g = grpc_answer(r, &format!("a{}", "\u{e9}".repeat(600)), ());
        let v = g.headers()["grpc-message"].as_bytes();
        let mut bytes = Vec::new();
        let mut i = 0;
        while i < v.len() {
            if v[i] == b'%' {
                bytes.push(u8::from_str_radix(std::str::from_utf8(&v[i + 1..i + 3]).unwrap(), 16).unwrap());
                i += 3;
            } else {
                bytes.push(v[i]);
                i += 1;
            }
        }
        let text = String::from_utf8(bytes).map_err(|e| e.utf8_error()).expect("grpc-message decodes to UTF-8");
        assert!(text.len() <= 1024 && text.len() > 1000, "{}", text.len());
    }
}
