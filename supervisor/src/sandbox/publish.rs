//! Published ports (`moat run -p [HOST_IP:]HOST_PORT:SANDBOX_PORT`): the
//! supervisor listens on the host and relays each connection into the
//! sandbox's network namespace to 127.0.0.1:SANDBOX_PORT, opening that
//! socket from a helper thread inside the namespace. Guards against a
//! sandbox reachable by surprise (nothing is published unless asked, and
//! the sandbox's own ports stay in its namespace), against an agent serving
//! on a port nobody published (Landlock lets it bind only these: see
//! `launch::landlock`), and against strangers on a non-loopback address
//! (refused without `--publish-token`; with it, the first request head of
//! every connection must carry `Authorization: Bearer TOKEN`, which is
//! removed before the sandbox sees the request, or the connection gets a
//! 401 and never reaches the sandbox).
#![forbid(unsafe_code)]
use crate::sandbox::netns::Netns;
use crate::sandbox::state::{self, Paths};
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("-p {spec:?}: {why} (want [HOST_IP:]HOST_PORT:SANDBOX_PORT)")]
    Spec { spec: String, why: String },
    #[error("-p {0}: not on loopback, so it needs --publish-token (anyone who can reach the address could use it)")]
    NeedsToken(SocketAddr),
    #[error("-p {0}: published twice")]
    Twice(SocketAddr),
    #[error("-p ...:{0}: that is the egress gateway's port in the sandbox, not a service of the agent")]
    GatewayPort(u16),
    #[error("--publish-token without -p or --expose: nothing is published")]
    TokenWithoutPort,
    #[error("publishing {0}: cannot listen on the host")]
    Listen(SocketAddr, #[source] io::Error),
    #[error(
        "the sandbox may not bind port {0}: Landlock rights are fixed at start; run it with --expose {0} (or -p ...:{0}) to publish that port later"
    )]
    NotExposed(u16),
}

/// One published port, as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// Where the supervisor listens on the host.
    pub host: SocketAddr,
    /// Where it connects inside the sandbox (127.0.0.1).
    pub sandbox_port: u16,
}

/// What `moat ls` shows of a published port (never the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shown {
    pub host: String,
    pub sandbox_port: u16,
    pub token: bool,
}

/// Parses `[HOST_IP:]HOST_PORT:SANDBOX_PORT`; HOST_IP defaults to
/// 127.0.0.1, an IPv6 one is written in brackets (`[::1]:8080:80`).
pub fn parse(spec: &str) -> Result<Publish, PublishError> {
    let bad = |why: &str| PublishError::Spec { spec: spec.to_string(), why: why.to_string() };
    let port = |s: &str, what: &str| -> Result<u16, PublishError> {
        match s.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(bad(&format!("{what} {s:?} is not a port (1-65535)"))),
        }
    };
    let (rest, sandbox) = spec.rsplit_once(':').ok_or_else(|| bad("no SANDBOX_PORT"))?;
    let sandbox_port = port(sandbox, "SANDBOX_PORT")?;
    let (ip, host_port) = match rest.rsplit_once(':') {
        None => (IpAddr::V4(Ipv4Addr::LOCALHOST), rest),
        Some((ip, p)) => {
            let ip = ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')).unwrap_or(ip);
            (ip.parse::<IpAddr>().map_err(|_| bad(&format!("HOST_IP {ip:?} is not an IP address")))?, p)
        }
    };
    Ok(Publish { host: SocketAddr::new(ip, port(host_port, "HOST_PORT")?), sandbox_port })
}

/// Checks a run's ports together: no host address twice, not the gateway's
/// port, and a token for any address not on loopback; `exposed` (ports the
/// sandbox may bind, to publish later) are neither 0 nor the gateway's.
pub fn check(ports: &[Publish], exposed: &[u16], token: bool, gateway_port: u16) -> Result<(), PublishError> {
    if token && ports.is_empty() && exposed.is_empty() {
        return Err(PublishError::TokenWithoutPort);
    }
    for &port in exposed {
        if port == 0 {
            return Err(PublishError::Spec { spec: "--expose 0".into(), why: "port 0 is any port".into() });
        }
        if port == gateway_port {
            return Err(PublishError::GatewayPort(port));
        }
    }
    for (i, p) in ports.iter().enumerate() {
        if ports[..i].iter().any(|q| q.host == p.host) {
            return Err(PublishError::Twice(p.host));
        }
        if p.sandbox_port == gateway_port {
            return Err(PublishError::GatewayPort(p.sandbox_port));
        }
        if !p.host.ip().is_loopback() && !token {
            return Err(PublishError::NeedsToken(p.host));
        }
    }
    Ok(())
}

