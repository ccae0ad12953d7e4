//! `-t`: the sandbox gets a pseudo-terminal of its own (created inside it by
//! libcontainer, its master handed to us over a console socket) and we relay
//! between it and the user's terminal. Guards against the sandbox holding
//! the user's real terminal: on a shared tty, TIOCSTI-style tricks and job
//! control signals would reach the user's shell; here the sandbox only ever
//! sees its own pty.
#![forbid(unsafe_code)]
use crate::launch::sys;
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// A listening socket libcontainer connects to and sends the pty master over.
pub(crate) struct ConsoleSocket {
    listener: UnixListener,
    pub path: PathBuf,
}

impl ConsoleSocket {
    pub(crate) fn bind(path: &Path) -> io::Result<ConsoleSocket> {
        let _ = std::fs::remove_file(path);
        Ok(ConsoleSocket { listener: UnixListener::bind(path)?, path: path.to_path_buf() })
    }

    /// Accepts libcontainer's connection and takes the pty master from it.
    pub(crate) fn receive_master(&self) -> io::Result<OwnedFd> {
        let (conn, _) = self.listener.accept()?;
        sys::receive_fd(conn.as_fd())?
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no pty master on the console socket"))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The user's terminal in raw mode until dropped.
struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    fn enter() -> RawMode {
        let stdin = io::stdin();
        if !nix::unistd::isatty(0).unwrap_or(false) {
            return RawMode { saved: None };
        }
        let Ok(saved) = tcgetattr(stdin.as_fd()) else {
            return RawMode { saved: None };
        };
        let mut t = saved.clone();
        cfmakeraw(&mut t);
        let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &t);
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            // Restores the attributes we saved.
            let _ = tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, t);
        }
    }
}

/// Relays stdin -> master and master -> stdout until `pid` exits; returns
/// its exit code. `on_signal` runs when SIGTERM/SIGINT/SIGHUP set `signalled`.
pub(crate) fn relay(
    master: OwnedFd,
    pid: i32,
    interactive: bool,
    signalled: &dyn Fn() -> bool,
    on_signal: &mut dyn FnMut(),
) -> i32 {
    let _raw = RawMode::enter();
    sys::watch_window_size();
    let (stdin, stdout) = (io::stdin(), io::stdout());
    let (input, output, m) = (stdin.as_fd(), stdout.as_fd(), master.as_fd());
    let mut stdin_open = interactive;
    let mut master_open = true;
    let mut killed = false;
    let mut buf = [0u8; 8192];
    loop {
        if sys::window_resized() {
            // The user's size, copied to the pty.
            sys::copy_window_size(input, m);
        }
        if signalled() && !killed {
            killed = true;
            on_signal();
        }
        if let Ok(Some(code)) = sys::try_wait(pid) {
            drain(m, output, &mut buf);
            return code;
        }
        let mut fds = [PollFd::new(input, PollFlags::POLLIN), PollFd::new(m, PollFlags::POLLIN)];
        // Only the open ones are polled (none: a 100 ms sleep).
        let open = match (stdin_open, master_open) {
            (true, true) => 0..2,
            (true, false) => 0..1,
            (false, true) => 1..2,
            (false, false) => 0..0,
        };
        if poll(&mut fds[open], 100u8).unwrap_or(0) <= 0 {
            continue;
        }
        let ready = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
        if ready(&fds[0]) && !copy(input, m, &mut buf) {
            stdin_open = false;
        }
        if ready(&fds[1]) && !copy(m, output, &mut buf) {
            // EIO: every holder of the pty's other side is gone; wait for the exit.
            master_open = false;
        }
    }
}

/// Copies one read's worth; false at end of input or error.
fn copy(from: BorrowedFd, to: BorrowedFd, buf: &mut [u8]) -> bool {
    use std::os::fd::AsRawFd;
    let n = match nix::unistd::read(from.as_raw_fd(), buf) {
        Ok(n) if n > 0 => n,
        _ => return false,
    };
    let mut off = 0usize;
    while off < n {
        match nix::unistd::write(to, &buf[off..n]) {
            Ok(w) if w > 0 => off += w,
            _ => return false,
        }
    }
    true
}

/// Prints what the pty still holds after the process exited.
fn drain(m: BorrowedFd, output: BorrowedFd, buf: &mut [u8]) {
    loop {
        let mut p = [PollFd::new(m, PollFlags::POLLIN)];
        // No wait.
        if poll(&mut p, 0u8).unwrap_or(0) <= 0 || !copy(m, output, buf) {
            return;
        }
    }
}
