//! The world of the Kubernetes-path tests (tests/shim_cri.rs): a real
//! containerd of this test binary's own with its CRI plugin on, configured
//! from examples/kubernetes/containerd-config.toml (so the example is what
//! is tested) plus a `runc` handler, Debian's CNI plugins with a bridge
//! network of its own (a /24 in 198.19.0.0/16 no interface uses, IPAM state
//! in the world's dir), two pause images (the sandbox image with its
//! binary in /usr/bin, and one shaped exactly as registry.k8s.io/pause)
//! and the probe image, built by moat and imported into containerd's
//! `k8s.io` namespace (moat's store is an OCI layout: its tar), an upstream in a
//! namespace on the pod bridge: reachable from a pod's CNI namespace only
//! (the host has no address or route there). Also what "nothing left"
//! means for a pod. Needs root, containerd (+ ctr), containernetworking-
//! plugins, busybox-static, iproute2 (scripts/install-deps.sh).
#![allow(dead_code)]
pub mod client;

use crate::gateway_common::{self, Upstream};
use crate::sandbox_common::{probe_binary, wait_until};
use crate::shim_world::{leftovers_at, run_limited, Out};
use client::Client;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The probe image, as containerd names it after the import.
pub const PROBE_IMAGE: &str = "moat.test/cri:probe";

/// The pause image the world's containerd uses (`sandbox_image`): the
/// static probe's `pause` mode from a local tree, user 65535:65535 and no
/// /etc/passwd as registry.k8s.io/pause, but the binary in /usr/bin.
pub const PAUSE_IMAGE: &str = "moat.test/cri:pause";
/// registry.k8s.io/pause's exact shape: the binary is /pause.
pub const UPSTREAM_PAUSE_IMAGE: &str = "moat.test/cri:pause-upstream";

/// A pause image's blueprint: NAME, the binary at PATH (`dest` + `/pause`).
fn pause_blueprint(name: &str, dest: &str) -> String {
    let bin = format!("{}/pause", dest.trim_end_matches('/'));
    format!(
        "name = \"{name}\"\nepoch = 0\n[[layer]]\nname = \"pause\"\n[[layer.entry]]\npath = \"tree\"\ndest = \"{dest}\"\n\
         [config]\nentrypoint = [\"{bin}\", \"pause\"]\nuser = \"65535:65535\"\n"
    )
}

pub struct Cri {
    /// Everything of this world; removed by the watcher at exit.
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub client: Client,
    /// The pod network's first three octets ("198.19.N").
    pub net: String,
    /// The upstream's address on the pod bridge (NET.250), port 80.
    pub up_ip: Ipv4Addr,
    pub up: Upstream,
    pub bridge: String,
    /// The CNI network's name (host-local keeps its leases under it).
    pub network: String,
    _watcher: Mutex<Child>,
}

fn sh(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

fn require(tool: &str) {
    match Command::new(tool).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("{tool} --version failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("missing {tool} ({e}): install containerd (scripts/install-deps.sh)"),
    }
}

/// Binds `0.0.0.0:port` inside network namespace `name`.
fn listen_in(name: &str, port: u16) -> TcpListener {
    let path = format!("/var/run/netns/{name}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("open the upstream's namespace");
        // Changes only this helper thread's namespace.
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        TcpListener::bind(("0.0.0.0", port)).expect("bind in the upstream's namespace")
    })
    .join()
    .expect("netns thread")
}

/// The first "198.19.N" (N in 128..192, from this pid on) whose /24 no
/// interface of the host uses.
fn free_net() -> String {
    let used = Command::new("ip").args(["-o", "-4", "addr"]).output().map(|o| o.stdout).unwrap_or_default();
    let used = String::from_utf8_lossy(&used).into_owned();
    (0..64)
        .map(|i| format!("198.19.{}", 128 + (std::process::id() + i) % 64))
        .find(|n| !used.contains(&format!(" {n}.")))
        .expect("a free /24 in 198.19.128.0/18")
}

