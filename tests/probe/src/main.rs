//! moat-probe: run inside a sandbox, it tries what an escaping agent would
//! try and prints one `key=value` line per check (the errno name, or `ok`),
//! so the tests can assert each result and compare runtimes line by line.
//! Built statically (`-C target-feature=+crt-static`) to need nothing from
//! the image. Subcommands: `all GATEWAY_PORT SUPERVISOR_PID`, `id`,
//! `forkbomb`, `connect PORT`, `calls NAME:NR...`, `pause`.
use std::ffi::CString;
use std::fs;
use std::io::Write;

fn errno_name(e: i32) -> String {
    let n = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EACCES => "EACCES",
        libc::EROFS => "EROFS",
        libc::EAGAIN => "EAGAIN",
        libc::ENOSYS => "ENOSYS",
        libc::EINVAL => "EINVAL",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EBADF => "EBADF",
        libc::EFAULT => "EFAULT",
        libc::ENOTTY => "ENOTTY",
        libc::EEXIST => "EEXIST",
        libc::ENOMEM => "ENOMEM",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        other => return format!("errno{other}"),
    };
    n.to_string()
}

fn last() -> String {
    errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

/// `ok` if r >= 0, else the errno name.
fn res(r: i64) -> String {
    if r >= 0 {
        "ok".into()
    } else {
        last()
    }
}

fn status_field(name: &str) -> String {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_string())))
        .unwrap_or_else(|| "unreadable".into())
}

fn try_write(path: &str) -> String {
    match fs::OpenOptions::new().write(true).create(true).truncate(true).open(path) {
        Ok(mut f) => {
            let _ = f.write_all(b"probe");
            let _ = fs::remove_file(path);
            "ok".into()
        }
        Err(e) => errno_name(e.raw_os_error().unwrap_or(0)),
    }
}

fn try_read(path: &str) -> String {
    match fs::read(path) {
        Ok(_) => "ok".into(),
        Err(e) => errno_name(e.raw_os_error().unwrap_or(0)),
    }
}

fn connect(port: u16) -> String {
    match std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), std::time::Duration::from_secs(2)) {
        Ok(_) => "ok".into(),
        Err(e) => errno_name(e.raw_os_error().unwrap_or(0)),
    }
}

