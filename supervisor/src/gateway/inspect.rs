//! Request-by-request relaying: the plain-HTTP forward path and the L7 path
//! inside a TLS-terminated tunnel both read one request head, check it,
//! stream its body upstream, and stream the response back (keep-alive,
//! chunked bodies, `Expect: 100-continue`, WebSocket upgrades where the
//! rule allows them). Guards against smuggling (strict framing from
//! `http1`, refused on conflict), against domain fronting (the Host header
//! must name the tunnel's host; on the forward path it is replaced by the
//! target's authority), and against a tunnel outliving its rule (each
//! request re-checks the policy generation).
#![forbid(unsafe_code)]
use super::decide::{self, Identified, Refusal, Relay};
use super::events::{Decision, Event};
use super::http1::{self, RequestHead};
use super::identity::Caller;
use super::inference::{is_inference_host, INFERENCE_HOST};
use super::Shared;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest line of a chunked body (size plus extensions).
const MAX_CHUNK_LINE: usize = 4096;

/// Waits up to `idle` for a request to start, then gives its head
/// `head_timeout` to arrive whole (the slowloris bound holds for every
/// request of a kept-alive connection). Err is the response to send.
pub(crate) async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(
    shared: &Shared,
    r: &mut R,
    idle: Duration,
) -> Result<Option<RequestHead>, Vec<u8>> {
    use tokio::io::AsyncBufReadExt;
    match tokio::time::timeout(idle, r.fill_buf()).await {
        Err(_) => return Ok(None), // idle: close quietly
        Ok(Err(_)) => return Ok(None),
        Ok(Ok([])) => return Ok(None),
        Ok(Ok(_)) => {}
    }
    match tokio::time::timeout(shared.limits.head_timeout, http1::read_request_head(r, shared.limits.max_head)).await {
        Err(_) => {
            Err(http1::simple_response(408, "Request Timeout", "moat: request head not received in time\n", true))
        }
        Ok(Ok(h)) => Ok(h),
        Ok(Err(http1::HttpError::Io(_) | http1::HttpError::UnexpectedEof)) => Ok(None),
        Ok(Err(e)) => {
            tracing::info!(event = "gateway_bad_request", error = %moat_builder::errors::chain(&e), "malformed request refused");
            Err(http1::simple_response(
                e.status(),
                http1::reason(e.status()),
                &format!("moat: {}\n", moat_builder::errors::chain(&e)),
                true,
            ))
        }
    }
}

/// The next request head of a kept-alive connection, or None when the
/// connection is done (closed, idle, or refused: the refusal is sent).
async fn next_head<C: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    client: &mut BufReader<C>,
) -> Option<RequestHead> {
    match read_head(shared, client, shared.limits.idle_timeout).await {
        Ok(h) => h,
        Err(resp) => {
            let _ = client.get_mut().write_all(&resp).await;
            None
        }
    }
}

/// The refusal as a response: a policy refusal's summary is its reason
/// phrase and its `X-Moat-Denied` field (bounded; escaped when made).
pub(crate) fn refusal_response(r: &Refusal) -> Vec<u8> {
    const TEXT: &str = "text/plain; charset=utf-8";
    match &r.summary {
        Some(s) => {
            let s: String = s.chars().take(300).collect();
            http1::response_with(r.status, &s, &[("X-Moat-Denied", &s)], TEXT, &r.body, true)
        }
        None => http1::simple_response(r.status, http1::reason(r.status), &r.body, true),
    }
}

/// The refusal of request `head` as its client reads it: git's own calls
/// get it in git's protocol (git drops an HTTP error's body on them).
fn request_refusal(head: &RequestHead, r: &Refusal) -> Vec<u8> {
    match super::git_rpc::service(head) {
        Some(s) => super::git_rpc::refusal_response(r, s),
        None => refusal_response(r),
    }
}

/// `http://host[:port]/path` -> (host, port, origin-form path).
fn parse_absolute(target: &str) -> Option<(String, u16, String)> {
    let rest = target.strip_prefix("http://").or_else(|| {
        let (scheme, rest) = target.split_once("://")?;
        scheme.eq_ignore_ascii_case("http").then_some(rest)
    })?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return None; // userinfo in a proxy target: refused, never forwarded
    }
    let (host, port) = match super::upstream::split_authority(authority) {
        Some(hp) => hp,
        None => (authority.trim_start_matches('[').trim_end_matches(']').to_string(), 80),
    };
    if host.is_empty() {
        return None;
    }
    let path = if path.starts_with('?') { format!("/{path}") } else { path.to_string() };
    Some((host, port, path))
}

