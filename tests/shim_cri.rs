//! The Kubernetes path without a kubelet (issue 22): a real containerd 1.6
//! with its CRI plugin, the `moat` runtime handler of
//! examples/kubernetes/containerd-config.toml, Debian's CNI plugins and a
//! pause image built by moat, driven through CRI (`k8s-cri`, runtime.v1)
//! exactly as a kubelet would: RunPodSandbox with `runtime_handler: moat`
//! and a `moat.dev/policy` pod annotation, CreateContainer, StartContainer,
//! ExecSync, StopContainer, StopPodSandbox, RemoveContainer,
//! RemovePodSandbox. Guards the cluster front door: an agent in a pod of
//! RuntimeClass moat sees only `lo`, its egress goes through moat's gateway
//! under the pod's policy (dialled from the pod's CNI namespace), and a
//! removed pod leaves nothing; a shim killed with SIGKILL is reported as
//! an exit. Needs root, containerd, containernetworking-plugins,
//! busybox-static, iproute2.
mod cri_world;
#[path = "../supervisor/tests/gateway_common/mod.rs"]
mod gateway_common;
mod sandbox_common;
mod shim_world;

use cri_world::client::PodSpec;
use cri_world::{cri, Cri, CtrEvents, PodGuard, PAUSE_IMAGE, PROBE_IMAGE, UPSTREAM_PAUSE_IMAGE};
use sandbox_common::{assert_process_guards, parse, pid_alive, wait_until, GATEWAY_PORT};
use shim_world::{get_in, response, section};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Tests of this binary run one at a time (2 cores; sandboxes share uids).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `req HOST PATH`: one plain-HTTP request in proxy form to the gateway
/// with busybox's nc.
const REQ: &str = r#"req() { printf 'GET http://%s%s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$1" "$2" "$1" | /bin/busybox nc 127.0.0.1 3128; }"#;

/// The pod's policy: the baseline plus one rule, busybox (nc) may reach
/// `host`:80 on the pod network's /24 (private to the SSRF guard unless
/// named).
fn policy(host: &str, net: &str) -> String {
    format!(
        "[[network.policy]]\nname = \"busybox\"\nbinaries = [\"/bin/busybox\"]\n\
         [[network.policy.endpoint]]\nhost = \"{host}\"\nport = 80\nallowed_ips = [\"{net}.0/24\"]\n"
    )
}

fn pod_spec<'a>(w: &Cri, name: &'a str, handler: &'a str) -> PodSpec<'a> {
    let annotations = HashMap::from([("moat.dev/policy".to_string(), policy("up.test", &w.net))]);
    let log_dir = w.dir.join("logs").join(name);
    PodSpec { name, uid: format!("{name}-{}", std::process::id()), log_dir, annotations, handler }
}

/// Runs a pod with one agent container (the probe image, sleeping) as a
/// kubelet does; returns the guard and the container's id.
fn agent_pod<'a>(w: &'a Cri, spec: &PodSpec) -> (PodGuard<'a>, String) {
    let pod = w.client.run_pod(spec).unwrap_or_else(|e| panic!("RunPodSandbox: {e:?}\n{}", w.log()));
    let guard = PodGuard { w, id: pod.clone() };
    let id = w
        .client
        .create_container(&pod, spec, "agent", PROBE_IMAGE, &["/bin/sleep", "3600"])
        .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\n{}", w.log()));
    w.client.start_container(&id).unwrap_or_else(|e| {
        let out = std::fs::read_to_string(spec.log_dir.join("agent.log")).unwrap_or_default();
        panic!("StartContainer: {e:?}\nthe container's output:\n{out}\n{}", w.log())
    });
    (guard, id)
}

fn exec(w: &Cri, id: &str, script: &str) -> (i32, String, String) {
    w.client.exec_sync(id, &["/bin/sh", "-c", script]).unwrap_or_else(|e| panic!("ExecSync: {e:?}\n{}", w.log()))
}