/// Each blocked syscall, called with harmless arguments that would succeed
/// (or fail differently) without the filter.
fn syscalls() -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    // SAFETY (whole block): raw syscalls with valid or null pointers; every
    // call that could succeed without the filter is harmless for this process.
    unsafe {
        out.push(("sys_ptrace", res(libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0))));
        let mut buf = [0u8; 8];
        let src = [0u8; 8];
        let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: 8 };
        let remote = libc::iovec { iov_base: src.as_ptr() as *mut _, iov_len: 8 };
        out.push((
            "sys_process_vm_readv",
            res(libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) as i64),
        ));
        out.push((
            "sys_process_vm_writev",
            res(libc::process_vm_writev(libc::getpid(), &remote, 1, &local, 1, 0) as i64),
        ));
        let mut attr = [0u8; 128];
        out.push(("sys_bpf", res(libc::syscall(libc::SYS_bpf, 0, attr.as_mut_ptr(), attr.len()))));
        let mut params = [0u8; 120];
        let r = libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr());
        if r >= 0 {
            libc::close(r as i32);
        }
        out.push(("sys_io_uring_setup", res(r)));
        let r = libc::syscall(libc::SYS_userfaultfd, 0);
        out.push(("sys_userfaultfd", res(r)));
        let mut pattr = [0u8; 128];
        pattr[4..8].copy_from_slice(&128u32.to_ne_bytes());
        out.push((
            "sys_perf_event_open",
            res(libc::syscall(libc::SYS_perf_event_open, pattr.as_mut_ptr(), 0, -1, -1, 0)),
        ));
        let tmp = CString::new("/tmp").unwrap();
        let tmpfs = CString::new("tmpfs").unwrap();
        out.push((
            "sys_mount",
            res(libc::mount(tmpfs.as_ptr(), tmp.as_ptr(), tmpfs.as_ptr(), 0, std::ptr::null()) as i64),
        ));
        out.push(("sys_umount2", res(libc::umount2(tmp.as_ptr(), libc::MNT_DETACH) as i64)));
        out.push(("sys_pivot_root", res(libc::syscall(libc::SYS_pivot_root, tmp.as_ptr(), tmp.as_ptr()))));
        out.push(("sys_fsopen", res(libc::syscall(libc::SYS_fsopen, tmpfs.as_ptr(), 0))));
        out.push(("sys_open_tree", res(libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, tmp.as_ptr(), 1))));
        out.push((
            "sys_move_mount",
            res(libc::syscall(libc::SYS_move_mount, -1, tmp.as_ptr(), libc::AT_FDCWD, tmp.as_ptr(), 0)),
        ));
        let ns = CString::new("/proc/self/ns/net").unwrap();
        let fd = libc::open(ns.as_ptr(), libc::O_RDONLY);
        out.push(("sys_setns", res(libc::setns(fd, 0) as i64)));
        libc::close(fd);
        out.push(("sys_unshare_newuser", res(libc::unshare(libc::CLONE_NEWUSER) as i64)));
        let r = libc::syscall(libc::SYS_clone, (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong, 0, 0, 0, 0);
        if r == 0 {
            libc::_exit(0);
        }
        if r > 0 {
            libc::waitpid(r as i32, std::ptr::null_mut(), 0);
        }
        out.push(("sys_clone_newuser", res(r)));
        let mut cl = [0u64; 11];
        cl[0] = libc::CLONE_NEWUSER as u64;
        cl[4] = libc::SIGCHLD as u64;
        let r = libc::syscall(libc::SYS_clone3, cl.as_mut_ptr(), 88usize);
        if r == 0 {
            libc::_exit(0);
        }
        if r > 0 {
            libc::waitpid(r as i32, std::ptr::null_mut(), 0);
        }
        out.push(("sys_clone3", res(r)));
        out.push(("sys_kexec_load", res(libc::syscall(libc::SYS_kexec_load, 0, 0, 0, 0))));
        let empty = CString::new("").unwrap();
        out.push((
            "sys_init_module",
            res(libc::syscall(libc::SYS_init_module, std::ptr::null::<u8>(), 0, empty.as_ptr())),
        ));
        out.push(("sys_finit_module", res(libc::syscall(libc::SYS_finit_module, -1, empty.as_ptr(), 0))));
        out.push(("sys_keyctl", res(libc::syscall(libc::SYS_keyctl, 0, -3, 0))));
        for (k, fam) in [
            ("sys_socket_packet", libc::AF_PACKET),
            ("sys_socket_vsock", libc::AF_VSOCK),
            ("sys_socket_bluetooth", libc::AF_BLUETOOTH),
        ] {
            let s = libc::socket(fam, libc::SOCK_DGRAM, 0);
            if s >= 0 {
                libc::close(s);
            }
            out.push((k, res(s as i64)));
        }
        // A filter that allows everything: only our seccomp policy can refuse it.
        let allow =
            libc::sock_filter { code: (libc::BPF_RET | libc::BPF_K) as u16, jt: 0, jf: 0, k: libc::SECCOMP_RET_ALLOW };
        let prog = libc::sock_fprog { len: 1, filter: &allow as *const _ as *mut _ };
        out.push((
            "sys_seccomp_filter",
            res(libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog)),
        ));
        out.push(("sys_prctl_pdeathsig", res(libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) as i64)));
        let c = b'x';
        out.push(("sys_ioctl_tiocsti", res(libc::ioctl(0, libc::TIOCSTI, &c) as i64)));
        let name = CString::new("probe").unwrap();
        let r = libc::syscall(libc::SYS_memfd_create, name.as_ptr(), 0);
        if r >= 0 {
            libc::close(r as i32);
        }
        out.push(("sys_memfd_create", res(r)));
    }
    out
}

fn interfaces() -> String {
    let text = fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let mut v: Vec<String> =
        text.lines().skip(2).filter_map(|l| l.split(':').next()).map(|s| s.trim().to_string()).collect();
    v.sort();
    v.join(",")
}

