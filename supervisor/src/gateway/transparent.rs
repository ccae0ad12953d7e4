//! Transparent egress, the gateway's side: connections the sandbox makes
//! to an address its DNS gave out (`names`), on a port the gateway listens
//! on, without knowing of any proxy. The address says which name the client
//! meant; the connection is then decided exactly as `CONNECT name:port`
//! from the same caller (`decide::destination`: identity, per-binary rules,
//! approvals, SSRF guard, audit) and relayed as L4 or inspected as the rule
//! says. Guards against a client naming one host to DNS and another to the
//! server (domain fronting): the TLS server name or HTTP Host of the first
//! bytes must be the name the address was given for, or nothing is
//! relayed; and against anything but TLS and HTTP passing unchecked (other
//! protocols are refused: they use the proxy). A refusal is readable: plain
//! HTTP gets the 403, TLS gets it after a handshake with the sandbox CA's
//! leaf for the name, over HTTP/2 to a client that offers only h2 (each
//! stream answered with the refusal, then GOAWAY).
#![forbid(unsafe_code)]
use super::decide::{self, Refusal};
use super::events::{Decision, Event};
use super::http1;
use super::inspect::{self, Target};
use super::upstream::dial;
use super::Shared;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Accepts on one transparent port until the runtime stops; connections
/// count against the gateway's one cap (`slots`).
pub(super) async fn serve(shared: Arc<Shared>, listener: TcpListener, slots: Arc<Semaphore>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(event = "gateway_accept_failed", error = %moat_builder::errors::chain(&e), "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Over the cap: closed (the protocol is not known yet).
        let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            handle(&shared, stream, peer).await;
            drop(permit);
        });
    }
}

/// What a TLS client offers by ALPN, as far as a refusal's handshake cares.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Alpn {
    /// h2 and not http/1.1 (Node's `http2`, gRPC): the refusal speaks HTTP/2.
    H2Only,
    /// Anything else: HTTP/1.1.
    Http1,
}

/// What a connection's first bytes are.
enum Opening {
    /// A TLS ClientHello, with its server name if it sent one.
    Tls(Option<String>, Alpn),
    /// An HTTP/1 request head, with its Host.
    Http(Option<String>),
    /// Anything else (or a head past the bound).
    Other,
}

async fn handle(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let Ok(local) = stream.local_addr() else { return };
    let port = local.port();
    let ip = match local.ip() {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4,
            None => return,
        },
    };
    let caller = super::proxy::identify(shared, peer, Some(local)).await;
    let proc_ = caller.as_ref().ok().map(|c| &c.process);
    let opening = opening(&stream, shared).await;
    if ip.is_loopback() {
        // The gateway's own names (/etc/hosts and the DNS give 127.0.0.1):
        // https://inference.local and http://moat.local without a proxy.
        return match opening {
            Some(Opening::Tls(Some(sni), _)) if super::inference::is_inference_host(&sni) => {
                inspect::inference_tunnel(shared, BufReader::new(stream), proc_).await
            }
            Some(Opening::Http(_)) => inspect::forward(shared, &mut BufReader::new(stream), None, &caller).await,
            _ => {}
        };
    }
    let deny = |host: &str, reason: &str| {
        shared.events.record(&Event::new(proc_, host, port, "CONNECT", "", Decision::Deny, "", reason));
    };
    let Some(host) = shared.names.name_of(ip, Instant::now()) else {
        deny(&ip.to_string(), "an address of the reserved range the sandbox's DNS did not give out");
        return;
    };
    let mut stream = stream;
    match &opening {
        None => return,
        Some(Opening::Tls(Some(sni), _)) if !same_name(sni, &host) => {
            let sni = crate::visible::field(sni);
            return deny(&host, &format!("TLS server name {sni} is not {host}, the name {ip} was given for"));
        }
        Some(Opening::Http(Some(h))) if !same_name(h, &host) => {
            let h: String = crate::visible::field(h).chars().take(255).collect();
            deny(&host, &format!("Host {h} is not {host}, the name {ip} was given for"));
            let body = format!("moat: Host must be {host}: this address was given for {host}\n");
            let _ = stream.write_all(&http1::simple_response(421, "Misdirected Request", &body, true)).await;
            return;
        }
        Some(Opening::Http(None)) => {
            let body = "moat: a request without a Host header cannot be matched to a name\n";
            let _ = stream.write_all(&http1::simple_response(400, "Bad Request", body, true)).await;
            return;
        }
        Some(Opening::Other) => {
            return deny(
                &host,
                "neither TLS nor HTTP: transparent egress carries only these (other protocols use the proxy's CONNECT)",
            );
        }
        _ => {}
    }
    let tls = match opening {
        Some(Opening::Tls(_, alpn)) => Some(alpn),
        _ => None,
    };
    let relay = match decide::destination(shared, &caller, &host, port, "CONNECT", "").await {
        Ok(r) => r,
        Err(refusal) => return refuse(shared, stream, tls, &host, &refusal).await,
    };
    let Ok(caller) = caller else { return };
    let upstream = match dial(shared, &relay).await {
        Ok(u) => u,
        Err(e) => {
            let refusal = Refusal::plain(502, format!("moat: cannot reach {host}:{port}: {e}\n"));
            return refuse(shared, stream, tls, &host, &refusal).await;
        }
    };
    let client = BufReader::new(stream);
    if relay.endpoint.inspected() {
        inspect::tunnel(shared, client, &caller, Target { host, port, relay, upstream }).await;
    } else {
        super::proxy::relay_l4(shared, client, upstream, &caller, relay, &host, port).await;
    }
}

