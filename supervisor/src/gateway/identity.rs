//! Who is calling: maps a gateway client socket to the process that owns it
//! and the binary that process runs. Guards against an agent borrowing a
//! trusted program's permissions: identity comes from the kernel (the
//! socket's inode in the sandbox's /proc/net/tcp, the fd tables, and
//! /proc/PID/exe, never argv[0]), every binary in the caller's ancestry is
//! hashed and trusted on first use, and a changed hash, a deleted binary or
//! a socket held by processes running different programs is refused.
#![forbid(unsafe_code)]
use super::connects::Connects;
use super::integrity::{Findings, Integrity, Mounts, Taint};
use super::process::HashCache;
pub use super::process::Proc;
use super::sock_diag::SockDiag;
use std::collections::HashMap;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("no process in the sandbox owns the connection from {0}")]
    NotFound(SocketAddr),
    #[error("the connection is shared by processes running different programs ({0})")]
    Ambiguous(String),
    #[error("{path} changed since it was first trusted (sha256 {was} -> {now})")]
    HashChanged { path: String, was: String, now: String },
    #[error("{0} was deleted or replaced while running")]
    Deleted(String),
    #[error("{exe} (pid {pid}) gets no network rights: {taint}")]
    Tainted { exe: String, pid: i32, taint: Taint },
    #[error("reading {path}")]
    Io { path: String, source: std::io::Error },
    /// No connect(2) of the sandbox was seen for this socket (it was
    /// connected by a call the notification did not cover, or its record
    /// was evicted): fail closed.
    #[error("no process of the sandbox was seen connecting the socket from {0}")]
    NoConnector(SocketAddr),
    /// The process that called connect(2) is not the one holding the socket.
    #[error("the connection was made by {connector} but is held by {holder}")]
    Borrowed { connector: String, holder: String },
    /// The process that called connect(2) could not be judged or held no rights.
    #[error("the process that connected the socket gets no network rights: {0}")]
    Connector(String),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io { path: path.display().to_string(), source }
}

/// The calling process and its ancestors inside the sandbox (nearest first).
#[derive(Debug, Clone)]
pub struct Caller {
    pub process: Proc,
    pub ancestors: Vec<Proc>,
}

/// Resolves callers in one network namespace (the sandbox's).
#[derive(Debug)]
pub struct Identity {
    /// Inode of the network namespace whose processes are candidates.
    netns_ino: u64,
    /// Ancestry stops at this pid (the sandbox boundary is the namespace;
    /// in-process tests stop at the test process).
    stop_at: Option<i32>,
    proc_root: std::path::PathBuf,
    hashes: Arc<HashCache>,
    /// Trust on first use: (mount namespace, path) -> the sha256 first
    /// seen. The mount namespace tells a pod's containers apart (one
    /// gateway serves them all; each has its own root filesystem); a
    /// sandbox cannot make a new one (seccomp: unshare, setns, clone).
    trusted: Mutex<HashMap<(u64, String), String>>,
    integrity: Integrity,
    /// Who called connect(2) on each socket, seen while it waited there
    /// (`sandbox::connect_watch`). Required for real sandboxes; absent only
    /// for clients in the test process itself, which no filter watches.
    connects: Option<Arc<Connects>>,
    /// Finds a socket by its addresses in the namespace (a socket made in it).
    diag: Option<SockDiag>,
}

impl Identity {
    /// Candidates are the processes whose network namespace has `netns_ino`.
    fn new(netns_ino: u64, connects: Option<Arc<Connects>>, diag: Option<SockDiag>) -> Identity {
        Identity {
            netns_ino,
            stop_at: None,
            proc_root: "/proc".into(),
            hashes: connects.as_ref().map_or_else(Arc::default, |c| c.hashes()),
            trusted: Mutex::default(),
            integrity: Integrity::builtin(),
            connects,
            diag,
        }
    }

    /// The sandbox whose network namespace is the descriptor `fd`, whose
    /// connect(2) calls are recorded in `connects`; `diag` is a sock_diag
    /// socket made in that namespace.
    pub fn for_netns_fd(fd: i32, connects: Arc<Connects>, diag: Option<SockDiag>) -> std::io::Result<Identity> {
        Ok(Identity::new(fs::metadata(format!("/proc/self/fd/{fd}"))?.ino(), Some(connects), diag))
    }

