//! moat's containerd shim (issue 22): a process's stdio and signals as
//! containerd's clients use them, driven by `ctr` against a real
//! containerd 1.6 (the world of tests/shim_world/): terminals and their
//! size (ResizePty), CloseIO against a held FIFO, an exec's leftover child,
//! copier threads that end with their process, signals to an exec. Guards
//! the engine front door against a client or a container holding the
//! shim up. Needs root, containerd, busybox-static, iproute2.
#[path = "../supervisor/tests/gateway_common/mod.rs"]
mod gateway_common;
mod sandbox_common;
mod shim_world;

use sandbox_common::wait_until;
use shim_world::*;
use std::time::Duration;

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

#[test]
fn a_signal_sent_to_an_exec_reaches_its_process() {
    use std::io::Read;
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let id = made.id("execsig");
    s.ctr_ok(&["run", "-d", "--runtime", RUNTIME, "--rootfs", s.rootfs.to_str().unwrap(), &id, "/bin/sleep", "1000"]);
    // A process that handles SIGTERM (a server that shuts down cleanly).
    let script = "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done";
    let mut exec = s
        .ctr_command(&["task", "exec", "--exec-id", "sig", &id, "/bin/sh", "-c", script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ctr task exec");
    let mut out = exec.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let running = wait_until(Duration::from_secs(10), || s.task_ps(&id).len() >= 3);
    let kill = s.ctr(&["task", "kill", "--exec-id", "sig", "-s", "TERM", &id]);
    let ended = wait_until(Duration::from_secs(10), || exec.try_wait().ok().flatten().is_some());
    if !ended {
        let _ = exec.kill();
    }
    let code = exec.wait().ok().and_then(|s| s.code());
    let pids = s.task_ps(&id);
    kill_and_remove(s, &id);
    let out = reader.join().unwrap_or_default();
    assert!(running, "the exec did not start");
    assert_eq!(kill.code, 0, "{kill:?}");
    assert_eq!((code, out.as_str()), (Some(7), "ready\ngot-term\n"), "the exec's own handler did not run");
    s.assert_nothing_left(&id, &pids);
}

/// The shim's threads named `name` (its stdio copiers).
fn threads_named(shim: i32, name: &str) -> usize {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{shim}/task")) else { return 0 };
    rd.flatten().filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)).count()
}

#[test]
fn execs_leave_no_copier_threads_behind() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let id = made.id("threads");
    s.ctr_ok(&["run", "-d", "--runtime", RUNTIME, "--rootfs", s.rootfs.to_str().unwrap(), &id, "/bin/sleep", "1000"]);
    let shim_pid = shim_above(s.task_pid(&id)).expect("the shim");
    // The init's own copiers run as long as it does.
    let before = (threads_named(shim_pid, "shim-stdin"), threads_named(shim_pid, "shim-output"));
    // Execs whose client has nothing to send (stdin at end of file at once),
    // as probes and `kubectl exec` without -i are.
    for n in 0..5 {
        let o = try_run(
            s.ctr_command(&["task", "exec", "--exec-id", &format!("t{n}"), &id, "/bin/true"]),
            None,
            Duration::from_secs(20),
        );
        assert!(o.as_ref().is_ok_and(|o| o.code == 0), "{o:?}");
    }
    let mut left = before;
    let gone = wait_until(Duration::from_secs(10), || {
        left = (threads_named(shim_pid, "shim-stdin"), threads_named(shim_pid, "shim-output"));
        left == before
    });
    let pids = s.task_ps(&id);
    kill_and_remove(s, &id);
    assert!(gone, "copier threads left in the shim after the execs ended (stdin, output): {left:?}, before {before:?}");
    s.assert_nothing_left(&id, &pids);
}

/// Runs `ctr ARGS` on a terminal of the test's own, `rows` x `cols`, to
/// its end (at most 30 s); what it wrote to the terminal.
fn ctr_on_a_terminal(s: &Shim, args: &[&str], rows: u16, cols: u16) -> Result<String, String> {
    use std::io::Read;
    use std::os::fd::OwnedFd;
    let ws = nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = nix::pty::openpty(Some(&ws), None).map_err(|e| e.to_string())?;
    let slave: OwnedFd = pty.slave;
    let mut cmd = s.ctr_command(args);
    cmd.stdin(slave.try_clone().unwrap()).stdout(slave.try_clone().unwrap()).stderr(slave);
    // SAFETY: setsid and ioctl are async-signal-safe; the closure allocates nothing.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    drop(cmd);
    let master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let (mut m, mut out) = (master, Vec::new());
        let mut buf = [0u8; 4096];
        // EIO once every holder of the slave is gone.
        while let Ok(n) = m.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let ended = wait_until(Duration::from_secs(30), || child.try_wait().ok().flatten().is_some());
    if !ended {
        let _ = child.kill();
    }
    let _ = child.wait();
    let out = reader.join().unwrap_or_default();
    if ended {
        Ok(out)
    } else {
        Err(format!("ctr {args:?} did not end on its terminal; it wrote: {out:?}"))
    }
}

