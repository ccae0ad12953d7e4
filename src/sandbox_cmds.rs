//! Sandbox commands: run, ls, stop, rm, exec, logs, bundle, doctor, and the
//! hidden `__supervise` re-exec of a detached sandbox.
use crate::Global;
use anyhow::{bail, Context, Result};
use clap::Args;
use moat_builder::{home, Store};
use moat_supervisor::launch as launcher;
use moat_supervisor::sandbox::doctor;
use moat_supervisor::sandbox::publish;
use moat_supervisor::sandbox::state::{self, Paths, Status};
use moat_supervisor::sandbox::{self, RunRequest};
use moat_supervisor::secrets::redact::RedactingWriter;
use moat_supervisor::visible;
use moat_supervisor::Policy;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

#[derive(Args)]
pub struct RunArgs {
    /// Sandbox name (default: the image name and a random suffix).
    #[arg(long)]
    pub name: Option<String>,
    /// Policy file (TOML) instead of the embedded baseline.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Add a network preset (policies/presets/NAME.toml); repeatable. `moat policy presets` lists them.
    #[arg(long = "preset", value_name = "NAME")]
    pub presets: Vec<String>,
    /// Add every preset of a profile (policies/profiles/NAME.toml); repeatable.
    #[arg(long = "profile", value_name = "NAME")]
    pub profiles: Vec<String>,
    /// Host directory to mount as the workspace (default: one moat keeps per sandbox).
    #[arg(long)]
    pub workspace: Option<PathBuf>,
    /// Keep stdin open for the sandboxed command.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the command a pseudo-terminal of its own, relayed to this one.
    #[arg(short, long)]
    pub tty: bool,
    /// Set an environment variable (KEY=VALUE); PATH cannot be changed.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Run in the background under its own supervisor; prints the name.
    #[arg(short, long, conflicts_with_all = ["interactive", "tty", "rm"])]
    pub detach: bool,
    /// Remove the sandbox's state when it exits (the workspace too, if moat made it).
    #[arg(long)]
    pub rm: bool,
    /// Publish a port: the host's HOST_IP:HOST_PORT (HOST_IP default
    /// 127.0.0.1) relayed to 127.0.0.1:SANDBOX_PORT inside; repeatable.
    /// The sandbox may bind only the ports published.
    #[arg(short, long = "publish", value_name = "[HOST_IP:]HOST_PORT:SANDBOX_PORT")]
    pub publish: Vec<String>,
    /// Require a bearer token (generated, printed once on stderr) on every
    /// published port; needed for any HOST_IP not on loopback.
    #[arg(long)]
    pub publish_token: bool,
    /// Let the sandbox bind PORT, to publish it later with `moat publish`
    /// (Landlock's rights are fixed when the sandbox starts); repeatable.
    #[arg(long, value_name = "PORT")]
    pub expose: Vec<u16>,
    /// Image reference: NAME, NAME@sha256:..., or sha256:...
    pub image: String,
    /// Command and arguments (default: the image's entrypoint and command).
    #[arg(last = true)]
    pub cmd: Vec<String>,
}

#[derive(Args)]
pub struct LsArgs {
    #[arg(long)]
    pub json: bool,
}
#[derive(Args)]
pub struct StopArgs {
    /// Seconds between SIGTERM and SIGKILL.
    #[arg(short, long, default_value_t = 10)]
    pub time: u64,
    #[arg(required = true)]
    pub names: Vec<String>,
}
#[derive(Args)]
pub struct RmArgs {
    /// Stop a running sandbox first.
    #[arg(short, long)]
    pub force: bool,
    /// Delete the workspace moat made for it too.
    #[arg(long)]
    pub workspace: bool,
    #[arg(required = true)]
    pub names: Vec<String>,
}
#[derive(Args)]
pub struct ExecArgs {
    /// Set an environment variable (KEY=VALUE).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Keep stdin open.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the command a pseudo-terminal of its own, relayed to this one.
    #[arg(short, long)]
    pub tty: bool,
    pub name: String,
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
}
#[derive(Args)]
pub struct LogsArgs {
    /// Keep printing new output until the sandbox exits.
    #[arg(short, long)]
    pub follow: bool,
    /// Print the output as written, terminal control sequences included
    /// (by default they are shown escaped: the sandbox wrote them).
    #[arg(long)]
    pub raw: bool,
    pub name: String,
}
#[derive(Args)]
pub struct BundleArgs {
    /// Policy file (TOML) instead of the embedded baseline.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    pub image: String,
    /// Output directory (created; must be empty).
    pub dir: PathBuf,
    #[arg(last = true)]
    pub cmd: Vec<String>,
}
#[derive(Args)]
pub struct DoctorArgs {
    #[arg(long)]
    pub json: bool,
}
#[derive(Args)]
pub struct InternalArgs {
    pub name: String,
}

