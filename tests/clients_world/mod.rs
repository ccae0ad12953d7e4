//! The world of tests/clients_sandbox.rs: the `agent-clients` image (the
//! agent image's packages plus real clients: aiohttp, `ws`, `@grpc/grpc-js`,
//! built once from the committed lock beside this file), a network namespace
//! the test makes with real servers in it (the host's node running
//! servers.js: a grpc-js server and an HTTPS server with a certificate of a
//! test CA, which serves git's smart HTTP for git.test (the host's `git
//! http-backend` over bare repositories in `git_root`), a `ws` WebSocket
//! server on plain port 80; their packages from this directory's
//! package-lock.json by `npm ci`), a hosts file naming them (grpc.test,
//! web.test, ws.test, git.test), and `moat` run against a home of
//! this test binary's own. Threat: gateway paths proven only with
//! hand-written requests, which real clients (HTTP/2 with gRPC framing, a
//! WebSocket handshake, asyncio HTTP, git's smart HTTP) exercise differently.
#![allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;
#[path = "../common/npm_ci.rs"]
mod npm_ci;
use common::require_tool;
#[path = "../common/stale.rs"]
mod stale;
use stale::remove_stale_sandboxes;

use crate::gateway_common::{hosts_file, UpNet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub struct World {
    /// Emptied at start, reused by every run (a static is never dropped).
    pub home: PathBuf,
    pub net: UpNet,
    pub hosts: PathBuf,
    /// One line per request the servers saw (servers.js).
    pub seen: PathBuf,
    /// The git server's GIT_PROJECT_ROOT: `https://git.test/NAME.git` is
    /// the bare repository `git_root/NAME.git` (see `bare_repo`).
    pub git_root: PathBuf,
    /// The servers; they exit when this process ends (their stdin closes).
    server: Mutex<Child>,
}

fn tmp() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients_world")
}

/// The `agent-clients` image, built from the committed lock into a store
/// shared by test runs (the download cache is the Debian mirror tests').
fn image_store() -> PathBuf {
    let store = tmp().join("agent-clients-store");
    let o = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["build", "--quiet", "tests/clients_world/agent-clients.toml", "--store"])
        .arg(&store)
        .env("MOAT_HOME", tmp().join("debian-mirror-home"))
        .env_remove("MOAT_NPM_REGISTRY")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run moat build");
    assert!(o.status.success(), "building the agent-clients image: {}", String::from_utf8_lossy(&o.stderr));
    store
}

/// The servers' node_modules: `npm ci --ignore-scripts` of this directory's
/// lock into a directory of this test process.
fn server_dir() -> PathBuf {
    require_tool("node");
    require_tool("npm");
    let dir = tmp().join(format!("clients-servers-{}", std::process::id()));
    npm_ci::install("clients_world", &["package.json", "package-lock.json", "servers.js"], dir)
}

/// A test CA and a leaf for the servers' names: writes upstream-ca.pem (for
/// policies' `upstream_ca`), server.pem (leaf then CA) and server.key.
fn certificates(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, "moat clients test CA");
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let ca = p.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let names = ["grpc.test", "web.test", "ws.test", "git.test"].map(String::from).to_vec();
    let leaf = rcgen::CertificateParams::new(names).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("upstream-ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

pub fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let home = tmp().join(env!("CARGO_CRATE_NAME"));
        remove_stale_sandboxes(&home);
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).unwrap();
        certificates(&home);
        let net = UpNet::create(3);
        let seen = home.join("seen.log");
        std::fs::write(&seen, "").unwrap();
        require_tool("git");
        let git_root = home.join("git");
        std::fs::create_dir_all(&git_root).unwrap();
        let dir = server_dir();
        let log = std::fs::File::create(home.join("servers.stderr")).unwrap();
        let mut server = Command::new("ip")
            .args(["netns", "exec", &net.name, "node", "servers.js"])
            .arg(home.join("server.pem"))
            .arg(home.join("server.key"))
            .arg(&seen)
            .arg(&git_root)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start node servers.js in the test namespace");
        // "ready" once every server listens (or the process ended).
        let mut out = BufReader::new(server.stdout.take().expect("stdout"));
        let mut line = String::new();
        let start = Instant::now();
        while line.trim() != "ready" && start.elapsed() < Duration::from_secs(30) {
            line.clear();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
        }
        assert_eq!(
            line.trim(),
            "ready",
            "servers.js did not start: {}",
            std::fs::read_to_string(home.join("servers.stderr")).unwrap_or_default()
        );
        let ip = net.ip.to_string();
        let hosts = hosts_file(&home, &[(&ip, "grpc.test"), (&ip, "web.test"), (&ip, "ws.test"), (&ip, "git.test")]);
        World { home, net, hosts, seen, git_root, server: Mutex::new(server) }
    })
}

