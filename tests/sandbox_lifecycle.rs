//! Sandbox lifecycle through the `moat` binary: exit codes, stdin, detached
//! runs with ls/exec/logs/stop/rm, supervisor death, two sandboxes side by
//! side, and that nothing (process, mount, cgroup, runtime state) is left.
mod common;
mod sandbox_common;
use sandbox_common::*;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Everything a finished sandbox must not leave behind.
fn assert_no_leftovers(w: &World, name: &str, init_pid: i64, launcher_gone: bool) {
    assert!(wait_until(Duration::from_secs(10), || !pid_alive(init_pid)), "sandbox init {init_pid} still alive");
    let run = w.run_dir();
    assert!(
        wait_until(Duration::from_secs(10), || !run.join("containers").join(format!("moat-{name}")).exists()),
        "libcontainer state left"
    );
    assert!(wait_until(Duration::from_secs(10), || !run.join("sandboxes").join(name).exists()), "runtime dir left");
    for ctl in ["pids", "memory"] {
        let cg = Path::new("/sys/fs/cgroup").join(ctl).join("moat").join(name);
        let cg2 = Path::new("/sys/fs/cgroup/moat").join(name);
        assert!(!cg.exists() && !cg2.exists(), "cgroup {} left", cg.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(run.to_str().unwrap()), "a mount under {} is left:\n{mounts}", run.display());
    if launcher_gone {
        let ours = || {
            std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter(|e| {
                    std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                        let args: Vec<String> =
                            c.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
                        args.windows(2).any(|w| w[0].starts_with("__") && w[1] == name)
                    })
                })
                .count()
        };
        assert!(
            wait_until(Duration::from_secs(10), || ours() == 0),
            "a supervisor or launcher of {name} is still running"
        );
    }
}

