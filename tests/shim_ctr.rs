//! moat's containerd shim (`containerd-shim-moat-v1`, issue 22) driven by
//! `ctr` against a real containerd (Debian 12's 1.6): exit codes and output,
//! the sandbox's guards inside (only `lo`, no capabilities, Landlock,
//! seccomp), the egress gateway with a policy from the `moat.dev/policy`
//! annotation, exec/ps/pause/resume/kill/delete, a pod network namespace
//! the gateway dials from, nothing left behind after delete, and a shim
//! killed with SIGKILL. Guards the engine front door: a container started
//! by containerd is as confined as `moat run`'s and leaves nothing when it
//! goes. Needs root, containerd, busybox-static, iproute2.
#[path = "../supervisor/tests/gateway_common/mod.rs"]
mod gateway_common;
mod sandbox_common;
mod shim_world;

use gateway_common::Upstream;
use sandbox_common::{assert_process_guards, parse, pid_alive, wait_until, GATEWAY_PORT};
use shim_world::*;
use std::time::Duration;

/// A shell function for the container: `req HOST[:PORT] PATH` sends one
/// plain-HTTP request in proxy form to the gateway with busybox's nc.
const REQ: &str = r#"req() { printf 'GET http://%s%s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$1" "$2" "$1" | busybox nc 127.0.0.1 3128; }"#;

/// One `[[network.policy]]` rule over the baseline: busybox (nc) may reach
/// `host:port` (the test upstreams are in 198.18.0.0/15, private to the
/// SSRF guard unless named).
fn busybox_rule(host: &str, port: u16) -> String {
    format!(
        "[[network.policy]]\nname = \"busybox\"\nbinaries = [\"/bin/busybox\"]\n\
         [[network.policy.endpoint]]\nhost = \"{host}\"\nport = {port}\nallowed_ips = [\"198.18.0.0/15\"]\n"
    )
}

/// The sections of `out` that follow `== NAME` marker lines.
fn section<'a>(out: &'a str, name: &str) -> &'a str {
    let marker = format!("== {name}\n");
    let start = out.find(&marker).map(|i| i + marker.len()).unwrap_or_else(|| panic!("no {marker:?} in:\n{out}"));
    let rest = &out[start..];
    rest.find("\n== ").map(|i| &rest[..i + 1]).unwrap_or(rest)
}

/// An HTTP response's status line and body.
fn response(text: &str) -> (&str, &str) {
    let status = text.lines().next().unwrap_or("").trim_end();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body)
}

fn seen_paths(up: &Upstream) -> Vec<String> {
    up.seen().into_iter().map(|s| s.path).collect()
}

#[test]
fn exit_code_and_output_reach_ctr() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let id = made.id("exit");
    let rootfs = s.rootfs.to_str().unwrap();
    let script = "read a; read b; echo out-$a-$b-$((1+2)); echo err >&2; exit 3";
    let cmd = s.ctr_command(&["run", "--rm", "--runtime", RUNTIME, "--rootfs", rootfs, &id, "/bin/sh", "-c", script]);
    let o = try_run(cmd, Some(b"in\nput\n"), Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o.code, 3, "ctr run's exit code is the container's: {o:?}\n{}", s.containerd_log());
    assert_eq!(o.stdout, "out-in-put-3\n", "ctr's stdin reached the container, its stdout ctr: {o:?}");
    assert_eq!(o.stderr, "err\n", "{o:?}");
    let o = s.run(&["--rm"], &made.id("exit0"), &["/bin/true"]);
    assert_eq!((o.code, o.stdout.as_str()), (0, ""), "{o:?}");
    // --rm: the container is gone, and so is its sandbox.
    assert!(!s.ctr_ok(&["containers", "ls", "-q"]).lines().any(|l| l == id));
    s.assert_nothing_left(&id, &[]);
}

