//! The supervisor side's raw syscalls that `nix` does not wrap or wraps
//! only as `unsafe`, each behind a small safe function: getrandom, the
//! interface-flags ioctls that bring `lo` up, the loop-device ioctls that
//! attach a workspace image, the seccomp notification ioctls of the
//! connect watch, and the handler that forwards
//! SIGTERM/SIGINT/SIGHUP to the launcher. Guards against unsound syscalls
//! spread over sandbox/: every `unsafe` of it is here, with the reason it holds.
use nix::sys::signal::{kill, signal, SigHandler, Signal};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// Fills `buf` from the kernel's random source; a failure leaves it as it was.
pub(super) fn random_bytes(buf: &mut [u8]) {
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`, which
    // we borrow mutably for the call.
    unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
}

/// Sets IFF_UP on the interface `name` (SIOCGIFFLAGS, SIOCSIFFLAGS) in the
/// calling thread's network namespace.
pub(super) fn interface_up(name: &str) -> io::Result<()> {
    let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    let mut req =
        libc::ifreq { ifr_name: [0; libc::IFNAMSIZ], ifr_ifru: libc::__c_anonymous_ifr_ifru { ifru_flags: 0 } };
    if name.len() >= req.ifr_name.len() || name.contains('\0') {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    // SAFETY: `sock` is an open socket we own; `req` is a whole ifreq with a
    // NUL-terminated name, which SIOCGIFFLAGS fills and SIOCSIFFLAGS reads.
    // Reading `ifru_flags` is sound: the union is plain integers and the
    // kernel just wrote that member.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

static LAUNCHER_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = LAUNCHER_PID.load(Ordering::SeqCst);
    if pid > 0 {
        if let Ok(sig) = Signal::try_from(sig) {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }
}

/// From now on SIGTERM, SIGINT and SIGHUP are forwarded to `launcher` (our child).
pub(super) fn forward_stop_signals(launcher: i32) {
    LAUNCHER_PID.store(launcher, Ordering::SeqCst);
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only loads an atomic and calls kill, both
        // async-signal-safe.
        let _ = unsafe { signal(sig, SigHandler::Handler(forward_signal)) };
    }
}

/// Stops forwarding: the launcher was reaped and its pid may be reused.
pub(super) fn stop_forwarding() {
    LAUNCHER_PID.store(0, Ordering::SeqCst);
}

/// Makes `cmd`'s child a session leader (it outlives the terminal that ran
/// `moat run -d`) with `ready` duplicated onto its descriptor 3, where
/// [`ready_pipe_from_parent`] finds it.
pub fn detach_with_ready_fd(cmd: &mut std::process::Command, ready: std::os::fd::RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec in the child and calls
    // only setsid and dup2, which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::dup2(ready, 3) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The ready pipe a detaching parent put on descriptor 3, if the
/// environment says it did (`MOAT_READY_FD=3`); taken once.
pub fn ready_pipe_from_parent() -> Option<std::fs::File> {
    use std::os::fd::FromRawFd;
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if std::env::var("MOAT_READY_FD").ok().as_deref() != Some("3") || TAKEN.swap(true, Ordering::SeqCst) {
        return None;
    }
    // SAFETY: descriptor 3 is the ready pipe our parent placed there with
    // `detach_with_ready_fd` (it says so in MOAT_READY_FD), nothing else in
    // this process owns it, and TAKEN makes this the only File made from it.
    Some(unsafe { std::fs::File::from_raw_fd(3) })
}

/// `struct loop_info64` of <linux/loop.h>.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` of <linux/loop.h> (LOOP_CONFIGURE, Linux 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
/// The device detaches itself when its last user (the mounts) is gone.
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// Attaches `backing` (an open image file) to a free loop device with
/// autoclear set, and returns the device, open: the caller mounts it and
/// closes it, after which the device lives exactly as long as its mounts.
/// Retries when another process takes the same free device first.
pub(super) fn loop_attach(backing: &std::fs::File) -> io::Result<(std::path::PathBuf, std::fs::File)> {
    let ctl = std::fs::OpenOptions::new().read(true).write(true).open("/dev/loop-control")?;
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device
        // index or -1; `ctl` is an open loop-control descriptor we own.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let path = std::path::PathBuf::from(format!("/dev/loop{n}"));
        let dev = std::fs::OpenOptions::new().read(true).write(true).open(&path)?;
        let fd = u32::try_from(backing.as_raw_fd()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let cfg = LoopConfig {
            fd,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_AUTOCLEAR,
                lo_file_name: [0; 64],
                lo_crypt_name: [0; 64],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: `dev` is an open loop device we own; `cfg` is a whole,
        // initialised loop_config that LOOP_CONFIGURE only reads during the
        // call; its `fd` is `backing`, open for the whole call.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) };
        if r == 0 {
            return Ok((path, dev));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
    }
    Err(io::Error::new(io::ErrorKind::ResourceBusy, "every free loop device was taken by others first"))
}

/// One connect notification: the waiting thread (host id) and its arguments.
pub(super) struct Notif {
    pub id: u64,
    pub pid: u32,
    pub args: [u64; 6],
}

/// Receives the next notification on a seccomp `listener` (blocks).
pub(super) fn notif_recv(listener: BorrowedFd) -> io::Result<Notif> {
    // SAFETY: seccomp_notif is plain integers; the kernel requires it zeroed.
    let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: RECV writes one seccomp_notif into `n`, which we own for the call.
    if unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Notif { id: n.id, pid: n.pid, args: n.data.args })
}

/// Whether notification `id` is still pending: its thread still waits in
/// the call, so what was read of the process since describes the caller.
pub(super) fn notif_id_valid(listener: BorrowedFd, id: u64) -> bool {
    // SAFETY: ID_VALID reads one u64 from the pointer, valid for the call.
    unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0 }
}

/// Lets the waiting call of notification `id` proceed in the kernel.
pub(super) fn notif_continue(listener: BorrowedFd, id: u64) -> io::Result<()> {
    let mut resp =
        libc::seccomp_notif_resp { id, val: 0, error: 0, flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32 };
    // SAFETY: SEND reads one seccomp_notif_resp from `resp`, which we own for the call.
    if unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
