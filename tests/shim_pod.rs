//! moat's containerd shim (issue 22) as pods and clients use it, driven by
//! `ctr` against a real containerd 1.6 (the world of tests/shim_world/):
//! ports a pod publishes from its namespace (and nothing else coming in),
//! one shim per pod and its crash, an exec's leftover child and CloseIO
//! against a held FIFO, containerd restarted under running containers, a
//! fresh moat home, SIGKILL of a paused container, signals to an exec.
//! Guards the engine front door: what containerd, CRI and kubelet do must
//! neither widen a sandbox nor lose or hang one. Needs root, containerd,
//! busybox-static, iproute2.
#[path = "../supervisor/tests/gateway_common/mod.rs"]
mod gateway_common;
mod sandbox_common;
mod shim_world;

use sandbox_common::{pid_alive, wait_until};
use shim_world::*;
use std::io::Write;
use std::time::Duration;

/// `ctr run -d` of `/bin/sleep 1000` on `rootfs` as container `id` with
/// `annotations` (what containerd's CRI plugin writes, here by hand).
fn run_annotated(s: &Shim, id: &str, rootfs: &std::path::Path, annotations: &[String]) -> Out {
    let mut args: Vec<String> = ["run", "-d", "--runtime", RUNTIME].map(String::from).to_vec();
    for a in annotations {
        args.extend(["--annotation".to_string(), a.clone()]);
    }
    args.extend(["--rootfs".to_string(), rootfs.display().to_string(), id.to_string()]);
    args.extend(["/bin/sleep", "1000"].map(String::from));
    s.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn a_published_port_serves_from_the_pod_namespace_and_nothing_else_comes_in() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let id = made.id("publish");
    let (pod_port, inside, unpublished) = (18080u16, 8000u16, 8001u16);
    let ns = format!("network:{}", s.pod.pod_path());
    let publish = format!("moat.dev/publish={pod_port}:{inside}");
    // The agent serves on its lo the published port, and tries another.
    let script = format!(
        "mkdir -p /tmp/w && echo hello-{id} > /tmp/w/index.html; \
         busybox httpd -p 127.0.0.1:{unpublished} -h /tmp/w 2>/tmp/w/refused.txt; \
         exec busybox httpd -f -p 127.0.0.1:{inside} -h /tmp/w"
    );
    let rootfs = s.rootfs.to_str().unwrap();
    // `--rootfs` is a flag: the root path and the id follow the options.
    s.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--with-ns",
        &ns,
        "--annotation",
        &publish,
        "--rootfs",
        rootfs,
        &id,
        "/bin/sh",
        "-c",
        &script,
    ]);
    let mut got = String::new();
    let served = wait_until(Duration::from_secs(10), || {
        got = get_in(s.pod.pod_path(), pod_port).unwrap_or_else(|e| e.to_string());
        got.contains(&format!("hello-{id}"))
    });
    // Nothing else comes in: the port the agent was not given is not
    // reachable from the pod's namespace, and the host has no listener.
    let other = get_in(s.pod.pod_path(), unpublished);
    let on_host = std::net::TcpStream::connect(("127.0.0.1", pod_port));
    let pids = s.task_ps(&id);
    kill_and_remove(s, &id);
    assert!(served, "the published port did not reach the agent's server: {got}\n{}", s.containerd_log());
    assert!(other.is_err(), "an unpublished port answered from the pod's namespace: {other:?}");
    assert!(on_host.is_err(), "the pod's port listens in the host's namespace");
    s.assert_nothing_left(&id, &pids);
}

#[test]
fn a_bad_publish_annotation_fails_the_create_naming_it() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let id = made.id("badpub");
    let o = s.run(&["--rm", "--annotation", "moat.dev/publish=8080,http"], &id, &["/bin/true"]);
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("annotation moat.dev/publish: \"http\": \"http\" is not a port"), "{o:?}");
    s.assert_nothing_left(&id, &[]);
}

