//! Image commands: lock, build, verify, lint, audit, images, inspect, gc.
use crate::Global;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct LockArgs {
    /// Blueprint file (TOML).
    pub blueprint: PathBuf,
    /// Re-resolve pinned package sets instead of keeping the existing lock's.
    #[arg(long)]
    pub update: bool,
}
#[derive(Args)]
pub struct BuildArgs {
    pub blueprint: PathBuf,
}
#[derive(Args)]
pub struct VerifyArgs {
    #[arg(required = true)]
    pub blueprints: Vec<PathBuf>,
}
#[derive(Args)]
pub struct LintArgs {
    /// Files or directories (default: blueprints/ and policies/).
    pub paths: Vec<PathBuf>,
}
#[derive(Args)]
pub struct AuditArgs {
    pub image: String,
    #[arg(long)]
    pub json: bool,
}
#[derive(Args)]
pub struct ImagesArgs {
    #[arg(long)]
    pub json: bool,
}
#[derive(Args)]
pub struct InspectArgs {
    pub image: String,
    #[arg(long)]
    pub json: bool,
}
#[derive(Args)]
pub struct GcArgs {}

pub fn lock(_a: LockArgs, _g: &Global) -> Result<ExitCode> {
    bail!("not implemented yet")
}
pub fn build(_a: BuildArgs, _g: &Global) -> Result<ExitCode> {
    bail!("not implemented yet")
}
pub fn verify(_a: VerifyArgs, _g: &Global) -> Result<ExitCode> {
    bail!("not implemented yet")
}
pub fn lint(_a: LintArgs, _g: &Global) -> Result<ExitCode> {
    bail!("not implemented yet")
}
pub fn audit(_a: AuditArgs, _g: &Global) -> Result<ExitCode> {
    bail!("not implemented yet")
}
pub fn images(_a: ImagesArgs, _g: &Global) -> Result<ExitCode> {
    bail!("not implemented yet")
}
pub fn inspect(_a: InspectArgs, _g: &Global) -> Result<ExitCode> {
    bail!("not implemented yet")
}
pub fn gc(_a: GcArgs, _g: &Global) -> Result<ExitCode> {
    bail!("not implemented yet")
}
