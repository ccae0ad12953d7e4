//! The host uid each sandbox runs as: one of its own, from a range no host
//! account uses, held while the sandbox exists. Addresses one sandbox
//! starving or touching another (issue 18): RLIMIT_NPROC counts processes
//! per host uid, signals and file ownership go by it, so sandboxes that all
//! ran as the image's uid 1000 (often a real host account) shared one
//! process budget with each other and with that account.
//!
//! A claim is a file `$MOAT_RUN_DIR/uids/UID` holding the path of the
//! sandbox's state file, made under a lock; a claim whose sandbox no longer
//! exists is taken over. A sandbox keeps its claim until `moat rm`, and a
//! new one gets the lowest free slot. Before a uid is used the host's
//! name service is asked whether an account has it; its "no" is kept for
//! [`NO_ACCOUNT_TTL`] in `uids/no-account/UID` (the first lookup of a
//! process loads the NSS modules: 1.5 ms of CPU per start here), as sssd
//! and nscd keep negative answers. The workspace keeps its owner on disk
//! (the sandbox sees it through an idmapped mount,
//! `launch::rootfs::mount_workspace`), so the uid need not be the same from
//! one run to the next.
#![forbid(unsafe_code)]
use crate::sandbox::state::{run_root, Paths};
use std::io;
use std::path::{Path, PathBuf};

/// First uid of the range (0x6d00_0000 = 1,828,716,544): far above the
/// ranges distributions hand to accounts (1000-60000) and to subordinate
/// ids (100000 up, 65536 per user), below 2^31.
pub const BASE: u32 = 0x6d00_0000;
/// Slots tried, lowest first: at most this many sandboxes (running or not)
/// at once, less any host accounts in the range.
const SLOTS: u32 = 1 << 16;
/// How long the name service's "no account has this uid" is trusted
/// (sssd's default negative cache, `entry_negative_timeout`, is 15 s).
pub(crate) const NO_ACCOUNT_TTL: std::time::Duration = std::time::Duration::from_secs(15);

fn dir() -> PathBuf {
    run_root().join("uids")
}

/// Claims a uid for the sandbox at `paths` (its own claim if it has one):
/// the lowest slot that is free and no host account's. Claims are made
/// under an exclusive lock on `uids/.lock`, so two starts never take one
/// slot (nor take over one stale claim twice). A claim holds the absolute
/// path of its sandbox's state file: sandboxes of another `MOAT_HOME`
/// sharing this runtime directory are told apart, and a claim whose state
/// file is gone is stale and taken over.
pub(crate) fn claim(paths: &Paths) -> io::Result<u32> {
    claim_in(&dir(), &paths.state_file())
}

/// [`claim`] in the claims directory `d`, for the sandbox whose state file is `state`.
fn claim_in(d: &Path, state: &Path) -> io::Result<u32> {
    std::fs::create_dir_all(d)?;
    let _lock = locked(d)?;
    let me = state.display().to_string();
    let held = holders(d)?;
    if let Some((uid, _)) = held.iter().find(|(_, h)| **h == me) {
        return Ok(*uid);
    }
    for slot in 0..SLOTS {
        let uid = BASE + slot;
        let file = d.join(uid.to_string());
        match held.get(&uid) {
            // Held by a sandbox that exists, or a host account's.
            Some(h) if h == ACCOUNT || Path::new(h).is_file() => continue,
            Some(_) => std::fs::remove_file(&file)?,
            None => {}
        }
        match is_account(d, uid) {
            Some(false) => {}
            // An account: remembered, so the slot is not asked about again
            // until the next boot. Unknown (the name service failed): not used.
            Some(true) => {
                write_claim(&file, ACCOUNT)?;
                continue;
            }
            None => continue,
        }
        write_claim(&file, &me)?;
        return Ok(uid);
    }
    Err(io::Error::other(format!("no free sandbox uid ({SLOTS} slots tried)")))
}

/// The claims directory `d`, locked until the returned file is dropped.
fn locked(d: &Path) -> io::Result<std::fs::File> {
    let lock = std::fs::File::create(d.join(".lock"))?;
    lock.lock()?;
    Ok(lock)
}

