//! HTTP/2 through an inspected tunnel, in process: a client that offers
//! only h2 (as gRPC does) is served HTTP/2 by the gateway; each stream is
//! checked like an HTTP/1 request (read-only refuses a POST, with the
//! refusal's body and X-Moat-Denied), its `:authority` held to the
//! tunnel's host, and relayed to an HTTP/2 upstream with trailers kept
//! (`grpc-status`), or to an HTTP/1.1-only upstream. A client that offers
//! HTTP/1.1 as well still gets HTTP/1.1. The caller is this test binary.
mod gateway_common;

use bytes::Bytes;
use gateway_common::engine::{ups, Gw};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RULES: &str = r#"
[[policy]]
name = "h2"
binaries = ["{me}"]
[[policy.endpoint]]
host = "up.test"
port = 9443
protocol = "rest"
access = "read-only"
allowed_ips = ["198.18.0.0/15"]
[[policy.endpoint]]
host = "up.test"
port = 443
protocol = "rest"
access = "read-only"
allowed_ips = ["198.18.0.0/15"]
"#;

/// An HTTP/2-only upstream on up.test:9443 (the test CA): answers
/// `h2 METHOD PATH` and the trailer `grpc-status: 0`.
fn h2_upstream() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let listener = ups().net.listen(9443);
        listener.set_nonblocking(true).unwrap();
        let mut tls = (*ups().ca.server).clone();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let tls = Arc::new(tls);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((s, _)) = l.accept().await else { continue };
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let Ok(s) = tokio_rustls::TlsAcceptor::from(tls).accept(s).await else { return };
                        let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                            let text = format!("h2 {} {}", req.method(), req.uri().path());
                            let mut trailers = hyper::HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            let frames = vec![
                                Ok::<_, Infallible>(Frame::data(Bytes::from(text))),
                                Ok(Frame::trailers(trailers)),
                            ];
                            Ok::<_, Infallible>(Response::new(StreamBody::new(futures_util::stream::iter(frames))))
                        });
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(s), svc)
                            .await;
                    });
                }
            });
        });
    });
}

/// A tunnel through the gateway to up.test:`port`, TLS offering `alpn`;
/// returns the TLS stream and what was negotiated.
async fn tunnel(g: &Gw, port: u16, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut s = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    s.write_all(format!("CONNECT up.test:{port} HTTP/1.1\r\nHost: up.test:{port}\r\n\r\n").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    let mut config = (*g.client_tls()).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from("up.test").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, s).await.unwrap()
}

type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn h2_client(g: &Gw, port: u16) -> Sender {
    let tls = tunnel(g, port, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "an h2-only client is served h2");
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    send
}

