//! The shim's unsafe calls: what a child does between fork and exec, and a
//! terminal's window size. Guards against a child outliving the shim (a container running on
//! with no shim to report it): each child asks the kernel for a signal when
//! the shim dies, and exits at once if the shim died before it asked.
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Arms `cmd` so its child gets `signal` when the shim dies (PDEATHSIG) and,
/// with `ready`, finds that descriptor at 3; with `terminal`, its stdin (a
/// pty's slave) becomes the controlling terminal of a new session, so a
/// resize reaches it as SIGWINCH. PDEATHSIG follows the thread that forks:
/// call `spawn` on a thread that lives as long as the shim.
pub fn arm(cmd: &mut Command, signal: libc::c_int, ready: Option<RawFd>, terminal: bool) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec (after
    // its stdio is in place); it calls only prctl, getppid, setsid, ioctl,
    // dup2 and _exit, which are async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if terminal && (libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0) {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1); // the shim died before PDEATHSIG was armed
            }
            if let Some(fd) = ready {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Sets the window size of terminal `fd` (TIOCSWINSZ).
pub fn set_window_size(fd: std::os::fd::BorrowedFd, cols: u16, rows: u16) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which points at
    // a live local; `fd` is a descriptor the caller holds open.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A new pty, both ends close-on-exec from the start (the shim forks
/// children from another thread meanwhile: none may inherit another's
/// terminal): posix_openpt, then the slave through TIOCGPTPEER.
pub fn open_pty() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: posix_openpt takes flags only and returns a new descriptor.
    let m = unsafe { libc::posix_openpt(flags) };
    if m < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `m` is the descriptor just returned; nothing else owns it.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    // SAFETY: grantpt and unlockpt take the master descriptor we hold.
    if unsafe { libc::grantpt(master.as_raw_fd()) } < 0 || unsafe { libc::unlockpt(master.as_raw_fd()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: TIOCGPTPEER takes open flags as its argument and returns a new
    // descriptor for the slave of the master we hold.
    let s = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if s < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `s` is the descriptor just returned; nothing else owns it.
    Ok((master, unsafe { OwnedFd::from_raw_fd(s) }))
}
