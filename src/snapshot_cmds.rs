//! Snapshot commands: backup, snapshots, restore, and `snapshot
//! export|import|push|pull|gc`. Thin: resolves the sandbox's workspace and state, then
//! calls `moat_snapshot`. Guards against restoring under a running
//! sandbox (its workspace is mounted) and against silent data loss (every
//! restore prints how to undo it). A stopped sandbox's workspace image is
//! mounted for the command.
use crate::registry_cmds::NetArgs;
use crate::Global;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use moat_snapshot::{archive, backup_dir, freeze, oci, restore_with, BackupOptions, Record, Repo, RestoreOptions};
use moat_supervisor::sandbox::state::{self, Paths, Status};
use moat_supervisor::sandbox::workspace_limit::{Disk, Mounted};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args)]
pub struct BackupArgs {
    /// Sandbox whose workspace to snapshot.
    pub name: String,
    /// A name for this snapshot (restore by it later).
    #[arg(long)]
    pub tag: Option<String>,
    /// Leave out paths matching GLOB (relative path or file name; repeatable).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Leave out files that look like credentials (and list them).
    #[arg(long)]
    pub exclude_secrets: bool,
}

#[derive(Args)]
pub struct SnapshotsArgs {
    pub name: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RestoreArgs {
    pub name: String,
    /// Digest (or unique prefix, >= 8 hex) or tag; default: the latest.
    pub snapshot: Option<String>,
    /// Restore into the workspace of a new sandbox NEWNAME instead.
    #[arg(long, value_name = "NEWNAME")]
    pub to: Option<String>,
    /// Replace the workspace even when the undo snapshot cannot hold all of
    /// it (what it cannot hold is lost, and listed).
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub cmd: SnapshotCmd,
}

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Write one snapshot (SANDBOX, SANDBOX:TAG, or a digest) to FILE.
    Export {
        snapshot: String,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Read a file written by `snapshot export`, verifying every chunk.
    Import { file: PathBuf },
    /// Push one snapshot (SANDBOX, SANDBOX:TAG, or a digest) to a registry as an OCI artifact;
    /// prints REGISTRY/REPO@sha256:...
    Push {
        snapshot: String,
        /// Destination REGISTRY/REPO[:TAG] (a tag is only an alias; the digest is printed).
        target: String,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Pull a snapshot pushed with `snapshot push` (REGISTRY/REPO@sha256:..., verified) and import it.
    Pull {
        /// REGISTRY/REPO@sha256:... (tags are refused: see `moat resolve`).
        reference: String,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Remove chunks no snapshot references.
    Gc,
}

fn repo() -> Result<Repo> {
    Ok(Repo::open(&Repo::default_root())?)
}

pub fn backup(a: BackupArgs, g: &Global) -> Result<ExitCode> {
    let paths = Paths::new(&a.name)?;
    let rec = state::load(&paths)?;
    let running = rec.live_status() == Status::Running;
    // Running: its image is mounted and bound at the workspace already.
    let (dir, _mounted) = if running || !rec.workspace_owned || !Disk::of(&paths.home).exists() {
        (rec.workspace.clone(), None)
    } else {
        let m = mount(&paths.home)?;
        (m.data(), Some(m))
    };
    if !dir.is_dir() {
        bail!("{}: the workspace of {} does not exist", dir.display(), a.name);
    }
    let repo = repo()?;
    let opts =
        BackupOptions { sandbox: a.name.clone(), tag: a.tag, exclude: a.exclude, exclude_secrets: a.exclude_secrets };
    // A running sandbox is frozen for the moment of the read, thawed on drop.
    let frozen = if running {
        Some(freeze::freeze(&a.name).with_context(|| format!("freezing {} for a consistent backup", a.name))?)
    } else {
        None
    };
    let report = backup_dir(&repo, &dir, &opts);
    drop(frozen);
    let report = report.with_context(|| format!("backing up {}", dir.display()))?;
    let r = &report.record;
    if !g.quiet {
        say!(
            "{} files, {} bytes; {} read, {} new chunks ({} bytes stored)",
            r.files,
            r.bytes,
            report.files_read,
            r.new_chunks,
            r.new_bytes
        );
        for s in &r.secrets {
            let s = moat_supervisor::visible::field(s); // a workspace path: the sandbox named it
            say!("warning: looks like a secret (kept; --exclude-secrets leaves it out): {s}");
        }
        for s in &r.skipped {
            say!("left out: {}", moat_supervisor::visible::field(s));
        }
    }
    println!("sha256:{}", report.digest);
    Ok(ExitCode::SUCCESS)
}

pub fn snapshots(a: SnapshotsArgs, _g: &Global) -> Result<ExitCode> {
    state::check_name(&a.name)?;
    let recs = repo()?.records(&a.name)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&recs)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<19} {:<14} {:<20} {:>12} {:>7} {:>12}", "DIGEST", "TAG", "TIME (UTC)", "SIZE", "FILES", "NEW");
    for r in &recs {
        println!(
            "sha256:{:<12} {:<14} {:<20} {:>12} {:>7} {:>12}",
            &r.digest[..12],
            // A record written before tags were checked may hold escape codes.
            moat_supervisor::visible::field(r.tag.as_deref().unwrap_or("-")),
            utc((r.time_ns / 1_000_000_000) as i64),
            r.bytes,
            r.files,
            r.new_bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn restore(a: RestoreArgs, g: &Global) -> Result<ExitCode> {
    let src = Paths::new(&a.name)?;
    let repo = repo()?;
    let rec = repo.resolve(&a.name, a.snapshot.as_deref())?;
    let (target_name, target, owned) = match &a.to {
        Some(new) => {
            let p = Paths::new(new)?;
            if p.state_file().exists() {
                bail!("a sandbox named {new:?} already exists; restore into it with `moat restore {new} ...` or pick another name");
            }
            let ws = p.default_workspace();
            (new.clone(), p, (ws, true))
        }
        None => match state::load(&src) {
            Ok(s) => {
                if s.live_status() == Status::Running {
                    bail!("{} is running (its workspace is mounted): `moat stop {}` first", a.name, a.name);
                }
                (a.name.clone(), Paths::new(&a.name)?, (s.workspace, s.workspace_owned))
            }
            Err(state::StateError::Unknown(_)) => {
                (a.name.clone(), Paths::new(&a.name)?, (src.default_workspace(), true))
            }
            Err(e) => return Err(e.into()),
        },
    };
    let (dest, mounted) = restore_target(&target, owned)?;
    let opts = RestoreOptions { undo_as: Some(&target_name), force: a.force };
    let report = restore_with(&repo, &rec.digest, &dest, &opts)
        .with_context(|| format!("restoring sha256:{} to {}", rec.digest, dest.display()))?;
    drop(mounted);
    for l in &report.lost {
        // Said even with -q: it is gone for good.
        say!("warning: replaced without a snapshot (--force): {}", moat_supervisor::visible::field(l));
    }
    if !g.quiet {
        say!("restored {} files, {} bytes to {}", report.files, report.bytes, dest.display());
        if let Some(u) = &report.undo {
            say!("the previous workspace is snapshot sha256:{u}; undo with: moat restore {target_name} {u}");
        }
        if let Some(new) = &a.to {
            let image = state::load(&src).map(|s| s.image).unwrap_or_else(|_| "IMAGE".into());
            say!("start it with: moat run --name {new} {image}");
        }
    }
    println!("sha256:{}", rec.digest);
    Ok(ExitCode::SUCCESS)
}

pub fn snapshot(a: SnapshotArgs, g: &Global) -> Result<ExitCode> {
    let repo = repo()?;
    match a.cmd {
        SnapshotCmd::Export { snapshot, output } => {
            let rec = find(&repo, &snapshot)?;
            let n = archive::export(&repo, &rec.digest, Some(&rec), &output)
                .with_context(|| format!("exporting to {}", output.display()))?;
            if !g.quiet {
                say!("wrote {} ({n} chunks)", output.display());
            }
            println!("sha256:{}", rec.digest);
        }
        SnapshotCmd::Import { file } => {
            let (digest, rec) =
                archive::import(&repo, &file).with_context(|| format!("importing {}", file.display()))?;
            if !g.quiet {
                say!("imported as a snapshot of {} ({} new chunks)", rec.sandbox, rec.new_chunks);
            }
            println!("sha256:{digest}");
        }
        SnapshotCmd::Push { snapshot, target, net } => {
            let rec = find(&repo, &snapshot)?;
            let r = oci::push(&repo, &rec, &target, &net.options(g))
                .with_context(|| format!("pushing snapshot sha256:{} to {target}", rec.digest))?;
            if net.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                if !g.quiet {
                    let p = &r.registry;
                    say!(
                        "snapshot {} of {}: uploaded {} blob(s) ({} bytes), {} already present",
                        r.snapshot,
                        rec.sandbox,
                        p.uploaded.len(),
                        p.bytes_uploaded,
                        p.skipped.len() + p.mounted.len()
                    );
                }
                println!("{}", r.pinned);
            }
        }
        SnapshotCmd::Pull { reference, net } => {
            let r = oci::pull(&repo, &reference, &net.options(g))
                .with_context(|| format!("pulling snapshot {reference}"))?;
            if net.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                if !g.quiet {
                    say!(
                        "imported as a snapshot of {} ({} new chunks); restore with: moat restore {} {} --to NEWNAME",
                        r.record.sandbox,
                        r.record.new_chunks,
                        r.record.sandbox,
                        &r.digest[..12]
                    );
                }
                println!("sha256:{}", r.digest);
            }
        }
        SnapshotCmd::Gc => {
            let (n, bytes) = repo.gc()?;
            println!("removed {n} chunks ({bytes} bytes)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Mounts the workspace image of the sandbox home `home` for this command.
fn mount(home: &Path) -> Result<Mounted> {
    Disk::of(home).mount().with_context(|| format!("mounting the workspace image in {} (needs root)", home.display()))
}

/// Where a restore writes: the workspace inside the target's image, mounted
/// for the restore, when it has one; else the plain directory (a new
/// sandbox's is moved into an image of its policy's size when it starts).
fn restore_target(target: &Paths, (workspace, owned): (PathBuf, bool)) -> Result<(PathBuf, Option<Mounted>)> {
    if !owned || !Disk::of(&target.home).exists() {
        return Ok((workspace, None));
    }
    let m = mount(&target.home)?;
    Ok((m.data(), Some(m)))
}

/// SANDBOX (latest), SANDBOX:TAG, or a digest / unique prefix of any sandbox.
fn find(repo: &Repo, spec: &str) -> Result<Record> {
    if let Some((name, tag)) = spec.split_once(':').filter(|(n, _)| *n != "sha256") {
        return Ok(repo.resolve(name, Some(tag))?);
    }
    if state::check_name(spec).is_ok() && !repo.records(spec)?.is_empty() {
        return Ok(repo.resolve(spec, None)?);
    }
    let hexpart = spec.strip_prefix("sha256:").unwrap_or(spec);
    if hexpart.len() < 8 {
        bail!("no snapshot {spec:?}: give SANDBOX, SANDBOX:TAG or a digest (>= 8 hex digits)");
    }
    let mut hits: Vec<Record> = repo.all_records()?.into_iter().filter(|r| r.digest.starts_with(hexpart)).collect();
    hits.sort_by_key(|r| r.time_ns);
    hits.dedup_by(|a, b| a.digest == b.digest);
    match hits.len() {
        0 => bail!("no snapshot {spec:?}"),
        1 => Ok(hits.remove(0)),
        _ => bail!("{spec:?} is ambiguous"),
    }
}

/// "YYYY-MM-DD HH:MM:SS" of a Unix time (UTC).
fn utc(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86400), t.rem_euclid(86400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", secs / 3600, secs % 3600 / 60, secs % 60)
}