/// (status, x-moat-denied, body, grpc-status trailer)
async fn call(send: &mut Sender, method: &str, uri: &str) -> (u16, String, String, Option<String>) {
    let body = if method == "CONNECT" { Bytes::new() } else { Bytes::from_static(b"x") };
    let req = Request::builder().method(method).uri(uri).body(Full::new(body)).unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let denied = resp.headers().get("x-moat-denied").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let collected = resp.into_body().collect().await.unwrap();
    let trailer = collected.trailers().and_then(|t| t.get("grpc-status")).map(|v| v.to_str().unwrap().to_string());
    (status, denied, String::from_utf8_lossy(&collected.to_bytes()).into_owned(), trailer)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn an_h2_only_client_is_inspected_stream_by_stream_with_trailers_kept() {
    h2_upstream();
    let g = Gw::start(RULES);
    rt().block_on(async {
        let mut send = h2_client(&g, 9443).await;
        let (status, _, body, trailer) = call(&mut send, "GET", "https://up.test:9443/hello").await;
        assert_eq!((status, body.as_str(), trailer.as_deref()), (200, "h2 GET /hello", Some("0")));
        // A write on a read-only endpoint: refused on its own stream.
        let (status, denied, body, _) = call(&mut send, "POST", "https://up.test:9443/hello").await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("POST") && denied.starts_with("moat denied"), "{denied} / {body}");
        // The connection goes on: another stream, another check.
        let (status, _, body, _) = call(&mut send, "GET", "https://up.test:9443/again").await;
        assert_eq!((status, body.as_str()), (200, "h2 GET /again"));
        // Another host's authority inside this tunnel.
        let (status, _, body, _) = call(&mut send, "GET", "https://other.test:9443/x").await;
        assert_eq!(status, 421, "{body}");
        // Extended CONNECT (WebSocket over h2) is not relayed.
        let (status, _, _, _) = call(&mut send, "CONNECT", "up.test:9443").await;
        assert_eq!(status, 403);
    });
    // Each refusal closes the connection (as on HTTP/1): a new one for the next.
    rt().block_on(async {
        // A Host header naming another virtual host than :authority (fronting).
        let mut send = h2_client(&g, 9443).await;
        let req = Request::builder()
            .uri("https://up.test:9443/fronted")
            .header("host", "internal.up.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 421, "a Host that is not :authority is refused");
    });
    let events = g.events();
    let decisions: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            (
                e["decision"].as_str().unwrap().into(),
                e["method"].as_str().unwrap().into(),
                e["path"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(decisions.contains(&("allow".into(), "GET".into(), "/hello".into())), "{decisions:?}");
    assert!(decisions.contains(&("deny".into(), "POST".into(), "/hello".into())), "{decisions:?}");
    assert!(decisions.iter().any(|d| d.0 == "deny" && d.1 == "CONNECT"), "{decisions:?}");
    assert!(!decisions.iter().any(|d| d.2 == "/fronted" && d.0 == "allow"), "{decisions:?}");
}

#[test]
fn a_revoked_tunnel_refuses_its_next_stream_and_ends_the_connection() {
    h2_upstream();
    let g = Gw::start(RULES);
    rt().block_on(async {
        let mut send = h2_client(&g, 9443).await;
        assert_eq!(call(&mut send, "GET", "https://up.test:9443/before").await.0, 200);
        let network: moat_supervisor::policy::network::Network = toml::from_str("gateway_port = 3128\n").unwrap();
        g.control(&moat_supervisor::gateway::control::Request::SetNetwork {
            network: Box::new(network),
            why: "revoke".into(),
        })
        .unwrap();
        let (status, _, body, _) = call(&mut send, "GET", "https://up.test:9443/after").await;
        assert_eq!(status, 403, "{body}");
        // GOAWAY: once it has reached the client, the connection takes no new
        // stream (one sent before it arrived is still checked, and refused).
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let req = Request::builder().uri("https://up.test:9443/again").body(Full::new(Bytes::new())).unwrap();
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let _ = send.ready().await;
            send.send_request(req).await
        })
        .await;
        assert!(matches!(next, Ok(Err(_))), "a stream after the revocation: {next:?}");
    });
}

#[test]
fn an_idle_connection_is_ended() {
    h2_upstream();
    let limits =
        moat_supervisor::gateway::Limits { idle_timeout: std::time::Duration::from_secs(1), ..Default::default() };
    let g = Gw::start_in(tempfile::tempdir().unwrap(), RULES, limits);
    rt().block_on(async {
        let mut send = h2_client(&g, 9443).await;
        assert_eq!(call(&mut send, "GET", "https://up.test:9443/a").await.0, 200);
        // Busy within the limit: still open.
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        assert_eq!(call(&mut send, "GET", "https://up.test:9443/b").await.0, 200);
        // Idle past it: GOAWAY, no new stream.
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        let req = Request::builder().uri("https://up.test:9443/c").body(Full::new(Bytes::new())).unwrap();
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let _ = send.ready().await;
            send.send_request(req).await
        })
        .await;
        assert!(matches!(next, Ok(Err(_))), "a stream after the idle limit: {next:?}");
    });
}

#[test]
fn an_h2_client_reaches_an_http1_upstream_and_a_client_offering_both_gets_http1() {
    let g = Gw::start(RULES);
    rt().block_on(async {
        let mut send = h2_client(&g, 443).await;
        let (status, _, _, _) = call(&mut send, "GET", "https://up.test/plain").await;
        assert_eq!(status, 200);
        let seen = ups().https.seen();
        assert!(seen.iter().any(|s| s.method == "GET" && s.path == "/plain"), "the HTTP/1.1 upstream saw it");

        let tls = tunnel(&g, 443, &[b"h2", b"http/1.1"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]), "HTTP/1.1 when the client offers it");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        let req = Request::builder().uri("/h1").header("host", "up.test").body(Empty::<Bytes>::new()).unwrap();
        assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    });
}
