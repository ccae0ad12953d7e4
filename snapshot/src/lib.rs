//! moat-snapshot: workspace snapshots. Content-addressed, incremental,
//! verified backups of a sandbox's workspace and atomic restores. Addresses
//! the threat of losing an agent's work (a torn copy, a half-done rebuild, a
//! corrupt store) and of leaking secrets into backups: every byte is checked
//! against its sha256 on the way back, restores swap a fully built tree in
//! by rename, and files that look like credentials are reported (and left out
//! on request).
//!
//! Layout of the repository (`$MOAT_HOME/snapshots`, see [`Repo`]):
//! `packs/<name>.pack` + `.idx` (chunks, see `pack.rs`), `snapshots/<sha256>.json`
//! (the canonical tree manifest, with the holes of sparse files; its sha256
//! is the snapshot digest),
//! `refs/<sandbox>/<time>-<digest12>.json` (time, tag, sizes: the undigested
//! record), `cache/<key>.json` (the stat cache), `tmp/` (in-flight writes).
//!
//! Modules, leaves first (imports point one way; `scripts/check-imports.py`):
//! - `format` (chunk sizes, ids), `sys` (the crate's system calls and its
//!   only `unsafe`), `secrets`, `pack` (pack and index format), `manifest`:
//!   leaves. Small files are written with `moat_builder::fsio`.
//! - `tree` (trees through directory descriptors: walk, open beneath a
//!   root, remove; any depth), on `sys`.
//! - `chunks`: the [`ChunkStore`] (lookup, verified reads, [`ChunkWriter`],
//!   sweeping unreferenced chunks).
//! - `repo`: the [`Repo`], which owns its chunk store, manifests, records,
//!   stat cache, lock and `gc`.
//! - `backup`, `restore`, [`archive`] (export/import), [`oci`] (push/pull),
//!   [`freeze`] (the cgroup freezer): what the CLI calls.
//!
//! Sandbox names. Records are kept per sandbox (`refs/NAME/`), an imported
//! record brings its name from the file, and `freeze` builds the cgroup path
//! `/moat/NAME`, so every name is checked before it becomes a path. The rule
//! is the one of the supervisor's sandbox state; it lives in
//! `moat_builder::home::check_sandbox_name`, beside the rest of the MOAT_HOME
//! layout, because moat-builder is a dependency of both crates: one
//! definition, and this crate does not depend on the supervisor (which does
//! not use snapshots). A bad name is [`SnapshotError::BadName`].
//!
//! `unsafe_code` is denied crate-wide and allowed in `sys` alone; every other
//! module forbids it outright.
#![deny(unreachable_pub, unsafe_code, unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
pub mod archive;
mod backup;
mod chunks;
mod format;
pub mod freeze;
mod manifest;
pub mod oci;
mod pack;
mod repo;
mod restore;
mod secrets;
mod sys;
mod tree;

pub use backup::{backup_dir, BackupOptions, BackupReport};
pub use chunks::{ChunkStore, ChunkWriter};
pub use format::sha256_hex;
pub use manifest::{Entry, Kind, Manifest};
pub use repo::{Record, Repo};
pub use restore::{restore_dir, restore_with, RestoreOptions, RestoreReport};

use std::io;
use std::path::{Path, PathBuf};

/// What went wrong in a snapshot operation. Display shows this level only;
/// the cause (an `io::Error`, the failed undo backup) is its `source()`.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    BadName(#[from] moat_builder::home::BadSandboxName),
    #[error("no snapshot {0:?} (see `moat snapshots NAME`)")]
    Unknown(String),
    #[error("{path}: corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "snapshot {digest} is damaged: {} chunk(s) missing or corrupt ({}); nothing was changed; affected paths:\n  {}",
        .chunks.len(), .chunks.join(", "), .paths.join("\n  ")
    )]
    Damaged { digest: String, chunks: Vec<String>, paths: Vec<String> },
    #[error("cgroup freezer {path}: {reason}")]
    Freeze { path: PathBuf, reason: String },
    /// The snapshot of what a restore would replace failed: nothing was changed.
    #[error("could not snapshot the current {} before restoring, so it is not replaced (nothing was changed; `moat restore --force` replaces it without that snapshot)", .dest.display())]
    UndoSnapshot { dest: PathBuf, source: Box<SnapshotError> },
    /// What a restore would replace holds what no snapshot can keep: nothing was changed.
    #[error(
        "{} holds what a snapshot cannot keep, so restoring over it would lose it; nothing was changed (`moat restore --force` replaces it anyway):\n  {}",
        .dest.display(), .paths.join("\n  ")
    )]
    CannotKeep { dest: PathBuf, paths: Vec<String> },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io { path: path.to_path_buf(), source }
}