fn load_policy(p: &Option<PathBuf>) -> Result<Policy> {
    Ok(match p {
        Some(p) => Policy::load(p)?,
        None => Policy::baseline(),
    })
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(255))
}

pub fn run(a: RunArgs, g: &Global) -> Result<ExitCode> {
    let mut req = RunRequest {
        name: a.name,
        image: a.image,
        store: home::store_dir(g.store.as_deref()),
        policy: crate::policy_cmds::with_presets(load_policy(&a.policy)?, &a.presets, &a.profiles)?,
        workspace: a
            .workspace
            .map(|w| fs::canonicalize(&w).with_context(|| format!("--workspace {}", w.display())))
            .transpose()?,
        args: a.cmd,
        env: a.env,
        interactive: a.interactive || a.tty,
        tty: a.tty,
        detach: a.detach,
        ephemeral: a.rm,
        publish: a.publish.iter().map(|p| publish::parse(p)).collect::<Result<_, _>>()?,
        publish_token: a.publish_token.then(publish::new_token),
        expose: a.expose,
        oci: None,
    };
    if let Some(token) = &req.publish_token {
        // Checked first: a token printed for a run refused anyway is noise.
        publish::check(&req.publish, &req.expose, true, req.policy.network.gateway_port)?;
        say!("moat: publish token: {token}");
        say!("moat: (shown once) send it as the header `Authorization: Bearer TOKEN`");
    }
    if a.detach {
        let paths = sandbox::create(&req)?;
        return start_detached(&paths);
    }
    // The launcher fork, the grace period and the namespace start before
    // the sandbox is recorded, to run while it is.
    req.name = Some(sandbox::name_for(&req));
    let early = sandbox::begin(req.name.as_deref().unwrap_or_default(), &req.policy, None)?;
    let paths = sandbox::create(&req)?;
    let result = sandbox::supervise(&paths, None, Some(early));
    if a.rm {
        let removed = sandbox::remove(&paths, true, true).with_context(|| format!("removing sandbox {}", paths.name));
        match (&result, removed) {
            (_, Ok(())) => {}
            // The sandbox's own failure is the error to report; say the cleanup failed too.
            (Err(_), Err(e)) => say!("moat: warning: {e:#}"),
            (Ok(_), Err(e)) => return Err(e),
        }
    }
    Ok(exit(result?))
}

/// Starts `moat __supervise NAME` in its own session and waits for it to
/// say the sandbox runs. The supervisor writes the log itself (the
/// sandbox's output reaches it through pipes): nothing here opens it.
fn start_detached(paths: &Paths) -> Result<ExitCode> {
    let (ready_r, ready_w) = nix::unistd::pipe().context("pipe")?;
    let ready_w_raw = std::os::fd::AsRawFd::as_raw_fd(&ready_w);
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("__supervise")
        .arg(&paths.name)
        .env("MOAT_READY_FD", "3")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    sandbox::detach_with_ready_fd(&mut cmd, ready_w_raw);
    cmd.spawn().context("starting the supervisor")?;
    drop(ready_w);
    let mut line = String::new();
    BufReader::new(fs::File::from(ready_r)).read_line(&mut line)?;
    match line.trim() {
        "ok" => {
            println!("{}", paths.name);
            Ok(ExitCode::SUCCESS)
        }
        "" => {
            bail!("the supervisor of {} exited before the sandbox started; see `moat logs {}`", paths.name, paths.name)
        }
        msg => bail!("{}", msg.trim_start_matches("error: ")),
    }
}

pub fn supervise_internal(a: InternalArgs) -> Result<ExitCode> {
    let paths = Paths::new(&a.name)?;
    let ready = sandbox::ready_pipe_from_parent();
    Ok(exit(sandbox::supervise_detached(&paths, ready)?))
}