#[test]
fn a_pods_containers_share_one_shim_that_ends_with_the_last() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let rootfs = s.rootfs.to_str().unwrap();
    // What containerd's CRI plugin writes on a pod's sandbox (pause)
    // container and on each of its containers.
    let pod = made.id("pod");
    let agent = made.id("agent");
    let group = format!("io.kubernetes.cri.sandbox-id={pod}");
    let run = |id: &str, kind: &str| {
        let kind = format!("io.kubernetes.cri.container-type={kind}");
        let opts = ["run", "-d", "--runtime", RUNTIME, "--annotation", &group, "--annotation", &kind, "--rootfs"];
        s.ctr_ok(&[&opts[..], &[rootfs, id, "/bin/sleep", "1000"]].concat());
    };
    run(&pod, "sandbox");
    run(&agent, "container");
    let (a, b) = (shim_above(s.task_pid(&pod)), shim_above(s.task_pid(&agent)));
    let pids = [s.task_ps(&pod), s.task_ps(&agent)].concat();
    // The pod's sandbox container goes last, as the kubelet removes it.
    kill_and_remove(s, &agent);
    let after_first = a.is_some_and(|p| pid_alive(i64::from(p)));
    kill_and_remove(s, &pod);
    assert!(a.is_some() && a == b, "one shim per pod: {a:?} and {b:?}");
    assert!(after_first, "the pod's shim ended while the pod's sandbox container still ran");
    let gone = wait_until(Duration::from_secs(10), || !a.is_some_and(|p| pid_alive(i64::from(p))));
    assert!(gone, "the pod's shim outlived its last container");
    s.assert_nothing_left(&pod, &pids);
    s.assert_nothing_left(&agent, &pids);
}

#[test]
fn a_killed_pod_shim_ends_every_container_of_the_pod() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let rootfs = s.rootfs.to_str().unwrap();
    let (pod, agent) = (made.id("kpod"), made.id("kagent"));
    let events = Events::start(s);
    let group = format!("io.kubernetes.cri.sandbox-id={pod}");
    for id in [&pod, &agent] {
        s.ctr_ok(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--annotation",
            &group,
            "--rootfs",
            rootfs,
            id,
            "/bin/sleep",
            "1000",
        ]);
    }
    let shim_pid = shim_above(s.task_pid(&pod)).expect("the pod's shim");
    assert_eq!(shim_above(s.task_pid(&agent)), Some(shim_pid), "one shim per pod");
    let mut all = [s.task_ps(&pod), s.task_ps(&agent)].concat();
    all.extend(
        processes()
            .into_iter()
            .filter(|(_, a)| a.windows(2).any(|w| w[0] == "__supervise" && (w[1] == pod || w[1] == agent)))
            .map(|(p, _)| p),
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim_pid), nix::sys::signal::Signal::SIGKILL)
        .expect("kill -9 the shim");
    let died = wait_until(Duration::from_secs(15), || !all.iter().any(|p| pid_alive(i64::from(*p))));
    assert!(died, "processes of the pod outlived its shim\n{}", s.containerd_log());
    for id in [&pod, &agent] {
        let exit = format!("/tasks/exit {{\"container_id\":\"{id}\"");
        assert!(
            wait_until(Duration::from_secs(10), || events.text().lines().any(|l| l.contains(&exit))),
            "containerd published no exit of {id}:\n{}",
            events.text()
        );
        s.assert_nothing_left(id, &all);
        let _ = s.ctr(&["task", "delete", id]);
        s.ctr_ok(&["containers", "rm", id]);
    }
}