/// The plain-HTTP forward proxy loop (absolute-form requests).
pub(crate) async fn forward(
    shared: &Arc<Shared>,
    client: &mut BufReader<TcpStream>,
    first: Option<RequestHead>,
    caller: &Identified,
) {
    let mut upstream: Option<(String, u16, Relay, BufReader<TcpStream>)> = None;
    let mut next = first;
    loop {
        let mut head = match next.take() {
            Some(h) => h,
            None => match next_head(shared, client).await {
                Some(h) => h,
                None => return,
            },
        };
        let proc_ = caller.as_ref().ok().map(|c| &c.process);
        let target = parse_absolute(&head.target);
        // inference.local, in absolute form or (plain HTTP) by its Host header.
        let inference_path = match &target {
            Some((host, _, path)) if is_inference_host(host) => Some(path.clone()),
            None if head.target.starts_with('/')
                && head.header("host").is_some_and(|v| is_inference_host(&String::from_utf8_lossy(v))) =>
            {
                Some(head.target.clone())
            }
            _ => None,
        };
        // moat.local (the agents' API), the same two ways.
        let moat_path = match &target {
            Some((host, _, path)) if super::asks::is_moat_host(host) => Some(path.clone()),
            None if head.target.starts_with('/')
                && head.header("host").is_some_and(|v| super::asks::is_moat_host(&String::from_utf8_lossy(v))) =>
            {
                Some(head.target.clone())
            }
            _ => None,
        };
        if let Some(path) = moat_path {
            return super::asks::handle(shared, client, head, &path, caller).await;
        }
        if let Some(path) = inference_path {
            if !crate::gateway::inference::relay::handle(shared, client, head, &path, proc_).await {
                return;
            }
            continue;
        }
        let Some((host, port, path)) = target else {
            let (status, body) = if head.target.starts_with("https://") {
                (400, "moat: use CONNECT for https:// (set HTTPS_PROXY)\n")
            } else {
                (400, "moat: this is an HTTP proxy: send absolute-form requests (set HTTP_PROXY)\n")
            };
            let _ =
                client.get_mut().write_all(&http1::simple_response(status, http1::reason(status), body, true)).await;
            return;
        };
        let cur_gen = shared.current().generation;
        let reuse = upstream.as_ref().is_some_and(|(h, p, r, _)| *h == host && *p == port && r.generation == cur_gen);
        if !reuse {
            upstream = None;
        }
        let relay = match &upstream {
            Some((_, _, r, _)) => {
                // Same destination and policy: one event per request all the same.
                if !r.endpoint.inspected() {
                    if let Ok(c) = caller {
                        shared.events.record(&Event::new(
                            Some(&c.process),
                            &host,
                            port,
                            &head.method,
                            &path,
                            if r.audit { Decision::Audit } else { Decision::Allow },
                            &r.policy,
                            "",
                        ));
                    }
                }
                r.clone()
            }
            None => match decide::destination(shared, caller, &host, port, &head.method, &path).await {
                Ok(r) => r,
                Err(refusal) => {
                    let _ = client.get_mut().write_all(&refusal_response(&refusal)).await;
                    return;
                }
            },
        };
        let Ok(c) = caller else { return };
        if relay.endpoint.inspected() {
            if let Err(refusal) = decide::request(shared, c, &relay, &host, port, &head, &path) {
                let _ = client.get_mut().write_all(&request_refusal(&head, &refusal)).await;
                return;
            }
            strip_routing_headers(&mut head);
        }
        if upstream.is_none() {
            match super::upstream::dial(shared, &relay).await {
                Ok(s) => upstream = Some((host.clone(), port, relay, BufReader::new(s))),
                Err(e) => {
                    let body = format!("moat: cannot reach {host}:{port}: {e}\n");
                    let _ = client.get_mut().write_all(&http1::simple_response(502, "Bad Gateway", &body, true)).await;
                    return;
                }
            }
        }
        // RFC 9112 §3.2.2: the Host the decision was made for, never the
        // client's (which could name another virtual host behind the same front door).
        head.set_header("Host", super::upstream::authority(&host, port, 80));
        let Some((_, _, _, up)) = upstream.as_mut() else { return };
        if exchange(shared, client, up, head, &path).await != Flow::KeepAlive {
            return;
        }
    }
}