/// What a kubelet does when the pod goes: stop the container, stop the
/// pod, remove both.
fn kubelet_teardown(w: &Cri, guard: &mut PodGuard, id: &str) {
    w.client.stop_container(id, 2).unwrap_or_else(|e| panic!("StopContainer: {e:?}\n{}", w.log()));
    w.client.stop_pod(&guard.id).unwrap_or_else(|e| panic!("StopPodSandbox: {e:?}\n{}", w.log()));
    w.client.remove_container(id).unwrap_or_else(|e| panic!("RemoveContainer: {e:?}\n{}", w.log()));
    w.client.remove_pod(&guard.id).unwrap_or_else(|e| panic!("RemovePodSandbox: {e:?}\n{}", w.log()));
    let pods = w.client.list_pods().expect("ListPodSandbox");
    assert!(!pods.iter().any(|p| p.id == guard.id), "the removed pod is still listed: {pods:?}");
    guard.id.clear();
}

/// The pod's two containers (pause, agent) with their moat sandboxes.
fn sandboxes(w: &Cri, pod: &str, id: &str) -> Vec<(String, String)> {
    [pod, id]
        .iter()
        .map(|c| {
            let name = w.sandbox_of(c).unwrap_or_else(|| panic!("no moat sandbox for container {c} in {:?}", w.home()));
            (c.to_string(), name)
        })
        .collect()
}

#[test]
fn a_pod_of_runtime_class_moat_sees_only_lo_refuses_unlisted_hosts_and_leaves_nothing() {
    let _g = serial();
    let w = cri();
    let spec = pod_spec(w, "agent", "moat");
    let t0 = Instant::now();
    let (mut guard, id) = agent_pod(w, &spec);
    let (code, out, err) = exec(w, &id, "echo ready");
    eprintln!("moat: RunPodSandbox -> ExecSync answered in {:?}", t0.elapsed());
    assert_eq!((code, out.as_str()), (0, "ready\n"), "{err}");
    let names = sandboxes(w, &guard.id, &id);
    let mut pids = vec![w.task_pid(&id).expect("the agent's task pid"), w.task_pid(&guard.id).expect("the pause's")];
    // A process an exec leaves running must go with the pod too.
    let (code, out, err) = exec(w, &id, "/bin/busybox sleep 4242 >/dev/null 2>&1 &");
    assert_eq!(code, 0, "{out}{err}");
    let bg = shim_world::processes().into_iter().find(|(_, a)| a.iter().any(|x| x == "4242")).map(|(p, _)| p);
    pids.push(bg.unwrap_or_else(|| panic!("the exec's background sleep is not running")));

    // The guards inside: only lo, no capabilities, Landlock, seccomp.
    let script =
        format!("ls /sys/class/net; echo ==; /usr/local/bin/moat-probe all {GATEWAY_PORT} {}", std::process::id());
    let (code, out, err) = exec(w, &id, &script);
    assert_eq!(code, 0, "{out}{err}\n{}", w.log());
    let (ifaces, probe) = out.split_once("==\n").unwrap_or_else(|| panic!("{out}"));
    assert_eq!(ifaces, "lo\n", "the agent container's network namespace has only lo");
    let r = parse(probe);
    assert_process_guards(&r);
    assert_eq!(r["connect_gateway"], "ok", "the gateway's socket is reachable");

    // The pod's policy: an unlisted host is refused with an approval id,
    // which `moat approvals` lists under the container's sandbox.
    let tag = &id[..12];
    let script = format!("{REQ}; echo '== unlisted'; req other.test /{tag}/unlisted");
    let (code, out, err) = exec(w, &id, &script);
    assert_eq!(code, 0, "{out}{err}");
    let (status, body) = response(section(&out, "unlisted"));
    assert!(status.starts_with("HTTP/1.1 403 "), "{out}");
    assert!(body.contains("other.test") && body.contains("/bin/busybox"), "{body}");
    let approval = body
        .split("approval id: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no approval id in the refusal: {body}"))
        .to_string();
    // The pod's one queue, under the pod's name (its sandbox container's
    // sandbox); the agent's is POD.CONTAINER.
    let (pod, agent) = (&names[0].1, &names[1].1);
    assert_eq!(agent, &format!("{pod}.agent"), "{names:?}");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["approvals", pod])
        .env("MOAT_HOME", w.home())
        .env("MOAT_RUN_DIR", w.dir.join("run"))
        .output()
        .expect("moat approvals");
    let list = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "moat approvals {pod}: {}", String::from_utf8_lossy(&o.stderr));
    assert!(list.contains(&approval) && list.contains("other.test:80"), "{list}");
    assert!(!w.up.seen().iter().any(|s| s.path.contains(&format!("/{tag}/unlisted"))), "the refused request went out");

    kubelet_teardown(w, &mut guard, &id);
    w.assert_nothing_left(&names, &pids);
}