/// Each claimed uid in `d` and what its claim holds.
fn holders(d: &Path) -> io::Result<std::collections::BTreeMap<u32, String>> {
    let mut held = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(d)?.flatten() {
        let Some(uid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if e.file_type().is_ok_and(|t| t.is_file()) {
            held.insert(uid, std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    Ok(held)
}

/// What the claim of a slot a host account has holds (never a state file's path).
const ACCOUNT: &str = "host-account";

/// Writes the claim `file` whole (a temporary file renamed into place:
/// a claim is never seen empty).
fn write_claim(file: &Path, holder: &str) -> io::Result<()> {
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, holder)?;
    std::fs::rename(&tmp, file).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Whether a host account has `uid`, by the name service (`getpwuid`), with
/// a recent "no" taken from `dir/no-account/UID`; `None` when the name
/// service fails (an outage must not read as "no account").
fn is_account(dir: &Path, uid: u32) -> Option<bool> {
    let marker = dir.join("no-account").join(uid.to_string());
    let fresh = std::fs::metadata(&marker)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < NO_ACCOUNT_TTL));
    if fresh {
        return Some(false);
    }
    let account = nix::unistd::User::from_uid(uid.into()).ok()?.is_some();
    if !account {
        let _ = std::fs::create_dir_all(dir.join("no-account"));
        // Best effort: a marker not written only means the next start asks again.
        let _ = std::fs::File::create(&marker);
    }
    Some(account)
}

/// Releases the claim of the sandbox at `paths` (when its state is removed).
pub(crate) fn release(paths: &Paths) {
    let d = dir();
    let (Ok(_lock), Ok(held)) = (locked(&d), holders(&d)) else { return };
    let me = paths.state_file().display().to_string();
    for (uid, _) in held.iter().filter(|(_, h)| **h == me) {
        let _ = std::fs::remove_file(d.join(uid.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn the_range_is_above_accounts_and_below_two_to_the_31() {
        assert!(super::BASE > 1 << 20 && u64::from(super::BASE) + u64::from(super::SLOTS) < 1 << 31);
    }

    #[test]
    fn concurrent_claims_get_distinct_uids_and_a_stale_claim_is_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let claims = d.path().join("uids");
        // Sandboxes of two homes, all existing; claimed at once.
        let states: Vec<_> = (0..8)
            .map(|i| {
                let s = d.path().join(format!("home{}/sandboxes/s{i}/state.json", i % 2));
                std::fs::create_dir_all(s.parent().unwrap()).unwrap();
                std::fs::write(&s, "{}").unwrap();
                s
            })
            .collect();
        let mut uids: Vec<u32> = std::thread::scope(|sc| {
            let hs: Vec<_> = states.iter().map(|s| sc.spawn(|| super::claim_in(&claims, s).unwrap())).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Its own claim again, not a new one.
        assert_eq!(super::claim_in(&claims, &states[3]).unwrap(), uids[3]);
        uids.sort();
        uids.dedup();
        assert_eq!(uids.len(), 8, "two sandboxes share a uid: {uids:?}");
        assert!(uids.iter().all(|u| (super::BASE..super::BASE + 8).contains(u)), "{uids:?}");
        // A sandbox whose state is gone: its slot goes to the next claim.
        std::fs::remove_file(&states[0]).unwrap();
        let freed = std::fs::read_dir(&claims)
            .unwrap()
            .flatten()
            .find(|e| std::fs::read_to_string(e.path()).is_ok_and(|h| Path::new(&h) == states[0]))
            .and_then(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
            .unwrap();
        let new = d.path().join("home0/sandboxes/new/state.json");
        std::fs::create_dir_all(new.parent().unwrap()).unwrap();
        std::fs::write(&new, "{}").unwrap();
        assert_eq!(super::claim_in(&claims, &new).unwrap(), freed);
    }

    #[test]
    fn a_recent_no_is_kept_and_an_old_one_asked_again() {
        let d = tempfile::tempdir().unwrap();
        // uid 0 is an account on every host: asked, never cached.
        assert_eq!(super::is_account(d.path(), 0), Some(true));
        assert!(!d.path().join("no-account/0").exists());
        let free = super::BASE + 7;
        assert_eq!(super::is_account(d.path(), free), Some(false));
        let marker = d.path().join(format!("no-account/{free}"));
        assert!(marker.exists());
        // A marker for uid 0 that is fresh answers "no" without asking
        // (which is what proves the cache is used)...
        std::fs::write(d.path().join("no-account/0"), "").unwrap();
        assert_eq!(super::is_account(d.path(), 0), Some(false));
        // ...and once it is older than the TTL, the name service is asked again.
        let old = std::time::SystemTime::now() - super::NO_ACCOUNT_TTL - std::time::Duration::from_secs(1);
        std::fs::File::options().write(true).open(d.path().join("no-account/0")).unwrap().set_modified(old).unwrap();
        assert_eq!(super::is_account(d.path(), 0), Some(true));
    }
}
