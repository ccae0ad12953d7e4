//! Raw syscalls of the crate-root leaves that `nix` and std do not wrap:
//! today the overlayfs opaque-directory xattr of `layers`. A module of its
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
