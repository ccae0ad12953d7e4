//! The host uid each sandbox runs as: one of its own, from a range no host
//! account uses, held while the sandbox exists. Addresses one sandbox
//! starving or touching another (issue 18): RLIMIT_NPROC counts processes
//! per host uid, signals and file ownership go by it, so sandboxes that all
//! ran as the image's uid 1000 (often a real host account) shared one
//! process budget with each other and with that account.
//!
//! A claim is a file `$MOAT_RUN_DIR/uids/UID` holding the sandbox's name,
//! made with O_EXCL; a claim whose sandbox no longer exists is taken over.
//! The workspace keeps its owner on disk (the sandbox sees it through an
//! idmapped mount, `launch::rootfs::mount_workspace`), so the uid need not
//! be the same from one run to the next.
#![forbid(unsafe_code)]
use crate::sandbox::state::{run_root, Paths};
use std::io::{self, Write};
use std::path::PathBuf;

/// First uid of the range (0x6d00_0000 = 1,828,716,544): far above the
/// ranges distributions hand to accounts (1000-60000) and to subordinate
/// ids (100000 up, 65536 per user), below 2^31.
pub const BASE: u32 = 0x6d00_0000;
/// Size of the range: one uid per sandbox.
const SLOTS: u32 = 1 << 20;

fn dir() -> PathBuf {
    run_root().join("uids")
}

/// Where the name hashes to first: a sandbox usually gets the same uid.
fn first_slot(name: &str) -> u32 {
    // FNV-1a: stable across builds, enough to spread names.
    let h = name.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    h % SLOTS
}

/// Claims a uid for sandbox `name` (its own claim if it has one).
pub(crate) fn claim(name: &str) -> io::Result<u32> {
    let d = dir();
    std::fs::create_dir_all(&d)?;
    let start = first_slot(name);
    for i in 0..1024 {
        let uid = BASE + (start + i) % SLOTS;
        if nix::unistd::User::from_uid(uid.into()).ok().flatten().is_some() {
            continue; // a host account after all
        }
        let file = d.join(uid.to_string());
        if take(&file, name)? {
            return Ok(uid);
        }
        let holder = std::fs::read_to_string(&file).unwrap_or_default();
        if holder == name {
            return Ok(uid);
        }
        if !holder.is_empty() && !exists(&holder) {
            // Stale: its sandbox is gone. Remove and retry this slot once.
            let _ = std::fs::remove_file(&file);
            if take(&file, name)? {
                return Ok(uid);
            }
        }
    }
    Err(io::Error::other("no free sandbox uid near this name's (1024 tried)"))
}

/// Creates the claim `file` for `name`; false when someone holds it.
fn take(file: &std::path::Path, name: &str) -> io::Result<bool> {
    match std::fs::OpenOptions::new().write(true).create_new(true).open(file) {
        Ok(mut f) => f.write_all(name.as_bytes()).map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

fn exists(name: &str) -> bool {
    Paths::new(name).is_ok_and(|p| p.state_file().exists())
}

/// Releases sandbox `name`'s claim (when its state is removed).
pub(crate) fn release(name: &str) {
    let Ok(entries) = std::fs::read_dir(dir()) else { return };
    for e in entries.flatten() {
        if std::fs::read_to_string(e.path()).is_ok_and(|h| h == name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_range_is_above_accounts_and_below_two_to_the_31() {
        assert!(super::BASE > 1 << 20 && u64::from(super::BASE) + u64::from(super::SLOTS) < 1 << 31);
        assert_eq!(super::first_slot("a"), super::first_slot("a"));
        assert_ne!(super::first_slot("a"), super::first_slot("b"));
    }
}
