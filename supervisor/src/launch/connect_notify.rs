//! The connect notification, sandbox side: a seccomp filter that stops
//! every connect(2) of the sandbox until the supervisor has looked at the
//! caller (SECCOMP_RET_USER_NOTIF), installed by the executor just before
//! the deny list, with its listener handed to the supervisor over the
//! connection `connect` made to `notify.sock` in the sandbox's run
//! directory. Guards against an agent borrowing an allowed program's network
//! rights with a socket the agent connected itself (docs/egress.md, "Whose
//! connection"): the gateway learns who called connect(2), not only who
//! holds the socket later. The listener never reaches the agent: the kernel
//! makes it close-on-exec, the executor closes it before exec, and the
//! connection to the supervisor is close-on-exec too (libcontainer marks
//! every inherited descriptor so). A hand-written filter because seccompiler
//! has no user-notification action; it is eight instructions.
#![forbid(unsafe_code)]
use crate::launch::sys;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// The socket in the sandbox's run directory the supervisor listens on.
pub(crate) const SOCKET: &str = "notify.sock";

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
/// x86_64's x32 ABI marks its numbers with this bit; no image uses it and
/// the deny list's numbers do not cover it, so it gets ENOSYS.
const X32_BIT: u32 = 0x4000_0000;

/// The filter: connect(2) of this architecture goes to the listener, x32
/// calls fail, everything else is left to the deny list (which kills other
/// architectures).
pub(crate) fn filter() -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    vec![
        op(LD_W_ABS, 0, 0, 4),                                        // 0: A = arch
        op(JEQ, 0, 3, AUDIT_ARCH),                                    // 1: other arch -> 5
        op(LD_W_ABS, 0, 0, 0),                                        // 2: A = nr
        op(JEQ, 2, 0, libc::SYS_connect as u32),                      // 3: connect -> 6
        op(JGE, 2, 0, X32_BIT),                                       // 4: x32 -> 7
        op(RET, 0, 0, libc::SECCOMP_RET_ALLOW),                       // 5
        op(RET, 0, 0, libc::SECCOMP_RET_USER_NOTIF),                  // 6
        op(RET, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32), // 7
    ]
}

/// Connects to the supervisor's `notify.sock` in `run_dir`, before the
/// container is built: the executor inherits the connection.
pub(crate) fn connect(run_dir: &Path) -> io::Result<UnixStream> {
    crate::unix_addr::connect(&run_dir.join(SOCKET))
}

/// In the executor: installs the filter and sends its listener to the
/// supervisor over `conn` (descriptor `fd`, inherited), then closes both.
pub(crate) fn hand_over(fd: i32) -> Result<(), String> {
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("PR_SET_NO_NEW_PRIVS: {e}"))?;
    let listener = sys::seccomp_listener(&filter()).map_err(|e| format!("the connect filter: {e}"))?;
    let conn = sys::own_inherited(fd).map_err(|e| format!("the supervisor's notify connection: {e}"))?;
    send_fd(conn.as_fd(), listener.as_fd()).map_err(|e| format!("handing the connect listener over: {e}"))?;
    drop(listener);
    drop(conn);
    Ok(())
}

fn send_fd(conn: BorrowedFd, fd: BorrowedFd) -> io::Result<()> {
    let fds = [fd.as_raw_fd()];
    sendmsg::<UnixAddr>(
        conn.as_raw_fd(),
        &[IoSlice::new(b"L")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map(drop)
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the filter on (arch, nr) the way the kernel does, for the four
    /// instructions it uses.
    fn run(arch: u32, nr: u32) -> u32 {
        let f = filter();
        let mut pc = 0;
        let mut a = 0u32;
        loop {
            let i = &f[pc];
            pc += 1;
            match i.code & 0x07 {
                0x00 => a = if i.k == 4 { arch } else { nr }, // ld [k]: arch at 4, nr at 0
                0x05 => {
                    let taken = match i.code & 0xf0 {
                        0x10 => a == i.k, // jeq
                        0x30 => a >= i.k, // jge
                        c => panic!("jump {c:#x} not modelled"),
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                0x06 => return i.k,
                c => panic!("class {c:#x} not modelled"),
            }
        }
    }

    #[test]
    fn connect_is_notified_and_nothing_else() {
        let native = AUDIT_ARCH;
        assert_eq!(run(native, libc::SYS_connect as u32), libc::SECCOMP_RET_USER_NOTIF);
        for other in [libc::SYS_socket, libc::SYS_sendto, libc::SYS_accept4, libc::SYS_read, libc::SYS_bind] {
            assert_eq!(run(native, other as u32), libc::SECCOMP_RET_ALLOW, "syscall {other}");
        }
        // x32's connect (and every x32 call) fails; another architecture is
        // left to the deny list, which kills it.
        assert_eq!(run(native, X32_BIT | libc::SYS_connect as u32), libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        assert_eq!(run(0x4000_0003, 102), libc::SECCOMP_RET_ALLOW);
    }
}