#[test]
fn inside_only_lo_no_capabilities_landlock_and_seccomp() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let id = made.id("guards");
    // The test process is the host pid the probe tries to signal.
    let script =
        format!("ls /sys/class/net; echo ==; /usr/local/bin/moat-probe all {GATEWAY_PORT} {}", std::process::id());
    let o = s.run(&["--rm"], &id, &["/bin/sh", "-c", &script]);
    assert_eq!(o.code, 0, "{o:?}\n{}", s.containerd_log());
    let (ifaces, probe) = o.stdout.split_once("==\n").unwrap_or_else(|| panic!("{o:?}"));
    assert_eq!(ifaces, "lo\n", "the container's network namespace has only lo");
    let r = parse(probe);
    assert_process_guards(&r);
    assert_eq!(r["landlock_read_srv"], "EACCES", "Landlock refuses a 0644 file outside the policy's paths");
    assert_eq!(r["connect_gateway"], "ok", "the gateway's socket is reachable");
    assert_eq!(r["connect_other_port"], "EACCES", "Landlock allows TCP connect to the gateway port only");
}

#[test]
fn a_spec_that_asks_for_more_gets_only_what_the_policy_gives() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let id = made.id("wider");
    // Everything ctr can ask to widen a container: moat's policy decides.
    let opts = [
        "--rm",
        "--privileged",
        "--net-host",
        "--allow-new-privs",
        "--cap-add",
        "CAP_SYS_ADMIN",
        "--mount",
        "type=bind,src=/etc,dst=/hostetc,options=rbind:rw",
        "--device",
        "/dev/kmsg",
        "--env",
        "FOO=bar",
        "--cwd",
        "/tmp",
    ];
    let script = "ls /sys/class/net; ls -d /hostetc /dev/kmsg 2>&1; grep -e CapEff -e CapBnd -e NoNewPrivs /proc/self/status; pwd; echo $FOO; id -u";
    let o = s.run(&opts, &id, &["/bin/sh", "-c", script]);
    assert_eq!(o.code, 0, "{o:?}\n{}", s.containerd_log());
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(
        lines[..8],
        [
            "lo",
            "ls: /hostetc: No such file or directory",
            "ls: /dev/kmsg: No such file or directory",
            "CapEff:\t0000000000000000",
            "CapBnd:\t0000000000000000",
            "NoNewPrivs:\t1",
            "/tmp",
            "bar"
        ],
        "{o:?}"
    );
    // ctr's user is root (0): the sandbox's own host uid runs instead.
    let uid: u32 = lines.get(8).and_then(|u| u.parse().ok()).unwrap_or_else(|| panic!("{o:?}"));
    assert!(uid >= 0x6d00_0000, "uid {uid}");
}

#[test]
fn the_gateway_refuses_an_unlisted_host_and_allows_a_listed_one() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let id = made.id("gw");
    let policy = format!("moat.dev/policy={}", busybox_rule("up.test", 80));
    let rootfs = s.rootfs.to_str().unwrap();
    s.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        &policy,
        "--rootfs",
        rootfs,
        &id,
        "/bin/sleep",
        "1000",
    ]);
    let script = format!(
        "{REQ}; echo '== listed'; req up.test /{id}/listed; echo; echo '== unlisted'; req other.test /{id}/unlisted"
    );
    let o = s.ctr(&["task", "exec", "--exec-id", "req", &id, "/bin/sh", "-c", &script]);
    assert_eq!(o.code, 0, "{o:?}");
    let (status, body) = response(section(&o.stdout, "listed"));
    assert_eq!(status, "HTTP/1.1 200 OK", "{}", o.stdout);
    assert_eq!(body.trim_end(), format!("echo GET /{id}/listed 0"), "{}", o.stdout);
    let (status, body) = response(section(&o.stdout, "unlisted"));
    assert!(status.starts_with("HTTP/1.1 403 "), "{}", o.stdout);
    assert!(body.contains("other.test") && body.contains("/bin/busybox"), "{body}");
    let approval = body
        .split("approval id: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no approval id in the refusal: {body}"))
        .to_string();
    let paths = seen_paths(&s.up);
    assert!(paths.contains(&format!("/{id}/listed")), "{paths:?}");
    assert!(!paths.iter().any(|p| p.contains(&format!("/{id}/unlisted"))), "the refused request went out: {paths:?}");
    // The sandbox is registered under the container's id: the usual
    // commands reach its approvals queue.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["approvals", &id])
        .env("MOAT_HOME", s.home())
        .env("MOAT_RUN_DIR", s.dir.join("run"))
        .output()
        .expect("moat approvals");
    let list = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "moat approvals {id}: {}", String::from_utf8_lossy(&o.stderr));
    assert!(list.contains(&approval) && list.contains("other.test:80"), "{list}");
    s.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
}

