//! The `moat` command line: parses arguments and dispatches, one function per
//! subcommand (in the `*_cmds` files) calling the libraries.
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod image_cmds;

#[derive(Parser)]
#[command(name = "moat", version, about = "Reproducible sandbox images and the supervisor that runs them")]
struct Cli {
    /// Image store (an OCI image layout). Default: MOAT_STORE, else the
    /// project's images/, else $MOAT_HOME/images.
    #[arg(long, global = true, env = "MOAT_STORE")]
    store: Option<PathBuf>,
    /// Print nothing but results and errors (no progress bars).
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options every subcommand sees.
pub struct Global {
    pub store: Option<PathBuf>,
    pub quiet: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Resolve a blueprint's inputs, build it, and write BLUEPRINT.lock.
    Lock(image_cmds::LockArgs),
    /// Build a blueprint from its lock into the store; prints NAME@sha256:...
    Build(image_cmds::BuildArgs),
    /// Rebuild blueprints in a fresh store and compare every digest with the lock.
    Verify(image_cmds::VerifyArgs),
    /// Find mutable references, unpinned sources and unknown keys.
    Lint(image_cmds::LintArgs),
    /// List toolchain binaries, setuid/setgid files and world-writable paths in an image.
    Audit(image_cmds::AuditArgs),
    /// List the images in the store.
    Images(image_cmds::ImagesArgs),
    /// Show an image's layers, sizes, config and history.
    Inspect(image_cmds::InspectArgs),
    /// Remove blobs no image in the store reaches.
    Gc(image_cmds::GcArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.quiet);
    let g = Global { store: cli.store, quiet: cli.quiet };
    match dispatch(cli.cmd, &g) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("moat: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn dispatch(cmd: Cmd, g: &Global) -> Result<ExitCode> {
    match cmd {
        Cmd::Lock(a) => image_cmds::lock(a, g),
        Cmd::Build(a) => image_cmds::build(a, g),
        Cmd::Verify(a) => image_cmds::verify(a, g),
        Cmd::Lint(a) => image_cmds::lint(a, g),
        Cmd::Audit(a) => image_cmds::audit(a, g),
        Cmd::Images(a) => image_cmds::images(a, g),
        Cmd::Inspect(a) => image_cmds::inspect(a, g),
        Cmd::Gc(a) => image_cmds::gc(a, g),
    }
}

fn init_tracing(quiet: bool) {
    let default = if quiet { "error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
