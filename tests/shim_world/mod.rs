//! The world of the containerd shim tests (tests/shim_ctr.rs): a real
//! containerd of this test binary's own (its root, state and sockets in a
//! temp dir, moat's shim on its PATH, MOAT_HOME/MOAT_RUN_DIR and the
//! gateway's hosts file in its environment, which containerd passes to
//! shims), the probe image as a root filesystem for `ctr run --rootfs`, an
//! upstream namespace reachable from the host, and a simulated pod network
//! namespace whose own upstream the host cannot reach. Also what "nothing
//! left behind" means, looked up independently of moat's code. Needs root,
//! containerd (+ ctr), busybox-static and iproute2 (scripts/install-deps.sh).
#![allow(dead_code)]
use crate::gateway_common::{self, UpNet, Upstream};
use crate::sandbox_common::probe_binary;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// containerd's name for moat's runtime (`ctr run --runtime`).
pub const RUNTIME: &str = "io.containerd.moat.v1";
/// The port the pod's upstream serves (nothing listens there on the
/// upstream the host reaches).
pub const POD_PORT: u16 = 8080;

/// A simulated pod network namespace (`pod`, what CNI would make) joined
/// by a veth to a second one (`up`) that holds the same address as the
/// host's upstream namespace: from the pod, that address is the pod's
/// upstream; from the host, another namespace where POD_PORT is closed.
pub struct PodNet {
    pub pod: String,
    pub up: String,
}