#[test]
fn a_bad_policy_annotation_fails_the_run_naming_it() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let id = made.id("badpol");
    let o = s.run(&["--rm", "--annotation", "moat.dev/policy=version = 1\n[network\n"], &id, &["/bin/true"]);
    assert_ne!(o.code, 0, "a policy that does not parse must fail the run: {o:?}");
    assert!(
        o.stderr.contains("annotation moat.dev/policy: moat.dev/policy:2:"),
        "the error names the annotation and line:column: {}",
        o.stderr
    );
    s.assert_nothing_left(&id, &[]);
    let id = made.id("badpreset");
    let o = s.run(&["--rm", "--annotation", "moat.dev/presets=github,no-such-preset"], &id, &["/bin/true"]);
    assert_ne!(o.code, 0, "an unknown preset must fail the run: {o:?}");
    assert!(
        o.stderr.contains("annotation moat.dev/presets") && o.stderr.contains("\"no-such-preset\""),
        "the error names the annotation and the preset: {}",
        o.stderr
    );
    s.assert_nothing_left(&id, &[]);
}

#[test]
fn exec_ps_pause_resume_kill_and_delete() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let id = made.id("life");
    let events = Events::start(s);
    let counter = "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.02; done";
    s.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--rootfs",
        s.rootfs.to_str().unwrap(),
        &id,
        "/bin/sh",
        "-c",
        counter,
    ]);
    assert_eq!(s.task_status(&id).as_deref(), Some("RUNNING"));
    let init = s.task_pid(&id);

    // exec: its exit code and output; it sees the container's /tmp.
    let o = s.ctr(&["task", "exec", "--exec-id", "e1", &id, "/bin/sh", "-c", "echo exec-out; cat /tmp/count; exit 4"]);
    assert_eq!(o.code, 4, "{o:?}");
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"exec-out"), "{o:?}");
    assert!(lines.get(1).and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n > 0), "{o:?}");

    // ps: the init and a detached exec, and nothing outside the sandbox.
    s.ctr_ok(&["task", "exec", "-d", "--exec-id", "e2", &id, "/bin/sleep", "777"]);
    // The counter's short sleeps come and go; the init and the exec stay.
    let sleeper = || processes().into_iter().find(|(_, a)| a.last().is_some_and(|x| x == "777")).map(|(p, _)| p);
    let mut pids = Vec::new();
    let listed = wait_until(Duration::from_secs(5), || {
        pids = s.task_ps(&id);
        sleeper().is_some_and(|p| pids.contains(&p))
    });
    assert!(listed, "the exec's sleep {:?} is not in ctr task ps {id}: {pids:?}", sleeper());
    assert!(pids.contains(&init), "ctr task ps {id}: {pids:?} (init {init})");
    for p in &pids {
        // One of the counter's sleeps may be gone by now, or a zombie (the
        // kernel moves an exiting task to the root cgroups): a process
        // still alive after its file was read was alive when it was read.
        let cg = std::fs::read_to_string(format!("/proc/{p}/cgroup"));
        if let (Ok(cg), true) = (cg, pid_alive(i64::from(*p))) {
            assert!(cg.contains(&format!(":/moat/{id}\n")), "pid {p} listed but not in the sandbox:\n{cg}");
        }
    }

    // metrics: the cgroup's figures.
    let m = s.ctr_ok(&["task", "metrics", &id]);
    let metric = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or_else(|| panic!("no {name} in:\n{m}"))
    };
    assert!(metric("memory.usage_in_bytes") > 0 && metric("cpuacct.usage") > 0, "{m}");

    // pause: PAUSED, the freezer frozen, the counter stands still.
    let freezer = std::path::PathBuf::from(format!("/sys/fs/cgroup/freezer/moat/{id}/freezer.state"));
    assert!(freezer.exists(), "the sandbox's freezer cgroup {}", freezer.display());
    let raw = || std::fs::read_to_string(format!("/proc/{init}/root/tmp/count")).unwrap_or_default();
    let count = || -> u64 { raw().trim().parse().unwrap_or(0) };
    assert!(wait_until(Duration::from_secs(5), || count() > 0), "the counter is read through /proc/{init}/root");
    s.ctr_ok(&["task", "pause", &id]);
    assert_eq!(s.task_status(&id).as_deref(), Some("PAUSED"));
    let frozen =
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&freezer).unwrap_or_default() == "FROZEN\n");
    assert!(frozen, "freezer.state: {:?}", std::fs::read_to_string(&freezer));
    // (Frozen between the shell's truncation and its write, the file is empty.)
    let (before, n) = (raw(), count());
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(raw(), before, "a paused container made progress");

    // resume: RUNNING, thawed, counting again.
    s.ctr_ok(&["task", "resume", &id]);
    assert_eq!(s.task_status(&id).as_deref(), Some("RUNNING"));
    assert_eq!(std::fs::read_to_string(&freezer).unwrap_or_default(), "THAWED\n");
    assert!(wait_until(Duration::from_secs(5), || count() > n), "the counter did not move after resume");

    // kill + delete: STOPPED with the signal's status, then gone entirely.
    s.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    assert!(
        wait_until(Duration::from_secs(10), || s.task_status(&id).as_deref() == Some("STOPPED")),
        "{:?}",
        s.task_status(&id)
    );
    // The exits containerd was told: the exec's code, the init's signal.
    let text = events.text();
    let exit_of = |exec: &str, code: u32| {
        text.lines().any(|l| {
            l.contains(&format!("/tasks/exit {{\"container_id\":\"{id}\",\"id\":\"{exec}\""))
                && l.contains(&format!("\"exit_status\":{code},"))
        })
    };
    assert!(exit_of("e1", 4) && exit_of(&id, 137), "exit events of {id}:\n{text}");
    s.ctr_ok(&["task", "delete", &id]);
    assert_eq!(s.task_status(&id), None);
    s.ctr_ok(&["containers", "rm", &id]);
    s.assert_nothing_left(&id, &pids);
}