#[test]
fn the_listed_host_is_reached_from_the_pods_cni_namespace() {
    let _g = serial();
    let w = cri();
    let spec = pod_spec(w, "listed", "moat");
    let (mut guard, id) = agent_pod(w, &spec);
    let names = sandboxes(w, &guard.id, &id);
    // The upstream sits on the pod bridge: only the pod's CNI namespace
    // reaches it (the host has no address or route there, the agent's own
    // namespace only lo).
    let tag = &id[..12];
    // The premise, checked without the gateway: the pod's CNI namespace
    // reaches the upstream; the host has no route over the pod bridge.
    let netns = w.pod_netns();
    assert_eq!(netns.len(), 1, "one pod network namespace: {netns:?}");
    let control = format!(
        "(printf 'GET /{tag}/control HTTP/1.1\\r\\nHost: up.test\\r\\nConnection: close\\r\\n\\r\\n'; sleep 1) | /bin/busybox nc {} 80",
        w.up_ip
    );
    let mut c = std::process::Command::new("nsenter");
    c.arg(format!("--net={}", netns[0].display())).args(["/bin/sh", "-c", &control]);
    let o = shim_world::run_limited(c, Duration::from_secs(10));
    assert!(o.stdout.starts_with("HTTP/1.1 200 OK"), "the pod's CNI namespace does not reach the upstream: {o:?}");
    let route = std::process::Command::new("ip").args(["route", "get", &w.up_ip.to_string()]).output();
    let route = route.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    assert!(!route.contains(&w.bridge), "the host routes to the upstream over the pod bridge: {route}");
    let script = format!("{REQ}; echo '== listed'; req up.test /{tag}/listed");
    let (code, out, err) = exec(w, &id, &script);
    assert_eq!(code, 0, "{out}{err}");
    let (status, body) = response(section(&out, "listed"));
    assert_eq!(status, "HTTP/1.1 200 OK", "the listed host through the gateway:\n{out}\n{}", w.log());
    assert_eq!(body.trim_end(), format!("echo GET /{tag}/listed 0"), "{out}");
    assert!(w.up.seen().iter().any(|s| s.path == format!("/{tag}/listed")), "the upstream saw no request");
    kubelet_teardown(w, &mut guard, &id);
    w.assert_nothing_left(&names, &[]);
}

#[test]
fn a_bad_policy_annotation_fails_run_pod_sandbox_naming_it() {
    let _g = serial();
    let w = cri();
    let mut spec = pod_spec(w, "badpolicy", "moat");
    spec.annotations.insert("moat.dev/policy".into(), "version = 1\n[network\n".into());
    let r = w.client.run_pod(&spec);
    let _guard = PodGuard { w, id: r.as_ref().ok().cloned().unwrap_or_default() };
    let e = r.expect_err("a pod with a policy that does not parse");
    assert!(e.message().contains("annotation moat.dev/policy: moat.dev/policy:2:"), "{e:?}");
    // Nothing of the refused pod stays: no moat sandbox, no pod.
    let left = std::fs::read_dir(w.home().join("sandboxes")).map(|r| r.count()).unwrap_or(0);
    assert_eq!(left, 0, "a refused pod left a sandbox record");
    let pods = w.client.list_pods().expect("ListPodSandbox");
    assert!(!pods.iter().any(|p| p.metadata.as_ref().is_some_and(|m| m.name == "badpolicy")), "{pods:?}");
}

/// `moat.test/cri:pause` names another image while it lives.
struct Retag<'a> {
    w: &'a Cri,
    old_id: String,
}