impl PodNet {
    fn create(net: &UpNet) -> PodNet {
        let pid = std::process::id();
        // gateway_common's stale-namespace sweep removes these by their pid.
        let (pod, up) = (format!("moat-up-{pid}-pod"), format!("moat-up-{pid}-podup"));
        for n in [&pod, &up] {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
            sh(&["ip", "netns", "add", n]);
            sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        sh(&["ip", "-n", &pod, "link", "add", "pod0", "type", "veth", "peer", "name", "pod1", "netns", &up]);
        sh(&["ip", "-n", &pod, "addr", "add", &format!("{}/30", net.host_ip), "dev", "pod0"]);
        sh(&["ip", "-n", &pod, "link", "set", "pod0", "up"]);
        sh(&["ip", "-n", &up, "addr", "add", &format!("{}/30", net.ip), "dev", "pod1"]);
        sh(&["ip", "-n", &up, "link", "set", "pod1", "up"]);
        PodNet { pod, up }
    }

    pub fn pod_path(&self) -> String {
        format!("/var/run/netns/{}", self.pod)
    }
}

fn sh(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// Binds `0.0.0.0:port` inside network namespace `name`.
fn listen_in(name: &str, port: u16) -> TcpListener {
    let path = format!("/var/run/netns/{name}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("open the pod's upstream namespace");
        // Changes only this helper thread's namespace.
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        TcpListener::bind(("0.0.0.0", port)).expect("bind in the pod's upstream namespace")
    })
    .join()
    .expect("netns thread")
}

pub struct Shim {
    /// Everything of this world: containerd's root and state, moat's home,
    /// run dir and store, the bundle. Removed by the watcher at exit.
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub containerd_pid: i32,
    /// The probe image unpacked (`moat bundle`), for `ctr run --rootfs`.
    pub rootfs: PathBuf,
    pub net: UpNet,
    /// Plain HTTP on port 80 of `net` (up.test, other.test, pod.test).
    pub up: Upstream,
    pub pod: PodNet,
    /// Plain HTTP on POD_PORT in the pod's upstream namespace.
    pub pod_up: Upstream,
    /// The watcher, never waited for: when this process ends, its stdin
    /// (held here) reaches end of file and it removes what the tests left,
    /// stops containerd and removes `dir`.
    _watcher: Mutex<Child>,
}

fn require(tool: &str) {
    match Command::new(tool).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("{tool} --version failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("missing {tool} ({e}): install containerd (scripts/install-deps.sh)"),
    }
}

/// Cleans up after this test process whenever it ends (a static is never
/// dropped): `$1` config, `$2` log, `$3` the world's dir, `$4` `$5` the pod
/// namespaces, `$6` the socket. Prints containerd's pid first.
const WATCHER: &str = r#"
containerd --config "$1" >"$2" 2>&1 &
p=$!
echo "$p"
read -r _
for t in $(ctr -a "$6" task ls -q 2>/dev/null); do ctr -a "$6" task delete -f "$t" >/dev/null 2>&1; done
for c in $(ctr -a "$6" containers ls -q 2>/dev/null); do ctr -a "$6" containers rm "$c" >/dev/null 2>&1; done
kill "$p"; wait "$p"
ip netns del "$4"; ip netns del "$5"
rm -rf --one-file-system "$3"
"#;

/// The world, made once per test binary.
pub fn shim() -> &'static Shim {
    static S: OnceLock<Shim> = OnceLock::new();
    S.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "the shim tests need root (containerd, namespaces, cgroups)");
        require("containerd");
        require("ctr");
        assert!(Path::new("/bin/busybox").is_file(), "missing /bin/busybox: install busybox-static");
        let shim_bin = env!("CARGO_BIN_EXE_containerd-shim-moat-v1");
        let dir = tempfile::Builder::new().prefix("moat-shim-").tempdir().expect("tempdir").keep();
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(shim_bin, bin.join("containerd-shim-moat-v1")).unwrap();

        let net = UpNet::create(3);
        let up = Upstream::serve(net.listen(80), None, None);
        let pod = PodNet::create(&net);
        let pod_up = Upstream::serve(listen_in(&pod.up, POD_PORT), None, None);
        let ip = net.ip.to_string();
        let hosts = gateway_common::hosts_file(&dir, &[(&ip, "up.test"), (&ip, "other.test"), (&ip, "pod.test")]);

        // The probe image, unpacked as a bundle's root filesystem.
        let store = dir.join("store");
        moat_probe::testimage::build(&store, "probe", &probe_binary(), Path::new("/bin/busybox"), 0)
            .expect("write the probe image");
        let o = Command::new(env!("CARGO_BIN_EXE_moat"))
            .args(["bundle", "probe"])
            .arg(dir.join("bundle"))
            .args(["--", "/bin/sh"])
            .env("MOAT_HOME", dir.join("home"))
            .env("MOAT_RUN_DIR", dir.join("run"))
            .env("MOAT_STORE", &store)
            .stdin(Stdio::null())
            .output()
            .expect("run moat bundle");
        assert!(o.status.success(), "moat bundle: {}", String::from_utf8_lossy(&o.stderr));
        let rootfs = dir.join("bundle/rootfs");
        assert!(rootfs.join("usr/local/bin/moat-probe").is_file(), "moat bundle made no rootfs with the probe");

        let c = dir.join("ctrd");
        std::fs::create_dir_all(&c).unwrap();
        let sock = c.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{1}.ttrpc\"\n",
            c.display(),
            sock.display()
        );
        std::fs::write(c.join("config.toml"), config).unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let mut watcher = Command::new("sh")
            .args(["-c", WATCHER, "watcher"])
            .arg(c.join("config.toml"))
            .arg(c.join("log"))
            .arg(&dir)
            .args([&pod.pod, &pod.up])
            .arg(&sock)
            .env("PATH", path)
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
        let mut line = String::new();
        BufReader::new(watcher.stdout.take().expect("stdout")).read_line(&mut line).expect("containerd's pid");
        let containerd_pid: i32 = line.trim().parse().unwrap_or_else(|_| panic!("containerd's pid: {line:?}"));
        let s = Shim { dir, sock, containerd_pid, rootfs, net, up, pod, pod_up, _watcher: Mutex::new(watcher) };
        let ready = crate::sandbox_common::wait_until(Duration::from_secs(20), || s.ctr(&["version"]).code == 0);
        assert!(ready, "containerd did not answer on {}: {}", s.sock.display(), s.containerd_log());
        s
    })
}

