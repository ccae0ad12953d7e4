//! The world the sandbox gateway tests share: the agent image (built once
//! from the committed lock), an upstream network namespace serving `up.test`
//! and `other.test` over TLS (with a bare git repository) and plain HTTP,
//! and `moat` run against a home of this test binary's own. Used by
//! gateway_sandbox.rs and the attack tests (attack_*.rs), which perform each
//! attack from inside a real sandbox.
#![allow(dead_code)]
#[path = "../common/stale.rs"]
mod stale;
use crate::gateway_common;
pub use crate::gateway_common::{TestCa, UpNet, Upstream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

/// A directory reused by every run (a static is never dropped, so a temp
/// dir here would leak the unpacked image each run): emptied at start.
pub struct Home(PathBuf);

impl Home {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

pub struct World {
    pub home: Home,
    pub net: UpNet,
    pub ca: TestCa,
    pub hosts: PathBuf,
    pub up: Upstream,
    /// The plain-HTTP upstream on port 80 (same names, same address).
    pub plain: Upstream,
}

/// The agent image, built once from the committed lock into a store shared
/// by test runs (the download cache is shared with the Debian mirror tests).
pub fn agent_store() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let store = tmp.join("agent-store");
    let o = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["build", "--quiet", "blueprints/agent.toml", "--store"])
        .arg(&store)
        .env("MOAT_HOME", tmp.join("debian-mirror-home"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run moat build");
    assert!(o.status.success(), "building the agent image: {}", String::from_utf8_lossy(&o.stderr));
    store
}

pub fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let home = Home(Path::new(env!("CARGO_TARGET_TMPDIR")).join(env!("CARGO_CRATE_NAME")));
        stale::remove_stale_sandboxes(home.path());
        let _ = std::fs::remove_dir_all(home.path());
        std::fs::create_dir_all(home.path()).unwrap();
        let net = UpNet::create(2);
        let ca = TestCa::new(&["up.test", "other.test"]);
        // A bare repository served as static files: git's dumb HTTP protocol.
        let files = home.path().join("files");
        let repo = files.join("repo.git");
        let src = home.path().join("src");
        let git = |args: &[&str], dir: &Path| {
            let o = Command::new("git").args(args).current_dir(dir).output().expect("git");
            assert!(o.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        };
        std::fs::create_dir_all(&src).unwrap();
        git(&["init", "-q", "-b", "main"], &src);
        std::fs::write(src.join("README"), "through the gateway\n").unwrap();
        git(&["add", "README"], &src);
        git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one"], &src);
        git(&["clone", "-q", "--bare", src.to_str().unwrap(), repo.to_str().unwrap()], home.path());
        git(&["update-server-info"], &repo);
        let up = Upstream::serve(net.listen(443), Some(ca.server.clone()), Some(files));
        let plain = Upstream::serve(net.listen(80), None, None);
        let hosts = gateway_common::hosts_file(
            home.path(),
            &[(&net.ip.to_string(), "up.test"), (&net.ip.to_string(), "other.test")],
        );
        World { home, net, ca, hosts, up, plain }
    })
}

/// Tests of one binary share the sandbox home: one at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// `moat` with this world's home, run dir, store and gateway hosts, stdin
/// closed; without the test hook that trusts the upstream CA process-wide.
pub fn moat_command(args: &[&str]) -> Command {
    let w = world();
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    let store = STORE.get_or_init(agent_store);
    let mut c = Command::new(env!("CARGO_BIN_EXE_moat"));
    c.args(args)
        .env("MOAT_HOME", w.home.path().join("home"))
        .env("MOAT_RUN_DIR", w.home.path().join("run"))
        .env("MOAT_STORE", store)
        .env("MOAT_GATEWAY_HOSTS", &w.hosts)
        .env("MOAT_GATEWAY_HOSTS_ONLY", "1")
        .env_remove("MOAT_GATEWAY_UPSTREAM_CA")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

pub fn moat(args: &[&str]) -> Output {
    moat_command(args).env("MOAT_GATEWAY_UPSTREAM_CA", &world().ca.pem_file).output().expect("run moat")
}

/// Runs moat (with this world's home) with `input` on stdin: credentials.
pub fn moat_stdin(args: &[&str], input: &str) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(args)
        .env("MOAT_HOME", world().home.path().join("home"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run moat");
    use std::io::Write;
    c.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    c.wait_with_output().expect("wait for moat")
}

pub fn ok(args: &[&str]) -> String {
    let o = moat(args);
    assert!(
        o.status.success(),
        "moat {args:?}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A policy file: the baseline plus `rules` (`[[network.policy]]` tables).
pub fn policy(name: &str, rules: &str) -> PathBuf {
    let text = format!("{}\n{rules}", moat_supervisor::policy::BASELINE_TOML);
    let p = world().home.path().join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

pub fn kv(out: &str) -> std::collections::BTreeMap<String, String> {
    out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.trim().to_string())).collect()
}
