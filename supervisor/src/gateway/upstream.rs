//! The gateway's side toward an upstream: where a request is going (a
//! CONNECT authority split into host and port) and the connection to it,
//! made only to addresses the decision already validated (no second DNS
//! lookup, so no rebinding between the check and the dial). Guards against
//! an authority that smuggles a path, user info or a space into the host.
#![forbid(unsafe_code)]
use super::decide::Relay;
use super::Shared;
use std::time::Duration;
use tokio::net::TcpStream;

/// Time the upstream may take to start answering (model calls are slow).
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(600);

/// Splits a CONNECT authority `host:port` / `[v6]:port`.
pub(crate) fn split_authority(a: &str) -> Option<(String, u16)> {
    let (host, port) = a.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|&p| p != 0)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return None;
    }
    Some((host.to_string(), port))
}

/// Connects to the first validated address that answers.
pub(crate) async fn dial(shared: &Shared, relay: &Relay) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for a in &relay.addrs {
        match tokio::time::timeout(shared.limits.connect_timeout, TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {a} timed out")),
        }
    }
    Err(last)
}

/// `host[:port]` for a Host header or an authority (the scheme's
/// `default_port` left out, IPv6 in brackets).
pub(crate) fn authority(host: &str, port: u16, default_port: u16) -> String {
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    if port == default_port {
        host
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert_eq!(split_authority("example.com:443"), Some(("example.com".into(), 443)));
        assert_eq!(split_authority("[::1]:8443"), Some(("::1".into(), 8443)));
        assert_eq!(split_authority("example.com"), None);
        assert_eq!(split_authority("example.com:0"), None);
        assert_eq!(split_authority("a@b:443"), None);
        assert_eq!(split_authority(":443"), None);
    }
}