/// `https://inference.local`: TLS terminated with a leaf for the name,
/// then every request goes to the inference relay.
pub(crate) async fn inference_tunnel(
    shared: &Arc<Shared>,
    client: BufReader<TcpStream>,
    caller: Option<&super::identity::Proc>,
) {
    let Ok(server) = shared.ca.server_config(INFERENCE_HOST, false) else { return };
    let accept = tokio_rustls::TlsAcceptor::from(server).accept(client);
    let Ok(Ok(tls)) = tokio::time::timeout(shared.limits.head_timeout, accept).await else { return };
    let mut client = BufReader::new(tls);
    loop {
        let Some(head) = next_head(shared, &mut client).await else { return };
        let path = head.target.clone();
        if !path.starts_with('/')
            || !crate::gateway::inference::relay::handle(shared, &mut client, head, &path, caller).await
        {
            let _ = client.get_mut().shutdown().await;
            return;
        }
    }
}

/// Why upstream TLS failed; an unknown issuer says how a private CA is
/// trusted (the endpoint names it), unless the endpoint already names one.
fn upstream_tls_error(e: &std::io::Error, names_a_ca: bool) -> String {
    let mut s = format!("upstream TLS: {e}");
    if !names_a_ca && s.contains("UnknownIssuer") {
        s.push_str(" (a private CA: name it with upstream_ca in the endpoint)");
    }
    s
}

/// An inspected tunnel's destination, already decided and dialled.
pub(crate) struct Target {
    pub host: String,
    pub port: u16,
    pub relay: Relay,
    pub upstream: TcpStream,
}

