//! Workspace snapshots: content-addressed, incremental, verified backups of a
//! sandbox's workspace and atomic restores. Addresses the threat of losing an
//! agent's work (a torn copy, a half-done rebuild, a corrupt store) and of
//! leaking secrets into backups: every byte is checked against its sha256 on
//! the way back, restores swap a fully built tree in by rename, and files that
//! look like credentials are reported (and left out on request).
//!
//! Layout of the repository (`$MOAT_HOME/snapshots`, see [`repo`]):
//! `packs/<name>.pack` + `.idx` (chunks, see [`pack`]), `snapshots/<sha256>.json`
//! (the canonical tree manifest; its sha256 is the snapshot digest),
//! `refs/<sandbox>/<time>-<digest12>.json` (time, tag, sizes: the undigested
//! record), `cache/<key>.json` (the stat cache), `tmp/` (in-flight writes).
pub mod archive;
pub mod backup;
pub mod chunks;
pub mod freeze;
pub mod manifest;
pub mod oci;
pub mod pack;
pub mod repo;
pub mod restore;
pub mod secrets;

use std::io;
use std::path::{Path, PathBuf};

pub use backup::{backup_dir, BackupOptions, BackupReport};
pub use manifest::{Entry, Kind, Manifest};
pub use repo::{Record, Repo};
pub use restore::{restore_dir, RestoreReport};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
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
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io { path: path.to_path_buf(), source }
}