pub fn ls(a: LsArgs, _g: &Global) -> Result<ExitCode> {
    // Every record; one that does not parse is listed as corrupt (with why),
    // not hidden: it still holds the name, and `rm -f` removes it. A
    // starting sandbox whose supervisor died is dead, with the reason.
    let entries = state::entries()?;
    if a.json {
        let rows: Vec<_> = entries
            .iter()
            .map(|(name, r)| match r {
                Ok(r) => {
                    let st = r.live_status();
                    serde_json::json!({
                        "name": r.name, "image": r.image, "image_digest": r.image_digest,
                        "state": st, "pid": r.init.filter(|_| st == Status::Running).map(|p| p.pid),
                        "uptime_seconds": r.started.filter(|_| st == Status::Running).map(|s| state::now().saturating_sub(s)),
                        "exit_code": r.exit_code, "workspace": r.workspace, "reason": r.dead_reason(),
                        "published": published(&r.name, st),
                    })
                }
                Err(e) => serde_json::json!({
                    "name": name, "image": null, "image_digest": null, "state": "corrupt", "pid": null,
                    "uptime_seconds": null, "exit_code": null, "workspace": null,
                    "reason": moat_builder::errors::chain(e), "published": [],
                }),
            })
            .collect();
        println!("{}", visible::json(&serde_json::to_string_pretty(&rows)?));
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<24} {:<14} {:<8} {:>8} {:>8}  PORTS", "NAME", "IMAGE", "STATE", "PID", "UPTIME");
    for (name, r) in entries {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                let why = moat_builder::errors::chain(&e);
                let (name, why) = (visible::field(&name), visible::field(&why));
                println!("{name:<24} {:<14} {:<8} {:>8} {:>8}  {why}", "-", "corrupt", "-", "-");
                continue;
            }
        };
        let st = r.live_status();
        let running = st == Status::Running;
        let digest: String = match r.image_digest.strip_prefix("sha256:") {
            Some(d) => d.chars().take(12).collect(),
            None => "-".into(),
        };
        let pid = r.init.filter(|_| running).map(|p| p.pid.to_string()).unwrap_or_else(|| "-".into());
        let up =
            r.started.filter(|_| running).map(|s| human(state::now().saturating_sub(s))).unwrap_or_else(|| "-".into());
        let reason = r.dead_reason().map(|why| format!("  {why}")).unwrap_or_default();
        let ports: Vec<String> = published(&r.name, st)
            .iter()
            .map(|p| format!("{}->{}{}", p.host, p.sandbox_port, if p.token { "(token)" } else { "" }))
            .collect();
        let ports = if ports.is_empty() { String::new() } else { format!("  {}", ports.join(",")) };
        let st = match (st, r.exit_code) {
            (Status::Exited, Some(c)) => format!("exited({c})"),
            (s, _) => format!("{s:?}").to_lowercase(),
        };
        println!(
            "{:<24} {:<14} {:<8} {:>8} {:>8}{ports}{reason}",
            visible::field(&r.name),
            visible::field(&digest),
            st,
            pid,
            up
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct PublishArgs {
    pub name: String,
    /// `[HOST_IP:]HOST_PORT:SANDBOX_PORT`, as `run -p`; SANDBOX_PORT must be
    /// one the sandbox may bind (`run -p` or `--expose`).
    #[arg(required = true, value_name = "[HOST_IP:]HOST_PORT:SANDBOX_PORT")]
    pub ports: Vec<String>,
}

/// Publishes ports of a running sandbox through its supervisor.
pub fn publish_cmd(a: PublishArgs, _g: &Global) -> Result<ExitCode> {
    use moat_supervisor::gateway::control::{self, Request};
    let paths = Paths::new(&a.name)?;
    for spec in &a.ports {
        control::call(&paths.control_socket(), &Request::Publish { spec: spec.clone() })
            .with_context(|| format!("publishing {spec} of {}", a.name))?;
        println!("{}: published {spec}", a.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// The ports a running sandbox publishes (its supervisor's runtime record).
fn published(name: &str, st: Status) -> Vec<publish::Shown> {
    match (st, Paths::new(name)) {
        (Status::Running, Ok(paths)) => publish::published(&paths),
        _ => Vec::new(),
    }
}

fn human(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

pub fn stop(a: StopArgs, _g: &Global) -> Result<ExitCode> {
    for n in &a.names {
        let paths = Paths::new(n)?;
        if !sandbox::stop(&paths, Duration::from_secs(a.time))? {
            say!("moat: {n} is not running");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn rm(a: RmArgs, _g: &Global) -> Result<ExitCode> {
    for n in &a.names {
        sandbox::remove(&Paths::new(n)?, a.force, a.workspace)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn exec(a: ExecArgs, _g: &Global) -> Result<ExitCode> {
    let paths = Paths::new(&a.name)?;
    let plan = sandbox::launch_plan(&paths)?;
    if !(a.interactive || a.tty) {
        // Like `run` without -i: the command reads end-of-file.
        let null = fs::File::open("/dev/null")?;
        nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0)?;
    }
    Ok(exit(launcher::exec(&plan, a.cmd, &a.env, a.tty, a.interactive || a.tty)?))
}

pub fn logs(a: LogsArgs, _g: &Global) -> Result<ExitCode> {
    use moat_supervisor::sandbox::logs;
    use std::os::unix::fs::MetadataExt;
    let paths = Paths::new(&a.name)?;
    let rec = state::load(&paths)?;
    let path = paths.log_file();
    let mut f = match fs::File::open(&path) {
        Ok(f) => f,
        Err(_) if !rec.detached => {
            bail!("{} ran in the foreground: its output went to the terminal, there is no log", a.name)
        }
        Err(e) => return Err(e).context(path.display().to_string()),
    };
    // Each record shown with its source in front (the supervisor's as
    // `moat`), redacted, then escaped unless --raw: the sandbox wrote most
    // of it, and could otherwise move the cursor over, recolour or hide
    // what is shown. --raw: the sandbox's own bytes as written.
    let stdout: Box<dyn Write> = match a.raw {
        true => Box::new(std::io::stdout().lock()),
        false => Box::new(visible::Writer::new(std::io::stdout().lock())),
    };
    let mut out = RedactingWriter::new(stdout);
    let mut held = Vec::new();
    let ino = |f: &fs::File| f.metadata().map(|m| m.ino()).ok();
    if let Ok(mut old) = fs::File::open(logs::rotated_path(&path)) {
        // Unless it is the file just opened, rotated away in between.
        if ino(&old) != ino(&f) {
            show_records(&mut old, &mut held, a.raw, &mut out)?;
            held.clear();
        }
    }
    loop {
        show_records(&mut f, &mut held, a.raw, &mut out)?;
        out.get_mut().flush()?;
        if !a.follow || state::load(&paths).map(|r| r.live_status() != Status::Running).unwrap_or(true) {
            // One last read after the exit, for output written while we slept.
            show_records(&mut f, &mut held, a.raw, &mut out)?;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        // Rotated: finish the old file, then read the new one from its start.
        let now = fs::metadata(&path).map(|m| m.ino()).ok();
        if now.is_some() && now != ino(&f) {
            show_records(&mut f, &mut held, a.raw, &mut out)?;
            held.clear();
            if let Ok(next) = fs::File::open(&path) {
                f = next;
            }
        }
    }
    if !held.is_empty() {
        // A record cut short (the log was being written): shown as it is.
        let mut shown = Vec::new();
        logs::render(&held, a.raw, &mut shown);
        out.write_all(&shown)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Shows the complete records `f` holds from where it is; an unfinished
/// last line stays in `held` for the next call.
fn show_records(f: &mut fs::File, held: &mut Vec<u8>, raw: bool, out: &mut impl Write) -> Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    let mut shown = Vec::new();
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        held.extend_from_slice(&buf[..n]);
        let Some(last) = held.iter().rposition(|b| *b == b'\n') else { continue };
        shown.clear();
        for line in held[..last].split(|b| *b == b'\n') {
            moat_supervisor::sandbox::logs::render(line, raw, &mut shown);
        }
        held.drain(..=last);
        out.write_all(&shown)?;
    }
}

pub fn bundle(a: BundleArgs, g: &Global) -> Result<ExitCode> {
    let store = Store::open_existing(&home::store_dir(g.store.as_deref()))?;
    sandbox::write_bundle(&store, &a.image, &load_policy(&a.policy)?, &a.cmd, &a.dir)?;
    println!("{}", a.dir.display());
    Ok(ExitCode::SUCCESS)
}

pub fn doctor(a: DoctorArgs, _g: &Global) -> Result<ExitCode> {
    let checks = doctor::run();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            let tag = match c.level {
                doctor::Level::Ok => "ok",
                doctor::Level::Degraded => "WEAK",
                doctor::Level::Missing => "MISSING",
            };
            println!("{tag:<8} {:<13} {}", c.name, c.detail);
            if !c.fix.is_empty() {
                println!("{:<22} {}", "", c.fix);
            }
        }
    }
    let broken = checks.iter().any(|c| c.level == doctor::Level::Missing);
    Ok(if broken { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
