//! The snapshot crate's system calls, in one place: making a file system
//! durable (`syncfs`) and a directory's renames durable (`fsync` of the
//! directory), starting a file's writeback early (`sync_file_range`), and
//! swapping two trees in one step (`renameat2` with `RENAME_EXCHANGE`). Addresses torn restores and backups: each call is
//! a thin wrapper that reports errors as `io::Error` (nix's safe wrappers
//! where it has one), and the only `unsafe` of the crate is here, with its
//! reason.
#![allow(unsafe_code)]
use nix::fcntl::RenameFlags;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Makes everything written to the file system holding `f` durable (far
/// cheaper than an fsync per file).
pub(crate) fn syncfs(f: &File) -> io::Result<()> {
    nix::unistd::syncfs(f.as_raw_fd()).map_err(io::Error::from)
}

/// fsyncs a directory (makes renames in it durable). Unlike
/// `moat_builder::fsio::sync_dir` a failure is an error: packs and restored
/// trees are only published once this has succeeded.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|f| f.sync_all())
}

/// Starts writing `f`'s dirty pages back without waiting for them, so a
/// later [`syncfs`] waits for less. A hint: its outcome does not matter.
pub(crate) fn start_writeback(f: &File) {
    // SAFETY: sync_file_range on a descriptor `f` keeps open for the call;
    // no memory is passed. nix has no wrapper for it.
    unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Atomically exchanges the trees at `a` and `b` (both must exist).
pub(crate) fn rename_exchange(a: &Path, b: &Path) -> io::Result<()> {
    nix::fcntl::renameat2(None, a, None, b, RenameFlags::RENAME_EXCHANGE).map_err(io::Error::from)
}