/// Cleans up after this test process whenever it ends: `$1` config, `$2`
/// log, `$3` the world's dir, `$4` the socket, `$5` the upstream's
/// namespace, `$6` the bridge, `$7` the upstream's veth. Prints
/// containerd's pid first.
const WATCHER: &str = r#"
containerd --config "$1" >"$2" 2>&1 &
p=$!
echo "$p"
read -r _
c="ctr -a $4 -n k8s.io"
for t in $($c task ls -q 2>/dev/null); do $c task delete -f "$t" >/dev/null 2>&1; done
for t in $($c containers ls -q 2>/dev/null); do $c containers rm "$t" >/dev/null 2>&1; done
kill "$p"; wait "$p"
grep -o " $3/[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
ip netns del "$5"; ip link del "$7"; ip link del "$6"
rm -rf --one-file-system "$3"
"#;

/// containerd's config: its own root, state and sockets, the CRI plugin's
/// sandbox image and CNI directories, the example's moat handler as it is
/// (the shim is on containerd's PATH) and a `runc` handler.
/// `restrict_oom_score_adj`: CRI asks -998 for a pause container, which
/// runc cannot set where the host denies lowering it (these machines:
/// "failed to update /proc/self/oom_score_adj: Permission denied").
fn config(c: &Path, sock: &Path, cni: &Path) -> String {
    let example_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes/containerd-config.toml");
    let example = std::fs::read_to_string(&example_path).expect("examples/kubernetes/containerd-config.toml");
    format!(
        "version = 2\nroot = \"{c}/root\"\nstate = \"{c}/state\"\n\
         [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{PAUSE_IMAGE}\"\n\
         \x20 netns_mounts_under_state_dir = true\n  disable_apparmor = true\n\
         \x20 restrict_oom_score_adj = true\n\
         [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"{cni}\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
         {example}",
        c = c.display(),
        sock = sock.display(),
        cni = cni.display(),
    )
}

/// The probe image and a pause image, built by moat into a store of their
/// own, which is an OCI image layout: its tar is what `ctr images import`
/// reads. Returns the tar.
fn images(dir: &Path) -> PathBuf {
    let store = dir.join("store");
    moat_probe::testimage::build(&store, "probe", &probe_binary(), Path::new("/bin/busybox"), 0)
        .expect("write the probe image");
    let bp = dir.join("pause");
    std::fs::create_dir_all(bp.join("tree")).unwrap();
    std::fs::copy(probe_binary(), bp.join("tree/pause")).expect("copy the probe as pause");
    for (name, dest) in [("pause", "/usr/bin"), ("pause-upstream", "/")] {
        std::fs::write(bp.join(format!("{name}.toml")), pause_blueprint(name, dest)).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_moat"))
            .args(["lock", &format!("{name}.toml"), "--store"])
            .arg(&store)
            .current_dir(&bp)
            .env("MOAT_HOME", dir.join("home"))
            .stdin(Stdio::null())
            .output()
            .expect("run moat lock");
        assert!(o.status.success(), "moat lock {name}.toml: {}", String::from_utf8_lossy(&o.stderr));
    }
    let tar = dir.join("images.tar");
    sh(&[
        "tar",
        "-C",
        &store.display().to_string(),
        "-cf",
        &tar.display().to_string(),
        "oci-layout",
        "index.json",
        "blobs",
    ]);
    tar
}

/// Removes what the world's set-up made if it fails before the watcher
/// takes over (a panic in set-up unwinds through this).
struct Early {
    links: Vec<String>,
    netns: String,
    dir: PathBuf,
    armed: bool,
}

impl Drop for Early {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
        for l in &self.links {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The world, made once per test binary.
pub fn cri() -> &'static Cri {
    static W: OnceLock<Cri> = OnceLock::new();
    W.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "the CRI tests need root (containerd, namespaces, cgroups)");
        require("containerd");
        require("ctr");
        for p in ["bridge", "host-local", "loopback"] {
            let f = Path::new("/usr/lib/cni").join(p);
            assert!(f.is_file(), "missing {}: install containernetworking-plugins", f.display());
        }
        assert!(Path::new("/bin/busybox").is_file(), "missing /bin/busybox: install busybox-static");
        // tests/bench/shim_cri.sh times the release build's shim.
        let shim = std::env::var("MOAT_BENCH_SHIM").unwrap_or_else(|_| env!("CARGO_BIN_EXE_containerd-shim-moat-v1").into());
        let dir = tempfile::Builder::new().prefix("moat-cri-").tempdir().expect("tempdir").keep();
        // containerd finds the shim by its name on its PATH, as on a node.
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(&shim, bin.join("containerd-shim-moat-v1")).unwrap();
        let pid = std::process::id();
        let tag = pid % 100_000;

