//! The launcher's raw syscalls, each behind a small safe function: the ones
//! `nix` does not wrap (`_exit`, `close_range`, `pidfd_open`, the Landlock
//! ABI probe, the window-size ioctls), the ones it wraps as `unsafe`
//! (fork, signal handlers, passing signals on), taking ownership of a descriptor the kernel
//! hands over (SCM_RIGHTS), and waitpid, whose nix wrapper loses the status
//! of a child killed by a real-time signal (it reaps, then fails with
//! EINVAL). Guards against unsound syscalls spread over the launcher: every
//! `unsafe` of launch/ is here with the reason it holds. Like all of
//! launch/, it starts no thread; what the forked child calls before its
//! plan arrives (`exit_now`, `keep_only`) allocates nothing.
use nix::sys::signal::{sigaction, signal, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::unistd::ForkResult;
use std::io::{self, IoSliceMut};
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Number of threads of this process.
fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:").and_then(|v| v.trim().parse().ok())))
        .unwrap_or(usize::MAX)
}

/// Evidence that this process had exactly one thread when it was made.
/// Neither `Send` nor `Clone`: it stays in the thread that checked, and
/// `fork` consumes it.
pub(crate) struct OneThread(PhantomData<*const ()>);

/// `Err(n)` when this process has `n` threads rather than one.
pub(crate) fn one_thread() -> Result<OneThread, usize> {
    match thread_count() {
        1 => Ok(OneThread(PhantomData)),
        n => Err(n),
    }
}

/// fork(2) of a single-threaded process.
pub(super) fn fork(_checked: OneThread) -> io::Result<ForkResult> {
    // SAFETY: `OneThread` was made by the caller's check that this process
    // has one thread, and it cannot leave that thread; the only caller
    // (`ForkedLauncher::fork`) creates two pipes and no thread between the
    // check and here. So the child inherits no lock held by another thread,
    // and it never returns into the caller's frames (it ends in `exit_now`).
    unsafe { nix::unistd::fork() }.map_err(io::Error::from)
}

/// `_exit(code)`: ends the process without running the parent's atexit
/// handlers or flushing its buffers (a forked child's copies of them).
pub(super) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes an integer, touches no memory of ours and does not
    // return.
    unsafe { libc::_exit(code) }
}

/// Moves `a` and `b` to descriptors 3 and 4 (close-on-exec) and closes
/// every other descriptor above 2. On failure, says which step failed.
pub(super) fn keep_only(a: OwnedFd, b: OwnedFd) -> Result<(OwnedFd, OwnedFd), (&'static str, io::Error)> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let moving = |e: nix::Error| ("moving the launcher's pipes", io::Error::from(e));
    // Released here: close_range below closes them.
    let (a, b) = (a.into_raw_fd(), b.into_raw_fd());
    // Copied above 9 first so that placing one cannot overwrite the other.
    let a2 = fcntl(a, FcntlArg::F_DUPFD_CLOEXEC(10)).map_err(moving)?;
    let b2 = fcntl(b, FcntlArg::F_DUPFD_CLOEXEC(10)).map_err(moving)?;
    nix::unistd::dup3(a2, 3, OFlag::O_CLOEXEC).map_err(moving)?;
    nix::unistd::dup3(b2, 4, OFlag::O_CLOEXEC).map_err(moving)?;
    // SAFETY: close_range takes integers only. What it closes (5 and up)
    // belongs to no live value: `a` and `b` were released above, their
    // copies are plain integers, and the forked launcher holds nothing else
    // it still uses.
    if unsafe { libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, 0u32) } != 0 {
        return Err(("closing the supervisor's descriptors", io::Error::last_os_error()));
    }
    // SAFETY: dup3 made 3 and 4 copies of the pipes; no value of this
    // process owned those numbers before (they are taken over here).
    Ok(unsafe { (OwnedFd::from_raw_fd(3), OwnedFd::from_raw_fd(4)) })
}

/// The exit code of a wait status (128+N when killed by signal N); None
/// while the child has neither exited nor been killed.
fn code_of(status: libc::c_int) -> Option<i32> {
    if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Some(128 + libc::WTERMSIG(status))
    } else {
        None
    }
}