/// Terminates the client's TLS with a leaf for the tunnel's host, opens
/// verified TLS upstream, then checks and relays each request. A client
/// whose first byte is not a TLS handshake speaks plain HTTP in the tunnel
/// (`curl -p`, WebSocket clients that always tunnel, on a plain-HTTP port):
/// its requests are checked the same way and relayed over plain TCP.
pub(crate) async fn tunnel(shared: &Arc<Shared>, mut client: BufReader<TcpStream>, caller: &Caller, t: Target) {
    let Target { host, port, relay, upstream } = t;
    let policy = relay.policy.clone();
    let deny_event = |reason: &str| {
        shared.events.record(&Event::new(
            Some(&caller.process),
            &host,
            port,
            "CONNECT",
            "",
            Decision::Deny,
            &policy,
            reason,
        ));
    };
    // The first byte says which: 0x16 opens a TLS handshake record.
    let first = match tokio::time::timeout(shared.limits.head_timeout, client.fill_buf()).await {
        Ok(Ok(b)) if !b.is_empty() => b[0],
        _ => return,
    };
    if first != TLS_HANDSHAKE {
        let mut up = BufReader::new(upstream);
        return requests(shared, caller, relay, &host, port, &mut client, &mut up, 80).await;
    }
    // The ClientHello first: a client that offers only h2 (gRPC, HTTP/2-only
    // libraries) is served HTTP/2 (`super::h2`); any other keeps HTTP/1.1.
    let hello = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), client);
    let start = match tokio::time::timeout(shared.limits.head_timeout, hello).await {
        Ok(Ok(s)) => s,
        _ => return,
    };
    let h2_only = start.client_hello().alpn().is_some_and(|offered| {
        let offered: Vec<&[u8]> = offered.collect();
        offered.contains(&&b"h2"[..]) && !offered.contains(&&b"http/1.1"[..])
    });
    let server = match shared.ca.server_config(&host, h2_only) {
        Ok(c) => c,
        Err(e) => return deny_event(&moat_builder::errors::chain(&e)),
    };
    let up = async {
        let name = super::ca::server_name(&host).map_err(|e| moat_builder::errors::chain(&e))?;
        // An endpoint naming its upstream's CA trusts that CA only.
        let config = match &relay.endpoint.upstream_ca {
            Some(pem) => super::ca::pinned_client(pem).map_err(|e| moat_builder::errors::chain(&e))?,
            None => shared.upstream_tls().map_err(|e| e.to_string())?,
        };
        let config = if h2_only { super::ca::offering_h2(&config) } else { config };
        let connector = tokio_rustls::TlsConnector::from(config);
        match tokio::time::timeout(shared.limits.connect_timeout, connector.connect(name, upstream)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(upstream_tls_error(&e, relay.endpoint.upstream_ca.is_some())),
            Err(_) => Err("upstream TLS handshake timed out".to_string()),
        }
    };
    let accept = tokio::time::timeout(shared.limits.head_timeout, start.into_stream(server));
    let (up, accepted) = tokio::join!(up, accept);
    let Ok(Ok(tls)) = accepted else { return };
    let mut client = BufReader::new(tls);
    let up = match up {
        Ok(u) => u,
        Err(e) => {
            deny_event(&e);
            let body = format!("moat: cannot reach {host}:{port}: {e}\n");
            let _ = client.get_mut().write_all(&http1::simple_response(502, "Bad Gateway", &body, true)).await;
            let _ = client.get_mut().shutdown().await;
            return;
        }
    };
    if h2_only {
        let upstream_h2 = up.get_ref().1.alpn_protocol() == Some(b"h2");
        return super::h2::serve(shared, caller, relay, &host, port, client.into_inner(), up, upstream_h2).await;
    }
    let mut up = BufReader::new(up);
    requests(shared, caller, relay, &host, port, &mut client, &mut up, 443).await;
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Checks and relays each request of an inspected tunnel (TLS terminated or
/// plain); `default_port` is the port a Host header without one means.
#[allow(clippy::too_many_arguments)]
async fn requests<C, U>(
    shared: &Arc<Shared>,
    caller: &Caller,
    mut relay: Relay,
    host: &str,
    port: u16,
    client: &mut BufReader<C>,
    up: &mut BufReader<U>,
    default_port: u16,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let deny_event = |reason: &str, policy: &str| {
        shared.events.record(&Event::new(
            Some(&caller.process),
            host,
            port,
            "CONNECT",
            "",
            Decision::Deny,
            policy,
            reason,
        ));
    };
    loop {
        let Some(mut head) = next_head(shared, client).await else { return };
        relay = match decide::recheck(shared, caller, &relay, host, port) {
            Ok(r) => r,
            Err(reason) => {
                shared.events.record(&Event::new(
                    Some(&caller.process),
                    host,
                    port,
                    &head.method,
                    &head.target,
                    Decision::Revoke,
                    &relay.policy,
                    &reason,
                ));
                let body = format!("moat: {reason}; reconnect\n");
                let _ = client.get_mut().write_all(&http1::simple_response(403, "Forbidden", &body, true)).await;
                return;
            }
        };
        let refusal = if !head.target.starts_with('/') {
            Some(Refusal::plain(400, "moat: requests in a tunnel use origin-form targets\n".into()))
        } else if !host_header_matches(&head, host, port, default_port) {
            deny_event("Host header does not name the tunnel's host", &relay.policy);
            Some(Refusal::plain(421, format!("moat: Host header must be {host} in a tunnel to {host}\n")))
        } else {
            decide::request(shared, caller, &relay, host, port, &head, &head.target).err()
        };
        if let Some(r) = refusal {
            let _ = client.get_mut().write_all(&request_refusal(&head, &r)).await;
            let _ = client.get_mut().shutdown().await;
            return;
        }
        let path = head.target.clone();
        strip_routing_headers(&mut head);
        if exchange(shared, client, up, head, &path).await != Flow::KeepAlive {
            let _ = client.get_mut().shutdown().await;
            return;
        }
    }
}

/// Removes the headers some frameworks (Symfony, IIS URL Rewrite) route by
/// instead of the request line: on an inspected endpoint the path the rule
/// checked is the one the upstream routes.
fn strip_routing_headers(head: &mut RequestHead) {
    head.remove_header("X-Original-URL");
    head.remove_header("X-Rewrite-URL");
}

fn host_header_matches(head: &RequestHead, host: &str, port: u16, default_port: u16) -> bool {
    let Some(v) = head.header("host").and_then(|v| std::str::from_utf8(v).ok()) else { return false };
    let v = v.trim();
    let (h, p) = match super::upstream::split_authority(v) {
        Some((h, p)) => (h, p),
        None => (v.trim_start_matches('[').trim_end_matches(']').to_string(), default_port),
    };
    h.eq_ignore_ascii_case(host) && (p == port || (port == default_port && !v.contains(':')))
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    KeepAlive,
    Close,
}

/// Relays one request (head already read and allowed) and its response.
async fn exchange<C, U>(
    shared: &Shared,
    client: &mut BufReader<C>,
    up: &mut BufReader<U>,
    mut head: RequestHead,
    path: &str,
) -> Flow
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let framing = match http1::request_framing(&head) {
        Ok(f) => f,
        Err(e) => {
            let _ = client
                .get_mut()
                .write_all(&http1::simple_response(
                    e.status(),
                    http1::reason(e.status()),
                    &format!("moat: {}\n", moat_builder::errors::chain(&e)),
                    true,
                ))
                .await;
            return Flow::Close;
        }
    };
    let upgrade = http1::is_upgrade(&head);
    let upgrade_value = head.header("upgrade").map(|v| v.to_vec());
    let client_close = http1::wants_close_request(&head);
    let expect = head.header("expect").is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
    head.headers.retain(|(n, _)| !n.eq_ignore_ascii_case("expect") || !expect);
    http1::strip_hop_by_hop(&mut head.headers);
    if let (Some(_), Some(v)) = (&upgrade, upgrade_value) {
        head.headers.push(("Connection".into(), b"Upgrade".to_vec()));
        head.headers.push(("Upgrade".into(), v));
    }
    let method = head.method.clone();
    if expect && client.get_mut().write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
        return Flow::Close;
    }
    if up.get_mut().write_all(&http1::write_request_head(&head, path)).await.is_err() {
        return bad_gateway(client, "the upstream closed the connection").await;
    }
    if let Err(e) = http1::copy_body(&framing, client, up.get_mut(), MAX_CHUNK_LINE).await {
        tracing::info!(event = "gateway_request_body", error = %moat_builder::errors::chain(&e), "request body relay failed");
        return Flow::Close;
    }
    if up.get_mut().flush().await.is_err() {
        return bad_gateway(client, "the upstream closed the connection").await;
    }
    let resp = loop {
        let r = match tokio::time::timeout(
            super::upstream::RESPONSE_TIMEOUT,
            http1::read_response_head(up, shared.limits.max_head),
        )
        .await
        {
            Err(_) => return bad_gateway(client, "the upstream did not answer in time").await,
            Ok(Err(e)) => {
                return bad_gateway(client, &format!("bad upstream response: {}", moat_builder::errors::chain(&e)))
                    .await
            }
            Ok(Ok(None)) => return bad_gateway(client, "the upstream closed the connection").await,
            Ok(Ok(Some(r))) => r,
        };
        if (100..200).contains(&r.status) && r.status != 101 {
            if r.status != 100 || !expect {
                let _ = client.get_mut().write_all(&http1::write_response_head(&r)).await;
            }
            continue;
        }
        break r;
    };
    if resp.status == 101 && upgrade.is_some() {
        if client.get_mut().write_all(&http1::write_response_head(&resp)).await.is_err() {
            return Flow::Close;
        }
        let _ = tokio::io::copy_bidirectional(client, up).await;
        return Flow::Close;
    }
    let rframing = match http1::response_framing(&method, &resp) {
        Ok(f) => f,
        Err(e) => {
            return bad_gateway(client, &format!("bad upstream response: {}", moat_builder::errors::chain(&e))).await
        }
    };
    let server_close = http1::wants_close_response(&resp) || matches!(rframing, http1::Framing::UntilClose);
    let mut resp = resp;
    http1::strip_hop_by_hop(&mut resp.headers);
    if server_close || client_close {
        resp.headers.push(("Connection".into(), b"close".to_vec()));
    }
    if client.get_mut().write_all(&http1::write_response_head(&resp)).await.is_err() {
        return Flow::Close;
    }
    if http1::copy_body(&rframing, up, client.get_mut(), MAX_CHUNK_LINE).await.is_err() {
        return Flow::Close;
    }
    if client.get_mut().flush().await.is_err() || server_close || client_close {
        return Flow::Close;
    }
    Flow::KeepAlive
}

