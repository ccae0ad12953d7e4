//! The `moat` command line: parses arguments and dispatches, one function per
//! subcommand (in the `*_cmds` files) calling the libraries.
#![forbid(unsafe_code)]
use anyhow::Result;
use clap::{Parser, Subcommand};
use moat_supervisor::secrets::redact::redact;
use std::path::PathBuf;
use std::process::ExitCode;

/// A message for the user on stderr, like `eprintln!` but never a panic:
/// when stderr is a pipe whose reader has gone (`moat ... 2>&1 | head -1`) the
/// message is dropped and the command still finishes its work.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod credentials_cmds;
mod debian_cmds;
mod echo_off;
mod image_cmds;
mod inference_cmds;
mod key_cmds;
mod policy_cmds;
mod registry_cmds;
mod sandbox_cmds;
mod sign_cmds;
mod snapshot_cmds;
mod term_cmds;

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
    /// Hash every blob in the store; name each corrupt or missing one (exit 1).
    Fsck(image_cmds::FsckArgs),
    /// Write an SPDX JSON SBOM of an image's Debian packages.
    Sbom(debian_cmds::SbomArgs),
    /// Push an image to a registry; prints REGISTRY/REPO@sha256:...
    Push(registry_cmds::PushArgs),
    /// Pull REGISTRY/REPO@sha256:... into the store, verifying every blob.
    Pull(registry_cmds::PullArgs),
    /// Sign an image with a cosign-format key (classic signature + Sigstore bundle).
    Sign(sign_cmds::SignArgs),
    /// Attest an image: SLSA provenance from its lock and its SPDX SBOM, signed.
    Attest(sign_cmds::AttestArgs),
    /// Check an image's signature against trusted public keys (exit 1 if none holds).
    #[command(name = "verify-signature")]
    VerifySignature(sign_cmds::VerifySignatureArgs),
    /// Check an image's attestations against trusted public keys (exit 1 if none holds).
    #[command(name = "verify-attestation")]
    VerifyAttestation(sign_cmds::VerifyAttestationArgs),
    /// Print the digest a registry tag names now (to pin it).
    Resolve(registry_cmds::ResolveArgs),
    /// Store registry credentials (password read from stdin).
    Login(registry_cmds::LoginArgs),
    /// Forget stored registry credentials.
    Logout(registry_cmds::LogoutArgs),
    /// Run a command from an image in a new sandbox (foreground unless -d).
    Run(sandbox_cmds::RunArgs),
    /// List sandboxes.
    Ls(sandbox_cmds::LsArgs),
    /// Publish a port of a running sandbox on the host (one it may bind: `run -p` or `--expose`).
    Publish(sandbox_cmds::PublishArgs),
    /// Stop sandboxes: SIGTERM, then SIGKILL after a grace period.
    Stop(sandbox_cmds::StopArgs),
    /// Remove stopped sandboxes (the workspace stays unless --workspace).
    Rm(sandbox_cmds::RmArgs),
    /// Run a command inside a running sandbox, under the same restrictions.
    Exec(sandbox_cmds::ExecArgs),
    /// Print a detached sandbox's output.
    Logs(sandbox_cmds::LogsArgs),
    /// Write the OCI runtime bundle (rootfs + config.json) moat would run.
    Bundle(sandbox_cmds::BundleArgs),
    /// Check the kernel features the sandbox relies on.
    Doctor(sandbox_cmds::DoctorArgs),
    /// Snapshot a sandbox's workspace (content-addressed, incremental); prints its digest.
    Backup(snapshot_cmds::BackupArgs),
    /// List a sandbox's snapshots.
    Snapshots(snapshot_cmds::SnapshotsArgs),
    /// Restore a sandbox's workspace from a snapshot (digest, tag or latest).
    Restore(snapshot_cmds::RestoreArgs),
    /// Export, import, push, pull or garbage-collect snapshots.
    Snapshot(snapshot_cmds::SnapshotArgs),
    /// Check, import and change network policies (live, on running sandboxes).
    Policy(policy_cmds::PolicyArgs),
    /// List a sandbox's refused destinations waiting for an operator.
    Approvals(policy_cmds::ApprovalsArgs),
    /// Allow a pending destination: writes a new network policy revision.
    Approve(policy_cmds::ApproveArgs),
    /// Drop a pending destination (it stays refused).
    Deny(policy_cmds::DecideArgs),
    /// The live console: sandboxes, egress as it happens, approvals, policy.
    Term(term_cmds::TermArgs),
    /// Print a sandbox's egress audit log (JSON lines with --json).
    Events(policy_cmds::EventsArgs),
    /// Store provider credentials on the host (never inside a sandbox).
    Credentials(credentials_cmds::CredentialsArgs),
    /// Route a sandbox's inference.local to a provider; show it and its token usage.
    Inference(inference_cmds::InferenceArgs),
    /// Make signing keys (cosign's formats).
    Key(key_cmds::KeyArgs),
    /// Internal: a detached sandbox's supervisor.
    #[command(name = "__supervise", hide = true)]
    Supervise(sandbox_cmds::InternalArgs),
}