        // The pod bridge (made here so the upstream can sit on it; the CNI
        // bridge plugin takes it as it is), with no address on the host.
        let (net, bridge) = (free_net(), format!("mcb{tag}"));
        let (upns, veth, peer) = (format!("moat-up-{pid}-cri"), format!("mcu{tag}"), format!("mcv{tag}"));
        for (what, name) in [("link", &bridge), ("link", &veth), ("netns", &upns)] {
            let _ = Command::new("ip").args([what, "del", name]).output();
        }
        let mut early =
            Early { links: vec![veth.clone(), bridge.clone()], netns: upns.clone(), dir: dir.clone(), armed: true };
        sh(&["ip", "link", "add", &bridge, "type", "bridge"]);
        sh(&["ip", "link", "set", &bridge, "up"]);
        sh(&["ip", "netns", "add", &upns]);
        sh(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer, "netns", &upns]);
        sh(&["ip", "link", "set", &veth, "master", &bridge, "up"]);
        let up_ip: Ipv4Addr = format!("{net}.250").parse().unwrap();
        sh(&["ip", "-n", &upns, "addr", "add", &format!("{up_ip}/24"), "dev", &peer]);
        sh(&["ip", "-n", &upns, "link", "set", &peer, "up"]);
        sh(&["ip", "-n", &upns, "link", "set", "lo", "up"]);
        let up = Upstream::serve(listen_in(&upns, 80), None, None);
        let ip = up_ip.to_string();
        let hosts = gateway_common::hosts_file(&dir, &[(&ip, "up.test"), (&ip, "other.test")]);

        let network = format!("moat-cri-{pid}");
        let cni = dir.join("cni");
        std::fs::create_dir_all(&cni).unwrap();
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": network,
            "plugins": [{
                "type": "bridge",
                "bridge": bridge,
                "isGateway": false,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "dataDir": dir.join("ipam"),
                    "ranges": [[{"subnet": format!("{net}.0/24"), "rangeStart": format!("{net}.10"), "rangeEnd": format!("{net}.200")}]]
                }
            }]
        });
        std::fs::write(cni.join("10-moat.conflist"), conflist.to_string()).unwrap();

        let tar = images(&dir);
        let c = dir.join("ctrd");
        std::fs::create_dir_all(&c).unwrap();
        let sock = c.join("containerd.sock");
        std::fs::write(c.join("config.toml"), config(&c, &sock, &cni)).unwrap();
        let mut watcher = Command::new("sh")
            .args(["-c", WATCHER, "watcher"])
            .arg(c.join("config.toml"))
            .arg(c.join("log"))
            .arg(&dir)
            .arg(&sock)
            .args([&upns, &bridge, &veth])
            .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
            .env("MOAT_HOME", dir.join("home"))
            .env("MOAT_RUN_DIR", dir.join("run"))
            .env("MOAT_GATEWAY_HOSTS", &hosts)
            .env("MOAT_GATEWAY_HOSTS_ONLY", "1")
            .env_remove("MOAT_GATEWAY_UPSTREAM_CA")
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Not in the terminal's process group: a ^C to the tests still cleans up.
            .process_group(0)
            .spawn()
            .expect("start the containerd watcher");
        // The watcher cleans up from here on.
        early.armed = false;
        let mut line = String::new();
        BufReader::new(watcher.stdout.take().expect("stdout")).read_line(&mut line).expect("containerd's pid");
        let client = Client::new(&sock);
        let w = Cri { dir, sock, client, net, up_ip, up, bridge, network, _watcher: Mutex::new(watcher) };
        let ready = wait_until(Duration::from_secs(20), || {
            w.client.status().is_ok_and(|s| {
                s.status.is_some_and(|s| s.conditions.iter().all(|c| c.status) && !s.conditions.is_empty())
            })
        });
        assert!(ready, "containerd's CRI plugin is not ready on {}: {:?}\n{}", w.sock.display(), w.client.status(), w.log());
        let tar = tar.display().to_string();
        let o = w.ctr(&["-n", "k8s.io", "images", "import", "--base-name", "moat.test/cri", &tar]);
        assert_eq!(o.code, 0, "ctr images import: {o:?}");
        w
    })
}

