//! `moat key generate`: a signing key pair in cosign's formats, DIR/cosign.key
//! (encrypted with a password) and DIR/cosign.pub. Guards the private key:
//! the password comes from MOAT_KEY_PASSWORD or stdin (hidden and asked twice
//! on a terminal), never argv (readable in /proc); the key file is 0600, is
//! never put over an existing file without --force (its name is claimed with
//! O_EXCL, so a race cannot clobber one either), and is written atomically
//! (moat_builder::fsio: a crash leaves the old file or the new, never half).
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use moat_builder::sign::keys;
use moat_supervisor::secrets::credentials::wipe;
use std::fs::OpenOptions;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The environment variable a password is read from before stdin (cosign's is COSIGN_PASSWORD).
const PASSWORD_ENV: &str = "MOAT_KEY_PASSWORD";
/// Longest password read from stdin.
const MAX_PASSWORD: usize = 4096;
const PRIVATE_NAME: &str = "cosign.key";
const PUBLIC_NAME: &str = "cosign.pub";

#[derive(Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub cmd: KeyCmd,
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Write a new ECDSA P-256 key pair as cosign does: DIR/cosign.key
    /// (password-encrypted, mode 0600) and DIR/cosign.pub. The password comes
    /// from MOAT_KEY_PASSWORD, else one line of stdin (asked twice, hidden, on
    /// a terminal).
    Generate(GenerateArgs),
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Directory to write cosign.key and cosign.pub in (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// Replace existing cosign.key and cosign.pub.
    #[arg(long)]
    force: bool,
}

pub fn generate(a: GenerateArgs) -> Result<ExitCode> {
    let private_path = a.out.join(PRIVATE_NAME);
    let public_path = a.out.join(PUBLIC_NAME);
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    // Refuse before asking for a password that would then be wasted.
    if !a.force {
        for p in [&private_path, &public_path] {
            if p.symlink_metadata().is_ok() {
                bail!("{} exists: not replacing a key (use --force to replace it)", p.display());
            }
        }
    }
    let mut password = password(true)?;
    if password.is_empty() {
        say!("moat: warning: empty password: anyone who gets {} can sign with it", private_path.display());
    }
    let generated = keys::generate(&password);
    wipe(&mut password);
    let (private, public) = generated.context("generating a key pair")?;

    let claimed = if a.force { Vec::new() } else { claim(&[&private_path, &public_path])? };
    let written = moat_builder::fsio::write(&private_path, private.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", private_path.display()))
        .and_then(|()| {
            moat_builder::fsio::write(&public_path, public.as_bytes(), 0o644)
                .with_context(|| format!("writing {}", public_path.display()))
        });
    if let Err(e) = written {
        // Only names this run created: never a file that was there before.
        for p in claimed {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    println!("{}", private_path.display());
    println!("{}", public_path.display());
    Ok(ExitCode::SUCCESS)
}

/// Creates each path as an empty 0600 file with O_EXCL (failing if anything,
/// a dangling symlink included, is there), so no other writer's file is
/// replaced by the atomic rename that follows. On failure, removes the ones
/// it created.
fn claim<'a>(paths: &[&'a Path]) -> Result<Vec<&'a Path>> {
    let mut created = Vec::new();
    for &p in paths {
        let r = OpenOptions::new().write(true).create_new(true).mode(0o600).open(p);
        if let Err(e) = r {
            for c in &created {
                let _ = std::fs::remove_file(c);
            }
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                bail!("{} exists: not replacing a key (use --force to replace it)", p.display());
            }
            return Err(e).with_context(|| format!("creating {}", p.display()));
        }
        created.push(p);
    }
    Ok(created)
}

/// The password: MOAT_KEY_PASSWORD if set (even empty), else from stdin
/// (on a terminal hidden, and asked twice when `confirm`: a new key).
pub(crate) fn password(confirm: bool) -> Result<Vec<u8>> {
    if let Some(v) = std::env::var_os(PASSWORD_ENV) {
        return Ok(std::os::unix::ffi::OsStringExt::into_vec(v));
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let mut first = prompt(&stdin, "Enter password for private key: ")?;
        if !confirm {
            return Ok(first);
        }
        let mut again = prompt(&stdin, "Enter password for private key again: ")?;
        let same = first == again;
        wipe(&mut again);
        if !same {
            wipe(&mut first);
            bail!("the two passwords differ; no key written");
        }
        return Ok(first);
    }
    let mut line = Vec::new();
    // One line: room for the limit plus "\r\n", and one byte to notice more.
    stdin
        .lock()
        .take(MAX_PASSWORD as u64 + 3)
        .read_until(b'\n', &mut line)
        .context("reading the password from stdin")?;
    if line.is_empty() {
        bail!("no password on stdin: pipe one line in, or set {PASSWORD_ENV} (empty for no password)");
    }
    let text = trim_newline(&mut line);
    if text > MAX_PASSWORD {
        wipe(&mut line);
        bail!("the password on stdin is longer than {MAX_PASSWORD} bytes");
    }
    Ok(line)
}

/// Drops one trailing "\n" or "\r\n"; returns the length left.
fn trim_newline(line: &mut Vec<u8>) -> usize {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    line.len()
}

/// One line from the terminal with echo off, the prompt on stderr.
fn prompt(stdin: &std::io::Stdin, text: &str) -> Result<Vec<u8>> {
    let _echo_off = crate::echo_off::EchoOff::new(stdin, &format!("set {PASSWORD_ENV} or pipe the password in"))?;
    eprint!("{text}");
    let _ = std::io::stderr().flush();
    let mut line = Vec::new();
    stdin.lock().take(MAX_PASSWORD as u64 + 3).read_until(b'\n', &mut line).context("reading the password")?;
    if trim_newline(&mut line) > MAX_PASSWORD {
        wipe(&mut line);
        bail!("the password is longer than {MAX_PASSWORD} bytes");
    }
    Ok(line)
}

/// Reads trusted public keys.
pub fn public_keys(paths: &[PathBuf]) -> Result<Vec<moat_builder::sign::keys::VerifyingKey>> {
    paths
        .iter()
        .map(|p| {
            let pem = moat_builder::sign::keys::read_key_file(p)?;
            moat_builder::sign::keys::load_public(&pem)
                .with_context(|| format!("reading the public key {}", p.display()))
        })
        .collect()
}
