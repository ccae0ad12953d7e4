//! The verified-blob memo (`.moat/verified/HEX`): remembers that a blob hashed
//! to its name, keyed by what any write to its file changes (device, inode,
//! size, mtime, ctime), so reusing an unchanged blob costs a stat instead of
//! a re-hash. Addresses the cost of checking every reused blob (issue 19).
//! It cannot see a change that keeps all five (bits flipped below the
//! filesystem, ctime forged by setting the clock back): `fsck` and every
//! verified read never consult it.
#![forbid(unsafe_code)]
use super::Store;
use crate::digest::Digest;
use std::fs::{self, Metadata};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Longest entry read back (a stamp is well under 100 bytes).
const MAX_ENTRY: u64 = 256;

fn stamp(m: &Metadata) -> String {
    format!("{} {} {} {}.{} {}.{}\n", m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
}

impl Store {
    fn memo_dir(&self) -> PathBuf {
        self.root.join(".moat").join("verified")
    }

    /// The blob file described by `m` (fstat of the open blob) was checked
    /// since it last changed.
    pub(super) fn memo_knows(&self, d: &Digest, m: &Metadata) -> bool {
        let mut entry = String::new();
        let read =
            fs::File::open(self.memo_dir().join(d.hex())).and_then(|f| f.take(MAX_ENTRY).read_to_string(&mut entry));
        read.is_ok() && entry == stamp(m)
    }

    /// Records that the blob file described by `m` hashes to `d`. Best
    /// effort: a memo that cannot be written costs a re-hash, never a wrong
    /// answer. Atomic (a reader sees a whole entry or none) but not fsynced:
    /// a torn entry after a crash does not match and is re-checked.
    pub(super) fn memo_remember(&self, d: &Digest, m: &Metadata) {
        let dir = self.memo_dir();
        let _ = fs::create_dir_all(&dir)
            .and_then(|()| crate::fsio::replace(&dir.join(d.hex()), stamp(m).as_bytes(), 0o644));
    }

    /// Drops entries for blobs no longer in the store (and stray temp files).
    /// Called by gc with the writer lease held exclusively.
    pub(super) fn memo_prune(&self) {
        let Ok(rd) = fs::read_dir(self.memo_dir()) else { return };
        for e in rd.flatten() {
            let keep =
                e.file_name().to_str().and_then(|n| Digest::parse_hex(n).ok()).is_some_and(|d| self.has_blob(&d));
            if !keep {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}