#[test]
fn exit_codes_and_stdin_propagate() {
    let w = World::new();
    let o = w.run(&["run", "--rm", &w.image, "--", "sh", "-c", "exit 42"]);
    assert_eq!(o.status.code(), Some(42), "{}", String::from_utf8_lossy(&o.stderr));
    let o = w.run(&["run", "--rm", &w.image, "--", "/no/such/program"]);
    assert_eq!(o.status.code(), Some(127));
    // -i passes stdin through; without it the command reads end-of-file.
    for (flag, want) in [(Some("-i"), "hello from the host\n"), (None, "")] {
        let mut c = w.moat();
        c.arg("run").arg("--rm");
        if let Some(f) = flag {
            c.arg(f);
        }
        let mut child = c.args([&w.image, "--", "cat"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let _ = child.stdin.take().unwrap().write_all(b"hello from the host\n");
        let out = child.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "flag {flag:?}");
    }
    // --rm left nothing.
    assert_eq!(w.ok(&["ls", "--json"]).trim(), "[]");
}

#[test]
fn tty_gives_the_sandbox_its_own_terminal() {
    let w = World::new();
    // `script` (util-linux) gives moat a terminal, as a user's shell would.
    let moat = env!("CARGO_BIN_EXE_moat");
    let run = |inner: &str| {
        std::process::Command::new("script")
            .args(["-eqc", inner, "/dev/null"])
            .env("MOAT_HOME", w.home())
            .env("MOAT_STORE", w.store())
            .env("MOAT_RUN_DIR", w.run_dir())
            .stdin(Stdio::null())
            .output()
            .expect("script (util-linux) runs")
    };
    let o = run(&format!("{moat} run --rm -t {} -- sh -c 'tty; exit 3'", w.image));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("/dev/pts/0"), "the sandbox's own pty, numbered in its own devpts: {out}");
    assert_eq!(o.status.code(), Some(3));
    w.ok(&["run", "-d", "--name", "shell", &w.image, "--", "sleep", "1000"]);
    let o = run(&format!("{moat} exec -t shell -- sh -c 'tty; exit 5'"));
    assert!(String::from_utf8_lossy(&o.stdout).contains("/dev/pts/"), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(o.status.code(), Some(5));
    // Without -t the command has no terminal at all.
    let out = w.ok(&["exec", "shell", "--", "sh", "-c", "tty || true"]);
    assert!(out.contains("not a tty"), "{out}");
}

#[test]
fn a_removed_sandbox_name_can_be_used_again_and_keeps_its_workspace() {
    let w = World::new();
    w.ok(&["run", "--name", "again", &w.image, "--", "sh", "-c", "echo 1 > /sandbox/count"]);
    assert!(!w.run(&["run", "--name", "again", &w.image, "--", "true"]).status.success(), "the name is taken until rm");
    w.ok(&["rm", "again"]);
    let out = w.ok(&["run", "--rm", "--name", "again", &w.image, "--", "cat", "/sandbox/count"]);
    assert_eq!(out, "1\n");
    assert!(!w.home().join("sandboxes/again").exists(), "--rm removes moat's workspace too");
}

#[test]
fn detached_sandbox_ls_exec_logs_stop_rm() {
    let w = World::new();
    let name = w.ok(&["run", "-d", "--name", "agent", &w.image, "--", "sh", "-c", "echo started; sleep 1000"]);
    assert_eq!(name.trim(), "agent");
    let ls: serde_json::Value = serde_json::from_str(&w.ok(&["ls", "--json"])).unwrap();
    assert_eq!(ls[0]["name"], "agent");
    assert_eq!(ls[0]["state"], "running");
    assert!(ls[0]["image_digest"].as_str().unwrap().starts_with("sha256:"));
    let init_pid = ls[0]["pid"].as_i64().expect("pid");
    assert!(pid_alive(init_pid));
    assert!(w.ok(&["ls"]).contains("agent"));

    // exec lands in the same sandbox with the same restrictions.
    let st = w.state("agent");
    let sup = st["supervisor"]["pid"].as_i64().unwrap();
    let r = parse(&w.ok(&[
        "exec",
        "agent",
        "--",
        "/usr/local/bin/moat-probe",
        "all",
        &GATEWAY_PORT.to_string(),
        &sup.to_string(),
    ]));
    assert_process_guards(&r);
    assert_eq!(r["landlock_read_srv"], "EACCES");
    assert_eq!(r["connect_gateway"], "ok");
    assert_eq!(r["connect_other_port"], "EACCES");
    assert_eq!(r["signal_supervisor"], "ESRCH", "the supervisor's pid is not in the sandbox");
    let ps = w.ok(&["exec", "agent", "--", "ps"]);
    assert!(ps.contains("sleep 1000"), "exec sees the sandbox's processes:\n{ps}");
    w.ok(&["exec", "agent", "--", "sh", "-c", "echo from-exec > /sandbox/note"]);
    let ws = w.home().join("sandboxes/agent/workspace");
    assert_eq!(std::fs::read_to_string(ws.join("note")).unwrap(), "from-exec\n");
    assert_eq!(w.run(&["exec", "agent", "--", "sh", "-c", "exit 7"]).status.code(), Some(7));

    assert!(wait_until(Duration::from_secs(5), || w.ok(&["logs", "agent"]).contains("started")));
    let o = w.run(&["rm", "agent"]);
    assert!(!o.status.success(), "rm of a running sandbox needs --force");

    w.ok(&["stop", "-t", "1", "agent"]);
    let ls: serde_json::Value = serde_json::from_str(&w.ok(&["ls", "--json"])).unwrap();
    assert_eq!(ls[0]["state"], "exited");
    assert_eq!(ls[0]["exit_code"], 137, "pid 1 ignores SIGTERM without a handler: SIGKILL after the grace period");
    assert_no_leftovers(&w, "agent", init_pid, true);
    assert!(!w.run(&["exec", "agent", "--", "true"]).status.success());

    w.ok(&["rm", "agent"]);
    // The workspace (in its image, unmounted once the sandbox stopped) stays.
    assert!(w.home().join("sandboxes/agent/workspace.img").is_file(), "rm keeps the workspace");
    assert!(!ws.join("note").exists(), "the workspace image is still mounted after rm");
    assert!(!w.home().join("sandboxes/agent/state.json").exists());
    assert!(!w.run(&["logs", "agent"]).status.success());
}

/// The launcher is a fork of the supervisor: besides stdin/stdout/stderr it
/// may hold only descriptors it made itself (the pidfd of the sandbox init)
/// and, at fd 4, the write end of its report pipe (it reports the init's
/// exit there), whose read end the supervisor holds; none of the
/// supervisor's files, sockets or other pipes (the detached CLI's ready
/// pipe, the log, the gateway's listener).
fn assert_launcher_holds_nothing_of_the_supervisor(sup: i64) {
    let children = std::fs::read_to_string(format!("/proc/{sup}/task/{sup}/children")).unwrap();
    let launchers: Vec<&str> = children.split_whitespace().collect();
    assert_eq!(launchers.len(), 1, "the supervisor has one child, the launcher: {children:?}");
    let targets = |pid: &str| -> Vec<(u32, String)> {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
        fds.flatten()
            .map(|fd| {
                let n: u32 = fd.file_name().to_string_lossy().parse().unwrap();
                (n, std::fs::read_link(fd.path()).map(|t| t.display().to_string()).unwrap_or_default())
            })
            .collect()
    };
    let supervisors = targets(&sup.to_string());
    for (n, target) in targets(launchers[0]) {
        let report = n == 4 && target.starts_with("pipe:") && supervisors.iter().any(|(_, t)| *t == target);
        assert!(n <= 2 || target.starts_with("anon_inode:") || report, "the launcher holds fd {n} -> {target}");
    }
}

#[test]
fn supervisor_death_kills_the_sandbox_and_leaves_nothing() {
    let w = World::new();
    w.ok(&["run", "-d", "--name", "victim", &w.image, "--", "sleep", "1000"]);
    let st = w.state("victim");
    let sup = st["supervisor"]["pid"].as_i64().unwrap();
    let init = st["init"]["pid"].as_i64().unwrap();
    assert!(pid_alive(sup) && pid_alive(init));
    assert_launcher_holds_nothing_of_the_supervisor(sup);
    // SAFETY: sup is the supervisor we started.
    assert_eq!(unsafe { libc::kill(sup as i32, libc::SIGKILL) }, 0);
    assert_no_leftovers(&w, "victim", init, true);
    let ls: serde_json::Value = serde_json::from_str(&w.ok(&["ls", "--json"])).unwrap();
    assert_eq!(ls[0]["state"], "exited");
    w.ok(&["rm", "--workspace", "victim"]);
    assert!(!w.home().join("sandboxes/victim").exists());
}

#[test]
fn two_sandboxes_do_not_see_each_other() {
    let w = World::new();
    w.ok(&["run", "-d", "--name", "one", &w.image, "--", "sleep", "1001"]);
    w.ok(&["run", "-d", "--name", "two", &w.image, "--", "sleep", "1002"]);
    let ps1 = w.ok(&["exec", "one", "--", "ps"]);
    let ps2 = w.ok(&["exec", "two", "--", "ps"]);
    assert!(ps1.contains("sleep 1001") && !ps1.contains("sleep 1002"), "{ps1}");
    assert!(ps2.contains("sleep 1002") && !ps2.contains("sleep 1001"), "{ps2}");
    w.ok(&["exec", "one", "--", "sh", "-c", "echo one > /sandbox/mine"]);
    let o = w.ok(&["exec", "two", "--", "sh", "-c", "ls /sandbox"]);
    assert!(!o.contains("mine"), "workspaces are separate");
    let i1 = w.state("one")["init"]["pid"].as_i64().unwrap();
    let i2 = w.state("two")["init"]["pid"].as_i64().unwrap();
    w.ok(&["rm", "--force", "one", "two"]);
    assert_no_leftovers(&w, "one", i1, true);
    assert_no_leftovers(&w, "two", i2, true);
}

#[test]
fn policy_checks_happen_before_anything_runs() {
    let w = World::new();
    let bad = w.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        moat_supervisor::policy::BASELINE_TOML.replace("rlimit_core = 0", "rlimit_core = 0\nrlimit_cores = 1"),
    )
    .unwrap();
    let o = w.run(&["run", "--rm", "--policy", bad.to_str().unwrap(), &w.image, "--", "true"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("bad.toml:") && err.contains("rlimit_cores"), "{err}");
    let caps = w.dir.path().join("caps.toml");
    std::fs::write(
        &caps,
        moat_supervisor::policy::BASELINE_TOML
            .replace("keep_capabilities = []", "keep_capabilities = [\"CAP_SYS_ADMIN\"]"),
    )
    .unwrap();
    let o = w.run(&["run", "--rm", "--policy", caps.to_str().unwrap(), &w.image, "--", "true"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("require_cap_drop"));
    let hard = w.dir.path().join("hard.toml");
    std::fs::write(
        &hard,
        moat_supervisor::policy::BASELINE_TOML
            .replace("compatibility = \"best_effort\"", "compatibility = \"hard_requirement\""),
    )
    .unwrap();
    // This kernel has every Landlock feature moat uses (see `moat doctor`): hard_requirement starts.
    let o = w.run(&["run", "--rm", "--policy", hard.to_str().unwrap(), &w.image, "--", "true"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(w.ok(&["ls", "--json"]).trim(), "[]", "refused runs leave no record");
}

#[test]
fn a_gateway_that_fails_to_start_stops_the_sandbox() {
    let w = World::new();
    // The gateway starts while the launcher builds the sandbox. Make it fail:
    // its audit log's path is taken by a directory.
    std::fs::create_dir_all(w.home().join("sandboxes/nogw/audit.log")).unwrap();
    let started = std::time::Instant::now();
    let o = w.run(&["run", "--name", "nogw", &w.image, "--", "sleep", "31"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("egress gateway") && err.contains("audit log"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20), "the sandbox ran on without its gateway");
    assert_ne!(w.state("nogw")["status"], "running", "reported running without a gateway");
    let run = w.run_dir();
    assert!(
        wait_until(Duration::from_secs(10), || !run.join("containers/moat-nogw").exists()),
        "libcontainer state left"
    );
    assert!(!Path::new("/sys/fs/cgroup/pids/moat/nogw").exists() && !Path::new("/sys/fs/cgroup/moat/nogw").exists());
    let sleeping = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .any(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x0031\x00"))
    };
    assert!(wait_until(Duration::from_secs(10), || !sleeping()), "the sandbox's process is still running");
    w.ok(&["rm", "--workspace", "nogw"]);
}

#[test]
fn a_closed_stderr_does_not_stop_the_cleanup() {
    // `moat run ... 2>&1 | head`: the reader is gone before moat logs its last
    // lines. The run must still finish and remove its sandbox.
    let w = World::new();
    let status = common::status_with_stderr_gone(
        w.moat().env("RUST_LOG", "debug").args(["run", "--rm", "--name", "noerr", &w.image, "--", "true"]),
    );
    assert!(status.success(), "moat run exited with {status} when its stderr closed");
    assert_eq!(w.ok(&["ls", "--json"]).trim(), "[]", "the --rm sandbox's record is left");
    assert!(!w.run_dir().join("containers/moat-noerr").exists(), "libcontainer state left");
    assert!(!w.run_dir().join("sandboxes/noerr").exists(), "runtime dir left");
}

#[test]
fn doctor_reports_this_kernel() {
    let w = World::new();
    let out = w.ok(&["doctor", "--json"]);
    let checks: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = checks.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for n in ["landlock", "seccomp", "caller identity", "namespaces", "cgroups", "overlayfs"] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    // This kernel (6.18) has both: the check says so.
    let identity = checks.as_array().unwrap().iter().find(|c| c["name"] == "caller identity").unwrap();
    assert_eq!(identity["level"], "ok", "{identity}");
    let text = w.ok(&["doctor"]);
    assert!(text.contains("landlock") && text.contains("ABI"), "{text}");
}

/// Two moat homes sharing one runtime directory (two operators, or CI jobs,
/// with their own MOAT_HOME and the default /run/moat) must not hand out
/// one host uid twice: a uid claim held by a sandbox of the other home is
/// not stale just because this home has no sandbox of that name. A shared
/// uid would let one sandbox's processes count against, and signal, the
/// other's.
#[test]
fn sandboxes_of_two_homes_sharing_a_run_dir_get_distinct_uids() {
    let w = World::new();
    w.ok(&["run", "-d", "--name", "first", &w.image, "--", "sleep", "1000"]);
    let first = w.ok(&["exec", "first", "--", "id", "-u"]);
    let other_home = w.dir.path().join("home2");
    let o = w
        .moat()
        .env("MOAT_HOME", &other_home)
        .args(["run", "--rm", "--name", "second", &w.image, "--", "id", "-u"])
        .stdin(Stdio::null())
        .output()
        .expect("run moat");
    w.ok(&["rm", "--force", "first"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let second = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(first.trim().parse::<u32>().is_ok_and(|u| u >= 0x6d00_0000), "{first}");
    assert_ne!(first.trim(), second.trim(), "sandboxes of two homes share host uid {first}");
}
