//! The snapshot crate's system calls, in one place: making a file system
//! durable (`syncfs`) and a directory's renames durable (`fsync` of the
//! directory), starting a file's writeback early (`sync_file_range`),
//! swapping two trees in one step (`renameat2` with `RENAME_EXCHANGE`), the
//! descriptor-relative calls trees of any depth are walked, built and
//! removed with (`openat`/`openat2`, `fstatat`, `mkdirat`, ...), and a
//! file's data extents (`lseek` `SEEK_DATA`/`SEEK_HOLE`). Addresses torn
//! restores and backups, paths past PATH_MAX, symlinks swapped in under a
//! walk (nothing is resolved through a symlink) and sparse files blown up to
//! their full size: each call is a thin wrapper that reports errors as
//! `io::Error` (nix's safe wrappers where it has one), and the only `unsafe`
//! of the crate is here, with its reason.
#![allow(unsafe_code)]
use nix::fcntl::{OFlag, RenameFlags, ResolveFlag};
use nix::sys::stat::Mode;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
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

fn owned(fd: nix::Result<RawFd>) -> io::Result<OwnedFd> {
    let fd = fd.map_err(io::Error::from)?;
    // SAFETY: `fd` was just returned by a successful open call and nothing
    // else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the directory `name` (one component) in `dir`, refusing a symlink.
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    owned(nix::fcntl::openat(Some(dir.as_raw_fd()), name, flags, Mode::empty()))
}

/// The longest path handed to one `openat2` (PATH_MAX is 4096 with its NUL).
const MAX_STEP: usize = 3072;

/// Opens `rel` (a relative path with `/` separators) under `root` without
/// resolving any symlink and without leaving `root` (`openat2` with
/// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), at any depth: a path longer
/// than PATH_MAX allows is opened a run of directories at a time.
pub(crate) fn open_beneath(root: BorrowedFd<'_>, rel: &str, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
    let how = |flags: OFlag| {
        nix::fcntl::OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .mode(Mode::from_bits_truncate(mode))
            .resolve(
                ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            )
    };
    let mut held: Option<OwnedFd> = None;
    let mut rest = rel;
    while rest.len() > MAX_STEP {
        // The last '/' within the first MAX_STEP bytes ends this run.
        let cut =
            rest.as_bytes()[..MAX_STEP].iter().rposition(|b| *b == b'/').filter(|c| *c > 0).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "a path component longer than a path may be")
            })?;
        let at = held.as_ref().map_or(root, |f| f.as_fd());
        let dir = owned(nix::fcntl::openat2(at.as_raw_fd(), &rest[..cut], how(OFlag::O_PATH | OFlag::O_DIRECTORY)))?;
        held = Some(dir);
        rest = &rest[cut + 1..];
    }
    let at = held.as_ref().map_or(root, |f| f.as_fd());
    owned(nix::fcntl::openat2(at.as_raw_fd(), rest, how(flags)))
}

/// The names in directory `dir` (without `.` and `..`), read through a
/// duplicate of the descriptor (`dir` itself stays usable).
pub(crate) fn read_names(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    use std::os::unix::ffi::OsStrExt;
    let dup = dir.try_clone_to_owned()?;
    // The duplicate shares the file offset: start from the beginning.
    nix::unistd::lseek(dup.as_raw_fd(), 0, nix::unistd::Whence::SeekSet).map_err(io::Error::from)?;
    let mut d = nix::dir::Dir::from(dup).map_err(io::Error::from)?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e.map_err(io::Error::from)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(out)
}

/// `lstat` of `name` in `dir` (a symlink is described, not followed).
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<libc::stat> {
    nix::sys::stat::fstatat(Some(dir.as_raw_fd()), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(io::Error::from)
}

/// `fstat` of an open descriptor.
pub(crate) fn stat_fd(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    nix::sys::stat::fstat(fd.as_raw_fd()).map_err(io::Error::from)
}

pub(crate) fn readlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OsString> {
    nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name).map_err(io::Error::from)
}

pub(crate) fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(mode)).map_err(io::Error::from)
}

/// Creates the regular file `name` in `dir` (it must not exist; a symlink
/// there is not followed).
pub(crate) fn create_file_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<File> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    owned(nix::fcntl::openat(Some(dir.as_raw_fd()), name, flags, Mode::from_bits_truncate(mode))).map(File::from)
}

pub(crate) fn symlink_at(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    nix::unistd::symlinkat(target, Some(dir.as_raw_fd()), name).map_err(io::Error::from)
}

/// Hard-links `old` in `old_dir` as `new` in `new_dir` (a symlink `old` is
/// linked itself, not followed).
pub(crate) fn link_at(old_dir: BorrowedFd<'_>, old: &OsStr, new_dir: BorrowedFd<'_>, new: &OsStr) -> io::Result<()> {
    nix::unistd::linkat(Some(old_dir.as_raw_fd()), old, Some(new_dir.as_raw_fd()), new, nix::fcntl::AtFlags::empty())
        .map_err(io::Error::from)
}

/// Removes `name` from `dir`: an empty directory if `is_dir`, else a non-directory.
pub(crate) fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr, is_dir: bool) -> io::Result<()> {
    let how = if is_dir { nix::unistd::UnlinkatFlags::RemoveDir } else { nix::unistd::UnlinkatFlags::NoRemoveDir };
    nix::unistd::unlinkat(Some(dir.as_raw_fd()), name, how).map_err(io::Error::from)
}

/// `lchown` of `name` in `dir`.
pub(crate) fn chown_at(dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    use nix::unistd::{Gid, Uid};
    let flags = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
    nix::unistd::fchownat(Some(dir.as_raw_fd()), name, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)), flags)
        .map_err(io::Error::from)
}

/// `chmod` of the directory `name` in `dir` (one this crate created).
pub(crate) fn chmod_dir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let how = nix::sys::stat::FchmodatFlags::FollowSymlink;
    nix::sys::stat::fchmodat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(mode), how).map_err(io::Error::from)
}

/// The holes of `f` within its first `size` bytes, as (offset, length),
/// from `SEEK_DATA`/`SEEK_HOLE`. A file system without them reports the
/// whole file as data (no holes).
pub(crate) fn holes(f: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    use nix::errno::Errno;
    use nix::unistd::{lseek, Whence};
    let fd = f.as_raw_fd();
    let size = i64::try_from(size).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large"))?;
    let (mut out, mut pos) = (Vec::new(), 0i64);
    while pos < size {
        let data = match lseek(fd, pos, Whence::SeekData) {
            Ok(d) => d.min(size),
            Err(Errno::ENXIO) => size, // nothing but a hole from pos on
            Err(Errno::EINVAL) if pos == 0 => return Ok(Vec::new()), // not supported here
            Err(e) => return Err(e.into()),
        };
        if data > pos {
            out.push((pos as u64, (data - pos) as u64));
        }
        if data >= size {
            break;
        }
        pos = match lseek(fd, data, Whence::SeekHole) {
            Ok(h) => h.min(size),
            Err(Errno::ENXIO) => size, // shrank under us: the rest is gone
            Err(e) => return Err(e.into()),
        };
    }
    Ok(out)
}