    /// The namespace this process runs in, for clients in this very
    /// process (tests): ancestry is not followed above it.
    pub fn for_own_netns() -> std::io::Result<Identity> {
        let mut id = Identity::new(fs::metadata("/proc/self/ns/net")?.ino(), None, SockDiag::new().ok());
        id.stop_at = Some(std::process::id() as i32);
        id.integrity = id.integrity.without_env_check();
        Ok(id)
    }

    /// Finds the process that owns the client end `peer` of a connection
    /// accepted on `local`. Blocking (reads /proc): call off the reactor.
    /// The code of the ancestors is checked only when `check_ancestors`
    /// (some rule passes access to children); otherwise they are marked
    /// `Taint::Unchecked` and no rule is inherited from them.
    pub fn identify(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
        check_ancestors: bool,
    ) -> Result<Caller, IdentityError> {
        let pids = self.candidates()?;
        let Some(&reader) = pids.first() else { return Err(IdentityError::NotFound(peer)) };
        let inode = match self.diag.as_ref().map(|d| d.inode(peer, local)) {
            Some(Ok(found)) => found,
            // No sock_diag (or it failed): the table, whole.
            _ => {
                let table = if peer.is_ipv4() { "tcp" } else { "tcp6" };
                let path = self.proc_root.join(reader.to_string()).join("net").join(table);
                let text = fs::read_to_string(&path).map_err(io_at(&path))?;
                socket_inode(&text, peer, local)
            }
        };
        let inode = inode.ok_or(IdentityError::NotFound(peer))?;
        // Who connected it, judged while it waited in connect(2): a holder
        // can be a program the socket was handed to, or one that holds it
        // while the connector keeps it in flight (SCM_RIGHTS) out of sight.
        let connector = match &self.connects {
            Some(c) => Some(c.take(inode).ok_or(IdentityError::NoConnector(peer))?.map_err(IdentityError::Connector)?),
            None => None,
        };
        let owners = self.owners(&pids, inode);
        let Some(&first) = owners.first() else { return Err(IdentityError::NotFound(peer)) };
        // One mount namespace for the whole sandbox: its mounts are read once.
        let mounts = Mounts::default();
        let mut process = self.describe(first, Some(&mounts))?;
        for &other in &owners[1..] {
            let p = self.describe(other, Some(&mounts))?;
            if p.exe != process.exe || p.sha256 != process.sha256 {
                return Err(IdentityError::Ambiguous(format!("{} and {}", process.exe, p.exe)));
            }
            untainted(&p)?;
        }
        untainted(&process)?;
        if let Some(c) = connector {
            if c.exe != process.exe || c.sha256 != process.sha256 {
                return Err(IdentityError::Borrowed { connector: c.exe, holder: process.exe });
            }
            if let Some(t) = c.taint {
                return Err(IdentityError::Connector(format!("{} (pid {}): {t}", c.exe, c.pid)));
            }
            // Code the connector held in anonymous memory counts against it too.
            process.anonymous_exec |= c.anonymous_exec;
        }
        let mut ancestors = Vec::new();
        let mut pid = first;
        while ancestors.len() < 64 && Some(pid) != self.stop_at {
            let Some(parent) = parent_pid(&self.proc_root, pid) else { break };
            if parent <= 1 || !pids.contains(&parent) {
                break;
            }
            ancestors.push(self.describe(parent, check_ancestors.then_some(&mounts))?);
            pid = parent;
        }
        Ok(Caller { process, ancestors })
    }

    /// Host pids in the namespace, ascending.
    fn candidates(&self) -> Result<Vec<i32>, IdentityError> {
        let dir = fs::read_dir(&self.proc_root).map_err(io_at(&self.proc_root))?;
        let mut pids: Vec<i32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
            .filter(|pid| {
                fs::metadata(self.proc_root.join(pid.to_string()).join("ns/net"))
                    .is_ok_and(|m| m.ino() == self.netns_ino)
            })
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }

