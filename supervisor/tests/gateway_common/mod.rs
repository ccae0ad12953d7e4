//! Shared set-up of the egress gateway tests: a network namespace the test
//! creates (veth, addresses from 198.18.0.0/15, the benchmarking range the
//! SSRF guard refuses unless `allowed_ips` opts it in), an independent
//! upstream server inside it (hyper; HTTP and HTTPS with a test CA made
//! here; echo, streaming, big bodies, WebSocket-style upgrade, static
//! files), and a hosts file naming it. Needs root and iproute2
//! (scripts/install-deps.sh).
#![allow(dead_code)]
pub mod engine;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A request the upstream saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    /// The first 4 KiB of the body, lossily decoded.
    pub body: String,
}

/// A network namespace with one veth to the host: the host side is
/// `host_ip`, the namespace side `ip`. Removed on drop.
pub struct UpNet {
    pub name: String,
    pub ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
    veth: String,
}

fn sh(args: &[&str]) {
    let o =
        Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e} (install iproute2)"));
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

impl UpNet {
    /// `slot` (0-63) keeps the namespaces of one test binary apart. The
    /// namespace is named after this process; namespaces left by test
    /// processes that are gone (a static is never dropped) are removed
    /// first, and the /30 is the first one no interface uses.
    pub fn create(slot: u8) -> UpNet {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "the gateway tests need root (network namespaces)");
        remove_stale();
        let pid = std::process::id();
        let name = format!("moat-up-{pid}-{slot}");
        let tag = format!("{}{slot}", pid % 100000);
        let veth = format!("mu{tag}");
        let peer = format!("mv{tag}");
        let used = String::from_utf8_lossy(
            &Command::new("ip").args(["-o", "-4", "addr"]).output().map(|o| o.stdout).unwrap_or_default(),
        )
        .into_owned();
        let (host_ip, ip) = (0u32..16000)
            .map(|i| (i + (pid % 4000) * 4 + slot as u32 * 64) % 16000)
            .map(|i| {
                let base = 4 * i;
                let a = |n: u32| {
                    Ipv4Addr::new(198, 18 + (base >> 16) as u8, (base >> 8) as u8, (base & 0xff) as u8 + n as u8)
                };
                (a(1), a(2))
            })
            .find(|(h, _)| !used.contains(&format!(" {h}/")))
            .expect("a free /30 in 198.18.0.0/15");
        let _ = Command::new("ip").args(["link", "del", &veth]).output();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer]);
        sh(&["ip", "link", "set", &peer, "netns", &name]);
        sh(&["ip", "addr", "add", &format!("{host_ip}/30"), "dev", &veth]);
        sh(&["ip", "link", "set", &veth, "up"]);
        sh(&["ip", "-n", &name, "addr", "add", &format!("{ip}/30"), "dev", &peer]);
        sh(&["ip", "-n", &name, "link", "set", &peer, "up"]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        remove_at_exit(&name);
        UpNet { name, ip, host_ip, veth }
    }

    /// Binds `0.0.0.0:port` inside the namespace (from a helper thread).
    pub fn listen(&self, port: u16) -> std::net::TcpListener {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on a descriptor we hold; changes only this helper thread.
            assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
            std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind in netns")
        })
        .join()
        .expect("netns thread")
    }
}

/// Namespaces this process made, deleted when it exits: the tests keep theirs
/// in statics, which are never dropped.
static AT_EXIT: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn remove_at_exit(name: &str) {
    extern "C" fn remove_all() {
        let names = std::mem::take(&mut *AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()));
        for n in names {
            let _ = Command::new("ip").args(["netns", "del", &n]).output();
        }
    }
    let mut names = AT_EXIT.lock().unwrap_or_else(|e| e.into_inner());
    if names.is_empty() {
        // SAFETY: registers a plain function with no arguments, run by libc's
        // exit(); it only takes a lock and runs `ip`.
        unsafe { libc::atexit(remove_all) };
    }
    names.push(name.to_string());
}