fn main() -> ExitCode {
    moat_supervisor::secrets::redact::install_panic_hook();
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    moat_supervisor::logging::init(cli.quiet, None);
    let g = Global { store: cli.store, quiet: cli.quiet };
    match dispatch(cli.cmd, &g) {
        Ok(code) => code,
        Err(e) => {
            // An error can quote what a sandbox chose (a path, a host):
            // shown escaped, as every operator-facing output is.
            say!("{}", moat_supervisor::visible::lines(&redact(&format!("moat: error: {e:#}"))));
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
        Cmd::Fsck(a) => image_cmds::fsck(a, g),
        Cmd::Sbom(a) => debian_cmds::sbom(a, g),
        Cmd::Push(a) => registry_cmds::push(a, g),
        Cmd::Pull(a) => registry_cmds::pull(a, g),
        Cmd::Sign(a) => sign_cmds::sign(a, g),
        Cmd::Attest(a) => sign_cmds::attest(a, g),
        Cmd::VerifySignature(a) => sign_cmds::verify_signature(a, g),
        Cmd::VerifyAttestation(a) => sign_cmds::verify_attestation(a, g),
        Cmd::Resolve(a) => registry_cmds::resolve(a, g),
        Cmd::Login(a) => registry_cmds::login(a, g),
        Cmd::Logout(a) => registry_cmds::logout(a, g),
        Cmd::Run(a) => sandbox_cmds::run(a, g),
        Cmd::Ls(a) => sandbox_cmds::ls(a, g),
        Cmd::Publish(a) => sandbox_cmds::publish_cmd(a, g),
        Cmd::Stop(a) => sandbox_cmds::stop(a, g),
        Cmd::Rm(a) => sandbox_cmds::rm(a, g),
        Cmd::Exec(a) => sandbox_cmds::exec(a, g),
        Cmd::Logs(a) => sandbox_cmds::logs(a, g),
        Cmd::Bundle(a) => sandbox_cmds::bundle(a, g),
        Cmd::Doctor(a) => sandbox_cmds::doctor(a, g),
        Cmd::Backup(a) => snapshot_cmds::backup(a, g),
        Cmd::Snapshots(a) => snapshot_cmds::snapshots(a, g),
        Cmd::Restore(a) => snapshot_cmds::restore(a, g),
        Cmd::Snapshot(a) => snapshot_cmds::snapshot(a, g),
        Cmd::Policy(a) => policy_cmds::policy(a),
        Cmd::Approvals(a) => policy_cmds::approvals(a),
        Cmd::Approve(a) => policy_cmds::approve(a),
        Cmd::Deny(a) => policy_cmds::deny(a),
        Cmd::Events(a) => policy_cmds::events(a),
        Cmd::Term(a) => term_cmds::term(a),
        Cmd::Credentials(a) => credentials_cmds::credentials(a),
        Cmd::Inference(a) => inference_cmds::inference(a),
        Cmd::Key(a) => match a.cmd {
            key_cmds::KeyCmd::Generate(g) => key_cmds::generate(g),
        },
        Cmd::Supervise(a) => sandbox_cmds::supervise_internal(a),
    }
}

/// `moat images | head`: when the reader of stdout goes away, printing
/// fails; exit quietly with 141 (as a shell reports SIGPIPE) instead of a
/// panic report. SIGPIPE itself stays ignored (Rust's default), so network
/// writes to a vanished peer are errors, never a silent kill.
fn quiet_on_closed_stdout() {
    let next = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        next(info)
    }));
}