#[test]
fn a_fresh_moat_home_runs_a_container() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let id = made.id("fresh");
    // A node where moat never ran: nothing under MOAT_HOME's cache (the
    // world's `moat bundle` made it; set it aside for this run).
    let cache = s.home().join("cache");
    let aside = s.home().join("cache.aside");
    let _ = std::fs::rename(&cache, &aside);
    let o = s.run(&["--rm"], &id, &["/bin/echo", "hi"]);
    let _ = std::fs::remove_dir_all(&cache);
    let _ = std::fs::rename(&aside, &cache);
    assert_eq!((o.code, o.stdout.as_str()), (0, "hi\n"), "{o:?}");
    s.assert_nothing_left(&id, &[]);
}

/// A containerd of one test's own (the world's keeps running), stopped
/// and started again at will; killed when dropped.
struct OwnContainerd {
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl OwnContainerd {
    fn new(s: &Shim, tag: &str) -> OwnContainerd {
        let dir = s.dir.join(format!("ctrd-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{0}/sock\"\n[ttrpc]\n  address = \"{0}/sock.ttrpc\"\n",
            dir.display()
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let mut c = OwnContainerd { dir, child: None };
        c.start(s);
        c
    }

    fn start(&mut self, s: &Shim) {
        let path = format!("{}:{}", s.dir.join("bin").display(), std::env::var("PATH").unwrap_or_default());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("log")).unwrap();
        let child = std::process::Command::new("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .env("PATH", path)
            .env("MOAT_HOME", s.home())
            .env("MOAT_RUN_DIR", s.dir.join("run"))
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        self.child = Some(child);
        assert!(wait_until(Duration::from_secs(20), || self.ctr(&["version"]).code == 0), "containerd did not start");
    }

    /// Stops containerd as a service manager would (SIGTERM); its shims live on.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    fn ctr(&self, args: &[&str]) -> Out {
        let mut c = std::process::Command::new("ctr");
        c.arg("--address").arg(self.dir.join("sock")).args(args);
        run_limited(c, Duration::from_secs(60))
    }

    /// (pid, status) of task `id` as `ctr task ls` shows it.
    fn task(&self, id: &str) -> Option<(i32, String)> {
        let out = self.ctr(&["task", "ls"]).stdout;
        out.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.first() != Some(&id) {
                return None;
            }
            Some((f.get(1)?.parse().ok()?, f.get(2)?.to_string()))
        })
    }
}

impl Drop for OwnContainerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            for t in self.ctr(&["task", "ls", "-q"]).stdout.lines() {
                let _ = self.ctr(&["task", "delete", "-f", t]);
            }
            for c in self.ctr(&["containers", "ls", "-q"]).stdout.lines() {
                let _ = self.ctr(&["containers", "rm", c]);
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_restarted_containerd_finds_its_running_containers_again() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let id = made.id("restart");
    let mut ctrd = OwnContainerd::new(s, &id);
    let o = ctrd.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--rootfs",
        s.rootfs.to_str().unwrap(),
        &id,
        "/bin/sleep",
        "1000",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    let (pid, _) = ctrd.task(&id).expect("the task runs");
    // An upgrade or a crash of containerd: the shims and their containers
    // live on, and the new containerd reconnects to them.
    ctrd.stop();
    ctrd.start(s);
    let seen = ctrd.task(&id);
    let alive = pid_alive(i64::from(pid));
    let o = ctrd.ctr(&["task", "kill", "-s", "KILL", &id]);
    let killed = o.code == 0 && wait_until(Duration::from_secs(10), || !pid_alive(i64::from(pid)));
    drop(ctrd);
    assert_eq!(seen, Some((pid, "RUNNING".to_string())), "after containerd's restart");
    assert!(alive, "the container died with containerd's restart");
    assert!(killed, "the restarted containerd cannot reach the container: {o:?}");
    s.assert_nothing_left(&id, &[pid]);
}

