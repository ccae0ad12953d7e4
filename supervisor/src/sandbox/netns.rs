//! The sandbox's network namespace: created by the supervisor with only `lo`
//! up (no veth, no route out; the reserved name range of transparent egress
//! is an address of `lo`), and listening sockets opened inside it from the
//! supervisor's own process. Guards against any network path out of the
//! sandbox except sockets the supervisor owns: egress is impossible in the
//! kernel, not filtered by a rule that could be wrong. The namespace lives
//! as long as a descriptor to it does: nothing to clean up on a crash.
//!
//! Both run on a short-lived thread, because unshare/setns of a network
//! namespace change only the calling thread: the process's other threads (a
//! tokio runtime) stay in the host namespace. The namespace and every socket
//! bound in it at start share one such thread.
#![forbid(unsafe_code)]
use nix::sched::{setns, unshare, CloneFlags};
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("creating the sandbox network namespace: {0}")]
    Create(io::Error),
    #[error("bringing up lo in the sandbox network namespace: {0}")]
    Loopback(io::Error),
    #[error("adding the reserved name range to lo in the sandbox network namespace: {0}")]
    Range(io::Error),
    #[error("binding {addr} in the sandbox network namespace")]
    Bind { addr: std::net::SocketAddr, source: io::Error },
    #[error("entering the sandbox network namespace: {0}")]
    Enter(io::Error),
    #[error("listening on 127.0.0.1:{port} in the sandbox network namespace")]
    Listen { port: u16, source: io::Error },
    #[error("connecting to 127.0.0.1:{port} in the sandbox network namespace")]
    Connect { port: u16, source: io::Error },
    #[error("namespace helper thread failed")]
    Thread,
}

/// A network namespace with only `lo`, held open by this descriptor.
#[derive(Debug)]
pub(crate) struct Netns {
    fd: OwnedFd,
}

impl Netns {
    /// Starts creating a new network namespace: a helper thread makes it,
    /// brings its `lo` up and runs `then` inside it, so the sockets the
    /// supervisor binds in the namespace are made in one visit (a thread per
    /// socket cost a clone, a join and two context switches each on the
    /// start's critical path). The caller goes on meanwhile.
    pub(crate) fn create_then<T: Send + 'static>(
        then: impl FnOnce() -> Result<T, NetnsError> + Send + 'static,
    ) -> Creating<T> {
        Creating(std::thread::spawn(move || {
            // Changes only this helper thread, which exits right after.
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Create(e.into()))?;
            super::sys::interface_up("lo").map_err(NetnsError::Loopback)?;
            let (_, prefix) = crate::gateway::names::RANGE;
            super::netlink::add_loopback_range(crate::gateway::names::RANGE_ADDR, prefix).map_err(NetnsError::Range)?;
            let fd = open_fd(Path::new("/proc/thread-self/ns/net")).map_err(NetnsError::Create)?;
            let made = then()?;
            Ok((Netns { fd }, made))
        }))
    }

    pub(crate) fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// A path other processes can open to join this namespace while it is held.
    pub(crate) fn proc_path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd())
    }

    /// Another descriptor of the same namespace (a published port's relay
    /// holds one; the namespace lives while any does).
    pub(crate) fn try_clone(&self) -> io::Result<Netns> {
        self.fd.try_clone().map(|fd| Netns { fd })
    }

    /// Connects to 127.0.0.1:`port` inside the namespace from a helper
    /// thread in it; the returned socket is used from the host namespace
    /// as usual. This is how a published port reaches the sandbox.
    pub(crate) fn connect(&self, port: u16) -> Result<TcpStream, NetnsError> {
        let fd = self.fd.as_fd();
        std::thread::scope(|s| {
            s.spawn(move || -> Result<TcpStream, NetnsError> {
                // Affects only this helper thread, which exits after connecting.
                enter(fd)?;
                TcpStream::connect(("127.0.0.1", port)).map_err(|source| NetnsError::Connect { port, source })
            })
            .join()
            .map_err(|_| NetnsError::Thread)?
        })
    }

    /// Names of the interfaces in the namespace (from a helper thread inside
    /// it): what the tests check the namespace by.
    #[cfg(test)]
    pub(crate) fn interfaces(&self) -> Result<Vec<String>, NetnsError> {
        let fd = self.fd.as_fd();
        std::thread::scope(|s| {
            s.spawn(move || -> Result<Vec<String>, NetnsError> {
                enter(fd)?;
                // /sys/class/net shows the mounting namespace's view; /proc/self/net
                // follows the thread's namespace.
                let text = std::fs::read_to_string("/proc/thread-self/net/dev").map_err(NetnsError::Enter)?;
                Ok(text.lines().skip(2).filter_map(|l| l.split(':').next()).map(|s| s.trim().to_string()).collect())
            })
            .join()
            .map_err(|_| NetnsError::Thread)?
        })
    }
}