fn waitpid(pid: i32, flags: libc::c_int) -> io::Result<Option<i32>> {
    let mut status = 0;
    // SAFETY: waitpid writes only into our local `status`.
    let r = unsafe { libc::waitpid(pid, &mut status, flags) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(if r == pid { code_of(status) } else { None })
}

/// Waits for the child `pid` (retrying after EINTR); its exit code, 128+N
/// when killed by signal N.
pub(super) fn wait(pid: i32) -> io::Result<i32> {
    loop {
        match waitpid(pid, 0) {
            Ok(Some(code)) => return Ok(code),
            Ok(None) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// The exit code of the child `pid` if it has ended (reaping it); None while it runs.
pub(super) fn try_wait(pid: i32) -> io::Result<Option<i32>> {
    waitpid(pid, libc::WNOHANG)
}

/// A pidfd for `pid` (readable when it exits); an error on kernels before 5.3.
pub(super) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes integers only.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn record_stop(sig: libc::c_int) {
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
}

/// From now on SIGTERM, SIGINT and SIGHUP only set `stop_signal`. Without
/// SA_RESTART, so a blocking call returns EINTR and its loop sees the flag.
pub(super) fn catch_stop_signals() {
    let sa = SigAction::new(SigHandler::Handler(record_stop), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        let _ = unsafe { sigaction(sig, &sa) };
    }
}

/// The last of SIGTERM/SIGINT/SIGHUP received since `catch_stop_signals` (0: none).
pub(super) fn stop_signal() -> i32 {
    STOP_SIGNAL.load(Ordering::SeqCst)
}

static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = FORWARD_TO.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: __errno_location returns this thread's errno slot; kill
        // is async-signal-safe and takes integers only. errno is restored:
        // the interrupted wait must still see its own EINTR.
        unsafe {
            let errno = *libc::__errno_location();
            libc::kill(pid, sig);
            *libc::__errno_location() = errno;
        }
    }
}

/// The signals an engine sends a process that it can catch: passed on.
const FORWARDED: [Signal; 8] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCONT,
    Signal::SIGALRM,
];

/// From now on the catchable signals this process gets go to `pid` (an
/// exec'd process it waits for) instead of ending this process. Without
/// SA_RESTART, so the wait sees EINTR and goes on waiting.
pub(super) fn forward_signals_to(pid: i32) {
    FORWARD_TO.store(pid, Ordering::SeqCst);
    let sa = SigAction::new(SigHandler::Handler(forward), SaFlags::empty(), SigSet::empty());
    for sig in FORWARDED {
        // SAFETY: the handler only loads an atomic and calls kill, both
        // async-signal-safe.
        let _ = unsafe { sigaction(sig, &sa) };
    }
}

/// Stops forwarding: `pid` was reaped and may be reused.
pub(super) fn stop_forwarding_signals() {
    FORWARD_TO.store(0, Ordering::SeqCst);
}

static WINCH: AtomicBool = AtomicBool::new(true);

extern "C" fn on_winch(_: libc::c_int) {
    WINCH.store(true, Ordering::SeqCst);
}

/// From now on SIGWINCH sets the flag `window_resized` returns.
pub(super) fn watch_window_size() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    let _ = unsafe { signal(Signal::SIGWINCH, SigHandler::Handler(on_winch)) };
}

/// Whether the window changed size since the last call (true the first time).
pub(super) fn window_resized() -> bool {
    WINCH.swap(false, Ordering::SeqCst)
}

