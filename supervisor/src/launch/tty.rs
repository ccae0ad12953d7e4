//! `-t`: the sandbox gets a pseudo-terminal of its own (created inside it by
//! libcontainer, its master handed to us over a console socket) and we relay
//! between it and the user's terminal. Guards against the sandbox holding
//! the user's real terminal: on a shared tty, TIOCSTI-style tricks and job
//! control signals would reach the user's shell; here the sandbox only ever
//! sees its own pty.
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// A listening socket libcontainer connects to and sends the pty master over.
pub struct ConsoleSocket {
    listener: UnixListener,
    pub path: PathBuf,
}

impl ConsoleSocket {
    pub fn bind(path: &Path) -> io::Result<ConsoleSocket> {
        let _ = std::fs::remove_file(path);
        Ok(ConsoleSocket { listener: UnixListener::bind(path)?, path: path.to_path_buf() })
    }

    /// Accepts libcontainer's connection and takes the pty master from it.
    pub fn receive_master(&self) -> io::Result<OwnedFd> {
        let (conn, _) = self.listener.accept()?;
        let mut buf = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(io::Error::from)?;
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the kernel just installed fd in our table for us.
                    return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        Err(io::Error::new(io::ErrorKind::InvalidData, "no pty master on the console socket"))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

static WINCH: AtomicBool = AtomicBool::new(true);

extern "C" fn on_winch(_: libc::c_int) {
    WINCH.store(true, Ordering::SeqCst);
}

/// The user's terminal in raw mode until dropped.
struct RawMode {
    saved: Option<libc::termios>,
}

impl RawMode {
    fn enter() -> RawMode {
        // SAFETY: termios is plain data; tcgetattr fills it or fails (not a tty).
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::isatty(0) == 0 || libc::tcgetattr(0, &mut t) != 0 {
                return RawMode { saved: None };
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawMode { saved: Some(saved) }
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restores the attributes we saved.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

/// Relays stdin -> master and master -> stdout until `pid` exits; returns
/// its exit code. `on_signal` runs when SIGTERM/SIGINT/SIGHUP set `signalled`.
pub fn relay(
    master: OwnedFd,
    pid: i32,
    interactive: bool,
    signalled: &dyn Fn() -> bool,
    on_signal: &mut dyn FnMut(),
) -> i32 {
    let _raw = RawMode::enter();
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGWINCH, on_winch as *const () as libc::sighandler_t) };
    let m = master.as_raw_fd();
    let mut stdin_open = interactive;
    let mut master_open = true;
    let mut killed = false;
    let mut buf = [0u8; 8192];
    loop {
        if WINCH.swap(false, Ordering::SeqCst) {
            // SAFETY: winsize is plain data; copies the user's size to the pty.
            unsafe {
                let mut ws: libc::winsize = std::mem::zeroed();
                if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
                    libc::ioctl(m, libc::TIOCSWINSZ, &ws);
                }
            }
        }
        if signalled() && !killed {
            killed = true;
            on_signal();
        }
        let mut status = 0;
        // SAFETY: non-blocking wait on our child.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            drain(m, &mut buf);
            return if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
        }
        let mut fds = [
            libc::pollfd { fd: if stdin_open { 0 } else { -1 }, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: if master_open { m } else { -1 }, events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: fds is a valid array of two pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
        if n <= 0 {
            continue;
        }
        if fds[0].revents != 0 && !copy(0, m, &mut buf) {
            stdin_open = false;
        }
        if fds[1].revents != 0 && !copy(m, 1, &mut buf) {
            // EIO: every holder of the pty's other side is gone; wait for the exit.
            master_open = false;
        }
    }
}

/// Copies one read's worth; false at end of input or error.
fn copy(from: RawFd, to: RawFd, buf: &mut [u8]) -> bool {
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return false;
    }
    let mut off = 0usize;
    while off < n as usize {
        // SAFETY: writes from the initialized part of buf.
        let w = unsafe { libc::write(to, buf[off..].as_ptr().cast(), n as usize - off) };
        if w <= 0 {
            return false;
        }
        off += w as usize;
    }
    true
}

/// Prints what the pty still holds after the process exited.
fn drain(m: RawFd, buf: &mut [u8]) {
    loop {
        let mut p = libc::pollfd { fd: m, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, no wait.
        if unsafe { libc::poll(&mut p, 1, 0) } <= 0 || !copy(m, 1, buf) {
            return;
        }
    }
}
