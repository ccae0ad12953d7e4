//! The connect watch, supervisor side: listens on the sandbox's
//! `notify.sock` (0600, in its run directory) for the seccomp listeners
//! that the sandbox's init and each `moat exec` hand over
//! (`launch::connect_notify`), and serves each on a thread of its own. For
//! every connect(2) towards one of the gateway's ports (its proxy port and
//! the transparent egress ports) the waiting process is judged
//! while it still waits, and the verdict is kept under the socket's inode
//! for the gateway (`gateway::connects`). Guards against an agent borrowing
//! another program's rights with a socket it connected itself. Every call
//! is let through (the gateway decides, and refuses a connection it has no
//! verdict for): a slow or failed judgement costs the caller time, never
//! a wrong answer. If the watch itself fails, the kernel answers the
//! filter's connect(2) calls with ENOSYS: broken networking, never an
//! unjudged connection.
#![forbid(unsafe_code)]
use crate::gateway::connects::Connects;
use crate::sandbox::sys;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

/// Binds `path` and serves the listeners handed over on it, on detached
/// threads that end with the supervisor (or, per listener, when the last
/// process using its filter exits).
pub(crate) fn start(path: &Path, connects: Arc<Connects>, gateway_ports: Vec<u16>) -> io::Result<()> {
    let gateway_ports: Arc<[u16]> = gateway_ports.into();
    let _ = std::fs::remove_file(path);
    let listener = crate::unix_addr::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new().name("connect-watch".into()).spawn(move || {
        for conn in listener.incoming() {
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and its kin: do not spin.
                    tracing::warn!(event = "connect_watch_failed", error = %e, "accepting on notify.sock");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
            };
            // A launcher or `moat exec` that connected but never sends (stopped,
            // or its process died first) must not hold up the ones after it.
            let _ = conn.set_read_timeout(Some(HAND_OVER_TIMEOUT));
            match crate::launch::receive_fd(conn.as_fd()) {
                Ok(Some(fd)) => {
                    let (connects, ports) = (connects.clone(), gateway_ports.clone());
                    let spawned = std::thread::Builder::new()
                        .name("connect-notify".into())
                        .spawn(move || serve(fd, &connects, &ports));
                    if let Err(e) = spawned {
                        // The listener is closed with the closure: the
                        // processes of that filter then get ENOSYS from
                        // connect(2), loudly, never a connection unjudged.
                        tracing::error!(event = "connect_watch_failed", error = %e, "no thread for a connect listener: connect(2) fails in those processes");
                    }
                }
                Ok(None) => tracing::warn!(event = "connect_watch_empty", "a notify connection carried no listener"),
                Err(e) => tracing::warn!(event = "connect_watch_failed", error = %e, "receiving a connect listener"),
            }
        }
    })?;
    Ok(())
}

/// How long a connection to notify.sock may take to hand its listener over
/// (the executor sends it right after connecting, before exec).
const HAND_OVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Answers the notifications of one listener until no process uses its filter.
fn serve(listener: OwnedFd, connects: &Connects, gateway_ports: &[u16]) {
    loop {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(event = "connect_watch_failed", error = %e, "polling a connect listener: connect(2) fails in its processes");
                return;
            }
        }
        let events = fds[0].revents().unwrap_or(PollFlags::empty());
        if events.contains(PollFlags::POLLIN) {
            match sys::notif_recv(listener.as_fd()) {
                Ok(n) => answer(&listener, connects, gateway_ports, &n),
                // The caller died before we read it, or a signal: go on.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINTR)) => {}
                Err(e) => {
                    tracing::error!(event = "connect_watch_failed", error = %e, "reading a connect notification: connect(2) fails in its processes");
                    return;
                }
            }
        } else if events.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL) {
            return;
        }
    }
}

fn answer(listener: &OwnedFd, connects: &Connects, gateway_ports: &[u16], n: &sys::Notif) {
    let fd = n.args[0] as i32;
    // The destination is read from the caller's memory, which it may change
    // meanwhile: that can only cost a verdict (and the gateway then refuses
    // the connection), never attribute one wrongly.
    let towards_gateway =
        destination_port(n.pid, n.args[1], n.args[2]).is_none_or(|p| p.is_some_and(|p| gateway_ports.contains(&p)));
    if let Some(inode) = connects.socket_of(n.pid as i32, fd) {
        // Whatever was judged of this socket before no longer stands.
        connects.forget(inode);
        if towards_gateway {
            let verdict = connects.judge(n.pid as i32);
            if sys::notif_id_valid(listener.as_fd(), n.id) {
                connects.record(inode, verdict);
            }
        }
    }
    let _ = sys::notif_continue(listener.as_fd(), n.id);
}

/// The port of an AF_INET/AF_INET6 address at `addr` (length `len`) in
/// thread `tid`'s memory: `Some(None)` for another family, `None` when it
/// cannot be read.
fn destination_port(tid: u32, addr: u64, len: u64) -> Option<Option<u16>> {
    let mut buf = [0u8; 4];
    if len < buf.len() as u64 {
        return Some(None);
    }
    let remote = [RemoteIoVec { base: usize::try_from(addr).ok()?, len: buf.len() }];
    let n = process_vm_readv(Pid::from_raw(tid as i32), &mut [IoSliceMut::new(&mut buf)], &remote).ok()?;
    if n != buf.len() {
        return None;
    }
    let family = i32::from(u16::from_ne_bytes([buf[0], buf[1]]));
    Some((family == libc::AF_INET || family == libc::AF_INET6).then(|| u16::from_be_bytes([buf[2], buf[3]])))
}
