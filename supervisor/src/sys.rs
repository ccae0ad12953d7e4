//! Raw syscalls of the crate-root leaves that `nix` and std do not wrap:
//! the overlayfs opaque-directory xattr of `layers`, and PROCMAP_QUERY,
//! which lists a process's executable mappings for `gateway::integrity`. A module of its
//! own beside `layers` (not inside launch/ or sandbox/) because both rooms
//! use `layers`, and a leaf may import neither. Guards against unsound
//! syscalls spread over the crate: each `unsafe` here says why it holds.
use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// lsetxattr(2): sets the extended attribute `name` of `path` itself (a
/// symlink is not followed) to `value`.
pub(crate) fn set_xattr_no_follow(path: &Path, name: &CStr, value: &[u8]) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: `c` and `name` are NUL-terminated strings and `value` is valid
    // for `value.len()` bytes; lsetxattr only reads them during the call.
    if unsafe { libc::lsetxattr(c.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One executable mapping of a process, as PROCMAP_QUERY reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExecVma {
    pub start: u64,
    /// (major, minor) of the mapped file's device; (0, 0) with inode 0 for
    /// anonymous and kernel mappings.
    pub dev: (u32, u32),
    pub inode: u64,
}

/// `struct procmap_query` of <linux/fs.h> (Linux 6.11).
#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

const PROCMAP_QUERY_VMA_EXECUTABLE: u64 = 0x04;
const PROCMAP_QUERY_COVERING_OR_NEXT_VMA: u64 = 0x10;
/// _IOWR('f', 17, struct procmap_query)
const PROCMAP_QUERY: libc::c_ulong =
    (3 << 30) | ((std::mem::size_of::<ProcmapQuery>() as libc::c_ulong) << 16) | ((b'f' as libc::c_ulong) << 8) | 17;

fn procmap_query(maps: &std::fs::File, q: &mut ProcmapQuery) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    q.size = std::mem::size_of::<ProcmapQuery>() as u64;
    // SAFETY: `q` is a procmap_query of the size it declares, owned for the
    // call; the only pointer in it (vma_name_addr) is 0 or set by the caller
    // to a buffer of vma_name_size bytes that outlives the call.
    if unsafe { libc::ioctl(maps.as_raw_fd(), PROCMAP_QUERY, q as *mut ProcmapQuery) } == 0 {
        return Ok(true);
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        e => Err(e),
    }
}

/// The executable mappings of the process whose `/proc/PID/maps` is open as
/// `maps`, without their paths (which the kernel would have to build), at
/// most `max` of them. Fails with ENOTTY on kernels before 6.11.
pub(crate) fn exec_vmas(maps: &std::fs::File, max: usize) -> io::Result<Vec<ExecVma>> {
    let mut out = Vec::new();
    let mut addr = 0;
    loop {
        let mut q = ProcmapQuery {
            query_flags: PROCMAP_QUERY_COVERING_OR_NEXT_VMA | PROCMAP_QUERY_VMA_EXECUTABLE,
            query_addr: addr,
            ..ProcmapQuery::default()
        };
        if !procmap_query(maps, &mut q)? {
            return Ok(out);
        }
        if out.len() == max {
            return Err(io::Error::other(format!("more than {max} executable mappings")));
        }
        out.push(ExecVma { start: q.vma_start, dev: (q.dev_major, q.dev_minor), inode: q.inode });
        if q.vma_end <= addr {
            return Ok(out);
        }
        addr = q.vma_end;
    }
}

/// The name the kernel shows for the mapping at `addr` (a path, `[vdso]`,
/// `[anon:NAME]`, or empty), at most 4 KiB.
pub(crate) fn vma_name(maps: &std::fs::File, addr: u64) -> io::Result<String> {
    let mut buf = vec![0u8; 4096];
    let mut q = ProcmapQuery {
        query_addr: addr,
        vma_name_size: buf.len() as u32,
        vma_name_addr: buf.as_mut_ptr() as u64,
        ..ProcmapQuery::default()
    };
    if !procmap_query(maps, &mut q)? {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    // vma_name_size now counts the name with its NUL (0: no name).
    let n = (q.vma_name_size as usize).saturating_sub(1).min(buf.len());
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