#[test]
fn a_spec_naming_the_hosts_namespace_publishes_on_loopback_only() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let id = made.id("hostpub");
    let (port, inside) = (18081u16, 8000u16);
    // `--with-ns network:/proc/self/ns/net` names the host's own namespace:
    // not a pod's, so a published port is the host's and stays on loopback
    // (moat run needs --publish-token for anything else).
    let publish = format!("moat.dev/publish={port}:{inside}");
    let script = format!(
        "mkdir -p /tmp/w && echo hello-{id} > /tmp/w/index.html; exec busybox httpd -f -p 127.0.0.1:{inside} -h /tmp/w"
    );
    s.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--with-ns",
        "network:/proc/self/ns/net",
        "--annotation",
        &publish,
        "--rootfs",
        s.rootfs.to_str().unwrap(),
        &id,
        "/bin/sh",
        "-c",
        &script,
    ]);
    let mut got = String::new();
    let served = wait_until(Duration::from_secs(10), || {
        got = get_in("/proc/self/ns/net", port).unwrap_or_else(|e| e.to_string());
        got.contains(&format!("hello-{id}"))
    });
    let outside = std::net::TcpStream::connect((s.net.host_ip, port));
    let pids = s.task_ps(&id);
    kill_and_remove(s, &id);
    assert!(served, "not served on the host's loopback: {got}");
    assert!(outside.is_err(), "published on the host's other addresses without a token");
    s.assert_nothing_left(&id, &pids);
}

#[test]
fn sigkill_ends_a_paused_container() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let id = made.id("pausekill");
    s.ctr_ok(&["run", "-d", "--runtime", RUNTIME, "--rootfs", s.rootfs.to_str().unwrap(), &id, "/bin/sleep", "1000"]);
    let pids = s.task_ps(&id);
    s.ctr_ok(&["task", "pause", &id]);
    // What `ctr task kill -s KILL` and a kubelet's stop of a frozen pod do:
    // runc thaws after the signal, so the frozen processes can die.
    s.ctr_ok(&["task", "kill", "-s", "KILL", &id]);
    let stopped = wait_until(Duration::from_secs(10), || s.task_status(&id).as_deref() == Some("STOPPED"));
    let status = s.task_status(&id);
    if !stopped {
        let _ = s.ctr(&["task", "resume", &id]);
    }
    kill_and_remove(s, &id);
    assert!(stopped, "a SIGKILLed paused container stays {status:?}");
    s.assert_nothing_left(&id, &pids);
}