impl Cri {
    pub fn ctr(&self, args: &[&str]) -> Out {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&self.sock).args(args);
        run_limited(c, Duration::from_secs(60))
    }

    /// The last lines of containerd's log (the shims' logs are in it too).
    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("ctrd/log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        format!("containerd log (last lines):\n{}", lines[lines.len().saturating_sub(30)..].join("\n"))
    }

    pub fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    /// The moat sandbox of container `id`: the one whose record names it.
    pub fn sandbox_of(&self, id: &str) -> Option<String> {
        // The record names its owner (`containerd:NAMESPACE/ID`); the name
        // may be the pod's (POD, POD.CONTAINER) or the id's.
        let owner = format!("containerd:k8s.io/{id}");
        let rd = std::fs::read_dir(self.home().join("sandboxes")).ok()?;
        rd.flatten().find_map(|e| {
            let rec: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path().join("state.json")).ok()?).ok()?;
            (rec.get("image")?.as_str()? == owner).then(|| e.file_name().to_string_lossy().into_owned())
        })
    }

    /// The task's pid as `ctr -n k8s.io task ls` shows it.
    pub fn task_pid(&self, id: &str) -> Option<i32> {
        let o = self.ctr(&["-n", "k8s.io", "task", "ls"]);
        o.stdout.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f.get(1).and_then(|p| p.parse().ok())).flatten()
        })
    }

    /// The network namespaces CNI made for pods (mounted under the world's
    /// state dir).
    pub fn pod_netns(&self) -> Vec<PathBuf> {
        let under = self.dir.join("ctrd/state/io.containerd.grpc.v1.cri/netns");
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut found: Vec<PathBuf> = mountinfo
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(PathBuf::from))
            .filter(|m| m.starts_with(&under))
            .collect();
        found.dedup();
        found
    }

    /// What is left of a pod's containers (`ids`, with their sandbox names
    /// and pids) and of its network: moat's (leftovers_at), the pod's
    /// address lease, its veth on the bridge, its network namespace.
    pub fn leftovers(&self, ids: &[(String, String)], pids: &[i32]) -> Vec<String> {
        let mut left = Vec::new();
        for (id, name) in ids {
            left.extend(leftovers_at(&self.dir, &self.sock, id, name, pids));
        }
        let leases = self.dir.join("ipam").join(&self.network);
        if let Ok(rd) = std::fs::read_dir(&leases) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&format!("{}.", self.net)) {
                    left.push(format!("address lease: {}", e.path().display()));
                }
            }
        }
        let o = Command::new("ip").args(["-o", "link", "show", "master", &self.bridge]).output();
        let links = o.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        for l in links.lines().filter(|l| !l.contains(&format!(" mcu{}@", std::process::id() % 100_000))) {
            left.push(format!("pod veth on the bridge: {l}"));
        }
        left
    }

    /// Waits until nothing of the pod is left; fails naming what is.
    pub fn assert_nothing_left(&self, ids: &[(String, String)], pids: &[i32]) {
        let mut left = Vec::new();
        let gone = wait_until(Duration::from_secs(10), || {
            left = self.leftovers(ids, pids);
            left.is_empty()
        });
        assert!(gone, "left behind by the pod:\n{}\n{}", left.join("\n"), self.log());
    }
}

/// A pod a test made: stopped and removed when the test ends, passed or
/// not (never panics).
pub struct PodGuard<'a> {
    pub w: &'a Cri,
    pub id: String,
}

impl Drop for PodGuard<'_> {
    fn drop(&mut self) {
        if self.id.is_empty() {
            return;
        }
        let _ = self.w.client.stop_pod(&self.id);
        let _ = self.w.client.remove_pod(&self.id);
    }
}

/// `ctr events` of the world's containerd while a test runs (for failure
/// messages: task exits and their codes).
pub struct CtrEvents {
    child: Child,
    text: std::sync::Arc<Mutex<String>>,
}

impl CtrEvents {
    pub fn start(w: &Cri) -> CtrEvents {
        let mut child = Command::new("ctr")
            .arg("--address")
            .arg(&w.sock)
            .arg("events")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ctr events");
        let text = std::sync::Arc::new(Mutex::new(String::new()));
        let (out, t) = (child.stdout.take().expect("stdout"), text.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut g = t.lock().unwrap_or_else(|e| e.into_inner());
                g.push_str(&line);
                g.push('\n');
            }
        });
        // Subscribed before the test acts (containerd keeps no history).
        std::thread::sleep(Duration::from_millis(300));
        CtrEvents { child, text }
    }

    pub fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for CtrEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