#[test]
fn with_ns_the_gateway_dials_from_the_pod_namespace() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let policy = format!("moat.dev/policy={}", busybox_rule("pod.test", POD_PORT));
    let host = format!("pod.test:{POD_PORT}");
    let run = |id: &str, with_ns: Option<String>| {
        let mut opts = vec!["--rm", "--annotation", policy.as_str()];
        let ns = with_ns.map(|p| format!("network:{p}"));
        if let Some(ns) = &ns {
            opts.extend(["--with-ns", ns.as_str()]);
        }
        let script = format!("{REQ}; echo '== ifaces'; ls /sys/class/net; echo '== pod'; req {host} /{id}/pod");
        let o = s.run(&opts, id, &["/bin/sh", "-c", &script]);
        assert_eq!(o.code, 0, "{o:?}\n{}", s.containerd_log());
        o.stdout
    };
    // In the pod's namespace: the pod's upstream answers.
    let id = made.id("podns");
    let out = run(&id, Some(s.pod.pod_path()));
    assert_eq!(section(&out, "ifaces"), "lo\n", "the container still has only lo");
    let (status, body) = response(section(&out, "pod"));
    assert_eq!(status, "HTTP/1.1 200 OK", "{out}");
    assert_eq!(body.trim_end(), format!("echo GET /{id}/pod 0"), "{out}");
    assert!(seen_paths(&s.pod_up).contains(&format!("/{id}/pod")), "the pod's upstream saw the request");

    // Control: without --with-ns the gateway dials from the host's
    // namespace, where that address has no such server.
    let id = made.id("hostns");
    let out = run(&id, None);
    assert_eq!(section(&out, "ifaces"), "lo\n");
    let (status, _) = response(section(&out, "pod"));
    assert_eq!(status, "HTTP/1.1 502 Bad Gateway", "{out}");
    assert!(!seen_paths(&s.pod_up).iter().any(|p| p.contains(&format!("/{id}/"))));
}