impl<'a> Retag<'a> {
    fn to(w: &'a Cri, image: &str) -> Retag<'a> {
        let id = |i: &str| w.client.image_id(i).ok().flatten().unwrap_or_else(|| panic!("CRI knows no {i}"));
        let (old_id, new_id) = (id(PAUSE_IMAGE), id(image));
        assert_ne!(old_id, new_id);
        let o = w.ctr(&["-n", "k8s.io", "images", "tag", "--force", image, PAUSE_IMAGE]);
        assert_eq!(o.code, 0, "ctr images tag: {o:?}");
        let r = Retag { w, old_id };
        let seen = wait_until(Duration::from_secs(10), || id(PAUSE_IMAGE) == new_id);
        assert!(seen, "CRI's image store did not follow the new tag");
        r
    }
}

impl Drop for Retag<'_> {
    fn drop(&mut self) {
        let _ = self.w.ctr(&["-n", "k8s.io", "images", "tag", "--force", &self.old_id, PAUSE_IMAGE]);
        let back = wait_until(Duration::from_secs(10), || {
            self.w.client.image_id(PAUSE_IMAGE).ok().flatten().as_deref() == Some(self.old_id.as_str())
        });
        if !back && !std::thread::panicking() {
            panic!("could not tag the world's pause image back");
        }
    }
}

#[test]
fn a_pod_whose_pause_image_is_shaped_as_upstreams_stays_up() {
    let _g = serial();
    let w = cri();
    // registry.k8s.io/pause: /pause, user 65535, no /etc/passwd.
    let _retag = Retag::to(w, UPSTREAM_PAUSE_IMAGE);
    let events = CtrEvents::start(w);
    let spec = pod_spec(w, "upstream-pause", "moat");
    let pod = w.client.run_pod(&spec).unwrap_or_else(|e| panic!("RunPodSandbox: {e:?}\n{}", w.log()));
    let mut guard = PodGuard { w, id: pod.clone() };
    std::thread::sleep(Duration::from_secs(1));
    let ready = w.client.pod_status(&pod).map(|s| s.state);
    let running = w.task_pid(&pod);
    assert!(
        ready.as_ref().ok() == Some(&(k8s_cri::v1::PodSandboxState::SandboxReady as i32)) && running.is_some(),
        "the pod's pause died within a second (state {ready:?}, task {running:?}); containerd's events:\n{}",
        events.text()
    );
    w.client.stop_pod(&pod).expect("StopPodSandbox");
    w.client.remove_pod(&pod).expect("RemovePodSandbox");
    guard.id.clear();
}

#[test]
fn a_shim_killed_with_sigkill_is_an_exit_and_the_pod_leaves_nothing() {
    let _g = serial();
    let w = cri();
    let spec = pod_spec(w, "crash", "moat");
    let (mut guard, id) = agent_pod(w, &spec);
    let names = sandboxes(w, &guard.id, &id);
    let pids = vec![w.task_pid(&id).expect("the agent's pid"), w.task_pid(&guard.id).expect("the pause's pid")];
    // One shim serves the pod (named by the pod's id): both die with it.
    let shim = shim_world::shim_pid_at(&w.sock, &guard.id).unwrap_or_else(|| panic!("no shim for pod {}", guard.id));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    // containerd notices, cleans up (`shim delete`) and publishes the exit.
    let mut last = None;
    let exited = wait_until(Duration::from_secs(20), || {
        last = w.client.container_status(&id).ok();
        last.as_ref().is_some_and(|s| s.state == k8s_cri::v1::ContainerState::ContainerExited as i32)
    });
    assert!(exited, "the container is not reported exited after its shim died: {last:?}\n{}", w.log());
    let not_ready = wait_until(Duration::from_secs(20), || {
        w.client.pod_status(&guard.id).is_ok_and(|s| s.state == k8s_cri::v1::PodSandboxState::SandboxNotready as i32)
    });
    assert!(not_ready, "the pod is still ready after its shim died: {:?}", w.client.pod_status(&guard.id));
    // They die of it (PDEATHSIG, then their supervisors' teardown): soon,
    // not necessarily before containerd has noticed.
    let died = wait_until(Duration::from_secs(15), || !pids.iter().any(|p| pid_alive(i64::from(*p))));
    let alive: Vec<&i32> = pids.iter().filter(|p| pid_alive(i64::from(**p))).collect();
    assert!(died, "processes {alive:?} of the pod outlived its shim");
    kubelet_teardown(w, &mut guard, &id);
    w.assert_nothing_left(&names, &pids);
}