    /// Pids whose fd table holds socket `inode`.
    fn owners(&self, pids: &[i32], inode: u64) -> Vec<i32> {
        let want = format!("socket:[{inode}]");
        let mut out = Vec::new();
        for &pid in pids {
            let Ok(fds) = fs::read_dir(self.proc_root.join(pid.to_string()).join("fd")) else { continue };
            if fds.flatten().any(|fd| fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str())) {
                out.push(pid);
            }
        }
        out
    }

    /// The binary of `pid`: its path, its hash checked against
    /// trust-on-first-use, and (with the namespace's `mounts`) whether all
    /// its code is the image's.
    fn describe(&self, pid: i32, mounts: Option<&Mounts>) -> Result<Proc, IdentityError> {
        let link = self.proc_root.join(pid.to_string()).join("exe");
        let exe = fs::read_link(&link).map_err(io_at(&link))?.to_string_lossy().into_owned();
        if exe.ends_with(" (deleted)") {
            return Err(IdentityError::Deleted(exe));
        }
        let sha256 = self.hashes.hash(&link).map_err(io_at(&link))?;
        let mnt = self.proc_root.join(pid.to_string()).join("ns/mnt");
        let key = (fs::metadata(&mnt).map_err(io_at(&mnt))?.ino(), exe.clone());
        let mut trusted = self.trusted.lock().unwrap_or_else(|p| p.into_inner());
        match trusted.get(&key) {
            Some(was) if *was != sha256 => {
                return Err(IdentityError::HashChanged { path: exe, was: was.clone(), now: sha256 });
            }
            Some(_) => {}
            None => {
                tracing::info!(event = "binary_trusted", binary = %exe, sha256 = %sha256, "trusted on first use");
                trusted.insert(key, sha256.clone());
            }
        }
        let found = match mounts {
            Some(m) => self.integrity.check(&self.proc_root, pid, &exe, m),
            None => Findings { taint: Some(Taint::Unchecked), anonymous_exec: false },
        };
        Ok(Proc { pid, exe, sha256, taint: found.taint, anonymous_exec: found.anonymous_exec })
    }
}

/// A process whose code is not all from its image holds no rights.
fn untainted(p: &Proc) -> Result<(), IdentityError> {
    match &p.taint {
        Some(t) => Err(IdentityError::Tainted { exe: p.exe.clone(), pid: p.pid, taint: t.clone() }),
        None => Ok(()),
    }
}

fn parent_pid(proc_root: &Path, pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// Finds the inode of the socket whose local end is `client` and remote end
/// `server` in a /proc/net/tcp{,6} table.
pub fn socket_inode(table: &str, client: SocketAddr, server: SocketAddr) -> Option<u64> {
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        if parse_addr(f[1]) == Some(normal(client)) && parse_addr(f[2]) == Some(normal(server)) {
            return f[9].parse().ok().filter(|&i| i != 0);
        }
    }
    None
}

fn normal(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(|v4| SocketAddr::new(v4.into(), a.port())).unwrap_or(a),
        _ => a,
    }
}

/// Parses `0100007F:1F90` (IPv4) or the 32-hex-digit IPv6 form.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip: IpAddr = match ip.len() {
        8 => std::net::Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_ne_bytes()).into(),
        32 => {
            let mut b = [0u8; 16];
            for (i, chunk) in b.chunks_mut(4).enumerate() {
                let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&w.to_ne_bytes());
            }
            std::net::Ipv6Addr::from(b).into()
        }
        _ => return None,
    };
    Some(normal(SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn parses_proc_net_tcp_rows() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:D431 0100007F:0C38 01 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0 20 4 30 10 -1\n";
        let c: SocketAddr = "127.0.0.1:54321".parse().unwrap();
        let s: SocketAddr = "127.0.0.1:3128".parse().unwrap();
        assert_eq!(socket_inode(t, c, s), Some(4242));
        assert_eq!(socket_inode(t, s, c), None);
        let v6 = "0000000000000000FFFF00000100007F:0C38";
        assert_eq!(parse_addr(v6), Some(s));
    }

    #[test]
    fn finds_this_test_as_the_owner_and_trusts_on_first_use() {
        if !cfg!(target_endian = "little") {
            return;
        }
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_server, peer) = l.accept().unwrap();
        let id = Identity::for_own_netns().unwrap();
        let caller = id.identify(peer, l.local_addr().unwrap(), true).unwrap();
        assert_eq!(caller.process.pid, std::process::id() as i32);
        let me = fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(caller.process.exe, me.to_string_lossy());
        assert_eq!(caller.process.sha256.len(), 64);
        // A different hash for the same path is refused.
        let mnt = fs::metadata("/proc/self/ns/mnt").unwrap().ino();
        id.trusted.lock().unwrap().insert((mnt, caller.process.exe.clone()), "0".repeat(64));
        assert!(matches!(id.identify(peer, l.local_addr().unwrap(), true), Err(IdentityError::HashChanged { .. })));
        drop(client);
    }
}