async fn bad_gateway<C: AsyncRead + AsyncWrite + Unpin>(client: &mut BufReader<C>, why: &str) -> Flow {
    let _ =
        client.get_mut().write_all(&http1::simple_response(502, "Bad Gateway", &format!("moat: {why}\n"), true)).await;
    Flow::Close
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_targets() {
        assert_eq!(parse_absolute("http://a.example/x?y"), Some(("a.example".into(), 80, "/x?y".into())));
        assert_eq!(parse_absolute("http://a.example:8080"), Some(("a.example".into(), 8080, "/".into())));
        assert_eq!(parse_absolute("HTTP://a.example?q"), Some(("a.example".into(), 80, "/?q".into())));
        assert_eq!(parse_absolute("http://[::1]:81/"), Some(("::1".into(), 81, "/".into())));
        assert_eq!(parse_absolute("http://user:pw@a.example/"), None);
        assert_eq!(parse_absolute("https://a.example/"), None);
        assert_eq!(parse_absolute("/x"), None);
        assert_eq!(super::super::upstream::authority("a.example", 80, 80), "a.example");
        assert_eq!(super::super::upstream::authority("a.example", 8080, 80), "a.example:8080");
        assert_eq!(super::super::upstream::authority("::1", 81, 80), "[::1]:81");
        assert_eq!(super::super::upstream::authority("::1", 443, 443), "[::1]");
    }
}