/// Copies the terminal size of `from` to `to` (TIOCGWINSZ, TIOCSWINSZ); does
/// nothing if `from` is not a terminal.
pub(super) fn copy_window_size(from: BorrowedFd, to: BorrowedFd) {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`, TIOCSWINSZ reads one;
    // both descriptors are borrowed, so open for the call.
    unsafe {
        if libc::ioctl(from.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(to.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
}

/// Installs the seccomp filter `prog` with a notification listener
/// (SECCOMP_FILTER_FLAG_NEW_LISTENER) and owns the listener. The caller has
/// set no_new_privs.
pub(super) fn seccomp_listener(prog: &[libc::sock_filter]) -> io::Result<OwnedFd> {
    let len = u16::try_from(prog.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let fprog = libc::sock_fprog { len, filter: prog.as_ptr().cast_mut() };
    // SAFETY: `fprog` points at `prog`, alive for the call, with its length;
    // the kernel copies the program and reads nothing else.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Owns descriptor `fd`, inherited from the process that built the
/// container (checked to be open first).
pub(super) fn own_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).map_err(io::Error::from)?;
    // SAFETY: the descriptor is open (F_GETFD succeeded) and was given to
    // this process by number for this one use; nothing else in it owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Receives one message on `conn` and owns the first descriptor it carries
/// (SCM_RIGHTS), if any.
pub(crate) fn receive_fd(conn: BorrowedFd) -> io::Result<Option<OwnedFd>> {
    let mut buf = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed fd in our table for us;
                // nothing else owns it.
                return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
    }
    Ok(None)
}

/// The running kernel's Landlock ABI (0: absent or disabled).
pub(crate) fn landlock_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: landlock_create_ruleset with a null attr, size 0 and the VERSION
    // flag only returns the ABI number; it touches no memory.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v < 0 {
        0
    } else {
        v as i32
    }
}

/// A child that has made a user namespace of its own and waits for its uid
/// and gid maps: forked while the launcher waits for its plan (`prepare`),
/// so the fork is off the start's path. [`UsernsHelper::finish`] writes the
/// maps (`/proc/PID/uid_map` syntax) as this process, root in the parent
/// namespace, and returns the namespace as a descriptor, which is what an
/// idmapped mount needs; the child then exits and the namespace lives on
/// through the descriptor. Dropped unfinished, the child just exits.
pub(crate) struct UsernsHelper {
    child: i32,
    ready: OwnedFd,
    done: Option<OwnedFd>,
}

pub(super) fn userns_helper(checked: OneThread) -> io::Result<UsernsHelper> {
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (done_r, done_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: `checked` proves this process has one thread (the launcher,
    // before libcontainer runs), so the child inherits no lock held by
    // another thread; it only makes raw syscalls and ends in `exit_now`,
    // never returning into the caller's frames.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        ForkResult::Child => {
            drop((ready_r, done_w));
            let code = match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER) {
                Ok(()) => 0,
                Err(_) => 1,
            };
            let _ = nix::unistd::write(&ready_w, &[code as u8]);
            // Until the maps are written (or the launcher is gone: EOF).
            let mut b = [0u8; 1];
            let _ = nix::unistd::read(done_r.as_raw_fd(), &mut b);
            exit_now(code)
        }
        ForkResult::Parent { child } => {
            drop((ready_w, done_r));
            let _ = checked;
            Ok(UsernsHelper { child: child.as_raw(), ready: ready_r, done: Some(done_w) })
        }
    }
}

impl UsernsHelper {
    /// Writes the child's maps and returns its user namespace.
    pub(crate) fn finish(self, uid_map: &str, gid_map: &str) -> io::Result<OwnedFd> {
        let mut b = [1u8; 1];
        let got = nix::unistd::read(self.ready.as_raw_fd(), &mut b);
        if got != Ok(1) || b[0] != 0 {
            return Err(io::Error::other("the helper could not make a user namespace"));
        }
        let dir = format!("/proc/{}", self.child);
        std::fs::write(format!("{dir}/uid_map"), uid_map)?;
        std::fs::write(format!("{dir}/gid_map"), gid_map)?;
        Ok(OwnedFd::from(std::fs::File::open(format!("{dir}/ns/user"))?))
    }
}

impl Drop for UsernsHelper {
    /// Lets the child exit and reaps it.
    fn drop(&mut self) {
        drop(self.done.take());
        let _ = wait(self.child);
    }
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Clones the mount at `source` as a detached mount with its owners mapped
/// through `userns` (an idmapped mount), nosuid and nodev. The clone can be
/// attached in another mount namespace than the one it was taken in.
pub(super) fn idmapped_clone(source: &std::path::Path, userns: BorrowedFd) -> io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOUNT_ATTR_NOSUID: u64 = 0x2;
    const MOUNT_ATTR_NODEV: u64 = 0x4;
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    let src = cstring(source)?;
    // SAFETY: open_tree reads the NUL-terminated path `src`, which outlives
    // the call; it returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, src.as_ptr(), OPEN_TREE_CLONE | libc::O_CLOEXEC as u32)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned `fd` as a new descriptor of ours.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr reads `attr` (size given) and the empty path;
    // both outlive the call, and `tree` is an open descriptor.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

/// Attaches the detached mount `tree` at `target` in this process's mount
/// namespace.
pub(super) fn attach(tree: OwnedFd, target: &std::path::Path) -> io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    let dst = cstring(target)?;
    // SAFETY: move_mount reads the two NUL-terminated paths, which outlive
    // the call; `tree` is an open descriptor.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn cstring(p: &std::path::Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)
}
