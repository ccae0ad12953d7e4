//! The builder's raw system calls, each behind a safe function with its
//! SAFETY argument; every other module of the crate forbids `unsafe`. Only
//! calls that `nix` does not wrap live here. No threat of their own: both
//! are performance hints whose failure changes no byte of any output.
use std::os::fd::{AsFd, AsRawFd};

/// Starts writeback of `len` bytes of `file` from `offset` on, so the disk
/// works while a blob is still being made. A hint: the fsync before the
/// blob is committed is what makes it durable, so the result is ignored.
pub(crate) fn start_writeback(file: &impl AsFd, offset: u64, len: u64) {
    let fd = file.as_fd().as_raw_fd();
    // SAFETY: sync_file_range reads only its integer arguments; `fd` is
    // borrowed from a file that stays open for the whole call.
    unsafe {
        libc::sync_file_range(fd, offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Sets one glibc allocator parameter (`M_TOP_PAD`, `M_MMAP_THRESHOLD`, ...).
/// A tuning: an unknown parameter or refused value leaves the default.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn mallopt(param: libc::c_int, value: libc::c_int) {
    // SAFETY: mallopt only changes allocator parameters; it takes plain
    // integers and is safe to call at any time, from any thread.
    unsafe {
        libc::mallopt(param, value);
    }
}