/// A namespace being made by [`Netns::create_then`].
pub(crate) struct Creating<T>(std::thread::JoinHandle<Result<(Netns, T), NetnsError>>);

impl<T> Creating<T> {
    /// The namespace and what was made in it.
    pub(crate) fn join(self) -> Result<(Netns, T), NetnsError> {
        self.0.join().map_err(|_| NetnsError::Thread)?
    }
}

/// Binds and listens on 127.0.0.1:`port` in the calling thread's namespace
/// (inside [`Netns::create_then`]); the socket is then used from the host
/// namespace as usual. This is how the egress gateway becomes the only
/// thing the sandbox can reach.
pub(crate) fn listen_local(port: u16) -> Result<TcpListener, NetnsError> {
    TcpListener::bind(("127.0.0.1", port)).map_err(|source| NetnsError::Listen { port, source })
}

/// Binds and listens on `addr` in the calling thread's namespace
/// (transparent egress: the DNS responder's TCP side, and `0.0.0.0:PORT`,
/// which takes connections to every address of the reserved range on that
/// port).
pub(crate) fn listen_on(addr: std::net::SocketAddr) -> Result<TcpListener, NetnsError> {
    TcpListener::bind(addr).map_err(|source| NetnsError::Bind { addr, source })
}

/// Binds a UDP socket to `addr` in the calling thread's namespace (the DNS
/// responder).
pub(crate) fn bind_udp(addr: std::net::SocketAddr) -> Result<std::net::UdpSocket, NetnsError> {
    std::net::UdpSocket::bind(addr).map_err(|source| NetnsError::Bind { addr, source })
}

/// Moves the calling thread into the network namespace `fd`.
fn enter(fd: BorrowedFd) -> Result<(), NetnsError> {
    setns(fd, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Enter(e.into()))
}

/// Opens `path` read-only, close-on-exec (what std's File::open does).
fn open_fd(path: &Path) -> io::Result<OwnedFd> {
    std::fs::File::open(path).map(OwnedFd::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Needs root (CAP_SYS_ADMIN); the CI runs as root.
    #[test]
    fn lo_only_namespace_and_listener_inside_it() {
        let (ns, l) = Netns::create_then(|| listen_local(0)).join().expect("needs root: create a network namespace");
        assert_eq!(ns.interfaces().unwrap(), vec!["lo".to_string()]);
        let port = l.local_addr().unwrap().port();
        // From the host namespace the port is not reachable...
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err() || port_in_use_on_host(port));
        // ...but a thread inside the namespace reaches it.
        std::thread::scope(|s| {
            let client = s.spawn(|| {
                // The test thread joins the namespace we hold.
                enter(ns.fd.as_fd()).unwrap();
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.write_all(b"hi").unwrap();
            });
            let (mut conn, _) = l.accept().unwrap();
            let mut buf = [0u8; 2];
            conn.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"hi");
            client.join().unwrap();
        });
    }

    fn port_in_use_on_host(port: u16) -> bool {
        std::net::TcpListener::bind(("127.0.0.1", port)).is_err()
    }
}
