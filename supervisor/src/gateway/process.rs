//! What the gateway knows of one sandbox process: its binary's path and
//! sha256 (hashed once per file identity: device, inode, size, times), and
//! whether all its code is the image's. Guards against a binary swapped
//! under an unchanged path being trusted on its old hash. Shared by the
//! holder's identification (`identity`) and the connector's (`connects`).
#![forbid(unsafe_code)]
use super::integrity::Taint;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

/// One process of the caller's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// Host pid.
    pub pid: i32,
    /// The binary's path as the sandbox sees it.
    pub exe: String,
    pub sha256: String,
    /// Why its code is not all from the image, if it is not.
    pub taint: Option<Taint>,
    /// It has anonymous executable memory (a JIT); rules decide (`jit`).
    pub anonymous_exec: bool,
}

/// File identity used to skip rehashing an unchanged binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// Largest binary hashed (a real one: node, a browser, is 100-250 MiB).
const MAX_HASHED: u64 = 512 << 20;
/// Most hashes kept (distinct binaries, or versions of one).
const MAX_CACHED: usize = 1024;

/// sha256 of binaries by file identity, so an unchanged binary is hashed once.
#[derive(Debug, Default)]
pub(crate) struct HashCache {
    hashes: Mutex<HashMap<Fingerprint, String>>,
    hashing: Mutex<()>,
}

impl HashCache {
    /// sha256 of the file behind `link` (/proc/PID/exe: the mapped binary itself).
    pub(crate) fn hash(&self, link: &Path) -> std::io::Result<String> {
        let mut f = fs::File::open(link)?;
        let m = f.metadata()?;
        let fp = Fingerprint {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        };
        if let Some(h) = self.hashes.lock().unwrap_or_else(|p| p.into_inner()).get(&fp) {
            return Ok(h.clone());
        }
        // The supervisor's time is not the sandbox's: a binary the agent grew
        // and touched again and again is not hashed without end.
        if fp.size > MAX_HASHED {
            return Err(std::io::Error::other(format!("larger than {} MiB, not hashed", MAX_HASHED >> 20)));
        }
        // One hash at a time: a burst of first connections from one binary
        // hashes it once; the others find it cached.
        let _one = self.hashing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = self.hashes.lock().unwrap_or_else(|p| p.into_inner()).get(&fp) {
            return Ok(h.clone());
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let h = hex::encode(hasher.finalize());
        let mut hashes = self.hashes.lock().unwrap_or_else(|p| p.into_inner());
        if hashes.len() >= MAX_CACHED {
            hashes.clear(); // re-hashing what is still in use is cheaper than tracking age
        }
        hashes.insert(fp, h.clone());
        Ok(h)
    }
}