/// Tests of this binary run one at a time (2 cores; sandboxes share uids).
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a command did.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to its end, at most `limit`; a hang fails the test.
pub fn run_limited(cmd: Command, limit: Duration) -> Out {
    try_run(cmd, None, limit).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `cmd` with `input` on its stdin (None: closed) to its end, at most
/// `limit` (then kills it: Err).
pub fn try_run(mut cmd: Command, input: Option<&[u8]>, limit: Duration) -> Result<Out, String> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{shown}: {e}"))?;
    if let (Some(data), Some(mut w)) = (input, child.stdin.take()) {
        let data = data.to_vec();
        // Written from a thread, closed at its end: the command sees end of file.
        std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut w, &data);
        });
    }
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout")));
    let err = reader(Box::new(child.stderr.take().expect("stderr")));
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| format!("{shown}: {e}"))? {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{shown} did not finish within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Out {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

impl Shim {
    pub fn ctr(&self, args: &[&str]) -> Out {
        run_limited(self.ctr_command(args), Duration::from_secs(60))
    }

    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&self.sock).args(args);
        c
    }

    /// `ctr` that must succeed; its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert_eq!(o.code, 0, "ctr {args:?} failed:\n{}\n{}\n{}", o.stdout, o.stderr, self.containerd_log());
        o.stdout
    }

    /// `ctr run` of moat's runtime on the probe root filesystem:
    /// `opts` before the root filesystem, then `id` and the command.
    pub fn run(&self, opts: &[&str], id: &str, cmd: &[&str]) -> Out {
        let rootfs = self.rootfs.display().to_string();
        let mut args = vec!["run", "--runtime", RUNTIME];
        args.extend(opts);
        args.extend(["--rootfs", &rootfs, id]);
        args.extend(cmd);
        self.ctr(&args)
    }

    /// The last lines of containerd's log (it holds the shims' logs too).
    pub fn containerd_log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("ctrd/log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        format!("containerd log (last lines):\n{}", lines[lines.len().saturating_sub(30)..].join("\n"))
    }

    pub fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    /// `moat ARGS` with this world's home, run dir and store (the probe image).
    pub fn moat(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_moat"))
            .args(args)
            .env("MOAT_HOME", self.home())
            .env("MOAT_RUN_DIR", self.dir.join("run"))
            .env("MOAT_STORE", self.dir.join("store"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run moat")
    }

    /// The task's status as `ctr task ls` shows it (None: no task).
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr_ok(&["task", "ls"]);
        out.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f.get(2).unwrap_or(&"").to_string())
        })
    }

    /// The task's pid as `ctr task ls` shows it.
    pub fn task_pid(&self, id: &str) -> i32 {
        let out = self.ctr_ok(&["task", "ls"]);
        out.lines()
            .skip(1)
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&id)).then(|| f.get(1).and_then(|p| p.parse().ok())).flatten()
            })
            .unwrap_or_else(|| panic!("no task {id} in `ctr task ls`:\n{out}"))
    }

    /// The pids `ctr task ps` lists.
    pub fn task_ps(&self, id: &str) -> Vec<i32> {
        let out = self.ctr_ok(&["task", "ps", id]);
        let mut pids: Vec<i32> =
            out.lines().skip(1).filter_map(|l| l.split_whitespace().next().and_then(|p| p.parse().ok())).collect();
        pids.sort_unstable();
        pids
    }

    /// The shim serving container `id` of this containerd.
    pub fn shim_pid(&self, id: &str) -> Option<i32> {
        shim_pid_at(&self.sock, id)
    }

    /// What is left of container `id`'s sandbox, each a line saying what
    /// and where (empty: nothing). `pids`: processes it had.
    pub fn leftovers(&self, id: &str, pids: &[i32]) -> Vec<String> {
        leftovers_at(&self.dir, &self.sock, id, id, pids)
    }

    /// Waits (a few seconds: a shim exits after its last delete) until
    /// nothing of `id` is left; fails naming what is.
    pub fn assert_nothing_left(&self, id: &str, pids: &[i32]) {
        let mut left = Vec::new();
        let gone = crate::sandbox_common::wait_until(Duration::from_secs(10), || {
            left = self.leftovers(id, pids);
            left.is_empty()
        });
        assert!(gone, "left behind by {id}:\n{}\n{}", left.join("\n"), self.containerd_log());
    }
}

