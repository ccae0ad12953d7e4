//! moat's containerd shim v2 (`containerd-shim-moat-v1`): containerd and
//! Kubernetes (RuntimeClass `moat`) start moat sandboxes through it, with
//! the same start path as `moat run` (`sandbox::oci` turns the engine's
//! spec into the request `moat run` makes). Guards a cluster's agents as
//! `moat run` guards a host's: containerd's spec chooses the process and
//! the root filesystem, moat's policy everything that confines it.
//!
//! Rooms: `api` (the containerd-shim crate, and only it), `containers`
//! (the task API's meaning in plain types), `names` (container id to
//! sandbox name, and who owns a sandbox), `pod` (CRI's pause and app
//! containers), `bundle` (spec and policy from a bundle), `child` (the
//! single-threaded processes the shim starts), `stdio` (their FIFOs and
//! terminals), `sys` (its unsafe calls: what a child arms before exec, a
//! terminal's size).
#![deny(clippy::undocumented_unsafe_blocks)]
mod api;
mod bundle;
mod child;
mod containers;
mod names;
mod pod;
mod stdio;
mod sys;

use std::ffi::OsString;
use std::path::Path;

pub use bundle::{POLICY, PRESETS, PROFILE};

/// The binary's entry: the shim's own children (`__supervise`, `__exec`),
/// or whatever containerd asks (`start`, `delete`, serve).
pub fn main() -> i32 {
    let args: Vec<OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some("__supervise") if args.len() == 4 => {
            child::supervise_main(&args[2].to_string_lossy(), Path::new(&args[3]))
        }
        Some("__exec") if args.len() == 4 => {
            moat_supervisor::logging::init(false, None);
            child::exec_main(&args[2].to_string_lossy(), Path::new(&args[3]))
        }
        _ => {
            api::run();
            0
        }
    }
}

/// Removes whatever is left of container `id`'s sandbox in containerd
/// namespace `namespace` (after its shim died, or its create was refused):
/// its processes, cgroups, mounts, record and workspace. A sandbox of that
/// name that the container does not own is left alone.
pub fn cleanup(namespace: &str, id: &str) -> Result<(), moat_supervisor::sandbox::SandboxError> {
    let owner = names::owner(namespace, id);
    match names::owned_by(id, &owner) {
        Some(name) => names::remove_if_owned(&name, &owner),
        None => Ok(()),
    }
}
