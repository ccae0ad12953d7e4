//! Test helpers for registry tests: a real Debian `docker-registry` on a free
//! loopback port with a fresh storage directory (plain HTTP, or TLS with a test
//! CA plus a separate server certificate and htpasswd basic auth), test images
//! written straight into an OCI layout with the Store API, and a runner for the
//! `moat` binary with its own MOAT_HOME.
use moat_builder::digest::Digest;
use moat_builder::oci::{
    Descriptor, ImageConfig, Manifest, RootFs, MEDIA_CONFIG, MEDIA_LAYER_GZIP, MEDIA_LAYER_TAR, MEDIA_MANIFEST,
};
use moat_builder::{cjson, Store};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "moat-tester";
pub const PASS: &str = "s3cret-pass";

/// A running docker-registry, killed on drop.
pub struct Registry {
    pub addr: String,
    pub dir: tempfile::TempDir,
    pub ca: Option<PathBuf>,
    child: std::sync::Mutex<Child>,
}

fn need(bin: &str) {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file())).unwrap_or(false);
    assert!(found, "{bin} is missing: run scripts/install-deps.sh (Debian package providing {bin})");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Registry {
    /// Plain HTTP, no auth.
    pub fn plain() -> Registry {
        Registry::start(false)
    }
    /// TLS (test CA + server certificate for 127.0.0.1) and htpasswd basic auth (USER/PASS).
    pub fn tls_auth() -> Registry {
        Registry::start(true)
    }

    fn start(tls: bool) -> Registry {
        need("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            d.join("storage").display()
        );
        let mut ca = None;
        if tls {
            need("htpasswd");
            let (ca_pem, cert_pem, key_pem) = make_certs();
            std::fs::write(d.join("ca.pem"), ca_pem).unwrap();
            std::fs::write(d.join("server.pem"), cert_pem).unwrap();
            std::fs::write(d.join("server.key"), key_pem).unwrap();
            let out = Command::new("htpasswd").args(["-Bbn", USER, PASS]).output().unwrap();
            assert!(out.status.success(), "htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            std::fs::write(d.join("htpasswd"), &out.stdout).unwrap();
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: moat-test\n    path: {}\n",
                d.join("server.pem").display(),
                d.join("server.key").display(),
                d.join("htpasswd").display()
            ));
            ca = Some(d.join("ca.pem"));
        }
        std::fs::write(d.join("config.yml"), cfg).unwrap();
        let child = spawn(d, &addr);
        Registry { addr, dir, ca, child: std::sync::Mutex::new(child) }
    }

    /// Kills the registry (SIGKILL) and starts it again on the same port and storage.
    pub fn restart(&self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        *child = spawn(self.dir.path(), &self.addr);
    }

    /// The file holding blob `d` in the registry's storage.
    pub fn blob_file(&self, d: &Digest) -> PathBuf {
        self.dir.path().join("storage/docker/registry/v2/blobs/sha256").join(&d.hex()[..2]).join(d.hex()).join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Ok(child) = self.child.get_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts docker-registry with `dir/config.yml` and waits until it listens on `addr`.
fn spawn(d: &Path, addr: &str) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(d.join("registry.log")).unwrap();
    let mut child = Command::new("docker-registry")
        .arg("serve")
        .arg(d.join("config.yml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if TcpStream::connect(addr).is_ok() {
            return child;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "docker-registry exited ({st}): {}",
                std::fs::read_to_string(d.join("registry.log")).unwrap_or_default()
            );
        }
        assert!(start.elapsed() < Duration::from_secs(20), "docker-registry did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A CA (self-signed) and a server certificate for 127.0.0.1/localhost signed by it (PEM).
fn make_certs() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "moat test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut srv = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    srv.distinguished_name.push(DnType::CommonName, "moat test registry");
    let cert = srv.signed_by(&key, &ca_cert, &ca_key).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// Deterministic pseudo-random bytes (xorshift64*), so layers differ per seed.
pub struct Noise {
    state: u64,
    left: u64,
}
impl Noise {
    pub fn new(seed: u64, len: u64) -> Noise {
        Noise { state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, left: len }
    }
}
impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left as usize) / 8 * 8;
        let n = if n == 0 { buf.len().min(self.left as usize) } else { n };
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let v = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Writes an image with one layer (a tar holding `data.bin` of `size`
/// pseudo-random bytes; gzip-compressed when `gzip`) into `store` as `name`.
/// Streams: memory use does not grow with `size`.
pub fn make_image(store: &Store, name: &str, seed: u64, size: u64, gzip: bool) -> Descriptor {
    let mut w = store.blob_writer().unwrap();
    let diff_id;
    {
        // The tar streams through a hashing writer (diff_id) into the blob,
        // through a gzip encoder when asked.
        let mut header = tar::Header::new_ustar();
        header.set_path("data.bin").unwrap();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        if gzip {
            let enc = flate2::write::GzEncoder::new(&mut w, flate2::Compression::fast());
            let hw = moat_builder::digest::HashingWriter::new(enc);
            let mut b = tar::Builder::new(hw);
            b.append(&header, Noise::new(seed, size)).unwrap();
            let hw = b.into_inner().unwrap();
            let (enc, d, _) = hw.finish();
            enc.finish().unwrap();
            diff_id = d;
        } else {
            let hw = moat_builder::digest::HashingWriter::new(&mut w);
            let mut b = tar::Builder::new(hw);
            b.append(&header, Noise::new(seed, size)).unwrap();
            let hw = b.into_inner().unwrap();
            let (_, d, _) = hw.finish();
            diff_id = d;
        }
    }
    let (layer, layer_size) = w.commit(None).unwrap();
    let config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        rootfs: RootFs { kind: "layers".into(), diff_ids: vec![diff_id] },
        ..ImageConfig::default()
    };
    let cbytes = cjson::to_vec(&config).unwrap();
    let cd = store.put_blob(&cbytes).unwrap();
    let desc = |mt: &str, d: Digest, size: u64| Descriptor {
        media_type: mt.into(),
        digest: d,
        size,
        annotations: Default::default(),
        platform: None,
    };
    let m = Manifest {
        schema_version: 2,
        artifact_type: None,
        media_type: Some(MEDIA_MANIFEST.into()),
        config: desc(MEDIA_CONFIG, cd, cbytes.len() as u64),
        layers: vec![desc(if gzip { MEDIA_LAYER_GZIP } else { MEDIA_LAYER_TAR }, layer, layer_size)],
        annotations: Default::default(),
    };
    let mbytes = cjson::to_vec(&m).unwrap();
    let md = store.put_blob(&mbytes).unwrap();
    let d = desc(MEDIA_MANIFEST, md, mbytes.len() as u64);
    store.set_ref(name, d.clone()).unwrap();
    d
}

/// Runs `moat` with `MOAT_HOME` = `home` and the given stdin.
pub fn moat(home: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moat"));
    cmd.args(args).env("MOAT_HOME", home).env_remove("MOAT_STORE").env("HOME", home).env_remove("DOCKER_CONFIG");
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// `moat` that must succeed; returns trimmed stdout.
pub fn moat_ok(home: &Path, args: &[&str]) -> String {
    let out = moat(home, args, None);
    assert!(
        out.status.success(),
        "moat {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `moat` that must fail; returns stderr.
pub fn moat_err(home: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = moat(home, args, stdin);
    assert!(
        !out.status.success(),
        "moat {args:?} should have failed; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// The skopeo policy file skopeo copy needs (FIELD-NOTES).
pub fn skopeo_policy(dir: &Path) -> PathBuf {
    let p = dir.join("policy.json");
    std::fs::write(&p, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();
    p
}

/// Runs skopeo, asserting success.
pub fn skopeo(args: &[&str]) {
    need("skopeo");
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(out.status.success(), "skopeo {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}
