//! The host uid each sandbox runs as: one of its own, from a range no host
//! account uses, held while the sandbox exists. Addresses one sandbox
//! starving or touching another (issue 18): RLIMIT_NPROC counts processes
//! per host uid, signals and file ownership go by it, so sandboxes that all
//! ran as the image's uid 1000 (often a real host account) shared one
//! process budget with each other and with that account.
//!
//! A claim is a file `$MOAT_RUN_DIR/uids/UID` holding the sandbox's name,
//! made with O_EXCL; a claim whose sandbox no longer exists is taken over.
//! A sandbox gets the lowest free slot. Before a uid is used the host's
//! name service is asked whether an account has it; its "no" is kept for
//! [`NO_ACCOUNT_TTL`] in `uids/no-account/UID` (the first lookup of a
//! process loads the NSS modules: 1.5 ms of CPU per start here), as sssd
//! and nscd keep negative answers. The workspace keeps its owner on disk
//! (the sandbox sees it through an idmapped mount,
//! `launch::rootfs::mount_workspace`), so the uid need not be the same from
//! one run to the next.
#![forbid(unsafe_code)]
use crate::sandbox::state::{run_root, Paths};
use std::io::{self, Write};
use std::path::PathBuf;

/// First uid of the range (0x6d00_0000 = 1,828,716,544): far above the
/// ranges distributions hand to accounts (1000-60000) and to subordinate
/// ids (100000 up, 65536 per user), below 2^31.
pub const BASE: u32 = 0x6d00_0000;
/// Slots tried, lowest first: at most this many sandboxes at once (less
/// any host accounts in the range).
const SLOTS: u32 = 1 << 16;
/// How long the name service's "no account has this uid" is trusted
/// (sssd's default negative cache, `entry_negative_timeout`, is 15 s).
pub(crate) const NO_ACCOUNT_TTL: std::time::Duration = std::time::Duration::from_secs(15);

fn dir() -> PathBuf {
    run_root().join("uids")
}

/// Claims a uid for sandbox `name` (its own claim if it has one): the
/// lowest slot that is free and no host account's.
pub(crate) fn claim(name: &str) -> io::Result<u32> {
    let d = dir();
    std::fs::create_dir_all(&d)?;
    for slot in 0..SLOTS {
        let uid = BASE + slot;
        let file = d.join(uid.to_string());
        let mine = take(&file, name)? || {
            let holder = std::fs::read_to_string(&file).unwrap_or_default();
            // Stale (its sandbox is gone): removed, and this slot tried once more.
            holder == name
                || (!holder.is_empty() && !exists(&holder) && {
                    let _ = std::fs::remove_file(&file);
                    take(&file, name)?
                })
        };
        if !mine {
            continue;
        }
        if is_account(&d, uid) {
            // A host account after all: the claim stays, so the slot is
            // not asked about again while it does.
            let _ = std::fs::write(&file, ACCOUNT);
            continue;
        }
        return Ok(uid);
    }
    Err(io::Error::other(format!("no free sandbox uid ({SLOTS} slots tried)")))
}

/// What a claim of a slot a host account has holds (no sandbox is named so).
const ACCOUNT: &str = "/host-account";

/// Whether a host account has `uid`, by the name service (`getpwuid`), with
/// a recent "no" taken from `dir/no-account/UID`.
fn is_account(dir: &std::path::Path, uid: u32) -> bool {
    let marker = dir.join("no-account").join(uid.to_string());
    let fresh = std::fs::metadata(&marker)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < NO_ACCOUNT_TTL));
    if fresh {
        return false;
    }
    let account = nix::unistd::User::from_uid(uid.into()).ok().flatten().is_some();
    if !account {
        let _ = std::fs::create_dir_all(dir.join("no-account"));
        // Best effort: a marker not written only means the next start asks again.
        let _ = std::fs::File::create(&marker);
    }
    account
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
    name == ACCOUNT || Paths::new(name).is_ok_and(|p| p.state_file().exists())
}

/// Releases sandbox `name`'s claim (when its state is removed).
pub(crate) fn release(name: &str) {
    let Ok(entries) = std::fs::read_dir(dir()) else { return };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_file()) && std::fs::read_to_string(e.path()).is_ok_and(|h| h == name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_range_is_above_accounts_and_below_two_to_the_31() {
        assert!(super::BASE > 1 << 20 && u64::from(super::BASE) + u64::from(super::SLOTS) < 1 << 31);
    }

    #[test]
    fn a_recent_no_is_kept_and_an_old_one_asked_again() {
        let d = tempfile::tempdir().unwrap();
        // uid 0 is an account on every host: asked, never cached.
        assert!(super::is_account(d.path(), 0));
        assert!(!d.path().join("no-account/0").exists());
        let free = super::BASE + 7;
        assert!(!super::is_account(d.path(), free));
        let marker = d.path().join(format!("no-account/{free}"));
        assert!(marker.exists());
        // A marker for uid 0 that is fresh answers "no" without asking
        // (which is what proves the cache is used)...
        std::fs::write(d.path().join("no-account/0"), "").unwrap();
        assert!(!super::is_account(d.path(), 0));
        // ...and once it is older than the TTL, the name service is asked again.
        let old = std::time::SystemTime::now() - super::NO_ACCOUNT_TTL - std::time::Duration::from_secs(1);
        std::fs::File::options().write(true).open(d.path().join("no-account/0")).unwrap().set_modified(old).unwrap();
        assert!(super::is_account(d.path(), 0));
    }
}
