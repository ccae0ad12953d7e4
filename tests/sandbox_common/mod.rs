//! Shared set-up of the sandbox scenario tests: a private MOAT_HOME, run
//! directory and store holding the probe image (static busybox + the static
//! escape probe), and helpers to drive the `moat` binary. Needs root and
//! busybox-static (scripts/install-deps.sh); fails with a message otherwise.
#![allow(dead_code)]
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub const GATEWAY_PORT: u16 = 3128;

/// The workspace size of [`small_policy`], in MiB.
pub const LIMIT_MIB: u64 = 64;

/// The baseline policy with a small workspace (LIMIT_MIB, 2,000 inodes),
/// written in `dir`.
pub fn small_policy(dir: &Path) -> PathBuf {
    let base = include_str!("../../policies/baseline.toml");
    let text: String = base
        .lines()
        .filter(|l| !l.starts_with("workspace_size_mib") && !l.starts_with("workspace_inodes"))
        .map(|l| match l {
            "workspace = \"/sandbox\"" => format!("{l}\nworkspace_size_mib = {LIMIT_MIB}\nworkspace_inodes = 2000\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    assert!(text.contains("workspace_inodes = 2000"), "the baseline no longer has the workspace line this test edits");
    let p = dir.join("small.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// The probe, built once as a static binary so it runs in any image.
pub fn probe_binary() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
        let target_dir = root.join("target/probe-static");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--quiet", "--release", "-p", "moat-probe", "--bin", "moat-probe", "--target", &triple])
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env("CARGO_TARGET_DIR", &target_dir)
            .current_dir(root)
            .status()
            .expect("run cargo to build the static probe");
        assert!(status.success(), "building the static probe failed");
        target_dir.join(&triple).join("release/moat-probe")
    })
    .clone()
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the sandbox tests need root (CI runs as root): namespaces, overlayfs, cgroups"
    );
    assert!(
        Path::new("/bin/busybox").is_file(),
        "missing /bin/busybox: install busybox-static (scripts/install-deps.sh)"
    );
}

/// Sandboxes of one test binary run one test at a time: they share the
/// sandbox uid, and RLIMIT_NPROC counts per uid across the machine (the
/// fork-bomb test would starve its neighbours).
static SERIAL: Mutex<()> = Mutex::new(());

/// One isolated moat world: its own MOAT_HOME, run dir and store.
pub struct World {
    pub dir: tempfile::TempDir,
    pub image: String,
    _serial: MutexGuard<'static, ()>,
}

impl World {
    pub fn new() -> World {
        require_root();
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::Builder::new().prefix("moat-test-").tempdir().expect("tempdir");
        let image = moat_probe::testimage::build(
            &dir.path().join("store"),
            "probe",
            &probe_binary(),
            Path::new("/bin/busybox"),
            0,
        )
        .expect("write the test image");
        World { dir, image, _serial: serial }
    }
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    pub fn moat(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_moat"));
        c.env("MOAT_HOME", self.home())
            .env("MOAT_STORE", self.store())
            .env("MOAT_RUN_DIR", self.run_dir())
            .env_remove("RUST_LOG");
        c
    }
    /// Runs moat with `args`, stdin closed; returns the output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.moat().args(args).stdin(Stdio::null()).output().expect("run moat")
    }
    /// Like `run` but asserts success and returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "moat {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    pub fn state(&self, name: &str) -> serde_json::Value {
        let p = self.home().join("sandboxes").join(name).join("state.json");
        serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .expect("state json")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Best effort: stop whatever a failed test left running.
        if let Ok(rd) = std::fs::read_dir(self.home().join("sandboxes")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let _ = self.run(&["rm", "--force", "--workspace", &name]);
            }
        }
    }
}

/// Parses the probe's `key=value` lines.
pub fn parse(out: &str) -> BTreeMap<String, String> {
    out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Polls `f` until true or `timeout`.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

pub fn pid_alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z ")).unwrap_or(false)
}

/// The results every sandbox must give, whatever runs it (moat or runc).
pub fn assert_process_guards(r: &BTreeMap<String, String>) {
    let want = |k: &str, v: &str| {
        assert_eq!(r.get(k).map(String::as_str), Some(v), "probe {k}: got {:?}\nall: {r:#?}", r.get(k))
    };
    // moat runs each sandbox as a host uid of its own; runc as the image's.
    let uid = r.get("uid").cloned().unwrap_or_default();
    assert!(uid.parse::<u32>().is_ok_and(|u| u == 1000 || u >= 0x6d00_0000), "probe uid: {uid}");
    want("euid", &uid);
    for k in ["capinh", "capprm", "capeff", "capbnd", "capamb"] {
        want(k, "0000000000000000");
    }
    want("nonewprivs", "1");
    want("seccomp", "2");
    want("rlimit_nproc", "512");
    want("rlimit_core", "0");
    want("write_sandbox", "ok");
    want("write_tmp", "ok");
    for k in ["write_usr", "write_etc", "write_root"] {
        assert!(r.get(k).is_some_and(|v| v == "EROFS" || v == "EACCES"), "probe {k} should fail: {:?}", r.get(k));
    }
    want("read_etc_passwd", "ok");
    want("list_root", "ok");
    want("list_srv", "ok:1");
    want("whiteout_applied", "yes");
    want("hosts_inference", "127.0.0.1");
    want("proc_keys", "masked");
    want("interfaces", "lo");
    want("sees_moat", "no");
    want("signal_supervisor", "ESRCH");
    want("pid_in_namespace_small", "yes");
    want("setuid_binary", &format!("uid={uid} euid={uid}"));
    for (k, v) in r.iter().filter(|(k, _)| k.starts_with("sys_")) {
        let expected = match k.as_str() {
            "sys_clone3" => "ENOSYS",
            "sys_memfd_create" => "ok",
            _ => "EPERM",
        };
        assert_eq!(v, expected, "probe {k}");
    }
    assert!(r.keys().filter(|k| k.starts_with("sys_")).count() >= 28, "every blocked syscall is probed");
}
