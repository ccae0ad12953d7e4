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
    let o = s.moat(&["approvals", &id]);
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
    // And the others of a task's life, as runc's shim publishes them.
    let seen = |topic: &str, exec: &str| {
        text.lines().any(|l| l.contains(topic) && l.contains(&format!("\"container_id\":\"{id}\"")) && l.contains(exec))
    };
    for (topic, exec) in [
        ("/tasks/exec-added", "\"e1\""),
        ("/tasks/exec-started", "\"e1\""),
        ("/tasks/paused", ""),
        ("/tasks/resumed", ""),
    ] {
        assert!(seen(topic, exec), "no {topic} {exec} of {id}:\n{text}");
    }
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

#[test]
fn a_refused_create_leaves_moat_runs_sandbox_of_that_name_alone() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);

    // A sandbox started by hand (`moat run`) under the name a container
    // then asks for.
    let id = made.id("byhand");
    let o = s.moat(&["run", "-d", "--name", &id, "probe", "--", "/bin/sleep", "1000"]);
    assert!(o.status.success(), "moat run -d: {}", String::from_utf8_lossy(&o.stderr));
    let o = s.run(&["--rm"], &id, &["/bin/true"]);
    assert_ne!(o.code, 0, "a second sandbox named {id}: {o:?}");
    assert!(o.stderr.contains(&format!("a sandbox named \"{id}\" already exists")), "{o:?}");
    std::thread::sleep(Duration::from_millis(500));
    let ls = String::from_utf8_lossy(&s.moat(&["ls"]).stdout).into_owned();
    let running = ls.lines().any(|l| l.split_whitespace().next() == Some(&id) && l.contains("running"));
    let _ = s.moat(&["rm", "--force", "--workspace", &id]);
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
    let o = s.moat(&["rm", "--force", "--workspace", &id]);
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
