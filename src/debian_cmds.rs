//! Debian commands: `moat sbom` (SPDX JSON of an image's Debian packages).
use crate::Global;
use anyhow::{Context, Result};
use clap::Args;
use moat_builder::{home, Store};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct SbomArgs {
    /// Image: NAME, NAME@sha256:... or sha256:...
    pub image: String,
    /// Write the document here (atomically) instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

/// `moat sbom IMAGE [-o FILE]`
pub fn sbom(a: SbomArgs, g: &Global) -> Result<ExitCode> {
    let dir = home::store_dir(g.store.as_deref());
    let store = Store::open_existing(&dir).with_context(|| format!("opening the store {}", dir.display()))?;
    let doc = moat_builder::debian::sbom::image_sbom(&store, &a.image)?;
    let mut bytes = serde_json::to_vec_pretty(&doc)?;
    bytes.push(b'\n');
    match a.output {
        Some(path) => {
            moat_builder::fsio::write(&path, &bytes, 0o644).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::Write::write_all(&mut std::io::stdout().lock(), &bytes)?,
    }
    Ok(ExitCode::SUCCESS)
}