/// The shim serving container `id` of the containerd at `sock`.
pub fn shim_pid_at(sock: &Path, id: &str) -> Option<i32> {
    let sock = sock.display().to_string();
    processes().into_iter().find_map(|(pid, args)| {
        let is_shim = args.first().is_some_and(|a| a.ends_with("containerd-shim-moat-v1"));
        let ours = args.windows(2).any(|w| w[0] == "-id" && w[1] == id)
            && args.windows(2).any(|w| w[0] == "-address" && w[1] == sock);
        (is_shim && ours).then_some(pid)
    })
}

/// What is left of container `id` (sandbox `name`) of the world in `dir_path`
/// (MOAT_HOME `dir/home`, MOAT_RUN_DIR `dir/run`) whose containerd serves
/// `sock`, each a line saying what and where (empty: nothing). `pids`:
/// processes it had.
pub fn leftovers_at(dir_path: &Path, sock: &Path, id: &str, name: &str, pids: &[i32]) -> Vec<String> {
    let mut left = Vec::new();
    let dir = dir_path.display().to_string();
    // Mounts in the host's namespace: moat's (overlay, workspace image,
    // namespace pins) live under the world's dir or name the sandbox.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for l in mountinfo.lines() {
        if l.contains(&dir) || l.split_whitespace().any(|w| w.ends_with(&format!("/{id}"))) {
            left.push(format!("mount: {l}"));
        }
    }
    // Loop devices backed by a file of this world (the workspace image).
    if let Ok(rd) = std::fs::read_dir("/sys/block") {
        for e in rd.flatten() {
            let b = std::fs::read_to_string(e.path().join("loop/backing_file")).unwrap_or_default();
            if b.contains(&dir) {
                left.push(format!("loop device {:?}: {}", e.file_name(), b.trim()));
            }
        }
    }
    for cg in cgroups_of(name) {
        left.push(format!("cgroup: {}", cg.display()));
    }
    for (pid, args) in processes() {
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let named = args.windows(2).any(|w| (w[0] == "__supervise" || w[0] == "__exec") && w[1] == name);
        if cg.contains(&format!("/moat/{name}\n")) || named || pids.contains(&pid) {
            left.push(format!("process {pid}: {args:?}"));
        }
    }
    if let Some(p) = shim_pid_at(sock, id) {
        left.push(format!("shim process {p}"));
    }
    for d in [dir_path.join("home/sandboxes").join(name), dir_path.join("run").join(name)] {
        if d.exists() {
            left.push(format!("record: {}", d.display()));
        }
    }
    left
}

/// Cgroup directories `/sys/fs/cgroup/[CONTROLLER/]moat/ID`.
pub fn cgroups_of(id: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join("moat").join(id)];
    if let Ok(rd) = std::fs::read_dir(root) {
        dirs.extend(rd.flatten().map(|e| e.path().join("moat").join(id)));
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

/// Every process's pid and arguments (zombies and vanished ones skipped).
pub fn processes() -> Vec<(i32, Vec<String>)> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| crate::sandbox_common::pid_alive(i64::from(*pid)))
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args = raw.split(|b| *b == 0).filter(|a| !a.is_empty());
            Some((pid, args.map(|a| String::from_utf8_lossy(a).into_owned()).collect()))
        })
        .collect()
}

/// Containers a test made: removed (task and container) when the test
/// ends, passed or not.
pub struct Made<'a> {
    shim: &'a Shim,
    ids: Vec<String>,
}

impl<'a> Made<'a> {
    pub fn new(shim: &'a Shim) -> Made<'a> {
        Made { shim, ids: Vec::new() }
    }
    /// A container id unique to this test process (sandbox names and
    /// cgroups are machine-wide).
    pub fn id(&mut self, tag: &str) -> String {
        self.named(format!("{tag}-{}", std::process::id()))
    }
    /// Container `id` exactly, removed at the end like the others.
    pub fn named(&mut self, id: String) -> String {
        self.ids.push(id.clone());
        id
    }
}

impl Drop for Made<'_> {
    fn drop(&mut self) {
        // Never panics (this may run while a failed test unwinds).
        let ctr = |args: &[&str]| try_run(self.shim.ctr_command(args), None, Duration::from_secs(30)).ok();
        for id in &self.ids {
            let has_task = || ctr(&["task", "ls", "-q"]).is_some_and(|o| o.stdout.lines().any(|l| l == id));
            if has_task() {
                let _ = ctr(&["task", "delete", "-f", id]);
            }
            // A task its shim cannot delete: end that shim (containerd then
            // cleans up after it) rather than leave it running.
            if let Some(pid) = self.shim.shim_pid(id).filter(|_| has_task()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                crate::sandbox_common::wait_until(Duration::from_secs(5), || !has_task());
            }
            if ctr(&["containers", "ls", "-q"]).is_some_and(|o| o.stdout.lines().any(|l| l == id)) {
                let _ = ctr(&["containers", "rm", id]);
            }
        }
    }
}