/// Whether a server name or Host (a port and a final dot allowed) is `name`.
fn same_name(asked: &str, name: &str) -> bool {
    let host = match asked.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => asked,
    };
    host.trim_end_matches('.').eq_ignore_ascii_case(name)
}

/// Sends `refusal`: as is to a plain-HTTP client; to a TLS client after a
/// handshake with the sandbox CA's leaf for `host` and its request head
/// (HTTP/1.1), or its first streams (HTTP/2, when it offers only h2).
async fn refuse(shared: &Shared, mut stream: TcpStream, tls: Option<Alpn>, host: &str, refusal: &Refusal) {
    let Some(alpn) = tls else {
        let _ = stream.write_all(&inspect::refusal_response(refusal)).await;
        return;
    };
    let h2 = alpn == Alpn::H2Only;
    let Ok(server) = shared.ca.server_config(host, h2) else { return };
    if !h2 {
        return super::refused_tunnel::http1_in_tls(shared, stream, server, refusal).await;
    }
    let accept = tokio_rustls::TlsAcceptor::from(server).accept(stream);
    let Ok(Ok(tls)) = tokio::time::timeout(shared.limits.head_timeout, accept).await else { return };
    refuse_h2(shared, tls, refusal).await
}

/// Answers every stream of an HTTP/2 connection with `refusal` (status,
/// `X-Moat-Denied`, body: what `inspect::refusal_response` sends HTTP/1
/// clients; HTTP/2 has no reason phrase; a gRPC request gets it as gRPC
/// status, `h2::grpc_answer`), then ends it with GOAWAY once one
/// is answered. Bounded: a few streams, the head bound on header lists,
/// the head deadline for the first stream and again for the goodbye.
async fn refuse_h2<S>(shared: &Shared, tls: S, refusal: &Refusal)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let answered = Arc::new(tokio::sync::Notify::new());
    let (done, refusal) = (answered.clone(), refusal.clone());
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        done.notify_one();
        let mut answer = h2_refusal(&refusal);
        if super::h2::is_grpc(req.headers()) {
            let message = refusal.summary.clone().unwrap_or_else(|| refusal.body.trim().to_string());
            answer = super::h2::grpc_answer(answer, &message, http_body_util::Full::default());
        }
        std::future::ready(Ok::<_, std::convert::Infallible>(answer))
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(4)
        .max_header_list_size(u32::try_from(shared.limits.max_head).unwrap_or(u32::MAX))
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = answered.notified() => {}
        _ = tokio::time::sleep(shared.limits.head_timeout) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(shared.limits.head_timeout, conn).await;
}