/// A new bearer token: 32 random bytes, hex.
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    super::sys::random_bytes(&mut b);
    hex::encode(b)
}

/// The ports the agent may bind: the published ones and those exposed to
/// be published later (`run --expose`).
pub(crate) fn sandbox_ports(ports: &[Publish], exposed: &[u16]) -> Vec<u16> {
    let mut v: Vec<u16> = ports.iter().map(|p| p.sandbox_port).chain(exposed.iter().copied()).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The published ports of a running sandbox (runtime: gone with its supervisor).
fn shown_file(paths: &Paths) -> std::path::PathBuf {
    paths.run.join("published.json")
}

/// What `moat ls` shows for the sandbox at `paths`: empty unless it runs with ports.
pub fn published(paths: &Paths) -> Vec<Shown> {
    let Ok(f) = std::fs::File::open(shown_file(paths)) else { return Vec::new() };
    let mut bytes = Vec::new();
    // A few hundred bytes per port; anything larger is not ours.
    if f.take(1 << 20).read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    serde_json::from_slice(&bytes).unwrap_or_default()
}

/// Connections relayed at once per port; more wait in the host's backlog.
const MAX_CONNECTIONS: usize = 128;
/// The first request head of a token-protected connection: its bound and
/// how long the client has to send it.
const MAX_HEAD: usize = 16 << 10;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The host sockets, bound before the sandbox starts (a port in use fails the run).
pub(crate) struct Listeners {
    ports: Vec<(Publish, TcpListener)>,
    token: Option<Arc<str>>,
}

impl Listeners {
    pub(crate) fn bind(ports: &[Publish], token: Option<&str>) -> Result<Listeners, PublishError> {
        let ports = ports
            .iter()
            .map(|p| TcpListener::bind(p.host).map(|l| (*p, l)).map_err(|e| PublishError::Listen(p.host, e)))
            .collect::<Result<_, _>>()?;
        Ok(Listeners { ports, token: token.map(Arc::from) })
    }

    /// Starts relaying into `netns` (a descriptor of its own is kept) and
    /// records the ports for `moat ls`. Relaying stops when the result drops.
    pub(crate) fn start(self, netns: &Netns, paths: &Paths) -> Result<Relay, crate::sandbox::SandboxError> {
        // Ports published earlier (`moat publish`) stay listed.
        let mut shown = published(paths);
        shown.extend(self.ports.iter().map(|(p, _)| Shown {
            host: p.host.to_string(),
            sandbox_port: p.sandbox_port,
            token: self.token.is_some(),
        }));
        if !shown.is_empty() {
            let json = serde_json::to_vec(&shown).map_err(|e| crate::sandbox::SandboxError::Refused(e.to_string()))?;
            state::write_runtime(&shown_file(paths), &json)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut fds = Vec::new();
        for (p, listener) in self.ports {
            let ns = Arc::new(netns.try_clone().map_err(|source| crate::sandbox::SandboxError::Io {
                what: "the sandbox network namespace".into(),
                source,
            })?);
            let fd = listener.try_clone().map_err(|source| crate::sandbox::SandboxError::Io {
                what: format!("published port {}", p.host),
                source,
            })?;
            fds.push(fd);
            let (token, stop, sandbox) = (self.token.clone(), stop.clone(), paths.name.clone());
            std::thread::spawn(move || accept_loop(listener, p, ns, token, stop, sandbox));
        }
        Ok(Relay { listeners: fds, stop })
    }
}

/// Publishes ports of a running sandbox (`moat publish`, through the
/// control socket): only ports the sandbox was allowed to bind at start,
/// under the same rules as `run -p` (a token off loopback, the run's token
/// for every port).
pub(crate) struct Live {
    netns: Netns,
    paths: Paths,
    bindable: Vec<u16>,
    gateway_port: u16,
    token: Option<String>,
    state: std::sync::Mutex<(Vec<Publish>, Vec<Relay>)>,
}

impl Live {
    pub(crate) fn new(
        netns: &Netns,
        paths: &Paths,
        bindable: Vec<u16>,
        gateway_port: u16,
        token: Option<String>,
        published: &[Publish],
    ) -> io::Result<Live> {
        let state = std::sync::Mutex::new((published.to_vec(), Vec::new()));
        Ok(Live { netns: netns.try_clone()?, paths: paths.clone(), bindable, gateway_port, token, state })
    }

    fn publish_one(&self, spec: &str) -> Result<Vec<Shown>, PublishError> {
        let p = parse(spec)?;
        if !self.bindable.contains(&p.sandbox_port) {
            return Err(PublishError::NotExposed(p.sandbox_port));
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = state.0.clone();
        all.push(p);
        check(&all, &[], self.token.is_some(), self.gateway_port)?;
        let relay = Listeners::bind(&[p], self.token.as_deref())?
            .start(&self.netns, &self.paths)
            .map_err(|e| PublishError::Listen(p.host, io::Error::other(moat_builder::errors::chain(&e))))?;
        state.0.push(p);
        state.1.push(relay);
        tracing::info!(event = "port_published", sandbox = %self.paths.name, host = %p.host, sandbox_port = p.sandbox_port);
        Ok(published(&self.paths))
    }
}

impl crate::gateway::control::Publisher for Live {
    fn publish(&self, spec: &str) -> Result<serde_json::Value, String> {
        self.publish_one(spec).map(|shown| serde_json::json!(shown)).map_err(|e| moat_builder::errors::chain(&e))
    }
}

/// The running relays; dropping this closes the host ports.
pub(crate) struct Relay {
    listeners: Vec<TcpListener>,
    stop: Arc<AtomicBool>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for l in &self.listeners {
            // Wakes the accept loop (accept fails on a shut-down socket); the
            // loop's own descriptor closes when it returns.
            let _ = nix::sys::socket::shutdown(l.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    p: Publish,
    ns: Arc<Netns>,
    token: Option<Arc<str>>,
    stop: Arc<AtomicBool>,
    sandbox: String,
) {
    let busy = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else {
            // A client that reset before accept, or no descriptors left: go on after a breath.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            busy.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(event = "publish_busy", sandbox = %sandbox, host = %p.host, "too many connections: closed");
            continue;
        }
        let (ns, token, busy, sandbox) = (ns.clone(), token.clone(), busy.clone(), sandbox.clone());
        std::thread::spawn(move || {
            if let Err(e) = serve(conn, p, &ns, token.as_deref(), &sandbox) {
                tracing::debug!(event = "publish_relay_ended", sandbox = %sandbox, host = %p.host, error = %e);
            }
            busy.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// One host connection: the token checked (if any), then relayed both ways.
fn serve(mut conn: TcpStream, p: Publish, ns: &Netns, token: Option<&str>, sandbox: &str) -> io::Result<()> {
    let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut first = Vec::new();
    if let Some(token) = token {
        let head = read_head(&mut conn)?;
        conn.set_read_timeout(None)?;
        match head.as_deref().map(|h| strip_token(h, token)) {
            Some(Some(stripped)) => first = stripped,
            refused => {
                let why = if refused.is_none() { "no complete request head" } else { "no valid bearer token" };
                tracing::warn!(event = "publish_refused", sandbox = %sandbox, host = %p.host, peer = %peer, reason = why);
                let body = "moat: this published port needs the header Authorization: Bearer TOKEN\n";
                let answer = format!(
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"moat\"\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                return conn.write_all(answer.as_bytes());
            }
        }
    }
    let mut up = ns.connect(p.sandbox_port).map_err(io::Error::other)?;
    up.write_all(&first)?;
    let (mut conn_r, mut up_w) = (conn.try_clone()?, up.try_clone()?);
    let upward = std::thread::spawn(move || {
        let _ = io::copy(&mut conn_r, &mut up_w);
        let _ = up_w.shutdown(Shutdown::Write);
    });
    let _ = io::copy(&mut up, &mut conn);
    let _ = conn.shutdown(Shutdown::Write);
    let _ = upward.join();
    Ok(())
}

/// Reads up to the end of the first request head (bounded in size and
/// time); `None` if the client closed, was too slow, or sent more than
/// `MAX_HEAD` without ending it. What follows the head in the same read is
/// kept after it.
fn read_head(conn: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let deadline = std::time::Instant::now() + HEAD_TIMEOUT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while head_end(&buf).is_none() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if buf.len() > MAX_HEAD || left.is_zero() {
            return Ok(None);
        }
        conn.set_read_timeout(Some(left))?;
        let n = match conn.read(&mut chunk) {
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Ok(None),
            r => r?,
        };
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(buf))
}

/// Where the head ends (after its blank line).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The bytes with the head's `Authorization: Bearer TOKEN` line removed, if
/// the head has one with this token; `None` otherwise.
fn strip_token(bytes: &[u8], token: &str) -> Option<Vec<u8>> {
    let end = head_end(bytes)?;
    let (head, rest) = bytes.split_at(end);
    let mut out = Vec::with_capacity(bytes.len());
    let mut found = false;
    for (i, line) in head.split_inclusive(|b| *b == b'\n').enumerate() {
        if i > 0 && !found && is_our_bearer(line, token) {
            found = true;
            continue;
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(rest);
    found.then_some(out)
}

fn is_our_bearer(line: &[u8], token: &str) -> bool {
    let Ok(line) = std::str::from_utf8(line) else { return false };
    let Some((name, value)) = line.split_once(':') else { return false };
    if !name.eq_ignore_ascii_case("authorization") {
        return false;
    }
    let Some((scheme, given)) = value.trim().split_once(' ') else { return false };
    scheme.eq_ignore_ascii_case("bearer") && same(given.trim().as_bytes(), token.as_bytes())
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Relays the published ports into the sandbox's namespace `netns` and
/// lets its gateway publish more later (`moat publish`).
pub(crate) fn serve_ports(
    netns: &Netns,
    gateway: &crate::gateway::Shared,
    published: Listeners,
    req: &crate::sandbox::RunRequest,
    paths: &Paths,
) -> Result<Relay, crate::sandbox::SandboxError> {
    let relay = published.start(netns, paths)?;
    let bindable = sandbox_ports(&req.publish, &req.expose);
    let live =
        Live::new(netns, paths, bindable, req.policy.network.gateway_port, req.publish_token.clone(), &req.publish)
            .map_err(|source| crate::sandbox::SandboxError::Io {
                what: "the sandbox network namespace".into(),
                source,
            })?;
    let _ = gateway.publisher.set(Box::new(live));
    Ok(relay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs_with_and_without_host_ip() {
        let p = parse("8080:80").unwrap();
        assert_eq!((p.host.to_string(), p.sandbox_port), ("127.0.0.1:8080".to_string(), 80));
        assert_eq!(parse("0.0.0.0:1:2").unwrap().host.to_string(), "0.0.0.0:1");
        assert_eq!(parse("[::1]:8080:80").unwrap().host.to_string(), "[::1]:8080");
        for bad in ["80", "x:80", "8080:0", "8080:70000", "host:1:2", "1:2:3:4", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn checks_token_duplicates_and_the_gateway() {
        let lo = parse("8080:80").unwrap();
        let all = parse("0.0.0.0:8081:80").unwrap();
        assert!(check(&[lo], &[], false, 3128).is_ok());
        assert!(matches!(check(&[all], &[], false, 3128), Err(PublishError::NeedsToken(_))));
        assert!(check(&[all], &[], true, 3128).is_ok());
        assert!(matches!(check(&[lo, lo], &[], false, 3128), Err(PublishError::Twice(_))));
        assert!(matches!(check(&[parse("1:3128").unwrap()], &[], false, 3128), Err(PublishError::GatewayPort(_))));
        assert!(matches!(check(&[], &[], true, 3128), Err(PublishError::TokenWithoutPort)));
        // A token with ports exposed only for later is what `moat publish` off loopback needs.
        assert!(check(&[], &[8080], true, 3128).is_ok());
        assert!(matches!(check(&[], &[3128], false, 3128), Err(PublishError::GatewayPort(3128))));
        assert!(matches!(check(&[], &[0], false, 3128), Err(PublishError::Spec { .. })));
    }

    #[test]
    fn token_line_is_required_and_removed() {
        let req = b"GET / HTTP/1.1\r\nHost: x\r\nauthorization:  bearer  T0K\r\nX: y\r\n\r\nbody";
        assert_eq!(strip_token(req, "T0K").unwrap(), b"GET / HTTP/1.1\r\nHost: x\r\nX: y\r\n\r\nbody");
        assert!(strip_token(req, "T0").is_none());
        assert!(strip_token(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "T0K").is_none());
        // Only in the head: a body line is not a header.
        assert!(strip_token(b"POST / HTTP/1.1\r\n\r\nAuthorization: Bearer T0K\r\n", "T0K").is_none());
        // The request line is not a header either.
        assert!(strip_token(b"Authorization: Bearer T0K\r\n\r\n", "T0K").is_none());
    }
}
