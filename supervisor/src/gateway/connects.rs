//! Who connected each socket: for every connect(2) a sandbox process makes
//! to the gateway, the process is judged (its binary, hash, and whether all
//! its code is the image's) while it is still blocked in that call, and the
//! verdict is kept under the socket's inode until the gateway identifies
//! the connection. Guards against an agent borrowing another program's
//! rights with a socket it made itself: handed to an allowed program that
//! then holds it (an inherited descriptor), or kept in flight inside an
//! `SCM_RIGHTS` message while the gateway looks at the fd tables. The
//! holders the gateway sees must run the program that connected.
//! The notifications themselves arrive in `sandbox::connect_watch`.
#![forbid(unsafe_code)]
use super::integrity::{Integrity, Mounts};
use super::process::{HashCache, Proc};
use std::collections::{HashMap, VecDeque};
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Most verdicts kept: a sandbox connecting far more often than the gateway
/// accepts only evicts its own oldest verdicts, whose connections are then
/// refused (fail closed).
const MAX_RECORDS: usize = 4096;

/// A verdict: the connecting process, or why it could not be judged.
pub type Verdict = Result<Proc, String>;

/// The verdicts of one sandbox, shared by its connect watch and its gateway.
#[derive(Debug)]
pub struct Connects {
    proc_root: PathBuf,
    /// Shared with the gateway's identification: a binary is hashed once.
    hashes: Arc<HashCache>,
    integrity: Integrity,
    table: Mutex<Table>,
}

/// Verdicts by inode, each with the sequence number of its recording, so
/// that evicting an old entry never removes a newer verdict for the same
/// inode.
#[derive(Debug, Default)]
struct Table {
    by_inode: HashMap<u64, (u64, Verdict)>,
    order: VecDeque<(u64, u64)>,
    next: u64,
}

impl Default for Connects {
    fn default() -> Connects {
        Connects {
            proc_root: "/proc".into(),
            hashes: Arc::default(),
            integrity: Integrity::builtin(),
            table: Mutex::default(),
        }
    }
}

impl Connects {
    pub(crate) fn hashes(&self) -> Arc<HashCache> {
        self.hashes.clone()
    }

    /// The inode of the socket thread `tid` holds as descriptor `fd`
    /// (`None`: not a socket, and connect(2) fails by itself).
    pub fn socket_of(&self, tid: i32, fd: i32) -> Option<u64> {
        let link = fs::read_link(self.proc_root.join(tid.to_string()).join("fd").join(fd.to_string())).ok()?;
        socket_inode(&link.to_string_lossy())
    }

    /// Judges the process of thread `tid` (a host id), which waits in
    /// connect(2): its binary, that binary's hash, and its code.
    pub fn judge(&self, tid: i32) -> Verdict {
        let dir = self.proc_root.join(tid.to_string());
        let exe_link = dir.join("exe");
        let exe = fs::read_link(&exe_link).map_err(|e| format!("its binary cannot be read ({e})"))?;
        let exe = exe.to_string_lossy().into_owned();
        if exe.ends_with(" (deleted)") {
            return Err(format!("{exe} was deleted or replaced while running"));
        }
        let sha256 = self.hashes.hash(&exe_link).map_err(|e| format!("its binary cannot be hashed ({e})"))?;
        let found = self.integrity.check(&self.proc_root, tid, &exe, &Mounts::default());
        Ok(Proc { pid: tid, exe, sha256, taint: found.taint, anonymous_exec: found.anonymous_exec })
    }

    /// Keeps the verdict for the socket `inode` (its process was still in
    /// connect(2) when judged: the caller checked the notification).
    pub fn record(&self, inode: u64, verdict: Verdict) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let seq = t.next;
        t.next += 1;
        t.by_inode.insert(inode, (seq, verdict));
        t.order.push_back((inode, seq));
        while t.order.len() > MAX_RECORDS {
            if let Some((old, old_seq)) = t.order.pop_front() {
                if t.by_inode.get(&old).is_some_and(|(s, _)| *s == old_seq) {
                    t.by_inode.remove(&old);
                }
            }
        }
    }

    /// Drops any verdict for socket `inode`: it is being connected again by
    /// a call that was not judged, so an older verdict must not stand for it.
    pub fn forget(&self, inode: u64) {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).by_inode.remove(&inode);
    }

    /// The verdict for socket `inode`, taken: a socket connects once.
    pub(crate) fn take(&self, inode: u64) -> Option<Verdict> {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).by_inode.remove(&inode).map(|(_, v)| v)
    }
}

/// `socket:[1234]` -> 1234.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn judges_this_process_by_its_socket() {
        let c = Connects { integrity: Integrity::builtin().without_env_check(), ..Connects::default() };
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let me = std::process::id() as i32;
        let inode = c.socket_of(me, s.as_raw_fd()).unwrap();
        let p = c.judge(me).unwrap();
        assert_eq!(p.exe, fs::read_link("/proc/self/exe").unwrap().to_string_lossy());
        assert_eq!(p.sha256.len(), 64);
        // Not a socket: nothing to judge.
        let f = fs::File::open("/proc/self/exe").unwrap();
        assert!(c.socket_of(me, f.as_raw_fd()).is_none());
        c.record(inode, Ok(p));
        assert!(c.take(inode).is_some());
        assert!(c.take(inode).is_none(), "a verdict is taken once");
    }

    #[test]
    fn the_oldest_verdicts_go_first() {
        let c = Connects::default();
        for i in 0..(MAX_RECORDS as u64 + 10) {
            c.record(i, Err("x".into()));
        }
        assert!(c.take(0).is_none() && c.take(9).is_none());
        assert!(c.take(10).is_some() && c.take(MAX_RECORDS as u64 + 9).is_some());
        // A socket judged again keeps its newer verdict when the old entry
        // of the same inode is evicted.
        let c = Connects::default();
        c.record(7, Err("old".into()));
        c.record(7, Err("new".into()));
        for i in 100..(100 + MAX_RECORDS as u64 - 1) {
            c.record(i, Err("x".into()));
        }
        assert_eq!(c.take(7), Some(Err("new".into())));
        c.record(8, Err("x".into()));
        c.forget(8);
        assert!(c.take(8).is_none());
        assert_eq!(socket_inode("socket:[42]"), Some(42));
        assert_eq!(socket_inode("pipe:[42]"), None);
    }
}