/// Any visible process whose command is moat (the supervisor or launcher).
fn sees_moat() -> String {
    let mut seen = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(comm) = fs::read_to_string(e.path().join("comm")) {
            if comm.trim() == "moat" {
                seen.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    if seen.is_empty() {
        "no".into()
    } else {
        format!("yes:{}", seen.join(","))
    }
}

fn all(gateway_port: u16, supervisor_pid: i32) {
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: String| lines.push((k.to_string(), v));
    // SAFETY: plain getters.
    let (uid, euid) = unsafe { (libc::getuid(), libc::geteuid()) };
    put("uid", uid.to_string());
    put("euid", euid.to_string());
    for f in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"] {
        put(&f.to_lowercase(), status_field(f));
    }
    for (k, r) in [
        ("rlimit_nproc", libc::RLIMIT_NPROC),
        ("rlimit_core", libc::RLIMIT_CORE),
        ("rlimit_nofile", libc::RLIMIT_NOFILE),
    ] {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into our struct.
        unsafe { libc::getrlimit(r, &mut l) };
        put(k, l.rlim_cur.to_string());
    }
    for (k, p) in [
        ("write_usr", "/usr/probe"),
        ("write_etc", "/etc/probe"),
        ("write_root", "/probe"),
        ("write_sandbox", "/sandbox/probe"),
        ("write_tmp", "/tmp/probe"),
    ] {
        put(k, try_write(p));
    }
    // /opt/open is mode 0777 in the test image: only Landlock can refuse these.
    put("landlock_write_open_dir", try_write("/opt/open/probe"));
    put("landlock_read_srv", try_read("/srv/readable.txt"));
    put("read_etc_passwd", try_read("/etc/passwd"));
    put(
        "list_root",
        match fs::read_dir("/") {
            Ok(_) => "ok".into(),
            Err(e) => errno_name(e.raw_os_error().unwrap_or(0)),
        },
    );
    // Listing is granted below /, reading is not: /srv lists, its file does not read.
    put(
        "list_srv",
        match fs::read_dir("/srv") {
            Ok(rd) => format!("ok:{}", rd.count()),
            Err(e) => errno_name(e.raw_os_error().unwrap_or(0)),
        },
    );
    put(
        "whiteout_applied",
        if fs::symlink_metadata("/etc/removed-by-layer2").is_err() { "yes".into() } else { "no".into() },
    );
    put(
        "hosts_inference",
        fs::read_to_string("/etc/hosts")
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains("inference.local"))
            .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
            .unwrap_or_else(|| "missing".into()),
    );
    // /proc/keys is world-readable on the host; masked, it reads empty.
    put(
        "proc_keys",
        match fs::read("/proc/keys") {
            Ok(b) if b.is_empty() => "masked".into(),
            Ok(_) => "readable".into(),
            Err(e) => errno_name(e.raw_os_error().unwrap_or(0)),
        },
    );
    put("interfaces", interfaces());
    put("connect_gateway", connect(gateway_port));
    put("connect_other_port", connect(gateway_port.wrapping_add(1)));
    put("connect_port_22", connect(22));
    put("sees_moat", sees_moat());
    // SAFETY: kill with signal 0 only checks existence and permission.
    put("signal_supervisor", res(unsafe { libc::kill(supervisor_pid, 0) } as i64));
    // SAFETY: getpid is a plain getter.
    put("pid_in_namespace_small", if unsafe { libc::getpid() } < 1000 { "yes".into() } else { "no".into() });
    match std::process::Command::new("/usr/bin/suid-probe").arg("id").output() {
        Ok(o) => put("setuid_binary", String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Err(e) => put("setuid_binary", format!("exec-failed:{e}")),
    }
    for (k, v) in syscalls() {
        put(k, v);
    }
    let mut out = std::io::stdout().lock();
    for (k, v) in lines {
        let _ = writeln!(out, "{k}={v}");
    }
}

/// Forks sleeping children until the kernel refuses; prints how many it got.
fn forkbomb() {
    let mut kids = Vec::new();
    let mut err = String::from("none");
    for _ in 0..100_000 {
        // SAFETY: the child only pauses until killed (async-signal-safe).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            loop {
                // SAFETY: pause has no preconditions.
                unsafe { libc::pause() };
            }
        }
        if pid < 0 {
            err = last();
            break;
        }
        kids.push(pid);
    }
    for k in &kids {
        // SAFETY: our own children.
        unsafe { libc::kill(*k, libc::SIGKILL) };
    }
    for k in &kids {
        // SAFETY: reaping our own children.
        unsafe { libc::waitpid(*k, std::ptr::null_mut(), 0) };
    }
    println!("fork_count={}", kids.len());
    println!("fork_error={err}");
}

/// A pod's pause process (the image tests/shim_cri.rs builds with moat):
/// sleeps until SIGTERM or SIGINT (then exits 0), reaping any child.
fn pause() {
    // SAFETY: sigset operations on a local set; sigprocmask and sigwait
    // with valid pointers; waitpid with a null status pointer.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        loop {
            let mut sig = 0;
            if libc::sigwait(&set, &mut sig) != 0 {
                continue;
            }
            if sig == libc::SIGCHLD {
                while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
                continue;
            }
            std::process::exit(0);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("all") => {
            let port = args.get(2).and_then(|p| p.parse().ok()).unwrap_or(3128);
            let sup = args.get(3).and_then(|p| p.parse().ok()).unwrap_or(1);
            all(port, sup)
        }
        // SAFETY: plain getters.
        Some("id") => println!("uid={} euid={}", unsafe { libc::getuid() }, unsafe { libc::geteuid() }),
        Some("forkbomb") => forkbomb(),
        Some("pause") => pause(),
        // `calls NAME:NR...`: each syscall with all-zero arguments (harmless
        // for every call moat denies unconditionally) and its result.
        Some("calls") => {
            for spec in &args[2..] {
                let Some((name, nr)) = spec.split_once(':') else { continue };
                let Ok(nr) = nr.parse::<libc::c_long>() else { continue };
                // SAFETY: zero (null) arguments only; the calls are denied by
                // the filter, and without it they fail on the null pointers
                // or lack of privilege.
                let r = unsafe { libc::syscall(nr, 0, 0, 0, 0, 0, 0) };
                println!("{name}={}", res(r));
            }
        }
        Some("connect") => println!("{}", connect(args.get(2).and_then(|p| p.parse().ok()).unwrap_or(0))),
        _ => {
            eprintln!("usage: moat-probe all GATEWAY_PORT SUPERVISOR_PID | id | forkbomb | connect PORT | pause");
            std::process::exit(2);
        }
    }
}
