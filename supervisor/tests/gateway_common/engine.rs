//! An egress gateway started in the test process (the supervisor library's
//! `gateway::start`, as `moat run` starts it), listening on loopback in the
//! host namespace: the test process itself is the caller the gateway
//! identifies through /proc. Upstreams live in a namespace the test made
//! (`UpNet`), reached on 198.18.0.0/15 addresses named by a hosts map.
#![allow(dead_code)]
use super::{TestCa, UpNet, Upstream};
use moat_supervisor::gateway::{
    self, ca::Ca, control, events::EventLog, identity::Identity, revisions::RevisionStore, ssrf::Resolver, Limits,
};
use moat_supervisor::policy::network::Network;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Upstreams shared by every test of a binary: HTTP on 80, HTTPS on 443
/// and 8443 (test CA), all named `up.test`.
pub struct Ups {
    pub net: UpNet,
    pub ca: TestCa,
    pub http: Upstream,
    pub https: Upstream,
    pub https_alt: Upstream,
}

pub fn ups() -> &'static Ups {
    static U: OnceLock<Ups> = OnceLock::new();
    U.get_or_init(|| {
        let net = UpNet::create(1);
        let ca = TestCa::new(&["up.test", "other.test", "*.up.test"]);
        // Read by the gateway's upstream TLS client when it starts.
        std::env::set_var("MOAT_GATEWAY_UPSTREAM_CA", &ca.pem_file);
        let http = Upstream::serve(net.listen(80), None, None);
        let https = Upstream::serve(net.listen(443), Some(ca.server.clone()), None);
        let https_alt = Upstream::serve(net.listen(8443), Some(ca.server.clone()), None);
        Ups { net, ca, http, https, https_alt }
    })
}

/// A running in-process gateway.
pub struct Gw {
    pub shared: Arc<gateway::Shared>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// The test binary's own path: what the gateway will identify us as.
pub fn me() -> String {
    std::fs::read_link("/proc/self/exe").unwrap().to_string_lossy().into_owned()
}

/// A network section: gateway port 3128 plus `rules` (TOML `[[policy]]`
/// tables, where `{me}` stands for this test binary and `{ip}` for the
/// upstream's address).
pub fn network(rules: &str) -> Network {
    let u = ups();
    let text = format!("gateway_port = 3128\n{}", rules.replace("{me}", &me()).replace("{ip}", &u.net.ip.to_string()));
    let n: Network = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    n.validate().unwrap();
    n
}

pub fn hosts() -> HashMap<String, Vec<IpAddr>> {
    let ip: IpAddr = ups().net.ip.into();
    let mut m = HashMap::new();
    for n in ["up.test", "other.test", "a.up.test", "a.b.up.test"] {
        m.insert(n.to_string(), vec![ip]);
    }
    m.insert("private.test".into(), vec!["10.1.2.3".parse().unwrap()]);
    m.insert("loop.test".into(), vec!["127.0.0.1".parse().unwrap()]);
    m.insert("mixed.test".into(), vec![ip, "10.0.0.1".parse().unwrap()]);
    m.insert("mapped.test".into(), vec!["::ffff:127.0.0.1".parse().unwrap()]);
    // Further SSRF names (tests/gateway_guard.rs): 0.0.0.0 reaches local
    // listeners on Linux; a name for the metadata address; IPv6 loopback;
    // the NAT64 form of 127.0.0.1.
    m.insert("zero.test".into(), vec!["0.0.0.0".parse().unwrap()]);
    m.insert("meta.test".into(), vec!["169.254.169.254".parse().unwrap()]);
    m.insert("v6loop.test".into(), vec!["::1".parse().unwrap()]);
    m.insert("nat64loop.test".into(), vec!["64:ff9b::7f00:1".parse().unwrap()]);
    m
}

impl Gw {
    pub fn start(rules: &str) -> Gw {
        Gw::start_in(tempfile::tempdir().unwrap(), rules, Limits::default())
    }

    /// Starts on the state in `dir` (revisions, audit log): a restart.
    pub fn start_in(dir: tempfile::TempDir, rules: &str, limits: Limits) -> Gw {
        let _ = ups();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let config = gateway::Config {
            sandbox: "t".into(),
            network: network(rules),
            revisions: RevisionStore::at(dir.path().join("network")),
            events: EventLog::open(&dir.path().join("audit.log")).unwrap(),
            identity: Identity::for_own_netns().unwrap(),
            resolver: Resolver::new(Some(hosts())).with_hosts_only(true),
            ca: Arc::new(Ca::new("t").unwrap()),
            control_socket: Some(dir.path().join("control.sock")),
            limits,
            inference: Arc::new(moat_supervisor::gateway::inference::Inference::load(
                dir.path().to_path_buf(),
                moat_supervisor::secrets::credentials::Store::at(dir.path().join("credentials")),
            )),
        };
        let h = gateway::start(config, listener).expect("gateway starts");
        Gw { shared: h.shared, addr, dir }
    }

    pub fn control(&self, req: &control::Request) -> Result<serde_json::Value, control::ControlError> {
        control::call(&self.dir.path().join("control.sock"), req)
    }

    /// The audit log's events.
    pub fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// Sends a CONNECT; returns the stream and the status line + head.
    pub fn tunnel(&self, authority: &str) -> (TcpStream, u16, String) {
        let mut s = self.connect();
        write!(s, "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").unwrap();
        let (status, head) = read_head(&mut s);
        (s, status, head)
    }

    /// One raw exchange: writes `req`, reads the whole answer until close.
    pub fn raw(&self, req: &[u8]) -> String {
        let mut s = self.connect();
        s.write_all(req).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The gateway's CA as a rustls client config (what the sandbox trusts).
    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        client_tls_for(&self.shared.ca.cert_pem())
    }
}

/// Reads a response head byte by byte (leaves the body in the stream).
pub fn read_head(s: &mut impl Read) -> (u16, String) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

pub fn client_tls_for(pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// TLS over an established tunnel.
pub fn tls(
    s: TcpStream,
    host: &str,
    config: Arc<rustls::ClientConfig>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    rustls::StreamOwned::new(conn, s)
}

/// Sends one HTTP/1.1 request on a kept-alive stream; returns (status, body).
pub fn request(s: &mut (impl Read + Write), method: &str, host: &str, path: &str, body: &[u8]) -> (u16, String) {
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n", body.len()).unwrap();
    s.write_all(body).unwrap();
    s.flush().unwrap();
    read_response(s)
}

/// Reads one response with a Content-Length or chunked body.
pub fn read_response(s: &mut impl Read) -> (u16, String) {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut len = None;
    let mut chunked = false;
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse::<usize>().ok();
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16).unwrap();
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..n]);
            if n == 0 {
                break;
            }
        }
    } else if let Some(n) = len {
        body.resize(n, 0);
        r.read_exact(&mut body).unwrap();
    }
    // The BufReader may hold no more than this response: requests are sequential.
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub fn state_dir(g: &Gw) -> PathBuf {
    g.dir.path().to_path_buf()
}