/// Deletes `moat-up-PID-SLOT` namespaces whose PID no longer runs (their
/// veth pairs go with them).
fn remove_stale() {
    let Ok(rd) = std::fs::read_dir("/var/run/netns") else { return };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(pid) =
            n.strip_prefix("moat-up-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &n]).output();
        }
    }
}

impl Drop for UpNet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.veth]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A test CA and a server certificate for `names` signed by it.
pub struct TestCa {
    pub pem_file: PathBuf,
    pub server: Arc<rustls::ServerConfig>,
    _dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new(names: &[&str]) -> TestCa {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, "moat test upstream CA");
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let ca = p.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pem_file = dir.path().join("upstream-ca.pem");
        std::fs::write(&pem_file, ca.pem()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), ca.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        TestCa { pem_file, server: Arc::new(server), _dir: dir }
    }
}

/// The upstream server: serves until the test process ends.
#[derive(Clone)]
pub struct Upstream {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub files: Option<PathBuf>,
}

impl Upstream {
    /// Serves `listener` (plain, or TLS with `tls`) on a runtime thread.
    pub fn serve(
        listener: std::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        files: Option<PathBuf>,
    ) -> Upstream {
        let up = Upstream { seen: Arc::default(), files };
        let u = up.clone();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((s, _)) = l.accept().await else { continue };
                    let _ = s.set_nodelay(true);
                    let u = u.clone();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| u.clone().handle(req));
                        match tls {
                            Some(cfg) => {
                                let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(s).await else { return };
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(s), svc)
                                    .with_upgrades()
                                    .await;
                            }
                            None => {
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(s), svc)
                                    .with_upgrades()
                                    .await;
                            }
                        }
                    });
                }
            });
        });
        up
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn handle(self, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let method = req.method().to_string();
        let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        if req.uri().path() == "/ws" {
            let resp = Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(empty())
                .unwrap();
            tokio::spawn(async move {
                if let Ok(up) = hyper::upgrade::on(req).await {
                    let mut io = TokioIo::new(up);
                    let (mut r, mut w) = tokio::io::split(&mut io);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            self.seen.lock().unwrap().push(Seen { method, path, headers, body_len: 0, body: String::new() });
            return Ok(resp);
        }
        let query = req.uri().query().unwrap_or("").to_string();
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        self.seen.lock().unwrap().push(Seen {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
            body_len: body.len(),
            body: String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned(),
        });
        let p = path.split('?').next().unwrap_or("").to_string();
        if let Some(r) = provider_response(&p, &headers, &body) {
            return Ok(r);
        }
        Ok(match p.as_str() {
            "/stream" => {
                // Chunks 200 ms apart: a buffering proxy would deliver them together.
                let s = futures_util::stream::unfold(0u32, |i| async move {
                    if i == 5 {
                        return None;
                    }
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Some((Ok::<_, Infallible>(Frame::data(Bytes::from(format!("data: chunk {i}\n\n")))), i + 1))
                });
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(BodyExt::boxed(StreamBody::new(s)))
                    .unwrap()
            }
            "/big" => {
                let n: usize = query.strip_prefix("n=").and_then(|n| n.parse().ok()).unwrap_or(1 << 20);
                Response::new(full(vec![b'x'; n]))
            }
            _ => match self.files.as_ref().map(|root| root.join(p.trim_start_matches('/'))) {
                // A directory's index.html (a pip simple page), else the file.
                Some(f) if f.is_dir() && f.join("index.html").is_file() => {
                    static_file(&std::fs::read(f.join("index.html")).unwrap_or_default(), "text/html")
                }
                Some(f) if f.is_file() => {
                    let bytes = std::fs::read(&f).unwrap_or_default();
                    // A packument (npm) is JSON; the rest is bytes.
                    let t = if bytes.first() == Some(&b'{') { "application/json" } else { "application/octet-stream" };
                    static_file(&bytes, t)
                }
                _ => Response::new(full(format!("echo {method} {p} {}\n", body.len()).into_bytes())),
            },
        })
    }
}

fn static_file(bytes: &[u8], content_type: &str) -> Response<Body> {
    Response::builder().header("content-type", content_type).body(full(bytes.to_vec())).unwrap()
}

/// OpenAI- and Anthropic-shaped answers: `/v1/chat/completions`,
/// `/v1/messages` (streamed when the body asks, 200 ms between events, the
/// usage last), `/v1/models`; a key of `bad-key` gets a 401 that echoes it
/// back, as some providers do (`split-key`: echoed in two pieces).
fn provider_response(path: &str, headers: &[(String, String)], body: &[u8]) -> Option<Response<Body>> {
    let h = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str()).unwrap_or("");
    let key = h("authorization").strip_prefix("Bearer ").unwrap_or(h("x-api-key")).to_string();
    let json = |status: u16, v: serde_json::Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(full(v.to_string().into_bytes()))
            .unwrap()
    };
    if !matches!(path, "/v1/chat/completions" | "/v1/messages" | "/v1/models") {
        return None;
    }
    if key.ends_with("split-key") {
        // The echoed key arrives in two pieces, 100 ms apart (two reads).
        let cut = key.len() / 2;
        let parts = vec![
            format!("{{\"error\":{{\"message\":\"Incorrect API key provided: {}", &key[..cut]),
            format!("{}\"}}}}", &key[cut..]),
        ];
        return Some(
            Response::builder()
                .status(401)
                .header("content-type", "application/json")
                .body(paced(parts, Duration::from_millis(100)))
                .unwrap(),
        );
    }
    if key.ends_with("bad-key") {
        return Some(json(
            401,
            serde_json::json!({"error": {"message": format!("Incorrect API key provided: {key}")}}),
        ));
    }
    if path == "/v1/models" {
        return Some(json(200, serde_json::json!({"data": [{"id": "test-model"}]})));
    }
    let req: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let model = req["model"].as_str().unwrap_or("").to_string();
    let anthropic = path == "/v1/messages";
    if req["stream"] != serde_json::Value::Bool(true) {
        return Some(json(
            200,
            if anthropic {
                serde_json::json!({"type": "message", "model": model, "content": [{"type": "text", "text": "hi"}], "usage": {"input_tokens": 11, "output_tokens": 7}})
            } else {
                serde_json::json!({"object": "chat.completion", "model": model, "choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})
            },
        ));
    }
    let events: Vec<String> = if anthropic {
        vec![
            format!("event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"model\":\"{model}\",\"usage\":{{\"input_tokens\":20,\"output_tokens\":1}}}}}}\n\n"),
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"a\"}}\n\n".into(),
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"b\"}}\n\n".into(),
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n".into(),
        ]
    } else {
        vec![
            format!("data: {{\"model\":\"{model}\",\"choices\":[{{\"delta\":{{\"content\":\"a\"}}}}]}}\n\n"),
            "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n".into(),
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":9}}\n\n".into(),
            "data: [DONE]\n\n".into(),
        ]
    };
    Some(
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(paced(events, Duration::from_millis(200)))
            .unwrap(),
    )
}

/// A body sent as `parts`, one frame each, `gap` apart.
fn paced(parts: Vec<String>, gap: Duration) -> Body {
    let s = futures_util::stream::unfold((0usize, parts), move |(i, parts)| async move {
        if i == parts.len() {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        let item = Ok::<_, Infallible>(Frame::data(Bytes::from(parts[i].clone())));
        Some((item, (i + 1, parts)))
    });
    BodyExt::boxed(StreamBody::new(s))
}

fn full(v: Vec<u8>) -> Body {
    BodyExt::boxed(Full::new(Bytes::from(v)))
}
fn empty() -> Body {
    full(Vec::new())
}

/// A hosts-format file for the gateway (`MOAT_GATEWAY_HOSTS`).
pub fn hosts_file(dir: &Path, entries: &[(&str, &str)]) -> PathBuf {
    let p = dir.join("gateway-hosts");
    let mut f = std::fs::File::create(&p).unwrap();
    for (ip, name) in entries {
        writeln!(f, "{ip} {name}").unwrap();
    }
    p
}

/// The address an upstream listens on, for direct comparisons.
pub fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}