/// `ctr events` running for a test: what containerd published meanwhile.
pub struct Events {
    child: std::process::Child,
    text: std::sync::Arc<Mutex<String>>,
}

impl Events {
    /// Starts `ctr events` and returns once it is subscribed (it has seen
    /// a namespace this creates: containerd keeps no event history).
    pub fn start(s: &Shim) -> Events {
        let mut child = s
            .ctr_command(&["events"])
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
        let ev = Events { child, text };
        let marker = format!("moat-events-{}", std::process::id());
        let _ = s.ctr(&["namespaces", "create", &marker]);
        let subscribed = (0..50).any(|i| {
            if ev.text().contains(&format!("/namespaces/create {{\"name\":\"{marker}\"}}")) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
            // Not subscribed in time for the first: publish again.
            if i % 10 == 9 {
                let _ = s.ctr(&["namespaces", "rm", &marker]);
                let _ = s.ctr(&["namespaces", "create", &marker]);
            }
            false
        });
        let _ = s.ctr(&["namespaces", "rm", &marker]);
        assert!(subscribed, "ctr events saw nothing within 5 s:\n{}", ev.text());
        ev
    }

    pub fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills container `id`'s task, then deletes it and the container: what a
/// test does to leave nothing, whatever the test found.
pub fn kill_and_remove(s: &Shim, id: &str) {
    let _ = s.ctr(&["task", "kill", "-s", "KILL", id]);
    crate::sandbox_common::wait_until(Duration::from_secs(10), || s.task_status(id).as_deref() == Some("STOPPED"));
    let _ = s.ctr(&["task", "delete", id]);
    let _ = s.ctr(&["containers", "rm", id]);
}

/// The moat shim among `pid`'s ancestors (a container's init runs under
/// its supervisor, a child of the shim that started it).
pub fn shim_above(pid: i32) -> Option<i32> {
    let mut p = pid;
    for _ in 0..16 {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        // The parent follows the command, which is in parentheses.
        p = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
        // The shim's own children (`__supervise`, `__exec`) run its binary too.
        let exe = std::fs::read_link(format!("/proc/{p}/exe")).ok()?;
        let args = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
        let child = args.split(|b| *b == 0).nth(1).is_some_and(|a| a.starts_with(b"__"));
        if exe.to_string_lossy().ends_with("containerd-shim-moat-v1") && !child {
            return Some(p);
        }
    }
    None
}

/// The sections of `out` that follow `== NAME` marker lines.
pub fn section<'a>(out: &'a str, name: &str) -> &'a str {
    let marker = format!("== {name}\n");
    let start = out.find(&marker).map(|i| i + marker.len()).unwrap_or_else(|| panic!("no {marker:?} in:\n{out}"));
    let rest = &out[start..];
    rest.find("\n== ").map(|i| &rest[..i + 1]).unwrap_or(rest)
}

/// An HTTP response's status line and body.
pub fn response(text: &str) -> (&str, &str) {
    let status = text.lines().next().unwrap_or("").trim_end();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body)
}

/// Sends one HTTP/1.0 GET of `/index.html` to `127.0.0.1:port` from
/// inside network namespace file `ns` (a helper thread joins it); the
/// whole answer.
pub fn get_in(ns: impl AsRef<Path>, port: u16) -> std::io::Result<String> {
    use std::io::Write;
    let ns = ns.as_ref().to_path_buf();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&ns)?;
        // Changes only this helper thread's namespace.
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        c.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        c.read_to_string(&mut out)?;
        Ok(out)
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("netns thread panicked")))
}
