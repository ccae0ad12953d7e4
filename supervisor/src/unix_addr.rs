//! Unix sockets at paths longer than `sun_path` holds (107 bytes): a
//! 63-character sandbox name (what a Kubernetes container id maps to)
//! under a deep `MOAT_RUN_DIR` goes past it. Such a path is reached
//! through its directory's descriptor (`/proc/self/fd/N/NAME`), which the
//! kernel resolves like the directory itself. A leaf: plain std calls.
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Longest path given to bind/connect as it is (sun_path less its NUL).
const DIRECT: usize = 107;

/// Runs `f` with an address for `path` that fits `sun_path`.
fn with_addr<T>(path: &Path, f: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
    if path.as_os_str().len() <= DIRECT {
        return f(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return f(path);
    };
    let dir = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC).open(dir)?;
    f(&short(&dir, name.as_ref()))
}

fn short(dir: &File, name: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
}

/// `UnixListener::bind`, for a path of any length.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    with_addr(path, |p| UnixListener::bind(p))
}

/// `UnixStream::connect`, for a path of any length.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    with_addr(path, |p| UnixStream::connect(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_longer_than_sun_path_binds_and_connects() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("d".repeat(100)).join("e".repeat(40));
        std::fs::create_dir_all(&deep).unwrap();
        let sock = deep.join("notify.sock");
        assert!(sock.as_os_str().len() > DIRECT);
        assert!(UnixListener::bind(&sock).is_err(), "the plain call would have worked");
        let l = bind(&sock).unwrap();
        assert!(sock.exists(), "the socket is at its own path");
        let _c = connect(&sock).unwrap();
        l.accept().unwrap();
    }
}