#[test]
fn nothing_is_left_after_delete() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let id = made.id("left");
    // A background child, a file in the workspace, one in /tmp.
    let script = "sleep 1000 & echo x > /sandbox/f; echo y > /tmp/f; wait";
    s.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--rootfs",
        s.rootfs.to_str().unwrap(),
        &id,
        "/bin/sh",
        "-c",
        script,
    ]);
    let mut pids = Vec::new();
    assert!(wait_until(Duration::from_secs(5), || {
        pids = s.task_ps(&id);
        pids.len() >= 2
    }));
    // The checks see each kind of trace while the container runs.
    let running = s.leftovers(&id, &pids);
    for kind in ["mount: ", "loop device ", "cgroup: ", "process ", "shim process ", "record: "] {
        assert!(running.iter().any(|l| l.starts_with(kind)), "no {kind:?} seen while {id} runs:\n{running:#?}");
    }
    // SIGKILL: the shell is its pid namespace's init, which ignores SIGTERM.
    s.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    assert!(wait_until(Duration::from_secs(10), || s.task_status(&id).as_deref() == Some("STOPPED")));
    s.ctr_ok(&["task", "delete", &id]);
    s.ctr_ok(&["containers", "rm", &id]);
    s.assert_nothing_left(&id, &pids);
}

/// Runs `cmd` detached as `id`, optionally with a running exec and then
/// paused, kills its shim with SIGKILL, and checks the issue's promise:
/// the processes die, containerd reports the exit, and the `delete`
/// containerd then runs leaves nothing behind.
fn kill_the_shim(tag: &str, paused: bool) {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let id = made.id(tag);
    let events = Events::start(s);
    s.ctr_ok(&["run", "-d", "--runtime", RUNTIME, "--rootfs", s.rootfs.to_str().unwrap(), &id, "/bin/sleep", "1000"]);
    if paused {
        s.ctr_ok(&["task", "exec", "-d", "--exec-id", "e1", &id, "/bin/sleep", "999"]);
        assert!(wait_until(Duration::from_secs(5), || s.task_ps(&id).len() == 2), "{:?}", s.task_ps(&id));
        s.ctr_ok(&["task", "pause", &id]);
        assert_eq!(s.task_status(&id).as_deref(), Some("PAUSED"));
    }
    let pids = s.task_ps(&id);
    let init = s.task_pid(&id);
    assert!(pids.contains(&init), "{pids:?}");
    let shim_pid = s.shim_pid(&id).expect("the shim of the container");
    // The shim's own children (the supervisor, its launcher, the exec's) count too.
    let mut all = pids.clone();
    all.extend(
        processes()
            .into_iter()
            .filter(|(_, a)| a.windows(2).any(|w| (w[0] == "__supervise" || w[0] == "__exec") && w[1] == id))
            .map(|(p, _)| p),
    );
    assert!(all.len() > pids.len(), "the supervisor of {id} runs");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim_pid), nix::sys::signal::Signal::SIGKILL)
        .expect("kill -9 the shim");
    let died = wait_until(Duration::from_secs(15), || !all.iter().any(|p| pid_alive(i64::from(*p))));
    let alive: Vec<&i32> = all.iter().filter(|p| pid_alive(i64::from(**p))).collect();
    assert!(died, "processes of {id} outlived its shim: {alive:?}\n{}", s.containerd_log());
    // containerd saw the exit: the task is stopped or gone, the event published.
    let status = s.task_status(&id);
    assert!(status.is_none() || status.as_deref() == Some("STOPPED"), "ctr task ls: {status:?}");
    let exit = format!("/tasks/exit {{\"container_id\":\"{id}\"");
    assert!(
        wait_until(Duration::from_secs(10), || events.text().lines().any(|l| l.contains(&exit))),
        "containerd published no exit of {id}:\n{}",
        events.text()
    );
    s.assert_nothing_left(&id, &all);
    s.ctr_ok(&["containers", "rm", &id]);
}

#[test]
fn a_killed_shim_leaves_nothing_behind() {
    kill_the_shim("crash", false);
}

#[test]
fn a_killed_shim_of_a_paused_container_with_an_exec_leaves_nothing_behind() {
    kill_the_shim("crashp", true);
}

/// `moat` with this world's home, run dir and store (the probe image).
fn moat(s: &Shim, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(args)
        .env("MOAT_HOME", s.home())
        .env("MOAT_RUN_DIR", s.dir.join("run"))
        .env("MOAT_STORE", s.dir.join("store"))
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run moat")
}

