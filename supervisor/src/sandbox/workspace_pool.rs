//! Ready workspace images: copies of an empty template (`workspace_limit`)
//! made and synced to the host's disk ahead of time, so that a starting
//! sandbox takes one with a rename instead of copying the template on its
//! start path and then waiting while the loop device's attach flushes the
//! fresh copy to disk (about 5 ms of every `moat run --rm` here,
//! BENCHMARKS.md). A start refills what it took after its own image is
//! mounted, off its path.
//!
//! Threat addressed: two sandboxes sharing one image, or a sandbox getting
//! a half-written one. A ready image is written under a temporary name
//! that carries its writer's pid, synced, then renamed into a slot; taking
//! is a rename out of the slot, so each ready image goes to one sandbox
//! only, and a writer killed midway leaves a temporary file that the next
//! refill removes, never a partial ready image. The slots live beside the
//! template in moat's cache (root's, 0700), which nothing a sandbox runs
//! can reach.
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Ready images kept per template: enough for a start right after a start.
pub(super) const SLOTS: usize = 2;

/// The directory of the ready copies of `template`.
fn dir(template: &Path) -> PathBuf {
    template.parent().unwrap_or(Path::new("/")).join("ready")
}

fn slot(template: &Path, i: usize) -> PathBuf {
    let name = template.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir(template).join(format!("{name}.{i}"))
}

/// Moves a ready copy of `template` to `to` (a new name on the same
/// filesystem); false when none is ready or the rename cannot be done
/// (then the caller copies the template as before).
pub(super) fn take(template: &Path, to: &Path) -> bool {
    (0..SLOTS).any(|i| fs::rename(slot(template, i), to).is_ok())
}

/// Fills the empty slots of `template` with synced copies made by `copy`
/// (`copy(from, to)` writes the new file `to`); temporary files of writers
/// that are gone are removed first.
pub(super) fn refill(template: &Path, copy: impl Fn(&Path, &Path) -> io::Result<()>) -> io::Result<()> {
    let d = dir(template);
    fs::DirBuilder::new().recursive(true).mode(0o700).create(&d)?;
    sweep(&d);
    let me = std::process::id();
    for i in 0..SLOTS {
        let target = slot(template, i);
        if target.exists() {
            continue;
        }
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = d.join(format!(".{name}.{me}"));
        let made = copy(template, &tmp).and_then(|()| fs::File::open(&tmp)?.sync_all());
        // One step, never replacing: another start may have filled the slot
        // meanwhile (keep the first), and no second name of the image is
        // left behind if this process ends here.
        let placed = made.and_then(|()| {
            match nix::fcntl::renameat2(None, &tmp, None, &target, nix::fcntl::RenameFlags::RENAME_NOREPLACE) {
                Err(nix::errno::Errno::EEXIST) => Ok(()),
                r => r.map_err(io::Error::from),
            }
        });
        let _ = fs::remove_file(&tmp);
        placed?;
    }
    Ok(())
}

/// Removes `.NAME.PID` files whose writer is no longer running.
fn sweep(d: &Path) {
    let Ok(rd) = fs::read_dir(d) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix('.').and_then(|n| n.rsplit_once('.')).map(|(_, p)| p) else { continue };
        let alive = pid.parse::<u32>().is_ok_and(|p| Path::new("/proc").join(p.to_string()).exists());
        if !alive {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(from: &Path, to: &Path) -> io::Result<()> {
        fs::copy(from, to).map(drop)
    }

    #[test]
    fn a_ready_copy_goes_to_one_taker_and_is_made_again() {
        let d = tempfile::tempdir().unwrap();
        let tmpl = d.path().join("t.img");
        fs::write(&tmpl, b"template").unwrap();
        let (a, b, c) = (d.path().join("a"), d.path().join("b"), d.path().join("c"));
        assert!(!take(&tmpl, &a), "nothing is ready before a refill");
        refill(&tmpl, copy).unwrap();
        assert!(take(&tmpl, &a) && take(&tmpl, &b), "two slots");
        assert!(!take(&tmpl, &c), "each ready copy is taken once");
        assert_eq!(fs::read(&a).unwrap(), b"template");
        refill(&tmpl, copy).unwrap();
        assert!(take(&tmpl, &c));
    }

    #[test]
    fn a_dead_writers_partial_copy_is_removed_and_never_taken() {
        let d = tempfile::tempdir().unwrap();
        let tmpl = d.path().join("t.img");
        fs::write(&tmpl, b"template").unwrap();
        fs::create_dir_all(dir(&tmpl)).unwrap();
        // pid 0 is never a process: its writer is gone.
        let partial = dir(&tmpl).join(".t.img.0.0");
        fs::write(&partial, b"temp").unwrap();
        let a = d.path().join("a");
        assert!(!take(&tmpl, &a), "a partial copy is not a ready one");
        refill(&tmpl, |_, _| Err(io::Error::other("disk full"))).unwrap_err();
        assert!(!partial.exists(), "swept");
        assert!(!take(&tmpl, &a), "a failed copy leaves nothing ready");
        let left: Vec<_> = fs::read_dir(dir(&tmpl)).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
