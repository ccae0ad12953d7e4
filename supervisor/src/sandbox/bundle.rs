//! `moat bundle`: an OCI bundle (a copy of the image's merged rootfs and a
//! `config.json`) that runc or crun can run, for comparison and for
//! runtimes moat does not drive. Threat addressed: a bundle that runs with
//! less than the policy says; its spec comes from the same `spec::build` as
//! a sandbox's and carries the seccomp deny list (moat's gateway, Landlock
//! and per-sandbox uid are not part of a bundle).
use super::{check_enforceable, io, resolve, spec, state, SandboxError};
use crate::launch::rootfs::{self, PreparedImage};
use crate::layers::LayerCache;
use crate::policy::Policy;
use crate::sandbox::spec::SpecParams;
use moat_builder::Store;
use std::fs;
use std::os::unix::fs::{chown, DirBuilderExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes an OCI bundle (rootfs copy + config.json) that runc can run.
/// Must be called from a single-threaded process (it enters a private
/// mount namespace to read the merged image).
pub fn write_bundle(
    store: &Store,
    image: &str,
    policy: &Policy,
    args: &[String],
    dir: &Path,
) -> Result<(), SandboxError> {
    check_enforceable(policy)?;
    let r = resolve(store, image, policy, args, &[])?;
    if dir.exists() && fs::read_dir(dir).map_err(io(dir.display().to_string()))?.next().is_some() {
        return Err(SandboxError::Refused(format!("{}: exists and is not empty", dir.display())));
    }
    let root = dir.join("rootfs");
    fs::create_dir_all(&root).map_err(io(root.display().to_string()))?;
    let dir = fs::canonicalize(dir).map_err(io(dir.display().to_string()))?;
    let root = dir.join("rootfs");
    copy_merged(&r.image, &root)?;
    rootfs::write_top_layer(&root, &policy.filesystem.workspace, &rootfs::hosts_file("moat"), &[])?;
    let ws = dir.join("workspace");
    fs::DirBuilder::new().mode(0o700).create(&ws).map_err(io(ws.display().to_string()))?;
    chown(&ws, Some(r.user.uid), Some(r.user.gid)).map_err(io("chown workspace"))?;
    let params = SpecParams {
        rootfs: "rootfs".into(),
        args: r.args,
        env: r.env,
        cwd: r.cwd,
        user: r.user,
        hostname: "moat".into(),
        workspace_host: ws,
        netns_path: None,
        cgroups_path: None,
        terminal: false,
        seccomp: Some(
            crate::launch::seccomp::DenyList::builtin().map_err(|e| SandboxError::Refused(e.to_string()))?.to_oci(),
        ),
    };
    let spec = spec::build(policy, &params)?;
    let json = serde_json::to_vec_pretty(&spec).map_err(|e| SandboxError::Refused(e.to_string()))?;
    state::write_atomic(&dir.join("config.json"), &json)?;
    Ok(())
}

/// Copies the image's merged filesystem (overlay of its cached layers) to `dest`.
fn copy_merged(image: &PreparedImage, dest: &Path) -> Result<(), SandboxError> {
    rootfs::private_mount_namespace().map_err(io("private mount namespace (run `moat bundle` as root)"))?;
    let mnt = tempfile::tempdir().map_err(io("temp mount point"))?;
    let lowers: Vec<PathBuf> = image.layers.iter().rev().cloned().collect();
    rootfs::mount_overlay(mnt.path(), &lowers, LayerCache::default_location().dir())?;
    let out = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", mnt.path().display()))
        .arg(dest)
        .output()
        .map_err(io("running cp"));
    rootfs::unmount(mnt.path());
    let out = out?;
    if !out.status.success() {
        return Err(SandboxError::Refused(format!(
            "copying the image: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
