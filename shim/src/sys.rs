//! The shim's one unsafe call site: what a child does between fork and
//! exec. Guards against a child outliving the shim (a container running on
//! with no shim to report it): each child asks the kernel for a signal when
//! the shim dies, and exits at once if the shim died before it asked.
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Arms `cmd` so its child gets `signal` when the shim dies (PDEATHSIG) and,
/// with `ready`, finds that descriptor at 3. PDEATHSIG follows the thread
/// that forks: call `spawn` on a thread that lives as long as the shim.
pub fn arm(cmd: &mut Command, signal: libc::c_int, ready: Option<RawFd>) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec; it calls
    // only prctl, getppid, dup2 and _exit, which are async-signal-safe, and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
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