#[test]
fn a_refused_create_leaves_moat_runs_sandbox_of_that_name_alone() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);

    // A sandbox started by hand (`moat run`) under the name a container
    // then asks for.
    let id = made.id("byhand");
    let o = moat(s, &["run", "-d", "--name", &id, "probe", "--", "/bin/sleep", "1000"]);
    assert!(o.status.success(), "moat run -d: {}", String::from_utf8_lossy(&o.stderr));
    let o = s.run(&["--rm"], &id, &["/bin/true"]);
    assert_ne!(o.code, 0, "a second sandbox named {id}: {o:?}");
    assert!(o.stderr.contains(&format!("a sandbox named \"{id}\" already exists")), "{o:?}");
    std::thread::sleep(Duration::from_millis(500));
    let ls = String::from_utf8_lossy(&moat(s, &["ls"]).stdout).into_owned();
    let running = ls.lines().any(|l| l.split_whitespace().next() == Some(&id) && l.contains("running"));
    let _ = moat(s, &["rm", "--force", "--workspace", &id]);
    assert!(running, "the refused container's clean-up stopped `moat run`'s sandbox {id}:\n{ls}");
}

#[test]
fn a_refused_create_in_another_namespace_leaves_the_first_container_alone() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let rootfs = s.rootfs.to_str().unwrap();
    let id = made.id("twice");
    let other = format!("moat-other-{}", std::process::id());
    s.ctr_ok(&["run", "-d", "--runtime", RUNTIME, "--rootfs", rootfs, &id, "/bin/sleep", "1000"]);
    let init = s.task_pid(&id);
    let o = s.ctr(&["-n", &other, "run", "--rm", "--runtime", RUNTIME, "--rootfs", rootfs, &id, "/bin/true"]);
    std::thread::sleep(Duration::from_millis(500));
    let (status, alive) = (s.task_status(&id), pid_alive(i64::from(init)));
    let _ = s.ctr(&["-n", &other, "containers", "rm", &id]);
    let _ = s.ctr(&["namespaces", "rm", &other]);
    assert_ne!(o.code, 0, "a second sandbox named {id}: {o:?}");
    assert!(
        status.as_deref() == Some("RUNNING") && alive,
        "namespace {other}'s refused {id} stopped the default namespace's {id}: {status:?}, init alive: {alive}\n{}",
        s.containerd_log()
    );
}

#[test]
fn a_sandbox_removed_by_hand_still_lets_containerd_delete_the_task() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let id = made.id("rmhand");
    s.ctr_ok(&["run", "-d", "--runtime", RUNTIME, "--rootfs", s.rootfs.to_str().unwrap(), &id, "/bin/sleep", "1000"]);
    let pids = s.task_ps(&id);
    // An operator removes the sandbox with moat's own command.
    let o = moat(s, &["rm", "--force", "--workspace", &id]);
    assert!(o.status.success(), "moat rm --force {id}: {}", String::from_utf8_lossy(&o.stderr));
    assert!(wait_until(Duration::from_secs(10), || s.task_status(&id).as_deref() == Some("STOPPED")));
    let o = s.ctr(&["task", "delete", &id]);
    assert_eq!(o.code, 0, "the task of a sandbox already removed cannot be deleted: {o:?}");
    s.ctr_ok(&["containers", "rm", &id]);
    s.assert_nothing_left(&id, &pids);
}

#[test]
fn a_container_id_as_the_cri_plugin_makes_it_runs() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    // containerd's CRI plugin (and so every kubelet) names containers by 64
    // hex digits; containerd accepts ids of up to 76 characters.
    let id = made.named(format!("{:064x}", u64::from(std::process::id()) << 8 | 0xc1));
    let o = s.run(&["--rm"], &id, &["/bin/echo", "hi"]);
    assert_eq!((o.code, o.stdout.as_str()), (0, "hi\n"), "{o:?}");
    s.assert_nothing_left(&id, &[]);
}

/// Kills container `id`'s task, then deletes it and the container: what a
/// test does to leave nothing, whatever the test found.
fn kill_and_remove(s: &Shim, id: &str) {
    let _ = s.ctr(&["task", "kill", "-s", "KILL", id]);
    wait_until(Duration::from_secs(10), || s.task_status(id).as_deref() == Some("STOPPED"));
    let _ = s.ctr(&["task", "delete", id]);
    let _ = s.ctr(&["containers", "rm", id]);
}

