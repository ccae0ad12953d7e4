//! Registry commands: push, pull, resolve, login, logout. Parses options and
//! prints results; the work is in `moat_builder::registry`. Passwords come
//! from stdin only (never argv, which other users can read in /proc).
use crate::Global;
use anyhow::{bail, Context, Result};
use clap::Args;
use moat_builder::digest::Digest;
use moat_builder::home::store_dir;
use moat_builder::registry::{self, auth, Options};
use moat_builder::sign::check;
use moat_builder::Store;
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

/// TLS and transport options every registry command takes.
#[derive(Args, Clone, Default)]
pub struct NetArgs {
    /// Extra CA certificate(s) (PEM) trusted on top of the system roots.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Allow plain HTTP to this host (HOST or HOST:PORT) if HTTPS fails; repeatable.
    /// Loopback registries are allowed without it.
    #[arg(long, value_name = "HOST")]
    pub insecure: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

impl NetArgs {
    pub(crate) fn options(&self, g: &Global) -> Options {
        Options {
            ca_file: self.ca_file.clone(),
            insecure: self.insecure.clone(),
            progress: !g.quiet && !self.json,
            name: None,
            architecture: None,
        }
    }
}

#[derive(Args)]
pub struct PushArgs {
    /// Image in the store: NAME, NAME@sha256:... or sha256:...
    pub image: String,
    /// Destination REGISTRY/REPO[:TAG] (a tag is only an alias; the digest is printed).
    pub target: String,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(Args)]
pub struct PullArgs {
    /// REGISTRY/REPO@sha256:... (tags are refused: see `moat resolve`).
    pub reference: String,
    /// Name of the image in the store (default: the repository's last component).
    #[arg(long)]
    pub name: Option<String>,
    /// Architecture to pick when the digest names a multi-platform index (default: this machine's).
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
    /// Refuse the image unless it carries a signature by this public key (PEM; repeatable).
    #[arg(long, value_name = "PUB")]
    pub verify_key: Vec<PathBuf>,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(Args)]
pub struct ResolveArgs {
    /// REGISTRY/REPO:TAG to look up.
    pub reference: String,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(Args)]
pub struct LoginArgs {
    /// Registry host[:port].
    pub registry: String,
    /// User name.
    #[arg(short, long)]
    pub username: String,
    /// Store the credentials without checking them against the registry.
    #[arg(long)]
    pub no_verify: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(Args)]
pub struct LogoutArgs {
    /// Registry host[:port].
    pub registry: String,
}

pub fn push(a: PushArgs, g: &Global) -> Result<ExitCode> {
    let dir = store_dir(g.store.as_deref());
    let store = Store::open_existing(&dir).with_context(|| format!("opening the image store {}", dir.display()))?;
    let r = registry::push(&store, &a.image, &a.target, &a.net.options(g))
        .with_context(|| format!("pushing {} to {}", a.image, a.target))?;
    let sigs = registry::signatures::push(&store, &r.digest, &a.target, &a.net.options(g))
        .with_context(|| format!("pushing the signatures of {} to {}", a.image, a.target))?;
    if !sigs.artifacts.is_empty() && !g.quiet && !a.net.json {
        say!("pushed {} signature artifact(s): {}", sigs.artifacts.len(), sigs.artifacts.join(", "));
    }
    if a.net.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        if !g.quiet {
            say!(
                "uploaded {} blob(s) ({} bytes), mounted {}, {} already present",
                r.uploaded.len(),
                r.bytes_uploaded,
                r.mounted.len(),
                r.skipped.len()
            );
        }
        println!("{}", r.pinned);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn pull(a: PullArgs, g: &Global) -> Result<ExitCode> {
    let dir = store_dir(g.store.as_deref());
    let store = Store::open(&dir).with_context(|| format!("opening the image store {}", dir.display()))?;
    let mut opts = a.net.options(g);
    opts.name = a.name.clone();
    opts.architecture = a.arch.clone();
    let keys = crate::key_cmds::public_keys(&a.verify_key)?;
    if !keys.is_empty() {
        // Checked in a scratch store before anything is pulled or named: a
        // refused pull changes nothing in the store (image or signatures).
        let mut quiet = opts.clone();
        quiet.progress = false;
        let scratch_dir = tempfile::tempdir().context("a scratch store for the signatures")?;
        let scratch = Store::open(scratch_dir.path())?;
        registry::signatures::fetch(&a.reference, &scratch, &quiet)
            .with_context(|| format!("fetching the signatures of {}", a.reference))?;
        let named = Digest::parse(a.reference.rsplit_once('@').map(|(_, d)| d).unwrap_or_default())?;
        if let Err(e) = check::signature(&scratch, &named, &keys) {
            say!("moat: pull {}: {} (nothing was pulled)", a.reference, moat_builder::errors::chain(&e));
            return Ok(ExitCode::from(1));
        }
    }
    let r = registry::pull(&a.reference, &store, &opts).with_context(|| format!("pulling {}", a.reference))?;
    // Signature artifacts come along, so a `[trust]` policy can check them at run.
    if let Err(e) = fetch_signatures(&a.reference, &r, &store, &opts) {
        tracing::warn!(reference = %a.reference, error = %moat_builder::errors::chain(&e), "could not fetch signature artifacts");
    }
    if a.net.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        if !g.quiet {
            say!(
                "downloaded {} blob(s) ({} bytes), {} already in the store",
                r.downloaded.len(),
                r.bytes_downloaded,
                r.present.len()
            );
        }
        println!("{}@{}", r.name, r.manifest.digest);
    }
    Ok(ExitCode::SUCCESS)
}

/// Fetches the signature artifacts of the pulled image and, for an index,
/// of the index too (cosign signs whichever digest it was given).
fn fetch_signatures(
    reference: &str,
    r: &registry::PullReport,
    store: &Store,
    opts: &registry::Options,
) -> Result<(), registry::RegistryError> {
    let mut quiet = opts.clone();
    quiet.progress = false;
    registry::signatures::fetch(reference, store, &quiet)?;
    let (repo, _) = reference.rsplit_once('@').unwrap_or((reference, ""));
    let child = format!("{repo}@{}", r.manifest.digest);
    if child != reference {
        registry::signatures::fetch(&child, store, &quiet)?;
    }
    Ok(())
}

pub fn resolve(a: ResolveArgs, g: &Global) -> Result<ExitCode> {
    let r = registry::resolve(&a.reference, &a.net.options(g)).with_context(|| format!("resolving {}", a.reference))?;
    if a.net.json {
        println!("{}", serde_json::json!({ "reference": a.reference, "pinned": r.pinned, "digest": r.digest }));
    } else {
        println!("{}", r.pinned);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn login(a: LoginArgs, g: &Global) -> Result<ExitCode> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() && !g.quiet {
        say!("password for {}@{} (read from stdin):", a.username, a.registry);
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line).context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        bail!("no password on stdin (pipe it in: `printf %s \"$PASS\" | moat login {} -u USER`)", a.registry);
    }
    let creds = auth::Credentials { username: a.username.clone(), password };
    if !a.no_verify {
        registry::check_login(&a.registry, &creds, &a.net.options(g))
            .with_context(|| format!("logging in to {}", a.registry))?;
    }
    let path = auth::store(&a.registry, creds)?;
    if a.net.json {
        println!(
            "{}",
            serde_json::json!({ "registry": auth::normalize(&a.registry), "username": a.username, "file": path })
        );
    } else if !g.quiet {
        say!("credentials for {} saved to {}", a.registry, path.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn logout(a: LogoutArgs, g: &Global) -> Result<ExitCode> {
    let found = auth::remove(&a.registry)?;
    if !g.quiet {
        if found {
            say!("removed credentials for {}", a.registry);
        } else {
            say!("no moat credentials stored for {}", a.registry);
        }
    }
    Ok(ExitCode::SUCCESS)
}
