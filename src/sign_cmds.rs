//! Signing commands: `sign`, `attest`, `verify-signature`,
//! `verify-attestation`. Parses options, reads keys (the private key's
//! password from MOAT_KEY_PASSWORD or stdin, never argv) and prints results;
//! the work is in `moat_builder::sign`.
use crate::registry_cmds::NetArgs;
use crate::Global;
use anyhow::{Context, Result};
use clap::Args;
use moat_builder::digest::Digest;
use moat_builder::home::{project_root, store_dir};
use moat_builder::lock::Lock;
use moat_builder::sign::{check, image, keys};
use moat_builder::{registry, textfile, Store};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args)]
pub struct SignArgs {
    /// Image in the store: NAME, NAME@sha256:... or sha256:...
    pub image: String,
    /// cosign-format encrypted private key (`moat key generate`, `cosign generate-key-pair`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The `docker-reference` the signature names (default: the image's name).
    #[arg(long, value_name = "REGISTRY/REPO")]
    pub identity: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct AttestArgs {
    /// Image in the store: NAME, NAME@sha256:... or sha256:...
    pub image: String,
    /// cosign-format encrypted private key.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The blueprint whose lock pins the image (default: blueprints/NAME.toml of the project).
    #[arg(long, value_name = "FILE")]
    pub blueprint: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct VerifySignatureArgs {
    /// Image in the store (NAME, NAME@sha256:..., sha256:...) or REGISTRY/REPO@sha256:...
    pub image: String,
    /// Trusted public key (PEM); repeatable: any one of them suffices.
    #[arg(long, value_name = "PUB", required = true)]
    pub key: Vec<PathBuf>,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(Args)]
pub struct VerifyAttestationArgs {
    /// Image in the store (NAME, NAME@sha256:..., sha256:...) or REGISTRY/REPO@sha256:...
    pub image: String,
    /// Trusted public key (PEM); repeatable.
    #[arg(long, value_name = "PUB", required = true)]
    pub key: Vec<PathBuf>,
    /// slsaprovenance, spdx, or a predicate type URI (default: every attestation must hold).
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<String>,
    #[command(flatten)]
    pub net: NetArgs,
}

fn private_key(path: &Path) -> Result<keys::SigningKey> {
    let pem = keys::read_key_file(path)?;
    let pass = crate::key_cmds::password(false)?;
    keys::load_private(&pem, &pass).with_context(|| format!("reading the private key {}", path.display()))
}

fn open_store(g: &Global) -> Result<Store> {
    let dir = store_dir(g.store.as_deref());
    Store::open_existing(&dir).with_context(|| format!("opening the image store {}", dir.display()))
}

pub fn sign(a: SignArgs, g: &Global) -> Result<ExitCode> {
    let store = open_store(g)?;
    let key = private_key(&a.key)?;
    let s =
        image::sign(&store, &a.image, &key, a.identity.as_deref()).with_context(|| format!("signing {}", a.image))?;
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!("signed {}@{} ({}, bundle {})", s.image, s.digest, s.signature, s.bundle);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn attest(a: AttestArgs, g: &Global) -> Result<ExitCode> {
    let store = open_store(g)?;
    let img = store.resolve(&a.image)?;
    let bp = match a.blueprint {
        Some(b) => b,
        None => {
            let cwd = std::env::current_dir()?;
            let root = project_root(&cwd).context("no --blueprint given and no moat project (blueprints/) here")?;
            root.join("blueprints").join(format!("{}.toml", img.name))
        }
    };
    let lock_path = bp.with_extension("lock");
    let lock = Lock::read(&lock_path, &bp)?;
    let lock_bytes = textfile::read(&lock_path, textfile::MAX_TEXT)
        .with_context(|| format!("reading {}", lock_path.display()))?
        .into_bytes();
    let key = private_key(&a.key)?;
    let rel = blueprint_path(&bp);
    let out = image::attest(&store, &a.image, &key, &lock, &lock_bytes, &rel)
        .with_context(|| format!("attesting {}", a.image))?;
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        for x in out {
            println!(
                "attested {}@{}: {} (envelope {}, bundle {})",
                img.name, img.manifest.digest, x.predicate_type, x.envelope, x.bundle
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A blueprint's path as the provenance names it: relative to its project
/// (`blueprints/agent.toml`), so the statement is the same on every machine.
pub fn blueprint_path(bp: &Path) -> String {
    let abs = std::fs::canonicalize(bp).unwrap_or_else(|_| bp.to_path_buf());
    let rel = abs.parent().and_then(project_root).and_then(|root| abs.strip_prefix(root).ok().map(Path::to_path_buf));
    rel.unwrap_or_else(|| PathBuf::from(bp.file_name().unwrap_or_default())).display().to_string()
}

/// The store to check and the image digest: a store image, or a registry
/// reference whose signature artifacts are fetched into a temporary store.
fn subject(image: &str, net: &NetArgs, g: &Global) -> Result<(Store, Digest, Option<tempfile::TempDir>)> {
    // A registry reference names a host first (a dot, a port or localhost,
    // as docker tells them apart); anything else is a store name.
    let remote =
        image.split_once('/').is_some_and(|(host, _)| host.contains('.') || host.contains(':') || host == "localhost")
            && image.contains("@sha256:");
    if remote {
        let tmp = tempfile::tempdir().context("temporary store")?;
        let store = Store::open(tmp.path())?;
        let mut opts = net.options(g);
        opts.progress = false;
        registry::signatures::fetch(image, &store, &opts)
            .with_context(|| format!("fetching the signatures of {image}"))?;
        let digest = image.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
        return Ok((store, Digest::parse(digest)?, Some(tmp)));
    }
    let store = open_store(g)?;
    let digest = store.resolve(image)?.manifest.digest;
    Ok((store, digest, None))
}

pub fn verify_signature(a: VerifySignatureArgs, g: &Global) -> Result<ExitCode> {
    let keys = crate::key_cmds::public_keys(&a.key)?;
    let (store, digest, _tmp) = subject(&a.image, &a.net, g)?;
    match check::signature(&store, &digest, &keys) {
        Ok(good) => {
            if a.net.json {
                println!(
                    "{}",
                    serde_json::json!({"image": a.image, "digest": digest, "via": good.via, "key": a.key[good.key], "identity": good.identity})
                );
            } else {
                println!("ok {} {digest}: signed by {} ({})", a.image, a.key[good.key].display(), good.via);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            say!("moat: verify-signature {}: {}", a.image, moat_builder::errors::chain(&e));
            Ok(ExitCode::from(1))
        }
    }
}

pub fn verify_attestation(a: VerifyAttestationArgs, g: &Global) -> Result<ExitCode> {
    let keys = crate::key_cmds::public_keys(&a.key)?;
    let kind = a.kind.as_deref().map(check::predicate_type).transpose()?;
    let (store, digest, _tmp) = subject(&a.image, &a.net, g)?;
    match check::attestations(&store, &digest, &keys, kind.as_deref()) {
        Ok(good) => {
            for x in good {
                if a.net.json {
                    println!("{}", String::from_utf8_lossy(&x.payload));
                } else {
                    println!(
                        "ok {} {digest}: {} signed by {} ({})",
                        a.image,
                        x.statement.predicate_type,
                        a.key[x.key].display(),
                        x.via
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            say!("moat: verify-attestation {}: {}", a.image, moat_builder::errors::chain(&e));
            Ok(ExitCode::from(1))
        }
    }
}