/// `moat` with this world's home and run dir; its stdout (it must succeed).
fn moat_ok(s: &Shim, args: &[&str]) -> String {
    let o = s.moat(args);
    assert!(o.status.success(), "moat {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn net_ns(pid: i32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
}

#[test]
fn a_pods_app_container_joins_the_pods_network_gateway_and_approvals() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let (pod, agent) = (made.id("jpod"), made.id("jagent"));
    let pod_name = format!("mypod-{}", std::process::id());
    // busybox (nc) may reach up.test:80; other.test is unlisted.
    let rule = "[[network.policy]]\nname = \"busybox\"\nbinaries = [\"/bin/busybox\"]\n\
                [[network.policy.endpoint]]\nhost = \"up.test\"\nport = 80\nallowed_ips = [\"198.18.0.0/15\"]\n";
    // What containerd's CRI plugin writes: the pod's annotations go to
    // every container of the pod.
    let common = [
        format!("moat.dev/policy={rule}"),
        format!("io.kubernetes.cri.sandbox-id={pod}"),
        format!("io.kubernetes.cri.sandbox-name={pod_name}"),
        "io.kubernetes.cri.sandbox-namespace=default".to_string(),
    ];
    let run = |id: &str, extra: &[String]| {
        let o = run_annotated(s, id, &s.rootfs, &[&common[..], extra].concat());
        assert_eq!(o.code, 0, "{o:?}");
    };
    run(&pod, &["io.kubernetes.cri.container-type=sandbox".to_string()]);
    run(
        &agent,
        &["io.kubernetes.cri.container-type=container".into(), "io.kubernetes.cri.container-name=agent".into()],
    );
    let (pod_ns, agent_ns) = (net_ns(s.task_pid(&pod)), net_ns(s.task_pid(&agent)));
    let ls = moat_ok(s, &["ls"]);
    let req = r#"req() { printf 'GET http://%s%s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$1" "$2" "$1" | busybox nc 127.0.0.1 3128; }"#;
    let script =
        format!("{req}; ls /sys/class/net; req up.test /{agent}/listed; echo; req other.test /{agent}/unlisted; echo; echo '== dns'; busybox nslookup up.test 2>&1");
    let o = s.ctr(&["task", "exec", "--exec-id", "req", &agent, "/bin/sh", "-c", &script]);
    let approvals = moat_ok(s, &["approvals", &pod_name]);
    let via_agent = moat_ok(s, &["approvals", &format!("{pod_name}.agent")]);
    let events = moat_ok(s, &["events", &pod_name]);
    let pids = [s.task_ps(&pod), s.task_ps(&agent)].concat();
    kill_and_remove(s, &agent);
    kill_and_remove(s, &pod);

    // Named after the pod, and POD.CONTAINER.
    assert!(ls.lines().any(|l| l.split_whitespace().next() == Some(&pod_name)), "{ls}");
    let agent_name = format!("{pod_name}.agent");
    assert!(ls.lines().any(|l| l.split_whitespace().next() == Some(agent_name.as_str())), "{ls}");
    // One network namespace for the pod, with only lo.
    assert!(
        pod_ns.is_some() && pod_ns == agent_ns,
        "the agent has a namespace of its own: {agent_ns:?}, pod {pod_ns:?}"
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.starts_with("lo\n"), "{}", o.stdout);
    // Its names come from the pod's DNS responder (transparent egress's
    // reserved range), as the pod sandbox's own would.
    let dns = o.stdout.split("== dns").nth(1).unwrap_or("");
    assert!(dns.contains("198.19."), "the agent's DNS answer is not the pod responder's: {dns}");
    // The pod's gateway served the agent: the listed host answered, the
    // unlisted one was refused, and the pod's queue holds the approval.
    assert!(
        o.stdout.contains("HTTP/1.1 200 OK") && o.stdout.contains(&format!("echo GET /{agent}/listed 0")),
        "{}",
        o.stdout
    );
    let approval = o
        .stdout
        .split("approval id: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no approval id in the refusal: {}", o.stdout))
        .to_string();
    assert!(
        approvals.contains(&approval) && approvals.contains("other.test"),
        "moat approvals {pod_name}:\n{approvals}"
    );
    assert!(via_agent.contains(&approval), "moat approvals {agent_name} is not the pod's queue:\n{via_agent}");
    // The pod's one audit log holds both decisions about the agent's requests.
    assert!(events.contains("up.test") && events.contains("other.test"), "moat events {pod_name}:\n{events}");
    let seen: Vec<String> = s.up.seen().into_iter().map(|r| r.path).collect();
    assert!(!seen.iter().any(|p| p.contains(&format!("/{agent}/unlisted"))), "the refused request went out");
    for name in [&pod_name, &agent_name] {
        let left = wait_until(Duration::from_secs(10), || !moat_ok(s, &["ls"]).contains(name.as_str()));
        assert!(left && cgroups_of(name).is_empty(), "sandbox {name} left behind");
    }
    s.assert_nothing_left(&pod, &pids);
    s.assert_nothing_left(&agent, &pids);
}