#[test]
fn a_terminal_has_the_clients_size_for_run_and_exec() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let rootfs = s.rootfs.to_str().unwrap();
    // The size arrives by ResizePty once the task runs: wait for it (until
    // then stty prints 0 0, nothing, or fails). Never arriving is a hang,
    // which the 30 s limit fails.
    let script = "until z=$(busybox stty size 2>/dev/null); case \"$z\" in [1-9]*' '[1-9]*) true;; *) false;; esac; do sleep 0.05; done; echo \"$z\"; busybox tty";
    let id = made.id("tty");
    let out = ctr_on_a_terminal(
        s,
        &["run", "-t", "--rm", "--runtime", RUNTIME, "--rootfs", rootfs, &id, "/bin/sh", "-c", script],
        41,
        103,
    );
    let out = out.unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("41 103") && out.contains("/dev/pts/"), "ctr run -t: {out:?}");
    s.assert_nothing_left(&id, &[]);

    let id = made.id("ttyx");
    s.ctr_ok(&["run", "-d", "--runtime", RUNTIME, "--rootfs", rootfs, &id, "/bin/sleep", "1000"]);
    let out = ctr_on_a_terminal(s, &["task", "exec", "-t", "--exec-id", "t1", &id, "/bin/sh", "-c", script], 27, 66);
    let pids = s.task_ps(&id);
    kill_and_remove(s, &id);
    let out = out.unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("27 66") && out.contains("/dev/pts/"), "ctr task exec -t: {out:?}");
    s.assert_nothing_left(&id, &pids);
}

/// The terminal devices among process `pid`'s descriptors above 2.
fn terminals_held(pid: i32) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    rd.flatten()
        .filter(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()).is_some_and(|n| n > 2))
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.display().to_string())
        .filter(|l| l.starts_with("/dev/pts/") || l == "/dev/ptmx")
        .collect()
}

#[test]
fn a_terminal_stays_with_its_own_process() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let id = made.id("ttyleak");
    s.ctr_ok(&["run", "-d", "--runtime", RUNTIME, "--rootfs", s.rootfs.to_str().unwrap(), &id, "/bin/sleep", "1000"]);
    // An exec on a terminal stays running while another process starts.
    let term = std::thread::scope(|scope| {
        let t = scope
            .spawn(|| ctr_on_a_terminal(s, &["task", "exec", "-t", "--exec-id", "t1", &id, "/bin/sleep", "3"], 24, 80));
        std::thread::sleep(Duration::from_millis(700));
        s.ctr_ok(&["task", "exec", "-d", "--exec-id", "e2", &id, "/bin/sleep", "100"]);
        // The second exec's launcher: the one whose stdin is no terminal.
        let on_terminal =
            |p: i32| std::fs::read_link(format!("/proc/{p}/fd/0")).is_ok_and(|l| l.starts_with("/dev/pts/"));
        let launcher = shim_world::processes()
            .into_iter()
            .find(|(p, a)| a.iter().any(|x| x == "__exec") && a.iter().any(|x| x == &id) && !on_terminal(*p))
            .map(|(p, _)| p);
        let held = launcher.map(terminals_held);
        let _ = t.join();
        held
    });
    let pids = s.task_ps(&id);
    kill_and_remove(s, &id);
    let held = term.expect("the second exec's launcher");
    assert!(held.is_empty(), "the second exec's launcher holds another process's terminal: {held:?}");
    s.assert_nothing_left(&id, &pids);
}

#[test]
fn a_signal_sent_to_a_terminal_exec_reaches_its_process() {
    let _g = serial();
    let s = shim();
    let mut made = Made::new(s);
    let id = made.id("ttysig");
    s.ctr_ok(&["run", "-d", "--runtime", RUNTIME, "--rootfs", s.rootfs.to_str().unwrap(), &id, "/bin/sleep", "1000"]);
    let script = "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done";
    let (out, kill) = std::thread::scope(|scope| {
        let t = scope.spawn(|| {
            ctr_on_a_terminal(s, &["task", "exec", "-t", "--exec-id", "ts", &id, "/bin/sh", "-c", script], 24, 80)
        });
        let started = wait_until(Duration::from_secs(10), || s.task_ps(&id).len() >= 3);
        std::thread::sleep(Duration::from_millis(300));
        let kill = s.ctr(&["task", "kill", "--exec-id", "ts", "-s", "TERM", &id]);
        (t.join().ok(), (started, kill))
    });
    let pids = s.task_ps(&id);
    kill_and_remove(s, &id);
    assert!(kill.0 && kill.1.code == 0, "{kill:?}");
    let out = out.and_then(Result::ok).unwrap_or_default();
    assert!(out.contains("got-term"), "the terminal exec's own handler did not run: {out:?}");
    s.assert_nothing_left(&id, &pids);
}
