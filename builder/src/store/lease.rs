//! The store's writer lease: one flock on `.moat/gc.lock`, held shared by
//! every process that writes into the store (build, lock, pull) from its first
//! blob write or reuse until it is done, and exclusive by `gc`. Addresses gc
//! racing a writer: gc never deletes a blob or temp file that an in-flight
//! writer has written or decided to reuse and is about to name in the index.
#![forbid(unsafe_code)]
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;
use std::sync::Mutex;

/// The lease of one store handle (shared by its clones): taken at the
/// handle's first write, kept until the last clone is dropped.
#[derive(Debug, Default)]
pub(super) struct Lease {
    held: Mutex<Option<File>>,
}

fn lock_file(root: &Path) -> io::Result<File> {
    let dir = root.join(".moat");
    fs::create_dir_all(&dir)?;
    OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("gc.lock"))
}

impl Lease {
    /// Holds the shared lease (waits while a gc runs); idempotent.
    pub(super) fn hold_shared(&self, root: &Path) -> io::Result<()> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.is_none() {
            let f = lock_file(root)?;
            if let Err(e) = f.try_lock_shared() {
                if let TryLockError::Error(e) = e {
                    return Err(e);
                }
                tracing::info!(store = %root.display(), "waiting for a gc of the store to finish");
                f.lock_shared()?;
            }
            *held = Some(f);
        }
        Ok(())
    }

    /// Runs `f` holding the lease exclusively: no other handle, in this
    /// process or another, writes into the store meanwhile. A handle that
    /// already holds the shared lease trades it for the exclusive one (not
    /// atomically: flock drops the old lock first) and gets it back after.
    pub(super) fn exclusively<T>(&self, root: &Path, f: impl FnOnce() -> T) -> io::Result<T> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let own;
        let file = match held.as_ref() {
            Some(file) => file,
            None => {
                own = lock_file(root)?;
                &own
            }
        };
        if let Err(e) = file.try_lock() {
            if let TryLockError::Error(e) = e {
                return Err(e);
            }
            tracing::warn!(store = %root.display(), "waiting for builds, pulls and other writers of the store to finish");
            file.lock()?;
        }
        let out = f();
        if held.is_some() {
            file.lock_shared()?;
        }
        Ok(out)
    }
}