#[test]
fn a_container_never_joins_a_sandbox_that_took_its_pods_name() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let (pod, agent) = (made.id("opod"), made.id("oagent"));
    let pod_name = format!("owned-{}", std::process::id());
    let common = [
        format!("io.kubernetes.cri.sandbox-id={pod}"),
        format!("io.kubernetes.cri.sandbox-name={pod_name}"),
        "io.kubernetes.cri.sandbox-namespace=default".to_string(),
    ];
    let run = |id: &str, extra: &str| run_annotated(s, id, &s.rootfs, &[&common[..], &[extra.to_string()]].concat());
    assert_eq!(run(&pod, "io.kubernetes.cri.container-type=sandbox").code, 0);
    // The pod's sandbox goes by hand, and another sandbox takes its name.
    assert!(s.moat(&["rm", "--force", "--workspace", &pod_name]).status.success());
    let o = s.moat(&["run", "-d", "--name", &pod_name, "probe", "--", "/bin/sleep", "1000"]);
    assert!(o.status.success(), "moat run: {}", String::from_utf8_lossy(&o.stderr));
    // The kubelet (re)starts an app container of the pod.
    let joined = run(&agent, "io.kubernetes.cri.container-type=container");
    let _ = s.moat(&["rm", "--force", "--workspace", &pod_name]);
    kill_and_remove(s, &agent);
    kill_and_remove(s, &pod);
    assert_ne!(joined.code, 0, "the app container joined moat run's sandbox {pod_name}: {joined:?}");
    assert!(joined.stderr.contains("not the pod's"), "{joined:?}");
    s.assert_nothing_left(&agent, &[]);
}

#[test]
fn a_pods_containers_keep_their_own_binaries_apart() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let (pod, a, b) = (made.id("tpod"), made.id("ta"), made.id("tb"));
    let pod_name = format!("tofu-{}", std::process::id());
    // Container b's image has another busybox at the same path (a byte
    // appended: it still runs, its hash differs).
    let rootfs_b = s.dir.join(format!("rootfs-b-{}", std::process::id()));
    let cp = std::process::Command::new("cp").arg("-a").arg(&s.rootfs).arg(&rootfs_b).status().expect("cp");
    assert!(cp.success());
    std::fs::OpenOptions::new().append(true).open(rootfs_b.join("bin/busybox")).unwrap().write_all(b"\0b").unwrap();
    let rule = "[[network.policy]]\nname = \"busybox\"\nbinaries = [\"/bin/busybox\"]\n\
                [[network.policy.endpoint]]\nhost = \"up.test\"\nport = 80\nallowed_ips = [\"198.18.0.0/15\"]\n";
    let run = |id: &str, rootfs: &std::path::Path, kind: &str, name: &str| {
        let annotations = [
            format!("moat.dev/policy={rule}"),
            format!("io.kubernetes.cri.sandbox-id={pod}"),
            format!("io.kubernetes.cri.sandbox-name={pod_name}"),
            format!("io.kubernetes.cri.container-type={kind}"),
            format!("io.kubernetes.cri.container-name={name}"),
        ];
        let o = run_annotated(s, id, rootfs, &annotations);
        assert_eq!(o.code, 0, "{o:?}");
    };
    run(&pod, &s.rootfs, "sandbox", "");
    run(&a, &s.rootfs, "container", "a");
    run(&b, &rootfs_b, "container", "b");
    let req = |id: &str| {
        let script = r#"printf 'GET http://up.test/tofu HTTP/1.1\r\nHost: up.test\r\nConnection: close\r\n\r\n' | busybox nc 127.0.0.1 3128 | head -1"#;
        s.ctr(&["task", "exec", "--exec-id", "r", id, "/bin/sh", "-c", script]).stdout
    };
    // a's busybox is trusted first; b's, another file at the same path,
    // is its own container's and no "changed binary".
    let (first, second) = (req(&a), req(&b));
    for id in [&b, &a, &pod] {
        kill_and_remove(s, id);
    }
    let _ = std::fs::remove_dir_all(&rootfs_b);
    assert!(first.starts_with("HTTP/1.1 200"), "container a: {first}");
    assert!(second.starts_with("HTTP/1.1 200"), "container b, its own busybox: {second}");
    s.assert_nothing_left(&b, &[]);
}