/// The benchmark of tests/bench/shim_cri.sh, not a check: RunPodSandbox to
/// the first ExecSync answer, moat's handler against runc's on the same
/// images and network, alternating, MOAT_BENCH_RUNS rounds; prints the
/// medians and their ratio.
#[test]
#[ignore = "benchmark: run by tests/bench/shim_cri.sh"]
fn bench_run_pod_sandbox_to_exec_sync() {
    let _g = serial();
    let w = cri();
    let runs: usize = std::env::var("MOAT_BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(10);
    let mut times: HashMap<&str, Vec<Duration>> = HashMap::new();
    for round in 0..runs + 1 {
        for handler in ["moat", "runc"] {
            let name = format!("bench-{handler}-{round}");
            let spec = pod_spec(w, &name, handler);
            let t0 = Instant::now();
            let (mut guard, id) = agent_pod(w, &spec);
            let (code, out, err) = exec(w, &id, "echo ready");
            let t = t0.elapsed();
            assert_eq!((code, out.as_str()), (0, "ready\n"), "{handler}: {err}");
            // The first round warms caches (image unpack, page cache).
            if round > 0 {
                times.entry(handler).or_default().push(t);
            }
            kubelet_teardown(w, &mut guard, &id);
        }
    }
    let median = |h: &str| {
        let mut v = times[h].clone();
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1000.0
    };
    let (m, r) = (median("moat"), median("runc"));
    println!("RunPodSandbox -> CreateContainer -> StartContainer -> first ExecSync answer, median of {runs}:");
    println!("  moat handler (io.containerd.moat.v1): {m:.1} ms");
    println!("  runc handler (io.containerd.runc.v2): {r:.1} ms");
    println!("  ratio moat/runc: {:.2}", m / r);
}

#[test]
fn a_port_the_pod_publishes_reaches_the_agent_from_the_pods_namespace() {
    let _g = serial();
    let w = cri();
    let mut spec = pod_spec(w, "served", "moat");
    spec.annotations.insert("moat.dev/publish".into(), "18090:8000".into());
    let before = w.pod_netns();
    let pod = w.client.run_pod(&spec).unwrap_or_else(|e| panic!("RunPodSandbox: {e:?}\n{}", w.log()));
    let mut guard = PodGuard { w, id: pod.clone() };
    let serve =
        "mkdir -p /tmp/w && echo hello-cri > /tmp/w/index.html; exec /bin/busybox httpd -f -p 127.0.0.1:8000 -h /tmp/w";
    let id = w
        .client
        .create_container(&pod, &spec, "agent", PROBE_IMAGE, &["/bin/sh", "-c", serve])
        .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\n{}", w.log()));
    w.client.start_container(&id).unwrap_or_else(|e| panic!("StartContainer: {e:?}\n{}", w.log()));
    // The pod's CNI namespace: the one this pod added.
    let ns = w.pod_netns().into_iter().find(|n| !before.contains(n)).expect("the pod's network namespace");
    let mut got = String::new();
    let served = wait_until(Duration::from_secs(10), || {
        got = get_in(&ns, 18090).unwrap_or_else(|e| e.to_string());
        got.contains("hello-cri")
    });
    let unpublished = get_in(&ns, 8000);
    let names = sandboxes(w, &guard.id, &id);
    let pids = vec![w.task_pid(&id).expect("the agent's pid"), w.task_pid(&guard.id).expect("the pause's pid")];
    kubelet_teardown(w, &mut guard, &id);
    assert!(served, "the pod's published port did not reach the agent: {got}\n{}", w.log());
    assert!(unpublished.is_err(), "the agent's own port answered in the pod's namespace: {unpublished:?}");
    w.assert_nothing_left(&names, &pids);
}