/// A detached sandbox, removed when the test ends (passed or failed).
pub struct Sandbox(pub &'static str);

impl Sandbox {
    /// `moat run -d --name NAME --policy POLICY agent-clients -- sleep 600`.
    pub fn start(name: &'static str, policy: &Path) -> Sandbox {
        let _ = moat(&["rm", "--force", name]);
        ok(&["run", "-d", "--name", name, "--policy", policy.to_str().unwrap(), "agent-clients", "--", "sleep", "600"]);
        Sandbox(name)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = moat(&["rm", "--force", self.0]);
    }
}

impl World {
    /// The requests the servers saw so far, one line each.
    pub fn seen(&self) -> Vec<String> {
        std::fs::read_to_string(&self.seen).unwrap_or_default().lines().map(String::from).collect()
    }
}

/// The host's `sh -c SCRIPT sh ARGS...` with git's identity set and no
/// git configuration read; its stdout. Fails the test on an error.
pub fn host_sh(script: &str, args: &[&str]) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("set -e\n{script}"))
        .arg("sh")
        .args(args)
        .env("GIT_AUTHOR_NAME", "host")
        .env("GIT_AUTHOR_EMAIL", "host@git.test")
        .env("GIT_COMMITTER_NAME", "host")
        .env("GIT_COMMITTER_EMAIL", "host@git.test")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::null())
        .output()
        .expect("run sh");
    assert!(o.status.success(), "{script} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// `bare_repo`'s script: $1 a new bare repository whose `main` has one
/// commit, a README.
const BARE_REPO: &str = r#"git init -q --bare -b main "$1"
blob=$(echo 'hello from the host' | git --git-dir "$1" hash-object -w --stdin)
tree=$(printf '100644 blob %s\tREADME\n' "$blob" | git --git-dir "$1" mktree)
c=$(git --git-dir "$1" commit-tree "$tree" -m 'from the host')
git --git-dir "$1" update-ref refs/heads/main "$c"
"#;

impl World {
    /// A new bare repository `https://git.test/NAME.git` (the host's
    /// `git_root/NAME.git`, replacing any earlier one) whose branch `main`
    /// has one commit with a README reading "hello from the host"; its
    /// git directory.
    pub fn bare_repo(&self, name: &str) -> PathBuf {
        let dir = self.git_root.join(format!("{name}.git"));
        let _ = std::fs::remove_dir_all(&dir);
        host_sh(BARE_REPO, &[dir.to_str().unwrap()]);
        dir
    }
}

/// Tests of one binary share the sandbox home: one at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// `moat` with this world's home, run dir, store and gateway hosts, stdin
/// closed; upstream trust only from the policies' `upstream_ca`.
fn moat_command(args: &[&str]) -> Command {
    let w = world();
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    let store = STORE.get_or_init(image_store);
    let mut c = Command::new(env!("CARGO_BIN_EXE_moat"));
    c.args(args)
        .env("MOAT_HOME", w.home.join("home"))
        .env("MOAT_RUN_DIR", w.home.join("run"))
        .env("MOAT_STORE", store)
        .env("MOAT_GATEWAY_HOSTS", &w.hosts)
        .env("MOAT_GATEWAY_HOSTS_ONLY", "1")
        .env_remove("MOAT_GATEWAY_UPSTREAM_CA")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

pub fn moat(args: &[&str]) -> Output {
    moat_command(args).output().expect("run moat")
}

/// `moat ARGS`, which must succeed: its stdout.
pub fn ok(args: &[&str]) -> String {
    common::ok(moat_command(args))
}

/// A policy file beside upstream-ca.pem: the baseline plus `rules`.
pub fn policy(name: &str, rules: &str) -> PathBuf {
    let text = format!("{}\n{rules}", moat_supervisor::policy::BASELINE_TOML);
    let p = world().home.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

pub fn kv(out: &str) -> std::collections::BTreeMap<String, String> {
    out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.trim().to_string())).collect()
}

/// The audit records of sandbox `name` (`moat events NAME --json`).
pub fn events(name: &str) -> Vec<serde_json::Value> {
    ok(&["events", name, "--json"]).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Every proxy variable gone, so only transparent egress can work.
pub const NO_PROXY_VARS: &str =
    "unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy NO_PROXY no_proxy\n\
     echo proxy_vars=$(env | grep -ci proxy)\n";

/// `s` as one single-quoted shell word.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