/// The refusal as an HTTP/2 response.
fn h2_refusal(r: &Refusal) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(r.body.clone())));
    *resp.status_mut() = hyper::StatusCode::from_u16(r.status).unwrap_or(hyper::StatusCode::FORBIDDEN);
    let h = resp.headers_mut();
    h.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    let summary = r.summary.as_deref().map(|s| s.chars().take(300).collect::<String>());
    if let Some(v) = summary.and_then(|s| hyper::header::HeaderValue::from_str(&s).ok()) {
        h.insert("x-moat-denied", v);
    }
    resp
}

/// Waits (up to the head deadline) for the first bytes to show a whole
/// ClientHello or request head, reading nothing (MSG_PEEK): the relay
/// that follows sees the connection untouched. `None`: closed or silent.
async fn opening(stream: &TcpStream, shared: &Shared) -> Option<Opening> {
    let deadline = tokio::time::Instant::now() + shared.limits.head_timeout;
    let mut buf = vec![0u8; shared.limits.max_head];
    let mut seen = 0;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        let b = &buf[..n];
        let found = if b[0] == 0x16 { client_hello(b) } else { request_host(b) };
        if let Some(o) = found {
            return Some(o);
        }
        if n == buf.len() {
            return Some(Opening::Other);
        }
        // Incomplete: peek returns at once while no more has come.
        if n == seen {
            tokio::time::sleep(Duration::from_millis(2)).await;
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
        }
        seen = n;
    }
}

/// A whole ClientHello's server name; `None` while incomplete.
fn client_hello(mut b: &[u8]) -> Option<Opening> {
    let mut acceptor = rustls::server::Acceptor::default();
    while !b.is_empty() {
        match acceptor.read_tls(&mut b) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Some(Opening::Other),
        }
    }
    match acceptor.accept() {
        Ok(Some(a)) => {
            let hello = a.client_hello();
            // The rule `inspect::tunnel` serves HTTP/2 by.
            let h2_only = hello.alpn().is_some_and(|offered| {
                let offered: Vec<&[u8]> = offered.collect();
                offered.contains(&&b"h2"[..]) && !offered.contains(&&b"http/1.1"[..])
            });
            let alpn = if h2_only { Alpn::H2Only } else { Alpn::Http1 };
            Some(Opening::Tls(hello.server_name().map(str::to_string), alpn))
        }
        Ok(None) => None,
        Err(_) => Some(Opening::Other),
    }
}

/// A whole request head's Host; `None` while incomplete.
fn request_host(b: &[u8]) -> Option<Opening> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(b) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some(Opening::Other),
    }
    let host = req.headers.iter().find(|h| h.name.eq_ignore_ascii_case("host"));
    Some(Opening::Http(host.map(|h| String::from_utf8_lossy(h.value).trim().to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_without_port_dot_or_case() {
        assert!(same_name("Up.Test", "up.test"));
        assert!(same_name("up.test:443", "up.test"));
        assert!(same_name("up.test.", "up.test"));
        assert!(!same_name("other.test", "up.test"));
        assert!(!same_name("up.test.evil", "up.test"));
    }

    #[test]
    fn openings() {
        assert!(
            matches!(request_host(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"), Some(Opening::Http(Some(h))) if h == "a.test")
        );
        assert!(request_host(b"GET / HTTP/1.1\r\nHost: a.te").is_none());
        assert!(matches!(request_host(b"GET / HTTP/1.1\r\n\r\n"), Some(Opening::Http(None))));
        assert!(matches!(request_host(b"SSH-2.0-OpenSSH\r\n"), Some(Opening::Other)));
        assert!(matches!(client_hello(&[0x16, 3, 1, 0, 1, 0xff]), None | Some(Opening::Other)));
    }
}
