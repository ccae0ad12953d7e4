//! How a refused CONNECT is answered, so that the client shows its user
//! why: the 403 whose reason phrase and `X-Moat-Denied` header name the
//! binary, the destination and the approval id (python's clients and npm
//! print it; pip prints nothing else), or, for a caller that runs libcurl
//! and asked for port 443, the refusal inside the tunnel. libcurl (curl,
//! git) prints a refused tunnel only as `CONNECT tunnel failed, response
//! 403`, dropping the reason phrase and the body; so the tunnel is
//! accepted, TLS is terminated with the sandbox CA's leaf for the name
//! asked (as transparent egress answers its refusals) and the first
//! request gets the same 403 and text/plain body, which curl prints and
//! git shows as `remote:` lines (docs/egress.md: per client).
//! Threat: a readable refusal that lets something through. Nothing is
//! dialed here (the caller holds no `Relay`), the decision, its audit
//! record and its approval were made before, and one request head is read
//! and answered, then the connection is closed.
#![forbid(unsafe_code)]
use super::decide::{Identified, Refusal};
use super::inspect;
use super::Shared;
use std::io::Read;
use std::sync::Arc;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The only port whose refusal is answered inside TLS: the client is
/// expected to send a ClientHello first (on other ports the server may
/// speak first, or the protocol is unknown).
const TLS_PORT: u16 = 443;
/// Most bytes of /proc/PID/maps read to find libcurl (its libraries are
/// mapped early, near the executable's own lines).
const MAX_MAPS: u64 = 1 << 20;

/// Answers `refusal` to a CONNECT for `host:port` whose head has been read
/// from `client`.
pub(super) async fn answer(
    shared: &Arc<Shared>,
    mut client: BufReader<TcpStream>,
    caller: &Identified,
    host: &str,
    port: u16,
    refusal: &Refusal,
) {
    // Bytes pipelined behind the CONNECT cannot be a ClientHello the
    // client waited to send: those get the plain answer.
    let in_tls = port == TLS_PORT && client.buffer().is_empty() && runs_libcurl(caller).await;
    let server = if in_tls { shared.ca.server_config(host, false).ok() } else { None };
    let Some(server) = server else {
        let _ = client.get_mut().write_all(&inspect::refusal_response(refusal)).await;
        return;
    };
    let mut stream = client.into_inner();
    if stream.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await.is_err() {
        return;
    }
    // HTTP/1.1 only: libcurl offers it by ALPN (a client offering h2 alone
    // fails the handshake and is closed).
    http1_in_tls(shared, stream, server, refusal).await;
}

/// Answers `refusal` inside TLS with `server` (the sandbox CA's leaf for
/// the name asked): the handshake and one request head, each within the
/// head deadline, then the refusal, then the connection is closed. Also
/// transparent egress's answer to an HTTP/1.1 TLS client it refuses.
pub(super) async fn http1_in_tls(
    shared: &Shared,
    stream: TcpStream,
    server: Arc<rustls::ServerConfig>,
    refusal: &Refusal,
) {
    let accept = tokio_rustls::TlsAcceptor::from(server).accept(stream);
    let Ok(Ok(tls)) = tokio::time::timeout(shared.limits.head_timeout, accept).await else { return };
    let mut tls = BufReader::new(tls);
    if let Ok(Some(_)) = inspect::read_head(shared, &mut tls, shared.limits.head_timeout).await {
        let _ = tls.get_mut().write_all(&inspect::refusal_response(refusal)).await;
    }
    let _ = tls.get_mut().shutdown().await;
}

/// Whether the caller's process has libcurl mapped (read off the reactor;
/// an unidentified caller or unreadable maps: no).
async fn runs_libcurl(caller: &Identified) -> bool {
    let Ok(c) = caller else { return false };
    let pid = c.process.pid;
    tokio::task::spawn_blocking(move || {
        let mut maps = Vec::new();
        let f = std::fs::File::open(format!("/proc/{pid}/maps"));
        f.and_then(|f| f.take(MAX_MAPS).read_to_end(&mut maps)).is_ok() && maps_libcurl(&maps)
    })
    .await
    .unwrap_or(false)
}

/// Whether a maps text names a libcurl shared object (`libcurl.so.4`,
/// Debian's `libcurl-gnutls.so.4`, ...).
fn maps_libcurl(maps: &[u8]) -> bool {
    maps.split(|&b| b == b'\n').any(|line| {
        let file = line.rsplit(|&b| b == b'/').next().unwrap_or_default();
        file.starts_with(b"libcurl") && file.windows(3).any(|w| w == b".so")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libcurl_is_found_by_its_shared_object() {
        let curl = b"55d0-55d1 r-xp 00000000 00:2a 12 /usr/bin/curl\n\
                     7f00-7f01 r-xp 00000000 00:2a 34 /usr/lib/x86_64-linux-gnu/libcurl.so.4.8.0\n";
        let git = b"7f00-7f01 r-xp 00000000 00:2a 35 /usr/lib/x86_64-linux-gnu/libcurl-gnutls.so.4.8.0\n";
        let python = b"55d0-55d1 r-xp 00000000 00:2a 12 /usr/bin/python3.11\n\
                       7f00-7f01 r-xp 00000000 00:2a 36 /usr/lib/x86_64-linux-gnu/libssl.so.3\n\
                       7f00-7f01 r--p 00000000 00:2a 37 /sandbox/libcurl-notes.txt\n";
        assert!(maps_libcurl(curl));
        assert!(maps_libcurl(git));
        assert!(!maps_libcurl(python));
        assert!(!maps_libcurl(b""));
    }
}
