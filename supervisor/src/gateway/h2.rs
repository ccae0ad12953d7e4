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
//! policy change re-checks the tunnel at the next stream, and header lists
//! and concurrent streams are bounded.
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

/// Streams one client may have open at once.
const MAX_STREAMS: u32 = 100;

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
        match hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(upstream)).await {
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
    });
    let service = hyper::service::service_fn(move |req| {
        let t = t.clone();
        async move { Ok::<_, std::convert::Infallible>(stream(&t, req).await) }
    });
    let max_head = u32::try_from(shared.limits.max_head).unwrap_or(u32::MAX);
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(max_head)
        .serve_connection(TokioIo::new(client), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(event = "gateway_h2_closed", error = %e, "HTTP/2 connection ended");
    }
}

fn text(status: u16, body: String, summary: Option<&str>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
    if let Some(v) = summary.and_then(|s| hyper::header::HeaderValue::from_str(s).ok()) {
        r.headers_mut().insert("x-moat-denied", v);
    }
    r
}

/// One stream: checked, then relayed.
async fn stream(t: &Tunnel, mut req: Request<Incoming>) -> Response<Body> {
    let (shared, caller, host, port) = (&t.shared, &t.caller, t.host.as_str(), t.port);
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
    if !authority_matches(&req, host, port) {
        return refuse(421, format!("the request's authority must be {host} in a tunnel to {host}"));
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
    // Headers some frameworks route by instead of the path the rule checked.
    req.headers_mut().remove("x-original-url");
    req.headers_mut().remove("x-rewrite-url");
    let sent = match &t.upstream {
        Upstream::H2(send) => {
            let authority = if port == 443 { host.to_string() } else { format!("{host}:{port}") };
            match hyper::Uri::builder().scheme("https").authority(authority).path_and_query(path.as_str()).build() {
                Ok(uri) => *req.uri_mut() = uri,
                Err(e) => return refuse(400, format!("request target: {e}")),
            }
            let mut send = send.clone();
            send.send_request(req).await
        }
        Upstream::H1(send) => {
            let host_value = if port == 443 { host.to_string() } else { format!("{host}:{port}") };
            match (hyper::header::HeaderValue::from_str(&host_value), path.parse::<hyper::Uri>()) {
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
            match send.ready().await {
                Ok(()) => send.send_request(req).await,
                Err(e) => Err(e),
            }
        }
    };
    match sent {
        Ok(resp) => resp.map(|b| b.boxed()),
        Err(e) => text(502, format!("moat: the upstream failed: {e}\n"), None),
    }
}

/// Whether the stream's `:authority` (or Host) names the tunnel's host and port.
fn authority_matches(req: &Request<Incoming>, host: &str, port: u16) -> bool {
    let named = match req.uri().authority() {
        Some(a) => a.as_str().to_string(),
        None => match req.headers().get(hyper::header::HOST).and_then(|v| v.to_str().ok()) {
            Some(h) => h.to_string(),
            None => return false,
        },
    };
    let (h, p) = match super::upstream::split_authority(&named) {
        Some((h, p)) => (h, p),
        None => (named.trim_start_matches('[').trim_end_matches(']').to_string(), 443),
    };
    h.eq_ignore_ascii_case(host) && p == port
}