/// Sends one HTTP/1.0 GET to `127.0.0.1:port` from inside network
/// namespace file `ns` (a helper thread joins it); the whole answer.
fn get_in(ns: &str, port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let ns = ns.to_string();
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
    .expect("netns thread")
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
        got = get_in(&s.pod.pod_path(), pod_port).unwrap_or_else(|e| e.to_string());
        got.contains(&format!("hello-{id}"))
    });
    // Nothing else comes in: the port the agent was not given is not
    // reachable from the pod's namespace, and the host has no listener.
    let other = get_in(&s.pod.pod_path(), unpublished);
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

/// The moat shim among `pid`'s ancestors (a container's init runs under
/// its supervisor, a child of the shim that started it).
fn shim_above(pid: i32) -> Option<i32> {
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
fn an_exec_that_leaves_a_child_behind_still_returns() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let id = made.id("bgexec");
    s.ctr_ok(&["run", "-d", "--runtime", RUNTIME, "--rootfs", s.rootfs.to_str().unwrap(), &id, "/bin/sleep", "1000"]);
    // A probe or `kubectl exec` that starts a daemon: the daemon keeps the
    // exec's stdout. runc's shim returns once the exec has exited (and its
    // output drained for up to 2 s); so must moat's.
    let cmd = s.ctr_command(&["task", "exec", "--exec-id", "bg", &id, "/bin/sh", "-c", "sleep 600 & echo started"]);
    let o = try_run(cmd, None, Duration::from_secs(20));
    let pids = s.task_ps(&id);
    kill_and_remove(s, &id);
    let o = o.unwrap_or_else(|e| panic!("the exec never returned while its child held its output: {e}"));
    assert_eq!((o.code, o.stdout.as_str()), (0, "started\n"), "{o:?}");
    s.assert_nothing_left(&id, &pids);
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
fn close_io_ends_stdin_although_the_fifo_is_still_held_open() {
    use std::io::{Read, Write};
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let id = made.id("closeio");
    // ctr makes its FIFOs under --fifo-dir: the test holds the stdin FIFO
    // open as a second writer, as containerd's CRI plugin does for attach.
    let fifos = s.dir.join(format!("fifo-{id}"));
    std::fs::create_dir_all(&fifos).unwrap();
    let mut cmd = s.ctr_command(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--fifo-dir",
        fifos.to_str().unwrap(),
        "--rootfs",
        s.rootfs.to_str().unwrap(),
        &id,
        "/bin/sh",
        "-c",
        "cat; echo after-eof",
    ]);
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ctr run");
    let fifo = || {
        let dirs = std::fs::read_dir(&fifos).ok()?;
        dirs.flatten().map(|d| d.path().join(format!("{id}-stdin"))).find(|p| p.exists())
    };
    assert!(wait_until(Duration::from_secs(10), || fifo().is_some()), "no stdin FIFO under {fifos:?}");
    let held = std::fs::OpenOptions::new().read(true).write(true).open(fifo().unwrap()).expect("hold the FIFO");
    // ctr sends its input, closes its end and calls CloseIO (once its
    // task exists: an end of input before that is sent as nothing).
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello\n").unwrap();
    assert!(wait_until(Duration::from_secs(10), || s.task_status(&id).as_deref() == Some("RUNNING")));
    drop(stdin);
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let ended = wait_until(Duration::from_secs(20), || child.try_wait().ok().flatten().is_some());
    if !ended {
        let _ = child.kill();
        let _ = s.ctr(&["task", "kill", "-s", "KILL", &id]);
    }
    let _ = child.wait();
    drop(held);
    let out = reader.join().unwrap_or_default();
    wait_until(Duration::from_secs(10), || s.task_status(&id).is_none());
    let _ = s.ctr(&["task", "delete", &id]);
    let _ = s.ctr(&["containers", "rm", &id]);
    assert!(ended, "CloseIO did not end the process's stdin (output so far: {out:?})");
    assert_eq!(out, "hello\nafter-eof\n");
    s.assert_nothing_left(&id, &[]);
}
