//! The inode of one TCP socket, found by its two addresses with an exact
//! NETLINK_SOCK_DIAG lookup (the kernel hashes the 4-tuple) instead of
//! reading /proc/net/tcp, which walks the host's whole established-socket
//! hash table on every read (262,144 buckets here: about 6 ms a connection,
//! BENCHMARKS.md). The socket must be made in the namespace whose sockets
//! it asks about (netlink sockets keep the namespace they were made in).
//! Hand-written because the message is two fixed structs and the crates
//! that model sock_diag are not in the tree; the layouts are those of
//! <linux/inet_diag.h>. Guards against identification costing more than the
//! request it guards; a failed lookup falls back to /proc (the caller's).
#![forbid(unsafe_code)]
use nix::sys::socket::{recv, send, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HDR: usize = 16;
/// inet_diag_req_v2: family, protocol, ext, pad, states, then the sockid.
const REQ_LEN: usize = 4 + 4 + SOCKID_LEN;
/// inet_diag_sockid: sport, dport, src[4], dst[4], if, cookie[2].
const SOCKID_LEN: usize = 2 + 2 + 16 + 16 + 4 + 8;
/// inet_diag_msg's inode: after family..retrans (4), the sockid, expires,
/// rqueue, wqueue and uid (4 each).
const INODE_AT: usize = NLMSG_HDR + 4 + SOCKID_LEN + 16;

/// A sock_diag socket of one network namespace.
#[derive(Debug)]
pub struct SockDiag {
    fd: Mutex<OwnedFd>,
}

impl SockDiag {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> io::Result<SockDiag> {
        let fd = socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkSockDiag)?;
        Ok(SockDiag { fd: Mutex::new(fd) })
    }

    /// The inode of the TCP socket whose local end is `local` and remote end
    /// `remote`; `None` when the namespace has no such socket.
    pub fn inode(&self, local: SocketAddr, remote: SocketAddr) -> io::Result<Option<u64>> {
        let req = request(local, remote)?;
        let fd = self.fd.lock().unwrap_or_else(|p| p.into_inner());
        send(fd.as_raw_fd(), &req, MsgFlags::empty())?;
        let mut buf = [0u8; 512];
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        answer(&buf[..n])
    }
}

fn request(local: SocketAddr, remote: SocketAddr) -> io::Result<Vec<u8>> {
    let (family, src, dst) = match (local.ip(), remote.ip()) {
        (IpAddr::V4(l), IpAddr::V4(r)) => (libc::AF_INET as u8, pad16(&l.octets()), pad16(&r.octets())),
        (IpAddr::V6(l), IpAddr::V6(r)) => (libc::AF_INET6 as u8, l.octets(), r.octets()),
        _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "mixed address families")),
    };
    let len = NLMSG_HDR + REQ_LEN;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&[0; 8]); // seq, pid
    m.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    m.extend_from_slice(&local.port().to_be_bytes());
    m.extend_from_slice(&remote.port().to_be_bytes());
    m.extend_from_slice(&src);
    m.extend_from_slice(&dst);
    m.extend_from_slice(&[0; 4]); // any interface
    m.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    Ok(m)
}

fn pad16(v4: &[u8; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(v4);
    a
}

fn answer(msg: &[u8]) -> io::Result<Option<u64>> {
    let field = |at: usize| -> io::Result<u32> {
        msg.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short sock_diag answer"))
    };
    let kind = msg.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    match kind {
        Some(NLMSG_ERROR) => match -(field(NLMSG_HDR)? as i32) {
            libc::ENOENT => Ok(None),
            errno => Err(io::Error::from_raw_os_error(errno)),
        },
        Some(SOCK_DIAG_BY_FAMILY) => Ok(Some(u64::from(field(INODE_AT)?)).filter(|&i| i != 0)),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected sock_diag answer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn finds_a_connection_of_this_process_by_its_addresses() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, peer) = l.accept().unwrap();
        let d = SockDiag::new().unwrap();
        let want = std::fs::metadata(format!("/proc/self/fd/{}", c.as_raw_fd())).unwrap().ino();
        assert_eq!(d.inode(peer, l.local_addr().unwrap()).unwrap(), Some(want));
        // The other end is another socket; a made-up one is none.
        assert_ne!(d.inode(l.local_addr().unwrap(), peer).unwrap(), Some(want));
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(d.inode(nobody, l.local_addr().unwrap()).unwrap(), None);
    }
}
